//! The tensor model every protocol decodes into and every backend consumes:
//! `Tensor` holds row-major little-endian bytes (BYTES elements are u32
//! length-prefixed), exactly the layout of the V2 binary extension and of
//! gRPC `raw_input_contents`, so batching, caching and backends never care
//! which wire format a request arrived in. `batch` merges requests along the
//! first dimension and splits the batched response back.

pub mod batch;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::TensorError;

pub type Parameters = Map<String, Value>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bf16,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bf16,
        DataType::Bytes,
    ];

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bf16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// Bytes per element; `None` for BYTES (variable length).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Number of elements of `shape`, rejecting negative dims and overflow.
pub fn element_count(shape: &[i64]) -> Result<usize, TensorError> {
    let mut n: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| TensorError::NegativeDim(d))?;
        n = n.checked_mul(d).ok_or(TensorError::ShapeOverflow)?;
    }
    Ok(n)
}

/// Triton's system shared memory parameters of a tensor: its data is in the
/// named registered region (at the offset, that many bytes), not in the body.
pub const SHM_REGION: &str = "shared_memory_region";
pub const SHM_BYTE_SIZE: &str = "shared_memory_byte_size";
pub const SHM_OFFSET: &str = "shared_memory_offset";

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// Row-major, little-endian; BYTES as u32-LE length-prefixed elements.
    pub data: Bytes,
    pub parameters: Parameters,
}

impl Tensor {
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>, data: Bytes) -> Tensor {
        Tensor { name: name.into(), datatype, shape, data, parameters: Parameters::new() }
    }

    pub fn element_count(&self) -> Result<usize, TensorError> {
        element_count(&self.shape)
    }

    /// Whether the tensor's data is in a shared memory region (and not yet read from it).
    pub fn in_shared_memory(&self) -> bool {
        self.data.is_empty() && self.parameters.contains_key(SHM_REGION)
    }

    /// Checks that the bytes hold exactly as many elements as the shape says
    /// (for data still in shared memory, only the shape: it is checked when read).
    pub fn validate(&self) -> Result<(), TensorError> {
        let n = self.element_count()?;
        if self.in_shared_memory() {
            return Ok(());
        }
        match self.datatype.size() {
            Some(size) => {
                let want = n.checked_mul(size).ok_or(TensorError::ShapeOverflow)?;
                if self.data.len() != want {
                    return Err(TensorError::SizeMismatch { expected: want, got: self.data.len() });
                }
                // Any other byte is no bool (undefined behaviour as a C++ `bool` in a model server).
                if self.datatype == DataType::Bool {
                    if let Some(index) = self.data.iter().position(|b| *b > 1) {
                        return Err(TensorError::BadBool { index, value: self.data[index] });
                    }
                }
            }
            None => {
                let got = bytes_elements(&self.data).count_checked()?;
                if got != n {
                    return Err(TensorError::CountMismatch { expected: n, got });
                }
            }
        }
        Ok(())
    }
}

/// Iterates the elements of a BYTES tensor's raw buffer.
pub fn bytes_elements(data: &[u8]) -> BytesElements<'_> {
    BytesElements { rest: data }
}

pub struct BytesElements<'a> {
    rest: &'a [u8],
}

impl<'a> BytesElements<'a> {
    fn count_checked(mut self) -> Result<usize, TensorError> {
        let mut n = 0;
        while !self.rest.is_empty() {
            self.next_checked()?;
            n += 1;
        }
        Ok(n)
    }

    fn next_checked(&mut self) -> Result<&'a [u8], TensorError> {
        if self.rest.len() < 4 {
            return Err(TensorError::BadBytesElement);
        }
        let len = u32::from_le_bytes(self.rest[..4].try_into().expect("4 bytes")) as usize;
        let rest = &self.rest[4..];
        if rest.len() < len {
            return Err(TensorError::BadBytesElement);
        }
        let (el, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(el)
    }
}

impl<'a> Iterator for BytesElements<'a> {
    type Item = Result<&'a [u8], TensorError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            None
        } else {
            Some(self.next_checked().inspect_err(|_| self.rest = &[]))
        }
    }
}

/// An output the client asked for, with how it wants it encoded.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct RequestedOutput {
    pub name: String,
    /// V2 `binary_data`: `Some(true)` binary, `Some(false)` JSON, `None` request default.
    pub binary: Option<bool>,
    pub parameters: Parameters,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<Tensor>,
    /// Empty: every output of the model.
    pub outputs: Vec<RequestedOutput>,
    pub parameters: Parameters,
    /// V2 `binary_data_output`: default encoding of outputs.
    pub binary_output: bool,
    /// The client's request metadata (HTTP headers, gRPC metadata) that
    /// remote backends may receive (`backend::forward` decides which). Left
    /// empty for backends that take none.
    pub metadata: http::HeaderMap,
    /// The client's V2 JSON body exactly as received, while the request is
    /// what that body says: a backend that takes V2 JSON sends these bytes
    /// instead of encoding the tensors again. Whatever changes the inputs,
    /// outputs or parameters after decoding sets it to `None` — never while
    /// the inputs are still unbuilt in it (`inputs_pending`).
    pub raw_json: Option<RawJson>,
}

impl InferRequest {
    pub fn validate(&self) -> Result<(), TensorError> {
        if self.inputs.is_empty() {
            return Err(TensorError::NoInputs);
        }
        for (i, t) in self.inputs.iter().enumerate() {
            if self.inputs[..i].iter().any(|o| o.name == t.name) {
                return Err(TensorError::DuplicateInput(t.name.clone()));
            }
            t.validate().map_err(|e| TensorError::In(t.name.clone(), Box::new(e)))?;
        }
        Ok(())
    }

    /// Whether the inputs were only checked in `raw_json`, not built (the
    /// V2 JSON fast path, `codec::v2::check_request`): `inputs` is empty and
    /// the body holds their data; `codec::v2::build_request` builds them.
    pub fn inputs_pending(&self) -> bool {
        self.raw_json.as_ref().is_some_and(|r| r.unbuilt.is_some())
    }

    /// Whether the output named `name` should be sent as binary.
    pub fn wants_binary(&self, name: &str) -> bool {
        self.outputs.iter().find(|o| o.name == name).and_then(|o| o.binary).unwrap_or(self.binary_output)
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: Option<String>,
    pub id: Option<String>,
    pub parameters: Parameters,
    pub outputs: Vec<Tensor>,
    /// The backend's V2 JSON body this response was decoded from, while the
    /// response is what that body says: a V2 JSON client gets these bytes
    /// instead of an encoding of the tensors. `None` once anything changed,
    /// unless the outputs are unbuilt in it (`outputs_pending`): then only
    /// what `codec::v2::relabel_response` patches may change.
    pub raw_json: Option<RawJson>,
}

impl InferResponse {
    /// Whether the outputs were only checked in `raw_json`, not built
    /// (`codec::v2::check_response`): `outputs` is empty and the body is the
    /// answer, relayed as it is.
    pub fn outputs_pending(&self) -> bool {
        self.raw_json.as_ref().is_some_and(|r| r.unbuilt.is_some())
    }
}

/// A V2 JSON body kept beside the request or response it says (`raw_json`).
#[derive(Clone, Debug, PartialEq)]
pub struct RawJson {
    pub body: Bytes,
    /// `None`: the tensors were built from `body`. `Some`: `body` was checked
    /// in one streaming pass (`codec::v2::scan`) as thoroughly as a decode
    /// would, and its tensors' data was never built: `body` is its only copy,
    /// and the request's `inputs` (response's `outputs`) are empty.
    pub unbuilt: Option<Unbuilt>,
}

impl RawJson {
    /// A body whose tensors were built from it.
    pub fn decoded(body: Bytes) -> RawJson {
        RawJson { body, unbuilt: None }
    }
}

/// What the check of a body kept of it besides the tensors' data.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Unbuilt {
    /// Each tensor's name, datatype and shape, in the body's order.
    pub tensors: Vec<TensorHeader>,
    /// Where a response's top-level `model_name` and `id` values lie in the
    /// body (JSON text, quotes included), for patching what routing changed.
    pub model_name: Option<std::ops::Range<usize>>,
    pub id: Option<std::ops::Range<usize>>,
}

/// A tensor without its data.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorHeader {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// A tensor's signature as a model declares it: -1 for a dynamic dim.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// V2 model metadata (`GET /v2/models/{m}`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_count_checks_overflow_and_sign() {
        assert_eq!(element_count(&[2, 3, 4]).unwrap(), 24);
        assert_eq!(element_count(&[]).unwrap(), 1);
        assert_eq!(element_count(&[0, 5]).unwrap(), 0);
        assert!(matches!(element_count(&[-1, 3]), Err(TensorError::NegativeDim(-1))));
        assert!(matches!(element_count(&[i64::MAX, i64::MAX]), Err(TensorError::ShapeOverflow)));
    }

    #[test]
    fn validate_sizes() {
        let t = Tensor::new("x", DataType::Fp32, vec![2, 2], Bytes::from(vec![0u8; 16]));
        t.validate().unwrap();
        let t = Tensor::new("x", DataType::Fp32, vec![2, 2], Bytes::from(vec![0u8; 15]));
        assert!(matches!(t.validate(), Err(TensorError::SizeMismatch { expected: 16, got: 15 })));
        let mut raw = Vec::new();
        for s in ["ab", ""] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let t = Tensor::new("s", DataType::Bytes, vec![2], Bytes::from(raw.clone()));
        t.validate().unwrap();
        let t = Tensor::new("s", DataType::Bytes, vec![3], Bytes::from(raw.clone()));
        assert!(matches!(t.validate(), Err(TensorError::CountMismatch { expected: 3, got: 2 })));
        raw.truncate(5);
        let t = Tensor::new("s", DataType::Bytes, vec![1], Bytes::from(raw));
        assert!(matches!(t.validate(), Err(TensorError::BadBytesElement)));
    }

    /// Seen beside the fuzzers' findings: BOOL bytes other than 0 and 1 passed validation and
    /// changed value through JSON (2 → true → 1).
    #[test]
    fn bool_bytes_are_zero_or_one() {
        let ok = Tensor::new("b", DataType::Bool, vec![2], Bytes::from_static(&[0, 1]));
        assert!(ok.validate().is_ok());
        let bad = Tensor::new("b", DataType::Bool, vec![2], Bytes::from_static(&[1, 2]));
        assert_eq!(bad.validate(), Err(TensorError::BadBool { index: 1, value: 2 }));
    }
}
