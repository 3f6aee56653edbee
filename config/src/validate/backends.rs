//! The `backends` section: each kind's fields → its `BackendConfig` variant,
//! with the defaults that depend on `limits` and `runtime`.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use super::fields::{duration, escaped, header_name, loc, message_bytes, positive, Errors};
use super::sources;
use super::upstream::{parse_grpc_endpoint, parse_http_or_bare, parse_upstream};
use crate::raw::*;
use crate::validated::*;

/// What every backend's defaults hang on.
pub(super) struct Defaults {
    /// `limits.backend_timeout`.
    pub(super) timeout: Duration,
    /// `runtime.onnx.pool_threads`: one ONNX session per pool thread by default.
    pub(super) pool_threads: usize,
}

/// Backends that fail validation are left out (their errors are recorded), so
/// a variant naming one is not also reported as naming an unknown backend.
pub(super) fn backends(
    errs: &mut Errors,
    raw: BTreeMap<String, Spanned<RawBackend>>,
    base_dir: &Path,
    defaults: &Defaults,
) -> BTreeMap<Arc<str>, BackendConfig> {
    let mut out = BTreeMap::new();
    for (name, b) in raw {
        let path = format!("backends.{name}");
        let cfg = match &b.value.fields {
            Some(RawBackendFields::V2Http(r)) => {
                Some(BackendConfig::V2Http(v2_http(errs, &path, loc(&b), r, base_dir, defaults)))
            }
            Some(RawBackendFields::V2Grpc(r)) => {
                Some(BackendConfig::V2Grpc(v2_grpc(errs, &path, loc(&b), r, base_dir, defaults)))
            }
            Some(RawBackendFields::TfServing(r)) => {
                Some(BackendConfig::TfServing(tfserving(errs, &path, loc(&b), r, base_dir, defaults)))
            }
            Some(RawBackendFields::Onnx(r)) => {
                onnx(errs, &path, loc(&b), r, base_dir, defaults).map(BackendConfig::Onnx)
            }
            None => {
                let kind = &b.value.kind;
                errs.at(
                    format!("{path}.kind"),
                    loc(kind),
                    format!("unknown backend kind `{}` (expected v2-http, v2-grpc, tfserving or onnx)", kind.value),
                );
                None
            }
        };
        if let Some(cfg) = cfg {
            out.insert(Arc::<str>::from(name), cfg);
        }
    }
    out
}

/// A remote backend's replicas: the `endpoints` list, each parsed by `parse`,
/// or a `dns` name parsed by the same rule; exactly one of the two.
struct EndpointFields<'a> {
    list: &'a [Spanned<String>],
    dns: &'a Option<Spanned<String>>,
    dns_refresh: &'a Option<Spanned<String>>,
}

fn endpoints(
    errs: &mut Errors,
    path: &str,
    at: &Location,
    raw: EndpointFields<'_>,
    parse: fn(&str) -> Result<Upstream, String>,
    parse_dns: fn(&str) -> Result<Upstream, String>,
    when_empty: &str,
) -> Endpoints {
    let refresh = duration(errs, &format!("{path}.dns_refresh"), raw.dns_refresh, DEFAULT_DNS_REFRESH, false);
    if let Some(d) = raw.dns {
        if !raw.list.is_empty() {
            errs.at(format!("{path}.dns"), loc(d), "give either `endpoints` or `dns`, not both");
        }
        let dns = parse_dns(&d.value).and_then(|u| {
            let (host, port) = u.authority.rsplit_once(':').ok_or_else(|| format!("`{}` needs host:port", d.value))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            let port = port.parse::<u16>().map_err(|_| format!("`{}`: bad port", d.value))?;
            Ok(DnsEndpoints { host, port, base_path: u.base_path, refresh })
        });
        return match dns {
            Ok(dns) => Endpoints::Dns(dns),
            Err(m) => {
                errs.at(format!("{path}.dns"), loc(d), m);
                Endpoints::List(Vec::new())
            }
        };
    }
    if let Some(r) = raw.dns_refresh {
        errs.at(format!("{path}.dns_refresh"), loc(r), "`dns_refresh` applies only with `dns`");
    }
    if raw.list.is_empty() {
        errs.at(format!("{path}.endpoints"), at, when_empty);
    }
    let mut out = Vec::new();
    for (i, e) in raw.list.iter().enumerate() {
        match parse(&e.value) {
            Ok(u) => out.push(u),
            Err(m) => errs.at(format!("{path}.endpoints[{i}]"), loc(e), m),
        }
    }
    Endpoints::List(out)
}

/// A remote backend's `connect_timeout`, the same rule for both kinds.
fn connect_timeout(errs: &mut Errors, path: &str, raw: &Option<Spanned<String>>) -> Duration {
    duration(errs, &format!("{path}.connect_timeout"), raw, DEFAULT_CONNECT_TIMEOUT, false)
}

/// The fields every remote kind (v2-http, v2-grpc, tfserving) shares, as read from the file.
struct RemoteFields<'a> {
    endpoints: EndpointFields<'a>,
    timeout: &'a Option<Spanned<String>>,
    connect_timeout: &'a Option<Spanned<String>>,
    eject_after_failures: &'a Option<Spanned<u64>>,
    eject_for: &'a Option<Spanned<String>>,
    health_check: &'a Option<Spanned<RawHealthCheck>>,
    outlier_detection: &'a Option<Spanned<RawOutlierDetection>>,
    retry_budget: &'a Option<Spanned<RawRetryBudget>>,
    load_metrics: &'a Option<Spanned<RawLoadMetrics>>,
    forward_headers: &'a Option<Spanned<RawForwardHeaders>>,
    tls: Option<&'a Spanned<RawClientTls>>,
}

/// The `RemoteFields` of a raw remote kind's struct (every kind names them
/// alike), with its `load_metrics` (a kind without them passes `&None`).
macro_rules! remote_fields {
    ($r:expr, $load_metrics:expr) => {
        RemoteFields {
            endpoints: EndpointFields { list: &$r.endpoints, dns: &$r.dns, dns_refresh: &$r.dns_refresh },
            timeout: &$r.timeout,
            connect_timeout: &$r.connect_timeout,
            eject_after_failures: &$r.eject_after_failures,
            eject_for: &$r.eject_for,
            health_check: &$r.health_check,
            outlier_detection: &$r.outlier_detection,
            retry_budget: &$r.retry_budget,
            load_metrics: $load_metrics,
            forward_headers: &$r.forward_headers,
            tls: $r.tls.as_ref(),
        }
    };
}

/// How a remote kind's endpoints are written: the rule for each listed one
/// and for `dns`, and the error when there are none.
struct EndpointRules {
    parse: fn(&str) -> Result<Upstream, String>,
    parse_dns: fn(&str) -> Result<Upstream, String>,
    when_empty: &'static str,
}

/// Base URLs (`http[s]://host:port[/prefix]`).
fn http_endpoints(when_empty: &'static str) -> EndpointRules {
    EndpointRules { parse: parse_upstream, parse_dns: parse_http_or_bare, when_empty }
}

/// `host:port` (or `http[s]://host:port`, no path).
fn grpc_endpoints(when_empty: &'static str) -> EndpointRules {
    EndpointRules { parse: parse_grpc_endpoint, parse_dns: parse_grpc_endpoint, when_empty }
}

/// The validated settings every remote kind shares.
struct Remote {
    endpoints: Endpoints,
    timeout: Duration,
    connect_timeout: Duration,
    health: EndpointHealth,
    forward_headers: ForwardHeaders,
    tls: Option<ClientTlsConfig>,
}

/// One rule for the shared fields of every remote kind.
fn remote(
    errs: &mut Errors,
    path: &str,
    at: &Location,
    r: RemoteFields<'_>,
    rules: EndpointRules,
    base_dir: &Path,
    defaults: &Defaults,
) -> Remote {
    let list = r.endpoints.list;
    let dns = r.endpoints.dns.as_ref();
    let endpoints = endpoints(errs, path, at, r.endpoints, rules.parse, rules.parse_dns, rules.when_empty);
    let tls = remote_tls(errs, path, list, dns, r.tls, base_dir);
    let health = health(
        errs,
        path,
        HealthFields {
            eject_after_failures: r.eject_after_failures,
            eject_for: r.eject_for,
            health_check: r.health_check,
            outlier_detection: r.outlier_detection,
            retry_budget: r.retry_budget,
            load_metrics: r.load_metrics,
            backend_tls: tls.is_some(),
        },
    );
    Remote {
        endpoints: with_scheme(endpoints, tls.is_some()),
        timeout: duration(errs, &format!("{path}.timeout"), r.timeout, defaults.timeout, false),
        connect_timeout: connect_timeout(errs, path, r.connect_timeout),
        health,
        forward_headers: forward_headers(errs, path, r.forward_headers),
        tls,
    }
}

fn v2_http(
    errs: &mut Errors,
    path: &str,
    at: &Location,
    r: &RawV2HttpBackend,
    base_dir: &Path,
    defaults: &Defaults,
) -> V2HttpBackend {
    let fields = remote_fields!(r, &r.load_metrics);
    let rules = http_endpoints("a v2-http backend needs at least one endpoint (or `dns: host:port`)");
    let c = remote(errs, path, at, fields, rules, base_dir, defaults);
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
    V2HttpBackend {
        endpoints: c.endpoints,
        timeout: c.timeout,
        connect_timeout: c.connect_timeout,
        pool_size: pool_size(errs, path, &r.pool_size),
        health: c.health,
        binary,
        forward_headers: c.forward_headers,
        tls: c.tls,
    }
}

fn pool_size(errs: &mut Errors, path: &str, raw: &Option<Spanned<u64>>) -> usize {
    positive(errs, &format!("{path}.pool_size"), raw, DEFAULT_POOL_SIZE).get()
}

fn v2_grpc(
    errs: &mut Errors,
    path: &str,
    at: &Location,
    r: &RawV2GrpcBackend,
    base_dir: &Path,
    defaults: &Defaults,
) -> V2GrpcBackend {
    let fields = remote_fields!(r, &r.load_metrics);
    let rules = grpc_endpoints("a v2-grpc backend needs at least one endpoint (host:port, or `dns: host:port`)");
    let c = remote(errs, path, at, fields, rules, base_dir, defaults);
    V2GrpcBackend {
        endpoints: c.endpoints,
        timeout: c.timeout,
        connect_timeout: c.connect_timeout,
        max_message_bytes: message_bytes(errs, &format!("{path}.max_message_bytes"), &r.max_message_bytes),
        health: c.health,
        forward_headers: c.forward_headers,
        tls: c.tls,
    }
}

/// A `tfserving` backend: the shared remote fields under the rules of its
/// `protocol`, and the fields only one protocol has refused on the other.
fn tfserving(
    errs: &mut Errors,
    path: &str,
    at: &Location,
    r: &RawTfServingBackend,
    base_dir: &Path,
    defaults: &Defaults,
) -> TfServingBackend {
    let grpc = match r.protocol.as_ref().map(|s| (s.value.as_str(), s)) {
        None | Some(("rest", _)) => false,
        Some(("grpc", _)) => true,
        Some((other, s)) => {
            errs.at(
                format!("{path}.protocol"),
                loc(s),
                format!("unknown protocol `{}` (expected rest or grpc)", escaped(other)),
            );
            false
        }
    };
    // A setting of the other protocol would be read and never used: refused.
    let only = |errs: &mut Errors, field: &str, v: Option<&Spanned<u64>>, protocol: &str| {
        if let Some(v) = v {
            errs.at(format!("{path}.{field}"), loc(v), format!("`{field}` applies only with `protocol: {protocol}`"));
        }
    };
    // TF Serving exports no queue figures in the names load-aware picking reads.
    let fields = remote_fields!(r, &None);
    let (rules, transport) = if grpc {
        only(errs, "pool_size", r.pool_size.as_ref(), "rest");
        let max_message_bytes = message_bytes(errs, &format!("{path}.max_message_bytes"), &r.max_message_bytes);
        let rules = grpc_endpoints("a tfserving backend needs at least one endpoint (host:port, or `dns: host:port`)");
        (rules, TfTransport::Grpc { max_message_bytes })
    } else {
        only(errs, "max_message_bytes", r.max_message_bytes.as_ref(), "grpc");
        let rules =
            http_endpoints("a tfserving backend needs at least one endpoint (http://host:port, or `dns: host:port`)");
        (rules, TfTransport::Rest { pool_size: pool_size(errs, path, &r.pool_size) })
    };
    let c = remote(errs, path, at, fields, rules, base_dir, defaults);
    let signature_name = match &r.signature_name {
        None => Arc::from(DEFAULT_TF_SIGNATURE),
        Some(s) if s.value.is_empty() || s.value.chars().any(char::is_control) => {
            errs.at(format!("{path}.signature_name"), loc(s), "must be a non-empty name without control characters");
            Arc::from(DEFAULT_TF_SIGNATURE)
        }
        Some(s) => Arc::from(s.value.as_str()),
    };
    TfServingBackend {
        endpoints: c.endpoints,
        transport,
        signature_name,
        timeout: c.timeout,
        connect_timeout: c.connect_timeout,
        health: c.health,
        forward_headers: c.forward_headers,
        tls: c.tls,
    }
}

/// A remote backend's TLS: `Some` when its endpoints use it (see
/// `tls::backend_uses_tls`), with its `tls:` block's files checked.
fn remote_tls(
    errs: &mut Errors,
    path: &str,
    list: &[Spanned<String>],
    dns: Option<&Spanned<String>>,
    block: Option<&Spanned<RawClientTls>>,
    base_dir: &Path,
) -> Option<ClientTlsConfig> {
    let on = super::tls::backend_uses_tls(errs, path, list, dns, block);
    let cfg = super::tls::client(errs, &format!("{path}.tls"), block, base_dir);
    on.then_some(cfg)
}

/// Every listed endpoint takes the backend's transport (a bare `host:port` included).
fn with_scheme(endpoints: Endpoints, tls: bool) -> Endpoints {
    match endpoints {
        Endpoints::List(list) => Endpoints::List(list.into_iter().map(|u| Upstream { tls, ..u }).collect()),
        dns => dns,
    }
}

/// The endpoint-health fields both remote kinds share.
struct HealthFields<'a> {
    eject_after_failures: &'a Option<Spanned<u64>>,
    eject_for: &'a Option<Spanned<String>>,
    health_check: &'a Option<Spanned<RawHealthCheck>>,
    outlier_detection: &'a Option<Spanned<RawOutlierDetection>>,
    retry_budget: &'a Option<Spanned<RawRetryBudget>>,
    load_metrics: &'a Option<Spanned<RawLoadMetrics>>,
    /// Whether the endpoints are TLS: load scrapes follow unless `load_metrics.tls` says otherwise.
    backend_tls: bool,
}

fn health(errs: &mut Errors, path: &str, r: HealthFields<'_>) -> EndpointHealth {
    let d = EndpointHealth::default();
    let count = |errs: &mut Errors, field: &str, v: &Option<Spanned<u64>>, default: u32| -> u32 {
        let n = positive(errs, &format!("{path}.{field}"), v, default as usize).get();
        u32::try_from(n).unwrap_or(u32::MAX)
    };
    let health_check = r.health_check.as_ref().map(|h| {
        let h = &h.value;
        let p = "health_check";
        let interval = duration(errs, &format!("{path}.{p}.interval"), &h.interval, Duration::from_secs(5), false);
        let timeout = duration(errs, &format!("{path}.{p}.timeout"), &h.timeout, Duration::from_secs(1), false);
        if let Some(t) = &h.timeout {
            if timeout > interval {
                errs.at(format!("{path}.{p}.timeout"), loc(t), "must not be longer than `interval`");
            }
        }
        HealthCheck {
            interval,
            timeout,
            unhealthy_after: count(errs, "health_check.unhealthy_after", &h.unhealthy_after, 2),
            healthy_after: count(errs, "health_check.healthy_after", &h.healthy_after, 2),
        }
    });
    let outlier_detection = r.outlier_detection.as_ref().map(|o| {
        let o = &o.value;
        let p = format!("{path}.outlier_detection");
        let max_ejected_percent = match &o.max_ejected_percent {
            None => 50,
            Some(v) if v.value > 100 => {
                errs.at(format!("{p}.max_ejected_percent"), loc(v), "must be between 0 and 100");
                50
            }
            Some(v) => v.value as u32,
        };
        OutlierDetection {
            interval: duration(errs, &format!("{p}.interval"), &o.interval, Duration::from_secs(10), false),
            min_requests: count(errs, "outlier_detection.min_requests", &o.min_requests, 20),
            max_error_rate: number(errs, &format!("{p}.max_error_rate"), &o.max_error_rate, 0.5, (0.0, 1.0)),
            max_latency_ratio: o
                .max_latency_ratio
                .as_ref()
                .map(|_| number(errs, &format!("{p}.max_latency_ratio"), &o.max_latency_ratio, 3.0, (1.0, f64::MAX))),
            max_ejected_percent,
        }
    });
    let retry_budget = match r.retry_budget {
        None => d.retry_budget.clone(),
        Some(b) => RetryBudget {
            ratio: number(errs, &format!("{path}.retry_budget.ratio"), &b.value.ratio, 0.2, (0.0, 1.0)),
            min_per_second: b.value.min_per_second.as_ref().map_or(10, |v| u32::try_from(v.value).unwrap_or(u32::MAX)),
        },
    };
    let load_metrics = r.load_metrics.as_ref().map(|m| {
        let m = &m.value;
        let p = format!("{path}.load_metrics");
        let port = m.port.as_ref().and_then(|v| match u16::try_from(v.value) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                errs.at(format!("{p}.port"), loc(v), format!("`{}` is not a TCP port (1-65535)", v.value));
                None
            }
        });
        let path = match &m.path {
            None => "/metrics".to_string(),
            Some(s) if s.value.starts_with('/') && s.value.parse::<http::uri::PathAndQuery>().is_ok() => {
                s.value.clone()
            }
            Some(s) => {
                errs.at(format!("{p}.path"), loc(s), format!("`{}` is not an absolute URL path", escaped(&s.value)));
                "/metrics".to_string()
            }
        };
        LoadMetrics {
            port,
            path,
            interval: duration(errs, &format!("{p}.interval"), &m.interval, Duration::from_secs(1), false),
            // Triton serves its metrics port in plain HTTP even when its gRPC port is TLS.
            tls: m.tls.as_ref().map_or(r.backend_tls, |t| t.value),
        }
    });
    EndpointHealth {
        eject_after_failures: count(errs, "eject_after_failures", r.eject_after_failures, d.eject_after_failures),
        eject_for: duration(errs, &format!("{path}.eject_for"), r.eject_for, d.eject_for, true),
        health_check,
        outlier_detection,
        retry_budget,
        load_metrics,
    }
}

/// A number within `[lo, hi]`.
fn number(errs: &mut Errors, path: &str, v: &Option<Spanned<f64>>, default: f64, (lo, hi): (f64, f64)) -> f64 {
    match v {
        None => default,
        Some(s) if s.value.is_finite() && s.value >= lo && s.value <= hi => s.value,
        Some(s) if hi == f64::MAX => {
            errs.at(path, loc(s), format!("must be at least {lo}, got {}", s.value));
            default
        }
        Some(s) => {
            errs.at(path, loc(s), format!("must be between {lo} and {hi}, got {}", s.value));
            default
        }
    }
}

fn onnx(
    errs: &mut Errors,
    path: &str,
    at: &Location,
    r: &RawOnnxBackend,
    base_dir: &Path,
    defaults: &Defaults,
) -> Option<OnnxBackend> {
    let Some(repo) = &r.repository else {
        errs.at(
            format!("{path}.repository"),
            at,
            "an onnx backend needs `repository` (a directory MODEL/VERSION/model.onnx, or mlflow://HOST[:PORT]/MODEL)",
        );
        return None;
    };
    let mut version_policy = match &r.version_policy {
        None => VersionPolicy::Latest(NonZeroUsize::MIN),
        Some(p) => version_policy(errs, &format!("{path}.version_policy"), p),
    };
    let mut models: Vec<String> = r.models.iter().map(|m| m.value.clone()).collect();
    let (repository, mlflow) = if repo.value.starts_with(sources::MLFLOW_SCHEME) {
        let name = path.strip_prefix("backends.").unwrap_or(path);
        let (cache_dir, source) = sources::mlflow(errs, path, name, repo, r.mlflow.as_ref(), base_dir)?;
        if let Some(p) = &r.version_policy {
            errs.at(
                format!("{path}.version_policy"),
                loc(p),
                "an MLflow repository serves the version its URL selects (…/MODEL/3, @alias, /Stage): drop version_policy",
            );
        }
        if let Some(m) = r.models.iter().find(|m| m.value != source.model) {
            errs.at(
                format!("{path}.models"),
                loc(m),
                format!("this backend serves only `{}`, the model its MLflow URL names", source.model),
            );
        }
        // The cache holds what the registry selects: every version in it is served (old ones leave once the new one is up).
        version_policy = VersionPolicy::All;
        models = vec![source.model.clone()];
        (cache_dir, Some(source))
    } else {
        if let Some(m) = &r.mlflow {
            errs.at(
                format!("{path}.mlflow"),
                loc(m),
                "applies only when `repository` is an mlflow://HOST[:PORT]/MODEL URL",
            );
        }
        let repository = base_dir.join(&repo.value);
        if !repository.is_dir() {
            errs.at(format!("{path}.repository"), loc(repo), format!("`{}` is not a directory", repository.display()));
        }
        (repository, None)
    };
    Some(OnnxBackend {
        repository,
        version_policy,
        models,
        warmup: r.warmup.as_ref().map(|w| w.value as u32).unwrap_or(DEFAULT_WARMUP_RUNS),
        warmup_requests: match &r.warmup_requests {
            None => DEFAULT_WARMUP_REQUESTS,
            Some(w) if w.value == 0 || w.value > 1000 => {
                errs.at(format!("{path}.warmup_requests"), loc(w), "must be 1 to 1000");
                DEFAULT_WARMUP_REQUESTS
            }
            Some(w) => w.value as u32,
        },
        // One session per pool thread, so one model can use every core.
        instances: positive(errs, &format!("{path}.instances"), &r.instances, defaults.pool_threads),
        poll_interval: duration(
            errs,
            &format!("{path}.poll_interval"),
            &r.poll_interval,
            DEFAULT_REPOSITORY_POLL,
            false,
        ),
        mlflow,
    })
}

fn version_policy(errs: &mut Errors, path: &str, p: &Spanned<RawVersionPolicy>) -> VersionPolicy {
    let v = &p.value;
    let given = v.latest.is_some() as u8 + v.specific.is_some() as u8 + v.all.is_some() as u8;
    if given != 1 {
        errs.at(path, loc(p), "give exactly one of `latest: N`, `specific: [..]` or `all: true`");
        VersionPolicy::Latest(NonZeroUsize::MIN)
    } else if let Some(n) = v.latest {
        match NonZeroUsize::new(n as usize) {
            Some(n) => VersionPolicy::Latest(n),
            None => {
                errs.at(format!("{path}.latest"), loc(p), "must be at least 1");
                VersionPolicy::Latest(NonZeroUsize::MIN)
            }
        }
    } else if let Some(s) = &v.specific {
        if s.is_empty() {
            errs.at(format!("{path}.specific"), loc(p), "list at least one version");
        }
        VersionPolicy::Specific(s.clone())
    } else {
        VersionPolicy::All
    }
}

/// Header names lower-cased and deduplicated; a name may not be both allowed
/// and denied (the proxy's fixed exclusions are not config's to list).
fn forward_headers(errs: &mut Errors, path: &str, raw: &Option<Spanned<RawForwardHeaders>>) -> ForwardHeaders {
    let Some(raw) = raw else {
        return ForwardHeaders::default();
    };
    let path = format!("{path}.forward_headers");
    let allow = raw.value.allow.as_ref().map(|l| header_names(errs, &format!("{path}.allow"), l));
    let deny = header_names(errs, &format!("{path}.deny"), &raw.value.deny);
    if let Some(allow) = &allow {
        for (name, at, s) in &deny {
            if allow.iter().any(|(a, _, _)| a == name) {
                errs.at(at, loc(s), format!("`{name}` is both allowed and denied; keep it in one of the two lists"));
            }
        }
    }
    ForwardHeaders {
        allow: allow.map(|a| a.into_iter().map(|(n, _, _)| n).collect()),
        deny: deny.into_iter().map(|(n, _, _)| n).collect(),
    }
}

/// Valid names of `list`, lower-cased, first occurrences only, each with its path and span.
fn header_names<'a>(
    errs: &mut Errors,
    path: &str,
    list: &'a [Spanned<String>],
) -> Vec<(Arc<str>, String, &'a Spanned<String>)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if let Some(name) = header_name(errs, &at, s) {
            if seen.insert(name.clone()) {
                out.push((Arc::<str>::from(name), at, s));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, base_dir: &Path) -> Result<ValidatedConfig, ConfigError> {
        ValidatedConfig::parse(text, base_dir)
    }

    fn backend(yaml: &str) -> BackendConfig {
        let c = parse(&format!("backends:\n  b:\n{yaml}"), Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
        c.backends["b"].clone()
    }

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn forward_headers_default_to_everything_the_proxy_allows() {
        let BackendConfig::V2Http(h) = backend("    kind: v2-http\n    endpoints: ['http://h:1']\n") else { panic!() };
        assert_eq!(h.forward_headers, ForwardHeaders { allow: None, deny: vec![] });
        let BackendConfig::V2Grpc(g) = backend("    kind: v2-grpc\n    endpoints: ['h:1']\n") else { panic!() };
        assert_eq!(g.forward_headers, ForwardHeaders::default());
    }

    #[test]
    fn forward_headers_are_lower_cased_and_deduplicated() {
        let BackendConfig::V2Http(h) = backend(
            "    kind: v2-http\n    endpoints: ['http://h:1']\n    forward_headers:\n      allow: [Authorization, X-Tenant, x-tenant]\n      deny: [Cookie]\n",
        ) else {
            panic!()
        };
        assert_eq!(h.forward_headers.allow, Some(names(&["authorization", "x-tenant"])));
        assert_eq!(h.forward_headers.deny, names(&["cookie"]));
        let BackendConfig::V2Grpc(g) =
            backend("    kind: v2-grpc\n    endpoints: ['h:1']\n    forward_headers: {allow: [], deny: [x-debug]}\n")
        else {
            panic!()
        };
        // An empty allow list forwards nothing, which is not the same as no list.
        assert_eq!(g.forward_headers, ForwardHeaders { allow: Some(vec![]), deny: names(&["x-debug"]) });
    }

    #[test]
    fn every_backend_is_checked_after_one_fails() {
        let errs = parse(
            "backends:\n  a: {kind: v2-http, endpoints: ['http://b\\x7fd:1'], binary: sometimes}\n  b: {kind: v2-grpc}\n  c: {kind: onnx}\n",
            Path::new("."),
        )
        .unwrap_err()
        .errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["backends.a.endpoints[0]", "backends.a.binary", "backends.b.endpoints", "backends.c.repository"],
            "{errs:?}"
        );
    }

    #[test]
    fn dns_endpoints_take_host_port_with_a_refresh_bound() {
        let BackendConfig::V2Http(h) =
            backend("    kind: v2-http\n    dns: triton-headless.models.svc:8000\n    dns_refresh: 2s\n")
        else {
            panic!()
        };
        let want = DnsEndpoints {
            host: "triton-headless.models.svc".into(),
            port: 8000,
            base_path: String::new(),
            refresh: Duration::from_secs(2),
        };
        assert_eq!(h.endpoints, Endpoints::Dns(want));
        let BackendConfig::V2Http(h) = backend("    kind: v2-http\n    dns: http://t.svc:8000/api/\n") else {
            panic!()
        };
        let Endpoints::Dns(d) = h.endpoints else { panic!() };
        assert_eq!((d.base_path.as_str(), d.refresh), ("/api", DEFAULT_DNS_REFRESH));
        let BackendConfig::V2Grpc(g) = backend("    kind: v2-grpc\n    dns: t.svc:8001\n") else { panic!() };
        assert!(matches!(g.endpoints, Endpoints::Dns(DnsEndpoints { port: 8001, .. })));
    }

    #[test]
    fn dns_and_endpoints_are_exclusive_and_checked() {
        let errs = parse(
            "backends:\n  a: {kind: v2-http, endpoints: ['http://h:1'], dns: 'h:1'}\n  b: {kind: v2-grpc, dns: 'h'}\n  c: {kind: v2-http, endpoints: ['http://h:1'], dns_refresh: 1s}\n  d: {kind: v2-grpc, dns: 'h:1/x'}\n",
            Path::new("."),
        )
        .unwrap_err()
        .errors;
        let got: Vec<(&str, &str)> = errs.iter().map(|e| (e.path.as_str(), e.message.as_str())).collect();
        assert_eq!(got.len(), 4, "{got:?}");
        assert!(got[0].0 == "backends.a.dns" && got[0].1.contains("not both"), "{got:?}");
        assert!(got[1].0 == "backends.b.dns" && got[1].1.contains("port"), "{got:?}");
        assert!(got[2].0 == "backends.c.dns_refresh" && got[2].1.contains("only with `dns`"), "{got:?}");
        assert!(got[3].0 == "backends.d.dns" && got[3].1.contains("without a path"), "{got:?}");
    }

    #[test]
    fn endpoint_health_for_both_remote_kinds() {
        let BackendConfig::V2Grpc(g) = backend(
            "    kind: v2-grpc\n    endpoints: ['h:1']\n    eject_after_failures: 2\n    eject_for: 3s\n    health_check: {interval: 2s, timeout: 500ms, unhealthy_after: 3}\n    outlier_detection: {interval: 5s, max_error_rate: 0.1, max_latency_ratio: 4}\n    retry_budget: {ratio: 0.1, min_per_second: 2}\n    load_metrics: {port: 8002}\n",
        ) else {
            panic!()
        };
        let want = EndpointHealth {
            eject_after_failures: 2,
            eject_for: Duration::from_secs(3),
            health_check: Some(HealthCheck {
                interval: Duration::from_secs(2),
                timeout: Duration::from_millis(500),
                unhealthy_after: 3,
                healthy_after: 2,
            }),
            outlier_detection: Some(OutlierDetection {
                interval: Duration::from_secs(5),
                min_requests: 20,
                max_error_rate: 0.1,
                max_latency_ratio: Some(4.0),
                max_ejected_percent: 50,
            }),
            retry_budget: RetryBudget { ratio: 0.1, min_per_second: 2 },
            load_metrics: Some(LoadMetrics {
                port: Some(8002),
                path: "/metrics".into(),
                interval: Duration::from_secs(1),
                tls: false,
            }),
        };
        assert_eq!(g.health, want);
        let BackendConfig::V2Http(h) = backend("    kind: v2-http\n    endpoints: ['http://h:1']\n") else { panic!() };
        assert_eq!(h.health, EndpointHealth::default());
    }

    #[test]
    fn endpoint_health_errors_name_their_field() {
        let errs = parse(
            "backends:\n  a:\n    kind: v2-http\n    endpoints: ['http://h:1']\n    health_check: {interval: 1s, timeout: 2s, healthy_after: 0}\n    outlier_detection: {max_error_rate: 1.5, max_latency_ratio: 0.5, max_ejected_percent: 101}\n    retry_budget: {ratio: -1}\n    load_metrics: {port: 70000, path: metrics}\n",
            Path::new("."),
        )
        .unwrap_err()
        .errors;
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "backends.a.health_check.timeout",
                "backends.a.health_check.healthy_after",
                "backends.a.outlier_detection.max_error_rate",
                "backends.a.outlier_detection.max_latency_ratio",
                "backends.a.outlier_detection.max_ejected_percent",
                "backends.a.retry_budget.ratio",
                "backends.a.load_metrics.port",
                "backends.a.load_metrics.path",
            ],
            "{errs:?}"
        );
    }

    #[test]
    fn tfserving_rest_and_grpc_share_the_remote_fields() {
        let BackendConfig::TfServing(r) = backend(
            "    kind: tfserving\n    endpoints: ['http://tf:8501/prefix']\n    timeout: 3s\n    pool_size: 8\n    eject_after_failures: 2\n    forward_headers: {allow: [X-Tenant]}\n",
        ) else {
            panic!()
        };
        assert_eq!(r.transport, TfTransport::Rest { pool_size: 8 });
        assert_eq!(&*r.signature_name, DEFAULT_TF_SIGNATURE);
        assert_eq!(r.timeout, Duration::from_secs(3));
        assert_eq!(r.health.eject_after_failures, 2);
        assert_eq!(r.forward_headers.allow, Some(names(&["x-tenant"])));
        let Endpoints::List(l) = &r.endpoints else { panic!() };
        assert_eq!((l[0].authority.as_str(), l[0].base_path.as_str()), ("tf:8501", "/prefix"));
        let BackendConfig::TfServing(g) = backend(
            "    kind: tfserving\n    protocol: grpc\n    dns: tf-headless:8500\n    signature_name: predict_images\n    max_message_bytes: 1024\n    health_check: {interval: 1s}\n",
        ) else {
            panic!()
        };
        assert_eq!(g.transport, TfTransport::Grpc { max_message_bytes: 1024 });
        assert_eq!(&*g.signature_name, "predict_images");
        assert!(matches!(g.endpoints, Endpoints::Dns(DnsEndpoints { port: 8500, .. })));
        assert!(g.health.health_check.is_some());
    }

    #[test]
    fn tfserving_errors_name_their_field() {
        let cases = [
            ("{kind: tfserving}", "backends.b.endpoints", "needs at least one endpoint"),
            (
                "{kind: tfserving, protocol: http2, endpoints: ['http://h:1']}",
                "backends.b.protocol",
                "unknown protocol `http2` (expected rest or grpc)",
            ),
            (
                "{kind: tfserving, protocol: grpc, endpoints: ['h:1'], pool_size: 4}",
                "backends.b.pool_size",
                "applies only with `protocol: rest`",
            ),
            (
                "{kind: tfserving, endpoints: ['http://h:1'], max_message_bytes: 4}",
                "backends.b.max_message_bytes",
                "applies only with `protocol: grpc`",
            ),
            ("{kind: tfserving, protocol: grpc, endpoints: ['h:1/v1']}", "backends.b.endpoints[0]", ""),
            ("{kind: tfserving, endpoints: ['ftp://h:1']}", "backends.b.endpoints[0]", ""),
            (
                "{kind: tfserving, endpoints: ['http://h:1'], signature_name: ''}",
                "backends.b.signature_name",
                "non-empty",
            ),
            ("{kind: tfserving, endpoints: ['http://h:1'], timeout: soon}", "backends.b.timeout", ""),
            (
                "{kind: tfserving, endpoints: ['http://h:1'], health_check: {interval: 1s, timeout: 2s}}",
                "backends.b.health_check.timeout",
                "longer than",
            ),
        ];
        for (yaml, path, words) in cases {
            let errs = parse(&format!("backends:\n  b: {yaml}\n"), Path::new(".")).unwrap_err().errors;
            assert_eq!(errs.len(), 1, "{yaml}: {errs:?}");
            assert_eq!(errs[0].path, path, "{yaml}: {errs:?}");
            assert!(errs[0].message.contains(words), "{yaml}: {errs:?}");
        }
        // Fields no TF Serving backend has are unknown to the kind.
        let e = parse("backends:\n  b: {kind: tfserving, endpoints: ['http://h:1'], binary: auto}\n", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("binary"));
        let e =
            parse("backends:\n  b: {kind: tfserving, endpoints: ['http://h:1'], load_metrics: {}}\n", Path::new("."));
        assert!(e.unwrap_err().to_string().contains("load_metrics"));
    }
}
