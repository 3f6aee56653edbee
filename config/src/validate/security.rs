//! The security sections — `auth`, `rate_limits` and `access_log` — which
//! refer to no other section. Permissions are checked for their grammar
//! here so a typo fails validation instead of silently granting nothing.

use std::path::Path;

use super::fields::{duration, escaped, loc, positive, Errors};
use crate::raw::*;
use crate::validated::*;

pub(super) fn auth(errs: &mut Errors, raw: RawAuth, base_dir: &Path) -> AuthConfig {
    let mut api_keys = Vec::new();
    for (i, k) in raw.api_keys.iter().enumerate() {
        let path = format!("auth.api_keys[{i}]");
        if k.value.principal.value.trim().is_empty() {
            errs.at(format!("{path}.principal"), loc(&k.value.principal), "must not be empty");
        }
        let sha = &k.value.sha256;
        let hash = match parse_sha256(&sha.value) {
            Ok(h) => h,
            Err(m) => {
                errs.at(format!("{path}.sha256"), loc(sha), m);
                [0; 32]
            }
        };
        for (j, p) in k.value.permissions.iter().enumerate() {
            if let Err(m) = check_permission(&p.value) {
                errs.at(format!("{path}.permissions[{j}]"), loc(p), m);
            }
        }
        let priority = k.value.priority.as_ref().and_then(|p| {
            if p.value == 0 {
                errs.at(
                    format!("{path}.priority"),
                    loc(p),
                    "must be 1 (the highest) or more; leave it out for the default",
                );
                None
            } else {
                Some(p.value)
            }
        });
        api_keys.push(ApiKey {
            principal: k.value.principal.value.clone(),
            sha256: hash,
            permissions: k.value.permissions.iter().map(|p| p.value.clone()).collect(),
            priority,
        });
    }
    let jwt = raw.jwt.map(|j| {
        let j = j.value;
        let nonempty = |errs: &mut Errors, name: &str, v: &Option<S<String>>| {
            v.as_ref().and_then(|s| {
                if s.value.is_empty() {
                    errs.at(format!("auth.jwt.{name}"), loc(s), "must not be empty (leave it out to not check it)");
                }
                Some(s.value.clone()).filter(|v| !v.is_empty())
            })
        };
        let jwks = jwks_source(errs, &j, base_dir);
        JwtConfig {
            jwks,
            issuer: nonempty(errs, "issuer", &j.issuer),
            audience: nonempty(errs, "audience", &j.audience),
            leeway: duration(errs, "auth.jwt.leeway", &j.leeway, DEFAULT_JWT_LEEWAY, true),
            permissions_claim: nonempty(errs, "permissions_claim", &j.permissions_claim)
                .unwrap_or_else(|| DEFAULT_PERMISSIONS_CLAIM.to_string()),
            priority_claim: nonempty(errs, "priority_claim", &j.priority_claim)
                .unwrap_or_else(|| DEFAULT_PRIORITY_CLAIM.to_string()),
        }
    });
    let api_keys_file = raw.api_keys_file.map(|f| base_dir.join(&f.value));
    if api_keys.is_empty() && api_keys_file.is_none() && jwt.is_none() {
        // An `auth:` that names no credential would lock every client out.
        errs.at("auth", &serde_saphyr::Location::UNKNOWN, "names no credential: set api_keys, api_keys_file or jwt");
    }
    let override_permission = match raw.override_permission {
        Some(p) => {
            if let Err(m) = check_permission(&p.value) {
                errs.at("auth.override_permission", loc(&p), m);
            }
            p.value
        }
        None => DEFAULT_OVERRIDE_PERMISSION.to_string(),
    };
    AuthConfig {
        api_keys,
        api_keys_file,
        jwt,
        override_permission,
        refresh: duration(errs, "auth.refresh", &raw.refresh, DEFAULT_KEY_REFRESH, false),
    }
}

/// Exactly one of `jwks_file` and `jwks_url`; a URL is `https://` (plain
/// `http://` only to a loopback address: keys fetched in the clear could be
/// swapped by anyone on the path).
fn jwks_source(errs: &mut Errors, j: &RawJwt, base_dir: &Path) -> JwksSource {
    let refresh = duration(errs, "auth.jwt.jwks_refresh", &j.jwks_refresh, DEFAULT_JWKS_REFRESH, false);
    let tls = super::tls::client(errs, "auth.jwt.jwks_tls", j.jwks_tls.as_ref(), base_dir);
    match (&j.jwks_file, &j.jwks_url) {
        (Some(f), None) => {
            if let Some(t) = &j.jwks_tls {
                errs.at("auth.jwt.jwks_tls", loc(t), "applies only with `jwks_url`");
            }
            if let Some(r) = &j.jwks_refresh {
                errs.at(
                    "auth.jwt.jwks_refresh",
                    loc(r),
                    "applies only with `jwks_url` (a file is re-read every `auth.refresh`)",
                );
            }
            JwksSource::File(base_dir.join(&f.value))
        }
        (None, Some(u)) => {
            if let Err(m) = check_jwks_url(&u.value) {
                errs.at("auth.jwt.jwks_url", loc(u), m);
            }
            if refresh < JWKS_MIN_REFETCH {
                if let Some(r) = &j.jwks_refresh {
                    errs.at(
                        "auth.jwt.jwks_refresh",
                        loc(r),
                        format!(
                            "must be at least {}s (the shortest time between two fetches)",
                            JWKS_MIN_REFETCH.as_secs()
                        ),
                    );
                }
            }
            JwksSource::Url { url: u.value.clone(), tls, refresh }
        }
        (Some(f), Some(_)) => {
            errs.at("auth.jwt.jwks_url", loc(f), "give either `jwks_file` or `jwks_url`, not both");
            JwksSource::File(base_dir.join(&f.value))
        }
        (None, None) => {
            errs.at("auth.jwt", &serde_saphyr::Location::UNKNOWN, "needs `jwks_file` or `jwks_url`");
            JwksSource::File(base_dir.to_path_buf())
        }
    }
}

fn check_jwks_url(url: &str) -> Result<(), String> {
    let shown = escaped(url);
    let uri: http::Uri = url.parse().map_err(|e| format!("`{shown}` is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("`{shown}` has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let h = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(format!("`{shown}`: keys must be fetched over https:// (http:// only to a loopback address)"))
            }
        }
        _ => Err(format!("`{shown}` must start with https://")),
    }
}

/// `sha256:` and 64 hex digits.
pub fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let hex = s.strip_prefix("sha256:").ok_or("must be `sha256:` and 64 hex digits (the hash of the key)")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("`{}` is not 64 hex digits after `sha256:`", escaped(hex)));
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// A permission: `model:NAME[/VERSION]:ACTION` (each part may use `*`) or a
/// bare word such as `override`; `*` grants everything.
pub fn check_permission(p: &str) -> Result<(), String> {
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.*/".contains(&b));
    let ok = match p.strip_prefix("model:") {
        Some(rest) => match rest.rsplit_once(':') {
            Some((model, action)) => word(model) && word(action) && model.matches('/').count() <= 1,
            None => false,
        },
        None => word(p) && !p.contains('/'),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a permission (`model:NAME[/VERSION]:ACTION`, e.g. `model:fraud-*:infer`, or a word such as `override`)",
            escaped(p)
        ))
    }
}

pub(super) fn rate_limits(errs: &mut Errors, raw: RawRateLimits) -> RateLimits {
    let redis = raw.redis.as_ref().map(|r| shared_limits(errs, r));
    if let (Some(r), None, None, true) = (&raw.redis, &raw.global, &raw.per_principal, raw.per_model.is_empty()) {
        errs.at(
            "rate_limits.redis",
            loc(r),
            "shares buckets, but no bucket is configured (global, per_principal, per_model)",
        );
    }
    RateLimits {
        redis,
        global: raw.global.map(|b| bucket(errs, "rate_limits.global", &b)),
        per_principal: raw.per_principal.map(|b| bucket(errs, "rate_limits.per_principal", &b)),
        per_model: raw
            .per_model
            .iter()
            .map(|(m, b)| (m.as_str().into(), bucket(errs, &format!("rate_limits.per_model.{m}"), b)))
            .collect(),
    }
}

fn shared_limits(errs: &mut Errors, r: &S<RawRateRedis>) -> SharedRateLimits {
    let path = "rate_limits.redis";
    let v = &r.value;
    let url = match &v.url {
        Some(u) if u.value.starts_with("redis://") && u.value.len() > "redis://".len() => u.value.clone(),
        Some(u) => {
            errs.at(format!("{path}.url"), loc(u), format!("`{}` is not a redis://host:port URL", escaped(&u.value)));
            String::new()
        }
        None => {
            errs.at(path, loc(r), "`url` (the standalone Redis the replicas share their buckets in) is required");
            String::new()
        }
    };
    let on_unavailable = match v.on_unavailable.as_ref() {
        None => Unavailable::Local,
        Some(m) => match m.value.as_str() {
            "local" => Unavailable::Local,
            "open" => Unavailable::Open,
            "closed" => Unavailable::Closed,
            other => {
                errs.at(
                    format!("{path}.on_unavailable"),
                    loc(m),
                    format!("`{}` is not one of local, open, closed", escaped(other)),
                );
                Unavailable::Local
            }
        },
    };
    let key_prefix = match &v.key_prefix {
        Some(p) if p.value.is_empty() || p.value.contains(|c: char| c.is_whitespace() || c.is_control()) => {
            errs.at(format!("{path}.key_prefix"), loc(p), "must be non-empty, without whitespace");
            DEFAULT_REDIS_KEY_PREFIX.to_string()
        }
        Some(p) => p.value.clone(),
        None => DEFAULT_REDIS_KEY_PREFIX.to_string(),
    };
    let breaker_failures = match &v.breaker_failures {
        Some(n) if n.value == 0 => {
            errs.at(format!("{path}.breaker_failures"), loc(n), "must be at least 1");
            DEFAULT_BREAKER_FAILURES
        }
        Some(n) => n.value.min(u64::from(u32::MAX)) as u32,
        None => DEFAULT_BREAKER_FAILURES,
    };
    SharedRateLimits {
        url,
        key_prefix,
        timeout: duration(errs, &format!("{path}.timeout"), &v.timeout, DEFAULT_RATE_REDIS_TIMEOUT, false),
        connect_timeout: duration(
            errs,
            &format!("{path}.connect_timeout"),
            &v.connect_timeout,
            DEFAULT_REDIS_CONNECT_TIMEOUT,
            false,
        ),
        on_unavailable,
        breaker_failures,
        breaker_cooldown: duration(
            errs,
            &format!("{path}.breaker_cooldown"),
            &v.breaker_cooldown,
            DEFAULT_BREAKER_COOLDOWN,
            false,
        ),
        lease: duration(errs, &format!("{path}.lease"), &v.lease, DEFAULT_RATE_LEASE, true),
    }
}

fn bucket(errs: &mut Errors, path: &str, b: &S<RawBucket>) -> Bucket {
    let rate = |errs: &mut Errors, name: &str, per_second: &Option<S<f64>>, burst: &Option<S<f64>>| {
        let positive = |errs: &mut Errors, field: &str, v: &S<f64>| {
            if !(v.value.is_finite() && v.value > 0.0) {
                errs.at(format!("{path}.{field}"), loc(v), format!("must be a number above 0, got {}", v.value));
            }
        };
        match (per_second, burst) {
            (Some(r), burst) => {
                positive(errs, name, r);
                if let Some(b) = burst {
                    positive(errs, if name == "requests_per_second" { "burst" } else { "bytes_burst" }, b);
                }
                // The default burst: one second's worth.
                Some(Rate { per_second: r.value, burst: burst.as_ref().map_or(r.value, |b| b.value).max(1.0) })
            }
            (None, Some(b)) => {
                errs.at(format!("{path}.{name}"), loc(b), format!("a burst needs {name}"));
                None
            }
            (None, None) => None,
        }
    };
    let requests = rate(errs, "requests_per_second", &b.value.requests_per_second, &b.value.burst);
    let bytes = rate(errs, "bytes_per_second", &b.value.bytes_per_second, &b.value.bytes_burst);
    if requests.is_none() && bytes.is_none() {
        errs.at(path, loc(b), "limits nothing: set requests_per_second and/or bytes_per_second");
    }
    Bucket { requests, bytes }
}

pub(super) fn access_log(errs: &mut Errors, raw: RawAccessLog, base_dir: &Path) -> AccessLogConfig {
    let d = AccessLogConfig::default();
    let sample = match raw.sample {
        Some(s) if !(0.0..=1.0).contains(&s.value) => {
            errs.at("access_log.sample", loc(&s), format!("must be between 0 and 1, got {}", s.value));
            d.sample
        }
        Some(s) => s.value,
        None => d.sample,
    };
    let path = match raw.path {
        Some(p) if p.value.is_empty() => {
            errs.at("access_log.path", loc(&p), "must be stdout, stderr or a file path");
            d.path
        }
        Some(p) if p.value == "stdout" || p.value == "stderr" => p.value,
        Some(p) => base_dir.join(&p.value).display().to_string(),
        None => d.path,
    };
    AccessLogConfig {
        enabled: raw.enabled.unwrap_or(d.enabled),
        path,
        sample,
        body_hash: raw.body_hash.unwrap_or(false),
        queue: positive(errs, "access_log.queue", &raw.queue, DEFAULT_ACCESS_LOG_QUEUE),
        flush_interval: duration(
            errs,
            "access_log.flush_interval",
            &raw.flush_interval,
            DEFAULT_ACCESS_LOG_FLUSH_INTERVAL,
            false,
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn permissions() {
        for ok in ["model:fraud-*:infer", "model:*:*", "model:mlp/2:infer", "override", "*", "passthrough"] {
            assert!(check_permission(ok).is_ok(), "{ok}");
        }
        for bad in ["", "model:mlp", "model::infer", "model:a/b/c:infer", "over ride", "a\nb", "model:m:in fer"] {
            assert!(check_permission(bad).is_err(), "{bad:?}");
        }
    }

    fn parse(yaml: &str) -> Result<ValidatedConfig, String> {
        ValidatedConfig::parse(yaml, Path::new(".")).map_err(|e| e.to_string())
    }

    #[test]
    fn shared_rate_limits_priorities_and_the_log_writer() {
        let c = parse(
            "rate_limits:\n  per_model: {m: {requests_per_second: 5}}\n  redis: {url: 'redis://r:6379/1', on_unavailable: closed, lease: 0s}\n\
             access_log: {queue: 16, flush_interval: 50ms}\n",
        )
        .unwrap();
        let r = c.rate_limits.redis.unwrap();
        assert_eq!((r.url.as_str(), r.key_prefix.as_str()), ("redis://r:6379/1", DEFAULT_REDIS_KEY_PREFIX));
        assert_eq!(
            (r.on_unavailable, r.lease, r.timeout),
            (Unavailable::Closed, Duration::ZERO, DEFAULT_RATE_REDIS_TIMEOUT)
        );
        assert_eq!((c.access_log.queue.get(), c.access_log.flush_interval), (16, Duration::from_millis(50)));
        let d = parse("rate_limits:\n  global: {requests_per_second: 5}\n  redis: {url: 'redis://r:1'}\n").unwrap();
        assert_eq!(d.rate_limits.redis.unwrap().on_unavailable, Unavailable::Local);
        for (yaml, want) in [
            ("rate_limits:\n  global: {requests_per_second: 5}\n  redis: {url: 'r:1'}\n", "rate_limits.redis.url"),
            ("rate_limits:\n  global: {requests_per_second: 5}\n  redis: {}\n", "`url`"),
            ("rate_limits:\n  global: {requests_per_second: 5}\n  redis: {url: 'redis://r:1', on_unavailable: maybe}\n", "not one of local, open, closed"),
            ("rate_limits:\n  redis: {url: 'redis://r:1'}\n", "no bucket is configured"),
            ("rate_limits:\n  global: {requests_per_second: 5}\n  redis: {url: 'redis://r:1', breaker_failures: 0}\n", "breaker_failures"),
            ("auth:\n  api_keys: [{principal: a, sha256: 'sha256:{H}', priority: 0}]\n", "auth.api_keys[0].priority"),
            ("access_log: {queue: 0}\n", "access_log.queue"),
            ("access_log: {flush_interval: 0s}\n", "access_log.flush_interval"),
        ] {
            let yaml = yaml.replace("{H}", &"ab".repeat(32));
            let e = parse(&yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        let k = parse(&format!(
            "auth:\n  api_keys: [{{principal: a, sha256: 'sha256:{}', priority: 2}}]\n  jwt: {{jwks_file: j.json, priority_claim: tier}}\n",
            "ab".repeat(32)
        ))
        .unwrap()
        .auth
        .unwrap();
        assert_eq!((k.api_keys[0].priority, k.jwt.unwrap().priority_claim.as_str()), (Some(2), "tier"));
    }

    #[test]
    fn hashes() {
        let h = parse_sha256(&format!("sha256:{}", "ab".repeat(32))).unwrap();
        assert_eq!(h, [0xab; 32]);
        assert!(parse_sha256(&"ab".repeat(32)).is_err());
        assert!(parse_sha256("sha256:abc").is_err());
    }
}
