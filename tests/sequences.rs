//! Triton sequence affinity with the embedded runtime, over sockets: a route
//! split 50/50 between `mlp` v1 and v2 keeps every request of a sequence on
//! the variant its `sequence_start` was routed to (HTTP JSON parameters and
//! the binary extension's header alike), answers Triton's START error for a
//! sequence it does not know, refuses a bad `sequence_id` type, and counts
//! live sequences in `switchyard_sequences_active`. Replicas and endpoint
//! pins of remote backends: `tests/python/test_triton_sequences.py`.

mod common;

use common::{repo_root, Switchyard};
use serde_json::{json, Value};

fn config() -> String {
    format!(
        "backends:\n  ex:\n    kind: onnx\n    repository: {}\n    version_policy: {{all: true}}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{name: v1, backend: ex, version: 1, weight: 1}}\n      - {{name: v2, backend: ex, version: 2, weight: 1}}\n",
        repo_root().join("examples/models").display()
    )
}

fn body(parameters: Value) -> String {
    let data: Vec<f32> = (0..16).map(|i| i as f32 * 0.1).collect();
    json!({"parameters": parameters, "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": data}]})
        .to_string()
}

/// The binary extension: the same request with its tensor after the JSON header.
fn binary_body(parameters: Value) -> (String, Vec<u8>) {
    let header = json!({"parameters": parameters, "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 64}}]})
        .to_string();
    let mut b = header.clone().into_bytes();
    for i in 0..16 {
        b.extend_from_slice(&(i as f32 * 0.1).to_le_bytes());
    }
    (header.len().to_string(), b)
}

#[tokio::test]
async fn a_sequence_stays_on_the_variant_it_started_on() {
    let sy = Switchyard::config(&config()).start().await;
    let infer = |p: Value| {
        let sy = &sy;
        async move { sy.post("/v2/models/mlp/infer", &[("content-type", "application/json")], body(p)).await }
    };
    // Without a sequence, keyless requests alternate between the two variants.
    let a = infer(json!({})).await;
    let b = infer(json!({})).await;
    assert_ne!(a.header("x-switchyard-variant"), b.header("x-switchyard-variant"));

    let mut started = Vec::new();
    for id in 1..=6u64 {
        let r = infer(json!({"sequence_id": id, "sequence_start": true})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        started.push(r.header("x-switchyard-variant").unwrap().to_string());
    }
    started.push({
        let r = infer(json!({"sequence_id": "text-id", "sequence_start": true})).await;
        r.header("x-switchyard-variant").unwrap().to_string()
    });
    assert!(started.iter().any(|v| v == "v1") && started.iter().any(|v| v == "v2"), "{started:?}");
    assert_eq!(sy.metrics().await.value("switchyard_sequences_active", &[("model", "mlp")]), 7.0);
    for step in 0..4 {
        for (i, id) in (1..=6u64).map(Value::from).chain([Value::from("text-id")]).enumerate() {
            let r = if step % 2 == 0 {
                infer(json!({"sequence_id": id})).await
            } else {
                let (len, b) = binary_body(json!({"sequence_id": id}));
                sy.post(
                    "/v2/models/mlp/infer",
                    &[("content-type", "application/octet-stream"), ("inference-header-content-length", len.as_str())],
                    b,
                )
                .await
            };
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.header("x-switchyard-variant"), Some(started[i].as_str()), "sequence {id} step {step}");
            assert_eq!(r.json()["model_version"], started[i].trim_start_matches('v'), "sequence {id}");
        }
    }
    for id in 1..=6u64 {
        let r = infer(json!({"sequence_id": id, "sequence_end": true})).await;
        assert_eq!(r.header("x-switchyard-variant"), Some(started[id as usize - 1].as_str()));
    }
    assert_eq!(sy.metrics().await.value("switchyard_sequences_active", &[("model", "mlp")]), 1.0);

    // Ended: a request without the START flag gets Triton's error.
    let r = infer(json!({"sequence_id": 3})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.error().starts_with(
            "inference request for sequence 3 to model 'mlp' must specify the START flag on the first request of the sequence"
        ),
        "{}",
        r.error()
    );
    let r = infer(json!({"sequence_id": true, "sequence_start": true})).await;
    assert_eq!(r.status, 400);
    assert!(r.error().starts_with("invalid value type for 'sequence_id' parameter"), "{}", r.error());
    // 0 is no sequence, as in Triton: routed like any request.
    assert_eq!(infer(json!({"sequence_id": 0})).await.status, 200);
}
