//! Content routing (`models.M.rules`, docs/routing.md) through the built
//! `switchyard` binary, over V2 HTTP, V2 gRPC and TF Serving gRPC, with the embedded ONNX
//! Runtime serving the example `mlp` model: a header rule to a dedicated
//! variant, a request-parameter rule to another model, a protocol rule and
//! a path rule, the weighted split for everything no rule matches, rule
//! match counters, and rules changed by a hot reload (a bad rule keeps the
//! last good config).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{repo_root, Switchyard};
use serde_json::json;
use switchyard_runtime::codec::grpc::pb;
use switchyard_runtime::codec::tfserving::pb::tensorflow::serving as tf;
use switchyard_runtime::codec::tfserving::pb::tensorflow::{
    tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto,
};
use tonic::transport::{Channel, Endpoint};

type Client = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

/// Where the harness's listeners end and the test's body begins.
const BODY_MARK: &str = "# --- test body ---\n";
const INFER: &str = "/v2/models/mlp/infer";

/// `mlp`: a 50/50 split of versions 1 and 2, two dark variants only rules
/// reach, and `other` (the same ONNX model under another route) for the
/// parameter rule. `tenant` is the header value the `gold` rule matches.
fn body(tenant: &str, gold_target: &str) -> String {
    format!(
        r#"{BODY_MARK}backends:
  local:
    kind: onnx
    repository: {repo}
    version_policy: {{all: true}}
    warmup: 1
models:
  mlp:
    rules:
      - name: gold
        match: {{headers: {{x-tenant: {tenant}}}}}
        variant: {gold_target}
      - name: heavy
        match: {{parameters: {{experiment: heavy}}}}
        model: other
      - name: tf-signature
        match: {{protocol: [tfserving-rest, tfserving-grpc], parameters: {{signature_name: classify}}}}
        model: other
      - name: grpc-fast
        match: {{protocol: v2-grpc, headers: {{x-lane: fast}}}}
        variant: fast
      - name: pinned-path
        match: {{path: "/v2/models/mlp/versions/*", headers: {{x-lane: fast}}}}
        variant: fast
    variants:
      - {{name: a, backend: local, version: 1, weight: 50}}
      - {{name: b, backend: local, version: 2, weight: 50}}
      - {{name: gold, backend: local, version: 1, weight: 0}}
      - {{name: fast, backend: local, version: 2, weight: 0}}
  other:
    variants:
      - {{name: other-main, backend: local, model: mlp, version: 2}}
"#,
        repo = repo_root().join("examples/models").display()
    )
}

fn input(seed: usize) -> Vec<f32> {
    (0..16).map(|i| (((i + 7 * seed) as f32) * 0.31).sin()).collect()
}

fn json_body(seed: usize, parameters: Option<serde_json::Value>) -> String {
    let mut b = json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": input(seed)}]});
    if let Some(p) = parameters {
        b["parameters"] = p;
    }
    b.to_string()
}

/// The variant that answered an HTTP inference (which must succeed).
async fn http_variant(sy: &Switchyard, path: &str, headers: &[(&str, &str)], body: String) -> String {
    let r = sy.post(path, headers, body).await;
    assert_eq!(r.status, 200, "{path} {headers:?}: {}", r.text());
    r.header("x-switchyard-variant").expect("x-switchyard-variant").to_string()
}

async fn grpc_client(port: u16) -> Client {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the gRPC listener on {port}: {e}"));
    Client::new(ch)
}

/// The variant that answered a gRPC ModelInfer (which must succeed).
async fn grpc_variant(c: &mut Client, metadata: &[(&'static str, &str)], parameter: Option<(&str, &str)>) -> String {
    let mut msg = pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 16],
            parameters: Default::default(),
            contents: Some(pb::InferTensorContents { fp32_contents: input(3), ..Default::default() }),
        }],
        ..Default::default()
    };
    if let Some((k, v)) = parameter {
        let p = pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(v.to_string())),
        };
        msg.parameters.insert(k.to_string(), p);
    }
    let mut r = tonic::Request::new(msg);
    for (k, v) in metadata {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    let resp = c.model_infer(r).await.unwrap_or_else(|s| panic!("ModelInfer {metadata:?}: {s}"));
    let v = resp.metadata().get("x-switchyard-variant").expect("x-switchyard-variant on the gRPC answer");
    assert_eq!(resp.get_ref().model_name, "mlp", "the answer names the model the client asked for");
    v.to_str().unwrap().to_string()
}

fn head_of(config: &Path) -> String {
    let text = std::fs::read_to_string(config).expect("read config");
    text.split_once(BODY_MARK).expect("the config body starts with BODY_MARK").0.to_string()
}

/// An editor's save: a temp file beside it, renamed over it.
fn write_by_rename(config: &Path, text: &str) {
    let tmp = config.with_extension("yaml.swp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, config).expect("rename over config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_route_http_and_grpc_alike_before_the_split() {
    let sy = Switchyard::config(&body("gold", "gold")).start().await;
    let mut g = grpc_client(sy.grpc_port).await;

    // Header rule → the dedicated (weight 0) variant, on both protocols.
    for i in 0..5 {
        assert_eq!(http_variant(&sy, INFER, &[("x-tenant", "gold")], json_body(i, None)).await, "gold");
        assert_eq!(grpc_variant(&mut g, &[("x-tenant", "gold")], None).await, "gold");
    }
    // Header names are case-insensitive, values exact.
    assert_eq!(http_variant(&sy, INFER, &[("X-Tenant", "gold")], json_body(0, None)).await, "gold");
    assert_ne!(http_variant(&sy, INFER, &[("x-tenant", "Gold"), ("x-user", "k")], json_body(0, None)).await, "gold");

    // Request-parameter rule → another model's variant, on both protocols.
    let heavy = Some(json!({"experiment": "heavy"}));
    assert_eq!(http_variant(&sy, INFER, &[], json_body(1, heavy.clone())).await, "other-main");
    assert_eq!(grpc_variant(&mut g, &[], Some(("experiment", "heavy"))).await, "other-main");
    let light = Some(json!({"experiment": "light"}));
    assert!(["a", "b"].contains(&http_variant(&sy, INFER, &[], json_body(1, light)).await.as_str()));
    // A header rule before it still wins: first match.
    assert_eq!(http_variant(&sy, INFER, &[("x-tenant", "gold")], json_body(1, heavy)).await, "gold");

    // Protocol rule: `x-lane: fast` routes gRPC only...
    assert_eq!(grpc_variant(&mut g, &[("x-lane", "fast")], None).await, "fast");
    // ...and over HTTP only on a versioned path (the path rule).
    assert!(["a", "b"].contains(&http_variant(&sy, INFER, &[("x-lane", "fast")], json_body(2, None)).await.as_str()));
    let versioned = "/v2/models/mlp/versions/2/infer";
    assert_eq!(http_variant(&sy, versioned, &[("x-lane", "fast")], json_body(2, None)).await, "fast");
    // Without the header the pinned version decides, as before.
    assert_eq!(http_variant(&sy, versioned, &[], json_body(2, None)).await, "b");

    // No rule matches: the weighted split holds (the keyless sequence spreads
    // 200 requests almost exactly; ±40 is far outside what it does).
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..200 {
        *seen.entry(http_variant(&sy, INFER, &[("x-tenant", "silver")], json_body(i, None)).await).or_default() += 1;
    }
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ["a", "b"], "{seen:?}");
    assert!((60..=140).contains(&seen["a"]), "{seen:?}");

    // Each match counted once, under the rule's name.
    let m = sy.metrics().await;
    let hits = |rule: &str| m.get("switchyard_route_rule_matches_total", &[("model", "mlp"), ("rule", rule)]);
    assert_eq!(hits("gold"), Some(12.0));
    assert_eq!(hits("heavy"), Some(2.0));
    assert_eq!(hits("grpc-fast"), Some(1.0));
    assert_eq!(hits("pinned-path"), Some(1.0));
    // A redirected request is the target model's variant's in its metrics.
    let other = m.get("switchyard_requests_total", &[("model", "other"), ("variant", "other-main"), ("code", "200")]);
    assert_eq!(other, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_reloads_and_a_bad_rule_keeps_the_last_good_config() {
    let sy = Switchyard::config(&body("gold", "gold")).start().await;
    let head = head_of(&sy.config);
    assert_eq!(http_variant(&sy, INFER, &[("x-tenant", "gold")], json_body(0, None)).await, "gold");

    // The rule now matches `platinum` and sends it to `fast`.
    write_by_rename(&sy.config, &format!("{head}{}", body("platinum", "fast")));
    assert_eventually!(
        http_variant(&sy, INFER, &[("x-tenant", "platinum")], json_body(0, None)).await == "fast",
        "the reloaded rule routes platinum to fast"
    );
    assert_ne!(http_variant(&sy, INFER, &[("x-tenant", "gold")], json_body(0, None)).await, "gold");

    // A rule naming a variant the model does not have is refused whole.
    write_by_rename(&sy.config, &format!("{head}{}", body("gold", "nosuch")));
    assert_eventually!(
        sy.metrics().await.get("switchyard_config_last_reload_successful", &[]) == Some(0.0),
        "the bad rule is refused"
    );
    assert!(sy.log().contains("nosuch"), "the refusal names the variant: {}", sy.log());
    assert_eq!(http_variant(&sy, INFER, &[("x-tenant", "platinum")], json_body(0, None)).await, "fast");
    assert_ne!(http_variant(&sy, INFER, &[("x-tenant", "gold")], json_body(0, None)).await, "gold");
}

/// A redirect is the operator's delegation: authorization is the model the
/// client asked for, never the target's (docs/routing.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_authorized_as_the_model_asked_for() {
    let hash = |k: &str| -> String {
        switchyard_proxy::auth::sha256(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let auth = format!(
        "auth:\n  api_keys:\n    - {{principal: front, sha256: \"sha256:{}\", permissions: [\"model:mlp:infer\"]}}\n    - {{principal: direct, sha256: \"sha256:{}\", permissions: [\"model:other:infer\"]}}\n",
        hash("front-key"),
        hash("direct-key")
    );
    let sy = Switchyard::config(&format!("{auth}{}", body("gold", "gold"))).start().await;
    let heavy = || json_body(4, Some(json!({"experiment": "heavy"})));
    // Allowed `mlp` only: the rule takes it to `other`.
    assert_eq!(http_variant(&sy, INFER, &[("x-api-key", "front-key")], heavy()).await, "other-main");
    let r = sy.post("/v2/models/other/infer", &[("x-api-key", "front-key")], heavy()).await;
    assert_eq!(r.status, 403, "front may not call `other` by name: {}", r.text());
    // Allowed `other` only: asking for `mlp` is refused before any rule is read.
    let r = sy.post(INFER, &[("x-api-key", "direct-key")], heavy()).await;
    assert_eq!(r.status, 403, "direct may not call `mlp`: {}", r.text());
    assert_eq!(
        http_variant(&sy, "/v2/models/other/infer", &[("x-api-key", "direct-key")], heavy()).await,
        "other-main"
    );
}

/// The variant that answered a TF Serving gRPC Predict (which must succeed).
async fn tf_grpc_variant(port: u16, metadata: &[(&'static str, &str)], signature: &str) -> String {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.expect("connect");
    let mut c = tf::prediction_service_client::PredictionServiceClient::new(ch);
    let x = TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: [1, 16].iter().map(|&size| Dim { size, name: String::new() }).collect(),
            unknown_rank: false,
        }),
        float_val: input(5),
        ..TensorProto::default()
    };
    let msg = tf::PredictRequest {
        model_spec: Some(tf::ModelSpec {
            name: "mlp".into(),
            signature_name: signature.into(),
            ..tf::ModelSpec::default()
        }),
        inputs: std::collections::HashMap::from([("input".to_string(), x)]),
        output_filter: Vec::new(),
    };
    let mut r = tonic::Request::new(msg);
    for (k, v) in metadata {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    let resp = c.predict(r).await.unwrap_or_else(|s| panic!("Predict {metadata:?} {signature}: {s}"));
    let v = resp.metadata().get("x-switchyard-variant").expect("x-switchyard-variant on the TF gRPC answer");
    v.to_str().unwrap().to_string()
}

/// The same rules route TF Serving gRPC: its metadata as headers, its
/// `model_spec.signature_name` as a request parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tf_serving_grpc_is_routed_by_the_same_rules() {
    let sy = Switchyard::config(&body("gold", "gold")).start().await;
    assert_eq!(tf_grpc_variant(sy.grpc_port, &[("x-tenant", "gold")], "").await, "gold");
    assert_eq!(tf_grpc_variant(sy.grpc_port, &[], "classify").await, "other-main");
    assert!(["a", "b"].contains(&tf_grpc_variant(sy.grpc_port, &[], "serving_default").await.as_str()));
    let m = sy.metrics().await;
    let hits = m.get("switchyard_route_rule_matches_total", &[("model", "mlp"), ("rule", "tf-signature")]);
    assert_eq!(hits, Some(1.0));
}
