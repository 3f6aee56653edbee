//! Switchyard's control plane: the config file (watched, validated whole,
//! applied or refused), runtime overrides of traffic weights made through the
//! control API, experiments and rollouts, the rollback history, and the
//! persisted state that makes API changes survive a restart.
//!
//! Control never touches proxy internals. The binary implements
//! [`DataPlane`]: `apply` builds and publishes a new routing snapshot from an
//! effective config; the control plane only commits a generation once that
//! succeeded, so an invalid config or a failed build never replaces a good one.

pub mod api;
pub mod experiments;
pub mod rollout;
pub mod state;
pub mod watch;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde::Serialize;
use switchyard_config::{ConfigError, ValidatedConfig};
use switchyard_stats::Snapshot;
use tokio::sync::Mutex;

use crate::experiments::Experiment;
use crate::rollout::RolloutState;
use crate::state::{HistoryEntry, ModelOverride, PersistedState, Source};

/// What the control plane needs from the data plane (implemented by the binary).
#[async_trait]
pub trait DataPlane: Send + Sync + 'static {
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
}

/// A control-plane failure, with the HTTP status the API answers it with.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlError {
    pub status: u16,
    pub message: String,
}

impl ControlError {
    pub fn new(status: u16, message: impl Into<String>) -> ControlError {
        ControlError { status, message: message.into() }
    }
}

/// What the last load or reload of the file did.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReloadStatus {
    pub successful: bool,
    pub at: u64,
    pub trigger: String,
    /// Every validation or build error of a refused config.
    pub errors: Vec<String>,
}

/// The live state, readable without a lock.
pub struct Published {
    pub generation: u64,
    /// The file config with API overrides applied: what the data plane runs.
    pub effective: Arc<ValidatedConfig>,
    /// Where each overridden weight came from; absent = the file.
    pub sources: BTreeMap<String, BTreeMap<String, Source>>,
    pub last_reload: ReloadStatus,
}

struct Inner {
    file: Arc<ValidatedConfig>,
    file_text: String,
    /// The last file contents that were refused (not re-parsed or re-counted until they change).
    refused_text: Option<String>,
    overrides: BTreeMap<String, ModelOverride>,
    history: BTreeMap<String, Vec<HistoryEntry>>,
    experiments: BTreeMap<String, Experiment>,
    rollouts: BTreeMap<String, RolloutState>,
}

pub struct ControlPlane {
    config_path: PathBuf,
    state_path: PathBuf,
    data: Arc<dyn DataPlane>,
    inner: Mutex<Inner>,
    published: ArcSwap<Published>,
    metrics: ControlMetrics,
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Default place of the state file: beside the config.
pub fn default_state_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".state.json");
    config.with_file_name(name)
}

/// Applies overrides to a file config. Overrides naming variants the file no
/// longer has are dropped (and reported); the rest win over file weights.
fn effective(
    file: &ValidatedConfig,
    overrides: &mut BTreeMap<String, ModelOverride>,
) -> (ValidatedConfig, BTreeMap<String, BTreeMap<String, Source>>, Vec<String>) {
    let mut cfg = file.clone();
    let mut sources = BTreeMap::new();
    let mut dropped = Vec::new();
    overrides.retain(|model, o| {
        let Some(m) = cfg.models.get_mut(model.as_str()) else {
            dropped.push(format!("model `{model}` is no longer configured: its API weights were dropped"));
            return false;
        };
        if let Some(v) = o.weights.keys().find(|v| !m.variants.iter().any(|x| x.name.as_ref() == v.as_str())) {
            dropped.push(format!(
                "model `{model}` no longer has variant `{v}`: its API weights were dropped, file weights apply"
            ));
            return false;
        }
        let mut src = BTreeMap::new();
        for var in &mut m.variants {
            if let Some(w) = o.weights.get(var.name.as_ref()) {
                var.weight = *w;
                src.insert(var.name.to_string(), o.source.clone());
            }
        }
        if m.variants.iter().map(|v| v.weight).sum::<f64>() <= 0.0 {
            dropped
                .push(format!("model `{model}`: API weights would leave no traffic with the file's variants; dropped"));
            return false;
        }
        sources.insert(model.clone(), src);
        true
    });
    (cfg, sources, dropped)
}

fn weights_of(cfg: &ValidatedConfig, model: &str) -> BTreeMap<String, f64> {
    cfg.models
        .get(model)
        .map(|m| m.variants.iter().map(|v| (v.name.to_string(), v.weight)).collect())
        .unwrap_or_default()
}

impl ControlPlane {
    /// Loads the config and the persisted state, applies them, and returns the running plane.
    pub async fn start(config_path: &Path, data: Arc<dyn DataPlane>) -> Result<Arc<ControlPlane>, String> {
        let text =
            std::fs::read_to_string(config_path).map_err(|e| format!("{}: cannot read: {e}", config_path.display()))?;
        let file = ValidatedConfig::parse(&text, config_path.parent().unwrap_or(Path::new("."))).map_err(
            |mut e: ConfigError| {
                e.source_name = config_path.display().to_string();
                e.to_string()
            },
        )?;
        let state_path = file
            .listeners
            .control
            .as_ref()
            .and_then(|c| c.state_file.clone())
            .unwrap_or_else(|| default_state_path(config_path));
        let persisted = PersistedState::load(&state_path)?;
        let mut overrides = persisted.overrides;
        let (eff, sources, dropped) = effective(&file, &mut overrides);
        for d in &dropped {
            tracing::warn!(target: "audit", "{d}");
        }
        let generation = persisted.generation + 1;
        let eff = Arc::new(eff);
        data.apply(eff.clone(), generation).await?;
        let metrics = ControlMetrics::new();
        metrics.reload_ok(true);
        metrics.generation.set(generation as i64);
        let mut history = persisted.history;
        let plane = Arc::new(ControlPlane {
            config_path: config_path.to_path_buf(),
            state_path,
            data,
            published: ArcSwap::from_pointee(Published {
                generation,
                effective: eff.clone(),
                sources,
                last_reload: ReloadStatus {
                    successful: true,
                    at: now_secs(),
                    trigger: "startup".into(),
                    errors: vec![],
                },
            }),
            inner: Mutex::new(Inner {
                file: Arc::new(file),
                file_text: text,
                refused_text: None,
                overrides,
                history: BTreeMap::new(),
                experiments: persisted
                    .experiments
                    .into_iter()
                    .map(|d| (d.test_id.clone(), Experiment::resume(d)))
                    .collect(),
                rollouts: BTreeMap::new(),
            }),
            metrics,
        });
        {
            let mut inner = plane.inner.lock().await;
            std::mem::swap(&mut inner.history, &mut history);
            Self::record_history(&mut inner, &eff, generation, "startup");
            inner.rollouts = rollout::resume(&eff, persisted.rollouts);
            plane.persist(&inner, generation);
        }
        tracing::info!(generation, path = %config_path.display(), "control plane started");
        Ok(plane)
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub(crate) fn data(&self) -> &Arc<dyn DataPlane> {
        &self.data
    }

    fn record_history(inner: &mut Inner, eff: &ValidatedConfig, generation: u64, reason: &str) {
        for name in eff.models.keys() {
            let weights = weights_of(eff, name);
            let h = inner.history.entry(name.to_string()).or_default();
            if h.last().map(|e| &e.weights) != Some(&weights) {
                h.push(HistoryEntry { generation, at: now_secs(), weights, reason: reason.to_string() });
                // A bounded history: the newest 100 routing states per model.
                if h.len() > 100 {
                    h.remove(0);
                }
            }
        }
    }

    fn persist(&self, inner: &Inner, generation: u64) {
        let state = PersistedState {
            generation,
            overrides: inner.overrides.clone(),
            history: inner.history.clone(),
            experiments: inner.experiments.values().map(|e| e.def.clone()).collect(),
            rollouts: inner.rollouts.iter().map(|(k, v)| (k.clone(), v.persisted())).collect(),
        };
        if let Err(e) = state.save(&self.state_path) {
            tracing::error!(path = %self.state_path.display(), error = %e, "cannot persist control state");
        }
    }

    /// Builds the effective config from `inner`, applies it, and commits a new generation.
    async fn commit(&self, inner: &mut Inner, reason: &str, trigger: &str) -> Result<u64, ControlError> {
        self.commit_with(inner, reason, trigger, None).await
    }

    /// Like `commit`; a file reload passes its status so that the new generation
    /// and "last reload successful" become visible together.
    async fn commit_with(
        &self,
        inner: &mut Inner,
        reason: &str,
        trigger: &str,
        reload: Option<ReloadStatus>,
    ) -> Result<u64, ControlError> {
        let (eff, sources, dropped) = effective(&inner.file, &mut inner.overrides);
        for d in &dropped {
            tracing::warn!(target: "audit", "{d}");
        }
        let generation = self.published.load().generation + 1;
        let eff = Arc::new(eff);
        if let Err(e) = self.data.apply(eff.clone(), generation).await {
            return Err(ControlError::new(500, format!("the data plane refused generation {generation}: {e}")));
        }
        Self::record_history(inner, &eff, generation, reason);
        let last_reload = match reload {
            Some(r) => {
                self.metrics.reload_ok(r.successful);
                r
            }
            None => self.published.load().last_reload.clone(),
        };
        self.published.store(Arc::new(Published { generation, effective: eff, sources, last_reload }));
        self.metrics.generation.set(generation as i64);
        self.persist(inner, generation);
        tracing::info!(target: "audit", generation, trigger, reason, "routing change applied");
        Ok(generation)
    }

    fn set_reload_status(&self, status: ReloadStatus) {
        self.metrics.reload_ok(status.successful);
        let p = self.published.load();
        self.published.store(Arc::new(Published {
            generation: p.generation,
            effective: p.effective.clone(),
            sources: p.sources.clone(),
            last_reload: status,
        }));
    }

    /// Re-reads the config file; applies it when its contents changed and it validates.
    pub async fn reload_file(&self, trigger: &str) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        let text = match std::fs::read_to_string(&self.config_path) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("{}: cannot read: {e}", self.config_path.display());
                tracing::error!(trigger, "config reload refused: {msg}");
                self.set_reload_status(ReloadStatus {
                    successful: false,
                    at: now_secs(),
                    trigger: trigger.into(),
                    errors: vec![msg.clone()],
                });
                return Err(ControlError::new(422, msg));
            }
        };
        if text == inner.file_text {
            return Ok(self.published.load().generation);
        }
        if inner.refused_text.as_deref() == Some(text.as_str()) {
            // Already refused and reported; the status still says why.
            let errors = self.published.load().last_reload.errors.join("; ");
            return Err(ControlError::new(422, format!("invalid config: {errors}")));
        }
        if text.trim().is_empty() {
            // Most likely a truncated write caught mid-way: never drop every route for it.
            let msg = format!(
                "{}: the file is empty; refusing to reload to a config with no routes",
                self.config_path.display()
            );
            tracing::error!(trigger, "config reload refused: {msg}");
            inner.refused_text = Some(text);
            self.set_reload_status(ReloadStatus {
                successful: false,
                at: now_secs(),
                trigger: trigger.into(),
                errors: vec![msg.clone()],
            });
            return Err(ControlError::new(422, msg));
        }
        let base = self.config_path.parent().unwrap_or(Path::new("."));
        let file = match ValidatedConfig::parse(&text, base) {
            Ok(f) => f,
            Err(e) => {
                inner.refused_text = Some(text.clone());
                let errors: Vec<String> = e.errors.iter().map(|x| x.to_string()).collect();
                tracing::error!(trigger, errors = ?errors, "config reload refused; the last good config stays live");
                self.set_reload_status(ReloadStatus {
                    successful: false,
                    at: now_secs(),
                    trigger: trigger.into(),
                    errors: errors.clone(),
                });
                return Err(ControlError::new(422, format!("invalid config: {}", errors.join("; "))));
            }
        };
        if file.listeners.http.address != inner.file.listeners.http.address
            || file.listeners.metrics != inner.file.listeners.metrics
            || file.listeners.control.as_ref().map(|c| c.address)
                != inner.file.listeners.control.as_ref().map(|c| c.address)
            || file.runtime != inner.file.runtime
        {
            tracing::warn!("listener addresses and runtime settings take effect on restart only");
        }
        let previous = std::mem::replace(&mut inner.file, Arc::new(file));
        let previous_rollouts = inner.rollouts.clone();
        let file = inner.file.clone();
        rollout::reconcile(&mut inner.rollouts, &file);
        let status = ReloadStatus { successful: true, at: now_secs(), trigger: trigger.into(), errors: vec![] };
        match self.commit_with(&mut inner, "config file", trigger, Some(status)).await {
            Ok(generation) => {
                inner.file_text = text;
                inner.refused_text = None;
                Ok(generation)
            }
            Err(e) => {
                inner.file = previous;
                inner.rollouts = previous_rollouts;
                self.set_reload_status(ReloadStatus {
                    successful: false,
                    at: now_secs(),
                    trigger: trigger.into(),
                    errors: vec![e.message.clone()],
                });
                Err(e)
            }
        }
    }

    /// Sets variant weights of a model (variants not named keep theirs).
    pub async fn set_weights(
        &self,
        model: &str,
        weights: BTreeMap<String, f64>,
        source: Source,
        who: &str,
    ) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        self.set_weights_locked(&mut inner, model, weights, source, who).await
    }

    async fn set_weights_locked(
        &self,
        inner: &mut Inner,
        model: &str,
        weights: BTreeMap<String, f64>,
        source: Source,
        who: &str,
    ) -> Result<u64, ControlError> {
        let eff = self.published.load().effective.clone();
        let m = eff.models.get(model).ok_or_else(|| ControlError::new(404, format!("unknown model '{model}'")))?;
        if weights.is_empty() {
            return Err(ControlError::new(400, "weights must name at least one variant"));
        }
        for (v, w) in &weights {
            if !m.variants.iter().any(|x| x.name.as_ref() == v) {
                let known: Vec<&str> = m.variants.iter().map(|x| x.name.as_ref()).collect();
                return Err(ControlError::new(
                    400,
                    format!("model '{model}' has no variant '{v}' (variants: {})", known.join(", ")),
                ));
            }
            if !w.is_finite() || *w < 0.0 {
                return Err(ControlError::new(400, format!("weight of '{v}' must be a non-negative number, got {w}")));
            }
            if *w > 0.0 && m.variants.iter().any(|x| x.name.as_ref() == v && x.shadow_percent.is_some()) {
                return Err(ControlError::new(
                    400,
                    format!("'{v}' is a shadow variant: it takes mirrored copies only"),
                ));
            }
        }
        let sum: f64 = m.variants.iter().map(|v| weights.get(v.name.as_ref()).copied().unwrap_or(v.weight)).sum();
        if sum <= 0.0 {
            return Err(ControlError::new(400, "weights must leave a positive sum"));
        }
        let mut merged = inner.overrides.get(model).map(|o| o.weights.clone()).unwrap_or_default();
        merged.extend(weights);
        let before =
            inner.overrides.insert(model.to_string(), ModelOverride { weights: merged, source: source.clone() });
        let reason = format!("traffic shift by {who} ({source})");
        match self.commit(inner, &reason, who).await {
            Ok(g) => Ok(g),
            Err(e) => {
                match before {
                    Some(b) => inner.overrides.insert(model.to_string(), b),
                    None => inner.overrides.remove(model),
                };
                Err(e)
            }
        }
    }

    /// Drops a model's API weights: the file's apply again.
    pub async fn reset_weights(&self, model: &str, who: &str) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        if !self.published.load().effective.models.contains_key(model) {
            return Err(ControlError::new(404, format!("unknown model '{model}'")));
        }
        let before = inner.overrides.remove(model);
        match self.commit(&mut inner, &format!("weights reset to the file by {who}"), who).await {
            Ok(g) => Ok(g),
            Err(e) => {
                if let Some(b) = before {
                    inner.overrides.insert(model.to_string(), b);
                }
                Err(e)
            }
        }
    }

    /// Restores a model's previous routing state, or the one live at `generation`.
    pub async fn rollback(
        &self,
        model: &str,
        generation: Option<u64>,
        who: &str,
    ) -> Result<(u64, BTreeMap<String, f64>), ControlError> {
        let mut inner = self.inner.lock().await;
        let history = inner.history.get(model).cloned().unwrap_or_default();
        if !self.published.load().effective.models.contains_key(model) {
            return Err(ControlError::new(404, format!("unknown model '{model}'")));
        }
        let entry = match generation {
            None => history.len().checked_sub(2).map(|i| history[i].clone()).ok_or_else(|| {
                ControlError::new(409, format!("model '{model}' has no earlier routing state to roll back to"))
            })?,
            Some(g) => history.iter().rev().find(|e| e.generation <= g).cloned().ok_or_else(|| {
                ControlError::new(404, format!("model '{model}' has no routing state at generation {g}"))
            })?,
        };
        let source = Source::Rollback { to_generation: entry.generation };
        let g = self.set_weights_locked(&mut inner, model, entry.weights.clone(), source, who).await?;
        if let Some(r) = inner.rollouts.get_mut(model) {
            r.abort("manual rollback");
        }
        Ok((g, entry.weights))
    }

    pub async fn history(&self, model: &str) -> Vec<HistoryEntry> {
        self.inner.lock().await.history.get(model).cloned().unwrap_or_default()
    }

    pub(crate) fn metrics(&self) -> &ControlMetrics {
        &self.metrics
    }
}

/// Control-plane metrics, in the process-wide default registry (served on the metrics port).
pub struct ControlMetrics {
    pub generation: prometheus::IntGauge,
    pub reload_successful: prometheus::IntGauge,
    pub reloads: prometheus::IntCounterVec,
    pub rollout_weight: prometheus::GaugeVec,
    pub rollout_status: prometheus::IntGaugeVec,
    pub rollbacks: prometheus::IntCounterVec,
}

impl ControlMetrics {
    fn new() -> ControlMetrics {
        use std::sync::OnceLock;
        static M: OnceLock<(
            prometheus::IntGauge,
            prometheus::IntGauge,
            prometheus::IntCounterVec,
            prometheus::GaugeVec,
            prometheus::IntGaugeVec,
            prometheus::IntCounterVec,
        )> = OnceLock::new();
        let m = M.get_or_init(|| {
            let r = prometheus::default_registry();
            let g = prometheus::IntGauge::new("switchyard_config_generation", "Generation of the live routing state")
                .expect("valid");
            let ok = prometheus::IntGauge::new(
                "switchyard_config_last_reload_successful",
                "1 when the last config file load or reload was applied, 0 when it was refused",
            )
            .expect("valid");
            let reloads = prometheus::IntCounterVec::new(
                prometheus::Opts::new("switchyard_config_reloads_total", "Config file reloads, by result"),
                &["result"],
            )
            .expect("valid");
            let weight = prometheus::GaugeVec::new(
                prometheus::Opts::new(
                    "switchyard_rollout_canary_weight",
                    "Current canary weight (percent) of a rollout",
                ),
                &["model", "canary"],
            )
            .expect("valid");
            let status = prometheus::IntGaugeVec::new(
                prometheus::Opts::new(
                    "switchyard_rollout_status",
                    "Rollout state: 0 progressing, 1 promoted, 2 rolled back, 3 aborted",
                ),
                &["model", "canary"],
            )
            .expect("valid");
            let rollbacks = prometheus::IntCounterVec::new(
                prometheus::Opts::new("switchyard_rollout_rollbacks_total", "Automated rollbacks, by model"),
                &["model", "canary"],
            )
            .expect("valid");
            for c in [
                Box::new(g.clone()) as Box<dyn prometheus::core::Collector>,
                Box::new(ok.clone()),
                Box::new(reloads.clone()),
                Box::new(weight.clone()),
                Box::new(status.clone()),
                Box::new(rollbacks.clone()),
            ] {
                let _ = r.register(c);
            }
            (g, ok, reloads, weight, status, rollbacks)
        });
        ControlMetrics {
            generation: m.0.clone(),
            reload_successful: m.1.clone(),
            reloads: m.2.clone(),
            rollout_weight: m.3.clone(),
            rollout_status: m.4.clone(),
            rollbacks: m.5.clone(),
        }
    }

    fn reload_ok(&self, ok: bool) {
        self.reload_successful.set(ok as i64);
        self.reloads.with_label_values(&[if ok { "applied" } else { "refused" }]).inc();
    }
}
