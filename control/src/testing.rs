//! Test doubles for the control plane's unit tests: a fake serving plane
//! whose faults (refuse or panic on the next apply, panic on reading stats)
//! are explicit settings, and scratch config directories.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use switchyard_config::ValidatedConfig;
use switchyard_stats::{LiveStats, Snapshot};

use crate::config_file::ConfigFile;
use crate::plane::ControlPlane;
use crate::serving::ServingPlane;

/// A serving plane that records what it was asked to apply.
#[derive(Default)]
pub struct FakeServing {
    pub applied: Mutex<Vec<(u64, Arc<ValidatedConfig>)>>,
    stats: Mutex<HashMap<(String, String), Arc<LiveStats>>>,
    /// The next apply returns an error.
    pub refuse_next: AtomicBool,
    /// The next apply panics.
    pub panic_next: AtomicBool,
    /// The next `stats` call panics.
    pub panic_stats_next: AtomicBool,
    pub invalidations: AtomicUsize,
}

impl FakeServing {
    pub fn new() -> Arc<FakeServing> {
        Arc::new(FakeServing::default())
    }

    /// The live stats of a variant (recorded into by tests).
    pub fn variant(&self, model: &str, variant: &str) -> Arc<LiveStats> {
        self.stats.lock().unwrap().entry((model.to_string(), variant.to_string())).or_default().clone()
    }

    /// `n` requests to a variant, `errors` of them failed, each `ms` long.
    pub fn serve(&self, model: &str, variant: &str, n: u64, errors: u64, ms: u64) {
        let s = self.variant(model, variant);
        for i in 0..n {
            s.record(Duration::from_millis(ms), i < errors);
        }
    }

    pub fn applies(&self) -> usize {
        self.applied.lock().unwrap().len()
    }

    pub fn last_applied(&self) -> Arc<ValidatedConfig> {
        self.applied.lock().unwrap().last().expect("something was applied").1.clone()
    }
}

#[async_trait]
impl ServingPlane for FakeServing {
    async fn apply(&self, cfg: Arc<ValidatedConfig>, generation: u64) -> Result<(), String> {
        if self.panic_next.swap(false, Ordering::SeqCst) {
            panic!("fake apply panicked at generation {generation}");
        }
        if self.refuse_next.swap(false, Ordering::SeqCst) {
            return Err("fake backend build failed".into());
        }
        self.applied.lock().unwrap().push((generation, cfg));
        Ok(())
    }

    async fn variant_ready(&self, _model: &str, _variant: &str) -> bool {
        true
    }

    async fn model_versions(&self, _model: &str, _variant: &str) -> Vec<String> {
        vec!["1".into()]
    }

    fn stats(&self, model: &str, variant: &str) -> Option<Snapshot> {
        if self.panic_stats_next.swap(false, Ordering::SeqCst) {
            panic!("fake stats panicked");
        }
        self.stats.lock().unwrap().get(&(model.to_string(), variant.to_string())).map(|s| s.snapshot())
    }

    fn invalidate_cache(&self, _model: &str) -> Option<usize> {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        Some(1)
    }
}

/// A scratch directory with a config file, removed on drop.
pub struct ConfigDir {
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl ConfigDir {
    pub fn new(tag: &str, body: &str) -> ConfigDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchyard-control-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("switchyard.yaml");
        std::fs::write(&config, config_text(body)).unwrap();
        ConfigDir { dir, config }
    }

    /// Replaces the config file the way editors do (temp file + rename).
    pub fn write(&self, body: &str) {
        let tmp = self.dir.join("switchyard.yaml.swp");
        std::fs::write(&tmp, config_text(body)).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
    }

    pub async fn start(&self, serving: Arc<FakeServing>) -> Arc<ControlPlane> {
        let file = ConfigFile::read(&self.config).expect("valid test config");
        ControlPlane::start(file, serving).await.expect("control plane starts")
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A whole config file: loopback listeners (nothing binds in unit tests) and `body`.
pub fn config_text(body: &str) -> String {
    format!("listeners:\n  http:\n    address: 127.0.0.1:1\n  grpc:\n    enabled: false\nbackends:\n  b: {{kind: v2-http, endpoints: [\"http://127.0.0.1:2\"]}}\n{body}")
}

/// `models:` with model `m` (v1, v2 at the given weights) and model `n` (a alone).
pub fn two_models(w1: f64, w2: f64) -> String {
    format!(
        "models:\n  m:\n    variants:\n      - {{name: v1, backend: b, weight: {w1}}}\n      - {{name: v2, backend: b, weight: {w2}}}\n  n:\n    variants:\n      - {{name: a, backend: b, weight: 1}}\n"
    )
}

/// Polls `cond` every 5 ms until it holds; panics with `what` after `patience`.
pub async fn eventually(patience: Duration, what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !cond().await {
        assert!(Instant::now() < deadline, "not true within {patience:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn weight(cfg: &ValidatedConfig, model: &str, variant: &str) -> f64 {
    cfg.models[model].variants.iter().find(|v| v.name.as_ref() == variant).expect("variant").weight
}
