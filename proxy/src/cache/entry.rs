//! The compact binary form of a cached answer, as stored in Redis: the
//! outputs (name, datatype, shape, bytes, parameters), `model_version` and the
//! response parameters. Not JSON: tensor bytes are stored as they are.
//!
//! Layout (little-endian): magic `SYC`, format version, expiry (u64 Unix
//! milliseconds, so an L1 copy of an L2 hit expires with it), then
//! `model_version` (u8 present + u32 len + bytes), response parameters (u32
//! len + JSON, 0 = none), u32 output count, and per output: u32 len + name,
//! u8 datatype index, u32 rank + i64 dims, u32 len + parameters JSON,
//! u64 len + data. Values from Redis are untrusted: decoding checks every
//! length and every tensor's size against its shape.

use bytes::{BufMut, Bytes, BytesMut};
use switchyard_runtime::tensor::Parameters;
use switchyard_runtime::{DataType, InferResponse, Tensor};

use super::key::FORMAT_VERSION;

const MAGIC: &[u8; 3] = b"SYC";

/// Encodes an answer (its `model_name` and `id` are the request's, not stored).
pub fn encode(resp: &InferResponse, expires_unix_ms: u64) -> Bytes {
    let data: usize = resp.outputs.iter().map(|t| t.data.len() + t.name.len() + 8 * t.shape.len() + 32).sum();
    let mut b = BytesMut::with_capacity(16 + data);
    b.put_slice(MAGIC);
    b.put_u8(FORMAT_VERSION);
    b.put_u64_le(expires_unix_ms);
    match &resp.model_version {
        None => b.put_u8(0),
        Some(v) => {
            b.put_u8(1);
            put_bytes32(&mut b, v.as_bytes());
        }
    }
    put_params(&mut b, &resp.parameters);
    b.put_u32_le(resp.outputs.len() as u32);
    for t in &resp.outputs {
        put_bytes32(&mut b, t.name.as_bytes());
        b.put_u8(DataType::ALL.iter().position(|d| *d == t.datatype).expect("every datatype is listed") as u8);
        b.put_u32_le(t.shape.len() as u32);
        for d in &t.shape {
            b.put_i64_le(*d);
        }
        put_params(&mut b, &t.parameters);
        b.put_u64_le(t.data.len() as u64);
        b.put_slice(&t.data);
    }
    b.freeze()
}

/// Decodes a stored answer and its expiry; `None` for anything malformed (treated as a miss).
pub fn decode(buf: Bytes) -> Option<(InferResponse, u64)> {
    let mut r = Reader { buf: &buf, pos: 0 };
    if r.take(3)? != MAGIC || r.u8()? != FORMAT_VERSION {
        return None;
    }
    let expires = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let model_version = match r.u8()? {
        0 => None,
        1 => Some(std::str::from_utf8(r.bytes32()?).ok()?.to_owned()),
        _ => return None,
    };
    let parameters = r.params()?;
    let n = r.u32()? as usize;
    // Every output takes at least 21 bytes: a forged count cannot make us allocate.
    if n > buf.len() / 21 {
        return None;
    }
    let mut outputs = Vec::with_capacity(n);
    for _ in 0..n {
        let name = std::str::from_utf8(r.bytes32()?).ok()?.to_owned();
        let datatype = *DataType::ALL.get(r.u8()? as usize)?;
        let rank = r.u32()? as usize;
        if rank > 64 {
            return None;
        }
        let mut shape = Vec::with_capacity(rank);
        for _ in 0..rank {
            shape.push(i64::from_le_bytes(r.take(8)?.try_into().ok()?));
        }
        let parameters = r.params()?;
        let len = usize::try_from(u64::from_le_bytes(r.take(8)?.try_into().ok()?)).ok()?;
        let start = r.pos;
        r.take(len)?;
        let t = Tensor { name, datatype, shape, data: buf.slice(start..start + len), parameters };
        t.validate().ok()?;
        outputs.push(t);
    }
    if r.pos != buf.len() {
        return None;
    }
    Some((
        InferResponse { model_name: String::new(), model_version, id: None, parameters, outputs, raw_json: None },
        expires,
    ))
}

fn put_bytes32(b: &mut BytesMut, s: &[u8]) {
    b.put_u32_le(s.len() as u32);
    b.put_slice(s);
}

fn put_params(b: &mut BytesMut, p: &Parameters) {
    if p.is_empty() {
        b.put_u32_le(0);
    } else {
        put_bytes32(b, &serde_json::to_vec(p).expect("JSON values serialise"));
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn params(&mut self) -> Option<Parameters> {
        let raw = self.bytes32()?;
        if raw.is_empty() {
            return Some(Parameters::new());
        }
        serde_json::from_slice(raw).ok()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample() -> InferResponse {
        let mut p = Parameters::new();
        p.insert("note".into(), json!("x"));
        let mut s = Vec::new();
        for e in ["ab", ""] {
            s.extend_from_slice(&(e.len() as u32).to_le_bytes());
            s.extend_from_slice(e.as_bytes());
        }
        InferResponse {
            model_name: String::new(),
            model_version: Some("3".into()),
            id: None,
            parameters: p.clone(),
            outputs: vec![
                Tensor::new("y", DataType::Fp32, vec![1, 2], Bytes::from(vec![0, 0, 128, 63, 0, 0, 0, 64])),
                Tensor { parameters: p, ..Tensor::new("s", DataType::Bytes, vec![2], Bytes::from(s)) },
                Tensor::new("e", DataType::Int64, vec![0, 4], Bytes::new()),
            ],
            raw_json: None,
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        let enc = encode(&r, 77);
        assert_eq!(decode(enc.clone()).unwrap(), (r, 77));
        let plain = InferResponse { model_version: None, parameters: Parameters::new(), ..sample() };
        assert_eq!(decode(encode(&plain, 1)).unwrap().0, plain);
        // Compact: a few bytes of framing per tensor beyond names and data.
        assert!(enc.len() < 16 + 12 + 3 * 40 + 8 + 10 + 2 * 16 + 30, "{} bytes", enc.len());
    }

    #[test]
    fn malformed_values_are_rejected_never_panic() {
        let enc = encode(&sample(), 5);
        for cut in 0..enc.len() {
            assert!(decode(enc.slice(..cut)).is_none(), "truncated at {cut}");
        }
        let mut longer = enc.to_vec();
        longer.push(0);
        assert!(decode(Bytes::from(longer)).is_none());
        for i in 0..enc.len() {
            let mut flipped = enc.to_vec();
            flipped[i] ^= 0xff;
            let _ = decode(Bytes::from(flipped));
        }
        assert!(decode(Bytes::from_static(b"GET")).is_none());
    }
}
