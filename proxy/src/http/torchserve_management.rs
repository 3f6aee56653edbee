//! `listeners.torchserve_management`: TorchServe's management API
//! (`GET /models`, `GET /models/{m}[/{v}]`, `POST /models?url=…`,
//! `PUT /models/{m}?min_worker=…`, `DELETE …`) relayed as it is — method,
//! path, query, headers and body, streamed both ways — to the `management`
//! URL of one `kind: torchserve` backend, on a port of its own.
//!
//! A pingora proxy service beside the data listener, so it drains and hands
//! its socket over on upgrade with the rest. With `auth:` on, every call
//! needs a principal: one naming a model (`/models/{m}…`) needs
//! `model:{m}:metadata` to read and `model:{m}:admin` to change it; the
//! model-less calls (the list, a registration) need the bare permission
//! `torchserve-management`. Failures answer in TorchServe's error shape,
//! `{"code", "type", "message"}`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::{Error as PError, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use switchyard_config::{ClientTlsConfig, Upstream};

use super::upstream::ResolvedUpstream;
use super::upstream_tls::UpstreamTls;
use crate::auth::{Action, Auth};
use crate::error::Error;

/// The bare permission for the management calls that name no model.
pub const MANAGEMENT_PERMISSION: &str = "torchserve-management";

pub struct ManagementProxy {
    backend: Arc<str>,
    upstream: ResolvedUpstream,
    auth: Option<Arc<Auth>>,
}

impl ManagementProxy {
    /// `management`: the backend's management URL (its TLS settings when `https://`).
    pub fn new(
        backend: Arc<str>,
        management: Upstream,
        tls: Option<&ClientTlsConfig>,
        auth: Option<Arc<Auth>>,
    ) -> Result<ManagementProxy, String> {
        let mut upstream = ResolvedUpstream::start(management);
        if upstream.config.tls {
            let what = format!("backend `{backend}` management");
            let cfg = tls.cloned().unwrap_or_default();
            upstream.set_tls(UpstreamTls::load_named(&cfg, &upstream.config.authority, &what)?);
        }
        Ok(ManagementProxy { backend, upstream, auth })
    }

    /// Who may make this call: `Err` with the refusal when auth is on and the principal may not.
    fn authorize(&self, req: &RequestHeader) -> std::result::Result<(), Error> {
        let Some(auth) = &self.auth else { return Ok(()) };
        let principal = auth.authenticate(&req.headers)?;
        match model_of(req.uri.path()) {
            Some((model, version)) => {
                let action = if req.method == Method::GET { Action::Metadata } else { Action::Admin };
                principal.authorize(&model, version.as_deref(), action)
            }
            None => principal.require(MANAGEMENT_PERMISSION, "call TorchServe's management API"),
        }
    }
}

/// The model (and version) a management path names: `/models/{m}[/{v}]`
/// (`/models/{m}/all` is every version), percent-decoded.
fn model_of(path: &str) -> Option<(String, Option<String>)> {
    let rest = path.strip_prefix("/models/")?;
    let mut parts = rest.split('/').filter(|p| !p.is_empty());
    let model = decode(parts.next()?);
    let version = parts.next().filter(|v| *v != "all").map(decode);
    Some((model, version))
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An answer of this listener's own, in TorchServe's error shape.
async fn answer(session: &mut Session, code: u16, kind: &str, message: &str) -> Result<()> {
    let body = Bytes::from(serde_json::json!({"code": code, "type": kind, "message": message}).to_string());
    let mut h = ResponseHeader::build(code, Some(4))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    if code == 401 {
        h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
    }
    if crate::lifecycle::draining() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

#[async_trait]
impl ProxyHttp for ManagementProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if let Err(e) = self.authorize(session.req_header()) {
            let code = crate::respond::http_status(&e);
            let kind = if code == 401 { "UnauthorizedException" } else { "ForbiddenException" };
            answer(session, code, kind, &e.message).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        match self.upstream.addr() {
            Some(addr) => {
                self.upstream.peer(addr).map(Box::new).map_err(|e| PError::explain(ErrorType::InternalError, e))
            }
            None => Err(PError::create(
                ErrorType::ConnectNoRoute,
                ErrorSource::Upstream,
                Some(format!("cannot resolve {}", self.upstream.config.authority).into()),
                None,
            )),
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        let up = &self.upstream.config;
        upstream_request.insert_header(http::header::HOST, up.authority.as_str())?;
        if !up.base_path.is_empty() {
            let pq = upstream_request.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
            let uri: http::Uri = format!("{}{}", up.base_path, pq)
                .parse()
                .map_err(|_| PError::explain(ErrorType::InternalError, "bad management path"))?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(&self, session: &mut Session, _resp: &mut ResponseHeader, _ctx: &mut ()) -> Result<()> {
        if crate::lifecycle::draining() {
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &PError, _ctx: &mut ()) -> FailToProxy {
        let (code, kind) = match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout | ErrorType::ConnectTimedout => {
                (504, "GatewayTimeoutException")
            }
            _ if e.esource() == &ErrorSource::Upstream => (502, "BadGatewayException"),
            _ if e.esource() == &ErrorSource::Downstream => (400, "BadRequestException"),
            _ => (500, "InternalServerException"),
        };
        let message =
            format!("TorchServe management API of backend `{}` ({}) failed: {e}", self.backend, self.upstream.config);
        // Nothing can be answered once the upstream's answer has begun.
        if session.response_written().is_none() {
            if let Err(we) = answer(session, code, kind, &message).await {
                tracing::debug!(error = %we, "management error answer not written");
            }
        }
        FailToProxy { error_code: code, can_reuse_downstream: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_model_and_version() {
        assert_eq!(model_of("/models"), None);
        assert_eq!(model_of("/models/"), None);
        assert_eq!(model_of("/models/adder"), Some(("adder".into(), None)));
        assert_eq!(model_of("/models/adder/all"), Some(("adder".into(), None)));
        assert_eq!(model_of("/models/adder/2.0"), Some(("adder".into(), Some("2.0".into()))));
        assert_eq!(model_of("/models/a%20b/1.0/set-default"), Some(("a b".into(), Some("1.0".into()))));
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%41"), "%zzA");
    }
}
