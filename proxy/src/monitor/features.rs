//! Tensors as feature columns: a tensor `[N, d1, d2, …]` is N rows of
//! `d1·d2·…` features, named `tensor[i]` (flattened index) or plain `tensor`
//! when a row holds one element. Numbers become `f64`, BYTES stay categories.

use half::{bf16, f16};
use switchyard_runtime::tensor::bytes_elements;
use switchyard_runtime::{DataType, Tensor};
use switchyard_stats::drift::Value;

/// Most feature columns taken from one tensor; further columns are not profiled.
pub const MAX_COLUMNS_PER_TENSOR: usize = 1024;

/// Rows and row width of a tensor; `None` for an empty or malformed one.
pub fn rows_and_width(t: &Tensor) -> Option<(usize, usize)> {
    let dims: Vec<usize> = t.shape.iter().map(|d| usize::try_from(*d).ok()).collect::<Option<_>>()?;
    match dims.split_first() {
        None => Some((1, 1)),
        Some((n, [])) => Some((*n, 1)),
        Some((n, rest)) => Some((*n, rest.iter().product())),
    }
}

/// The name of column `i` of a tensor whose rows are `width` wide.
pub fn column_name(tensor: &str, width: usize, i: usize) -> String {
    if width == 1 {
        tensor.to_string()
    } else {
        format!("{tensor}[{i}]")
    }
}

/// Calls `f(row, column, value)` for every element of the first
/// `MAX_COLUMNS_PER_TENSOR` columns; a tensor whose bytes do not match its
/// shape is skipped whole (it was validated before it got here).
pub fn for_each_value(t: &Tensor, mut f: impl FnMut(usize, usize, Value<'_>)) {
    let Some((rows, width)) = rows_and_width(t) else { return };
    if width == 0 || rows == 0 {
        return;
    }
    let d = &t.data[..];
    let mut emit = |k: usize, v: Value<'_>| {
        let (r, c) = (k / width, k % width);
        if c < MAX_COLUMNS_PER_TENSOR {
            f(r, c, v);
        }
    };
    macro_rules! numbers {
        ($n:expr, $conv:expr) => {{
            if d.len() != rows * width * $n {
                return;
            }
            for (k, c) in d.chunks_exact($n).enumerate() {
                emit(k, Value::Number($conv(c.try_into().expect("chunk size"))));
            }
        }};
    }
    match t.datatype {
        DataType::Bool => numbers!(1, |c: [u8; 1]| f64::from(c[0] != 0)),
        DataType::Uint8 => numbers!(1, |c: [u8; 1]| f64::from(c[0])),
        DataType::Int8 => numbers!(1, |c: [u8; 1]| f64::from(c[0] as i8)),
        DataType::Uint16 => numbers!(2, |c| f64::from(u16::from_le_bytes(c))),
        DataType::Int16 => numbers!(2, |c| f64::from(i16::from_le_bytes(c))),
        DataType::Uint32 => numbers!(4, |c| f64::from(u32::from_le_bytes(c))),
        DataType::Int32 => numbers!(4, |c| f64::from(i32::from_le_bytes(c))),
        DataType::Uint64 => numbers!(8, |c| u64::from_le_bytes(c) as f64),
        DataType::Int64 => numbers!(8, |c| i64::from_le_bytes(c) as f64),
        DataType::Fp16 => numbers!(2, |c| f16::from_le_bytes(c).to_f64()),
        DataType::Bf16 => numbers!(2, |c| bf16::from_le_bytes(c).to_f64()),
        DataType::Fp32 => numbers!(4, |c| f64::from(f32::from_le_bytes(c))),
        DataType::Fp64 => numbers!(8, f64::from_le_bytes),
        DataType::Bytes => {
            let els: Result<Vec<&[u8]>, _> = bytes_elements(d).collect();
            let Ok(els) = els else { return };
            if els.len() != rows * width {
                return;
            }
            for (k, e) in els.into_iter().enumerate() {
                emit(k, Value::Category(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn rows_columns_and_values() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = Tensor::new("x", DataType::Fp32, vec![2, 3], Bytes::from(data));
        let mut seen = vec![];
        for_each_value(&t, |r, c, v| {
            if let Value::Number(x) = v {
                seen.push((r, c, x));
            }
        });
        assert_eq!(seen, vec![(0, 0, 1.0), (0, 1, 2.0), (0, 2, 3.0), (1, 0, 4.0), (1, 1, 5.0), (1, 2, 6.0)]);
        assert_eq!(column_name("x", 3, 2), "x[2]");
        assert_eq!(column_name("s", 1, 0), "s");
    }

    #[test]
    fn a_tensor_whose_bytes_disagree_with_its_shape_is_skipped() {
        let t = Tensor::new("x", DataType::Fp32, vec![2, 3], Bytes::from_static(&[0; 8]));
        let mut n = 0;
        for_each_value(&t, |_, _, _| n += 1);
        assert_eq!(n, 0);
    }
}
