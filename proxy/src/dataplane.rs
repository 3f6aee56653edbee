//! The data-plane HTTP listener on pingora: KServe V2 REST and the probes are
//! answered natively in `request_filter`; every other path is proxied
//! unchanged to the listener's default upstream by pingora itself.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use switchyard_config::{Limits, Upstream};
use switchyard_runtime::codec::v2::{self, HEADER_CONTENT_LENGTH};
use switchyard_runtime::tensor::RequestedOutput;

use crate::metrics::Metrics;
use crate::pipeline;
use crate::respond::ApiError;
use crate::routing::{RoutingTable, Selection};

pub const VARIANT_HEADER: &str = "x-switchyard-variant";
pub const OVERHEAD_HEADER: &str = "x-switchyard-overhead-us";
pub const BATCH_SIZE_HEADER: &str = "x-switchyard-batch-size";
/// nginx's "client closed request": counted, never written.
const CLIENT_CLOSED: u16 = 499;

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Health,
    Ready,
    Startup,
    V2Live,
    V2Ready,
    V2Server,
    ModelMetadata(&'a str, Option<&'a str>),
    ModelReady(&'a str, Option<&'a str>),
    Infer(&'a str, Option<&'a str>),
    /// A path we know, with the wrong method.
    WrongMethod(&'static str),
    /// Anything else: passed through to the default upstream.
    Other,
}

fn classify<'a>(method: &Method, path: &'a str) -> Endpoint<'a> {
    let get = method == Method::GET || method == Method::HEAD;
    let simple = |e: Endpoint<'a>| if get { e } else { Endpoint::WrongMethod("GET") };
    match path {
        "/health" => return simple(Endpoint::Health),
        "/ready" => return simple(Endpoint::Ready),
        "/startup" => return simple(Endpoint::Startup),
        "/v2/health/live" => return simple(Endpoint::V2Live),
        "/v2/health/ready" => return simple(Endpoint::V2Ready),
        "/v2" | "/v2/" => return simple(Endpoint::V2Server),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/models/") else {
        return Endpoint::Other;
    };
    let mut parts = rest.split('/');
    let model = match parts.next() {
        Some(m) if !m.is_empty() => m,
        _ => return Endpoint::Other,
    };
    let mut next = parts.next();
    let mut version = None;
    if next == Some("versions") {
        match parts.next() {
            Some(v) if !v.is_empty() => version = Some(v),
            _ => return Endpoint::Other,
        }
        next = parts.next();
    }
    let action = match (next, parts.next()) {
        (None, _) | (Some(""), None) => "",
        (Some(a), None) => a,
        _ => return Endpoint::Other,
    };
    match action {
        "" => simple(Endpoint::ModelMetadata(model, version)),
        "ready" => simple(Endpoint::ModelReady(model, version)),
        "infer" if method == Method::POST => Endpoint::Infer(model, version),
        "infer" => Endpoint::WrongMethod("POST"),
        _ => Endpoint::Other,
    }
}

/// Shared state of the data plane, cheap to clone into pingora.
pub struct DataPlane {
    pub table: Arc<ArcSwap<RoutingTable>>,
    pub metrics: Metrics,
    pub limits: Limits,
    pub default_upstream: Option<Upstream>,
}

pub struct Ctx {
    start: Instant,
    passthrough: bool,
    /// Body bytes seen so far on a pass-through request.
    passthrough_bytes: u64,
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What the client asked of the outputs, kept after the request moves to the backend.
struct OutputPrefs {
    outputs: Vec<RequestedOutput>,
    default_binary: bool,
}

impl OutputPrefs {
    fn binary(&self, name: &str) -> bool {
        self.outputs.iter().find(|o| o.name == name).and_then(|o| o.binary).unwrap_or(self.default_binary)
    }
}

#[derive(Default)]
struct Reply {
    status: u16,
    body: Bytes,
    content_type: &'static str,
    header_len: Option<usize>,
    variant: Option<HeaderValue>,
    overhead_us: Option<u64>,
    batch_rows: Option<usize>,
    cache: Option<crate::cache::CacheStatus>,
    retry_after: Option<u32>,
}

impl Reply {
    fn json(status: u16, body: Vec<u8>) -> Reply {
        Reply { status, body: Bytes::from(body), content_type: "application/json", ..Reply::default() }
    }

    fn error(e: &ApiError) -> Reply {
        Reply {
            status: e.status,
            body: v2::error_body(&e.message),
            content_type: "application/json",
            retry_after: e.retry_after,
            ..Reply::default()
        }
    }
}

fn header_len(req: &RequestHeader) -> std::result::Result<Option<usize>, ApiError> {
    match req.headers.get(HEADER_CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(Some)
            .ok_or_else(|| ApiError::new(400, "Inference-Header-Content-Length must be a non-negative integer")),
    }
}

fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

fn body_too_big(n: u64, max: u64) -> ApiError {
    ApiError::new(413, format!("request body of {n} bytes exceeds the limit of {max} bytes (limits.max_body_bytes)"))
}

async fn read_body(session: &mut Session, limits: &Limits) -> std::result::Result<Bytes, ApiError> {
    let max = limits.max_body_bytes;
    let too_big = |n: u64| {
        ApiError::new(
            413,
            format!("request body of {n} bytes exceeds the limit of {max} bytes (limits.max_body_bytes)"),
        )
    };
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > max) {
        return Err(too_big(n));
    }
    session.set_read_timeout(Some(limits.header_read_timeout));
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let chunk = session.read_request_body().await.map_err(|e| {
            if e.etype() == &ErrorType::ReadTimedout {
                ApiError::new(408, "timed out reading the request body")
            } else {
                ApiError::new(400, format!("cannot read the request body: {e}"))
            }
        })?;
        let Some(chunk) = chunk else { break };
        let have = first.as_ref().map_or(0, |f| f.len()) + buf.len();
        if (have + chunk.len()) as u64 > max {
            return Err(too_big((have + chunk.len()) as u64));
        }
        // The common case is one chunk: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            None => buf.extend_from_slice(&chunk),
            Some(f) => {
                buf.reserve(declared.unwrap_or(0) as usize);
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

impl DataPlane {
    fn select<'t>(
        &self,
        table: &'t RoutingTable,
        req: &RequestHeader,
        model: &str,
        version: Option<&str>,
    ) -> std::result::Result<Selection<'t>, ApiError> {
        pipeline::select(table, model, version, |h| req.headers.get(h).map(|v| v.as_bytes()))
    }

    async fn infer(
        &self,
        session: &mut Session,
        table: &RoutingTable,
        model: &str,
        version: Option<&str>,
        start: Instant,
    ) -> Reply {
        let sel = match self.select(table, session.req_header(), model, version) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.count_unrouted(model, e.status);
                return Reply::error(&e);
            }
        };
        let variant = sel.variant;
        let mut backend_time = std::time::Duration::ZERO;
        let mut batch_rows = None;
        let mut cache = None;
        let result: std::result::Result<Reply, ApiError> = async {
            let header_len = header_len(session.req_header())?;
            let body = read_body(session, &self.limits).await?;
            let req = v2::decode_request(&body, header_len)?;
            drop(body);
            // Only an output's own `binary_data` can differ from the default.
            let outputs = if req.outputs.iter().any(|o| o.binary.is_some()) { req.outputs.clone() } else { Vec::new() };
            let prefs = OutputPrefs { outputs, default_binary: req.binary_output };
            let id = req.id.clone();
            let t0 = Instant::now();
            let directive = crate::cache::Directive::from_header(
                session.req_header().headers.get(http::header::CACHE_CONTROL).map(|v| v.as_bytes()),
            );
            let call = pipeline::execute(&sel, model, version, req, directive);
            // A client that hangs up stops the wait: its queued work is dropped
            // and an unbatched backend call is cancelled.
            session.set_abort_on_close(true);
            tokio::pin!(call);
            let result = tokio::select! {
                r = &mut call => r,
                idle = session.read_body_or_idle(true) => match idle {
                    Err(_) => Err(ApiError::new(CLIENT_CLOSED, "client closed the connection")),
                    Ok(_) => call.await,
                },
            };
            backend_time = t0.elapsed();
            let pipeline::Executed { response: mut resp, batch_rows: rows, cache: status } = result?;
            batch_rows = rows;
            cache = status;
            resp.model_name = model.to_string();
            if id.is_some() {
                resp.id = id;
            }
            let enc = v2::encode_response(&resp, |n| prefs.binary(n));
            Ok(Reply {
                status: 200,
                content_type: if enc.header_len.is_some() { "application/octet-stream" } else { "application/json" },
                header_len: enc.header_len,
                body: enc.body,
                ..Reply::default()
            })
        }
        .await;
        let mut reply = result.unwrap_or_else(|e| Reply::error(&e));
        reply.variant = Some(variant.header_value.clone());
        reply.batch_rows = batch_rows;
        reply.cache = cache;
        let total = start.elapsed();
        reply.overhead_us = Some(total.saturating_sub(backend_time).as_micros() as u64);
        pipeline::record(variant, reply.status, total, backend_time);
        reply
    }

    /// `GET /v2/models/{m}[/versions/{v}]` (metadata) or `.../ready`, answered by the variant's backend.
    async fn model_query(
        &self,
        req: &RequestHeader,
        table: &RoutingTable,
        model: &str,
        version: Option<&str>,
        ready: bool,
    ) -> Reply {
        let sel = match self.select(table, req, model, version) {
            Ok(s) => s,
            Err(e) => return Reply::error(&e),
        };
        let mut reply = if ready {
            match sel.variant.backend.model_ready(&sel.target).await {
                Ok(true) => Reply::json(200, Vec::new()),
                Ok(false) => Reply::error(&ApiError::new(503, format!("model '{model}' is not ready"))),
                Err(e) => Reply::error(&e.into()),
            }
        } else {
            match sel.variant.backend.model_metadata(&sel.target).await {
                Ok(mut meta) => {
                    // Clients know the model by its public name, whatever the backend calls it.
                    if let Some(obj) = meta.as_object_mut() {
                        obj.insert("name".into(), serde_json::Value::from(model));
                    }
                    Reply::json(200, serde_json::to_vec(&meta).expect("json"))
                }
                Err(e) => Reply::error(&e.into()),
            }
        };
        reply.variant = Some(sel.variant.header_value.clone());
        reply
    }

    async fn readiness(&self, table: &RoutingTable, v2_style: bool) -> Reply {
        let unready = pipeline::unready_routes(table).await;
        if unready.is_empty() {
            if v2_style {
                Reply::json(200, Vec::new())
            } else {
                Reply::json(200, br#"{"status":"ready"}"#.to_vec())
            }
        } else {
            Reply::error(&ApiError::new(503, format!("no ready backend for model(s): {}", unready.join(", "))))
        }
    }

    async fn write(&self, session: &mut Session, reply: Reply) -> Result<()> {
        if reply.status == CLIENT_CLOSED {
            return Ok(());
        }
        // No case map: every name here is lowercase or one pingora titles
        // itself, so the bytes on the wire are those of `build`, for less work.
        let mut h = ResponseHeader::build_no_case(reply.status, Some(8))?;
        h.insert_header(http::header::CONTENT_TYPE, HeaderValue::from_static(reply.content_type))?;
        h.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
        if let Some(n) = reply.header_len {
            h.insert_header(HEADER_CONTENT_LENGTH, n)?;
        }
        if let Some(v) = reply.variant {
            h.insert_header(VARIANT_HEADER, v)?;
        }
        if let Some(us) = reply.overhead_us {
            h.insert_header(OVERHEAD_HEADER, us)?;
        }
        if let Some(status) = reply.cache {
            h.insert_header(crate::cache::CACHE_HEADER, status.header_value())?;
        }
        if let Some(rows) = reply.batch_rows {
            h.insert_header(BATCH_SIZE_HEADER, rows)?;
        }
        if let Some(secs) = reply.retry_after {
            h.insert_header(http::header::RETRY_AFTER, secs)?;
        }
        let head_only = session.req_header().method == Method::HEAD;
        session.write_response_header(Box::new(h), head_only).await?;
        if !head_only {
            session.write_response_body(Some(reply.body), true).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for DataPlane {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { start: Instant::now(), passthrough: false, passthrough_bytes: 0 }
    }

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        // HTTP/1.1 clients may pipeline; without this pingora answers the first
        // request and drops the ones queued behind it. Persists across keep-alive reuses.
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.start = Instant::now();
        // The URI is refcounted: cloning it frees `session` for body reads.
        let uri = session.req_header().uri.clone();
        let method = session.req_header().method.clone();
        let endpoint = classify(&method, uri.path());
        if endpoint == Endpoint::Other {
            if self.default_upstream.is_some() {
                ctx.passthrough = true;
                if let Some(n) = declared_length(session.req_header()).filter(|n| *n > self.limits.max_body_bytes) {
                    self.write(session, Reply::error(&body_too_big(n, self.limits.max_body_bytes))).await?;
                    return Ok(true);
                }
                return Ok(false);
            }
            let e = ApiError::new(404, format!("no route for {} {}", method, uri.path()));
            self.write(session, Reply::error(&e)).await?;
            return Ok(true);
        }
        self.metrics.in_flight.inc();
        let _in_flight = InFlight(&self.metrics.in_flight);
        // One snapshot per request, kept to the end.
        let table = self.table.load_full();
        let reply = match endpoint {
            Endpoint::Health => Reply::json(200, br#"{"status":"live"}"#.to_vec()),
            Endpoint::Startup => Reply::json(200, br#"{"status":"started"}"#.to_vec()),
            Endpoint::V2Live => Reply::json(200, Vec::new()),
            Endpoint::Ready => self.readiness(&table, false).await,
            Endpoint::V2Ready => self.readiness(&table, true).await,
            Endpoint::V2Server => Reply::json(
                200,
                serde_json::to_vec(&serde_json::json!({
                    "name": "switchyard",
                    "version": env!("CARGO_PKG_VERSION"),
                    "extensions": ["binary_tensor_data"],
                }))
                .expect("json"),
            ),
            Endpoint::ModelMetadata(m, v) => self.model_query(session.req_header(), &table, m, v, false).await,
            Endpoint::ModelReady(m, v) => self.model_query(session.req_header(), &table, m, v, true).await,
            Endpoint::Infer(m, v) => self.infer(session, &table, m, v, ctx.start).await,
            Endpoint::WrongMethod(allowed) => Reply::error(&ApiError::new(
                405,
                format!("{} is not allowed on {} (use {allowed})", method, uri.path()),
            )),
            Endpoint::Other => unreachable!("handled above"),
        };
        self.write(session, reply).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let up = self
            .default_upstream
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no default upstream"))?;
        Ok(Box::new(HttpPeer::new(up.authority.as_str(), false, String::new())))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(up) = &self.default_upstream {
            if !up.base_path.is_empty() {
                let pq = upstream_request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                let uri: http::Uri = format!("{}{}", up.base_path, pq)
                    .parse()
                    .map_err(|_| Error::explain(ErrorType::InternalError, "bad upstream path"))?;
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
                return Error::e_explain(ErrorType::HTTPStatus(413), "request body over limits.max_body_bytes");
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, _ctx: &mut Ctx) -> FailToProxy {
        // Pass-through failures still answer in V2's shape, saying who failed.
        let (code, message) = match e.etype() {
            ErrorType::HTTPStatus(413) => (
                413,
                format!(
                    "request body exceeds the limit of {} bytes (limits.max_body_bytes)",
                    self.limits.max_body_bytes
                ),
            ),
            ErrorType::HTTPStatus(code) => (*code, format!("pass-through failed: {e}")),
            _ => match e.esource() {
                ErrorSource::Upstream => {
                    let upstream = self.default_upstream.as_ref().map(|u| u.to_string()).unwrap_or_default();
                    let code = if matches!(e.etype(), ErrorType::ReadTimedout | ErrorType::ConnectTimedout) {
                        504
                    } else {
                        502
                    };
                    (code, format!("default upstream {upstream} failed: {}", e.etype().as_str()))
                }
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => (0, String::new()),
                    _ => (400, format!("bad request: {}", e.etype().as_str())),
                },
                ErrorSource::Internal | ErrorSource::Unset => (500, format!("internal error: {}", e.etype().as_str())),
            },
        };
        if code > 0 && session.response_written().is_none() {
            let _ = self.write(session, Reply::error(&ApiError::new(code, message))).await;
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.passthrough {
            let code = session.response_written().map_or(0, |r| r.status.as_u16());
            self.metrics.passthrough.with_label_values(&[&code.to_string()]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_classify() {
        let get = Method::GET;
        let post = Method::POST;
        let cases: Vec<(&Method, &str, Endpoint)> = vec![
            (&get, "/health", Endpoint::Health),
            (&get, "/v2", Endpoint::V2Server),
            (&get, "/v2/health/ready", Endpoint::V2Ready),
            (&get, "/v2/models/mlp", Endpoint::ModelMetadata("mlp", None)),
            (&get, "/v2/models/mlp/versions/2", Endpoint::ModelMetadata("mlp", Some("2"))),
            (&get, "/v2/models/mlp/ready", Endpoint::ModelReady("mlp", None)),
            (&get, "/v2/models/mlp/versions/3/ready", Endpoint::ModelReady("mlp", Some("3"))),
            (&post, "/v2/models/mlp/infer", Endpoint::Infer("mlp", None)),
            (&post, "/v2/models/mlp/versions/1/infer", Endpoint::Infer("mlp", Some("1"))),
            (&get, "/v2/models/mlp/infer", Endpoint::WrongMethod("POST")),
            (&post, "/health", Endpoint::WrongMethod("GET")),
            (&get, "/v2/models/mlp/config", Endpoint::Other),
            (&get, "/v2/repository/index", Endpoint::Other),
            (&post, "/v1/models/x:predict", Endpoint::Other),
            (&get, "/v2/models/", Endpoint::Other),
            (&get, "/v2/models/mlp/versions/", Endpoint::Other),
        ];
        for (m, p, want) in cases {
            assert_eq!(classify(m, p), want, "{m} {p}");
        }
    }
}
