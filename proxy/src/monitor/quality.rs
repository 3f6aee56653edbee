//! Prediction quality from ground truth. When a model turns quality
//! monitoring on, every answer is remembered in a bounded store (request id
//! → variant, version, the predictions read from the configured output);
//! `POST /ml/models/{m}/feedback` joins labels to those answers and feeds
//! the variant's `switchyard_stats::quality::QualityWindow`. A request id
//! is the client's V2 `id`, else its `x-request-id` header, else one
//! Switchyard assigns — always echoed as the answer's `id`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderMap;
use prometheus::{GaugeVec, IntCounterVec};
use quick_cache::sync::Cache;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use switchyard_config::{QualityConfig, QualityTask};
use switchyard_runtime::InferResponse;
use switchyard_stats::drift::Value;
use switchyard_stats::quality::QualityReport;
use switchyard_stats::LiveStats;

use super::features::for_each_value;

/// The header a client's own request id is read from when the body has none.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Most feedback items in one call.
pub const MAX_FEEDBACK_ITEMS: usize = 10_000;

/// One remembered answer.
#[derive(Clone)]
struct Served {
    variant: Arc<str>,
    version: Option<Arc<str>>,
    predictions: Arc<[f64]>,
    stats: Arc<LiveStats>,
}

/// Labels joined to one variant and version in a feedback call: (variant, version, its stats, count).
type Joined = (Arc<str>, Option<Arc<str>>, Arc<LiveStats>, u64);

/// A model's answer store and feedback join.
pub struct QualityTracker {
    model: Arc<str>,
    cfg: QualityConfig,
    store: Cache<String, Served>,
    /// Ids Switchyard assigns: a per-process prefix and a counter.
    prefix: u64,
    next: AtomicU64,
    metrics: QualityMetrics,
}

#[derive(Clone)]
pub(super) struct QualityMetrics {
    pub(super) quality: GaugeVec,
    pub(super) feedback: IntCounterVec,
}

/// One feedback item as a client sends it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackItem {
    pub request_id: String,
    /// The true class or value; an array gives one per row of a multi-row request.
    pub label: Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    pub feedback: Vec<FeedbackItem>,
}

impl QualityTracker {
    pub(super) fn new(model: &str, cfg: QualityConfig, metrics: QualityMetrics) -> QualityTracker {
        let prefix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()).rotate_left(40);
        QualityTracker {
            model: Arc::from(model),
            store: Cache::new(cfg.store.get()),
            cfg,
            prefix,
            next: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn config(&self) -> &QualityConfig {
        &self.cfg
    }

    /// Remembers an answer for feedback and makes sure it carries its request id.
    pub fn remember(
        &self,
        resp: &mut InferResponse,
        metadata: &HeaderMap,
        variant: &Arc<str>,
        version: Option<&Arc<str>>,
        stats: &Arc<LiveStats>,
    ) {
        let Some(out) = resp.outputs.iter().find(|t| *t.name == *self.cfg.output) else { return };
        let predictions = predictions(self.cfg.task, out);
        if predictions.is_empty() {
            return;
        }
        let id = match &resp.id {
            Some(id) => id.clone(),
            None => {
                let id = match metadata.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
                    Some(h) if !h.is_empty() => h.to_string(),
                    _ => format!("sy-{:016x}-{:x}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed)),
                };
                resp.id = Some(id.clone());
                id
            }
        };
        let version = resp.model_version.as_deref().map(Arc::from).or_else(|| version.cloned());
        self.store.insert(
            id,
            Served { variant: variant.clone(), version, predictions: predictions.into(), stats: stats.clone() },
        );
    }

    /// Joins labels to remembered answers; each answer takes feedback once.
    pub fn feedback(&self, items: Vec<FeedbackItem>) -> Json {
        let (mut joined, mut unknown, mut rejected) = (0u64, Vec::new(), Vec::new());
        // Per variant: its stats, the version that answered, how many labels joined.
        let mut touched: Vec<Joined> = Vec::new();
        for item in items {
            let Some(served) = self.store.get(item.request_id.as_str()) else {
                unknown.push(item.request_id);
                continue;
            };
            let labels = match labels(&item.label, served.predictions.len()) {
                Ok(l) => l,
                Err(e) => {
                    rejected.push(json!({ "request_id": item.request_id, "error": e }));
                    continue;
                }
            };
            self.store.remove(item.request_id.as_str());
            served.stats.record_feedback(served.predictions.iter().copied().zip(labels));
            joined += 1;
            match touched.iter_mut().find(|t| t.0 == served.variant && t.1 == served.version) {
                Some(t) => t.3 += 1,
                None => touched.push((served.variant.clone(), served.version.clone(), served.stats.clone(), 1)),
            }
        }
        let counter = |outcome: &str, n: usize| {
            if n > 0 {
                self.metrics.feedback.with_label_values(&[&self.model, outcome]).inc_by(n as u64);
            }
        };
        counter("joined", joined as usize);
        counter("unknown", unknown.len());
        counter("rejected", rejected.len());
        for (variant, _, stats, _) in &touched {
            if let Some(r) = stats.quality() {
                self.export(variant, &r);
            }
        }
        let by_variant: Vec<Json> = touched
            .iter()
            .map(|(v, version, _, n)| json!({ "variant": v.as_ref(), "version": version.as_deref(), "joined": n }))
            .collect();
        json!({
            "model": self.model.as_ref(), "joined": joined, "unknown": unknown, "rejected": rejected,
            "variants": by_variant,
        })
    }

    fn export(&self, variant: &str, r: &QualityReport) {
        let set = |metric: &str, v: f64| self.metrics.quality.with_label_values(&[&self.model, variant, metric]).set(v);
        set("labelled", r.count as f64);
        if let Some(c) = &r.classification {
            set("accuracy", c.accuracy);
            set("precision", c.precision);
            set("recall", c.recall);
            set("f1_score", c.f1);
        }
        if let Some(g) = &r.regression {
            set("mae", g.mae);
            set("rmse", g.rmse);
        }
    }
}

/// The prediction of each row of `out`: its argmax class, or its first value.
fn predictions(task: QualityTask, out: &switchyard_runtime::Tensor) -> Vec<f64> {
    let mut best: Vec<(f64, f64)> = Vec::new();
    for_each_value(out, |r, c, v| {
        let Value::Number(x) = v else { return };
        if best.len() <= r {
            best.resize(r + 1, (f64::NAN, f64::NEG_INFINITY));
        }
        match task {
            QualityTask::Classification if x > best[r].1 => best[r] = (c as f64, x),
            QualityTask::Regression if c == 0 => best[r] = (x, x),
            _ => {}
        }
    });
    best.into_iter().map(|(p, _)| p).collect()
}

/// One label per row: a number (or bool) for a one-row answer, an array of them otherwise.
fn labels(label: &Json, rows: usize) -> Result<Vec<f64>, String> {
    let one = |v: &Json| match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| "label is not a finite number".to_string()),
        Json::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(format!("label must be a number (the true class or value), got {other}")),
    };
    let labels = match label {
        Json::Array(a) => a.iter().map(one).collect::<Result<Vec<_>, _>>()?,
        v => vec![one(v)?],
    };
    if labels.len() != rows {
        return Err(format!("{} labels for an answer of {rows} rows", labels.len()));
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchyard_runtime::{DataType, Tensor};

    #[test]
    fn predictions_are_argmax_or_value_per_row() {
        let data: Vec<u8> = [0.1f32, 0.7, 0.2, 0.5, 0.3, 0.2].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = Tensor::new("p", DataType::Fp32, vec![2, 3], Bytes::from(data));
        assert_eq!(predictions(QualityTask::Classification, &t), vec![1.0, 0.0]);
        let p = predictions(QualityTask::Regression, &t);
        assert!((p[0] - 0.1).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn labels_match_rows() {
        assert_eq!(labels(&json!(2), 1).unwrap(), vec![2.0]);
        assert_eq!(labels(&json!([1, 0]), 2).unwrap(), vec![1.0, 0.0]);
        assert!(labels(&json!([1]), 2).unwrap_err().contains("1 labels"));
        assert!(labels(&json!("cat"), 1).unwrap_err().contains("must be a number"));
    }
}
