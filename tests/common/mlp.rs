//! Requests for the example `mlp` model (FP32 [N,16] → `probabilities` [N,4])
//! and readers of its answers, shared by the cache tests.

use serde_json::json;

use super::{Resp, Switchyard};

pub const INFER: &str = "/v2/models/mlp/infer";
pub const CACHE_HEADER: &str = "x-switchyard-cache";

/// Deterministic, distinct `mlp` input rows (FP32 [rows,16]).
pub fn input(rows: usize, seed: usize) -> Vec<f32> {
    (0..rows * 16).map(|i| (((i + 13 * seed) as f32) * 0.29).cos() * 1.7).collect()
}

/// A V2 JSON body of two rows for `seed`.
pub fn json_body(seed: usize) -> String {
    json!({"inputs": [{"name": "input", "shape": [2, 16], "datatype": "FP32", "data": input(2, seed)}]}).to_string()
}

/// Infers `seed`'s body; the answer must be a 200.
pub async fn infer(sy: &Switchyard, seed: usize, headers: &[(&str, &str)]) -> Resp {
    let r = sy.post(INFER, headers, json_body(seed)).await;
    assert_eq!(r.status, 200, "infer: {}", r.text());
    r
}

/// The `x-switchyard-cache` status of an answer.
pub fn cache_status(r: &Resp) -> &str {
    r.header(CACHE_HEADER).unwrap_or("<none>")
}

/// The `probabilities` output of a JSON answer.
pub fn probabilities(r: &Resp) -> Vec<f64> {
    let v = r.json();
    let out = v["outputs"].as_array().and_then(|o| o.iter().find(|t| t["name"] == "probabilities")).cloned();
    out.unwrap_or_else(|| panic!("no probabilities in {v}"))["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}
