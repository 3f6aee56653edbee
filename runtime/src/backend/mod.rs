//! Backends: where an inference actually runs. Every backend speaks the tensor
//! model, so routing, batching and caching never depend on which one it is.

pub mod onnx;
pub mod v2_grpc;
pub mod v2_http;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use switchyard_config::{BackendConfig, ValidatedConfig};

use crate::error::BackendError;
use crate::tensor::{InferRequest, InferResponse};

/// The model (and version) a backend is asked for, after a variant's rewrite.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelTarget {
    pub name: Arc<str>,
    pub version: Option<Arc<str>>,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `v2-http`, `onnx`, ...: for metrics and status.
    fn kind(&self) -> &'static str;

    /// Runs one inference request.
    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError>;

    /// V2 model metadata object (`GET /v2/models/{m}[/versions/{v}]`).
    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError>;

    /// Whether that model (version) can take requests now.
    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError>;

    /// Whether the backend as a whole can take requests now.
    async fn ready(&self) -> bool;

    /// What `target` resolves to right now, when the backend knows it exactly
    /// (the embedded runtime: the loaded version and its file). The response
    /// cache keys on it, so a hot-added or replaced version never serves an
    /// older version's answers. `None`: unknown (remote servers), and the cache
    /// falls back to the `model_version` the answers report. Must be cheap.
    fn model_identity(&self, _target: &ModelTarget) -> Option<u64> {
        None
    }

    /// The KServe V2 gRPC client of a `v2-grpc` backend: the gRPC front end
    /// passes ModelConfig, ModelStatistics and Repository* RPCs through it.
    fn v2_grpc(&self) -> Option<&v2_grpc::V2GrpcBackend> {
        None
    }
}

pub type Backends = BTreeMap<Arc<str>, Arc<dyn Backend>>;

/// The built backends of one config generation, with the configs they were
/// built from, so that the next generation reuses every backend whose config
/// did not change (its connection pools, loaded models and batch queues stay).
#[derive(Default)]
pub struct BackendSet {
    entries: BTreeMap<Arc<str>, (BackendConfig, Arc<dyn Backend>)>,
    /// Loaded on the first onnx backend: configs without one never need the library.
    onnx: Option<Arc<onnx::OnnxShared>>,
}

impl BackendSet {
    /// Builds the backends of `cfg`, reusing those of `previous` whose config is unchanged.
    /// ONNX models are loaded and warmed before this returns.
    pub async fn build(cfg: &ValidatedConfig, previous: Option<&BackendSet>) -> Result<BackendSet, String> {
        let mut out = BackendSet { entries: BTreeMap::new(), onnx: previous.and_then(|p| p.onnx.clone()) };
        for (name, b) in &cfg.backends {
            if let Some((old_cfg, old)) = previous.and_then(|p| p.entries.get(name)) {
                if old_cfg == b {
                    out.entries.insert(name.clone(), (b.clone(), old.clone()));
                    continue;
                }
            }
            let backend: Arc<dyn Backend> = match b {
                BackendConfig::V2Http(c) => Arc::new(v2_http::V2HttpBackend::new(name, c)),
                BackendConfig::V2Grpc(c) => Arc::new(v2_grpc::V2GrpcBackend::new(name, c)?),
                BackendConfig::Onnx(c) => {
                    let shared = match &out.onnx {
                        Some(s) => s.clone(),
                        None => {
                            let s =
                                onnx::OnnxShared::new(&cfg.runtime).map_err(|e| format!("backend `{name}`: {e}"))?;
                            out.onnx.insert(Arc::new(s)).clone()
                        }
                    };
                    Arc::new(onnx::OnnxBackend::start(name, c, &shared).await?)
                }
            };
            out.entries.insert(name.clone(), (b.clone(), backend));
        }
        Ok(out)
    }

    pub fn backends(&self) -> Backends {
        self.entries.iter().map(|(k, (_, b))| (k.clone(), b.clone())).collect()
    }
}

/// Builds every configured backend; ONNX models are loaded and warmed before this returns.
pub async fn build_backends(cfg: &ValidatedConfig) -> Result<Backends, String> {
    Ok(BackendSet::build(cfg, None).await?.backends())
}
