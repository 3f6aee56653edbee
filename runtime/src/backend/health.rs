//! The replicas of a remote backend and what keeps bad ones out of rotation,
//! shared by `v2-http` and `v2-grpc`: the endpoint set (a snapshot swapped
//! whole when DNS changes it), power-of-two-choices picking by load (this
//! proxy's in-flight requests plus, when `load_metrics` is on, the server's
//! own queue as its Prometheus metrics report it), passive ejection after
//! consecutive failures, outlier ejection by error rate and latency, active
//! readiness probes, and the retry budget.
//!
//! Everything a request touches is an atomic on its endpoint; the judging
//! (outliers, probes, scrapes) runs in background tasks that hold the pool
//! weakly and stop when the backend is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard_config::{ClientTlsConfig, EndpointHealth, LoadMetrics, OutlierDetection, MAX_EJECTION_FACTOR};
use switchyard_tls::{ClientTls, Connector};
use tokio::task::JoinHandle;

use super::affinity::{Affinity, PinMiss};

/// Server queue figures older than this many scrape intervals are not trusted.
const STALE_SCRAPES: u32 = 3;
/// The retry budget's window (Linkerd's `ttl`).
const BUDGET_WINDOW_SECS: u64 = 10;
/// The smallest latency baseline (µs) for outlier detection: answers faster
/// than `max_latency_ratio` ms are never outliers, whatever their peers do.
pub const LATENCY_FLOOR_US: f64 = 1000.0;
/// Largest metrics page read from a server.
const MAX_METRICS_BYTES: usize = 4 << 20;

/// How one request to an endpoint ended, as health judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer (any status the server gave on purpose, 4xx included).
    Success,
    /// A server error that says nothing about reachability (500): counts
    /// against the error rate, not towards consecutive-failure ejection.
    ServerError,
    /// Not reached, timed out, connection lost, 502/503/504, gRPC UNAVAILABLE.
    Failure,
}

/// One replica: what the backend talks to it with, and its health state.
pub struct Member<T> {
    /// `host:port`: the endpoint's identity across DNS changes, and in logs.
    pub authority: String,
    pub transport: T,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the pool's epoch until which passive or outlier ejection holds it out.
    ejected_until_ms: AtomicU64,
    /// Ejections in a row (the next one lasts `eject_for` × this, capped).
    ejections: AtomicU32,
    /// When the last ejection started and how long it lasted (ms), to tell a relapse.
    last_ejection: AtomicU64,
    last_ejection_len: AtomicU64,
    /// Out of rotation because active probes failed `unhealthy_after` times.
    probe_down: AtomicBool,
    /// Probe results in a row: > 0 passes, < 0 failures.
    probe_streak: AtomicI32,
    /// Outlier window: answers, errors, and the sum of the answers' latencies
    /// (µs) since the last sweep (a fast error must not make an endpoint look fast).
    win_ok: AtomicU64,
    win_err: AtomicU64,
    win_latency_us: AtomicU64,
    /// The server's own queue, from its metrics: requests waiting, and the mean
    /// queue time (µs) of the requests it finished since the previous scrape.
    pending: AtomicU64,
    queue_us: AtomicU64,
    /// When those were read (ms since the epoch); 0 = never.
    scraped_at_ms: AtomicU64,
    /// The cumulative counters of the previous scrape: queue µs, requests.
    last_counters: Mutex<Option<(f64, f64)>>,
}

impl<T> Member<T> {
    pub fn new(authority: String, transport: T) -> Member<T> {
        Member {
            authority,
            transport,
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            last_ejection: AtomicU64::new(0),
            last_ejection_len: AtomicU64::new(0),
            probe_down: AtomicBool::new(false),
            probe_streak: AtomicI32::new(0),
            win_ok: AtomicU64::new(0),
            win_err: AtomicU64::new(0),
            win_latency_us: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            queue_us: AtomicU64::new(0),
            scraped_at_ms: AtomicU64::new(0),
            last_counters: Mutex::new(None),
        }
    }

    /// This proxy's requests on the endpoint now.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// Counts a request on its endpoint until dropped, however the call ends.
pub struct InFlight<T> {
    member: Arc<Member<T>>,
    started: Instant,
}

impl<T> InFlight<T> {
    pub fn member(&self) -> &Arc<Member<T>> {
        &self.member
    }
}

impl<T> Drop for InFlight<T> {
    fn drop(&mut self) {
        self.member.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A probe of one endpoint's readiness within a timeout: true when ready.
pub type Probe<T> = Arc<dyn Fn(Arc<Member<T>>, Duration) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// The endpoints of one backend and their health policy.
pub struct Pool<T> {
    name: Arc<str>,
    set: ArcSwap<Vec<Arc<Member<T>>>>,
    policy: EndpointHealth,
    epoch: Instant,
    budget: Mutex<Budget>,
}

/// The background work of a pool; stops when dropped.
pub struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl<T: Send + Sync + 'static> Pool<T> {
    pub fn new(name: Arc<str>, members: Vec<Arc<Member<T>>>, policy: EndpointHealth) -> Pool<T> {
        Pool {
            name,
            set: ArcSwap::from_pointee(members),
            policy,
            epoch: Instant::now(),
            budget: Mutex::new(Budget::default()),
        }
    }

    /// Starts the probes, outlier sweeps and scrapes the policy asks for (on
    /// the current tokio runtime). `probe` is the kind's readiness check.
    /// `scrape_tls`: the settings of `https` load scrapes (see [`scrape_tls`]).
    pub fn start(self: &Arc<Self>, probe: Probe<T>, scrape_tls: Option<Arc<ClientTls>>) -> Tasks {
        let mut tasks = Vec::new();
        if let Some(check) = self.policy.health_check.clone() {
            let pool = Arc::downgrade(self);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(check.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(p) = pool.upgrade() else { return };
                    let members = p.members();
                    let probes = members.iter().map(|m| {
                        let (probe, m) = (probe.clone(), m.clone());
                        async move {
                            let ok =
                                tokio::time::timeout(check.timeout, probe(m.clone(), check.timeout)).await == Ok(true);
                            (m, ok)
                        }
                    });
                    for (m, ok) in futures_join_all(probes).await {
                        p.probed(&m, ok, check.unhealthy_after, check.healthy_after);
                    }
                }
            }));
        }
        if let Some(od) = self.policy.outlier_detection.clone() {
            let pool = Arc::downgrade(self);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(od.interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(p) = pool.upgrade() else { return };
                    p.sweep_outliers(&od);
                }
            }));
        }
        if let Some(lm) = self.policy.load_metrics.clone() {
            tasks.push(tokio::spawn(scrape_loop(Arc::downgrade(self), lm, scrape_tls)));
        }
        Tasks(tasks)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current snapshot; a request keeps the one it loaded.
    pub fn members(&self) -> Arc<Vec<Arc<Member<T>>>> {
        self.set.load_full()
    }

    /// Replaces the set (DNS changed it); an endpoint that stays should be
    /// passed as the same `Member`, which keeps its load and health state.
    pub fn replace(&self, members: Vec<Arc<Member<T>>>) {
        self.set.store(Arc::new(members));
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn in_rotation(&self, m: &Member<T>, now: u64) -> bool {
        m.ejected_until_ms.load(Ordering::Relaxed) <= now && !m.probe_down.load(Ordering::Relaxed)
    }

    /// Whether any endpoint is in rotation (for readiness when probes run).
    pub fn any_in_rotation(&self) -> bool {
        let now = self.now_ms();
        self.members().iter().any(|m| self.in_rotation(m, now))
    }

    /// How busy an endpoint is: this proxy's requests on it, plus the server's
    /// own queue while its figures are fresh; then its mean queue time.
    fn load(&self, m: &Member<T>, now: u64) -> (u64, u64) {
        let mine = m.outstanding.load(Ordering::Relaxed) as u64;
        let Some(lm) = &self.policy.load_metrics else { return (mine, 0) };
        let at = m.scraped_at_ms.load(Ordering::Relaxed);
        let fresh = at > 0 && now.saturating_sub(at) <= lm.interval.as_millis() as u64 * STALE_SCRAPES as u64;
        if !fresh {
            return (mine, 0);
        }
        (mine + m.pending.load(Ordering::Relaxed), m.queue_us.load(Ordering::Relaxed))
    }

    /// Power of two choices by load among endpoints in rotation, never one
    /// in `exclude`. When none is in rotation, every endpoint is a candidate
    /// again: a guess beats a certain failure.
    pub fn pick(&self, set: &[Arc<Member<T>>], exclude: &[usize]) -> Option<usize> {
        let eligible = |i: usize| !exclude.contains(&i);
        if set.len() == 1 {
            return eligible(0).then_some(0);
        }
        let now = self.now_ms();
        let in_rotation = |i: usize| eligible(i) && self.in_rotation(&set[i], now);
        let count = |cand: &dyn Fn(usize) -> bool| (0..set.len()).filter(|&i| cand(i)).count();
        let (cand, n): (&dyn Fn(usize) -> bool, usize) = match count(&in_rotation) {
            0 => (&eligible, count(&eligible)),
            n => (&in_rotation, n),
        };
        let nth = |k: usize| (0..set.len()).filter(|&i| cand(i)).nth(k).expect("k < n");
        match n {
            0 => None,
            1 => Some(nth(0)),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a), nth(b));
                Some(if self.load(&set[b], now) < self.load(&set[a], now) { b } else { a })
            }
        }
    }

    /// The endpoint a request of a pinned sequence must go to
    /// (`backend::affinity`): its index in `set` when it is there and in
    /// rotation. Unlike `pick`, never another one: the sequence's state is there.
    pub fn pinned(&self, set: &[Arc<Member<T>>], authority: &str) -> Result<usize, PinMiss> {
        let i = set.iter().position(|m| m.authority == authority).ok_or(PinMiss::Removed)?;
        if self.in_rotation(&set[i], self.now_ms()) {
            Ok(i)
        } else {
            Err(PinMiss::OutOfRotation)
        }
    }

    /// The endpoint for a call: by load (`pick`), or for a request of a
    /// sequence its pinned one — its first request is placed by load and
    /// recorded in the pin. `None` from `pick` (nothing left to try) is `Ok(None)`.
    pub fn choose(
        &self,
        set: &[Arc<Member<T>>],
        tried: &[usize],
        affinity: Option<Affinity<'_>>,
    ) -> Result<Option<usize>, PinMiss> {
        match affinity {
            None => Ok(self.pick(set, tried)),
            Some(a) if a.start => {
                let i = self.pick(set, tried);
                if let Some(i) = i {
                    a.pin.place(&set[i].authority);
                }
                Ok(i)
            }
            Some(a) => match a.pin.endpoint() {
                None => Err(PinMiss::Unplaced),
                Some(ep) => self.pinned(set, &ep).map(Some),
            },
        }
    }

    /// Counts a request on `m` until the guard drops; `finish` records how it ended.
    pub fn begin(&self, m: &Arc<Member<T>>) -> InFlight<T> {
        m.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight { member: m.clone(), started: Instant::now() }
    }

    /// Records how a request ended: outlier window, consecutive failures, ejection.
    pub fn finish(&self, call: &InFlight<T>, outcome: Outcome) {
        let m = &call.member;
        let us = call.started.elapsed().as_micros() as u64;
        match outcome {
            Outcome::Success => {
                m.win_ok.fetch_add(1, Ordering::Relaxed);
                m.win_latency_us.fetch_add(us, Ordering::Relaxed);
                m.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Outcome::ServerError => {
                m.win_err.fetch_add(1, Ordering::Relaxed);
                m.consecutive_failures.store(0, Ordering::Relaxed);
            }
            Outcome::Failure => {
                m.win_err.fetch_add(1, Ordering::Relaxed);
                let n = m.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.policy.eject_after_failures && self.members().len() > 1 {
                    m.consecutive_failures.store(0, Ordering::Relaxed);
                    self.eject(m, "consecutive failures", n as f64);
                }
            }
        }
    }

    /// Takes `m` out of rotation for `eject_for` × its ejections in a row.
    fn eject(&self, m: &Member<T>, why: &str, figure: f64) {
        let now = self.now_ms();
        if m.ejected_until_ms.load(Ordering::Relaxed) > now {
            return;
        }
        // A relapse (ejected again within as long as the last ejection lasted,
        // after it came back) lasts longer; a clean spell starts over.
        let (last, len) = (m.last_ejection.load(Ordering::Relaxed), m.last_ejection_len.load(Ordering::Relaxed));
        let relapse = last > 0 && now < last + 2 * len;
        let n = if relapse { (m.ejections.load(Ordering::Relaxed) + 1).min(MAX_EJECTION_FACTOR) } else { 1 };
        m.ejections.store(n, Ordering::Relaxed);
        let len = self.policy.eject_for.as_millis() as u64 * n as u64;
        m.last_ejection.store(now.max(1), Ordering::Relaxed);
        m.last_ejection_len.store(len, Ordering::Relaxed);
        m.ejected_until_ms.store(now + len, Ordering::Relaxed);
        tracing::warn!(backend = %self.name, endpoint = %m.authority, reason = why, figure, eject_for_ms = len, "endpoint ejected");
    }

    /// One probe result; flips the endpoint in or out of rotation at the thresholds.
    fn probed(&self, m: &Member<T>, ok: bool, unhealthy_after: u32, healthy_after: u32) {
        let s = m.probe_streak.load(Ordering::Relaxed);
        let s = match (ok, s) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        m.probe_streak.store(s, Ordering::Relaxed);
        let down = m.probe_down.load(Ordering::Relaxed);
        if !down && s <= -(unhealthy_after as i32) {
            m.probe_down.store(true, Ordering::Relaxed);
            tracing::warn!(backend = %self.name, endpoint = %m.authority, failed_probes = -s, "endpoint failed its health checks: out of rotation");
        } else if down && s >= healthy_after as i32 {
            m.probe_down.store(false, Ordering::Relaxed);
            m.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::info!(backend = %self.name, endpoint = %m.authority, passed_probes = s, "endpoint passed its health checks: back in rotation");
        }
    }

    /// Judges the window that just ended: endpoints with enough requests whose
    /// error rate is above the bound are outliers; of the others, one whose
    /// answers' mean latency is above the bound × the median of the other
    /// such endpoints' means (never below [`LATENCY_FLOOR_US`]) is one too.
    /// Outliers are ejected worst first, within `max_ejected_percent` of the
    /// set. Starts a new window.
    pub fn sweep_outliers(&self, od: &OutlierDetection) {
        let set = self.members();
        let now = self.now_ms();
        // (index, error rate, mean answer latency µs) of every endpoint with enough requests.
        let stats: Vec<(usize, f64, Option<f64>)> = set
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                let ok = m.win_ok.swap(0, Ordering::Relaxed);
                let err = m.win_err.swap(0, Ordering::Relaxed);
                let lat = m.win_latency_us.swap(0, Ordering::Relaxed);
                let n = ok + err;
                let mean = (ok > 0).then(|| lat as f64 / ok as f64);
                (n >= od.min_requests as u64 && n > 0).then(|| (i, err as f64 / n as f64, mean))
            })
            .collect();
        // (index, reason, figure, severity) of each outlier.
        let mut out: Vec<(usize, &str, f64, f64)> = Vec::new();
        for &(i, rate, _) in &stats {
            if rate > od.max_error_rate {
                out.push((i, "error rate", rate, rate / od.max_error_rate.max(f64::MIN_POSITIVE)));
            }
        }
        if let Some(ratio) = od.max_latency_ratio {
            // Endpoints failing by error rate set no latency baseline.
            let judged: Vec<(usize, f64)> = stats
                .iter()
                .filter(|s| !out.iter().any(|o| o.0 == s.0))
                .filter_map(|s| s.2.map(|mean| (s.0, mean)))
                .collect();
            for &(i, mean) in &judged {
                let mut others: Vec<f64> = judged.iter().filter(|s| s.0 != i).map(|s| s.1).collect();
                if others.is_empty() {
                    continue;
                }
                others.sort_by(f64::total_cmp);
                let median = others[others.len() / 2].max(LATENCY_FLOOR_US);
                if mean > ratio * median {
                    out.push((i, "latency", mean / median, mean / median / ratio));
                }
            }
        }
        out.sort_by(|a, b| b.3.total_cmp(&a.3));
        let max_out = set.len() * od.max_ejected_percent as usize / 100;
        let mut ejected = set.iter().filter(|m| !self.in_rotation(m, now)).count();
        for (i, why, figure, _) in out {
            if ejected >= max_out {
                tracing::warn!(backend = %self.name, endpoint = %set[i].authority, reason = why, figure, "outlier kept in rotation: max_ejected_percent reached");
                continue;
            }
            self.eject(&set[i], why, figure);
            ejected += 1;
        }
    }

    /// Whether a retry fits the budget; a retry that does is counted.
    pub fn may_retry(&self) -> bool {
        let b = &self.policy.retry_budget;
        let now = self.epoch.elapsed().as_secs();
        let mut budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        let (requests, retries) = budget.totals(now);
        let allowed = b.ratio * requests as f64 + b.min_per_second as f64 * BUDGET_WINDOW_SECS as f64;
        if (retries + 1) as f64 > allowed {
            return false;
        }
        budget.slot(now).2 += 1;
        true
    }

    /// Counts a request towards the retry budget (retries earn from requests).
    pub fn count_request(&self) {
        let now = self.epoch.elapsed().as_secs();
        self.budget.lock().unwrap_or_else(|e| e.into_inner()).slot(now).1 += 1;
    }

    /// Stores one scrape of an endpoint's metrics page.
    fn scraped(&self, m: &Member<T>, q: &QueueFigures) {
        m.pending.store(q.pending.max(0.0) as u64, Ordering::Relaxed);
        let mut last = m.last_counters.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some((q0, n0)), Some(q1), Some(n1)) = (*last, q.queue_us_total, q.requests_total) {
            let (dq, dn) = (q1 - q0, n1 - n0);
            // A restarted server's counters start over: no figure from that pair.
            if dq >= 0.0 && dn > 0.0 {
                m.queue_us.store((dq / dn) as u64, Ordering::Relaxed);
            } else if dn == 0.0 {
                m.queue_us.store(0, Ordering::Relaxed);
            }
        }
        *last = q.queue_us_total.zip(q.requests_total);
        m.scraped_at_ms.store(self.now_ms().max(1), Ordering::Relaxed);
    }

    /// The policy the pool was built with.
    pub fn policy(&self) -> &EndpointHealth {
        &self.policy
    }
}

/// Requests and retries per second over the budget window: (second, requests, retries).
#[derive(Default)]
struct Budget {
    slots: [(u64, u64, u64); BUDGET_WINDOW_SECS as usize],
}

impl Budget {
    fn slot(&mut self, now: u64) -> &mut (u64, u64, u64) {
        let s = &mut self.slots[(now % BUDGET_WINDOW_SECS) as usize];
        if s.0 != now {
            *s = (now, 0, 0);
        }
        s
    }

    fn totals(&self, now: u64) -> (u64, u64) {
        self.slots
            .iter()
            .filter(|s| s.0 + BUDGET_WINDOW_SECS > now && s.0 <= now)
            .fold((0, 0), |(r, t), s| (r + s.1, t + s.2))
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F: Future + Send + 'static>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<JoinHandle<F::Output>> = futs.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

/// A server's queue as its Prometheus page reports it, summed over every model.
#[derive(Debug, Default, PartialEq)]
pub struct QueueFigures {
    /// `nv_inference_pending_request_count`: requests received and not yet executing.
    pub pending: f64,
    /// `nv_inference_queue_duration_us`: cumulative queue time.
    pub queue_us_total: Option<f64>,
    /// `nv_inference_request_success` + `nv_inference_request_failure`: requests finished.
    pub requests_total: Option<f64>,
}

/// Reads Triton's queue figures from a Prometheus text exposition page;
/// other metrics, comments and malformed lines are skipped.
pub fn parse_queue_metrics(text: &str) -> QueueFigures {
    let mut q = QueueFigures::default();
    let add = |slot: &mut Option<f64>, v: f64| *slot = Some(slot.unwrap_or(0.0) + v);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else { continue };
        match name {
            "nv_inference_pending_request_count" => q.pending += value,
            "nv_inference_queue_duration_us" => add(&mut q.queue_us_total, value),
            "nv_inference_request_success" | "nv_inference_request_failure" => add(&mut q.requests_total, value),
            _ => {}
        }
    }
    q
}

/// `name{labels} value [timestamp]` → (name, value); label values may hold
/// any character, escaped quotes included.
fn sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_ascii_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let mut in_quotes = false;
        let mut escaped = false;
        let mut end = None;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if in_quotes => escaped = true,
                '"' => in_quotes = !in_quotes,
                '}' if !in_quotes => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[end? + 1..];
    }
    let value: f64 = rest.split_ascii_whitespace().next()?.parse().ok()?;
    value.is_finite().then_some((name, value))
}

/// The TLS settings of a backend's load scrapes when they are `https`
/// (`load_metrics.tls`, by default the backend's transport): the backend's
/// own CA, client certificate and server name, offering HTTP/1.1.
pub fn scrape_tls(
    policy: &EndpointHealth,
    backend_tls: Option<&ClientTlsConfig>,
    backend: &str,
) -> Result<Option<Arc<ClientTls>>, String> {
    match &policy.load_metrics {
        Some(lm) if lm.tls => {
            let cfg = backend_tls.cloned().unwrap_or_default();
            ClientTls::load(&cfg, &[b"http/1.1"], &format!("backend `{backend}` load metrics")).map(Some)
        }
        _ => Ok(None),
    }
}

/// Reads every endpoint's metrics page each interval.
async fn scrape_loop<T: Send + Sync + 'static>(pool: Weak<Pool<T>>, lm: LoadMetrics, tls: Option<Arc<ClientTls>>) {
    let client: Client<Connector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(Connector::new(Some(lm.interval), tls));
    let mut tick = tokio::time::interval(lm.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(p) = pool.upgrade() else { return };
        let members = p.members();
        let scrapes = members.iter().map(|m| {
            let (m, client, lm) = (m.clone(), client.clone(), lm.clone());
            async move {
                let url = metrics_url(&m.authority, &lm);
                let got = tokio::time::timeout(lm.interval, fetch(&client, &url)).await;
                (m, url, got)
            }
        });
        for (m, url, got) in futures_join_all(scrapes).await {
            match got {
                Ok(Ok(text)) => p.scraped(&m, &parse_queue_metrics(&text)),
                Ok(Err(e)) => tracing::debug!(backend = %p.name, url, error = %e, "load metrics not read"),
                Err(_) => tracing::debug!(backend = %p.name, url, "load metrics not read: timed out"),
            }
        }
    }
}

/// `http[s]://HOST:PORT/path` for an endpoint's `host:port`.
fn metrics_url(authority: &str, lm: &LoadMetrics) -> String {
    let scheme = if lm.tls { "https" } else { "http" };
    match lm.port {
        None => format!("{scheme}://{authority}{}", lm.path),
        Some(port) => {
            let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
            format!("{scheme}://{host}:{port}{}", lm.path)
        }
    }
}

async fn fetch(client: &Client<Connector, Empty<Bytes>>, url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let resp = client.get(uri).await.map_err(|e| crate::error::error_chain(&e))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_METRICS_BYTES);
    let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    String::from_utf8(bytes.to_vec()).map_err(|_| "the page is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_config::{RetryBudget, DEFAULT_EJECT_FOR};

    fn pool(n: usize, policy: EndpointHealth) -> Pool<()> {
        let members = (0..n).map(|i| Arc::new(Member::new(format!("h{i}:1"), ()))).collect();
        Pool::new(Arc::from("b"), members, policy)
    }

    fn run(p: &Pool<()>, i: usize, outcome: Outcome, times: usize) {
        let set = p.members();
        for _ in 0..times {
            let c = p.begin(&set[i]);
            p.finish(&c, outcome);
        }
    }

    fn picks(p: &Pool<()>) -> [usize; 3] {
        let set = p.members();
        let mut n = [0; 3];
        for _ in 0..300 {
            n[p.pick(&set, &[]).unwrap()] += 1;
        }
        n
    }

    #[test]
    fn a_sequence_is_placed_once_then_only_its_endpoint_serves_it() {
        use crate::backend::affinity::{Affinity, EndpointPin};
        let p = pool(3, EndpointHealth { eject_after_failures: 1, ..Default::default() });
        let set = p.members();
        let pin = EndpointPin::new("sequence 1 of model 'm'");
        let later = Affinity { pin: &pin, start: false };
        assert_eq!(p.choose(&set, &[], Some(later)), Err(PinMiss::Unplaced));
        let first = p.choose(&set, &[], Some(Affinity { pin: &pin, start: true })).unwrap().unwrap();
        assert_eq!(pin.endpoint().as_deref(), Some(set[first].authority.as_str()));
        for _ in 0..50 {
            assert_eq!(p.choose(&set, &[], Some(later)), Ok(Some(first)));
        }
        // Ejected: the sequence fails rather than moving.
        run(&p, first, Outcome::Failure, 1);
        assert_eq!(p.choose(&set, &[], Some(later)), Err(PinMiss::OutOfRotation));
        // Gone from the set (DNS): the same.
        let rest: Vec<_> = set.iter().enumerate().filter(|(i, _)| *i != first).map(|(_, m)| m.clone()).collect();
        p.replace(rest);
        assert_eq!(p.choose(&p.members(), &[], Some(later)), Err(PinMiss::Removed));
    }

    #[test]
    fn consecutive_failures_eject_and_relapses_last_longer() {
        let p = pool(3, EndpointHealth { eject_after_failures: 3, ..Default::default() });
        run(&p, 0, Outcome::Failure, 2);
        run(&p, 0, Outcome::ServerError, 1);
        run(&p, 0, Outcome::Failure, 2);
        assert!(picks(&p)[0] > 0, "not ejected yet");
        run(&p, 0, Outcome::Failure, 1);
        assert_eq!(picks(&p)[0], 0);
        let m = &p.members()[0];
        assert_eq!(m.ejections.load(Ordering::Relaxed), 1);
        // Back early (as if the time ran out), it fails again: the second ejection is twice as long.
        m.ejected_until_ms.store(0, Ordering::Relaxed);
        run(&p, 0, Outcome::Failure, 3);
        assert_eq!(m.ejections.load(Ordering::Relaxed), 2);
        assert_eq!(m.last_ejection_len.load(Ordering::Relaxed), 2 * DEFAULT_EJECT_FOR.as_millis() as u64);
    }

    #[test]
    fn outliers_by_error_rate_and_latency_within_the_ejection_cap() {
        let od = OutlierDetection {
            interval: Duration::from_secs(1),
            min_requests: 10,
            max_error_rate: 0.2,
            max_latency_ratio: Some(3.0),
            max_ejected_percent: 34,
        };
        let p = pool(3, EndpointHealth { outlier_detection: Some(od.clone()), ..Default::default() });
        // Endpoint 1: 30% server errors (never two failures in a row).
        run(&p, 0, Outcome::Success, 20);
        run(&p, 1, Outcome::Success, 14);
        run(&p, 1, Outcome::ServerError, 6);
        run(&p, 2, Outcome::Success, 20);
        p.sweep_outliers(&od);
        assert_eq!(picks(&p)[1], 0, "error-rate outlier ejected");
        // A latency outlier, but one of three is already out: the cap holds it in.
        let set = p.members();
        for m in set.iter() {
            m.win_ok.store(20, Ordering::Relaxed);
            m.win_latency_us.store(20 * 1000, Ordering::Relaxed);
        }
        set[2].win_latency_us.store(20 * 10_000, Ordering::Relaxed);
        p.sweep_outliers(&od);
        assert!(picks(&p)[2] > 0, "cap of 34% = one endpoint");
        set[1].ejected_until_ms.store(0, Ordering::Relaxed);
        for m in set.iter() {
            m.win_ok.store(20, Ordering::Relaxed);
            m.win_latency_us.store(20 * 1000, Ordering::Relaxed);
        }
        set[2].win_latency_us.store(20 * 10_000, Ordering::Relaxed);
        p.sweep_outliers(&od);
        assert_eq!(picks(&p)[2], 0, "latency outlier ejected");
        // Too few requests: not judged.
        set[2].ejected_until_ms.store(0, Ordering::Relaxed);
        run(&p, 2, Outcome::ServerError, 9);
        p.sweep_outliers(&od);
        assert!(picks(&p)[2] > 0);
    }

    #[test]
    fn probes_take_out_and_bring_back_at_their_thresholds() {
        let p = pool(2, EndpointHealth::default());
        let m = p.members()[0].clone();
        p.probed(&m, false, 2, 3);
        assert!(!m.probe_down.load(Ordering::Relaxed));
        p.probed(&m, false, 2, 3);
        assert!(m.probe_down.load(Ordering::Relaxed));
        let set = p.members();
        assert!((0..50).all(|_| p.pick(&set, &[]) == Some(1)));
        p.probed(&m, true, 2, 3);
        p.probed(&m, true, 2, 3);
        assert!(m.probe_down.load(Ordering::Relaxed));
        p.probed(&m, true, 2, 3);
        assert!(!m.probe_down.load(Ordering::Relaxed));
        // Everything out: every endpoint is a candidate again.
        for m in set.iter() {
            m.probe_down.store(true, Ordering::Relaxed);
        }
        assert!(p.pick(&set, &[]).is_some());
        assert!(!p.any_in_rotation());
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_plus_a_floor() {
        let p = pool(
            2,
            EndpointHealth { retry_budget: RetryBudget { ratio: 0.2, min_per_second: 0 }, ..Default::default() },
        );
        assert!(!p.may_retry(), "no requests, no floor: no retry");
        for _ in 0..100 {
            p.count_request();
        }
        let granted = (0..100).filter(|_| p.may_retry()).count();
        assert_eq!(granted, 20);
        let floor = pool(
            2,
            EndpointHealth { retry_budget: RetryBudget { ratio: 0.0, min_per_second: 1 }, ..Default::default() },
        );
        assert_eq!((0..100).filter(|_| floor.may_retry()).count(), BUDGET_WINDOW_SECS as usize);
    }

    #[test]
    fn load_aware_picking_uses_fresh_server_queues() {
        let lm = LoadMetrics { port: None, path: "/metrics".into(), interval: Duration::from_secs(60), tls: false };
        let p = pool(2, EndpointHealth { load_metrics: Some(lm), ..Default::default() });
        let set = p.members();
        let busy = "nv_inference_pending_request_count{model=\"m\",version=\"1\"} 7\nnv_inference_queue_duration_us{model=\"m\",version=\"1\"} 100\n";
        p.scraped(&set[0], &parse_queue_metrics(busy));
        p.scraped(&set[1], &parse_queue_metrics("nv_inference_pending_request_count{model=\"m\",version=\"1\"} 0\n"));
        assert!((0..100).all(|_| p.pick(&set, &[]) == Some(1)));
        // This proxy's own in-flight requests count too.
        let _calls: Vec<_> = (0..8).map(|_| p.begin(&set[1])).collect();
        assert!((0..100).all(|_| p.pick(&set, &[]) == Some(0)));
    }

    #[test]
    fn triton_metrics_are_read_as_triton_writes_them() {
        // The shape of Triton's /metrics page (docs: user_guide/metrics.md).
        let page = "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes\n\
# TYPE nv_inference_request_success counter\n\
nv_inference_request_success{model=\"simple\",version=\"1\"} 12\n\
nv_inference_request_failure{model=\"simple\",version=\"1\"} 3\n\
nv_inference_request_success{model=\"other\",version=\"2\"} 5\n\
# TYPE nv_inference_queue_duration_us counter\n\
nv_inference_queue_duration_us{model=\"simple\",version=\"1\"} 4500\n\
nv_inference_queue_duration_us{model=\"other\",version=\"2\"} 500\n\
# TYPE nv_inference_pending_request_count gauge\n\
nv_inference_pending_request_count{model=\"simple\",version=\"1\"} 4\n\
nv_inference_pending_request_count{model=\"we}ird \\\"x\\\"\",version=\"1\"} 2 1700000000000\n\
nv_gpu_utilization{gpu_uuid=\"GPU-1\"} 0.5\n\
garbage line\n";
        let q = parse_queue_metrics(page);
        assert_eq!(q, QueueFigures { pending: 6.0, queue_us_total: Some(5000.0), requests_total: Some(20.0) });
        let p = pool(1, EndpointHealth::default());
        let m = p.members()[0].clone();
        p.scraped(&m, &q);
        let later =
            page.replace("} 4500", "} 9500").replace("simple\",version=\"1\"} 12", "simple\",version=\"1\"} 22");
        p.scraped(&m, &parse_queue_metrics(&later));
        assert_eq!(m.queue_us.load(Ordering::Relaxed), 500, "5000 µs more over 10 more requests");
        assert_eq!(m.pending.load(Ordering::Relaxed), 6);
    }
}
