//! The embedded ONNX Runtime backend (`kind: onnx`): serves a Triton-style
//! model repository with `ort` (library loaded at run time), runs sessions on a
//! dedicated thread pool, and hot-loads versions as the repository changes.
//!
//! **Architecture Invariant:** no ONNX Runtime call runs on a tokio worker:
//! inference runs on the [`pool::Pool`] threads, loading on `spawn_blocking`.

pub mod convert;
pub mod library;
pub mod mlflow;
pub mod model;
pub mod pool;
pub mod repository;
mod triton;
pub mod warmup;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use switchyard_config::{OnnxBackend as Config, OnnxRuntime};

use self::library::Library;
use self::model::{LoadedVersion, SessionSettings};
use self::pool::Pool;
use self::repository::{LoadFailure, Repository};
use super::contract::{Backend, ModelTarget};
use super::triton::TritonModels;
use crate::error::BackendError;
use crate::tensor::{InferRequest, InferResponse, ModelMetadata};

/// V2 `platform` of every model this backend serves.
pub const PLATFORM: &str = "onnxruntime_onnx";

/// What every ONNX backend of a process shares: the library and the execution pool.
#[derive(Clone)]
pub struct OnnxShared {
    pub library: Library,
    pub pool: Arc<Pool>,
    pub runtime: OnnxRuntime,
}

impl OnnxShared {
    /// Loads the ONNX Runtime library (once per process) and starts the pool.
    pub fn new(runtime: &OnnxRuntime) -> Result<OnnxShared, String> {
        let library = library::load(runtime)?;
        library::check_provider(&library, runtime.execution_provider)?;
        Ok(OnnxShared { library, pool: Arc::new(Pool::new(runtime.pool_threads.get())?), runtime: runtime.clone() })
    }
}

pub struct OnnxBackend {
    repo: Arc<Repository>,
    /// The MLflow registry the model comes from, when `repository` is an `mlflow://` URL.
    /// Owned here (its poller holds it weakly): dropping the backend ends its polls and status.
    _registry: Option<Arc<mlflow::Registry>>,
    pool: Arc<Pool>,
    /// The CUDA device sessions run on, if any (for Triton's `instance_group`).
    gpu: Option<u32>,
}

impl OnnxBackend {
    /// Loads and warms up every version the policy selects, then starts watching
    /// the repository. Fails when a model named in `models` has no loadable version.
    /// Must run inside a tokio runtime that outlives the backend (the watcher is spawned on it).
    pub async fn start(name: &str, cfg: &Config, shared: &OnnxShared) -> Result<OnnxBackend, String> {
        let settings = SessionSettings {
            library: shared.library.clone(),
            intra_op_threads: shared.runtime.intra_op_threads.get(),
            provider: shared.runtime.execution_provider,
            instances: cfg.instances.get(),
            warmup: cfg.warmup,
            warmup_requests: cfg.warmup_requests,
        };
        let repo = Arc::new(Repository::new(Arc::from(name), cfg.clone(), settings));
        let registry = match &cfg.mlflow {
            Some(src) => {
                std::fs::create_dir_all(cfg.repository.join(&src.model)).map_err(|e| {
                    format!("backend `{name}`: cannot create the MLflow cache {}: {e}", cfg.repository.display())
                })?;
                Some(Arc::new(mlflow::Registry::new(Arc::from(name), src.clone(), cfg.repository.clone())))
            }
            None => None,
        };
        let r = repo.clone();
        tokio::task::spawn_blocking(move || r.rescan())
            .await
            .map_err(|e| format!("backend `{name}`: loading the model repository failed: {e}"))?;
        if let Some(reg) = &registry {
            // What the cache held from before is up already; now what the registry selects.
            reg.sync(&repo).await;
        }
        let snapshot = repo.snapshot();
        let failures = repo.failures();
        for m in &cfg.models {
            if !snapshot.contains_key(m.as_str()) {
                let why: Vec<String> = failures
                    .iter()
                    .filter(|f| &f.model == m)
                    .map(|f| format!("version {}: {}", f.version, f.error))
                    .collect();
                if let (Some(src), Some(reg)) = (&cfg.mlflow, &registry) {
                    let detail = reg.last_error().unwrap_or_default();
                    return Err(format!(
                        "backend `{name}`: no version of `{m}` could be fetched from the MLflow registry {} ({}) \
                         nor found in its cache {}{}{}",
                        src.base_url,
                        src.selector,
                        cfg.repository.display(),
                        if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) },
                        if detail.is_empty() { String::new() } else { format!("; the registry: {detail}") }
                    ));
                }
                return Err(format!(
                    "backend `{name}`: model `{m}` has no loadable version in {} ({})",
                    cfg.repository.display(),
                    if why.is_empty() {
                        "no MODEL/VERSION/model.onnx matches the version policy".to_owned()
                    } else {
                        why.join("; ")
                    }
                ));
            }
        }
        drop(snapshot);
        repository::spawn_watcher(&repo);
        if let Some(reg) = &registry {
            mlflow::spawn_poller(reg, &repo);
        }
        let gpu = match shared.runtime.execution_provider {
            switchyard_config::ExecutionProvider::Cuda { device } => Some(device),
            _ => None,
        };
        Ok(OnnxBackend { repo, _registry: registry, pool: shared.pool.clone(), gpu })
    }

    /// Loaded versions of `model`, ascending (empty when it is not loaded).
    pub fn versions(&self, model: &str) -> Vec<u64> {
        self.repo.snapshot().get(model).map(|e| e.versions.keys().copied().collect()).unwrap_or_default()
    }

    /// Versions that failed to load (until their file changes): for status and tests.
    pub fn load_failures(&self) -> Vec<LoadFailure> {
        self.repo.failures()
    }

    /// Rescans the repository now (the watcher does this on its own).
    pub async fn rescan(&self) {
        let r = self.repo.clone();
        let _ = tokio::task::spawn_blocking(move || r.rescan()).await;
    }

    fn resolve(&self, target: &ModelTarget) -> Result<Arc<LoadedVersion>, BackendError> {
        let snapshot = self.repo.snapshot();
        let Some(entry) = snapshot.get(&*target.name) else {
            if self.repo.is_unloaded(&target.name) {
                return Err(BackendError::NotFound(format!(
                    "Request for unknown model: '{}' has no available versions (unloaded through the repository API)",
                    target.name
                )));
            }
            let mut loaded: Vec<&str> = snapshot.keys().map(|k| &**k).collect();
            loaded.sort_unstable();
            return Err(BackendError::NotFound(format!(
                "Request for unknown model: '{}' is not found (not loaded; loaded: {})",
                target.name,
                loaded.join(", ")
            )));
        };
        let found = match &target.version {
            None => entry.versions.last_key_value().map(|(_, v)| v),
            Some(v) => match v.parse::<u64>() {
                Ok(n) => entry.versions.get(&n),
                Err(_) => {
                    return Err(BackendError::InvalidInput(format!(
                        "failed to get model version from specified version string '{v}' (versions are decimal numbers)"
                    )))
                }
            },
        };
        found.cloned().ok_or_else(|| {
            let loaded: Vec<String> = entry.versions.keys().map(u64::to_string).collect();
            BackendError::NotFound(format!(
                "Request for unknown model: '{}' version {} is not found (loaded: {})",
                target.name,
                target.version.as_deref().unwrap_or("latest"),
                loaded.join(", ")
            ))
        })
    }
}

#[async_trait]
impl Backend for OnnxBackend {
    fn kind(&self) -> &'static str {
        "onnx"
    }

    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError> {
        let lv = self.resolve(target)?;
        let submitted = std::time::Instant::now();
        if let Err(e) = lv.validate(&req) {
            lv.record_failure(submitted.elapsed());
            return Err(e);
        }
        let id = req.id.clone();
        let model_version = Some(lv.label.to_string());
        let outputs = self.pool.run(move || lv.run(&req, submitted.elapsed())).await??;
        Ok(InferResponse {
            model_name: target.name.to_string(),
            model_version,
            id,
            parameters: Default::default(),
            outputs,
            raw_json: None,
        })
    }

    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError> {
        let lv = self.resolve(target)?;
        let md = ModelMetadata {
            name: target.name.to_string(),
            versions: self.versions(&target.name).iter().map(u64::to_string).collect(),
            platform: PLATFORM.to_owned(),
            inputs: lv.inputs.iter().map(|i| i.spec()).collect(),
            outputs: lv.outputs.iter().map(|o| o.spec()).collect(),
        };
        serde_json::to_value(md).map_err(|e| BackendError::Internal(e.to_string()))
    }

    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError> {
        Ok(self.resolve(target).is_ok())
    }

    fn model_identity(&self, target: &ModelTarget) -> Option<u64> {
        let lv = self.resolve(target).ok()?;
        let mut id = [0u8; 28];
        id[..8].copy_from_slice(&lv.version.to_le_bytes());
        id[8..16].copy_from_slice(&lv.fingerprint.len.to_le_bytes());
        let modified = lv.fingerprint.modified.and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok());
        if let Some(m) = modified {
            id[16..24].copy_from_slice(&m.as_secs().to_le_bytes());
            id[24..].copy_from_slice(&m.subsec_nanos().to_le_bytes());
        }
        // Two loads of the same file are the same model; a reload of a changed file is not.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in id.iter().chain(target.name.as_bytes()) {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        Some(h)
    }

    async fn ready(&self) -> bool {
        let snapshot = self.repo.snapshot();
        // A model unloaded on purpose through the repository API does not make the backend unready.
        self.repo.cfg.models.iter().all(|m| snapshot.contains_key(m.as_str()) || self.repo.is_unloaded(m))
    }

    fn triton(&self) -> Option<&dyn TritonModels> {
        Some(self)
    }
}
