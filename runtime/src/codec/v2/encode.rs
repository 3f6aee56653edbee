//! Encoding the tensor model as V2 REST bodies: requests for backends and
//! responses for clients, as JSON or with the binary extension's blobs after it.

use bytes::Bytes;
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::decode::BINARY_DATA_SIZE;
use super::elements::DataJson;
use crate::error::CodecError;
use crate::tensor::{DataType, InferRequest, InferResponse, Parameters, RequestedOutput, Tensor};

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
        if t.in_shared_memory() {
            // Written into the client's region: the parameters say where, there is no data here.
            st.serialize_field("parameters", &t.parameters)?;
        } else if self.binary {
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
    if binary || t.in_shared_memory() {
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
/// Fails when a tensor's bytes do not hold its datatype's elements (a BYTES
/// element with a bad length prefix, say): nothing upstream is trusted to
/// have checked.
fn encode(
    body: &impl Serialize,
    capacity: usize,
    tensors: &[Tensor],
    binary: impl Fn(&Tensor) -> bool,
) -> Result<Encoded, CodecError> {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, body).map_err(|e| CodecError::invalid(format!("cannot encode: {e}")))?;
    let header_len = out.len();
    let mut any = false;
    for t in tensors.iter().filter(|t| binary(t) && !t.in_shared_memory()) {
        out.extend_from_slice(&t.data);
        any = true;
    }
    Ok(Encoded { body: Bytes::from(out), header_len: any.then_some(header_len) })
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
pub fn encode_response(resp: &InferResponse, binary: impl Fn(&str) -> bool) -> Result<Encoded, CodecError> {
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
pub fn encode_request(req: &InferRequest, binary: bool) -> Result<Encoded, CodecError> {
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
