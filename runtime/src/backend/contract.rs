//! What every backend is: the `Backend` trait the data plane calls, the
//! target it is asked for, the gRPC pass-through a `v2-grpc` backend
//! offers, and the classify/regress relay a `tfserving` backend offers. A leaf: backends implement it, the data plane calls it.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use tonic::Status;

use super::affinity::Affinity;
use super::forward::Forwarding;
use super::triton::TritonModels;
use crate::codec::grpc::pb;
use crate::codec::tfserving::pb::tensorflow::serving as tf;
use crate::error::BackendError;
use crate::tensor::{InferRequest, InferResponse};

/// The model (and version) a backend is asked for, after a variant's rewrite.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelTarget {
    pub name: Arc<str>,
    pub version: Option<Arc<str>>,
}

#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `v2-http`, `onnx`, ...: for metrics and status.
    fn kind(&self) -> &'static str;

    /// Runs one inference request.
    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError>;

    /// Runs one request of a Triton sequence: on the endpoint its pin names
    /// (its first request places it). A backend with one place to run
    /// (the embedded runtime) has nothing to pin and just runs it.
    async fn infer_pinned(
        &self,
        target: &ModelTarget,
        req: InferRequest,
        _affinity: Affinity<'_>,
    ) -> Result<InferResponse, BackendError> {
        self.infer(target, req).await
    }

    /// V2 model metadata object (`GET /v2/models/{m}[/versions/{v}]`).
    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError>;

    /// Whether that model (version) can take requests now.
    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError>;

    /// Whether the backend as a whole can take requests now.
    async fn ready(&self) -> bool;

    /// What `target` resolves to right now, when the backend knows it exactly
    /// (the embedded runtime: the loaded version and its file). The response
    /// cache keys on it, so a hot-added or replaced version never serves an
    /// older version's answers. `None`: unknown (remote servers), and the cache
    /// falls back to the `model_version` the answers report. Must be cheap.
    fn model_identity(&self, _target: &ModelTarget) -> Option<u64> {
        None
    }

    /// Which of the client's request metadata the backend sends on, if any:
    /// the data plane fills `InferRequest::metadata` through it (and only
    /// then), so nothing is copied that would not be sent.
    fn forwarding(&self) -> Option<&Forwarding> {
        None
    }

    /// The KServe V2 gRPC RPCs a `v2-grpc` backend relays as they are: the
    /// gRPC front end passes ModelConfig, ModelStatistics and Repository*
    /// through it.
    fn grpc_passthrough(&self) -> Option<&dyn GrpcPassthrough> {
        None
    }

    /// The remote server's own V2 server metadata (`name`, `version`,
    /// `extensions`); `None` for a backend that is no server of its own.
    async fn server_metadata(&self) -> Option<Result<serde_json::Value, BackendError>> {
        None
    }

    /// Triton's model configuration, statistics and repository API, for a
    /// backend that owns its models (the embedded runtime).
    fn triton(&self) -> Option<&dyn TritonModels> {
        None
    }

    /// TF Serving's Classify and Regress, relayed to a backend that is a TF
    /// Serving server (`kind: tfserving`). `None`: the backend serves predict
    /// signatures only, and the front ends refuse those methods as TF Serving does.
    fn tf_relay(&self) -> Option<&dyn TfRelay> {
        None
    }
}

/// A TF Serving method beside Predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TfVerb {
    Classify,
    Regress,
}

impl TfVerb {
    /// The REST verb (`:classify`) and gRPC method name.
    pub fn as_str(self) -> &'static str {
        match self {
            TfVerb::Classify => "classify",
            TfVerb::Regress => "regress",
        }
    }
}

/// TF Serving's Classify and Regress relayed as they are to a TF Serving
/// backend, the model named as the variant rewrites it (`target`). Each
/// transport relays its own: tf.Example inputs are not converted between
/// REST's JSON and gRPC's protobuf, so a call on the other transport is an
/// `InvalidInput` that says so. `metadata`: the client's, already filtered by
/// `Backend::forwarding`.
#[async_trait]
pub trait TfRelay: Send + Sync {
    /// REST: the client's JSON body to `POST /v1/models/{target}[/versions/{v}]:{verb}`;
    /// TF Serving's status and body as it answered (its 4xx included).
    async fn rest(
        &self,
        target: &ModelTarget,
        verb: TfVerb,
        body: bytes::Bytes,
        metadata: http::HeaderMap,
    ) -> Result<(http::StatusCode, bytes::Bytes), BackendError>;

    /// gRPC `PredictionService/Classify`, `model_spec` rewritten to `target`.
    async fn classify(
        &self,
        target: &ModelTarget,
        req: tf::ClassificationRequest,
        metadata: http::HeaderMap,
    ) -> Result<tf::ClassificationResponse, BackendError>;

    /// gRPC `PredictionService/Regress`, `model_spec` rewritten to `target`.
    async fn regress(
        &self,
        target: &ModelTarget,
        req: tf::RegressionRequest,
        metadata: http::HeaderMap,
    ) -> Result<tf::RegressionResponse, BackendError>;
}

/// KServe V2 gRPC RPCs relayed unchanged to a gRPC backend: its answer or its status.
#[async_trait]
pub trait GrpcPassthrough: Send + Sync {
    async fn model_config(&self, req: pb::ModelConfigRequest) -> Result<pb::ModelConfigResponse, Status>;
    async fn model_statistics(&self, req: pb::ModelStatisticsRequest) -> Result<pb::ModelStatisticsResponse, Status>;
    async fn repository_index(&self, req: pb::RepositoryIndexRequest) -> Result<pb::RepositoryIndexResponse, Status>;
    async fn repository_model_load(
        &self,
        req: pb::RepositoryModelLoadRequest,
    ) -> Result<pb::RepositoryModelLoadResponse, Status>;
    async fn repository_model_unload(
        &self,
        req: pb::RepositoryModelUnloadRequest,
    ) -> Result<pb::RepositoryModelUnloadResponse, Status>;

    /// Whether `model_stream_infer` may be used: the server streams Triton's
    /// `ModelStreamInferResponse` (Triton does; MLServer streams bare responses).
    async fn relays_streams(&self) -> bool;

    /// Sends `req` alone on a `ModelStreamInfer` stream of the backend (then
    /// half-closes it) and returns every response the backend sends for it —
    /// zero, one or many for a decoupled model — until the backend ends the stream.
    /// `metadata`: the client's, already filtered by `forwarding`.
    async fn model_stream_infer(
        &self,
        req: pb::ModelInferRequest,
        metadata: http::HeaderMap,
    ) -> Result<tonic::Streaming<pb::ModelStreamInferResponse>, Status>;
}

pub type Backends = BTreeMap<Arc<str>, Arc<dyn Backend>>;
