//! One concurrency limit with a bounded, prioritised wait queue, fixed or
//! adaptive (a gradient limit after Netflix's concurrency-limits `Gradient2`
//! and Envoy's adaptive concurrency filter).
//!
//! A request passes two gates. `enter`, before its body is read, reserves a
//! place (a slot or a queue place) or refuses at once, so a saturated
//! limiter costs a refused request no body read, no decode and no memory.
//! `Entry::acquire`, once the request's priority is known, takes a slot,
//! waits for one in the queue (best priority first, FIFO within one), or
//! displaces the worst-ranked waiter when the queue is full and that waiter
//! ranks below it. Where the queue holds waiters a better-ranked request
//! could displace, `enter` admits a bounded number of such contenders past a
//! full queue to read their priority; the rest are refused before their body.
//!
//! The adaptive limit measures each request's time in its slot and, per
//! window of samples, sets `limit × gradient + √limit`, where the gradient is
//! the backend's unloaded latency (+10%) over the window's mean latency
//! (clamped to 0.5..2), as Envoy's adaptive concurrency filter does. Below
//! the backend's knee latency stays flat and the limit grows; past it the
//! backend queues internally, latency grows with the limit, and the limit
//! falls back to about the knee. The unloaded latency is measured again every
//! 30 s in a window run at `min_limit`. A request that failed for overload
//! (timeout, 503) shrinks the limit by 10%.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntGauge};
use switchyard_config::ConcurrencyLimit;
use tokio::sync::oneshot;

/// Samples per adaptive window (Netflix's default window size).
const WINDOW_SAMPLES: u32 = 10;
/// A window also closes after this long, when it holds at least one sample.
const WINDOW_MAX: Duration = Duration::from_secs(1);
/// Latency may exceed the unloaded one by this share before the limit shrinks.
const BUFFER: f64 = 0.1;
/// How often the unloaded latency is measured again (Envoy's `min_rtt_calc_interval`).
const MIN_RTT_INTERVAL: Duration = Duration::from_secs(30);
/// Factor the limit takes after a window with an overload failure.
const BACKOFF: f64 = 0.9;

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every slot and queue place is taken (by requests that rank as high or higher).
    Full,
    /// Displaced from the queue by a request of higher priority.
    Shed,
    /// Waited `queue_timeout` without a slot.
    Timeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Shed => "shed",
            Refusal::Timeout => "queue_timeout",
        }
    }
}

/// Metric handles of one limiter.
#[derive(Clone)]
pub struct LimiterMetrics {
    pub limit: IntGauge,
    pub in_flight: IntGauge,
    pub queued: IntGauge,
    pub full: IntCounter,
    pub shed: IntCounter,
    pub timeout: IntCounter,
}

pub struct Limiter {
    cfg: ConcurrencyLimit,
    state: Mutex<State>,
    metrics: LimiterMetrics,
}

struct State {
    /// The current limit (fractional while adaptive; slots are its floor).
    limit: f64,
    in_flight: usize,
    /// Entries that reserved a place and are reading their body.
    reserved: usize,
    /// Entries let past a full queue to compete on priority.
    contenders: usize,
    /// Waiters by (priority, arrival): the first is served next, the last displaced first.
    waiters: BTreeMap<(u64, u64), oneshot::Sender<()>>,
    seq: u64,
    window: Window,
    /// The backend's unloaded latency (seconds), and when it was measured.
    min_rtt: f64,
    min_rtt_at: Option<Instant>,
    /// While the unloaded latency is measured: the limit to return to.
    probing: Option<f64>,
}

#[derive(Default)]
struct Window {
    start: Option<Instant>,
    sum: f64,
    samples: u32,
    dropped: u32,
    max_in_flight: usize,
}

impl State {
    fn slots(&self) -> usize {
        (self.limit as usize).max(1)
    }
}

impl Limiter {
    pub fn new(cfg: ConcurrencyLimit, metrics: LimiterMetrics) -> Arc<Limiter> {
        let limit = cfg.limit.get() as f64;
        metrics.limit.set(limit as i64);
        let state = State {
            limit,
            in_flight: 0,
            reserved: 0,
            contenders: 0,
            waiters: BTreeMap::new(),
            seq: 0,
            window: Window::default(),
            min_rtt: 0.0,
            min_rtt_at: None,
            probing: None,
        };
        Arc::new(Limiter { cfg, state: Mutex::new(state), metrics })
    }

    pub fn config(&self) -> &ConcurrencyLimit {
        &self.cfg
    }

    /// The current limit (it moves when adaptive).
    pub fn limit(&self) -> usize {
        self.lock().slots()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still consistent enough to go on.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gate before the body is read: reserves a place or refuses now.
    pub fn enter(self: &Arc<Self>) -> Result<Entry, Refusal> {
        let mut s = self.lock();
        let capacity = s.slots() + self.cfg.queue;
        let kind = if s.in_flight + s.reserved + s.waiters.len() < capacity {
            s.reserved += 1;
            EntryKind::Reserved
        } else if s.waiters.keys().next_back().is_some_and(|(p, _)| *p > 1) && s.contenders < self.cfg.queue.max(1) {
            // A waiter ranks below the best priority: a better request may displace it.
            s.contenders += 1;
            EntryKind::Contender
        } else {
            drop(s);
            self.metrics.full.inc();
            return Err(Refusal::Full);
        };
        Ok(Entry { limiter: self.clone(), kind: Some(kind) })
    }

    /// Hands free slots to the best-ranked waiters.
    fn dispatch(&self, s: &mut State) {
        while s.in_flight < s.slots() {
            let Some((_, tx)) = s.waiters.pop_first() else { break };
            // A waiter whose request is gone no longer holds the receiver.
            if tx.send(()).is_ok() {
                s.in_flight += 1;
            }
        }
        self.metrics.in_flight.set(s.in_flight as i64);
        self.metrics.queued.set(s.waiters.len() as i64);
    }

    fn release(&self, sample: Option<(Duration, bool)>, in_flight_at_start: usize) {
        let mut s = self.lock();
        s.in_flight -= 1;
        if let (Some((rtt, ok)), Some(range)) = (sample, self.cfg.adaptive) {
            let (min, max) = (range.min.get() as f64, range.max.get() as f64);
            adapt(&mut s, Instant::now(), rtt, ok, in_flight_at_start, min, max);
            self.metrics.limit.set(s.slots() as i64);
        }
        self.dispatch(&mut s);
    }
}

/// One sample into the gradient limit (see the module doc).
fn adapt(s: &mut State, now: Instant, rtt: Duration, ok: bool, in_flight: usize, min: f64, max: f64) {
    let w = &mut s.window;
    let start = *w.start.get_or_insert(now);
    if ok {
        w.sum += rtt.as_secs_f64();
        w.samples += 1;
    } else {
        w.dropped += 1;
    }
    w.max_in_flight = w.max_in_flight.max(in_flight);
    let seen = w.samples + w.dropped;
    if !(seen >= WINDOW_SAMPLES || (now - start >= WINDOW_MAX && seen > 0)) {
        return;
    }
    let w = std::mem::take(&mut s.window);
    if w.dropped > 0 {
        s.limit = (s.limit * BACKOFF).max(min);
        return;
    }
    let mean = w.sum / w.samples as f64;
    if let Some(saved) = s.probing.take() {
        // A window run at the minimum limit: its latency is the backend's unloaded one.
        s.min_rtt = mean;
        s.limit = saved;
        s.min_rtt_at = Some(now);
        return;
    }
    let Some(measured) = s.min_rtt_at else {
        // The first window sets the reference latency.
        s.min_rtt = mean;
        s.min_rtt_at = Some(now);
        return;
    };
    if now - measured >= MIN_RTT_INTERVAL {
        // Re-measure at the minimum limit: a backend can get faster or slower for good.
        s.probing = Some(s.limit);
        s.limit = min;
        return;
    }
    let gradient = (s.min_rtt * (1.0 + BUFFER) / mean).clamp(0.5, 2.0);
    // Too little load to learn that the limit may grow.
    if gradient >= 1.0 && (w.max_in_flight as f64) < s.limit / 2.0 {
        return;
    }
    s.limit = (s.limit * gradient + s.limit.sqrt()).clamp(min, max);
}

#[derive(Clone, Copy)]
enum EntryKind {
    Reserved,
    Contender,
}

/// A place reserved before the body was read; `acquire` turns it into a slot.
pub struct Entry {
    limiter: Arc<Limiter>,
    kind: Option<EntryKind>,
}

impl Entry {
    /// Takes a slot for a request of `priority` (1 is the highest), waiting
    /// up to the queue timeout. Dropping the future gives the place back.
    pub async fn acquire(mut self, priority: u64) -> Result<Permit, Refusal> {
        let limiter = self.limiter.clone();
        let mut waiting = {
            let mut s = limiter.lock();
            match self.kind.take() {
                Some(EntryKind::Reserved) => s.reserved -= 1,
                Some(EntryKind::Contender) => s.contenders -= 1,
                None => {}
            }
            if s.in_flight < s.slots() && s.waiters.is_empty() {
                s.in_flight += 1;
                limiter.metrics.in_flight.set(s.in_flight as i64);
                return Ok(Permit::new(limiter.clone(), s.in_flight));
            }
            if s.waiters.len() >= limiter.cfg.queue {
                // Full: displace the worst-ranked waiter if it ranks below this request.
                match s.waiters.keys().next_back().copied() {
                    Some(worst) if worst.0 > priority => {
                        // Dropping its sender tells the waiter it was shed.
                        s.waiters.remove(&worst);
                        limiter.metrics.shed.inc();
                    }
                    _ => {
                        drop(s);
                        limiter.metrics.full.inc();
                        return Err(Refusal::Full);
                    }
                }
            }
            let (tx, rx) = oneshot::channel();
            s.seq += 1;
            let key = (priority, s.seq);
            s.waiters.insert(key, tx);
            limiter.metrics.queued.set(s.waiters.len() as i64);
            Waiting { limiter: limiter.clone(), key, rx: Some(rx) }
        };
        let rx = waiting.rx.as_mut().expect("set above");
        match tokio::time::timeout(limiter.cfg.queue_timeout, rx).await {
            Ok(Ok(())) => {
                waiting.rx = None;
                let in_flight = limiter.lock().in_flight;
                Ok(Permit::new(limiter, in_flight))
            }
            Ok(Err(_)) => Err(Refusal::Shed),
            Err(_) => {
                limiter.metrics.timeout.inc();
                Err(Refusal::Timeout)
            }
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(kind) = self.kind.take() {
            let mut s = self.limiter.lock();
            match kind {
                EntryKind::Reserved => s.reserved -= 1,
                EntryKind::Contender => s.contenders -= 1,
            }
        }
    }
}

/// A place in the wait queue; dropped (timeout, client gone) it leaves the
/// queue, and a slot granted in the meantime is handed on.
struct Waiting {
    limiter: Arc<Limiter>,
    key: (u64, u64),
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let mut s = self.limiter.lock();
        if s.waiters.remove(&self.key).is_none() && rx.try_recv().is_ok() {
            // Granted a slot it will not use.
            s.in_flight -= 1;
        }
        self.limiter.dispatch(&mut s);
    }
}

/// A held slot; dropping it frees the slot. `record` feeds the adaptive limit.
pub struct Permit {
    limiter: Arc<Limiter>,
    start: Instant,
    in_flight: usize,
    sample: Option<bool>,
}

impl Permit {
    fn new(limiter: Arc<Limiter>, in_flight: usize) -> Permit {
        Permit { limiter, start: Instant::now(), in_flight, sample: None }
    }

    /// How the work in the slot ended: `ok`, or failed for overload (a
    /// timeout, a 503). Other failures say nothing of load and are not recorded.
    pub fn record(&mut self, ok: bool) {
        self.sample = Some(ok);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let sample = self.sample.map(|ok| (self.start.elapsed(), ok));
        self.limiter.release(sample, self.in_flight);
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use prometheus::{IntCounter, IntGauge};
    use switchyard_config::AdaptiveRange;

    use super::*;

    fn metrics() -> LimiterMetrics {
        let g = || IntGauge::new("g", "g").unwrap();
        let c = || IntCounter::new("c", "c").unwrap();
        LimiterMetrics { limit: g(), in_flight: g(), queued: g(), full: c(), shed: c(), timeout: c() }
    }

    fn limiter(limit: usize, queue: usize, adaptive: Option<(usize, usize)>) -> Arc<Limiter> {
        let nz = |n: usize| NonZeroUsize::new(n).unwrap();
        Limiter::new(
            ConcurrencyLimit {
                limit: nz(limit),
                adaptive: adaptive.map(|(min, max)| AdaptiveRange { min: nz(min), max: nz(max) }),
                queue,
                queue_timeout: Duration::from_secs(5),
            },
            metrics(),
        )
    }

    #[tokio::test]
    async fn refuses_before_the_body_when_slots_and_queue_are_taken() {
        let l = limiter(1, 1, None);
        let held = l.enter().unwrap().acquire(1).await.unwrap();
        let queued = l.enter().unwrap();
        // One slot held and one place reserved: the third is refused at the first gate.
        assert_eq!(l.enter().err(), Some(Refusal::Full));
        let waiter = tokio::spawn(queued.acquire(1));
        tokio::task::yield_now().await;
        drop(held);
        let _p = waiter.await.unwrap().unwrap();
        assert_eq!(l.lock().in_flight, 1);
    }

    #[tokio::test]
    async fn higher_priority_displaces_the_worst_waiter() {
        let l = limiter(1, 1, None);
        let _held = l.enter().unwrap().acquire(1).await.unwrap();
        let low = tokio::spawn(l.enter().unwrap().acquire(3));
        while l.lock().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        // The queue is full of a priority-3 waiter: a contender may read its priority.
        let high = l.enter().expect("a contender is let in");
        let high = tokio::spawn(high.acquire(1));
        assert_eq!(low.await.unwrap().err(), Some(Refusal::Shed));
        // Now the queue holds a priority-1 waiter nobody can displace: refused before the body.
        while l.lock().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        assert_eq!(l.enter().err(), Some(Refusal::Full));
        drop(_held);
        assert!(high.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_gives_its_place_back() {
        let l = limiter(1, 1, None);
        let held = l.enter().unwrap().acquire(1).await.unwrap();
        let fut = l.enter().unwrap().acquire(1);
        let t = tokio::spawn(fut);
        while l.lock().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        t.abort();
        let _ = t.await;
        assert!(l.lock().waiters.is_empty());
        drop(held);
        let s = l.lock();
        assert_eq!((s.in_flight, s.reserved, s.contenders), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn queue_timeout_refuses() {
        let l = limiter(1, 1, None);
        let _held = l.enter().unwrap().acquire(1).await.unwrap();
        assert_eq!(l.enter().unwrap().acquire(1).await.err(), Some(Refusal::Timeout));
        assert_eq!(l.lock().waiters.len(), 0);
    }

    /// Drives the adaptive limit against a simulated backend that serves
    /// `knee` requests at once in `base` and queues the rest (latency grows
    /// with load past the knee): the limit settles near the knee.
    #[test]
    fn adaptive_limit_finds_the_knee() {
        let l = limiter(4, 0, Some((1, 200)));
        let knee = 16usize;
        let base = Duration::from_millis(10);
        let mut now = Instant::now();
        let mut seen = Vec::new();
        // Ten simulated minutes, one sample per 10 ms: unloaded-latency probes included.
        for i in 0..60_000 {
            now += Duration::from_millis(10);
            let mut s = l.lock();
            let n = s.slots();
            let rtt = base.mul_f64((n as f64 / knee as f64).max(1.0));
            adapt(&mut s, now, rtt, true, n, 1.0, 200.0);
            if i > 1000 && s.probing.is_none() {
                seen.push(s.slots());
            }
        }
        let (lo, hi) = (*seen.iter().min().unwrap(), *seen.iter().max().unwrap());
        assert!(lo >= knee && hi <= knee * 2, "limit moved within {lo}..={hi}, knee {knee}");
        // A failure for overload backs off.
        let before = l.lock().limit;
        for _ in 0..WINDOW_SAMPLES {
            let mut s = l.lock();
            adapt(&mut s, now, base, false, 1, 1.0, 200.0);
        }
        assert!(l.lock().limit < before);
    }
}
