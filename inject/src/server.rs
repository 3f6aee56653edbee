//! The admission webhook's HTTPS server: rustls over tokio, HTTP/1.1 by
//! hyper, routes `POST /inject`, `POST /inject-namespace` and `GET /health`.
//! The certificate and key are re-read every few seconds and swapped in when
//! their contents change (cert-manager rotates the Secret the pod mounts);
//! a pair that does not load is logged and the previous one kept — all of it
//! `switchyard_tls::ServerTls`, the same code as Switchyard's listeners.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::annotations::Defaults;
use crate::pod::Policy;
use crate::webhook;

/// The API server sends at most 3 MiB objects; an AdmissionReview holds one pod.
const MAX_BODY: usize = 8 << 20;
/// A client that does not finish its handshake or its headers in this time is dropped
/// (the API server's webhook timeout is 10 s by default).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// In-flight reviews get this long after SIGTERM.
const DRAIN: Duration = Duration::from_secs(5);

/// What the webhook server needs.
pub struct Config {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub defaults: Defaults,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// Serves until SIGTERM or Ctrl-C, then lets in-flight reviews finish.
pub async fn run(config: Config) -> Result<(), Error> {
    // The certificate is re-read when its files change (cert-manager rotating the Secret).
    let tls = switchyard_tls::ServerTls::load(
        &switchyard_config::TlsConfig { cert: config.cert.clone(), key: config.key.clone(), client_ca: None },
        "injector",
    )
    .map_err(Error::Tls)?;
    let acceptor = TlsAcceptor::from(tls.rustls_config(&[b"http/1.1"]).map_err(Error::Tls)?);

    let listener = TcpListener::bind(config.listen).await.map_err(|e| Error::Listen(config.listen, e))?;
    let bound = listener.local_addr().map_err(|e| Error::Listen(config.listen, e))?;
    // Started on port 0 (tests), the bound port is read from this line.
    tracing::info!("switchyard injector listening on https://{bound}");

    let defaults = Arc::new(config.defaults);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Listen(bound, e))?;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: keep serving the connections there are.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let acceptor = acceptor.clone();
        let defaults = defaults.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let service = hyper::service::service_fn(move |req| handle(req, defaults.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    tracing::info!("shutting down: finishing in-flight reviews");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("in-flight reviews still running after {DRAIN:?}; exiting");
    }
    Ok(())
}

async fn handle(req: Request<Incoming>, defaults: Arc<Defaults>) -> Result<Response<Full<Bytes>>, Infallible> {
    let policy = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => return Ok(reply(StatusCode::OK, "text/plain", "ok\n")),
        (&Method::POST, "/inject") => Policy::OptIn,
        (&Method::POST, "/inject-namespace") => Policy::OptOut,
        (_, "/health") => return Ok(wrong_method("GET")),
        (_, "/inject" | "/inject-namespace") => return Ok(wrong_method("POST")),
        (_, path) => {
            return Ok(error(StatusCode::NOT_FOUND, &format!("no such path {path:?}: POST /inject, /inject-namespace")))
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e.downcast_ref::<http_body_util::LengthLimitError>().is_some();
            return Ok(if too_big {
                error(StatusCode::PAYLOAD_TOO_LARGE, &format!("the AdmissionReview is over {MAX_BODY} bytes"))
            } else {
                error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}"))
            });
        }
    };
    Ok(match webhook::review(&body, &defaults, policy) {
        Ok(answer) => reply(StatusCode::OK, "application/json", serde_json::to_vec(&answer).expect("JSON serializes")),
        Err(bad) => {
            tracing::warn!("bad admission request: {bad}");
            error(StatusCode::BAD_REQUEST, &bad.0)
        }
    })
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        "application/json",
        serde_json::to_vec(&serde_json::json!({"error": message})).expect("JSON serializes"),
    )
}

fn wrong_method(allowed: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(StatusCode::METHOD_NOT_ALLOWED, &format!("use {allowed}"));
    r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allowed));
    r
}
