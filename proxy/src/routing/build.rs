//! Snapshot assembly: a validated config and the built backends become a
//! `RoutingTable` — routes, variants with their backends, pre-built targets
//! and header values, metric handles, batch queues (carried over from the
//! previous snapshot when unchanged) and cache handles. Runs off the request
//! path, on reload.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use switchyard_config::ValidatedConfig;
use switchyard_runtime::ModelTarget;

use super::select::{Arm, Picker};
use super::{BuildContext, Route, RoutingTable, Variant, VersionBatchers, WILDCARD};
use crate::batch::Batcher;

impl RoutingTable {
    /// Builds a snapshot; batch schedulers are spawned on the current tokio runtime.
    pub fn build(cfg: &ValidatedConfig, ctx: &BuildContext<'_>, generation: u64) -> Result<RoutingTable, String> {
        let (backends, metrics) = (ctx.backends, ctx.metrics);
        let mut routes = HashMap::new();
        // One queue per (backend, model, version), shared by variants that agree on all three.
        let mut batchers: HashMap<(Arc<str>, ModelTarget), Arc<Batcher>> = HashMap::new();
        let mut wildcard = None;
        let mut monitored = std::collections::HashSet::new();
        let mut tracked = std::collections::HashSet::new();
        for (name, m) in &cfg.models {
            let is_wild = name.as_ref() == WILDCARD;
            let mut variants = Vec::with_capacity(m.variants.len());
            let mut targets = Vec::with_capacity(m.variants.len());
            for v in &m.variants {
                let backend = backends
                    .get(&v.backend)
                    .ok_or_else(|| {
                        format!("model `{name}` variant `{}`: backend `{}` is not built", v.name, v.backend)
                    })?
                    .clone();
                let target = (!is_wild).then(|| ModelTarget {
                    name: v.model.clone().unwrap_or_else(|| name.clone()),
                    version: v.version.clone(),
                });
                let batcher = match (&v.batching, &target) {
                    (None, _) => None,
                    (Some(_), None) => {
                        return Err(format!(
                            "model `{name}` variant `{}`: batching needs a named model route, not `*`",
                            v.name
                        ))
                    }
                    (Some(b), Some(t)) => {
                        let key = (v.backend.clone(), t.clone());
                        let reuse = ctx
                            .previous
                            .and_then(|p| p.batchers.get(&key))
                            .filter(|old| old.serves(&backend, b))
                            .cloned();
                        if let Some(existing) = batchers.get(&key).filter(|e| e.config() != b) {
                            return Err(format!(
                                "model `{name}` variant `{}`: batching settings differ from another variant's on the same backend `{}`, model `{}` and version `{}` ({:?} vs {:?}); they share one queue, so make them equal",
                                v.name,
                                v.backend,
                                t.name,
                                t.version.as_deref().unwrap_or("latest"),
                                b,
                                existing.config()
                            ));
                        }
                        Some(
                            batchers
                                .entry(key)
                                .or_insert_with(|| {
                                    reuse.unwrap_or_else(|| {
                                        let m = metrics.batch(&t.name, t.version.as_deref().unwrap_or(""), &v.backend);
                                        Batcher::spawn(backend.clone(), t.clone(), b.clone(), m)
                                    })
                                })
                                .clone(),
                        )
                    }
                };
                targets.push(target);
                let stats = ctx.stats.get_or_create(name, &v.name);
                if let Some(q) = &m.quality {
                    let task = match q.task {
                        switchyard_config::QualityTask::Classification => {
                            switchyard_stats::quality::Task::Classification
                        }
                        switchyard_config::QualityTask::Regression => switchyard_stats::quality::Task::Regression,
                    };
                    stats.configure_quality(task, q.window.get());
                }
                let drift = match (&m.drift, ctx.monitoring) {
                    (None, _) => None,
                    (Some(_), _) if is_wild => {
                        return Err(format!("model `{name}`: drift monitoring needs a named model route, not `*`"))
                    }
                    (Some(_), None) => return Err(format!("model `{name}`: drift monitoring is not available here")),
                    (Some(d), Some(mon)) => {
                        monitored.insert((name.to_string(), v.name.to_string()));
                        Some(mon.drift_monitor(name, &v.name, d, stats.clone())?)
                    }
                };
                variants.push(Variant {
                    name: v.name.clone(),
                    weight: v.weight,
                    backend_name: v.backend.clone(),
                    backend,
                    model: v.model.clone(),
                    version: v.version.clone(),
                    header_value: HeaderValue::from_str(&v.name)
                        .map_err(|_| format!("variant name `{}` is not a valid header value", v.name))?,
                    metrics: metrics.variant(name, &v.name),
                    other_versions: match (&v.batching, &batcher) {
                        (Some(b), Some(_)) => Some(VersionBatchers::new(b.clone(), v.backend.clone(), metrics.clone())),
                        _ => None,
                    },
                    batcher,
                    stats,
                    drift,
                    shadow_percent: v.shadow_percent,
                    labels: v.labels.clone(),
                    torchserve: v.torchserve.clone().map(Arc::new),
                    cache: ctx.cache.and_then(|c| c.variant(name, v, cfg.backends.get(&v.backend))),
                    features: match &v.features {
                        None => None,
                        Some(f) => Some(Arc::new(
                            crate::features::Enricher::new(
                                f.clone(),
                                crate::features::FeatureMetrics::new(name, &v.name),
                            )
                            .map_err(|e| format!("model `{name}` variant `{}`: {e}", v.name))?,
                        )),
                    },
                });
            }
            let shadows =
                variants.iter().enumerate().filter(|(_, v)| v.shadow_percent.is_some()).map(|(i, _)| i).collect();
            let picker = Picker::new(
                name.clone(),
                variants.iter().map(|v| Arm::new(v.name.clone(), v.weight, v.version.clone())).collect(),
            );
            let quality = match (&m.quality, ctx.monitoring) {
                (None, _) => None,
                (Some(_), _) if is_wild => {
                    return Err(format!("model `{name}`: quality monitoring needs a named model route, not `*`"))
                }
                (Some(_), None) => return Err(format!("model `{name}`: quality monitoring is not available here")),
                (Some(q), Some(mon)) => {
                    tracked.insert(name.to_string());
                    Some(mon.quality_tracker(name, q))
                }
            };
            if let Some(q) = &quality {
                q.bind_variants(variants.iter().map(|v| (v.name.clone(), v.stats.clone())).collect());
            }
            // Live sequences outlive a reload while their route does.
            let sequences =
                match ctx.previous.and_then(|p| p.routes.get(name).or(p.wildcard.as_ref().filter(|_| is_wild))) {
                    Some(old) => {
                        old.sequences.configure(&m.sequences);
                        old.sequences.clone()
                    }
                    None => crate::sequence::SequenceTable::new(name.clone(), &m.sequences, &metrics.sequences),
                };
            let names: Vec<&str> = variants.iter().map(|v| v.name.as_ref()).collect();
            let rules = super::rules::Rules::build(name, &m.rules, &names, |r| metrics.rule(name, r))?;
            let route = Arc::new(Route {
                rules,
                sequences,
                quality,
                shadows,
                picker,
                name: name.clone(),
                sticky_header: m
                    .sticky_header
                    .as_deref()
                    .map(|h| h.parse().map_err(|_| format!("bad sticky header `{h}`")))
                    .transpose()?,
                variants,
                targets,
                graph: None,
            });
            if is_wild {
                wildcard = Some(route);
            } else {
                routes.insert(name.clone(), route);
            }
        }
        super::graphs::add(cfg, ctx, &mut routes)?;
        if let Some(mon) = ctx.monitoring {
            mon.retain(&monitored);
            mon.retain_quality(&tracked);
        }
        Ok(RoutingTable {
            generation,
            routes,
            wildcard,
            batchers,
            server: cfg.server.clone(),
            admission: crate::admission::Admission::build(
                &cfg.admission,
                ctx.previous.map(|p| &p.admission),
                &metrics.admission,
            ),
            tracer: ctx.tracer.cloned(),
            override_header: cfg.routing.override_header.parse().map_err(|_| "bad override header".to_string())?,
            allow_override: cfg.routing.allow_override,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use switchyard_runtime::Backends;
    use switchyard_stats::StatsRegistry;

    use super::*;
    use crate::metrics::Metrics;
    use crate::routing::RouteError;

    fn table(yaml: &str) -> RoutingTable {
        let cfg = ValidatedConfig::parse(yaml, Path::new(".")).unwrap();
        let mut backends: Backends = Default::default();
        for (name, b) in &cfg.backends {
            let switchyard_config::BackendConfig::V2Http(c) = b else { panic!() };
            backends.insert(
                name.clone(),
                Arc::new(switchyard_runtime::backend::v2_http::V2HttpBackend::new(name, c, &cfg.resolver).unwrap()),
            );
        }
        let ctx = BuildContext {
            backends: &backends,
            metrics: &Metrics::new_unregistered(),
            stats: &StatsRegistry::default(),
            previous: None,
            cache: None,
            monitoring: None,
            tracer: None,
        };
        RoutingTable::build(&cfg, &ctx, 1).unwrap()
    }

    const SPLIT: &str = r#"
backends:
  a: {kind: v2-http, endpoints: ["http://127.0.0.1:1"]}
  b: {kind: v2-http, endpoints: ["http://127.0.0.1:2"]}
models:
  mlp:
    sticky_header: x-user-id
    variants:
      - {name: stable, backend: a, weight: 90, version: 1}
      - {name: canary, backend: b, weight: 10, version: 2}
      - {name: dark, backend: b, weight: 0}
  "*":
    variants:
      - {name: default, backend: a}
"#;

    /// Selection itself is tested in `select`; here, what the assembled table asks backends for.
    #[test]
    fn override_version_and_wildcard() {
        let t = table(SPLIT);
        let r = t.route("mlp").unwrap();
        let s = r.select("mlp", None, Some(b"dark"), Some(b"k")).unwrap();
        assert_eq!(s.variant.name.as_ref(), "dark");
        let e = r.select("mlp", None, Some(b"nope"), None).err().unwrap();
        assert_eq!(e.to_string(), "model 'mlp' has no variant 'nope' (variants: stable, canary, dark)");
        for _ in 0..50 {
            let s = r.select("mlp", Some("2"), None, None).unwrap();
            assert_eq!(s.variant.name.as_ref(), "canary");
            assert_eq!(s.target.version.as_deref(), Some("2"));
        }
        // A version no variant pins is passed through to the weighted pick.
        let s = r.select("mlp", Some("7"), None, Some(b"k")).unwrap();
        assert_eq!(s.target.version.as_deref(), Some("7"));
        let w = t.route("resnet").unwrap();
        let s = w.select("resnet", Some("3"), None, None).unwrap();
        assert_eq!(s.target.name.as_ref(), "resnet");
        assert_eq!(s.target.version.as_deref(), Some("3"));
    }

    #[test]
    fn unknown_model_without_wildcard() {
        let t = table(
            "backends:\n  a: {kind: v2-http, endpoints: ['http://127.0.0.1:1']}\nmodels:\n  m:\n    variants:\n      - {name: x, backend: a}\n",
        );
        assert_eq!(t.route("zzz").err().unwrap(), RouteError::UnknownModel("zzz".into()));
    }
}
