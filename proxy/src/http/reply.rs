//! Writing an answer to an HTTP client: status, the `x-switchyard-*`
//! headers, and the body (none for HEAD). Errors are laid out by `respond`.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora_core::{OrErr, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use switchyard_runtime::codec::v2::HEADER_CONTENT_LENGTH;

use crate::cache::CacheStatus;
use crate::error::Error;
use crate::headers::{BATCH_SIZE_HEADER, CACHE_HEADER, OVERHEAD_HEADER, VARIANT_HEADER};
use crate::respond::{self, CLIENT_CLOSED};

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const INFERENCE_HEADER_LENGTH: HeaderName = HeaderName::from_static(HEADER_CONTENT_LENGTH);
const VARIANT: HeaderName = HeaderName::from_static(VARIANT_HEADER);
const OVERHEAD: HeaderName = HeaderName::from_static(OVERHEAD_HEADER);
const CACHE: HeaderName = HeaderName::from_static(CACHE_HEADER);
const BATCH_SIZE: HeaderName = HeaderName::from_static(BATCH_SIZE_HEADER);

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
    let head_only = session.req_header().method == Method::HEAD;
    if crate::lifecycle::draining() {
        // Started draining while this request ran: the answer closes the connection.
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(head(&reply)?), head_only).await?;
    if !head_only {
        session.write_response_body(Some(reply.body), true).await?;
    }
    Ok(())
}

/// The answer's head. Built as `http` parts with pre-made names, not through
/// `ResponseHeader::insert_header` (which parses every name again and copies
/// each `x-switchyard-*` one): no case map, so the bytes on the wire are
/// these lowercase names, as with `ResponseHeader::build_no_case`.
fn head(reply: &Reply) -> Result<ResponseHeader> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(reply.status)
        .or_err(pingora_core::ErrorType::InvalidHTTPHeader, "invalid status")?;
    let h = &mut parts.headers;
    h.reserve(8);
    h.insert(http::header::CONTENT_TYPE, reply.content_type.clone().unwrap_or(APPLICATION_JSON));
    h.insert(http::header::CONTENT_LENGTH, decimal(reply.body.len() as u64));
    if let Some(n) = reply.header_len {
        h.insert(INFERENCE_HEADER_LENGTH, decimal(n as u64));
    }
    if let Some(v) = &reply.variant {
        h.insert(VARIANT, v.clone());
    }
    if let Some(d) = reply.overhead {
        h.insert(OVERHEAD, decimal(d.as_micros() as u64));
    }
    if let Some(status) = reply.cache {
        h.insert(CACHE, status.header_value());
    }
    if let Some(rows) = reply.batch_rows {
        h.insert(BATCH_SIZE, decimal(rows as u64));
    }
    if reply.status == 401 {
        h.insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = reply.retry_after {
        h.insert(http::header::RETRY_AFTER, decimal(u64::from(secs)));
    }
    Ok(ResponseHeader::from(parts))
}

/// A decimal header value in one allocation (`HeaderValue::from(u64)` makes two).
fn decimal(mut n: u64) -> HeaderValue {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&buf[i..]).expect("digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals() {
        for n in [0, 7, 10, 1234, u64::MAX] {
            assert_eq!(decimal(n), HeaderValue::from(n));
        }
    }

    #[test]
    fn heads_carry_every_header() {
        let reply = Reply {
            status: 200,
            body: Bytes::from_static(b"{}"),
            header_len: Some(2),
            variant: Some(HeaderValue::from_static("blue")),
            overhead: Some(Duration::from_micros(42)),
            batch_rows: Some(3),
            cache: Some(CacheStatus::HitL1),
            ..Reply::default()
        };
        let h = head(&reply).unwrap();
        assert_eq!(h.status, 200);
        let get = |n: &str| h.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(get("content-type").as_deref(), Some("application/json"));
        assert_eq!(get("content-length").as_deref(), Some("2"));
        assert_eq!(get(HEADER_CONTENT_LENGTH).as_deref(), Some("2"));
        assert_eq!(get(VARIANT_HEADER).as_deref(), Some("blue"));
        assert_eq!(get(OVERHEAD_HEADER).as_deref(), Some("42"));
        assert_eq!(get(BATCH_SIZE_HEADER).as_deref(), Some("3"));
        assert_eq!(get(CACHE_HEADER).as_deref(), Some("hit-l1"));
        assert!(!h.has_case(), "no case map: names go out as written");
        let e = head(&Reply { status: 401, retry_after: Some(5), ..Reply::default() }).unwrap();
        assert_eq!(e.headers.get("www-authenticate").unwrap(), "Bearer");
        assert_eq!(e.headers.get("retry-after").unwrap(), "5");
    }
}
