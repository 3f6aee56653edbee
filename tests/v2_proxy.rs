//! The built `switchyard` binary in front of a real MLServer, over sockets:
//! the KServe V2 REST surface, the binary tensor extension, routing (split,
//! stickiness, override, version pinning, model rewrite), pass-through,
//! input validation, backend faults, metrics and `switchyard validate`.
//!
//! MLServer takes seconds to start, so each test function shares one among
//! related checks; test functions run in parallel.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::{dead_address, repo_root, HttpClient, MlServer, Resp, Switchyard, TempDir};
use serde_json::{json, Value};

const JSON: (&str, &str) = ("content-type", "application/json");
const IHCL: &str = "inference-header-content-length";

/// Deterministic input rows for `mlp` (`input` FP32 [rows,16]).
fn input_data(rows: usize, seed: usize) -> Vec<f32> {
    (0..rows * 16).map(|i| (((i + 7 * seed) as f32) * 0.37).sin() * 2.0).collect()
}

fn infer_body(rows: usize, seed: usize) -> String {
    json!({
        "id": format!("req-{seed}"),
        "inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "data": input_data(rows, seed)}],
    })
    .to_string()
}

/// `outputs[0].data` of a JSON V2 response, as the f32 the model produced.
fn probabilities(v: &Value) -> Vec<f32> {
    let out = &v["outputs"][0];
    assert_eq!(out["name"], "probabilities", "{v}");
    assert_eq!(out["datatype"], "FP32", "{v}");
    out["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {v}"))
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// A binary-extension request: JSON header, then the raw little-endian input.
fn binary_body(rows: usize, seed: usize, binary_output: bool) -> (Vec<u8>, usize) {
    let data = input_data(rows, seed);
    let header = json!({
        "id": format!("bin-{seed}"),
        "inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32",
                    "parameters": {"binary_data_size": data.len() * 4}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": binary_output}}],
    })
    .to_string();
    let mut body = header.into_bytes();
    let n = body.len();
    for f in data {
        body.extend_from_slice(&f.to_le_bytes());
    }
    (body, n)
}

/// Splits a binary-extension response into its JSON header and the first output's floats.
fn decode_binary_response(r: &Resp) -> (Value, Vec<f32>) {
    let n: usize = r
        .header(IHCL)
        .unwrap_or_else(|| panic!("no {IHCL} header: {:?}", r.headers))
        .parse()
        .expect("integer header length");
    let header: Value = serde_json::from_slice(&r.body[..n]).expect("JSON header");
    let size = header["outputs"][0]["parameters"]["binary_data_size"]
        .as_u64()
        .unwrap_or_else(|| panic!("no binary_data_size in {header}")) as usize;
    let raw = &r.body[n..];
    assert_eq!(raw.len(), size, "binary section length");
    assert!(header["outputs"][0].get("data").is_none(), "binary output also has JSON data: {header}");
    let floats = raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    (header, floats)
}

/// MLServer's own answer for mlp at `version`.
async fn direct_infer(client: &HttpClient, ml: &MlServer, version: &str, rows: usize, seed: usize) -> Value {
    let r = client
        .post(&format!("{}/v2/models/mlp/versions/{version}/infer", ml.url()), &[JSON], infer_body(rows, seed))
        .await;
    assert_eq!(r.status, 200, "direct MLServer: {}", r.text());
    r.json()
}

/// Index entries sorted, so two listings compare regardless of order.
fn sorted_index(v: Value) -> Vec<Value> {
    let mut items = v.as_array().unwrap_or_else(|| panic!("index is not a list: {v}")).clone();
    items.sort_by_key(|x| x.to_string());
    items
}

/// Metadata, readiness, JSON and binary inference, pass-through, every class
/// of bad input, the HTTP-level errors, and backend faults (timeout, one
/// endpoint of two down) — all against one MLServer.
#[tokio::test]
async fn v2_protocol_passthrough_validation_and_faults() {
    let ml = MlServer::start().await;
    let dead = dead_address();
    let direct = HttpClient::new();
    let sy = Switchyard::config(&format!(
        r#"
limits:
  max_body_bytes: 8192
backends:
  ml:
    kind: v2-http
    endpoints: ["{ml}"]
  pair:
    kind: v2-http
    endpoints: ["http://{dead}", "{ml}"]
    eject_after_failures: 2
    eject_for: 10m
  impatient:
    kind: v2-http
    endpoints: ["{ml}"]
    timeout: 50ms
models:
  mlp:
    variants:
      - {{name: stable, backend: ml, version: 1, weight: 100}}
      - {{name: canary, backend: ml, version: 2, weight: 0}}
  replicated:
    variants:
      - {{name: main, backend: pair, model: mlp}}
  slow:
    variants:
      - {{name: main, backend: impatient}}
  sleepy:
    variants:
      - {{name: main, backend: ml, model: slow}}
  "*":
    variants:
      - {{name: default, backend: ml}}
"#,
        ml = ml.url()
    ))
    .default_upstream(&ml.url())
    .start()
    .await;

    // --- Probes and server-level V2 endpoints.
    for path in ["/health", "/ready", "/startup", "/v2/health/live", "/v2/health/ready"] {
        let r = sy.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    }
    let server = sy.get("/v2").await;
    assert_eq!(server.status, 200);
    let server = server.json();
    assert!(server["name"].is_string(), "{server}");
    assert!(
        server["extensions"].as_array().is_some_and(|a| a.iter().any(|e| e == "binary_tensor_data")),
        "GET /v2 must advertise binary_tensor_data: {server}"
    );

    // --- Model metadata and readiness are the backend's, for the chosen variant's version.
    for (path, version, variant) in [("/v2/models/mlp", "1", "stable"), ("/v2/models/mlp/versions/2", "2", "canary")] {
        let via = sy.get(path).await;
        assert_eq!(via.status, 200, "GET {path}: {}", via.text());
        assert_eq!(via.header("x-switchyard-variant"), Some(variant), "GET {path}");
        let want = direct.get(&format!("{}/v2/models/mlp/versions/{version}", ml.url())).await.json();
        assert_eq!(via.json(), want, "GET {path} through Switchyard vs MLServer");
    }
    let meta = sy.get("/v2/models/mlp").await.json();
    assert_eq!(meta["inputs"][0]["name"], "input");
    assert_eq!(meta["inputs"][0]["shape"], json!([-1, 16]));
    assert_eq!(meta["outputs"][0]["name"], "probabilities");
    for path in ["/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready", "/v2/models/mlp/versions/2/ready"] {
        let r = sy.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    }
    // Through the catch-all route an unknown model is MLServer's 404, relayed.
    let r = sy.get("/v2/models/nope").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = sy.post("/v2/models/nope/infer", &[], infer_body(1, 0)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.error().contains("nope"), "{}", r.text());

    // --- JSON inference equals MLServer's own answer; the request id is echoed.
    let want = direct_infer(&direct, &ml, "1", 3, 1).await;
    let r = sy.post("/v2/models/mlp/infer", &[], infer_body(3, 1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-switchyard-variant"), Some("stable"));
    assert!(
        r.header("x-switchyard-overhead-us").is_some_and(|v| v.parse::<u64>().is_ok()),
        "x-switchyard-overhead-us: {:?}",
        r.headers
    );
    let got = r.json();
    assert_eq!(got["model_name"], "mlp");
    assert_eq!(got["model_version"], "1");
    assert_eq!(got["id"], "req-1");
    assert_eq!(got["outputs"][0]["shape"], json!([3, 4]));
    assert_eq!(probabilities(&got), probabilities(&want));

    // --- Binary tensor extension in and out (MLServer has none: Switchyard converts).
    let (body, n) = binary_body(3, 1, true);
    let r = sy
        .post("/v2/models/mlp/infer", &[("content-type", "application/octet-stream"), (IHCL, &n.to_string())], body)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (header, floats) = decode_binary_response(&r);
    assert_eq!(header["id"], "bin-1");
    assert_eq!(header["model_version"], "1");
    assert_eq!(header["outputs"][0]["shape"], json!([3, 4]));
    assert_eq!(header["outputs"][0]["datatype"], "FP32");
    assert_eq!(floats, probabilities(&want), "binary output bytes vs MLServer's JSON");
    // Binary input, JSON output.
    let (body, n) = binary_body(3, 1, false);
    let r = sy.post("/v2/models/mlp/infer", &[(IHCL, &n.to_string())], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header(IHCL).is_none(), "JSON answer carries {IHCL}");
    assert_eq!(probabilities(&r.json()), probabilities(&want));
    // JSON input, binary output for every output (`binary_data_output`).
    let mut req: Value = serde_json::from_str(&infer_body(3, 1)).unwrap();
    req["parameters"] = json!({"binary_data_output": true});
    let r = sy.post("/v2/models/mlp/infer", &[], req.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(decode_binary_response(&r).1, probabilities(&want));

    // --- Pass-through: a path Switchyard does not speak goes to the default upstream unchanged.
    let index_path = "/v2/repository/index";
    let via = sy.post(index_path, &[JSON], "{}").await;
    let mlserver = direct.post(&format!("{}{index_path}", ml.url()), &[JSON], "{}").await;
    assert_eq!(via.status, 200, "{}", via.text());
    assert_eq!(via.status, mlserver.status);
    assert!(via.header("x-switchyard-variant").is_none());
    let listed = sorted_index(via.json());
    assert_eq!(listed, sorted_index(mlserver.json()));
    assert_eq!(listed.len(), 3, "mlp v1, mlp v2, slow: {listed:?}");
    // The upstream's errors pass through as they are too.
    let form = ("content-type", "application/x-www-form-urlencoded");
    let via = sy.post(index_path, &[form], "{}").await;
    let mlserver = direct.post(&format!("{}{index_path}", ml.url()), &[form], "{}").await;
    assert_ne!(mlserver.status, 200, "MLServer should refuse a form body: {}", mlserver.text());
    assert_eq!((via.status, via.json()), (mlserver.status, mlserver.json()));
    // Counted in pingora's logging phase, after the response is written.
    let refused = mlserver.status.to_string();
    assert_eventually!(
        {
            let m = sy.metrics().await;
            m.value("switchyard_passthrough_requests_total", &[("code", "200")]) == 1.0
                && m.value("switchyard_passthrough_requests_total", &[("code", &refused)]) == 1.0
        },
        "pass-through answers were not counted"
    );

    // --- Bad input: 400 naming the problem, and the backend never sees it.
    let stable = [("model", "mlp"), ("variant", "stable")];
    let before = sy.metrics().await;
    let backend_calls = |m: &common::Metrics| m.value("switchyard_backend_request_duration_seconds_count", &stable);
    let tensor = |shape: Value, datatype: &str, data: Value| {
        json!({"inputs": [{"name": "input", "shape": shape, "datatype": datatype, "data": data}]}).to_string()
    };
    let (ok_bin, ok_n) = binary_body(1, 0, false);
    let bin_header = &ok_bin[..ok_n];
    let bin_data = &ok_bin[ok_n..];
    let concat = |a: &[u8], b: &[u8]| -> Vec<u8> { [a, b].concat() };
    // (what, body, Inference-Header-Content-Length, words the error must contain)
    type Case<'a> = (&'a str, Vec<u8>, Option<String>, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        ("invalid JSON", b"{\"inputs\": [".to_vec(), None, &["JSON"]),
        ("not an object", b"[1, 2, 3]".to_vec(), None, &["JSON"]),
        ("unknown datatype", tensor(json!([1, 2]), "FP31", json!([1, 2])).into(), None, &["FP31"]),
        ("count mismatch", tensor(json!([1, 16]), "FP32", json!([1, 2])).into(), None, &["input", "data"]),
        ("negative dim", tensor(json!([-1, 16]), "FP32", json!([1, 2])).into(), None, &["negative"]),
        (
            "shape overflow",
            tensor(json!([4294967296u64, 4294967296u64, 16]), "FP32", json!([1])).into(),
            None,
            &["overflow"],
        ),
        ("INT8 out of range", tensor(json!([2]), "INT8", json!([1, 300])).into(), None, &["300", "INT8"]),
        (
            "missing data",
            json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32"}]}).to_string().into(),
            None,
            &["data"],
        ),
        (
            "duplicate input",
            json!({"inputs": [
                {"name": "input", "shape": [1], "datatype": "FP32", "data": [1]},
                {"name": "input", "shape": [1], "datatype": "FP32", "data": [1]}]})
            .to_string()
            .into(),
            None,
            &["input", "more than once"],
        ),
        (
            "binary_data_size past the end",
            concat(bin_header, &bin_data[..32]),
            Some(ok_n.to_string()),
            &["binary_data_size", "past the end"],
        ),
        ("trailing binary bytes", concat(&ok_bin, &[0u8; 8]), Some(ok_n.to_string()), &["72", "64"]),
        (
            "non-numeric Inference-Header-Content-Length",
            ok_bin.clone(),
            Some("abc".into()),
            &["Inference-Header-Content-Length"],
        ),
        (
            "Inference-Header-Content-Length past the body",
            ok_bin.clone(),
            Some("100000".into()),
            &["Inference-Header-Content-Length", "100000"],
        ),
        ("Inference-Header-Content-Length inside the JSON", ok_bin.clone(), Some((ok_n - 5).to_string()), &["JSON"]),
    ];
    let n_cases = cases.len();
    for (what, body, ihcl, words) in cases {
        let mut headers = vec![JSON];
        if let Some(n) = &ihcl {
            headers = vec![("content-type", "application/octet-stream"), (IHCL, n.as_str())];
        }
        let r = sy.post("/v2/models/mlp/infer", &headers, body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        let msg = r.error();
        for w in words {
            assert!(msg.contains(w), "{what}: error {msg:?} should mention {w:?}");
        }
        assert_eq!(r.header("x-switchyard-variant"), Some("stable"), "{what}");
    }
    let after = sy.metrics().await;
    assert_eq!(backend_calls(&after), backend_calls(&before), "a bad request reached MLServer");
    assert_eq!(
        after.value("switchyard_requests_total", &[("model", "mlp"), ("variant", "stable"), ("code", "400")]),
        n_cases as f64
    );
    // Without Switchyard in front, MLServer itself fails on such input with a server error.
    let r = direct
        .post(&format!("{}/v2/models/mlp/infer", ml.url()), &[JSON], tensor(json!([1, 16]), "FP32", json!([1, 2])))
        .await;
    assert!(r.status >= 422, "MLServer on a count mismatch: {} {}", r.status, r.text());

    // --- HTTP-level errors.
    let big = format!(r#"{{"inputs": [], "pad": "{}"}}"#, "x".repeat(10_000));
    let r = sy.post("/v2/models/mlp/infer", &[JSON], big).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().contains("8192"), "{}", r.text());
    let r = sy.get("/v2/models/mlp/infer").await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert!(r.error().contains("POST"), "{}", r.text());
    let r = sy.post("/v2/models/mlp/infer", &[JSON], infer_body(1, 2)).await;
    assert_eq!(r.status, 200, "after the errors: {}", r.text());

    // --- Backend faults. One of two endpoints refuses connections: every request still succeeds.
    let want = probabilities(&direct_infer(&direct, &ml, "2", 1, 3).await);
    for i in 0..40 {
        let r = sy.post("/v2/models/replicated/infer", &[], infer_body(1, 3)).await;
        assert_eq!(r.status, 200, "request {i} with one endpoint down: {}", r.text());
        assert_eq!(probabilities(&r.json()), want);
    }
    assert_eventually!(sy.log().contains("endpoint ejected"), "dead endpoint never ejected; log:\n{}", sy.log());
    let r = sy.get("/ready").await;
    assert_eq!(r.status, 200, "one live endpoint is enough: {}", r.text());
    // A backend slower than its timeout: 504, and the route keeps working afterwards.
    let r = sy.post("/v2/models/slow/infer", &[], infer_body(1, 4)).await;
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.error().contains("50ms"), "the error should give the timeout: {}", r.text());
    let m = sy.metrics().await;
    assert_eq!(m.value("switchyard_requests_total", &[("model", "slow"), ("variant", "main"), ("code", "504")]), 1.0);
    // A client that hangs up while the backend works is counted as 499 and
    // leaves nothing in flight (`sleepy` is MLServer's `slow`, 200 ms, with the default timeout).
    {
        use tokio::io::AsyncWriteExt;
        let body = infer_body(1, 5);
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.expect("connect");
        let head = format!(
            "POST /v2/models/sleepy/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).await.expect("write");
        sock.write_all(body.as_bytes()).await.expect("write");
        drop(sock);
    }
    assert_eventually!(
        sy.metrics().await.value("switchyard_requests_total", &[("model", "sleepy"), ("code", "499")]) == 1.0,
        "a client that hung up is not counted as 499:\n{}",
        sy.metrics().await.0
    );
    assert_eventually!(
        sy.metrics().await.get("switchyard_requests_in_flight", &[]) == Some(0.0),
        "requests_in_flight never back to 0"
    );
    drop(sy);

    // --- Without a default upstream or catch-all route, unknown paths and models are 404s of our own.
    let strict = Switchyard::config(&format!(
        "backends:\n  ml:\n    kind: v2-http\n    endpoints: [\"{}\"]\nmodels:\n  mlp:\n    variants:\n      - {{name: stable, backend: ml}}\n",
        ml.url()
    ))
    .start()
    .await;
    let r = strict.post(index_path, &[JSON], "{}").await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.error().contains(index_path), "{}", r.text());
    let r = strict.post("/v2/models/nope/infer", &[], infer_body(1, 0)).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(r.error().contains("nope"), "{}", r.text());
    let r = strict.get("/v2/models/nope").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = strict.post("/v2/models/mlp/infer", &[], infer_body(1, 0)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model_version"], "2", "no version pinned: MLServer's latest");
}

/// The 90/10 split over 10,000 keyless requests, metrics that count them,
/// stickiness, the override header, version pinning and model rewrite.
#[tokio::test]
async fn routing_split_sticky_override_version_rewrite_and_metrics() {
    let ml = MlServer::start().await;
    let sy = Switchyard::config(&format!(
        r#"
routing:
  sticky_header: x-user-id
backends:
  ml:
    kind: v2-http
    endpoints: ["{ml}"]
models:
  mlp:
    variants:
      - {{name: stable, backend: ml, version: 1, weight: 90}}
      - {{name: canary, backend: ml, version: 2, weight: 10}}
  gated:
    variants:
      - {{name: stable, backend: ml, model: mlp, version: 1, weight: 1}}
      - {{name: canary, backend: ml, model: mlp, version: 2, weight: 0}}
  classifier:
    variants:
      - {{name: main, backend: ml, model: mlp, version: 2}}
"#,
        ml = ml.url()
    ))
    .start()
    .await;
    let version_of = |variant: &str| match variant {
        "stable" => "1",
        "canary" => "2",
        other => panic!("unexpected variant {other}"),
    };

    // --- Split: 10,000 keyless requests, 8 at a time.
    const TOTAL: usize = 10_000;
    let next = Arc::new(AtomicUsize::new(0));
    let body = Bytes::from(infer_body(1, 5));
    let mut workers = Vec::new();
    for _ in 0..8 {
        let (client, url, next, body) =
            (sy.client.clone(), format!("{}/v2/models/mlp/infer", sy.http_url()), next.clone(), body.clone());
        workers.push(tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            while next.fetch_add(1, Ordering::Relaxed) < TOTAL {
                let r = client.post(&url, &[], body.clone()).await;
                assert_eq!(r.status, 200, "{}", r.text());
                let variant = r.header("x-switchyard-variant").expect("variant header").to_string();
                let v = r.json();
                assert_eq!(v["model_version"], version_of(&variant), "header says {variant}: {v}");
                *seen.entry(variant).or_default() += 1;
            }
            seen
        }));
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for (k, n) in w.await.expect("worker") {
            *counts.entry(k).or_default() += n;
        }
    }
    let stable = counts.get("stable").copied().unwrap_or(0);
    let canary = counts.get("canary").copied().unwrap_or(0);
    assert_eq!(stable + canary, TOTAL, "{counts:?}");
    // 3σ of Binomial(10000, 0.9) is 90.
    assert!((stable as f64 - 9000.0).abs() <= 90.0, "90/10 split off by more than 3σ: {counts:?}");

    // --- Metrics count exactly what was sent.
    let m = sy.metrics().await;
    let req = |variant: &str, code: &str| {
        m.value("switchyard_requests_total", &[("model", "mlp"), ("variant", variant), ("code", code)])
    };
    assert_eq!(req("stable", "200"), stable as f64, "{}", m.0);
    assert_eq!(req("canary", "200"), canary as f64);
    let count = |name: &str, variant: &str| m.value(name, &[("model", "mlp"), ("variant", variant)]);
    assert_eq!(count("switchyard_request_duration_seconds_count", "stable"), stable as f64);
    assert_eq!(count("switchyard_backend_request_duration_seconds_count", "stable"), stable as f64);
    assert_eq!(count("switchyard_backend_request_duration_seconds_count", "canary"), canary as f64);
    assert!(m.get("switchyard_build_info", &[]).is_some(), "no switchyard_build_info");
    assert_eq!(m.get("switchyard_config_generation", &[]), Some(1.0));
    assert_eventually!(
        sy.metrics().await.get("switchyard_requests_in_flight", &[]) == Some(0.0),
        "requests_in_flight never back to 0"
    );

    // --- Stickiness: each user keeps its variant across repeats; users spread over both.
    let mut first: BTreeMap<usize, String> = BTreeMap::new();
    for round in 0..3 {
        for user in 0..200 {
            let id = format!("user-{user}");
            let r = sy.post("/v2/models/mlp/infer", &[("x-user-id", &id)], infer_body(1, user)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            let variant = r.header("x-switchyard-variant").expect("variant").to_string();
            assert_eq!(r.json()["model_version"], version_of(&variant));
            let was = first.entry(user).or_insert_with(|| variant.clone());
            assert_eq!(*was, variant, "{id} moved in round {round}");
        }
    }
    let sticky_canary = first.values().filter(|v| *v == "canary").count();
    assert!((1..200).contains(&sticky_canary), "200 users should land on both variants: {sticky_canary} on canary");

    // --- Override header: forces a variant, even one at weight 0; unknown names are 400.
    for _ in 0..20 {
        let r = sy.post("/v2/models/gated/infer", &[], infer_body(1, 6)).await;
        assert_eq!(r.header("x-switchyard-variant"), Some("stable"), "weight 0 must get no traffic");
        let r = sy.post("/v2/models/gated/infer", &[("x-switchyard-variant", "canary")], infer_body(1, 6)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-switchyard-variant"), Some("canary"));
        assert_eq!(r.json()["model_version"], "2");
    }
    // The override beats a sticky key too.
    let r = sy
        .post("/v2/models/mlp/infer", &[("x-user-id", "user-0"), ("x-switchyard-variant", "canary")], infer_body(1, 6))
        .await;
    assert_eq!(r.header("x-switchyard-variant"), Some("canary"));
    let r = sy.post("/v2/models/gated/infer", &[("x-switchyard-variant", "blue")], infer_body(1, 6)).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("blue"), "error should name the variant: {}", r.text());

    // --- Version routing: a version in the path goes to the variant pinned at it.
    for (version, variant) in [("2", "canary"), ("1", "stable")] {
        for i in 0..30 {
            let r = sy.post(&format!("/v2/models/mlp/versions/{version}/infer"), &[], infer_body(1, i)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-switchyard-variant"), Some(variant), "version {version}");
            assert_eq!(r.json()["model_version"], version);
        }
    }

    // --- Model rewrite: the public name `classifier` is `mlp` v2 at the backend.
    let want = direct_infer(&sy.client, &ml, "2", 2, 7).await;
    let r = sy.post("/v2/models/classifier/infer", &[], infer_body(2, 7)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.json();
    assert_eq!(got["model_name"], "classifier", "clients see the public name");
    assert_eq!(got["model_version"], "2");
    assert_eq!(probabilities(&got), probabilities(&want));
    let meta = sy.get("/v2/models/classifier").await;
    assert_eq!(meta.status, 200, "{}", meta.text());
    assert_eq!(meta.json()["name"], "classifier");
    assert_eq!(sy.get("/v2/models/classifier/ready").await.status, 200);
}

/// A backend with nothing listening: 502 naming the endpoint, and not ready.
#[tokio::test]
async fn backend_down_is_502_and_unready() {
    let dead = dead_address();
    let sy = Switchyard::config(&format!(
        "backends:\n  down:\n    kind: v2-http\n    endpoints: [\"http://{dead}\"]\n    connect_timeout: 500ms\nmodels:\n  \"*\":\n    variants:\n      - {{name: default, backend: down}}\n"
    ))
    .start()
    .await;
    let r = sy.post("/v2/models/mlp/infer", &[], infer_body(1, 0)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    let msg = r.error();
    assert!(msg.contains(&dead.to_string()), "error should name the endpoint: {msg}");
    for path in ["/ready", "/v2/health/ready"] {
        let r = sy.get(path).await;
        assert_eq!(r.status, 503, "GET {path}: {}", r.text());
    }
    let r = sy.get("/ready").await;
    assert!(r.error().contains('*'), "should say which route is unready: {}", r.text());
    // Alive, and started: only readiness fails.
    assert_eq!(sy.get("/health").await.status, 200);
    assert_eq!(sy.get("/v2/health/live").await.status, 200);
    assert_eq!(sy.get("/startup").await.status, 200);
    let m = sy.metrics().await;
    assert_eq!(m.value("switchyard_requests_total", &[("variant", "default"), ("code", "502")]), 1.0, "{}", m.0);
}

fn validate(file: &std::path::Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("validate")
        .arg(file)
        .output()
        .expect("run switchyard validate");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_reports_every_error_with_path_and_position() {
    let dir = TempDir::new("validate");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "backends:\n  ml:\n    kind: v2-http\n    endpoints: [\"http://127.0.0.1:9000\"]\n    timeout: 5 parsecs\nmodels:\n  mlp:\n    variants:\n      - {name: stable, backend: nosuch, weight: 1}\n",
    )
    .unwrap();
    let (code, _, err) = validate(&bad);
    assert_eq!(code, 1, "{err}");
    let line_with = |path: &str| {
        err.lines().find(|l| l.contains(path)).unwrap_or_else(|| panic!("no error for {path} in:\n{err}")).to_string()
    };
    let timeout = line_with("backends.ml.timeout");
    assert!(timeout.contains("5:14"), "line:column of the value: {timeout}");
    assert!(timeout.contains("parsecs"), "{timeout}");
    let backend = line_with("models.mlp.variants[0].backend");
    assert!(backend.contains("9:"), "{backend}");
    assert!(backend.contains("nosuch"), "{backend}");

    let syntax = dir.path().join("syntax.yaml");
    std::fs::write(&syntax, "models: [\n").unwrap();
    let (code, _, err) = validate(&syntax);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("1:"), "a syntax error has a position: {err}");

    let (code, _, err) = validate(&dir.path().join("missing.yaml"));
    assert_eq!(code, 1, "{err}");

    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "backends:\n  ml:\n    kind: v2-http\n    endpoints: [\"http://127.0.0.1:9000\"]\nmodels:\n  mlp:\n    variants:\n      - {name: stable, backend: ml}\n",
    )
    .unwrap();
    let (code, out, err) = validate(&good);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim().lines().count(), 1, "one-line summary: {out}");
}

#[test]
fn every_shipped_example_config_validates() {
    let mut seen = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).expect("examples/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let (code, out, err) = validate(&path);
            assert_eq!(code, 0, "{}: {out}{err}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the shipped examples, found {seen}");
}

/// Pass-through is plain proxying, but still on the data port: the body limit
/// holds there too, and a pass-through answer reaches the client unchanged.
#[tokio::test]
async fn passthrough_honours_max_body_bytes() {
    let upstream = common::TestUpstream::start().await;
    let sy = Switchyard::config(&format!(
        "limits:\n  max_body_bytes: 1024\nbackends:\n  ml:\n    kind: v2-http\n    endpoints: [\"{}\"]\nmodels:\n  mlp:\n    variants:\n      - {{name: stable, backend: ml}}\n",
        upstream.url()
    ))
    .default_upstream(&upstream.url())
    .start()
    .await;
    let r = sy.post("/v2/repository/index", &[JSON], "{}").await;
    assert_eq!((r.status, r.text()), (200, r#"{"upstream":"test"}"#.to_string()));
    assert_eq!(upstream.received(), vec![("POST /v2/repository/index HTTP/1.1".to_string(), 2)]);

    let r = sy.post("/v2/repository/index", &[JSON], "x".repeat(4096)).await;
    assert_eq!(r.status, 413, "a 4096-byte body on a 1024-byte limit was answered {}: {}", r.status, r.text());
    assert_eq!(upstream.received().len(), 1, "the oversized body was forwarded: {:?}", upstream.received());
}

/// A pass-through whose upstream cannot be reached still gets a V2 error body,
/// like every other answer of the data port (DESIGN §2: "an error in the
/// client's own protocol").
#[tokio::test]
async fn passthrough_to_unreachable_upstream_is_a_v2_502() {
    let dead = format!("http://{}", dead_address());
    let sy = Switchyard::config(&format!(
        "backends:\n  ml:\n    kind: v2-http\n    endpoints: [\"{dead}\"]\nmodels:\n  mlp:\n    variants:\n      - {{name: stable, backend: ml}}\n"
    ))
    .default_upstream(&dead)
    .start()
    .await;
    let r = sy.post("/v2/repository/index", &[JSON], "{}").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "pass-through failure answered with {:?} and body {:?}",
        r.headers,
        r.text()
    );
    assert!(!r.error().is_empty());
    // Pass-through outcomes are counted in pingora's logging phase, after the response is written.
    assert_eventually!(
        sy.metrics().await.value("switchyard_passthrough_requests_total", &[("code", "502")]) == 1.0,
        "the 502 pass-through was not counted"
    );
}

/// HTTP/1.1 pipelining: requests sent back to back in one write each get their
/// own answer, in order, on the same connection.
#[tokio::test]
async fn pipelined_requests_each_get_an_answer() {
    let dead = dead_address();
    let sy = Switchyard::config(&format!(
        "backends:\n  down:\n    kind: v2-http\n    endpoints: [\"http://{dead}\"]\nmodels:\n  mlp:\n    variants:\n      - {{name: v, backend: down}}\n"
    ))
    .start()
    .await;
    let port = sy.http_port;
    let answers = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
        let bad = b"{\"inputs\": 1}";
        let mut reqs = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nGET /v2 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
        reqs.extend_from_slice(
            format!("POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", bad.len())
                .as_bytes(),
        );
        reqs.extend_from_slice(bad);
        reqs.extend_from_slice(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(&reqs).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        while String::from_utf8_lossy(&seen).matches("HTTP/1.1 ").count() < 4 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&seen).to_string();
        text.match_indices("HTTP/1.1 ").map(|(i, _)| text[i + 9..i + 12].to_string()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert_eq!(answers, vec!["200", "200", "400", "200"], "one answer per pipelined request, in order");
}
