//! Cache keys: a 128-bit xxh3 over everything that can change an answer and
//! nothing that only changes its encoding.
//!
//! The tensor model is the same whichever wire format a request arrived in
//! (V2 JSON, the V2 binary extension, gRPC), so the same tensors give the
//! same key. Hashed: the variant's seed (model, variant, backend, their
//! config), the target version, what the model identity says (the loaded
//! version, or the version last seen in an answer), the invalidation epoch,
//! every input's name/datatype/shape/bytes/parameters in name order, the
//! requested outputs with their parameters in name order, and the request
//! parameters. Not hashed: the request id, `binary_data_output`,
//! `binary_data`, `binary_data_size` (encoding only), Triton's `priority`
//! and `timeout` (scheduling only).
//!
//! Every variable-length field is length-prefixed and every section tagged,
//! so no two different requests serialise to the same byte stream.

use serde_json::Value;
use switchyard_runtime::tensor::{Parameters, RequestedOutput};
use switchyard_runtime::{InferRequest, ModelTarget, Tensor};
use xxhash_rust::xxh3::Xxh3;

/// Bumped whenever the key layout or the stored value format changes, so a
/// new build never reads entries an older one wrote to a shared Redis.
pub const FORMAT_VERSION: u8 = 1;

/// Request parameters that only affect scheduling or encoding.
const IGNORED_PARAMETERS: &[&str] = &["priority", "timeout", "binary_data_output", "binary_data", "binary_data_size"];

/// Parameters that make a request part of a stateful sequence: never cached.
const SEQUENCE_PARAMETERS: &[&str] = &["sequence_id", "sequence_start", "sequence_end"];

/// A full cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(pub u128);

impl CacheKey {
    /// 32 lower-case hex digits, for the Redis key.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Which model answered: what the key says about the model behind the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelTag {
    /// The backend names exactly what it would run (the embedded runtime:
    /// loaded version and its file).
    Identity(u64),
    /// The version remote answers last reported (hash of `model_version`);
    /// 0 while none has been seen.
    Observed(u64),
}

/// Whether a request belongs to a stateful sequence (its answer depends on earlier requests).
pub fn is_sequence(req: &InferRequest) -> bool {
    SEQUENCE_PARAMETERS.iter().any(|p| req.parameters.contains_key(*p))
}

/// Digest of the request's content: inputs, requested outputs, parameters.
pub fn request_digest(req: &InferRequest) -> u128 {
    let mut h = Xxh3::new();
    h.update(&[FORMAT_VERSION, b'I']);
    h.update(&(req.inputs.len() as u64).to_le_bytes());
    if req.inputs.windows(2).all(|w| w[0].name <= w[1].name) {
        req.inputs.iter().for_each(|t| input(&mut h, t));
    } else {
        let mut sorted: Vec<&Tensor> = req.inputs.iter().collect();
        sorted.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        sorted.into_iter().for_each(|t| input(&mut h, t));
    }
    h.update(b"O");
    h.update(&(req.outputs.len() as u64).to_le_bytes());
    if req.outputs.windows(2).all(|w| w[0].name <= w[1].name) {
        req.outputs.iter().for_each(|o| output(&mut h, o));
    } else {
        let mut sorted: Vec<&RequestedOutput> = req.outputs.iter().collect();
        sorted.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        sorted.into_iter().for_each(|o| output(&mut h, o));
    }
    h.update(b"P");
    parameters(&mut h, &req.parameters);
    h.digest128()
}

/// The full key of a request digest for one variant, target and model state.
pub fn full_key(seed: u128, model: &str, target: &ModelTarget, tag: ModelTag, epoch: u64, digest: u128) -> CacheKey {
    let mut h = Xxh3::new();
    h.update(&[FORMAT_VERSION, b'K']);
    h.update(&seed.to_le_bytes());
    str_field(&mut h, model);
    str_field(&mut h, &target.name);
    match &target.version {
        None => h.update(&[0]),
        Some(v) => {
            h.update(&[1]);
            str_field(&mut h, v);
        }
    }
    match tag {
        ModelTag::Identity(id) => {
            h.update(b"i");
            h.update(&id.to_le_bytes());
        }
        ModelTag::Observed(v) => {
            h.update(b"o");
            h.update(&v.to_le_bytes());
        }
    }
    h.update(&epoch.to_le_bytes());
    h.update(&digest.to_le_bytes());
    CacheKey(h.digest128())
}

/// The `Observed` tag of an answer's `model_version` (never 0).
pub fn observed_tag(model_version: Option<&str>) -> u64 {
    let h = match model_version {
        None => xxhash_rust::xxh3::xxh3_64(b"\xffnone"),
        Some(v) => xxhash_rust::xxh3::xxh3_64(v.as_bytes()),
    };
    h | 1
}

/// Seed of one variant: what identifies it and its configuration.
pub fn variant_seed(parts: &[&[u8]]) -> u128 {
    let mut h = Xxh3::new();
    h.update(&[FORMAT_VERSION, b'S']);
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.digest128()
}

fn str_field(h: &mut Xxh3, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn input(h: &mut Xxh3, t: &Tensor) {
    str_field(h, &t.name);
    str_field(h, t.datatype.as_str());
    h.update(&(t.shape.len() as u64).to_le_bytes());
    for d in &t.shape {
        h.update(&d.to_le_bytes());
    }
    h.update(&(t.data.len() as u64).to_le_bytes());
    h.update(&t.data);
    parameters(h, &t.parameters);
}

fn output(h: &mut Xxh3, o: &RequestedOutput) {
    str_field(h, &o.name);
    parameters(h, &o.parameters);
}

/// serde_json's map is ordered by key (no `preserve_order`), so iteration is canonical.
fn parameters(h: &mut Xxh3, p: &Parameters) {
    for (k, v) in p.iter().filter(|(k, _)| !IGNORED_PARAMETERS.contains(&k.as_str())) {
        str_field(h, k);
        value(h, v);
    }
    h.update(b"\xff");
}

fn value(h: &mut Xxh3, v: &Value) {
    match v {
        Value::Null => h.update(b"n"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.update(b"#");
            str_field(h, &n.to_string());
        }
        Value::String(s) => {
            h.update(b"s");
            str_field(h, s);
        }
        Value::Array(a) => {
            h.update(b"[");
            h.update(&(a.len() as u64).to_le_bytes());
            a.iter().for_each(|x| value(h, x));
        }
        Value::Object(o) => {
            h.update(b"{");
            h.update(&(o.len() as u64).to_le_bytes());
            for (k, x) in o {
                str_field(h, k);
                value(h, x);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::json;
    use switchyard_runtime::codec::v2;
    use switchyard_runtime::DataType;

    use super::*;

    fn base() -> InferRequest {
        let mut p = Parameters::new();
        p.insert("temperature".into(), json!(0));
        InferRequest {
            id: Some("a".into()),
            inputs: vec![
                Tensor::new("x", DataType::Fp32, vec![1, 2], Bytes::from(vec![0, 0, 128, 63, 0, 0, 0, 64])),
                Tensor::new("mask", DataType::Int32, vec![1], Bytes::from(vec![1, 0, 0, 0])),
            ],
            outputs: vec![RequestedOutput { name: "y".into(), binary: None, parameters: Parameters::new() }],
            parameters: p,
            binary_output: false,
            metadata: Default::default(),
            raw_json: None,
        }
    }

    fn target() -> ModelTarget {
        ModelTarget { name: Arc::from("m"), version: None }
    }

    fn key_of(req: &InferRequest) -> CacheKey {
        full_key(7, "m", &target(), ModelTag::Observed(3), 0, request_digest(req))
    }

    #[test]
    fn any_one_field_changes_the_key() {
        let k0 = key_of(&base());
        type Edit = fn(&mut InferRequest);
        let edits: &[(&str, Edit)] = &[
            ("input bytes", |r| r.inputs[0].data = Bytes::from(vec![0, 0, 128, 63, 0, 0, 0, 65])),
            ("input name", |r| r.inputs[0].name = "x2".into()),
            ("input datatype", |r| r.inputs[1].datatype = DataType::Uint32),
            ("input shape", |r| r.inputs[0].shape = vec![2, 1]),
            ("input parameter", |r| {
                r.inputs[0].parameters.insert("scale".into(), json!(2));
            }),
            ("extra input", |r| r.inputs.push(Tensor::new("z", DataType::Bool, vec![1], Bytes::from(vec![1])))),
            ("requested output", |r| r.outputs[0].name = "y2".into()),
            ("output parameter", |r| {
                r.outputs[0].parameters.insert("classification".into(), json!(3));
            }),
            ("no requested outputs", |r| r.outputs.clear()),
            ("request parameter value", |r| {
                r.parameters.insert("temperature".into(), json!(1));
            }),
            ("request parameter type", |r| {
                r.parameters.insert("temperature".into(), json!("0"));
            }),
            ("new request parameter", |r| {
                r.parameters.insert("max_tokens".into(), json!(16));
            }),
        ];
        for (what, edit) in edits {
            let mut r = base();
            edit(&mut r);
            assert_ne!(key_of(&r), k0, "{what} must change the key");
        }
        let d = request_digest(&base());
        let t = target();
        let others = [
            full_key(8, "m", &t, ModelTag::Observed(3), 0, d),
            full_key(7, "n", &t, ModelTag::Observed(3), 0, d),
            full_key(7, "m", &ModelTarget { name: Arc::from("m2"), version: None }, ModelTag::Observed(3), 0, d),
            full_key(
                7,
                "m",
                &ModelTarget { name: Arc::from("m"), version: Some(Arc::from("2")) },
                ModelTag::Observed(3),
                0,
                d,
            ),
            full_key(7, "m", &t, ModelTag::Observed(4), 0, d),
            full_key(7, "m", &t, ModelTag::Identity(3), 0, d),
            full_key(7, "m", &t, ModelTag::Observed(3), 1, d),
        ];
        for (i, k) in others.iter().enumerate() {
            assert_ne!(*k, k0, "context field {i} must change the key");
        }
        assert_ne!(variant_seed(&[b"a", b"bc"]), variant_seed(&[b"ab", b"c"]));
    }

    #[test]
    fn encoding_only_fields_do_not_change_the_key() {
        let k0 = key_of(&base());
        let mut r = base();
        r.id = Some("other".into());
        r.binary_output = true;
        r.outputs[0].binary = Some(true);
        r.parameters.insert("priority".into(), json!(2));
        r.parameters.insert("timeout".into(), json!(1000));
        r.inputs.reverse();
        assert_eq!(key_of(&r), k0);
    }

    #[test]
    fn json_and_binary_encodings_of_the_same_tensors_share_a_key() {
        let json_body = br#"{"id":"1","inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.0,2.0]},{"name":"mask","shape":[1],"datatype":"INT32","data":[1]}],"outputs":[{"name":"y"}],"parameters":{"temperature":0}}"#;
        let from_json = v2::decode_request(&Bytes::from_static(json_body), None).unwrap();
        let header = br#"{"inputs":[{"name":"mask","shape":[1],"datatype":"INT32","parameters":{"binary_data_size":4}},{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"temperature":0,"binary_data_output":true}}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&[1, 0, 0, 0]);
        body.extend_from_slice(&[0, 0, 128, 63, 0, 0, 0, 64]);
        let from_binary = v2::decode_request(&Bytes::from(body), Some(header.len())).unwrap();
        assert_eq!(key_of(&from_json), key_of(&from_binary));
        assert_eq!(key_of(&from_json), key_of(&base()));

        // gRPC, typed contents and raw_input_contents.
        use switchyard_runtime::codec::grpc::{self as g, pb};
        let mut params = std::collections::HashMap::new();
        params.insert(
            "temperature".to_string(),
            pb::InferParameter { parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(0)) },
        );
        let input = |name: &str, dt: &str, shape: Vec<i64>, contents: Option<pb::InferTensorContents>| {
            pb::model_infer_request::InferInputTensor {
                name: name.into(),
                datatype: dt.into(),
                shape,
                parameters: Default::default(),
                contents,
            }
        };
        let typed = pb::ModelInferRequest {
            model_name: "m".into(),
            id: "g".into(),
            parameters: params.clone(),
            inputs: vec![
                input(
                    "x",
                    "FP32",
                    vec![1, 2],
                    Some(pb::InferTensorContents { fp32_contents: vec![1.0, 2.0], ..Default::default() }),
                ),
                input(
                    "mask",
                    "INT32",
                    vec![1],
                    Some(pb::InferTensorContents { int_contents: vec![1], ..Default::default() }),
                ),
            ],
            outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let raw = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![1, 2], None), input("mask", "INT32", vec![1], None)],
            raw_input_contents: vec![
                Bytes::from_static(&[0, 0, 128, 63, 0, 0, 0, 64]),
                Bytes::from_static(&[1, 0, 0, 0]),
            ],
            ..typed.clone()
        };
        assert_eq!(key_of(&g::decode_request(typed).unwrap().request), key_of(&from_json));
        assert_eq!(key_of(&g::decode_request(raw).unwrap().request), key_of(&from_json));
    }

    #[test]
    fn sequences_are_recognised() {
        let mut r = base();
        assert!(!is_sequence(&r));
        r.parameters.insert("sequence_id".into(), json!(5));
        assert!(is_sequence(&r));
        assert_ne!(observed_tag(Some("1")), observed_tag(Some("2")));
        assert_ne!(observed_tag(None), 0);
    }
}
