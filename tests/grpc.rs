//! KServe V2 gRPC through the built `switchyard` binary, with a tonic client
//! generated from the same .proto (`switchyard_runtime::codec::grpc::pb`):
//! the embedded ONNX Runtime behind the gRPC front end (metadata, raw and
//! typed tensors, bad inputs, message limits, streaming, A/B by metadata),
//! and a real MLServer behind the `v2-grpc` backend (HTTP-in/gRPC-out and
//! gRPC-in/HTTP-out give identical outputs, pass-through RPCs, backend down,
//! deadlines).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{dead_address, repo_root, MlServer, Switchyard};
use serde_json::{json, Value};
use switchyard_runtime::codec::grpc::pb;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

type Client = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

async fn client(port: u16) -> Client {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the gRPC listener on {port}: {e}"));
    Client::new(ch).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX)
}

/// `mlp` from examples/models, every version, served by the embedded runtime.
fn embedded_config(extra_models: &str) -> String {
    format!(
        "routing:\n  sticky_header: x-user-id\nbackends:\n  local:\n    kind: onnx\n    repository: {}\n    version_policy: {{all: true}}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{name: v1, backend: local, version: 1, weight: 50}}\n      - {{name: v2, backend: local, version: 2, weight: 50}}\n{extra_models}",
        repo_root().join("examples/models").display()
    )
}

/// Deterministic `mlp` input rows (FP32 [rows,16]).
fn mlp_input(rows: usize, seed: usize) -> Vec<f32> {
    (0..rows * 16).map(|i| (((i + 13 * seed) as f32) * 0.37).sin() * 1.3).collect()
}

fn f32_bytes(v: &[f32]) -> Bytes {
    Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
}

fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn infer_request(model: &str, version: &str, rows: usize, seed: usize, raw: bool) -> pb::ModelInferRequest {
    let x = mlp_input(rows, seed);
    let contents = (!raw).then(|| pb::InferTensorContents { fp32_contents: x.clone(), ..Default::default() });
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.into(),
        id: format!("req-{seed}"),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 16],
            parameters: Default::default(),
            contents,
        }],
        raw_input_contents: if raw { vec![f32_bytes(&x)] } else { vec![] },
        ..Default::default()
    }
}

/// The `probabilities` output of a response, raw or typed.
fn probabilities(r: &pb::ModelInferResponse) -> Vec<f32> {
    let i = r.outputs.iter().position(|o| o.name == "probabilities").expect("probabilities output");
    match r.raw_output_contents.get(i) {
        Some(raw) => f32_values(raw),
        None => r.outputs[i].contents.as_ref().expect("typed contents").fp32_contents.clone(),
    }
}

fn with_metadata<T>(msg: T, md: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    for (k, v) in md {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// V2 JSON infer over HTTP; the `probabilities` values.
async fn http_infer(sy: &Switchyard, model: &str, version: &str, rows: usize, seed: usize) -> Vec<f32> {
    let path = if version.is_empty() {
        format!("/v2/models/{model}/infer")
    } else {
        format!("/v2/models/{model}/versions/{version}/infer")
    };
    let body =
        json!({"inputs": [{"name": "input", "shape": [rows, 16], "datatype": "FP32", "data": mlp_input(rows, seed)}]});
    let r = sy.post(&path, &[("content-type", "application/json")], body.to_string()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    let out = v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "probabilities").unwrap().clone();
    out["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[tokio::test]
async fn embedded_runtime_over_grpc() {
    let sy = Switchyard::config(&embedded_config("")).start().await;
    let mut c = client(sy.grpc_port).await;

    assert!(c.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(c.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let meta = c.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
    assert_eq!(meta.name, "switchyard");

    let m = c
        .model_metadata(pb::ModelMetadataRequest { name: "mlp".into(), version: "2".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "mlp");
    assert_eq!(m.inputs[0].name, "input");
    assert_eq!(m.inputs[0].datatype, "FP32");
    assert_eq!(m.inputs[0].shape, vec![-1, 16]);
    assert_eq!(m.outputs[0].shape, vec![-1, 4]);
    for (name, version, want) in [("mlp", "1", true), ("mlp", "", true), ("mlp", "9", false), ("nope", "", false)] {
        let r = c.model_ready(pb::ModelReadyRequest { name: name.into(), version: version.into() }).await.unwrap();
        assert_eq!(r.into_inner().ready, want, "{name} v{version:?}");
    }

    // Raw in → raw out, typed in → typed out; the same numbers, and the same as over HTTP.
    for version in ["1", "2"] {
        let raw = c.model_infer(infer_request("mlp", version, 3, 7, true)).await.unwrap();
        let variant = raw.metadata().get("x-switchyard-variant").unwrap().to_str().unwrap().to_owned();
        assert_eq!(variant, format!("v{version}"));
        let raw = raw.into_inner();
        assert_eq!(raw.raw_output_contents.len(), 1);
        assert_eq!((raw.model_name.as_str(), raw.model_version.as_str(), raw.id.as_str()), ("mlp", version, "req-7"));
        assert_eq!(raw.outputs[0].shape, vec![3, 4]);
        let typed = c.model_infer(infer_request("mlp", version, 3, 7, false)).await.unwrap().into_inner();
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(probabilities(&raw), probabilities(&typed));
        assert_eq!(probabilities(&raw), http_infer(&sy, "mlp", version, 3, 7).await, "gRPC and HTTP differ");
    }

    // Metrics count gRPC requests like HTTP ones.
    let m = sy.metrics().await;
    assert!(m.value("switchyard_requests_total", &[("model", "mlp"), ("code", "200")]) >= 4.0);
}

#[tokio::test]
async fn bad_requests_get_status_codes_that_name_the_problem() {
    let sy = Switchyard::config(&embedded_config("")).grpc_max_message_bytes(4096).start().await;
    let mut c = client(sy.grpc_port).await;

    let mut wrong_shape = infer_request("mlp", "1", 1, 0, true);
    wrong_shape.inputs[0].shape = vec![1, 15];
    let mut wrong_field = infer_request("mlp", "1", 1, 0, false);
    let typed = wrong_field.inputs[0].contents.take().unwrap();
    wrong_field.inputs[0].contents = Some(pb::InferTensorContents { fp64_contents: vec![0.0; 16], ..typed });
    wrong_field.inputs[0].contents.as_mut().unwrap().fp32_contents.clear();
    let mut bad_type = infer_request("mlp", "1", 1, 0, true);
    bad_type.inputs[0].datatype = "FP17".into();
    let mut wrong_input = infer_request("mlp", "1", 1, 0, true);
    wrong_input.inputs[0].name = "nope".into();
    let cases: Vec<(pb::ModelInferRequest, Code, &str)> = vec![
        (wrong_shape, Code::InvalidArgument, "input 'input': data holds 64 bytes but shape and datatype need 60"),
        (wrong_field, Code::InvalidArgument, "belongs in contents.fp32_contents"),
        (bad_type, Code::InvalidArgument, "unknown datatype 'FP17'"),
        (wrong_input, Code::InvalidArgument, "nope"),
        (infer_request("ghost", "", 1, 0, true), Code::NotFound, "unknown model 'ghost'"),
        // 64 rows × 16 × 4 bytes = 4 KiB of tensor alone: over the 4096-byte limit.
        (infer_request("mlp", "1", 64, 0, true), Code::ResourceExhausted, "max_message_bytes"),
    ];
    for (req, code, needle) in cases {
        let e = c.model_infer(req).await.expect_err("should fail");
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(needle), "{:?} should mention {needle:?}", e.message());
    }
    let e = c
        .model_infer(with_metadata(infer_request("mlp", "", 1, 0, true), &[("x-switchyard-variant", "v9")]))
        .await
        .expect_err("unknown variant");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("no variant 'v9'"), "{e:?}");

    // The listener still serves after all that.
    c.model_infer(infer_request("mlp", "1", 1, 0, true)).await.unwrap();

    // Pass-through RPCs need a v2-grpc backend: a clear UNIMPLEMENTED otherwise.
    let e = c.model_config(pb::ModelConfigRequest { name: "mlp".into(), version: String::new() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(e.message().contains("v2-grpc") && e.message().contains("onnx"), "{e:?}");
}

#[tokio::test]
async fn stream_answers_every_request_in_order_with_errors_inline() {
    let sy = Switchyard::config(&embedded_config("")).start().await;
    let mut c = client(sy.grpc_port).await;
    let n = 40;
    let mut reqs = Vec::new();
    for i in 0..n {
        let mut r = infer_request("mlp", if i % 2 == 0 { "1" } else { "2" }, 1 + i % 3, i, i % 4 != 0);
        r.id = format!("s{i}");
        if i == 17 {
            r.inputs[0].shape = vec![99, 16]; // more rows than the data holds
        }
        reqs.push(r);
    }
    let expected: Vec<Vec<f32>> = {
        let mut out = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            if i == 17 {
                out.push(Vec::new());
            } else {
                out.push(probabilities(&c.model_infer(r.clone()).await.unwrap().into_inner()));
            }
        }
        out
    };
    let mut stream = c
        .model_stream_infer(with_metadata(tonic::codegen::tokio_stream::iter(reqs), &[("x-user-id", "alice")]))
        .await
        .unwrap()
        .into_inner();
    let mut i = 0;
    while let Some(msg) = stream.message().await.unwrap() {
        let r = msg.infer_response.expect("every answer names its request");
        assert_eq!(r.id, format!("s{i}"), "answers come in request order");
        if i == 17 {
            assert!(msg.error_message.contains("input 'input'"), "{:?}", msg.error_message);
        } else {
            assert_eq!(msg.error_message, "", "request {i}");
            assert_eq!(probabilities(&r), expected[i], "request {i}");
        }
        i += 1;
    }
    assert_eq!(i, n, "one answer per request, and the stream ended cleanly");
}

#[tokio::test]
async fn ab_split_stickiness_and_override_via_metadata() {
    let sy = Switchyard::config(&embedded_config("")).start().await;
    let mut c = client(sy.grpc_port).await;
    let mut seen = std::collections::BTreeMap::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let mut variants = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let r = c
                .model_infer(with_metadata(infer_request("mlp", "", 1, 1, true), &[("x-user-id", key.as_str())]))
                .await
                .unwrap();
            let v = r.metadata().get("x-switchyard-variant").unwrap().to_str().unwrap().to_owned();
            assert_eq!(r.into_inner().model_version, &v[1..], "the variant pins the version");
            variants.insert(v);
        }
        assert_eq!(variants.len(), 1, "{key} moved between variants {variants:?}");
        *seen.entry(variants.into_iter().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "a 50/50 split puts 40 users on both variants: {seen:?}");
    // The same key lands on the same variant over HTTP.
    for user in 0..10 {
        let key = format!("user-{user}");
        let g = c
            .model_infer(with_metadata(infer_request("mlp", "", 1, 1, true), &[("x-user-id", key.as_str())]))
            .await
            .unwrap();
        let gv = g.metadata().get("x-switchyard-variant").unwrap().to_str().unwrap().to_owned();
        let body =
            json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": mlp_input(1, 1)}]});
        let h = sy
            .post(
                "/v2/models/mlp/infer",
                &[("content-type", "application/json"), ("x-user-id", &key)],
                body.to_string(),
            )
            .await;
        assert_eq!(h.header("x-switchyard-variant"), Some(gv.as_str()), "{key}");
    }
    for _ in 0..5 {
        let r = c
            .model_infer(with_metadata(infer_request("mlp", "", 1, 1, true), &[("x-switchyard-variant", "v2")]))
            .await
            .unwrap();
        assert_eq!(r.into_inner().model_version, "2");
    }
}

#[tokio::test]
async fn mlserver_behind_the_v2_grpc_backend() {
    let ml = MlServer::start().await;
    let dead = dead_address();
    // One more replica set, named by DNS (a stub answering 127.0.0.1 for the name).
    let dns = common::dns::StubDns::start(common::dns::Answer::Addresses(vec![std::net::Ipv4Addr::LOCALHOST])).await;
    let body = format!(
        "resolver:\n  nameservers: [\"127.0.0.1:{d}\"]\nbackends:\n  ml_dns:\n    kind: v2-grpc\n    dns: \"{name}:{g}\"\n  ml_grpc:\n    kind: v2-grpc\n    endpoints: [\"127.0.0.1:{g}\"]\n  ml_http:\n    kind: v2-http\n    endpoints: [\"http://127.0.0.1:{h}\"]\n  gone:\n    kind: v2-grpc\n    endpoints: [\"http://{dead}\"]\n    connect_timeout: 200ms\n  hasty:\n    kind: v2-grpc\n    endpoints: [\"127.0.0.1:{g}\"]\n    timeout: 50ms\nmodels:\n  mlp:\n    variants:\n      - {{name: grpc, backend: ml_grpc}}\n  mlp_http:\n    variants:\n      - {{name: http, backend: ml_http, model: mlp}}\n  down:\n    variants:\n      - {{name: d, backend: gone, model: mlp}}\n  slow:\n    variants:\n      - {{name: s, backend: hasty}}\n  mlp_dns:\n    variants:\n      - {{name: dns, backend: ml_dns, model: mlp}}\n",
        g = ml.grpc_port,
        h = ml.http_port,
        d = dns.port,
        name = common::dns::NAME.trim_end_matches('.'),
    );
    let sy = Switchyard::config(&body).start().await;
    let mut c = client(sy.grpc_port).await;

    let m = c
        .model_metadata(pb::ModelMetadataRequest { name: "mlp".into(), version: "1".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.name.as_str(), m.inputs[0].shape.as_slice()), ("mlp", &[-1i64, 16][..]));
    assert!(
        c.model_ready(pb::ModelReadyRequest { name: "mlp".into(), version: "2".into() })
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    for version in ["1", "2"] {
        // gRPC in, gRPC out (raw and typed from the client).
        let gg = c.model_infer(infer_request("mlp", version, 4, 3, true)).await.unwrap().into_inner();
        assert_eq!(gg.model_version, version);
        let gg_typed = c.model_infer(infer_request("mlp", version, 4, 3, false)).await.unwrap().into_inner();
        // gRPC in, HTTP out.
        let gh = c.model_infer(infer_request("mlp_http", version, 4, 3, true)).await.unwrap().into_inner();
        assert_eq!(gh.model_name, "mlp_http");
        // HTTP in, gRPC out; and HTTP in, HTTP out as the reference.
        let hg = http_infer(&sy, "mlp", version, 4, 3).await;
        let hh = http_infer(&sy, "mlp_http", version, 4, 3).await;
        assert_eq!(probabilities(&gg), hh, "v{version}: gRPC→gRPC");
        assert_eq!(probabilities(&gg_typed), hh, "v{version}: typed gRPC→gRPC");
        assert_eq!(probabilities(&gh), hh, "v{version}: gRPC→HTTP");
        assert_eq!(hg, hh, "v{version}: HTTP→gRPC");
        // Through the replica set DNS names.
        let gd = c.model_infer(infer_request("mlp_dns", version, 4, 3, true)).await.unwrap().into_inner();
        assert_eq!(probabilities(&gd), hh, "v{version}: gRPC→gRPC via dns");
    }

    // The backend's own errors are relayed with who failed.
    let mut bad = infer_request("mlp", "7", 1, 0, true);
    bad.model_version = "7".into();
    let e = c.model_infer(bad).await.unwrap_err();
    assert!(matches!(e.code(), Code::NotFound | Code::InvalidArgument | Code::Unavailable), "{e:?}");

    // Backend down: UNAVAILABLE over gRPC, 502 over HTTP.
    let e = c.model_infer(infer_request("down", "1", 1, 0, true)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("gone"), "{e:?}");
    let body = json!({"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": mlp_input(1, 0)}]});
    let r = sy.post("/v2/models/down/infer", &[("content-type", "application/json")], body.to_string()).await;
    assert_eq!(r.status, 502, "{}", r.text());

    // A backend slower than its timeout: DEADLINE_EXCEEDED (MLServer's `slow` sleeps 200 ms).
    let e = c.model_infer(infer_request("slow", "", 1, 0, true)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    // And the client's own deadline is honoured.
    let mut req = tonic::Request::new(infer_request("mlp", "1", 1, 0, true));
    req.set_timeout(Duration::from_nanos(1));
    let e = c.model_infer(req).await.unwrap_err();
    assert!(matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled), "{e:?}");

    // Pass-through: RepositoryIndex reaches MLServer; ModelConfig is answered by MLServer (which lacks it).
    let e = c.repository_index(pb::RepositoryIndexRequest { repository_name: String::new(), ready: false }).await;
    let e = match e {
        Ok(idx) => {
            let names: Vec<String> = idx.into_inner().models.into_iter().map(|m| m.name).collect();
            assert!(names.iter().any(|n| n == "mlp"), "{names:?}");
            None
        }
        Err(e) => Some(e),
    };
    // Several v2-grpc backends are configured: without a model name the call is ambiguous.
    if let Some(e) = e {
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("several v2-grpc backends"), "{e:?}");
    }
    let cfg = c.model_config(pb::ModelConfigRequest { name: "mlp".into(), version: String::new() }).await;
    if let Err(e) = cfg {
        // MLServer does not implement ModelConfig: its answer comes back as is.
        assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    }
    drop(ml);
}
