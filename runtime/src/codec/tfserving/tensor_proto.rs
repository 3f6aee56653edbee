//! TF's `TensorProto` ↔ the tensor model, both directions (TF Serving gRPC
//! clients, and Switchyard calling a TF Serving server).
//!
//! Read as TensorFlow reads it (`Tensor::FromProto`): `tensor_content` holds
//! the little-endian element bytes and wins when set (it moves into the
//! tensor without a copy); otherwise the typed field of the dtype does
//! (`float_val`, `int_val` for int8/16/32 and uint8/16, `half_val` holding
//! the 16 bits of each FP16/BF16 element, ...), and one value fills the
//! whole shape (TF's "version 0" rule). Switchyard is stricter than TF where
//! TF silently guesses: a value count other than the shape's or one, values
//! in another dtype's field, or an integer outside the dtype's range are
//! errors naming the tensor, not zero- or last-value padding or truncation.
//! Written as TF Serving writes predict outputs: `tensor_content` for
//! numeric types, `string_val` for `DT_STRING`.

use bytes::{BufMut, Bytes, BytesMut};

use super::dtype::{dt_name, dt_number, from_dt_number};
use super::pb::tensorflow::{tensor_shape_proto::Dim, DataType as TfDataType, TensorProto, TensorShapeProto};
use crate::error::CodecError;
use crate::tensor::{bytes_elements, element_count, DataType, Tensor};

/// The `*_val` field that carries `dt`'s elements.
fn typed_field(dt: DataType) -> &'static str {
    match dt {
        DataType::Fp32 => "float_val",
        DataType::Fp64 => "double_val",
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Uint8 | DataType::Uint16 => "int_val",
        DataType::Int64 => "int64_val",
        DataType::Uint32 => "uint32_val",
        DataType::Uint64 => "uint64_val",
        DataType::Bool => "bool_val",
        DataType::Fp16 | DataType::Bf16 => "half_val",
        DataType::Bytes => "string_val",
    }
}

/// (field, number of values) of every non-empty typed field of `p`.
fn used_fields(p: &TensorProto) -> Vec<(&'static str, usize)> {
    [
        ("half_val", p.half_val.len()),
        ("float_val", p.float_val.len()),
        ("double_val", p.double_val.len()),
        ("int_val", p.int_val.len()),
        ("string_val", p.string_val.len()),
        ("scomplex_val", p.scomplex_val.len()),
        ("int64_val", p.int64_val.len()),
        ("bool_val", p.bool_val.len()),
        ("dcomplex_val", p.dcomplex_val.len()),
        ("uint32_val", p.uint32_val.len()),
        ("uint64_val", p.uint64_val.len()),
        ("float8_val", p.float8_val.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// A `TensorShapeProto` as a shape; absent is a scalar (TF's default).
pub fn shape_from_proto(shape: Option<&TensorShapeProto>) -> Result<Vec<i64>, CodecError> {
    let Some(s) = shape else { return Ok(Vec::new()) };
    if s.unknown_rank {
        return Err(CodecError::invalid("tensor_shape has unknown_rank set; a tensor's shape must be known"));
    }
    s.dim
        .iter()
        .map(|d| {
            if d.size < 0 {
                Err(CodecError::invalid(format!("tensor_shape has a negative dimension {}", d.size)))
            } else {
                Ok(d.size)
            }
        })
        .collect()
}

/// A shape as a `TensorShapeProto` (`-1` stays `-1`: signatures use it for dynamic dimensions).
pub fn shape_to_proto(shape: &[i64]) -> TensorShapeProto {
    TensorShapeProto { dim: shape.iter().map(|&size| Dim { size, name: String::new() }).collect(), unknown_rank: false }
}

/// TF's name of a `DataType` enum number (`DT_RESOURCE`), or the number for one TF has not named.
pub fn tf_dtype_name(n: i32) -> String {
    TfDataType::try_from(n).map(|d| d.as_str_name().to_string()).unwrap_or_else(|_| format!("DataType {n}"))
}

fn shape_text(shape: &[i64]) -> String {
    format!("{shape:?}")
}

/// A `TensorProto` as the tensor named `name`. `max_bytes` bounds the
/// tensor's data: one typed value fills its whole shape, so a few bytes on
/// the wire could otherwise ask for any amount of memory (callers pass their
/// message size limit: no tensor grows past what a client could have sent).
/// Errors name the problem; callers prefix the tensor's role.
pub fn tensor_from_proto(name: &str, p: TensorProto, max_bytes: usize) -> Result<Tensor, CodecError> {
    let err = |msg: String| CodecError::invalid(format!("{name}: {msg}"));
    let datatype = match from_dt_number(p.dtype) {
        Some(dt) => dt,
        None if p.dtype == TfDataType::DtInvalid as i32 => return Err(err("dtype is not set (DT_INVALID)".into())),
        None => {
            return Err(err(format!(
                "dtype {} is not supported (Switchyard carries the numeric types, DT_BOOL and DT_STRING)",
                tf_dtype_name(p.dtype)
            )))
        }
    };
    let shape = shape_from_proto(p.tensor_shape.as_ref()).map_err(|e| err(e.to_string()))?;
    let n = element_count(&shape).map_err(|e| err(e.to_string()))?;
    let used = used_fields(&p);
    let tf = dt_name(datatype);
    let field = typed_field(datatype);

    if !p.tensor_content.is_empty() {
        if datatype == DataType::Bytes {
            return Err(err(format!("a {tf} tensor carries its elements in string_val, not tensor_content")));
        }
        if let Some((other, _)) = used.first() {
            return Err(err(format!("sets both tensor_content and {other}; send the elements in one of them")));
        }
        let size = datatype.size().expect("numeric");
        let want = n.checked_mul(size).ok_or_else(|| err("shape's byte size overflows".into()))?;
        if p.tensor_content.len() != want {
            return Err(err(format!(
                "tensor_content holds {} bytes, but shape {} of {tf} needs {want}",
                p.tensor_content.len(),
                shape_text(&shape)
            )));
        }
        let t = Tensor::new(name, datatype, shape, p.tensor_content);
        t.validate().map_err(|e| err(e.to_string()))?;
        return Ok(t);
    }

    if let Some((other, _)) = used.iter().find(|(f, _)| *f != field) {
        return Err(err(format!("dtype {tf} carries its values in {field} or tensor_content, not {other}")));
    }
    let count = used.first().map_or(0, |(_, c)| *c);
    if count != n && !(count == 1 && n > 1) {
        return Err(err(if count == 0 {
            format!(
                "no values: shape {} holds {n} elements, and neither tensor_content nor {field} is set",
                shape_text(&shape)
            )
        } else {
            format!(
                "{count} values in {field}, but shape {} holds {n} elements (send {n}, or one to fill the shape)",
                shape_text(&shape)
            )
        }));
    }
    let one = element_bytes(datatype, &p).map_err(err)?;
    let data = if count == n {
        one
    } else {
        // One value fills the shape.
        let total = one.len().checked_mul(n).filter(|t| *t <= max_bytes).ok_or_else(|| {
            err(format!(
                "one value filling shape {} makes {n} elements, over the {max_bytes}-byte limit",
                shape_text(&shape)
            ))
        })?;
        let mut out = BytesMut::with_capacity(total);
        for _ in 0..n {
            out.extend_from_slice(&one);
        }
        out.freeze()
    };
    if data.len() > max_bytes {
        return Err(err(format!("data of {} bytes is over the {max_bytes}-byte limit", data.len())));
    }
    Ok(Tensor::new(name, datatype, shape, data))
}

/// The values of `dt`'s typed field as the tensor model's bytes, range-checked.
fn element_bytes(dt: DataType, p: &TensorProto) -> Result<Bytes, String> {
    fn narrow<T: TryFrom<i32>>(v: i32, dt: DataType) -> Result<T, String> {
        T::try_from(v).map_err(|_| format!("value {v} is out of range for {}", dt_name(dt)))
    }
    let mut out = BytesMut::new();
    match dt {
        DataType::Fp32 => p.float_val.iter().for_each(|v| out.put_f32_le(*v)),
        DataType::Fp64 => p.double_val.iter().for_each(|v| out.put_f64_le(*v)),
        DataType::Int32 => p.int_val.iter().for_each(|v| out.put_i32_le(*v)),
        DataType::Int16 => {
            for v in &p.int_val {
                out.put_i16_le(narrow(*v, dt)?);
            }
        }
        DataType::Int8 => {
            for v in &p.int_val {
                out.put_i8(narrow(*v, dt)?);
            }
        }
        DataType::Uint8 => {
            for v in &p.int_val {
                out.put_u8(narrow(*v, dt)?);
            }
        }
        DataType::Uint16 => {
            for v in &p.int_val {
                out.put_u16_le(narrow(*v, dt)?);
            }
        }
        DataType::Int64 => p.int64_val.iter().for_each(|v| out.put_i64_le(*v)),
        DataType::Uint32 => p.uint32_val.iter().for_each(|v| out.put_u32_le(*v)),
        DataType::Uint64 => p.uint64_val.iter().for_each(|v| out.put_u64_le(*v)),
        DataType::Bool => out.extend(p.bool_val.iter().map(|b| *b as u8)),
        // TF keeps each element's bits (`bit_cast<uint16>`) in an int32.
        DataType::Fp16 | DataType::Bf16 => {
            for v in &p.half_val {
                let bits: u16 = u16::try_from(*v)
                    .map_err(|_| format!("half_val {v} is not the 16 bits of a {} value", dt_name(dt)))?;
                out.put_u16_le(bits);
            }
        }
        DataType::Bytes => {
            for s in &p.string_val {
                let len = u32::try_from(s.len()).map_err(|_| "a string_val element is over 4 GiB".to_string())?;
                out.put_u32_le(len);
                out.extend_from_slice(s);
            }
        }
    }
    Ok(out.freeze())
}

/// A tensor as a `TensorProto`: `tensor_content` for numeric types (the
/// tensor's bytes, not copied), `string_val` for BYTES (slices of them).
pub fn tensor_to_proto(t: &Tensor) -> Result<TensorProto, CodecError> {
    let mut p = TensorProto {
        dtype: dt_number(t.datatype),
        tensor_shape: Some(shape_to_proto(&t.shape)),
        ..TensorProto::default()
    };
    if t.datatype == DataType::Bytes {
        p.string_val = bytes_elements(&t.data)
            .map(|el| el.map(|s| t.data.slice_ref(s)))
            .collect::<Result<_, _>>()
            .map_err(|e| CodecError::invalid(format!("{}: {e}", t.name)))?;
    } else {
        p.tensor_content = t.data.clone();
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn proto(dtype: TfDataType, shape: &[i64]) -> TensorProto {
        TensorProto { dtype: dtype as i32, tensor_shape: Some(shape_to_proto(shape)), ..TensorProto::default() }
    }

    fn le_f32(v: &[f32]) -> Bytes {
        Bytes::from(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
    }

    fn err(name: &str, p: TensorProto) -> String {
        tensor_from_proto(name, p, MAX).unwrap_err().to_string()
    }

    #[test]
    fn tensor_content_moves_into_the_tensor() {
        let mut p = proto(TfDataType::DtFloat, &[2, 2]);
        p.tensor_content = le_f32(&[1.0, 2.0, 3.0, 4.0]);
        let ptr = p.tensor_content.as_ptr();
        let t = tensor_from_proto("x", p, MAX).unwrap();
        assert_eq!((t.datatype, t.shape.clone()), (DataType::Fp32, vec![2, 2]));
        assert_eq!(t.data, le_f32(&[1.0, 2.0, 3.0, 4.0]));
        assert_eq!(t.data.as_ptr(), ptr, "no copy");
    }

    /// (TF dtype, V2 datatype, fills the typed field, the bytes it means).
    type Case = (TfDataType, DataType, Box<dyn Fn(&mut TensorProto)>, Vec<u8>);

    #[test]
    fn typed_fields_of_every_dtype() {
        let cases: Vec<Case> = vec![
            (TfDataType::DtFloat, DataType::Fp32, Box::new(|p| p.float_val = vec![1.5, -2.0]), {
                [1.5f32.to_le_bytes(), (-2.0f32).to_le_bytes()].concat()
            }),
            (TfDataType::DtDouble, DataType::Fp64, Box::new(|p| p.double_val = vec![0.25, 8.0]), {
                [0.25f64.to_le_bytes(), 8.0f64.to_le_bytes()].concat()
            }),
            (TfDataType::DtInt32, DataType::Int32, Box::new(|p| p.int_val = vec![-7, 9]), {
                [(-7i32).to_le_bytes(), 9i32.to_le_bytes()].concat()
            }),
            (TfDataType::DtInt16, DataType::Int16, Box::new(|p| p.int_val = vec![-300, 300]), {
                [(-300i16).to_le_bytes(), 300i16.to_le_bytes()].concat()
            }),
            (TfDataType::DtInt8, DataType::Int8, Box::new(|p| p.int_val = vec![-128, 127]), vec![0x80, 0x7f]),
            (TfDataType::DtUint8, DataType::Uint8, Box::new(|p| p.int_val = vec![0, 255]), vec![0, 255]),
            (TfDataType::DtUint16, DataType::Uint16, Box::new(|p| p.int_val = vec![1, 65535]), vec![1, 0, 255, 255]),
            (TfDataType::DtInt64, DataType::Int64, Box::new(|p| p.int64_val = vec![i64::MIN, 5]), {
                [i64::MIN.to_le_bytes(), 5i64.to_le_bytes()].concat()
            }),
            (TfDataType::DtUint32, DataType::Uint32, Box::new(|p| p.uint32_val = vec![u32::MAX, 1]), {
                [u32::MAX.to_le_bytes(), 1u32.to_le_bytes()].concat()
            }),
            (TfDataType::DtUint64, DataType::Uint64, Box::new(|p| p.uint64_val = vec![u64::MAX, 2]), {
                [u64::MAX.to_le_bytes(), 2u64.to_le_bytes()].concat()
            }),
            (TfDataType::DtBool, DataType::Bool, Box::new(|p| p.bool_val = vec![true, false]), vec![1, 0]),
            // 1.0 as FP16 is 0x3c00, as BF16 0x3f80: TF keeps the bits in half_val.
            (TfDataType::DtHalf, DataType::Fp16, Box::new(|p| p.half_val = vec![0x3c00, 0xc000]), {
                vec![0x00, 0x3c, 0x00, 0xc0]
            }),
            (TfDataType::DtBfloat16, DataType::Bf16, Box::new(|p| p.half_val = vec![0x3f80, 0]), {
                vec![0x80, 0x3f, 0, 0]
            }),
            (
                TfDataType::DtString,
                DataType::Bytes,
                Box::new(|p| p.string_val = vec![Bytes::from("ab"), Bytes::new()]),
                { vec![2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0] },
            ),
        ];
        for (tf, dt, fill, want) in cases {
            let mut p = proto(tf, &[2]);
            fill(&mut p);
            let t = tensor_from_proto("x", p, MAX).unwrap_or_else(|e| panic!("{tf:?}: {e}"));
            assert_eq!(t.datatype, dt);
            assert_eq!(&t.data[..], &want[..], "{tf:?}");
            t.validate().unwrap();
            // And back: numeric types as tensor_content, strings as string_val.
            let back = tensor_to_proto(&t).unwrap();
            assert_eq!(back.dtype, tf as i32);
            assert_eq!(shape_from_proto(back.tensor_shape.as_ref()).unwrap(), vec![2]);
            if dt == DataType::Bytes {
                assert_eq!(back.string_val, vec![Bytes::from("ab"), Bytes::new()]);
                assert!(back.tensor_content.is_empty());
            } else {
                assert_eq!(&back.tensor_content[..], &want[..]);
                assert!(used_fields(&back).is_empty());
            }
            assert_eq!(tensor_from_proto("x", back, MAX).unwrap(), t, "{tf:?} round trip");
        }
    }

    #[test]
    fn one_value_fills_the_shape() {
        let mut p = proto(TfDataType::DtFloat, &[2, 3]);
        p.float_val = vec![0.5];
        let t = tensor_from_proto("x", p.clone(), MAX).unwrap();
        assert_eq!(t.data, le_f32(&[0.5; 6]));
        let mut s = proto(TfDataType::DtString, &[3]);
        s.string_val = vec![Bytes::from("z")];
        let t = tensor_from_proto("s", s, MAX).unwrap();
        assert_eq!(&t.data[..], &b"\x01\0\0\0z\x01\0\0\0z\x01\0\0\0z"[..]);
        // A tiny message cannot ask for unbounded memory.
        p.tensor_shape = Some(shape_to_proto(&[1 << 40]));
        assert!(err("x", p).contains("over the 1048576-byte limit"));
    }

    #[test]
    fn scalar_and_empty() {
        let mut p = TensorProto { dtype: TfDataType::DtInt64 as i32, ..TensorProto::default() };
        p.int64_val = vec![42];
        let t = tensor_from_proto("k", p, MAX).unwrap();
        assert!(t.shape.is_empty());
        assert_eq!(t.data, Bytes::from(42i64.to_le_bytes().to_vec()));
        let t = tensor_from_proto("e", proto(TfDataType::DtFloat, &[0, 4]), MAX).unwrap();
        assert!(t.data.is_empty());
    }

    #[test]
    fn size_mismatches_are_named() {
        let mut p = proto(TfDataType::DtFloat, &[2, 2]);
        p.tensor_content = le_f32(&[1.0, 2.0, 3.0]);
        assert_eq!(err("x", p), "x: tensor_content holds 12 bytes, but shape [2, 2] of DT_FLOAT needs 16");
        let mut p = proto(TfDataType::DtFloat, &[2, 2]);
        p.float_val = vec![1.0, 2.0, 3.0];
        assert_eq!(
            err("x", p),
            "x: 3 values in float_val, but shape [2, 2] holds 4 elements (send 4, or one to fill the shape)"
        );
        assert!(err("x", proto(TfDataType::DtFloat, &[2])).contains("no values"));
        let mut p = proto(TfDataType::DtString, &[1]);
        p.tensor_content = Bytes::from_static(b"abcd");
        assert!(err("s", p).contains("string_val, not tensor_content"));
    }

    #[test]
    fn wrong_field_and_ranges() {
        let mut p = proto(TfDataType::DtFloat, &[1]);
        p.int_val = vec![1];
        assert_eq!(err("x", p), "x: dtype DT_FLOAT carries its values in float_val or tensor_content, not int_val");
        let mut p = proto(TfDataType::DtFloat, &[1]);
        p.float_val = vec![1.0];
        p.tensor_content = le_f32(&[1.0]);
        assert!(err("x", p).contains("both tensor_content and float_val"));
        let mut p = proto(TfDataType::DtInt8, &[1]);
        p.int_val = vec![200];
        assert_eq!(err("x", p), "x: value 200 is out of range for DT_INT8");
        let mut p = proto(TfDataType::DtUint8, &[1]);
        p.int_val = vec![-1];
        assert!(err("x", p).contains("out of range for DT_UINT8"));
        let mut p = proto(TfDataType::DtHalf, &[1]);
        p.half_val = vec![70000];
        assert!(err("x", p).contains("not the 16 bits of a DT_HALF value"));
        let mut p = proto(TfDataType::DtBool, &[1]);
        p.tensor_content = Bytes::from_static(&[2]);
        assert!(err("b", p).contains("BOOL element 2"));
    }

    #[test]
    fn unsupported_dtypes_and_bad_shapes() {
        for (dt, name) in [
            (TfDataType::DtResource, "DT_RESOURCE"),
            (TfDataType::DtVariant, "DT_VARIANT"),
            (TfDataType::DtComplex64, "DT_COMPLEX64"),
            (TfDataType::DtComplex128, "DT_COMPLEX128"),
            (TfDataType::DtQint8, "DT_QINT8"),
        ] {
            assert!(err("x", proto(dt, &[1])).contains(&format!("dtype {name} is not supported")), "{name}");
        }
        assert!(err("x", TensorProto::default()).contains("DT_INVALID"));
        assert!(err("x", TensorProto { dtype: 99, ..TensorProto::default() }).contains("DataType 99"));
        assert!(err("x", proto(TfDataType::DtFloat, &[2, -1])).contains("negative dimension -1"));
        assert!(err("x", proto(TfDataType::DtFloat, &[i64::MAX, i64::MAX])).contains("overflows"));
        let mut p = proto(TfDataType::DtFloat, &[1]);
        p.tensor_shape.as_mut().unwrap().unknown_rank = true;
        assert!(err("x", p).contains("unknown_rank"));
    }
}
