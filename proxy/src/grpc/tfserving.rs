//! TensorFlow Serving's gRPC API on the data gRPC port, beside KServe V2:
//! `tensorflow.serving.PredictionService` (Predict through the shared
//! lifecycle; Classify and Regress relayed to a `tfserving` backend
//! (`crate::tfrelay`), else refused as TF Serving refuses a predict-only
//! signature, as MultiInference always is; GetModelMetadata) and
//! `tensorflow.serving.ModelService` (GetModelStatus;
//! HandleReloadConfigRequest refused). `model_spec` names the servable as on
//! REST (`crate::tfserving`): `version_label` → the variant of that label,
//! `version` → the variant pinned to it (0: the latest), neither → the A/B
//! split, sticky on the same metadata as V2. `TfExchange` types the
//! request's `TensorProto`s by the model's signature and answers with TF
//! Serving's texts and status codes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use http::HeaderMap;
use prost::Message;
use switchyard_runtime::codec::tfserving::dtype::tf_type_name;
use switchyard_runtime::codec::tfserving::pb::tensorflow::error::Code as TfCode;
use switchyard_runtime::codec::tfserving::pb::tensorflow::serving as sv;
use switchyard_runtime::codec::tfserving::{self as tfs};
use switchyard_runtime::tensor::RequestedOutput;
use switchyard_runtime::{Backend, InferRequest, InferResponse, ModelTarget, TfRelay};
use tonic::transport::server::TcpConnectInfo;
use tonic::{Request, Response, Status};

use super::exchange::{answer_metadata, grpc_timeout, note_inference, AnswerInfo, Shared};
use super::service::principal;
use crate::access_log::SharedNote;
use crate::auth::{Action, Principal};
use crate::error::Error;
use crate::pipeline::{self, Answer, Call, Exchange};
use crate::protocol::{Param, Protocol};
use crate::respond;
use crate::routing::RoutingTable;
use crate::tfrelay;
use crate::tfserving::{self as shared, TfMethod, TfServable};

pub use sv::model_service_server::ModelServiceServer;
pub use sv::prediction_service_server::PredictionServiceServer;

use sv::model_spec::VersionChoice;

/// The type URL TF Serving packs a `SignatureDefMap` under.
const SIGNATURE_DEF_MAP_URL: &str = "type.googleapis.com/tensorflow.serving.SignatureDefMap";
/// Predict's gRPC method path (content-routing rules match on it).
const PREDICT_PATH: &str = "/tensorflow.serving.PredictionService/Predict";
const CLASSIFY_PATH: &str = "/tensorflow.serving.PredictionService/Classify";
const REGRESS_PATH: &str = "/tensorflow.serving.PredictionService/Regress";
/// The one metadata field TF Serving (and Switchyard) answers.
const SIGNATURE_DEF_FIELD: &str = "signature_def";

/// Both TF Serving services, on the listener's shared state.
#[derive(Clone)]
pub struct TfFrontEnd {
    pub shared: Arc<Shared>,
}

/// The servable a `ModelSpec` names, owned (the request moves into the lifecycle).
#[derive(Clone, Debug, PartialEq)]
enum Named {
    Latest,
    Version(String),
    Label(String),
}

impl Named {
    /// Version 0 is "the latest" to OpenVINO Model Server's `ovmsclient`,
    /// which always sends one (as on REST); an empty label names no label.
    fn of(spec: &sv::ModelSpec) -> Named {
        match &spec.version_choice {
            Some(VersionChoice::Version(v)) if *v != 0 => Named::Version(v.to_string()),
            Some(VersionChoice::VersionLabel(l)) if !l.is_empty() => Named::Label(l.clone()),
            _ => Named::Latest,
        }
    }

    fn servable(&self) -> TfServable<'_> {
        match self {
            Named::Latest => TfServable::Latest,
            Named::Version(v) => TfServable::Version(v),
            Named::Label(l) => TfServable::Label(l),
        }
    }
}

/// A request's model spec, or TF Serving's refusal of a request without one.
fn model_spec(spec: Option<sv::ModelSpec>) -> Result<sv::ModelSpec, Error> {
    spec.ok_or_else(|| Error::bad_request("Missing ModelSpec"))
}

/// TF Serving's not-found for a negative version (no servable has one).
fn check_version(model: &str, named: &Named) -> Result<(), Error> {
    match named {
        Named::Version(v) if v.starts_with('-') => Err(shared::not_found(model, named.servable())),
        _ => Ok(()),
    }
}

/// Records a non-inference RPC's model and outcome on its access line.
fn note_call(ext: &tonic::Extensions, model: &str, error: Option<&Error>) {
    if let Some(n) = ext.get::<SharedNote>().and_then(|n| n.lock().ok()).as_deref_mut() {
        n.model = Some(model.to_string()).filter(|m| !m.is_empty());
        n.error = error.map(|e| e.kind.label());
    }
}

fn version_spec(model: &str, version: Option<i64>, signature_name: &str) -> sv::ModelSpec {
    sv::ModelSpec {
        name: model.to_string(),
        version_choice: version.map(VersionChoice::Version),
        signature_name: signature_name.to_string(),
    }
}

/// One TF Serving gRPC Predict through the shared lifecycle.
struct TfExchange<'a> {
    headers: &'a HeaderMap,
    message: Option<sv::PredictRequest>,
    /// `model_spec.signature_name`, as content-routing rules see it.
    signature_name: String,
    /// Whether the client named its variant by a version label (it then types the tensors).
    labelled: bool,
    /// The backend and target whose signature types the tensors, once routed.
    typed_by: Option<(Arc<dyn Backend>, ModelTarget)>,
    /// A content-routing rule matched on `signature_name`: the name chose the
    /// model, and the model's one signature types the tensors.
    signature_routed: bool,
    max_message_bytes: usize,
    /// The version the client named, for the answer's `model_spec` when the backend names none.
    version: Option<i64>,
    output_filter: Vec<String>,
}

/// `{a,b,c}` as TF Serving lists a set of names.
fn set_text<'s>(names: impl IntoIterator<Item = &'s str>) -> String {
    names.into_iter().collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>().join(",")
}

impl TfExchange<'_> {
    /// The request's tensors, checked against the signature with TF Serving's texts
    /// (`predict_util.cc`), in the signature's order.
    fn tensors(&self, msg: sv::PredictRequest, sig: &shared::Signature) -> Result<InferRequest, Error> {
        let expected = || set_text(sig.inputs.iter().map(|i| i.name.as_str()));
        if msg.inputs.len() != sig.inputs.len() {
            let sent = set_text(msg.inputs.keys().map(String::as_str));
            let extra =
                set_text(msg.inputs.keys().map(String::as_str).filter(|k| !sig.inputs.iter().any(|i| i.name == *k)));
            let missing = set_text(sig.inputs.iter().map(|i| i.name.as_str()).filter(|n| !msg.inputs.contains_key(*n)));
            return Err(Error::bad_request(format!(
                "input size does not match signature: {}!={} len({{{sent}}}) != len({{{}}}). \
                 Sent extra: {{{extra}}}. Missing but required: {{{missing}}}.",
                msg.inputs.len(),
                sig.inputs.len(),
                expected()
            )));
        }
        if let Some(alias) = msg.inputs.keys().find(|k| !sig.inputs.iter().any(|i| i.name == **k)) {
            return Err(Error::bad_request(format!(
                "input tensor alias not found in signature: {alias}. Inputs expected to be in the set {{{}}}.",
                expected()
            )));
        }
        let mut protos = msg.inputs;
        let mut inputs = Vec::with_capacity(sig.inputs.len());
        for (i, spec) in sig.inputs.iter().enumerate() {
            let proto = protos.remove(&spec.name).expect("every signature input was sent");
            let t = tfs::tensor_from_proto(&spec.name, proto, self.max_message_bytes)
                .map_err(|e| Error::bad_field(spec.name.clone(), format!("tensor parsing error: {e}")))?;
            if t.datatype != spec.datatype {
                // What TensorFlow's session says of a tensor of the wrong type.
                return Err(Error::bad_field(
                    spec.name.clone(),
                    format!(
                        "Expects arg[{i}] to be {} but {} is provided",
                        tf_type_name(spec.datatype),
                        tf_type_name(t.datatype)
                    ),
                ));
            }
            inputs.push(t);
        }
        let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(msg.output_filter.len());
        for alias in &msg.output_filter {
            if outputs.iter().any(|o| o.name == *alias) {
                return Err(Error::bad_request(format!("duplicate output tensor alias: {alias}")));
            }
            if !sig.outputs.contains(alias) {
                return Err(Error::bad_request(format!(
                    "output tensor alias not found in signature: {alias} Outputs expected to be in the set {{{}}}.",
                    set_text(sig.outputs.iter().map(String::as_str))
                )));
            }
            outputs.push(RequestedOutput { name: alias.clone(), ..RequestedOutput::default() });
        }
        Ok(InferRequest { inputs, outputs, ..InferRequest::default() })
    }
}

impl Exchange for TfExchange<'_> {
    type Encoded = sv::PredictResponse;

    fn metadata(&self) -> &HeaderMap {
        self.headers
    }

    /// TF Serving's one request-level parameter: `signature_name` (in the message, no read needed).
    fn parameter(&self, name: &str) -> Option<Param<'_>> {
        match name {
            "signature_name" if !self.signature_name.is_empty() => Some(Param::Str(&self.signature_name)),
            _ => None,
        }
    }

    fn routed(&mut self, routed: &pipeline::Routed<'_>) {
        self.typed_by = Some(shared::typed_by(routed, self.labelled));
        self.signature_routed = routed.matched_parameter("signature_name");
    }

    async fn decode(&mut self) -> Result<InferRequest, Error> {
        let msg = self.message.take().ok_or_else(|| Error::internal("the request was decoded twice"))?;
        let routed = self.signature_routed.then_some(self.signature_name.as_str());
        tfs::check_signature(&self.signature_name, routed)?;
        let (backend, target) =
            self.typed_by.as_ref().ok_or_else(|| Error::internal("TF Serving tensors decoded before routing"))?;
        let sig = shared::signature(backend, target).await?;
        self.output_filter = msg.output_filter.clone();
        self.tensors(msg, &sig)
    }

    async fn closed(&mut self) {
        // tonic drops the handler's future when the client cancels.
        std::future::pending().await
    }

    fn encode(&mut self, resp: InferResponse) -> Result<sv::PredictResponse, Error> {
        let mut outputs = HashMap::with_capacity(resp.outputs.len());
        for t in &resp.outputs {
            if self.output_filter.is_empty() || self.output_filter.contains(&t.name) {
                outputs.insert(t.name.clone(), tfs::tensor_to_proto(t).map_err(Error::unencodable)?);
            }
        }
        // The version that answered, as the backend reports it; else the one asked for.
        let version = resp.model_version.as_deref().and_then(|v| v.parse::<i64>().ok()).or(self.version);
        let out = sv::PredictResponse {
            model_spec: Some(version_spec(&resp.model_name, version, tfs::DEFAULT_SIGNATURE)),
            outputs,
        };
        let len = out.encoded_len();
        if len > self.max_message_bytes {
            return Err(Error::too_large(format!(
                "response of {len} bytes exceeds listeners.grpc.max_message_bytes ({})",
                self.max_message_bytes
            )));
        }
        Ok(out)
    }
}

/// An answer the lifecycle never saw (refused before it: no variant was picked).
fn refused<E>(e: Error, start: Instant) -> Answer<E> {
    Answer { result: Err(e), variant: None, batch_rows: None, cache: None, overhead: start.elapsed(), rule: None }
}

impl TfFrontEnd {
    /// What every TF call does before its method's own work: authorize the
    /// model (before anything of the routes is told), find its route, and
    /// name the servable the spec asks for (label → variant, version).
    #[allow(clippy::too_many_arguments)]
    fn open_call<'a>(
        &'a self,
        headers: &HeaderMap,
        table: &'a RoutingTable,
        spec: &'a sv::ModelSpec,
        named: &'a Named,
        path: &'static str,
        input_bytes: u64,
        principal: Option<&'a Principal>,
        client: Option<std::net::IpAddr>,
        start: Instant,
    ) -> Result<Call<'a>, Error> {
        let model = spec.name.as_str();
        let version = match named {
            Named::Version(v) => Some(v.as_str()),
            _ => None,
        };
        pipeline::authorize(principal, model, version, Action::Infer).and_then(|()| check_version(model, named))?;
        let servable = named.servable();
        let r = shared::route(table, model, servable)?;
        let mut call = Call {
            protocol: Protocol::TfServingGrpc,
            path: Some(path),
            model,
            version: None,
            variant: None,
            deadline: grpc_timeout(headers),
            start,
            principal,
            limiter: self.shared.guards.limiter.as_deref(),
            client,
            input_bytes: Some(input_bytes),
            priority: None,
        };
        shared::name_servable(r, servable, &mut call)?;
        Ok(call)
    }

    /// One Predict, start to end: servable → `pipeline::infer`.
    async fn predict_call(
        &self,
        headers: &HeaderMap,
        table: &RoutingTable,
        msg: sv::PredictRequest,
        principal: Option<&Principal>,
        client: Option<std::net::IpAddr>,
    ) -> Answer<sv::PredictResponse> {
        let start = Instant::now();
        let input_bytes = msg.encoded_len() as u64;
        let spec = match model_spec(msg.model_spec.clone()) {
            Ok(s) => s,
            Err(e) => return refused(e, start),
        };
        let named = Named::of(&spec);
        let call =
            match self.open_call(headers, table, &spec, &named, PREDICT_PATH, input_bytes, principal, client, start) {
                Ok(c) => c,
                Err(e) => return refused(e, start),
            };
        let mut x = TfExchange {
            headers,
            signature_name: spec.signature_name.clone(),
            labelled: call.variant.is_some(),
            typed_by: None,
            signature_routed: false,
            message: Some(msg),
            max_message_bytes: self.shared.max_message_bytes,
            version: call.version.and_then(|v| v.parse().ok()),
            output_filter: Vec::new(),
        };
        pipeline::infer(table, &self.shared.metrics, &mut x, call).await
    }

    /// One Classify or Regress, start to end: servable → `tfrelay::relay`,
    /// whose `run` makes the backend call with the variant's target.
    #[allow(clippy::too_many_arguments)]
    async fn relay_call<'t, T, F, Fut>(
        &self,
        headers: &HeaderMap,
        table: &'t RoutingTable,
        spec: Option<sv::ModelSpec>,
        method: TfMethod,
        input_bytes: u64,
        principal: Option<&Principal>,
        client: Option<std::net::IpAddr>,
        run: F,
    ) -> Answer<T>
    where
        F: FnOnce(&'t dyn TfRelay, ModelTarget, HeaderMap) -> Fut,
        Fut: std::future::Future<Output = Result<T, switchyard_runtime::BackendError>>,
    {
        let start = Instant::now();
        let spec = match model_spec(spec) {
            Ok(s) => s,
            Err(e) => return refused(e, start),
        };
        let named = Named::of(&spec);
        let path = if method == TfMethod::Classify { CLASSIFY_PATH } else { REGRESS_PATH };
        let call = match self.open_call(headers, table, &spec, &named, path, input_bytes, principal, client, start) {
            Ok(c) => c,
            Err(e) => return refused(e, start),
        };
        let signature = Some(spec.signature_name.as_str());
        tfrelay::relay(table, &self.shared.metrics, headers, call, method, signature, "Predict", |_| 200, run).await
    }

    /// Writes a relayed answer: its access line, the variant metadata, the
    /// response with `model_spec` naming the client's model.
    fn relayed<T: Message>(
        &self,
        ext: &tonic::Extensions,
        model: String,
        version: Option<String>,
        (bytes_in, body_sha256): (u64, Option<String>),
        a: Answer<T>,
        spec_of: fn(&mut T) -> Option<&mut sv::ModelSpec>,
    ) -> Result<Response<T>, Status> {
        let note = ext.get::<SharedNote>();
        note_inference(note, model.clone(), version, bytes_in, body_sha256, &a, |r| r.encoded_len());
        let info = AnswerInfo::of(&a);
        let mut out = a.result.map_err(|e| respond::grpc_status(&e))?;
        if let Some(s) = spec_of(&mut out) {
            s.name = model;
        }
        let mut resp = Response::new(out);
        answer_metadata(resp.metadata_mut().as_mut(), a.variant, &info);
        Ok(resp)
    }

    /// MultiInference, checked as TF Serving checks its tasks; every task
    /// asks for a classify or regress signature, which no model here has.
    fn multi_inference_refusal(&self, ext: &tonic::Extensions, m: &sv::MultiInferenceRequest) -> Error {
        match self.check_tasks(ext, m) {
            Err(e) => e,
            Ok(model) => match m.tasks[0].method_name.as_str() {
                "tensorflow/serving/classify" => shared::refuse_method(TfMethod::Classify, model, "Predict"),
                "tensorflow/serving/regress" => shared::refuse_method(TfMethod::Regress, model, "Predict"),
                other => Error::new(
                    crate::error::ErrorKind::NotImplemented,
                    format!("Unsupported signature method_name: {other}"),
                ),
            },
        }
    }

    /// The tasks' checks; the one model they all name.
    fn check_tasks<'m>(&self, ext: &tonic::Extensions, m: &'m sv::MultiInferenceRequest) -> Result<&'m str, Error> {
        let table = self.shared.table.load_full();
        let p = principal(ext);
        if m.tasks.is_empty() {
            return Err(Error::bad_request("Tasks field is empty."));
        }
        let mut model: Option<&'m str> = None;
        let mut signatures = BTreeSet::new();
        for task in &m.tasks {
            let spec = task.model_spec.as_ref().ok_or_else(|| Error::bad_request("Missing ModelSpec"))?;
            if spec.name.is_empty() {
                return Err(Error::bad_request("Found ModelSpec with an empty model name."));
            }
            match model {
                Some(name) if name != spec.name => {
                    return Err(Error::bad_request(
                        "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
                    ))
                }
                _ => model = Some(&spec.name),
            }
            let signature = if spec.signature_name.is_empty() { tfs::DEFAULT_SIGNATURE } else { &spec.signature_name };
            if !signatures.insert(signature) {
                return Err(Error::bad_request(format!("Duplicate evaluation of signature: {signature}")));
            }
            pipeline::authorize(p.as_deref(), &spec.name, None, Action::Infer)?;
            let named = Named::of(spec);
            check_version(&spec.name, &named)?;
            let r = shared::route(&table, &spec.name, named.servable())?;
            if let Named::Label(l) = &named {
                shared::label_variant(r, l)?;
            }
            if signature != tfs::DEFAULT_SIGNATURE {
                return Err(Error::bad_request(format!("Requested signature not found in model graph: {signature}")));
            }
        }
        Ok(model.unwrap_or_default())
    }
}

#[tonic::async_trait]
impl sv::prediction_service_server::PredictionService for TfFrontEnd {
    async fn classify(
        &self,
        request: Request<sv::ClassificationRequest>,
    ) -> Result<Response<sv::ClassificationResponse>, Status> {
        let (md, ext, m) = request.into_parts();
        let headers = md.into_headers();
        let (model, version, bytes_in) = described(m.model_spec.as_ref(), m.encoded_len());
        let body_sha256 = self.shared.guards.body_hash.then(|| crate::access_log::body_hash(&m.encode_to_vec()));
        let client = ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip());
        let table = self.shared.table.load_full();
        let p = principal(&ext);
        let spec = m.model_spec.clone();
        let run = |relay, target, md| async move { TfRelay::classify(relay, &target, m, md).await };
        let a = self.relay_call(&headers, &table, spec, TfMethod::Classify, bytes_in, p.as_deref(), client, run).await;
        self.relayed(&ext, model, version, (bytes_in, body_sha256), a, |r| r.model_spec.as_mut())
    }

    async fn regress(
        &self,
        request: Request<sv::RegressionRequest>,
    ) -> Result<Response<sv::RegressionResponse>, Status> {
        let (md, ext, m) = request.into_parts();
        let headers = md.into_headers();
        let (model, version, bytes_in) = described(m.model_spec.as_ref(), m.encoded_len());
        let body_sha256 = self.shared.guards.body_hash.then(|| crate::access_log::body_hash(&m.encode_to_vec()));
        let client = ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip());
        let table = self.shared.table.load_full();
        let p = principal(&ext);
        let spec = m.model_spec.clone();
        let run = |relay, target, md| async move { TfRelay::regress(relay, &target, m, md).await };
        let a = self.relay_call(&headers, &table, spec, TfMethod::Regress, bytes_in, p.as_deref(), client, run).await;
        self.relayed(&ext, model, version, (bytes_in, body_sha256), a, |r| r.model_spec.as_mut())
    }

    async fn predict(&self, request: Request<sv::PredictRequest>) -> Result<Response<sv::PredictResponse>, Status> {
        let (md, ext, msg) = request.into_parts();
        let headers = md.into_headers();
        let p = principal(&ext);
        let client = ext.get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.ip());
        let spec = msg.model_spec.as_ref();
        let model = spec.map(|s| s.name.clone()).unwrap_or_default();
        let version = spec.map(Named::of).and_then(|n| match n {
            Named::Version(v) => Some(v),
            _ => None,
        });
        let bytes_in = msg.encoded_len() as u64;
        let body_sha256 = self.shared.guards.body_hash.then(|| crate::access_log::body_hash(&msg.encode_to_vec()));
        let table = self.shared.table.load_full();
        let a = self.predict_call(&headers, &table, msg, p.as_deref(), client).await;
        let note = ext.get::<SharedNote>();
        note_inference(note, model, version, bytes_in, body_sha256, &a, |r| r.encoded_len());
        let info = AnswerInfo::of(&a);
        let mut resp = Response::new(a.result.map_err(|e| respond::grpc_status(&e))?);
        answer_metadata(resp.metadata_mut().as_mut(), a.variant, &info);
        Ok(resp)
    }

    async fn multi_inference(
        &self,
        request: Request<sv::MultiInferenceRequest>,
    ) -> Result<Response<sv::MultiInferenceResponse>, Status> {
        let (_, ext, m) = request.into_parts();
        let e = self.multi_inference_refusal(&ext, &m);
        let model = m.tasks.first().and_then(|t| t.model_spec.as_ref()).map_or("", |s| s.name.as_str());
        note_call(&ext, model, Some(&e));
        Err(respond::grpc_status(&e))
    }

    async fn get_model_metadata(
        &self,
        request: Request<sv::GetModelMetadataRequest>,
    ) -> Result<Response<sv::GetModelMetadataResponse>, Status> {
        let (md, ext, m) = request.into_parts();
        let headers = md.into_headers();
        let table = self.shared.table.load_full();
        let p = principal(&ext);
        let model = m.model_spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = async {
            let spec = model_spec(m.model_spec)?;
            if m.metadata_field.is_empty() {
                return Err(Error::bad_request("GetModelMetadataRequest must specify at least one metadata_field"));
            }
            if let Some(f) = m.metadata_field.iter().find(|f| *f != SIGNATURE_DEF_FIELD) {
                return Err(Error::bad_request(format!("Metadata field {f} is not supported")));
            }
            let named = Named::of(&spec);
            check_version(&spec.name, &named)?;
            let read = shared::model_metadata(&headers, &table, &spec.name, named.servable(), p.as_deref()).await?;
            let map = tfs::signature_def_map(&read.meta).map_err(Error::unencodable)?;
            let any = prost_types::Any { type_url: SIGNATURE_DEF_MAP_URL.to_string(), value: map.encode_to_vec() };
            let out = sv::GetModelMetadataResponse {
                model_spec: Some(version_spec(&spec.name, read.version.parse().ok(), "")),
                metadata: HashMap::from([(SIGNATURE_DEF_FIELD.to_string(), any)]),
            };
            Ok((out, read.variant))
        }
        .await;
        note_call(&ext, &model, result.as_ref().err());
        let (out, variant) = result.map_err(|e| respond::grpc_status(&e))?;
        let mut resp = Response::new(out);
        resp.metadata_mut().as_mut().insert(crate::headers::VARIANT_HEADER, variant);
        Ok(resp)
    }
}

/// The model and version a request names, and its size, for its access line.
fn described(spec: Option<&sv::ModelSpec>, len: usize) -> (String, Option<String>, u64) {
    let model = spec.map(|s| s.name.clone()).unwrap_or_default();
    let version = spec.map(Named::of).and_then(|n| match n {
        Named::Version(v) => Some(v),
        _ => None,
    });
    (model, version, len as u64)
}

/// One version's `ModelVersionStatus` (AVAILABLE, or UNKNOWN with UNAVAILABLE and why), as on REST.
fn status_entry(s: &tfs::VersionState) -> sv::ModelVersionStatus {
    let (state, code, message) = match &s.unavailable {
        None => (sv::model_version_status::State::Available, TfCode::Ok, String::new()),
        Some(why) => (sv::model_version_status::State::Unknown, TfCode::Unavailable, why.clone()),
    };
    sv::ModelVersionStatus {
        version: s.version.parse().unwrap_or(0),
        state: state as i32,
        status: Some(sv::StatusProto { error_code: code as i32, error_message: message }),
    }
}

#[tonic::async_trait]
impl sv::model_service_server::ModelService for TfFrontEnd {
    async fn get_model_status(
        &self,
        request: Request<sv::GetModelStatusRequest>,
    ) -> Result<Response<sv::GetModelStatusResponse>, Status> {
        let (md, ext, m) = request.into_parts();
        let headers = md.into_headers();
        let table = self.shared.table.load_full();
        let p = principal(&ext);
        let model = m.model_spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = async {
            let spec = model_spec(m.model_spec)?;
            let named = Named::of(&spec);
            check_version(&spec.name, &named)?;
            shared::version_states(&headers, &table, &spec.name, named.servable(), p.as_deref()).await
        }
        .await;
        note_call(&ext, &model, result.as_ref().err());
        let states = result.map_err(|e| respond::grpc_status(&e))?;
        Ok(Response::new(sv::GetModelStatusResponse {
            model_version_status: states.iter().map(status_entry).collect(),
        }))
    }

    async fn handle_reload_config_request(
        &self,
        _: Request<sv::ReloadConfigRequest>,
    ) -> Result<Response<sv::ReloadConfigResponse>, Status> {
        Err(Status::unimplemented(
            "Switchyard does not take TF Serving's ModelServerConfig: its configuration file is reloaded \
             when it changes, on SIGHUP, or through its control API (POST /reload)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(choice: Option<VersionChoice>) -> sv::ModelSpec {
        sv::ModelSpec { name: "m".into(), version_choice: choice, signature_name: String::new() }
    }

    #[test]
    fn model_spec_names_the_servable() {
        let v = |value| Some(VersionChoice::Version(value));
        assert_eq!(Named::of(&spec(None)), Named::Latest);
        assert_eq!(Named::of(&spec(v(0))), Named::Latest);
        assert_eq!(Named::of(&spec(v(3))), Named::Version("3".into()));
        assert_eq!(Named::of(&spec(Some(VersionChoice::VersionLabel("canary".into())))), Named::Label("canary".into()));
        assert_eq!(Named::of(&spec(Some(VersionChoice::VersionLabel(String::new())))), Named::Latest);
        let e = check_version("m", &Named::of(&spec(v(-2)))).unwrap_err();
        assert_eq!(e.message, "Servable not found for request: Specific(m, -2)");
    }

    #[test]
    fn sets_print_sorted_as_tf_does() {
        assert_eq!(set_text(["b", "a", "c"]), "a,b,c");
        assert_eq!(set_text([]), "");
    }

    #[test]
    fn status_entries() {
        let ok = status_entry(&tfs::VersionState { version: "2".into(), unavailable: None });
        assert_eq!((ok.version, ok.state), (2, sv::model_version_status::State::Available as i32));
        let down = status_entry(&tfs::VersionState { version: "1".into(), unavailable: Some("down".into()) });
        assert_eq!(down.state, sv::model_version_status::State::Unknown as i32);
        assert_eq!(down.status.unwrap().error_code, TfCode::Unavailable as i32);
    }
}
