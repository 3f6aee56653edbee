//! The data-plane gRPC listener (tonic): KServe V2 `inference.GRPCInferenceService`.
//!
//! Requests decode into the same tensor model as HTTP and go through the same
//! lifecycle (`pipeline::infer`), so routing, A/B splits, sticky keys,
//! variant overrides, caching and batching behave identically on both
//! protocols. Sticky key and variant override come from gRPC metadata (the
//! same header names as HTTP). `service` answers the RPCs, `exchange` is the
//! gRPC half of an inference, `stream` serves ModelStreamInfer, and
//! `passthrough` relays ModelConfig, ModelStatistics and Repository* to a
//! `v2-grpc` backend; `ml` serves Switchyard's own `switchyard.ml.v1.Feedback`
//! beside it, `tfserving` TensorFlow Serving's `PredictionService` and
//! `ModelService`, and `torchserve` TorchServe's `InferenceAPIsService`
//! (through the same lifecycle). It runs as one of pingora's services (`GrpcService`), on
//! a runtime of its own, and drains and upgrades with the HTTP listener.

mod edge;
mod embedded;
mod exchange;
mod ml;
mod passthrough;
mod service;
mod stream;
mod tfserving;
mod tls;
mod torchserve;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use pingora_core::server::{ListenFds, ShutdownWatch};
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

/// The gRPC listener as one of pingora's services: it runs on a runtime
/// pingora makes for it, takes its socket from an old process on
/// `serve --upgrade` (and hands it on to the next through pingora's table),
/// and drains with the rest (`lifecycle`): GOAWAY, no new connections,
/// in-flight calls and streams finish.
pub struct GrpcService {
    /// The key of its socket in pingora's table: the configured address.
    key: String,
    /// Bound at start-up (so a taken port fails start-up), unless the socket comes from an old process.
    listener: Option<std::net::TcpListener>,
    threads: usize,
    shared: Arc<Shared>,
    /// `listeners.grpc.tls`: the reloading certificate and the rustls config built on it.
    tls: Option<(crate::tls::ServerTls, Arc<rustls::ServerConfig>)>,
}

impl GrpcService {
    /// Binds `cfg.address` now, unless `inherit` (an upgrade, where the
    /// socket comes from the old process), and loads its certificate when
    /// `cfg.tls` is set: either failing fails start-up.
    pub fn new(
        cfg: &GrpcListener,
        threads: usize,
        table: Arc<ArcSwap<RoutingTable>>,
        metrics: Metrics,
        guards: crate::guards::Guards,
        inherit: bool,
    ) -> std::io::Result<GrpcService> {
        let listener = if inherit {
            None
        } else {
            let l = std::net::TcpListener::bind(cfg.address).map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding listeners.grpc.address {}: {e}", cfg.address))
            })?;
            Some(l)
        };
        let tls = match &cfg.tls {
            None => None,
            Some(t) => {
                let server_tls = crate::tls::ServerTls::load(t, "listeners.grpc").map_err(std::io::Error::other)?;
                let config = server_tls.rustls_config(&[b"h2"]).map_err(std::io::Error::other)?;
                Some((server_tls, config))
            }
        };
        let shared = Arc::new(Shared { table, metrics, max_message_bytes: cfg.max_message_bytes, guards });
        Ok(GrpcService { key: cfg.address.to_string(), listener, threads: threads.max(1), shared, tls })
    }

    fn take_listener(&mut self, fds: Option<&ListenFds>) -> std::io::Result<std::net::TcpListener> {
        use std::os::fd::{AsRawFd, FromRawFd};
        if let Some(fd) = fds.and_then(|f| f.lock().get(&self.key).copied()) {
            // SAFETY: pingora received this descriptor from the old process for
            // this address and hands it to no one else; this listener owns it now.
            return Ok(unsafe { std::net::TcpListener::from_raw_fd(fd) });
        }
        let l = match self.listener.take() {
            Some(l) => l,
            None => std::net::TcpListener::bind(&self.key)?,
        };
        if let Some(f) = fds {
            f.lock().add(self.key.clone(), l.as_raw_fd());
        }
        Ok(l)
    }
}

#[async_trait::async_trait]
impl pingora_core::services::Service for GrpcService {
    async fn start_service(&mut self, fds: Option<ListenFds>, mut shutdown: ShutdownWatch, _per_fd: usize) {
        let _serving = crate::lifecycle::GrpcServing::new();
        let std_listener = match self.take_listener(fds.as_ref()).and_then(|l| {
            l.set_nonblocking(true)?;
            Ok(l)
        }) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, address = %self.key, "gRPC listener cannot start");
                std::process::exit(1);
            }
        };
        let local_addr = std_listener.local_addr().ok();
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "gRPC listener cannot start");
                std::process::exit(1);
            }
        };
        let max = self.shared.max_message_bytes;
        let front = FrontEnd { shared: self.shared.clone() };
        let feedback = ml::FeedbackServer::new(ml::FeedbackService { shared: self.shared.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let tf = tfserving::TfFrontEnd { shared: self.shared.clone() };
        let tf_predict = tfserving::PredictionServiceServer::new(tf.clone())
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let tf_model =
            tfserving::ModelServiceServer::new(tf).max_decoding_message_size(max).max_encoding_message_size(max);
        let torchserve = torchserve::InferenceServer::new(torchserve::TorchServeFront { shared: self.shared.clone() })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let inference =
            GrpcInferenceServiceServer::new(front).max_decoding_message_size(max).max_encoding_message_size(max);
        // Everything no other service claims goes to KServe V2 (UNIMPLEMENTED for what it does not know).
        let routes = ByPrefix {
            prefix: FEEDBACK_PREFIX,
            matched: feedback,
            other: ByPrefix {
                prefix: TF_PREDICTION_PREFIX,
                matched: tf_predict,
                other: ByPrefix {
                    prefix: TF_MODEL_PREFIX,
                    matched: tf_model,
                    other: ByPrefix { prefix: torchserve::PREFIX, matched: torchserve, other: inference },
                },
            },
        };
        let svc = Edge { inner: ResourceExhaustedOverLimit(routes), auth: self.shared.guards.auth.clone() };
        tracing::info!(grpc = ?local_addr, tls = self.tls.is_some(), max_message_bytes = max, "gRPC listener started");
        let stop = async move {
            tokio::select! {
                () = crate::lifecycle::drain_started() => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        };
        let builder = tonic::transport::Server::builder().http2_adaptive_window(Some(true));
        let result = match &self.tls {
            None => {
                let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                { builder }.serve_with_incoming_shutdown(svc, incoming, stop).await
            }
            // The certificate reloads while `self.tls` lives: as long as the service.
            Some((_, config)) => {
                let incoming = tls::incoming(listener, config.clone());
                { builder }.serve_with_incoming_shutdown(svc, incoming, stop).await
            }
        };
        match result {
            Ok(()) => tracing::info!("gRPC listener drained"),
            Err(e) => tracing::error!(error = %e, "gRPC listener stopped"),
        }
    }

    fn name(&self) -> &str {
        "switchyard-grpc"
    }

    fn threads(&self) -> Option<usize> {
        Some(self.threads)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.key.clone()])
    }
}

/// Calls whose path starts with `prefix` go to `matched`, the rest to
/// `other`: nested, they route `switchyard.ml.v1.Feedback`, TF Serving's two
/// services, TorchServe's inference service and, for everything else, KServe V2. Generated servers are
/// always ready.
#[derive(Clone)]
struct ByPrefix<M, O> {
    prefix: &'static str,
    matched: M,
    other: O,
}

/// The path prefixes of `switchyard.ml.v1.Feedback`'s and TF Serving's methods.
const FEEDBACK_PREFIX: &str = "/switchyard.ml.v1.Feedback/";
const TF_PREDICTION_PREFIX: &str = "/tensorflow.serving.PredictionService/";
const TF_MODEL_PREFIX: &str = "/tensorflow.serving.ModelService/";

impl<M, O, B> Service<http::Request<B>> for ByPrefix<M, O>
where
    M: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    O: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    M::Future: Send + 'static,
    O::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match (self.matched.poll_ready(cx), self.other.poll_ready(cx)) {
            (Poll::Ready(_), Poll::Ready(_)) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path().starts_with(self.prefix) {
            Box::pin(self.matched.call(req))
        } else {
            Box::pin(self.other.call(req))
        }
    }
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
