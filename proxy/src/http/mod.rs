//! The data-plane HTTP listener on pingora. `request_filter` classifies the
//! path (`classify`) and answers KServe V2 REST and the probes natively
//! (`v2`, through the shared lifecycle; bodies read by `body`, answers
//! written by `reply`); every other path is proxied unchanged by pingora
//! to the listener's default upstream (`upstream`, resolved off the
//! request path).

mod body;
mod classify;
mod ml;
mod reply;
mod tfserving;
mod torchserve;
pub mod torchserve_management;
mod triton;
mod upstream;
mod upstream_tls;
mod v2;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error as PError, ErrorSource, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use switchyard_config::{ClientTlsConfig, Limits, Upstream};

use self::classify::{classify, Endpoint};
use self::reply::Reply;
use self::upstream::ResolvedUpstream;
use crate::access_log::{Note, Record};
use crate::auth::{Action, Principal, SHM_PERMISSION};
use crate::error::{BackendFailure, Error, ErrorKind};
use crate::guards::Guards;
use crate::metrics::Metrics;
use crate::pipeline::Call;
use crate::protocol::Protocol;
use crate::routing::RoutingTable;

/// The HTTP listener's state, shared by pingora's worker threads.
pub struct HttpListener {
    table: Arc<ArcSwap<RoutingTable>>,
    metrics: Metrics,
    limits: Limits,
    default_upstream: Option<ResolvedUpstream>,
    /// Authentication, rate limits, body hashing.
    guards: Guards,
}

impl HttpListener {
    /// `default_upstream`, when set, is resolved now (a hostname: again in the background).
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        metrics: Metrics,
        limits: Limits,
        default_upstream: Option<Upstream>,
    ) -> HttpListener {
        HttpListener {
            table,
            metrics,
            limits,
            default_upstream: default_upstream.map(ResolvedUpstream::start),
            guards: Guards::default(),
        }
    }

    /// Loads the TLS settings of an `https://` default upstream (`tls`:
    /// `Some` exactly then, as validation guarantees); a file that no longer
    /// loads is an error naming it.
    pub fn with_upstream_tls(mut self, tls: Option<&ClientTlsConfig>) -> Result<HttpListener, String> {
        if let (Some(up), Some(cfg)) = (self.default_upstream.as_mut(), tls) {
            up.set_tls(upstream_tls::UpstreamTls::load(cfg, &up.config.authority)?);
        }
        Ok(self)
    }

    /// Credentials on every path but the probes and `GET /v2`, rate limits, body hashes.
    pub fn with_guards(mut self, guards: Guards) -> HttpListener {
        self.guards = guards;
        self
    }
}

pub struct Ctx {
    start: Instant,
    passthrough: bool,
    /// Body bytes seen so far on a pass-through request.
    passthrough_bytes: u64,
    /// Who the request runs as, once authenticated.
    principal: Option<Arc<Principal>>,
    /// The request's URI (refcounted), to name model and version in its access line.
    uri: Option<http::Uri>,
    /// What the answer said, for the access line.
    variant: Option<http::HeaderValue>,
    error: Option<&'static str>,
    body_sha256: Option<String>,
    rule: Option<Arc<str>>,
}

impl Ctx {
    /// Keeps what the access line needs from a reply about to be written.
    fn remember(&mut self, reply: &Reply) {
        self.variant.clone_from(&reply.variant);
        self.error = reply.error;
        self.body_sha256.clone_from(&reply.body_sha256);
        self.rule.clone_from(&reply.rule);
    }
}

/// Probes and server metadata stay open, so orchestrators need no credentials.
fn needs_auth(e: &Endpoint<'_>) -> bool {
    !matches!(
        e,
        Endpoint::Health
            | Endpoint::Startup
            | Endpoint::Ready
            | Endpoint::V2Live
            | Endpoint::V2Ready
            | Endpoint::V2Server
            | Endpoint::TsPing
            | Endpoint::WrongMethod(_)
    )
}

#[async_trait]
impl ProxyHttp for HttpListener {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            passthrough: false,
            passthrough_bytes: 0,
            principal: None,
            uri: None,
            variant: None,
            error: None,
            body_sha256: None,
            rule: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // HTTP/1.1 clients may pipeline; without this pingora answers the first
        // request and drops the ones queued behind it. Persists across keep-alive reuses.
        session.set_pipelining_enabled(true);
        crate::lifecycle::header_complete();
        // Draining: this answer closes the connection, so the client's next
        // request goes to a fresh one (the new process's, on an upgrade).
        // Otherwise an idle keep-alive connection lives `limits.idle_timeout`.
        if crate::lifecycle::draining() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.limits.idle_timeout.as_secs_f64().ceil().max(1.0) as u64));
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        // The URI is refcounted: cloning it frees `session` for body reads.
        let uri = session.req_header().uri.clone();
        ctx.uri = Some(uri.clone());
        let method = session.req_header().method.clone();
        // One snapshot per request, kept to the end.
        let table = self.table.load_full();
        let mut endpoint = classify(&method, uri.path());
        if endpoint.is_shared_memory() && !table.server.system_shared_memory {
            // The extension is off: the path is not ours (a default upstream may serve it).
            endpoint = Endpoint::Other;
        }
        let probe = matches!(
            endpoint,
            Endpoint::Health | Endpoint::Startup | Endpoint::V2Live | Endpoint::Ready | Endpoint::V2Ready
        );
        if !probe && crate::lifecycle::over_connection_cap() {
            // Accepted past limits.max_connections: kept for the probes only.
            session.set_keepalive(None);
            let e = Error::overloaded(1, "too many open connections (limits.max_connections); retry later");
            let reply = Reply::error(&e);
            ctx.remember(&reply);
            reply::write(session, reply).await?;
            return Ok(true);
        }
        // Credentials before anything else is read: an unauthenticated body is never read.
        if let (Some(auth), true) = (&self.guards.auth, needs_auth(&endpoint)) {
            let checked = auth.authenticate(&session.req_header().headers).and_then(|p| {
                if endpoint == Endpoint::Other && self.default_upstream.is_some() {
                    p.require("passthrough", &format!("call {} through the default upstream", uri.path()))?;
                }
                if endpoint.is_shared_memory() {
                    p.require(SHM_PERMISSION, "use system shared memory regions")?;
                }
                Ok(p)
            });
            match checked {
                Ok(p) => ctx.principal = Some(p),
                Err(e) => {
                    let reply = match endpoint {
                        Endpoint::TsPredict(..) => torchserve::error(&e),
                        _ => Reply::error(&e),
                    };
                    ctx.remember(&reply);
                    reply::write(session, reply).await?;
                    return Ok(true);
                }
            }
        }
        let principal = ctx.principal.as_deref();
        // TF Serving paths of a model with no route are someone else's: the
        // default upstream's when there is one (a TF Serving behind), else 404.
        if let Endpoint::TfPredict(m, ..) | Endpoint::TfStatus(m, _) | Endpoint::TfMetadata(m, _) = endpoint {
            if table.route(m).is_err() && self.default_upstream.is_some() {
                return pass_through(session, ctx, true).await;
            }
        }
        // TorchServe paths too: a TorchServe behind keeps serving the models Switchyard does not route.
        if let Endpoint::TsPredict(m, ..) = endpoint {
            if table.route(m).is_err() && self.default_upstream.is_some() {
                return pass_through(session, ctx, true).await;
            }
        }
        if endpoint == Endpoint::Other {
            if self.default_upstream.is_some() {
                ctx.passthrough = true;
                let max = self.limits.max_body_bytes;
                if let Some(n) = body::declared_length(session.req_header()).filter(|n| *n > max) {
                    let reply = Reply::error(&body::too_big(n, max));
                    ctx.remember(&reply);
                    reply::write(session, reply).await?;
                    return Ok(true);
                }
                return Ok(false);
            }
            // TorchServe's paths answer in its form (`/predictions/m/v/extra`, say).
            let reply = if torchserve::is_torchserve_path(uri.path()) {
                torchserve::error(&Error::not_found(format!(
                    "Requested resource is not found, please refer to API document. ({} {})",
                    method,
                    uri.path()
                )))
            } else {
                Reply::error(&Error::not_found(format!("no route for {} {}", method, uri.path())))
            };
            ctx.remember(&reply);
            reply::write(session, reply).await?;
            return Ok(true);
        }
        let can_pass = self.default_upstream.is_some();
        let headers = || session.req_header().headers.clone();
        let triton = match endpoint {
            Endpoint::ModelConfig(m, v) => Some(triton::model_config(&headers(), &table, m, v, can_pass, principal)),
            Endpoint::ModelStats(m, v) => Some(triton::model_stats(&headers(), &table, m, v, can_pass, principal)),
            Endpoint::RepositoryIndex => {
                Some(triton::repository_index(session, &table, &self.limits, can_pass, principal).await)
            }
            Endpoint::RepositoryControl(m, load) => {
                Some(triton::repository_control(session, &table, &self.limits, m, load, can_pass, principal).await)
            }
            Endpoint::ShmStatus(r) => Some(triton::shm_status(r)),
            Endpoint::ShmRegister(r) => Some(triton::shm_register(session, &self.limits, r).await),
            Endpoint::ShmUnregister(r) => Some(triton::shm_unregister(r)),
            _ => None,
        };
        match triton {
            Some(triton::Outcome::PassThrough) => {
                // A request that names no model reaches the upstream unchanged: as any pass-through path.
                let modelless = matches!(endpoint, Endpoint::ModelStats(None, _) | Endpoint::RepositoryIndex);
                return pass_through(session, ctx, modelless).await;
            }
            Some(triton::Outcome::Reply(reply)) => {
                ctx.remember(&reply);
                reply::write(session, *reply).await?;
                return Ok(true);
            }
            None => {}
        }
        let reply = match endpoint {
            Endpoint::Health => Reply::json(200, &br#"{"status":"live"}"#[..]),
            Endpoint::Startup => Reply::json(200, &br#"{"status":"started"}"#[..]),
            Endpoint::V2Live => Reply::json(200, Bytes::new()),
            Endpoint::Ready => v2::readiness(&table, false).await,
            Endpoint::V2Ready => v2::readiness(&table, true).await,
            Endpoint::V2Server => v2::server_metadata(&table).await,
            Endpoint::ModelMetadata(m, v) => {
                v2::model_query(&session.req_header().headers, &table, m, v, false, principal).await
            }
            Endpoint::ModelReady(m, v) => {
                v2::model_query(&session.req_header().headers, &table, m, v, true, principal).await
            }
            Endpoint::Infer(m, v) => {
                let call = Call {
                    protocol: Protocol::V2Http,
                    path: Some(uri.path()),
                    model: m,
                    version: v,
                    variant: None,
                    deadline: None,
                    start: ctx.start,
                    principal,
                    limiter: self.guards.limiter.as_deref(),
                    client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
                    input_bytes: body::declared_length(session.req_header()),
                    priority: None,
                };
                v2::infer(session, &table, &self.metrics, &self.limits, call, self.guards.body_hash).await
            }
            Endpoint::Predict(m) => {
                let call = Call {
                    protocol: Protocol::V2Http,
                    path: Some(uri.path()),
                    model: m,
                    version: None,
                    variant: None,
                    deadline: None,
                    start: ctx.start,
                    principal,
                    limiter: self.guards.limiter.as_deref(),
                    client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
                    input_bytes: body::declared_length(session.req_header()),
                    priority: None,
                };
                ml::predict(session, &table, &self.metrics, &self.limits, call).await
            }
            Endpoint::TfPredict(m, servable, method) => {
                let call = Call {
                    protocol: Protocol::TfServingRest,
                    path: Some(uri.path()),
                    model: m,
                    version: None,
                    variant: None,
                    deadline: None,
                    start: ctx.start,
                    principal,
                    limiter: self.guards.limiter.as_deref(),
                    client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
                    input_bytes: body::declared_length(session.req_header()),
                    priority: None,
                };
                tfserving::predict(session, &table, &self.metrics, &self.limits, servable, method, call).await
            }
            Endpoint::TfStatus(m, servable) => {
                tfserving::status(&session.req_header().headers, &table, m, servable, principal).await
            }
            Endpoint::TfMetadata(m, servable) => {
                tfserving::metadata(&session.req_header().headers, &table, m, servable, principal).await
            }
            Endpoint::TsPredict(m, v, explain) => {
                let call = Call {
                    protocol: Protocol::TorchServeRest,
                    path: Some(uri.path()),
                    model: m,
                    version: v,
                    variant: None,
                    deadline: None,
                    start: ctx.start,
                    principal,
                    limiter: self.guards.limiter.as_deref(),
                    client: session.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
                    input_bytes: body::declared_length(session.req_header()),
                    priority: None,
                };
                torchserve::predict(session, &table, &self.metrics, &self.limits, explain, call).await
            }
            Endpoint::TsPing => torchserve::ping(&table).await,
            // Ground truth changes what quality figures (and a canary's verdict) say: its own permission.
            Endpoint::Feedback(m) => match crate::pipeline::authorize(principal, m, None, Action::Feedback) {
                Ok(()) => ml::feedback(session, &table, &self.limits, m).await,
                Err(e) => Reply::error(&e),
            },
            Endpoint::WrongMethod(allowed) if torchserve::is_torchserve_path(uri.path()) => {
                torchserve::error(&Error::new(
                    ErrorKind::MethodNotAllowed { allowed },
                    format!(
                        "Requested method is not allowed, please refer to API document. ({} {}: use {allowed})",
                        method,
                        uri.path()
                    ),
                ))
            }
            Endpoint::WrongMethod(allowed) => Reply::error(&Error::new(
                ErrorKind::MethodNotAllowed { allowed },
                format!("{} is not allowed on {} (use {allowed})", method, uri.path()),
            )),
            Endpoint::Other
            | Endpoint::ModelConfig(..)
            | Endpoint::ModelStats(..)
            | Endpoint::RepositoryIndex
            | Endpoint::RepositoryControl(..)
            | Endpoint::ShmStatus(..)
            | Endpoint::ShmRegister(..)
            | Endpoint::ShmUnregister(..) => {
                Reply::error(&Error::internal("pass-through or Triton path reached the V2 handlers"))
            }
        };
        ctx.remember(&reply);
        reply::write(session, reply).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let up = self
            .default_upstream
            .as_ref()
            .ok_or_else(|| PError::explain(ErrorType::InternalError, "no default upstream"))?;
        match up.addr() {
            Some(addr) => up.peer(addr).map(Box::new).map_err(|e| PError::explain(ErrorType::InternalError, e)),
            // Answered 502 by `fail_to_proxy`, naming the host.
            None => Err(PError::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some(format!("cannot resolve the default upstream {}", up.config.authority).into()),
                None,
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(up) = &self.default_upstream {
            if !up.config.base_path.is_empty() {
                let pq = upstream_request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let uri: http::Uri = format!("{}{}", up.config.base_path, pq)
                    .parse()
                    .map_err(|_| PError::explain(ErrorType::InternalError, "bad upstream path"))?;
                upstream_request.set_uri(uri);
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Chunked pass-through bodies have no Content-Length to check up front.
        if let Some(b) = body {
            ctx.passthrough_bytes += b.len() as u64;
            if ctx.passthrough_bytes > self.limits.max_body_bytes {
                return PError::e_explain(ErrorType::HTTPStatus(413), "request body over limits.max_body_bytes");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        _upstream_response: &mut pingora_http::ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        // A pass-through answer while draining closes its connection too.
        if crate::lifecycle::draining() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &PError, _ctx: &mut Ctx) -> FailToProxy {
        // Pass-through failures still answer in V2's shape, saying who failed.
        let upstream = || self.default_upstream.as_ref().map(|u| u.config.to_string()).unwrap_or_default();
        let error = match e.etype() {
            ErrorType::HTTPStatus(413) => Some(Error::too_large(format!(
                "request body exceeds the limit of {} bytes (limits.max_body_bytes)",
                self.limits.max_body_bytes
            ))),
            ErrorType::HTTPStatus(code) => Some(Error::new(
                ErrorKind::Backend(BackendFailure::Http { status: *code, reply: None }),
                format!("pass-through failed: {e}"),
            )),
            ErrorType::ConnectNoRoute => Some(Error::new(
                ErrorKind::Backend(BackendFailure::Unreachable),
                format!("default upstream {} failed: {}", upstream(), e.context.as_ref().map_or("", |c| c.as_str())),
            )),
            _ => match e.esource() {
                ErrorSource::Upstream => {
                    let failure = if matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::ConnectTimedout) {
                        BackendFailure::Timeout
                    } else {
                        BackendFailure::Unreachable
                    };
                    // A TLS failure's context says why (an unknown issuer, a name mismatch).
                    let why = match e.context.as_ref() {
                        Some(c) => format!("{}: {}", e.etype().as_str(), c.as_str()),
                        None => e.etype().as_str().to_string(),
                    };
                    Some(Error::new(
                        ErrorKind::Backend(failure),
                        format!("default upstream {} failed: {why}", upstream()),
                    ))
                }
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => None,
                    _ => Some(Error::bad_request(format!("bad request: {}", e.etype().as_str()))),
                },
                ErrorSource::Internal | ErrorSource::Unset => {
                    Some(Error::internal(format!("internal error: {}", e.etype().as_str())))
                }
            },
        };
        let Some(error) = error else {
            return FailToProxy { error_code: 0, can_reuse_downstream: false };
        };
        let reply = Reply::error(&error);
        let code = reply.status;
        // The connection stays usable when nothing reached the upstream and
        // the client's request was read whole: a failed connect, say.
        let reusable = matches!(e.etype(), ErrorType::ConnectNoRoute | ErrorType::ConnectRefused)
            && session.as_downstream_mut().is_body_done();
        if session.response_written().is_none() && reply::write(session, reply).await.is_ok() && reusable {
            return FailToProxy { error_code: code, can_reuse_downstream: true };
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&PError>, ctx: &mut Ctx) {
        let code = session.response_written().map_or(0, |r| r.status.as_u16());
        if ctx.passthrough {
            self.metrics.count_passthrough(code);
        }
        // Access log off: nothing of the line is gathered.
        if !switchyard_stats::access_log::enabled() {
            return;
        }
        let Some(uri) = &ctx.uri else { return };
        let req = session.req_header();
        let (model, version) = match classify(&req.method, uri.path()) {
            Endpoint::Infer(m, v)
            | Endpoint::ModelMetadata(m, v)
            | Endpoint::ModelReady(m, v)
            | Endpoint::TsPredict(m, v, _) => (Some(m), v),
            _ => (None, None),
        };
        let downstream = session.as_downstream();
        let note = Note {
            model: model.map(str::to_string),
            version: version.map(str::to_string),
            variant: ctx.variant.as_ref().and_then(|v| v.to_str().ok()).map(str::to_string),
            error: ctx.error.or(e.map(|_| "proxy_error")),
            bytes_in: downstream.body_bytes_read() as u64,
            bytes_out: downstream.body_bytes_sent() as u64,
            body_sha256: ctx.body_sha256.take(),
            rule: ctx.rule.take(),
        };
        Record {
            protocol: "http",
            method: req.method.as_str(),
            path: uri.path(),
            headers: &req.headers,
            principal: ctx.principal.as_deref().map(|p| &*p.name),
            client: session.client_addr().map(|a| a.to_string()),
            // 499: the client left before its answer.
            status: if code == 0 { u32::from(crate::respond::CLIENT_CLOSED) } else { u32::from(code) },
            latency: ctx.start.elapsed(),
            note: &note,
        }
        .write();
    }
}

/// Hands the request to the default upstream unchanged. `check`: the path
/// names no routed model, so the principal (when auth is on) must hold
/// `passthrough`; a refusal is answered here (`Ok(true)`).
async fn pass_through(session: &mut Session, ctx: &mut Ctx, check: bool) -> Result<bool> {
    if let (true, Some(p)) = (check, ctx.principal.as_deref()) {
        let what = format!("call {} through the default upstream", session.req_header().uri.path());
        if let Err(e) = p.require("passthrough", &what) {
            let reply = Reply::error(&e);
            ctx.remember(&reply);
            reply::write(session, reply).await?;
            return Ok(true);
        }
    }
    ctx.passthrough = true;
    Ok(false)
}
