//! KServe V2 / Open Inference Protocol REST bodies: JSON tensors and the
//! binary tensor extension, in both directions (client ↔ Switchyard ↔ backend).
//!
//! JSON `data` is parsed straight into the tensor's little-endian bytes by a
//! streaming visitor (flat or nested arrays, range-checked per datatype), with
//! no intermediate `serde_json::Value`.

use std::fmt;

use bytes::{BufMut, Bytes};
use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::CodecError;
use crate::tensor::{
    bytes_elements, element_count, DataType, InferRequest, InferResponse, Parameters, RequestedOutput, Tensor,
};

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

/// A map key as the index of `.0`'s field it names, `None` for any other key
/// (ignored, as the derived impls do); escaped keys are matched unescaped.
struct FieldIndex(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for FieldIndex {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FieldIndex {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|f| *f == v))
    }
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

const TENSOR_FIELDS: &[&str] = &["name", "shape", "datatype", "parameters", "data"];

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
        while let Some(field) = map.next_key_seed(FieldIndex(TENSOR_FIELDS))? {
            match field {
                Some(0) => set_once(&mut name, map.next_value::<String>()?, "name")?,
                Some(1) => set_once(&mut shape, map.next_value()?, "shape")?,
                Some(2) => set_once(&mut datatype, map.next_value()?, "datatype")?,
                Some(3) => set_once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?,
                Some(_) => {
                    if data.is_some() {
                        return Err(de::Error::duplicate_field("data"));
                    }
                    data = Some(match datatype.and_then(DataType::parse) {
                        Some(dt) => {
                            let mut out = Vec::with_capacity(reserve_for(shape.as_deref(), dt, self.budget));
                            map.next_value_seed(Flatten { dt, out: &mut out, count: &mut 0 })?;
                            DataIn::Decoded(out)
                        }
                        None => map.next_value()?,
                    });
                }
                None => {
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

const REQUEST_FIELDS: &[&str] = &["id", "parameters", "inputs", "outputs"];
const RESPONSE_FIELDS: &[&str] = &["model_name", "model_version", "id", "parameters", "outputs"];

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
                while let Some(field) = map.next_key_seed(FieldIndex(REQUEST_FIELDS))? {
                    match field {
                        Some(0) => set_once(&mut id, map.next_value::<Option<String>>()?, "id")?,
                        Some(1) => set_once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?,
                        Some(2) => {
                            if inputs.is_some() {
                                return Err(de::Error::duplicate_field("inputs"));
                            }
                            inputs = Some(map.next_value_seed(TensorsSeed { budget: &mut budget })?);
                        }
                        Some(_) => set_once(&mut outputs, map.next_value::<Option<Vec<_>>>()?, "outputs")?,
                        None => {
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
                while let Some(field) = map.next_key_seed(FieldIndex(RESPONSE_FIELDS))? {
                    match field {
                        Some(0) => set_once(&mut model_name, map.next_value::<String>()?, "model_name")?,
                        Some(1) => set_once(&mut model_version, map.next_value::<Option<String>>()?, "model_version")?,
                        Some(2) => set_once(&mut id, map.next_value::<Option<String>>()?, "id")?,
                        Some(3) => set_once(&mut parameters, map.next_value::<Option<Parameters>>()?, "parameters")?,
                        Some(_) => {
                            if outputs.is_some() {
                                return Err(de::Error::duplicate_field("outputs"));
                            }
                            outputs = Some(map.next_value_seed(TensorsSeed { budget: &mut budget })?);
                        }
                        None => {
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
    let req = InferRequest { id: raw.id, inputs, outputs, parameters, binary_output };
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
                DataIn::Absent => return Err(CodecError::invalid(format!("{role} '{name}' has no 'data'"))),
            };
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

/// Parameters as written: `base`, with `extra` set as `Map::insert` would set
/// it. The common case, no parameters of its own, writes the one entry
/// without copying the map.
struct ParamsJson<'a> {
    base: &'a Parameters,
    extra: Option<(&'static str, Value)>,
}

impl ParamsJson<'_> {
    fn is_empty(&self) -> bool {
        self.base.is_empty() && self.extra.is_none()
    }
}

impl Serialize for ParamsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.extra {
            None => self.base.serialize(s),
            Some((k, v)) if self.base.is_empty() => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry(k, v)?;
                m.end()
            }
            Some((k, v)) => {
                let mut p = self.base.clone();
                p.insert((*k).into(), v.clone());
                p.serialize(s)
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
            let size = Some((BINARY_DATA_SIZE, Value::from(t.data.len())));
            st.serialize_field("parameters", &ParamsJson { base: &t.parameters, extra: size })?;
        } else {
            if !t.parameters.is_empty() {
                st.serialize_field("parameters", &t.parameters)?;
            }
            st.serialize_field("data", &DataJson(t))?;
        }
        st.end()
    }
}

/// A JSON array of `T`s made on the fly from a slice of `F`s.
struct SeqJson<'a, F, T, M: Fn(&'a F) -> T> {
    items: &'a [F],
    map: M,
}

impl<'a, F, T: Serialize, M: Fn(&'a F) -> T> Serialize for SeqJson<'a, F, T, M> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.items.iter().map(&self.map))
    }
}

/// An encoded body: bytes plus, when it carries binary blobs, the JSON part's length.
pub struct Encoded {
    pub body: Bytes,
    pub header_len: Option<usize>,
}

/// Room for a tensor in the JSON we write: its header, and its data as JSON
/// text (the longest text of an element) or, with `binary`, as bytes after the JSON.
fn room_for(t: &Tensor, binary: bool) -> usize {
    let head = 96 + t.name.len() + 21 * t.shape.len() + if t.parameters.is_empty() { 0 } else { 64 };
    if binary {
        return head + t.data.len();
    }
    let chars = match t.datatype {
        DataType::Bool => 6,
        DataType::Uint8 => 4,
        DataType::Int8 => 5,
        DataType::Uint16 => 6,
        DataType::Int16 => 7,
        DataType::Uint32 => 11,
        DataType::Int32 => 12,
        DataType::Uint64 | DataType::Int64 => 21,
        DataType::Fp16 | DataType::Bf16 | DataType::Fp32 => 16,
        DataType::Fp64 => 25,
        // Per byte; control characters and quotes take more, and are rare.
        DataType::Bytes => return head + 2 * t.data.len(),
    };
    head + t.data.len() / t.datatype.size().unwrap_or(1) * chars
}

/// Serializes `body` and appends the binary tensors' bytes after it.
fn encode(body: &impl Serialize, capacity: usize, tensors: &[Tensor], binary: impl Fn(&Tensor) -> bool) -> Encoded {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, body).expect("serializing to memory cannot fail");
    let header_len = out.len();
    let mut any = false;
    for t in tensors.iter().filter(|t| binary(t)) {
        out.extend_from_slice(&t.data);
        any = true;
    }
    Encoded { body: Bytes::from(out), header_len: any.then_some(header_len) }
}

#[derive(Serialize)]
struct ResponseJson<'a, O: Serialize> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Parameters::is_empty")]
    parameters: &'a Parameters,
    outputs: O,
}

/// Encodes a response for a client; `binary(name)` says which outputs go binary.
pub fn encode_response(resp: &InferResponse, binary: impl Fn(&str) -> bool) -> Encoded {
    let body = ResponseJson {
        model_name: &resp.model_name,
        model_version: resp.model_version.as_deref(),
        id: resp.id.as_deref(),
        parameters: &resp.parameters,
        outputs: SeqJson { items: &resp.outputs, map: |t: &Tensor| TensorJson { t, binary: binary(&t.name) } },
    };
    let capacity =
        128 + resp.model_name.len() + resp.outputs.iter().map(|t| room_for(t, binary(&t.name))).sum::<usize>();
    encode(&body, capacity, &resp.outputs, |t| binary(&t.name))
}

struct OutputJson<'a> {
    o: &'a RequestedOutput,
    binary: bool,
}

impl Serialize for OutputJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Output", 2)?;
        st.serialize_field("name", &self.o.name)?;
        let binary = Some(("binary_data", Value::Bool(self.binary)));
        st.serialize_field("parameters", &ParamsJson { base: &self.o.parameters, extra: binary })?;
        st.end()
    }
}

#[derive(Serialize)]
struct RequestJson<'a, I: Serialize, O: Serialize> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "ParamsJson::is_empty")]
    parameters: ParamsJson<'a>,
    inputs: I,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<O>,
}

/// Encodes a request for a backend. With `binary` the inputs travel as blobs
/// and binary outputs are asked for; without it everything is plain JSON (for
/// servers that lack the extension, like MLServer).
pub fn encode_request(req: &InferRequest, binary: bool) -> Encoded {
    let body = RequestJson {
        id: req.id.as_deref(),
        parameters: ParamsJson {
            base: &req.parameters,
            extra: (binary && req.outputs.is_empty()).then_some(("binary_data_output", Value::Bool(true))),
        },
        inputs: SeqJson { items: &req.inputs, map: |t: &Tensor| TensorJson { t, binary } },
        outputs: (!req.outputs.is_empty())
            .then_some(SeqJson { items: &req.outputs, map: |o: &RequestedOutput| OutputJson { o, binary } }),
    };
    let capacity = 128
        + req.inputs.iter().map(|t| room_for(t, binary)).sum::<usize>()
        + req.outputs.iter().map(|o| 48 + o.name.len() + if o.parameters.is_empty() { 0 } else { 64 }).sum::<usize>();
    encode(&body, capacity, &req.inputs, |_| binary)
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
