//! Remote KServe V2 server over gRPC (Triton, MLServer): a tonic channel per
//! endpoint (HTTP/2, requests multiplexed on one connection), each call on an
//! endpoint picked by load with ejection, probes and a retry budget
//! (`backend::health`, as for `v2-http`), the backend's timeout sent as the
//! `grpc-timeout` deadline and enforced here too, tensors sent raw. Also the
//! client behind the front end's pass-through RPCs (ModelConfig,
//! ModelStatistics, Repository*). A `dns:` backend's set is kept current by
//! `backend::dns`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchyard_config::{ResolverConfig, V2GrpcBackend as Config};
use tonic::transport::Channel;
use tonic::Status;

use super::affinity::Affinity;
use super::contract::{Backend, GrpcPassthrough, ModelTarget};
use super::forward::Forwarding;
use super::grpc_pool::{ChannelProbe, GrpcPool, GrpcPoolConfig, Idempotent};
use crate::codec::grpc::{self, pb};
use crate::error::BackendError;
use crate::tensor::{InferRequest, InferResponse};

type Client = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

/// How long a readiness probe of the backend may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct V2GrpcBackend {
    /// The endpoints' channels, picked per call by load (`backend::grpc_pool`).
    pool: GrpcPool,
    max_message_bytes: usize,
    timeout: Duration,
    forward: Forwarding,
    /// Whether the server is Triton, whose `ModelStreamInfer` answers
    /// `ModelStreamInferResponse` (MLServer's answers bare `ModelInferResponse`s):
    /// learnt from its ServerMetadata on first need.
    triton: tokio::sync::OnceCell<bool>,
}

impl V2GrpcBackend {
    /// Builds the channels (connections are made lazily, on first use); needs a tokio runtime.
    pub fn new(name: &str, cfg: &Config, resolver: &ResolverConfig) -> Result<V2GrpcBackend, String> {
        let probe: ChannelProbe = Arc::new(|channel, timeout| {
            Box::pin(async move {
                let mut client = Client::new(channel);
                let call = client.server_ready(V2GrpcBackend::request(pb::ServerReadyRequest {}, timeout));
                matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(r)) if r.get_ref().ready)
            })
        });
        let pool = GrpcPoolConfig {
            endpoints: &cfg.endpoints,
            connect_timeout: cfg.connect_timeout,
            health: &cfg.health,
            tls: cfg.tls.as_ref(),
        };
        Ok(V2GrpcBackend {
            pool: GrpcPool::new(name, pool, resolver, probe)?,
            max_message_bytes: cfg.max_message_bytes,
            timeout: cfg.timeout,
            forward: Forwarding::new(&cfg.forward_headers),
            triton: tokio::sync::OnceCell::new(),
        })
    }

    /// A request carrying `timeout` as its `grpc-timeout` deadline.
    fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
        super::grpc_pool::request(msg, timeout)
    }

    /// The V2 client on one endpoint's channel, with the backend's message size limit.
    fn client(&self, channel: Channel) -> Client {
        let max = self.max_message_bytes;
        Client::new(channel).max_decoding_message_size(max).max_encoding_message_size(max)
    }

    /// `GrpcPool::call` with the V2 client.
    async fn call<T, F, Fut>(&self, timeout: Duration, idempotent: Idempotent, f: F) -> Result<T, BackendError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(timeout, idempotent, None, f).await
    }

    /// `GrpcPool::call_on` with the V2 client.
    async fn call_on<T, F, Fut>(
        &self,
        timeout: Duration,
        idempotent: Idempotent,
        affinity: Option<Affinity<'_>>,
        f: F,
    ) -> Result<T, BackendError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.pool.call_on(timeout, idempotent, affinity, |ch| f(self.client(ch))).await
    }

    /// One inference, on the sequence's pinned endpoint when `affinity` says so.
    async fn infer_on(
        &self,
        target: &ModelTarget,
        mut req: InferRequest,
        affinity: Option<Affinity<'_>>,
    ) -> Result<InferResponse, BackendError> {
        let client_metadata = std::mem::take(&mut req.metadata);
        let msg = grpc::encode_request(req, &target.name, target.version.as_deref());
        let md = super::grpc_pool::metadata(client_metadata);
        let timeout = self.timeout;
        // Tensor contents are `Bytes`: a second attempt's copy of the message shares them.
        let resp = self
            .call_on(timeout, Idempotent::No, affinity, |mut client| {
                let request = super::grpc_pool::with_metadata(msg.clone(), &md, timeout);
                async move { client.model_infer(request).await }
            })
            .await?;
        grpc::decode_response(resp).map_err(|e| BackendError::Protocol(e.to_string()))
    }
}

impl V2GrpcBackend {
    /// `GrpcPool::relay` with the V2 client.
    async fn relay<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.pool.relay(|ch| f(self.client(ch))).await
    }
}

/// Pass-through: the backend's answer or its status, unchanged.
#[async_trait]
impl GrpcPassthrough for V2GrpcBackend {
    async fn model_config(&self, req: pb::ModelConfigRequest) -> Result<pb::ModelConfigResponse, Status> {
        let t = self.timeout;
        self.relay(|mut c| async move { c.model_config(Self::request(req, t)).await }).await
    }

    async fn model_statistics(&self, req: pb::ModelStatisticsRequest) -> Result<pb::ModelStatisticsResponse, Status> {
        let t = self.timeout;
        self.relay(|mut c| async move { c.model_statistics(Self::request(req, t)).await }).await
    }

    async fn repository_index(&self, req: pb::RepositoryIndexRequest) -> Result<pb::RepositoryIndexResponse, Status> {
        let t = self.timeout;
        self.relay(|mut c| async move { c.repository_index(Self::request(req, t)).await }).await
    }

    async fn repository_model_load(
        &self,
        req: pb::RepositoryModelLoadRequest,
    ) -> Result<pb::RepositoryModelLoadResponse, Status> {
        let t = self.timeout;
        self.relay(|mut c| async move { c.repository_model_load(Self::request(req, t)).await }).await
    }

    async fn repository_model_unload(
        &self,
        req: pb::RepositoryModelUnloadRequest,
    ) -> Result<pb::RepositoryModelUnloadResponse, Status> {
        let t = self.timeout;
        self.relay(|mut c| async move { c.repository_model_unload(Self::request(req, t)).await }).await
    }

    async fn relays_streams(&self) -> bool {
        if let Some(t) = self.triton.get() {
            return *t;
        }
        let ask = |mut c: Client| async move {
            c.server_metadata(Self::request(pb::ServerMetadataRequest {}, READY_PROBE_TIMEOUT)).await
        };
        match self.call(READY_PROBE_TIMEOUT, Idempotent::Yes, ask).await {
            Ok(m) => *self.triton.get_or_init(|| async move { m.name == "triton" }).await,
            // Not known yet: asked again next time.
            Err(_) => false,
        }
    }

    async fn model_stream_infer(
        &self,
        req: pb::ModelInferRequest,
        metadata: http::HeaderMap,
    ) -> Result<tonic::Streaming<pb::ModelStreamInferResponse>, Status> {
        // The deadline covers every response of the request, the last included.
        let mut request = Self::request(tonic::codegen::tokio_stream::once(req), self.timeout);
        let md = request.metadata_mut().as_mut();
        for (k, v) in metadata.iter() {
            md.append(k.clone(), v.clone());
        }
        // On an endpoint picked by load; a stream that cannot open counts against that endpoint's health.
        self.relay(|mut c| async move { c.model_stream_infer(request).await }).await
    }
}

#[async_trait]
impl Backend for V2GrpcBackend {
    async fn server_metadata(&self) -> Option<Result<serde_json::Value, BackendError>> {
        let ask = |mut c: Client| async move {
            c.server_metadata(Self::request(pb::ServerMetadataRequest {}, READY_PROBE_TIMEOUT)).await
        };
        Some(
            self.call(READY_PROBE_TIMEOUT, Idempotent::Yes, ask)
                .await
                .map(|m| serde_json::json!({"name": m.name, "version": m.version, "extensions": m.extensions})),
        )
    }

    fn kind(&self) -> &'static str {
        "v2-grpc"
    }

    fn forwarding(&self) -> Option<&Forwarding> {
        Some(&self.forward)
    }

    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError> {
        self.infer_on(target, req, None).await
    }

    async fn infer_pinned(
        &self,
        target: &ModelTarget,
        req: InferRequest,
        affinity: Affinity<'_>,
    ) -> Result<InferResponse, BackendError> {
        self.infer_on(target, req, Some(affinity)).await
    }

    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError> {
        let msg = pb::ModelMetadataRequest {
            name: target.name.to_string(),
            version: target.version.as_deref().unwrap_or_default().to_owned(),
        };
        let t = self.timeout;
        let resp = self
            .call(t, Idempotent::Yes, |mut c| {
                let r = Self::request(msg.clone(), t);
                async move { c.model_metadata(r).await }
            })
            .await?;
        Ok(grpc::metadata_to_json(&resp))
    }

    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError> {
        let msg = pb::ModelReadyRequest {
            name: target.name.to_string(),
            version: target.version.as_deref().unwrap_or_default().to_owned(),
        };
        let t = READY_PROBE_TIMEOUT;
        let call = self.call(t, Idempotent::Yes, |mut c| {
            let r = Self::request(msg.clone(), t);
            async move { c.model_ready(r).await }
        });
        match call.await {
            Ok(r) => Ok(r.ready),
            // The server answered (unknown model, say): not ready. Not reaching it is an error.
            Err(BackendError::Grpc { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn ready(&self) -> bool {
        // With active probes, their verdict: no request of its own on the readiness path.
        if self.pool.policy().health_check.is_some() {
            return self.pool.any_in_rotation();
        }
        let t = READY_PROBE_TIMEOUT;
        let call = self.call(t, Idempotent::Yes, |mut c| async move {
            c.server_ready(Self::request(pb::ServerReadyRequest {}, t)).await
        });
        matches!(call.await, Ok(r) if r.ready)
    }

    fn grpc_passthrough(&self) -> Option<&dyn GrpcPassthrough> {
        Some(self)
    }
}
