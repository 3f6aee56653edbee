//! The admission webhook's HTTPS server: rustls over tokio, HTTP/1.1 by
//! hyper, routes `POST /inject`, `POST /inject-namespace` and `GET /health`.
//! The certificate and key are re-read every few seconds and swapped in when
//! their contents change (cert-manager rotates the Secret the pod mounts);
//! a pair that does not load is logged and the previous one kept.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::annotations::Defaults;
use crate::pod::Policy;
use crate::webhook;

/// The API server sends at most 3 MiB objects; an AdmissionReview holds one pod.
const MAX_BODY: usize = 8 << 20;
/// How often the certificate files are compared with what is served.
const CERT_CHECK: Duration = Duration::from_secs(5);
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

/// The served certificate, swapped whole when the files change.
#[derive(Debug)]
struct Certificate {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The files' bytes, and the key they make.
fn load(cert: &PathBuf, key: &PathBuf) -> Result<(Vec<u8>, Arc<CertifiedKey>), String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no CERTIFICATE block", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, private, &provider)
        .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?;
    let mut seen = cert_pem;
    seen.extend_from_slice(&key_pem);
    Ok((seen, Arc::new(certified)))
}

/// Serves until SIGTERM or Ctrl-C, then lets in-flight reviews finish.
pub async fn run(config: Config) -> Result<(), Error> {
    let (mut seen, first) = load(&config.cert, &config.key).map_err(Error::Tls)?;
    let cert = Arc::new(Certificate { current: ArcSwap::new(first) });
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let listener = TcpListener::bind(config.listen).await.map_err(|e| Error::Listen(config.listen, e))?;
    let bound = listener.local_addr().map_err(|e| Error::Listen(config.listen, e))?;
    // Started on port 0 (tests), the bound port is read from this line.
    tracing::info!("switchyard injector listening on https://{bound}");

    let (cert_path, key_path) = (config.cert.clone(), config.key.clone());
    let reloader = cert.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CERT_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error = None;
        loop {
            tick.tick().await;
            match load(&cert_path, &key_path) {
                Ok((bytes, _)) if bytes == seen => last_error = None,
                Ok((bytes, key)) => {
                    reloader.current.store(key);
                    seen = bytes;
                    last_error = None;
                    tracing::info!(cert = %cert_path.display(), "TLS certificate reloaded");
                }
                // Mid-rotation the two files may not match yet: said once, retried on the next tick.
                Err(e) if last_error.as_ref() != Some(&e) => {
                    tracing::warn!("TLS certificate not reloaded, the previous one is still served: {e}");
                    last_error = Some(e);
                }
                Err(_) => {}
            }
        }
    });

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
