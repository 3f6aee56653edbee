//! The data-plane HTTP listener on pingora. `request_filter` classifies the
//! path (`classify`) and answers KServe V2 REST and the probes natively
//! (`v2`, through the shared lifecycle; bodies read by `body`, answers
//! written by `reply`); every other path is proxied unchanged by pingora
//! to the listener's default upstream (`upstream`, resolved off the
//! request path).

mod body;
mod classify;
mod reply;
mod upstream;
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
use switchyard_config::{Limits, Upstream};

use self::classify::{classify, Endpoint};
use self::reply::Reply;
use self::upstream::ResolvedUpstream;
use crate::error::{BackendFailure, Error, ErrorKind};
use crate::metrics::Metrics;
use crate::routing::RoutingTable;

/// The HTTP listener's state, shared by pingora's worker threads.
pub struct HttpListener {
    table: Arc<ArcSwap<RoutingTable>>,
    metrics: Metrics,
    limits: Limits,
    default_upstream: Option<ResolvedUpstream>,
}

impl HttpListener {
    /// `default_upstream`, when set, is resolved now (a hostname: again in the background).
    pub fn new(
        table: Arc<ArcSwap<RoutingTable>>,
        metrics: Metrics,
        limits: Limits,
        default_upstream: Option<Upstream>,
    ) -> HttpListener {
        HttpListener { table, metrics, limits, default_upstream: default_upstream.map(ResolvedUpstream::start) }
    }
}

pub struct Ctx {
    start: Instant,
    passthrough: bool,
    /// Body bytes seen so far on a pass-through request.
    passthrough_bytes: u64,
}

#[async_trait]
impl ProxyHttp for HttpListener {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { start: Instant::now(), passthrough: false, passthrough_bytes: 0 }
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
        let method = session.req_header().method.clone();
        let endpoint = classify(&method, uri.path());
        let probe = matches!(
            endpoint,
            Endpoint::Health | Endpoint::Startup | Endpoint::V2Live | Endpoint::Ready | Endpoint::V2Ready
        );
        if !probe && crate::lifecycle::over_connection_cap() {
            // Accepted past limits.max_connections: kept for the probes only.
            session.set_keepalive(None);
            let e = Error::overloaded(1, "too many open connections (limits.max_connections); retry later");
            reply::write(session, Reply::error(&e)).await?;
            return Ok(true);
        }
        if endpoint == Endpoint::Other {
            if self.default_upstream.is_some() {
                ctx.passthrough = true;
                let max = self.limits.max_body_bytes;
                if let Some(n) = body::declared_length(session.req_header()).filter(|n| *n > max) {
                    reply::write(session, Reply::error(&body::too_big(n, max))).await?;
                    return Ok(true);
                }
                return Ok(false);
            }
            let e = Error::not_found(format!("no route for {} {}", method, uri.path()));
            reply::write(session, Reply::error(&e)).await?;
            return Ok(true);
        }
        // One snapshot per request, kept to the end.
        let table = self.table.load_full();
        let reply = match endpoint {
            Endpoint::Health => Reply::json(200, &br#"{"status":"live"}"#[..]),
            Endpoint::Startup => Reply::json(200, &br#"{"status":"started"}"#[..]),
            Endpoint::V2Live => Reply::json(200, Bytes::new()),
            Endpoint::Ready => v2::readiness(&table, false).await,
            Endpoint::V2Ready => v2::readiness(&table, true).await,
            Endpoint::V2Server => v2::server_metadata(),
            Endpoint::ModelMetadata(m, v) => v2::model_query(&session.req_header().headers, &table, m, v, false).await,
            Endpoint::ModelReady(m, v) => v2::model_query(&session.req_header().headers, &table, m, v, true).await,
            Endpoint::Infer(m, v) => v2::infer(session, &table, &self.metrics, &self.limits, m, v, ctx.start).await,
            Endpoint::WrongMethod(allowed) => Reply::error(&Error::new(
                ErrorKind::MethodNotAllowed { allowed },
                format!("{} is not allowed on {} (use {allowed})", method, uri.path()),
            )),
            Endpoint::Other => Reply::error(&Error::internal("pass-through path reached the V2 handlers")),
        };
        reply::write(session, reply).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let up = self
            .default_upstream
            .as_ref()
            .ok_or_else(|| PError::explain(ErrorType::InternalError, "no default upstream"))?;
        match up.addr() {
            Some(addr) => Ok(Box::new(HttpPeer::new(addr, false, String::new()))),
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
                    Some(Error::new(
                        ErrorKind::Backend(failure),
                        format!("default upstream {} failed: {}", upstream(), e.etype().as_str()),
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

    async fn logging(&self, session: &mut Session, _e: Option<&PError>, ctx: &mut Ctx) {
        if ctx.passthrough {
            let code = session.response_written().map_or(0, |r| r.status.as_u16());
            self.metrics.passthrough.with_label_values(&[&code.to_string()]).inc();
        }
    }
}
