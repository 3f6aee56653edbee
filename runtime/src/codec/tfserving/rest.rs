//! TF Serving's REST predict bodies: a request in row (`instances`) or
//! columnar (`inputs`) form, typed by the model's signature, into the tensor
//! model; an answer back into `predictions` or `outputs`. TF Serving's own
//! rules and error texts (`tensorflow_serving/util/json_tensor.cc`): every
//! leaf at the tensor's rank, lists of one length per level, `{"b64": …}`
//! only for strings, integers only for integer types, `NaN`/`Infinity`
//! literals both ways, outputs named `*_bytes` written as `{"b64": …}`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{BufMut, Bytes};
use half::{bf16, f16};
use serde_json::Value as Json;

use super::dtype::tf_type_name;
use crate::error::CodecError;
use crate::tensor::{bytes_elements, DataType, InferRequest, InferResponse, Tensor};

/// The one signature Switchyard serves for every model (TF Serving's default key).
pub const DEFAULT_SIGNATURE: &str = "serving_default";

/// Non-standard literals smuggled through serde_json as one-key objects
/// `{"\u0000": "NaN"}`: an object is never a number or a string to TF
/// Serving, so no string a client sends changes meaning, and the marks are
/// read wherever a number may stand.
const MARK_KEY: &str = "\u{0}";

/// A request's `signature_name`: empty or `serving_default` (the one every
/// model has) or the one a content-routing rule matched (`routed`), else TF
/// Serving's refusal.
pub fn check_signature(name: &str, routed: Option<&str>) -> Result<(), CodecError> {
    if name.is_empty() || name == DEFAULT_SIGNATURE || Some(name) == routed {
        Ok(())
    } else {
        Err(CodecError::invalid(format!("Serving signature name: \"{name}\" not found in signature def")))
    }
}

/// How the client laid its request out; the answer is laid out alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `instances` → `predictions`: one entry per batch row.
    Row,
    /// `inputs` → `outputs`: whole tensors.
    Columnar,
}

/// One input of the model's signature: what a JSON value is typed as.
#[derive(Clone, Debug, PartialEq)]
pub struct InputSpec {
    pub name: String,
    pub datatype: DataType,
}

/// A decoded predict request.
#[derive(Debug)]
pub struct Predict {
    pub request: InferRequest,
    pub format: Format,
    /// The `signature_name` the client named, if any.
    pub signature_name: Option<String>,
}

fn invalid(msg: impl Into<String>) -> CodecError {
    CodecError::invalid(msg)
}

/// Parses TF Serving's JSON: standard JSON plus the bare `NaN`, `Infinity`
/// and `-Infinity` literals (rapidjson's `kParseNanAndInfFlag`).
pub fn parse_json(body: &[u8]) -> Result<Json, CodecError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid("JSON Parse error: The document is empty"));
    }
    let parsed =
        if has_literal(body) { serde_json::from_slice(&mark_literals(body)) } else { serde_json::from_slice(body) };
    parsed.map_err(|e| invalid(format!("JSON Parse error: {e}")))
}

fn has_literal(body: &[u8]) -> bool {
    body.windows(3).any(|w| w == b"NaN") || body.windows(8).any(|w| w == b"Infinity")
}

/// Rewrites the literals outside strings into marked strings.
fn mark_literals(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 32);
    let (mut i, mut in_str, mut escaped) = (0, false, false);
    while i < body.len() {
        let b = body[i];
        if in_str {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let rest = &body[i..];
        let (token, mark): (&[u8], &str) = if rest.starts_with(b"NaN") {
            (b"NaN", "NaN")
        } else if rest.starts_with(b"-Infinity") {
            (b"-Infinity", "-Infinity")
        } else if rest.starts_with(b"Infinity") {
            (b"Infinity", "Infinity")
        } else {
            if b == b'"' {
                in_str = true;
            }
            out.push(b);
            i += 1;
            continue;
        };
        out.extend_from_slice(b"{\"\\u0000\":\"");
        out.extend_from_slice(mark.as_bytes());
        out.extend_from_slice(b"\"}");
        i += token.len();
    }
    out
}

/// The value of a marked `NaN`/`Infinity` literal.
fn literal(v: &Json) -> Option<f64> {
    let Json::Object(m) = v else { return None };
    if m.len() != 1 {
        return None;
    }
    match m.get(MARK_KEY)?.as_str()? {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// An object that names tensors: neither `{"b64"}` nor a marked literal.
pub(super) fn is_named_object(v: &Json) -> bool {
    v.is_object() && b64_object(v).is_none() && literal(v).is_none()
}

/// A JSON value as TF Serving prints it in an error.
fn show(v: &Json) -> String {
    if let Some(x) = literal(v) {
        return float_text(x, false);
    }
    let s = v.to_string();
    if s.len() > 256 {
        format!("{}…", &s[..s.floor_char_boundary(256)])
    } else {
        s
    }
}

fn json_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "Null",
        Json::Bool(false) => "False",
        Json::Bool(true) => "True",
        Json::Object(_) if literal(v).is_some() => "Number",
        Json::Object(_) => "Object",
        Json::Array(_) => "Array",
        Json::String(_) => "String",
        Json::Number(_) => "Number",
    }
}

fn type_error(v: &Json, dt: DataType) -> CodecError {
    invalid(format!("JSON Value: {} Type: {} is not of expected type: {}", show(v), json_type(v), tf_type_name(dt)))
}

/// `{"b64": "<string>"}` and nothing else.
fn b64_object(v: &Json) -> Option<&str> {
    match v {
        Json::Object(m) if m.len() == 1 => m.get("b64")?.as_str(),
        _ => None,
    }
}

/// Decodes a `:predict` body against the model's inputs. `inputs` is the
/// signature in the model's order; the request's tensors come out in it.
pub fn decode_predict(body: &[u8], inputs: &[InputSpec]) -> Result<Predict, CodecError> {
    decode_predict_doc(&parse_json(body)?, inputs, None)
}

/// The `signature_name` of a parsed predict body, when it is a string (any
/// other type is refused by `decode_predict_doc`).
pub fn signature_name(doc: &Json) -> Option<&str> {
    doc.get("signature_name").and_then(Json::as_str)
}

/// `decode_predict` on a body already parsed (`parse_json`). `routed`: a
/// signature name that routing accepted for this model (a content-routing
/// rule matched on it), typed by the model's one signature like the default.
pub fn decode_predict_doc(doc: &Json, inputs: &[InputSpec], routed: Option<&str>) -> Result<Predict, CodecError> {
    let Json::Object(obj) = doc else {
        return Err(invalid(format!("JSON Value: {} Is not object", show(doc))));
    };
    let signature_name = match obj.get("signature_name") {
        None => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(invalid(format!(
                "JSON Value: {} not formatted correctly. 'signature_name' key must be a string value.",
                show(doc)
            )))
        }
    };
    check_signature(signature_name.as_deref().unwrap_or(""), routed)?;
    if inputs.is_empty() {
        return Err(invalid(format!(
            "Failed to get input map for signature: {}",
            signature_name.as_deref().filter(|s| !s.is_empty()).unwrap_or("DEFAULT")
        )));
    }
    let (format, tensors) = match (obj.get("instances"), obj.get("inputs")) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "JSON Value: {} Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
                show(doc)
            )))
        }
        (Some(Json::Array(rows)), None) if rows.is_empty() => {
            return Err(invalid(format!("JSON Value: {} No values in 'instances' array", show(doc))))
        }
        (Some(Json::Array(rows)), None) => (Format::Row, from_instances(rows, inputs)?),
        (Some(_), None) => {
            return Err(invalid(format!("JSON Value: {} Excepting 'instances' to be an list/array", show(doc))))
        }
        (None, Some(v)) => (Format::Columnar, from_inputs(v, inputs)?),
        (None, None) => return Err(invalid("Missing 'inputs' or 'instances' key")),
    };
    let request = InferRequest { inputs: tensors, ..InferRequest::default() };
    request.validate()?;
    Ok(Predict { request, format, signature_name })
}

/// The dense shape of a value: the lengths of its first elements, level by level.
fn dense_shape(mut v: &Json) -> Vec<i64> {
    let mut shape = Vec::new();
    while let Json::Array(items) = v {
        shape.push(items.len() as i64);
        match items.first() {
            Some(first) => v = first,
            None => break,
        }
    }
    shape
}

/// Appends the values of `v` (a tensor of `shape`) to `out`; returns how many.
fn fill(v: &Json, level: usize, shape: &[i64], dt: DataType, out: &mut Vec<u8>) -> Result<usize, CodecError> {
    let rank = shape.len();
    match v {
        Json::Array(items) => {
            if level >= rank {
                return Err(invalid(format!("Encountered list at unexpected level: {level} expected < {rank}")));
            }
            if items.len() as i64 != shape[level] {
                return Err(invalid(format!(
                    "Encountered list at unexpected size: {} at level: {level} expected size: {}",
                    items.len(),
                    shape[level]
                )));
            }
            let mut n = 0;
            for item in items {
                n += fill(item, level + 1, shape, dt, out)?;
            }
            Ok(n)
        }
        leaf => {
            if level != rank {
                return Err(invalid(format!(
                    "JSON Value: {} found at incorrect level: {} in the JSON DOM. Expected at level: {rank}",
                    show(leaf),
                    level + 1
                )));
            }
            put_value(leaf, dt, out)?;
            Ok(1)
        }
    }
}

/// One leaf value as `dt`, TF Serving's conversion rules (no silent casts).
fn put_value(v: &Json, dt: DataType, out: &mut Vec<u8>) -> Result<(), CodecError> {
    if dt == DataType::Bytes {
        let bytes: Vec<u8> = match v {
            Json::String(s) => s.as_bytes().to_vec(),
            Json::Object(_) if literal(v).is_none() => {
                let Some(text) = b64_object(v) else {
                    return Err(invalid(format!("JSON Value: {} not formatted correctly for base64 data", show(v))));
                };
                B64.decode(text).map_err(|_| invalid("Unable to base64 decode"))?
            }
            _ => return Err(type_error(v, dt)),
        };
        let len = u32::try_from(bytes.len()).map_err(|_| invalid("a string element over 4 GiB"))?;
        out.put_u32_le(len);
        out.extend_from_slice(&bytes);
        return Ok(());
    }
    if dt == DataType::Bool {
        return match v {
            Json::Bool(b) => {
                out.push(u8::from(*b));
                Ok(())
            }
            _ => Err(type_error(v, dt)),
        };
    }
    let float = matches!(dt, DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64);
    if float {
        let x = match (v, literal(v)) {
            (_, Some(x)) => x,
            (Json::Number(n), None) => {
                let x = n.as_f64().ok_or_else(|| type_error(v, dt))?;
                // TF Serving refuses what the type cannot hold exactly as an integer, or at all.
                let (max_int, max) = match dt {
                    DataType::Fp64 => ((1u64 << 53) - 1, f64::MAX),
                    DataType::Fp32 => ((1u64 << 24) - 1, f64::from(f32::MAX)),
                    DataType::Fp16 => ((1u64 << 11) - 1, f64::from(f16::MAX)),
                    _ => ((1u64 << 8) - 1, f64::from(bf16::MAX)),
                };
                let lossy = match (n.as_u64(), n.as_i64()) {
                    (Some(u), _) => u > max_int,
                    (None, Some(i)) => i.unsigned_abs() > max_int,
                    (None, None) => x > max || x < -max,
                };
                if lossy {
                    let target = if dt == DataType::Fp64 { "double" } else { "float" };
                    return Err(invalid(format!(
                        "Cannot convert JSON value: {} to {target} without loss of precision.",
                        show(v)
                    )));
                }
                x
            }
            _ => return Err(type_error(v, dt)),
        };
        match dt {
            DataType::Fp64 => out.put_f64_le(x),
            DataType::Fp32 => out.put_f32_le(x as f32),
            DataType::Fp16 => out.put_u16_le(f16::from_f64(x).to_bits()),
            _ => out.put_u16_le(bf16::from_f64(x).to_bits()),
        }
        return Ok(());
    }
    // Integers: a JSON integer in the type's range, nothing else.
    let Json::Number(n) = v else { return Err(type_error(v, dt)) };
    let i: i128 = match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => i128::from(i),
        (None, Some(u)) => i128::from(u),
        _ => return Err(type_error(v, dt)),
    };
    let range = || type_error(v, dt);
    match dt {
        DataType::Uint8 => out.push(u8::try_from(i).map_err(|_| range())?),
        DataType::Int8 => out.push(i8::try_from(i).map_err(|_| range())? as u8),
        DataType::Uint16 => out.put_u16_le(u16::try_from(i).map_err(|_| range())?),
        DataType::Int16 => out.put_i16_le(i16::try_from(i).map_err(|_| range())?),
        DataType::Uint32 => out.put_u32_le(u32::try_from(i).map_err(|_| range())?),
        DataType::Int32 => out.put_i32_le(i32::try_from(i).map_err(|_| range())?),
        DataType::Uint64 => out.put_u64_le(u64::try_from(i).map_err(|_| range())?),
        DataType::Int64 => out.put_i64_le(i64::try_from(i).map_err(|_| range())?),
        _ => return Err(range()),
    }
    Ok(())
}

/// One whole tensor of `dt` from a JSON value: nested lists give the shape,
/// TF Serving's typing rules give the values (integers in range only, no
/// lossy floats, strings or `{"b64": ...}` for BYTES). For other JSON front
/// ends (TorchServe's translated bodies) as for the columnar form.
pub fn json_tensor(name: &str, v: &Json, dt: DataType) -> Result<Tensor, CodecError> {
    tensor(name, v, dt)
}

/// A tensor's values as nested JSON lists, written as TF Serving writes them.
pub fn tensor_json(t: &Tensor) -> Result<String, CodecError> {
    let w = Writer::new(t)?;
    let mut out = String::with_capacity(t.data.len() * 3 + 2);
    let mut at = 0;
    w.values(&mut out, 0, &mut at)?;
    Ok(out)
}

/// One whole tensor from a JSON value (columnar form).
pub(super) fn tensor(name: &str, v: &Json, dt: DataType) -> Result<Tensor, CodecError> {
    let shape = dense_shape(v);
    let mut data = Vec::new();
    fill(v, 0, &shape, dt, &mut data)?;
    Ok(Tensor::new(name, dt, shape, Bytes::from(data)))
}

fn from_inputs(v: &Json, inputs: &[InputSpec]) -> Result<Vec<Tensor>, CodecError> {
    // A plain value or list (or one b64 object) is the one input; an object names them.
    if !is_named_object(v) {
        if inputs.len() > 1 {
            return Err(invalid(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per tensorinfo_map",
            ));
        }
        return Ok(vec![tensor(&inputs[0].name, v, inputs[0].datatype)?]);
    }
    let obj = v.as_object().expect("checked above");
    inputs
        .iter()
        .map(|spec| {
            let item = obj
                .get(&spec.name)
                .ok_or_else(|| invalid(format!("Missing named input: {} in 'inputs' object.", spec.name)))?;
            tensor(&spec.name, item, spec.datatype)
        })
        .collect()
}

/// What one input has gathered over the rows so far.
struct Column<'s> {
    spec: &'s InputSpec,
    row_shape: Option<Vec<i64>>,
    row_size: usize,
    data: Vec<u8>,
}

impl Column<'_> {
    fn add(&mut self, v: &Json) -> Result<(), CodecError> {
        let shape = dense_shape(v);
        let size = fill(v, 0, &shape, self.spec.datatype, &mut self.data)?;
        match &self.row_shape {
            None => {
                self.row_size = size;
                self.row_shape = Some(shape);
            }
            Some(_) if self.row_size != size => {
                return Err(invalid(format!("Expecting tensor size: {} but got: {size}", self.row_size)));
            }
            Some(want) if *want != shape => {
                return Err(invalid(format!("Expecting shape {} but got: {}", shape_text(want), shape_text(&shape))));
            }
            Some(_) => {}
        }
        Ok(())
    }
}

pub(super) fn shape_text(s: &[i64]) -> String {
    format!("[{}]", s.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
}

fn from_instances(rows: &[Json], inputs: &[InputSpec]) -> Result<Vec<Tensor>, CodecError> {
    let is_object = is_named_object;
    if !is_object(&rows[0]) && inputs.len() > 1 {
        return Err(invalid(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per tensorinfo_map",
        ));
    }
    let objects = is_object(&rows[0]);
    let mut columns: Vec<Column<'_>> =
        inputs.iter().map(|spec| Column { spec, row_shape: None, row_size: 0, data: Vec::new() }).collect();
    let names = || inputs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(",");
    for (i, row) in rows.iter().enumerate() {
        if objects {
            let Json::Object(m) = row else {
                return Err(invalid(format!("Expecting object but got list at item {i} of input list")));
            };
            if !is_object(row) {
                return Err(invalid(format!("Expecting object but got list at item {i} of input list")));
            }
            for (name, value) in m {
                let Some(col) = columns.iter_mut().find(|c| c.spec.name == *name) else {
                    return Err(invalid(format!(
                        "Failed to process element: {i} key: {name} of 'instances' list. Error: Invalid argument: JSON object: does not have named input: {name}"
                    )));
                };
                col.add(value).map_err(|e| {
                    invalid(format!(
                        "Failed to process element: {i} key: {name} of 'instances' list. Error: Invalid argument: {e}"
                    ))
                })?;
            }
            if m.len() != inputs.len() {
                return Err(invalid(format!(
                    "Failed to process element: {i} of 'instances' list. JSON object: {} keys must be equal to: {}",
                    show(row),
                    names()
                )));
            }
        } else {
            if is_object(row) {
                return Err(invalid(format!("Expecting value/list but got object at item {i} of input list")));
            }
            columns[0].add(row).map_err(|e| {
                invalid(format!("Failed to process element: {i} of 'instances' list. Error: Invalid argument: {e}"))
            })?;
        }
    }
    let n = rows.len() as i64;
    Ok(columns
        .into_iter()
        .map(|c| {
            let mut shape = vec![n];
            shape.extend(c.row_shape.unwrap_or_default());
            Tensor::new(c.spec.name.clone(), c.spec.datatype, shape, Bytes::from(c.data))
        })
        .collect())
}

/// Encodes a predict answer in the request's form.
pub fn encode_predict(resp: &InferResponse, format: Format) -> Result<Bytes, CodecError> {
    if resp.outputs.is_empty() {
        return Err(invalid("Cannot convert empty tensor map to JSON"));
    }
    let mut out = String::with_capacity(64 + resp.outputs.iter().map(|t| t.data.len() * 3).sum::<usize>());
    let many = resp.outputs.len() > 1;
    let writers = resp.outputs.iter().map(Writer::new).collect::<Result<Vec<_>, _>>()?;
    match format {
        Format::Columnar => {
            out.push_str("{\"outputs\":");
            if many {
                out.push('{');
            }
            for (i, w) in writers.iter().enumerate() {
                if many {
                    if i > 0 {
                        out.push(',');
                    }
                    push_str_json(&mut out, &w.t.name);
                    out.push(':');
                }
                let mut at = 0;
                w.values(&mut out, 0, &mut at)?;
            }
            if many {
                out.push('}');
            }
            out.push('}');
        }
        Format::Row => {
            let mut batch = None;
            for w in &writers {
                let Some(&n) = w.t.shape.first() else {
                    return Err(invalid(format!("Tensor name: {} has no shape information ", w.t.name)));
                };
                match batch {
                    Some(b) if b != n => {
                        return Err(invalid(format!(
                            "Tensor name: {} has inconsistent batch size: {n} expecting: {b}",
                            w.t.name
                        )))
                    }
                    _ => batch = Some(n),
                }
            }
            let mut offsets = vec![0usize; writers.len()];
            out.push_str("{\"predictions\":[");
            for row in 0..batch.unwrap_or(0) {
                if row > 0 {
                    out.push(',');
                }
                if many {
                    out.push('{');
                }
                for (i, w) in writers.iter().enumerate() {
                    if many {
                        if i > 0 {
                            out.push(',');
                        }
                        push_str_json(&mut out, &w.t.name);
                        out.push(':');
                    }
                    w.values(&mut out, 1, &mut offsets[i])?;
                }
                if many {
                    out.push('}');
                }
            }
            out.push_str("]}");
        }
    }
    Ok(Bytes::from(out))
}

/// Writes one output tensor's values as nested JSON arrays.
pub(super) struct Writer<'t> {
    t: &'t Tensor,
    /// Element start offsets of a BYTES tensor.
    strings: Vec<&'t [u8]>,
    as_b64: bool,
}

impl<'t> Writer<'t> {
    pub(super) fn new(t: &'t Tensor) -> Result<Writer<'t>, CodecError> {
        t.validate().map_err(|e| invalid(format!("output '{}': {e}", t.name)))?;
        let strings = if t.datatype == DataType::Bytes {
            bytes_elements(&t.data).collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };
        Ok(Writer { t, strings, as_b64: t.datatype == DataType::Bytes && t.name.ends_with("_bytes") })
    }

    pub(super) fn values(&self, out: &mut String, dim: usize, at: &mut usize) -> Result<(), CodecError> {
        let shape = &self.t.shape;
        if dim >= shape.len() {
            self.one(out, *at);
            *at += 1;
            return Ok(());
        }
        out.push('[');
        let n = usize::try_from(shape[dim]).map_err(|_| invalid("negative dimension"))?;
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            self.values(out, dim + 1, at)?;
        }
        out.push(']');
        Ok(())
    }

    fn one(&self, out: &mut String, i: usize) {
        use std::fmt::Write as _;
        let d = &self.t.data;
        let le2 = |i: usize| u16::from_le_bytes([d[2 * i], d[2 * i + 1]]);
        let le4 = |i: usize| <[u8; 4]>::try_from(&d[4 * i..4 * i + 4]).expect("4 bytes");
        let le8 = |i: usize| <[u8; 8]>::try_from(&d[8 * i..8 * i + 8]).expect("8 bytes");
        let _ = match self.t.datatype {
            DataType::Bool => write!(out, "{}", d[i] != 0),
            DataType::Uint8 => write!(out, "{}", d[i]),
            DataType::Int8 => write!(out, "{}", d[i] as i8),
            DataType::Uint16 => write!(out, "{}", le2(i)),
            DataType::Int16 => write!(out, "{}", le2(i) as i16),
            DataType::Uint32 => write!(out, "{}", u32::from_le_bytes(le4(i))),
            DataType::Int32 => write!(out, "{}", i32::from_le_bytes(le4(i))),
            DataType::Uint64 => write!(out, "{}", u64::from_le_bytes(le8(i))),
            DataType::Int64 => write!(out, "{}", i64::from_le_bytes(le8(i))),
            DataType::Fp16 => write!(out, "{}", float_text(f64::from(f16::from_bits(le2(i)).to_f32()), true)),
            DataType::Bf16 => write!(out, "{}", float_text(f64::from(bf16::from_bits(le2(i)).to_f32()), true)),
            DataType::Fp32 => write!(out, "{}", float_text(f64::from(f32::from_le_bytes(le4(i))), true)),
            DataType::Fp64 => write!(out, "{}", float_text(f64::from_le_bytes(le8(i)), false)),
            DataType::Bytes => {
                let s = self.strings[i];
                match std::str::from_utf8(s) {
                    // Text is written as text; `*_bytes` outputs and bytes that are no text as b64.
                    Ok(text) if !self.as_b64 => push_str_json(out, text),
                    _ => {
                        out.push_str("{\"b64\":\"");
                        out.push_str(&B64.encode(s));
                        out.push_str("\"}");
                    }
                }
                Ok(())
            }
        };
    }
}

/// A float as TF Serving writes it: the shortest text that reads back as
/// the same value of its type, `.0` on whole numbers, `NaN`/`Infinity` bare.
fn float_text(x: f64, single: bool) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x < 0.0 { "-Infinity" } else { "Infinity" }.into();
    }
    let mut s = if single { format!("{}", x as f32) } else { format!("{x}") };
    if !s.contains(['.', 'e', 'E']) {
        s.push_str(".0");
    }
    s
}

pub(super) fn push_str_json(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, dt: DataType) -> InputSpec {
        InputSpec { name: name.into(), datatype: dt }
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.data.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }

    fn err(body: &str, inputs: &[InputSpec]) -> String {
        decode_predict(body.as_bytes(), inputs).unwrap_err().to_string()
    }

    #[test]
    fn row_format_adds_the_batch_dimension() {
        let p = decode_predict(br#"{"instances": [[1, 2.5], [3, 4]]}"#, &[spec("x", DataType::Fp32)]).unwrap();
        assert_eq!(p.format, Format::Row);
        let t = &p.request.inputs[0];
        assert_eq!((t.name.as_str(), t.shape.clone()), ("x", vec![2, 2]));
        assert_eq!(f32s(t), vec![1.0, 2.5, 3.0, 4.0]);
        // Scalars per row: shape [rows].
        let p = decode_predict(br#"{"instances": [1, 2, 3]}"#, &[spec("x", DataType::Int64)]).unwrap();
        assert_eq!(p.request.inputs[0].shape, vec![3]);
    }

    #[test]
    fn named_rows_and_columns() {
        let sig = [spec("a", DataType::Fp32), spec("b", DataType::Bytes)];
        let p = decode_predict(
            br#"{"signature_name": "serving_default", "instances": [{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": {"b64": "aGk="}}]}"#,
            &sig,
        )
        .unwrap();
        assert_eq!(p.request.inputs[0].shape, vec![2, 2]);
        assert_eq!(p.request.inputs[1].shape, vec![2]);
        let strings: Vec<&[u8]> = bytes_elements(&p.request.inputs[1].data).map(|r| r.unwrap()).collect();
        assert_eq!(strings, vec![&b"x"[..], &b"hi"[..]]);
        let p = decode_predict(br#"{"inputs": {"a": [[1, 2]], "b": ["y"]}}"#, &sig).unwrap();
        assert_eq!(p.format, Format::Columnar);
        assert_eq!(p.request.inputs[0].shape, vec![1, 2]);
        // Unnamed columnar: the one input.
        let p = decode_predict(br#"{"inputs": [[1, 2, 3]]}"#, &sig[..1]).unwrap();
        assert_eq!(p.request.inputs[0].shape, vec![1, 3]);
    }

    #[test]
    fn nan_and_infinity_literals_both_ways() {
        let p =
            decode_predict(br#"{"instances": [[NaN, Infinity, -Infinity, 1]]}"#, &[spec("x", DataType::Fp32)]).unwrap();
        let v = f32s(&p.request.inputs[0]);
        assert!(v[0].is_nan() && v[1] == f32::INFINITY && v[2] == f32::NEG_INFINITY && v[3] == 1.0);
        // A scalar literal is the one input's value; a string is a string, whatever it holds.
        let p = decode_predict(br#"{"inputs": -Infinity}"#, &[spec("x", DataType::Fp64)]).unwrap();
        assert_eq!(p.request.inputs[0].data[..], f64::NEG_INFINITY.to_le_bytes());
        let p = decode_predict(br#"{"inputs": ["\u0000NaN"]}"#, &[spec("s", DataType::Bytes)]).unwrap();
        assert_eq!(&p.request.inputs[0].data[4..], b"\0NaN");
        assert!(err(r#"{"inputs": [NaN]}"#, &[spec("s", DataType::Bytes)])
            .contains("Type: Number is not of expected type: string"));
        // Inside strings they stay text.
        let p = decode_predict(br#"{"instances": ["NaN \"Infinity"]}"#, &[spec("s", DataType::Bytes)]).unwrap();
        assert_eq!(&p.request.inputs[0].data[4..], b"NaN \"Infinity");
        let resp = InferResponse { outputs: p.request.inputs.clone(), ..InferResponse::default() };
        let mut data = Vec::new();
        for x in [f32::NAN, f32::INFINITY, 0.2, 3.0] {
            data.extend_from_slice(&x.to_le_bytes());
        }
        let out = InferResponse {
            outputs: vec![Tensor::new("y", DataType::Fp32, vec![2, 2], Bytes::from(data))],
            ..InferResponse::default()
        };
        assert_eq!(&encode_predict(&out, Format::Row).unwrap()[..], br#"{"predictions":[[NaN,Infinity],[0.2,3.0]]}"#);
        assert_eq!(&encode_predict(&resp, Format::Columnar).unwrap()[..], br#"{"outputs":["NaN \"Infinity"]}"#);
    }

    #[test]
    fn many_outputs_are_objects_and_bytes_outputs_b64() {
        let a = Tensor::new("a", DataType::Int64, vec![2], Bytes::from([1i64, 2].map(i64::to_le_bytes).concat()));
        let mut raw = Vec::new();
        for s in [&b"\x00\xff"[..], b"ok"] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s);
        }
        let b = Tensor::new("b_bytes", DataType::Bytes, vec![2], Bytes::from(raw));
        let resp = InferResponse { outputs: vec![a, b], ..InferResponse::default() };
        assert_eq!(
            std::str::from_utf8(&encode_predict(&resp, Format::Row).unwrap()).unwrap(),
            r#"{"predictions":[{"a":1,"b_bytes":{"b64":"AP8="}},{"a":2,"b_bytes":{"b64":"b2s="}}]}"#
        );
        assert_eq!(
            std::str::from_utf8(&encode_predict(&resp, Format::Columnar).unwrap()).unwrap(),
            r#"{"outputs":{"a":[1,2],"b_bytes":[{"b64":"AP8="},{"b64":"b2s="}]}}"#
        );
    }

    #[test]
    fn bad_inputs_get_tf_servings_words() {
        let x = [spec("x", DataType::Fp32)];
        let cases: Vec<(&str, &[InputSpec], &str)> = vec![
            ("", &x, "JSON Parse error: The document is empty"),
            ("[1]", &x, "Is not object"),
            ("{}", &x, "Missing 'inputs' or 'instances' key"),
            (r#"{"instances": [], "inputs": []}"#, &x, "expecting only one of 'inputs' or 'instances'"),
            (r#"{"instances": []}"#, &x, "No values in 'instances' array"),
            (r#"{"instances": 3}"#, &x, "Excepting 'instances' to be an list/array"),
            (r#"{"signature_name": "other", "instances": [1]}"#, &x, "Serving signature name: \"other\" not found"),
            (r#"{"signature_name": 1, "instances": [1]}"#, &x, "'signature_name' key must be a string value"),
            // Ragged rows: a row of another length.
            (r#"{"instances": [[1, 2], [3]]}"#, &x, "Expecting tensor size: 2 but got: 1"),
            (r#"{"instances": [[[1, 2]], [[1], [2]]]}"#, &x, "Expecting shape [1,2] but got: [2,1]"),
            (r#"{"inputs": [[1, 2], [3]]}"#, &x, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
            (r#"{"inputs": [[1, 2], 3]}"#, &x, "found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
            (r#"{"inputs": ["a"]}"#, &x, "JSON Value: \"a\" Type: String is not of expected type: float"),
            (r#"{"inputs": [{"b64": "aGk="}]}"#, &x, "Type: Object is not of expected type: float"),
            (
                r#"{"inputs": [16777217]}"#,
                &x,
                "Cannot convert JSON value: 16777217 to float without loss of precision.",
            ),
        ];
        for (body, sig, want) in cases {
            let got = err(body, sig);
            assert!(got.contains(want), "{body}: {got}");
        }
        let s = [spec("s", DataType::Bytes)];
        assert!(err(r#"{"inputs": [{"b64": "%%%"}]}"#, &s).contains("Unable to base64 decode"));
        assert!(err(r#"{"inputs": [{"b64": 1}]}"#, &s).contains("not formatted correctly for base64 data"));
        let i = [spec("i", DataType::Int32)];
        assert!(err(r#"{"inputs": [1.5]}"#, &i).contains("is not of expected type: int32"));
        assert!(err(r#"{"inputs": [4294967296]}"#, &i).contains("is not of expected type: int32"));
        let two = [spec("a", DataType::Fp32), spec("b", DataType::Fp32)];
        assert!(err(r#"{"inputs": [1]}"#, &two).contains("expecting an object as multiple input tensors"));
        assert!(err(r#"{"inputs": {"a": [1]}}"#, &two).contains("Missing named input: b in 'inputs' object."));
        assert!(err(r#"{"instances": [1]}"#, &two).contains("expecting list of objects as multiple input"));
        assert!(err(r#"{"instances": [{"a": 1}]}"#, &two).contains("keys must be equal to: a,b"));
        assert!(err(r#"{"instances": [{"a": 1, "c": 2}]}"#, &two).contains("does not have named input: c"));
        assert!(
            err(r#"{"instances": [{"a": 1, "b": 1}, [1]]}"#, &two).contains("Expecting object but got list at item 1")
        );
        // Columns of other lengths are tensors of other shapes: the model's signature decides.
        let p = decode_predict(br#"{"inputs": {"a": [1, 2], "b": [1]}}"#, &two).unwrap();
        assert_eq!((p.request.inputs[0].shape.clone(), p.request.inputs[1].shape.clone()), (vec![2], vec![1]));
    }

    #[test]
    fn row_answers_need_one_batch_size() {
        let a = Tensor::new("a", DataType::Int64, vec![2], Bytes::from(vec![0u8; 16]));
        let b = Tensor::new("b", DataType::Int64, vec![1], Bytes::from(vec![0u8; 8]));
        let resp = InferResponse { outputs: vec![a, b], ..InferResponse::default() };
        let e = encode_predict(&resp, Format::Row).unwrap_err().to_string();
        assert!(e.contains("Tensor name: b has inconsistent batch size: 1 expecting: 2"), "{e}");
    }
}
