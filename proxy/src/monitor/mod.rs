//! Model monitoring on the data path: live input and prediction drift
//! against a reference profile (docs/monitoring.md).
//!
//! The request path only decides whether a request is sampled (one relaxed
//! atomic add) and, when it is, hands clones of its input and output
//! tensors (refcounted bytes) to a bounded channel with `try_send`: a full
//! channel drops the sample and counts it, never waits. A summariser task
//! per monitored variant reads the channel, bins every row into its
//! `switchyard_stats::drift::Window` (memory fixed by the profile) and
//! publishes the scores to Prometheus and the `DriftBoard` the control
//! plane reads. A variant without monitoring carries `None` and pays one
//! branch.

pub mod answers;
pub mod capture;
pub mod features;
pub mod profile;
pub mod quality;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus::{GaugeVec, IntCounter, IntCounterVec, Opts, Registry};
use switchyard_config::DriftConfig;
use switchyard_runtime::Tensor;
use switchyard_stats::drift::{DriftBoard, DriftReport, FeatureScore, Window};
use switchyard_stats::LiveStats;
use tokio::sync::mpsc;

use self::features::for_each_value;
use self::profile::{ColumnProfile, Profile};
use self::quality::{FleetStore, QualityMetrics, QualityTracker};

/// Samples waiting for a summariser; beyond this they are dropped (and counted).
pub const SAMPLE_QUEUE: usize = 256;
/// Scores are recomputed at most this often.
const SCORE_EVERY: Duration = Duration::from_millis(100);

/// The process's drift monitors, kept across routing snapshots so a reload
/// that leaves a variant's monitoring unchanged keeps its window.
pub struct Monitoring {
    board: DriftBoard,
    metrics: DriftMetrics,
    monitors: Mutex<HashMap<(String, String), Arc<DriftMonitor>>>,
    quality_metrics: QualityMetrics,
    trackers: Mutex<HashMap<String, Arc<QualityTracker>>>,
    /// Fleet mode: answers and quality windows in Redis (set once, at start).
    fleet: OnceLock<Arc<FleetStore>>,
    /// Reference captures from live traffic, fed by the summarisers.
    captures: Arc<capture::Captures>,
}

#[derive(Clone)]
struct DriftMetrics {
    score: GaugeVec,
    overall: GaugeVec,
    threshold: GaugeVec,
    samples: IntCounterVec,
}

impl Monitoring {
    /// Registers the drift metrics in `registry`.
    pub fn new(registry: &Registry) -> Arc<Monitoring> {
        let score = GaugeVec::new(
            Opts::new(
                "switchyard_drift_score",
                "Drift of one feature of a variant's live window from the reference profile, by statistic (psi, ks)",
            ),
            &["model", "variant", "feature", "stat"],
        )
        .expect("valid metric");
        let overall = GaugeVec::new(
            Opts::new("switchyard_drift_overall", "Largest PSI over a variant's input features (side=inputs: data drift) or output features (side=outputs: prediction drift)"),
            &["model", "variant", "side"],
        )
        .expect("valid metric");
        let threshold = GaugeVec::new(
            Opts::new(
                "switchyard_drift_threshold",
                "The PSI above which a variant counts as drifted (monitoring.drift.threshold)",
            ),
            &["model", "variant"],
        )
        .expect("valid metric");
        let samples = IntCounterVec::new(
            Opts::new(
                "switchyard_drift_samples_total",
                "Requests sampled for drift, by outcome (summarised, dropped: the summariser was behind)",
            ),
            &["model", "variant", "outcome"],
        )
        .expect("valid metric");
        let quality = GaugeVec::new(
            Opts::new(
                "switchyard_quality",
                "Prediction quality of a variant over its feedback window, by metric (accuracy, precision, recall, f1_score, mae, rmse, labelled)",
            ),
            &["model", "variant", "metric"],
        )
        .expect("valid metric");
        let feedback = IntCounterVec::new(
            Opts::new(
                "switchyard_feedback_total",
                "Feedback items received, by outcome (joined to an answer, unknown request id, rejected label)",
            ),
            &["model", "outcome"],
        )
        .expect("valid metric");
        for c in [
            Box::new(score.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(overall.clone()),
            Box::new(threshold.clone()),
            Box::new(samples.clone()),
            Box::new(quality.clone()),
            Box::new(feedback.clone()),
        ] {
            // A second registration (tests that build twice) is harmless.
            let _ = registry.register(c);
        }
        Arc::new(Monitoring {
            board: DriftBoard::default(),
            metrics: DriftMetrics { score, overall, threshold, samples },
            monitors: Mutex::new(HashMap::new()),
            quality_metrics: QualityMetrics { quality, feedback },
            trackers: Mutex::new(HashMap::new()),
            fleet: OnceLock::new(),
            captures: Arc::new(capture::Captures::default()),
        })
    }

    /// Starts capturing a reference profile from `model`'s sampled live traffic
    /// (its `variants`, or all it monitors) until `samples` rows or `duration`.
    pub fn capture(
        &self,
        model: &str,
        variants: Option<HashSet<String>>,
        samples: Option<u64>,
        duration: Option<Duration>,
    ) -> Result<capture::Ticket, String> {
        let monitored: HashSet<String> = {
            let monitors = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
            monitors.keys().filter(|(m, _)| m == model).map(|(_, v)| v.clone()).collect()
        };
        if monitored.is_empty() {
            return Err(format!("model '{model}' has no drift monitoring"));
        }
        if let Some(v) = variants.as_ref().and_then(|v| v.iter().find(|v| !monitored.contains(*v))) {
            return Err(format!("model '{model}' has no drift-monitored variant '{v}'"));
        }
        self.captures.start(model, variants, samples, duration)
    }

    /// Fleet mode: answers go to the fleet's Redis (connected in the
    /// background on the current tokio runtime). Call before the first generation.
    pub fn enable_fleet(&self, cfg: &switchyard_config::FleetConfig, registry: &Registry) -> Result<(), String> {
        let store = answers::FleetAnswers::start(cfg, registry)?;
        let _ = self.fleet.set(store);
        Ok(())
    }

    /// The latest drift reports, as the control plane reads them.
    pub fn board(&self) -> &DriftBoard {
        &self.board
    }

    /// The drift monitor of a variant: the running one when its settings and
    /// profile are unchanged, else a new one (its summariser spawned on the
    /// current tokio runtime). A profile that cannot be read is an error
    /// that refuses the generation.
    pub fn drift_monitor(
        &self,
        model: &str,
        variant: &str,
        cfg: &DriftConfig,
        stats: Arc<LiveStats>,
    ) -> Result<Arc<DriftMonitor>, String> {
        let profile = Profile::read(&cfg.reference).map_err(|e| format!("model `{model}`: {e}"))?;
        if profile.inputs.is_empty() {
            return Err(format!("model `{model}`: profile {} has no input features", cfg.reference.display()));
        }
        let key = (model.to_string(), variant.to_string());
        let mut monitors = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = monitors.get(&key).filter(|m| m.cfg == *cfg && m.profile == profile) {
            return Ok(m.clone());
        }
        let m = DriftMonitor::spawn(
            model,
            variant,
            cfg.clone(),
            profile,
            stats,
            self.board.clone(),
            self.metrics.clone(),
            self.captures.clone(),
        );
        monitors.insert(key, m.clone());
        Ok(m)
    }

    /// The answer store and feedback join of a model: the running one when its settings are unchanged.
    pub fn quality_tracker(&self, model: &str, cfg: &switchyard_config::QualityConfig) -> Arc<QualityTracker> {
        let mut trackers = self.trackers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = trackers.get(model).filter(|t| t.config() == cfg) {
            return t.clone();
        }
        let t =
            Arc::new(QualityTracker::new(model, cfg.clone(), self.quality_metrics.clone(), self.fleet.get().cloned()));
        t.spawn_refresh();
        trackers.insert(model.to_string(), t.clone());
        t
    }

    /// Forgets the answer stores of models the new generation does not track.
    pub fn retain_quality(&self, live: &HashSet<String>) {
        self.trackers.lock().unwrap_or_else(|e| e.into_inner()).retain(|m, _| live.contains(m));
    }

    /// Forgets the monitors of variants the new generation does not monitor:
    /// their series and reports go, their summarisers end with the last snapshot using them.
    pub fn retain(&self, live: &HashSet<(String, String)>) {
        let mut monitors = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
        monitors.retain(|(model, variant), _| {
            let keep = live.contains(&(model.clone(), variant.clone()));
            if !keep {
                self.board.remove(model, variant);
                let m = &self.metrics;
                let _ = m.threshold.remove_label_values(&[model, variant]);
                for side in ["inputs", "outputs"] {
                    let _ = m.overall.remove_label_values(&[model, variant, side]);
                }
                for outcome in ["summarised", "dropped"] {
                    let _ = m.samples.remove_label_values(&[model, variant, outcome]);
                }
            }
            keep
        });
        let models: HashSet<&str> = monitors.keys().map(|(m, _)| m.as_str()).collect();
        self.captures.retain(|m| models.contains(m));
    }
}

/// A sampled request: its inputs and the outputs it was answered with.
struct Sample {
    inputs: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

/// One variant's drift monitor: the sampler on the request path and the channel to its summariser.
pub struct DriftMonitor {
    cfg: DriftConfig,
    profile: Profile,
    seen: AtomicU64,
    tx: mpsc::Sender<Sample>,
    dropped: IntCounter,
}

impl DriftMonitor {
    #[allow(clippy::too_many_arguments)]
    fn spawn(
        model: &str,
        variant: &str,
        cfg: DriftConfig,
        profile: Profile,
        stats: Arc<LiveStats>,
        board: DriftBoard,
        metrics: DriftMetrics,
        captures: Arc<capture::Captures>,
    ) -> Arc<DriftMonitor> {
        let (tx, rx) = mpsc::channel(SAMPLE_QUEUE);
        let dropped = metrics.samples.with_label_values(&[model, variant, "dropped"]);
        metrics.threshold.with_label_values(&[model, variant]).set(cfg.threshold);
        let mut summariser = Summariser::new(model, variant, &cfg, &profile, stats, board, metrics, dropped.clone());
        summariser.captures = Some(captures);
        let name = format!("drift {model}/{variant}");
        let task = tokio::spawn(summariser.run(rx));
        // Supervised: a panic is recorded (readiness and metrics see it), never silent.
        tokio::spawn(async move {
            if let Err(e) = task.await {
                if e.is_panic() {
                    let msg = switchyard_stats::tasks::panic_message(&*e.into_panic());
                    tracing::error!(task = %name, "drift summariser panicked: {msg}");
                    switchyard_stats::tasks::record_panic(name, msg);
                }
            }
        });
        Arc::new(DriftMonitor { cfg, profile, seen: AtomicU64::new(0), tx, dropped })
    }

    /// Whether this request is sampled: exactly `sample_rate` of requests,
    /// evenly spread (the n-th is taken when ⌊n·rate⌋ steps), no randomness.
    pub fn sample(&self) -> bool {
        let n = self.seen.fetch_add(1, Ordering::Relaxed) as f64;
        let r = self.cfg.sample_rate;
        ((n + 1.0) * r).floor() > (n * r).floor()
    }

    /// Hands a sampled request to the summariser; never waits.
    pub fn submit(&self, inputs: Vec<Tensor>, outputs: Vec<Tensor>) {
        if self.tx.try_send(Sample { inputs, outputs }).is_err() {
            self.dropped.inc();
        }
    }
}

/// Maps tensor columns of one side (inputs or outputs) to the window's features.
struct Side {
    window: Window,
    /// tensor name → column → feature index.
    columns: HashMap<String, Vec<Option<usize>>>,
}

impl Side {
    fn new(cols: &[ColumnProfile], window: usize) -> Side {
        let mut columns: HashMap<String, Vec<Option<usize>>> = HashMap::new();
        for (i, c) in cols.iter().enumerate() {
            let v = columns.entry(c.tensor.clone()).or_default();
            if v.len() <= c.column {
                v.resize(c.column + 1, None);
            }
            v[c.column] = Some(i);
        }
        Side { window: Window::new(cols.iter().map(|c| c.feature.clone()).collect(), window), columns }
    }

    /// Adds every row of one request's tensors; rows are aligned by their first dimension.
    fn add(&mut self, tensors: &[Tensor]) {
        let rows = tensors
            .iter()
            .filter(|t| self.columns.contains_key(&t.name))
            .filter_map(features::rows_and_width)
            .map(|(n, _)| n)
            .max()
            .unwrap_or(0);
        // Rows are started first so every tensor's row r lands in the same row of the window.
        let mut values: Vec<Vec<(usize, usize, OwnedValue)>> = Vec::new();
        for t in tensors {
            let Some(map) = self.columns.get(&t.name) else { continue };
            let mut v = Vec::new();
            for_each_value(t, |r, c, value| {
                if let Some(Some(f)) = map.get(c) {
                    v.push((r, *f, OwnedValue::from(value)));
                }
            });
            values.push(v);
        }
        let mut cursors = vec![0usize; values.len()];
        for r in 0..rows {
            self.window.start_row();
            for (t, vals) in values.iter().enumerate() {
                while let Some((row, f, v)) = vals.get(cursors[t]) {
                    if *row != r {
                        break;
                    }
                    self.window.add(*f, v.as_value());
                    cursors[t] += 1;
                }
            }
        }
    }
}

/// A value detached from its tensor's bytes (a category is rarely long).
enum OwnedValue {
    Number(f64),
    Category(Vec<u8>),
}

impl From<switchyard_stats::drift::Value<'_>> for OwnedValue {
    fn from(v: switchyard_stats::drift::Value<'_>) -> Self {
        match v {
            switchyard_stats::drift::Value::Number(x) => OwnedValue::Number(x),
            switchyard_stats::drift::Value::Category(b) => OwnedValue::Category(b.to_vec()),
        }
    }
}

impl OwnedValue {
    fn as_value(&self) -> switchyard_stats::drift::Value<'_> {
        match self {
            OwnedValue::Number(x) => switchyard_stats::drift::Value::Number(*x),
            OwnedValue::Category(b) => switchyard_stats::drift::Value::Category(b),
        }
    }
}

/// The task that owns a variant's windows.
struct Summariser {
    model: String,
    variant: String,
    min_samples: usize,
    threshold: f64,
    inputs: Side,
    outputs: Option<Side>,
    stats: Arc<LiveStats>,
    board: DriftBoard,
    metrics: DriftMetrics,
    summarised: IntCounter,
    dropped: IntCounter,
    sampled: u64,
    /// Reference captures this variant's samples may feed.
    captures: Option<Arc<capture::Captures>>,
}

impl Summariser {
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &str,
        variant: &str,
        cfg: &DriftConfig,
        profile: &Profile,
        stats: Arc<LiveStats>,
        board: DriftBoard,
        metrics: DriftMetrics,
        dropped: IntCounter,
    ) -> Summariser {
        let window = cfg.window.get();
        Summariser {
            model: model.to_string(),
            variant: variant.to_string(),
            min_samples: cfg.min_samples,
            threshold: cfg.threshold,
            inputs: Side::new(&profile.inputs, window),
            outputs: (!profile.outputs.is_empty()).then(|| Side::new(&profile.outputs, window)),
            summarised: metrics.samples.with_label_values(&[model, variant, "summarised"]),
            stats,
            board,
            metrics,
            dropped,
            sampled: 0,
            captures: None,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Sample>) {
        let mut dirty = false;
        let mut tick = tokio::time::interval(SCORE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                s = rx.recv() => match s {
                    Some(s) => {
                        self.add(s);
                        dirty = true;
                    }
                    // Every snapshot holding this monitor is gone.
                    None => return,
                },
                _ = tick.tick(), if dirty => {
                    self.publish();
                    dirty = false;
                }
            }
        }
    }

    fn add(&mut self, s: Sample) {
        if let Some(c) = &self.captures {
            c.offer(&self.model, &self.variant, &s.inputs, &s.outputs);
        }
        self.sampled += 1;
        self.summarised.inc();
        self.inputs.add(&s.inputs);
        if let Some(o) = &mut self.outputs {
            o.add(&s.outputs);
        }
    }

    fn publish(&self) {
        let scored = |side: &Side| -> Vec<FeatureScore> {
            if side.window.rows() >= self.min_samples {
                side.window.scores()
            } else {
                Vec::new()
            }
        };
        let inputs = scored(&self.inputs);
        let outputs = self.outputs.as_ref().map(scored).unwrap_or_default();
        let max_psi = |s: &[FeatureScore]| s.iter().map(|f| f.psi).reduce(f64::max);
        let report = DriftReport {
            input_rows: self.inputs.window.rows(),
            output_rows: self.outputs.as_ref().map_or(0, |o| o.window.rows()),
            data_drift: max_psi(&inputs),
            model_drift: max_psi(&outputs),
            inputs,
            outputs,
            threshold: self.threshold,
            sampled: self.sampled,
            dropped: self.dropped.get(),
        };
        let (m, v) = (self.model.as_str(), self.variant.as_str());
        for f in report.inputs.iter().chain(&report.outputs) {
            self.metrics.score.with_label_values(&[m, v, &f.name, "psi"]).set(f.psi);
            if let Some(ks) = f.ks {
                self.metrics.score.with_label_values(&[m, v, &f.name, "ks"]).set(ks);
            }
        }
        if let Some(d) = report.data_drift {
            self.metrics.overall.with_label_values(&[m, v, "inputs"]).set(d);
        }
        if let Some(d) = report.model_drift {
            self.metrics.overall.with_label_values(&[m, v, "outputs"]).set(d);
        }
        self.stats.set_drift(report.data_drift, report.model_drift);
        self.board.publish(m, v, report);
    }
}
