//! A/B tests, as a state machine: [`CreateRequest::plan`] validates a
//! request into an [`ExperimentDef`] (pure); an [`Experiment`] takes the time
//! and the arms' cumulative stats and decides whether the test is over
//! ([`ExperimentDecision`]); [`Experiment::results`] judges the arms. The
//! owner (`plane::ControlPlane`) sets the split and keeps the tests.
//!
//! Results are the stats since the test started, with a significance test on
//! the chosen metric — a two-proportion z-test for error rate, Welch's t-test
//! for latency (means and variances estimated from the latency histogram).
//! No verdict is given below `minimum_sample_size` per variant. A test ends
//! at `test_duration` and keeps its results (the split stays until changed).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use switchyard_config::parse_duration;
use switchyard_stats::{two_proportion_z_test, welch_t_test, Snapshot};

use crate::error::ControlError;
use crate::state::{ExperimentDef, Metric};

/// The body of `POST /ml/ab-tests/create`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub test_id: String,
    #[serde(default)]
    pub model: Option<String>,
    pub model_a: String,
    pub model_b: String,
    /// More treatments beyond `model_b`.
    #[serde(default)]
    pub more_variants: Vec<String>,
    /// Share to `model_b` (a fraction ≤ 1 or a percent), or `{variant: weight}`.
    pub traffic_split: Value,
    #[serde(default = "default_metric")]
    pub success_metric: Metric,
    #[serde(default = "default_min_samples")]
    pub minimum_sample_size: u64,
    #[serde(default = "default_confidence")]
    pub confidence_level: f64,
    /// Days, as the seed ticket (ASTR-90) defines a bare number (`7` is a
    /// week; fractions allowed), or a duration such as "1h" or "90s".
    pub test_duration: Value,
}

/// A bare `test_duration` counts days.
const SECONDS_PER_DAY: f64 = 86_400.0;

fn default_metric() -> Metric {
    Metric::ErrorRate
}
fn default_min_samples() -> u64 {
    100
}
fn default_confidence() -> f64 {
    0.95
}

/// `model:variant` or a bare variant of `model`.
fn split_name(name: &str, model: &Option<String>) -> Result<(String, String), ControlError> {
    match (name.split_once(':'), model) {
        (Some((m, v)), _) => Ok((m.to_string(), v.to_string())),
        (None, Some(m)) => Ok((m.clone(), name.to_string())),
        (None, None) => {
            Err(ControlError::bad_request(format!("'{name}': name the model (`model` field or `model:variant`)")))
        }
    }
}

impl CreateRequest {
    /// Checks the request and turns it into a test starting at `now` (Unix
    /// seconds). Whether the model and variants exist is the owner's check.
    pub fn plan(self, now: u64) -> Result<ExperimentDef, ControlError> {
        if self.test_id.is_empty() {
            return Err(ControlError::bad_request("test_id must not be empty"));
        }
        // It names the test in URLs and logs: printable, no control characters.
        if self.test_id.chars().any(char::is_control) || self.test_id.len() > 128 {
            return Err(ControlError::bad_request("test_id must be at most 128 printable characters"));
        }
        let mut model = None;
        let mut variants = Vec::new();
        for n in [&self.model_a, &self.model_b].into_iter().chain(self.more_variants.iter()) {
            let (m, v) = split_name(n, &self.model)?;
            if model.get_or_insert_with(|| m.clone()) != &m {
                return Err(ControlError::bad_request("every variant of a test must belong to the same model"));
            }
            if variants.contains(&v) {
                return Err(ControlError::bad_request(format!("variant '{v}' is listed twice")));
            }
            variants.push(v);
        }
        let model = model.expect("at least two names");
        let split: BTreeMap<String, f64> = match &self.traffic_split {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(-1.0);
                let b = if x <= 1.0 { x * 100.0 } else { x };
                if !(0.0..=100.0).contains(&b) || variants.len() != 2 {
                    return Err(ControlError::bad_request(
                        "a numeric traffic_split is model_b's share (0..1 or 0..100) of a two-variant test; use {variant: weight} for more",
                    ));
                }
                [(variants[0].clone(), 100.0 - b), (variants[1].clone(), b)].into()
            }
            Value::Object(o) => {
                let mut m = BTreeMap::new();
                for (k, v) in o {
                    let w = v
                        .as_f64()
                        .ok_or_else(|| ControlError::bad_request(format!("traffic_split['{k}'] must be a number")))?;
                    if !variants.contains(k) {
                        return Err(ControlError::bad_request(format!(
                            "traffic_split names '{k}', which is not in the test"
                        )));
                    }
                    m.insert(k.clone(), w);
                }
                m
            }
            _ => return Err(ControlError::bad_request("traffic_split must be a number or an object")),
        };
        if !(self.confidence_level > 0.0 && self.confidence_level < 1.0) {
            return Err(ControlError::bad_request("confidence_level must be between 0 and 1 (e.g. 0.95)"));
        }
        let duration = match &self.test_duration {
            Value::Number(n) => {
                n.as_f64().filter(|d| *d > 0.0).map(|d| (d * SECONDS_PER_DAY).round() as u64).filter(|s| *s > 0)
            }
            Value::String(s) => parse_duration(s).ok().map(|d| d.as_secs()).filter(|s| *s > 0),
            _ => None,
        }
        .ok_or_else(|| {
            ControlError::bad_request("test_duration must be a positive number of days or a duration like \"2h\"")
        })?;
        Ok(ExperimentDef {
            test_id: self.test_id,
            model,
            variants,
            traffic_split: split,
            success_metric: self.success_metric,
            minimum_sample_size: self.minimum_sample_size,
            confidence_level: self.confidence_level,
            test_duration_secs: duration,
            started_at: now,
        })
    }
}

/// Whether a test is still counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentStatus {
    Running,
    /// Over: its results are frozen.
    Completed,
}

/// What an observation of a test decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperimentDecision {
    /// Still running.
    Continue,
    /// Its duration is over: results froze at this observation.
    End,
    /// Already over.
    Ended,
}

/// One running or finished A/B test.
#[derive(Debug, Clone)]
pub struct Experiment {
    def: ExperimentDef,
    /// Stats of each arm when the test started (or when this process resumed it).
    start: BTreeMap<String, Snapshot>,
    /// Frozen at the end of the test.
    end: Option<BTreeMap<String, Snapshot>>,
}

/// The significance test applied to a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    TwoProportionZ,
    WelchT,
}

impl TestKind {
    pub fn name(self) -> &'static str {
        match self {
            TestKind::TwoProportionZ => "two-proportion z-test",
            TestKind::WelchT => "welch t-test",
        }
    }
}

/// One treatment compared with the control.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub control: String,
    pub treatment: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An arm has fewer than `minimum_sample_size` requests.
    InsufficientData {
        need: u64,
        control_requests: u64,
        treatment_requests: u64,
    },
    Tested {
        test: TestKind,
        statistic: f64,
        p_value: f64,
        significant: bool,
        winner: Option<String>,
    },
}

impl Outcome {
    pub fn verdict(&self) -> Verdict {
        match self {
            Outcome::InsufficientData { .. } => Verdict::InsufficientData,
            Outcome::Tested { significant: true, .. } => Verdict::Significant,
            Outcome::Tested { .. } => Verdict::NotSignificant,
        }
    }
}

/// A test's (or one comparison's) verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    InsufficientData,
    Significant,
    NotSignificant,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::InsufficientData => "insufficient_data",
            Verdict::Significant => "significant",
            Verdict::NotSignificant => "not_significant",
        }
    }
}

/// One arm's numbers over the test.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    pub name: String,
    pub weight: Option<f64>,
    /// Stats since the test started (until it ended).
    pub stats: Snapshot,
}

/// Everything `GET /ml/ab-tests/{id}/results` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ExperimentResults {
    pub def: ExperimentDef,
    pub status: ExperimentStatus,
    pub arms: Vec<Arm>,
    pub comparisons: Vec<Comparison>,
    pub verdict: Verdict,
}

impl Experiment {
    /// A test that starts now, with each arm's stats at this moment.
    pub fn start(def: ExperimentDef, start: BTreeMap<String, Snapshot>) -> Experiment {
        Experiment { def, start, end: None }
    }

    /// A persisted test after a restart: its counts start again from zero.
    pub fn resume(def: ExperimentDef) -> Experiment {
        Experiment { def, start: BTreeMap::new(), end: None }
    }

    pub fn def(&self) -> &ExperimentDef {
        &self.def
    }

    pub fn status(&self) -> ExperimentStatus {
        if self.end.is_some() {
            ExperimentStatus::Completed
        } else {
            ExperimentStatus::Running
        }
    }

    /// Whether an observation at `now` needs the arms' stats (a running test).
    pub fn is_running(&self) -> bool {
        self.end.is_none()
    }

    /// Ends the test when its duration is over at `now`, freezing `current` (cumulative stats per arm).
    pub fn observe(&mut self, now: u64, current: &BTreeMap<String, Snapshot>) -> ExperimentDecision {
        if self.end.is_some() {
            return ExperimentDecision::Ended;
        }
        if now < self.def.ends_at() {
            return ExperimentDecision::Continue;
        }
        self.end = Some(current.clone());
        ExperimentDecision::End
    }

    /// The results, judged on `current` (cumulative stats per arm; ignored once ended).
    pub fn results(&self, current: &BTreeMap<String, Snapshot>) -> ExperimentResults {
        let upto = self.end.as_ref().unwrap_or(current);
        let interval = |v: &String| {
            let now = upto.get(v).cloned().unwrap_or_default();
            now.since(&self.start.get(v).cloned().unwrap_or_default())
        };
        self.results_of(self.def.variants.iter().map(|v| (v.clone(), interval(v))).collect())
    }

    /// The results judged on `counted`: each arm's stats over the test (fleet
    /// mode: the fleet's counters of the test, which only count while it runs).
    pub fn results_of(&self, counted: BTreeMap<String, Snapshot>) -> ExperimentResults {
        let d = &self.def;
        let arms: Vec<Arm> = d
            .variants
            .iter()
            .map(|v| Arm {
                name: v.clone(),
                weight: d.traffic_split.get(v).copied(),
                stats: counted.get(v).cloned().unwrap_or_default(),
            })
            .collect();
        let control = &arms[0];
        let comparisons: Vec<Comparison> = arms[1..]
            .iter()
            .map(|t| Comparison {
                control: control.name.clone(),
                treatment: t.name.clone(),
                outcome: compare(d, control, t),
            })
            .collect();
        let verdict = if comparisons.iter().any(|c| c.outcome.verdict() == Verdict::InsufficientData) {
            Verdict::InsufficientData
        } else if comparisons.iter().any(|c| c.outcome.verdict() == Verdict::Significant) {
            Verdict::Significant
        } else {
            Verdict::NotSignificant
        };
        ExperimentResults { def: d.clone(), status: self.status(), arms, comparisons, verdict }
    }
}

/// (successes, trials) of a quality metric in one arm's feedback window: a
/// binary classifier's precision is TP of TP+FP, recall TP of TP+FN, F1
/// 2·TP of 2·TP+FP+FN; accuracy, and every metric of a multi-class model
/// (micro averages, which equal accuracy), is correct of labelled.
fn quality_counts(metric: Metric, s: &Snapshot) -> Option<(u64, u64)> {
    let q = s.quality.as_ref()?;
    let c = q.classification.as_ref()?;
    let p = &c.positive;
    Some(match metric {
        Metric::Precision if c.binary => (p.true_positives, p.true_positives + p.false_positives),
        Metric::Recall if c.binary => (p.true_positives, p.true_positives + p.false_negatives),
        Metric::F1Score if c.binary => {
            (2 * p.true_positives, 2 * p.true_positives + p.false_positives + p.false_negatives)
        }
        _ => (c.correct, q.count),
    })
}

fn compare(d: &ExperimentDef, control: &Arm, treatment: &Arm) -> Outcome {
    let (c, t) = (&control.stats, &treatment.stats);
    if matches!(d.success_metric, Metric::Accuracy | Metric::Precision | Metric::Recall | Metric::F1Score) {
        let labelled = |s: &Snapshot| s.quality.as_ref().map_or(0, |q| q.count);
        let (cn, tn) = (labelled(c), labelled(t));
        let counts = quality_counts(d.success_metric, c).zip(quality_counts(d.success_metric, t));
        let Some(((cx, cn_), (tx, tn_))) =
            counts.filter(|_| cn >= d.minimum_sample_size && tn >= d.minimum_sample_size)
        else {
            return Outcome::InsufficientData {
                need: d.minimum_sample_size,
                control_requests: cn,
                treatment_requests: tn,
            };
        };
        let (z, p_value) = two_proportion_z_test(tx, tn_, cx, cn_).unwrap_or((0.0, 1.0));
        let ratio = |x: u64, n: u64| if n == 0 { 0.0 } else { x as f64 / n as f64 };
        let significant = p_value < 1.0 - d.confidence_level;
        let better = if ratio(tx, tn_) > ratio(cx, cn_) { &treatment.name } else { &control.name };
        return Outcome::Tested {
            test: TestKind::TwoProportionZ,
            statistic: z,
            p_value,
            significant,
            winner: significant.then(|| better.clone()),
        };
    }
    if c.requests < d.minimum_sample_size || t.requests < d.minimum_sample_size {
        return Outcome::InsufficientData {
            need: d.minimum_sample_size,
            control_requests: c.requests,
            treatment_requests: t.requests,
        };
    }
    let (test, statistic, p_value, treatment_better) = match d.success_metric {
        Metric::ErrorRate => {
            let (z, p) = two_proportion_z_test(t.errors, t.requests, c.errors, c.requests).unwrap_or((0.0, 1.0));
            (TestKind::TwoProportionZ, z, p, t.error_rate() < c.error_rate())
        }
        Metric::Latency => {
            let (tt, _, p) = welch_t_test(
                t.mean_latency_ms(),
                t.latency_variance_ms2(),
                t.requests,
                c.mean_latency_ms(),
                c.latency_variance_ms2(),
                c.requests,
            )
            .unwrap_or((0.0, 0.0, 1.0));
            (TestKind::WelchT, tt, p, t.mean_latency_ms() < c.mean_latency_ms())
        }
        Metric::Accuracy | Metric::Precision | Metric::Recall | Metric::F1Score => unreachable!("judged above"),
    };
    let significant = p_value < 1.0 - d.confidence_level;
    let better = if treatment_better { &treatment.name } else { &control.name };
    Outcome::Tested { test, statistic, p_value, significant, winner: significant.then(|| better.clone()) }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use switchyard_stats::LiveStats;

    use super::*;
    use crate::error::ErrorKind;

    fn def(metric: Metric, min: u64) -> ExperimentDef {
        ExperimentDef {
            test_id: "t".into(),
            model: "m".into(),
            variants: vec!["a".into(), "b".into()],
            traffic_split: [("a".to_string(), 50.0), ("b".to_string(), 50.0)].into(),
            success_metric: metric,
            minimum_sample_size: min,
            confidence_level: 0.95,
            test_duration_secs: 60,
            started_at: 1000,
        }
    }

    /// Cumulative stats of arms a and b, as a fake data plane would report them.
    #[derive(Default)]
    struct Arms {
        a: LiveStats,
        b: LiveStats,
    }

    impl Arms {
        /// `n` requests per arm; arm X fails one in `fail_every_X` (0: never) and takes `ms_X` (+ a spread).
        fn serve(&self, n: u64, fail_every: (u64, u64), ms: (u64, u64)) {
            for i in 0..n {
                let spread = i % 5;
                self.a.record(Duration::from_millis(ms.0 + spread), fail_every.0 > 0 && i % fail_every.0 == 0);
                self.b.record(Duration::from_millis(ms.1 + spread), fail_every.1 > 0 && i % fail_every.1 == 0);
            }
        }

        fn now(&self) -> BTreeMap<String, Snapshot> {
            [("a".to_string(), self.a.snapshot()), ("b".to_string(), self.b.snapshot())].into()
        }
    }

    #[test]
    fn error_rate_verdicts_from_insufficient_to_significant() {
        let arms = Arms::default();
        arms.serve(300, (0, 0), (5, 5)); // before the test: not counted
        let e = Experiment::start(def(Metric::ErrorRate, 200), arms.now());
        arms.serve(100, (0, 10), (5, 5));
        let r = e.results(&arms.now());
        assert_eq!(r.verdict, Verdict::InsufficientData);
        assert_eq!(
            r.comparisons[0].outcome,
            Outcome::InsufficientData { need: 200, control_requests: 100, treatment_requests: 100 }
        );
        assert_eq!((r.arms[0].stats.requests, r.arms[1].stats.errors), (100, 10));
        arms.serve(400, (0, 10), (5, 5));
        let r = e.results(&arms.now());
        assert_eq!(r.verdict, Verdict::Significant);
        let Outcome::Tested { test, p_value, significant, winner, .. } = &r.comparisons[0].outcome else {
            panic!("{r:?}")
        };
        assert_eq!((*test, *significant, winner.as_deref()), (TestKind::TwoProportionZ, true, Some("a")));
        assert!(*p_value < 0.05, "{p_value}");
    }

    #[test]
    fn equal_error_rates_are_not_significant() {
        let arms = Arms::default();
        let e = Experiment::start(def(Metric::ErrorRate, 100), arms.now());
        arms.serve(500, (20, 20), (5, 5));
        let r = e.results(&arms.now());
        assert_eq!(r.verdict, Verdict::NotSignificant);
        assert!(matches!(&r.comparisons[0].outcome, Outcome::Tested { significant: false, winner: None, .. }));
    }

    #[test]
    fn welch_picks_the_faster_arm_only_when_the_difference_is_real() {
        let arms = Arms::default();
        let e = Experiment::start(def(Metric::Latency, 50), arms.now());
        arms.serve(200, (0, 0), (40, 10));
        let r = e.results(&arms.now());
        assert_eq!(r.verdict, Verdict::Significant, "{r:?}");
        assert!(matches!(&r.comparisons[0].outcome,
            Outcome::Tested { test: TestKind::WelchT, winner: Some(w), .. } if w == "b"));

        let same = Arms::default();
        let e = Experiment::start(def(Metric::Latency, 50), same.now());
        same.serve(200, (0, 0), (10, 10));
        assert_eq!(e.results(&same.now()).verdict, Verdict::NotSignificant);
    }

    #[test]
    fn a_test_ends_at_its_duration_and_keeps_its_results() {
        let arms = Arms::default();
        let mut e = Experiment::start(def(Metric::ErrorRate, 10), arms.now());
        arms.serve(50, (0, 0), (5, 5));
        assert_eq!(e.observe(1059, &arms.now()), ExperimentDecision::Continue);
        assert_eq!(e.status(), ExperimentStatus::Running);
        assert_eq!(e.observe(1060, &arms.now()), ExperimentDecision::End);
        assert_eq!(e.status(), ExperimentStatus::Completed);
        assert_eq!(e.observe(1061, &arms.now()), ExperimentDecision::Ended);
        // Requests after the end do not count.
        arms.serve(50, (1, 1), (5, 5));
        let r = e.results(&arms.now());
        assert_eq!((r.arms[0].stats.requests, r.arms[1].stats.errors), (50, 0));
    }

    #[test]
    fn a_resumed_test_counts_from_the_restart() {
        let arms = Arms::default();
        arms.serve(30, (0, 0), (5, 5));
        let e = Experiment::resume(def(Metric::ErrorRate, 10));
        assert_eq!(e.results(&arms.now()).arms[0].stats.requests, 30, "counts since this process began");
    }

    fn req(body: serde_json::Value) -> Result<ExperimentDef, ControlError> {
        serde_json::from_value::<CreateRequest>(body).expect("well-formed").plan(500)
    }

    #[test]
    fn quality_metrics_are_judged_on_feedback() {
        let arm = |correct: u64| {
            let s = LiveStats::default();
            s.configure_quality(switchyard_stats::quality::Task::Classification, 10_000);
            s.record_feedback((0..1000).map(|i| (1.0, if i < correct { 1.0 } else { 0.0 })));
            s.snapshot()
        };
        let d = def(Metric::Accuracy, 500);
        let (a, b) = (
            Arm { name: "a".into(), weight: None, stats: arm(700) },
            Arm { name: "b".into(), weight: None, stats: arm(800) },
        );
        let Outcome::Tested { significant: true, winner: Some(w), .. } = compare(&d, &a, &b) else { panic!() };
        assert_eq!(w, "b");
        // Binary precision: every prediction is class 1, so precision is accuracy here.
        let Outcome::Tested { winner: Some(w), .. } = compare(&def(Metric::Precision, 500), &a, &b) else { panic!() };
        assert_eq!(w, "b");
        let few = compare(&def(Metric::F1Score, 5000), &a, &b);
        assert!(matches!(few, Outcome::InsufficientData { control_requests: 1000, .. }), "{few:?}");
    }

    #[test]
    fn create_requests_are_validated() {
        let base = json!({"test_id": "t", "model": "m", "model_a": "a", "model_b": "b",
            "traffic_split": 0.25, "test_duration": "1h"});
        let d = req(base.clone()).unwrap();
        assert_eq!(d.traffic_split, [("a".to_string(), 75.0), ("b".to_string(), 25.0)].into());
        assert_eq!((d.started_at, d.test_duration_secs), (500, 3600));
        assert_eq!((d.success_metric, d.minimum_sample_size, d.confidence_level), (Metric::ErrorRate, 100, 0.95));

        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        let d = req(with("traffic_split", json!(30))).unwrap();
        assert_eq!(d.traffic_split["b"], 30.0, "a percent");
        let d = req(json!({"test_id": "t", "model_a": "m:a", "model_b": "m:b", "traffic_split": {"a": 1, "b": 3},
            "test_duration": 7}))
        .unwrap();
        assert_eq!((d.model.as_str(), d.test_duration_secs), ("m", 7 * 86_400), "a bare number is days");
        let d = req(with("test_duration", json!(0.5))).unwrap();
        assert_eq!(d.test_duration_secs, 43_200);
        for (body, needle) in [
            (with("test_id", json!("")), "test_id"),
            (with("traffic_split", json!(150)), "numeric traffic_split"),
            (with("traffic_split", json!({"c": 1})), "not in the test"),
            (with("traffic_split", json!({"a": "x"})), "must be a number"),
            (with("traffic_split", json!("half")), "number or an object"),
            (with("confidence_level", json!(1.0)), "confidence_level"),
            (with("test_duration", json!(0)), "test_duration"),
            (with("test_duration", json!("soon")), "test_duration"),
            (with("model_b", json!("a")), "listed twice"),
            (with("model_b", json!("other:b")), "same model"),
            (
                json!({"test_id": "t", "model_a": "a", "model_b": "b", "traffic_split": 1, "test_duration": 1}),
                "name the model",
            ),
        ] {
            let e = req(body.clone()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest, "{body}");
            assert!(e.message.contains(needle), "{body}: {}", e.message);
        }
    }
}
