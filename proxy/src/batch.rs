//! Dynamic batching (DESIGN §4): one queue per (backend, model, version),
//! owned by a single scheduler task. Requests are merged along the first
//! dimension only when every other dimension, the datatypes, the requested
//! outputs and the parameters match; outputs are split back by row count.
//!
//! The scheduler never holds a lock: the queue is task-local state, fed by a
//! channel. It wakes on arrivals, on finished batches and on the earliest
//! deadline, so a request's deadline is enforced while it waits even when a
//! batch is running, and a caller that went away is dropped before its work
//! is sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard_config::BatchingConfig;
use switchyard_runtime::tensor::batch::{self, BatchSignature};
use switchyard_runtime::tensor::{InferRequest, InferResponse};
use switchyard_runtime::{Backend, BackendError, ModelTarget};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::metrics::BatchMetrics;

/// Why a queued request did not get a backend answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error("batch queue is full ({limit} requests waiting); retry later")]
    QueueFull { limit: usize },
    #[error("request deadline of {deadline:?} expired after {waited:?} in the batch queue")]
    Expired { deadline: Duration, waited: Duration },
    #[error("invalid batching parameter: {0}")]
    BadParameter(String),
    #[error("the batch queue is shut down")]
    Closed,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The response, the rows of the batch it ran in, and how long that batch's backend call took.
type Reply = Result<(InferResponse, usize, Duration), BatchError>;

struct Item {
    req: InferRequest,
    /// Rows along the batch dimension; the signature is `None` for requests that run alone.
    rows: usize,
    sig: Option<BatchSignature>,
    deadline: Option<(Instant, Duration)>,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

/// The handle request paths hold; the queue itself lives in the scheduler task.
pub struct Batcher {
    tx: mpsc::UnboundedSender<(usize, Item)>,
    queued: Arc<AtomicUsize>,
    cfg: Arc<BatchingConfig>,
    metrics: BatchMetrics,
    backend: Arc<dyn Backend>,
    pub target: ModelTarget,
}

impl Batcher {
    /// Starts the scheduler task on the current tokio runtime.
    pub fn spawn(
        backend: Arc<dyn Backend>,
        target: ModelTarget,
        cfg: BatchingConfig,
        metrics: BatchMetrics,
    ) -> Arc<Batcher> {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let cfg = Arc::new(cfg);
        let scheduler = Scheduler {
            rx,
            backend: backend.clone(),
            target: target.clone(),
            cfg: cfg.clone(),
            queued: queued.clone(),
            metrics: metrics.clone(),
            queues: (0..cfg.priority_levels.get()).map(|_| VecDeque::new()).collect(),
            in_flight: 0,
            arrival_gap_ewma: None,
            last_arrival: None,
        };
        tokio::spawn(scheduler.run());
        Arc::new(Batcher { tx, queued, cfg, metrics, backend, target })
    }

    /// Queues a request and waits for its share of a batch. Returns the
    /// response and the number of rows of the batch it ran in.
    pub async fn submit(&self, mut req: InferRequest) -> Reply {
        let priority = match req.parameters.remove("priority") {
            None => self.cfg.default_priority,
            Some(v) => match v.as_u64() {
                Some(0) => self.cfg.default_priority,
                Some(p) if p as usize <= self.cfg.priority_levels.get() => p as usize,
                _ => {
                    return Err(BatchError::BadParameter(format!(
                        "priority must be an integer between 0 and {}, got {v}",
                        self.cfg.priority_levels
                    )))
                }
            },
        };
        let timeout = match req.parameters.remove("timeout") {
            None => self.cfg.default_timeout,
            Some(v) => match v.as_u64() {
                Some(0) => self.cfg.default_timeout,
                Some(us) => Some(Duration::from_micros(us)),
                None => {
                    return Err(BatchError::BadParameter(format!(
                        "timeout must be a non-negative integer of microseconds, got {v}"
                    )))
                }
            },
        };
        let (sig, rows) = match BatchSignature::of(&req) {
            Some((s, r)) if r <= self.cfg.max_batch_size.get() => (Some(s), r),
            // Larger than a batch, or not batchable: it runs alone, never split.
            Some((_, r)) => (None, r),
            None => (None, 1),
        };
        let limit = self.cfg.max_queue_size;
        if self.queued.fetch_add(1, Ordering::AcqRel) >= limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rejected_full.inc();
            return Err(BatchError::QueueFull { limit });
        }
        let now = Instant::now();
        let (reply, rx) = oneshot::channel();
        let item = Item { req, rows, sig, deadline: timeout.map(|t| (now + t, t)), enqueued: now, reply };
        if self.tx.send((priority - 1, item)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(BatchError::Closed);
        }
        rx.await.unwrap_or(Err(BatchError::Closed))
    }

    pub fn config(&self) -> &BatchingConfig {
        &self.cfg
    }

    /// Whether this queue already is what a new snapshot asks for (same backend instance, same settings).
    pub fn serves(&self, backend: &Arc<dyn Backend>, cfg: &BatchingConfig) -> bool {
        Arc::ptr_eq(&self.backend, backend) && *self.cfg == *cfg
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

struct Scheduler {
    rx: mpsc::UnboundedReceiver<(usize, Item)>,
    backend: Arc<dyn Backend>,
    target: ModelTarget,
    cfg: Arc<BatchingConfig>,
    queued: Arc<AtomicUsize>,
    metrics: BatchMetrics,
    /// One FIFO per priority level, level 1 first.
    queues: Vec<VecDeque<Item>>,
    in_flight: usize,
    /// Smoothed gap between arrivals (seconds), for the adaptive delay.
    arrival_gap_ewma: Option<f64>,
    last_arrival: Option<Instant>,
}

struct Batch {
    items: Vec<Item>,
}

impl Scheduler {
    async fn run(mut self) {
        let target = self.target.clone();
        let _watch = PanicWatch(&target, "batch scheduler");
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<()>();
        let mut open = true;
        loop {
            let now = Instant::now();
            self.prune(now);
            while self.in_flight < self.cfg.max_concurrent_batches.get() {
                let Some(batch) = self.next_batch(now) else { break };
                self.in_flight += 1;
                let done = done_tx.clone();
                let backend = self.backend.clone();
                let target = self.target.clone();
                let metrics = self.metrics.clone();
                tokio::spawn(async move {
                    // Reports a panic of the batch (the backend's, say); `done` is sent either way.
                    let _watch = PanicWatch(&target, "batch");
                    let _done = Done(done);
                    execute(backend, target.clone(), batch, metrics).await;
                });
            }
            self.metrics.queue_depth.set(self.queued.load(Ordering::Acquire) as i64);
            if !open && self.in_flight == 0 && self.queues.iter().all(|q| q.is_empty()) {
                return;
            }
            let wake = self.next_wake(now);
            tokio::select! {
                biased;
                Some(()) = done_rx.recv() => self.in_flight -= 1,
                msg = self.rx.recv(), if open => match msg {
                    Some((level, item)) => {
                        self.arrived(item.enqueued);
                        self.queues[level].push_back(item);
                        // Take everything already waiting, so one wake-up sees the whole burst.
                        while let Ok((level, item)) = self.rx.try_recv() {
                            self.arrived(item.enqueued);
                            self.queues[level].push_back(item);
                        }
                    }
                    None => open = false,
                },
                _ = sleep_until(wake), if wake.is_some() => {}
            }
        }
    }

    fn arrived(&mut self, at: Instant) {
        if let Some(last) = self.last_arrival {
            let gap = at.saturating_duration_since(last).as_secs_f64();
            self.arrival_gap_ewma = Some(match self.arrival_gap_ewma {
                None => gap,
                Some(g) => 0.9 * g + 0.1 * gap,
            });
        }
        self.last_arrival = Some(at);
    }

    /// Answers and removes requests whose deadline passed or whose caller left.
    fn prune(&mut self, now: Instant) {
        let mut removed = 0;
        for q in &mut self.queues {
            q.retain_mut(|item| {
                if item.reply.is_closed() {
                    self.metrics.rejected_cancelled.inc();
                    removed += 1;
                    return false;
                }
                if let Some((at, deadline)) = item.deadline {
                    if at <= now {
                        self.metrics.rejected_timeout.inc();
                        removed += 1;
                        // Take the sender out: the item is dropped right after.
                        let (tx, _) = oneshot::channel();
                        let reply = std::mem::replace(&mut item.reply, tx);
                        let _ = reply.send(Err(BatchError::Expired {
                            deadline,
                            waited: now.saturating_duration_since(item.enqueued),
                        }));
                        return false;
                    }
                }
                true
            });
        }
        if removed > 0 {
            self.queued.fetch_sub(removed, Ordering::AcqRel);
        }
    }

    fn head(&self) -> Option<&Item> {
        self.queues.iter().find_map(|q| q.front())
    }

    /// How long the head may wait for companions now.
    fn delay(&self, queued_rows: usize) -> Duration {
        if !self.cfg.adaptive {
            return self.cfg.max_queue_delay;
        }
        // Nothing running: whatever waits is all the work there is; send it now.
        // Batches build up on their own while earlier ones run.
        if self.in_flight == 0 {
            return Duration::ZERO;
        }
        let Some(gap) = self.arrival_gap_ewma.filter(|g| *g > 0.0) else {
            return Duration::ZERO;
        };
        // Waiting pays only when companions are expected within the allowance:
        // wait as long as the remaining rows take to arrive, capped.
        let max = self.cfg.max_queue_delay.as_secs_f64();
        if gap >= max {
            return Duration::ZERO;
        }
        let missing = self.cfg.max_batch_size.get().saturating_sub(queued_rows) as f64;
        Duration::from_secs_f64((missing * gap).min(max))
    }

    fn compatible_rows(&self, sig: &BatchSignature) -> usize {
        let cap = self.cfg.max_batch_size.get();
        let mut rows = 0;
        for item in self.queues.iter().flatten() {
            if item.sig.as_ref() == Some(sig) && rows + item.rows <= cap {
                rows += item.rows;
            }
        }
        rows
    }

    /// The batch to send now, if any is due.
    fn next_batch(&mut self, now: Instant) -> Option<Batch> {
        let head = self.head()?;
        let Some(sig) = head.sig.clone() else {
            // Runs alone.
            let level = self.queues.iter().position(|q| !q.is_empty())?;
            let item = self.queues[level].pop_front()?;
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Some(Batch { items: vec![item] });
        };
        let waited = now.saturating_duration_since(head.enqueued);
        let avail = self.compatible_rows(&sig);
        let max = self.cfg.max_batch_size.get();
        let preferred = self.cfg.preferred_batch_sizes.last().copied();
        let target = if avail >= max {
            max
        } else if preferred.is_some_and(|p| avail >= p) {
            preferred.unwrap_or(avail)
        } else if waited + timer_slack(self.delay(avail)) >= self.delay(avail) {
            avail
        } else {
            return None;
        };
        let mut items = Vec::new();
        let mut rows = 0;
        for q in &mut self.queues {
            let mut i = 0;
            while i < q.len() {
                let fits = q[i].sig.as_ref() == Some(&sig) && rows + q[i].rows <= target;
                if fits {
                    let item = q.remove(i).expect("index checked");
                    rows += item.rows;
                    items.push(item);
                } else {
                    i += 1;
                }
            }
        }
        debug_assert!(rows <= target);
        self.queued.fetch_sub(items.len(), Ordering::AcqRel);
        Some(Batch { items })
    }

    /// When the scheduler must look again without an arrival or completion.
    fn next_wake(&self, now: Instant) -> Option<Instant> {
        let deadline = self.queues.iter().flatten().filter_map(|i| i.deadline.map(|(at, _)| at)).min();
        let dispatch = if self.in_flight < self.cfg.max_concurrent_batches.get() {
            self.head().and_then(|h| {
                let rows = h.sig.as_ref().map_or(0, |s| self.compatible_rows(s));
                let delay = self.delay(rows);
                let at = h.enqueued + delay - timer_slack(delay);
                // A due head that did not go out is waiting on capacity, not time.
                (at > now).then_some(at)
            })
        } else {
            None
        };
        match (deadline, dispatch) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// tokio's timer rounds a sleep up to the next millisecond, so a 2 ms delay
/// would wait up to 3 ms; a batch counts as due up to this much early instead.
fn timer_slack(delay: Duration) -> Duration {
    (delay / 2).min(Duration::from_millis(1))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the items as one request, merged along the first dimension, and
/// splits the answer back by each item's rows; each part gets its item's id.
async fn run_merged(
    backend: &dyn Backend,
    target: &ModelTarget,
    items: &[Item],
) -> Result<Vec<InferResponse>, BackendError> {
    // Items share a batch only by signature, which is all `merge` asks.
    let req = batch::merge(items.iter().map(|i| &i.req))
        .map_err(|e| BackendError::Internal(format!("cannot merge the batch: {e}")))?;
    let resp = backend.infer(target, req).await?;
    let rows: Vec<usize> = items.iter().map(|i| i.rows).collect();
    let mut parts = batch::split(resp, &rows).map_err(|e| BackendError::Protocol(e.to_string()))?;
    for (part, item) in parts.iter_mut().zip(items) {
        part.id = item.req.id.clone();
    }
    Ok(parts)
}

/// Tells the scheduler a batch finished, however it ended.
struct Done(mpsc::UnboundedSender<()>);

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// Makes a panic of a batch task visible: logged, recorded in
/// `switchyard_stats::tasks` (so `/ready` turns false and the panic metric
/// counts it). The panic's own message is printed by the panic hook.
struct PanicWatch<'a>(&'a ModelTarget, &'static str);

impl Drop for PanicWatch<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let task = format!("{} {}:{}", self.1, self.0.name, self.0.version.as_deref().unwrap_or("latest"));
            tracing::error!(task = %task, "background task panicked");
            switchyard_stats::tasks::record_panic(task, "panicked (its message is in the log)");
        }
    }
}

async fn execute(backend: Arc<dyn Backend>, target: ModelTarget, batch: Batch, metrics: BatchMetrics) {
    let mut items = batch.items;
    // A caller that left while the batch formed is not sent.
    items.retain(|i| {
        let gone = i.reply.is_closed();
        if gone {
            metrics.rejected_cancelled.inc();
        }
        !gone
    });
    if items.is_empty() {
        return;
    }
    let started = Instant::now();
    for i in &items {
        metrics.queue_time.observe(started.saturating_duration_since(i.enqueued).as_secs_f64());
    }
    let alone = items[0].sig.is_none();
    let rows: usize = items.iter().map(|i| i.rows).sum();
    let (result, batch_rows) = if alone || items.len() == 1 {
        let item_rows = items[0].rows;
        let req = std::mem::take(&mut items[0].req);
        let r = backend.infer(&target, req).await.map(|resp| vec![resp]);
        (r, item_rows)
    } else {
        (run_merged(backend.as_ref(), &target, &items).await, rows)
    };
    let execution = started.elapsed();
    metrics.execution_time.observe(execution.as_secs_f64());
    metrics.batch_size.observe(batch_rows as f64);
    match result {
        Ok(responses) => {
            for (item, resp) in items.into_iter().zip(responses) {
                let _ = item.reply.send(Ok((resp, batch_rows, execution)));
            }
        }
        Err(e) => {
            for item in items {
                let _ = item.reply.send(Err(BatchError::Backend(e.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use bytes::Bytes;
    use serde_json::Value;
    use switchyard_config::BatchingConfig;
    use switchyard_runtime::tensor::Tensor;
    use switchyard_runtime::DataType;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::metrics::Metrics;

    /// A backend whose behaviour is explicit: doubles FP32 input `x` into output `y`,
    /// records every call, optionally waits for a gate permit or fails.
    #[derive(Default)]
    struct TestBackend {
        calls: Mutex<Vec<Vec<f32>>>,
        gate: Option<Semaphore>,
        fail: bool,
        /// Panics on the next call (once).
        panic_once: std::sync::atomic::AtomicBool,
    }

    fn f32s(d: &[u8]) -> Vec<f32> {
        d.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[async_trait]
    impl Backend for TestBackend {
        fn kind(&self) -> &'static str {
            "test"
        }
        async fn infer(&self, _t: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError> {
            let x = &req.inputs[0];
            self.calls.lock().unwrap().push(f32s(&x.data));
            if let Some(g) = &self.gate {
                g.acquire().await.unwrap().forget();
            }
            if self.fail {
                return Err(BackendError::status(400, "model says no"));
            }
            if self.panic_once.swap(false, Ordering::SeqCst) {
                panic!("test backend panicked on purpose");
            }
            let y: Vec<u8> = f32s(&x.data).iter().flat_map(|v| (v * 2.0).to_le_bytes()).collect();
            Ok(InferResponse {
                model_name: "m".into(),
                outputs: vec![Tensor::new("y", DataType::Fp32, x.shape.clone(), Bytes::from(y))],
                ..Default::default()
            })
        }
        async fn model_metadata(&self, _t: &ModelTarget) -> Result<Value, BackendError> {
            Ok(Value::Null)
        }
        async fn model_ready(&self, _t: &ModelTarget) -> Result<bool, BackendError> {
            Ok(true)
        }
        async fn ready(&self) -> bool {
            true
        }
    }

    fn cfg(max: usize, delay_ms: u64) -> BatchingConfig {
        BatchingConfig {
            max_batch_size: max.try_into().unwrap(),
            max_queue_delay: Duration::from_millis(delay_ms),
            preferred_batch_sizes: vec![],
            max_queue_size: 4096,
            default_timeout: None,
            priority_levels: 2.try_into().unwrap(),
            default_priority: 2,
            adaptive: false,
            max_concurrent_batches: 1.try_into().unwrap(),
        }
    }

    fn req(rows: usize, cols: usize, base: f32) -> InferRequest {
        let data: Vec<u8> = (0..rows * cols).flat_map(|i| (base + i as f32).to_le_bytes()).collect();
        InferRequest {
            id: Some(format!("r{base}")),
            inputs: vec![Tensor::new("x", DataType::Fp32, vec![rows as i64, cols as i64], Bytes::from(data))],
            ..Default::default()
        }
    }

    fn target() -> ModelTarget {
        ModelTarget { name: "m".into(), version: None }
    }

    fn spawn(backend: Arc<TestBackend>, cfg: BatchingConfig) -> Arc<Batcher> {
        let metrics = Metrics::new_unregistered().batch("m", "", "test");
        Batcher::spawn(backend, target(), cfg, metrics)
    }

    /// Submits on a task of its own, so the test can go on while it waits.
    fn submit_in_background(b: &Arc<Batcher>, r: InferRequest) -> tokio::task::JoinHandle<Reply> {
        let b = b.clone();
        tokio::spawn(async move { b.submit(r).await })
    }

    async fn wait_for(mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not met within 10 s");
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_concurrent_requests_each_get_their_own_rows() {
        // The first batch is held at the backend until every other request waits in the
        // queue, so what follows is batched however slowly the machine runs the tasks.
        let backend = Arc::new(TestBackend { gate: Some(Semaphore::new(0)), ..Default::default() });
        let b = spawn(backend.clone(), cfg(32, 5));
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let b = b.clone();
            let rows = 1 + i % 3;
            tasks.push(tokio::spawn(async move {
                let base = (i * 10) as f32;
                let (resp, batch, _) = b.submit(req(rows, 2, base)).await.unwrap();
                let want: Vec<f32> = (0..rows * 2).map(|k| 2.0 * (base + k as f32)).collect();
                assert_eq!(f32s(&resp.outputs[0].data), want, "request {i}");
                assert_eq!(resp.outputs[0].shape, vec![rows as i64, 2]);
                assert_eq!(resp.id.as_deref(), Some(format!("r{base}").as_str()));
                batch
            }));
        }
        // Requests in the held batch: each one's first value is its base, a multiple of 10
        // (its other values are base + 1..=5).
        let held = || backend.calls.lock().unwrap().first().map(|c| c.iter().filter(|v| **v % 10.0 == 0.0).count());
        wait_for(|| held().is_some_and(|n| n + b.queued() == 1000)).await;
        backend.gate.as_ref().unwrap().add_permits(1000);
        let mut max_seen = 0;
        for t in tasks {
            max_seen = max_seen.max(t.await.unwrap());
        }
        assert!(max_seen <= 32);
        // 2,000 rows in all, in batches of up to 32: the queued ones go out (nearly) full.
        let calls = backend.calls.lock().unwrap().len();
        assert!(calls <= 1 + 2000 / 24, "{calls} backend calls for 1000 requests");
        assert!(max_seen >= 30, "largest batch {max_seen} rows");
    }

    #[tokio::test]
    async fn mixed_shapes_never_share_a_batch() {
        let backend = Arc::new(TestBackend::default());
        let b = spawn(backend.clone(), cfg(64, 20));
        let (a, c) = tokio::join!(b.submit(req(1, 2, 0.0)), b.submit(req(1, 3, 100.0)));
        assert_eq!(a.unwrap().0.outputs[0].shape, vec![1, 2]);
        assert_eq!(c.unwrap().0.outputs[0].shape, vec![1, 3]);
        let calls = backend.calls.lock().unwrap();
        assert_eq!(calls.len(), 2);
        assert!(calls.iter().all(|c| c.len() == 2 || c.len() == 3));
    }

    #[tokio::test]
    async fn a_request_larger_than_a_batch_runs_alone() {
        let backend = Arc::new(TestBackend::default());
        let b = spawn(backend.clone(), cfg(4, 0));
        let (resp, rows, _) = b.submit(req(10, 1, 0.0)).await.unwrap();
        assert_eq!(resp.outputs[0].shape, vec![10, 1]);
        assert_eq!(rows, 10);
    }

    #[tokio::test]
    async fn full_queue_rejects_at_once() {
        let backend = Arc::new(TestBackend { gate: Some(Semaphore::new(0)), ..Default::default() });
        let mut c = cfg(1, 0);
        c.max_queue_size = 2;
        let b = spawn(backend.clone(), c);
        let first = submit_in_background(&b, req(1, 1, 0.0));
        // The first is running (gate closed); two more fill the queue.
        wait_for(|| backend.calls.lock().unwrap().len() == 1).await;
        let q1 = submit_in_background(&b, req(1, 1, 1.0));
        let q2 = submit_in_background(&b, req(1, 1, 2.0));
        wait_for(|| b.queued() == 2).await;
        let err = b.submit(req(1, 1, 3.0)).await.unwrap_err();
        assert!(matches!(err, BatchError::QueueFull { limit: 2 }), "{err}");
        backend.gate.as_ref().unwrap().add_permits(3);
        for t in [first, q1, q2] {
            t.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn deadline_fires_while_a_batch_is_still_running() {
        let backend = Arc::new(TestBackend { gate: Some(Semaphore::new(0)), ..Default::default() });
        let b = spawn(backend.clone(), cfg(1, 0));
        let running = submit_in_background(&b, req(1, 1, 0.0));
        wait_for(|| backend.calls.lock().unwrap().len() == 1).await;
        let mut late = req(1, 1, 1.0);
        late.parameters.insert("timeout".into(), Value::from(20_000u64));
        let err = b.submit(late).await.unwrap_err();
        assert!(matches!(err, BatchError::Expired { .. }), "{err}");
        // The first batch has not finished: the deadline did not wait for it.
        assert!(!running.is_finished());
        backend.gate.as_ref().unwrap().add_permits(1);
        running.await.unwrap().unwrap();
        assert_eq!(backend.calls.lock().unwrap().len(), 1, "the expired request was sent");
    }

    #[tokio::test]
    async fn higher_priority_is_served_first() {
        let backend = Arc::new(TestBackend { gate: Some(Semaphore::new(0)), ..Default::default() });
        let b = spawn(backend.clone(), cfg(1, 0));
        let blocker = submit_in_background(&b, req(1, 1, 0.0));
        wait_for(|| backend.calls.lock().unwrap().len() == 1).await;
        let mut tasks = Vec::new();
        for (value, prio) in [(10.0, 2u64), (11.0, 2), (20.0, 1), (21.0, 1)] {
            let mut r = req(1, 1, value);
            r.parameters.insert("priority".into(), Value::from(prio));
            let b2 = b.clone();
            tasks.push(tokio::spawn(async move { b2.submit(r).await }));
            let n = tasks.len();
            wait_for(|| b.queued() == n).await;
        }
        backend.gate.as_ref().unwrap().add_permits(10);
        blocker.await.unwrap().unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let order: Vec<f32> = backend.calls.lock().unwrap().iter().map(|c| c[0]).collect();
        assert_eq!(order, vec![0.0, 20.0, 21.0, 10.0, 11.0]);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_is_never_sent() {
        let backend = Arc::new(TestBackend { gate: Some(Semaphore::new(0)), ..Default::default() });
        let b = spawn(backend.clone(), cfg(1, 0));
        let blocker = submit_in_background(&b, req(1, 1, 0.0));
        wait_for(|| backend.calls.lock().unwrap().len() == 1).await;
        let leaver = submit_in_background(&b, req(1, 1, 99.0));
        wait_for(|| b.queued() == 1).await;
        leaver.abort();
        let _ = leaver.await;
        let stayer = submit_in_background(&b, req(1, 1, 7.0));
        backend.gate.as_ref().unwrap().add_permits(10);
        blocker.await.unwrap().unwrap();
        stayer.await.unwrap().unwrap();
        let sent: Vec<f32> = backend.calls.lock().unwrap().iter().flatten().copied().collect();
        assert_eq!(sent, vec![0.0, 7.0]);
    }

    #[tokio::test]
    async fn a_backend_error_fails_every_request_of_the_batch() {
        let backend = Arc::new(TestBackend { fail: true, ..Default::default() });
        let b = spawn(backend.clone(), cfg(8, 50));
        let results = futures_join(b.clone(), 4).await;
        assert_eq!(backend.calls.lock().unwrap().len(), 1, "the four should share one batch");
        for r in results {
            match r {
                Err(BatchError::Backend(BackendError::Status { status: 400, message, .. })) => {
                    assert_eq!(message, "model says no")
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// A batch whose backend panics fails its requests, is recorded as a
    /// dead task (so `/ready` says so), and the queue goes on serving.
    #[tokio::test]
    async fn a_panicking_batch_is_recorded_and_the_queue_goes_on() {
        let backend = Arc::new(TestBackend::default());
        backend.panic_once.store(true, Ordering::SeqCst);
        let b = spawn(backend.clone(), cfg(8, 1));
        let failed = b.submit(req(1, 1, 1.0)).await;
        assert!(failed.is_err(), "{failed:?}");
        assert!(switchyard_stats::tasks::panicked().iter().any(|p| p.task == "batch m:latest"));
        let (resp, rows, _) = b.submit(req(1, 1, 2.0)).await.expect("the queue still serves");
        assert_eq!((rows, f32s(&resp.outputs[0].data)), (1, vec![4.0]));
    }

    async fn futures_join(b: Arc<Batcher>, n: usize) -> Vec<Reply> {
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move { b.submit(req(1, 1, i as f32)).await })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}
