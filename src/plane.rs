//! The binary's bridge between control plane and data plane: it builds
//! backends and routing snapshots for each generation the control plane
//! commits, and answers the control plane's questions about live variants.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use switchyard_config::ValidatedConfig;
use switchyard_control::serving::{CaptureSpec, CaptureTicket};
use switchyard_control::ServingPlane;
use switchyard_proxy::cache::ResponseCache;
use switchyard_proxy::monitor::Monitoring;
use switchyard_proxy::routing::BuildContext;
use switchyard_proxy::trace::Tracer;
use switchyard_proxy::{Metrics, Outcome, RoutingTable};
use switchyard_runtime::backend::BackendSet;
use switchyard_stats::drift::DriftReport;
use switchyard_stats::{Snapshot, StatsRegistry};
use tokio::sync::Mutex;

pub struct Plane {
    /// The published routing snapshot every request loads once.
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub metrics: Metrics,
    stats: StatsRegistry,
    /// Backends of the live generation, reused by the next where unchanged.
    backends: Mutex<Option<BackendSet>>,
    /// The response cache every generation's cached variants share (kept across reloads).
    cache: Option<Arc<ResponseCache<Outcome>>>,
    /// Drift monitors, kept across generations whose settings leave them unchanged.
    monitoring: Arc<Monitoring>,
    /// Span export, when `tracing:` was set at start.
    tracer: Option<Arc<Tracer>>,
}

impl Plane {
    pub fn new(metrics: Metrics) -> Plane {
        let monitoring = Monitoring::new(&metrics.registry);
        Plane {
            monitoring,
            tracer: None,
            table: Arc::new(ArcSwap::from_pointee(RoutingTable::empty())),
            metrics,
            stats: StatsRegistry::default(),
            backends: Mutex::new(None),
            cache: None,
        }
    }

    /// Every generation's requests are traced by `tracer`.
    pub fn with_tracer(mut self, tracer: Option<Arc<Tracer>>) -> Plane {
        self.tracer = tracer;
        self
    }

    /// Fleet mode: answers remembered for feedback, and quality windows, are the
    /// fleet's, in its Redis. Must run inside the background runtime, before the first generation.
    pub fn with_fleet_answers(self, fleet: Option<&switchyard_config::FleetConfig>) -> anyhow::Result<Plane> {
        if let Some(f) = fleet {
            self.monitoring.enable_fleet(f, &self.metrics.registry).map_err(|e| anyhow::anyhow!(e))?;
        }
        Ok(self)
    }

    /// Cached variants of every generation use `cache`.
    pub fn with_cache(mut self, cache: Arc<ResponseCache<Outcome>>) -> Plane {
        self.cache = Some(cache);
        self
    }

    fn variant_target(
        &self,
        model: &str,
        variant: &str,
    ) -> Option<(Arc<dyn switchyard_runtime::Backend>, switchyard_runtime::ModelTarget)> {
        let table = self.table.load();
        let route = table.routes.get(model).or(table.wildcard.as_ref())?;
        let idx = route.variants.iter().position(|v| v.name.as_ref() == variant)?;
        Some((route.variants[idx].backend.clone(), route.target_of(idx, model, None)))
    }
}

#[async_trait]
impl ServingPlane for Plane {
    async fn apply(&self, cfg: Arc<ValidatedConfig>, generation: u64) -> Result<(), String> {
        let mut backends = self.backends.lock().await;
        let set = BackendSet::build(&cfg, backends.as_ref()).await?;
        let previous = self.table.load_full();
        let ctx = BuildContext {
            backends: &set.backends(),
            metrics: &self.metrics,
            stats: &self.stats,
            previous: Some(&previous),
            cache: self.cache.as_ref(),
            monitoring: Some(&self.monitoring),
            tracer: self.tracer.as_ref(),
        };
        let table = RoutingTable::build(&cfg, &ctx, generation)?;
        self.table.store(Arc::new(table));
        *backends = Some(set);
        Ok(())
    }

    async fn variant_ready(&self, model: &str, variant: &str) -> bool {
        match self.variant_target(model, variant) {
            Some((backend, target)) => backend.model_ready(&target).await.unwrap_or(false),
            None => false,
        }
    }

    async fn model_versions(&self, model: &str, variant: &str) -> Vec<String> {
        let Some((backend, target)) = self.variant_target(model, variant) else { return vec![] };
        let target = switchyard_runtime::ModelTarget { version: None, ..target };
        match backend.model_metadata(&target).await {
            Ok(meta) => meta["versions"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            Err(_) => vec![],
        }
    }

    fn stats(&self, model: &str, variant: &str) -> Option<Snapshot> {
        self.stats.snapshot(model, variant)
    }

    fn invalidate_cache(&self, model: &str) -> Option<usize> {
        self.cache.as_ref().map(|c| c.invalidate_model(model))
    }

    fn drift(&self, model: &str, variant: &str) -> Option<DriftReport> {
        self.monitoring.board().get(model, variant)
    }

    fn capture_reference(&self, model: &str, spec: CaptureSpec) -> Result<CaptureTicket, String> {
        let variants = spec.variants.map(|v| v.into_iter().collect());
        let ticket = self.monitoring.capture(model, variants, spec.samples, spec.duration)?;
        let result = ticket.result;
        Ok(CaptureTicket {
            result: Box::pin(async move {
                result.await.unwrap_or_else(|_| Err("the capture was dropped before it ended".into()))
            }),
            rows: ticket.rows,
        })
    }
}
