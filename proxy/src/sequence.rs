//! Triton sequence affinity: requests carrying a `sequence_id` stay on one
//! variant and one backend endpoint from `sequence_start` to `sequence_end`,
//! so a stateful model behind several replicas keeps its state.
//!
//! Each route owns a bounded `SequenceTable` (kept across routing snapshots
//! while the route exists): (model, sequence id) → the variant its first
//! request was routed to and the `EndpointPin` its backend placed it on.
//! A sequence is opened by a request with `sequence_start`, released by one
//! with `sequence_end` or after `sequences.idle_timeout` without a request,
//! and refused (503) past `sequences.max_active`. A request for a sequence
//! that is not live and lacks `sequence_start` gets Triton's own error.
//! The sequence parameters themselves travel to the backend unchanged: the
//! backend's sequence batcher still does its part.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use serde_json::Value;
use switchyard_config::SequenceConfig;
use switchyard_runtime::backend::affinity::EndpointPin;
use switchyard_runtime::InferRequest;

use crate::error::Error;

/// The request parameters Triton's clients send a sequence in.
pub const SEQUENCE_ID: &str = "sequence_id";
pub const SEQUENCE_START: &str = "sequence_start";
pub const SEQUENCE_END: &str = "sequence_end";

/// Bounds of the background sweep that releases idle sequences.
const MIN_SWEEP: Duration = Duration::from_millis(50);
const MAX_SWEEP: Duration = Duration::from_secs(5);

/// A sequence's correlation id: Triton's is an unsigned integer or a string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SequenceId {
    Int(u64),
    Str(Box<str>),
}

impl std::fmt::Display for SequenceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SequenceId::Int(n) => write!(f, "{n}"),
            SequenceId::Str(s) => f.write_str(s),
        }
    }
}

/// What a request says about its sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SequenceParams {
    pub id: SequenceId,
    pub start: bool,
    pub end: bool,
}

/// Reads the sequence parameters of a request (HTTP JSON `parameters`, the
/// binary extension's JSON header, gRPC `InferParameter`s all decode into
/// the same map). `None`: no sequence — no `sequence_id`, or Triton's "none"
/// (0 or the empty string). A value of the wrong type is a 400 in Triton's words.
pub fn params(req: &InferRequest) -> Result<Option<SequenceParams>, Error> {
    let p = &req.parameters;
    let Some(v) = p.get(SEQUENCE_ID) else { return Ok(None) };
    let id = match v {
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => SequenceId::Int(u),
            // Triton's gRPC front end takes an int64 and stores it as its uint64 correlation id.
            (None, Some(i)) => SequenceId::Int(i as u64),
            _ => return Err(bad_type(SEQUENCE_ID, "int64_param or string_param (an unsigned integer or a string)")),
        },
        Value::String(s) => SequenceId::Str(s.as_str().into()),
        _ => return Err(bad_type(SEQUENCE_ID, "int64_param or string_param (an unsigned integer or a string)")),
    };
    if matches!(&id, SequenceId::Int(0)) || matches!(&id, SequenceId::Str(s) if s.is_empty()) {
        return Ok(None);
    }
    let flag = |name: &str| match p.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_type(name, "bool_param (true or false)")),
    };
    Ok(Some(SequenceParams { id, start: flag(SEQUENCE_START)?, end: flag(SEQUENCE_END)? }))
}

/// Triton's message for a sequence parameter of the wrong type.
fn bad_type(name: &str, expected: &str) -> Error {
    Error::bad_field(name.to_string(), format!("invalid value type for '{name}' parameter, expected {expected}"))
}

/// Whether a gRPC request carries a live-looking sequence id (not 0, not
/// empty): its key for ordering the requests of one stream.
pub fn grpc_sequence_key(
    parameters: &std::collections::HashMap<String, switchyard_runtime::codec::grpc::pb::InferParameter>,
) -> Option<SequenceId> {
    use switchyard_runtime::codec::grpc::pb::infer_parameter::ParameterChoice;
    match parameters.get(SEQUENCE_ID)?.parameter_choice.as_ref()? {
        ParameterChoice::Int64Param(0) | ParameterChoice::Uint64Param(0) => None,
        ParameterChoice::Int64Param(n) => Some(SequenceId::Int(*n as u64)),
        ParameterChoice::Uint64Param(n) => Some(SequenceId::Int(*n)),
        ParameterChoice::StringParam(s) if s.is_empty() => None,
        ParameterChoice::StringParam(s) => Some(SequenceId::Str(s.as_str().into())),
        _ => None,
    }
}

/// Where a request of a live sequence goes.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The variant the sequence was opened on.
    pub variant: Arc<str>,
    pub pin: Arc<EndpointPin>,
    /// The sequence's first request: its backend places the pin.
    pub start: bool,
}

struct Entry {
    variant: Arc<str>,
    pin: Arc<EndpointPin>,
    last_used: Instant,
}

/// The live sequences of one route, bounded in number and idle time.
pub struct SequenceTable {
    route: Arc<str>,
    /// Sequences by the client's model name (the catch-all route serves many) and id.
    live: Mutex<HashMap<Box<str>, HashMap<SequenceId, Entry>>>,
    count: AtomicUsize,
    idle_ms: AtomicU64,
    max_active: AtomicUsize,
    gauge: IntGauge,
}

impl SequenceTable {
    /// A table for `route`; with a tokio runtime current, a task releases
    /// idle sequences in the background (stopping when the table is dropped).
    pub fn new(route: Arc<str>, cfg: &SequenceConfig, metrics: &SequenceMetrics) -> Arc<SequenceTable> {
        let table = Arc::new(SequenceTable {
            gauge: metrics.active.with_label_values(&[&route]),
            route,
            live: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            idle_ms: AtomicU64::new(0),
            max_active: AtomicUsize::new(0),
        });
        table.configure(cfg);
        table.gauge.set(0);
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_loop(Arc::downgrade(&table)));
        }
        table
    }

    /// Applies a reloaded config; live sequences stay.
    pub fn configure(&self, cfg: &SequenceConfig) {
        self.idle_ms.store(cfg.idle_timeout.as_millis().max(1) as u64, Ordering::Relaxed);
        self.max_active.store(cfg.max_active.get(), Ordering::Relaxed);
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }

    /// Live sequences now.
    pub fn active(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, HashMap<SequenceId, Entry>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes one request of a sequence. `selected` is the variant routing
    /// picked for it: a starting sequence is opened there (a live one with the
    /// same id is restarted, as Triton does); any other request goes where
    /// its sequence was opened. `sequence_end` releases the sequence.
    pub fn place(&self, model: &str, seq: &SequenceParams, selected: &Arc<str>) -> Result<Placement, Error> {
        let now = Instant::now();
        let idle = self.idle_timeout();
        let label = || format!("sequence {} of model '{model}'", seq.id);
        let mut live = self.lock();
        if seq.start {
            let pin = Arc::new(EndpointPin::new(label()));
            let placement = Placement { variant: selected.clone(), pin: pin.clone(), start: true };
            let existing = live.get(model).is_some_and(|m| m.contains_key(&seq.id));
            if seq.end {
                // A sequence of one request: nothing to remember, a restarted one is over.
                if existing {
                    self.remove(&mut live, model, &seq.id);
                }
                return Ok(placement);
            }
            if !existing && self.count.load(Ordering::Relaxed) >= self.max_active.load(Ordering::Relaxed) {
                self.expire(&mut live, now, idle);
                if self.count.load(Ordering::Relaxed) >= self.max_active.load(Ordering::Relaxed) {
                    return Err(Error::overloaded(
                        1,
                        format!(
                            "{} cannot start: model '{}' has {} live sequences, its limit (models.{}.sequences.max_active); \
                             end or let idle sequences expire first",
                            label(),
                            model,
                            self.count.load(Ordering::Relaxed),
                            self.route
                        ),
                    ));
                }
            }
            let entry = Entry { variant: selected.clone(), pin, last_used: now };
            let old = match live.get_mut(model) {
                Some(m) => m.insert(seq.id.clone(), entry),
                None => {
                    live.insert(model.into(), HashMap::from([(seq.id.clone(), entry)]));
                    None
                }
            };
            if old.is_none() {
                self.count.fetch_add(1, Ordering::Relaxed);
                self.gauge.inc();
            }
            return Ok(placement);
        }
        let found = live.get_mut(model).and_then(|m| m.get_mut(&seq.id));
        let entry = match found {
            Some(e) if now.duration_since(e.last_used) <= idle => e,
            expired => {
                let detail = if expired.is_some() {
                    format!(
                        " (it was released after {idle:?} without a request: models.{}.sequences.idle_timeout)",
                        self.route
                    )
                } else {
                    " (no live sequence has this id in Switchyard)".to_string()
                };
                if expired.is_some() {
                    self.remove(&mut live, model, &seq.id);
                }
                // Triton's words, which clients match on; the detail is Switchyard's.
                return Err(Error::bad_field(
                    SEQUENCE_START.to_string(),
                    format!(
                        "inference request for sequence {} to model '{model}' must specify the START flag on the first request of the sequence{detail}",
                        seq.id
                    ),
                ));
            }
        };
        entry.last_used = now;
        let placement = Placement { variant: entry.variant.clone(), pin: entry.pin.clone(), start: false };
        if seq.end {
            self.remove(&mut live, model, &seq.id);
        }
        Ok(placement)
    }

    fn remove(&self, live: &mut HashMap<Box<str>, HashMap<SequenceId, Entry>>, model: &str, id: &SequenceId) {
        let Some(m) = live.get_mut(model) else { return };
        if m.remove(id).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.gauge.dec();
        }
        if m.is_empty() {
            live.remove(model);
        }
    }

    /// Releases every sequence idle for longer than `idle`.
    fn expire(&self, live: &mut HashMap<Box<str>, HashMap<SequenceId, Entry>>, now: Instant, idle: Duration) {
        let mut released = 0usize;
        live.retain(|_, m| {
            m.retain(|_, e| {
                let keep = now.duration_since(e.last_used) <= idle;
                released += usize::from(!keep);
                keep
            });
            !m.is_empty()
        });
        if released > 0 {
            self.count.fetch_sub(released, Ordering::Relaxed);
            self.gauge.sub(released as i64);
            tracing::debug!(route = %self.route, released, "idle sequences released");
        }
    }

    /// One background sweep.
    pub fn sweep(&self) {
        let idle = self.idle_timeout();
        let mut live = self.lock();
        self.expire(&mut live, Instant::now(), idle);
    }
}

impl Drop for SequenceTable {
    fn drop(&mut self) {
        // The route is gone: so are its sequences.
        self.gauge.set(0);
    }
}

/// Releases idle sequences every quarter of the idle timeout (within bounds), until the table is dropped.
async fn sweep_loop(table: Weak<SequenceTable>) {
    loop {
        let Some(period) = table.upgrade().map(|t| (t.idle_timeout() / 4).clamp(MIN_SWEEP, MAX_SWEEP)) else {
            return;
        };
        tokio::time::sleep(period).await;
        match table.upgrade() {
            Some(t) => t.sweep(),
            None => return,
        }
    }
}

/// `switchyard_sequences_active{model}`.
#[derive(Clone)]
pub struct SequenceMetrics {
    active: IntGaugeVec,
}

impl SequenceMetrics {
    pub fn new(registry: &Registry) -> SequenceMetrics {
        let active = IntGaugeVec::new(
            Opts::new(
                "switchyard_sequences_active",
                "Live Triton sequences (sequence_id pinned to a variant and endpoint), by model route",
            ),
            &["model"],
        )
        .expect("valid metric");
        registry.register(Box::new(active.clone())).expect("metric names are unique");
        SequenceMetrics { active }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use serde_json::json;

    use super::*;

    fn req(params: Value) -> InferRequest {
        InferRequest { parameters: params.as_object().unwrap().clone(), ..Default::default() }
    }

    fn seq(id: u64, start: bool, end: bool) -> SequenceParams {
        SequenceParams { id: SequenceId::Int(id), start, end }
    }

    fn table(idle: Duration, max: usize) -> Arc<SequenceTable> {
        let cfg = SequenceConfig { idle_timeout: idle, max_active: NonZeroUsize::new(max).unwrap() };
        SequenceTable::new("m".into(), &cfg, &SequenceMetrics::new(&Registry::new()))
    }

    #[test]
    fn parameters_are_read_as_triton_reads_them() {
        let cases: &[(Value, Result<Option<SequenceParams>, &str>)] = &[
            (json!({}), Ok(None)),
            (json!({"sequence_id": 0, "sequence_start": true}), Ok(None)),
            (json!({"sequence_id": ""}), Ok(None)),
            (json!({"sequence_id": 7}), Ok(Some(seq(7, false, false)))),
            (json!({"sequence_id": 7, "sequence_start": true, "sequence_end": true}), Ok(Some(seq(7, true, true)))),
            (
                json!({"sequence_id": "abc", "sequence_end": true}),
                Ok(Some(SequenceParams { id: SequenceId::Str("abc".into()), start: false, end: true })),
            ),
            (json!({"sequence_id": u64::MAX}), Ok(Some(seq(u64::MAX, false, false)))),
            (json!({"sequence_id": 1.5}), Err("invalid value type for 'sequence_id' parameter")),
            (json!({"sequence_id": [1]}), Err("invalid value type for 'sequence_id' parameter")),
            (json!({"sequence_id": 3, "sequence_start": 1}), Err("invalid value type for 'sequence_start' parameter")),
            (json!({"sequence_id": 3, "sequence_end": "yes"}), Err("invalid value type for 'sequence_end' parameter")),
        ];
        for (p, want) in cases {
            match (params(&req(p.clone())), want) {
                (Ok(got), Ok(w)) => assert_eq!(&got, w, "{p}"),
                (Err(e), Err(w)) => assert!(e.message.starts_with(w), "{p}: {}", e.message),
                (got, w) => panic!("{p}: got {got:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn a_sequence_keeps_its_variant_and_pin_until_it_ends() {
        let t = table(Duration::from_secs(60), 10);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let first = t.place("m", &seq(1, true, false), &a).unwrap();
        assert!(first.start);
        first.pin.place("10.0.0.1:1");
        assert_eq!(t.active(), 1);
        // Routing would now pick `b`; the sequence stays on `a` and its endpoint.
        let next = t.place("m", &seq(1, false, false), &b).unwrap();
        assert_eq!(next.variant.as_ref(), "a");
        assert!(!next.start);
        assert!(Arc::ptr_eq(&next.pin, &first.pin));
        let last = t.place("m", &seq(1, false, true), &b).unwrap();
        assert_eq!(last.variant.as_ref(), "a");
        assert_eq!(t.active(), 0);
        let e = t.place("m", &seq(1, false, false), &b).unwrap_err();
        assert!(
            e.message.starts_with(
                "inference request for sequence 1 to model 'm' must specify the START flag on the first request of the sequence"
            ),
            "{}",
            e.message
        );
        assert_eq!(crate::respond::http_status(&e), 400);
        // The same id in another model is another sequence.
        t.place("m", &seq(2, true, false), &a).unwrap();
        assert!(t.place("other", &seq(2, false, false), &a).is_err());
    }

    #[test]
    fn a_restart_re_places_and_a_single_request_sequence_is_not_kept() {
        let t = table(Duration::from_secs(60), 10);
        let a: Arc<str> = "a".into();
        let one = t.place("m", &seq(5, true, false), &a).unwrap();
        let again = t.place("m", &seq(5, true, false), &"b".into()).unwrap();
        assert!(!Arc::ptr_eq(&one.pin, &again.pin));
        assert_eq!(t.place("m", &seq(5, false, false), &a).unwrap().variant.as_ref(), "b");
        assert_eq!(t.active(), 1);
        t.place("m", &seq(6, true, true), &a).unwrap();
        assert_eq!(t.active(), 1);
    }

    #[test]
    fn full_table_refuses_new_sequences_until_one_ends() {
        let t = table(Duration::from_secs(60), 2);
        let a: Arc<str> = "a".into();
        t.place("m", &seq(1, true, false), &a).unwrap();
        t.place("m", &seq(2, true, false), &a).unwrap();
        let e = t.place("m", &seq(3, true, false), &a).unwrap_err();
        assert_eq!(crate::respond::http_status(&e), 503);
        assert!(e.message.contains("max_active"), "{}", e.message);
        // A restart of a live one is no new sequence.
        t.place("m", &seq(2, true, false), &a).unwrap();
        t.place("m", &seq(1, false, true), &a).unwrap();
        t.place("m", &seq(3, true, false), &a).unwrap();
    }

    #[test]
    fn idle_sequences_expire() {
        let t = table(Duration::from_millis(1), 1);
        let a: Arc<str> = "a".into();
        t.place("m", &seq(1, true, false), &a).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let e = t.place("m", &seq(1, false, false), &a).unwrap_err();
        assert!(e.message.contains("idle_timeout"), "{}", e.message);
        assert_eq!(t.active(), 0);
        t.place("m", &seq(2, true, false), &a).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        // Full, but the idle one makes room.
        t.place("m", &seq(3, true, false), &a).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        t.sweep();
        assert_eq!(t.active(), 0);
    }
}
