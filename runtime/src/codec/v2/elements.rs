//! Element conversion for V2 JSON: a tensor's `data` (flat or nested
//! arrays) to little-endian bytes per datatype with range checks, and bytes
//! back to a flat JSON array. Knows nothing of bodies or tensors' other fields.

use std::fmt;

use half::{bf16, f16};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::tensor::{bytes_elements, DataType, Tensor};

/// Where `Flatten` puts the elements it has checked: a tensor's bytes, or
/// only their count (`Count`, when the body is checked, not decoded). Both
/// see the same elements after the same checks.
pub(super) trait Sink {
    /// One fixed-size element, little-endian.
    fn fixed<const N: usize>(&mut self, le: [u8; N]);
    /// One BYTES element (its length already checked to fit the u32 prefix).
    fn var(&mut self, len: u32, el: &[u8]);
    /// Room for `additional` more bytes.
    fn reserve(&mut self, additional: usize);
}

impl Sink for Vec<u8> {
    #[inline]
    fn fixed<const N: usize>(&mut self, le: [u8; N]) {
        self.extend_from_slice(&le);
    }

    #[inline]
    fn var(&mut self, len: u32, el: &[u8]) {
        self.extend_from_slice(&len.to_le_bytes());
        self.extend_from_slice(el);
    }

    #[inline]
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }
}

/// Counts the elements, keeping none of them.
#[derive(Default)]
pub(super) struct Count(pub(super) usize);

impl Sink for Count {
    #[inline]
    fn fixed<const N: usize>(&mut self, _: [u8; N]) {
        self.0 += 1;
    }

    #[inline]
    fn var(&mut self, _: u32, _: &[u8]) {
        self.0 += 1;
    }

    #[inline]
    fn reserve(&mut self, _: usize) {}
}

/// Streams (possibly nested) JSON arrays of one datatype into `out` (the
/// little-endian bytes, or a count), range-checking every element.
pub(super) struct Flatten<'a, S: Sink = Vec<u8>> {
    dt: DataType,
    out: &'a mut S,
}

impl<'a, S: Sink> Flatten<'a, S> {
    pub(super) fn new(dt: DataType, out: &'a mut S) -> Flatten<'a, S> {
        Flatten { dt, out }
    }

    fn reborrow(&mut self) -> Flatten<'_, S> {
        Flatten { dt: self.dt, out: self.out }
    }

    fn int<E: de::Error>(self, v: i128) -> Result<(), E> {
        let dt = self.dt;
        let range = || E::custom(format!("value {v} is out of range for {dt}"));
        match dt {
            DataType::Bool => return Err(E::custom(format!("expected true/false for BOOL, got {v}"))),
            DataType::Uint8 => self.out.fixed(u8::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Int8 => self.out.fixed(i8::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Uint16 => self.out.fixed(u16::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Int16 => self.out.fixed(i16::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Uint32 => self.out.fixed(u32::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Int32 => self.out.fixed(i32::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Uint64 => self.out.fixed(u64::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Int64 => self.out.fixed(i64::try_from(v).map_err(|_| range())?.to_le_bytes()),
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => return self.float(v as f64),
            DataType::Bytes => return Err(E::custom(format!("expected a string for BYTES, got {v}"))),
        }
        Ok(())
    }

    fn float<E: de::Error>(self, v: f64) -> Result<(), E> {
        // A JSON number (always finite) that the datatype can only hold as
        // infinity is out of its range, as an integer would be: refused here,
        // so the request is never forwarded (its JSON bytes may be, as sent).
        let dt = self.dt;
        let range = || E::custom(format!("value {v} is out of range for {dt}"));
        match dt {
            DataType::Fp32 => {
                let x = v as f32;
                if x.is_infinite() {
                    return Err(range());
                }
                self.out.fixed(x.to_le_bytes())
            }
            DataType::Fp64 => self.out.fixed(v.to_le_bytes()),
            DataType::Fp16 => {
                let x = f16::from_f64(v);
                if x.is_infinite() {
                    return Err(range());
                }
                self.out.fixed(x.to_bits().to_le_bytes())
            }
            DataType::Bf16 => {
                let x = bf16::from_f64(v);
                if x.is_infinite() {
                    return Err(range());
                }
                self.out.fixed(x.to_bits().to_le_bytes())
            }
            dt => return Err(E::custom(format!("expected an integer for {dt}, got {v}"))),
        }
        Ok(())
    }
}

impl<'de, S: Sink> DeserializeSeed<'de> for Flatten<'_, S> {
    type Value = ();
    #[inline]
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, S: Sink> Visitor<'de> for Flatten<'_, S> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{} values (flat or nested arrays)", self.dt)
    }

    #[inline]
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
        self.out.fixed([v as u8]);
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
        self.out.var(len, v.as_bytes());
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!("null is not a {} value", self.dt)))
    }
}

/// Serializes a tensor's bytes as a flat JSON array.
pub(super) struct DataJson<'a>(pub(super) &'a Tensor);

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
        // JSON has no NaN or infinity (serde_json would write `null`, which
        // reads back as no number at all): such a tensor travels binary only.
        macro_rules! floats {
            ($n:expr, $conv:expr) => {{
                let mut seq = s.serialize_seq(Some(d.len() / $n))?;
                for c in d.chunks_exact($n) {
                    let v: f64 = $conv(c.try_into().expect("chunk size"));
                    if !v.is_finite() {
                        return Err(serde::ser::Error::custom(format!(
                            "tensor '{}' holds {v}, which JSON cannot carry; ask for it as binary data",
                            t.name
                        )));
                    }
                    match t.datatype {
                        DataType::Fp64 => seq.serialize_element(&v)?,
                        _ => seq.serialize_element(&(v as f32))?,
                    }
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
            DataType::Fp16 => floats!(2, |c| f16::from_le_bytes(c).to_f64()),
            DataType::Bf16 => floats!(2, |c| bf16::from_le_bytes(c).to_f64()),
            DataType::Fp32 => floats!(4, |c| f32::from_le_bytes(c) as f64),
            DataType::Fp64 => floats!(8, f64::from_le_bytes),
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn to_bytes(dt: DataType, json: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut de = serde_json::Deserializer::from_str(json);
        Flatten::new(dt, &mut out).deserialize(&mut de).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn to_json(dt: DataType, data: Vec<u8>) -> String {
        serde_json::to_string(&DataJson(&Tensor::new("t", dt, vec![], Bytes::from(data)))).unwrap()
    }

    /// Found by the `v2_response` fuzz target: a binary NaN re-encoded as JSON
    /// became `null`, which no client reads back as a number.
    #[test]
    fn non_finite_floats_are_refused_in_json() {
        for (dt, data) in [
            (DataType::Fp32, f32::NAN.to_le_bytes().to_vec()),
            (DataType::Fp64, f64::INFINITY.to_le_bytes().to_vec()),
            (DataType::Fp16, half::f16::NEG_INFINITY.to_le_bytes().to_vec()),
            (DataType::Bf16, half::bf16::NAN.to_le_bytes().to_vec()),
        ] {
            let t = Tensor::new("y", dt, vec![1], Bytes::from(data));
            let e = serde_json::to_string(&DataJson(&t)).expect_err("no JSON for a non-finite value").to_string();
            assert!(e.contains("tensor 'y'") && e.contains("binary"), "{dt:?}: {e}");
        }
    }

    #[test]
    fn elements_convert_to_little_endian_and_back() {
        // (datatype, JSON in, bytes, JSON out)
        let cases: &[(DataType, &str, &[u8], &str)] = &[
            (DataType::Bool, "[true,false]", &[1, 0], "[true,false]"),
            (DataType::Uint8, "[0,255]", &[0, 255], "[0,255]"),
            (DataType::Int8, "[-128,127]", &[0x80, 0x7f], "[-128,127]"),
            (DataType::Uint16, "[258]", &[2, 1], "[258]"),
            (DataType::Int16, "[-2]", &[0xfe, 0xff], "[-2]"),
            (DataType::Uint32, "[4294967295]", &[0xff; 4], "[4294967295]"),
            (DataType::Int32, "[-1]", &[0xff; 4], "[-1]"),
            (DataType::Uint64, "[18446744073709551615]", &[0xff; 8], "[18446744073709551615]"),
            (DataType::Int64, "[-9223372036854775808]", &[0, 0, 0, 0, 0, 0, 0, 0x80], "[-9223372036854775808]"),
            (DataType::Fp16, "[1.5]", &[0x00, 0x3e], "[1.5]"),
            (DataType::Bf16, "[1.5]", &[0xc0, 0x3f], "[1.5]"),
            (DataType::Fp32, "[1, -2.25]", &[0, 0, 0x80, 0x3f, 0, 0, 0x10, 0xc0], "[1.0,-2.25]"),
            (DataType::Fp64, "[0.5]", &[0, 0, 0, 0, 0, 0, 0xe0, 0x3f], "[0.5]"),
            (DataType::Bytes, r#"["ab",""]"#, b"\x02\0\0\0ab\0\0\0\0", r#"["ab",""]"#),
            // Nested arrays are flattened row-major; a scalar is one element.
            (DataType::Int8, "[[1,2],[3,[4]]]", &[1, 2, 3, 4], "[1,2,3,4]"),
            (DataType::Uint8, "7", &[7], "[7]"),
            (DataType::Fp32, "[]", &[], "[]"),
        ];
        for &(dt, json, bytes, back) in cases {
            assert_eq!(to_bytes(dt, json).as_deref(), Ok(bytes), "{dt} {json}");
            assert_eq!(to_json(dt, bytes.to_vec()), back, "{dt} {json}");
        }
    }

    #[test]
    fn elements_out_of_range_or_of_the_wrong_kind_are_refused() {
        // (datatype, JSON, part of the message)
        let cases: &[(DataType, &str, &str)] = &[
            (DataType::Uint8, "[256]", "value 256 is out of range for UINT8"),
            (DataType::Uint8, "[-1]", "out of range for UINT8"),
            (DataType::Int8, "[-129]", "out of range for INT8"),
            (DataType::Uint16, "[65536]", "out of range for UINT16"),
            (DataType::Int32, "[2147483648]", "out of range for INT32"),
            (DataType::Uint64, "[-1]", "out of range for UINT64"),
            (DataType::Int64, "[9223372036854775808]", "out of range for INT64"),
            (DataType::Int32, "[1.5]", "expected an integer for INT32"),
            (DataType::Bool, "[1]", "expected true/false for BOOL"),
            (DataType::Fp32, "[true]", "expected FP32 values, got true"),
            (DataType::Fp32, r#"["a"]"#, "expected FP32 values, got a string"),
            (DataType::Bytes, "[1]", "expected a string for BYTES"),
            (DataType::Fp32, "[null]", "null is not a FP32 value"),
            (DataType::Fp32, "[1e39]", "is out of range for FP32"),
            (DataType::Fp16, "[70000]", "value 70000 is out of range for FP16"),
            (DataType::Fp32, r#"{"a":1}"#, "FP32 values (flat or nested arrays)"),
        ];
        for &(dt, json, needle) in cases {
            let e = to_bytes(dt, json).expect_err(json);
            assert!(e.contains(needle), "{dt} {json}: `{e}` lacks `{needle}`");
        }
    }
}
