//! Remote KServe V2 server over gRPC (Triton, MLServer): one tonic channel
//! (HTTP/2, requests multiplexed on a connection per endpoint, several
//! endpoints balanced by power of two choices over pending requests), the
//! backend's timeout sent as the `grpc-timeout` deadline and enforced here
//! too, tensors sent raw. Also the client behind the front end's
//! pass-through RPCs (ModelConfig, ModelStatistics, Repository*). A `dns:`
//! backend's channel balances over a set that `backend::dns` keeps current.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchyard_config::{Endpoints, ResolverConfig, V2GrpcBackend as Config};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::contract::{Backend, GrpcPassthrough, ModelTarget};
use super::dns::{self, DnsWatch};
use super::forward::Forwarding;
use crate::codec::grpc::{self, pb};
use crate::error::{error_chain, BackendError};
use crate::tensor::{InferRequest, InferResponse};

type Client = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

/// How long a readiness probe of the backend may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings keep idle connections known-good (and find dead ones before a request does).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Endpoint changes a `dns:` backend's channel can have pending (a change is a few per pod).
const DNS_CHANGES: usize = 1024;

pub struct V2GrpcBackend {
    name: Arc<str>,
    /// `host:port, ...` (or `dns host:port`) for error messages.
    endpoints: String,
    client: Client,
    /// Feeds the channel's endpoint set for a `dns:` backend; stops with the backend.
    _dns: Option<DnsWatch>,
    /// How many endpoints the channel balances over (a `dns:` set may be empty:
    /// then calls fail at once instead of waiting out their deadline).
    live: Arc<AtomicUsize>,
    timeout: Duration,
    forward: Forwarding,
}

impl V2GrpcBackend {
    /// Builds the channel (connections are made lazily, on first use); needs a tokio runtime.
    pub fn new(name: &str, cfg: &Config, resolver: &ResolverConfig) -> Result<V2GrpcBackend, String> {
        let connect_timeout = cfg.connect_timeout;
        let endpoint = |authority: &str| {
            channel_endpoint(authority, connect_timeout)
                .map_err(|e| format!("backend `{name}`: endpoint `{authority}`: {e}"))
        };
        let live = Arc::new(AtomicUsize::new(0));
        let (channel, source, dns) = match &cfg.endpoints {
            Endpoints::List(list) => {
                let mut endpoints = Vec::with_capacity(list.len());
                for up in list {
                    endpoints.push(endpoint(&up.authority)?);
                }
                live.store(endpoints.len(), Ordering::Relaxed);
                let channel = match endpoints.len() {
                    0 => return Err(format!("backend `{name}` has no endpoints")),
                    1 => endpoints[0].connect_lazy(),
                    _ => Channel::balance_list(endpoints.into_iter()),
                };
                (channel, list.iter().map(|u| u.authority.as_str()).collect::<Vec<_>>().join(", "), None)
            }
            Endpoints::Dns(d) => {
                let (channel, tx) = Channel::balance_channel::<std::net::SocketAddr>(DNS_CHANGES);
                let mut current = std::collections::BTreeSet::new();
                let (backend, count) = (name.to_string(), live.clone());
                let apply = move |addrs: &std::collections::BTreeSet<std::net::SocketAddr>| {
                    for gone in current.difference(addrs) {
                        if tx.try_send(Change::Remove(*gone)).is_err() {
                            tracing::error!(backend = %backend, endpoint = %gone, "endpoint change not applied");
                        }
                    }
                    for new in addrs.difference(&current) {
                        let sent = channel_endpoint(&new.to_string(), connect_timeout)
                            .is_ok_and(|ep| tx.try_send(Change::Insert(*new, ep)).is_ok());
                        if !sent {
                            tracing::error!(backend = %backend, endpoint = %new, "endpoint change not applied");
                        }
                    }
                    current = addrs.clone();
                    count.store(current.len(), Ordering::Relaxed);
                };
                let resolver = dns::resolver(resolver).map_err(|e| format!("backend `{name}`: {e}"))?;
                let watch = DnsWatch::spawn(Arc::from(name), d.clone(), resolver, apply);
                (channel, format!("dns {}:{}", d.host, d.port), Some(watch))
            }
        };
        let client = Client::new(channel)
            .max_decoding_message_size(cfg.max_message_bytes)
            .max_encoding_message_size(cfg.max_message_bytes);
        Ok(V2GrpcBackend {
            name: Arc::from(name),
            endpoints: source,
            client,
            _dns: dns,
            live,
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
        if self.live.load(Ordering::Relaxed) == 0 {
            return Err(BackendError::Unavailable(format!(
                "backend `{}` has no endpoints ({})",
                self.name, self.endpoints
            )));
        }
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

/// One replica of the channel, with the connection settings every replica shares.
fn channel_endpoint(authority: &str, connect_timeout: Duration) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{authority}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(true))
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
