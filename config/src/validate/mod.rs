//! Raw YAML → `ValidatedConfig`: defaults, types and cross-references, with
//! every error collected (not just the first) and pointed at its line:column.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use crate::raw::*;
use crate::*;

struct Errors(Vec<FieldError>);

impl Errors {
    fn at(&mut self, path: impl Into<String>, loc: &Location, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), line: loc.line(), column: loc.column(), message: message.into() });
    }
}

fn loc<T>(s: &Spanned<T>) -> &Location {
    &s.referenced
}

pub fn parse(text: &str, base_dir: &Path) -> Result<ValidatedConfig, ConfigError> {
    let raw: RawConfig = if text.trim().is_empty() {
        RawConfig::default()
    } else {
        serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
            ConfigError {
                source_name: "<config>".into(),
                errors: vec![FieldError { path: "<yaml>".into(), line, column, message: first_line(&e.to_string()) }],
            }
        })?
    };
    let mut errs = Errors(Vec::new());
    let cfg = build(raw, base_dir, &mut errs);
    if errs.0.is_empty() {
        Ok(cfg)
    } else {
        errs.0.sort_by_key(|e| (e.line, e.column));
        Err(ConfigError { source_name: "<config>".into(), errors: errs.0 })
    }
}

/// serde-saphyr renders a snippet under the message; the message line is what we report.
fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or(s).trim();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // The location is reported separately.
    match line.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, msg)) => msg.to_string(),
        None => line.to_string(),
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `100us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{s}` has no unit (use us, ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration"))?;
    let secs = match unit.trim() {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (use us, ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn duration(
    errs: &mut Errors,
    path: &str,
    v: &Option<Spanned<String>>,
    default: Duration,
    allow_zero: bool,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(&s.value) {
            Ok(d) if d.is_zero() && !allow_zero => {
                errs.at(path, loc(s), "must be greater than zero");
                default
            }
            Ok(d) => d,
            Err(m) => {
                errs.at(path, loc(s), m);
                default
            }
        },
    }
}

fn address(errs: &mut Errors, path: &str, v: &Option<Spanned<String>>, default: &str) -> SocketAddr {
    let (text, l) = match v {
        Some(s) => (s.value.as_str(), Some(loc(s))),
        None => (default, None),
    };
    match text.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errs.at(
                path,
                l.unwrap_or(&Location::UNKNOWN),
                format!("`{text}` is not an address of the form IP:PORT (e.g. 0.0.0.0:8000)"),
            );
            default.parse().expect("default addresses parse")
        }
    }
}

fn positive(errs: &mut Errors, path: &str, v: &Option<Spanned<u64>>, default: usize) -> NonZeroUsize {
    let n = match v {
        None => default,
        Some(s) if s.value == 0 => {
            errs.at(path, loc(s), "must be at least 1");
            default
        }
        Some(s) => s.value as usize,
    };
    NonZeroUsize::new(n.max(1)).expect("max(1) is non-zero")
}

/// `http://host:port[/prefix]` → `Upstream`.
pub(crate) fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(format!("`{url}`: TLS to backends is not supported yet; use http://"));
    } else {
        return Err(format!("`{url}` must start with http://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Err(format!("`{url}` needs an explicit port (http://host:port)"));
    };
    if host.is_empty() || port.parse::<u16>().map(|p| p == 0).unwrap_or(true) {
        return Err(format!("`{url}` has no valid host:port"));
    }
    Ok(Upstream { authority: authority.to_string(), base_path: path.trim_end_matches('/').to_string() })
}

/// A gRPC message limit: at least 1 byte, at most 4 GiB (the length prefix is a u32).
fn message_bytes(errs: &mut Errors, path: &str, v: &Option<Spanned<u64>>) -> usize {
    match v {
        None => DEFAULT_GRPC_MAX_MESSAGE_BYTES,
        Some(s) if s.value == 0 || s.value > u32::MAX as u64 => {
            errs.at(path, loc(s), format!("must be between 1 and {} bytes, got {}", u32::MAX, s.value));
            DEFAULT_GRPC_MAX_MESSAGE_BYTES
        }
        Some(s) => s.value as usize,
    }
}

/// A gRPC endpoint: `host:port` or `http://host:port` (no path: gRPC paths are fixed).
pub(crate) fn parse_grpc_endpoint(text: &str) -> Result<Upstream, String> {
    let url = if text.contains("://") { text.to_string() } else { format!("http://{text}") };
    let up = parse_upstream(&url)?;
    if !up.base_path.is_empty() {
        return Err(format!("`{text}`: a gRPC endpoint is host:port, without a path"));
    }
    Ok(up)
}

fn header_name(errs: &mut Errors, path: &str, s: &Spanned<String>) -> String {
    let v = s.value.trim().to_ascii_lowercase();
    let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !ok {
        errs.at(path, loc(s), format!("`{}` is not a valid HTTP header name", s.value));
    }
    v
}

fn build(raw: RawConfig, base_dir: &Path, errs: &mut Errors) -> ValidatedConfig {
    let http_raw = raw.listeners.http.unwrap_or_default();
    let default_upstream = http_raw
        .default_upstream
        .as_ref()
        .and_then(|u| parse_upstream(&u.value).map_err(|m| errs.at("listeners.http.default_upstream", loc(u), m)).ok());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let http = HttpListener {
        address: address(errs, "listeners.http.address", &http_raw.address, DEFAULT_HTTP_ADDRESS),
        default_upstream,
        threads: positive(errs, "listeners.http.threads", &http_raw.threads, cores),
    };
    let metrics = match raw.listeners.metrics {
        Some(m) if m.enabled == Some(false) => None,
        Some(m) => Some(address(errs, "listeners.metrics.address", &m.address, DEFAULT_METRICS_ADDRESS)),
        None => Some(DEFAULT_METRICS_ADDRESS.parse().expect("default parses")),
    };
    let grpc = match raw.listeners.grpc {
        Some(g) if g.enabled == Some(false) => None,
        g => {
            let g = g.unwrap_or_default();
            Some(GrpcListener {
                address: address(errs, "listeners.grpc.address", &g.address, DEFAULT_GRPC_ADDRESS),
                max_message_bytes: message_bytes(errs, "listeners.grpc.max_message_bytes", &g.max_message_bytes),
            })
        }
    };
    let control = match raw.listeners.control {
        Some(c) if c.enabled == Some(false) => None,
        None => Some(ControlListener {
            address: DEFAULT_CONTROL_ADDRESS.parse().expect("default parses"),
            token: None,
            state_file: None,
        }),
        Some(c) => Some(ControlListener {
            address: address(errs, "listeners.control.address", &c.address, DEFAULT_CONTROL_ADDRESS),
            token: c.token.filter(|t| !t.is_empty()),
            state_file: c.state_file.map(|p| base_dir.join(p)),
        }),
    };

    let limits = Limits {
        max_body_bytes: match &raw.limits.max_body_bytes {
            Some(s) if s.value == 0 => {
                errs.at("limits.max_body_bytes", loc(s), "must be at least 1");
                DEFAULT_MAX_BODY_BYTES
            }
            Some(s) => s.value,
            None => DEFAULT_MAX_BODY_BYTES,
        },
        header_read_timeout: duration(
            errs,
            "limits.header_read_timeout",
            &raw.limits.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
            false,
        ),
        backend_timeout: duration(
            errs,
            "limits.backend_timeout",
            &raw.limits.backend_timeout,
            DEFAULT_BACKEND_TIMEOUT,
            false,
        ),
    };

    let default_sticky = raw.routing.sticky_header.as_ref().map(|s| header_name(errs, "routing.sticky_header", s));
    let routing = Routing {
        override_header: raw
            .routing
            .override_header
            .as_ref()
            .map(|s| header_name(errs, "routing.override_header", s))
            .unwrap_or_else(|| DEFAULT_OVERRIDE_HEADER.to_string()),
    };

    let onnx = raw.runtime.onnx.unwrap_or_default();
    let runtime = OnnxRuntime {
        library_path: onnx.library_path.map(|p| base_dir.join(p)),
        // Two cores: one session thread per core, one intra-op thread each, so
        // concurrent requests never oversubscribe the box.
        pool_threads: positive(errs, "runtime.onnx.pool_threads", &onnx.pool_threads, cores.min(4)),
        intra_op_threads: positive(errs, "runtime.onnx.intra_op_threads", &onnx.intra_op_threads, 1),
        execution_provider: match onnx.execution_provider.as_ref().map(|s| (s.value.as_str(), s)) {
            None | Some(("cpu", _)) => ExecutionProvider::Cpu,
            Some(("cuda", _)) => ExecutionProvider::Cuda { device: onnx.cuda_device.unwrap_or(0) },
            Some((other, s)) => {
                errs.at(
                    "runtime.onnx.execution_provider",
                    loc(s),
                    format!("unknown execution provider `{other}` (expected cpu or cuda)"),
                );
                ExecutionProvider::Cpu
            }
        },
    };

    let logging = Logging {
        format: match raw.logging.format.as_ref().map(|s| (s.value.as_str(), s)) {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, s)) => {
                errs.at("logging.format", loc(s), format!("unknown log format `{other}` (expected text or json)"));
                LogFormat::Text
            }
        },
        level: raw.logging.level.unwrap_or_else(|| "info".into()),
    };

    let mut backends = BTreeMap::new();
    for (name, b) in raw.backends {
        let path = format!("backends.{name}");
        if let Some(cfg) = backend(errs, &path, &b, base_dir, limits.backend_timeout, runtime.pool_threads.get()) {
            backends.insert(Arc::<str>::from(name), cfg);
        }
    }

    let cache = cache_config(errs, &raw.cache);
    let mut models = BTreeMap::new();
    for (name, m) in raw.models {
        let path = format!("models.{name}");
        if name.is_empty() {
            errs.at(&path, loc(&m), "model name must not be empty");
            continue;
        }
        let sticky_header = m
            .value
            .sticky_header
            .as_ref()
            .map(|s| header_name(errs, &format!("{path}.sticky_header"), s))
            .or_else(|| default_sticky.clone());
        let vs = &m.value.variants;
        if vs.value.is_empty() {
            errs.at(format!("{path}.variants"), loc(vs), "a model needs at least one variant");
        }
        let model_cache =
            m.value.cache.as_ref().map(|c| cache_policy(errs, &format!("{path}.cache"), c, cache.redis.is_some()));
        let mut seen = BTreeSet::new();
        let mut variants = Vec::with_capacity(vs.value.len());
        let mut sum = 0.0;
        for (i, v) in vs.value.iter().enumerate() {
            let vp = format!("{path}.variants[{i}]");
            let v = &v.value;
            if v.name.value.is_empty() {
                errs.at(format!("{vp}.name"), loc(&v.name), "variant name must not be empty");
            } else if !seen.insert(v.name.value.clone()) {
                errs.at(
                    format!("{vp}.name"),
                    loc(&v.name),
                    format!("duplicate variant name `{}` in model `{name}`", v.name.value),
                );
            }
            if !backends.contains_key(v.backend.value.as_str()) {
                let known: Vec<&str> = backends.keys().map(|k: &Arc<str>| k.as_ref()).collect();
                let known = if known.is_empty() {
                    "no backends are defined".to_string()
                } else {
                    format!("defined: {}", known.join(", "))
                };
                errs.at(
                    format!("{vp}.backend"),
                    loc(&v.backend),
                    format!("unknown backend `{}` ({known})", v.backend.value),
                );
            }
            let w = v.weight.value;
            if !w.is_finite() || w < 0.0 {
                errs.at(
                    format!("{vp}.weight"),
                    loc(&v.weight),
                    format!("weight must be a non-negative number, got {w}"),
                );
            } else {
                sum += w;
            }
            variants.push(VariantConfig {
                name: Arc::from(v.name.value.as_str()),
                backend: Arc::from(v.backend.value.as_str()),
                model: v.model.as_ref().map(|m| Arc::from(m.value.as_str())),
                version: v.version.as_ref().map(|s| Arc::from(serde_saphyr_scalar_string(&s.value).as_str())),
                weight: w,
                batching: v.batching.as_ref().map(|b| batching(errs, &format!("{vp}.batching"), b)),
                shadow_percent: v.shadow_percent.as_ref().map(|p| {
                    if !(p.value > 0.0 && p.value <= 100.0) {
                        errs.at(
                            format!("{vp}.shadow_percent"),
                            loc(p),
                            format!("must be in (0, 100], got {}", p.value),
                        );
                    }
                    if w > 0.0 {
                        errs.at(
                            format!("{vp}.weight"),
                            loc(&v.weight),
                            "a shadow variant gets mirrored copies only: its weight must be 0",
                        );
                    }
                    p.value
                }),
                cache: match (&v.cache, v.deterministic) {
                    (Some(c), Some(false)) => {
                        errs.at(
                            format!("{vp}.cache"),
                            loc(c),
                            "a variant marked `deterministic: false` is never cached; remove `cache` or the mark",
                        );
                        None
                    }
                    (Some(c), _) => Some(cache_policy(errs, &format!("{vp}.cache"), c, cache.redis.is_some())),
                    (None, Some(false)) => None,
                    (None, _) => model_cache.clone(),
                },
                deterministic: v.deterministic.unwrap_or(true),
            });
        }
        if !vs.value.is_empty() && sum <= 0.0 {
            errs.at(format!("{path}.variants"), loc(vs), "variant weights must have a positive sum");
        }
        let rollout = m.value.rollout.as_ref().map(|r| rollout(errs, &format!("{path}.rollout"), r, &variants));
        models.insert(
            Arc::<str>::from(name.as_str()),
            ModelConfig { name: Arc::from(name.as_str()), sticky_header, variants, rollout },
        );
    }

    ValidatedConfig {
        listeners: Listeners { http, metrics, control, grpc },
        limits,
        routing,
        runtime,
        logging,
        backends,
        models,
        cache,
    }
}

fn cache_config(errs: &mut Errors, raw: &RawCache) -> CacheConfig {
    let redis = raw.redis.as_ref().map(|r| {
        let path = "cache.redis";
        let v = &r.value;
        let (urls, cluster) = match (&v.url, &v.cluster) {
            (Some(u), None) => (vec![u], false),
            (None, Some(c)) if !c.value.is_empty() => (c.value.iter().collect(), true),
            (None, Some(c)) => {
                errs.at(format!("{path}.cluster"), loc(c), "list at least one seed node");
                (vec![], true)
            }
            _ => {
                errs.at(path, loc(r), "give exactly one of `url` (standalone) or `cluster` (seed node URLs)");
                (vec![], false)
            }
        };
        for u in &urls {
            let ok = u.value.starts_with("redis://") || u.value.starts_with("rediss://");
            if !ok || u.value.len() <= "redis://".len() {
                errs.at(
                    format!("{path}.{}", if cluster { "cluster" } else { "url" }),
                    loc(u),
                    format!("`{}` is not a redis://host:port URL", u.value),
                );
            }
        }
        let breaker_failures =
            positive(errs, &format!("{path}.breaker_failures"), &v.breaker_failures, DEFAULT_BREAKER_FAILURES as usize)
                .get()
                .min(u32::MAX as usize) as u32;
        RedisConfig {
            urls: urls.iter().map(|u| u.value.clone()).collect(),
            cluster,
            timeout: duration(errs, &format!("{path}.timeout"), &v.timeout, DEFAULT_REDIS_TIMEOUT, false),
            connect_timeout: duration(
                errs,
                &format!("{path}.connect_timeout"),
                &v.connect_timeout,
                DEFAULT_REDIS_CONNECT_TIMEOUT,
                false,
            ),
            breaker_failures,
            breaker_cooldown: duration(
                errs,
                &format!("{path}.breaker_cooldown"),
                &v.breaker_cooldown,
                DEFAULT_BREAKER_COOLDOWN,
                false,
            ),
            key_prefix: match &v.key_prefix {
                Some(p) if p.value.is_empty() || p.value.contains(char::is_whitespace) => {
                    errs.at(format!("{path}.key_prefix"), loc(p), "must be non-empty, without whitespace");
                    DEFAULT_REDIS_KEY_PREFIX.to_string()
                }
                Some(p) => p.value.clone(),
                None => DEFAULT_REDIS_KEY_PREFIX.to_string(),
            },
        }
    });
    CacheConfig { l1_max_bytes: raw.l1_max_bytes.as_ref().map(|b| b.value).unwrap_or(DEFAULT_L1_MAX_BYTES), redis }
}

fn cache_policy(errs: &mut Errors, path: &str, c: &Spanned<RawCachePolicy>, have_redis: bool) -> CachePolicy {
    let r = &c.value;
    let l2 = r.l2.unwrap_or(false);
    if l2 && !have_redis {
        errs.at(format!("{path}.l2"), loc(c), "`l2: true` needs a `cache.redis` section");
    }
    CachePolicy {
        ttl: duration(errs, &format!("{path}.ttl"), &Some(r.ttl.clone()), Duration::from_secs(60), false),
        max_entry_bytes: match &r.max_entry_bytes {
            None => DEFAULT_MAX_ENTRY_BYTES,
            Some(b) if b.value == 0 => {
                errs.at(format!("{path}.max_entry_bytes"), loc(b), "must be at least 1");
                DEFAULT_MAX_ENTRY_BYTES
            }
            Some(b) => b.value as usize,
        },
        l2,
    }
}

fn rollout(errs: &mut Errors, path: &str, r: &Spanned<RawRollout>, variants: &[VariantConfig]) -> RolloutConfig {
    let v = &r.value;
    for (field, name) in [("baseline", &v.baseline), ("canary", &v.canary)] {
        if !variants.iter().any(|x| x.name.as_ref() == name.value) {
            errs.at(format!("{path}.{field}"), loc(name), format!("no variant named `{}` in this model", name.value));
        }
    }
    if v.baseline.value == v.canary.value {
        errs.at(format!("{path}.canary"), loc(&v.canary), "canary and baseline must be different variants");
    }
    let steps = v.steps.value.clone();
    let ascending = steps.windows(2).all(|w| w[0] < w[1]);
    if steps.is_empty() || !ascending || steps.iter().any(|s| !(*s > 0.0 && *s <= 100.0)) {
        errs.at(
            format!("{path}.steps"),
            loc(&v.steps),
            "steps must be ascending canary weights in (0, 100], e.g. [5, 25, 50, 100]",
        );
    }
    let ratio = |errs: &mut Errors, f: &str, x: &Option<Spanned<f64>>, d: f64, min: f64| match x {
        None => d,
        Some(s) if s.value.is_finite() && s.value >= min => s.value,
        Some(s) => {
            errs.at(format!("{path}.{f}"), loc(s), format!("must be a number ≥ {min}, got {}", s.value));
            d
        }
    };
    RolloutConfig {
        baseline: Arc::from(v.baseline.value.as_str()),
        canary: Arc::from(v.canary.value.as_str()),
        steps,
        interval: duration(errs, &format!("{path}.interval"), &v.interval, DEFAULT_ROLLOUT_INTERVAL, false),
        max_error_rate_increase: ratio(
            errs,
            "max_error_rate_increase",
            &v.max_error_rate_increase,
            DEFAULT_MAX_ERROR_RATE_INCREASE,
            0.0,
        ),
        max_p99_ratio: ratio(errs, "max_p99_ratio", &v.max_p99_ratio, DEFAULT_MAX_P99_RATIO, 1.0),
        min_requests: v.min_requests.as_ref().map(|m| m.value).unwrap_or(DEFAULT_MIN_REQUESTS),
    }
}

fn batching(errs: &mut Errors, path: &str, b: &Spanned<RawBatching>) -> BatchingConfig {
    let r = &b.value;
    let max_batch_size = match NonZeroUsize::new(r.max_batch_size.value as usize) {
        Some(n) => n,
        None => {
            errs.at(format!("{path}.max_batch_size"), loc(&r.max_batch_size), "must be at least 1");
            NonZeroUsize::MIN
        }
    };
    let mut preferred: Vec<usize> = r.preferred_batch_sizes.iter().map(|n| *n as usize).collect();
    preferred.sort_unstable();
    preferred.dedup();
    if let Some(bad) = preferred.iter().find(|p| **p == 0 || **p > max_batch_size.get()) {
        errs.at(
            format!("{path}.preferred_batch_sizes"),
            loc(b),
            format!("preferred batch size {bad} must be between 1 and max_batch_size ({max_batch_size})"),
        );
    }
    let priority_levels = positive(errs, &format!("{path}.priority_levels"), &r.priority_levels, 1);
    let default_priority = match &r.default_priority {
        None => 1,
        Some(p) if p.value == 0 || p.value as usize > priority_levels.get() => {
            errs.at(
                format!("{path}.default_priority"),
                loc(p),
                format!("must be between 1 and priority_levels ({priority_levels})"),
            );
            1
        }
        Some(p) => p.value as usize,
    };
    BatchingConfig {
        max_batch_size,
        max_queue_delay: duration(
            errs,
            &format!("{path}.max_queue_delay"),
            &r.max_queue_delay,
            DEFAULT_MAX_QUEUE_DELAY,
            true,
        ),
        preferred_batch_sizes: preferred,
        max_queue_size: positive(errs, &format!("{path}.max_queue_size"), &r.max_queue_size, DEFAULT_MAX_QUEUE_SIZE)
            .get(),
        default_timeout: r
            .default_timeout
            .as_ref()
            .map(|_| duration(errs, &format!("{path}.default_timeout"), &r.default_timeout, Duration::ZERO, false)),
        priority_levels,
        default_priority,
        adaptive: r.adaptive.unwrap_or(false),
        max_concurrent_batches: positive(
            errs,
            &format!("{path}.max_concurrent_batches"),
            &r.max_concurrent_batches,
            DEFAULT_MAX_CONCURRENT_BATCHES,
        ),
    }
}

fn serde_saphyr_scalar_string(s: &serde_saphyr_scalar::Scalar) -> String {
    match s {
        serde_saphyr_scalar::Scalar::Int(n) => n.to_string(),
        serde_saphyr_scalar::Scalar::Str(s) => s.clone(),
    }
}

fn backend(
    errs: &mut Errors,
    path: &str,
    b: &Spanned<RawBackend>,
    base_dir: &Path,
    default_timeout: Duration,
    pool_threads: usize,
) -> Option<BackendConfig> {
    let r = &b.value;
    let only = |errs: &mut Errors, field: &str, present: bool, kind: &str| {
        if present {
            errs.at(format!("{path}.{field}"), loc(b), format!("`{field}` does not apply to a `{kind}` backend"));
        }
    };
    match r.kind.value.as_str() {
        "v2-http" => {
            only(errs, "repository", r.repository.is_some(), "v2-http");
            only(errs, "version_policy", r.version_policy.is_some(), "v2-http");
            only(errs, "max_message_bytes", r.max_message_bytes.is_some(), "v2-http");
            if r.endpoints.is_empty() {
                errs.at(format!("{path}.endpoints"), loc(b), "a v2-http backend needs at least one endpoint");
            }
            let mut endpoints = Vec::new();
            for (i, e) in r.endpoints.iter().enumerate() {
                match parse_upstream(&e.value) {
                    Ok(u) => endpoints.push(u),
                    Err(m) => errs.at(format!("{path}.endpoints[{i}]"), loc(e), m),
                }
            }
            let binary = match r.binary.as_ref().map(|s| (s.value.as_str(), s)) {
                None | Some(("auto", _)) => BinaryMode::Auto,
                Some(("always", _)) => BinaryMode::Always,
                Some(("never", _)) => BinaryMode::Never,
                Some((other, s)) => {
                    errs.at(
                        format!("{path}.binary"),
                        loc(s),
                        format!("unknown binary mode `{other}` (expected auto, always or never)"),
                    );
                    BinaryMode::Auto
                }
            };
            Some(BackendConfig::V2Http(V2HttpBackend {
                endpoints,
                timeout: duration(errs, &format!("{path}.timeout"), &r.timeout, default_timeout, false),
                connect_timeout: duration(
                    errs,
                    &format!("{path}.connect_timeout"),
                    &r.connect_timeout,
                    DEFAULT_CONNECT_TIMEOUT,
                    false,
                ),
                pool_size: positive(errs, &format!("{path}.pool_size"), &r.pool_size, DEFAULT_POOL_SIZE).get(),
                eject_after_failures: positive(
                    errs,
                    &format!("{path}.eject_after_failures"),
                    &r.eject_after_failures,
                    DEFAULT_EJECT_AFTER_FAILURES as usize,
                )
                .get() as u32,
                eject_for: duration(errs, &format!("{path}.eject_for"), &r.eject_for, DEFAULT_EJECT_FOR, true),
                binary,
            }))
        }
        "v2-grpc" => {
            for (field, present) in [
                ("repository", r.repository.is_some()),
                ("version_policy", r.version_policy.is_some()),
                ("binary", r.binary.is_some()),
                ("pool_size", r.pool_size.is_some()),
                ("eject_after_failures", r.eject_after_failures.is_some()),
                ("eject_for", r.eject_for.is_some()),
            ] {
                only(errs, field, present, "v2-grpc");
            }
            if r.endpoints.is_empty() {
                errs.at(
                    format!("{path}.endpoints"),
                    loc(b),
                    "a v2-grpc backend needs at least one endpoint (host:port)",
                );
            }
            let mut endpoints = Vec::new();
            for (i, e) in r.endpoints.iter().enumerate() {
                match parse_grpc_endpoint(&e.value) {
                    Ok(u) => endpoints.push(u),
                    Err(m) => errs.at(format!("{path}.endpoints[{i}]"), loc(e), m),
                }
            }
            Some(BackendConfig::V2Grpc(V2GrpcBackend {
                endpoints,
                timeout: duration(errs, &format!("{path}.timeout"), &r.timeout, default_timeout, false),
                connect_timeout: duration(
                    errs,
                    &format!("{path}.connect_timeout"),
                    &r.connect_timeout,
                    DEFAULT_CONNECT_TIMEOUT,
                    false,
                ),
                max_message_bytes: message_bytes(errs, &format!("{path}.max_message_bytes"), &r.max_message_bytes),
            }))
        }
        "onnx" => {
            only(errs, "endpoints", !r.endpoints.is_empty(), "onnx");
            only(errs, "max_message_bytes", r.max_message_bytes.is_some(), "onnx");
            only(errs, "binary", r.binary.is_some(), "onnx");
            only(errs, "pool_size", r.pool_size.is_some(), "onnx");
            let Some(repo) = &r.repository else {
                errs.at(
                    format!("{path}.repository"),
                    loc(b),
                    "an onnx backend needs `repository` (a directory MODEL/VERSION/model.onnx)",
                );
                return None;
            };
            let repository = base_dir.join(&repo.value);
            if !repository.is_dir() {
                errs.at(
                    format!("{path}.repository"),
                    loc(repo),
                    format!("`{}` is not a directory", repository.display()),
                );
            }
            let version_policy = match &r.version_policy {
                None => VersionPolicy::Latest(NonZeroUsize::MIN),
                Some(p) => {
                    let v = &p.value;
                    let given = v.latest.is_some() as u8 + v.specific.is_some() as u8 + v.all.is_some() as u8;
                    if given != 1 {
                        errs.at(
                            format!("{path}.version_policy"),
                            loc(p),
                            "give exactly one of `latest: N`, `specific: [..]` or `all: true`",
                        );
                        VersionPolicy::Latest(NonZeroUsize::MIN)
                    } else if let Some(n) = v.latest {
                        match NonZeroUsize::new(n as usize) {
                            Some(n) => VersionPolicy::Latest(n),
                            None => {
                                errs.at(format!("{path}.version_policy.latest"), loc(p), "must be at least 1");
                                VersionPolicy::Latest(NonZeroUsize::MIN)
                            }
                        }
                    } else if let Some(s) = &v.specific {
                        if s.is_empty() {
                            errs.at(format!("{path}.version_policy.specific"), loc(p), "list at least one version");
                        }
                        VersionPolicy::Specific(s.clone())
                    } else {
                        VersionPolicy::All
                    }
                }
            };
            Some(BackendConfig::Onnx(OnnxBackend {
                repository,
                version_policy,
                models: r.models.iter().map(|m| m.value.clone()).collect(),
                warmup: r.warmup.as_ref().map(|w| w.value as u32).unwrap_or(DEFAULT_WARMUP_RUNS),
                // One session per pool thread, so one model can use every core.
                instances: positive(errs, &format!("{path}.instances"), &r.instances, pool_threads),
                poll_interval: duration(
                    errs,
                    &format!("{path}.poll_interval"),
                    &r.poll_interval,
                    DEFAULT_REPOSITORY_POLL,
                    false,
                ),
            }))
        }
        other => {
            errs.at(
                format!("{path}.kind"),
                loc(&r.kind),
                format!("unknown backend kind `{other}` (expected v2-http, v2-grpc or onnx)"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(yaml: &str) -> Vec<FieldError> {
        parse(yaml, Path::new(".")).expect_err("config should be rejected").errors
    }

    const GOOD: &str = r#"
backends:
  a:
    kind: v2-http
    endpoints: ["http://127.0.0.1:9000"]
  b:
    kind: v2-http
    endpoints: ["http://127.0.0.1:9010/prefix/"]
    timeout: 250ms
models:
  mlp:
    sticky_header: X-User-Id
    variants:
      - { name: stable, backend: a, weight: 90 }
      - { name: canary, backend: b, weight: 10, model: mlp2, version: 2 }
"#;

    #[test]
    fn good_config_gets_defaults_and_types() {
        let c = parse(GOOD, Path::new(".")).unwrap();
        assert_eq!(c.listeners.http.address.to_string(), DEFAULT_HTTP_ADDRESS);
        assert_eq!(c.listeners.metrics.unwrap().to_string(), DEFAULT_METRICS_ADDRESS);
        assert_eq!(c.listeners.control.unwrap().address.to_string(), DEFAULT_CONTROL_ADDRESS);
        let m = &c.models["mlp"];
        assert_eq!(m.sticky_header.as_deref(), Some("x-user-id"));
        assert_eq!(m.variants[1].version.as_deref(), Some("2"));
        assert_eq!(m.variants[1].model.as_deref(), Some("mlp2"));
        let BackendConfig::V2Http(b) = &c.backends["b"] else { panic!() };
        assert_eq!(b.timeout, Duration::from_millis(250));
        assert_eq!(b.endpoints[0].base_path, "/prefix");
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn empty_file_is_a_valid_config_with_defaults() {
        let c = parse("", Path::new(".")).unwrap();
        assert!(c.models.is_empty());
    }

    #[test]
    fn table_of_rejections() {
        let cases: &[(&str, &str, &str, u64)] = &[
            ("unknown top-level field", "bogus: 1\n", "unknown field", 1),
            (
                "unknown nested field",
                "listeners:\n  http:\n    adress: 1.2.3.4:5\n",
                "unknown field",
                3,
            ),
            (
                "bad address",
                "listeners:\n  http:\n    address: nope\n",
                "listeners.http.address",
                3,
            ),
            (
                "unknown backend",
                "models:\n  m:\n    variants:\n      - name: a\n        backend: ghost\n",
                "models.m.variants[0].backend",
                5,
            ),
            (
                "negative weight",
                "backends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\nmodels:\n  m:\n    variants:\n      - {name: a, backend: b, weight: -1}\n",
                "models.m.variants[0].weight",
                6,
            ),
            (
                "zero weight sum",
                "backends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\nmodels:\n  m:\n    variants:\n      - {name: a, backend: b, weight: 0}\n",
                "models.m.variants",
                6,
            ),
            (
                "bad duration",
                "limits:\n  backend_timeout: 5 parsecs\n",
                "limits.backend_timeout",
                2,
            ),
            (
                "https endpoint",
                "backends:\n  b:\n    kind: v2-http\n    endpoints: ['https://h:1']\n",
                "backends.b.endpoints[0]",
                4,
            ),
            ("unknown kind", "backends:\n  b:\n    kind: grpc9\n", "backends.b.kind", 3),
            (
                "grpc endpoint with a path",
                "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['h:1/x']\n",
                "backends.b.endpoints[0]",
                4,
            ),
            (
                "grpc backend with http-only field",
                "backends:\n  b:\n    kind: v2-grpc\n    endpoints: ['h:1']\n    binary: always\n",
                "backends.b.binary",
                0,
            ),
            ("zero grpc limit", "listeners:\n  grpc:\n    max_message_bytes: 0\n", "listeners.grpc.max_message_bytes", 3),
            (
                "duplicate variant",
                "backends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\nmodels:\n  m:\n    variants:\n      - {name: a, backend: b}\n      - {name: a, backend: b}\n",
                "models.m.variants[1].name",
                7,
            ),
            ("bad yaml", "models: [\n", "<yaml>", 0),
        ];
        for (what, yaml, needle, line) in cases {
            let errs = errors(yaml);
            let hit = errs.iter().find(|e| e.path.contains(needle) || e.message.contains(needle));
            let hit = hit.unwrap_or_else(|| panic!("{what}: no error mentions `{needle}`: {errs:?}"));
            if *line > 0 {
                assert_eq!(hit.line, *line, "{what}: wrong line in {hit}");
            }
        }
    }

    #[test]
    fn all_errors_are_reported_at_once() {
        let errs = errors(
            "listeners:\n  http:\n    address: nope\nlimits:\n  backend_timeout: 3\nmodels:\n  m:\n    variants:\n      - {name: a, backend: ghost}\n",
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn grpc_listener_and_backend() {
        let c = parse("", Path::new(".")).unwrap();
        let g = c.listeners.grpc.expect("on by default");
        assert_eq!(g.address.to_string(), DEFAULT_GRPC_ADDRESS);
        assert_eq!(g.max_message_bytes, DEFAULT_GRPC_MAX_MESSAGE_BYTES);
        let c = parse("listeners:\n  grpc: {enabled: false}\n", Path::new(".")).unwrap();
        assert!(c.listeners.grpc.is_none());
        let c = parse(
            "listeners:\n  grpc: {address: 127.0.0.1:9001, max_message_bytes: 1024}\nbackends:\n  t:\n    kind: v2-grpc\n    endpoints: ['127.0.0.1:8001', 'http://triton:8001']\n    timeout: 2s\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.listeners.grpc.unwrap().max_message_bytes, 1024);
        let BackendConfig::V2Grpc(b) = &c.backends["t"] else { panic!() };
        assert_eq!(b.endpoints[0].authority, "127.0.0.1:8001");
        assert_eq!(b.endpoints[1].authority, "triton:8001");
        assert_eq!(b.timeout, Duration::from_secs(2));
        assert_eq!(b.max_message_bytes, DEFAULT_GRPC_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn cache_policies_resolve_per_variant() {
        let c = parse(
            "cache:\n  l1_max_bytes: 1024\n  redis: {url: 'redis://127.0.0.1:6379', timeout: 5ms}\nbackends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\nmodels:\n  m:\n    cache: {ttl: 30s, l2: true}\n    variants:\n      - {name: a, backend: b}\n      - {name: n, backend: b, deterministic: false}\n      - {name: o, backend: b, cache: {ttl: 1s, max_entry_bytes: 10}}\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.cache.l1_max_bytes, 1024);
        let r = c.cache.redis.as_ref().unwrap();
        assert_eq!((r.timeout, r.breaker_failures, r.cluster), (Duration::from_millis(5), 5, false));
        let v = &c.models["m"].variants;
        assert_eq!(v[0].cache, Some(CachePolicy { ttl: Duration::from_secs(30), max_entry_bytes: 1 << 20, l2: true }));
        assert_eq!(v[1].cache, None);
        assert!(!v[1].deterministic);
        assert_eq!(v[2].cache, Some(CachePolicy { ttl: Duration::from_secs(1), max_entry_bytes: 10, l2: false }));
        assert_eq!(parse("", Path::new(".")).unwrap().cache.l1_max_bytes, DEFAULT_L1_MAX_BYTES);

        let b = "backends:\n  b: {kind: v2-http, endpoints: ['http://h:1']}\n";
        for (yaml, needle) in [
            (format!("{b}models:\n  m:\n    variants:\n      - {{name: a, backend: b, cache: {{ttl: 1s, l2: true}}}}\n"), "variants[0].cache.l2"),
            (format!("{b}models:\n  m:\n    variants:\n      - {{name: a, backend: b, deterministic: false, cache: {{ttl: 1s}}}}\n"), "variants[0].cache"),
            (format!("{b}models:\n  m:\n    variants:\n      - {{name: a, backend: b, cache: {{ttl: 0s}}}}\n"), "cache.ttl"),
            ("cache:\n  redis: {url: 'http://x:1'}\n".to_string(), "cache.redis.url"),
            ("cache:\n  redis: {timeout: 1ms}\n".to_string(), "cache.redis"),
            ("cache:\n  redis: {cluster: []}\n".to_string(), "cache.redis.cluster"),
        ] {
            let errs = errors(&yaml);
            assert!(errs.iter().any(|e| e.path.contains(needle)), "{needle}: {errs:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2ms").unwrap(), Duration::from_millis(2));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("100us").unwrap(), Duration::from_micros(100));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
