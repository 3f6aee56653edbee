//! The data-plane gRPC listener (tonic): KServe V2 `inference.GRPCInferenceService`.
//!
//! Requests decode into the same tensor model as HTTP and go through the same
//! `pipeline::select` / `execute` / `record`, so routing, A/B splits, sticky
//! keys, variant overrides and batching behave identically on both
//! protocols. Sticky key and variant override come from gRPC metadata (the
//! same header names as HTTP). ModelConfig, ModelStatistics and Repository*
//! are passed through to a `v2-grpc` backend. It runs on its own tokio
//! runtime, beside pingora's.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderMap, HeaderValue};
use prost::Message;
use switchyard_config::GrpcListener;
use switchyard_runtime::backend::v2_grpc::V2GrpcBackend;
use switchyard_runtime::codec::grpc::{self as codec, pb};
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Service;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::dataplane::{BATCH_SIZE_HEADER, OVERHEAD_HEADER, VARIANT_HEADER};
use crate::metrics::Metrics;
use crate::pipeline;
use crate::respond::ApiError;
use crate::routing::{RoutingTable, Selection};

use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

/// Requests of one `ModelStreamInfer` stream in flight at once; more wait for the oldest to answer.
const STREAM_WINDOW: usize = 128;
/// Extensions advertised in ServerMetadata (the same server as over HTTP).
const EXTENSIONS: &[&str] = &["binary_tensor_data"];

/// A running gRPC listener; serving stops when it is dropped.
pub struct GrpcServer {
    pub local_addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

/// Binds `cfg.address` now (so a taken port fails start-up) and serves on a
/// runtime of `threads` workers of its own.
pub fn serve(
    cfg: &GrpcListener,
    threads: usize,
    table: Arc<ArcSwap<RoutingTable>>,
    metrics: Metrics,
) -> std::io::Result<GrpcServer> {
    let std_listener = std::net::TcpListener::bind(cfg.address)
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding listeners.grpc.address {}: {e}", cfg.address)))?;
    std_listener.set_nonblocking(true)?;
    let local_addr = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("switchyard-grpc")
        .enable_all()
        .build()?;
    let max = cfg.max_message_bytes;
    let front = FrontEnd { shared: Arc::new(Shared { table, metrics, max_message_bytes: max }) };
    let svc = ResourceExhaustedOverLimit(
        GrpcInferenceServiceServer::new(front).max_decoding_message_size(max).max_encoding_message_size(max),
    );
    let listener = {
        let _rt = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener)?
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    runtime.spawn(async move {
        let result = tonic::transport::Server::builder()
            .http2_adaptive_window(Some(true))
            .serve_with_incoming(svc, incoming)
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC listener stopped");
        }
    });
    tracing::info!(grpc = %local_addr, max_message_bytes = max, "gRPC listener started");
    Ok(GrpcServer { local_addr, _runtime: runtime })
}

/// tonic rejects an over-limit message with OUT_OF_RANGE before any handler
/// runs; gRPC (and Triton) call that RESOURCE_EXHAUSTED. Rewrites those answers.
#[derive(Clone)]
struct ResourceExhaustedOverLimit<S>(S);

impl<S, B> Service<http::Request<B>> for ResourceExhaustedOverLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // Trailers-only answers carry the status in the headers.
            match Status::from_header_map(resp.headers()) {
                Some(s) if s.code() == Code::OutOfRange => Ok(over_limit(&s).into_http()),
                _ => Ok(resp),
            }
        })
    }
}

/// tonic's "message length too large" → RESOURCE_EXHAUSTED naming the setting.
fn over_limit(s: &Status) -> Status {
    if s.message().contains("message length too large") {
        Status::resource_exhausted(format!("{} (listeners.grpc.max_message_bytes)", s.message()))
    } else {
        s.clone()
    }
}

/// The client's deadline (`grpc-timeout`: digits and a unit H, M, S, m, u or n).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

struct Shared {
    table: Arc<ArcSwap<RoutingTable>>,
    metrics: Metrics,
    max_message_bytes: usize,
}

#[derive(Clone)]
struct FrontEnd {
    shared: Arc<Shared>,
}

/// A successful inference and what its response metadata says.
struct Answer {
    response: pb::ModelInferResponse,
    variant: HeaderValue,
    batch_rows: Option<usize>,
    cache: Option<crate::cache::CacheStatus>,
    overhead: Duration,
}

/// Decrements the in-flight gauge however the request ends.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn version_opt(v: &str) -> Option<&str> {
    Some(v).filter(|v| !v.is_empty())
}

fn select<'t>(
    table: &'t RoutingTable,
    headers: &HeaderMap,
    model: &str,
    version: Option<&str>,
) -> Result<Selection<'t>, ApiError> {
    pipeline::select(table, model, version, |h| headers.get(h).map(|v| v.as_bytes()))
}

impl Shared {
    /// One inference, start to end: route, decode, run, encode, record.
    async fn infer(
        &self,
        headers: &HeaderMap,
        mut msg: pb::ModelInferRequest,
        deadline: Option<Duration>,
    ) -> Result<Answer, ApiError> {
        let start = Instant::now();
        let _in_flight = InFlight::new(&self.metrics.in_flight);
        // One snapshot per request, kept to the end.
        let table = self.table.load_full();
        let model = std::mem::take(&mut msg.model_name);
        let version = std::mem::take(&mut msg.model_version);
        let sel = match select(&table, headers, &model, version_opt(&version)) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.count_unrouted(&model, e.status);
                return Err(e);
            }
        };
        let mut backend_time = Duration::ZERO;
        let mut batch_rows = None;
        let mut cache = None;
        let result: Result<pb::ModelInferResponse, ApiError> = async {
            let decoded = codec::decode_request(msg)?;
            let id = decoded.request.id.clone();
            let t0 = Instant::now();
            let directive =
                crate::cache::Directive::from_header(headers.get(http::header::CACHE_CONTROL).map(|v| v.as_bytes()));
            let call = pipeline::execute(&sel, &model, version_opt(&version), decoded.request, directive);
            let executed = match deadline {
                None => call.await,
                Some(d) => tokio::time::timeout(d, call).await.unwrap_or_else(|_| {
                    Err(ApiError::new(504, format!("the client's deadline of {d:?} passed before the answer")))
                }),
            };
            backend_time = t0.elapsed();
            let pipeline::Executed { response: mut resp, batch_rows: rows, cache: status } = executed?;
            batch_rows = rows;
            cache = status;
            resp.model_name = model.clone();
            if id.is_some() {
                resp.id = id;
            }
            let out = codec::encode_response(resp, decoded.raw);
            let len = out.encoded_len();
            if len > self.max_message_bytes {
                return Err(ApiError::new(
                    413,
                    format!(
                        "response of {len} bytes exceeds listeners.grpc.max_message_bytes ({})",
                        self.max_message_bytes
                    ),
                ));
            }
            Ok(out)
        }
        .await;
        let total = start.elapsed();
        let status = result.as_ref().map_or_else(|e| e.status, |_| 200);
        pipeline::record(sel.variant, status, total, backend_time);
        result.map(|response| Answer {
            response,
            variant: sel.variant.header_value.clone(),
            batch_rows,
            cache,
            overhead: total.saturating_sub(backend_time),
        })
    }

    /// One request of a stream; an error goes in `error_message` (the stream goes on).
    async fn stream_one(&self, headers: &HeaderMap, msg: pb::ModelInferRequest) -> pb::ModelStreamInferResponse {
        let (model_name, model_version, id) = (msg.model_name.clone(), msg.model_version.clone(), msg.id.clone());
        match self.infer(headers, msg, None).await {
            Ok(a) => pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(a.response) },
            Err(e) => pb::ModelStreamInferResponse {
                error_message: e.message,
                // Lets the client tell which request failed.
                infer_response: Some(pb::ModelInferResponse { model_name, model_version, id, ..Default::default() }),
            },
        }
    }
}

/// The v2-grpc backend a pass-through RPC about `model` goes to, with the selection made for it.
fn grpc_backend<'t>(
    rpc: &str,
    table: &'t RoutingTable,
    headers: &HeaderMap,
    model: &str,
    version: &str,
) -> Result<(Selection<'t>, &'t V2GrpcBackend), Status> {
    let sel = select(table, headers, model, version_opt(version)).map_err(|e| e.grpc_status())?;
    match sel.variant.backend.v2_grpc() {
        Some(b) => Ok((sel, b)),
        None => Err(Status::unimplemented(format!(
            "{rpc} is passed through to v2-grpc backends only; model '{model}' variant '{}' is served by backend `{}` of kind {}",
            sel.variant.name,
            sel.variant.backend_name,
            sel.variant.backend.kind()
        ))),
    }
}

/// The one v2-grpc backend behind the routes, for pass-through RPCs that name no model.
fn sole_grpc_backend<'t>(rpc: &str, table: &'t RoutingTable) -> Result<&'t V2GrpcBackend, Status> {
    let mut found: Vec<(&str, &V2GrpcBackend)> = Vec::new();
    for v in table.all_routes().flat_map(|r| r.variants.iter()) {
        if let Some(b) = v.backend.v2_grpc() {
            if !found.iter().any(|(_, f)| std::ptr::eq(*f, b)) {
                found.push((&v.backend_name, b));
            }
        }
    }
    match found.as_slice() {
        [(_, b)] => Ok(b),
        [] => {
            Err(Status::unimplemented(format!("{rpc} is passed through to a v2-grpc backend, and no route uses one")))
        }
        many => Err(Status::failed_precondition(format!(
            "{rpc} without a model name is ambiguous: routes use several v2-grpc backends ({}); name a model",
            many.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
        ))),
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for FrontEnd {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        let table = self.shared.table.load_full();
        let unready = pipeline::unready_routes(&table).await;
        Ok(Response::new(pb::ServerReadyResponse { ready: unready.is_empty() }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, m) = request.into_parts();
        let ready = match select(&table, md.as_ref(), &m.name, version_opt(&m.version)) {
            // An unknown model is simply not ready, as Triton answers.
            Err(_) => false,
            Ok(sel) => sel.variant.backend.model_ready(&sel.target).await.unwrap_or_else(|e| {
                tracing::debug!(model = %m.name, error = %e, "model readiness probe failed");
                false
            }),
        };
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "switchyard".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, m) = request.into_parts();
        let sel = select(&table, md.as_ref(), &m.name, version_opt(&m.version)).map_err(|e| e.grpc_status())?;
        let meta =
            sel.variant.backend.model_metadata(&sel.target).await.map_err(|e| ApiError::from(e).grpc_status())?;
        // Clients know the model by its public name, whatever the backend calls it.
        let out = codec::metadata_from_json(&meta, &m.name)
            .map_err(|e| Status::unavailable(format!("backend sent invalid model metadata: {e}")))?;
        let mut resp = Response::new(out);
        resp.metadata_mut().as_mut().insert(VARIANT_HEADER, sel.variant.header_value.clone());
        Ok(resp)
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let (md, _, msg) = request.into_parts();
        let headers: &HeaderMap = md.as_ref();
        let a = self.shared.infer(headers, msg, grpc_timeout(headers)).await.map_err(|e| e.grpc_status())?;
        let mut resp = Response::new(a.response);
        let h = resp.metadata_mut().as_mut();
        h.insert(VARIANT_HEADER, a.variant);
        h.insert(OVERHEAD_HEADER, HeaderValue::from(a.overhead.as_micros() as u64));
        if let Some(rows) = a.batch_rows {
            h.insert(BATCH_SIZE_HEADER, HeaderValue::from(rows));
        }
        if let Some(status) = a.cache {
            h.insert(crate::cache::CACHE_HEADER, status.header_value());
        }
        Ok(resp)
    }

    type ModelStreamInferStream = ReceiverStream<Result<pb::ModelStreamInferResponse, Status>>;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let (md, _, mut inbound) = request.into_parts();
        // Sticky key and override are the stream's: every request on it is routed alike.
        let headers = Arc::new(md.into_headers());
        let (out_tx, out_rx) = mpsc::channel(STREAM_WINDOW);
        let (pending_tx, mut pending_rx) = mpsc::channel::<Pending>(STREAM_WINDOW);
        let shared = self.shared.clone();
        // Reader: starts every request as it arrives, so many run at once.
        tokio::spawn(async move {
            loop {
                let next = match inbound.message().await {
                    Ok(Some(msg)) => {
                        let (shared, headers) = (shared.clone(), headers.clone());
                        Pending::Running(AbortOnDrop(tokio::spawn(
                            async move { shared.stream_one(&headers, msg).await },
                        )))
                    }
                    Ok(None) => break,
                    Err(s) => Pending::Failed(over_limit(&s)),
                };
                let failed = matches!(next, Pending::Failed(_));
                if pending_tx.send(next).await.is_err() || failed {
                    break;
                }
            }
        });
        // Writer: answers in request order.
        tokio::spawn(async move {
            while let Some(p) = pending_rx.recv().await {
                let (item, last) = match p {
                    Pending::Running(mut task) => match (&mut task.0).await {
                        Ok(r) => (Ok(r), false),
                        Err(e) => (
                            Ok(pb::ModelStreamInferResponse {
                                error_message: format!("internal error: the request's task failed: {e}"),
                                infer_response: None,
                            }),
                            false,
                        ),
                    },
                    Pending::Failed(s) => (Err(s), true),
                };
                // A client that went away drops the rest (and aborts what still runs).
                if out_tx.send(item).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }

    async fn model_config(
        &self,
        request: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, mut m) = request.into_parts();
        let (sel, backend) = grpc_backend("ModelConfig", &table, md.as_ref(), &m.name, &m.version)?;
        m.name = sel.target.name.to_string();
        m.version = sel.target.version.as_deref().unwrap_or_default().to_owned();
        backend.model_config(m).await.map(Response::new)
    }

    async fn model_statistics(
        &self,
        request: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, mut m) = request.into_parts();
        let backend = if m.name.is_empty() {
            sole_grpc_backend("ModelStatistics", &table)?
        } else {
            let (sel, backend) = grpc_backend("ModelStatistics", &table, md.as_ref(), &m.name, &m.version)?;
            m.name = sel.target.name.to_string();
            m.version = sel.target.version.as_deref().unwrap_or_default().to_owned();
            backend
        };
        backend.model_statistics(m).await.map(Response::new)
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let table = self.shared.table.load_full();
        let backend = sole_grpc_backend("RepositoryIndex", &table)?;
        backend.repository_index(request.into_inner()).await.map(Response::new)
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, mut m) = request.into_parts();
        let (sel, backend) = grpc_backend("RepositoryModelLoad", &table, md.as_ref(), &m.model_name, "")?;
        m.model_name = sel.target.name.to_string();
        backend.repository_model_load(m).await.map(Response::new)
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        let table = self.shared.table.load_full();
        let (md, _, mut m) = request.into_parts();
        let (sel, backend) = grpc_backend("RepositoryModelUnload", &table, md.as_ref(), &m.model_name, "")?;
        m.model_name = sel.target.name.to_string();
        backend.repository_model_unload(m).await.map(Response::new)
    }
}

/// A stream request in flight, or the failure that ends the stream.
enum Pending {
    Running(AbortOnDrop),
    Failed(Status),
}

/// Aborts the request's task when its answer is no longer wanted.
struct AbortOnDrop(tokio::task::JoinHandle<pb::ModelStreamInferResponse>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut h = HeaderMap::new();
        for (v, want) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("100u", Some(Duration::from_micros(100))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("7n", Some(Duration::from_nanos(7))),
            ("5x", None),
            ("S", None),
            ("", None),
        ] {
            h.insert("grpc-timeout", HeaderValue::from_static(v));
            assert_eq!(grpc_timeout(&h), want, "{v:?}");
        }
    }

    #[test]
    fn over_limit_becomes_resource_exhausted() {
        let s = over_limit(&Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("listeners.grpc.max_message_bytes"));
        assert_eq!(over_limit(&Status::out_of_range("other")).code(), Code::OutOfRange);
    }
}
