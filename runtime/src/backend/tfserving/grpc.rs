//! A `tfserving` backend over TF Serving's gRPC API:
//! `PredictionService/Predict` with `TensorProto`s (`tensor_content`; the
//! front end's codec, `codec::tfserving::tensor_proto`),
//! `PredictionService/GetModelMetadata` (`signature_def`) for the signature
//! and `ModelService/GetModelStatus` for readiness, on the channel pool the
//! `v2-grpc` backend uses (`backend::grpc_pool`).

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use switchyard_config::ResolverConfig;
use tonic::transport::Channel;
use tonic::Code;

use super::super::contract::ModelTarget;
use super::super::grpc_pool::{self, GrpcPool, GrpcPoolConfig, Idempotent};
use crate::codec::tfserving::client::{self, TfSignature, TfTensorInfo, TfType};
use crate::codec::tfserving::pb::tensorflow::serving::model_service_client::ModelServiceClient;
use crate::codec::tfserving::pb::tensorflow::serving::model_spec::VersionChoice;
use crate::codec::tfserving::pb::tensorflow::serving::model_version_status::State;
use crate::codec::tfserving::pb::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use crate::codec::tfserving::pb::tensorflow::serving::{
    ClassificationRequest, ClassificationResponse, GetModelMetadataRequest, GetModelStatusRequest, ModelSpec,
    PredictRequest, RegressionRequest, RegressionResponse, SignatureDefMap,
};
use crate::codec::tfserving::pb::tensorflow::TensorInfo;
use crate::codec::tfserving::{tensor_from_proto, tensor_to_proto};
use crate::error::BackendError;
use crate::tensor::{InferRequest, Tensor};

type Predictions = PredictionServiceClient<Channel>;
type Models = ModelServiceClient<Channel>;

/// The model a probe asks about: no server has it, so any answer of its model
/// manager (NOT_FOUND) is the endpoint serving.
const PROBE_MODEL: &str = "switchyard-probe";

pub struct GrpcTransport {
    pool: GrpcPool,
    max_message_bytes: usize,
}

/// Whether a `GetModelStatus` answer says the server's model manager is up.
fn serving<T>(r: &Result<T, tonic::Status>) -> bool {
    match r {
        Ok(_) => true,
        // The server's own NOT_FOUND (a transport failure carries a source).
        Err(s) => s.code() == Code::NotFound && std::error::Error::source(s).is_none(),
    }
}

fn probe_request(timeout: Duration) -> tonic::Request<GetModelStatusRequest> {
    let spec = ModelSpec { name: PROBE_MODEL.into(), ..ModelSpec::default() };
    grpc_pool::request(GetModelStatusRequest { model_spec: Some(spec) }, timeout)
}

impl GrpcTransport {
    pub fn new(
        name: &str,
        cfg: GrpcPoolConfig<'_>,
        max_message_bytes: usize,
        resolver: &ResolverConfig,
    ) -> Result<GrpcTransport, String> {
        let probe: grpc_pool::ChannelProbe = Arc::new(|channel, timeout| {
            Box::pin(async move {
                let mut client = Models::new(channel);
                let call = client.get_model_status(probe_request(timeout));
                matches!(tokio::time::timeout(timeout, call).await, Ok(r) if serving(&r))
            })
        });
        Ok(GrpcTransport { pool: GrpcPool::new(name, cfg, resolver, probe)?, max_message_bytes })
    }

    fn predictions(&self, channel: Channel) -> Predictions {
        let max = self.max_message_bytes;
        Predictions::new(channel).max_decoding_message_size(max).max_encoding_message_size(max)
    }

    /// `ModelSpec` of `target`: TF's versions are integers.
    fn spec(target: &ModelTarget, signature: &str) -> Result<ModelSpec, BackendError> {
        let version = match target.version.as_deref() {
            None => None,
            Some(v) => Some(VersionChoice::Version(v.parse().map_err(|_| {
                BackendError::InvalidInput(format!(
                    "version '{v}' of model '{}': TF Serving's versions are integers",
                    target.name
                ))
            })?)),
        };
        Ok(ModelSpec { name: target.name.to_string(), version_choice: version, signature_name: signature.into() })
    }

    pub async fn signature(
        &self,
        target: &ModelTarget,
        signature: &str,
        timeout: Duration,
    ) -> Result<TfSignature, BackendError> {
        let msg = GetModelMetadataRequest {
            model_spec: Some(Self::spec(target, signature)?),
            metadata_field: vec!["signature_def".into()],
        };
        let resp = self
            .pool
            .call(timeout, Idempotent::Yes, |ch| {
                let mut c = self.predictions(ch);
                let r = grpc_pool::request(msg.clone(), timeout);
                async move { c.get_model_metadata(r).await }
            })
            .await?;
        let any = resp
            .metadata
            .get("signature_def")
            .ok_or_else(|| BackendError::Protocol("model metadata has no signature_def".into()))?;
        let defs = SignatureDefMap::decode(any.value.as_slice())
            .map_err(|e| BackendError::Protocol(format!("signature_def: {e}")))?;
        let Some(def) = defs.signature_def.get(signature) else {
            return Err(client::no_signature(signature, defs.signature_def.keys()));
        };
        let version = ran_version(resp.model_spec);
        Ok(TfSignature { version, inputs: infos(&def.inputs), outputs: infos(&def.outputs) })
    }

    /// `GetModelStatus`: whether the version (any version, for latest) is AVAILABLE.
    pub async fn available(&self, target: &ModelTarget, timeout: Duration) -> Result<bool, BackendError> {
        let msg = GetModelStatusRequest { model_spec: Some(Self::spec(target, "")?) };
        let call = self.pool.call(timeout, Idempotent::Yes, |ch| {
            let mut c = Models::new(ch);
            let r = grpc_pool::request(msg.clone(), timeout);
            async move { c.get_model_status(r).await }
        });
        match call.await {
            Ok(r) => Ok(r.model_version_status.iter().any(|v| v.state == State::Available as i32)),
            // The server answered (no such model or version): not ready. Not reaching it is an error.
            Err(BackendError::Grpc { code, .. }) if code == Code::NotFound as i32 => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn predict(
        &self,
        target: &ModelTarget,
        signature: &str,
        sig: &TfSignature,
        mut req: InferRequest,
        timeout: Duration,
    ) -> Result<(Vec<Tensor>, Option<String>), BackendError> {
        let md = grpc_pool::metadata(std::mem::take(&mut req.metadata));
        let inputs = req
            .inputs
            .iter()
            .map(|t| {
                let p =
                    tensor_to_proto(t).map_err(|e| BackendError::InvalidInput(format!("input '{}': {e}", t.name)))?;
                Ok((t.name.clone(), p))
            })
            .collect::<Result<_, BackendError>>()?;
        let msg = PredictRequest {
            model_spec: Some(Self::spec(target, signature)?),
            inputs,
            output_filter: req.outputs.iter().map(|o| o.name.clone()).collect(),
        };
        // Tensor contents are `Bytes`: a second attempt's copy of the message shares them.
        let mut resp = self
            .pool
            .call(timeout, Idempotent::No, |ch| {
                let mut c = self.predictions(ch);
                let r = grpc_pool::with_metadata(msg.clone(), &md, timeout);
                async move { c.predict(r).await }
            })
            .await?;
        let version = ran_version(resp.model_spec.take());
        let mut out = Vec::new();
        for info in sig.wanted(&req.outputs) {
            let Some(p) = resp.outputs.remove(&info.name) else {
                return Err(BackendError::Protocol(format!("TF Serving's answer has no output '{}'", info.name)));
            };
            let want = info.datatype("output")?;
            let t = tensor_from_proto(&info.name, p, self.max_message_bytes)
                .map_err(|e| BackendError::Protocol(format!("TF Serving's output '{}': {e}", info.name)))?;
            if t.datatype != want {
                return Err(BackendError::Protocol(format!(
                    "TF Serving's output '{}' is {} but its signature says {}",
                    info.name,
                    t.datatype.as_str(),
                    want.as_str()
                )));
            }
            out.push(t);
        }
        Ok((out, version))
    }

    /// `Classify` with `model_spec` naming `target` (the client's signature kept).
    pub async fn classify(
        &self,
        target: &ModelTarget,
        mut msg: ClassificationRequest,
        metadata: http::HeaderMap,
        timeout: Duration,
    ) -> Result<ClassificationResponse, BackendError> {
        Self::respec(target, &mut msg.model_spec)?;
        self.relay(msg, metadata, timeout, |mut c, r| async move { c.classify(r).await }).await
    }

    /// `Regress` with `model_spec` naming `target` (the client's signature kept).
    pub async fn regress(
        &self,
        target: &ModelTarget,
        mut msg: RegressionRequest,
        metadata: http::HeaderMap,
        timeout: Duration,
    ) -> Result<RegressionResponse, BackendError> {
        Self::respec(target, &mut msg.model_spec)?;
        self.relay(msg, metadata, timeout, |mut c, r| async move { c.regress(r).await }).await
    }

    /// Names `target` in a relayed request's `model_spec`, keeping the client's signature.
    fn respec(target: &ModelTarget, spec: &mut Option<ModelSpec>) -> Result<(), BackendError> {
        let signature = spec.take().map(|s| s.signature_name).unwrap_or_default();
        *spec = Some(Self::spec(target, &signature)?);
        Ok(())
    }

    /// One relayed call (never retried: Classify and Regress are not idempotent to us).
    async fn relay<Req, Resp, F, Fut>(
        &self,
        msg: Req,
        metadata: http::HeaderMap,
        timeout: Duration,
        call: F,
    ) -> Result<Resp, BackendError>
    where
        Req: Clone,
        F: Fn(Predictions, tonic::Request<Req>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let md = grpc_pool::metadata(metadata);
        self.pool
            .call(timeout, Idempotent::No, |ch| {
                call(self.predictions(ch), grpc_pool::with_metadata(msg.clone(), &md, timeout))
            })
            .await
    }

    pub async fn ready(&self, timeout: Duration) -> bool {
        // With active probes, their verdict: no request of its own on the readiness path.
        if self.pool.policy().health_check.is_some() {
            return self.pool.any_in_rotation();
        }
        let call = self.pool.call(timeout, Idempotent::Yes, |ch| {
            let mut c = Models::new(ch);
            async move { c.get_model_status(probe_request(timeout)).await }
        });
        match call.await {
            Ok(_) => true,
            Err(BackendError::Grpc { code, .. }) => code == Code::NotFound as i32,
            Err(_) => false,
        }
    }
}

/// The version an answer's `model_spec` names, if it names one.
fn ran_version(spec: Option<ModelSpec>) -> Option<String> {
    match spec?.version_choice {
        Some(VersionChoice::Version(v)) => Some(v.to_string()),
        _ => None,
    }
}

/// A signature's `TensorInfo` map, in name order (a proto map has none).
fn infos(map: &std::collections::HashMap<String, TensorInfo>) -> Vec<TfTensorInfo> {
    let mut list: Vec<TfTensorInfo> = map
        .iter()
        .map(|(key, info)| {
            let shape = match &info.tensor_shape {
                Some(s) if s.unknown_rank => None,
                Some(s) => Some(s.dim.iter().map(|d| d.size).collect()),
                // No shape recorded: TF's unknown shape.
                None => None,
            };
            TfTensorInfo { name: key.clone(), dtype: TfType::from_number(info.dtype), shape }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}
