//! `switchyard profile`: builds a drift reference profile from sample
//! inputs — a `.npy` array, a CSV file or V2 inference requests (JSON) —
//! and, given a config and a model, the outputs its variant answers for
//! them (the reference for prediction drift).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use switchyard_config::ValidatedConfig;
use switchyard_proxy::monitor::profile::ProfileBuilder;
use switchyard_runtime::backend::BackendSet;
use switchyard_runtime::{DataType, InferRequest, ModelTarget, Tensor};

/// Rows sent to the model per request when outputs are profiled.
const CHUNK_ROWS: usize = 256;

#[derive(clap::Args)]
pub struct ProfileArgs {
    /// Sample inputs: `.npy` (one tensor, rows along the first axis), `.csv`
    /// (a header row; one tensor per column unless --input-name packs them),
    /// or `.json` (a V2 inference request, or an array of them).
    #[arg(long, short)]
    pub inputs: PathBuf,
    /// Tensor name of a `.npy` file's array, or of a CSV file's columns packed into one `[N, columns]` tensor.
    #[arg(long)]
    pub input_name: Option<String>,
    /// Also profile the outputs: run the inputs through this config's model
    /// (with --model; the variant is --variant or the model's first).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    #[arg(long, short)]
    pub model: Option<String>,
    #[arg(long)]
    pub variant: Option<String>,
    /// Where to write the profile (JSON).
    #[arg(long, short)]
    pub output: PathBuf,
}

pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let requests = read_inputs(&args.inputs, args.input_name.as_deref())?;
    if requests.is_empty() {
        bail!("{}: no samples", args.inputs.display());
    }
    let mut builder = ProfileBuilder::default();
    for r in &requests {
        builder.add_inputs(&r.inputs);
    }
    match (&args.config, &args.model) {
        (Some(config), Some(model)) => {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(profile_outputs(config, model, args.variant.as_deref(), requests, &mut builder))?;
        }
        (None, None) => {}
        _ => bail!("--config and --model go together (they name the model whose outputs are profiled)"),
    }
    let rows = builder.input_rows();
    let profile = builder.build();
    std::fs::write(&args.output, profile.to_json() + "\n")
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "{}: {} rows, {} input and {} output features",
        args.output.display(),
        rows,
        profile.inputs.len(),
        profile.outputs.len()
    );
    Ok(())
}

async fn profile_outputs(
    config: &Path,
    model: &str,
    variant: Option<&str>,
    requests: Vec<InferRequest>,
    builder: &mut ProfileBuilder,
) -> anyhow::Result<()> {
    let cfg = ValidatedConfig::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let m = cfg.models.get(model).with_context(|| format!("{}: no model `{model}`", config.display()))?;
    let v = match variant {
        Some(name) => m.variants.iter().find(|v| v.name.as_ref() == name),
        None => m.variants.first(),
    }
    .with_context(|| format!("model `{model}` has no variant `{}`", variant.unwrap_or("")))?;
    let set = BackendSet::build(&cfg, None).await.map_err(|e| anyhow::anyhow!(e))?;
    let backend = set.backends().get(&v.backend).cloned().context("the variant's backend was not built")?;
    let target = ModelTarget { name: v.model.clone().unwrap_or_else(|| Arc::from(model)), version: v.version.clone() };
    for req in requests {
        let resp = backend
            .infer(&target, req)
            .await
            .map_err(|e| anyhow::anyhow!("model `{model}` variant `{}`: {e}", v.name))?;
        builder.add_outputs(&resp.outputs);
    }
    Ok(())
}

/// The sample file as inference requests of at most `CHUNK_ROWS` rows.
fn read_inputs(path: &Path, name: Option<&str>) -> anyhow::Result<Vec<InferRequest>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let tensors = match ext.as_str() {
        "npy" => vec![npy(&bytes, name.unwrap_or("input")).with_context(|| path.display().to_string())?],
        "csv" => csv(&bytes, name).with_context(|| path.display().to_string())?,
        "json" => return v2_json(&bytes).with_context(|| path.display().to_string()),
        _ => bail!("{}: unknown sample format (use .npy, .csv or .json)", path.display()),
    };
    Ok(chunks(tensors))
}

fn request(inputs: Vec<Tensor>) -> InferRequest {
    InferRequest { inputs, ..Default::default() }
}

/// Splits `[N, …]` tensors (same N) into requests of `CHUNK_ROWS` rows.
fn chunks(tensors: Vec<Tensor>) -> Vec<InferRequest> {
    let rows = tensors.first().and_then(|t| t.shape.first()).copied().unwrap_or(0).max(0) as usize;
    let mut out = Vec::new();
    let mut start = 0;
    while start < rows {
        let end = (start + CHUNK_ROWS).min(rows);
        let inputs = tensors
            .iter()
            .map(|t| {
                let row_bytes = t.data.len() / rows;
                let mut shape = t.shape.clone();
                shape[0] = (end - start) as i64;
                Tensor::new(t.name.clone(), t.datatype, shape, t.data.slice(start * row_bytes..end * row_bytes))
            })
            .collect();
        out.push(request(inputs));
        start = end;
    }
    out
}

/// A NumPy `.npy` file (format 1.x–3.x, C order, little-endian or single-byte types) as one tensor.
fn npy(b: &[u8], name: &str) -> anyhow::Result<Tensor> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("not a .npy file");
    }
    let (header_len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => bail!(".npy format version {v} is not supported"),
    };
    let header = std::str::from_utf8(b.get(start..start + header_len).context("truncated .npy header")?)?;
    let field = |key: &str| -> anyhow::Result<&str> {
        let i = header.find(&format!("'{key}':")).with_context(|| format!(".npy header has no '{key}'"))?;
        Ok(header[i + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.trim_start_matches('\'').split('\'').next().unwrap_or("");
    if field("fortran_order")?.starts_with("True") {
        bail!("Fortran-ordered arrays are not supported (save with np.ascontiguousarray)");
    }
    let shape_text = field("shape")?;
    let shape_text = &shape_text[1..shape_text.find(')').context("bad .npy shape")?];
    let shape: Vec<i64> =
        shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse).collect::<Result<_, _>>()?;
    let datatype = match descr {
        "<f2" => DataType::Fp16,
        "<f4" => DataType::Fp32,
        "<f8" => DataType::Fp64,
        "|i1" => DataType::Int8,
        "<i2" => DataType::Int16,
        "<i4" => DataType::Int32,
        "<i8" => DataType::Int64,
        "|u1" => DataType::Uint8,
        "<u2" => DataType::Uint16,
        "<u4" => DataType::Uint32,
        "<u8" => DataType::Uint64,
        "|b1" => DataType::Bool,
        other => bail!(".npy dtype `{other}` is not supported (use little-endian numbers or bool)"),
    };
    if shape.is_empty() {
        bail!("a 0-d array has no rows");
    }
    let data = Bytes::copy_from_slice(&b[start + header_len..]);
    let t = Tensor::new(name, datatype, shape, data);
    t.validate().map_err(|e| anyhow::anyhow!("array data does not match its header: {e}"))?;
    Ok(t)
}

/// A CSV file with a header row, no quoting: each column a `[N, 1]` tensor
/// named by its header (FP64 when every value is a number, else BYTES), or
/// with `packed`, every column in one FP64 `[N, columns]` tensor.
fn csv(b: &[u8], packed: Option<&str>) -> anyhow::Result<Vec<Tensor>> {
    let text = std::str::from_utf8(b).context("CSV is not UTF-8")?;
    if text.contains('"') {
        bail!("quoted CSV fields are not supported");
    }
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').map(str::trim).collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').map(str::trim).collect()).collect();
    if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != header.len()) {
        bail!("row {} has {} fields, the header {}", i + 2, r.len(), header.len());
    }
    let n = rows.len() as i64;
    let number = |s: &str| s.parse::<f64>().ok();
    if let Some(name) = packed {
        let mut data = Vec::with_capacity(rows.len() * header.len() * 8);
        for (i, r) in rows.iter().enumerate() {
            for (c, v) in r.iter().enumerate() {
                let x = number(v)
                    .with_context(|| format!("row {}, column `{}`: `{v}` is not a number", i + 2, header[c]))?;
                data.extend_from_slice(&x.to_le_bytes());
            }
        }
        return Ok(vec![Tensor::new(name, DataType::Fp64, vec![n, header.len() as i64], Bytes::from(data))]);
    }
    Ok(header
        .iter()
        .enumerate()
        .map(|(c, h)| {
            let numeric = rows.iter().all(|r| number(r[c]).is_some());
            let mut data = Vec::new();
            for r in &rows {
                if numeric {
                    data.extend_from_slice(&number(r[c]).expect("checked").to_le_bytes());
                } else {
                    data.extend_from_slice(&(r[c].len() as u32).to_le_bytes());
                    data.extend_from_slice(r[c].as_bytes());
                }
            }
            let dt = if numeric { DataType::Fp64 } else { DataType::Bytes };
            Tensor::new(*h, dt, vec![n, 1], Bytes::from(data))
        })
        .collect())
}

/// One V2 inference request (JSON), or an array of them.
fn v2_json(b: &[u8]) -> anyhow::Result<Vec<InferRequest>> {
    let value: serde_json::Value = serde_json::from_slice(b).context("not JSON")?;
    let items = match value {
        serde_json::Value::Array(a) => a,
        one => vec![one],
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let body = Bytes::from(serde_json::to_vec(&v)?);
            switchyard_runtime::codec::v2::decode_request(&body, None).map_err(|e| anyhow::anyhow!("request {i}: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend_from_slice(&(h.len() as u16).to_le_bytes());
        b.extend_from_slice(h.as_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn npy_reads_shape_and_type() {
        let data: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = npy(&npy_bytes("<f4", "(3, 2)", &data), "input").unwrap();
        assert_eq!((t.datatype, t.shape.clone(), t.data.len()), (DataType::Fp32, vec![3, 2], 24));
        let err = npy(&npy_bytes("<f4", "(4, 2)", &data), "input").unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(npy(&npy_bytes(">f4", "(3, 2)", &data), "x").unwrap_err().to_string().contains("not supported"));
    }

    #[test]
    fn csv_columns_become_tensors() {
        let t = csv(b"a,b\n1,x\n2,y\n", None).unwrap();
        assert_eq!((t[0].name.as_str(), t[0].datatype), ("a", DataType::Fp64));
        assert_eq!((t[1].name.as_str(), t[1].datatype), ("b", DataType::Bytes));
        let p = csv(b"a,b\n1,2\n3,4\n", Some("input")).unwrap();
        assert_eq!(p[0].shape, vec![2, 2]);
        assert!(csv(b"a,b\n1\n", None).unwrap_err().to_string().contains("row 2"));
    }

    #[test]
    fn chunks_split_rows() {
        let t = Tensor::new("x", DataType::Fp32, vec![600, 1], Bytes::from(vec![0u8; 2400]));
        let c = chunks(vec![t]);
        assert_eq!(c.iter().map(|r| r.inputs[0].shape[0]).collect::<Vec<_>>(), vec![256, 256, 88]);
    }
}
