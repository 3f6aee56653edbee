//! [`ControlPlane`], the owner of the control state: the last good file
//! config, API weight overrides, the routing history, rollouts and
//! experiments. It feeds observations (stats, the time) to the state
//! machines (`rollout`, `experiments`), applies their decisions, and commits
//! every change the same way: build the effective config (`effective`), ask
//! the serving plane to apply it, and only if that succeeded commit the new
//! generation into its state, publish it and persist it (`persist`).
//!
//! In fleet mode (`fleet`) the overrides, history, experiments and rollouts
//! are the fleet's: an API change or a judge decision is first written to the
//! shared record by compare-and-set (refused when another change won or
//! Redis is unreachable), and records other replicas wrote are applied here
//! through the same commit ([`ControlPlane::sync_fleet`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::fleet::{Fleet, Record};
use crate::metrics::ControlMetrics;
use crate::persist::{StateWriter, Written};
use crate::rollout::{self, Observation, Rollout, RolloutDecision, RolloutView};
use crate::serving::ServingPlane;
use crate::settle::{self, Contents, Settled, Timing};
use crate::source::Source;
use crate::state::{default_state_path, CapturedReference, HistoryEntry, ModelOverride, PersistedState};

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
    /// Fleet mode: the generation of the shared record this state comes from.
    pub fleet_generation: Option<u64>,
    /// The file config with API overrides applied: what the serving plane runs.
    pub effective: Arc<ValidatedConfig>,
    /// Where each overridden weight came from; absent = the file.
    pub sources: BTreeMap<String, BTreeMap<String, Source>>,
    pub last_reload: ReloadStatus,
    /// Drift references captured from live traffic, by model (they replace the file's).
    pub references: Arc<BTreeMap<String, CapturedReference>>,
}

/// An A/B test just created.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExperimentCreated {
    pub test_id: String,
    pub model: String,
    pub generation: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet_generation: Option<u64>,
    pub traffic_split: BTreeMap<String, f64>,
    pub ends_at: u64,
}

/// Where per-variant numbers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatsScope {
    /// This process's requests since it started.
    Replica,
    /// Every replica's requests (fleet mode).
    Fleet,
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
    /// Drift references captured from live traffic (this replica's own).
    references: BTreeMap<String, CapturedReference>,
    /// Fleet mode: generation of the shared record applied (0: none yet).
    fleet_generation: u64,
    /// Sequence of the last state handed to the writer.
    persist_seq: u64,
}

/// Who asks for a change, which decides whether the fleet must agree first.
enum Origin {
    /// The config file: local to this replica, never written to the fleet.
    File,
    /// The API (with an optional `If-Match` generation) or, with `judge`, a
    /// rollout decision: in fleet mode a compare-and-set on the shared record first.
    Local { expect: Option<u64>, judge: bool },
    /// A shared record another replica wrote: applied as it is.
    Fleet(Box<Record>),
}

/// A change to commit: a new file (when reloading), the overrides to run
/// with, and the rollouts and experiments when they change too.
struct Change {
    file: Option<ConfigFile>,
    overrides: BTreeMap<String, ModelOverride>,
    rollouts: Option<BTreeMap<String, Rollout>>,
    experiments: Option<BTreeMap<String, Experiment>>,
    references: Option<BTreeMap<String, CapturedReference>>,
    origin: Origin,
}

impl Change {
    fn local(overrides: BTreeMap<String, ModelOverride>, expect: Option<u64>) -> Change {
        Change {
            file: None,
            overrides,
            rollouts: None,
            experiments: None,
            references: None,
            origin: Origin::Local { expect, judge: false },
        }
    }
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
    fleet: Option<Arc<Fleet>>,
    /// Fleet mode: whether the last look at the shared record succeeded, and why not.
    in_sync: AtomicBool,
    sync_error: std::sync::Mutex<Option<String>>,
    /// Drift reference captures, by model (`reference`).
    captures: crate::capture::Captures,
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
    /// In fleet mode it then catches up with the fleet's shared state before
    /// returning (the data plane listens, and so reports ready, only after);
    /// with Redis unreachable it serves the local state and says so.
    pub async fn start(file: ConfigFile, serving: Arc<dyn ServingPlane>) -> Result<Arc<ControlPlane>, String> {
        let state_path = file
            .overrides
            .state_file
            .clone()
            .or_else(|| file.config.listeners.control.as_ref().and_then(|c| c.state_file.clone()))
            .unwrap_or_else(|| default_state_path(&file.path));
        let mut persisted = PersistedState::load(&state_path)?;
        // A captured reference whose file is gone cannot be served: the file's applies again.
        persisted.references.retain(|model, r| {
            let ok = r.path.is_file();
            if !ok {
                tracing::warn!(model, path = %r.path.display(), "captured drift reference is missing; the config file's applies");
            }
            ok
        });
        let fleet = match &file.config.control.fleet {
            Some(cfg) => Some(Arc::new(Fleet::new(cfg.clone())?)),
            None => None,
        };
        let eff = effective(&file.config, &persisted.overrides);
        for d in &eff.dropped {
            tracing::warn!(target: "audit", dropped = ?d.to_string(), "override dropped");
        }
        let generation = persisted.generation + 1;
        let mut config = eff.config;
        with_references(&mut config, &persisted.references);
        let config = Arc::new(config);
        serving.apply(config.clone(), generation).await?;
        let metrics = ControlMetrics::get();
        metrics.reload_ok(true);
        metrics.generation.set(generation as i64);
        let fleet_generation = persisted.fleet_generation.unwrap_or(0);
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
            references: persisted.references.clone(),
            fleet_generation,
            persist_seq: 0,
        };
        if fleet.is_none() {
            let mut h = std::mem::take(&mut inner.history);
            record_history(&mut h, &config, generation, "startup");
            inner.history = h;
        }
        let plane = Arc::new(ControlPlane {
            config_path: file.path.clone(),
            overrides: file.overrides.clone(),
            serving,
            published: ArcSwap::from_pointee(Published {
                generation,
                fleet_generation: fleet.as_ref().map(|_| fleet_generation),
                effective: config,
                sources: eff.sources,
                last_reload: ReloadStatus {
                    successful: true,
                    at: now_secs(),
                    trigger: "startup".into(),
                    errors: vec![],
                },
                references: Arc::new(persisted.references),
            }),
            inner: Mutex::new(inner),
            metrics,
            writer: StateWriter::spawn(state_path)?,
            settle: Timing::default(),
            fleet,
            in_sync: AtomicBool::new(false),
            sync_error: std::sync::Mutex::new(None),
            captures: crate::capture::Captures::default(),
        });
        {
            let mut inner = plane.inner.lock().await;
            // Not awaited: a crash before it lands restarts from the file and the previous state.
            let _ = plane.persist(&mut inner);
        }
        if let Some(f) = &plane.fleet {
            match plane.sync_fleet().await {
                Ok(()) => {
                    tracing::info!(fleet = %f.name(), replica = %f.replica(), fleet_generation = plane.inner.lock().await.fleet_generation, "caught up with the fleet")
                }
                Err(e) => {
                    tracing::warn!(fleet = %f.name(), error = %e, "cannot reach the fleet's shared state; serving the local state until it is back")
                }
            }
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

    pub(crate) fn captures(&self) -> &crate::capture::Captures {
        &self.captures
    }

    /// The settle rule's timing (reloads read the file until it stops changing).
    pub fn settle_timing(&self) -> Timing {
        self.settle
    }

    pub(crate) fn serving(&self) -> &Arc<dyn ServingPlane> {
        &self.serving
    }

    /// Fleet mode's Redis side; `None` when fleet mode is off.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// Whether this replica runs the rollout and experiment clock: always
    /// without a fleet; in fleet mode only while it holds the judge lease.
    pub fn is_judge(&self) -> bool {
        self.fleet.as_ref().is_none_or(|f| f.judge_token().is_some())
    }

    /// Waits until every state handed to the writer so far is on disk.
    pub async fn flush_state(&self) {
        let written = {
            let mut inner = self.inner.lock().await;
            self.persist(&mut inner)
        };
        written.wait().await;
    }

    fn shared_state(&self, inner: &Inner, generation: u64) -> PersistedState {
        PersistedState {
            generation,
            fleet_generation: self.fleet.as_ref().map(|_| inner.fleet_generation),
            overrides: inner.overrides.clone(),
            history: inner.history.clone(),
            experiments: inner.experiments.values().map(|e| e.def().clone()).collect(),
            rollouts: inner.rollouts.iter().map(|(k, v)| (k.clone(), v.persisted())).collect(),
            references: inner.references.clone(),
        }
    }

    /// Hands the current state to the writer thread (never blocks on the file).
    fn persist(&self, inner: &mut Inner) -> Written {
        inner.persist_seq += 1;
        let state = self.shared_state(inner, self.published.load().generation);
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
        let mut config = eff.config;
        with_references(&mut config, change.references.as_ref().unwrap_or(&inner.references));
        let config = Arc::new(config);
        let rollouts = change.rollouts.as_ref().unwrap_or(&inner.rollouts);
        let experiments = change.experiments.as_ref().unwrap_or(&inner.experiments);
        let (history, fleet_generation) = match (&change.origin, &self.fleet) {
            (Origin::Fleet(rec), _) => (rec.state.history.clone(), Some(rec.generation)),
            // The history is the fleet's: a replica's own file does not write to it.
            (Origin::File, Some(_)) => (inner.history.clone(), None),
            (Origin::File, None) | (Origin::Local { .. }, None) => {
                if let Origin::Local { expect: Some(e), .. } = change.origin {
                    if e != generation - 1 {
                        return Err(ControlError::conflict(format!(
                            "If-Match: generation {e} expected, but generation {} is live; nothing was applied",
                            generation - 1
                        )));
                    }
                }
                let mut h = inner.history.clone();
                record_history(&mut h, &config, generation, reason);
                (h, None)
            }
            (Origin::Local { expect, judge }, Some(fleet)) => {
                let base = inner.fleet_generation;
                if let Some(e) = expect.filter(|e| *e != base) {
                    return Err(ControlError::conflict(format!(
                        "fleet '{}': If-Match: generation {e} expected, but this replica serves shared generation {base}; nothing was applied",
                        fleet.name()
                    )));
                }
                let token = match judge {
                    false => None,
                    true => Some(fleet.judge_token().ok_or_else(|| {
                        ControlError::conflict(format!(
                            "fleet '{}': this replica no longer holds the judge lease",
                            fleet.name()
                        ))
                    })?),
                };
                let mut h = inner.history.clone();
                // What was live before (a new fleet's first change has no history yet): a rollback target.
                let live = self.published.load().effective.clone();
                for name in live.models.keys() {
                    h.entry(name.to_string()).or_insert_with(|| {
                        let weights = weights_of(&live, name);
                        vec![HistoryEntry { generation: base, at: now_secs(), weights, reason: "live before".into() }]
                    });
                }
                record_history(&mut h, &config, base + 1, reason);
                let shared = PersistedState {
                    generation: base + 1,
                    fleet_generation: Some(base + 1),
                    overrides: eff.overrides.clone(),
                    history: h.clone(),
                    experiments: experiments.values().map(|e| e.def().clone()).collect(),
                    rollouts: rollouts.iter().map(|(k, v)| (k.clone(), v.persisted())).collect(),
                    // Captured references are each replica's own (their files are local).
                    references: BTreeMap::new(),
                };
                let g = fleet.write(base, &shared, token).await.map_err(|e| e.into_control(fleet.name()))?;
                (h, Some(g))
            }
        };
        if let Err(e) = self.serving.apply(config.clone(), generation).await {
            if let Some(g) = fleet_generation {
                tracing::error!(fleet_generation = g, error = %e, "the data plane refused a fleet generation; it is retried on the next sync");
            }
            return Err(ControlError::serving_plane(format!("the data plane refused generation {generation}: {e}")));
        }
        if let Some(r) = change.rollouts {
            inner.rollouts = r;
        }
        if let Some(x) = change.experiments {
            inner.experiments = x;
        }
        if let Some(r) = change.references {
            inner.references = r;
        }
        if let Some(f) = change.file {
            inner.file = f.config;
            inner.file_text = f.text;
            inner.refused_text = None;
            rollout::reconcile(&mut inner.rollouts, &inner.file);
        }
        inner.overrides = eff.overrides;
        inner.history = history;
        if let (Some(g), Some(f)) = (fleet_generation, &self.fleet) {
            inner.fleet_generation = g;
            self.metrics.fleet_generation.set(g as i64);
            self.report_fleet(f, g);
        }
        let last_reload = match reload {
            Some(r) => {
                self.metrics.reload_ok(r.successful);
                r
            }
            None => self.published.load().last_reload.clone(),
        };
        self.published.store(Arc::new(Published {
            generation,
            fleet_generation: self.fleet.as_ref().map(|_| inner.fleet_generation),
            effective: config,
            sources: eff.sources,
            last_reload,
            references: Arc::new(inner.references.clone()),
        }));
        self.metrics.generation.set(generation as i64);
        let written = self.persist(inner);
        tracing::info!(target: "audit", generation, ?fleet_generation, trigger, reason, "routing change applied");
        Ok((generation, written))
    }

    fn set_reload_status(&self, status: ReloadStatus) {
        self.metrics.reload_ok(status.successful);
        let p = self.published.load();
        self.published.store(Arc::new(Published {
            generation: p.generation,
            fleet_generation: p.fleet_generation,
            effective: p.effective.clone(),
            sources: p.sources.clone(),
            last_reload: status,
            references: p.references.clone(),
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
            || new.control != old.control
            || new.auth != old.auth
            || new.rate_limits != old.rate_limits
            || new.access_log != old.access_log
        {
            tracing::warn!(
                "listener addresses, runtime, control (fleet), auth, rate_limits and access_log settings take effect on restart only"
            );
        }
        let status = ReloadStatus { successful: true, at: now_secs(), trigger: trigger.into(), errors: vec![] };
        let change = Change {
            file: Some(file),
            overrides: inner.overrides.clone(),
            rollouts: None,
            experiments: None,
            references: None,
            origin: Origin::File,
        };
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
        self.set_weights_if(model, weights, source, who, None).await
    }

    /// [`Self::set_weights`] if the live generation (the shared one in fleet
    /// mode) is `expect`; an operator's change also ends the model's rollout.
    pub async fn set_weights_if(
        &self,
        model: &str,
        weights: BTreeMap<String, f64>,
        source: Source,
        who: &str,
        expect: Option<u64>,
    ) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        let overrides = self.weights_change(&inner, model, weights, source.clone())?;
        let mut change = Change::local(overrides, expect);
        if source == Source::Api {
            change.rollouts = aborted(&inner.rollouts, model, &format!("manual traffic change by {who}"));
        }
        let reason = format!("traffic shift by {who} ({source})");
        let (generation, written) = self.commit(&mut inner, change, &reason, who, None).await?;
        drop(inner);
        written.wait().await;
        Ok(generation)
    }

    /// Checks new weights of a model; the overrides with them merged in.
    fn weights_change(
        &self,
        inner: &Inner,
        model: &str,
        weights: BTreeMap<String, f64>,
        source: Source,
    ) -> Result<BTreeMap<String, ModelOverride>, ControlError> {
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
        overrides.insert(model.to_string(), ModelOverride { weights: merged, source });
        Ok(overrides)
    }

    /// Drops a model's API weights: the file's apply again.
    pub async fn reset_weights(&self, model: &str, who: &str) -> Result<u64, ControlError> {
        self.reset_weights_if(model, who, None).await
    }

    pub async fn reset_weights_if(&self, model: &str, who: &str, expect: Option<u64>) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        if !self.published.load().effective.models.contains_key(model) {
            return Err(unknown_model(model));
        }
        let mut overrides = inner.overrides.clone();
        overrides.remove(model);
        let mut change = Change::local(overrides, expect);
        change.rollouts = aborted(&inner.rollouts, model, &format!("manual traffic change by {who}"));
        let reason = format!("weights reset to the file by {who}");
        let (generation, written) = self.commit(&mut inner, change, &reason, who, None).await?;
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
        self.rollback_if(model, generation, who, None).await
    }

    pub async fn rollback_if(
        &self,
        model: &str,
        generation: Option<u64>,
        who: &str,
        expect: Option<u64>,
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
        let overrides = self.weights_change(&inner, model, entry.weights.clone(), source.clone())?;
        let mut change = Change::local(overrides, expect);
        change.rollouts = aborted(&inner.rollouts, model, "manual rollback");
        let reason = format!("traffic shift by {who} ({source})");
        let (g, written) = self.commit(&mut inner, change, &reason, who, None).await?;
        drop(inner);
        written.wait().await;
        Ok((g, entry.weights))
    }

    pub async fn history(&self, model: &str) -> Vec<HistoryEntry> {
        self.inner.lock().await.history.get(model).cloned().unwrap_or_default()
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

    /// Cumulative stats of variants: the fleet's merged counters in fleet mode
    /// (this replica's own when Redis cannot be read), else this replica's.
    pub async fn variant_stats(&self, model: &str, variants: &[String]) -> (StatsScope, Vec<Snapshot>) {
        if let Some(f) = &self.fleet {
            let keys = variants.iter().map(|v| f.stats_key(model, v)).collect();
            if let Ok(mut s) = f.read_stats(keys).await {
                // Levels, not counters: drift is this replica's own window; feedback quality is
                // the fleet's shared window, which the data plane loads into this replica's.
                for (snap, v) in s.iter_mut().zip(variants) {
                    if let Some(local) = self.serving.stats(model, v) {
                        (snap.data_drift, snap.model_drift) = (local.data_drift, local.model_drift);
                        snap.quality = local.quality;
                    }
                }
                return (StatsScope::Fleet, s);
            }
        }
        let local = variants.iter().map(|v| self.serving.stats(model, v).unwrap_or_default()).collect();
        (StatsScope::Replica, local)
    }

    /// One pass of the canary analysis: every rollout observes the live stats
    /// (the fleet's in fleet mode); decisions are applied. Each rollout
    /// observes on a copy, kept only once its decision is committed, so a
    /// refused decision is taken again at the next tick.
    pub async fn tick_rollouts(&self) {
        let mut inner = self.inner.lock().await;
        let now = Instant::now();
        let models: Vec<String> = inner.rollouts.keys().cloned().collect();
        for model in models {
            let Some(old) = inner.rollouts.get(&model) else { continue };
            let mut r = old.clone();
            let (canary, baseline) = (r.config().canary.to_string(), r.config().baseline.to_string());
            if r.status() != crate::state::RolloutStatus::Progressing {
                self.metrics.rollout_status.with_label_values(&[model.as_str(), &canary]).set(r.status().code());
                continue;
            }
            let (scope, s) = self.variant_stats(&model, &[canary.clone(), baseline.clone()]).await;
            if self.fleet.is_some() && scope == StatsScope::Replica {
                // Never judge the fleet's canary on one replica's numbers.
                continue;
            }
            let mut s = s.into_iter();
            let obs = Observation { now, canary: s.next().unwrap_or_default(), baseline: s.next().unwrap_or_default() };
            let decision = r.observe(obs);
            self.metrics.rollout_status.with_label_values(&[model.as_str(), &canary]).set(r.status().code());
            self.apply_rollout_decision(&mut inner, &model, &canary, r, decision).await;
        }
    }

    async fn apply_rollout_decision(
        &self,
        inner: &mut Inner,
        model: &str,
        canary: &str,
        r: Rollout,
        decision: RolloutDecision,
    ) {
        let labels = [model, canary];
        let (weights, reason, note) = match decision {
            RolloutDecision::Hold(_) => {
                inner.rollouts.insert(model.to_string(), r);
                return;
            }
            RolloutDecision::StepWeight { step, steps, canary_weight, weights } => {
                let reason = format!("rollout step {} of {steps}: canary {canary} at {canary_weight}%", step + 1);
                (weights, reason, (canary_weight, None))
            }
            RolloutDecision::Promote { canary_weight, weights } => {
                (weights, "rollout promoted".to_string(), (canary_weight, Some("canary promoted".to_string())))
            }
            RolloutDecision::RollBack { reason, weights } => {
                (weights, format!("automated rollback: {reason}"), (0.0, Some(reason)))
            }
        };
        // A step that is already live (a new judge resuming it) only starts its clock.
        let live = self.published.load().effective.clone();
        let same_weights = live
            .models
            .get(model)
            .is_some_and(|m| m.variants.iter().all(|v| weights.get(v.name.as_ref()).is_none_or(|w| *w == v.weight)));
        if same_weights && inner.rollouts.get(model).map(Rollout::persisted) == Some(r.persisted()) {
            // The gauge still reports the step (a fresh process resuming it has not set it yet).
            self.metrics.rollout_weight.with_label_values(&labels).set(note.0);
            inner.rollouts.insert(model.to_string(), r);
            return;
        }
        let overrides = match self.weights_change(inner, model, weights, Source::Rollout) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(model, error = %e.message, "rollout could not apply its weights");
                return;
            }
        };
        let mut rollouts = inner.rollouts.clone();
        rollouts.insert(model.to_string(), r);
        let change = Change {
            file: None,
            overrides,
            rollouts: Some(rollouts),
            experiments: None,
            references: None,
            origin: Origin::Local { expect: None, judge: true },
        };
        match self.commit(inner, change, &reason, &reason, None).await {
            Ok(_) => {
                self.metrics.rollout_weight.with_label_values(&labels).set(note.0);
                match note.1 {
                    Some(r) if note.0 == 0.0 => {
                        self.metrics.rollbacks.with_label_values(&labels).inc();
                        tracing::warn!(target: "audit", model, canary, reason = %r, "canary rolled back");
                    }
                    Some(_) => tracing::info!(target: "audit", model, canary, "canary promoted"),
                    None => {}
                }
            }
            Err(e) => {
                tracing::error!(model, error = %e.message, "rollout decision not applied; retried at the next tick")
            }
        }
    }

    /// Cumulative stats of a test's arms now (this replica's).
    fn arm_stats(&self, e: &Experiment) -> BTreeMap<String, Snapshot> {
        let d = e.def();
        d.variants.iter().map(|v| (v.clone(), self.serving.stats(&d.model, v).unwrap_or_default())).collect()
    }

    /// Creates an A/B test: sets its split as the model's weights and starts counting.
    pub async fn create_experiment(&self, req: CreateRequest, who: &str) -> Result<ExperimentCreated, ControlError> {
        self.create_experiment_if(req, who, None).await
    }

    pub async fn create_experiment_if(
        &self,
        req: CreateRequest,
        who: &str,
        expect: Option<u64>,
    ) -> Result<ExperimentCreated, ControlError> {
        let def = req.plan(now_secs())?;
        let mut inner = self.inner.lock().await;
        if inner.experiments.contains_key(&def.test_id) {
            return Err(ControlError::conflict(format!("test '{}' already exists", def.test_id)));
        }
        let source = Source::Experiment { test_id: def.test_id.clone() };
        let overrides = self.weights_change(&inner, &def.model, def.traffic_split.clone(), source.clone())?;
        let start =
            def.variants.iter().map(|v| (v.clone(), self.serving.stats(&def.model, v).unwrap_or_default())).collect();
        let mut experiments = inner.experiments.clone();
        experiments.insert(def.test_id.clone(), Experiment::start(def.clone(), start));
        let mut change = Change::local(overrides, expect);
        change.experiments = Some(experiments);
        let reason = format!("traffic shift by {who} ({source})");
        let (generation, written) = self.commit(&mut inner, change, &reason, who, None).await?;
        let created = ExperimentCreated {
            test_id: def.test_id.clone(),
            model: def.model.clone(),
            generation,
            fleet_generation: self.fleet.as_ref().map(|_| inner.fleet_generation),
            traffic_split: def.traffic_split.clone(),
            ends_at: def.ends_at(),
        };
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
            // In fleet mode results come from the fleet's counters, which stop
            // at the end by themselves: the end only changes the status.
            let stats = if self.fleet.is_some() { BTreeMap::new() } else { self.arm_stats(e) };
            if e.observe(now, &stats) == ExperimentDecision::End {
                tracing::info!(target: "audit", test_id = ?e.def().test_id, "A/B test ended; results kept");
            }
        }
    }

    /// Tests still counting, as `(test_id, model, variants, ends_at)` (the fleet's stats publisher adds to them).
    pub async fn running_experiments(&self) -> Vec<(String, String, Vec<String>, u64)> {
        let inner = self.inner.lock().await;
        let now = now_secs();
        inner
            .experiments
            .values()
            .map(Experiment::def)
            .filter(|d| now < d.ends_at())
            .map(|d| (d.test_id.clone(), d.model.clone(), d.variants.clone(), d.ends_at()))
            .collect()
    }

    pub async fn experiment_results(&self, test_id: &str) -> Result<ExperimentResults, ControlError> {
        let mut inner = self.inner.lock().await;
        self.observe_experiments(&mut inner);
        let e = inner
            .experiments
            .get(test_id)
            .ok_or_else(|| ControlError::not_found(format!("no A/B test '{test_id}'")))?;
        let Some(f) = &self.fleet else { return Ok(e.results(&self.arm_stats(e))) };
        let d = e.def();
        let keys = d.variants.iter().map(|v| f.ab_key(test_id, v)).collect();
        let counted = f.read_stats(keys).await.map_err(|err| {
            ControlError::unavailable(format!(
                "fleet '{}': the test's fleet-wide counters in Redis are unreachable ({err})",
                f.name()
            ))
        })?;
        Ok(e.results_of(d.variants.iter().cloned().zip(counted).collect()))
    }

    /// Fleet mode: brings this replica to the shared record's generation
    /// (whatever it is: a Redis that lost its data and was seeded again
    /// counts as the truth), or seeds an empty Redis with this replica's
    /// state if it ever had one from the fleet (a replica that never synced
    /// must not overwrite the fleet's state with its file's). Runs under the
    /// state lock, so it never races a local change.
    pub async fn sync_fleet(&self) -> Result<(), String> {
        let Some(f) = &self.fleet else { return Ok(()) };
        let mut inner = self.inner.lock().await;
        let res = self.sync_locked(f, &mut inner).await;
        self.in_sync.store(res.is_ok(), Ordering::Release);
        *self.sync_error.lock().unwrap_or_else(|e| e.into_inner()) = res.as_ref().err().cloned();
        self.report_fleet(f, inner.fleet_generation);
        res
    }

    async fn sync_locked(&self, f: &Fleet, inner: &mut Inner) -> Result<(), String> {
        let g = f.generation().await?;
        if g == inner.fleet_generation && g != 0 {
            return Ok(());
        }
        let Some(rec) = f.read().await? else {
            if inner.fleet_generation == 0 {
                // Never part of this fleet's state: nothing to seed it with.
                // The first change through any replica creates the record.
                return Ok(());
            }
            let next = inner.fleet_generation + 1;
            let seed = PersistedState {
                fleet_generation: Some(next),
                references: BTreeMap::new(),
                ..self.shared_state(inner, next)
            };
            return match f.write(0, &seed, None).await {
                Ok(g) => {
                    tracing::info!(fleet = %f.name(), generation = g, "seeded the fleet's empty shared state with this replica's");
                    inner.fleet_generation = g;
                    self.metrics.fleet_generation.set(g as i64);
                    let p = self.published.load();
                    self.published.store(Arc::new(Published {
                        generation: p.generation,
                        fleet_generation: Some(g),
                        effective: p.effective.clone(),
                        sources: p.sources.clone(),
                        last_reload: p.last_reload.clone(),
                        references: p.references.clone(),
                    }));
                    let _ = self.persist(inner);
                    Ok(())
                }
                // Another replica seeded first: the next sync applies its record.
                Err(crate::fleet::WriteError::Conflict { .. }) => Ok(()),
                Err(e) => Err(e.into_control(f.name()).message),
            };
        };
        if rec.generation == inner.fleet_generation {
            return Ok(());
        }
        let rollouts = merge_rollouts(&inner.rollouts, &inner.file, &rec.state.rollouts);
        let mut experiments = BTreeMap::new();
        for d in &rec.state.experiments {
            let e = match inner.experiments.get(&d.test_id) {
                Some(e) if e.def() == d => e.clone(),
                _ => Experiment::resume(d.clone()),
            };
            experiments.insert(d.test_id.clone(), e);
        }
        let reason = format!("fleet generation {} (written by {})", rec.generation, rec.by);
        let change = Change {
            file: None,
            overrides: rec.state.overrides.clone(),
            rollouts: Some(rollouts),
            experiments: Some(experiments),
            references: None,
            origin: Origin::Fleet(Box::new(rec)),
        };
        self.commit(inner, change, &reason, "fleet", None).await.map(|_| ()).map_err(|e| e.message)
    }

    /// Serves `reference` as the model's drift reference (`None`: the config
    /// file's again) in a new generation, local to this replica.
    pub(crate) async fn set_reference(
        &self,
        model: &str,
        reference: Option<CapturedReference>,
        reason: &str,
        trigger: &str,
    ) -> Result<u64, ControlError> {
        let mut inner = self.inner.lock().await;
        let mut references = inner.references.clone();
        match reference {
            Some(r) => references.insert(model.to_string(), r),
            None => references.remove(model),
        };
        let change = Change {
            file: None,
            overrides: inner.overrides.clone(),
            rollouts: None,
            experiments: None,
            references: Some(references),
            origin: Origin::File,
        };
        self.commit(&mut inner, change, reason, trigger, None).await.map(|(g, _)| g)
    }

    /// Publishes the fleet's state for `/ready` and the metrics.
    fn report_fleet(&self, f: &Fleet, generation: u64) {
        let s = f.status(generation);
        let in_sync = self.in_sync.load(Ordering::Acquire);
        let detail = serde_json::json!({
            "name": f.name(),
            "replica": f.replica(),
            "connected": s.connected && in_sync,
            "generation": generation,
            "judge": s.judge,
            "detail": match (s.connected, in_sync) {
                (true, true) => "in sync with the fleet's shared state".to_string(),
                (false, _) => format!(
                    "the shared state is unreachable ({}); serving the last state applied (shared generation {generation}); API changes are refused until it is back",
                    s.error.unwrap_or_else(|| "no answer".into())
                ),
                (true, false) => format!(
                    "cannot apply the fleet's shared state ({}); serving the last state applied (shared generation {generation}); retried every poll",
                    self.sync_error.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default()
                ),
            },
        });
        switchyard_stats::fleet::set(Some(detail.to_string()));
    }

    /// A new judge starts its rollouts' steps afresh from the shared state (their clocks restart; no step repeats).
    pub async fn became_judge(&self) {
        let mut inner = self.inner.lock().await;
        let persisted = inner.rollouts.iter().map(|(k, v)| (k.clone(), v.persisted())).collect();
        let config = self.published.load().effective.clone();
        inner.rollouts = rollout::resume(&config, persisted);
    }
}

/// The rollouts with the model's one aborted, if it was progressing (`None`: nothing to change).
/// Points each model with a captured reference (and drift monitoring) at its profile file.
fn with_references(config: &mut ValidatedConfig, references: &BTreeMap<String, CapturedReference>) {
    for (model, r) in references {
        if let Some(d) = config.models.get_mut(model.as_str()).and_then(|m| m.drift.as_mut()) {
            d.reference = r.path.clone();
        }
    }
}

fn aborted(rollouts: &BTreeMap<String, Rollout>, model: &str, reason: &str) -> Option<BTreeMap<String, Rollout>> {
    let r = rollouts.get(model).filter(|r| r.status() == crate::state::RolloutStatus::Progressing)?;
    let mut r = r.clone();
    r.abort(reason);
    let mut out = rollouts.clone();
    out.insert(model.to_string(), r);
    Some(out)
}

/// Rollouts after a shared record: a local rollout whose persisted progress
/// equals the record's is kept (with its step clock); others resume from it.
fn merge_rollouts(
    local: &BTreeMap<String, Rollout>,
    file: &ValidatedConfig,
    shared: &BTreeMap<String, crate::state::PersistedRollout>,
) -> BTreeMap<String, Rollout> {
    let mut out = rollout::resume(file, shared.clone());
    for (name, r) in out.iter_mut() {
        if let Some(l) = local.get(name).filter(|l| Some(&l.persisted()) == shared.get(name)) {
            *r = l.clone();
        }
    }
    out
}

fn record_history(
    history: &mut BTreeMap<String, Vec<HistoryEntry>>,
    eff: &ValidatedConfig,
    generation: u64,
    reason: &str,
) {
    for name in eff.models.keys() {
        let weights = weights_of(eff, name);
        let h = history.entry(name.to_string()).or_default();
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
    async fn if_match_applies_a_change_only_on_the_generation_it_names() {
        let dir = ConfigDir::new("if-match", &two_models(90.0, 10.0));
        let plane = dir.start(FakeServing::new()).await;
        let e = plane.set_weights_if("m", w(&[("v2", 50.0)]), Source::Api, "t", Some(7)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("generation 7") && e.message.contains("generation 1"), "{e}");
        assert_eq!(plane.published().generation, 1, "nothing applied");
        assert_eq!(plane.set_weights_if("m", w(&[("v2", 50.0)]), Source::Api, "t", Some(1)).await.unwrap(), 2);
        assert_eq!(plane.rollback_if("m", None, "t", Some(1)).await.unwrap_err().kind, ErrorKind::Conflict);
        assert_eq!(plane.rollback_if("m", None, "t", Some(2)).await.unwrap().0, 3);
    }

    #[tokio::test]
    async fn with_the_fleet_unreachable_a_replica_serves_its_local_state_and_refuses_changes() {
        // Port 1 on loopback: connections are refused at once.
        let fleet = "control:\n  fleet: {redis: 'redis://127.0.0.1:1', fleet: t, timeout: 100ms, lease_ttl: 300ms}\n";
        let dir = ConfigDir::new("fleet-down", &format!("{fleet}{}", two_models(90.0, 10.0)));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        let p = plane.published();
        assert_eq!((p.generation, p.fleet_generation), (1, Some(0)), "started on the file and the local state");
        assert_eq!(weight(&p.effective, "m", "v1"), 90.0);
        assert!(!plane.is_judge(), "no lease without Redis");
        let e = plane.set_weights("m", w(&[("v2", 50.0)]), Source::Api, "t").await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("unreachable") && e.message.contains("nothing was applied"), "{e}");
        assert_eq!((plane.published().generation, fake.applies()), (1, 1), "nothing applied");
        let detail: serde_json::Value = serde_json::from_str(&switchyard_stats::fleet::detail().unwrap()).unwrap();
        assert_eq!((detail["connected"].as_bool(), detail["name"].as_str()), (Some(false), Some("t")), "{detail}");
        assert!(plane.sync_fleet().await.is_err());
        assert_eq!(plane.history("m").await.len(), 0, "the history is the fleet's: a file start writes none");
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
        // An operator's shift ends the rollout in the same change.
        plane.set_weights("m", w(&[("v2", 0.0), ("v1", 100.0)]), Source::Api, "op").await.unwrap();
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
