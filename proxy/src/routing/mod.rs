//! Routing: model name → route → variant, by header override, sticky key or
//! weight. A `RoutingTable` is an immutable snapshot assembled off the
//! request path (`build`: backends, queues and metric handles resolved
//! once); requests load it once and keep that generation to the end. Which
//! variant serves a request is decided by the route's content-routing
//! rules (`rules`, first match) and else by the pure `select::Picker`.

mod build;
mod graphs;
pub mod rules;
pub mod select;

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderValue;
use switchyard_runtime::Backends;
use switchyard_runtime::{Backend, ModelTarget};
use switchyard_stats::{LiveStats, StatsRegistry};

use crate::batch::Batcher;
use crate::cache::VariantCache;
use crate::error::Error;
use crate::metrics::{Metrics, VariantMetrics};
use crate::outcome::Outcome;

use select::Picker;
pub use select::RouteError;

/// What a snapshot is built from besides the config.
pub struct BuildContext<'a> {
    pub backends: &'a Backends,
    pub metrics: &'a Metrics,
    pub stats: &'a StatsRegistry,
    /// The snapshot being replaced: unchanged batch queues are carried over.
    pub previous: Option<&'a RoutingTable>,
    /// The process's response cache; `None`: no variant is cached.
    pub cache: Option<&'a Arc<crate::cache::ResponseCache<Outcome>>>,
    /// The process's drift monitors; `None`: drift settings are refused.
    pub monitoring: Option<&'a Arc<crate::monitor::Monitoring>>,
    /// The process's tracer; `None`: no spans.
    pub tracer: Option<&'a Arc<crate::trace::Tracer>>,
}

/// The catch-all route's model name.
pub const WILDCARD: &str = "*";

impl From<RouteError> for Error {
    fn from(e: RouteError) -> Error {
        match e {
            RouteError::UnknownModel(_) => Error::not_found(e.to_string()),
            RouteError::UnknownVariant { ref variant, .. } => Error::bad_field(variant.clone(), e.to_string()),
        }
    }
}

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
    /// The response cache as this variant uses it, when the variant is cached.
    pub cache: Option<VariantCache<Outcome>>,
    /// Drift monitoring of this variant's inputs and outputs; `None`: off, nothing sampled.
    pub drift: Option<Arc<crate::monitor::DriftMonitor>>,
    /// TF Serving version labels this variant answers besides its name.
    pub labels: Vec<Arc<str>>,
    /// Inputs completed from a feature store before the request runs; `None`: the client sends every input.
    pub features: Option<Arc<crate::features::Enricher>>,
    /// How TorchServe clients' JSON bodies map to this variant's tensors (`variants[].torchserve`).
    pub torchserve: Option<Arc<switchyard_config::TorchServeTranslation>>,
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
    picker: Picker,
    /// Indices of the shadow variants.
    pub shadows: Vec<usize>,
    /// Answers remembered for feedback, when the model tracks prediction quality.
    pub quality: Option<Arc<crate::monitor::quality::QualityTracker>>,
    /// Live Triton sequences pinned to a variant and endpoint (kept across snapshots).
    pub sequences: Arc<crate::sequence::SequenceTable>,
    /// A graph route's steps (`crate::graph`): its requests run them instead of a backend call.
    pub graph: Option<Arc<dyn Composite>>,
    /// Content-routing rules, tried before the split (`pipeline::choose`).
    pub rules: rules::Rules,
}

/// A route computed by other routes of the same snapshot (`crate::graph`):
/// the pipeline hands it the decoded request and encodes what it answers.
pub trait Composite: Send + Sync {
    fn run<'a>(
        &'a self,
        table: &'a RoutingTable,
        metadata: http::HeaderMap,
        req: switchyard_runtime::InferRequest,
        caller: StepCaller,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome> + Send + 'a>>;
}

/// What a composite route's steps inherit from the client's call.
#[derive(Clone, Copy, Debug)]
pub struct StepCaller {
    pub protocol: crate::protocol::Protocol,
    pub priority: Option<u64>,
    pub client: Option<std::net::IpAddr>,
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
    /// The variant a TF Serving version label names: the variant of that
    /// name, else the one declaring the label.
    pub fn variant_for_label(&self, label: &str) -> Option<&Variant> {
        let by_name = self.variants.iter().find(|v| v.name.as_ref() == label);
        by_name.or_else(|| self.variants.iter().find(|v| v.labels.iter().any(|l| l.as_ref() == label)))
    }

    /// Picks the variant for one request.
    pub fn select<'a>(
        &'a self,
        model: &str,
        version: Option<&str>,
        override_variant: Option<&[u8]>,
        sticky: Option<&[u8]>,
    ) -> Result<Selection<'a>, RouteError> {
        let idx = self.picker.pick(model, version, override_variant, sticky)?;
        Ok(Selection {
            route: self,
            variant: &self.variants[idx],
            index: idx,
            target: self.target_of(idx, model, version),
        })
    }

    /// The selection of variant `idx` for the client's model and version
    /// (a sequence goes back to the variant it was opened on).
    pub fn selection_of<'a>(&'a self, idx: usize, model: &str, version: Option<&str>) -> Selection<'a> {
        Selection { route: self, variant: &self.variants[idx], index: idx, target: self.target_of(idx, model, version) }
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
        self.picker.sample_shadow(idx, percent)
    }
}

pub struct RoutingTable {
    pub generation: u64,
    pub routes: HashMap<Arc<str>, Arc<Route>>,
    pub wildcard: Option<Arc<Route>>,
    pub override_header: http::HeaderName,
    /// Spans of sampled requests go here; `None`: tracing is off.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// `routing.allow_override`: `false` ignores the override header for every client.
    pub allow_override: bool,
    /// Batch queues by (backend, target), handed on to the next snapshot when unchanged.
    batchers: HashMap<(Arc<str>, ModelTarget), Arc<Batcher>>,
    /// What server metadata says this server is.
    pub server: switchyard_config::ServerSettings,
    /// Concurrency limits, handed on to the next snapshot when unchanged.
    pub admission: crate::admission::Admission,
}

impl RoutingTable {
    /// A table with no routes, published until the first generation is applied.
    pub fn empty() -> RoutingTable {
        RoutingTable {
            generation: 0,
            routes: HashMap::new(),
            wildcard: None,
            override_header: http::HeaderName::from_static(switchyard_config::DEFAULT_OVERRIDE_HEADER),
            tracer: None,
            allow_override: true,
            batchers: HashMap::new(),
            server: Default::default(),
            admission: Default::default(),
        }
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
