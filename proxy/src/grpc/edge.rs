//! What every gRPC call passes through first and last. First,
//! authentication, before tonic reads a byte of the message: a call without
//! valid credentials is answered UNAUTHENTICATED (trailers only) from its
//! headers; an authenticated one carries its `Principal` in the request's
//! extensions to the handlers, which authorize per model. Liveness,
//! readiness and server metadata stay open, as on HTTP. Last, the call's
//! access line, from the `Note` the handler filled (a stream is one line,
//! written when its answer starts).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::Service;
use tonic::transport::server::TcpConnectInfo;

use crate::access_log::{Note, Record, SharedNote};
use crate::auth::{Auth, Principal};
use crate::respond;

/// RPCs answered without credentials (probes and server metadata).
const OPEN: &[&str] = &[
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
    "/inference.GRPCInferenceService/ServerMetadata",
    "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping",
];

#[derive(Clone)]
pub struct Edge<S> {
    pub inner: S,
    /// `None`: authentication is off; every call passes.
    pub auth: Option<Arc<Auth>>,
}

/// The gRPC status of an answer's headers: a trailers-only error, else OK
/// (a unary error after the headers is in the note).
fn status_of(resp: &http::Response<tonic::body::Body>) -> u32 {
    resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

impl<S, B> Service<http::Request<B>> for Edge<S>
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
        let start = Instant::now();
        let headers = req.headers().clone();
        let path = req.uri().path().to_string();
        let client = req.extensions().get::<TcpConnectInfo>().and_then(|c| c.remote_addr()).map(|a| a.to_string());
        let note: SharedNote = Arc::new(Mutex::new(Note::default()));
        let mut principal: Option<Arc<Principal>> = None;
        if let Some(auth) = &self.auth {
            if !OPEN.contains(&path.as_str()) {
                match auth.authenticate(&headers) {
                    Ok(p) => {
                        req.extensions_mut().insert(p.clone());
                        principal = Some(p);
                    }
                    Err(e) => {
                        let status = respond::grpc_status(&e);
                        let n = Note { error: Some(e.kind.label()), ..Note::default() };
                        record(&path, &headers, None, client, status.code() as u32, start, &n);
                        return Box::pin(async move { Ok(status.into_http()) });
                    }
                }
            }
        }
        req.extensions_mut().insert(note.clone());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let n = note.lock().map(|n| n.clone()).unwrap_or_default();
            // The handler's error when it set one: a trailers-only status says the same.
            let code = status_of(&resp);
            record(&path, &headers, principal.as_deref(), client, code, start, &n);
            Ok(resp)
        })
    }
}

fn record(
    path: &str,
    headers: &http::HeaderMap,
    principal: Option<&Principal>,
    client: Option<String>,
    status: u32,
    start: Instant,
    note: &Note,
) {
    Record {
        protocol: "grpc",
        method: "POST",
        path,
        headers,
        principal: principal.map(|p| &*p.name),
        client,
        status,
        latency: start.elapsed(),
        note,
    }
    .write();
}
