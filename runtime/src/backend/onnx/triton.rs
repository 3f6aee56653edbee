//! The embedded runtime's Triton surface: model descriptions for Triton's
//! model configuration, per-version statistics, and the repository API
//! (index, load, unload that waits for in-flight requests).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{OnnxBackend, PLATFORM};
use crate::backend::contract::ModelTarget;
use crate::backend::triton::{IndexEntry, ModelDescription, TritonModels, VersionStats};
use crate::error::BackendError;

/// Triton's `backend` name for ONNX models.
pub const TRITON_BACKEND: &str = "onnxruntime";

/// How often an unload looks whether the requests still running on a version have finished.
const DRAIN_POLL: Duration = Duration::from_millis(5);

#[async_trait]
impl TritonModels for OnnxBackend {
    fn describe(&self, name: &str, version: Option<&str>) -> Result<ModelDescription, BackendError> {
        let lv = self.resolve(&ModelTarget { name: Arc::from(name), version: version.map(Arc::from) })?;
        Ok(ModelDescription {
            name: name.to_owned(),
            platform: PLATFORM,
            backend: TRITON_BACKEND,
            version_policy: self.repo.cfg.version_policy.clone(),
            inputs: lv.inputs.iter().map(|i| i.spec()).collect(),
            outputs: lv.outputs.iter().map(|o| o.spec()).collect(),
            instances: self.repo.cfg.instances.get(),
            gpu: self.gpu,
            warmup_samples: lv.warmup_samples.clone(),
            warmup_count: self.repo.cfg.warmup_requests,
        })
    }

    fn statistics(&self, name: Option<&str>, version: Option<&str>) -> Result<Vec<VersionStats>, BackendError> {
        let Some(name) = name else {
            let snapshot = self.repo.snapshot();
            let mut models: Vec<_> = snapshot.iter().collect();
            models.sort_by(|a, b| a.0.cmp(b.0));
            return Ok(models.into_iter().flat_map(|(_, e)| e.versions.values().map(|v| v.statistics())).collect());
        };
        if version.is_some() {
            let lv = self.resolve(&ModelTarget { name: Arc::from(name), version: version.map(Arc::from) })?;
            return Ok(vec![lv.statistics()]);
        }
        // Resolving the latest version reports an unknown or unloaded model as Triton words it.
        self.resolve(&ModelTarget { name: Arc::from(name), version: None })?;
        let snapshot = self.repo.snapshot();
        Ok(snapshot.get(name).map(|e| e.versions.values().map(|v| v.statistics()).collect()).unwrap_or_default())
    }

    fn index(&self) -> Vec<IndexEntry> {
        let on_disk = match self.repo.on_disk() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(backend = %self.repo.backend, "repository index: cannot read the repository: {e}");
                Default::default()
            }
        };
        let snapshot = self.repo.snapshot();
        let failures = self.repo.failures();
        let mut out = Vec::new();
        for (model, versions) in on_disk {
            if self.repo.is_unloaded(&model) {
                out.push(IndexEntry { name: model, version: None, state: "UNAVAILABLE", reason: "unloaded".into() });
                continue;
            }
            let loaded = snapshot.get(model.as_str());
            let mut listed = false;
            for v in versions {
                if loaded.is_some_and(|e| e.versions.contains_key(&v)) {
                    out.push(IndexEntry {
                        name: model.clone(),
                        version: Some(v.to_string()),
                        state: "READY",
                        reason: String::new(),
                    });
                    listed = true;
                } else if let Some(f) = failures.iter().find(|f| f.model == model && f.version == v) {
                    out.push(IndexEntry {
                        name: model.clone(),
                        version: Some(v.to_string()),
                        state: "UNAVAILABLE",
                        reason: f.error.clone(),
                    });
                    listed = true;
                }
            }
            // A model on disk with nothing loaded or failed: known, never loaded (Triton leaves its state empty).
            if !listed {
                out.push(IndexEntry { name: model, version: None, state: "", reason: String::new() });
            }
        }
        out
    }

    async fn load(&self, name: &str) -> Result<(), BackendError> {
        check_name(name)?;
        let repo = self.repo.clone();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || repo.load(&name))
            .await
            .map_err(|e| BackendError::Internal(format!("model load task failed: {e}")))?
            .map_err(BackendError::InvalidInput)
    }

    async fn unload(&self, name: &str) -> Result<(), BackendError> {
        check_name(name)?;
        let repo = self.repo.clone();
        let owned = name.to_owned();
        let removed = tokio::task::spawn_blocking(move || repo.unload(&owned))
            .await
            .map_err(|e| BackendError::Internal(format!("model unload task failed: {e}")))?
            .map_err(BackendError::InvalidInput)?;
        // Requests that resolved a version hold it: the unload is done when the last one lets go.
        for lv in removed {
            while Arc::strong_count(&lv) > 1 {
                tokio::time::sleep(DRAIN_POLL).await;
            }
        }
        Ok(())
    }
}

/// A model name is one directory of the repository, never a path.
fn check_name(name: &str) -> Result<(), BackendError> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(BackendError::InvalidInput(format!(
            "'{name}' is not a model name (a directory of the repository)"
        )));
    }
    Ok(())
}
