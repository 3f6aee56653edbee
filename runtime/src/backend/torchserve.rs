//! A TorchServe server as a backend (`kind: torchserve`): its inference API
//! over REST or gRPC, on the transports the V2 kinds are built on
//! (`http_pool`/`grpc_pool`: pooled connections, endpoints and DNS,
//! ejection, probes, retry budget, timeouts, TLS), and its management API for
//! model readiness and metadata.
//!
//! Bodies follow `codec::torchserve`'s contract: a request is `n` bodies (a
//! merged batch), each sent as its own TorchServe call, all at once, so that
//! TorchServe batches them on its side; the `n` answers come back as the
//! BYTES `[n]` output, in order. A failed call fails the batch, as a handler
//! failure fails a TorchServe batch.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::try_join_all;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard_config::{ResolverConfig, TorchServeBackend as Config, TorchServeTransport, Upstream};
use switchyard_tls::{ClientTls, Connector};

use super::contract::{Backend, ModelTarget};
use super::forward::Forwarding;
use super::grpc_pool::{self, GrpcPool, GrpcPoolConfig, Idempotent};
use super::http_pool::{backend_message, status_error, HttpPool, HttpPoolConfig, ProbeSpec, Reply};
use crate::codec::torchserve::{self as ts, pb};
use crate::error::{error_chain, BackendError};
use crate::tensor::{InferRequest, InferResponse};

/// How long a readiness or management probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const APPLICATION_OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// `GET /ping`: 200 while every model has its minimum of workers.
const PING: ProbeSpec = ProbeSpec { path: "/ping", healthy: |s| s == StatusCode::OK };

/// Boxed: built once per backend, and the REST transport is the larger.
enum Transport {
    Rest(Box<HttpPool>),
    /// The pool and the largest message either way (`max_message_bytes`).
    Grpc(Box<GrpcPool>, usize),
}

pub struct TorchServeBackend {
    name: Arc<str>,
    transport: Transport,
    management: Option<Management>,
    timeout: Duration,
    forward: Forwarding,
}

/// The management API: one base URL (a server, or a service in front of the replicas).
struct Management {
    client: Client<Connector, Full<Bytes>>,
    upstream: Upstream,
    host: HeaderValue,
}

impl TorchServeBackend {
    pub fn new(name: &str, cfg: &Config, resolver: &ResolverConfig) -> Result<TorchServeBackend, String> {
        let (transport, timeout, forward) = match &cfg.transport {
            TorchServeTransport::Rest(c) => {
                let pool = HttpPoolConfig {
                    endpoints: &c.endpoints,
                    connect_timeout: c.connect_timeout,
                    pool_size: c.pool_size,
                    health: &c.health,
                    tls: c.tls.as_ref(),
                };
                let t = Transport::Rest(Box::new(HttpPool::new(name, pool, resolver, PING)?));
                (t, c.timeout, Forwarding::new(&c.forward_headers))
            }
            TorchServeTransport::Grpc(c) => {
                let pool = GrpcPoolConfig {
                    endpoints: &c.endpoints,
                    connect_timeout: c.connect_timeout,
                    health: &c.health,
                    tls: c.tls.as_ref(),
                };
                let max = c.max_message_bytes;
                let t = Transport::Grpc(Box::new(GrpcPool::new(name, pool, resolver, grpc_probe(max))?), max);
                (t, c.timeout, Forwarding::new(&c.forward_headers))
            }
        };
        let management = match &cfg.management {
            None => None,
            Some(up) => {
                let connect_timeout = match &cfg.transport {
                    TorchServeTransport::Rest(c) => c.connect_timeout,
                    TorchServeTransport::Grpc(c) => c.connect_timeout,
                };
                let tls = cfg
                    .management_tls
                    .as_ref()
                    .map(|t| ClientTls::load(t, &[b"http/1.1"], &format!("backend `{name}` management")))
                    .transpose()?;
                let client = Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(Connector::new(Some(connect_timeout), tls));
                let host = HeaderValue::from_str(&up.authority)
                    .map_err(|_| format!("backend `{name}`: management {:?} is not a valid host", up.authority))?;
                Some(Management { client, upstream: up.clone(), host })
            }
        };
        Ok(TorchServeBackend { name: Arc::from(name), transport, management, timeout, forward })
    }

    /// One TorchServe call per body, all at once; the answers in order, with
    /// the content type of the first.
    async fn infer_rest(
        &self,
        http: &HttpPool,
        target: &ModelTarget,
        req: &InferRequest,
    ) -> Result<InferResponse, BackendError> {
        let bodies = ts::request_bodies(req).map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        let api = if ts::is_explanation(req) { "/explanations/" } else { "/predictions/" };
        let path = api_path(api, target);
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        let content_type = ts::content_type(&req.parameters);
        let calls = bodies.into_iter().map(|body| {
            let (payload, ct) = rest_body(body, content_type);
            let headers = ct.map(|ct| [(CONTENT_TYPE, ct)]);
            let path = &path;
            async move {
                let headers: &[(HeaderName, HeaderValue)] = headers.as_ref().map_or(&[], |h| &h[..]);
                let reply = http.send(Method::POST, path, payload, headers, Some(&req.metadata), self.timeout).await?;
                if reply.status != StatusCode::OK {
                    return Err(rest_error(&self.name, &reply));
                }
                Ok((reply.body, reply.headers.get(CONTENT_TYPE).cloned()))
            }
        });
        let answers = try_join_all(calls).await?;
        let content_type = answers.first().and_then(|(_, ct)| ct.as_ref()).and_then(|v| v.to_str().ok());
        let bodies: Vec<&Bytes> = answers.iter().map(|(b, _)| b).collect();
        ts::response_from_bodies(&target.name, target.version.as_deref(), &bodies, content_type)
            .map_err(|e| BackendError::Protocol(e.to_string()))
    }

    /// One `Predictions` call per body (its inputs as the input map), all at once.
    async fn infer_grpc(
        &self,
        grpc: &GrpcPool,
        max: usize,
        target: &ModelTarget,
        req: &InferRequest,
    ) -> Result<InferResponse, BackendError> {
        if ts::is_explanation(req) {
            return Err(BackendError::InvalidInput(format!(
                "backend `{}` speaks TorchServe's gRPC API, which has no explanations (use `protocol: rest`)",
                self.name
            )));
        }
        let bodies = ts::request_bodies(req).map_err(|e| BackendError::InvalidInput(e.to_string()))?;
        let metadata = grpc_pool::metadata(req.metadata.clone());
        let timeout = self.timeout;
        let calls = bodies.into_iter().map(|body| {
            let msg = pb::inference::PredictionsRequest {
                model_name: target.name.to_string(),
                model_version: target.version.as_deref().unwrap_or_default().to_string(),
                input: body.into_iter().collect(),
                sequence_id: None,
            };
            let metadata = &metadata;
            grpc.call(timeout, Idempotent::No, move |ch| {
                let mut client = inference_client(ch, max);
                let request = grpc_pool::with_metadata(msg.clone(), metadata, timeout);
                async move { client.predictions(request).await }
            })
        });
        let answers = try_join_all(calls).await?;
        let bodies: Vec<&Bytes> = answers.iter().map(|a| &a.prediction).collect();
        ts::response_from_bodies(&target.name, target.version.as_deref(), &bodies, None)
            .map_err(|e| BackendError::Protocol(e.to_string()))
    }

    /// `GET {management}/models/{m}[/{v}|/all]`: TorchServe's describe answer (a list, one entry per version).
    async fn describe(&self, target: &ModelTarget, all: bool) -> Result<Option<Vec<serde_json::Value>>, BackendError> {
        let Some(m) = &self.management else { return Ok(None) };
        let mut path = format!("{}/models/{}", m.upstream, segment(&target.name));
        match (&target.version, all) {
            (_, true) => path.push_str("/all"),
            (Some(v), false) => {
                path.push('/');
                path.push_str(&segment(v));
            }
            (None, false) => {}
        }
        let uri = Uri::try_from(path).map_err(|e| BackendError::Internal(format!("management URL: {e}")))?;
        let mut req = Request::new(Full::new(Bytes::new()));
        *req.uri_mut() = uri;
        req.headers_mut().insert(HOST, m.host.clone());
        let call = async {
            let resp = m.client.request(req).await.map_err(|e| BackendError::Connect {
                endpoint: format!("{} (backend `{}` management)", m.upstream, self.name),
                message: error_chain(&e),
            })?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| BackendError::Unavailable(format!("management API {}: {}", m.upstream, error_chain(&e))))?
                .to_bytes();
            Ok::<_, BackendError>((status, body))
        };
        let (status, body) =
            tokio::time::timeout(PROBE_TIMEOUT, call).await.map_err(|_| BackendError::Timeout(PROBE_TIMEOUT))??;
        if status == StatusCode::NOT_FOUND {
            return Err(BackendError::NotFound(backend_message(&body)));
        }
        if !status.is_success() {
            return Err(BackendError::status(status.as_u16(), backend_message(&body)));
        }
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| BackendError::Protocol(format!("management API describe: {e}")))
    }
}

/// TorchServe's error answer (`{"code", "type", "message"}`) in the V2
/// backends' classes: its 4xx is the client's (relayed), a 503 saying no
/// worker can take the request is unavailability (503), any other 5xx (a
/// handler that failed: "Prediction failed") the backend's failure.
fn rest_error(backend: &str, reply: &Reply) -> BackendError {
    if reply.status == StatusCode::SERVICE_UNAVAILABLE {
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
        if v["type"] == "ServiceUnavailableException" {
            return BackendError::Unavailable(format!("backend `{backend}`: {}", backend_message(&reply.body)));
        }
    }
    status_error(reply)
}

/// The active probe of a gRPC endpoint: TorchServe's `Ping` answering "Healthy".
fn grpc_probe(max: usize) -> grpc_pool::ChannelProbe {
    Arc::new(move |channel, timeout| {
        Box::pin(async move {
            let mut client = inference_client(channel, max);
            let call = client.ping(grpc_pool::request((), timeout));
            matches!(tokio::time::timeout(timeout, call).await, Ok(Ok(r)) if healthy(&r.get_ref().health))
        })
    })
}

fn inference_client(ch: tonic::transport::Channel, max: usize) -> pb::InferenceClient<tonic::transport::Channel> {
    pb::InferenceClient::new(ch).max_decoding_message_size(max).max_encoding_message_size(max)
}

/// TorchServe's health document (`{"status": "Healthy"}`; "Partial Healthy"
/// and "Unhealthy" while a model lacks its minimum of workers).
fn healthy(doc: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(doc).is_ok_and(|v| v["status"] == "Healthy")
}

/// `{api}{model}[/{version}]`, each name percent-encoded as a path segment.
fn api_path(api: &'static str, target: &ModelTarget) -> Vec<String> {
    let mut p = vec![api.to_string(), segment(&target.name)];
    if let Some(v) = &target.version {
        p.push("/".into());
        p.push(segment(v));
    }
    p
}

/// A name as one URL path segment: unreserved characters stay, the rest is percent-encoded.
fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One REST call's body: a lone input is the body as the client sent it
/// (with its content type); several (a gRPC client's input map) become a
/// `multipart/form-data` body, one part per input, which TorchServe hands the
/// handler as the same map.
fn rest_body(body: ts::Body, content_type: Option<&str>) -> (Bytes, Option<HeaderValue>) {
    if body.len() == 1 {
        let (_, data) = body.into_iter().next().expect("one input");
        let ct = content_type.and_then(|c| HeaderValue::from_str(c).ok());
        return (data, ct);
    }
    let boundary = format!("switchyard-{:016x}", fastrand::u64(..));
    let mut out = BytesMut::new();
    for (name, data) in &body {
        out.put_slice(format!("--{boundary}\r\n").as_bytes());
        let name = name.replace(['"', '\r', '\n'], "_");
        out.put_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes());
        out.put_slice(b"Content-Type: application/octet-stream\r\n\r\n");
        out.put_slice(data);
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("--{boundary}--\r\n").as_bytes());
    let ct =
        HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}")).unwrap_or(APPLICATION_OCTET_STREAM);
    (out.freeze(), Some(ct))
}

/// Whether a describe answer shows a worker ready to take requests.
fn any_worker_ready(entries: &[serde_json::Value]) -> bool {
    entries
        .iter()
        .any(|e| e["workers"].as_array().is_some_and(|ws| ws.iter().any(|w| w["status"].as_str() == Some("READY"))))
}

#[async_trait]
impl Backend for TorchServeBackend {
    fn kind(&self) -> &'static str {
        "torchserve"
    }

    fn forwarding(&self) -> Option<&Forwarding> {
        Some(&self.forward)
    }

    async fn infer(&self, target: &ModelTarget, req: InferRequest) -> Result<InferResponse, BackendError> {
        match &self.transport {
            Transport::Rest(http) => self.infer_rest(http, target, &req).await,
            Transport::Grpc(grpc, max) => self.infer_grpc(grpc, *max, target, &req).await,
        }
    }

    /// What TorchServe can say about a model: its name, its versions (from
    /// the management API's describe, when configured) and the body contract
    /// (`codec::torchserve`): one BYTES body in, one out. A handler declares
    /// no tensor signature, so none is invented.
    async fn model_metadata(&self, target: &ModelTarget) -> Result<serde_json::Value, BackendError> {
        let versions: Vec<String> = match self.describe(target, true).await? {
            Some(entries) => entries.iter().filter_map(|e| e["modelVersion"].as_str().map(str::to_owned)).collect(),
            None => target.version.iter().map(|v| v.to_string()).collect(),
        };
        if let Some(v) = &target.version {
            if self.management.is_some() && !versions.iter().any(|x| **x == **v) {
                return Err(BackendError::NotFound(format!("model '{}' has no version '{v}'", target.name)));
            }
        }
        let body = |name: &str| serde_json::json!({"name": name, "datatype": "BYTES", "shape": [-1]});
        Ok(serde_json::json!({
            "name": &*target.name,
            "versions": versions,
            "platform": "torchserve",
            "inputs": [body(ts::BODY_INPUT)],
            "outputs": [body(ts::OUTPUT)],
        }))
    }

    /// With a management URL: a worker of that model (version) is READY, and
    /// the inference endpoints can take requests. Without one: the server's
    /// own health (TorchServe has no per-model readiness on its inference API).
    async fn model_ready(&self, target: &ModelTarget) -> Result<bool, BackendError> {
        match self.describe(target, false).await {
            Ok(Some(entries)) => Ok(any_worker_ready(&entries) && self.ready().await),
            Ok(None) => Ok(self.ready().await),
            Err(BackendError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn ready(&self) -> bool {
        match &self.transport {
            Transport::Rest(http) => http.ready(PROBE_TIMEOUT).await,
            Transport::Grpc(grpc, max) => {
                if grpc.policy().health_check.is_some() {
                    return grpc.any_in_rotation();
                }
                let max = *max;
                let ping = grpc
                    .call(PROBE_TIMEOUT, Idempotent::Yes, |ch| async move {
                        inference_client(ch, max).ping(grpc_pool::request((), PROBE_TIMEOUT)).await
                    })
                    .await;
                ping.is_ok_and(|r| healthy(&r.health))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_path_segments() {
        assert_eq!(segment("resnet-18_v1.2~x"), "resnet-18_v1.2~x");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        let t = ModelTarget { name: "m".into(), version: Some("2.0".into()) };
        assert_eq!(api_path("/predictions/", &t).concat(), "/predictions/m/2.0");
    }

    #[test]
    fn a_lone_input_is_the_body_and_several_are_multipart() {
        let mut one = ts::Body::new();
        one.insert("data".into(), Bytes::from_static(b"[1,2]"));
        let (b, ct) = rest_body(one, Some("application/json"));
        assert_eq!((&b[..], ct.unwrap()), (&b"[1,2]"[..], HeaderValue::from_static("application/json")));
        let mut two = ts::Body::new();
        two.insert("a".into(), Bytes::from_static(b"1"));
        two.insert("b".into(), Bytes::from_static(b"2"));
        let (b, ct) = rest_body(two, None);
        let ct = ct.unwrap();
        let boundary = ct.to_str().unwrap().strip_prefix("multipart/form-data; boundary=").unwrap().to_owned();
        let text = String::from_utf8(b.to_vec()).unwrap();
        assert!(text.starts_with(&format!("--{boundary}\r\nContent-Disposition: form-data; name=\"a\"\r\n")));
        assert!(text.contains("\r\n\r\n2\r\n") && text.ends_with(&format!("--{boundary}--\r\n")), "{text}");
    }

    #[test]
    fn torchserve_errors_take_the_v2_classes() {
        let reply = |status: u16, body: &'static str| Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        };
        let bad = reply(400, r#"{"code": 400, "type": "InternalServerException", "message": "not numbers"}"#);
        let BackendError::Status { status: 400, message, body: Some(body), .. } = rest_error("ts", &bad) else {
            panic!("a 4xx is relayed")
        };
        assert_eq!((message.as_str(), body), ("not numbers", bad.body.clone()));
        let busy = reply(
            503,
            r#"{"code": 503, "type": "ServiceUnavailableException", "message": "Model \"m\" has no worker to serve inference request."}"#,
        );
        let BackendError::Unavailable(m) = rest_error("ts", &busy) else { panic!("no worker: unavailable") };
        assert!(m.contains("backend `ts`") && m.contains("no worker"), "{m}");
        let failed = reply(503, r#"{"code": 503, "type": "InternalServerException", "message": "Prediction failed"}"#);
        assert!(matches!(rest_error("ts", &failed), BackendError::Status { status: 503, .. }));
    }

    #[test]
    fn readiness_reads_workers_and_health() {
        let ready = serde_json::json!([{"workers": [{"status": "UNLOADING"}, {"status": "READY"}]}]);
        let none = serde_json::json!([{"workers": []}]);
        assert!(any_worker_ready(ready.as_array().unwrap()));
        assert!(!any_worker_ready(none.as_array().unwrap()));
        assert!(healthy("{\n  \"status\": \"Healthy\"\n}"));
        assert!(!healthy("{\"status\": \"Partial Healthy\"}"));
    }
}
