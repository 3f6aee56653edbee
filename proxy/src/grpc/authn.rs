//! Authentication of gRPC calls before tonic reads a byte of the message: a
//! call without valid credentials is answered UNAUTHENTICATED (trailers
//! only) from its headers; an authenticated one carries its `Principal` in
//! the request's extensions to the handlers, which authorize per model.
//! Liveness, readiness and server metadata stay open, as on HTTP.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::Service;

use crate::auth::Auth;
use crate::respond;

/// RPCs answered without credentials (probes and server metadata).
const OPEN: &[&str] = &[
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ServerMetadata",
];

#[derive(Clone)]
pub struct Authenticate<S> {
    pub inner: S,
    /// `None`: authentication is off; every call passes.
    pub auth: Option<Arc<Auth>>,
}

impl<S, B> Service<http::Request<B>> for Authenticate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(auth) = &self.auth {
            if !OPEN.contains(&req.uri().path()) {
                match auth.authenticate(req.headers()) {
                    Ok(p) => {
                        req.extensions_mut().insert(p);
                    }
                    Err(e) => {
                        let resp = respond::grpc_status(&e).into_http();
                        return Box::pin(async move { Ok(resp) });
                    }
                }
            }
        }
        Box::pin(self.inner.call(req))
    }
}
