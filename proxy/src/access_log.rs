//! The data plane's access log: one structured line per request — HTTP by
//! pingora's `logging` phase, gRPC by the `edge` layer — written through the
//! escaping sink of `switchyard_stats::access_log` (shared with the control
//! plane's audit lines). Never a payload or a credential: the request body
//! appears only as its SHA-256, and only when `access_log.body_hash` is on.

use std::sync::Mutex;
use std::time::Duration;

use http::HeaderMap;
use switchyard_stats::access_log::{wanted, Line};

/// The request id header: taken from the client when it sends one, else made here.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest client-supplied request id kept (longer ones are replaced).
const MAX_REQUEST_ID: usize = 128;

/// What the handler learnt about a request, for its line.
#[derive(Debug, Default, Clone)]
pub struct Note {
    pub model: Option<String>,
    pub version: Option<String>,
    pub variant: Option<String>,
    /// The error kind's label (`permission_denied`, `backend_timeout`…).
    pub error: Option<&'static str>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub body_sha256: Option<String>,
    /// The content-routing rule that routed the request (`models.M.rules[].name`).
    pub rule: Option<std::sync::Arc<str>>,
}

/// A `Note` a gRPC handler fills and the `edge` layer reads after the call.
pub type SharedNote = std::sync::Arc<Mutex<Note>>;

/// One request's line.
pub struct Record<'a> {
    pub protocol: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    pub principal: Option<&'a str>,
    pub client: Option<String>,
    /// HTTP status, or the gRPC code for gRPC.
    pub status: u32,
    pub latency: Duration,
    pub note: &'a Note,
}

/// The client's `x-request-id` when it is sane, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> String {
    match headers.get(REQUEST_ID_HEADER).and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= MAX_REQUEST_ID => id.to_string(),
        _ => format!("{:016x}", fastrand::u64(..)),
    }
}

impl Record<'_> {
    /// Writes the line when the access log wants it (off, sampled; errors always).
    pub fn write(&self) {
        let error = self.note.error.is_some() || (self.protocol == "http" && self.status >= 400);
        if !wanted(error) {
            return;
        }
        let h = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok());
        let status_key = if self.protocol == "grpc" { "grpc_status" } else { "status" };
        Line::new("access")
            .str("request_id", &request_id(self.headers))
            .str("protocol", self.protocol)
            .str("method", self.method)
            .str("path", self.path)
            .opt("principal", self.principal)
            .opt("model", self.note.model.as_deref())
            .opt("version", self.note.version.as_deref())
            .opt("variant", self.note.variant.as_deref())
            .opt("rule", self.note.rule.as_deref())
            .num(status_key, self.status)
            .num("latency_us", self.latency.as_micros())
            .num("bytes_in", self.note.bytes_in)
            .num("bytes_out", self.note.bytes_out)
            .opt("client", self.client.as_deref())
            .opt("user_agent", h("user-agent"))
            .opt("error", self.note.error)
            .opt("body_sha256", self.note.body_sha256.as_deref())
            .write();
    }
}

/// Hex SHA-256 of a request body.
pub fn body_hash(body: &[u8]) -> String {
    crate::auth::sha256(body).iter().map(|b| format!("{b:02x}")).collect()
}
