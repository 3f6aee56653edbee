//! Remote KServe V2 server over gRPC (Triton, MLServer): one tonic channel
//! (HTTP/2, requests multiplexed on a connection per endpoint, several
//! endpoints balanced by power of two choices over pending requests), the
//! backend's timeout sent as the `grpc-timeout` deadline and enforced here
//! too, tensors sent raw. Also the client behind the front end's
//! pass-through RPCs (ModelConfig, ModelStatistics, Repository*).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchyard_config::V2GrpcBackend as Config;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::contract::{Backend, GrpcPassthrough, ModelTarget};
use super::forward::Forwarding;
use crate::codec::grpc::{self, pb};
use crate::error::{error_chain, BackendError};
use crate::tensor::{InferRequest, InferResponse};

type Client = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

/// How long a readiness probe of the backend may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings keep idle connections known-good (and find dead ones before a request does).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

pub struct V2GrpcBackend {
    name: Arc<str>,
    /// `host:port, ...` for error messages.
    endpoints: String,
    client: Client,
    timeout: Duration,
    forward: Forwarding,
}

impl V2GrpcBackend {
    /// Builds the channel (connections are made lazily, on first use); needs a tokio runtime.
    pub fn new(name: &str, cfg: &Config) -> Result<V2GrpcBackend, String> {
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for up in &cfg.endpoints {
            let ep = Endpoint::from_shared(format!("http://{}", up.authority))
                .map_err(|e| format!("backend `{name}`: endpoint `{}`: {e}", up.authority))?
                .connect_timeout(cfg.connect_timeout)
                .tcp_nodelay(true)
                .http2_adaptive_window(true)
                .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
                .keep_alive_while_idle(true);
            endpoints.push(ep);
        }
        let channel = match endpoints.len() {
            0 => return Err(format!("backend `{name}` has no endpoints")),
            1 => endpoints[0].connect_lazy(),
            _ => Channel::balance_list(endpoints.into_iter()),
        };
        let client = Client::new(channel)
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        Ok(V2GrpcBackend {
            name: Arc::from(name),
            endpoints: cfg.endpoints.iter().map(|u| u.authority.as_str()).collect::<Vec<_>>().join(", "),
            client,
            timeout: cfg.timeout,
            forward: Forwarding::new(&cfg.forward_headers),
        })
    }

    /// A request carrying `timeout` as its `grpc-timeout` deadline.
    fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        r
    }

    /// Runs one call with the deadline enforced locally as well.
    async fn call<T, F>(&self, timeout: Duration, f: F) -> Result<T, BackendError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(timeout, f).await {
            Err(_) => Err(BackendError::Timeout(timeout)),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(self.error(s, timeout)),
        }
    }

    /// A backend's gRPC status → who failed, in the runtime's terms.
    fn error(&self, s: Status, timeout: Duration) -> BackendError {
        let msg = s.message().to_owned();
        match s.code() {
            // A transport failure carries its cause; a status the server sent does not.
            Code::Unavailable if std::error::Error::source(&s).is_some() => BackendError::Connect {
                endpoint: format!("{} ({})", self.name, self.endpoints),
                message: error_chain(&s),
            },
            Code::Unavailable => BackendError::Unavailable(format!("backend `{}`: {msg}", self.name)),
            // tonic's own enforcement of the deadline we sent answers CANCELLED "Timeout expired".
            Code::DeadlineExceeded | Code::Cancelled => BackendError::Timeout(timeout),
            // The server's own answer: its code travels on unchanged (gRPC clients get it as is).
            code => BackendError::Grpc { code: code as i32, message: msg },
        }
    }
}

/// Pass-through: the backend's answer or its status, unchanged.
#[async_trait]
impl GrpcPassthrough for V2GrpcBackend {
    async fn model_config(&self, req: pb::ModelConfigRequest) -> Result<pb::ModelConfigResponse, Status> {
        self.client.clone().model_config(Self::request(req, self.timeout)).await.map(|r| r.into_inner())
    }

    async fn model_statistics(&self, req: pb::ModelStatisticsRequest) -> Result<pb::ModelStatisticsResponse, Status> {
        self.client.clone().model_statistics(Self::request(req, self.timeout)).await.map(|r| r.into_inner())
    }

    async fn repository_index(&self, req: pb::RepositoryIndexRequest) -> Result<pb::RepositoryIndexResponse, Status> {
        self.client.clone().repository_index(Self::request(req, self.timeout)).await.map(|r| r.into_inner())
    }

    async fn repository_model_load(
        &self,
        req: pb::RepositoryModelLoadRequest,
    ) -> Result<pb::RepositoryModelLoadResponse, Status> {
        self.client.clone().repository_model_load(Self::request(req, self.timeout)).await.map(|r| r.into_inner())
    }

    async fn repository_model_unload(
        &self,
        req: pb::RepositoryModelUnloadRequest,
    ) -> Result<pb::RepositoryModelUnloadResponse, Status> {
        self.client.clone().repository_model_unload(Self::request(req, self.timeout)).await.map(|r| r.into_inner())
    }
}

#[async_trait]
impl Backend for V2GrpcBackend {
    fn kind(&self) -> &'static str {
        "v2-grpc"
    }

    fn forwarding(&self) -> Option<&Forwarding> {
        Some(&self.forward)
    }

    async fn infer(&self, target: &ModelTarget, mut req: InferRequest) -> Result<InferResponse, BackendError> {
        let client_metadata = std::mem::take(&mut req.metadata);
        let msg = grpc::encode_request(req, &target.name, target.version.as_deref());
        let mut request = Self::request(msg, self.timeout);
        // Already filtered (`forwarding`): the client's metadata as it may go on.
        if !client_metadata.is_empty() {
            let md = request.metadata_mut().as_mut();
            // A repeated name comes as `None` after its first entry.
            let mut last: Option<http::HeaderName> = None;
            for (k, v) in client_metadata {
                if k.is_some() {
                    last = k;
                }
                if let Some(name) = &last {
                    md.append(name.clone(), v);
                }
            }
        }
        let resp = self.call(self.timeout, self.client.clone().model_infer(request)).await?;
        grpc::decode_response(resp).map_err(|e| BackendError::Protocol(e.to_string()))
    }

    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError> {
        let msg = pb::ModelMetadataRequest {
            name: target.name.to_string(),
            version: target.version.as_deref().unwrap_or_default().to_owned(),
        };
        let resp =
            self.call(self.timeout, self.client.clone().model_metadata(Self::request(msg, self.timeout))).await?;
        Ok(grpc::metadata_to_json(&resp))
    }

    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError> {
        let msg = pb::ModelReadyRequest {
            name: target.name.to_string(),
            version: target.version.as_deref().unwrap_or_default().to_owned(),
        };
        let mut client = self.client.clone();
        match self.call(READY_PROBE_TIMEOUT, client.model_ready(Self::request(msg, READY_PROBE_TIMEOUT))).await {
            Ok(r) => Ok(r.ready),
            // The server answered (unknown model, say): not ready. Not reaching it is an error.
            Err(BackendError::Grpc { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn ready(&self) -> bool {
        let mut client = self.client.clone();
        let call = client.server_ready(Self::request(pb::ServerReadyRequest {}, READY_PROBE_TIMEOUT));
        matches!(self.call(READY_PROBE_TIMEOUT, call).await, Ok(r) if r.ready)
    }

    fn grpc_passthrough(&self) -> Option<&dyn GrpcPassthrough> {
        Some(self)
    }
}
