//! Remote KServe V2 server over HTTP/1.1 (Triton, MLServer, OpenVINO, KServe
//! runtimes): pooled keep-alive connections, several endpoints spread by least
//! outstanding requests (power of two choices), ejection of endpoints that keep
//! failing, and binary↔JSON conversion for servers without the extension.
//! The endpoint set is a snapshot swapped whole when DNS changes it
//! (`backend::dns`); a request works on the snapshot it loaded, so an
//! endpoint that leaves finishes the requests already sent to it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard_config::{BinaryMode, Endpoints, ResolverConfig, Upstream, V2HttpBackend as Config};
use tokio::sync::OnceCell;

use super::contract::{Backend, ModelTarget};
use super::dns::{self, DnsWatch};
use super::forward::Forwarding;
use crate::codec::v2::{self, HEADER_CONTENT_LENGTH};
use crate::error::{error_chain, BackendError};
use crate::tensor::{InferRequest, InferResponse};

/// How long a readiness probe of the backend may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const INFERENCE_HEADER_CONTENT_LENGTH: HeaderName = HeaderName::from_static(HEADER_CONTENT_LENGTH);
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const APPLICATION_OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

struct Endpoint {
    upstream: Upstream,
    /// `http://authority/base_path`: every request URI starts with it.
    base_uri: String,
    host: HeaderValue,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the backend's epoch until which the endpoint is out of rotation.
    ejected_until_ms: AtomicU64,
}

impl Endpoint {
    fn new(backend: &str, upstream: Upstream) -> Result<Endpoint, String> {
        let host = HeaderValue::from_str(&upstream.authority)
            .map_err(|_| format!("backend `{backend}`: endpoint {:?} is not a valid host", upstream.authority))?;
        Ok(Endpoint {
            base_uri: upstream.to_string(),
            host,
            upstream,
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        })
    }
}

/// One snapshot of the endpoint set.
type EndpointSet = Vec<Arc<Endpoint>>;

pub struct V2HttpBackend {
    name: Arc<str>,
    client: Client<HttpConnector, Full<Bytes>>,
    endpoints: Arc<ArcSwap<EndpointSet>>,
    /// Where the endpoints come from, for errors: the list, or `dns host:port`.
    source: String,
    /// Feeds `endpoints` for a `dns:` backend; stops with the backend.
    _dns: Option<DnsWatch>,
    timeout: Duration,
    eject_after: u32,
    eject_for: Duration,
    binary: BinaryMode,
    binary_supported: OnceCell<bool>,
    epoch: Instant,
    forward: Forwarding,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

enum CallError {
    Request(hyper_util::client::legacy::Error),
    Body(hyper::Error),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Request(e) => f.write_str(&error_chain(e)),
            CallError::Body(e) => f.write_str(&error_chain(e)),
        }
    }
}

/// Decrements an endpoint's outstanding count however the call ends.
struct Outstanding<'a>(&'a AtomicUsize);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl V2HttpBackend {
    /// Fails (instead of panicking the reload that builds it) on an endpoint
    /// whose authority is no valid `Host` value; config validation rejects
    /// those first.
    pub fn new(name: &str, cfg: &Config, resolver: &ResolverConfig) -> Result<V2HttpBackend, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.pool_size)
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        let (endpoints, source, dns) = match &cfg.endpoints {
            Endpoints::List(list) => {
                let set =
                    list.iter().map(|u| Endpoint::new(name, u.clone()).map(Arc::new)).collect::<Result<_, _>>()?;
                let source = list.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(", ");
                (Arc::new(ArcSwap::from_pointee(set)), source, None)
            }
            Endpoints::Dns(d) => {
                let endpoints: Arc<ArcSwap<EndpointSet>> = Arc::new(ArcSwap::from_pointee(Vec::new()));
                let feed = endpoints.clone();
                let (backend, base_path) = (Arc::<str>::from(name), d.base_path.clone());
                let apply = move |addrs: &std::collections::BTreeSet<std::net::SocketAddr>| {
                    let old = feed.load_full();
                    // An endpoint that stays keeps its load and ejection state.
                    let set = addrs
                        .iter()
                        .filter_map(|a| {
                            let authority = a.to_string();
                            if let Some(e) = old.iter().find(|e| e.upstream.authority == authority) {
                                return Some(e.clone());
                            }
                            let up = Upstream { authority, base_path: base_path.clone() };
                            Endpoint::new(&backend, up).map(Arc::new).ok()
                        })
                        .collect();
                    feed.store(Arc::new(set));
                };
                let watch = DnsWatch::spawn(
                    Arc::from(name),
                    d.clone(),
                    dns::resolver(resolver).map_err(|e| format!("backend `{name}`: {e}"))?,
                    apply,
                );
                (endpoints, format!("dns {}:{}", d.host, d.port), Some(watch))
            }
        };
        Ok(V2HttpBackend {
            name: Arc::from(name),
            client,
            endpoints,
            source,
            _dns: dns,
            timeout: cfg.timeout,
            forward: Forwarding::new(&cfg.forward_headers),
            eject_after: cfg.eject_after_failures,
            eject_for: cfg.eject_for,
            binary: cfg.binary,
            binary_supported: OnceCell::new(),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Power of two choices among endpoints in rotation, never `exclude`.
    /// When every endpoint is ejected, all of them are candidates again
    /// (a guess beats a certain failure).
    fn pick(&self, eps: &[Arc<Endpoint>], exclude: &[usize]) -> Option<usize> {
        let eligible = |i: usize| !exclude.contains(&i);
        if eps.len() == 1 {
            return eligible(0).then_some(0);
        }
        let now = self.now_ms();
        let in_rotation = |i: usize| eligible(i) && eps[i].ejected_until_ms.load(Ordering::Relaxed) <= now;
        // The candidates, without collecting them: the k-th index passing `cand`.
        let n_all = eps.len();
        let count = |cand: &dyn Fn(usize) -> bool| (0..n_all).filter(|&i| cand(i)).count();
        let (cand, n): (&dyn Fn(usize) -> bool, usize) = match count(&in_rotation) {
            0 => (&eligible, count(&eligible)),
            n => (&in_rotation, n),
        };
        let nth = |k: usize| (0..n_all).filter(|&i| cand(i)).nth(k).expect("k < n");
        match n {
            0 => None,
            1 => Some(nth(0)),
            n => {
                let a = fastrand::usize(..n);
                let mut b = fastrand::usize(..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (nth(a), nth(b));
                let load = |i: usize| eps[i].outstanding.load(Ordering::Relaxed);
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    fn record(&self, eps: &[Arc<Endpoint>], i: usize, ok: bool) {
        let ep = &eps[i];
        if ok {
            ep.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = ep.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.eject_after && eps.len() > 1 {
            let until = self.now_ms() + self.eject_for.as_millis() as u64;
            ep.ejected_until_ms.store(until, Ordering::Relaxed);
            ep.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(backend = %self.name, endpoint = %ep.upstream, failures = n, eject_for = ?self.eject_for, "endpoint ejected");
        }
    }

    /// Sends a request to an endpoint; `path` is the pieces of the path, joined.
    async fn send(
        &self,
        method: Method,
        path: &[&str],
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
        client: Option<&http::HeaderMap>,
        timeout: Duration,
    ) -> Result<Reply, BackendError> {
        let mut tried: Vec<usize> = Vec::new();
        // One snapshot for the whole call (retries included).
        let eps = self.endpoints.load_full();
        loop {
            let i = self.pick(&eps, &tried).ok_or_else(|| {
                BackendError::Unavailable(format!("backend `{}` has no endpoints ({})", self.name, self.source))
            })?;
            let ep = &eps[i];
            ep.outstanding.fetch_add(1, Ordering::Relaxed);
            let _guard = Outstanding(&ep.outstanding);
            let mut uri = String::with_capacity(ep.base_uri.len() + path.iter().map(|p| p.len()).sum::<usize>());
            uri.push_str(&ep.base_uri);
            path.iter().for_each(|p| uri.push_str(p));
            let uri = Uri::try_from(uri).map_err(|e| BackendError::Internal(format!("building request: {e}")))?;
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
            let call = async {
                let resp = self.client.request(req).await.map_err(CallError::Request)?;
                let (parts, body) = resp.into_parts();
                let body = body.collect().await.map_err(CallError::Body)?.to_bytes();
                Ok::<_, CallError>(Reply { status: parts.status, headers: parts.headers, body })
            };
            match tokio::time::timeout(timeout, call).await {
                Err(_) => {
                    self.record(&eps, i, false);
                    return Err(BackendError::Timeout(timeout));
                }
                Ok(Err(CallError::Request(e))) if e.is_connect() => {
                    self.record(&eps, i, false);
                    tried.push(i);
                    let err = BackendError::Connect { endpoint: ep.upstream.to_string(), message: error_chain(&e) };
                    // Nothing was sent: another endpoint may take it.
                    if tried.len() < eps.len() {
                        tracing::debug!(backend = %self.name, error = %err, "retrying on another endpoint");
                        continue;
                    }
                    return Err(err);
                }
                Ok(Err(e)) => {
                    self.record(&eps, i, false);
                    return Err(BackendError::Unavailable(format!(
                        "backend {} failed mid-request: {}",
                        ep.upstream, e
                    )));
                }
                Ok(Ok(reply)) => {
                    let overloaded = matches!(reply.status.as_u16(), 502..=504);
                    self.record(&eps, i, !overloaded);
                    return Ok(reply);
                }
            }
        }
    }

    async fn use_binary(&self) -> bool {
        match self.binary {
            BinaryMode::Always => true,
            BinaryMode::Never => false,
            BinaryMode::Auto => {
                let probe = self
                    .binary_supported
                    .get_or_try_init(|| async {
                        let r = self.send(Method::GET, &["/v2"], Bytes::new(), &[], None, READY_PROBE_TIMEOUT).await?;
                        if !r.status.is_success() {
                            return Err(BackendError::status(r.status.as_u16(), "GET /v2 failed"));
                        }
                        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        let yes =
                            v["extensions"].as_array().is_some_and(|a| a.iter().any(|e| e == "binary_tensor_data"));
                        tracing::info!(backend = %self.name, binary_tensor_data = yes, "backend extensions read");
                        Ok::<bool, BackendError>(yes)
                    })
                    .await;
                // Unknown (server down): JSON, which every V2 server speaks; ask again next time.
                probe.copied().unwrap_or(false)
            }
        }
    }

    /// `/v2/models/{name}[/versions/{version}]{suffix}`, in pieces for `send`.
    fn model_path<'a>(target: &'a ModelTarget, suffix: &'a str) -> [&'a str; 5] {
        match &target.version {
            Some(v) => ["/v2/models/", &target.name, "/versions/", v, suffix],
            None => ["/v2/models/", &target.name, suffix, "", ""],
        }
    }
}

/// The backend's own error message: V2 `{"error": ...}`, else the last line of its text.
fn backend_message(body: &Bytes) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
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

fn status_error(reply: &Reply) -> BackendError {
    BackendError::Status {
        status: reply.status.as_u16(),
        message: backend_message(&reply.body),
        body: Some(reply.body.clone()),
        content_type: reply.headers.get(CONTENT_TYPE).cloned(),
    }
}

#[async_trait]
impl Backend for V2HttpBackend {
    fn kind(&self) -> &'static str {
        "v2-http"
    }

    fn forwarding(&self) -> Option<&Forwarding> {
        Some(&self.forward)
    }

    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError> {
        let binary = self.use_binary().await;
        let enc = v2::encode_request(&req, binary).map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        let binary_headers;
        let headers: &[(HeaderName, HeaderValue)] = match enc.header_len {
            Some(n) => {
                binary_headers =
                    [(CONTENT_TYPE, APPLICATION_OCTET_STREAM), (INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(n))];
                &binary_headers
            }
            None => &[(CONTENT_TYPE, APPLICATION_JSON)],
        };
        let path = Self::model_path(target, "/infer");
        let reply = self.send(Method::POST, &path, enc.body, headers, Some(&req.metadata), self.timeout).await?;
        if reply.status != StatusCode::OK {
            return Err(status_error(&reply));
        }
        let header_len = match reply.headers.get(HEADER_CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| BackendError::Protocol("bad Inference-Header-Content-Length".into()))?,
            ),
        };
        v2::decode_response(&reply.body, header_len).map_err(|e| BackendError::Protocol(e.to_string()))
    }

    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError> {
        let reply =
            self.send(Method::GET, &Self::model_path(target, ""), Bytes::new(), &[], None, self.timeout).await?;
        if reply.status != StatusCode::OK {
            return Err(status_error(&reply));
        }
        serde_json::from_slice(&reply.body).map_err(|e| BackendError::Protocol(format!("model metadata: {e}")))
    }

    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError> {
        let reply = self
            .send(Method::GET, &Self::model_path(target, "/ready"), Bytes::new(), &[], None, READY_PROBE_TIMEOUT)
            .await?;
        Ok(reply.status == StatusCode::OK)
    }

    async fn ready(&self) -> bool {
        match self.send(Method::GET, &["/v2/health/ready"], Bytes::new(), &[], None, READY_PROBE_TIMEOUT).await {
            Ok(r) => r.status == StatusCode::OK,
            Err(_) => false,
        }
    }
}
