//! Backends: where an inference actually runs. Every backend speaks the tensor
//! model, so routing, batching and caching never depend on which one it is.

pub mod onnx;
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
}

pub type Backends = BTreeMap<Arc<str>, Arc<dyn Backend>>;

/// Builds every configured backend; ONNX models are loaded and warmed before this returns.
pub async fn build_backends(cfg: &ValidatedConfig) -> Result<Backends, String> {
    let mut out: Backends = BTreeMap::new();
    // Loaded on the first onnx backend: configs without one never need the library.
    let mut onnx_shared: Option<onnx::OnnxShared> = None;
    for (name, b) in &cfg.backends {
        let backend: Arc<dyn Backend> = match b {
            BackendConfig::V2Http(c) => Arc::new(v2_http::V2HttpBackend::new(name, c)),
            BackendConfig::Onnx(c) => {
                let shared = match &onnx_shared {
                    Some(s) => s,
                    None => onnx_shared
                        .insert(onnx::OnnxShared::new(&cfg.runtime).map_err(|e| format!("backend `{name}`: {e}"))?),
                };
                Arc::new(onnx::OnnxBackend::start(name, c, shared).await?)
            }
        };
        out.insert(name.clone(), backend);
    }
    Ok(out)
}
