//! Prediction quality from ground truth. When a model turns quality
//! monitoring on, every answer is remembered in a bounded store (request id
//! → variant, version, the predictions read from the configured output);
//! `POST /ml/models/{m}/feedback` joins labels to those answers and feeds
//! the variant's `switchyard_stats::quality::QualityWindow`. A request id
//! is the client's V2 `id`, else its `x-request-id` header, else one
//! Switchyard assigns — always echoed as the answer's `id`. In fleet mode
//! the store and the quality windows are the fleet's, in Redis (`answers`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

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

use super::answers::{decode_answer, encode_answer, FleetAnswers, Pending, REFRESH_EVERY};
use super::features::for_each_value;

/// The header a client's own request id is read from when the body has none.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Most feedback items in one call.
pub const MAX_FEEDBACK_ITEMS: usize = 10_000;

/// One remembered answer.
#[derive(Clone)]
pub struct Served {
    variant: Arc<str>,
    version: Option<Arc<str>>,
    predictions: Arc<[f64]>,
    stats: Arc<LiveStats>,
}

/// Labels joined in one call to one variant and version: variant, version,
/// its stats, items joined, (prediction, label) pairs.
type Joined = (Arc<str>, Option<Arc<str>>, Arc<LiveStats>, u64, Vec<(f64, f64)>);
/// A variant's labelled pairs of one call: variant, its stats, (prediction, label) pairs.
type Labelled = (Arc<str>, Arc<LiveStats>, Vec<(f64, f64)>);

/// The fleet's answer store, as a tracker uses it.
pub type FleetStore = FleetAnswers<Served>;

/// A model's answer store and feedback join.
pub struct QualityTracker {
    model: Arc<str>,
    cfg: QualityConfig,
    /// This replica's answers (in fleet mode: those Redis does not hold yet, or could not take).
    store: Arc<Cache<String, Served>>,
    /// Fleet mode: the answer store and quality windows in Redis.
    fleet: Option<Arc<FleetStore>>,
    /// The model's variants and their stats, as the live generation routes them.
    variants: Mutex<Vec<(Arc<str>, Arc<LiveStats>)>>,
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

/// What a feedback call did, as both the HTTP and the gRPC API answer it.
#[derive(Debug, Default)]
pub struct FeedbackOutcome {
    pub model: String,
    /// Items joined to an answer.
    pub joined: u64,
    /// Request ids with no answer to join (never served, expired, or already labelled).
    pub unknown: Vec<String>,
    /// Items whose label did not fit: (request id, why).
    pub rejected: Vec<(String, String)>,
    /// Per variant and version that answered: labels joined.
    pub variants: Vec<(String, Option<String>, u64)>,
    /// Where answers were looked up: `local` (this replica), `fleet` (Redis and this
    /// replica), `local-fallback` (fleet mode, Redis unavailable: this replica only).
    pub store: &'static str,
}

impl FeedbackOutcome {
    pub fn to_json(&self) -> Json {
        let rejected: Vec<Json> = self.rejected.iter().map(|(id, e)| json!({ "request_id": id, "error": e })).collect();
        let variants: Vec<Json> = self
            .variants
            .iter()
            .map(|(v, version, n)| json!({ "variant": v, "version": version, "joined": n }))
            .collect();
        json!({
            "model": self.model, "joined": self.joined, "unknown": self.unknown, "rejected": rejected,
            "variants": variants, "store": self.store,
        })
    }
}

impl QualityTracker {
    pub(super) fn new(
        model: &str,
        cfg: QualityConfig,
        metrics: QualityMetrics,
        fleet: Option<Arc<FleetStore>>,
    ) -> QualityTracker {
        let prefix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()).rotate_left(40);
        QualityTracker {
            model: Arc::from(model),
            store: Arc::new(Cache::new(cfg.store.get())),
            fleet,
            variants: Mutex::new(Vec::new()),
            cfg,
            prefix,
            next: AtomicU64::new(0),
            metrics,
        }
    }

    pub fn config(&self) -> &QualityConfig {
        &self.cfg
    }

    /// The variants the live generation routes (feedback joined from Redis finds their stats here).
    pub fn bind_variants(&self, variants: Vec<(Arc<str>, Arc<LiveStats>)>) {
        *self.variants.lock().unwrap_or_else(|e| e.into_inner()) = variants;
    }

    fn variant_stats(&self, name: &str) -> Option<Arc<LiveStats>> {
        let v = self.variants.lock().unwrap_or_else(|e| e.into_inner());
        v.iter().find(|(n, _)| &**n == name).map(|(_, s)| s.clone())
    }

    /// Fleet mode: reloads the variants' shared quality windows every
    /// `REFRESH_EVERY`, so every replica shows the fleet's; ends with the tracker.
    pub(super) fn spawn_refresh(self: &Arc<Self>) {
        if self.fleet.is_none() {
            return;
        }
        let weak: Weak<QualityTracker> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(t) = weak.upgrade() else { return };
                let variants = t.variants.lock().unwrap_or_else(|e| e.into_inner()).clone();
                for (name, stats) in variants {
                    t.share(&name, &stats, &[]).await;
                }
            }
        });
    }

    /// Fleet mode: adds labelled predictions to the variant's shared window and
    /// loads it into the variant's stats; without Redis they go to the local window.
    async fn share(&self, variant: &str, stats: &LiveStats, pairs: &[(f64, f64)]) {
        let shared = match &self.fleet {
            Some(f) => f.push_labelled(&self.model, variant, pairs, self.cfg.window.get()).await,
            None => None,
        };
        match shared {
            Some(window) => {
                stats.replace_feedback(window, pairs.len() as u64);
            }
            None => {
                stats.record_feedback(pairs.iter().copied());
            }
        }
        if let Some(r) = stats.quality() {
            self.export(variant, &r);
        }
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
        let predictions: Arc<[f64]> = predictions.into();
        let pending = self.fleet.as_ref().map(|f| Pending {
            key: f.answer_key(&self.model, &id),
            id: id.clone(),
            value: encode_answer(variant, version.as_deref(), &predictions),
            ttl: self.cfg.ttl,
            local: self.store.clone(),
            model: self.model.clone(),
        });
        // Kept locally before the writer can see it: the writer drops the local copy once Redis has it.
        self.store.insert(id, Served { variant: variant.clone(), version, predictions, stats: stats.clone() });
        if let (Some(f), Some(p)) = (&self.fleet, pending) {
            f.submit(p);
        }
    }

    /// Joins labels to remembered answers; each answer takes feedback once
    /// (fleet-wide in fleet mode). A label that does not fit its answer leaves
    /// the answer for a corrected one.
    pub async fn feedback(&self, items: Vec<FeedbackItem>) -> FeedbackOutcome {
        let mut out = FeedbackOutcome { model: self.model.to_string(), ..FeedbackOutcome::default() };
        // Joined labels per (variant, version): its stats and (prediction, label) pairs.
        let mut touched: Vec<Joined> = Vec::new();
        let mut join = |served: &Served, labels: Vec<f64>| {
            let pairs = served.predictions.iter().copied().zip(labels);
            match touched.iter_mut().find(|t| t.0 == served.variant && t.1 == served.version) {
                Some(t) => {
                    t.3 += 1;
                    t.4.extend(pairs);
                }
                None => touched.push((
                    served.variant.clone(),
                    served.version.clone(),
                    served.stats.clone(),
                    1,
                    pairs.collect(),
                )),
            }
        };
        // This replica's store first: answers not (yet) in Redis.
        let mut remote: Vec<(String, Vec<f64>)> = Vec::new();
        let mut joined_local = 0;
        for item in items {
            let parsed = match parse_labels(&item.label) {
                Ok(l) => l,
                Err(e) => {
                    out.rejected.push((item.request_id, e));
                    continue;
                }
            };
            let Some(served) = self.store.get(item.request_id.as_str()) else {
                remote.push((item.request_id, parsed));
                continue;
            };
            if let Err(e) = fits(&parsed, served.predictions.len()) {
                out.rejected.push((item.request_id, e));
                continue;
            }
            // Whoever removes it joins it: a concurrent call (or the Redis writer) finds it gone.
            if self.store.remove(item.request_id.as_str()).is_none() {
                remote.push((item.request_id, parsed));
                continue;
            }
            join(&served, parsed);
            joined_local += 1;
        }
        out.store = "local";
        let mut joined_redis = 0;
        if let (Some(fleet), false) = (&self.fleet, remote.is_empty()) {
            let ids: Vec<&str> = remote.iter().map(|(id, _)| id.as_str()).collect();
            match fleet.take(&self.model, &ids).await {
                None => {
                    out.store = "local-fallback";
                    out.unknown.extend(remote.drain(..).map(|(id, _)| id));
                }
                Some(found) => {
                    out.store = "fleet";
                    let mut put_back = Vec::new();
                    for ((id, labels), value) in remote.drain(..).zip(found) {
                        let Some(value) = value else {
                            out.unknown.push(id);
                            continue;
                        };
                        let Some((variant, version, predictions)) = decode_answer(&value) else {
                            out.rejected.push((id, "the stored answer is unreadable".into()));
                            continue;
                        };
                        if let Err(e) = fits(&labels, predictions.len()) {
                            out.rejected.push((id.clone(), e));
                            put_back.push((fleet.answer_key(&self.model, &id), value.clone()));
                            continue;
                        }
                        let Some(stats) = self.variant_stats(variant) else {
                            out.rejected.push((id, format!("variant '{variant}' that answered is no longer served")));
                            continue;
                        };
                        let served = Served {
                            variant: Arc::from(variant),
                            version: version.map(Arc::from),
                            predictions: predictions.into(),
                            stats,
                        };
                        join(&served, labels);
                        joined_redis += 1;
                    }
                    fleet.put_back(&put_back, self.cfg.ttl).await;
                }
            }
        } else {
            if self.fleet.is_some() {
                out.store = "fleet";
            }
            out.unknown.extend(remote.drain(..).map(|(id, _)| id));
        }
        if let Some(f) = &self.fleet {
            f.event(&self.model, "joined_local", joined_local);
            f.event(&self.model, "joined_redis", joined_redis);
        }
        out.joined = joined_local + joined_redis;
        let counter = |outcome: &str, n: usize| {
            if n > 0 {
                self.metrics.feedback.with_label_values(&[&self.model, outcome]).inc_by(n as u64);
            }
        };
        counter("joined", out.joined as usize);
        counter("unknown", out.unknown.len());
        counter("rejected", out.rejected.len());
        // One window update per variant, whatever its versions.
        let mut by_variant: Vec<Labelled> = Vec::new();
        for (variant, version, stats, n, pairs) in touched {
            out.variants.push((variant.to_string(), version.as_deref().map(str::to_string), n));
            match by_variant.iter_mut().find(|b| b.0 == variant) {
                Some(b) => b.2.extend(pairs),
                None => by_variant.push((variant, stats, pairs)),
            }
        }
        for (variant, stats, pairs) in by_variant {
            self.share(&variant, &stats, &pairs).await;
        }
        out
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

/// The labels of one item: a number (or bool), or an array of them (one per row).
fn parse_labels(label: &Json) -> Result<Vec<f64>, String> {
    let one = |v: &Json| match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| "label is not a finite number".to_string()),
        Json::Bool(b) => Ok(f64::from(u8::from(*b))),
        other => Err(format!("label must be a number (the true class or value), got {other}")),
    };
    match label {
        Json::Array(a) => a.iter().map(one).collect(),
        v => Ok(vec![one(v)?]),
    }
}

/// One label per row of the answer.
fn fits(labels: &[f64], rows: usize) -> Result<(), String> {
    if labels.len() != rows {
        return Err(format!("{} labels for an answer of {rows} rows", labels.len()));
    }
    Ok(())
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
        assert_eq!(parse_labels(&json!(2)).unwrap(), vec![2.0]);
        assert_eq!(parse_labels(&json!([1, 0])).unwrap(), vec![1.0, 0.0]);
        assert_eq!(parse_labels(&json!(true)).unwrap(), vec![1.0]);
        assert!(fits(&[1.0], 2).unwrap_err().contains("1 labels"));
        assert!(parse_labels(&json!("cat")).unwrap_err().contains("must be a number"));
    }
}
