//! The Triton surface a backend that owns its models offers (the embedded
//! runtime): what a model is (for Triton's model configuration), what it has
//! done (Triton's statistics) and the repository API (index, load, unload).
//! A leaf: the onnx backend implements it, the proxy renders it as Triton's
//! HTTP JSON and gRPC messages.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use switchyard_config::VersionPolicy;

use crate::error::BackendError;
use crate::tensor::TensorSpec;

/// One model as its backend serves it, for Triton's `ModelConfig`.
#[derive(Clone, Debug)]
pub struct ModelDescription {
    pub name: String,
    /// Triton's `platform` (`onnxruntime_onnx`) and `backend` (`onnxruntime`).
    pub platform: &'static str,
    pub backend: &'static str,
    pub version_policy: VersionPolicy,
    /// The signature of the version asked for (dims as the model declares them; -1 dynamic).
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Sessions per version (Triton's `instance_group.count`).
    pub instances: usize,
    /// `kind: cpu` or `gpu` with its device.
    pub gpu: Option<u32>,
    /// Sample requests used for warm-up (`MODEL/warmup/*.json`) and how often each runs.
    pub warmup_samples: Vec<String>,
    pub warmup_count: u32,
}

/// Count and total time of one kind of event (Triton's `StatisticDuration`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

impl StatDuration {
    pub fn add(&mut self, d: Duration) {
        self.count += 1;
        self.ns += d.as_nanos().min(u128::from(u64::MAX)) as u64;
    }
}

/// Compute times of the executions of one batch size (Triton's `InferBatchStatistics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

/// What one model version has done since it was loaded (Triton's `ModelStatistics`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VersionStats {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last inference; 0: none yet.
    pub last_inference_ms: u64,
    /// Inferences (batch rows) and executions (model runs).
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: StatDuration,
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
    /// By batch size.
    pub batches: BTreeMap<u64, BatchStats>,
}

/// One row of the repository index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// `None`: the model as a whole (never loaded, or unloaded).
    pub version: Option<String>,
    /// Triton's states: `READY`, `UNAVAILABLE`, `LOADING`, `UNLOADING`; empty when never loaded.
    pub state: &'static str,
    pub reason: String,
}

/// The Triton surface of a backend that owns a model repository.
#[async_trait]
pub trait TritonModels: Send + Sync {
    /// The model `name` (at `version`, or its latest) as served.
    fn describe(&self, name: &str, version: Option<&str>) -> Result<ModelDescription, BackendError>;

    /// Statistics of every loaded version of `name` (or of every model, when `None`).
    fn statistics(&self, name: Option<&str>, version: Option<&str>) -> Result<Vec<VersionStats>, BackendError>;

    /// Every model in the repository with its versions' states.
    fn index(&self) -> Vec<IndexEntry>;

    /// Loads (or reloads) `name` from the repository; the versions already
    /// serving keep serving until the new ones are ready. Errors when no version loads.
    async fn load(&self, name: &str) -> Result<(), BackendError>;

    /// Stops serving `name` (until it is loaded again) and returns once its in-flight requests have finished.
    async fn unload(&self, name: &str) -> Result<(), BackendError>;
}
