//! What the control plane needs from the serving (data) plane. The binary
//! implements it over the proxy; tests implement it with a fake.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchyard_config::ValidatedConfig;
use switchyard_stats::drift::DriftReport;
use switchyard_stats::Snapshot;

/// The serving plane as the control plane sees it.
#[async_trait]
pub trait ServingPlane: Send + Sync + 'static {
    /// Builds backends and a routing snapshot for `cfg` and publishes it; an error leaves the live one.
    async fn apply(&self, cfg: Arc<ValidatedConfig>, generation: u64) -> Result<(), String>;
    /// Whether the variant's backend says its model is ready.
    async fn variant_ready(&self, model: &str, variant: &str) -> bool;
    /// Versions the variant's backend knows for its model.
    async fn model_versions(&self, model: &str, variant: &str) -> Vec<String>;
    /// Cumulative live stats of a variant.
    fn stats(&self, model: &str, variant: &str) -> Option<Snapshot>;
    /// Drops every cached answer of a model; the number of cached variants, `None` without a cache.
    fn invalidate_cache(&self, model: &str) -> Option<usize>;
    /// The latest drift report of a variant; `None` when it is not monitored.
    fn drift(&self, _model: &str, _variant: &str) -> Option<DriftReport> {
        None
    }
    /// Starts capturing a drift reference profile from the model's sampled live traffic.
    fn capture_reference(&self, _model: &str, _spec: CaptureSpec) -> Result<CaptureTicket, String> {
        Err("reference capture is not available in this serving plane".into())
    }
}

/// The window of live traffic a reference capture covers: whichever ends first.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureSpec {
    /// Variants whose samples count; `None`: every monitored variant of the model.
    pub variants: Option<Vec<String>>,
    /// Sampled rows to capture.
    pub samples: Option<u64>,
    pub duration: Option<Duration>,
}

/// A capture's end: the profile (`switchyard-profile/1` JSON) and its rows, or why it failed.
pub type CaptureEnd = Pin<Box<dyn Future<Output = Result<(String, u64), String>> + Send>>;

/// A capture in progress: its end, and the rows captured so far.
pub struct CaptureTicket {
    pub result: CaptureEnd,
    pub rows: Arc<AtomicU64>,
}
