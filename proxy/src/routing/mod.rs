//! Routing: model name → route → variant, by header override, sticky key or
//! weight. A `RoutingTable` is an immutable snapshot built off the request
//! path (backends and metric handles resolved once); requests load it once
//! and keep that generation to the end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use switchyard_config::ValidatedConfig;
use switchyard_runtime::{Backend, Backends, ModelTarget};
use xxhash_rust::xxh3::xxh3_64;

use switchyard_stats::{LiveStats, StatsRegistry};

use crate::batch::Batcher;
use crate::metrics::{Metrics, VariantMetrics};

/// The catch-all route's model name.
pub const WILDCARD: &str = "*";

/// Golden-ratio step of the Weyl sequence that spreads keyless requests.
const WEYL_STEP: u64 = 0x9E37_79B9_7F4A_7C15;

pub struct Variant {
    pub name: Arc<str>,
    pub weight: f64,
    pub backend_name: Arc<str>,
    pub backend: Arc<dyn Backend>,
    /// Model name rewrite for the backend.
    pub model: Option<Arc<str>>,
    /// Version this variant serves (sent to the backend).
    pub version: Option<Arc<str>>,
    /// Pre-built `x-switchyard-variant` value.
    pub header_value: HeaderValue,
    pub metrics: VariantMetrics,
    /// The batch queue of this variant's (backend, model, version), when batching is on.
    pub batcher: Option<Arc<Batcher>>,
    /// Queues for other versions clients name explicitly (`/versions/{v}`), made on first use.
    pub other_versions: Option<VersionBatchers>,
    /// Live counters the control plane judges canaries and experiments from (kept across snapshots).
    pub stats: Arc<LiveStats>,
    /// Percent of the model's requests mirrored to this (shadow) variant.
    pub shadow_percent: Option<f64>,
    shadow_counter: AtomicU64,
    /// The response cache as this variant uses it, when the variant is cached.
    pub cache: Option<crate::cache::VariantCache>,
}

/// Most queues made on demand per variant; requests for further versions run unbatched.
const MAX_ON_DEMAND_QUEUES: usize = 16;

/// Batch queues of a batching variant for the versions clients ask for by name.
pub struct VersionBatchers {
    cfg: switchyard_config::BatchingConfig,
    backend_name: Arc<str>,
    metrics: Metrics,
    queues: arc_swap::ArcSwap<HashMap<ModelTarget, Arc<Batcher>>>,
}

impl VersionBatchers {
    fn new(cfg: switchyard_config::BatchingConfig, backend_name: Arc<str>, metrics: Metrics) -> VersionBatchers {
        VersionBatchers { cfg, backend_name, metrics, queues: Default::default() }
    }

    /// The queue for `target`, made on first use; `None` once the cap is reached.
    pub fn get(&self, backend: &Arc<dyn Backend>, target: &ModelTarget) -> Option<Arc<Batcher>> {
        if let Some(b) = self.queues.load().get(target) {
            return Some(b.clone());
        }
        let mut made: Option<Arc<Batcher>> = None;
        self.queues.rcu(|m| {
            if m.contains_key(target) || m.len() >= MAX_ON_DEMAND_QUEUES {
                return m.clone();
            }
            let b = made
                .get_or_insert_with(|| {
                    let metrics =
                        self.metrics.batch(&target.name, target.version.as_deref().unwrap_or(""), &self.backend_name);
                    Batcher::spawn(backend.clone(), target.clone(), self.cfg.clone(), metrics)
                })
                .clone();
            let mut m = HashMap::clone(m);
            m.insert(target.clone(), b);
            Arc::new(m)
        });
        self.queues.load().get(target).cloned()
    }
}

pub struct Route {
    pub name: Arc<str>,
    pub sticky_header: Option<http::HeaderName>,
    pub variants: Vec<Variant>,
    /// Pre-built target per variant (named routes only; the wildcard keeps the client's name).
    targets: Vec<Option<ModelTarget>>,
    counter: AtomicU64,
    /// Indices of the shadow variants.
    pub shadows: Vec<usize>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    UnknownModel(String),
    UnknownVariant { model: String, variant: String, known: String },
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::UnknownModel(m) => write!(f, "unknown model '{m}'"),
            RouteError::UnknownVariant { model, variant, known } => {
                write!(f, "model '{model}' has no variant '{variant}' (variants: {known})")
            }
        }
    }
}

/// A routing decision: which variant, and what to ask its backend for.
pub struct Selection<'a> {
    pub route: &'a Route,
    pub variant: &'a Variant,
    /// Index of `variant` in `route.variants`.
    pub index: usize,
    pub target: ModelTarget,
}

impl Route {
    /// Maps a point in [0,1) onto the cumulative weights of the candidates.
    fn walk(&self, u: f64, candidates: impl Iterator<Item = usize> + Clone) -> Option<usize> {
        let total: f64 = candidates.clone().map(|i| self.variants[i].weight).sum();
        if total <= 0.0 {
            return candidates.clone().next();
        }
        let target = u * total;
        let mut acc = 0.0;
        let mut last = None;
        for i in candidates {
            let w = self.variants[i].weight;
            if w <= 0.0 {
                continue;
            }
            acc += w;
            last = Some(i);
            if target < acc {
                return Some(i);
            }
        }
        last
    }

    /// The point in [0,1) that places this request: a hash of (route, sticky
    /// key) when there is one, else the next step of a low-discrepancy sequence
    /// so shares match weights closely without any randomness.
    fn point(&self, sticky: Option<&[u8]>) -> f64 {
        let bits = match sticky {
            Some(key) => {
                let mut buf = [0u8; 256];
                let n = self.name.len() + 1 + key.len();
                let h = if n <= buf.len() {
                    buf[..self.name.len()].copy_from_slice(self.name.as_bytes());
                    buf[self.name.len()] = 0xff;
                    buf[self.name.len() + 1..n].copy_from_slice(key);
                    xxh3_64(&buf[..n])
                } else {
                    let mut v = Vec::with_capacity(n);
                    v.extend_from_slice(self.name.as_bytes());
                    v.push(0xff);
                    v.extend_from_slice(key);
                    xxh3_64(&v)
                };
                h
            }
            None => self.counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(WEYL_STEP),
        };
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Picks the variant for one request.
    pub fn select<'a>(
        &'a self,
        model: &str,
        version: Option<&str>,
        override_variant: Option<&[u8]>,
        sticky: Option<&[u8]>,
    ) -> Result<Selection<'a>, RouteError> {
        let idx = if let Some(want) = override_variant {
            self.variants.iter().position(|v| v.name.as_bytes() == want).ok_or_else(|| RouteError::UnknownVariant {
                model: model.to_string(),
                variant: String::from_utf8_lossy(want).into_owned(),
                known: self.variants.iter().map(|v| v.name.as_ref()).collect::<Vec<_>>().join(", "),
            })?
        } else {
            let u = self.point(sticky);
            let by_version = version.filter(|v| self.variants.iter().any(|x| x.version.as_deref() == Some(*v)));
            match by_version {
                Some(v) => self
                    .walk(u, (0..self.variants.len()).filter(move |&i| self.variants[i].version.as_deref() == Some(v))),
                None => self.walk(u, 0..self.variants.len()),
            }
            .expect("validated routes have variants")
        };
        let variant = &self.variants[idx];
        Ok(Selection { route: self, variant, index: idx, target: self.target_of(idx, model, version) })
    }

    /// What variant `idx` asks its backend for, given the client's model and version.
    pub fn target_of(&self, idx: usize, model: &str, version: Option<&str>) -> ModelTarget {
        let variant = &self.variants[idx];
        match (&self.targets[idx], version) {
            (Some(t), None) => t.clone(),
            (Some(t), Some(v)) => ModelTarget { name: t.name.clone(), version: Some(Arc::from(v)) },
            (None, v) => ModelTarget {
                name: variant.model.clone().unwrap_or_else(|| Arc::from(model)),
                version: v.map(Arc::from).or_else(|| variant.version.clone()),
            },
        }
    }

    /// Whether this request is mirrored to shadow variant `idx`.
    pub fn sample_shadow(&self, idx: usize, percent: f64) -> bool {
        crate::shadow::sample(&self.variants[idx].shadow_counter, percent)
    }
}

pub struct RoutingTable {
    pub generation: u64,
    pub routes: HashMap<Arc<str>, Arc<Route>>,
    pub wildcard: Option<Arc<Route>>,
    pub override_header: http::HeaderName,
    /// Batch queues by (backend, target), handed on to the next snapshot when unchanged.
    batchers: HashMap<(Arc<str>, ModelTarget), Arc<Batcher>>,
}

/// What a snapshot is built from besides the config.
pub struct BuildContext<'a> {
    pub backends: &'a Backends,
    pub metrics: &'a Metrics,
    pub stats: &'a StatsRegistry,
    /// The snapshot being replaced: unchanged batch queues are carried over.
    pub previous: Option<&'a RoutingTable>,
    /// The process's response cache; `None`: no variant is cached.
    pub cache: Option<&'a Arc<crate::cache::ResponseCache>>,
}

impl RoutingTable {
    /// A table with no routes, published until the first generation is applied.
    pub fn empty() -> RoutingTable {
        RoutingTable {
            generation: 0,
            routes: HashMap::new(),
            wildcard: None,
            override_header: http::HeaderName::from_static(switchyard_config::DEFAULT_OVERRIDE_HEADER),
            batchers: HashMap::new(),
        }
    }

    /// Builds a snapshot; batch schedulers are spawned on the current tokio runtime.
    pub fn build(cfg: &ValidatedConfig, ctx: &BuildContext<'_>, generation: u64) -> Result<RoutingTable, String> {
        let (backends, metrics) = (ctx.backends, ctx.metrics);
        let mut routes = HashMap::new();
        // One queue per (backend, model, version), shared by variants that agree on all three.
        let mut batchers: HashMap<(Arc<str>, ModelTarget), Arc<Batcher>> = HashMap::new();
        let mut wildcard = None;
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
                    stats: ctx.stats.get_or_create(name, &v.name),
                    shadow_percent: v.shadow_percent,
                    shadow_counter: AtomicU64::new(0),
                    cache: ctx.cache.and_then(|c| c.variant(name, v, cfg.backends.get(&v.backend))),
                });
            }
            let shadows =
                variants.iter().enumerate().filter(|(_, v)| v.shadow_percent.is_some()).map(|(i, _)| i).collect();
            let route = Arc::new(Route {
                shadows,
                name: name.clone(),
                sticky_header: m
                    .sticky_header
                    .as_deref()
                    .map(|h| h.parse().map_err(|_| format!("bad sticky header `{h}`")))
                    .transpose()?,
                variants,
                targets,
                counter: AtomicU64::new(0),
            });
            if is_wild {
                wildcard = Some(route);
            } else {
                routes.insert(name.clone(), route);
            }
        }
        Ok(RoutingTable {
            generation,
            routes,
            wildcard,
            batchers,
            override_header: cfg.routing.override_header.parse().map_err(|_| "bad override header".to_string())?,
        })
    }

    pub fn route(&self, model: &str) -> Result<&Route, RouteError> {
        self.routes
            .get(model)
            .or(self.wildcard.as_ref())
            .map(|r| r.as_ref())
            .ok_or_else(|| RouteError::UnknownModel(model.to_string()))
    }

    /// Every route (the wildcard included) for readiness checks.
    pub fn all_routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values().chain(self.wildcard.iter()).map(|r| r.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn table(yaml: &str) -> RoutingTable {
        let cfg = ValidatedConfig::parse(yaml, Path::new(".")).unwrap();
        let mut backends: Backends = Default::default();
        for (name, b) in &cfg.backends {
            let switchyard_config::BackendConfig::V2Http(c) = b else { panic!() };
            backends.insert(name.clone(), Arc::new(switchyard_runtime::backend::v2_http::V2HttpBackend::new(name, c)));
        }
        let ctx = BuildContext {
            backends: &backends,
            metrics: &Metrics::new_unregistered(),
            stats: &StatsRegistry::default(),
            previous: None,
            cache: None,
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

    #[test]
    fn keyless_requests_follow_weights_and_never_hit_a_zero_arm() {
        let t = table(SPLIT);
        let r = t.route("mlp").unwrap();
        let mut counts = HashMap::new();
        for _ in 0..10_000 {
            let s = r.select("mlp", None, None, None).unwrap();
            *counts.entry(s.variant.name.to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts.get("dark"), None);
        let stable = counts["stable"] as f64;
        // 3σ of a binomial(10k, 0.9) is 90; the sequence does far better.
        assert!((stable - 9000.0).abs() < 90.0, "{counts:?}");
    }

    #[test]
    fn sticky_keys_stay_put_and_spread_by_weight() {
        let t = table(SPLIT);
        let r = t.route("mlp").unwrap();
        let mut canary = 0;
        for i in 0..10_000 {
            let key = format!("user-{i}");
            let first = r.select("mlp", None, None, Some(key.as_bytes())).unwrap().variant.name.clone();
            for _ in 0..3 {
                let again = r.select("mlp", None, None, Some(key.as_bytes())).unwrap();
                assert_eq!(again.variant.name, first);
            }
            if first.as_ref() == "canary" {
                canary += 1;
            }
            assert_ne!(first.as_ref(), "dark");
        }
        assert!((canary as f64 - 1000.0).abs() < 90.0, "canary share {canary}");
    }

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
