//! Decoding V2 REST bodies into the tensor model: requests from clients and
//! responses from backends, JSON with or without the binary extension's blobs.
//!
//! JSON `data` is parsed straight into the tensor's little-endian bytes by a
//! streaming visitor (flat or nested arrays, range-checked per datatype), with
//! no intermediate `serde_json::Value`.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::elements::Flatten;
use crate::error::CodecError;
use crate::tensor::{
    element_count, DataType, InferRequest, InferResponse, Parameters, RequestedOutput, Tensor, SHM_REGION,
};

/// The parameter that marks a tensor as a binary blob of this many bytes.
pub(super) const BINARY_DATA_SIZE: &str = "binary_data_size";

#[derive(Deserialize)]
struct RawTensor<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: &'a str,
    #[serde(default)]
    parameters: Option<Parameters>,
    #[serde(default, borrow)]
    data: DataIn<'a>,
}

/// A tensor's JSON `data`: absent (or null), its raw text to decode once the
/// datatype is known, or already decoded while the body was parsed.
#[derive(Default)]
enum DataIn<'a> {
    #[default]
    Absent,
    Raw(&'a RawValue),
    Decoded(Vec<u8>),
}

impl<'de: 'a, 'a> Deserialize<'de> for DataIn<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<&'a RawValue>::deserialize(d)? {
            Some(raw) => DataIn::Raw(raw),
            None => DataIn::Absent,
        })
    }
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

// The single-pass parse. The derived `Deserialize` impls above are the
// reference: they find every tensor's `data` as a `&RawValue` and decode it
// afterwards, a second scan of the longest part of the body. The seeds below
// build the same `RawRequest`/`RawResponse` in one scan, streaming `data`
// straight into bytes when `datatype` came before it (as every common client
// writes it), else keeping the raw text like the reference. They accept a
// subset of what the reference accepts, with the same result; a body they
// reject in any way is parsed again by the reference, so errors read the same
// whatever the key order (and the cost of a second parse falls on bad bodies).

/// Bytes of tensor data decoded per byte of JSON text at most: an 8-byte
/// element takes at least two characters (a digit and a comma).
const DATA_BYTES_PER_JSON_BYTE: usize = 4;

/// The keys of a tensor object; any other key is ignored, as the derived
/// impls do (escaped keys are matched unescaped).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
pub(super) enum TensorField {
    Name,
    Shape,
    Datatype,
    Parameters,
    Data,
    #[serde(other)]
    Other,
}

/// The keys of a request body; any other key is ignored.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
pub(super) enum RequestField {
    Id,
    Parameters,
    Inputs,
    Outputs,
    #[serde(other)]
    Other,
}

/// The keys of a response body; any other key is ignored.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
pub(super) enum ResponseField {
    ModelName,
    ModelVersion,
    Id,
    Parameters,
    Outputs,
    #[serde(other)]
    Other,
}

/// Stores a field's value, refusing a second one like the derived impls.
fn set_once<T, E: de::Error>(slot: &mut Option<T>, v: T, field: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(field));
    }
    *slot = Some(v);
    Ok(())
}

/// One tensor object. `budget` bounds the bytes reserved up front from the
/// shapes, which the client chooses: never more in all than the body could hold.
struct TensorSeed<'b> {
    budget: &'b mut usize,
}

impl<'de> DeserializeSeed<'de> for TensorSeed<'_> {
    type Value = RawTensor<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawTensor<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TensorSeed<'_> {
    type Value = RawTensor<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tensor object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTensor<'de>, A::Error> {
        let mut name = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut datatype: Option<&'de str> = None;
        let mut parameters = None;
        let mut data = None;
        while let Some(field) = map.next_key::<TensorField>()? {
            match field {
                TensorField::Name => set_once(&mut name, map.next_value::<String>()?, "name")?,
                TensorField::Shape => set_once(&mut shape, map.next_value()?, "shape")?,
                TensorField::Datatype => set_once(&mut datatype, map.next_value()?, "datatype")?,
                TensorField::Parameters => {
                    set_once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?
                }
                TensorField::Data => {
                    if data.is_some() {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    data = Some(match datatype.and_then(DataType::parse) {
                        Some(dt) => {
                            let mut out = Vec::with_capacity(reserve_for(shape.as_deref(), dt, self.budget));
                            map.next_value_seed(Flatten::new(dt, &mut out))?;
                            DataIn::Decoded(out)
                        }
                        None => map.next_value()?,
                    });
                }
                TensorField::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok(RawTensor {
            name: name.ok_or_else(|| de::Error::missing_field("name"))?,
            shape: shape.ok_or_else(|| de::Error::missing_field("shape"))?,
            datatype: datatype.ok_or_else(|| de::Error::missing_field("datatype"))?,
            parameters: parameters.flatten(),
            data: data.unwrap_or_default(),
        })
    }
}

/// Bytes to reserve for a tensor's data: what its shape says, within `budget`.
fn reserve_for(shape: Option<&[i64]>, dt: DataType, budget: &mut usize) -> usize {
    let want = match (shape, dt.size()) {
        (Some(shape), Some(size)) => element_count(shape).ok().and_then(|n| n.checked_mul(size)).unwrap_or(0),
        _ => 0,
    };
    let n = want.min(*budget);
    *budget -= n;
    n
}

/// A JSON array of tensor objects.
struct TensorsSeed<'b> {
    budget: &'b mut usize,
}

impl<'de> DeserializeSeed<'de> for TensorsSeed<'_> {
    type Value = Vec<RawTensor<'de>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Vec<RawTensor<'de>>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TensorsSeed<'_> {
    type Value = Vec<RawTensor<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of tensors")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RawTensor<'de>>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(1).min(16));
        while let Some(t) = seq.next_element_seed(TensorSeed { budget: &mut *self.budget })? {
            out.push(t);
        }
        Ok(out)
    }
}

/// A whole request body (`Request`) or response body (`Response`) in one scan.
enum BodySeed {
    Request { budget: usize },
    Response { budget: usize },
}

enum RawBody<'a> {
    Request(RawRequest<'a>),
    Response(RawResponse<'a>),
}

impl<'de> DeserializeSeed<'de> for BodySeed {
    type Value = RawBody<'de>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<RawBody<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BodySeed {
    type Value = RawBody<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a V2 inference body")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBody<'de>, A::Error> {
        match self {
            BodySeed::Request { mut budget } => {
                let (mut id, mut parameters, mut inputs, mut outputs) = (None, None, None, None);
                while let Some(field) = map.next_key::<RequestField>()? {
                    match field {
                        RequestField::Id => set_once(&mut id, map.next_value::<Option<String>>()?, "id")?,
                        RequestField::Parameters => {
                            set_once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?
                        }
                        RequestField::Inputs => {
                            if inputs.is_some() {
                                return Err(de::Error::duplicate_field("inputs"));
                            }
                            inputs = Some(map.next_value_seed(TensorsSeed { budget: &mut budget })?);
                        }
                        RequestField::Outputs => {
                            set_once(&mut outputs, map.next_value::<Option<Vec<_>>>()?, "outputs")?
                        }
                        RequestField::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(RawBody::Request(RawRequest {
                    id: id.flatten(),
                    parameters: parameters.flatten(),
                    inputs: inputs.ok_or_else(|| de::Error::missing_field("inputs"))?,
                    outputs: outputs.flatten(),
                }))
            }
            BodySeed::Response { mut budget } => {
                let (mut model_name, mut model_version, mut id, mut parameters, mut outputs) =
                    (None, None, None, None, None);
                while let Some(field) = map.next_key::<ResponseField>()? {
                    match field {
                        ResponseField::ModelName => {
                            set_once(&mut model_name, map.next_value::<String>()?, "model_name")?
                        }
                        ResponseField::ModelVersion => {
                            set_once(&mut model_version, map.next_value::<Option<String>>()?, "model_version")?
                        }
                        ResponseField::Id => set_once(&mut id, map.next_value::<Option<String>>()?, "id")?,
                        ResponseField::Parameters => {
                            set_once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?
                        }
                        ResponseField::Outputs => {
                            if outputs.is_some() {
                                return Err(de::Error::duplicate_field("outputs"));
                            }
                            outputs = Some(map.next_value_seed(TensorsSeed { budget: &mut budget })?);
                        }
                        ResponseField::Other => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(RawBody::Response(RawResponse {
                    model_name: model_name.ok_or_else(|| de::Error::missing_field("model_name"))?,
                    model_version: model_version.flatten(),
                    id: id.flatten(),
                    parameters: parameters.flatten(),
                    outputs: outputs.ok_or_else(|| de::Error::missing_field("outputs"))?,
                }))
            }
        }
    }
}

/// Parses a body with `seed` in one scan; `None` for anything it does not take.
fn parse_single_pass<'a>(json: &'a [u8], seed: BodySeed) -> Option<RawBody<'a>> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let body = seed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(body)
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
    let budget = json.len().saturating_mul(DATA_BYTES_PER_JSON_BYTE);
    if let Some(RawBody::Request(raw)) = parse_single_pass(json, BodySeed::Request { budget }) {
        if let Ok(req) = request_from_raw(raw, &binary) {
            return Ok(req);
        }
    }
    // Rejected above: the reference parse says why, exactly as it always has.
    let raw: RawRequest = serde_json::from_slice(json).map_err(json_err)?;
    request_from_raw(raw, &binary)
}

fn request_from_raw(raw: RawRequest, binary: &Bytes) -> Result<InferRequest, CodecError> {
    let mut cursor = 0usize;
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for t in raw.inputs {
        inputs.push(decode_tensor(t, "input", binary, &mut cursor)?);
    }
    check_trailing(binary, cursor)?;
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
    let req = InferRequest {
        id: raw.id,
        inputs,
        outputs,
        parameters,
        binary_output,
        metadata: Default::default(),
        raw_json: None,
    };
    req.validate()?;
    Ok(req)
}

/// Decodes a V2 infer response body from a backend.
pub fn decode_response(body: &Bytes, header_len: Option<usize>) -> Result<InferResponse, CodecError> {
    let (json, binary) = split_body(body, header_len)?;
    let budget = json.len().saturating_mul(DATA_BYTES_PER_JSON_BYTE);
    if let Some(RawBody::Response(raw)) = parse_single_pass(json, BodySeed::Response { budget }) {
        if let Ok(resp) = response_from_raw(raw, &binary) {
            return Ok(resp);
        }
    }
    let raw: RawResponse = serde_json::from_slice(json).map_err(json_err)?;
    response_from_raw(raw, &binary)
}

fn response_from_raw(raw: RawResponse, binary: &Bytes) -> Result<InferResponse, CodecError> {
    let mut cursor = 0usize;
    let mut outputs = Vec::with_capacity(raw.outputs.len());
    for t in raw.outputs {
        let t = decode_tensor(t, "output", binary, &mut cursor)?;
        t.validate().map_err(|e| CodecError::invalid(format!("output '{}': {e}", t.name)))?;
        outputs.push(t);
    }
    check_trailing(binary, cursor)?;
    Ok(InferResponse {
        model_name: raw.model_name,
        model_version: raw.model_version,
        id: raw.id,
        parameters: raw.parameters.unwrap_or_default(),
        outputs,
        raw_json: None,
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
            if !matches!(t.data, DataIn::Absent) {
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
            let raw = match t.data {
                DataIn::Decoded(out) => {
                    return Ok(Tensor { name, datatype, shape: t.shape, data: Bytes::from(out), parameters })
                }
                DataIn::Raw(raw) => raw,
                // Read from the registered region by the listener.
                DataIn::Absent if parameters.contains_key(SHM_REGION) => {
                    return Ok(Tensor { name, datatype, shape: t.shape, data: Bytes::new(), parameters })
                }
                DataIn::Absent => return Err(CodecError::invalid(format!("{role} '{name}' has no 'data'"))),
            };
            let mut out = Vec::new();
            let mut de = serde_json::Deserializer::from_str(raw.get());
            Flatten::new(datatype, &mut out)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::v2::test_support::{f32s, req};

    /// `data` before `datatype` (and `name` last): decoded from the raw text afterwards.
    fn data_first(body: &str) -> String {
        let v: Value = serde_json::from_str(body).unwrap();
        let mut out = String::from("{");
        for (i, (k, v)) in v.as_object().unwrap().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("{}:", Value::from(k.as_str())));
            match v.as_array() {
                Some(ts) if k == "inputs" || k == "outputs" => {
                    let ts: Vec<String> = ts
                        .iter()
                        .map(|t| {
                            let o = t.as_object().unwrap();
                            let mut keys: Vec<&String> = o.keys().collect();
                            // data, parameters, shape, datatype, name (and anything else) in that order
                            let rank = |k: &str| {
                                ["data", "parameters", "shape", "datatype", "name"]
                                    .iter()
                                    .position(|x| *x == k)
                                    .unwrap_or(5)
                            };
                            keys.sort_by_key(|k| rank(k));
                            let fields: Vec<String> =
                                keys.iter().map(|k| format!("{}:{}", Value::from(k.as_str()), o[*k])).collect();
                            format!("{{{}}}", fields.join(","))
                        })
                        .collect();
                    out.push_str(&format!("[{}]", ts.join(",")));
                }
                _ => out.push_str(&v.to_string()),
            }
        }
        out.push('}');
        out
    }

    #[test]
    fn key_order_does_not_change_the_result() {
        let bodies = [
            r#"{"id":"7","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]},{"name":"s","shape":[2],"datatype":"BYTES","data":["a","bc"]}],"outputs":[{"name":"y","parameters":{"binary_data":true}}],"parameters":{"binary_data_output":false,"k":1}}"#,
            r#"{"inputs":[{"name":"x","shape":[3],"datatype":"INT64","parameters":{"p":"q"},"data":[-1,0,9007199254740993],"extra":{"ignored":[1]}}]}"#,
            r#"{"inputs":[{"datatype":"UINT8","shape":[2],"data":[1,2],"name":"late_name"}]}"#,
        ];
        for body in bodies {
            let a = req(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            let reordered = data_first(body);
            assert_ne!(reordered, body);
            let b = req(&reordered).unwrap_or_else(|e| panic!("{reordered}: {e}"));
            assert_eq!(a, b, "{body} vs {reordered}");
        }
        // The common order is decoded in the single pass, `data` streamed.
        for body in bodies {
            let Some(RawBody::Request(raw)) = parse_single_pass(body.as_bytes(), BodySeed::Request { budget: 1 << 20 })
            else {
                panic!("{body}: not taken by the single pass");
            };
            assert!(raw.inputs.iter().all(|t| matches!(t.data, DataIn::Decoded(_))), "{body}");
        }
        let a = req(bodies[0]).unwrap();
        assert_eq!(a.id.as_deref(), Some("7"));
        assert_eq!(f32s(&a.inputs[0]), vec![1.0, 2.5, 3.0, 4.0]);
        assert_eq!(&a.inputs[1].data[..], b"\x01\0\0\0a\x02\0\0\0bc");
        assert_eq!(a.parameters.get("k"), Some(&Value::from(1)));
        let b = req(bodies[1]).unwrap();
        assert_eq!(b.inputs[0].parameters.get("p"), Some(&Value::from("q")));
        assert_eq!(&b.inputs[0].data[16..], &9007199254740993i64.to_le_bytes());
        // Responses too.
        let resp = r#"{"model_name":"m","model_version":"2","outputs":[{"name":"y","shape":[2],"datatype":"FP64","data":[0.1,-2]}]}"#;
        let a = decode_response(&Bytes::from_static(resp.as_bytes()), None).unwrap();
        let b = decode_response(&Bytes::from(data_first(resp)), None).unwrap();
        assert_eq!(a, b);
        assert_eq!(&a.outputs[0].data[..8], &0.1f64.to_le_bytes());
    }

    #[test]
    fn errors_read_the_same_in_either_key_order() {
        let cases = [
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[null]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":{"a":1}}]}"#,
            r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP33","data":[1,2]}]}"#,
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}"#,
            // The first tensor's fault is reported, though the second's data is bad too.
            r#"{"inputs":[{"name":"a","shape":[1],"datatype":"BOGUS","data":[1]},{"name":"b","shape":[1],"datatype":"INT8","data":[999]}]}"#,
            // A syntax error after bad data is a JSON error, as with the two-pass parse.
            r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[999]}],"#,
        ];
        for body in cases {
            let a = req(body).expect_err(body).to_string();
            if body.ends_with(',') {
                assert!(a.starts_with("invalid JSON"), "{body}: {a}");
                continue;
            }
            let reordered = data_first(body);
            let b = req(&reordered).expect_err(&reordered).to_string();
            assert_eq!(a, b, "{body} vs {reordered}");
            assert!(!a.contains(" at line "), "{a}");
        }
        // Duplicate fields are refused in the single pass and named by the reference parse.
        let e = req(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1],"data":[2]}]}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate field `data`"), "{e}");
        // `data: null` is no data, in either parse.
        let e = req(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":null}]}"#).unwrap_err();
        assert!(e.to_string().contains("has no 'data'"), "{e}");
    }

    #[test]
    fn unknown_keys_are_ignored_and_escaped_keys_matched_in_the_single_pass() {
        let plain = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT8","data":[1,2]}]}"#;
        let bodies = [
            r#"{"inputs":[{"name":"x","shape":[2],"datatype":"INT8","data":[1,2],"extra":{"a":[1]}}],"model_name":"m"}"#,
            r#"{"x-custom":null,"inputs":[{"Name":"y","name":"x","shape":[2],"datatype":"INT8","data":[1,2]}]}"#,
            r#"{"\u0069nputs":[{"n\u0061me":"x","shape":[2],"datatype":"INT8","data":[1,2]}]}"#,
        ];
        let want = req(plain).unwrap();
        for body in bodies {
            let Some(RawBody::Request(_)) = parse_single_pass(body.as_bytes(), BodySeed::Request { budget: 1 << 20 })
            else {
                panic!("{body}: not taken by the single pass");
            };
            assert_eq!(req(body).unwrap_or_else(|e| panic!("{body}: {e}")), want, "{body}");
        }
        let resp =
            r#"{"model_name":"m","inputs":7,"outputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[1],"id":3}]}"#;
        assert!(parse_single_pass(resp.as_bytes(), BodySeed::Response { budget: 1 << 20 }).is_some());
        let a = decode_response(&Bytes::from_static(resp.as_bytes()), None).unwrap();
        assert_eq!((a.model_name.as_str(), a.outputs[0].name.as_str()), ("m", "y"));
    }

    #[test]
    fn a_lying_shape_reserves_no_more_than_the_body_can_hold() {
        let mut budget = 100;
        assert_eq!(reserve_for(Some(&[1 << 40]), DataType::Fp64, &mut budget), 100);
        assert_eq!(budget, 0);
        assert_eq!(reserve_for(Some(&[4]), DataType::Fp32, &mut budget), 0);
        let mut budget = 100;
        assert_eq!(reserve_for(Some(&[2, 3]), DataType::Fp32, &mut budget), 24);
        assert_eq!(reserve_for(Some(&[-1]), DataType::Fp32, &mut budget), 0);
        assert_eq!(reserve_for(Some(&[i64::MAX, i64::MAX]), DataType::Fp32, &mut budget), 0);
        assert_eq!(reserve_for(None, DataType::Fp32, &mut budget), 0);
        assert_eq!(reserve_for(Some(&[2]), DataType::Bytes, &mut budget), 0);
        assert_eq!(budget, 76);
        // Decoding such a request fails on its size, having reserved little.
        let e = req(r#"{"inputs":[{"name":"x","shape":[1099511627776],"datatype":"FP64","data":[1]}]}"#).unwrap_err();
        assert!(e.to_string().contains("input 'x'"), "{e}");
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
