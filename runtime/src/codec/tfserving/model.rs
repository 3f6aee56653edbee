//! TF Serving's model documents, built from a model's V2 metadata: the
//! predict signature's inputs (what REST bodies are typed by), the
//! `GetModelMetadata` answer (a `SignatureDefMap` with one predict
//! signature, `serving_default`, printed as TF Serving's JSON printer does:
//! lowerCamelCase fields, int64 as strings; over gRPC as the protobuf
//! `SignatureDefMap`) and the `GetModelStatus` answer.

use serde_json::{json, Map, Value as Json};

use std::collections::HashMap;

use super::dtype::{dt_name, dt_number};
use super::pb::tensorflow as pb;
use super::rest::{InputSpec, DEFAULT_SIGNATURE};
use super::tensor_proto::shape_to_proto;
use crate::error::CodecError;
use crate::tensor::DataType;

/// TF Serving's predict method name, the only one a V2 model's signature has.
pub const PREDICT_METHOD: &str = "tensorflow/serving/predict";

/// (name, datatype, shape) of each tensor under `key` (`inputs`/`outputs`) of V2 metadata.
fn tensors(meta: &Json, key: &str) -> Result<Vec<(String, DataType, Vec<i64>)>, CodecError> {
    let Some(list) = meta.get(key).and_then(Json::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|t| {
            let name =
                t["name"].as_str().ok_or_else(|| CodecError::invalid(format!("a model {key} entry has no name")))?;
            let dt = t["datatype"].as_str().unwrap_or_default();
            let datatype = DataType::parse(dt).ok_or_else(|| {
                CodecError::invalid(format!("model {key} '{name}' has datatype '{dt}', which TF cannot carry"))
            })?;
            let shape = t["shape"].as_array().map(|s| s.iter().filter_map(Json::as_i64).collect()).unwrap_or_default();
            Ok((name.to_string(), datatype, shape))
        })
        .collect()
}

/// The model's output names, in its order: what an output filter may name.
pub fn output_names(meta: &Json) -> Result<Vec<String>, CodecError> {
    Ok(tensors(meta, "outputs")?.into_iter().map(|(name, _, _)| name).collect())
}

/// The model's inputs, in its order: what a predict body is typed by.
pub fn input_specs(meta: &Json) -> Result<Vec<InputSpec>, CodecError> {
    Ok(tensors(meta, "inputs")?.into_iter().map(|(name, datatype, _)| InputSpec { name, datatype }).collect())
}

fn tensor_info(list: Vec<(String, DataType, Vec<i64>)>) -> Json {
    let mut m = Map::new();
    for (name, dt, shape) in list {
        let dims: Vec<Json> = shape.iter().map(|d| json!({"size": d.to_string(), "name": ""})).collect();
        m.insert(
            name.clone(),
            json!({"dtype": dt_name(dt), "tensorShape": {"dim": dims, "unknownRank": false}, "name": name}),
        );
    }
    Json::Object(m)
}

/// `GET /v1/models/{m}[/versions/{v}]/metadata`.
pub fn metadata_json(model: &str, version: &str, meta: &Json) -> Result<Json, CodecError> {
    Ok(json!({
        "modelSpec": {"name": model, "signatureName": "", "version": version},
        "metadata": {"signature_def": {
            "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
            "signatureDef": {DEFAULT_SIGNATURE: {
                "inputs": tensor_info(tensors(meta, "inputs")?),
                "outputs": tensor_info(tensors(meta, "outputs")?),
                "methodName": PREDICT_METHOD,
                "defaults": {}
            }}
        }}
    }))
}

fn tensor_info_pb(list: Vec<(String, DataType, Vec<i64>)>) -> HashMap<String, pb::TensorInfo> {
    list.into_iter()
        .map(|(name, dt, shape)| {
            let info = pb::TensorInfo {
                dtype: dt_number(dt),
                tensor_shape: Some(shape_to_proto(&shape)),
                encoding: Some(pb::tensor_info::Encoding::Name(name.clone())),
            };
            (name, info)
        })
        .collect()
}

/// The `SignatureDefMap` of gRPC `GetModelMetadata`: one predict signature,
/// `serving_default`, with the model's inputs and outputs.
pub fn signature_def_map(meta: &Json) -> Result<pb::serving::SignatureDefMap, CodecError> {
    let def = pb::SignatureDef {
        inputs: tensor_info_pb(tensors(meta, "inputs")?),
        outputs: tensor_info_pb(tensors(meta, "outputs")?),
        method_name: PREDICT_METHOD.to_string(),
        defaults: HashMap::new(),
    };
    Ok(pb::serving::SignatureDefMap { signature_def: HashMap::from([(DEFAULT_SIGNATURE.to_string(), def)]) })
}

/// One version's state in a status answer.
#[derive(Clone, Debug, PartialEq)]
pub struct VersionState {
    pub version: String,
    /// `None`: AVAILABLE; `Some(why)`: not serving.
    pub unavailable: Option<String>,
}

/// `GET /v1/models/{m}[/versions/{v}|/labels/{l}]`: TF Serving's
/// `GetModelStatusResponse` as its REST API prints it (snake_case).
pub fn status_json(versions: &[VersionState]) -> Json {
    let list: Vec<Json> = versions
        .iter()
        .map(|v| match &v.unavailable {
            None => json!({"version": v.version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}),
            Some(why) => json!({"version": v.version, "state": "UNKNOWN", "status": {"error_code": "UNAVAILABLE", "error_message": why}}),
        })
        .collect();
    json!({ "model_version_status": list })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_def_from_v2_metadata() {
        let meta = json!({"name": "mlp", "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
                          "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}]});
        assert_eq!(input_specs(&meta).unwrap(), vec![InputSpec { name: "input".into(), datatype: DataType::Fp32 }]);
        let doc = metadata_json("mlp", "2", &meta).unwrap();
        let sig = &doc["metadata"]["signature_def"]["signatureDef"]["serving_default"];
        assert_eq!(sig["inputs"]["input"]["dtype"], "DT_FLOAT");
        assert_eq!(sig["inputs"]["input"]["tensorShape"]["dim"][1]["size"], "16");
        assert_eq!(sig["outputs"]["probabilities"]["tensorShape"]["dim"][0]["size"], "-1");
        assert_eq!(doc["modelSpec"]["version"], "2");
        assert_eq!(output_names(&meta).unwrap(), vec!["probabilities".to_string()]);
        let map = signature_def_map(&meta).unwrap();
        let def = &map.signature_def[DEFAULT_SIGNATURE];
        assert_eq!(def.method_name, PREDICT_METHOD);
        let input = &def.inputs["input"];
        assert_eq!(input.dtype, pb::DataType::DtFloat as i32);
        assert_eq!(input.encoding, Some(pb::tensor_info::Encoding::Name("input".into())));
        let dims: Vec<i64> = input.tensor_shape.as_ref().unwrap().dim.iter().map(|d| d.size).collect();
        assert_eq!(dims, vec![-1, 16]);
        assert!(def.outputs.contains_key("probabilities"));
        let bad = json!({"inputs": [{"name": "x", "datatype": "COMPLEX"}]});
        assert!(input_specs(&bad).unwrap_err().to_string().contains("TF cannot carry"));
    }

    #[test]
    fn status_lists_versions() {
        let s = status_json(&[
            VersionState { version: "1".into(), unavailable: None },
            VersionState { version: "2".into(), unavailable: Some("backend down".into()) },
        ]);
        assert_eq!(s["model_version_status"][0]["state"], "AVAILABLE");
        assert_eq!(s["model_version_status"][1]["status"]["error_code"], "UNAVAILABLE");
    }
}
