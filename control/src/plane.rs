//! [`ControlPlane`], the owner of the control state: the last good file
//! config, API weight overrides, the routing history, rollouts and
//! experiments. It feeds observations (stats, the time) to the state
//! machines (`rollout`, `experiments`), applies their decisions, and commits
//! every change the same way: build the effective config (`effective`), ask
//! the serving plane to apply it, and only if that succeeded commit the new
//! generation into its state, publish it and persist it (`persist`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;
use switchyard_config::{Overrides, ValidatedConfig};
use switchyard_stats::Snapshot;
use tokio::sync::Mutex;

use crate::config_file::ConfigFile;
use crate::effective::{effective, weights_of};
use crate::error::ControlError;
use crate::experiments::{CreateRequest, Experiment, ExperimentDecision, ExperimentResults};
use crate::metrics::ControlMetrics;
use crate::persist::{StateWriter, Written};
use crate::rollout::{self, Observation, Rollout, RolloutDecision, RolloutView};
use crate::serving::ServingPlane;
use crate::settle::{self, Contents, Settled, Timing};
use crate::source::Source;
use crate::state::{default_state_path, HistoryEntry, ModelOverride, PersistedState};

/// Routing states kept per model in the history.
const HISTORY_LEN: usize = 100;

/// What the last load or reload of the file did.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
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
    /// The file config with API overrides applied: what the serving plane runs.
    pub effective: Arc<ValidatedConfig>,
    /// Where each overridden weight came from; absent = the file.
    pub sources: BTreeMap<String, BTreeMap<String, Source>>,
    pub last_reload: ReloadStatus,
}

/// An A/B test just created.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExperimentCreated {
    pub test_id: String,
    pub model: String,
    pub generation: u64,
    pub traffic_split: BTreeMap<String, f64>,
    pub ends_at: u64,
}

struct Inner {
    file: Arc<ValidatedConfig>,
    file_text: String,
    /// The last file contents that were refused (not re-parsed or re-counted until they change).
    refused_text: Option<String>,
    overrides: BTreeMap<String, ModelOverride>,
    history: BTreeMap<String, Vec<HistoryEntry>>,
    experiments: BTreeMap<String, Experiment>,
    rollouts: BTreeMap<String, Rollout>,
    /// Sequence of the last state handed to the writer.
    persist_seq: u64,
}

/// A change to commit: a new file (when reloading) and the overrides to run with.
struct Change {
    file: Option<ConfigFile>,
    overrides: BTreeMap<String, ModelOverride>,
}

pub struct ControlPlane {
    config_path: PathBuf,
    /// Command-line settings every reload applies on top of the file.
    overrides: Arc<Overrides>,
    serving: Arc<dyn ServingPlane>,
    inner: Mutex<Inner>,
    published: ArcSwap<Published>,
    metrics: ControlMetrics,
    writer: StateWriter,
    settle: Timing,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn unknown_model(model: &str) -> ControlError {
    ControlError::not_found(format!("unknown model '{model}'"))
}

impl ControlPlane {
    /// Takes the config as read once by the caller, loads the persisted state,
    /// applies both as the first generation, and returns the running plane.
    pub async fn start(file: ConfigFile, serving: Arc<dyn ServingPlane>) -> Result<Arc<ControlPlane>, String> {
        let state_path = file
            .overrides
            .state_file
            .clone()
            .or_else(|| file.config.listeners.control.as_ref().and_then(|c| c.state_file.clone()))
            .unwrap_or_else(|| default_state_path(&file.path));
        let persisted = PersistedState::load(&state_path)?;
        let eff = effective(&file.config, &persisted.overrides);
        for d in &eff.dropped {
            tracing::warn!(target: "audit", dropped = ?d.to_string(), "override dropped");
        }
        let generation = persisted.generation + 1;
        let config = Arc::new(eff.config);
        serving.apply(config.clone(), generation).await?;
        let metrics = ControlMetrics::get();
        metrics.reload_ok(true);
        metrics.generation.set(generation as i64);
        let mut inner = Inner {
            file: file.config.clone(),
            file_text: file.text,
            refused_text: None,
            overrides: eff.overrides,
            history: persisted.history,
            experiments: persisted
                .experiments
                .into_iter()
                .map(|d| (d.test_id.clone(), Experiment::resume(d)))
                .collect(),
            rollouts: rollout::resume(&config, persisted.rollouts),
            persist_seq: 0,
        };
        record_history(&mut inner, &config, generation, "startup");
        let plane = Arc::new(ControlPlane {
            config_path: file.path.clone(),
            overrides: file.overrides.clone(),
            serving,
            published: ArcSwap::from_pointee(Published {
                generation,
                effective: config,
                sources: eff.sources,
                last_reload: ReloadStatus {
                    successful: true,
                    at: now_secs(),
                    trigger: "startup".into(),
                    errors: vec![],
                },
            }),
            inner: Mutex::new(inner),
            metrics,
            writer: StateWriter::spawn(state_path)?,
            settle: Timing::default(),
        });
        {
            let mut inner = plane.inner.lock().await;
            // Not awaited: a crash before it lands restarts from the file and the previous state.
            let _ = plane.persist(&mut inner);
        }
        tracing::info!(generation, path = %file.path.display(), "control plane started");
        Ok(plane)
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn state_path(&self) -> &Path {
        self.writer.path()
    }

    /// The settle rule's timing (reloads read the file until it stops changing).
    pub fn settle_timing(&self) -> Timing {
        self.settle
    }

    pub(crate) fn serving(&self) -> &Arc<dyn ServingPlane> {
        &self.serving
    }

    /// Waits until every state handed to the writer so far is on disk.
    pub async fn flush_state(&self) {
        let written = {
            let mut inner = self.inner.lock().await;
            self.persist(&mut inner)
        };
        written.wait().await;
    }

    /// Hands the current state to the writer thread (never blocks on the file).
    fn persist(&self, inner: &mut Inner) -> Written {
        inner.persist_seq += 1;
        let state = PersistedState {
            generation: self.published.load().generation,
            overrides: inner.overrides.clone(),
            history: inner.history.clone(),
            experiments: inner.experiments.values().map(|e| e.def().clone()).collect(),
            rollouts: inner.rollouts.iter().map(|(k, v)| (k.clone(), v.persisted())).collect(),
        };
        self.writer.submit(inner.persist_seq, state)
    }

    /// Applies `change` as a new generation; on any failure nothing in `inner` changes.
    async fn commit(
        &self,
        inner: &mut Inner,
        change: Change,
        reason: &str,
        trigger: &str,
        reload: Option<ReloadStatus>,
    ) -> Result<(u64, Written), ControlError> {
        let file = change.file.as_ref().map_or_else(|| inner.file.clone(), |f| f.config.clone());
        let eff = effective(&file, &change.overrides);
        for d in &eff.dropped {
            tracing::warn!(target: "audit", dropped = ?d.to_string(), "override dropped");
        }
        let generation = self.published.load().generation + 1;
        let config = Arc::new(eff.config);
        if let Err(e) = self.serving.apply(config.clone(), generation).await {
            return Err(ControlError::serving_plane(format!("the data plane refused generation {generation}: {e}")));
        }
        if let Some(f) = change.file {
            inner.file = f.config;
            inner.file_text = f.text;
            inner.refused_text = None;
            rollout::reconcile(&mut inner.rollouts, &inner.file);
        }
        inner.overrides = eff.overrides;
        record_history(inner, &config, generation, reason);
        let last_reload = match reload {
            Some(r) => {
                self.metrics.reload_ok(r.successful);
                r
            }
            None => self.published.load().last_reload.clone(),
        };
        self.published.store(Arc::new(Published { generation, effective: config, sources: eff.sources, last_reload }));
        self.metrics.generation.set(generation as i64);
        let written = self.persist(inner);
        tracing::info!(target: "audit", generation, trigger, reason, "routing change applied");
        Ok((generation, written))
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

    fn refuse_reload(&self, trigger: &str, errors: Vec<String>) {
        self.set_reload_status(ReloadStatus { successful: false, at: now_secs(), trigger: trigger.into(), errors });
    }

    /// An explicit reload (`POST /reload`, SIGHUP): reads the file until it
    /// stops changing (see `settle`), then applies it like [`Self::reload_contents`].
    pub async fn reload_file(&self, trigger: &str) -> Result<u64, ControlError> {
        let path = self.config_path.clone();
        let read = || settle::read(&path);
        match settle::settle(read, None, self.settle, Some(settle::EXPLICIT_GIVE_UP)).await {
            Settled::Stable(contents) => self.reload_contents(trigger, contents).await,
            Settled::StillChanging(waited) => Err(ControlError::conflict(format!(
                "{}: the file is still being written (changing for {waited:?}); nothing was applied, try again",
                self.config_path.display()
            ))),
            Settled::Closed => Err(ControlError::conflict("the config watcher stopped; nothing was applied")),
        }
    }

    /// Applies settled file contents when they differ from the live file's and validate.
    pub async fn reload_contents(&self, trigger: &str, contents: Contents) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        let text = match contents {
            Ok(t) => t,
            Err(msg) => {
                tracing::error!(trigger, "config reload refused: {msg}");
                self.refuse_reload(trigger, vec![msg.clone()]);
                return Err(ControlError::invalid_config(msg));
            }
        };
        if text == inner.file_text {
            return Ok(self.published.load().generation);
        }
        if inner.refused_text.as_deref() == Some(text.as_str()) {
            // Already refused and reported; the status still says why.
            let errors = self.published.load().last_reload.errors.join("; ");
            return Err(ControlError::invalid_config(format!("invalid config: {errors}")));
        }
        if text.trim().is_empty() {
            // Most likely a truncated file: never drop every route for it.
            let msg = format!(
                "{}: the file is empty; refusing to reload to a config with no routes",
                self.config_path.display()
            );
            tracing::error!(trigger, "config reload refused: {msg}");
            inner.refused_text = Some(text);
            self.refuse_reload(trigger, vec![msg.clone()]);
            return Err(ControlError::invalid_config(msg));
        }
        let file = match ConfigFile::parse(&self.config_path, text.clone(), self.overrides.clone()) {
            Ok(f) => f,
            Err(e) => {
                inner.refused_text = Some(text);
                let errors: Vec<String> = e.errors.iter().map(|x| x.to_string()).collect();
                tracing::error!(trigger, errors = ?errors, "config reload refused; the last good config stays live");
                self.refuse_reload(trigger, errors.clone());
                return Err(ControlError::invalid_config(format!("invalid config: {}", errors.join("; "))));
            }
        };
        let (new, old) = (&file.config, &inner.file);
        if new.listeners.http.address != old.listeners.http.address
            || new.listeners.metrics != old.listeners.metrics
            || new.listeners.control.as_ref().map(|c| c.address) != old.listeners.control.as_ref().map(|c| c.address)
            || new.runtime != old.runtime
            || new.auth != old.auth
            || new.rate_limits != old.rate_limits
            || new.access_log != old.access_log
        {
            tracing::warn!(
                "listener addresses, runtime, auth, rate_limits and access_log settings take effect on restart only"
            );
        }
        let status = ReloadStatus { successful: true, at: now_secs(), trigger: trigger.into(), errors: vec![] };
        let change = Change { file: Some(file), overrides: inner.overrides.clone() };
        match self.commit(&mut inner, change, "config file", trigger, Some(status)).await {
            Ok((generation, _)) => Ok(generation),
            Err(e) => {
                self.refuse_reload(trigger, vec![e.message.clone()]);
                Err(e)
            }
        }
    }

    /// A reload ended in a panic (recorded by its supervisor): the status says so; the live config stays.
    pub fn reload_panicked(&self, trigger: &str, message: &str) {
        self.refuse_reload(trigger, vec![format!("the reload panicked: {message}")]);
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
        let (generation, written) = self.set_weights_locked(&mut inner, model, weights, source, who).await?;
        drop(inner);
        written.wait().await;
        Ok(generation)
    }

    async fn set_weights_locked(
        &self,
        inner: &mut Inner,
        model: &str,
        weights: BTreeMap<String, f64>,
        source: Source,
        who: &str,
    ) -> Result<(u64, Written), ControlError> {
        let eff = self.published.load().effective.clone();
        let m = eff.models.get(model).ok_or_else(|| unknown_model(model))?;
        if weights.is_empty() {
            return Err(ControlError::bad_request("weights must name at least one variant"));
        }
        for (v, w) in &weights {
            let Some(var) = m.variants.iter().find(|x| x.name.as_ref() == v) else {
                let known: Vec<&str> = m.variants.iter().map(|x| x.name.as_ref()).collect();
                return Err(ControlError::bad_request(format!(
                    "model '{model}' has no variant '{v}' (variants: {})",
                    known.join(", ")
                )));
            };
            if !w.is_finite() || *w < 0.0 {
                return Err(ControlError::bad_request(format!(
                    "weight of '{v}' must be a non-negative number, got {w}"
                )));
            }
            if *w > 0.0 && var.shadow_percent.is_some() {
                return Err(ControlError::bad_request(format!(
                    "'{v}' is a shadow variant: it takes mirrored copies only"
                )));
            }
        }
        let sum: f64 = m.variants.iter().map(|v| weights.get(v.name.as_ref()).copied().unwrap_or(v.weight)).sum();
        if sum <= 0.0 {
            return Err(ControlError::bad_request("weights must leave a positive sum"));
        }
        let mut overrides = inner.overrides.clone();
        let mut merged = overrides.get(model).map(|o| o.weights.clone()).unwrap_or_default();
        merged.extend(weights);
        let reason = format!("traffic shift by {who} ({source})");
        overrides.insert(model.to_string(), ModelOverride { weights: merged, source });
        self.commit(inner, Change { file: None, overrides }, &reason, who, None).await
    }

    /// Drops a model's API weights: the file's apply again.
    pub async fn reset_weights(&self, model: &str, who: &str) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        if !self.published.load().effective.models.contains_key(model) {
            return Err(unknown_model(model));
        }
        let mut overrides = inner.overrides.clone();
        overrides.remove(model);
        let reason = format!("weights reset to the file by {who}");
        let (generation, written) =
            self.commit(&mut inner, Change { file: None, overrides }, &reason, who, None).await?;
        drop(inner);
        written.wait().await;
        Ok(generation)
    }

    /// Restores a model's previous routing state, or the one live at `generation`.
    pub async fn rollback(
        &self,
        model: &str,
        generation: Option<u64>,
        who: &str,
    ) -> Result<(u64, BTreeMap<String, f64>), ControlError> {
        let mut inner = self.inner.lock().await;
        if !self.published.load().effective.models.contains_key(model) {
            return Err(unknown_model(model));
        }
        let history = inner.history.get(model).map(Vec::as_slice).unwrap_or_default();
        let entry = match generation {
            None => history.len().checked_sub(2).map(|i| history[i].clone()).ok_or_else(|| {
                ControlError::conflict(format!("model '{model}' has no earlier routing state to roll back to"))
            })?,
            Some(g) => history.iter().rev().find(|e| e.generation <= g).cloned().ok_or_else(|| {
                ControlError::not_found(format!("model '{model}' has no routing state at generation {g}"))
            })?,
        };
        let source = Source::Rollback { to_generation: entry.generation };
        let (g, written) = self.set_weights_locked(&mut inner, model, entry.weights.clone(), source, who).await?;
        if let Some(r) = inner.rollouts.get_mut(model) {
            r.abort("manual rollback");
        }
        drop(inner);
        written.wait().await;
        Ok((g, entry.weights))
    }

    pub async fn history(&self, model: &str) -> Vec<HistoryEntry> {
        self.inner.lock().await.history.get(model).cloned().unwrap_or_default()
    }

    /// An operator took over the model's weights: its rollout stops.
    pub async fn abort_rollout(&self, model: &str, reason: &str) {
        if let Some(r) = self.inner.lock().await.rollouts.get_mut(model) {
            r.abort(reason);
        }
    }

    /// The model's rollout, with the canary's live weight.
    pub async fn rollout_status(&self, model: &str) -> Option<RolloutView> {
        let inner = self.inner.lock().await;
        // Read under the lock: a rollout step publishes its weights before releasing it.
        let eff = self.published().effective.clone();
        inner.rollouts.get(model).map(|r| {
            let live = eff
                .models
                .get(model)
                .and_then(|m| m.variants.iter().find(|v| v.name == r.config().canary))
                .map(|v| v.weight);
            r.view(live)
        })
    }

    fn stats(&self, model: &str, variant: &str) -> Snapshot {
        self.serving.stats(model, variant).unwrap_or_default()
    }

    /// One pass of the canary analysis: every rollout observes the live stats; decisions are applied.
    pub async fn tick_rollouts(&self) {
        let mut inner = self.inner.lock().await;
        let now = Instant::now();
        let mut decisions = Vec::new();
        for (model, r) in inner.rollouts.iter_mut() {
            let (canary, baseline) = (r.config().canary.clone(), r.config().baseline.clone());
            let obs = Observation { now, canary: self.stats(model, &canary), baseline: self.stats(model, &baseline) };
            let decision = r.observe(obs);
            self.metrics.rollout_status.with_label_values(&[model.as_str(), &canary]).set(r.status().code());
            decisions.push((model.clone(), canary, decision));
        }
        for (model, canary, decision) in decisions {
            self.apply_rollout_decision(&mut inner, &model, &canary, decision).await;
        }
    }

    async fn apply_rollout_decision(&self, inner: &mut Inner, model: &str, canary: &str, decision: RolloutDecision) {
        let labels = [model, canary];
        let (weights, reason) = match decision {
            RolloutDecision::Hold(_) => return,
            RolloutDecision::StepWeight { step, steps, canary_weight, weights } => {
                self.metrics.rollout_weight.with_label_values(&labels).set(canary_weight);
                (weights, format!("rollout step {} of {steps}: canary {canary} at {canary_weight}%", step + 1))
            }
            RolloutDecision::Promote { canary_weight, weights } => {
                self.metrics.rollout_weight.with_label_values(&labels).set(canary_weight);
                tracing::info!(target: "audit", model, canary, "canary promoted");
                (weights, "rollout promoted".to_string())
            }
            RolloutDecision::RollBack { reason, weights } => {
                self.metrics.rollbacks.with_label_values(&labels).inc();
                self.metrics.rollout_weight.with_label_values(&labels).set(0.0);
                tracing::warn!(target: "audit", model, canary, reason, "canary rolled back");
                (weights, format!("automated rollback: {reason}"))
            }
        };
        if let Err(e) = self.set_weights_locked(inner, model, weights, Source::Rollout, &reason).await {
            tracing::error!(model, error = %e.message, "rollout could not apply its weights");
        }
    }

    /// Cumulative stats of a test's arms now.
    fn arm_stats(&self, e: &Experiment) -> BTreeMap<String, Snapshot> {
        let d = e.def();
        d.variants.iter().map(|v| (v.clone(), self.stats(&d.model, v))).collect()
    }

    /// Creates an A/B test: sets its split as the model's weights and starts counting.
    pub async fn create_experiment(&self, req: CreateRequest, who: &str) -> Result<ExperimentCreated, ControlError> {
        let def = req.plan(now_secs())?;
        let mut inner = self.inner.lock().await;
        if inner.experiments.contains_key(&def.test_id) {
            return Err(ControlError::conflict(format!("test '{}' already exists", def.test_id)));
        }
        let source = Source::Experiment { test_id: def.test_id.clone() };
        let (generation, _) =
            self.set_weights_locked(&mut inner, &def.model, def.traffic_split.clone(), source, who).await?;
        let start = def.variants.iter().map(|v| (v.clone(), self.stats(&def.model, v))).collect();
        let created = ExperimentCreated {
            test_id: def.test_id.clone(),
            model: def.model.clone(),
            generation,
            traffic_split: def.traffic_split.clone(),
            ends_at: def.ends_at(),
        };
        inner.experiments.insert(def.test_id.clone(), Experiment::start(def, start));
        let written = self.persist(&mut inner);
        drop(inner);
        written.wait().await;
        tracing::info!(target: "audit", who, test_id = ?created.test_id, model = ?created.model, generation, "A/B test created");
        Ok(created)
    }

    /// Freezes the results of tests whose duration is over.
    pub async fn end_due_experiments(&self) {
        let mut inner = self.inner.lock().await;
        self.observe_experiments(&mut inner);
    }

    fn observe_experiments(&self, inner: &mut Inner) {
        let now = now_secs();
        for e in inner.experiments.values_mut().filter(|e| e.is_running()) {
            let stats = self.arm_stats(e);
            if e.observe(now, &stats) == ExperimentDecision::End {
                tracing::info!(target: "audit", test_id = ?e.def().test_id, "A/B test ended; results kept");
            }
        }
    }

    pub async fn experiment_results(&self, test_id: &str) -> Result<ExperimentResults, ControlError> {
        let mut inner = self.inner.lock().await;
        self.observe_experiments(&mut inner);
        let e = inner
            .experiments
            .get(test_id)
            .ok_or_else(|| ControlError::not_found(format!("no A/B test '{test_id}'")))?;
        Ok(e.results(&self.arm_stats(e)))
    }
}

fn record_history(inner: &mut Inner, eff: &ValidatedConfig, generation: u64, reason: &str) {
    for name in eff.models.keys() {
        let weights = weights_of(eff, name);
        let h = inner.history.entry(name.to_string()).or_default();
        if h.last().map(|e| &e.weights) != Some(&weights) {
            h.push(HistoryEntry { generation, at: now_secs(), weights, reason: reason.to_string() });
            if h.len() > HISTORY_LEN {
                h.remove(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;
    use crate::state::RolloutStatus;
    use crate::testing::{eventually, two_models, weight, ConfigDir, FakeServing};

    fn w(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn label(p: &Published, model: &str, variant: &str) -> &'static str {
        p.sources.get(model).and_then(|s| s.get(variant)).map_or("file", |s| s.label())
    }

    #[tokio::test]
    async fn start_runs_the_config_it_is_handed_without_reading_the_file_again() {
        let dir = ConfigDir::new("once", &two_models(90.0, 10.0));
        let file = ConfigFile::read(&dir.config).unwrap();
        // The file changes (here: breaks) after the binary read it: the plane
        // must start on what the binary read, not on a second parse.
        std::fs::write(&dir.config, "not: [valid").unwrap();
        let fake = FakeServing::new();
        let plane = ControlPlane::start(file.clone(), fake.clone()).await.expect("starts on the handed config");
        assert_eq!(fake.applies(), 1);
        assert_eq!(*fake.last_applied(), *file.config);
        let p = plane.published();
        assert_eq!((p.generation, p.last_reload.successful), (1, true));
        assert_eq!(weight(&p.effective, "m", "v1"), 90.0);
    }

    #[tokio::test]
    async fn a_traffic_shift_is_applied_published_and_on_disk_when_it_answers() {
        let dir = ConfigDir::new("shift", &two_models(90.0, 10.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        let g = plane.set_weights("m", w(&[("v2", 50.0)]), Source::Api, "test").await.unwrap();
        assert_eq!(g, 2);
        let p = plane.published();
        assert_eq!((weight(&p.effective, "m", "v1"), weight(&p.effective, "m", "v2")), (90.0, 50.0));
        assert_eq!((label(&p, "m", "v1"), label(&p, "m", "v2")), ("file", "api"));
        assert_eq!(*fake.last_applied(), *p.effective);
        // Durable before the call returned: no flush needed.
        let saved = PersistedState::load(plane.state_path()).unwrap();
        assert_eq!(saved.generation, 2);
        assert_eq!(saved.overrides["m"].weights, w(&[("v2", 50.0)]));
        assert_eq!(plane.history("m").await.last().unwrap().weights, w(&[("v1", 90.0), ("v2", 50.0)]));
    }

    #[tokio::test]
    async fn refused_changes_leave_everything_as_it_was() {
        let dir = ConfigDir::new("refused", &two_models(90.0, 10.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        let history = plane.history("m").await;
        for (weights, model, kind) in [
            (w(&[("nope", 1.0)]), "m", ErrorKind::BadRequest),
            (w(&[("v1", 0.0), ("v2", 0.0)]), "m", ErrorKind::BadRequest),
            (w(&[("v1", -1.0)]), "m", ErrorKind::BadRequest),
            (w(&[]), "m", ErrorKind::BadRequest),
            (w(&[("v1", 1.0)]), "nope", ErrorKind::NotFound),
        ] {
            let e = plane.set_weights(model, weights.clone(), Source::Api, "t").await.unwrap_err();
            assert_eq!(e.kind, kind, "{weights:?}: {e}");
        }
        // The serving plane refuses: no generation, no override, no history.
        fake.refuse_next.store(true, Ordering::SeqCst);
        let e = plane.set_weights("m", w(&[("v2", 50.0)]), Source::Api, "t").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::ServingPlane);
        assert_eq!(plane.published().generation, 1);
        assert!(plane.published().sources.is_empty());
        assert_eq!(plane.history("m").await, history);
        // The next change gets the generation the refused one would have had.
        assert_eq!(plane.set_weights("m", w(&[("v2", 50.0)]), Source::Api, "t").await.unwrap(), 2);
    }

    #[tokio::test]
    async fn api_weights_survive_a_reload_until_reset_and_go_with_their_variant() {
        let dir = ConfigDir::new("precedence", &two_models(90.0, 10.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        plane.set_weights("m", w(&[("v2", 30.0)]), Source::Api, "t").await.unwrap();
        // The file changes v2's weight too: the API's stays, v1 takes the file's.
        dir.write(&two_models(70.0, 0.0));
        let g = plane.reload_file("test").await.unwrap();
        let p = plane.published();
        assert_eq!(p.generation, g);
        assert_eq!((weight(&p.effective, "m", "v1"), weight(&p.effective, "m", "v2")), (70.0, 30.0));
        assert_eq!(label(&p, "m", "v2"), "api");
        // Unchanged contents: no new generation.
        assert_eq!(plane.reload_file("test").await.unwrap(), g);
        // A reset hands the model back to the file.
        plane.reset_weights("m", "t").await.unwrap();
        let p = plane.published();
        assert_eq!(weight(&p.effective, "m", "v2"), 0.0);
        assert_eq!(label(&p, "m", "v2"), "file");
        // A reload that removes the overridden variant drops the override.
        plane.set_weights("m", w(&[("v2", 30.0)]), Source::Api, "t").await.unwrap();
        dir.write(
            "models:\n  m:\n    variants:\n      - {name: v1, backend: b, weight: 1}\n  n:\n    variants:\n      - {name: a, backend: b, weight: 1}\n",
        );
        plane.reload_file("test").await.unwrap();
        assert!(plane.published().sources.is_empty());
        plane.flush_state().await;
        assert!(PersistedState::load(plane.state_path()).unwrap().overrides.is_empty());
    }

    #[tokio::test]
    async fn invalid_or_empty_files_are_refused_and_the_last_good_config_stays() {
        let dir = ConfigDir::new("invalid", &two_models(90.0, 10.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        for bad in ["models: [unclosed\n", "models:\n  m:\n    variants:\n      - {name: v1, backend: nope}\n"] {
            dir.write(bad);
            let e = plane.reload_file("test").await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidConfig, "{e}");
            let p = plane.published();
            assert_eq!((p.generation, p.last_reload.successful), (1, false));
            assert!(!p.last_reload.errors.is_empty());
        }
        std::fs::write(&dir.config, "").unwrap();
        assert!(plane.reload_file("test").await.unwrap_err().message.contains("empty"));
        assert_eq!(fake.applies(), 1, "nothing refused reached the serving plane");
        dir.write(&two_models(1.0, 1.0));
        assert_eq!(plane.reload_file("test").await.unwrap(), 2);
        assert!(plane.published().last_reload.successful);
    }

    #[tokio::test]
    async fn rollback_to_the_previous_state_and_to_a_generation() {
        let dir = ConfigDir::new("rollback", &two_models(100.0, 0.0));
        let plane = dir.start(FakeServing::new()).await;
        let g10 = plane.set_weights("m", w(&[("v1", 90.0), ("v2", 10.0)]), Source::Api, "t").await.unwrap();
        plane.set_weights("m", w(&[("v1", 50.0), ("v2", 50.0)]), Source::Api, "t").await.unwrap();
        plane.set_weights("m", w(&[("v1", 0.0), ("v2", 100.0)]), Source::Api, "t").await.unwrap();
        let (_, to) = plane.rollback("m", None, "t").await.unwrap();
        assert_eq!(to, w(&[("v1", 50.0), ("v2", 50.0)]));
        assert_eq!(label(&plane.published(), "m", "v2"), "rollback");
        let (_, to) = plane.rollback("m", Some(g10), "t").await.unwrap();
        assert_eq!(to, w(&[("v1", 90.0), ("v2", 10.0)]));
        assert_eq!(plane.rollback("m", Some(0), "t").await.unwrap_err().kind, ErrorKind::NotFound);
        assert_eq!(plane.rollback("nope", None, "t").await.unwrap_err().kind, ErrorKind::NotFound);
        let fresh = ConfigDir::new("rollback-none", &two_models(100.0, 0.0));
        let p = fresh.start(FakeServing::new()).await;
        assert_eq!(p.rollback("m", None, "t").await.unwrap_err().kind, ErrorKind::Conflict);
    }

    fn rollout_body(max_err: f64) -> String {
        format!(
            "models:\n  m:\n    variants:\n      - {{name: v1, backend: b, weight: 100}}\n      - {{name: v2, backend: b, weight: 0}}\n    rollout: {{baseline: v1, canary: v2, steps: [10, 50, 100], interval: 20ms, min_requests: 10, max_error_rate_increase: {max_err}}}\n"
        )
    }

    /// Ticks the plane's rollouts (as the clock would) until the rollout of `m` ends.
    async fn run_rollout(plane: &ControlPlane, fake: &FakeServing, canary_errors: u64) -> RolloutView {
        let mut view = None;
        eventually(Duration::from_secs(20), "the rollout ends", async || {
            fake.serve("m", "v1", 20, 0, 5);
            fake.serve("m", "v2", 20, canary_errors, 5);
            plane.tick_rollouts().await;
            view = plane.rollout_status("m").await;
            view.as_ref().is_some_and(|v| v.status != RolloutStatus::Progressing)
        })
        .await;
        view.unwrap()
    }

    #[tokio::test]
    async fn the_owner_applies_rollout_steps_until_promotion() {
        let dir = ConfigDir::new("promote", &rollout_body(0.01));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        let view = run_rollout(&plane, &fake, 0).await;
        assert_eq!((view.status, view.canary_weight), (RolloutStatus::Promoted, Some(100.0)));
        let p = plane.published();
        assert_eq!((weight(&p.effective, "m", "v1"), weight(&p.effective, "m", "v2")), (0.0, 100.0));
        assert_eq!(label(&p, "m", "v2"), "rollout");
        let steps: Vec<f64> = plane.history("m").await.iter().map(|e| e.weights["v2"]).collect();
        assert_eq!(steps, [0.0, 10.0, 50.0, 100.0]);
    }

    #[tokio::test]
    async fn the_owner_rolls_a_failing_canary_back_with_the_reason() {
        let dir = ConfigDir::new("rollback-canary", &rollout_body(0.01));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        let view = run_rollout(&plane, &fake, 5).await;
        assert_eq!((view.status, view.canary_weight), (RolloutStatus::RolledBack, Some(0.0)));
        assert!(view.reason.as_deref().is_some_and(|r| r.contains("error rate")), "{view:?}");
        let last = plane.history("m").await.pop().unwrap();
        assert!(last.reason.contains("automated rollback"), "{last:?}");
        assert_eq!(last.weights["v2"], 0.0);
        // Persisted: a restart keeps the verdict.
        plane.flush_state().await;
        let saved = PersistedState::load(plane.state_path()).unwrap();
        assert_eq!(saved.rollouts["m"].status, RolloutStatus::RolledBack);
    }

    #[tokio::test]
    async fn a_manual_shift_is_not_undone_by_an_aborted_rollout() {
        let dir = ConfigDir::new("abort", &rollout_body(0.01));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        plane.tick_rollouts().await;
        assert_eq!(plane.rollout_status("m").await.unwrap().canary_weight, Some(10.0));
        plane.set_weights("m", w(&[("v2", 0.0), ("v1", 100.0)]), Source::Api, "op").await.unwrap();
        plane.abort_rollout("m", "manual").await;
        fake.serve("m", "v2", 100, 0, 5);
        tokio::time::sleep(Duration::from_millis(30)).await; // past one rollout interval
        plane.tick_rollouts().await;
        let view = plane.rollout_status("m").await.unwrap();
        assert_eq!((view.status, view.canary_weight), (RolloutStatus::Aborted, Some(0.0)));
    }

    #[tokio::test]
    async fn experiments_set_their_split_count_from_the_start_and_refuse_duplicates() {
        let dir = ConfigDir::new("experiment", &two_models(100.0, 0.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        fake.serve("m", "v1", 1000, 0, 5); // before the test: not counted
        let req = || {
            serde_json::from_value::<CreateRequest>(serde_json::json!({
                "test_id": "t", "model": "m", "model_a": "v1", "model_b": "v2", "traffic_split": 0.5,
                "minimum_sample_size": 100, "test_duration": "1h"}))
            .unwrap()
        };
        let created = plane.create_experiment(req(), "t").await.unwrap();
        assert_eq!(created.traffic_split, w(&[("v1", 50.0), ("v2", 50.0)]));
        assert_eq!(label(&plane.published(), "m", "v2"), "experiment");
        assert_eq!(plane.create_experiment(req(), "t").await.unwrap_err().kind, ErrorKind::Conflict);
        assert_eq!(plane.experiment_results("nope").await.unwrap_err().kind, ErrorKind::NotFound);
        fake.serve("m", "v1", 300, 0, 5);
        fake.serve("m", "v2", 300, 30, 5);
        let r = plane.experiment_results("t").await.unwrap();
        assert_eq!((r.arms[0].stats.requests, r.arms[1].stats.errors), (300, 30));
        assert_eq!(r.verdict, crate::experiments::Verdict::Significant);
        let saved = PersistedState::load(plane.state_path()).unwrap();
        assert_eq!(saved.experiments.len(), 1, "the definition is on disk when create answers");
    }

    #[tokio::test]
    async fn persisted_state_follows_the_last_change_however_fast_they_come() {
        let dir = ConfigDir::new("ordering", &two_models(50.0, 50.0));
        let plane = dir.start(FakeServing::new()).await;
        for i in 1..=50 {
            plane.set_weights("m", w(&[("v2", i as f64)]), Source::Api, "t").await.unwrap();
            plane.tick_rollouts().await; // persists nothing new, but interleaves
        }
        plane.flush_state().await;
        let saved = PersistedState::load(plane.state_path()).unwrap();
        assert_eq!(saved.generation, plane.published().generation);
        assert_eq!(saved.overrides["m"].weights, w(&[("v2", 50.0)]));
        // A restart resumes from it: same weights, later generation.
        let fake = FakeServing::new();
        let again = dir.start(fake.clone()).await;
        assert_eq!(again.published().generation, saved.generation + 1);
        assert_eq!(weight(&fake.last_applied(), "m", "v2"), 50.0);
    }
}
