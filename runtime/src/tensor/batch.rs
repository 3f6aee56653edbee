//! Batching as tensor arithmetic: which requests may share a batch
//! (`BatchSignature`), concatenating them along the first dimension (`merge`)
//! and cutting the batched response back into per-request answers by rows
//! (`split`), BYTES included. Pure functions; the queueing policy is the
//! proxy's.

use bytes::BytesMut;
use serde_json::Value;

use super::{bytes_elements, DataType, InferRequest, InferResponse, RequestedOutput, Tensor};
use crate::error::TensorError;

/// What must be equal for two requests to share a batch: every input's name,
/// datatype and dimensions after the first, the requested outputs and the
/// request parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSignature {
    /// (name, datatype, dims after the first), sorted by name.
    inputs: Vec<(String, DataType, Vec<i64>)>,
    outputs: Vec<RequestedOutput>,
    parameters: String,
}

impl BatchSignature {
    /// The request's signature and its rows along the first dimension;
    /// `None` when it cannot be merged (no inputs, a rank-0 input, inputs that
    /// disagree on rows, or no rows at all).
    pub fn of(req: &InferRequest) -> Option<(BatchSignature, usize)> {
        let rows = *req.inputs.first()?.shape.first()?;
        let mut inputs = Vec::with_capacity(req.inputs.len());
        for t in &req.inputs {
            if t.shape.first() != Some(&rows) {
                return None;
            }
            inputs.push((t.name.clone(), t.datatype, t.shape[1..].to_vec()));
        }
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        let parameters =
            if req.parameters.is_empty() { String::new() } else { Value::Object(req.parameters.clone()).to_string() };
        let rows = usize::try_from(rows).ok().filter(|r| *r > 0)?;
        Some((BatchSignature { inputs, outputs: req.outputs.clone(), parameters }, rows))
    }
}

/// Why requests could not be merged into one batch.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("no requests to merge")]
    Empty,
    #[error("request {index} cannot be batched: {reason}")]
    Unbatchable { index: usize, reason: &'static str },
    #[error("request {index} does not match the first request: {reason}")]
    Mismatch { index: usize, reason: String },
}

/// Why a batched response could not be split back into per-request responses.
/// The messages name the output, as a backend protocol fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SplitError {
    #[error("cannot split batched output '{name}': shape {shape:?} lacks the batch dimension of {rows} rows")]
    NoBatchDim { name: String, shape: Vec<i64>, rows: usize },
    #[error("output '{name}' does not divide into {rows} rows")]
    Uneven { name: String, rows: usize },
    #[error("output '{name}': {source}")]
    Elements { name: String, source: TensorError },
}

/// Rows of a request along the first dimension, as `BatchSignature::of` counts them.
fn rows_of(req: &InferRequest) -> Result<usize, &'static str> {
    let first = req.inputs.first().ok_or("it has no inputs")?;
    let rows = *first.shape.first().ok_or("an input has rank 0")?;
    if req.inputs.iter().any(|t| t.shape.first() != Some(&rows)) {
        return Err("its inputs disagree on the first dimension");
    }
    usize::try_from(rows).ok().filter(|r| *r > 0).ok_or("it has no rows")
}

/// Whether `req` has `first`'s signature (without building either), the
/// condition `merge` needs: equal signatures always pass.
fn matches_first(first: &InferRequest, req: &InferRequest) -> Result<(), String> {
    if req.inputs.len() != first.inputs.len() {
        return Err(format!("{} inputs, not {}", req.inputs.len(), first.inputs.len()));
    }
    for t in &first.inputs {
        let other = req.inputs.iter().find(|x| x.name == t.name).ok_or_else(|| format!("no input '{}'", t.name))?;
        if other.datatype != t.datatype {
            return Err(format!("input '{}' is {}, not {}", t.name, other.datatype, t.datatype));
        }
        if other.shape[1..] != t.shape[1..] {
            return Err(format!("input '{}' has shape {:?}, not [_, {:?}]", t.name, other.shape, &t.shape[1..]));
        }
    }
    if req.outputs != first.outputs {
        return Err("the requested outputs differ".into());
    }
    if req.parameters != first.parameters {
        return Err("the parameters differ".into());
    }
    Ok(())
}

/// Concatenates requests along the first dimension, in order. They must
/// share a `BatchSignature`. The batch takes the first request's input order,
/// tensor parameters, outputs, request parameters and output encoding, and
/// no id (each request keeps its own).
pub fn merge<'a, I>(requests: I) -> Result<InferRequest, MergeError>
where
    I: IntoIterator<Item = &'a InferRequest>,
    I::IntoIter: Clone,
{
    let requests = requests.into_iter();
    let mut all = requests.clone();
    let first = all.next().ok_or(MergeError::Empty)?;
    let mut rows = rows_of(first).map_err(|reason| MergeError::Unbatchable { index: 0, reason })?;
    let mut count = 1;
    for (i, req) in all.enumerate() {
        let index = i + 1;
        rows += rows_of(req).map_err(|reason| MergeError::Unbatchable { index, reason })?;
        matches_first(first, req).map_err(|reason| MergeError::Mismatch { index, reason })?;
        count += 1;
    }
    let inputs = first
        .inputs
        .iter()
        .map(|t| {
            let mut data = BytesMut::with_capacity(t.data.len() * count);
            for req in requests.clone() {
                let same = req.inputs.iter().find(|x| x.name == t.name).expect("signatures matched");
                data.extend_from_slice(&same.data);
            }
            let mut shape = t.shape.clone();
            shape[0] = rows as i64;
            Tensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape,
                data: data.freeze(),
                parameters: t.parameters.clone(),
            }
        })
        .collect();
    Ok(InferRequest {
        id: None,
        inputs,
        outputs: first.outputs.clone(),
        parameters: first.parameters.clone(),
        binary_output: first.binary_output,
        metadata: common_metadata(requests),
        raw_json: None,
    })
}

/// The metadata entries every request of a batch carries alike: one client's
/// credentials or tenant never travel with another client's rows.
fn common_metadata<'a>(mut requests: impl Iterator<Item = &'a InferRequest> + Clone) -> http::HeaderMap {
    let Some(first) = requests.next() else { return http::HeaderMap::new() };
    let mut out = http::HeaderMap::new();
    for name in first.metadata.keys() {
        let values: Vec<_> = first.metadata.get_all(name).iter().collect();
        let shared = requests.clone().all(|r| r.metadata.get_all(name).iter().eq(values.iter().copied()));
        if shared {
            for v in values {
                out.append(name.clone(), v.clone());
            }
        }
    }
    out
}

/// Splits a batched response into one response per part, `rows[i]` rows of
/// every output for part `i`, in order. Each part keeps the response's model,
/// version and parameters and each output's name, datatype, trailing dims and
/// parameters; ids are left to the caller.
pub fn split(resp: InferResponse, rows: &[usize]) -> Result<Vec<InferResponse>, SplitError> {
    let total: usize = rows.iter().sum();
    let mut parts: Vec<InferResponse> = rows
        .iter()
        .map(|_| InferResponse {
            model_name: resp.model_name.clone(),
            model_version: resp.model_version.clone(),
            id: None,
            parameters: resp.parameters.clone(),
            outputs: Vec::with_capacity(resp.outputs.len()),
            raw_json: None,
        })
        .collect();
    for t in &resp.outputs {
        let bounds = row_bounds(t, total)?;
        let mut row = 0;
        for (&n, part) in rows.iter().zip(parts.iter_mut()) {
            let mut shape = t.shape.clone();
            shape[0] = n as i64;
            part.outputs.push(Tensor {
                name: t.name.clone(),
                datatype: t.datatype,
                shape,
                data: t.data.slice(bounds[row]..bounds[row + n]),
                parameters: t.parameters.clone(),
            });
            row += n;
        }
    }
    Ok(parts)
}

/// Byte offset of each of the `rows + 1` row boundaries of a batched output.
fn row_bounds(t: &Tensor, rows: usize) -> Result<Vec<usize>, SplitError> {
    if t.shape.first() != Some(&(rows as i64)) {
        return Err(SplitError::NoBatchDim { name: t.name.clone(), shape: t.shape.clone(), rows });
    }
    let uneven = || SplitError::Uneven { name: t.name.clone(), rows };
    match t.datatype.size() {
        Some(_) => {
            if !t.data.len().is_multiple_of(rows) {
                return Err(uneven());
            }
            let row = t.data.len().checked_div(rows).unwrap_or(0);
            Ok((0..=rows).map(|r| r * row).collect())
        }
        None => {
            let elements: Vec<&[u8]> = bytes_elements(&t.data)
                .collect::<Result<_, _>>()
                .map_err(|source| SplitError::Elements { name: t.name.clone(), source })?;
            if !elements.len().is_multiple_of(rows) {
                return Err(uneven());
            }
            let per_row = elements.len().checked_div(rows).unwrap_or(0);
            let mut bounds = Vec::with_capacity(rows + 1);
            bounds.push(0);
            let mut off = 0;
            for row in elements.chunks(per_row.max(1)).take(rows) {
                off += row.iter().map(|e| 4 + e.len()).sum::<usize>();
                bounds.push(off);
            }
            // Rows of zero elements each: every boundary is at the start.
            bounds.resize(rows + 1, off);
            Ok(bounds)
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::tensor::Parameters;

    fn fp32(name: &str, shape: &[i64], first: f32) -> Tensor {
        let n: i64 = shape.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|i| (first + i as f32).to_le_bytes()).collect();
        Tensor::new(name, DataType::Fp32, shape.to_vec(), Bytes::from(data))
    }

    fn strings(name: &str, shape: &[i64], items: &[&str]) -> Tensor {
        let mut raw = Vec::new();
        for s in items {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        Tensor::new(name, DataType::Bytes, shape.to_vec(), Bytes::from(raw))
    }

    fn request(id: &str, inputs: Vec<Tensor>) -> InferRequest {
        InferRequest { id: Some(id.into()), inputs, ..Default::default() }
    }

    fn texts(t: &Tensor) -> Vec<String> {
        bytes_elements(&t.data).map(|e| String::from_utf8(e.unwrap().to_vec()).unwrap()).collect()
    }

    #[test]
    fn signature_says_what_may_share_a_batch() {
        let with_params = |mut r: InferRequest, k: &str| {
            r.parameters.insert(k.into(), Value::from(1));
            r
        };
        let with_output = |mut r: InferRequest| {
            r.outputs.push(RequestedOutput { name: "y".into(), ..Default::default() });
            r
        };
        let base = request("a", vec![fp32("x", &[2, 3], 0.0), strings("s", &[2], &["a", "b"])]);
        // (case, request, compatible with `base`)
        let cases: Vec<(&str, InferRequest, bool)> = vec![
            (
                "other rows",
                request("b", vec![fp32("x", &[5, 3], 9.0), strings("s", &[5], &["", "", "", "", ""])]),
                true,
            ),
            ("inputs in another order", request("b", vec![strings("s", &[1], &["z"]), fp32("x", &[1, 3], 0.0)]), true),
            ("other trailing dim", request("b", vec![fp32("x", &[2, 4], 0.0), strings("s", &[2], &["a", "b"])]), false),
            ("other rank", request("b", vec![fp32("x", &[2, 3, 1], 0.0), strings("s", &[2], &["a", "b"])]), false),
            (
                "other datatype",
                request(
                    "b",
                    vec![
                        Tensor::new("x", DataType::Int32, vec![1, 3], Bytes::from(vec![0; 12])),
                        strings("s", &[1], &["a"]),
                    ],
                ),
                false,
            ),
            ("other input name", request("b", vec![fp32("w", &[2, 3], 0.0), strings("s", &[2], &["a", "b"])]), false),
            ("missing input", request("b", vec![fp32("x", &[2, 3], 0.0)]), false),
            ("other parameters", with_params(base.clone(), "k"), false),
            ("other outputs", with_output(base.clone()), false),
        ];
        let (sig, rows) = BatchSignature::of(&base).unwrap();
        assert_eq!(rows, 2);
        for (case, req, compatible) in cases {
            let other = BatchSignature::of(&req).map(|(s, _)| s);
            assert_eq!(other.as_ref() == Some(&sig), compatible, "{case}: signature");
            // `merge` accepts exactly what the signature groups.
            assert_eq!(merge([&base, &req]).is_ok(), compatible, "{case}: merge");
        }
    }

    #[test]
    fn unbatchable_requests_have_no_signature_and_do_not_merge() {
        let ok = request("ok", vec![fp32("x", &[1, 2], 0.0)]);
        let cases: Vec<(&str, InferRequest)> = vec![
            ("no inputs", request("r", vec![])),
            ("rank 0", request("r", vec![fp32("x", &[], 0.0)])),
            ("zero rows", request("r", vec![fp32("x", &[0, 2], 0.0)])),
            ("rows disagree", request("r", vec![fp32("x", &[1, 2], 0.0), fp32("z", &[2, 2], 0.0)])),
        ];
        for (case, req) in cases {
            assert!(BatchSignature::of(&req).is_none(), "{case}");
            let e = merge([&ok, &req]).unwrap_err();
            assert!(matches!(e, MergeError::Unbatchable { index: 1, .. }), "{case}: {e}");
            let e = merge([&req, &ok]).unwrap_err();
            assert!(matches!(e, MergeError::Unbatchable { index: 0, .. }), "{case}: {e}");
        }
        assert_eq!(merge(std::iter::empty::<&InferRequest>()).unwrap_err(), MergeError::Empty);
    }

    #[test]
    fn merge_concatenates_rows_in_order_and_split_undoes_it() {
        // (case, per-request rows, trailing shape)
        let cases: &[(&str, &[usize], &[i64])] = &[
            ("one row each", &[1, 1, 1], &[2]),
            ("uneven rows", &[1, 3, 2], &[2]),
            ("single request", &[4], &[3]),
            ("rank 1", &[2, 1], &[]),
            ("empty rows", &[1, 2], &[0]),
            ("rank 3", &[2, 2], &[2, 2]),
        ];
        for &(case, rows, trailing) in cases {
            let mut reqs = Vec::new();
            let mut strs = Vec::new();
            for (i, &r) in rows.iter().enumerate() {
                let mut shape = vec![r as i64];
                shape.extend_from_slice(trailing);
                let texts: Vec<String> = (0..r).map(|k| format!("{i}-{}", "x".repeat(k))).collect();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                strs.push(texts.clone());
                reqs.push(request(
                    &format!("r{i}"),
                    vec![fp32("x", &shape, 100.0 * i as f32), strings("s", &[r as i64], &refs)],
                ));
            }
            let merged = merge(&reqs).unwrap_or_else(|e| panic!("{case}: {e}"));
            let total: usize = rows.iter().sum();
            assert_eq!(merged.id, None, "{case}");
            assert_eq!(merged.inputs[0].shape[0], total as i64, "{case}");
            assert_eq!(merged.inputs[0].shape[1..], *trailing, "{case}");
            let want: Vec<u8> = reqs.iter().flat_map(|r| r.inputs[0].data.to_vec()).collect();
            assert_eq!(merged.inputs[0].data[..], want[..], "{case}");
            merged.validate().unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(texts(&merged.inputs[1]), strs.concat(), "{case}");

            // A model that echoes its inputs: split gives each request its own rows back.
            let resp = InferResponse {
                model_name: "m".into(),
                model_version: Some("3".into()),
                outputs: merged.inputs.clone(),
                ..Default::default()
            };
            let parts = split(resp, rows).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(parts.len(), reqs.len(), "{case}");
            for (part, req) in parts.iter().zip(&reqs) {
                assert_eq!(part.outputs, req.inputs, "{case}");
                assert_eq!(part.model_version.as_deref(), Some("3"), "{case}");
                assert_eq!(part.id, None, "{case}");
            }
        }
    }

    #[test]
    fn merge_takes_the_first_requests_settings_and_each_inputs_data_by_name() {
        let mut a = request("a", vec![fp32("x", &[1, 2], 0.0), fp32("z", &[1, 1], 50.0)]);
        a.inputs[0].parameters.insert("p".into(), Value::from("first"));
        a.binary_output = true;
        let mut b = request("b", vec![fp32("z", &[2, 1], 60.0), fp32("x", &[2, 2], 10.0)]);
        b.inputs[1].parameters.insert("p".into(), Value::from("second"));
        let merged = merge([&a, &b]).unwrap();
        assert_eq!(merged.inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["x", "z"]);
        assert_eq!(merged.inputs[0].parameters.get("p"), Some(&Value::from("first")));
        assert!(merged.binary_output);
        let x: Vec<f32> =
            merged.inputs[0].data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(x, [0.0, 1.0, 10.0, 11.0, 12.0, 13.0]);
        let z: Vec<f32> =
            merged.inputs[1].data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(z, [50.0, 60.0, 61.0]);
    }

    #[test]
    fn split_refuses_outputs_that_do_not_hold_the_rows() {
        let resp = |t: Tensor| InferResponse { outputs: vec![t], parameters: Parameters::new(), ..Default::default() };
        // (case, output, rows per part, error)
        let cases: Vec<(&str, Tensor, &[usize], SplitError)> = vec![
            (
                "first dim is not the batch",
                fp32("y", &[2, 2], 0.0),
                &[1, 2],
                SplitError::NoBatchDim { name: "y".into(), shape: vec![2, 2], rows: 3 },
            ),
            ("rank 0", fp32("y", &[], 0.0), &[1], SplitError::NoBatchDim { name: "y".into(), shape: vec![], rows: 1 }),
            (
                "bytes that are not whole rows",
                Tensor::new("y", DataType::Fp32, vec![2], Bytes::from(vec![0; 7])),
                &[1, 1],
                SplitError::Uneven { name: "y".into(), rows: 2 },
            ),
            (
                "BYTES elements that are not whole rows",
                strings("s", &[2], &["a", "b", "c"]),
                &[1, 1],
                SplitError::Uneven { name: "s".into(), rows: 2 },
            ),
            (
                "a bad BYTES length prefix",
                Tensor::new("s", DataType::Bytes, vec![1], Bytes::from_static(b"\x05\0\0\0ab")),
                &[1],
                SplitError::Elements { name: "s".into(), source: TensorError::BadBytesElement },
            ),
        ];
        for (case, t, rows, want) in cases {
            assert_eq!(split(resp(t), rows).unwrap_err(), want, "{case}");
        }
        // The messages are the batcher's protocol errors.
        let e = split(resp(fp32("y", &[2, 2], 0.0)), &[1, 2]).unwrap_err();
        assert_eq!(e.to_string(), "cannot split batched output 'y': shape [2, 2] lacks the batch dimension of 3 rows");
    }

    #[test]
    fn split_cuts_bytes_outputs_at_element_boundaries() {
        let resp = InferResponse { outputs: vec![strings("s", &[3], &["a", "bb", "ccc"])], ..Default::default() };
        let parts = split(resp, &[1, 2]).unwrap();
        assert_eq!(texts(&parts[0].outputs[0]), ["a"]);
        assert_eq!(texts(&parts[1].outputs[0]), ["bb", "ccc"]);
        assert_eq!(parts[1].outputs[0].shape, [2]);
        // Several elements per row.
        let resp = InferResponse {
            outputs: vec![strings("s", &[3, 2], &["a", "", "bb", "c", "", "ddd"])],
            ..Default::default()
        };
        let parts = split(resp, &[2, 1]).unwrap();
        assert_eq!(texts(&parts[0].outputs[0]), ["a", "", "bb", "c"]);
        assert_eq!(texts(&parts[1].outputs[0]), ["", "ddd"]);
        assert_eq!(parts[0].outputs[0].shape, [2, 2]);
        // A response without outputs splits into empty parts.
        let parts = split(InferResponse::default(), &[1, 1]).unwrap();
        assert!(parts.iter().all(|p| p.outputs.is_empty()) && parts.len() == 2);
    }

    #[test]
    fn a_batch_forwards_only_the_metadata_every_member_shares() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut r = request("r", vec![Tensor::new("x", DataType::Fp32, vec![1, 1], Bytes::from(vec![0u8; 4]))]);
            for (k, v) in pairs {
                r.metadata.append(*k, http::HeaderValue::from_static(v));
            }
            r
        };
        let a = with(&[("authorization", "Bearer shared"), ("x-tenant", "a"), ("traceparent", "t1")]);
        let b = with(&[("authorization", "Bearer shared"), ("x-tenant", "b")]);
        let merged = merge([&a, &b]).unwrap();
        let names: Vec<&str> = merged.metadata.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["authorization"]);
        assert_eq!(merge([&a]).unwrap().metadata, a.metadata);
    }
}
