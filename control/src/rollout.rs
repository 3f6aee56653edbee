//! Automated canary analysis, as a state machine: a [`Rollout`] takes an
//! [`Observation`] (the time and both variants' cumulative stats) and returns
//! a [`RolloutDecision`]; the owner (`plane::ControlPlane`) applies it.
//!
//! A model with a `rollout` walks its canary through the configured weight
//! steps. Every `interval` the canary's live stats since the step began are
//! judged against the baseline's over the same time: if its error rate
//! exceeds the baseline's by more than `max_error_rate_increase`, or its p99
//! latency exceeds `max_p99_ratio` times the baseline's, the canary goes to
//! weight 0 at once and a rollback is recorded with the reason; otherwise,
//! once it has `min_requests`, it moves to the next step. Reaching the last
//! step promotes it for good. A manual traffic shift or rollback on that
//! model aborts the rollout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use switchyard_config::{RolloutConfig, ValidatedConfig};
use switchyard_stats::Snapshot;

use crate::state::{PersistedRollout, RolloutStatus};

/// Smallest p99 difference (ms) that can count as a latency breach.
const P99_SLACK_MS: f64 = 10.0;

/// One model's rollout.
#[derive(Debug, Clone)]
pub struct Rollout {
    cfg: RolloutConfig,
    step: usize,
    status: RolloutStatus,
    reason: Option<String>,
    /// When the current step's weights were decided (None: still to decide).
    step_started: Option<Instant>,
    canary_at_step: Snapshot,
    baseline_at_step: Snapshot,
}

/// What the analysis sees at one tick: the time and both variants' cumulative stats.
#[derive(Debug, Clone)]
pub struct Observation {
    pub now: Instant,
    pub canary: Snapshot,
    pub baseline: Snapshot,
}

/// What the owner must do after an observation.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutDecision {
    /// Change nothing.
    Hold(Hold),
    /// A step begins: put the canary at its weight (`step` counts from 0).
    StepWeight { step: usize, steps: usize, canary_weight: f64, weights: BTreeMap<String, f64> },
    /// The canary passed its last judged step: its final weight, for good.
    Promote { canary_weight: f64, weights: BTreeMap<String, f64> },
    /// The canary breached a threshold: weight 0 at once.
    RollBack { reason: String, weights: BTreeMap<String, f64> },
}

/// Why nothing changes.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    /// The rollout is over (promoted, rolled back or aborted).
    Finished(RolloutStatus),
    /// The step has not run for a whole interval yet.
    StepRunning { remaining: Duration },
    /// Too little evidence to judge either way: the step keeps running.
    TooFewSamples { have: u64, need: u64 },
}

/// A rollout as the status endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutView {
    pub baseline: String,
    pub canary: String,
    pub status: RolloutStatus,
    pub step: usize,
    pub steps: Vec<f64>,
    /// The canary's weight in the live routing state.
    pub canary_weight: Option<f64>,
    pub reason: Option<String>,
}

fn fingerprint(cfg: &RolloutConfig) -> String {
    format!("{cfg:?}")
}

impl Rollout {
    pub fn new(cfg: RolloutConfig) -> Rollout {
        Rollout {
            cfg,
            step: 0,
            status: RolloutStatus::Progressing,
            reason: None,
            step_started: None,
            canary_at_step: Snapshot::default(),
            baseline_at_step: Snapshot::default(),
        }
    }

    pub fn config(&self) -> &RolloutConfig {
        &self.cfg
    }

    pub fn status(&self) -> RolloutStatus {
        self.status
    }

    pub fn step(&self) -> usize {
        self.step
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// An operator took over (manual shift or rollback): a progressing rollout stops.
    pub fn abort(&mut self, reason: &str) {
        if self.status == RolloutStatus::Progressing {
            self.status = RolloutStatus::Aborted;
            self.reason = Some(reason.to_string());
        }
    }

    pub fn persisted(&self) -> PersistedRollout {
        PersistedRollout {
            step: self.step,
            status: self.status,
            reason: self.reason.clone(),
            fingerprint: fingerprint(&self.cfg),
        }
    }

    /// `live_weight`: the canary's weight in the live routing state.
    pub fn view(&self, live_weight: Option<f64>) -> RolloutView {
        RolloutView {
            baseline: self.cfg.baseline.to_string(),
            canary: self.cfg.canary.to_string(),
            status: self.status,
            step: self.step,
            steps: self.cfg.steps.clone(),
            canary_weight: live_weight,
            reason: self.reason.clone(),
        }
    }

    fn weights(&self, canary: f64) -> BTreeMap<String, f64> {
        [(self.cfg.canary.to_string(), canary), (self.cfg.baseline.to_string(), 100.0 - canary)].into()
    }

    fn begin_step(&mut self, obs: Observation) -> RolloutDecision {
        let canary_weight = self.cfg.steps[self.step];
        self.step_started = Some(obs.now);
        self.canary_at_step = obs.canary;
        self.baseline_at_step = obs.baseline;
        RolloutDecision::StepWeight {
            step: self.step,
            steps: self.cfg.steps.len(),
            canary_weight,
            weights: self.weights(canary_weight),
        }
    }

    /// One step of the analysis.
    pub fn observe(&mut self, obs: Observation) -> RolloutDecision {
        if self.status != RolloutStatus::Progressing {
            return RolloutDecision::Hold(Hold::Finished(self.status));
        }
        let Some(started) = self.step_started else {
            return self.begin_step(obs);
        };
        let ran = obs.now.saturating_duration_since(started);
        if ran < self.cfg.interval {
            return RolloutDecision::Hold(Hold::StepRunning { remaining: self.cfg.interval - ran });
        }
        let canary = obs.canary.since(&self.canary_at_step);
        let baseline = obs.baseline.since(&self.baseline_at_step);
        if canary.requests < self.cfg.min_requests {
            return RolloutDecision::Hold(Hold::TooFewSamples { have: canary.requests, need: self.cfg.min_requests });
        }
        if let Some(reason) = judge(&self.cfg, &canary, &baseline) {
            self.status = RolloutStatus::RolledBack;
            self.reason = Some(reason.clone());
            return RolloutDecision::RollBack { reason, weights: self.weights(0.0) };
        }
        self.step += 1;
        if self.step + 1 >= self.cfg.steps.len() {
            self.step = self.cfg.steps.len() - 1;
            self.status = RolloutStatus::Promoted;
            let canary_weight = self.cfg.steps[self.step];
            return RolloutDecision::Promote { canary_weight, weights: self.weights(canary_weight) };
        }
        self.begin_step(obs)
    }
}

/// Rollouts of a freshly started process: persisted progress resumes when the config is the same.
pub fn resume(eff: &ValidatedConfig, mut persisted: BTreeMap<String, PersistedRollout>) -> BTreeMap<String, Rollout> {
    let mut out = BTreeMap::new();
    for (name, m) in &eff.models {
        let Some(cfg) = &m.rollout else { continue };
        let mut r = Rollout::new(cfg.clone());
        if let Some(p) = persisted.remove(name.as_ref()).filter(|p| p.fingerprint == fingerprint(cfg)) {
            r.step = p.step.min(cfg.steps.len() - 1);
            r.status = p.status;
            r.reason = p.reason;
        }
        out.insert(name.to_string(), r);
    }
    out
}

/// After a config reload: new rollouts start, removed ones stop, changed ones start over.
pub fn reconcile(rollouts: &mut BTreeMap<String, Rollout>, file: &ValidatedConfig) {
    rollouts.retain(|name, r| file.models.get(name.as_str()).and_then(|m| m.rollout.as_ref()) == Some(&r.cfg));
    for (name, m) in &file.models {
        if let Some(cfg) = &m.rollout {
            rollouts.entry(name.to_string()).or_insert_with(|| Rollout::new(cfg.clone()));
        }
    }
}

/// Why the canary fails this interval, if it does.
fn judge(cfg: &RolloutConfig, canary: &Snapshot, baseline: &Snapshot) -> Option<String> {
    if canary.requests == 0 {
        return None;
    }
    let (ce, be) = (canary.error_rate(), baseline.error_rate());
    if ce - be > cfg.max_error_rate_increase {
        return Some(format!(
            "canary error rate {:.2}% exceeds baseline {:.2}% by more than {:.2} points ({} of {} requests failed)",
            ce * 100.0,
            be * 100.0,
            cfg.max_error_rate_increase * 100.0,
            canary.errors,
            canary.requests
        ));
    }
    if baseline.requests > 0 {
        if let (Some(cp), Some(bp)) = (canary.quantile_ms(0.99), baseline.quantile_ms(0.99)) {
            // The ratio alone would trip on a millisecond of scheduling noise
            // when both are fast; a breach must also be P99_SLACK_MS slower.
            if cp > cfg.max_p99_ratio * bp && cp - bp > P99_SLACK_MS {
                return Some(format!("canary p99 {cp:.1} ms exceeds {} × baseline p99 {bp:.1} ms", cfg.max_p99_ratio));
            }
        }
    }
    if let Some(max) = cfg.max_drift {
        for (what, d) in [("data", canary.data_drift), ("prediction", canary.model_drift)] {
            if let Some(d) = d.filter(|d| *d > max) {
                return Some(format!("canary {what} drift (PSI {d:.3}) exceeds {max}"));
            }
        }
    }
    if let Some(max) = cfg.max_accuracy_drop {
        let acc = |s: &Snapshot| {
            let q = s.quality.as_ref()?;
            q.classification.as_ref().filter(|_| q.count >= cfg.min_requests).map(|c| (c.accuracy, q.count))
        };
        if let (Some((ca, cn)), Some((ba, _))) = (acc(canary), acc(baseline)) {
            if ba - ca > max {
                return Some(format!(
                    "canary accuracy {:.2}% is below baseline {:.2}% by more than {:.2} points ({cn} labelled answers)",
                    ca * 100.0,
                    ba * 100.0,
                    max * 100.0
                ));
            }
        }
    }
    None
}

/// How often the clock ticks for the shortest rollout interval.
pub fn tick_period(eff: &ValidatedConfig) -> Duration {
    eff.models
        .values()
        .filter_map(|m| m.rollout.as_ref().map(|r| r.interval / 4))
        .min()
        .unwrap_or(Duration::from_millis(500))
        .clamp(Duration::from_millis(50), Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RolloutConfig {
        RolloutConfig {
            baseline: "v1".into(),
            canary: "v2".into(),
            steps: vec![10.0, 50.0, 100.0],
            interval: Duration::from_secs(1),
            max_error_rate_increase: 0.01,
            max_p99_ratio: 1.5,
            min_requests: 10,
            max_drift: None,
            max_accuracy_drop: None,
        }
    }

    fn snap(requests: u64, errors: u64, latency_ms: u64) -> Snapshot {
        let s = switchyard_stats::LiveStats::default();
        for i in 0..requests {
            s.record(Duration::from_millis(latency_ms), i < errors);
        }
        s.snapshot()
    }

    /// A fake data plane's counters: cumulative stats of both variants.
    struct Traffic {
        canary: switchyard_stats::LiveStats,
        baseline: switchyard_stats::LiveStats,
    }

    impl Traffic {
        fn new() -> Traffic {
            Traffic { canary: Default::default(), baseline: Default::default() }
        }

        /// `n` requests to each variant; the canary fails `canary_errors` of them and takes `canary_ms`.
        fn serve(&self, n: u64, canary_errors: u64, canary_ms: u64) {
            for i in 0..n {
                self.canary.record(Duration::from_millis(canary_ms), i < canary_errors);
                self.baseline.record(Duration::from_millis(5), false);
            }
        }

        fn at(&self, now: Instant) -> Observation {
            Observation { now, canary: self.canary.snapshot(), baseline: self.baseline.snapshot() }
        }
    }

    fn w(canary: f64) -> BTreeMap<String, f64> {
        [("v2".to_string(), canary), ("v1".to_string(), 100.0 - canary)].into()
    }

    fn step(step: usize, canary_weight: f64) -> RolloutDecision {
        RolloutDecision::StepWeight { step, steps: 3, canary_weight, weights: w(canary_weight) }
    }

    #[test]
    fn judge_drift_and_accuracy() {
        let c = RolloutConfig { max_drift: Some(0.2), max_accuracy_drop: Some(0.05), ..cfg() };
        let healthy = snap(100, 0, 5);
        let mut drifted = snap(100, 0, 5);
        drifted.model_drift = Some(0.5);
        assert!(judge(&c, &drifted, &healthy).unwrap().contains("prediction drift (PSI 0.500)"));
        let labelled = |correct: u64| {
            let s = switchyard_stats::LiveStats::default();
            s.configure_quality(switchyard_stats::quality::Task::Classification, 1000);
            s.record_feedback((0..100).map(|i| (1.0, if i < correct { 1.0 } else { 0.0 })));
            let mut snap = snap(100, 0, 5);
            snap.quality = s.quality();
            snap
        };
        assert!(judge(&c, &labelled(80), &labelled(90)).unwrap().contains("accuracy 80.00%"));
        assert_eq!(judge(&c, &labelled(88), &labelled(90)), None);
    }

    #[test]
    fn judge_errors_latency_and_health() {
        let c = cfg();
        assert!(judge(&c, &snap(100, 5, 10), &snap(100, 0, 10)).unwrap().contains("error rate"));
        assert!(judge(&c, &snap(100, 0, 300), &snap(100, 0, 10)).unwrap().contains("p99"));
        assert_eq!(judge(&c, &snap(100, 0, 11), &snap(100, 0, 10)), None);
        // Twice as slow but only by a few milliseconds: noise, not a breach.
        assert_eq!(judge(&c, &snap(100, 0, 8), &snap(100, 0, 3)), None);
        assert_eq!(judge(&c, &snap(0, 0, 0), &snap(100, 0, 10)), None);
    }

    #[test]
    fn a_healthy_canary_walks_every_step_and_is_promoted() {
        let mut r = Rollout::new(cfg());
        let t = Traffic::new();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(r.observe(t.at(t0)), step(0, 10.0));
        // Within the interval nothing is judged, whatever the counts.
        t.serve(50, 0, 5);
        assert!(matches!(r.observe(t.at(t0 + s / 2)), RolloutDecision::Hold(Hold::StepRunning { .. })));
        assert_eq!(r.observe(t.at(t0 + s)), step(1, 50.0));
        assert_eq!((r.status(), r.step()), (RolloutStatus::Progressing, 1));
        t.serve(50, 0, 5);
        assert_eq!(r.observe(t.at(t0 + 2 * s)), RolloutDecision::Promote { canary_weight: 100.0, weights: w(100.0) });
        assert_eq!((r.status(), r.step(), r.reason()), (RolloutStatus::Promoted, 2, None));
        // Over: every later observation holds.
        t.serve(50, 50, 500);
        assert_eq!(r.observe(t.at(t0 + 9 * s)), RolloutDecision::Hold(Hold::Finished(RolloutStatus::Promoted)));
    }

    #[test]
    fn an_error_rate_breach_rolls_back_to_weight_zero() {
        let mut r = Rollout::new(cfg());
        let t = Traffic::new();
        let t0 = Instant::now();
        r.observe(t.at(t0));
        t.serve(100, 5, 5);
        let d = r.observe(t.at(t0 + Duration::from_secs(1)));
        let RolloutDecision::RollBack { reason, weights } = d else { panic!("not a rollback: {d:?}") };
        assert!(reason.contains("error rate 5.00%") && reason.contains("5 of 100"), "{reason}");
        assert_eq!(weights, w(0.0));
        assert_eq!(r.status(), RolloutStatus::RolledBack);
        assert_eq!(r.reason(), Some(reason.as_str()));
        assert_eq!(r.persisted().status, RolloutStatus::RolledBack);
    }

    #[test]
    fn a_latency_breach_rolls_back() {
        let mut r = Rollout::new(cfg());
        let t = Traffic::new();
        let t0 = Instant::now();
        r.observe(t.at(t0));
        t.serve(20, 0, 5);
        assert_eq!(r.observe(t.at(t0 + Duration::from_secs(1))), step(1, 50.0));
        // The second step is judged on its own interval only: slow now.
        t.serve(20, 0, 300);
        let d = r.observe(t.at(t0 + Duration::from_secs(2)));
        assert!(matches!(&d, RolloutDecision::RollBack { reason, .. } if reason.contains("p99")), "{d:?}");
        assert_eq!(r.status(), RolloutStatus::RolledBack);
    }

    #[test]
    fn too_few_samples_hold_the_step_until_there_are_enough() {
        let mut r = Rollout::new(cfg());
        let t = Traffic::new();
        let t0 = Instant::now();
        r.observe(t.at(t0));
        t.serve(9, 9, 500);
        // Nine failing, slow requests: still too few to judge either way.
        assert_eq!(
            r.observe(t.at(t0 + Duration::from_secs(5))),
            RolloutDecision::Hold(Hold::TooFewSamples { have: 9, need: 10 })
        );
        assert_eq!((r.status(), r.step()), (RolloutStatus::Progressing, 0));
        t.serve(91, 0, 5);
        assert!(matches!(r.observe(t.at(t0 + Duration::from_secs(6))), RolloutDecision::RollBack { .. }));
    }

    #[test]
    fn stats_from_before_the_step_do_not_count() {
        let mut r = Rollout::new(cfg());
        let t = Traffic::new();
        // A bad past (before the rollout began) is not the canary's step.
        t.serve(100, 100, 500);
        let t0 = Instant::now();
        r.observe(t.at(t0));
        t.serve(20, 0, 5);
        assert_eq!(r.observe(t.at(t0 + Duration::from_secs(1))), step(1, 50.0));
    }

    #[test]
    fn an_aborted_rollout_holds_for_good() {
        let mut r = Rollout::new(cfg());
        let t = Traffic::new();
        r.observe(t.at(Instant::now()));
        r.abort("manual traffic change");
        assert_eq!(r.status(), RolloutStatus::Aborted);
        assert_eq!(
            r.observe(t.at(Instant::now() + Duration::from_secs(9))),
            RolloutDecision::Hold(Hold::Finished(RolloutStatus::Aborted))
        );
        // Aborting a finished rollout changes nothing.
        r.abort("again");
        assert_eq!(r.reason(), Some("manual traffic change"));
    }

    fn config_with(rollout: &str) -> ValidatedConfig {
        let yaml = format!(
            "listeners:\n  http:\n    address: 127.0.0.1:1\n  grpc:\n    enabled: false\nbackends:\n  b: {{kind: v2-http, endpoints: [\"http://127.0.0.1:2\"]}}\nmodels:\n  m:\n    variants:\n      - {{name: v1, backend: b, weight: 100}}\n      - {{name: v2, backend: b, weight: 0}}\n{rollout}"
        );
        ValidatedConfig::parse(&yaml, std::path::Path::new(".")).expect("valid test config")
    }

    #[test]
    fn progress_resumes_only_for_the_same_rollout_config() {
        let a = config_with("    rollout: {baseline: v1, canary: v2, steps: [10, 50, 100], interval: 1s}\n");
        let b = config_with("    rollout: {baseline: v1, canary: v2, steps: [20, 100], interval: 1s}\n");
        let mut rs = resume(&a, BTreeMap::new());
        let t = Traffic::new();
        let t0 = Instant::now();
        let r = rs.get_mut("m").unwrap();
        r.observe(t.at(t0));
        t.serve(100, 0, 5); // the default min_requests
        assert!(matches!(r.observe(t.at(t0 + Duration::from_secs(1))), RolloutDecision::StepWeight { step: 1, .. }));
        let saved: BTreeMap<String, PersistedRollout> = [("m".to_string(), r.persisted())].into();
        assert_eq!(resume(&a, saved.clone())["m"].step(), 1, "same config: progress resumes");
        assert_eq!(resume(&b, saved)["m"].step(), 0, "changed config: starts over");

        // A reload keeps an unchanged rollout, restarts a changed one, drops a removed one.
        reconcile(&mut rs, &a);
        assert_eq!(rs["m"].step(), 1);
        reconcile(&mut rs, &b);
        assert_eq!(rs["m"].step(), 0);
        reconcile(&mut rs, &config_with(""));
        assert!(rs.is_empty());
    }

    #[test]
    fn the_clock_ticks_a_quarter_interval_within_bounds() {
        let fast = config_with("    rollout: {baseline: v1, canary: v2, steps: [100], interval: 400ms}\n");
        assert_eq!(tick_period(&fast), Duration::from_millis(100));
        assert_eq!(tick_period(&config_with("")), Duration::from_millis(500));
    }
}
