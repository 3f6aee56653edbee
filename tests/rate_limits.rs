//! Rate limits through the built binary: per principal, per model and on
//! input bytes (keyed by client address when auth is off); 429 with
//! `Retry-After` over HTTP and RESOURCE_EXHAUSTED with `retry-after` over
//! gRPC; a request no bucket could ever admit is 413. Rates are tiny, so
//! the bursts alone decide and no test waits on a clock.

mod common;

use common::{repo_root, Switchyard};
use serde_json::json;
use switchyard_runtime::codec::grpc::pb;
use tonic::transport::Endpoint;
use tonic::Code;

fn models() -> String {
    format!(
        "backends:\n  local:\n    kind: onnx\n    repository: {}\n    version_policy: {{all: true}}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{name: v1, backend: local, version: 1}}\n",
        repo_root().join("examples/models").display()
    )
}

fn hash(key: &str) -> String {
    switchyard_proxy::auth::sha256(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn infer_body() -> String {
    let data: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": data}]}).to_string()
}

fn grpc_request(key: &str) -> tonic::Request<pb::ModelInferRequest> {
    let mut r = tonic::Request::new(pb::ModelInferRequest {
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
    r.metadata_mut().insert("x-api-key", key.parse().unwrap());
    r
}

#[tokio::test]
async fn per_principal_and_per_model_over_http_and_grpc() {
    let cfg = format!(
        r#"auth:
  api_keys:
    - {{principal: alice, sha256: "sha256:{}", permissions: ["model:*:infer"]}}
    - {{principal: bob, sha256: "sha256:{}", permissions: ["model:*:infer"]}}
rate_limits:
  per_principal: {{requests_per_second: 0.001, burst: 3}}
  per_model:
    mlp: {{requests_per_second: 0.001, burst: 5}}
{}"#,
        hash("alice-key"),
        hash("bob-key"),
        models()
    );
    let sy = Switchyard::config(&cfg).start().await;
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{}", sy.grpc_port)).unwrap().connect().await.unwrap();
    let mut grpc = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(ch);
    let post = |key: &'static str| {
        let sy = &sy;
        async move {
            sy.post("/v2/models/mlp/infer", &[("x-api-key", key), ("content-type", "application/json")], infer_body())
                .await
        }
    };

    assert_eq!(post("alice-key").await.status, 200);
    assert_eq!(post("alice-key").await.status, 200);
    grpc.model_infer(grpc_request("alice-key")).await.expect("alice's third request, over gRPC");
    let r = post("alice-key").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.header("retry-after").unwrap().parse::<u32>().unwrap() >= 1);
    assert!(r.error().contains("'alice'"), "{}", r.error());
    let s = grpc.model_infer(grpc_request("alice-key")).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.metadata().get("retry-after").is_some(), "{s:?}");

    // Bob has his own bucket, but the model's (5) is shared: 3 used by alice.
    assert_eq!(post("bob-key").await.status, 200);
    assert_eq!(post("bob-key").await.status, 200);
    let r = post("bob-key").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.error().contains("model 'mlp'"), "{}", r.error());
}

#[tokio::test]
async fn input_bytes_by_client_address_without_auth() {
    let body = infer_body();
    let burst = body.len() * 3 + 10;
    let cfg = format!("rate_limits:\n  per_principal: {{bytes_per_second: 0.001, bytes_burst: {burst}}}\n{}", models());
    let sy = Switchyard::config(&cfg).start().await;
    let h = [("content-type", "application/json")];
    for i in 0..3 {
        let r = sy.post("/v2/models/mlp/infer", &h, body.clone()).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    let r = sy.post("/v2/models/mlp/infer", &h, body.clone()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.error().contains("'127.0.0.1'"), "keyed by the client's address: {}", r.error());
    // Larger than any bucket can hold: never admissible, 413.
    let big = json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": vec![0.25f32; 16]}], "pad": "x".repeat(burst)});
    let r = sy.post("/v2/models/mlp/infer", &h, big.to_string()).await;
    assert_eq!(r.status, 413, "{}", r.text());
}
