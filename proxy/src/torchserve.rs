//! TorchServe clients on the lifecycle, the part the REST front end
//! (`http::torchserve`) and the gRPC one (`grpc::torchserve`) share: what a
//! TorchServe call becomes once its variant is chosen. A variant whose backend
//! is `kind: torchserve` takes the bodies unchanged (`codec::torchserve`'s
//! contract: BYTES inputs, opaque, cached on their bytes); a tensor backend
//! (embedded ONNX, a V2 server) gets the one input tensor its
//! `variants[].torchserve` declaration reads from the JSON body, and its
//! answer's tensor is written back as nested JSON lists. What cannot map is a
//! 400 that says why; a variant that declares no translation answers 501.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value as Json;
use switchyard_config::{TorchServeBody, TorchServeTranslation};
use switchyard_runtime::codec::tfserving::{self as tfs, InputSpec};
use switchyard_runtime::codec::torchserve as ts;
use switchyard_runtime::tensor::RequestedOutput;
use switchyard_runtime::{Backend, InferRequest, InferResponse, ModelTarget};

use crate::error::{Error, ErrorKind};
use crate::pipeline::Routed;

/// `Backend::kind()` of the backend that takes TorchServe bodies unchanged.
pub const BACKEND_KIND: &str = "torchserve";
/// The input names a translated body may travel under (TorchServe's handlers read `data` or `body`).
const BODY_NAMES: [&str; 2] = [ts::BODY_INPUT, "body"];

/// TorchServe's words for a model nobody serves.
pub fn model_not_found(model: &str) -> Error {
    Error::not_found(format!("Model not found: {model}"))
}

/// TorchServe's health document, as it prints it (pretty JSON).
pub fn health_json(healthy: bool) -> String {
    let status = if healthy { "Healthy" } else { "Unhealthy" };
    format!("{{\n  \"status\": \"{status}\"\n}}")
}

/// TorchServe's "Healthy": every route has a ready backend and no background task died.
pub async fn healthy(table: &crate::routing::RoutingTable) -> bool {
    crate::pipeline::dead_tasks().is_empty() && crate::pipeline::unready_routes(table).await.is_empty()
}

/// A configuration problem of the variant, not the client's: 501 naming the fix.
fn not_served(msg: String) -> Error {
    Error::new(ErrorKind::NotImplemented, msg)
}

/// What the chosen variant does with TorchServe bodies.
enum Plan {
    /// A `torchserve` backend: bodies go through unchanged.
    Opaque,
    Translate {
        t: Arc<TorchServeTranslation>,
        backend: Arc<dyn Backend>,
        target: ModelTarget,
        variant: Arc<str>,
    },
    /// The variant cannot serve TorchServe clients; the reason.
    Refused(Error),
}

/// One TorchServe call: its bodies (one per input, by name), the client's
/// content type, whether it is an explanation, and — once the lifecycle has
/// chosen the variant — how that variant takes them.
pub struct TsCall {
    pub model: String,
    pub inputs: Vec<(String, Bytes)>,
    pub content_type: Option<String>,
    pub explain: bool,
    plan: Option<Plan>,
}

impl TsCall {
    pub fn new(model: &str, content_type: Option<String>, explain: bool) -> TsCall {
        TsCall { model: model.to_owned(), inputs: Vec::new(), content_type, explain, plan: None }
    }

    /// The lifecycle chose the variant: opaque for a `torchserve` backend, translated where declared.
    pub fn routed(&mut self, routed: &Routed<'_>) {
        let sel = routed.selection;
        // A content-routing rule may have sent the call to another model.
        self.model = routed.model.to_owned();
        let v = sel.variant;
        let plan = if v.backend.kind() == BACKEND_KIND {
            Plan::Opaque
        } else if let Some(t) = &v.torchserve {
            if self.explain {
                Plan::Refused(not_served(format!(
                    "explanations need a `kind: torchserve` backend; variant '{}' of model '{}' runs on backend '{}' \
                     (kind {}), which only predicts",
                    v.name,
                    self.model,
                    v.backend_name,
                    v.backend.kind()
                )))
            } else {
                Plan::Translate {
                    t: t.clone(),
                    backend: v.backend.clone(),
                    target: sel.target.clone(),
                    variant: v.name.clone(),
                }
            }
        } else {
            Plan::Refused(not_served(format!(
                "variant '{}' of model '{}' runs on backend '{}' (kind {}), which takes tensors, and declares no \
                 TorchServe translation (set variants[].torchserve; docs/torchserve.md)",
                v.name,
                self.model,
                v.backend_name,
                v.backend.kind()
            )))
        };
        self.plan = Some(plan);
    }

    /// The request for the chosen variant: the bodies as they are, or the tensor they translate to.
    pub async fn decode(&mut self) -> Result<InferRequest, Error> {
        let inputs = std::mem::take(&mut self.inputs);
        match self.plan.as_ref().ok_or_else(|| Error::internal("a TorchServe call decoded before routing"))? {
            Plan::Refused(e) => Err(e.clone()),
            Plan::Opaque => Ok(ts::request_from_inputs(
                inputs.iter().map(|(k, v)| (k.as_str(), &v[..])),
                self.content_type.as_deref(),
                self.explain,
            )?),
            Plan::Translate { t, backend, target, variant } => {
                let body = translated_body(&inputs)?;
                // The signature TF Serving's front ends type bodies by (cached per backend and target).
                let sig = crate::tfserving::signature(backend, target).await?;
                let spec = one_input(&sig.inputs, &self.model, variant)?;
                if let Some(name) = t.output_tensor.as_ref().filter(|n| !sig.outputs.contains(n)) {
                    return Err(not_served(format!(
                        "variant '{variant}' of model '{}' declares output_tensor '{name}', which the model does \
                         not have (outputs: {})",
                        self.model,
                        sig.outputs.join(", ")
                    )));
                }
                Ok(translate_request(body, t, &spec)?)
            }
        }
    }

    /// The answer's body and content type.
    pub fn encode(&self, resp: InferResponse) -> Result<(Bytes, Option<String>), Error> {
        match &self.plan {
            Some(Plan::Translate { t, variant, .. }) => {
                let body = translate_response(&resp, t).map_err(|e| match e {
                    Refusal::Config(m) => not_served(format!("variant '{variant}' of model '{}': {m}", self.model)),
                    Refusal::Backend(c) => Error::unencodable(c),
                })?;
                Ok((body, Some("application/json".to_owned())))
            }
            _ => {
                let (body, ct) = ts::response_body(&resp).map_err(Error::unencodable)?;
                Ok((body, ct.map(str::to_owned)))
            }
        }
    }
}

/// The body a translated request reads: its `data` (or `body`) input, or its only one.
fn translated_body(inputs: &[(String, Bytes)]) -> Result<&Bytes, Error> {
    if let [(_, only)] = inputs {
        return Ok(only);
    }
    BODY_NAMES.iter().find_map(|n| inputs.iter().find(|(k, _)| k == n).map(|(_, v)| v)).ok_or_else(|| {
        let names: Vec<&str> = inputs.iter().map(|(k, _)| k.as_str()).collect();
        Error::bad_field(
            "input",
            format!(
                "a translated TorchServe request carries its JSON body under 'data' (or 'body'); this one has {}",
                if names.is_empty() { "no input".to_owned() } else { format!("inputs {}", names.join(", ")) }
            ),
        )
    })
}

/// The model's one input, or why a TorchServe body cannot feed it.
fn one_input(specs: &[InputSpec], model: &str, variant: &str) -> Result<InputSpec, Error> {
    match specs {
        [one] => Ok(one.clone()),
        _ => Err(not_served(format!(
            "model '{model}' (variant '{variant}') has {} inputs ({}); a TorchServe body translates to exactly one \
             input tensor",
            specs.len(),
            specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// A JSON body → the request for `input`, as `t` declares (pure; the client's faults are 400s).
pub fn translate_request(
    body: &[u8],
    t: &TorchServeTranslation,
    input: &InputSpec,
) -> Result<InferRequest, switchyard_runtime::CodecError> {
    use switchyard_runtime::CodecError;
    let doc = tfs::rest::parse_json(body).map_err(|e| {
        CodecError::invalid(format!("the body is not JSON ({e}); this model takes a JSON nested list as its input"))
    })?;
    let value = doc.pointer(&t.input).ok_or_else(|| {
        CodecError::invalid(format!(
            "the body has nothing at JSON pointer '{}' (where this model's input is read)",
            t.input
        ))
    })?;
    // `{"b64": ...}` is one BYTES element; any other object is no tensor.
    if value.is_object() && value.get("b64").is_none() {
        return Err(CodecError::invalid(format!(
            "the value at JSON pointer '{}' is an object; this model's input '{}' is a nested list of {}",
            t.input, input.name, input.datatype
        )));
    }
    let mut tensor = tfs::rest::json_tensor(&input.name, value, input.datatype)
        .map_err(|e| CodecError::invalid(format!("input '{}' ({}): {e}", input.name, input.datatype)))?;
    if t.body == TorchServeBody::Row {
        tensor.shape.insert(0, 1);
    }
    let req = InferRequest {
        inputs: vec![tensor],
        outputs: t
            .output_tensor
            .iter()
            .map(|name| RequestedOutput { name: name.clone(), ..Default::default() })
            .collect(),
        ..Default::default()
    };
    req.validate()?;
    Ok(req)
}

/// Why an answer could not be written.
#[derive(Debug)]
pub enum Refusal {
    /// The declaration does not fit the model (which output, the batch dimension).
    Config(String),
    /// The backend's answer is malformed.
    Backend(switchyard_runtime::CodecError),
}

/// The answer's tensor as JSON, as `t` declares: the bare nested list or `{"<output>": list}`.
pub fn translate_response(resp: &InferResponse, t: &TorchServeTranslation) -> Result<Bytes, Refusal> {
    let out = match &t.output_tensor {
        Some(name) => resp.outputs.iter().find(|o| &o.name == name).ok_or_else(|| {
            Refusal::Config(format!("the model answered no output '{name}' (variants[].torchserve.output_tensor)"))
        })?,
        None => match &resp.outputs[..] {
            [one] => one,
            many => {
                return Err(Refusal::Config(format!(
                    "the model answers {} outputs ({}); name the one TorchServe clients get in \
                     variants[].torchserve.output_tensor",
                    many.len(),
                    many.iter().map(|o| o.name.as_str()).collect::<Vec<_>>().join(", ")
                )))
            }
        },
    };
    let mut out = out.clone();
    if t.body == TorchServeBody::Row {
        if out.shape.first() != Some(&1) {
            return Err(Refusal::Config(format!(
                "a body is one row (variants[].torchserve.body: row) but output '{}' has shape {:?}, not [1, ...]",
                out.name, out.shape
            )));
        }
        out.shape.remove(0);
    }
    let list = tfs::rest::tensor_json(&out).map_err(Refusal::Backend)?;
    let text = match &t.output {
        None => list,
        Some(key) => format!("{{{}:{list}}}", Json::String(key.clone())),
    };
    Ok(Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use switchyard_runtime::{DataType, Tensor};

    use super::*;

    fn decl(input: &str, output: Option<&str>, body: TorchServeBody) -> TorchServeTranslation {
        TorchServeTranslation { input: input.into(), output: output.map(Into::into), body, output_tensor: None }
    }

    fn spec(dt: DataType) -> InputSpec {
        InputSpec { name: "x".into(), datatype: dt }
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
    }

    #[test]
    fn nested_lists_become_the_input_tensor_with_its_shape() {
        let t = decl("/instances", None, TorchServeBody::Tensor);
        let r = translate_request(br#"{"instances": [[1, 2.5], [3, 4]]}"#, &t, &spec(DataType::Fp32)).unwrap();
        assert_eq!(r.inputs[0].shape, vec![2, 2]);
        assert_eq!(f32s(&r.inputs[0]), vec![1.0, 2.5, 3.0, 4.0]);
        // One row: the batch dimension is added.
        let t = decl("", None, TorchServeBody::Row);
        let r = translate_request(b"[1, 2, 3]", &t, &spec(DataType::Fp32)).unwrap();
        assert_eq!(r.inputs[0].shape, vec![1, 3]);
        let r =
            translate_request(b"[[1, -2]]", &decl("", None, TorchServeBody::Tensor), &spec(DataType::Int8)).unwrap();
        assert_eq!(&r.inputs[0].data[..], &[1u8, 0xfe]);
    }

    #[test]
    fn what_cannot_map_is_refused_saying_why() {
        let t = decl("", None, TorchServeBody::Tensor);
        let cases: [(&[u8], DataType, &str); 6] = [
            (b"hello", DataType::Fp32, "the body is not JSON"),
            (b"[[1, 2], [3]]", DataType::Fp32, "Encountered list at unexpected size"),
            (b"[1.5, 2]", DataType::Int64, "is not of expected type"),
            (b"[300]", DataType::Int8, "is not of expected type"),
            (b"[\"a\"]", DataType::Fp32, "is not of expected type: float"),
            (b"{\"a\": 1}", DataType::Fp32, "is an object"),
        ];
        for (body, dt, want) in cases {
            let e = translate_request(body, &t, &spec(dt)).unwrap_err().to_string();
            assert!(e.contains(want), "{}: {e}", String::from_utf8_lossy(body));
        }
        let e = translate_request(b"{}", &decl("/instances", None, TorchServeBody::Tensor), &spec(DataType::Fp32))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing at JSON pointer '/instances'"), "{e}");
    }

    /// A `torchserve` backend's call: the bodies travel as they came, under
    /// their names, with the content type; explanations and predictions of
    /// the same bytes never share a cache key.
    #[tokio::test]
    async fn opaque_bodies_go_through_unchanged() {
        let call = |explain: bool| {
            let mut c = TsCall::new("m", Some("image/png".into()), explain);
            c.inputs =
                vec![("data".into(), Bytes::from_static(b"\x89PNG\0raw")), ("aux".into(), Bytes::from_static(b"1"))];
            c.plan = Some(Plan::Opaque);
            c
        };
        let mut predict = call(false);
        let req = predict.decode().await.unwrap();
        let bodies = ts::request_bodies(&req).unwrap();
        assert_eq!(&bodies[0]["data"][..], b"\x89PNG\0raw");
        assert_eq!(&bodies[0]["aux"][..], b"1");
        assert_eq!(ts::content_type(&req.parameters), Some("image/png"));
        let explain = call(true).decode().await.unwrap();
        assert!(ts::is_explanation(&explain) && !ts::is_explanation(&req));
        assert_ne!(crate::cache::key::request_digest(&req), crate::cache::key::request_digest(&explain));

        let answer =
            ts::response_from_bodies("m", None, &[&b"\x00\xffbytes"[..]], Some("application/octet-stream")).unwrap();
        let (body, ct) = predict.encode(answer).unwrap();
        assert_eq!((&body[..], ct.as_deref()), (&b"\x00\xffbytes"[..], Some("application/octet-stream")));
        // A backend that broke the contract is the backend's fault (502), not the client's.
        let e = predict.encode(InferResponse::default()).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::Backend(_)), "{e:?}");
    }

    #[test]
    fn answers_are_written_as_declared() {
        let y = Tensor::new(
            "y",
            DataType::Fp32,
            vec![1, 2],
            Bytes::from([0.5f32, -1.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()),
        );
        let resp = InferResponse { outputs: vec![y.clone()], ..Default::default() };
        let bare = translate_response(&resp, &decl("", None, TorchServeBody::Tensor)).unwrap();
        assert_eq!(&bare[..], b"[[0.5,-1.0]]");
        let keyed = translate_response(&resp, &decl("", Some("predictions"), TorchServeBody::Row)).unwrap();
        assert_eq!(&keyed[..], br#"{"predictions":[0.5,-1.0]}"#);
        let two = InferResponse { outputs: vec![y.clone(), Tensor { name: "z".into(), ..y }], ..Default::default() };
        match translate_response(&two, &decl("", None, TorchServeBody::Tensor)) {
            Err(Refusal::Config(m)) => assert!(m.contains("2 outputs (y, z)"), "{m}"),
            other => panic!("{other:?}"),
        }
        let mut pick = decl("", None, TorchServeBody::Tensor);
        pick.output_tensor = Some("z".into());
        assert_eq!(&translate_response(&two, &pick).unwrap()[..], b"[[0.5,-1.0]]");
    }
}
