//! The `admission` and `lifecycle` sections: concurrency limits must name a
//! model or backend that exists, an adaptive range must hold its starting
//! limit, and every duration is positive.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::fields::{duration, loc, positive, Errors};
use crate::raw::{RawAdmission, RawConcurrency, RawLifecycle, S};
use crate::validated::*;

pub(super) fn admission(
    errs: &mut Errors,
    raw: &RawAdmission,
    models: &BTreeMap<Arc<str>, ModelConfig>,
    backends: &BTreeMap<Arc<str>, BackendConfig>,
) -> AdmissionConfig {
    let default_priority = match &raw.default_priority {
        None => 1,
        Some(p) if p.value == 0 => {
            errs.at("admission.default_priority", loc(p), "must be at least 1 (1 is the highest priority)");
            1
        }
        Some(p) => p.value,
    };
    let mut section = |scope: &str, map: &BTreeMap<String, S<RawConcurrency>>, known: &dyn Fn(&str) -> bool| {
        let mut out = BTreeMap::new();
        for (name, c) in map {
            let path = format!("admission.{scope}.{name}");
            if !known(name) {
                let what = if scope == "models" { "model" } else { "backend" };
                errs.at(&path, loc(c), format!("no {what} named `{}` is configured", name.escape_debug()));
                continue;
            }
            out.insert(Arc::from(name.as_str()), concurrency(errs, &path, c));
        }
        out
    };
    let models = section("models", &raw.models, &|n| models.contains_key(n));
    let backends = section("backends", &raw.backends, &|n| backends.contains_key(n));
    AdmissionConfig {
        retry_after: duration(errs, "admission.retry_after", &raw.retry_after, DEFAULT_RETRY_AFTER, false),
        default_priority,
        models,
        backends,
    }
}

fn concurrency(errs: &mut Errors, path: &str, c: &S<RawConcurrency>) -> ConcurrencyLimit {
    let c = &c.value;
    let limit = positive(errs, &format!("{path}.limit"), &Some(c.limit.clone()), 1);
    let adaptive = match c.adaptive {
        Some(true) => {
            let min = positive(errs, &format!("{path}.min_limit"), &c.min_limit, 1);
            let max = positive(errs, &format!("{path}.max_limit"), &c.max_limit, DEFAULT_MAX_ADAPTIVE_LIMIT);
            if !(min <= limit && limit <= max) {
                errs.at(
                    format!("{path}.limit"),
                    loc(&c.limit),
                    format!("an adaptive limit starts between min_limit ({min}) and max_limit ({max}), got {limit}"),
                );
            }
            Some(AdaptiveRange { min, max })
        }
        _ => {
            for (field, v) in [("min_limit", &c.min_limit), ("max_limit", &c.max_limit)] {
                if let Some(v) = v {
                    errs.at(format!("{path}.{field}"), loc(v), format!("{field} needs `adaptive: true`"));
                }
            }
            None
        }
    };
    ConcurrencyLimit {
        limit,
        adaptive,
        queue: c.queue.as_ref().map_or(limit.get(), |q| q.value as usize),
        queue_timeout: duration(errs, &format!("{path}.queue_timeout"), &c.queue_timeout, DEFAULT_QUEUE_TIMEOUT, false),
    }
}

pub(super) fn lifecycle(errs: &mut Errors, raw: &RawLifecycle, base_dir: &Path) -> Lifecycle {
    Lifecycle {
        drain_timeout: duration(errs, "lifecycle.drain_timeout", &raw.drain_timeout, DEFAULT_DRAIN_TIMEOUT, false),
        upgrade_socket: raw.upgrade_socket.as_ref().map_or_else(|| DEFAULT_UPGRADE_SOCKET.into(), |p| base_dir.join(p)),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    const BASE: &str = r#"
backends:
  a: { kind: v2-http, endpoints: ["http://127.0.0.1:9000"] }
models:
  mlp: { variants: [ { name: stable, backend: a } ] }
"#;

    fn parse(extra: &str) -> Result<crate::ValidatedConfig, crate::ConfigError> {
        super::super::parse(&format!("{BASE}{extra}"), Path::new("/etc/sy"))
    }

    #[test]
    fn limits_resolve_with_defaults() {
        let c = parse(
            "admission:\n  default_priority: 2\n  models:\n    mlp: { limit: 4, adaptive: true, max_limit: 16 }\n  backends:\n    a: { limit: 8, queue: 0 }\nlifecycle:\n  drain_timeout: 5s\n  upgrade_socket: up.sock\n",
        )
        .unwrap();
        let m = &c.admission.models["mlp"];
        assert_eq!((m.limit.get(), m.queue, m.queue_timeout), (4, 4, Duration::from_secs(1)));
        let r = m.adaptive.unwrap();
        assert_eq!((r.min.get(), r.max.get()), (1, 16));
        let b = &c.admission.backends["a"];
        assert_eq!((b.limit.get(), b.queue, b.adaptive), (8, 0, None));
        assert_eq!(c.admission.default_priority, 2);
        assert_eq!(c.lifecycle.drain_timeout, Duration::from_secs(5));
        assert_eq!(c.lifecycle.upgrade_socket, Path::new("/etc/sy/up.sock"));
        assert_eq!(c.limits.max_header_bytes, crate::DEFAULT_MAX_HEADER_BYTES);
    }

    #[test]
    fn connection_limits_are_checked() {
        let c = parse("limits:\n  max_header_bytes: 8192\n  idle_timeout: 5s\n  body_read_timeout: 2s\n").unwrap();
        assert_eq!(
            (c.limits.max_header_bytes, c.limits.idle_timeout, c.limits.body_read_timeout),
            (8192, Duration::from_secs(5), Duration::from_secs(2))
        );
        for bad in ["max_header_bytes: 10", "max_header_bytes: 2000000", "idle_timeout: 0s"] {
            let e = parse(&format!("limits:\n  {bad}\n")).unwrap_err();
            let field = bad.split(':').next().unwrap();
            assert_eq!(e.errors[0].path, format!("limits.{field}"), "{bad}: {:?}", e.errors);
        }
    }

    #[test]
    fn bad_limits_are_named() {
        let e = parse(
            "admission:\n  default_priority: 0\n  models:\n    nope: { limit: 1 }\n    mlp: { limit: 50, adaptive: true, max_limit: 10 }\n  backends:\n    a: { limit: 2, min_limit: 1 }\n",
        )
        .unwrap_err();
        let msgs: Vec<String> = e.errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        assert!(msgs.iter().any(|m| m.starts_with("admission.default_priority: must be at least 1")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m == "admission.models.nope: no model named `nope` is configured"), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.starts_with("admission.models.mlp.limit: an adaptive limit starts")), "{msgs:?}");
        assert!(
            msgs.iter().any(|m| m == "admission.backends.a.min_limit: min_limit needs `adaptive: true`"),
            "{msgs:?}"
        );
        assert_eq!(msgs.len(), 4, "{msgs:?}");
    }
}
