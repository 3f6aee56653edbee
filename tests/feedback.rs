//! Feedback (prediction quality from ground truth) through the built
//! `switchyard` binary: `switchyard.ml.v1.Feedback/Submit` over gRPC with a
//! tonic client generated from `runtime/proto/switchyard_ml.proto` (the same
//! counts as the HTTP API, its error mapping and its permission), and fleet
//! mode's answer store in a real `redis-server` shared by two Switchyard
//! processes: feedback sent to either replica joins answers the other served,
//! exactly once fleet-wide; both show the same quality; with Redis gone both
//! keep serving and join what they hold themselves, and say so.
//!
//! The backend is `common::fault::FaultBackend`, an echo: output `y` is the
//! input, so a classification's prediction is the argmax of the input row.
//! Nothing sleeps to wait: conditions are polled with a patience limit.

mod common;

use std::time::{Duration, Instant};

use common::fault::FaultBackend;
use common::redis::Redis;
use common::{HttpClient, Switchyard, PATIENCE, POLL};
use serde_json::{json, Value};
use switchyard_runtime::codec::grpc::ml_pb as pb;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

type Client = pb::feedback_client::FeedbackClient<Channel>;

const JSON: (&str, &str) = ("content-type", "application/json");

async fn grpc(port: u16) -> Client {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the gRPC listener on {port}: {e}"));
    Client::new(ch)
}

/// `m`: quality monitored (classification on the echo's `y`), one variant.
fn config(backend: &FaultBackend, extra: &str) -> String {
    format!(
        "backends:\n  echo: {{kind: v2-http, endpoints: [\"{}\"]}}\nmodels:\n  m:\n    monitoring:\n      quality: {{task: classification, output: y, window: 100, ttl: 90s}}\n    variants:\n      - {{name: v1, backend: echo, weight: 100}}\n  plain:\n    variants:\n      - {{name: v1, backend: echo, weight: 100}}\n{extra}",
        backend.url()
    )
}

/// One inference with id `id` whose predicted class is `class` (of 4).
async fn infer(sy: &Switchyard, id: &str, class: usize) {
    let mut row = [0.0f32; 4];
    row[class] = 1.0;
    let body = json!({"id": id, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": row}]});
    let r = sy.post("/v2/models/m/infer", &[JSON], body.to_string()).await;
    assert_eq!(r.status, 200, "infer {id}: {}", r.text());
    assert_eq!(r.json()["id"], id);
}

async fn feedback_http(sy: &Switchyard, items: Value) -> Value {
    let r = sy.post("/ml/models/m/feedback", &[JSON], json!({ "feedback": items }).to_string()).await;
    assert_eq!(r.status, 200, "feedback: {}", r.text());
    r.json()
}

fn item(id: &str, label: &[f64]) -> pb::FeedbackItem {
    pb::FeedbackItem { request_id: id.to_string(), label: label.to_vec() }
}

async fn submit(
    c: &mut Client,
    model: &str,
    items: Vec<pb::FeedbackItem>,
) -> Result<pb::SubmitResponse, tonic::Status> {
    c.submit(pb::SubmitRequest { model: model.to_string(), feedback: items }).await.map(|r| r.into_inner())
}

/// The quality block of `m`'s only variant in `GET /ml/models/m/metrics`.
async fn quality(sy: &Switchyard) -> Value {
    let r = HttpClient::new().get(&format!("{}/ml/models/m/metrics", sy.control_url())).await;
    assert_eq!(r.status, 200, "metrics: {}", r.text());
    let v = r.json();
    let variants = v["variants"].as_array().cloned().unwrap_or_default();
    variants.into_iter().find(|x| x["name"] == "v1").map(|x| x["quality"].clone()).unwrap_or(Value::Null)
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + PATIENCE;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

async fn metric(sy: &Switchyard, name: &str, labels: &[(&str, &str)]) -> f64 {
    sy.metrics().await.get(name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn feedback_over_grpc_answers_what_http_answers() {
    let backend = FaultBackend::start("b1").await;
    let sy = Switchyard::config(&config(&backend, "")).start().await;
    for (i, class) in [1, 2, 3, 0].iter().enumerate() {
        infer(&sy, &format!("g{i}"), *class).await;
    }
    let mut c = grpc(sy.grpc_port).await;
    // g0 right, g1 wrong, g2 a label of two rows for a one-row answer, "nope" never served.
    let r = submit(
        &mut c,
        "m",
        vec![item("g0", &[1.0]), item("g1", &[0.0]), item("g2", &[1.0, 2.0]), item("nope", &[1.0])],
    )
    .await
    .expect("submit");
    assert_eq!((r.model.as_str(), r.joined, r.store.as_str()), ("m", 2, "local"));
    assert_eq!(r.unknown, vec!["nope".to_string()]);
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].request_id, "g2");
    assert!(r.rejected[0].error.contains("2 labels for an answer of 1 rows"), "{:?}", r.rejected);
    assert_eq!(r.variants.len(), 1);
    assert_eq!((r.variants[0].variant.as_str(), r.variants[0].joined), ("v1", 2));
    assert_eq!(r.variants[0].version, "b1", "the echo names itself as the version");

    // The same batch shape over HTTP gives the same counts: g2 was left for a corrected label.
    let h = feedback_http(&sy, json!([{"request_id": "g2", "label": 3}, {"request_id": "g0", "label": 1}])).await;
    assert_eq!(h["joined"], 1);
    assert_eq!(h["unknown"], json!(["g0"]), "an answer takes feedback once");
    // And g3 over gRPC with a NaN label: rejected as HTTP rejects a non-number.
    let r = submit(&mut c, "m", vec![item("g3", &[f64::NAN])]).await.expect("submit");
    assert_eq!((r.joined, r.rejected.len()), (0, 1));
    assert!(r.rejected[0].error.contains("must be a number"), "{:?}", r.rejected);

    let q = quality(&sy).await;
    assert_eq!(q["labelled"], 3, "{q}");
    assert!((q["classification"]["accuracy"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-9, "{q}");

    // Error mapping: the same statuses as the HTTP API, as gRPC codes.
    let e = submit(&mut c, "", vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("model"), "{}", e.message());
    let e = submit(&mut c, "ghost", vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
    let e = submit(&mut c, "plain", vec![]).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("monitoring.quality"), "{}", e.message());
    let many = (0..10_001).map(|i| item(&format!("x{i}"), &[1.0])).collect();
    let e = submit(&mut c, "m", many).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("feedback") && e.message().contains("10001"), "{}", e.message());
    assert_eq!(metric(&sy, "switchyard_feedback_total", &[("model", "m"), ("outcome", "joined")]).await, 3.0);
}

#[test]
fn a_bad_quality_ttl_is_refused_naming_the_field() {
    let dir = common::TempDir::new("ttl");
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        "backends:\n  echo: {kind: v2-http, endpoints: [\"http://127.0.0.1:1\"]}\nmodels:\n  m:\n    monitoring:\n      quality: {task: classification, output: y, ttl: soon}\n    variants:\n      - {name: v1, backend: echo}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard")).arg("validate").arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("models.m.monitoring.quality.ttl"), "{err}");
}

#[tokio::test]
async fn feedback_over_grpc_and_reference_capture_need_their_permissions() {
    let backend = FaultBackend::start("b1").await;
    let sha = |s: &str| -> String {
        switchyard_proxy::auth::sha256(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let auth = format!(
        "auth:\n  api_keys:\n    - {{principal: feeder, sha256: \"sha256:{}\", permissions: [\"model:m:infer\", \"model:m:feedback\"]}}\n    - {{principal: client, sha256: \"sha256:{}\", permissions: [\"model:m:infer\"]}}\n    - {{principal: ops, sha256: \"sha256:{}\", permissions: [\"control\"]}}\n    - {{principal: owner, sha256: \"sha256:{}\", permissions: [\"control\", \"model:m:admin\"]}}\n",
        sha("feed-key"),
        sha("infer-key"),
        sha("ops-key"),
        sha("owner-key")
    );
    let sy = Switchyard::config(&config(&backend, &auth)).start().await;
    let mut c = grpc(sy.grpc_port).await;
    let call = |key: Option<&str>| {
        let mut req = tonic::Request::new(pb::SubmitRequest { model: "m".into(), feedback: vec![item("a", &[1.0])] });
        if let Some(k) = key {
            req.metadata_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        req
    };
    let e = c.submit(call(None)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    let e = c.submit(call(Some("infer-key"))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    let r = c.submit(call(Some("feed-key"))).await.expect("a principal holding feedback").into_inner();
    assert_eq!(r.unknown, vec!["a".to_string()]);

    // Capturing a drift reference replaces what the model is judged against: `control` is
    // not enough, it takes `model:m:admin` (then `m`, without drift monitoring, is a 409).
    let url = format!("{}/ml/models/m/drift/reference", sy.control_url());
    let capture = || bytes::Bytes::from(json!({"capture": {"samples": 10}}).to_string());
    let r = sy.client.post(&url, &[JSON, ("authorization", "Bearer ops-key")], capture()).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("model:m:admin"), "{}", r.text());
    let r = sy.client.post(&url, &[JSON, ("authorization", "Bearer owner-key")], capture()).await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("no drift monitoring"), "{}", r.text());
}

/// `control.fleet` with a short timeout so a dead Redis is noticed quickly.
fn fleet(redis: &Redis) -> String {
    format!(
        "control:\n  fleet: {{redis: '{}', fleet: fb, poll_interval: 250ms, lease_ttl: 1500ms, timeout: 300ms}}\n",
        redis.url()
    )
}

#[tokio::test]
async fn in_fleet_mode_any_replica_joins_any_replicas_answers_once() {
    let mut redis = Redis::start().await;
    let backend = FaultBackend::start("b1").await;
    let body = config(&backend, &fleet(&redis));
    let a = Switchyard::config(&body).start().await;
    let b = Switchyard::config(&body).start().await;
    // 20 answers from A, 20 from B; prediction = i % 4.
    for i in 0..20 {
        infer(&a, &format!("a{i}"), i % 4).await;
        infer(&b, &format!("b{i}"), i % 4).await;
    }
    for sy in [&a, &b] {
        wait_for("answers written to redis", || async {
            metric(sy, "switchyard_answer_store_total", &[("model", "m"), ("event", "written")]).await >= 20.0
        })
        .await;
    }
    let keys = redis.cli(&["KEYS", "switchyard:fleet:fb:answer:m:*"]).unwrap_or_default();
    assert_eq!(keys.lines().count(), 40, "every answer is in redis: {keys}");
    // With the model's `quality.ttl` (90s).
    let pttl: i64 = redis.cli(&["PTTL", "switchyard:fleet:fb:answer:m:a0"]).and_then(|s| s.parse().ok()).unwrap_or(-3);
    assert!(0 < pttl && pttl <= 90_000, "PTTL {pttl}");

    // A's answers labelled through B (HTTP), B's through A (gRPC): every one joins.
    // Labels: right for even i, wrong for odd i.
    let label = |i: usize| if i.is_multiple_of(2) { (i % 4) as f64 } else { ((i + 1) % 4) as f64 };
    let items: Vec<Value> = (0..20).map(|i| json!({"request_id": format!("a{i}"), "label": label(i)})).collect();
    let r = feedback_http(&b, Value::Array(items.clone())).await;
    assert_eq!((r["joined"].as_u64(), r["store"].as_str()), (Some(20), Some("fleet")), "{r}");
    let mut ca = grpc(a.grpc_port).await;
    let r = submit(&mut ca, "m", (0..20).map(|i| item(&format!("b{i}"), &[label(i)])).collect()).await.unwrap();
    assert_eq!((r.joined, r.store.as_str()), (20, "fleet"), "{r:?}");
    // Each answer takes feedback once, fleet-wide: again through the other replica, all unknown.
    let r = feedback_http(&a, Value::Array(items)).await;
    assert_eq!((r["joined"].as_u64(), r["unknown"].as_array().map(Vec::len)), (Some(0), Some(20)), "{r}");

    // The quality window is the fleet's: both replicas show all 40 labels, accuracy 0.5.
    for sy in [&a, &b] {
        wait_for("the shared quality window", || async {
            let q = quality(sy).await;
            q["labelled"] == 40 && q["classification"]["accuracy"].as_f64() == Some(0.5)
        })
        .await;
    }
    assert_eq!(metric(&a, "switchyard_answer_store_redis_breaker_state", &[]).await, 0.0);

    // Redis gone: both keep serving; answers stay local, feedback joins what each holds itself.
    redis.kill();
    for i in 0..5 {
        infer(&a, &format!("late{i}"), 1).await;
    }
    wait_for("answers kept locally", || async {
        metric(&a, "switchyard_answer_store_total", &[("model", "m"), ("event", "local")]).await >= 5.0
    })
    .await;
    let items: Vec<Value> = (0..5).map(|i| json!({"request_id": format!("late{i}"), "label": 1})).collect();
    let r = feedback_http(&a, Value::Array(items)).await;
    assert_eq!(r["joined"], 5, "{r}");
    let r = feedback_http(&b, json!([{"request_id": "late0", "label": 1}, {"request_id": "never", "label": 1}])).await;
    assert_eq!((r["joined"].as_u64(), r["store"].as_str()), (Some(0), Some("local-fallback")), "{r}");
    wait_for("the breaker to say Redis is out", || async {
        metric(&a, "switchyard_answer_store_redis_breaker_state", &[]).await == 1.0
    })
    .await;
    let q = quality(&a).await;
    assert_eq!(q["labelled"], 45, "local labels join the replica's window while Redis is out: {q}");
}
