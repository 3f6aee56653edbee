//! KServe V2 gRPC (`inference.GRPCInferenceService`) messages to and from the
//! tensor model, both directions (client ↔ Switchyard ↔ backend).
//!
//! `raw_input_contents` / `raw_output_contents` already hold the tensor
//! model's byte layout, so raw tensors move as `Bytes` without a copy; typed
//! `contents` are converted element by element with range checks. The
//! generated messages, client and server live in [`pb`].

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Number, Value};

use crate::error::CodecError;
use crate::tensor::{bytes_elements, DataType, InferRequest, InferResponse, Parameters, RequestedOutput, Tensor};

/// Generated from `runtime/proto/grpc_service.proto` (package `inference`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

/// Switchyard's own `switchyard.ml.v1` service (feedback), served beside KServe V2;
/// generated from `runtime/proto/switchyard_ml.proto`.
#[allow(clippy::all, missing_docs)]
pub mod ml_pb {
    tonic::include_proto!("switchyard.ml.v1");
}

use pb::infer_parameter::ParameterChoice;
use pb::{InferParameter, InferTensorContents};

type PbParameters = std::collections::HashMap<String, InferParameter>;

/// gRPC parameters → the tensor model's JSON parameters.
pub fn parameters_from_pb(p: PbParameters) -> Result<Parameters, CodecError> {
    let mut out = Parameters::new();
    for (k, v) in p {
        let v =
            match v.parameter_choice {
                None => Value::Null,
                Some(ParameterChoice::BoolParam(b)) => Value::Bool(b),
                Some(ParameterChoice::Int64Param(n)) => Value::from(n),
                Some(ParameterChoice::Uint64Param(n)) => Value::from(n),
                Some(ParameterChoice::StringParam(s)) => Value::String(s),
                Some(ParameterChoice::DoubleParam(d)) => Value::Number(Number::from_f64(d).ok_or_else(|| {
                    CodecError::invalid(format!("parameter '{k}' is {d}, which is not a finite number"))
                })?),
            };
        out.insert(k, v);
    }
    Ok(out)
}

/// The tensor model's JSON parameters → gRPC parameters. Null is a parameter
/// without a value (what a gRPC parameter with none decodes to, so it survives
/// a gRPC → gRPC hop); values gRPC has no type for (arrays, objects) travel as
/// their JSON text.
pub fn parameters_to_pb(p: &Parameters) -> PbParameters {
    p.iter()
        .map(|(k, v)| {
            let choice = match v {
                Value::Null => return (k.clone(), InferParameter { parameter_choice: None }),
                Value::Bool(b) => ParameterChoice::BoolParam(*b),
                Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                    (Some(i), _) => ParameterChoice::Int64Param(i),
                    (None, Some(u)) => ParameterChoice::Uint64Param(u),
                    _ => ParameterChoice::DoubleParam(n.as_f64().unwrap_or(0.0)),
                },
                Value::String(s) => ParameterChoice::StringParam(s.clone()),
                other => ParameterChoice::StringParam(other.to_string()),
            };
            (k.clone(), InferParameter { parameter_choice: Some(choice) })
        })
        .collect()
}

fn datatype(role: &str, name: &str, s: &str) -> Result<DataType, CodecError> {
    DataType::parse(s).ok_or_else(|| CodecError::invalid(format!("{role} '{name}': unknown datatype '{s}'")))
}

/// The `contents` field a datatype's elements belong in.
fn contents_field(dt: DataType) -> Option<&'static str> {
    Some(match dt {
        DataType::Bool => "bool_contents",
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "int_contents",
        DataType::Int64 => "int64_contents",
        DataType::Uint8 | DataType::Uint16 | DataType::Uint32 => "uint_contents",
        DataType::Uint64 => "uint64_contents",
        DataType::Fp32 => "fp32_contents",
        DataType::Fp64 => "fp64_contents",
        DataType::Bytes => "bytes_contents",
        DataType::Fp16 | DataType::Bf16 => return None,
    })
}

/// Names of the non-empty fields of `c`.
fn used_fields(c: &InferTensorContents) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut add = |used: bool, name| {
        if used {
            v.push(name)
        }
    };
    add(!c.bool_contents.is_empty(), "bool_contents");
    add(!c.int_contents.is_empty(), "int_contents");
    add(!c.int64_contents.is_empty(), "int64_contents");
    add(!c.uint_contents.is_empty(), "uint_contents");
    add(!c.uint64_contents.is_empty(), "uint64_contents");
    add(!c.fp32_contents.is_empty(), "fp32_contents");
    add(!c.fp64_contents.is_empty(), "fp64_contents");
    add(!c.bytes_contents.is_empty(), "bytes_contents");
    v
}

/// Typed `contents` → little-endian bytes of `dt`, range-checked.
pub fn contents_to_bytes(role: &str, name: &str, dt: DataType, c: InferTensorContents) -> Result<Bytes, CodecError> {
    let Some(field) = contents_field(dt) else {
        return Err(CodecError::invalid(format!(
            "{role} '{name}': {dt} has no typed contents field; send it in raw_{role}_contents"
        )));
    };
    if let Some(wrong) = used_fields(&c).into_iter().find(|f| *f != field) {
        return Err(CodecError::invalid(format!(
            "{role} '{name}' has datatype {dt}, so its data belongs in contents.{field}, not contents.{wrong}"
        )));
    }
    let range =
        |v: &dyn std::fmt::Display| CodecError::invalid(format!("{role} '{name}': value {v} is out of range for {dt}"));
    let mut out = BytesMut::new();
    match dt {
        DataType::Bool => out.extend(c.bool_contents.iter().map(|b| *b as u8)),
        DataType::Int8 => {
            for v in c.int_contents {
                out.put_i8(i8::try_from(v).map_err(|_| range(&v))?);
            }
        }
        DataType::Int16 => {
            for v in c.int_contents {
                out.put_i16_le(i16::try_from(v).map_err(|_| range(&v))?);
            }
        }
        DataType::Int32 => c.int_contents.iter().for_each(|v| out.put_i32_le(*v)),
        DataType::Int64 => c.int64_contents.iter().for_each(|v| out.put_i64_le(*v)),
        DataType::Uint8 => {
            for v in c.uint_contents {
                out.put_u8(u8::try_from(v).map_err(|_| range(&v))?);
            }
        }
        DataType::Uint16 => {
            for v in c.uint_contents {
                out.put_u16_le(u16::try_from(v).map_err(|_| range(&v))?);
            }
        }
        DataType::Uint32 => c.uint_contents.iter().for_each(|v| out.put_u32_le(*v)),
        DataType::Uint64 => c.uint64_contents.iter().for_each(|v| out.put_u64_le(*v)),
        DataType::Fp32 => c.fp32_contents.iter().for_each(|v| out.put_f32_le(*v)),
        DataType::Fp64 => c.fp64_contents.iter().for_each(|v| out.put_f64_le(*v)),
        DataType::Bytes => {
            for el in c.bytes_contents {
                let len = u32::try_from(el.len())
                    .map_err(|_| CodecError::invalid(format!("{role} '{name}': a BYTES element over 4 GiB")))?;
                out.put_u32_le(len);
                out.extend_from_slice(&el);
            }
        }
        DataType::Fp16 | DataType::Bf16 => unreachable!("no contents field"),
    }
    Ok(out.freeze())
}

/// A tensor's bytes → typed `contents`; `None` for FP16/BF16 (raw only) or bytes
/// that do not hold whole elements.
pub fn bytes_to_contents(t: &Tensor) -> Option<InferTensorContents> {
    let d = &t.data[..];
    let mut c = InferTensorContents::default();
    fn le<const N: usize, T>(d: &[u8], f: impl Fn([u8; N]) -> T) -> Option<Vec<T>> {
        if !d.len().is_multiple_of(N) {
            return None;
        }
        Some(d.chunks_exact(N).map(|b| f(b.try_into().expect("N bytes"))).collect())
    }
    match t.datatype {
        DataType::Bool => c.bool_contents = d.iter().map(|b| *b != 0).collect(),
        DataType::Int8 => c.int_contents = d.iter().map(|b| *b as i8 as i32).collect(),
        DataType::Int16 => c.int_contents = le(d, |b| i16::from_le_bytes(b) as i32)?,
        DataType::Int32 => c.int_contents = le(d, i32::from_le_bytes)?,
        DataType::Int64 => c.int64_contents = le(d, i64::from_le_bytes)?,
        DataType::Uint8 => c.uint_contents = d.iter().map(|b| *b as u32).collect(),
        DataType::Uint16 => c.uint_contents = le(d, |b| u16::from_le_bytes(b) as u32)?,
        DataType::Uint32 => c.uint_contents = le(d, u32::from_le_bytes)?,
        DataType::Uint64 => c.uint64_contents = le(d, u64::from_le_bytes)?,
        DataType::Fp32 => c.fp32_contents = le(d, f32::from_le_bytes)?,
        DataType::Fp64 => c.fp64_contents = le(d, f64::from_le_bytes)?,
        DataType::Bytes => {
            c.bytes_contents =
                bytes_elements(d).map(|el| el.map(|s| t.data.slice_ref(s))).collect::<Result<Vec<_>, _>>().ok()?
        }
        DataType::Fp16 | DataType::Bf16 => return None,
    }
    Some(c)
}

/// A decoded client request: the tensor model plus how its tensors arrived.
pub struct DecodedRequest {
    pub model_name: String,
    /// `None` when the client left `model_version` empty.
    pub model_version: Option<String>,
    pub request: InferRequest,
    /// The inputs came in `raw_input_contents`: the answer uses `raw_output_contents` too.
    pub raw: bool,
}

/// Decodes and validates a `ModelInferRequest`, exactly as strict as the HTTP codec.
pub fn decode_request(msg: pb::ModelInferRequest) -> Result<DecodedRequest, CodecError> {
    let raw = !msg.raw_input_contents.is_empty();
    if raw && msg.raw_input_contents.len() != msg.inputs.len() {
        return Err(CodecError::invalid(format!(
            "raw_input_contents has {} entries but the request has {} inputs (one each, in order)",
            msg.raw_input_contents.len(),
            msg.inputs.len()
        )));
    }
    let mut raw_contents = msg.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(msg.inputs.len());
    for t in msg.inputs {
        let dt = datatype("input", &t.name, &t.datatype)?;
        let data = match (raw_contents.next(), t.contents) {
            (Some(_), Some(c)) if !used_fields(&c).is_empty() => {
                // Triton's words, which clients match on.
                return Err(CodecError::invalid(format!(
                    "contents field must not be specified when using raw_input_contents for '{}' for model '{}'",
                    t.name, msg.model_name
                )));
            }
            (Some(r), _) => r,
            (None, Some(c)) => contents_to_bytes("input", &t.name, dt, c)?,
            (None, None) => Bytes::new(),
        };
        inputs.push(Tensor {
            name: t.name,
            datatype: dt,
            shape: t.shape,
            data,
            parameters: parameters_from_pb(t.parameters)?,
        });
    }
    let outputs = msg
        .outputs
        .into_iter()
        .map(|o| Ok(RequestedOutput { name: o.name, binary: None, parameters: parameters_from_pb(o.parameters)? }))
        .collect::<Result<Vec<_>, CodecError>>()?;
    let request = InferRequest {
        id: Some(msg.id).filter(|s| !s.is_empty()),
        inputs,
        outputs,
        parameters: parameters_from_pb(msg.parameters)?,
        binary_output: false,
        metadata: Default::default(),
        raw_json: None,
    };
    request.validate()?;
    Ok(DecodedRequest {
        model_name: msg.model_name,
        model_version: Some(msg.model_version).filter(|s| !s.is_empty()),
        request,
        raw,
    })
}

/// Encodes a response for a client: `raw_output_contents` when `raw`, typed
/// `contents` otherwise (FP16/BF16 outputs force raw: they have no typed field).
pub fn encode_response(resp: InferResponse, raw: bool) -> pb::ModelInferResponse {
    let raw = raw || resp.outputs.iter().any(|t| contents_field(t.datatype).is_none());
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw_output_contents = Vec::with_capacity(if raw { resp.outputs.len() } else { 0 });
    for t in resp.outputs {
        let contents = if raw { None } else { bytes_to_contents(&t) };
        outputs.push(pb::model_infer_response::InferOutputTensor {
            datatype: t.datatype.as_str().to_owned(),
            parameters: parameters_to_pb(&t.parameters),
            contents,
            name: t.name,
            shape: t.shape,
        });
        if raw {
            raw_output_contents.push(t.data);
        }
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version.unwrap_or_default(),
        id: resp.id.unwrap_or_default(),
        parameters: parameters_to_pb(&resp.parameters),
        outputs,
        raw_output_contents,
    }
}

/// Encodes a request for a backend; tensors always travel raw (no per-element work).
pub fn encode_request(req: InferRequest, model_name: &str, model_version: Option<&str>) -> pb::ModelInferRequest {
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut raw = Vec::with_capacity(req.inputs.len());
    for t in req.inputs {
        inputs.push(pb::model_infer_request::InferInputTensor {
            datatype: t.datatype.as_str().to_owned(),
            parameters: parameters_to_pb(&t.parameters),
            contents: None,
            name: t.name,
            shape: t.shape,
        });
        raw.push(t.data);
    }
    pb::ModelInferRequest {
        model_name: model_name.to_owned(),
        model_version: model_version.unwrap_or_default().to_owned(),
        id: req.id.unwrap_or_default(),
        parameters: parameters_to_pb(&req.parameters),
        inputs,
        outputs: req
            .outputs
            .iter()
            .map(|o| pb::model_infer_request::InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: parameters_to_pb(&o.parameters),
            })
            .collect(),
        raw_input_contents: raw,
    }
}

/// Decodes a backend's `ModelInferResponse` (raw or typed outputs), checking every output.
pub fn decode_response(msg: pb::ModelInferResponse) -> Result<InferResponse, CodecError> {
    let raw = !msg.raw_output_contents.is_empty();
    if raw && msg.raw_output_contents.len() != msg.outputs.len() {
        return Err(CodecError::invalid(format!(
            "raw_output_contents has {} entries for {} outputs",
            msg.raw_output_contents.len(),
            msg.outputs.len()
        )));
    }
    let mut raw_contents = msg.raw_output_contents.into_iter();
    let mut outputs = Vec::with_capacity(msg.outputs.len());
    for t in msg.outputs {
        let dt = datatype("output", &t.name, &t.datatype)?;
        let data = match (raw_contents.next(), t.contents) {
            (Some(r), _) => r,
            (None, Some(c)) => contents_to_bytes("output", &t.name, dt, c)?,
            (None, None) => Bytes::new(),
        };
        let t =
            Tensor { name: t.name, datatype: dt, shape: t.shape, data, parameters: parameters_from_pb(t.parameters)? };
        t.validate().map_err(|e| CodecError::invalid(format!("output '{}': {e}", t.name)))?;
        outputs.push(t);
    }
    Ok(InferResponse {
        model_name: msg.model_name,
        model_version: Some(msg.model_version).filter(|s| !s.is_empty()),
        id: Some(msg.id).filter(|s| !s.is_empty()),
        parameters: parameters_from_pb(msg.parameters)?,
        outputs,
        raw_json: None,
    })
}

/// V2 model metadata JSON (what every backend answers) → gRPC, under the public model name.
pub fn metadata_from_json(v: &Value, public_name: &str) -> Result<pb::ModelMetadataResponse, CodecError> {
    let tensors = |key: &str| -> Result<Vec<pb::model_metadata_response::TensorMetadata>, CodecError> {
        let Some(list) = v.get(key) else { return Ok(Vec::new()) };
        let list = list.as_array().ok_or_else(|| CodecError::invalid(format!("metadata '{key}' is not a list")))?;
        list.iter()
            .map(|t| {
                let shape = t["shape"]
                    .as_array()
                    .map(|s| s.iter().filter_map(Value::as_i64).collect())
                    .ok_or_else(|| CodecError::invalid(format!("metadata '{key}' entry has no shape")))?;
                Ok(pb::model_metadata_response::TensorMetadata {
                    name: t["name"].as_str().unwrap_or_default().to_owned(),
                    datatype: t["datatype"].as_str().unwrap_or_default().to_owned(),
                    shape,
                })
            })
            .collect()
    };
    Ok(pb::ModelMetadataResponse {
        name: public_name.to_owned(),
        versions: v["versions"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default(),
        platform: v["platform"].as_str().unwrap_or_default().to_owned(),
        inputs: tensors("inputs")?,
        outputs: tensors("outputs")?,
    })
}

/// gRPC model metadata → the V2 JSON object `Backend::model_metadata` returns.
pub fn metadata_to_json(m: &pb::ModelMetadataResponse) -> Value {
    let tensors = |ts: &[pb::model_metadata_response::TensorMetadata]| -> Value {
        ts.iter()
            .map(|t| serde_json::json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
            .collect::<Vec<_>>()
            .into()
    };
    serde_json::json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": tensors(&m.inputs),
        "outputs": tensors(&m.outputs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TensorError;

    fn input(
        name: &str,
        dt: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: dt.into(),
            shape,
            parameters: Default::default(),
            contents,
        }
    }

    fn fp32(v: &[f32]) -> Bytes {
        Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    #[test]
    fn raw_and_typed_requests_decode_to_the_same_tensor() {
        let typed = pb::ModelInferRequest {
            model_name: "m".into(),
            id: "r1".into(),
            inputs: vec![input(
                "x",
                "FP32",
                vec![1, 3],
                Some(InferTensorContents { fp32_contents: vec![1.0, 2.5, -3.0], ..Default::default() }),
            )],
            ..Default::default()
        };
        let raw = pb::ModelInferRequest {
            model_name: "m".into(),
            model_version: "2".into(),
            inputs: vec![input("x", "FP32", vec![1, 3], None)],
            raw_input_contents: vec![fp32(&[1.0, 2.5, -3.0])],
            ..Default::default()
        };
        let a = decode_request(typed).unwrap();
        let b = decode_request(raw).unwrap();
        assert!(!a.raw && b.raw);
        assert_eq!(a.request.inputs, b.request.inputs);
        assert_eq!(a.request.id.as_deref(), Some("r1"));
        assert_eq!(a.model_version, None);
        assert_eq!(b.model_version.as_deref(), Some("2"));
    }

    #[test]
    fn every_typed_datatype_round_trips() {
        let cases: Vec<(&str, InferTensorContents)> = vec![
            ("BOOL", InferTensorContents { bool_contents: vec![true, false], ..Default::default() }),
            ("INT8", InferTensorContents { int_contents: vec![-128, 127], ..Default::default() }),
            ("INT16", InferTensorContents { int_contents: vec![-300, 300], ..Default::default() }),
            ("INT32", InferTensorContents { int_contents: vec![i32::MIN, i32::MAX], ..Default::default() }),
            ("INT64", InferTensorContents { int64_contents: vec![i64::MIN, 7], ..Default::default() }),
            ("UINT8", InferTensorContents { uint_contents: vec![0, 255], ..Default::default() }),
            ("UINT16", InferTensorContents { uint_contents: vec![0, 65535], ..Default::default() }),
            ("UINT32", InferTensorContents { uint_contents: vec![0, u32::MAX], ..Default::default() }),
            ("UINT64", InferTensorContents { uint64_contents: vec![0, u64::MAX], ..Default::default() }),
            ("FP32", InferTensorContents { fp32_contents: vec![0.5, -1.0], ..Default::default() }),
            ("FP64", InferTensorContents { fp64_contents: vec![0.25, 1e300], ..Default::default() }),
            (
                "BYTES",
                InferTensorContents {
                    bytes_contents: vec![Bytes::from_static(b"ab"), Bytes::new()],
                    ..Default::default()
                },
            ),
        ];
        for (dt, c) in cases {
            let req =
                pb::ModelInferRequest { inputs: vec![input("x", dt, vec![2], Some(c.clone()))], ..Default::default() };
            let d = decode_request(req).unwrap_or_else(|e| panic!("{dt}: {e}"));
            let back = bytes_to_contents(&d.request.inputs[0]).unwrap();
            assert_eq!(back, c, "{dt}");
        }
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let cases: Vec<(pb::ModelInferRequest, &str)> = vec![
            (
                pb::ModelInferRequest {
                    inputs: vec![input(
                        "x",
                        "INT8",
                        vec![1],
                        Some(InferTensorContents { int_contents: vec![300], ..Default::default() }),
                    )],
                    ..Default::default()
                },
                "value 300 is out of range for INT8",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input(
                        "x",
                        "FP32",
                        vec![1],
                        Some(InferTensorContents { int_contents: vec![1], ..Default::default() }),
                    )],
                    ..Default::default()
                },
                "belongs in contents.fp32_contents, not contents.int_contents",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("x", "FP32", vec![1, 16], None)],
                    raw_input_contents: vec![fp32(&[1.0; 15])],
                    ..Default::default()
                },
                "input 'x': data holds 60 bytes but shape and datatype need 64",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("x", "FP32", vec![1], None), input("y", "FP32", vec![1], None)],
                    raw_input_contents: vec![fp32(&[1.0])],
                    ..Default::default()
                },
                "raw_input_contents has 1 entries but the request has 2 inputs",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("x", "FP17", vec![1], None)],
                    raw_input_contents: vec![fp32(&[1.0])],
                    ..Default::default()
                },
                "unknown datatype 'FP17'",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("h", "FP16", vec![1], Some(InferTensorContents::default()))],
                    ..Default::default()
                },
                "FP16 has no typed contents field",
            ),
            (pb::ModelInferRequest::default(), "request has no inputs"),
        ];
        for (req, want) in cases {
            let e = decode_request(req).err().expect("rejected").to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        // The same tensor validation as HTTP.
        let req = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![-1], None)],
            raw_input_contents: vec![Bytes::new()],
            ..Default::default()
        };
        assert!(matches!(decode_request(req), Err(CodecError::Tensor(TensorError::In(_, _)))));
    }

    #[test]
    fn responses_are_raw_only_when_asked_or_needed() {
        let resp = InferResponse {
            model_name: "m".into(),
            model_version: Some("1".into()),
            outputs: vec![Tensor::new("y", DataType::Fp32, vec![2], fp32(&[1.0, 2.0]))],
            ..Default::default()
        };
        let typed = encode_response(resp.clone(), false);
        assert!(typed.raw_output_contents.is_empty());
        assert_eq!(typed.outputs[0].contents.as_ref().unwrap().fp32_contents, vec![1.0, 2.0]);
        let raw = encode_response(resp.clone(), true);
        assert_eq!(raw.raw_output_contents, vec![fp32(&[1.0, 2.0])]);
        assert_eq!(decode_response(typed).unwrap().outputs, decode_response(raw).unwrap().outputs);
        let mut half = resp;
        half.outputs[0] = Tensor::new("h", DataType::Fp16, vec![2], Bytes::from_static(&[0, 60, 0, 60]));
        assert_eq!(encode_response(half, false).raw_output_contents.len(), 1);
    }

    #[test]
    fn parameters_round_trip() {
        let mut p = Parameters::new();
        p.insert("priority".into(), Value::from(2));
        p.insert("big".into(), Value::from(u64::MAX));
        p.insert("ratio".into(), Value::from(0.5));
        p.insert("flag".into(), Value::Bool(true));
        p.insert("name".into(), Value::from("x"));
        assert_eq!(parameters_from_pb(parameters_to_pb(&p)).unwrap(), p);
    }

    /// Found by the `grpc_response` fuzz target: a parameter without a value
    /// came back from a round trip as the string "null".
    #[test]
    fn a_parameter_without_a_value_stays_without_one() {
        let mut p = PbParameters::new();
        p.insert("empty".into(), InferParameter { parameter_choice: None });
        let json = parameters_from_pb(p.clone()).unwrap();
        assert_eq!(json["empty"], Value::Null);
        assert_eq!(parameters_to_pb(&json), p);
    }
}
