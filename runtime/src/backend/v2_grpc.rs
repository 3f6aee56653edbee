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
use switchyard_config::{Endpoints, ResolverConfig, V2GrpcBackend as Config};
use switchyard_tls::{ClientTls, Connector};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::affinity::Affinity;
use super::contract::{Backend, GrpcPassthrough, ModelTarget};
use super::dns::{self, DnsWatch};
use super::forward::Forwarding;
use super::health::{Member, Outcome, Pool, Probe, Tasks};
use crate::codec::grpc::{self, pb};
use crate::error::{error_chain, BackendError};
use crate::tensor::{InferRequest, InferResponse};

type Client = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

/// How long a readiness probe of the backend may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// HTTP/2 pings keep idle connections known-good (and find dead ones before a request does).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Whether a call may be sent again to another endpoint once it may have reached one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Idempotent {
    Yes,
    No,
}

pub struct V2GrpcBackend {
    name: Arc<str>,
    /// `host:port, ...` (or `dns host:port`) for error messages.
    endpoints: String,
    /// One lazily connected channel per endpoint, picked per call by
    /// `backend::health`; a call wraps it in the client of its service.
    pool: Arc<Pool<Channel>>,
    /// Largest message either way.
    max_message_bytes: usize,
    /// Feeds the pool for a `dns:` backend; stops with the backend.
    _dns: Option<DnsWatch>,
    /// Probes, outlier sweeps, load scrapes; stop with the backend.
    _health: Tasks,
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
        let max = cfg.max_message_bytes;
        let probe: Probe<Channel> = Arc::new(move |m, timeout| {
            Box::pin(async move {
                let mut client = v2_client(m.transport.clone(), max);
                let call = client.server_ready(V2GrpcBackend::request(pb::ServerReadyRequest {}, timeout));
                matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(r)) if r.get_ref().ready)
            })
        });
        Self::with_probe(name, cfg, resolver, probe)
    }

    /// `new`, with the endpoints' active probe (`health_check`) of the caller's
    /// own: the transport of gRPC servers whose health API is not V2's.
    pub(crate) fn with_probe(
        name: &str,
        cfg: &Config,
        resolver: &ResolverConfig,
        probe: Probe<Channel>,
    ) -> Result<V2GrpcBackend, String> {
        let connect_timeout = cfg.connect_timeout;
        let max = cfg.max_message_bytes;
        // gRPC over TLS offers h2 by ALPN; the files are watched while the backend lives.
        let tls = cfg.tls.as_ref().map(|t| ClientTls::load(t, &[b"h2"], &format!("backend `{name}`"))).transpose()?;
        let connector = Connector::new(Some(connect_timeout), tls.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let member = move |authority: &str| -> Result<Arc<Member<Channel>>, String> {
            let channel = channel_endpoint(scheme, authority, connect_timeout)
                .map_err(|e| format!("endpoint `{authority}`: {e}"))?
                .connect_with_connector_lazy(connector.clone());
            Ok(Arc::new(Member::new(authority.to_string(), channel)))
        };
        let (members, source) = match &cfg.endpoints {
            Endpoints::List(list) => {
                if list.is_empty() {
                    return Err(format!("backend `{name}` has no endpoints"));
                }
                let set = list
                    .iter()
                    .map(|up| member(&up.authority).map_err(|e| format!("backend `{name}`: {e}")))
                    .collect::<Result<Vec<_>, _>>()?;
                (set, list.iter().map(|u| u.authority.as_str()).collect::<Vec<_>>().join(", "))
            }
            Endpoints::Dns(d) => (Vec::new(), format!("dns {}:{}", d.host, d.port)),
        };
        let pool = Arc::new(Pool::new(Arc::from(name), members, cfg.health.clone()));
        let dns = match &cfg.endpoints {
            Endpoints::List(_) => None,
            Endpoints::Dns(d) => {
                let feed = Arc::downgrade(&pool);
                let backend = name.to_string();
                let apply = move |addrs: &std::collections::BTreeSet<std::net::SocketAddr>| {
                    let Some(pool) = feed.upgrade() else { return };
                    let old = pool.members();
                    // An endpoint that stays keeps its connection, load and health state.
                    let set = addrs
                        .iter()
                        .filter_map(|a| {
                            let authority = a.to_string();
                            if let Some(m) = old.iter().find(|m| m.authority == authority) {
                                return Some(m.clone());
                            }
                            member(&authority)
                                .inspect_err(|e| tracing::error!(backend = %backend, error = %e, "endpoint not added"))
                                .ok()
                        })
                        .collect();
                    pool.replace(set);
                };
                let resolver = dns::resolver(resolver).map_err(|e| format!("backend `{name}`: {e}"))?;
                Some(DnsWatch::spawn(Arc::from(name), d.clone(), resolver, apply))
            }
        };
        let scrape_tls = super::health::scrape_tls(&cfg.health, cfg.tls.as_ref(), name)?;
        let health = pool.start(probe, scrape_tls);
        Ok(V2GrpcBackend {
            name: Arc::from(name),
            endpoints: source,
            pool,
            max_message_bytes: max,
            _dns: dns,
            _health: health,
            timeout: cfg.timeout,
            forward: Forwarding::new(&cfg.forward_headers),
            triton: tokio::sync::OnceCell::new(),
        })
    }

    /// With active probes (`health_check`), their verdict on the backend
    /// (an endpoint in rotation); `None` without: the caller asks the server.
    pub(crate) fn probes_decide(&self) -> Option<bool> {
        self.pool.policy().health_check.is_some().then(|| self.pool.any_in_rotation())
    }

    /// Largest message either way (`max_message_bytes`), for a client of another service.
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    /// A request carrying `timeout` as its `grpc-timeout` deadline.
    pub(crate) fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        r
    }

    /// Runs one call on an endpoint picked by load, with the deadline enforced
    /// locally as well; `f` makes the call on a given endpoint's client (again
    /// on another endpoint when the first refused the connection, or for an
    /// idempotent call that failed in transport, within the retry budget).
    async fn call<T, F, Fut>(&self, timeout: Duration, idempotent: Idempotent, f: F) -> Result<T, BackendError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(timeout, idempotent, None, f).await
    }

    /// `call`, for a request of a Triton sequence on its pinned endpoint
    /// (`backend::affinity`): never retried elsewhere once the sequence is placed.
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
        let max = self.max_message_bytes;
        self.call_channel(timeout, idempotent, affinity, |ch| f(v2_client(ch, max))).await
    }

    /// `call_on` for any service of the server: `f` makes the call on the
    /// picked endpoint's channel.
    pub(crate) async fn call_channel<T, F, Fut>(
        &self,
        timeout: Duration,
        idempotent: Idempotent,
        affinity: Option<Affinity<'_>>,
        f: F,
    ) -> Result<T, BackendError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let eps = self.pool.members();
        self.pool.count_request();
        let mut tried: Vec<usize> = Vec::new();
        let pinned = affinity.is_some_and(|a| !a.start);
        loop {
            let i = self
                .pool
                .choose(&eps, &tried, affinity)
                .map_err(|miss| miss.error(&self.name, affinity.expect("a miss needs a pin").pin))?
                .ok_or_else(|| {
                    BackendError::Unavailable(format!("backend `{}` has no endpoints ({})", self.name, self.endpoints))
                })?;
            let call = self.pool.begin(&eps[i]);
            let status = match tokio::time::timeout(timeout, f(call.member().transport.clone())).await {
                Err(_) => {
                    self.pool.finish(&call, Outcome::Failure);
                    return Err(BackendError::Timeout(timeout));
                }
                Ok(Ok(r)) => {
                    self.pool.finish(&call, Outcome::Success);
                    return Ok(r.into_inner());
                }
                Ok(Err(s)) => s,
            };
            let outcome = match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Outcome::Failure,
                Code::Internal | Code::Unknown | Code::DataLoss => Outcome::ServerError,
                _ => Outcome::Success,
            };
            self.pool.finish(&call, outcome);
            tried.push(i);
            let transport = status.code() == Code::Unavailable && std::error::Error::source(&status).is_some();
            let retry =
                transport && !pinned && (idempotent == Idempotent::Yes || refused(&status)) && tried.len() < eps.len();
            if retry && self.pool.may_retry() {
                tracing::debug!(backend = %self.name, endpoint = %eps[i].authority, error = %error_chain(&status), "retrying on another endpoint");
                continue;
            }
            return Err(self.error(status, &eps[i].authority, timeout));
        }
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
        let mut md = tonic::metadata::MetadataMap::new();
        // Already filtered (`forwarding`): the client's metadata as it may go on.
        if !client_metadata.is_empty() {
            let map = md.as_mut();
            // A repeated name comes as `None` after its first entry.
            let mut last: Option<http::HeaderName> = None;
            for (k, v) in client_metadata {
                if k.is_some() {
                    last = k;
                }
                if let Some(name) = &last {
                    map.append(name.clone(), v);
                }
            }
        }
        let timeout = self.timeout;
        // Tensor contents are `Bytes`: a second attempt's copy of the message shares them.
        let resp = self
            .call_on(timeout, Idempotent::No, affinity, |mut client| {
                let mut request = Self::request(msg.clone(), timeout);
                if !md.is_empty() {
                    *request.metadata_mut() = md.clone();
                    request.set_timeout(timeout);
                }
                async move { client.model_infer(request).await }
            })
            .await?;
        grpc::decode_response(resp).map_err(|e| BackendError::Protocol(e.to_string()))
    }

    /// A backend's gRPC status → who failed, in the runtime's terms.
    fn error(&self, s: Status, endpoint: &str, timeout: Duration) -> BackendError {
        let msg = s.message().to_owned();
        match s.code() {
            // A transport failure carries its cause; a status the server sent does not.
            Code::Unavailable if std::error::Error::source(&s).is_some() => {
                BackendError::Connect { endpoint: format!("{} ({endpoint})", self.name), message: error_chain(&s) }
            }
            Code::Unavailable => BackendError::Unavailable(format!("backend `{}`: {msg}", self.name)),
            // Any other transport failure (a TLS alert after the handshake, a
            // reset): the connection broke, the server answered nothing.
            code if std::error::Error::source(&s).is_some()
                && !matches!(code, Code::DeadlineExceeded | Code::Cancelled) =>
            {
                BackendError::Unavailable(format!("backend `{}` ({endpoint}): {}", self.name, error_chain(&s)))
            }
            // tonic's own enforcement of the deadline we sent answers CANCELLED "Timeout expired".
            Code::DeadlineExceeded | Code::Cancelled => BackendError::Timeout(timeout),
            // The server's own answer: its code travels on unchanged (gRPC clients get it as is).
            code => BackendError::Grpc { code: code as i32, message: msg },
        }
    }
}

/// Whether the connection was refused: the request provably never left.
fn refused(s: &Status) -> bool {
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cause = e.source();
    }
    false
}

/// The V2 client on one endpoint's channel (a cheap handle: the channel is shared).
fn v2_client(channel: Channel, max_message_bytes: usize) -> Client {
    Client::new(channel).max_decoding_message_size(max_message_bytes).max_encoding_message_size(max_message_bytes)
}

/// One replica of the channel, with the connection settings every replica shares.
fn channel_endpoint(
    scheme: &str,
    authority: &str,
    connect_timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("{scheme}://{authority}"))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_while_idle(true))
}

impl V2GrpcBackend {
    /// A pass-through call on an endpoint picked by load: the backend's answer
    /// or its status, unchanged. Counted in the endpoint's health like any call.
    async fn relay<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let eps = self.pool.members();
        self.pool.count_request();
        let i = self.pool.pick(&eps, &[]).ok_or_else(|| {
            Status::unavailable(format!("backend `{}` has no endpoints ({})", self.name, self.endpoints))
        })?;
        let call = self.pool.begin(&eps[i]);
        let r = f(v2_client(call.member().transport.clone(), self.max_message_bytes)).await;
        let outcome = match r.as_ref().map_err(|s| s.code()) {
            Err(Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) => Outcome::Failure,
            Err(Code::Internal | Code::Unknown | Code::DataLoss) => Outcome::ServerError,
            _ => Outcome::Success,
        };
        self.pool.finish(&call, outcome);
        r.map(|r| r.into_inner())
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
