//! Warm-up inputs: sample requests from the repository (`MODEL/warmup/*.json`,
//! V2 JSON inference bodies, as Triton's `model_warmup` uses sample files), or
//! synthetic inputs every parser accepts when a model has none: numeric zeros,
//! and `"0"` for BYTES, so a string model whose graph parses numbers loads.

use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::v2;
use crate::tensor::{DataType, InferRequest, Tensor};

/// The warm-up directory inside a model's directory.
pub const DIR: &str = "warmup";

/// Largest warm-up sample file read (the JSON body of one request).
pub const MAX_SAMPLE_BYTES: u64 = 64 << 20;

/// One sample request: its file name and the decoded request.
pub struct Sample {
    pub file: String,
    pub request: InferRequest,
}

/// The `*.json` samples in `dir`, by file name; none when `dir` does not exist.
/// A sample that cannot be read or decoded fails the load, naming the file.
pub fn samples(dir: &Path) -> Result<Vec<Sample>, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read warm-up directory {}: {e}", dir.display())),
    };
    let mut files: Vec<(String, std::path::PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            (name.ends_with(".json") && !name.starts_with('.')).then(|| (name, e.path()))
        })
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for (file, path) in files {
        let len = std::fs::metadata(&path).map_err(|e| format!("warm-up sample {}: {e}", path.display()))?.len();
        if len > MAX_SAMPLE_BYTES {
            return Err(format!(
                "warm-up sample {} is {len} bytes, over the {MAX_SAMPLE_BYTES}-byte limit",
                path.display()
            ));
        }
        let body = std::fs::read(&path).map_err(|e| format!("warm-up sample {}: {e}", path.display()))?;
        let request = v2::decode_request(&Bytes::from(body), None)
            .map_err(|e| format!("warm-up sample {} is not a V2 inference request: {e}", path.display()))?;
        out.push(Sample { file, request });
    }
    Ok(out)
}

/// An input of `shape` (dynamic dims as 1) that any model parses: zeros, and `"0"` for BYTES.
pub fn synthetic(name: &str, datatype: DataType, shape: &[i64]) -> Tensor {
    let shape: Vec<i64> = shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
    let n: usize = shape.iter().map(|&d| d as usize).product();
    let data = match datatype.size() {
        Some(size) => Bytes::from(vec![0u8; n * size]),
        None => {
            let mut b = BytesMut::with_capacity(n * 5);
            for _ in 0..n {
                b.put_u32_le(1);
                b.put_u8(b'0');
            }
            b.freeze()
        }
    };
    Tensor::new(name, datatype, shape, data)
}

/// `'a' INT32 [1, 16], 'b' BYTES [1]`: what a warm-up ran, for its error message.
pub fn describe(inputs: &[Tensor]) -> String {
    let d: Vec<String> = inputs.iter().map(|t| format!("'{}' {} {:?}", t.name, t.datatype, t.shape)).collect();
    d.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::bytes_elements;

    #[test]
    fn synthetic_bytes_parse_as_numbers() {
        let s = synthetic("s", DataType::Bytes, &[-1, 2]);
        assert_eq!(s.shape, vec![1, 2]);
        s.validate().unwrap();
        let els: Vec<&[u8]> = bytes_elements(&s.data).map(|e| e.unwrap()).collect();
        assert_eq!(els, vec![b"0", b"0"]);
        let f = synthetic("x", DataType::Fp32, &[-1, 16]);
        assert_eq!(f.data.len(), 64);
        f.validate().unwrap();
    }

    #[test]
    fn samples_are_read_in_name_order_and_bad_ones_named() {
        let dir = std::env::temp_dir().join(format!("sy-warmup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(samples(&dir.join("absent")).unwrap().is_empty());
        let body = r#"{"inputs":[{"name":"x","datatype":"INT32","shape":[1,2],"data":[1,2]}]}"#;
        std::fs::write(dir.join("b.json"), body).unwrap();
        std::fs::write(dir.join("a.json"), body).unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let s = samples(&dir).unwrap();
        assert_eq!(s.iter().map(|s| s.file.as_str()).collect::<Vec<_>>(), vec!["a.json", "b.json"]);
        assert_eq!(s[0].request.inputs[0].shape, vec![1, 2]);
        std::fs::write(dir.join("c.json"), "{").unwrap();
        let e = samples(&dir).err().unwrap();
        assert!(e.contains("c.json") && e.contains("not a V2 inference request"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
