//! The gRPC transport every gRPC backend shares (`v2-grpc`, `tfserving` over
//! gRPC): a tonic channel per endpoint and thread (HTTP/2, requests
//! multiplexed on one connection, made lazily), each call on an endpoint picked by load with
//! ejection, probes and a retry budget (`backend::health`), the deadline
//! sent as `grpc-timeout` and enforced here too, TLS, and the endpoint set
//! kept current by DNS (`backend::dns`). A backend wraps a channel in its
//! service's client; the pool says where a call goes, whether it may be
//! tried again elsewhere, and what a status means in the runtime's terms.
//!
//! A channel's connection and request queue are tasks on the runtime that
//! made it, so each thread that calls an endpoint makes its own channel
//! there (on first use; again if that thread has since entered another
//! runtime): a call and the tasks that carry it stay on one thread, with no
//! wake-up across runtimes. The channels of one endpoint share its
//! `Member` (load, health, ejection).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use switchyard_config::{ClientTlsConfig, EndpointHealth, Endpoints, ResolverConfig};
use switchyard_tls::{ClientTls, Connector};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::affinity::Affinity;
use super::dns::{self, DnsWatch};
use super::health::{Member, Outcome, Pool, Probe, Tasks};
use crate::error::{error_chain, BackendError};

/// HTTP/2 pings keep idle connections known-good (and find dead ones before a request does).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// Whether a call may be sent again to another endpoint once it may have reached one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Idempotent {
    Yes,
    No,
}

/// What the pool needs of a backend's config.
pub struct GrpcPoolConfig<'a> {
    pub endpoints: &'a Endpoints,
    pub connect_timeout: Duration,
    pub health: &'a EndpointHealth,
    pub tls: Option<&'a ClientTlsConfig>,
}

/// A probe of one endpoint through a channel to it, within a timeout: true when it serves.
pub type ChannelProbe = Arc<dyn Fn(Channel, Duration) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// How calls reach one replica: a channel per thread that calls it.
pub struct GrpcEndpoint {
    id: u64,
    endpoint: Endpoint,
    connector: Connector,
    /// For a caller outside any runtime (none on the data path): made on the
    /// runtime that built the backend, which outlives it.
    shared: Channel,
    /// Dropped with the endpoint: threads' channels to it are then swept.
    alive: Arc<()>,
}

/// Source of the endpoints' identities in the threads' channel lists.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One thread's channel to one endpoint, and the runtime whose tasks drive it.
struct ThreadChannel {
    endpoint: u64,
    owner: Weak<()>,
    runtime: tokio::runtime::Id,
    channel: Channel,
}

thread_local! {
    /// Dropped with the thread, with the runtime's tasks that drove them.
    static CHANNELS: RefCell<Vec<ThreadChannel>> = const { RefCell::new(Vec::new()) };
}

impl GrpcEndpoint {
    /// Needs a tokio runtime (the shared channel's tasks start on it).
    fn new(endpoint: Endpoint, connector: Connector) -> GrpcEndpoint {
        let shared = endpoint.clone().connect_with_connector_lazy(connector.clone());
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        GrpcEndpoint { id, endpoint, connector, shared, alive: Arc::new(()) }
    }

    /// This thread's channel to the endpoint, made on the current runtime when
    /// the thread has none for it yet (or made it on a runtime it has left).
    pub fn channel(&self) -> Channel {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return self.shared.clone() };
        let runtime = rt.id();
        CHANNELS.with(|c| {
            let mut list = c.borrow_mut();
            if let Some(tc) = list.iter().find(|tc| tc.endpoint == self.id) {
                if tc.runtime == runtime {
                    return tc.channel.clone();
                }
            }
            // Made inside the runtime context: its tasks start on this thread's runtime.
            let channel = self.endpoint.clone().connect_with_connector_lazy(self.connector.clone());
            // Sweep channels of endpoints that are gone (DNS changes, reloads) and the one replaced.
            list.retain(|tc| tc.owner.strong_count() > 0 && tc.endpoint != self.id);
            let owner = Arc::downgrade(&self.alive);
            list.push(ThreadChannel { endpoint: self.id, owner, runtime, channel: channel.clone() });
            channel
        })
    }
}

pub struct GrpcPool {
    name: Arc<str>,
    /// `host:port, ...` (or `dns host:port`) for error messages.
    endpoints: String,
    /// The endpoints (lazily connected channels per thread), picked per call by `backend::health`.
    pool: Arc<Pool<GrpcEndpoint>>,
    /// Feeds the pool for a `dns:` backend; stops with the backend.
    _dns: Option<DnsWatch>,
    /// Probes, outlier sweeps, load scrapes; stop with the backend.
    _health: Tasks,
}

/// A request carrying `timeout` as its `grpc-timeout` deadline.
pub fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// The client's request metadata as gRPC metadata: already filtered
/// (`forwarding`), the client's metadata as it may go on.
pub fn metadata(headers: http::HeaderMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    if !headers.is_empty() {
        let map = md.as_mut();
        // A repeated name comes as `None` after its first entry.
        let mut last: Option<http::HeaderName> = None;
        for (k, v) in headers {
            if k.is_some() {
                last = k;
            }
            if let Some(name) = &last {
                map.append(name.clone(), v);
            }
        }
    }
    md
}

/// `request`, carrying `md` too.
pub fn with_metadata<T>(msg: T, md: &MetadataMap, timeout: Duration) -> tonic::Request<T> {
    let mut r = request(msg, timeout);
    if !md.is_empty() {
        *r.metadata_mut() = md.clone();
        r.set_timeout(timeout);
    }
    r
}

impl GrpcPool {
    /// Builds the endpoints (channels and connections are made lazily, on
    /// first use); `probe` asks one endpoint's channel whether it serves.
    /// Needs a tokio runtime.
    pub fn new(
        name: &str,
        cfg: GrpcPoolConfig<'_>,
        resolver: &ResolverConfig,
        probe: ChannelProbe,
    ) -> Result<GrpcPool, String> {
        let connect_timeout = cfg.connect_timeout;
        // gRPC over TLS offers h2 by ALPN; the files are watched while the backend lives.
        let tls = cfg.tls.map(|t| ClientTls::load(t, &[b"h2"], &format!("backend `{name}`"))).transpose()?;
        let connector = Connector::new(Some(connect_timeout), tls.clone());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let member = move |authority: &str| -> Result<Arc<Member<GrpcEndpoint>>, String> {
            let endpoint = channel_endpoint(scheme, authority, connect_timeout)
                .map_err(|e| format!("endpoint `{authority}`: {e}"))?;
            Ok(Arc::new(Member::new(authority.to_string(), GrpcEndpoint::new(endpoint, connector.clone()))))
        };
        let (members, source) = match cfg.endpoints {
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
        let dns = match cfg.endpoints {
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
        let scrape_tls = super::health::scrape_tls(cfg.health, cfg.tls, name)?;
        let probe: Probe<GrpcEndpoint> = Arc::new(move |m, timeout| probe(m.transport.channel(), timeout));
        let health = pool.start(probe, scrape_tls);
        Ok(GrpcPool { name: Arc::from(name), endpoints: source, pool, _dns: dns, _health: health })
    }

    pub fn policy(&self) -> &EndpointHealth {
        self.pool.policy()
    }

    pub fn any_in_rotation(&self) -> bool {
        self.pool.any_in_rotation()
    }

    /// Runs one call on an endpoint picked by load, with the deadline enforced
    /// locally as well; `f` makes the call on a given endpoint's channel (again
    /// on another endpoint when the first refused the connection, or for an
    /// idempotent call that failed in transport, within the retry budget).
    pub async fn call<T, F, Fut>(&self, timeout: Duration, idempotent: Idempotent, f: F) -> Result<T, BackendError>
    where
        F: Fn(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_on(timeout, idempotent, None, f).await
    }

    /// `call`, for a request of a Triton sequence on its pinned endpoint
    /// (`backend::affinity`): never retried elsewhere once the sequence is placed.
    pub async fn call_on<T, F, Fut>(
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
            let status = match tokio::time::timeout(timeout, f(call.member().transport.channel())).await {
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
            self.pool.finish(&call, outcome(status.code()));
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

    /// A pass-through call on an endpoint picked by load: the backend's answer
    /// or its status, unchanged. Counted in the endpoint's health like any call.
    pub async fn relay<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let eps = self.pool.members();
        self.pool.count_request();
        let i = self.pool.pick(&eps, &[]).ok_or_else(|| {
            Status::unavailable(format!("backend `{}` has no endpoints ({})", self.name, self.endpoints))
        })?;
        let call = self.pool.begin(&eps[i]);
        let r = f(call.member().transport.channel()).await;
        self.pool.finish(&call, r.as_ref().map_or_else(|s| outcome(s.code()), |_| Outcome::Success));
        r.map(|r| r.into_inner())
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

/// What a status says of the endpoint's health.
fn outcome(code: Code) -> Outcome {
    match code {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Outcome::Failure,
        Code::Internal | Code::Unknown | Code::DataLoss => Outcome::ServerError,
        _ => Outcome::Success,
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
