//! Building a config generation's backends, reusing every backend whose
//! config did not change.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_config::{BackendConfig, Endpoints, ResolverConfig, ValidatedConfig};

use super::contract::{Backend, Backends};
use super::{onnx, tfserving, v2_grpc, v2_http};

/// The built backends of one config generation, with the configs they were
/// built from, so that the next generation reuses every backend whose config
/// did not change (its connection pools, loaded models and batch queues stay).
#[derive(Default)]
pub struct BackendSet {
    entries: BTreeMap<Arc<str>, (BackendConfig, Arc<dyn Backend>)>,
    /// Loaded on the first onnx backend: configs without one never need the library.
    onnx: Option<Arc<onnx::OnnxShared>>,
    /// The resolver settings the `dns:` backends were built with.
    resolver: ResolverConfig,
}

impl BackendSet {
    /// Builds the backends of `cfg`, reusing those of `previous` whose config is unchanged.
    /// ONNX models are loaded and warmed before this returns.
    pub async fn build(cfg: &ValidatedConfig, previous: Option<&BackendSet>) -> Result<BackendSet, String> {
        let mut out = BackendSet {
            entries: BTreeMap::new(),
            onnx: previous.and_then(|p| p.onnx.clone()),
            resolver: cfg.resolver.clone(),
        };
        for (name, b) in &cfg.backends {
            if let Some((old_cfg, old)) = previous.and_then(|p| p.entries.get(name)) {
                // A `dns:` backend resolves with the resolver settings it was built with.
                let same_resolver = previous.is_some_and(|p| p.resolver == cfg.resolver) || !uses_dns(b);
                if old_cfg == b && same_resolver {
                    out.entries.insert(name.clone(), (b.clone(), old.clone()));
                    continue;
                }
            }
            let backend: Arc<dyn Backend> = match b {
                BackendConfig::V2Http(c) => Arc::new(v2_http::V2HttpBackend::new(name, c, &cfg.resolver)?),
                BackendConfig::V2Grpc(c) => Arc::new(v2_grpc::V2GrpcBackend::new(name, c, &cfg.resolver)?),
                BackendConfig::TfServing(c) => Arc::new(tfserving::TfServingBackend::new(name, c, &cfg.resolver)?),
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

fn uses_dns(b: &BackendConfig) -> bool {
    match b {
        BackendConfig::V2Http(c) => matches!(c.endpoints, Endpoints::Dns(_)),
        BackendConfig::V2Grpc(c) => matches!(c.endpoints, Endpoints::Dns(_)),
        BackendConfig::TfServing(c) => matches!(c.endpoints, Endpoints::Dns(_)),
        BackendConfig::Onnx(_) => false,
    }
}

/// Builds every configured backend; ONNX models are loaded and warmed before this returns.
pub async fn build_backends(cfg: &ValidatedConfig) -> Result<Backends, String> {
    Ok(BackendSet::build(cfg, None).await?.backends())
}
