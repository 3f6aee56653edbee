//! Fleet mode's answer store (`control.fleet`): the answers a replica served
//! go to Redis, so feedback sent to any replica joins an answer another one
//! served, and each variant's quality window is the fleet's.
//!
//! Nothing here runs on the request path but a `try_send`: a served answer
//! is kept in its replica's local store (`quality`) and handed to a bounded
//! queue; one writer task sends them to Redis in pipelines (`SET … PX ttl`,
//! one round trip per batch) and then drops the local copy, so an answer
//! lives in one place at a time. Redis sits behind the same per-call
//! deadline and circuit breaker as the cache's L2 (`cache::l2::L2`). When
//! Redis is down (or the queue is full) answers stay in the local store and
//! feedback joins against it: serving never waits, and the metrics say so.
//!
//! Keys, under `switchyard:fleet:{fleet}:`:
//! - `answer:{model}:{request_id}` — string `variant \t version \t p1 p2 …`, PX `ttl`;
//!   taken by feedback with `GETDEL`, so each answer takes feedback once fleet-wide.
//! - `labelled:{model}:{variant}` — list of `prediction label`, newest first,
//!   trimmed to the window: the variant's fleet-wide quality window.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use quick_cache::sync::Cache;
use switchyard_config::{FleetConfig, RedisConfig};
use tokio::sync::mpsc;

use crate::cache::l2::{L2Metrics, L2};

/// Answers waiting for the writer; beyond this they stay local only (counted).
pub const WRITE_QUEUE: usize = 8192;
/// Answers per pipeline.
const WRITE_BATCH: usize = 256;
/// Ids per `GETDEL` pipeline.
const TAKE_BATCH: usize = 1000;
/// A labelled window untouched this long expires.
const LABELLED_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a replica reloads its variants' shared quality windows.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// An answer to write: where it is kept locally until Redis has it.
pub(super) struct Pending<V> {
    pub key: String,
    pub id: String,
    pub value: String,
    pub ttl: Duration,
    pub local: Arc<Cache<String, V>>,
    pub model: Arc<str>,
}

/// The fleet's answer store: one Redis connection (deadline, breaker) and its writer.
pub struct FleetAnswers<V: Clone + Send + Sync + 'static> {
    l2: Arc<L2>,
    prefix: String,
    tx: mpsc::Sender<Pending<V>>,
    events: IntCounterVec,
}

impl<V: Clone + Send + Sync + 'static> FleetAnswers<V> {
    /// Connects in the background on the current tokio runtime and starts the writer there.
    pub fn start(cfg: &FleetConfig, registry: &Registry) -> Result<Arc<Self>, String> {
        let errors = IntCounterVec::new(
            Opts::new(
                "switchyard_answer_store_redis_errors_total",
                "Failed Redis calls of the fleet answer store, by kind",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let skipped = prometheus::IntCounter::new(
            "switchyard_answer_store_redis_skipped_total",
            "Answer store calls that skipped Redis (breaker open or not connected)",
        )
        .expect("valid metric");
        let breaker_state = IntGauge::new(
            "switchyard_answer_store_redis_breaker_state",
            "Breaker of the fleet answer store's Redis: 0 closed, 1 open (answers and feedback local only), 2 half-open",
        )
        .expect("valid metric");
        let events = IntCounterVec::new(
            Opts::new(
                "switchyard_answer_store_total",
                "Fleet answer store: answers written to Redis (written), kept only in this replica (local: Redis unavailable or the queue full), feedback joined from Redis (joined_redis) or from the local store (joined_local)",
            ),
            &["model", "event"],
        )
        .expect("valid metric");
        for c in [
            Box::new(errors.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(skipped.clone()),
            Box::new(breaker_state.clone()),
            Box::new(events.clone()),
        ] {
            let _ = registry.register(c);
        }
        let redis = RedisConfig {
            urls: vec![cfg.redis.clone()],
            cluster: false,
            timeout: cfg.timeout,
            connect_timeout: cfg.timeout.max(Duration::from_secs(1)),
            breaker_failures: 3,
            breaker_cooldown: Duration::from_secs(2),
            key_prefix: String::new(),
        };
        let l2 = L2::named(&redis, L2Metrics { errors, skipped, breaker_state }, "answer store")
            .map_err(|e| format!("control.fleet.redis: {e}"))?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let prefix = format!("switchyard:fleet:{}:", cfg.name);
        tokio::spawn(write_loop(l2.clone(), rx, events.clone()));
        Ok(Arc::new(FleetAnswers { l2, prefix, tx, events }))
    }

    pub fn answer_key(&self, model: &str, id: &str) -> String {
        format!("{}answer:{model}:{id}", self.prefix)
    }

    fn labelled_key(&self, model: &str, variant: &str) -> String {
        format!("{}labelled:{model}:{variant}", self.prefix)
    }

    /// Hands an answer to the writer; never waits. A full queue keeps it local only.
    pub(super) fn submit(&self, p: Pending<V>) {
        if let Err(e) = self.tx.try_send(p) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            self.event(&p.model, "local", 1);
        }
    }

    pub(super) fn event(&self, model: &str, event: &str, n: u64) {
        if n > 0 {
            self.events.with_label_values(&[model, event]).inc_by(n);
        }
    }

    /// Takes (`GETDEL`) the answers of these ids; `None` when Redis is unavailable.
    pub async fn take(&self, model: &str, ids: &[&str]) -> Option<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(TAKE_BATCH) {
            let mut pipe = redis::pipe();
            for id in chunk {
                pipe.cmd("GETDEL").arg(self.answer_key(model, id));
            }
            let got: Vec<Option<String>> = self.l2.pipeline(&pipe).await?;
            out.extend(got);
        }
        Some(out)
    }

    /// Puts answers back (a label that did not fit them must not consume them).
    pub async fn put_back(&self, entries: &[(String, String)], ttl: Duration) {
        if entries.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, value) in entries {
            pipe.cmd("SET").arg(key).arg(value).arg("PX").arg(ttl.as_millis().max(1) as u64).ignore();
        }
        let _: Option<()> = self.l2.pipeline(&pipe).await;
    }

    /// Adds labelled predictions to a variant's shared window and reads it back
    /// (oldest first); `None` when Redis is unavailable.
    pub async fn push_labelled(
        &self,
        model: &str,
        variant: &str,
        pairs: &[(f64, f64)],
        window: usize,
    ) -> Option<Vec<(f64, f64)>> {
        let key = self.labelled_key(model, variant);
        let mut pipe = redis::pipe();
        if !pairs.is_empty() {
            let items: Vec<String> = pairs.iter().map(|(p, l)| format!("{p} {l}")).collect();
            pipe.cmd("LPUSH").arg(&key).arg(items).ignore();
            pipe.cmd("LTRIM").arg(&key).arg(0).arg(window as i64 - 1).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(LABELLED_TTL.as_millis() as u64).ignore();
        }
        pipe.cmd("LRANGE").arg(&key).arg(0).arg(window as i64 - 1);
        let (items,): (Vec<String>,) = self.l2.pipeline(&pipe).await?;
        Some(parse_labelled(&items))
    }
}

/// A shared window's items (newest first) as pairs, oldest first; unreadable items are skipped.
fn parse_labelled(items: &[String]) -> Vec<(f64, f64)> {
    items
        .iter()
        .rev()
        .filter_map(|s| {
            let (p, l) = s.split_once(' ')?;
            Some((p.parse().ok()?, l.parse().ok()?))
        })
        .collect()
}

/// Encodes an answer for Redis: `variant \t version \t p1 p2 …` (an empty version: none).
pub fn encode_answer(variant: &str, version: Option<&str>, predictions: &[f64]) -> String {
    let mut s = format!("{variant}\t{}\t", version.unwrap_or(""));
    for (i, p) in predictions.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&p.to_string());
    }
    s
}

/// The inverse of [`encode_answer`].
pub fn decode_answer(s: &str) -> Option<(&str, Option<&str>, Vec<f64>)> {
    let mut parts = s.splitn(3, '\t');
    let variant = parts.next()?;
    let version = parts.next().filter(|v| !v.is_empty());
    let predictions = parts.next()?.split(' ').map(|p| p.parse().ok()).collect::<Option<Vec<f64>>>()?;
    Some((variant, version, predictions))
}

/// Writes queued answers in pipelines; a written answer leaves the local store.
async fn write_loop<V: Clone + Send + Sync + 'static>(
    l2: Arc<L2>,
    mut rx: mpsc::Receiver<Pending<V>>,
    events: IntCounterVec,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for p in &batch {
            pipe.cmd("SET").arg(&p.key).arg(&p.value).arg("PX").arg(p.ttl.as_millis().max(1) as u64).ignore();
        }
        let written = l2.pipeline::<()>(&pipe).await.is_some();
        let mut gone = Vec::new();
        for p in batch.drain(..) {
            let event = if written {
                // Taken by feedback meanwhile (joined from the local store): it must not be joined again.
                if p.local.remove(&p.id).is_none() {
                    gone.push(p.key);
                }
                "written"
            } else {
                "local"
            };
            events.with_label_values(&[&*p.model, event]).inc();
        }
        if !gone.is_empty() {
            let mut del = redis::pipe();
            del.cmd("DEL").arg(gone).ignore();
            let _: Option<()> = l2.pipeline(&del).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip() {
        let s = encode_answer("v1", Some("3"), &[2.0, 0.5]);
        assert_eq!(decode_answer(&s), Some(("v1", Some("3"), vec![2.0, 0.5])));
        let s = encode_answer("v2", None, &[1.0]);
        assert_eq!(decode_answer(&s), Some(("v2", None, vec![1.0])));
        assert_eq!(decode_answer("v1\t\tnot-a-number"), None);
    }

    #[test]
    fn labelled_items_come_back_oldest_first() {
        let items = vec!["1 1".to_string(), "garbage".to_string(), "0 1".to_string()];
        assert_eq!(parse_labelled(&items), vec![(0.0, 1.0), (1.0, 1.0)]);
    }
}
