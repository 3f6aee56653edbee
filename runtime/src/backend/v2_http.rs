//! Remote KServe V2 server over HTTP/1.1 (Triton, MLServer, OpenVINO, KServe
//! runtimes): pooled keep-alive connections, several endpoints spread by least
//! load (power of two choices) with ejection, probes and a retry budget
//! (`backend::health`), and binary↔JSON conversion for servers without the
//! extension. The endpoint set is a snapshot swapped whole when DNS changes
//! it (`backend::dns`); a request works on the snapshot it loaded, so an
//! endpoint that leaves finishes the requests already sent to it.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use switchyard_config::{BinaryMode, ResolverConfig, V2HttpBackend as Config};
use tokio::sync::OnceCell;

use super::affinity::Affinity;
use super::contract::{Backend, ModelTarget};
use super::forward::Forwarding;
use super::http_pool::{backend_message, status_error, HttpPool, HttpPoolConfig, ProbeSpec, Reply};
use crate::codec::v2::{self, HEADER_CONTENT_LENGTH};
use crate::error::BackendError;
use crate::tensor::{InferRequest, InferResponse, RawJson};

/// How long a readiness probe of the backend may take.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

const INFERENCE_HEADER_CONTENT_LENGTH: HeaderName = HeaderName::from_static(HEADER_CONTENT_LENGTH);
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const APPLICATION_OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// V2's own readiness: `GET /v2/health/ready` answers 200.
const PROBE: ProbeSpec = ProbeSpec { path: "/v2/health/ready", healthy: |s| s == StatusCode::OK };

pub struct V2HttpBackend {
    name: std::sync::Arc<str>,
    http: HttpPool,
    timeout: Duration,
    binary: BinaryMode,
    binary_supported: OnceCell<bool>,
    forward: Forwarding,
}

impl V2HttpBackend {
    /// Fails (instead of panicking the reload that builds it) on an endpoint
    /// whose authority is no valid `Host` value; config validation rejects
    /// those first.
    pub fn new(name: &str, cfg: &Config, resolver: &ResolverConfig) -> Result<V2HttpBackend, String> {
        let pool = HttpPoolConfig {
            endpoints: &cfg.endpoints,
            connect_timeout: cfg.connect_timeout,
            pool_size: cfg.pool_size,
            health: &cfg.health,
            tls: cfg.tls.as_ref(),
        };
        Ok(V2HttpBackend {
            name: name.into(),
            http: HttpPool::new(name, pool, resolver, PROBE)?,
            timeout: cfg.timeout,
            forward: Forwarding::new(&cfg.forward_headers),
            binary: cfg.binary,
            binary_supported: OnceCell::new(),
        })
    }

    async fn send(
        &self,
        method: Method,
        path: &[&str],
        body: Bytes,
        headers: &[(HeaderName, HeaderValue)],
        client: Option<&http::HeaderMap>,
        timeout: Duration,
    ) -> Result<Reply, BackendError> {
        self.http.send(method, path, body, headers, client, timeout).await
    }

    async fn use_binary(&self) -> bool {
        match self.binary {
            BinaryMode::Always => true,
            BinaryMode::Never => false,
            BinaryMode::Auto => {
                let probe = self
                    .binary_supported
                    .get_or_try_init(|| async {
                        let r = self.send(Method::GET, &["/v2"], Bytes::new(), &[], None, READY_PROBE_TIMEOUT).await?;
                        if !r.status.is_success() {
                            return Err(BackendError::status(r.status.as_u16(), "GET /v2 failed"));
                        }
                        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
                        let yes =
                            v["extensions"].as_array().is_some_and(|a| a.iter().any(|e| e == "binary_tensor_data"));
                        tracing::info!(backend = %self.name, binary_tensor_data = yes, "backend extensions read");
                        Ok::<bool, BackendError>(yes)
                    })
                    .await;
                // Unknown (server down): JSON, which every V2 server speaks; ask again next time.
                probe.copied().unwrap_or(false)
            }
        }
    }

    /// One inference, on the sequence's pinned endpoint when `affinity` says so.
    async fn infer_on(
        &self,
        target: &ModelTarget,
        req: InferRequest,
        affinity: Option<Affinity<'_>>,
    ) -> Result<InferResponse, BackendError> {
        let binary = self.use_binary().await;
        // Inputs only checked, not built (`InferRequest::inputs_pending`): the
        // answer is checked the same way, and relayed as it comes.
        let pending = req.inputs_pending() && !binary;
        // The binary extension re-encodes the tensors: built first if they were only checked.
        let req = match req.inputs_pending() && binary {
            true => v2::build_request(req).map_err(|e| BackendError::InvalidInput(e.to_string()))?,
            false => req,
        };
        let enc = match &req.raw_json {
            // The client's JSON, already checked by its decode or scan: sent as it came.
            Some(raw) if !binary => v2::Encoded { body: raw.body.clone(), header_len: None },
            _ => v2::encode_request(&req, binary).map_err(|e| BackendError::InvalidInput(e.to_string()))?,
        };
        let binary_headers;
        let headers: &[(HeaderName, HeaderValue)] = match enc.header_len {
            Some(n) => {
                binary_headers =
                    [(CONTENT_TYPE, APPLICATION_OCTET_STREAM), (INFERENCE_HEADER_CONTENT_LENGTH, HeaderValue::from(n))];
                &binary_headers
            }
            None => &[(CONTENT_TYPE, APPLICATION_JSON)],
        };
        let path = Self::model_path(target, "/infer");
        let reply = self
            .http
            .send_on(Method::POST, &path, enc.body, headers, Some(&req.metadata), self.timeout, affinity)
            .await?;
        if reply.status != StatusCode::OK {
            return Err(status_error(&reply));
        }
        let header_len = match reply.headers.get(HEADER_CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.trim().parse::<usize>().ok())
                    .ok_or_else(|| BackendError::Protocol("bad Inference-Header-Content-Length".into()))?,
            ),
        };
        let mut resp = match header_len {
            None if pending => v2::check_response(&reply.body),
            _ => v2::decode_response(&reply.body, header_len),
        }
        .map_err(|e| BackendError::Protocol(e.to_string()))?;
        if header_len.is_none() && resp.raw_json.is_none() {
            resp.raw_json = Some(RawJson::decoded(reply.body));
        }
        Ok(resp)
    }

    /// `/v2/models/{name}[/versions/{version}]{suffix}`, in pieces for `send`.
    fn model_path<'a>(target: &'a ModelTarget, suffix: &'a str) -> [&'a str; 5] {
        match &target.version {
            Some(v) => ["/v2/models/", &target.name, "/versions/", v, suffix],
            None => ["/v2/models/", &target.name, suffix, "", ""],
        }
    }
}

#[async_trait]
impl Backend for V2HttpBackend {
    async fn server_metadata(&self) -> Option<Result<serde_json::Value, BackendError>> {
        let r = match self.send(Method::GET, &["/v2"], Bytes::new(), &[], None, READY_PROBE_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        if !r.status.is_success() {
            return Some(Err(BackendError::status(r.status.as_u16(), backend_message(&r.body))));
        }
        Some(serde_json::from_slice(&r.body).map_err(|e| BackendError::Protocol(format!("GET /v2: {e}"))))
    }

    fn kind(&self) -> &'static str {
        "v2-http"
    }

    fn forwarding(&self) -> Option<&Forwarding> {
        Some(&self.forward)
    }

    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError> {
        self.infer_on(target, req, None).await
    }

    async fn infer_pinned(
        &self,
        target: &ModelTarget,
        req: InferRequest,
        affinity: Affinity<'_>,
    ) -> Result<InferResponse, BackendError> {
        self.infer_on(target, req, Some(affinity)).await
    }

    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError> {
        let reply =
            self.send(Method::GET, &Self::model_path(target, ""), Bytes::new(), &[], None, self.timeout).await?;
        if reply.status != StatusCode::OK {
            return Err(status_error(&reply));
        }
        serde_json::from_slice(&reply.body).map_err(|e| BackendError::Protocol(format!("model metadata: {e}")))
    }

    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError> {
        let reply = self
            .send(Method::GET, &Self::model_path(target, "/ready"), Bytes::new(), &[], None, READY_PROBE_TIMEOUT)
            .await?;
        Ok(reply.status == StatusCode::OK)
    }

    async fn ready(&self) -> bool {
        self.http.ready(READY_PROBE_TIMEOUT).await
    }
}
