//! A `tfserving` backend over TF Serving's REST API: `POST
//! /v1/models/{m}[/versions/{v}]:predict` with columnar JSON bodies,
//! `GET …/metadata` for the signature and `GET /v1/models/{m}[…]` for the
//! model's status, on the pooled HTTP/1.1 transport the `v2-http` backend
//! uses (`backend::http_pool`).

use std::time::Duration;

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, StatusCode};
use serde_json::Value as Json;
use switchyard_config::ResolverConfig;

use super::super::contract::{ModelTarget, TfVerb};
use super::super::http_pool::{backend_message, status_error, HttpPool, HttpPoolConfig, ProbeSpec, Reply};
use crate::codec::tfserving::client::{self, TfSignature};
use crate::error::BackendError;
use crate::tensor::{InferRequest, Tensor};

/// TF Serving has no server-wide health call: a probe asks the status API
/// about a model no server has. Its model manager answering (404 "Could not
/// find any versions of model …") is the endpoint serving; a 5xx, a refused
/// connection or silence is not.
const PROBE: ProbeSpec =
    ProbeSpec { path: "/v1/models/switchyard-probe", healthy: |s| s == StatusCode::OK || s == StatusCode::NOT_FOUND };

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

pub struct RestTransport {
    name: std::sync::Arc<str>,
    http: HttpPool,
}

/// `/v1/models/{name}[/versions/{version}]{suffix}`, in pieces for `send`.
fn model_path<'a>(target: &'a ModelTarget, suffix: &'a str) -> [&'a str; 5] {
    match &target.version {
        Some(v) => ["/v1/models/", &target.name, "/versions/", v, suffix],
        None => ["/v1/models/", &target.name, suffix, "", ""],
    }
}

impl RestTransport {
    pub fn new(name: &str, cfg: HttpPoolConfig<'_>, resolver: &ResolverConfig) -> Result<RestTransport, String> {
        Ok(RestTransport { name: name.into(), http: HttpPool::new(name, cfg, resolver, PROBE)? })
    }

    /// TF Serving's error answer, in the classes every backend uses: its 4xx
    /// relayed with its own `{"error": …}`, UNAVAILABLE a 503 of ours.
    fn error(&self, reply: &Reply) -> BackendError {
        match reply.status {
            StatusCode::SERVICE_UNAVAILABLE => {
                BackendError::Unavailable(format!("backend `{}`: {}", self.name, backend_message(&reply.body)))
            }
            _ => status_error(reply),
        }
    }

    fn json(&self, reply: &Reply, what: &str) -> Result<Json, BackendError> {
        if reply.status != StatusCode::OK {
            return Err(self.error(reply));
        }
        serde_json::from_slice(&reply.body).map_err(|e| BackendError::Protocol(format!("{what}: {e}")))
    }

    pub async fn signature(
        &self,
        target: &ModelTarget,
        signature: &str,
        timeout: Duration,
    ) -> Result<TfSignature, BackendError> {
        let reply = self
            .http
            .send(Method::GET, &model_path(target, "/metadata"), Default::default(), &[], None, timeout)
            .await?;
        client::signature_from_metadata(&self.json(&reply, "model metadata")?, signature)
    }

    /// `GetModelStatus`: whether the version (any version, for latest) is AVAILABLE.
    pub async fn available(&self, target: &ModelTarget, timeout: Duration) -> Result<bool, BackendError> {
        let reply =
            self.http.send(Method::GET, &model_path(target, ""), Default::default(), &[], None, timeout).await?;
        if reply.status == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let doc = self.json(&reply, "model status")?;
        let list = doc["model_version_status"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        Ok(list.iter().any(|v| {
            let version =
                v["version"].as_str().map(str::to_string).or_else(|| v["version"].as_i64().map(|n| n.to_string()));
            let wanted = target.version.as_deref().is_none_or(|want| version.as_deref() == Some(want));
            wanted && v["state"] == "AVAILABLE"
        }))
    }

    pub async fn predict(
        &self,
        target: &ModelTarget,
        signature: &str,
        sig: &TfSignature,
        req: &InferRequest,
        timeout: Duration,
    ) -> Result<Vec<Tensor>, BackendError> {
        let body = client::encode_predict_request(req, signature)?;
        let headers = [(CONTENT_TYPE, APPLICATION_JSON)];
        let reply = self
            .http
            .send(Method::POST, &model_path(target, ":predict"), body, &headers, Some(&req.metadata), timeout)
            .await?;
        if reply.status != StatusCode::OK {
            return Err(self.error(&reply));
        }
        client::decode_predict_response(&reply.body, sig, &req.outputs)
    }

    /// `:classify`/`:regress` with the client's body: TF Serving's answer as
    /// it is, its 4xx included; its 503 and 5xx are the backend failing.
    pub async fn relay(
        &self,
        target: &ModelTarget,
        verb: TfVerb,
        body: bytes::Bytes,
        metadata: &http::HeaderMap,
        timeout: Duration,
    ) -> Result<(StatusCode, bytes::Bytes), BackendError> {
        let suffix = match verb {
            TfVerb::Classify => ":classify",
            TfVerb::Regress => ":regress",
        };
        let headers = [(CONTENT_TYPE, APPLICATION_JSON)];
        let reply =
            self.http.send(Method::POST, &model_path(target, suffix), body, &headers, Some(metadata), timeout).await?;
        if reply.status.is_server_error() {
            return Err(self.error(&reply));
        }
        Ok((reply.status, reply.body))
    }

    pub async fn ready(&self, timeout: Duration) -> bool {
        self.http.ready(timeout).await
    }
}
