//! The data-plane gRPC listener (tonic): KServe V2 `inference.GRPCInferenceService`.
//!
//! Requests decode into the same tensor model as HTTP and go through the same
//! lifecycle (`pipeline::infer`), so routing, A/B splits, sticky keys,
//! variant overrides, caching and batching behave identically on both
//! protocols. Sticky key and variant override come from gRPC metadata (the
//! same header names as HTTP). `service` answers the RPCs, `exchange` is the
//! gRPC half of an inference, `stream` serves ModelStreamInfer, and
//! `passthrough` relays ModelConfig, ModelStatistics and Repository* to a
//! `v2-grpc` backend. It runs on its own tokio runtime, beside pingora's.

mod edge;
mod embedded;
mod exchange;
mod passthrough;
mod service;
mod stream;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use switchyard_config::GrpcListener;
use switchyard_runtime::codec::grpc::pb;
use tonic::codegen::Service;
use tonic::{Code, Status};

use self::edge::Edge;
use self::exchange::{over_limit, Shared};
use self::service::FrontEnd;
use crate::metrics::Metrics;
use crate::routing::RoutingTable;

use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

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
    guards: crate::Guards,
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
    let front =
        FrontEnd { shared: Arc::new(Shared { table, metrics, max_message_bytes: max, guards: guards.clone() }) };
    let svc = Edge {
        inner: ResourceExhaustedOverLimit(
            GrpcInferenceServiceServer::new(front).max_decoding_message_size(max).max_encoding_message_size(max),
        ),
        auth: guards.auth,
    };
    let listener = {
        let _rt = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener)?
    };
    let builder = tonic::transport::Server::builder().http2_adaptive_window(Some(true));
    match &cfg.tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            runtime.spawn(async move {
                let result = { builder }.serve_with_incoming(svc, incoming).await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC listener stopped");
                }
            });
        }
        Some(t) => {
            let server_tls = crate::tls::ServerTls::load(t, "listeners.grpc").map_err(std::io::Error::other)?;
            let config = server_tls.rustls_config(&[b"h2"]).map_err(std::io::Error::other)?;
            runtime.spawn(async move {
                // Kept with the listener: its certificate reloads while it lives.
                let _tls = server_tls;
                let incoming = tls::incoming(listener, config);
                let result = { builder }.serve_with_incoming(svc, incoming).await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "gRPC listener stopped");
                }
            });
        }
    }
    tracing::info!(grpc = %local_addr, tls = cfg.tls.is_some(), max_message_bytes = max, "gRPC listener started");
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
