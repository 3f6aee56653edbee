//! Writing an answer to an HTTP client: status, the `x-switchyard-*`
//! headers, and the body (none for HEAD). Errors are laid out by `respond`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method};
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use switchyard_runtime::codec::v2::HEADER_CONTENT_LENGTH;

use crate::cache::CacheStatus;
use crate::error::Error;
use crate::headers::{BATCH_SIZE_HEADER, CACHE_HEADER, OVERHEAD_HEADER, VARIANT_HEADER};
use crate::respond::{self, CLIENT_CLOSED};

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// One answer to write.
#[derive(Default)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
    pub content_type: Option<HeaderValue>,
    /// `Inference-Header-Content-Length` of a binary-extension body.
    pub header_len: Option<usize>,
    pub variant: Option<HeaderValue>,
    pub overhead: Option<Duration>,
    pub batch_rows: Option<usize>,
    pub cache: Option<CacheStatus>,
    pub retry_after: Option<u32>,
    /// The error kind's label, for the access log.
    pub error: Option<&'static str>,
    /// SHA-256 of the request body, when `access_log.body_hash` is on.
    pub body_sha256: Option<String>,
    /// The content-routing rule that routed the request, for the access log.
    pub rule: Option<std::sync::Arc<str>>,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<Bytes>) -> Reply {
        Reply { status, body: body.into(), content_type: Some(APPLICATION_JSON), ..Reply::default() }
    }

    pub fn error(e: &Error) -> Reply {
        let a = respond::v2_http(e);
        Reply {
            status: a.status,
            body: a.body,
            content_type: Some(a.content_type),
            retry_after: a.retry_after,
            error: Some(e.kind.label()),
            ..Reply::default()
        }
    }
}

/// Writes `reply`; an answer to a client that left (499) is only counted, never written.
pub async fn write(session: &mut Session, reply: Reply) -> Result<()> {
    if reply.status == CLIENT_CLOSED {
        return Ok(());
    }
    // No case map: every name here is lowercase or one pingora titles
    // itself, so the bytes on the wire are those of `build`, for less work.
    let mut h = ResponseHeader::build_no_case(reply.status, Some(8))?;
    h.insert_header(http::header::CONTENT_TYPE, reply.content_type.unwrap_or(APPLICATION_JSON))?;
    h.insert_header(http::header::CONTENT_LENGTH, reply.body.len())?;
    if let Some(n) = reply.header_len {
        h.insert_header(HEADER_CONTENT_LENGTH, n)?;
    }
    if let Some(v) = reply.variant {
        h.insert_header(VARIANT_HEADER, v)?;
    }
    if let Some(d) = reply.overhead {
        h.insert_header(OVERHEAD_HEADER, d.as_micros() as u64)?;
    }
    if let Some(status) = reply.cache {
        h.insert_header(CACHE_HEADER, status.header_value())?;
    }
    if let Some(rows) = reply.batch_rows {
        h.insert_header(BATCH_SIZE_HEADER, rows)?;
    }
    if reply.status == 401 {
        h.insert_header(http::header::WWW_AUTHENTICATE, "Bearer")?;
    }
    if let Some(secs) = reply.retry_after {
        h.insert_header(http::header::RETRY_AFTER, secs)?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    if crate::lifecycle::draining() {
        // Started draining while this request ran: the answer closes the connection.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), head_only).await?;
    if !head_only {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}
