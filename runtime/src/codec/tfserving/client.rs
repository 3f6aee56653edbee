//! TF Serving's protocol in the client's direction, for the `tfserving`
//! backend: a model's signature (`GetModelMetadata`) as the V2 metadata
//! object, the checks that a V2 request maps onto it exactly, tensors → a
//! columnar REST predict body, and the REST answer's `outputs` → tensors
//! typed by the signature (the answer's JSON carries no dtypes). Values are
//! written and read by `rest`'s writers and readers, the front end's own.

use bytes::Bytes;
use serde_json::{json, Map, Value as Json};

use super::dtype::{dt_name, from_dt_name, from_dt_number};
use super::rest::{is_named_object, parse_json, push_str_json, shape_text, tensor, Writer};
use super::tensor_proto::tf_dtype_name;
use crate::error::{BackendError, CodecError};
use crate::tensor::{DataType, InferRequest, RequestedOutput, Tensor};

/// A tensor's TF type: a V2 datatype, or the `DT_*` name of one V2 cannot carry.
#[derive(Clone, Debug, PartialEq)]
pub enum TfType {
    V2(DataType),
    Unmapped(String),
}

impl TfType {
    /// From a `DT_*` name (REST metadata).
    pub fn from_name(name: &str) -> TfType {
        from_dt_name(name).map_or_else(|| TfType::Unmapped(name.to_string()), TfType::V2)
    }

    /// From TF's `DataType` enum number (gRPC metadata).
    pub fn from_number(n: i32) -> TfType {
        from_dt_number(n).map_or_else(|| TfType::Unmapped(tf_dtype_name(n)), TfType::V2)
    }

    fn name(&self) -> &str {
        match self {
            TfType::V2(dt) => dt_name(*dt),
            TfType::Unmapped(n) => n,
        }
    }
}

/// One input or output of a signature (`TensorInfo`), under its signature key.
#[derive(Clone, Debug, PartialEq)]
pub struct TfTensorInfo {
    pub name: String,
    pub dtype: TfType,
    /// `None`: unknown rank.
    pub shape: Option<Vec<i64>>,
}

impl TfTensorInfo {
    /// The V2 datatype, or why there is none: the 400 a request that needs it gets.
    pub fn datatype(&self, role: &str) -> Result<DataType, BackendError> {
        match &self.dtype {
            TfType::V2(dt) => Ok(*dt),
            TfType::Unmapped(n) => Err(BackendError::InvalidInput(format!(
                "{role} '{}' has TF type {n}, which has no KServe V2 datatype",
                self.name
            ))),
        }
    }
}

/// A model version's signature as TF Serving reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct TfSignature {
    /// The version TF Serving reported (`model_spec.version`), if any.
    pub version: Option<String>,
    pub inputs: Vec<TfTensorInfo>,
    pub outputs: Vec<TfTensorInfo>,
}

fn protocol(msg: impl Into<String>) -> BackendError {
    BackendError::Protocol(msg.into())
}

/// A field under its proto name or its lowerCamelCase JSON name (proto JSON
/// parsers take both; TF Serving's printer writes one or the other).
fn field<'a>(v: &'a Json, snake: &str, camel: &str) -> Option<&'a Json> {
    v.get(snake).or_else(|| v.get(camel))
}

/// An int64 as proto JSON writes it: a string, or a number.
fn int64(v: &Json) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

fn tensor_infos(map: Option<&Json>) -> Result<Vec<TfTensorInfo>, BackendError> {
    let Some(map) = map else { return Ok(Vec::new()) };
    let map = map.as_object().ok_or_else(|| protocol("signature inputs/outputs are not an object"))?;
    map.iter()
        .map(|(key, info)| {
            let dtype = match info.get("dtype") {
                Some(Json::String(s)) => TfType::from_name(s),
                Some(n) => TfType::from_number(n.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(0)),
                // Proto JSON leaves a zero enum out: DT_INVALID.
                None => TfType::Unmapped("DT_INVALID".into()),
            };
            let shape = field(info, "tensor_shape", "tensorShape");
            let unknown_rank =
                shape.and_then(|s| field(s, "unknown_rank", "unknownRank")).and_then(Json::as_bool).unwrap_or(false);
            let shape = if unknown_rank {
                None
            } else {
                let dims = shape.and_then(|s| s.get("dim")).and_then(Json::as_array).map(Vec::as_slice).unwrap_or(&[]);
                let dims: Option<Vec<i64>> = dims.iter().map(|d| d.get("size").map_or(Some(0), int64)).collect();
                Some(dims.ok_or_else(|| protocol(format!("signature tensor '{key}' has a bad dimension")))?)
            };
            Ok(TfTensorInfo { name: key.clone(), dtype, shape })
        })
        .collect()
}

/// `GetModelMetadataResponse` as TF Serving's REST API prints it → the
/// signature named `signature` (`serving_default` unless configured).
pub fn signature_from_metadata(doc: &Json, signature: &str) -> Result<TfSignature, BackendError> {
    let version = field(doc, "model_spec", "modelSpec")
        .and_then(|s| s.get("version"))
        .and_then(|v| int64(v).map(|n| n.to_string()).or_else(|| v.as_str().map(str::to_string)));
    let defs = doc
        .get("metadata")
        .and_then(|m| field(m, "signature_def", "signatureDef"))
        .and_then(|m| field(m, "signature_def", "signatureDef"))
        .and_then(Json::as_object)
        .ok_or_else(|| protocol("model metadata has no signature_def map"))?;
    let Some(def) = defs.get(signature) else {
        return Err(no_signature(signature, defs.keys()));
    };
    Ok(TfSignature { version, inputs: tensor_infos(def.get("inputs"))?, outputs: tensor_infos(def.get("outputs"))? })
}

/// The 400 for a signature the model does not have, naming the ones it has.
pub fn no_signature<'a>(signature: &str, known: impl Iterator<Item = &'a String>) -> BackendError {
    let mut known: Vec<&str> = known.map(String::as_str).collect();
    known.sort_unstable();
    BackendError::InvalidInput(format!("the model has no signature `{signature}` (it has: {})", known.join(", ")))
}

impl TfSignature {
    /// The V2 model metadata object: the signature's inputs and outputs with
    /// their V2 datatypes, `-1` for unknown dimensions. A type V2 cannot
    /// carry is refused by name, never cast.
    pub fn v2_metadata(&self, model: &str) -> Result<Json, BackendError> {
        let list = |infos: &[TfTensorInfo], role: &str| -> Result<Vec<Json>, BackendError> {
            infos
                .iter()
                .map(|t| {
                    let dt = t.datatype(role)?;
                    // V2 has no unknown rank: one dynamic dimension is the closest it can say.
                    let shape = t.shape.clone().unwrap_or_else(|| vec![-1]);
                    Ok(json!({"name": t.name, "datatype": dt.as_str(), "shape": shape}))
                })
                .collect()
        };
        let mut m = Map::new();
        m.insert("name".into(), Json::from(model));
        m.insert("versions".into(), Json::from(self.version.iter().cloned().collect::<Vec<_>>()));
        m.insert("platform".into(), Json::from("tensorflow_savedmodel"));
        m.insert("inputs".into(), Json::from(list(&self.inputs, "input")?));
        m.insert("outputs".into(), Json::from(list(&self.outputs, "output")?));
        Ok(Json::Object(m))
    }

    /// Every input of `req` is one of the signature's, of exactly its type
    /// (TF Serving's JSON is untyped: it would convert silently), and every
    /// requested output is one of its outputs.
    pub fn check_request(&self, req: &InferRequest) -> Result<(), BackendError> {
        for t in &req.inputs {
            let Some(info) = self.inputs.iter().find(|i| i.name == t.name) else {
                let known: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
                return Err(BackendError::InvalidInput(format!(
                    "input '{}' is not an input of the model's signature (inputs: {})",
                    t.name,
                    known.join(", ")
                )));
            };
            let want = info.datatype("input")?;
            if want != t.datatype {
                return Err(BackendError::InvalidInput(format!(
                    "input '{}' is {} but the model's signature takes {} ({}); Switchyard does not cast",
                    t.name,
                    t.datatype.as_str(),
                    want.as_str(),
                    info.dtype.name()
                )));
            }
        }
        for o in &req.outputs {
            self.output(&o.name)?;
        }
        // Every output the answer will carry must have a V2 type: refused before the model runs.
        for info in self.wanted(&req.outputs) {
            info.datatype("output")?;
        }
        Ok(())
    }

    pub fn output(&self, name: &str) -> Result<&TfTensorInfo, BackendError> {
        self.outputs.iter().find(|i| i.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.outputs.iter().map(|i| i.name.as_str()).collect();
            BackendError::InvalidInput(format!(
                "unknown output '{name}': the model's signature has {}",
                known.join(", ")
            ))
        })
    }

    /// The outputs an answer carries for `wanted` (empty: every output), in
    /// the signature's order.
    pub fn wanted<'a>(&'a self, wanted: &'a [RequestedOutput]) -> impl Iterator<Item = &'a TfTensorInfo> + 'a {
        self.outputs.iter().filter(move |o| wanted.is_empty() || wanted.iter().any(|w| w.name == o.name))
    }
}

/// A tensor's shape as TF's JSON can carry it: a list with no elements says
/// nothing of the dimensions inside it, so only the last may be 0.
fn check_json_shape(t: &Tensor) -> Result<(), BackendError> {
    if let Some(i) = t.shape.iter().position(|&d| d == 0) {
        if i + 1 < t.shape.len() {
            return Err(BackendError::InvalidInput(format!(
                "input '{}' of shape {} cannot travel as TF Serving JSON (an empty list has no inner dimensions)",
                t.name,
                shape_text(&t.shape)
            )));
        }
    }
    Ok(())
}

/// `{"signature_name": …, "inputs": {name: value, …}}`: the columnar form,
/// whole tensors as they are (the batch dimension stays the first), floats
/// with `NaN`/`Infinity` literals, non-UTF-8 strings as `{"b64": …}`.
pub fn encode_predict_request(req: &InferRequest, signature: &str) -> Result<Bytes, BackendError> {
    let size: usize = req.inputs.iter().map(|t| t.data.len() * 3).sum();
    let mut out = String::with_capacity(64 + size);
    out.push_str("{\"signature_name\":");
    push_str_json(&mut out, signature);
    out.push_str(",\"inputs\":{");
    for (i, t) in req.inputs.iter().enumerate() {
        check_json_shape(t)?;
        let w = Writer::new(t).map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        if i > 0 {
            out.push(',');
        }
        push_str_json(&mut out, &t.name);
        out.push(':');
        let mut at = 0;
        w.values(&mut out, 0, &mut at).map_err(|e| BackendError::InvalidInput(e.to_string()))?;
    }
    out.push_str("}}");
    Ok(Bytes::from(out))
}

/// The REST answer's `outputs` → the `wanted` outputs (empty: all), typed by
/// the signature. One output comes unnamed (TF Serving drops the name of a
/// lone tensor); several come as an object.
pub fn decode_predict_response(
    body: &[u8],
    sig: &TfSignature,
    wanted: &[RequestedOutput],
) -> Result<Vec<Tensor>, BackendError> {
    let bad = |e: CodecError| protocol(format!("TF Serving answer: {e}"));
    let doc = parse_json(body).map_err(bad)?;
    let outputs = doc.get("outputs").ok_or_else(|| protocol("TF Serving answer has no `outputs`"))?;
    let mut out = Vec::new();
    if !is_named_object(outputs) {
        let [only] = sig.outputs.as_slice() else {
            return Err(protocol(format!(
                "TF Serving answered one unnamed output; the signature has {}",
                sig.outputs.len()
            )));
        };
        if !wanted.is_empty() && !wanted.iter().any(|w| w.name == only.name) {
            return Ok(out);
        }
        out.push(tensor(&only.name, outputs, only.datatype("output")?).map_err(bad)?);
        return Ok(out);
    }
    let named = outputs.as_object().expect("a named object");
    for info in sig.wanted(wanted) {
        let Some(v) = named.get(&info.name) else {
            if wanted.is_empty() {
                // TF Serving answers every output of the signature; one it left out is not ours to invent.
                continue;
            }
            return Err(protocol(format!("TF Serving's answer has no output '{}'", info.name)));
        };
        out.push(tensor(&info.name, v, info.datatype("output")?).map_err(bad)?);
    }
    if out.is_empty() && !named.is_empty() {
        return Err(protocol("TF Serving's outputs are none of the signature's"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> TfSignature {
        let doc = json!({
            "modelSpec": {"name": "m", "signatureName": "", "version": "3"},
            "metadata": {"signature_def": {"signatureDef": {"serving_default": {
                "inputs": {"x": {"dtype": "DT_FLOAT", "tensorShape": {"dim": [{"size": "-1"}, {"size": "2"}]}, "name": "x:0"},
                           "s": {"dtype": "DT_STRING", "tensor_shape": {"unknown_rank": true}}},
                "outputs": {"y": {"dtype": "DT_DOUBLE", "tensorShape": {"dim": [{"size": "-1"}]}},
                            "c": {"dtype": "DT_COMPLEX64", "tensorShape": {"dim": []}}},
                "methodName": "tensorflow/serving/predict"}}}}
        });
        signature_from_metadata(&doc, "serving_default").unwrap()
    }

    #[test]
    fn metadata_in_either_spelling_maps_types_and_dims() {
        let s = sig();
        assert_eq!(s.version.as_deref(), Some("3"));
        let x = s.inputs.iter().find(|i| i.name == "x").unwrap();
        assert_eq!((x.dtype.clone(), x.shape.clone()), (TfType::V2(DataType::Fp32), Some(vec![-1, 2])));
        assert_eq!(s.inputs.iter().find(|i| i.name == "s").unwrap().shape, None);
        let e = s.v2_metadata("m").unwrap_err().to_string();
        assert!(e.contains("output 'c' has TF type DT_COMPLEX64"), "{e}");
        let ok = TfSignature { outputs: s.outputs.iter().filter(|o| o.name == "y").cloned().collect(), ..s.clone() };
        let meta = ok.v2_metadata("m").unwrap();
        assert_eq!(meta["inputs"][1], json!({"name": "x", "datatype": "FP32", "shape": [-1, 2]}));
        assert_eq!(meta["outputs"][0], json!({"name": "y", "datatype": "FP64", "shape": [-1]}));
        assert_eq!(meta["versions"], json!(["3"]));
        let e = signature_from_metadata(&json!({"metadata": {"signature_def": {"signature_def": {"a": {}}}}}), "b");
        assert!(e.unwrap_err().to_string().contains("no signature `b` (it has: a)"));
    }

    #[test]
    fn requests_must_match_the_signature_exactly() {
        let s = sig();
        let x = |dt: DataType, n: usize| Tensor::new("x", dt, vec![1, 2], Bytes::from(vec![0u8; 2 * n]));
        let req = |t: Tensor| InferRequest { inputs: vec![t], ..InferRequest::default() };
        // Every output asked for (none named), one of which V2 cannot carry.
        let e = s.check_request(&req(x(DataType::Fp32, 4))).unwrap_err().to_string();
        assert!(e.contains("output 'c' has TF type DT_COMPLEX64"), "{e}");
        let mut only_y = req(x(DataType::Fp32, 4));
        only_y.outputs = vec![RequestedOutput { name: "y".into(), binary: None, parameters: Default::default() }];
        s.check_request(&only_y).unwrap();
        let e = s.check_request(&req(x(DataType::Fp64, 8))).unwrap_err().to_string();
        assert!(e.contains("input 'x' is FP64 but the model's signature takes FP32 (DT_FLOAT)"), "{e}");
        let mut r = req(x(DataType::Fp32, 4));
        r.outputs = vec![RequestedOutput { name: "c".into(), binary: None, parameters: Default::default() }];
        assert!(s.check_request(&r).unwrap_err().to_string().contains("DT_COMPLEX64"));
        r.outputs[0].name = "zz".into();
        assert!(s.check_request(&r).unwrap_err().to_string().contains("unknown output 'zz'"));
        let empty = Tensor::new("x", DataType::Fp32, vec![0, 2], Bytes::new());
        assert!(encode_predict_request(&req(empty), "serving_default").unwrap_err().to_string().contains("[0,2]"));
    }

    #[test]
    fn columnar_bodies_both_ways() {
        let mut data = Vec::new();
        for v in [1.5f32, f32::NAN, f32::INFINITY, -0.25] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        let mut strings = Vec::new();
        for s in [&b"hi"[..], b"\xff\x00"] {
            strings.extend_from_slice(&(s.len() as u32).to_le_bytes());
            strings.extend_from_slice(s);
        }
        let req = InferRequest {
            inputs: vec![
                Tensor::new("x", DataType::Fp32, vec![2, 2], Bytes::from(data)),
                Tensor::new("s", DataType::Bytes, vec![2], Bytes::from(strings)),
            ],
            ..InferRequest::default()
        };
        let body = encode_predict_request(&req, "serving_default").unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"signature_name":"serving_default","inputs":{"x":[[1.5,NaN],[Infinity,-0.25]],"s":["hi",{"b64":"/wA="}]}}"#
        );
        let only_y = sig().outputs.into_iter().filter(|o| o.name == "y").collect();
        let s = TfSignature { outputs: only_y, ..sig() };
        let got = decode_predict_response(br#"{"outputs": [1.0, NaN, 2]}"#, &s, &[]).unwrap();
        assert_eq!((got[0].name.as_str(), got[0].datatype, got[0].shape.clone()), ("y", DataType::Fp64, vec![3]));
        let two = sig();
        let got = decode_predict_response(
            br#"{"outputs": {"y": [[1.0]], "c": [1]}}"#,
            &two,
            &[RequestedOutput { name: "y".into(), binary: None, parameters: Default::default() }],
        )
        .unwrap();
        assert_eq!(got.len(), 1);
        // Every output asked for, one of which V2 cannot carry: refused by name.
        let e = decode_predict_response(br#"{"outputs": {"y": [1.0], "c": [1]}}"#, &two, &[]).unwrap_err();
        assert!(matches!(&e, BackendError::InvalidInput(m) if m.contains("DT_COMPLEX64")), "{e}");
        let e = decode_predict_response(br#"{"predictions": []}"#, &s, &[]).unwrap_err();
        assert!(matches!(e, BackendError::Protocol(_)));
    }
}
