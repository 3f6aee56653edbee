//! Dynamic batching through the built `switchyard` binary, over sockets:
//! correctness under concurrency for the embedded ONNX Runtime and a real
//! MLServer (every caller gets exactly its unbatched answer), mixed shapes in
//! flight, a full queue, deadlines while a batch runs, priority order,
//! cancellation and backend-error fan-out.
//!
//! Queue-policy tests use a gated V2 backend defined here: it records every
//! call it receives and answers only when the test opens its gate, so "a batch
//! is running" is a fact the test controls rather than a timing it hopes for.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::{dead_address, repo_root, MlServer, Resp, Switchyard};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

const BATCH_HEADER: &str = "x-switchyard-batch-size";
const FORCE: &str = "x-switchyard-variant";
/// Batched answers may differ from unbatched ones by float summation order
/// inside the backend's GEMM; a neighbour's answer differs by far more.
const TOLERANCE: f32 = 1e-6;

/// Distinct input rows: request `seed` gets values no other seed has.
fn rows_data(rows: usize, width: usize, seed: usize) -> Vec<f32> {
    (0..rows * width).map(|i| ((seed * 7919 + i * 31) as f32 * 0.0137).sin() * 3.0 + seed as f32 * 1e-3).collect()
}

fn infer_body(input: &str, rows: usize, width: usize, seed: usize, params: Option<Value>) -> String {
    let mut v = json!({
        "id": format!("r{seed}"),
        "inputs": [{"name": input, "shape": [rows, width], "datatype": "FP32", "data": rows_data(rows, width, seed)}],
    });
    if let Some(p) = params {
        v["parameters"] = p;
    }
    v.to_string()
}

/// The first output's values, shape and the batch size header of a 200 answer.
fn answer(r: &Resp, what: &str) -> (Vec<f32>, Value, Option<usize>) {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let v = r.json();
    let out = &v["outputs"][0];
    let data = out["data"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no data in {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect();
    let batch = r.header(BATCH_HEADER).map(|h| h.parse().unwrap_or_else(|_| panic!("{BATCH_HEADER}: {h}")));
    (data, out["shape"].clone(), batch)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One request of a concurrency test: which model, its input and rows.
#[derive(Clone)]
struct Call {
    model: &'static str,
    input: &'static str,
    width: usize,
    rows: usize,
    seed: usize,
}

impl Call {
    fn path(&self) -> String {
        format!("/v2/models/{}/infer", self.model)
    }
    fn body(&self) -> String {
        infer_body(self.input, self.rows, self.width, self.seed, None)
    }
}

/// Each call's answer from the unbatched variant `plain`, a few at a time.
async fn unbatched_answers(sy: &Switchyard, calls: &[Call]) -> Vec<Vec<f32>> {
    let mut out = vec![Vec::new(); calls.len()];
    for chunk in (0..calls.len()).collect::<Vec<_>>().chunks(8) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let (client, url, body, c) =
                (sy.client.clone(), format!("{}{}", sy.http_url(), calls[i].path()), calls[i].body(), calls[i].clone());
            tasks.push(tokio::spawn(async move {
                let r = client.post(&url, &[(FORCE, "plain")], body).await;
                let (data, _, batch) = answer(&r, &format!("unbatched {} seed {}", c.model, c.seed));
                assert_eq!(batch, None, "the plain variant does not batch");
                data
            }));
        }
        for (&i, t) in chunk.iter().zip(tasks) {
            out[i] = t.await.expect("task");
        }
    }
    out
}

/// Sends every call at once to the batched variant; checks each answer against
/// its unbatched one and returns the batch sizes seen.
async fn all_at_once_match(sy: &Switchyard, calls: &[Call], want: &[Vec<f32>], max_batch: usize) -> Vec<usize> {
    let tasks: Vec<_> = calls
        .iter()
        .map(|c| {
            let (client, url, body, c) =
                (sy.client.clone(), format!("{}{}", sy.http_url(), c.path()), c.body(), c.clone());
            tokio::spawn(async move {
                let r = client.post(&url, &[], body).await;
                (c, r)
            })
        })
        .collect();
    let mut sizes = Vec::new();
    let mut worst = 0f32;
    for (t, want) in tasks.into_iter().zip(want) {
        let (c, r) = t.await.expect("task");
        let what = format!("batched {} rows {} seed {}", c.model, c.rows, c.seed);
        assert_eq!(r.header(FORCE), Some("batched"), "{what}");
        let (got, shape, batch) = answer(&r, &what);
        assert_eq!(r.json()["id"], format!("r{}", c.seed), "{what}: another request's id");
        assert_eq!(shape[0], c.rows, "{what}: shape {shape}");
        let diff = max_abs_diff(&got, want);
        assert!(diff <= TOLERANCE, "{what}: differs from its unbatched answer by {diff}:\n{got:?}\n{want:?}");
        worst = worst.max(diff);
        let batch = batch.unwrap_or_else(|| panic!("{what}: no {BATCH_HEADER}"));
        assert!(batch >= c.rows, "{what}: ran in a batch of {batch} rows");
        assert!(batch <= max_batch.max(c.rows), "{what}: batch of {batch} rows over the maximum");
        sizes.push(batch);
    }
    eprintln!("largest batched-vs-unbatched difference: {worst:e}");
    sizes
}

/// A route `model` with two variants on `backend` at `version`: `batched` (all
/// keyless traffic) and `plain` (weight 0, reached with the override header).
fn batched_and_plain(model: &str, backend: &str, version: &str, batching: &str) -> String {
    format!(
        "  {model}:\n    variants:\n      - {{name: batched, backend: {backend}, version: {version}, weight: 1, batching: {batching}}}\n      - {{name: plain, backend: {backend}, version: {version}, weight: 0}}\n"
    )
}

const BATCHING: &str = "{max_batch_size: 32, max_queue_delay: 2ms}";

fn embedded_config() -> String {
    format!(
        "backends:\n  local:\n    kind: onnx\n    repository: {}\n    version_policy: {{all: true}}\n    warmup: 1\nmodels:\n{}{}",
        repo_root().join("examples/models").display(),
        batched_and_plain("mlp", "local", "1", BATCHING),
        batched_and_plain("mlp_heavy", "local", "1", BATCHING),
    )
}

fn mlp_calls(n: usize, rows: impl Fn(usize) -> usize) -> Vec<Call> {
    (0..n).map(|i| Call { model: "mlp", input: "input", width: 16, rows: rows(i), seed: i }).collect()
}

/// Metrics of one batch queue.
fn queue_labels<'a>(model: &'a str, version: &'a str, backend: &'a str) -> [(&'a str, &'a str); 3] {
    [("model", model), ("version", version), ("backend", backend)]
}

/// 1000 concurrent requests with distinct inputs through the embedded runtime:
/// each gets exactly its own rows back, and batches did form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_thousand_concurrent_requests_each_get_their_unbatched_answer() {
    let sy = Switchyard::config(&embedded_config()).start().await;
    let calls = mlp_calls(1000, |_| 1);
    let want = unbatched_answers(&sy, &calls).await;
    let sizes = all_at_once_match(&sy, &calls, &want, 32).await;
    assert!(sizes.iter().any(|s| *s > 1), "no request ran in a batch of more than one: {sizes:?}");
    let m = sy.metrics().await;
    let q = queue_labels("mlp", "1", "local");
    let batches = m.value("switchyard_batch_size_count", &q);
    assert!((1.0..1000.0).contains(&batches), "{batches} batches for 1000 requests:\n{}", m.0);
    assert_eq!(m.value("switchyard_batch_size_sum", &q), 1000.0, "rows sent in batches");
    assert_eq!(
        m.value("switchyard_requests_total", &[("model", "mlp"), ("variant", "batched"), ("code", "200")]),
        1000.0
    );
    assert_eq!(m.value("switchyard_batch_queue_seconds_count", &q), 1000.0);
    assert_eventually!(
        sy.metrics().await.get("switchyard_batch_queue_depth", &q) == Some(0.0),
        "queue depth never back to 0"
    );
}

/// Requests of 1, 2 and 3 rows and of another model, in flight at once; one
/// larger than `max_batch_size` runs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_shapes_and_models_in_flight_all_answer_correctly() {
    let sy = Switchyard::config(&embedded_config()).start().await;
    let mut calls = Vec::new();
    for i in 0..150 {
        calls.push(if i % 4 == 3 {
            Call { model: "mlp_heavy", input: "input", width: 256, rows: 1 + i % 2, seed: i }
        } else {
            Call { model: "mlp", input: "input", width: 16, rows: 1 + i % 3, seed: i }
        });
    }
    calls.push(Call { model: "mlp", input: "input", width: 16, rows: 40, seed: 1000 });
    let want = unbatched_answers(&sy, &calls).await;
    let sizes = all_at_once_match(&sy, &calls, &want, 32).await;
    assert_eq!(sizes.last(), Some(&40), "a request over max_batch_size runs alone, unsplit");
    let m = sy.metrics().await;
    for model in ["mlp", "mlp_heavy"] {
        let rows: usize = calls.iter().filter(|c| c.model == model).map(|c| c.rows).sum();
        let q = queue_labels(model, "1", "local");
        assert_eq!(m.value("switchyard_batch_size_sum", &q), rows as f64, "{model}: rows sent in batches\n{}", m.0);
        let n = calls.iter().filter(|c| c.model == model).count() as f64;
        assert!(m.value("switchyard_batch_size_count", &q) <= n, "{model}");
    }
}

/// The same against a real MLServer (`mlp` v1), plus its `slow` model (200 ms a
/// call) for a full queue and a request deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_batching_correctness_queue_full_and_deadline() {
    let ml = MlServer::start().await;
    let sy = Switchyard::config(&format!(
        "backends:\n  ml:\n    kind: v2-http\n    endpoints: [\"{ml}\"]\n  ml_full:\n    kind: v2-http\n    endpoints: [\"{ml}\"]\n  ml_deadline:\n    kind: v2-http\n    endpoints: [\"{ml}\"]\nmodels:\n{}  full:\n    variants:\n      - {{name: main, backend: ml_full, model: slow, batching: {{max_batch_size: 1, max_queue_size: 2, max_concurrent_batches: 1}}}}\n  deadline:\n    variants:\n      - {{name: main, backend: ml_deadline, model: slow, batching: {{max_batch_size: 1, max_concurrent_batches: 1}}}}\n",
        batched_and_plain("mlp", "ml", "1", BATCHING),
        ml = ml.url()
    ))
    .start()
    .await;

    // --- 1000 concurrent distinct requests: every answer is the unbatched one.
    let calls = mlp_calls(1000, |_| 1);
    let want = unbatched_answers(&sy, &calls).await;
    let sizes = all_at_once_match(&sy, &calls, &want, 32).await;
    assert!(sizes.iter().any(|s| *s > 1), "no request ran in a batch of more than one");
    let m = sy.metrics().await;
    let q = queue_labels("mlp", "1", "ml");
    let batches = m.value("switchyard_batch_size_count", &q);
    assert!((1.0..1000.0).contains(&batches), "{batches} batches for 1000 requests:\n{}", m.0);
    assert_eq!(m.value("switchyard_batch_size_sum", &q), 1000.0);

    // --- Queue full: one running, two waiting, the rest refused at once with Retry-After.
    let body = infer_body("input", 1, 16, 1, None);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (client, url, body) =
                (sy.client.clone(), format!("{}/v2/models/full/infer", sy.http_url()), body.clone());
            tokio::spawn(async move { client.post(&url, &[], body).await })
        })
        .collect();
    let mut statuses = HashMap::new();
    for t in tasks {
        let r = t.await.expect("task");
        match r.status {
            200 => {}
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
                assert!(r.error().contains("queue is full"), "{}", r.text());
            }
            other => panic!("queue full: unexpected {other}: {}", r.text()),
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert!(statuses.get(&503).is_some_and(|n| *n >= 1), "nothing was refused: {statuses:?}");
    assert!(statuses.get(&200).is_some_and(|n| *n >= 1), "nothing succeeded: {statuses:?}");
    let m = sy.metrics().await;
    assert_eq!(
        m.value(
            "switchyard_batch_rejections_total",
            &[("model", "slow"), ("backend", "ml_full"), ("reason", "queue_full")]
        ),
        f64::from(statuses[&503]),
        "{}",
        m.0
    );

    // --- Deadline: the first request occupies the backend; the second's 20 ms `timeout` expires in the queue.
    let dq = queue_labels("slow", "", "ml_deadline");
    let first = {
        let (client, url, body) =
            (sy.client.clone(), format!("{}/v2/models/deadline/infer", sy.http_url()), body.clone());
        tokio::spawn(async move { client.post(&url, &[], body).await })
    };
    assert_eventually!(
        sy.metrics().await.value("switchyard_batch_queue_seconds_count", &dq) == 1.0,
        "the first request was never sent to MLServer"
    );
    let r =
        sy.post("/v2/models/deadline/infer", &[], infer_body("input", 1, 16, 2, Some(json!({"timeout": 20000})))).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.error().contains("deadline"), "{}", r.text());
    let r = first.await.expect("task");
    assert_eq!(r.status, 200, "{}", r.text());
    let m = sy.metrics().await;
    let timeouts: Vec<(&str, &str)> = dq.iter().copied().chain([("reason", "timeout")]).collect();
    assert_eq!(m.value("switchyard_batch_rejections_total", &timeouts), 1.0, "{}", m.0);
    assert_eq!(m.value("switchyard_batch_size_count", &dq), 1.0, "the expired request was sent");
}

// ---------------------------------------------------------------------------
// A gated V2 backend.

/// One call the gated backend received: its first input's values and rows.
#[derive(Clone, Debug)]
struct Received {
    rows: usize,
    values: Vec<f32>,
}

/// A KServe V2 server on a loopback port: `POST .../infer` records the call,
/// waits for a gate permit, then answers `y = 2 × x` (or a 500 when failing).
/// Any GET is a 200 with an empty extension list (so Switchyard sends JSON).
struct GatedBackend {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    gate: Arc<Semaphore>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl GatedBackend {
    async fn start() -> GatedBackend {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let gate = Arc::new(Semaphore::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (rec, g, f) = (received.clone(), gate.clone(), fail.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let (rec, g, f) = (rec.clone(), g.clone(), f.clone());
                tokio::spawn(async move {
                    let Some((head, request)) = common::read_request(&mut sock).await else { return };
                    let (status, body) = if head.starts_with("POST ") {
                        let req: Value = serde_json::from_slice(&request).unwrap_or(Value::Null);
                        let x = &req["inputs"][0];
                        let mut values = Vec::new();
                        flatten(&x["data"], &mut values);
                        let rows = x["shape"][0].as_u64().unwrap_or(0) as usize;
                        rec.lock().unwrap().push(Received { rows, values: values.clone() });
                        g.acquire().await.expect("gate").forget();
                        if f.load(std::sync::atomic::Ordering::SeqCst) {
                            (500, json!({"error": "model exploded"}))
                        } else {
                            let y: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
                            (
                                200,
                                json!({
                                    "model_name": "gated", "id": req["id"],
                                    "outputs": [{"name": "y", "datatype": "FP32", "shape": x["shape"], "data": y}],
                                }),
                            )
                        }
                    } else {
                        (200, json!({"name": "gated", "version": "1", "extensions": []}))
                    };
                    let body = body.to_string();
                    let reason = if status == 200 { "OK" } else { "Internal Server Error" };
                    let resp = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        GatedBackend { port, received, gate, fail, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Lets every call, present and future, answer.
    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

impl Drop for GatedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn flatten(v: &Value, out: &mut Vec<f32>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
        Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN) as f32),
        _ => {}
    }
}

/// A switchyard whose model `gated` batches onto the gated backend with `batching`.
async fn gated_switchyard(backend: &GatedBackend, batching: &str) -> Switchyard {
    Switchyard::config(&format!(
        "backends:\n  gate:\n    kind: v2-http\n    endpoints: [\"{}\"]\n    binary: never\nmodels:\n  gated:\n    variants:\n      - {{name: main, backend: gate, batching: {batching}}}\n",
        backend.url()
    ))
    .start()
    .await
}

/// A request of one row `[value, value + 0.5]` to `gated`, with optional parameters.
fn gated_body(value: f32, params: Option<Value>) -> String {
    let x = json!({"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [value, value + 0.5]});
    let mut v = json!({"id": format!("g{value}"), "inputs": [x]});
    if let Some(p) = params {
        v["parameters"] = p;
    }
    v.to_string()
}

fn spawn_post(sy: &Switchyard, body: String) -> JoinHandle<Resp> {
    let (client, url) = (sy.client.clone(), format!("{}/v2/models/gated/infer", sy.http_url()));
    tokio::spawn(async move { client.post(&url, &[], body).await })
}

const GATED_QUEUE: [(&str, &str); 3] = [("model", "gated"), ("version", ""), ("backend", "gate")];

fn rejections(reason: &'static str) -> Vec<(&'static str, &'static str)> {
    GATED_QUEUE.iter().copied().chain([("reason", reason)]).collect()
}

async fn queue_depth(sy: &Switchyard) -> f64 {
    sy.metrics().await.value("switchyard_batch_queue_depth", &GATED_QUEUE)
}

/// Starts a request and waits until the gated backend holds it: from then on a batch is running.
async fn occupy(sy: &Switchyard, backend: &GatedBackend, value: f32) -> JoinHandle<Resp> {
    let before = backend.received().len();
    let t = spawn_post(sy, gated_body(value, None));
    assert_eventually!(backend.received().len() == before + 1, "the first request never reached the backend");
    t
}

/// A full queue refuses at once with 503 and `Retry-After`; the admitted requests all succeed.
#[tokio::test]
async fn a_full_queue_refuses_at_once_with_retry_after() {
    let backend = GatedBackend::start().await;
    let sy = gated_switchyard(&backend, "{max_batch_size: 1, max_queue_size: 2, max_concurrent_batches: 1}").await;
    let running = occupy(&sy, &backend, 0.0).await;
    let mut queued = Vec::new();
    for value in [1.0, 2.0] {
        queued.push(spawn_post(&sy, gated_body(value, None)));
        assert_eventually!(queue_depth(&sy).await == value as f64, "request {value} never queued");
    }
    for i in 0..8 {
        let r = sy.post("/v2/models/gated/infer", &[], gated_body(10.0 + i as f32, None)).await;
        assert_eq!(r.status, 503, "request {i} over a full queue: {}", r.text());
        assert_eq!(r.header("retry-after"), Some("1"), "{:?}", r.headers);
        assert!(r.error().contains("queue is full"), "{}", r.text());
    }
    assert!(!running.is_finished(), "the gate is closed: the first request cannot have finished");
    assert_eq!(sy.metrics().await.value("switchyard_batch_rejections_total", &rejections("queue_full")), 8.0);
    backend.open();
    for (i, t) in std::iter::once(running).chain(queued).enumerate() {
        let r = t.await.expect("task");
        let (y, _, _) = answer(&r, "admitted");
        assert_eq!(y, vec![2.0 * i as f32, 2.0 * i as f32 + 1.0]);
    }
    let sent: Vec<f32> = backend.received().iter().map(|r| r.values[0]).collect();
    assert_eq!(sent, vec![0.0, 1.0, 2.0], "refused requests reached the backend");
}

/// A queued request's deadline — Triton's `timeout` parameter (µs), or the
/// configured default — answers 504 while the running batch is still running.
#[tokio::test]
async fn a_deadline_fires_while_a_batch_is_still_running() {
    let backend = GatedBackend::start().await;
    let sy = gated_switchyard(&backend, "{max_batch_size: 1, max_concurrent_batches: 1, default_timeout: 30ms}").await;
    // The running request sets a long deadline of its own, so the default does not touch it.
    let running = {
        let t = spawn_post(&sy, gated_body(0.0, Some(json!({"timeout": 600_000_000u64}))));
        assert_eventually!(backend.received().len() == 1, "the first request never reached the backend");
        t
    };
    let r = sy.post("/v2/models/gated/infer", &[], gated_body(1.0, Some(json!({"timeout": 20000})))).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.error().contains("deadline"), "{}", r.text());
    assert!(!running.is_finished(), "the 504 came only after the running batch finished");
    // No `timeout` parameter: the configured default applies.
    let r = sy.post("/v2/models/gated/infer", &[], gated_body(2.0, None)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.error().contains("30ms"), "{}", r.text());
    assert!(!running.is_finished());
    assert_eq!(sy.metrics().await.value("switchyard_batch_rejections_total", &rejections("timeout")), 2.0);
    let r = sy.post("/v2/models/gated/infer", &[], gated_body(3.0, Some(json!({"timeout": "soon"})))).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("timeout"), "{}", r.text());
    backend.open();
    let (y, _, _) = answer(&running.await.expect("task"), "running");
    assert_eq!(y, vec![0.0, 1.0]);
    assert_eq!(backend.received().len(), 1, "an expired request was sent: {:?}", backend.received());
    let m = sy.metrics().await;
    assert_eq!(m.value("switchyard_requests_total", &[("model", "gated"), ("code", "504")]), 2.0, "{}", m.0);
}

/// Priority 1 is served before priority 2; requests without one get `default_priority`;
/// out-of-range or malformed priorities are 400s.
#[tokio::test]
async fn priority_levels_are_served_in_order() {
    let backend = GatedBackend::start().await;
    let sy = gated_switchyard(
        &backend,
        "{max_batch_size: 1, max_concurrent_batches: 1, priority_levels: 2, default_priority: 2}",
    )
    .await;
    for (bad, why) in [(json!(3), "3"), (json!("high"), "high"), (json!(-1), "-1")] {
        let r = sy.post("/v2/models/gated/infer", &[], gated_body(9.0, Some(json!({"priority": bad})))).await;
        assert_eq!(r.status, 400, "priority {why}: {}", r.text());
        assert!(r.error().contains("priority"), "{}", r.text());
    }
    assert!(backend.received().is_empty(), "a request with a bad priority reached the backend");

    let running = occupy(&sy, &backend, 0.0).await;
    let mut waiting = Vec::new();
    for (value, priority) in [(10.0, Some(2)), (11.0, Some(2)), (20.0, Some(1)), (12.0, None), (21.0, Some(1))] {
        let params = priority.map(|p: u64| json!({"priority": p}));
        waiting.push(spawn_post(&sy, gated_body(value, params)));
        let n = waiting.len() as f64;
        assert_eventually!(queue_depth(&sy).await == n, "request {value} never queued");
    }
    backend.open();
    for t in std::iter::once(running).chain(waiting) {
        assert_eq!(t.await.expect("task").status, 200);
    }
    let order: Vec<f32> = backend.received().iter().map(|r| r.values[0]).collect();
    assert_eq!(order, vec![0.0, 20.0, 21.0, 10.0, 11.0, 12.0], "backend call order");
}

/// A client that hangs up while its request waits in the queue: the request is
/// dropped (counted as cancelled, answered 499) and never reaches the backend.
#[tokio::test]
async fn a_client_that_disconnects_while_queued_is_never_sent() {
    use tokio::io::AsyncWriteExt;
    let backend = GatedBackend::start().await;
    let sy = gated_switchyard(&backend, "{max_batch_size: 8, max_concurrent_batches: 1}").await;
    let running = occupy(&sy, &backend, 0.0).await;

    let body = gated_body(99.0, None);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.expect("connect");
    let head = format!(
        "POST /v2/models/gated/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    sock.write_all(head.as_bytes()).await.expect("write");
    sock.write_all(body.as_bytes()).await.expect("write");
    assert_eventually!(queue_depth(&sy).await == 1.0, "the request never queued");
    drop(sock);
    assert_eventually!(
        sy.metrics().await.value("switchyard_requests_total", &[("model", "gated"), ("code", "499")]) == 1.0,
        "the hang-up was not noticed"
    );
    // A companion that stays: it runs after the first, without the one that left.
    let stayer = spawn_post(&sy, gated_body(7.0, None));
    assert_eventually!(
        sy.metrics().await.value("switchyard_batch_rejections_total", &rejections("cancelled")) == 1.0,
        "the cancelled request is not counted:\n{}",
        sy.metrics().await.0
    );
    backend.open();
    assert_eq!(running.await.expect("task").status, 200);
    let (y, _, batch) = answer(&stayer.await.expect("task"), "stayer");
    assert_eq!(y, vec![14.0, 15.0]);
    assert_eq!(batch, Some(1), "the departed request shared the stayer's batch");
    let sent: Vec<f32> = backend.received().iter().flat_map(|r| r.values.clone()).collect();
    assert_eq!(sent, vec![0.0, 0.5, 7.0, 7.5], "the departed request reached the backend");
}

/// A backend error fails every request of the batch with that error.
#[tokio::test]
async fn a_backend_error_fails_every_request_of_the_batch() {
    let backend = GatedBackend::start().await;
    let sy = gated_switchyard(&backend, "{max_batch_size: 32, max_concurrent_batches: 1}").await;
    backend.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let running = occupy(&sy, &backend, 0.0).await;
    let batch: Vec<_> = (1..=4).map(|i| spawn_post(&sy, gated_body(i as f32, None))).collect();
    assert_eventually!(queue_depth(&sy).await == 4.0, "four requests never queued");
    backend.open();
    for t in std::iter::once(running).chain(batch) {
        let r = t.await.expect("task");
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.error().contains("model exploded"), "the backend's error should reach every caller: {}", r.text());
    }
    let calls = backend.received();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].rows, 4, "the four queued requests should have formed one batch: {calls:?}");
}

/// A batched variant whose backend is down: every request gets a 502 naming the endpoint.
#[tokio::test]
async fn a_backend_that_is_down_fails_every_batched_request_with_502() {
    let dead = dead_address();
    let sy = Switchyard::config(&format!(
        "backends:\n  down:\n    kind: v2-http\n    endpoints: [\"http://{dead}\"]\n    connect_timeout: 500ms\nmodels:\n  gated:\n    variants:\n      - {{name: main, backend: down, batching: {{max_batch_size: 32, max_queue_delay: 20ms}}}}\n"
    ))
    .start()
    .await;
    let tasks: Vec<_> = (0..20).map(|i| spawn_post(&sy, gated_body(i as f32, None))).collect();
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.error().contains(&dead.to_string()), "the error should name the endpoint: {}", r.text());
    }
    let m = sy.metrics().await;
    assert_eq!(m.value("switchyard_batch_size_sum", &[("model", "gated"), ("backend", "down")]), 20.0, "{}", m.0);
    assert_eq!(m.value("switchyard_requests_total", &[("model", "gated"), ("code", "502")]), 20.0);
}

// ---------------------------------------------------------------------------
// Every datatype through merge and split, and versioned requests.

/// Distinct rows of every `dtypes` input for request `seed` (Identity model: the outputs equal them).
fn dtypes_inputs(rows: usize, seed: usize) -> Vec<(&'static str, &'static str, Vec<Value>)> {
    let n = rows * 2;
    let k = |i: usize| seed * 16 + i;
    vec![
        ("f32", "FP32", (0..n).map(|i| json!(k(i) as f32 + 0.25)).collect()),
        // Dyadic fractions: exact in any float parser, so only merge and split are tested here.
        ("f64", "FP64", (0..n).map(|i| json!(k(i) as f64 * 0.125 + 1e9)).collect()),
        ("f16", "FP16", (0..n).map(|i| json!((k(i) % 1024) as f64 + 0.5)).collect()),
        ("i8", "INT8", (0..n).map(|i| json!((k(i) % 256) as i64 - 128)).collect()),
        ("i16", "INT16", (0..n).map(|i| json!(k(i) as i64 - 30000)).collect()),
        ("i32", "INT32", (0..n).map(|i| json!(k(i) as i64 * 1000 - 2_000_000_000)).collect()),
        ("i64", "INT64", (0..n).map(|i| json!(k(i) as i64 * 1_000_000_007 - (1i64 << 62))).collect()),
        ("u8", "UINT8", (0..n).map(|i| json!(k(i) % 256)).collect()),
        ("b", "BOOL", (0..n).map(|i| json!((k(i) * 7) % 3 == 0)).collect()),
        ("s", "BYTES", (0..rows).map(|i| json!("s".repeat((seed + i) % 5) + &format!("#{seed}.{i}"))).collect()),
    ]
}

/// Requests of 1-3 rows to the Identity model of every datatype, in flight at
/// once through one batch queue: each gets back exactly its own values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_survives_merge_and_split() {
    let sy = Switchyard::config(&format!(
        "backends:\n  t:\n    kind: onnx\n    repository: {}\n    warmup: 1\n    models: [dtypes]\nmodels:\n  dtypes:\n    variants:\n      - {{name: batched, backend: t, batching: {BATCHING}}}\n",
        repo_root().join("tests/models").display()
    ))
    .start()
    .await;
    let tasks: Vec<_> = (0..120)
        .map(|seed| {
            let rows = 1 + seed % 3;
            let inputs = dtypes_inputs(rows, seed);
            let body = json!({
                "id": format!("d{seed}"),
                "inputs": inputs.iter().map(|(n, dt, data)| json!({
                    "name": n, "datatype": dt, "shape": [rows, if *n == "s" { 1 } else { 2 }], "data": data,
                })).collect::<Vec<_>>(),
            })
            .to_string();
            let (client, url) = (sy.client.clone(), format!("{}/v2/models/dtypes/infer", sy.http_url()));
            tokio::spawn(async move { (seed, rows, inputs, client.post(&url, &[], body).await) })
        })
        .collect();
    let mut largest = 0;
    for t in tasks {
        let (seed, rows, inputs, r) = t.await.expect("task");
        assert_eq!(r.status, 200, "request {seed}: {}", r.text());
        let batch: usize = r.header(BATCH_HEADER).expect("batch header").parse().unwrap();
        largest = largest.max(batch);
        let v = r.json();
        assert_eq!(v["id"], format!("d{seed}"));
        let outs = v["outputs"].as_array().expect("outputs");
        for ((n, dt, data), o) in inputs.iter().zip(outs) {
            assert_eq!(o["name"], format!("{n}_out"), "request {seed}");
            assert_eq!(o["datatype"], *dt);
            assert_eq!(o["shape"][0], rows, "request {seed} {n}: {o}");
            let got = o["data"].as_array().unwrap_or_else(|| panic!("{o}"));
            let same = got.len() == data.len()
                && got.iter().zip(data).all(|(a, b)| match *n {
                    "f32" | "f16" => a.as_f64().map(|x| x as f32) == b.as_f64().map(|x| x as f32),
                    _ => a == b,
                });
            assert!(same, "request {seed} (batch of {batch}) input {n}: sent {data:?}, got {got:?}");
        }
    }
    assert!(largest > 1, "nothing was batched");
}

/// A batched variant that pins no version: requests that name a version
/// (tritonclient's `model_version`) are batched like those that do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_a_version_are_batched_too() {
    let sy = Switchyard::config(&format!(
        "backends:\n  local:\n    kind: onnx\n    repository: {}\n    version_policy: {{all: true}}\n    warmup: 1\n    models: [mlp]\nmodels:\n  mlp:\n    variants:\n      - {{name: main, backend: local, batching: {BATCHING}}}\n",
        repo_root().join("examples/models").display()
    ))
    .start()
    .await;
    for path in ["/v2/models/mlp/infer", "/v2/models/mlp/versions/1/infer"] {
        let tasks: Vec<_> = (0..200)
            .map(|seed| {
                let (client, url, body) =
                    (sy.client.clone(), format!("{}{path}", sy.http_url()), infer_body("input", 1, 16, seed, None));
                tokio::spawn(async move { client.post(&url, &[], body).await })
            })
            .collect();
        let mut headers = Vec::new();
        for t in tasks {
            let r = t.await.expect("task");
            assert_eq!(r.status, 200, "{path}: {}", r.text());
            headers.push(r.header(BATCH_HEADER).map(str::to_string));
        }
        assert!(
            headers.iter().all(|h| h.is_some()),
            "{path}: {} of 200 requests bypassed the batch queue",
            headers.iter().filter(|h| h.is_none()).count()
        );
    }
}
