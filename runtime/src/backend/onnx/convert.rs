//! Conversion between Switchyard tensors (row-major little-endian bytes) and
//! ONNX Runtime values. Inputs whose bytes are aligned for their element type
//! are handed to ONNX Runtime in place; others are copied once. Large outputs
//! are served from ONNX Runtime's own buffer (the value rides along as the
//! `Bytes` owner); small ones are copied, which costs less than the owner.

use std::fmt::Debug;

use bytes::Bytes;
use half::{bf16, f16};
use ort::session::SessionInputValue;
use ort::value::{DynValue, PrimitiveTensorElementType, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType};

use crate::tensor::{bytes_elements, DataType, Tensor};

#[cfg(not(target_endian = "little"))]
compile_error!("the ONNX backend hands tensor bytes to ONNX Runtime as-is and needs a little-endian target");

/// The Switchyard datatype of an ONNX tensor element type, if it is one we serve.
pub fn datatype_of(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Bfloat16 => DataType::Bf16,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

/// The datatype and declared shape (-1 for dynamic dims) of a session input/output.
pub fn tensor_signature(name: &str, ty: &ValueType) -> Result<(DataType, Vec<i64>), String> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => match datatype_of(*ty) {
            Some(d) => Ok((d, shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect())),
            None => Err(format!("'{name}' has ONNX element type {ty}, which Switchyard does not serve")),
        },
        other => Err(format!("'{name}' is not a tensor ({other:?}), which Switchyard does not serve")),
    }
}

/// Element types whose every bit pattern is a valid value, so raw bytes may be viewed as them.
///
/// # Safety
/// Implementors must be plain numbers: no padding, no invalid bit patterns.
unsafe trait Plain: PrimitiveTensorElementType + Copy + Clone + Debug + 'static {}

unsafe impl Plain for f32 {}
unsafe impl Plain for f64 {}
unsafe impl Plain for f16 {}
unsafe impl Plain for bf16 {}
unsafe impl Plain for i8 {}
unsafe impl Plain for i16 {}
unsafe impl Plain for i32 {}
unsafe impl Plain for i64 {}
unsafe impl Plain for u8 {}
unsafe impl Plain for u16 {}
unsafe impl Plain for u32 {}
unsafe impl Plain for u64 {}

/// The ONNX Runtime value for a (validated) input tensor, borrowing its bytes when it can.
pub fn input_value(t: &Tensor) -> Result<SessionInputValue<'_>, String> {
    let shape = t.shape.clone();
    let data: &[u8] = &t.data;
    let v = match t.datatype {
        DataType::Fp32 => plain::<f32>(shape, data),
        DataType::Fp64 => plain::<f64>(shape, data),
        DataType::Fp16 => plain::<f16>(shape, data),
        DataType::Bf16 => plain::<bf16>(shape, data),
        DataType::Int8 => plain::<i8>(shape, data),
        DataType::Int16 => plain::<i16>(shape, data),
        DataType::Int32 => plain::<i32>(shape, data),
        DataType::Int64 => plain::<i64>(shape, data),
        DataType::Uint8 => plain::<u8>(shape, data),
        DataType::Uint16 => plain::<u16>(shape, data),
        DataType::Uint32 => plain::<u32>(shape, data),
        DataType::Uint64 => plain::<u64>(shape, data),
        // Any non-zero byte is true: a byte that is not 0/1 must never reach ONNX Runtime as a `bool`.
        DataType::Bool => OrtTensor::from_array((shape, data.iter().map(|&b| b != 0).collect::<Vec<bool>>()))
            .map(SessionInputValue::from),
        DataType::Bytes => {
            let mut strings = Vec::new();
            for (i, el) in bytes_elements(data).enumerate() {
                let el = el.map_err(|e| format!("input '{}': {e}", t.name))?;
                let s = std::str::from_utf8(el).map_err(|_| {
                    format!("input '{}': BYTES element {i} is not UTF-8, which ONNX string tensors need", t.name)
                })?;
                if s.contains('\0') {
                    return Err(format!("input '{}': BYTES element {i} contains a NUL byte", t.name));
                }
                strings.push(s.to_owned());
            }
            OrtTensor::from_string_array((shape, strings.as_slice())).map(SessionInputValue::from)
        }
    };
    v.map_err(|e| format!("input '{}': {e}", t.name))
}

fn plain<T: Plain>(shape: Vec<i64>, data: &[u8]) -> ort::Result<SessionInputValue<'_>> {
    // SAFETY: `T: Plain` accepts every bit pattern; `align_to` only puts correctly aligned whole elements in `mid`.
    let (pre, mid, post) = unsafe { data.align_to::<T>() };
    if pre.is_empty() && post.is_empty() {
        return TensorRef::from_array_view((shape, mid)).map(SessionInputValue::from);
    }
    let n = data.len() / size_of::<T>();
    let mut v: Vec<T> = Vec::with_capacity(n);
    // SAFETY: the Vec has room for `n` elements = `data.len()` bytes (validated to be a whole number of
    // elements), the regions cannot overlap, and `T: Plain` makes any bytes a valid `T`.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), v.as_mut_ptr().cast::<u8>(), n * size_of::<T>());
        v.set_len(n);
    }
    OrtTensor::from_array((shape, v)).map(SessionInputValue::from)
}

/// Outputs at least this large keep ONNX Runtime's buffer instead of being copied.
///
/// Below it a copy (well under a microsecond) is cheaper than the owner's
/// allocation and keeps the session's allocator from being pinned by a small
/// answer that a cache may hold for long.
pub const ZERO_COPY_MIN: usize = 32 * 1024;

/// Turns an output value into a Switchyard tensor: its buffer shared when at
/// least [`ZERO_COPY_MIN`] bytes, copied otherwise.
pub fn output_tensor(name: &str, v: DynValue) -> Result<Tensor, String> {
    let ty = match v.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(format!("output '{name}' is not a tensor ({other:?})")),
    };
    let datatype = datatype_of(ty)
        .ok_or_else(|| format!("output '{name}' has ONNX element type {ty}, which Switchyard does not serve"))?;
    let r = match datatype {
        DataType::Fp32 => raw::<f32>(v),
        DataType::Fp64 => raw::<f64>(v),
        DataType::Fp16 => raw::<f16>(v),
        DataType::Bf16 => raw::<bf16>(v),
        DataType::Int8 => raw::<i8>(v),
        DataType::Int16 => raw::<i16>(v),
        DataType::Int32 => raw::<i32>(v),
        DataType::Int64 => raw::<i64>(v),
        DataType::Uint8 => raw::<u8>(v),
        DataType::Uint16 => raw::<u16>(v),
        DataType::Uint32 => raw::<u32>(v),
        DataType::Uint64 => raw::<u64>(v),
        DataType::Bool => raw::<bool>(v),
        DataType::Bytes => v.try_extract_strings().map(|(shape, strings)| {
            let len: usize = strings.iter().map(|s| 4 + s.len()).sum();
            let mut out = Vec::with_capacity(len);
            for s in &strings {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            (shape.to_vec(), Bytes::from(out))
        }),
    };
    let (shape, data) = r.map_err(|e| format!("output '{name}': {e}"))?;
    Ok(Tensor::new(name, datatype, shape, data))
}

fn raw<T: PrimitiveTensorElementType + Copy + 'static>(v: DynValue) -> ort::Result<(Vec<i64>, Bytes)> {
    let (shape, data) = v.try_extract_tensor::<T>()?;
    let shape = shape.to_vec();
    let (ptr, len) = (data.as_ptr().cast::<u8>(), std::mem::size_of_val(data));
    if len < ZERO_COPY_MIN {
        // SAFETY: `T` is a primitive number or `bool` (no padding; every byte initialised), so its
        // memory may be read as bytes; the view lives no longer than `data`.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, len) };
        return Ok((shape, Bytes::copy_from_slice(bytes)));
    }
    Ok((shape, Bytes::from_owner(OutputBuffer { _value: v, ptr, len })))
}

/// An output's bytes, kept alive by the ONNX Runtime value that owns them.
struct OutputBuffer {
    _value: DynValue,
    ptr: *const u8,
    len: usize,
}

// SAFETY: `DynValue` is `Send`; `ptr` points into the tensor buffer the value owns, which
// ONNX Runtime neither moves nor writes once `run` returned, and which is freed only when
// the value drops (after every `Bytes` view of it, as `Bytes::from_owner` guarantees).
unsafe impl Send for OutputBuffer {}

impl AsRef<[u8]> for OutputBuffer {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: see `Send` above; `ptr`/`len` came from the value's CPU-accessible tensor
        // data (`try_extract_tensor` refuses any other) and stay valid while `_value` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_type_maps_both_ways() {
        for d in DataType::ALL {
            let ty = match d {
                DataType::Bool => TensorElementType::Bool,
                DataType::Uint8 => TensorElementType::Uint8,
                DataType::Uint16 => TensorElementType::Uint16,
                DataType::Uint32 => TensorElementType::Uint32,
                DataType::Uint64 => TensorElementType::Uint64,
                DataType::Int8 => TensorElementType::Int8,
                DataType::Int16 => TensorElementType::Int16,
                DataType::Int32 => TensorElementType::Int32,
                DataType::Int64 => TensorElementType::Int64,
                DataType::Fp16 => TensorElementType::Float16,
                DataType::Fp32 => TensorElementType::Float32,
                DataType::Fp64 => TensorElementType::Float64,
                DataType::Bf16 => TensorElementType::Bfloat16,
                DataType::Bytes => TensorElementType::String,
            };
            assert_eq!(datatype_of(ty), Some(d));
        }
        assert_eq!(datatype_of(TensorElementType::Complex64), None);
    }
}
