//! A KServe V2 HTTP test backend with explicit fault settings: every model it
//! is asked for is an echo (output `y` is the first input tensor, unchanged),
//! answered with `model_version` = the server's name so a test can tell which
//! server answered. Faults are settings changed at run time, never random:
//! `fail_every(n)` makes every n-th infer a 500 (20 = exactly 5%),
//! `delay_ms(d)` holds every infer for `d` ms, `down(true)` closes every
//! connection without answering (and every new one at once). It counts what
//! it receives, so a test can check that a 0% arm got exactly nothing.
//! `capacity(n)` lets at most n infers execute at once; the others wait in a
//! queue, as requests wait for a model instance in Triton.
//!
//! `GET /metrics` is a stand-in for Triton's metrics endpoint: this server's
//! own real queue in Triton's metric names and Prometheus text format
//! (`nv_inference_pending_request_count`, `nv_inference_queue_duration_us`,
//! `nv_inference_request_success`/`_failure`, labelled `model`, `version`, as
//! Triton's user guide, metrics.md, documents them).
//!
//! `GET /v2` advertises no extensions, so Switchyard talks JSON to it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::watch;

struct State {
    name: String,
    fail_every: AtomicU64,
    delay_ms: AtomicU64,
    down: watch::Sender<bool>,
    /// Every HTTP request, probes and metadata included.
    requests: AtomicU64,
    /// Infer requests received (before any delay or fault).
    infers: AtomicU64,
    /// Infer requests answered, successfully or with an injected 500.
    answered: AtomicU64,
    /// Injected 500s.
    failed: AtomicU64,
    in_flight: AtomicU64,
    /// Infers allowed to execute at once (0: no limit), those executing, and
    /// the wake-up of those waiting for a slot.
    capacity: AtomicU64,
    executing: AtomicU64,
    slot_freed: tokio::sync::Notify,
    /// Infers waiting for a slot, and the total time they waited (µs).
    pending: AtomicU64,
    queue_us: AtomicU64,
}

/// A running fault backend on `127.0.0.1:port` (port 0 at bind time).
pub struct FaultBackend {
    pub port: u16,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultBackend {
    /// Starts a healthy server; `name` is reported as `model_version` and in `GET /v2`.
    pub async fn start(name: &str) -> FaultBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        FaultBackend::serve(name, listener)
    }

    /// As `start`, on a given address (several replicas on one port, different loopback IPs).
    pub async fn start_at(name: &str, addr: std::net::SocketAddr) -> std::io::Result<FaultBackend> {
        Ok(FaultBackend::serve(name, tokio::net::TcpListener::bind(addr).await?))
    }

    fn serve(name: &str, listener: tokio::net::TcpListener) -> FaultBackend {
        let port = listener.local_addr().expect("local addr").port();
        let (down, _) = watch::channel(false);
        let state = Arc::new(State {
            name: name.to_string(),
            fail_every: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            down,
            requests: AtomicU64::new(0),
            infers: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            executing: AtomicU64::new(0),
            slot_freed: tokio::sync::Notify::new(),
            pending: AtomicU64::new(0),
            queue_us: AtomicU64::new(0),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let mut down = s.down.subscribe();
                if *down.borrow() {
                    // Refuse by closing before reading anything.
                    drop(stream);
                    continue;
                }
                let st = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                    // Going down drops the connection, also mid-request: the client sees it closed.
                    tokio::select! {
                        _ = conn => {}
                        _ = down.wait_for(|d| *d) => {}
                    }
                });
            }
        });
        FaultBackend { port, state, task }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Every `n`-th infer request (counted from the server's start) answers 500; 0 = never.
    pub fn fail_every(&self, n: u64) {
        self.state.fail_every.store(n, Ordering::SeqCst);
    }

    /// Holds every infer request this long before answering.
    pub fn delay_ms(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// At most `n` infers execute at once; the rest queue (0 = no limit).
    pub fn capacity(&self, n: u64) {
        self.state.capacity.store(n, Ordering::SeqCst);
        self.state.slot_freed.notify_waiters();
    }

    /// Infers waiting for an execution slot now.
    pub fn pending(&self) -> u64 {
        self.state.pending.load(Ordering::SeqCst)
    }

    /// Down: open connections are closed and new ones are closed on accept.
    pub fn down(&self, down: bool) {
        self.state.down.send_replace(down);
    }

    /// Every HTTP request received (probes, metadata and infers).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Infer requests received.
    pub fn infers(&self) -> u64 {
        self.state.infers.load(Ordering::SeqCst)
    }

    /// Infer requests answered (200 or injected 500).
    pub fn answered(&self) -> u64 {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// Injected 500s so far.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Infer requests received and not yet answered.
    pub fn in_flight(&self) -> u64 {
        self.state.in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for FaultBackend {
    fn drop(&mut self) {
        self.task.abort();
        // Ends the connection tasks too.
        self.state.down.send_replace(true);
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: u16, body: &Value) -> Resp {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static parts")
}

fn empty(status: u16) -> Resp {
    Response::builder().status(status).body(Full::new(Bytes::new())).expect("static parts")
}

fn error(status: u16, message: impl Into<String>) -> Resp {
    reply(status, &json!({ "error": message.into() }))
}

/// Decrements `in_flight` and counts the answer however the infer ends.
struct Pending<'a>(&'a State);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    if *state.down.borrow() {
        // The connection task drops this connection.
        std::future::pending::<()>().await;
    }
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segs: Vec<&str> = path.trim_start_matches('/').trim_end_matches('/').split('/').collect();
    // (model, version, action) of a /v2/models/... path.
    let model_path = match segs.as_slice() {
        ["v2", "models", m] => Some((*m, None, "")),
        ["v2", "models", m, a] => Some((*m, None, *a)),
        ["v2", "models", m, "versions", v] => Some((*m, Some(*v), "")),
        ["v2", "models", m, "versions", v, a] => Some((*m, Some(*v), *a)),
        _ => None,
    };
    let get = method == Method::GET || method == Method::HEAD;
    let resp = match (segs.as_slice(), model_path) {
        (["v2"], _) if get => reply(200, &json!({ "name": state.name, "version": "fault-backend", "extensions": [] })),
        (["v2", "health", "live" | "ready"], _) if get => empty(200),
        (["metrics"], _) if get => metrics(&state),
        (_, Some((m, _, ""))) if get => reply(
            200,
            &json!({
                "name": m,
                "versions": [state.name],
                "platform": "switchyard-fault-backend",
                "inputs": [{ "name": "x", "datatype": "FP32", "shape": [-1, -1] }],
                "outputs": [{ "name": "y", "datatype": "FP32", "shape": [-1, -1] }],
            }),
        ),
        (_, Some((_, _, "ready"))) if get => empty(200),
        (_, Some((m, _, "infer"))) if method == Method::POST => {
            let m = m.to_string();
            infer(&state, &m, req).await
        }
        (_, Some((_, _, "infer"))) | (["v2", ..], _) if !get && method != Method::POST => {
            error(405, format!("{method} is not allowed on {path}"))
        }
        _ => error(404, format!("no endpoint {path}")),
    };
    Ok(resp)
}

async fn infer(state: &State, model: &str, req: Request<Incoming>) -> Resp {
    let n = state.infers.fetch_add(1, Ordering::SeqCst) + 1;
    state.in_flight.fetch_add(1, Ordering::SeqCst);
    let _pending = Pending(state);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(400, format!("cannot read the body: {e}")),
    };
    let _slot = Slot::acquire(state).await;
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let every = state.fail_every.load(Ordering::SeqCst);
    let resp = if every > 0 && n.is_multiple_of(every) {
        state.failed.fetch_add(1, Ordering::SeqCst);
        error(500, format!("injected failure: infer request {n} of server {}", state.name))
    } else {
        echo(state, model, &body)
    };
    state.answered.fetch_add(1, Ordering::SeqCst);
    resp
}

/// An execution slot under `capacity`; waiting for it counts as pending.
struct Slot<'a>(&'a State);

impl<'a> Slot<'a> {
    async fn acquire(state: &'a State) -> Slot<'a> {
        let started = std::time::Instant::now();
        state.pending.fetch_add(1, Ordering::SeqCst);
        loop {
            let freed = state.slot_freed.notified();
            let cap = state.capacity.load(Ordering::SeqCst);
            let n = state.executing.load(Ordering::SeqCst);
            if (cap == 0 || n < cap)
                && state.executing.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                break;
            }
            if cap != 0 && n >= cap {
                freed.await;
            }
        }
        state.pending.fetch_sub(1, Ordering::SeqCst);
        state.queue_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::SeqCst);
        Slot(state)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.executing.fetch_sub(1, Ordering::SeqCst);
        self.0.slot_freed.notify_waiters();
    }
}

/// The stand-in for Triton's metrics page: this server's real figures, one
/// series (`model="echo"`, every model it echoes).
fn metrics(state: &State) -> Resp {
    let answered = state.answered.load(Ordering::SeqCst);
    let failed = state.failed.load(Ordering::SeqCst);
    let series = "{model=\"echo\",version=\"1\"}";
    let text = format!(
        "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes\n\
         # TYPE nv_inference_request_success counter\n\
         nv_inference_request_success{series} {}\n\
         # HELP nv_inference_request_failure Number of failed inference requests, all batch sizes\n\
         # TYPE nv_inference_request_failure counter\n\
         nv_inference_request_failure{series} {failed}\n\
         # HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds (includes cached requests)\n\
         # TYPE nv_inference_queue_duration_us counter\n\
         nv_inference_queue_duration_us{series} {}\n\
         # HELP nv_inference_pending_request_count Instantaneous number of pending requests awaiting execution per-model.\n\
         # TYPE nv_inference_pending_request_count gauge\n\
         nv_inference_pending_request_count{series} {}\n",
        answered - failed,
        state.queue_us.load(Ordering::SeqCst),
        state.pending.load(Ordering::SeqCst),
    );
    Response::builder()
        .status(200)
        .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(text)))
        .expect("static parts")
}

fn echo(state: &State, model: &str, body: &[u8]) -> Resp {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return error(400, format!("invalid JSON request: {e}")),
    };
    let Some(input) = req["inputs"].as_array().and_then(|a| a.first()) else {
        return error(400, "the request has no inputs");
    };
    for field in ["shape", "datatype", "data"] {
        if input.get(field).is_none() {
            return error(400, format!("input has no `{field}`"));
        }
    }
    let mut out = json!({
        "model_name": model,
        "model_version": state.name,
        "outputs": [{
            "name": "y",
            "shape": input["shape"],
            "datatype": input["datatype"],
            "data": input["data"],
        }],
    });
    if let Some(id) = req.get("id") {
        out["id"] = id.clone();
    }
    reply(200, &out)
}
