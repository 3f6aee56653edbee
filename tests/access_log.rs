//! The access and audit log through the built binary: one JSON line per
//! request over HTTP and gRPC with the fields operators grep for, control
//! mutations in the same file with who and what, client-supplied values
//! that cannot forge a line (the A/B `test_id` that once could), sampling
//! and the off switch.

mod common;

use std::path::Path;

use common::{repo_root, Switchyard, TempDir};
use http::Method;
use serde_json::{json, Value};
use switchyard_runtime::codec::grpc::pb;
use tonic::transport::Endpoint;

const KEY: &str = "ops-secret";

fn config(log: &Path, access: &str) -> String {
    let hash: String = switchyard_proxy::auth::sha256(KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!(
        r#"
access_log:
  path: {log}
{access}
auth:
  api_keys:
    - {{principal: ops, sha256: "sha256:{hash}", permissions: ["model:*:*", "control"]}}
backends:
  local:
    kind: onnx
    repository: {repo}
    version_policy: {{all: true}}
    warmup: 1
models:
  mlp:
    variants:
      - {{name: v1, backend: local, version: 1, weight: 100}}
      - {{name: v2, backend: local, version: 2, weight: 0}}
"#,
        log = log.display(),
        repo = repo_root().join("examples/models").display(),
    )
}

fn infer_body() -> String {
    let data: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": data}]}).to_string()
}

/// Every complete line of the log, each of which must be one JSON object —
/// but the harness's start-up probes (`GET /startup`). Lines reach the file
/// from the log's writer thread, in chunks, some time after their answer:
/// callers wait for them, and a chunk still being written is not read.
fn lines(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l:?}"))
        })
        .filter(|l| l["path"] != "/startup")
        .collect()
}

fn sha256_hex(b: &[u8]) -> String {
    switchyard_proxy::auth::sha256(b).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn one_line_per_request_and_mutation_none_forgeable() {
    let dir = TempDir::new("access-log");
    let log = dir.path().join("access.log");
    let sy = Switchyard::config(&config(&log, "  body_hash: true")).start().await;
    let body = infer_body();

    let r = sy
        .post(
            "/v2/models/mlp/infer",
            &[
                ("x-api-key", KEY),
                ("x-request-id", "req-42"),
                ("user-agent", r#"evil "agent" \ {"kind":"audit"}"#),
                ("content-type", "application/json"),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = sy.post("/v2/models/mlp/infer", &[("content-type", "application/json")], body.clone()).await;
    assert_eq!(r.status, 401);

    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{}", sy.grpc_port)).unwrap().connect().await.unwrap();
    let mut grpc = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(ch);
    let mut req = tonic::Request::new(pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            contents: Some(pb::InferTensorContents { fp32_contents: vec![0.5; 16], ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    });
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    grpc.model_infer(req).await.unwrap();

    // Control: credentials required once auth is on; a newline in a test_id
    // is refused, other awkward characters are escaped.
    let ctl = format!("http://127.0.0.1:{}", sy.control_port);
    let create = |test_id: &str| {
        json!({"test_id": test_id, "model": "mlp", "model_a": "v1", "model_b": "v2", "traffic_split": 50,
               "success_metric": "error_rate", "minimum_sample_size": 10, "test_duration": "1h"})
        .to_string()
    };
    let url = format!("{ctl}/ml/ab-tests/create");
    let r = sy.client.request(Method::POST, &url, &[], create("t1").into()).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let auth = [("authorization", "Bearer ops-secret"), ("content-type", "application/json")];
    let forged = "t1\n{\"ts\":\"2026-01-01T00:00:00.000Z\",\"kind\":\"audit\",\"principal\":\"admin\"}";
    let r = sy.client.request(Method::POST, &url, &auth, create(forged).into()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    let awkward = "t2\"}\u{2028}{\"kind\":\"audit\"}\\";
    let r = sy.client.request(Method::POST, &url, &auth, create(awkward).into()).await;
    assert_eq!(r.status, 200, "{}", r.text());

    assert_eventually!(lines(&log).len() >= 6, "six lines: {:?}", lines(&log));
    let all = lines(&log);
    assert_eq!(all.len(), 6, "{all:#?}");
    let access: Vec<&Value> = all.iter().filter(|l| l["kind"] == "access").collect();
    let audit: Vec<&Value> = all.iter().filter(|l| l["kind"] == "audit").collect();
    assert_eq!((access.len(), audit.len()), (3, 3), "{all:#?}");

    let ok = access.iter().find(|l| l["request_id"] == "req-42").expect("the HTTP request's line");
    for (k, v) in [
        ("protocol", json!("http")),
        ("method", json!("POST")),
        ("path", json!("/v2/models/mlp/infer")),
        ("principal", json!("ops")),
        ("model", json!("mlp")),
        ("variant", json!("v1")),
        ("status", json!(200)),
        ("bytes_in", json!(body.len())),
        ("user_agent", json!(r#"evil "agent" \ {"kind":"audit"}"#)),
        ("body_sha256", json!(sha256_hex(body.as_bytes()))),
    ] {
        assert_eq!(ok[k], v, "{k} in {ok}");
    }
    assert!(ok["bytes_out"].as_u64().unwrap() > 0 && ok["latency_us"].as_u64().is_some(), "{ok}");
    assert!(ok["client"].as_str().unwrap().starts_with("127.0.0.1:"), "{ok}");
    assert!(ok["ts"].as_str().unwrap().ends_with('Z'), "{ok}");

    let denied = access.iter().find(|l| l["status"] == 401).expect("the refused request's line");
    assert_eq!((denied["error"].as_str(), denied.get("principal")), (Some("unauthenticated"), None), "{denied}");
    assert_eq!(denied["request_id"].as_str().unwrap().len(), 16, "a request id is made when none is sent");

    let g = access.iter().find(|l| l["protocol"] == "grpc").expect("the gRPC call's line");
    assert_eq!(g["path"], "/inference.GRPCInferenceService/ModelInfer");
    assert_eq!(
        (g["grpc_status"].as_u64(), g["model"].as_str(), g["variant"].as_str()),
        (Some(0), Some("mlp"), Some("v1"))
    );
    assert_eq!(g["principal"], "ops");
    assert!(g["bytes_in"].as_u64().unwrap() > 64 && g["bytes_out"].as_u64().unwrap() > 0, "{g}");

    // Audit: who and what, never the payload.
    assert_eq!(audit.iter().map(|l| l["status"].as_u64().unwrap()).collect::<Vec<_>>(), vec![401, 400, 200]);
    let created = audit.iter().find(|l| l["status"] == 200).unwrap();
    assert_eq!(
        (created["principal"].as_str(), created["what"].as_str()),
        (Some("ops"), Some("POST /ml/ab-tests/create"))
    );
    assert!(created["generation"].as_u64().is_some(), "{created}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("traffic_split"), "no payload in the log");

    // The diagnostic log (text) escapes the test_id too: no line starts with forged content.
    let text = sy.log();
    assert!(text.contains("A/B test created"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("{\"kind\"") || l.starts_with("{\"ts\"")), "{text}");
}

#[tokio::test]
async fn sampling_keeps_errors_and_the_off_switch_keeps_audit() {
    let dir = TempDir::new("access-log-sample");
    let log = dir.path().join("access.log");
    let sy = Switchyard::config(&config(&log, "  sample: 0.25")).start().await;
    for _ in 0..20 {
        let r = sy
            .post("/v2/models/mlp/infer", &[("x-api-key", KEY), ("content-type", "application/json")], infer_body())
            .await;
        assert_eq!(r.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(sy.post("/v2/models/mlp/infer", &[], infer_body()).await.status, 401);
    }
    assert_eventually!(lines(&log).len() >= 8, "{:?}", lines(&log));
    let all = lines(&log);
    let ok = all.iter().filter(|l| l["status"] == 200).count();
    let refused = all.iter().filter(|l| l["status"] == 401).count();
    assert_eq!((ok, refused), (5, 3), "a quarter of the successes, every error: {all:#?}");
    drop(sy);

    let log = dir.path().join("off.log");
    let sy = Switchyard::config(&config(&log, "  enabled: false")).start().await;
    assert_eq!(sy.post("/v2/models/mlp/infer", &[("x-api-key", KEY)], infer_body()).await.status, 200);
    assert_eq!(sy.post("/v2/models/mlp/infer", &[], infer_body()).await.status, 401);
    let ctl = format!("http://127.0.0.1:{}/ml/models/mlp/traffic", sy.control_port);
    let r = sy
        .client
        .request(
            Method::POST,
            &ctl,
            &[("authorization", "Bearer ops-secret")],
            json!({"weights": {"v2": 10}}).to_string().into(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eventually!(!lines(&log).is_empty(), "the audit line");
    let all = lines(&log);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(
        (all[0]["kind"].as_str(), all[0]["what"].as_str()),
        (Some("audit"), Some("POST /ml/models/mlp/traffic"))
    );
}
