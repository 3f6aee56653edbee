//! KServe V2 / Open Inference Protocol REST bodies: JSON tensors and the
//! binary tensor extension, in both directions (client ↔ Switchyard ↔ backend).
//!
//! JSON `data` is parsed straight into the tensor's little-endian bytes by a
//! streaming visitor (flat or nested arrays, range-checked per datatype), with
//! no intermediate `serde_json::Value`.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::CodecError;
use crate::tensor::{bytes_elements, DataType, InferRequest, InferResponse, Parameters, RequestedOutput, Tensor};

/// HTTP header that marks a binary-extension body and gives the JSON part's length.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";
const BINARY_DATA_SIZE: &str = "binary_data_size";

#[derive(Deserialize)]
struct RawTensor<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: &'a str,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawRequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    inputs: Vec<RawTensor<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawRequestedOutput>>,
}

#[derive(Deserialize)]
struct RawResponse<'a> {
    model_name: String,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(borrow)]
    outputs: Vec<RawTensor<'a>>,
}

/// Splits a body into its JSON part and binary part.
fn split_body(body: &Bytes, header_len: Option<usize>) -> Result<(&[u8], Bytes), CodecError> {
    match header_len {
        None => Ok((&body[..], Bytes::new())),
        Some(n) if n > body.len() => Err(CodecError::invalid(format!(
            "Inference-Header-Content-Length is {n} but the body has only {} bytes",
            body.len()
        ))),
        Some(n) => Ok((&body[..n], body.slice(n..))),
    }
}

fn json_err(e: serde_json::Error) -> CodecError {
    CodecError::Json(e.to_string())
}

/// Decodes a V2 infer request body (JSON, or JSON + binary blobs).
pub fn decode_request(body: &Bytes, header_len: Option<usize>) -> Result<InferRequest, CodecError> {
    let (json, binary) = split_body(body, header_len)?;
    let raw: RawRequest = serde_json::from_slice(json).map_err(json_err)?;
    let mut cursor = 0usize;
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for t in raw.inputs {
        inputs.push(decode_tensor(t, "input", &binary, &mut cursor)?);
    }
    check_trailing(&binary, cursor)?;
    let mut parameters = raw.parameters.unwrap_or_default();
    let binary_output = take_bool(&mut parameters, "binary_data_output")?.unwrap_or(false);
    let outputs = raw
        .outputs
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let mut parameters = o.parameters.unwrap_or_default();
            let binary = take_bool(&mut parameters, "binary_data")?;
            Ok(RequestedOutput { name: o.name, binary, parameters })
        })
        .collect::<Result<Vec<_>, CodecError>>()?;
    let req = InferRequest { id: raw.id, inputs, outputs, parameters, binary_output };
    req.validate()?;
    Ok(req)
}

/// Decodes a V2 infer response body from a backend.
pub fn decode_response(body: &Bytes, header_len: Option<usize>) -> Result<InferResponse, CodecError> {
    let (json, binary) = split_body(body, header_len)?;
    let raw: RawResponse = serde_json::from_slice(json).map_err(json_err)?;
    let mut cursor = 0usize;
    let mut outputs = Vec::with_capacity(raw.outputs.len());
    for t in raw.outputs {
        let t = decode_tensor(t, "output", &binary, &mut cursor)?;
        t.validate().map_err(|e| CodecError::invalid(format!("output '{}': {e}", t.name)))?;
        outputs.push(t);
    }
    check_trailing(&binary, cursor)?;
    Ok(InferResponse {
        model_name: raw.model_name,
        model_version: raw.model_version,
        id: raw.id,
        parameters: raw.parameters.unwrap_or_default(),
        outputs,
    })
}

fn check_trailing(binary: &Bytes, cursor: usize) -> Result<(), CodecError> {
    if cursor != binary.len() {
        return Err(CodecError::invalid(format!(
            "binary section has {} bytes but the tensors' binary_data_size add up to {cursor}",
            binary.len()
        )));
    }
    Ok(())
}

fn take_bool(p: &mut Parameters, key: &str) -> Result<Option<bool>, CodecError> {
    match p.remove(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(other) => Err(CodecError::invalid(format!("parameter '{key}' must be a boolean, got {other}"))),
    }
}

fn decode_tensor(t: RawTensor, role: &str, binary: &Bytes, cursor: &mut usize) -> Result<Tensor, CodecError> {
    let name = t.name;
    let datatype = DataType::parse(t.datatype)
        .ok_or_else(|| CodecError::invalid(format!("{role} '{name}': unknown datatype '{}'", t.datatype)))?;
    let mut parameters = t.parameters.unwrap_or_default();
    let data = match parameters.remove(BINARY_DATA_SIZE) {
        Some(size) => {
            let size = size.as_u64().ok_or_else(|| {
                CodecError::invalid(format!("{role} '{name}': binary_data_size must be a non-negative integer"))
            })? as usize;
            if t.data.is_some() {
                return Err(CodecError::invalid(format!("{role} '{name}' has both 'data' and binary_data_size")));
            }
            let end = cursor.checked_add(size).filter(|&e| e <= binary.len()).ok_or_else(|| {
                CodecError::invalid(format!(
                    "{role} '{name}': binary_data_size {size} runs past the end of the binary section ({} bytes)",
                    binary.len()
                ))
            })?;
            let data = binary.slice(*cursor..end);
            *cursor = end;
            data
        }
        None => {
            let raw = t.data.ok_or_else(|| CodecError::invalid(format!("{role} '{name}' has no 'data'")))?;
            let mut out = Vec::new();
            let mut count = 0usize;
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Flatten { dt: datatype, out: &mut out, count: &mut count }
                .deserialize(&mut de)
                .map_err(|e| CodecError::invalid(format!("{role} '{name}': {}", strip_position(&e))))?;
            Bytes::from(out)
        }
    };
    Ok(Tensor { name, datatype, shape: t.shape, data, parameters })
}

/// serde_json appends " at line 1 column N" of the *data* fragment, which misleads.
fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Streams (possibly nested) JSON arrays of one datatype into little-endian bytes.
struct Flatten<'a> {
    dt: DataType,
    out: &'a mut Vec<u8>,
    count: &'a mut usize,
}

impl Flatten<'_> {
    fn reborrow(&mut self) -> Flatten<'_> {
        Flatten { dt: self.dt, out: self.out, count: self.count }
    }

    fn int<E: de::Error>(self, v: i128) -> Result<(), E> {
        let dt = self.dt;
        let range = || E::custom(format!("value {v} is out of range for {dt}"));
        match dt {
            DataType::Bool => return Err(E::custom(format!("expected true/false for BOOL, got {v}"))),
            DataType::Uint8 => self.out.push(u8::try_from(v).map_err(|_| range())?),
            DataType::Int8 => self.out.push(i8::try_from(v).map_err(|_| range())? as u8),
            DataType::Uint16 => self.out.put_u16_le(u16::try_from(v).map_err(|_| range())?),
            DataType::Int16 => self.out.put_i16_le(i16::try_from(v).map_err(|_| range())?),
            DataType::Uint32 => self.out.put_u32_le(u32::try_from(v).map_err(|_| range())?),
            DataType::Int32 => self.out.put_i32_le(i32::try_from(v).map_err(|_| range())?),
            DataType::Uint64 => self.out.put_u64_le(u64::try_from(v).map_err(|_| range())?),
            DataType::Int64 => self.out.put_i64_le(i64::try_from(v).map_err(|_| range())?),
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => return self.float(v as f64),
            DataType::Bytes => return Err(E::custom(format!("expected a string for BYTES, got {v}"))),
        }
        *self.count += 1;
        Ok(())
    }

    fn float<E: de::Error>(self, v: f64) -> Result<(), E> {
        match self.dt {
            DataType::Fp32 => self.out.put_f32_le(v as f32),
            DataType::Fp64 => self.out.put_f64_le(v),
            DataType::Fp16 => self.out.put_u16_le(f16::from_f64(v).to_bits()),
            DataType::Bf16 => self.out.put_u16_le(bf16::from_f64(v).to_bits()),
            dt => return Err(E::custom(format!("expected an integer for {dt}, got {v}"))),
        }
        *self.count += 1;
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} values (flat or nested arrays)", self.dt)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if let Some(n) = seq.size_hint() {
            self.out.reserve(n * self.dt.size().unwrap_or(8));
        }
        while seq.next_element_seed(self.reborrow())?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        if self.dt != DataType::Bool {
            return Err(E::custom(format!("expected {} values, got {v}", self.dt)));
        }
        self.out.push(v as u8);
        *self.count += 1;
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.int(v as i128)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.int(v as i128)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.float(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.dt != DataType::Bytes {
            return Err(E::custom(format!("expected {} values, got a string", self.dt)));
        }
        let len = u32::try_from(v.len()).map_err(|_| E::custom("BYTES element longer than 4 GiB"))?;
        self.out.put_u32_le(len);
        self.out.extend_from_slice(v.as_bytes());
        *self.count += 1;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!("null is not a {} value", self.dt)))
    }
}

/// Serializes a tensor's bytes as a flat JSON array.
struct DataJson<'a>(&'a Tensor);

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.0;
        let d = &t.data[..];
        macro_rules! each {
            ($n:expr, $conv:expr) => {{
                let mut seq = s.serialize_seq(Some(d.len() / $n))?;
                for c in d.chunks_exact($n) {
                    seq.serialize_element(&$conv(c.try_into().expect("chunk size")))?;
                }
                seq.end()
            }};
        }
        match t.datatype {
            DataType::Bool => each!(1, |c: [u8; 1]| c[0] != 0),
            DataType::Uint8 => each!(1, |c: [u8; 1]| c[0]),
            DataType::Int8 => each!(1, |c: [u8; 1]| c[0] as i8),
            DataType::Uint16 => each!(2, u16::from_le_bytes),
            DataType::Int16 => each!(2, i16::from_le_bytes),
            DataType::Uint32 => each!(4, u32::from_le_bytes),
            DataType::Int32 => each!(4, i32::from_le_bytes),
            DataType::Uint64 => each!(8, u64::from_le_bytes),
            DataType::Int64 => each!(8, i64::from_le_bytes),
            DataType::Fp16 => each!(2, |c| f16::from_le_bytes(c).to_f32()),
            DataType::Bf16 => each!(2, |c| bf16::from_le_bytes(c).to_f32()),
            DataType::Fp32 => each!(4, f32::from_le_bytes),
            DataType::Fp64 => each!(8, f64::from_le_bytes),
            DataType::Bytes => {
                let mut seq = s.serialize_seq(None)?;
                for el in bytes_elements(d) {
                    let el = el.map_err(serde::ser::Error::custom)?;
                    seq.serialize_element(&String::from_utf8_lossy(el))?;
                }
                seq.end()
            }
        }
    }
}

/// One tensor in a body we write; `binary` moves its bytes after the JSON.
struct TensorJson<'a> {
    t: &'a Tensor,
    binary: bool,
}

impl Serialize for TensorJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = self.t;
        let mut st = s.serialize_struct("Tensor", 5)?;
        st.serialize_field("name", &t.name)?;
        st.serialize_field("datatype", t.datatype.as_str())?;
        st.serialize_field("shape", &t.shape)?;
        if self.binary {
            let mut p = t.parameters.clone();
            p.insert(BINARY_DATA_SIZE.into(), Value::from(t.data.len()));
            st.serialize_field("parameters", &p)?;
        } else {
            if !t.parameters.is_empty() {
                st.serialize_field("parameters", &t.parameters)?;
            }
            st.serialize_field("data", &DataJson(t))?;
        }
        st.end()
    }
}

/// An encoded body: bytes plus, when it carries binary blobs, the JSON part's length.
pub struct Encoded {
    pub body: Bytes,
    pub header_len: Option<usize>,
}

fn finish(json: BytesMut, tensors: &[&Tensor], binary: &[bool]) -> Encoded {
    let header_len = json.len();
    if !binary.iter().any(|b| *b) {
        return Encoded { body: json.freeze(), header_len: None };
    }
    let extra: usize = tensors.iter().zip(binary).filter(|(_, b)| **b).map(|(t, _)| t.data.len()).sum();
    let mut out = json;
    out.reserve(extra);
    for (t, b) in tensors.iter().zip(binary) {
        if *b {
            out.extend_from_slice(&t.data);
        }
    }
    Encoded { body: out.freeze(), header_len: Some(header_len) }
}

#[derive(Serialize)]
struct ResponseJson<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: &'a Parameters,
    outputs: Vec<TensorJson<'a>>,
}

/// Encodes a response for a client; `binary(name)` says which outputs go binary.
pub fn encode_response(resp: &InferResponse, binary: impl Fn(&str) -> bool) -> Encoded {
    let flags: Vec<bool> = resp.outputs.iter().map(|t| binary(&t.name)).collect();
    let body = ResponseJson {
        model_name: &resp.model_name,
        model_version: resp.model_version.as_deref(),
        id: resp.id.as_deref(),
        parameters: &resp.parameters,
        outputs: resp.outputs.iter().zip(&flags).map(|(t, &binary)| TensorJson { t, binary }).collect(),
    };
    let mut json = BytesMut::with_capacity(256).writer();
    serde_json::to_writer(&mut json, &body).expect("serializing to memory cannot fail");
    let tensors: Vec<&Tensor> = resp.outputs.iter().collect();
    finish(json.into_inner(), &tensors, &flags)
}

struct OutputJson<'a> {
    o: &'a RequestedOutput,
    binary: bool,
}

impl Serialize for OutputJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Output", 2)?;
        st.serialize_field("name", &self.o.name)?;
        let mut p = self.o.parameters.clone();
        p.insert("binary_data".into(), Value::Bool(self.binary));
        st.serialize_field("parameters", &p)?;
        st.end()
    }
}

#[derive(Serialize)]
struct RequestJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: &'a Parameters,
    inputs: Vec<TensorJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    outputs: Vec<OutputJson<'a>>,
}

/// Encodes a request for a backend. With `binary` the inputs travel as blobs
/// and binary outputs are asked for; without it everything is plain JSON (for
/// servers that lack the extension, like MLServer).
pub fn encode_request(req: &InferRequest, binary: bool) -> Encoded {
    let mut parameters = req.parameters.clone();
    if binary && req.outputs.is_empty() {
        parameters.insert("binary_data_output".into(), Value::Bool(true));
    }
    let body = RequestJson {
        id: req.id.as_deref(),
        parameters: &parameters,
        inputs: req.inputs.iter().map(|t| TensorJson { t, binary }).collect(),
        outputs: req.outputs.iter().map(|o| OutputJson { o, binary }).collect(),
    };
    let mut json = BytesMut::with_capacity(128 + req.inputs.iter().map(|t| t.data.len() * 3).sum::<usize>()).writer();
    serde_json::to_writer(&mut json, &body).expect("serializing to memory cannot fail");
    let tensors: Vec<&Tensor> = req.inputs.iter().collect();
    let flags = vec![binary; tensors.len()];
    finish(json.into_inner(), &tensors, &flags)
}

/// V2 error body `{"error": "..."}`.
pub fn error_body(message: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(&serde_json::json!({ "error": message })).expect("json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(json: &str) -> Result<InferRequest, CodecError> {
        decode_request(&Bytes::copy_from_slice(json.as_bytes()), None)
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    #[test]
    fn json_flat_and_nested_give_the_same_bytes() {
        let a = req(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}]}"#).unwrap();
        let b = req(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}]}"#).unwrap();
        assert_eq!(a.inputs[0].data, b.inputs[0].data);
        assert_eq!(f32s(&a.inputs[0]), vec![1.0, 2.5, 3.0, 4.0]);
    }

    #[test]
    fn every_datatype_round_trips_through_json_and_binary() {
        let cases = [
            ("BOOL", "[true,false]"),
            ("UINT8", "[0,255]"),
            ("UINT16", "[0,65535]"),
            ("UINT32", "[0,4294967295]"),
            ("UINT64", "[0,18446744073709551615]"),
            ("INT8", "[-128,127]"),
            ("INT16", "[-32768,32767]"),
            ("INT32", "[-2147483648,2147483647]"),
            ("INT64", "[-9223372036854775808,9223372036854775807]"),
            ("FP16", "[1.5,-2.0]"),
            ("BF16", "[1.5,-2.0]"),
            ("FP32", "[1.5,-2.25]"),
            ("FP64", "[1.5,-2.125]"),
            ("BYTES", r#"["hello",""]"#),
        ];
        for (dt, data) in cases {
            let body = format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{dt}","data":{data}}}]}}"#);
            let r = req(&body).unwrap_or_else(|e| panic!("{dt}: {e}"));
            // JSON out and back.
            let resp = InferResponse { model_name: "m".into(), outputs: r.inputs.clone(), ..Default::default() };
            let enc = encode_response(&resp, |_| false);
            let back = decode_response(&enc.body, enc.header_len).unwrap();
            assert_eq!(back.outputs[0].data, r.inputs[0].data, "{dt} json");
            // Binary out and back.
            let enc = encode_response(&resp, |_| true);
            assert!(enc.header_len.is_some());
            let back = decode_response(&enc.body, enc.header_len).unwrap();
            assert_eq!(back.outputs[0], r.inputs[0], "{dt} binary");
        }
    }

    #[test]
    fn binary_request_is_split_by_binary_data_size() {
        let json = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},{"name":"b","shape":[1],"datatype":"FP32","data":[7]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}"#;
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(&1i32.to_le_bytes());
        body.extend_from_slice(&2i32.to_le_bytes());
        let r = decode_request(&Bytes::from(body), Some(json.len())).unwrap();
        assert_eq!(&r.inputs[0].data[..], &[1, 0, 0, 0, 2, 0, 0, 0]);
        assert!(r.inputs[0].parameters.is_empty());
        assert!(r.wants_binary("y"));
        assert!(!r.wants_binary("z"));
        // The request re-encoded for a backend round-trips both ways.
        for binary in [false, true] {
            let enc = encode_request(&r, binary);
            let again = decode_request(&enc.body, enc.header_len).unwrap();
            assert_eq!(again.inputs, r.inputs);
            assert_eq!(again.outputs[0].binary, Some(binary));
        }
    }

    #[test]
    fn malformed_requests_name_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("{", "invalid JSON"),
            (r#"{"inputs":[]}"#, "no inputs"),
            (r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP33","data":[1,2]}]}"#, "unknown datatype 'FP33'"),
            (r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#, "input 'x'"),
            (r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, "negative"),
            (
                r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#,
                "overflow",
            ),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#, "out of range for INT8"),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#, "expected an integer"),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#, "got a string"),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#, "has no 'data'"),
            (r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[null]}]}"#, "null"),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "more than once",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#,
                "past the end",
            ),
        ];
        for (body, needle) in cases {
            let e = req(body).expect_err(body).to_string();
            assert!(e.contains(needle), "{body}: `{e}` lacks `{needle}`");
        }
        let e = decode_request(&Bytes::from_static(b"{}"), Some(10)).unwrap_err().to_string();
        assert!(e.contains("Inference-Header-Content-Length"), "{e}");
        let json = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#;
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(&[0; 6]);
        let e = decode_request(&Bytes::from(body), Some(json.len())).unwrap_err().to_string();
        assert!(e.contains("binary section has 6 bytes"), "{e}");
    }
}
