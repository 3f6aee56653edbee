//! The process-wide sections — `listeners`, `limits`, `routing`,
//! `runtime.onnx` and `logging` — which refer to no other section.

use std::path::Path;
use std::sync::Arc;

use super::fields::{address, duration, header_name, loc, message_bytes, positive, Errors};
use super::upstream::parse_upstream;
use crate::raw::*;
use crate::validated::*;

pub(super) fn listeners(errs: &mut Errors, raw: RawListeners, base_dir: &Path, cores: usize) -> Listeners {
    let http_raw = raw.http.unwrap_or_default();
    let default_upstream = http_raw
        .default_upstream
        .as_ref()
        .and_then(|u| parse_upstream(&u.value).map_err(|m| errs.at("listeners.http.default_upstream", loc(u), m)).ok());
    let tls_field = "listeners.http.default_upstream_tls";
    let default_upstream_tls = match (&default_upstream, &http_raw.default_upstream_tls) {
        (Some(up), block) if up.tls => Some(super::tls::client(errs, tls_field, block.as_ref(), base_dir)),
        (Some(_), Some(block)) => {
            errs.at(tls_field, loc(block), "the default_upstream is http://; write https:// to use TLS settings");
            None
        }
        // A bad default_upstream is reported already; a block without one is an error of its own.
        (None, Some(block)) if http_raw.default_upstream.is_none() => {
            errs.at(tls_field, loc(block), "there is no default_upstream to connect to with TLS");
            None
        }
        _ => None,
    };
    let tls = |t: &Option<S<RawTls>>| {
        t.as_ref().map(|t| TlsConfig {
            cert: base_dir.join(&t.value.cert.value),
            key: base_dir.join(&t.value.key.value),
            client_ca: t.value.client_ca.as_ref().map(|c| base_dir.join(&c.value)),
        })
    };
    let http = HttpListener {
        tls: tls(&http_raw.tls),
        address: address(errs, "listeners.http.address", &http_raw.address, DEFAULT_HTTP_ADDRESS),
        default_upstream,
        default_upstream_tls,
        threads: positive(errs, "listeners.http.threads", &http_raw.threads, cores),
    };
    let metrics_tls = raw.metrics.as_ref().filter(|m| m.enabled != Some(false)).and_then(|m| tls(&m.tls));
    let metrics = match raw.metrics {
        Some(m) if m.enabled == Some(false) => None,
        Some(m) => Some(address(errs, "listeners.metrics.address", &m.address, DEFAULT_METRICS_ADDRESS)),
        None => Some(DEFAULT_METRICS_ADDRESS.parse().expect("default parses")),
    };
    let grpc = match raw.grpc {
        Some(g) if g.enabled == Some(false) => None,
        g => {
            let g = g.unwrap_or_default();
            Some(GrpcListener {
                tls: tls(&g.tls),
                address: address(errs, "listeners.grpc.address", &g.address, DEFAULT_GRPC_ADDRESS),
                max_message_bytes: message_bytes(errs, "listeners.grpc.max_message_bytes", &g.max_message_bytes),
            })
        }
    };
    let control = match raw.control {
        Some(c) if c.enabled == Some(false) => None,
        None => Some(ControlListener {
            address: DEFAULT_CONTROL_ADDRESS.parse().expect("default parses"),
            token: None,
            tls: None,
            state_file: None,
        }),
        Some(c) => Some(ControlListener {
            address: address(errs, "listeners.control.address", &c.address, DEFAULT_CONTROL_ADDRESS),
            tls: c.tls.as_ref().map(|t| super::tls::server(errs, "listeners.control.tls", t, base_dir)),
            token: c.token.filter(|t| !t.is_empty()),
            state_file: c.state_file.map(|p| base_dir.join(p)),
        }),
    };
    let torchserve_management = raw.torchserve_management.map(|t| TorchServeManagementListener {
        address: address(
            errs,
            "listeners.torchserve_management.address",
            &t.value.address,
            DEFAULT_TORCHSERVE_MANAGEMENT_ADDRESS,
        ),
        backend: Arc::from(t.value.backend.value.as_str()),
    });
    Listeners { http, metrics, metrics_tls, control, grpc, torchserve_management }
}

pub(super) fn limits(errs: &mut Errors, raw: &RawLimits) -> Limits {
    Limits {
        max_body_bytes: match &raw.max_body_bytes {
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
            &raw.header_read_timeout,
            DEFAULT_HEADER_READ_TIMEOUT,
            false,
        ),
        backend_timeout: duration(errs, "limits.backend_timeout", &raw.backend_timeout, DEFAULT_BACKEND_TIMEOUT, false),
        idle_timeout: duration(errs, "limits.idle_timeout", &raw.idle_timeout, DEFAULT_IDLE_TIMEOUT, false),
        body_read_timeout: duration(
            errs,
            "limits.body_read_timeout",
            &raw.body_read_timeout,
            DEFAULT_BODY_READ_TIMEOUT,
            false,
        ),
        max_header_bytes: match &raw.max_header_bytes {
            Some(s) if s.value < 1024 || s.value as usize > MAX_HEADER_BYTES_CAP => {
                errs.at(
                    "limits.max_header_bytes",
                    loc(s),
                    format!("must be between 1024 and {MAX_HEADER_BYTES_CAP} (pingora's own cap)"),
                );
                DEFAULT_MAX_HEADER_BYTES
            }
            Some(s) => s.value as usize,
            None => DEFAULT_MAX_HEADER_BYTES,
        },
        max_connections: raw
            .max_connections
            .as_ref()
            .map(|_| positive(errs, "limits.max_connections", &raw.max_connections, 1)),
    }
}

/// The routing section, and the default sticky header models inherit.
pub(super) fn routing(errs: &mut Errors, raw: &RawRouting) -> (Routing, Option<String>) {
    let default_sticky = raw.sticky_header.as_ref().and_then(|s| header_name(errs, "routing.sticky_header", s));
    let routing = Routing {
        override_header: raw
            .override_header
            .as_ref()
            .and_then(|s| header_name(errs, "routing.override_header", s))
            .unwrap_or_else(|| DEFAULT_OVERRIDE_HEADER.to_string()),
        allow_override: raw.allow_override.unwrap_or(true),
    };
    (routing, default_sticky)
}

pub(super) fn runtime(errs: &mut Errors, raw: RawRuntime, base_dir: &Path, cores: usize) -> OnnxRuntime {
    let onnx = raw.onnx.unwrap_or_default();
    OnnxRuntime {
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
    }
}

/// `resolver`: name servers as `ip:port` (a name server cannot itself be a name).
pub(super) fn resolver(errs: &mut Errors, raw: &RawResolver) -> ResolverConfig {
    let mut nameservers = Vec::new();
    for (i, n) in raw.nameservers.iter().enumerate() {
        match n.value.parse::<std::net::SocketAddr>() {
            Ok(a) => nameservers.push(a),
            Err(_) => errs.at(
                format!("resolver.nameservers[{i}]"),
                loc(n),
                format!("`{}` is not an ip:port address (e.g. 10.96.0.10:53)", n.value.escape_debug()),
            ),
        }
    }
    ResolverConfig { nameservers }
}

/// `server`: name and version, printable and non-empty (they go into JSON and gRPC answers as they are).
pub(super) fn server(errs: &mut Errors, raw: &RawServer) -> ServerSettings {
    let mut id = ServerSettings::default();
    for (field, v, out) in [("name", &raw.name, &mut id.name), ("version", &raw.version, &mut id.version)] {
        let Some(v) = v else { continue };
        if v.value.is_empty() || v.value.len() > 256 || v.value.chars().any(char::is_control) {
            errs.at(format!("server.{field}"), loc(v), "must be 1 to 256 printable characters");
        } else {
            *out = Arc::from(v.value.as_str());
        }
    }
    id.system_shared_memory = raw.system_shared_memory.as_ref().is_some_and(|v| v.value);
    id
}

pub(super) fn logging(errs: &mut Errors, raw: RawLogging) -> Logging {
    Logging {
        format: match raw.format.as_ref().map(|s| (s.value.as_str(), s)) {
            None | Some(("text", _)) => LogFormat::Text,
            Some(("json", _)) => LogFormat::Json,
            Some((other, s)) => {
                errs.at("logging.format", loc(s), format!("unknown log format `{other}` (expected text or json)"));
                LogFormat::Text
            }
        },
        level: raw.level.unwrap_or_else(|| "info".into()),
    }
}

/// The `control` section: fleet mode.
pub(super) fn control(errs: &mut Errors, raw: &RawControl) -> ControlConfig {
    let Some(f) = &raw.fleet else { return ControlConfig { fleet: None } };
    let path = "control.fleet";
    let v = &f.value;
    let redis = match &v.redis {
        Some(u) if u.value.starts_with("redis://") && u.value.len() > "redis://".len() => u.value.clone(),
        Some(u) => {
            errs.at(format!("{path}.redis"), loc(u), format!("`{}` is not a redis://host:port URL", u.value));
            String::new()
        }
        None => {
            errs.at(path, loc(f), "`redis` (the URL of the Redis holding the fleet's state) is required");
            String::new()
        }
    };
    let name = match &v.fleet {
        Some(n)
            if !n.value.is_empty()
                && n.value.len() <= 64
                && n.value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
        {
            n.value.clone()
        }
        Some(n) => {
            errs.at(
                format!("{path}.fleet"),
                loc(n),
                "a fleet name is 1 to 64 characters of letters, digits, `-`, `_` and `.`",
            );
            String::new()
        }
        None => {
            errs.at(path, loc(f), "`fleet` (the name replicas sharing one state have in common) is required");
            String::new()
        }
    };
    let poll_interval =
        duration(errs, &format!("{path}.poll_interval"), &v.poll_interval, DEFAULT_FLEET_POLL_INTERVAL, false);
    let timeout = duration(errs, &format!("{path}.timeout"), &v.timeout, DEFAULT_FLEET_TIMEOUT, false);
    let lease_ttl = duration(errs, &format!("{path}.lease_ttl"), &v.lease_ttl, DEFAULT_FLEET_LEASE_TTL, false);
    if lease_ttl < timeout * 3 {
        let at = v.lease_ttl.as_ref().map_or(loc(f), loc);
        errs.at(
            format!("{path}.lease_ttl"),
            at,
            format!("must be at least 3 × `timeout` ({timeout:?}): the lease is renewed every third of it"),
        );
    }
    ControlConfig { fleet: Some(FleetConfig { redis, name, poll_interval, lease_ttl, timeout }) }
}
