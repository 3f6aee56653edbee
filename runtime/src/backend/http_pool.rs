//! The HTTP/1.1 transport every HTTP backend shares (`v2-http`, `tfserving`
//! over REST): pooled keep-alive connections, several endpoints spread by
//! least load (power of two choices) with ejection, probes and a retry budget
//! (`backend::health`), TLS, and the endpoint set kept current by DNS
//! (`backend::dns`). A backend says what its probe asks and what its calls
//! mean; the pool says where they go and what their outcome did to the
//! endpoint. The endpoint set is a snapshot swapped whole when DNS changes
//! it; a request works on the snapshot it loaded, so an endpoint that leaves
//! finishes the requests already sent to it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use switchyard_config::{ClientTlsConfig, EndpointHealth, Endpoints, ResolverConfig, Upstream};
use switchyard_tls::{ClientTls, Connector};

use super::affinity::Affinity;
use super::dns::{self, DnsWatch};
use super::health::{Member, Outcome, Pool, Probe, Tasks};
use super::http_conn::{CallError, ConnPool};
use crate::error::BackendError;

/// How requests reach one replica.
pub struct HttpEndpoint {
    upstream: Upstream,
    /// The path every request's path starts with (origin form; may be empty).
    base_path: String,
    host: HeaderValue,
    /// Its connections, driven by the tasks of the requests they carry (`http_conn`).
    conns: ConnPool,
}

/// How an endpoint's connections are made.
#[derive(Clone)]
struct Dial {
    connector: Connector,
    pool_size: usize,
}

impl HttpEndpoint {
    fn member(backend: &str, upstream: Upstream, dial: &Dial) -> Result<Arc<Member<HttpEndpoint>>, String> {
        let host = HeaderValue::from_str(&upstream.authority)
            .map_err(|_| format!("backend `{backend}`: endpoint {:?} is not a valid host", upstream.authority))?;
        let target = Uri::try_from(format!("{}://{}", upstream.scheme(), upstream.authority))
            .map_err(|e| format!("backend `{backend}`: endpoint {:?}: {e}", upstream.authority))?;
        let conns = ConnPool::new(dial.connector.clone(), target, dial.pool_size);
        let ep = HttpEndpoint { base_path: upstream.base_path.clone(), host, upstream, conns };
        Ok(Arc::new(Member::new(ep.upstream.authority.clone(), ep)))
    }

    /// The origin-form request target of `path` (its pieces, joined) on this endpoint.
    fn target(&self, path: &[&str]) -> Result<Uri, BackendError> {
        let mut uri = String::with_capacity(1 + self.base_path.len() + path.iter().map(|p| p.len()).sum::<usize>());
        uri.push_str(&self.base_path);
        path.iter().for_each(|p| uri.push_str(p));
        if !uri.starts_with('/') {
            uri.insert(0, '/');
        }
        Uri::try_from(uri).map_err(|e| BackendError::Internal(format!("building request: {e}")))
    }
}

/// What the pool needs of a backend's config.
pub struct HttpPoolConfig<'a> {
    pub endpoints: &'a Endpoints,
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per endpoint.
    pub pool_size: usize,
    pub health: &'a EndpointHealth,
    pub tls: Option<&'a ClientTlsConfig>,
}

/// What an active probe of one endpoint asks, and which answers mean it serves.
#[derive(Clone, Copy)]
pub struct ProbeSpec {
    /// Path after the endpoint's base URL.
    pub path: &'static str,
    pub healthy: fn(StatusCode) -> bool,
}

/// A backend's endpoints and the connections that reach them.
pub struct HttpPool {
    name: Arc<str>,
    pool: Arc<Pool<HttpEndpoint>>,
    /// Where the endpoints come from, for errors: the list, or `dns host:port`.
    source: String,
    probe: ProbeSpec,
    /// Feeds the pool for a `dns:` backend; stops with the backend.
    _dns: Option<DnsWatch>,
    /// Probes, outlier sweeps, load scrapes; stop with the backend.
    _health: Tasks,
}

/// An endpoint's answer, whatever its status.
pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpPool {
    /// Fails (instead of panicking the reload that builds it) on an endpoint
    /// whose authority is no valid `Host` value; config validation rejects
    /// those first. Needs a tokio runtime (probes and DNS run as tasks).
    pub fn new(
        name: &str,
        cfg: HttpPoolConfig<'_>,
        resolver: &ResolverConfig,
        probe: ProbeSpec,
    ) -> Result<HttpPool, String> {
        // TLS settings are loaded (and their files watched) once per backend;
        // a reload that keeps the backend keeps them.
        let tls = cfg.tls.map(|t| ClientTls::load(t, &[b"http/1.1"], &format!("backend `{name}`"))).transpose()?;
        let dial = Dial { connector: Connector::new(Some(cfg.connect_timeout), tls.clone()), pool_size: cfg.pool_size };
        let (members, source) = match cfg.endpoints {
            Endpoints::List(list) => {
                let set =
                    list.iter().map(|u| HttpEndpoint::member(name, u.clone(), &dial)).collect::<Result<_, _>>()?;
                (set, list.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", "))
            }
            Endpoints::Dns(d) => (Vec::new(), format!("dns {}:{}", d.host, d.port)),
        };
        let pool = Arc::new(Pool::new(Arc::from(name), members, cfg.health.clone()));
        let dns = match cfg.endpoints {
            Endpoints::List(_) => None,
            Endpoints::Dns(d) => {
                let feed = Arc::downgrade(&pool);
                let (backend, base_path) = (Arc::<str>::from(name), d.base_path.clone());
                let scheme_tls = cfg.tls.is_some();
                let dial = dial.clone();
                let apply = move |addrs: &std::collections::BTreeSet<std::net::SocketAddr>| {
                    let Some(pool) = feed.upgrade() else { return };
                    let old = pool.members();
                    // An endpoint that stays keeps its load and health state.
                    let set = addrs
                        .iter()
                        .filter_map(|a| {
                            let authority = a.to_string();
                            if let Some(m) = old.iter().find(|m| m.authority == authority) {
                                return Some(m.clone());
                            }
                            let up = Upstream { authority, base_path: base_path.clone(), tls: scheme_tls };
                            HttpEndpoint::member(&backend, up, &dial).ok()
                        })
                        .collect();
                    pool.replace(set);
                };
                let resolver = dns::resolver(resolver).map_err(|e| format!("backend `{name}`: {e}"))?;
                Some(DnsWatch::spawn(Arc::from(name), d.clone(), resolver, apply))
            }
        };
        let active: Probe<HttpEndpoint> = Arc::new(move |m, timeout| {
            Box::pin(async move {
                let ep = &m.transport;
                let Ok(uri) = ep.target(&[probe.path]) else { return false };
                let mut req = Request::new(Full::new(Bytes::new()));
                *req.uri_mut() = uri;
                req.headers_mut().insert(HOST, ep.host.clone());
                let call = async { ep.conns.send(req).await.map(|r| (probe.healthy)(r.status())) };
                matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(true)))
            })
        });
        let scrape_tls = super::health::scrape_tls(cfg.health, cfg.tls, name)?;
        let health = pool.start(active, scrape_tls);
        Ok(HttpPool { name: Arc::from(name), pool, source, probe, _dns: dns, _health: health })
    }

    /// Whether the backend can take requests: with active probes, their
    /// verdict (no request of its own on the readiness path); else the probe
    /// asked once, of an endpoint picked by load.
    pub async fn ready(&self, timeout: Duration) -> bool {
        if self.pool.policy().health_check.is_some() {
            return self.pool.any_in_rotation();
        }
        match self.send(Method::GET, &[self.probe.path], Bytes::new(), &[], None, timeout).await {
            Ok(r) => (self.probe.healthy)(r.status),
            Err(_) => false,
        }
    }

    /// Sends a request to an endpoint; `path` is the pieces of the path, joined.
    pub async fn send(
        &self,
        method: Method,
        path: &[&str],
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
        client: Option<&http::HeaderMap>,
        timeout: Duration,
    ) -> Result<Reply, BackendError> {
        self.send_on(method, path, body, headers, client, timeout, None).await
    }

    /// `send`, for a request of a Triton sequence on its pinned endpoint
    /// (`backend::affinity`): never retried elsewhere once the sequence is placed.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_on(
        &self,
        method: Method,
        path: &[&str],
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
        client: Option<&http::HeaderMap>,
        timeout: Duration,
        affinity: Option<Affinity<'_>>,
    ) -> Result<Reply, BackendError> {
        let mut tried: Vec<usize> = Vec::new();
        // One snapshot for the whole call (retries included).
        let eps = self.pool.members();
        self.pool.count_request();
        // Only a call that is safe to repeat is retried after it may have reached the server.
        let idempotent = method == Method::GET;
        let pinned = affinity.is_some_and(|a| !a.start);
        loop {
            let i = self
                .pool
                .choose(&eps, &tried, affinity)
                .map_err(|miss| miss.error(&self.name, affinity.expect("a miss needs a pin").pin))?
                .ok_or_else(|| {
                    BackendError::Unavailable(format!("backend `{}` has no endpoints ({})", self.name, self.source))
                })?;
            let call = self.pool.begin(&eps[i]);
            let ep = &call.member().transport;
            let uri = ep.target(path)?;
            let mut req = Request::new(Full::new(body.clone()));
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri;
            let h = req.headers_mut();
            h.reserve(2 + headers.len());
            h.insert(HOST, ep.host.clone());
            h.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            // Already filtered (`forwarding`): the client's metadata as it may go on.
            if let Some(client) = client {
                for (k, v) in client {
                    h.append(k.clone(), v.clone());
                }
            }
            for (k, v) in headers {
                h.append(k.clone(), v.clone());
            }
            // This task drives the connection while the exchange lasts; a
            // timeout (or the client hanging up) drops it mid-exchange, closed.
            let exchange = async {
                let (parts, body) = ep.conns.send(req).await?.into_parts();
                Ok::<_, CallError>(Reply { status: parts.status, headers: parts.headers, body })
            };
            let (err, sent) = match tokio::time::timeout(timeout, exchange).await {
                Err(_) => {
                    self.pool.finish(&call, Outcome::Failure);
                    return Err(BackendError::Timeout(timeout));
                }
                Ok(Ok(reply)) => {
                    let outcome = match reply.status.as_u16() {
                        502..=504 => Outcome::Failure,
                        500..=599 => Outcome::ServerError,
                        _ => Outcome::Success,
                    };
                    self.pool.finish(&call, outcome);
                    return Ok(reply);
                }
                Ok(Err(e)) if e.not_sent() => {
                    let endpoint = format!("{} (backend `{}`)", ep.upstream, self.name);
                    let err = BackendError::Connect { endpoint, message: e.to_string() };
                    (err, false)
                }
                Ok(Err(e)) => {
                    let err = BackendError::Unavailable(format!("backend {} failed mid-request: {}", ep.upstream, e));
                    (err, true)
                }
            };
            self.pool.finish(&call, Outcome::Failure);
            tried.push(i);
            // Nothing was sent (connect failed), or the call is safe to repeat:
            // another endpoint may take it, within the retry budget.
            if (!sent || idempotent) && !pinned && tried.len() < eps.len() {
                if self.pool.may_retry() {
                    tracing::debug!(backend = %self.name, error = %err, "retrying on another endpoint");
                    continue;
                }
                tracing::debug!(backend = %self.name, error = %err, "retry budget spent: not retried");
            }
            return Err(err);
        }
    }
}

/// The backend's own error message: `{"error": ...}` (V2's and TF Serving's
/// form), `{"message": ...}` (TorchServe's), else the last line of its text.
pub fn backend_message(body: &Bytes) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v.get("error").or_else(|| v.get("message")).and_then(|e| e.as_str()) {
            return e.to_string();
        }
        if let Some(d) = v.get("detail") {
            return d.to_string().chars().take(512).collect();
        }
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    line.trim().chars().take(512).collect()
}

/// A backend's error status, with its answer kept for relaying unchanged.
pub fn status_error(reply: &Reply) -> BackendError {
    BackendError::Status {
        status: reply.status.as_u16(),
        message: backend_message(&reply.body),
        body: Some(reply.body.clone()),
        content_type: reply.headers.get(CONTENT_TYPE).cloned(),
    }
}
