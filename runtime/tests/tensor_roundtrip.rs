//! Property tests of the tensor model: for random requests and responses
//! (every datatype, ranks 0-3, empty dimensions, BYTES elements with any
//! bytes, ids, parameters, requested outputs), decode ∘ encode is the
//! identity across V2 JSON, V2 binary and gRPC (typed contents and raw),
//! the gRPC message going through its protobuf bytes. Cases come from fixed
//! seeds (a failure names its seed; `SWITCHYARD_PROPTEST_CASES` runs more),
//! with fastrand instead of a property-testing framework to keep the build lean.

use bytes::Bytes;
use prost::Message;
use serde_json::{json, Map};
use switchyard_runtime::codec::{grpc, v2};
use switchyard_runtime::tensor::{DataType, InferRequest, InferResponse, Parameters, RequestedOutput, Tensor};

fn cases() -> u64 {
    std::env::var("SWITCHYARD_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500)
}

fn name(rng: &mut fastrand::Rng) -> String {
    let n = rng.usize(1..8);
    (0..n).map(|_| rng.alphanumeric()).collect()
}

/// Parameter values every protocol carries alike: strings, booleans, integers.
fn parameters(rng: &mut fastrand::Rng) -> Parameters {
    let mut p = Map::new();
    for _ in 0..rng.usize(0..3) {
        let v = match rng.u8(0..3) {
            0 => json!(name(rng)),
            1 => json!(rng.bool()),
            _ => json!(rng.i64(-1_000_000..1_000_000)),
        };
        p.insert(format!("p_{}", name(rng)), v);
    }
    p
}

/// Random finite bits of a float type (JSON has no NaN or infinity).
fn float_bits(rng: &mut fastrand::Rng, dt: DataType) -> Vec<u8> {
    loop {
        let (bytes, finite) = match dt {
            DataType::Fp16 => {
                let b = rng.u16(..);
                (b.to_le_bytes().to_vec(), half::f16::from_bits(b).is_finite())
            }
            DataType::Bf16 => {
                let b = rng.u16(..);
                (b.to_le_bytes().to_vec(), half::bf16::from_bits(b).is_finite())
            }
            DataType::Fp32 => {
                let b = rng.u32(..);
                (b.to_le_bytes().to_vec(), f32::from_bits(b).is_finite())
            }
            _ => {
                let b = rng.u64(..);
                (b.to_le_bytes().to_vec(), f64::from_bits(b).is_finite())
            }
        };
        if finite {
            return bytes;
        }
    }
}

/// A valid tensor; `utf8` keeps BYTES elements to text (JSON carries BYTES as strings).
fn tensor(rng: &mut fastrand::Rng, tensor_name: String, utf8: bool) -> Tensor {
    let dt = DataType::ALL[rng.usize(..DataType::ALL.len())];
    let shape: Vec<i64> = (0..rng.usize(0..4)).map(|_| rng.i64(0..4)).collect();
    let n: usize = shape.iter().map(|d| *d as usize).product();
    let mut data = Vec::new();
    for _ in 0..n {
        match dt {
            DataType::Bool => data.push(rng.bool() as u8),
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => data.extend(float_bits(rng, dt)),
            DataType::Bytes => {
                let el: Vec<u8> =
                    (0..rng.usize(0..6)).map(|_| if utf8 { rng.alphanumeric() as u8 } else { rng.u8(..) }).collect();
                data.extend((el.len() as u32).to_le_bytes());
                data.extend(el);
            }
            _ => data.extend((0..dt.size().expect("fixed size")).map(|_| rng.u8(..))),
        }
    }
    let mut t = Tensor::new(tensor_name, dt, shape, Bytes::from(data));
    t.parameters = parameters(rng);
    t
}

fn tensors(rng: &mut fastrand::Rng, utf8: bool, at_least: usize) -> Vec<Tensor> {
    (0..rng.usize(at_least..4))
        .map(|i| {
            let n = format!("t{i}_{}", name(rng));
            tensor(rng, n, utf8)
        })
        .collect()
}

fn request(rng: &mut fastrand::Rng, utf8: bool) -> InferRequest {
    InferRequest {
        id: rng.bool().then(|| name(rng)),
        inputs: tensors(rng, utf8, 1),
        outputs: (0..rng.usize(0..3))
            .map(|i| RequestedOutput { name: format!("o{i}"), binary: None, parameters: parameters(rng) })
            .collect(),
        parameters: parameters(rng),
        binary_output: false,
        metadata: Default::default(),
        raw_json: None,
    }
}

fn response(rng: &mut fastrand::Rng, utf8: bool) -> InferResponse {
    InferResponse {
        model_name: name(rng),
        model_version: rng.bool().then(|| rng.u32(1..100).to_string()),
        id: rng.bool().then(|| name(rng)),
        parameters: parameters(rng),
        outputs: tensors(rng, utf8, 0),
        raw_json: None,
    }
}

/// Encoding for a backend says itself how outputs come back; the rest must survive.
fn without_output_encoding(mut req: InferRequest) -> InferRequest {
    req.binary_output = false;
    req.outputs.iter_mut().for_each(|o| o.binary = None);
    req
}

fn check<T: std::fmt::Debug + PartialEq>(seed: u64, what: &str, got: Result<T, String>, want: &T) {
    match got {
        Ok(got) => assert_eq!(&got, want, "seed {seed}: {what} changed the value"),
        Err(e) => panic!("seed {seed}: {what} failed: {e}\nvalue: {want:?}"),
    }
}

#[test]
fn requests_survive_json_binary_and_grpc() {
    for seed in 0..cases() {
        let mut rng = fastrand::Rng::with_seed(seed);
        let utf8 = rng.bool();
        let req = request(&mut rng, utf8);
        let want = without_output_encoding(req.clone());
        // V2 JSON carries BYTES as strings: text only.
        let forms: &[bool] = if utf8 { &[false, true] } else { &[true] };
        for &binary in forms {
            let got = v2::encode_request(&req, binary)
                .map_err(|e| e.to_string())
                .and_then(|enc| v2::decode_request(&enc.body, enc.header_len).map_err(|e| e.to_string()))
                .map(without_output_encoding);
            check(seed, if binary { "V2 binary" } else { "V2 JSON" }, got, &want);
        }
        let pb = grpc::encode_request(req.clone(), "m", Some("1"));
        let wire = pb.encode_to_vec();
        let got = grpc::pb::ModelInferRequest::decode(wire.as_slice())
            .map_err(|e| e.to_string())
            .and_then(|m| grpc::decode_request(m).map_err(|e| e.to_string()))
            .map(|d| {
                assert_eq!((d.model_name.as_str(), d.model_version.as_deref()), ("m", Some("1")), "seed {seed}");
                without_output_encoding(d.request)
            });
        check(seed, "gRPC", got, &want);
    }
}

#[test]
fn responses_survive_json_binary_and_grpc() {
    for seed in 0..cases() {
        let mut rng = fastrand::Rng::with_seed(seed);
        let utf8 = rng.bool();
        let resp = response(&mut rng, utf8);
        let forms: &[bool] = if utf8 { &[false, true] } else { &[true] };
        for &binary in forms {
            let got = v2::encode_response(&resp, |_| binary)
                .map_err(|e| e.to_string())
                .and_then(|enc| v2::decode_response(&enc.body, enc.header_len).map_err(|e| e.to_string()));
            check(seed, if binary { "V2 binary" } else { "V2 JSON" }, got, &resp);
        }
        for raw in [false, true] {
            let wire = grpc::encode_response(resp.clone(), raw).encode_to_vec();
            let got = grpc::pb::ModelInferResponse::decode(wire.as_slice())
                .map_err(|e| e.to_string())
                .and_then(|m| grpc::decode_response(m).map_err(|e| e.to_string()));
            check(seed, if raw { "gRPC raw" } else { "gRPC typed" }, got, &resp);
        }
    }
}

/// The generator makes what it says: every tensor valid, every datatype drawn.
#[test]
fn the_generator_covers_every_datatype() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let req = request(&mut rng, false);
        req.validate().unwrap_or_else(|e| panic!("seed {seed}: generated an invalid request: {e}"));
        seen.extend(req.inputs.iter().map(|t| t.datatype.as_str()));
    }
    assert_eq!(seen.len(), DataType::ALL.len(), "{seen:?}");
}
