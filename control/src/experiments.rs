//! A/B tests: `POST /ml/ab-tests/create` sets a model's split between two (or
//! more) variants and remembers where their live stats stood; results are the
//! stats since then, with a significance test on the chosen metric — a
//! two-proportion z-test for error rate, Welch's t-test for latency (means
//! and variances estimated from the latency histogram). No verdict is given
//! below `minimum_sample_size` per variant. A test ends at `test_duration` and
//! keeps its results (the split stays until changed).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_config::parse_duration;
use switchyard_stats::{two_proportion_z_test, welch_t_test, Snapshot};

use crate::state::Source;
use crate::{now_secs, ControlError, ControlPlane};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ErrorRate,
    Latency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentDef {
    pub test_id: String,
    pub model: String,
    /// The first is the control every other variant is compared with.
    pub variants: Vec<String>,
    pub traffic_split: BTreeMap<String, f64>,
    pub success_metric: Metric,
    pub minimum_sample_size: u64,
    pub confidence_level: f64,
    pub test_duration_secs: u64,
    pub started_at: u64,
}

pub struct Experiment {
    pub def: ExperimentDef,
    /// Stats of each variant when the test started (or when this process resumed it).
    start: BTreeMap<String, Snapshot>,
    /// Frozen at the end of the test.
    end: Option<BTreeMap<String, Snapshot>>,
}

impl Experiment {
    /// A persisted test after a restart: its counts start again from zero.
    pub fn resume(def: ExperimentDef) -> Experiment {
        Experiment { def, start: BTreeMap::new(), end: None }
    }

    fn ends_at(&self) -> u64 {
        self.def.started_at + self.def.test_duration_secs
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    test_id: String,
    #[serde(default)]
    model: Option<String>,
    model_a: String,
    model_b: String,
    /// More treatments beyond `model_b`.
    #[serde(default)]
    more_variants: Vec<String>,
    /// Share to `model_b` (a fraction ≤ 1 or a percent), or `{variant: weight}`.
    traffic_split: Value,
    #[serde(default = "default_metric")]
    success_metric: Metric,
    #[serde(default = "default_min_samples")]
    minimum_sample_size: u64,
    #[serde(default = "default_confidence")]
    confidence_level: f64,
    /// Seconds, or a duration such as "1h".
    test_duration: Value,
}

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
            Err(ControlError::new(400, format!("'{name}': name the model (`model` field or `model:variant`)")))
        }
    }
}

impl ControlPlane {
    pub async fn create_experiment(&self, req: CreateRequest, who: &str) -> Result<Value, ControlError> {
        if req.test_id.is_empty() {
            return Err(ControlError::new(400, "test_id must not be empty"));
        }
        let mut model = None;
        let mut variants = Vec::new();
        for n in [&req.model_a, &req.model_b].into_iter().chain(req.more_variants.iter()) {
            let (m, v) = split_name(n, &req.model)?;
            if model.get_or_insert_with(|| m.clone()) != &m {
                return Err(ControlError::new(400, "every variant of a test must belong to the same model"));
            }
            if variants.contains(&v) {
                return Err(ControlError::new(400, format!("variant '{v}' is listed twice")));
            }
            variants.push(v);
        }
        let model = model.expect("at least two names");
        let split: BTreeMap<String, f64> = match &req.traffic_split {
            Value::Number(n) => {
                let x = n.as_f64().unwrap_or(-1.0);
                let b = if x <= 1.0 { x * 100.0 } else { x };
                if !(0.0..=100.0).contains(&b) || variants.len() != 2 {
                    return Err(ControlError::new(
                        400,
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
                        .ok_or_else(|| ControlError::new(400, format!("traffic_split['{k}'] must be a number")))?;
                    if !variants.contains(k) {
                        return Err(ControlError::new(
                            400,
                            format!("traffic_split names '{k}', which is not in the test"),
                        ));
                    }
                    m.insert(k.clone(), w);
                }
                m
            }
            _ => return Err(ControlError::new(400, "traffic_split must be a number or an object")),
        };
        if !(req.confidence_level > 0.0 && req.confidence_level < 1.0) {
            return Err(ControlError::new(400, "confidence_level must be between 0 and 1 (e.g. 0.95)"));
        }
        let duration = match &req.test_duration {
            Value::Number(n) => n.as_f64().filter(|s| *s > 0.0).map(|s| s as u64),
            Value::String(s) => parse_duration(s).ok().map(|d| d.as_secs()).filter(|s| *s > 0),
            _ => None,
        }
        .ok_or_else(|| ControlError::new(400, "test_duration must be positive seconds or a duration like \"2h\""))?;
        {
            let inner = self.inner.lock().await;
            if inner.experiments.contains_key(&req.test_id) {
                return Err(ControlError::new(409, format!("test '{}' already exists", req.test_id)));
            }
        }
        let source = Source::Experiment { test_id: req.test_id.clone() };
        let generation = self.set_weights(&model, split.clone(), source, who).await?;
        let start = variants.iter().map(|v| (v.clone(), self.data().stats(&model, v).unwrap_or_default())).collect();
        let def = ExperimentDef {
            test_id: req.test_id.clone(),
            model,
            variants,
            traffic_split: split,
            success_metric: req.success_metric,
            minimum_sample_size: req.minimum_sample_size,
            confidence_level: req.confidence_level,
            test_duration_secs: duration,
            started_at: now_secs(),
        };
        let mut inner = self.inner.lock().await;
        inner.experiments.insert(def.test_id.clone(), Experiment { def: def.clone(), start, end: None });
        self.persist(&inner, generation);
        tracing::info!(target: "audit", who, test_id = %def.test_id, model = %def.model, generation, "A/B test created");
        Ok(
            json!({ "test_id": def.test_id, "model": def.model, "generation": generation, "traffic_split": def.traffic_split, "ends_at": def.started_at + duration }),
        )
    }

    /// Freezes the results of tests whose duration is over.
    pub async fn end_due_experiments(&self) {
        let mut inner = self.inner.lock().await;
        let now = now_secs();
        let data = self.data().clone();
        for e in inner.experiments.values_mut() {
            if e.end.is_none() && now >= e.ends_at() {
                e.end = Some(
                    e.def
                        .variants
                        .iter()
                        .map(|v| (v.clone(), data.stats(&e.def.model, v).unwrap_or_default()))
                        .collect(),
                );
                tracing::info!(target: "audit", test_id = %e.def.test_id, "A/B test ended; results kept");
            }
        }
    }

    pub async fn experiment_results(&self, test_id: &str) -> Result<Value, ControlError> {
        self.end_due_experiments().await;
        let inner = self.inner.lock().await;
        let e =
            inner.experiments.get(test_id).ok_or_else(|| ControlError::new(404, format!("no A/B test '{test_id}'")))?;
        let d = &e.def;
        let interval: BTreeMap<&String, Snapshot> = d
            .variants
            .iter()
            .map(|v| {
                let now = match &e.end {
                    Some(end) => end.get(v).cloned().unwrap_or_default(),
                    None => self.data().stats(&d.model, v).unwrap_or_default(),
                };
                let since = e.start.get(v).cloned().unwrap_or_default();
                (v, now.since(&since))
            })
            .collect();
        let variants: Vec<Value> = d
            .variants
            .iter()
            .map(|v| {
                let s = &interval[v];
                let mut o = json!({
                    "name": v,
                    "weight": d.traffic_split.get(v),
                    "requests": s.requests,
                    "errors": s.errors,
                    "error_rate": s.error_rate(),
                    "latency_ms": {
                        "mean": s.mean_latency_ms(),
                        "p50": s.quantile_ms(0.5),
                        "p95": s.quantile_ms(0.95),
                        "p99": s.quantile_ms(0.99),
                    },
                });
                if s.shadow.mirrored > 0 || s.shadow.dropped > 0 {
                    o["shadow"] = json!({
                        "mirrored": s.shadow.mirrored,
                        "failed": s.shadow.failed,
                        "dropped": s.shadow.dropped,
                        "argmax_agreement": s.shadow.agreement(),
                        "max_abs_error": s.shadow.max_abs_error,
                    });
                }
                o
            })
            .collect();
        let alpha = 1.0 - d.confidence_level;
        let control = &d.variants[0];
        let c = &interval[control];
        let mut comparisons = Vec::new();
        let mut enough = true;
        for v in &d.variants[1..] {
            let t = &interval[v];
            if c.requests < d.minimum_sample_size || t.requests < d.minimum_sample_size {
                enough = false;
                comparisons.push(json!({
                    "control": control, "treatment": v,
                    "verdict": "insufficient_data",
                    "detail": format!("needs {} requests per variant; has {} and {}", d.minimum_sample_size, c.requests, t.requests),
                }));
                continue;
            }
            let (test, stat, p, better) = match d.success_metric {
                Metric::ErrorRate => {
                    let (z, p) =
                        two_proportion_z_test(t.errors, t.requests, c.errors, c.requests).unwrap_or((0.0, 1.0));
                    ("two-proportion z-test", z, p, if t.error_rate() < c.error_rate() { v } else { control })
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
                    ("welch t-test", tt, p, if t.mean_latency_ms() < c.mean_latency_ms() { v } else { control })
                }
            };
            let significant = p < alpha;
            comparisons.push(json!({
                "control": control, "treatment": v, "test": test, "statistic": stat, "p_value": p,
                "significant": significant,
                "winner": if significant { Some(better) } else { None },
                "verdict": if significant { "significant" } else { "not_significant" },
            }));
        }
        let verdict = if !enough {
            "insufficient_data"
        } else if comparisons.iter().any(|c| c["significant"] == true) {
            "significant"
        } else {
            "not_significant"
        };
        Ok(json!({
            "test_id": d.test_id,
            "model": d.model,
            "status": if e.end.is_some() { "completed" } else { "running" },
            "started_at": d.started_at,
            "ends_at": e.ends_at(),
            "success_metric": d.success_metric,
            "confidence_level": d.confidence_level,
            "minimum_sample_size": d.minimum_sample_size,
            "variants": variants,
            "comparisons": comparisons,
            "verdict": verdict,
        }))
    }
}
