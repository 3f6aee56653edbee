//! Reading an HTTP request body under the configured limits: the declared
//! length is checked before a byte is read, the running total while reading,
//! and a slow client runs into `limits.header_read_timeout` (per read) and
//! `limits.body_read_timeout` (the whole body).

use bytes::{Bytes, BytesMut};
use pingora_core::ErrorType;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use switchyard_config::Limits;
use switchyard_runtime::codec::v2::HEADER_CONTENT_LENGTH;

use crate::error::{Error, ErrorKind};

/// `Content-Length`, when the client declared one.
pub fn declared_length(req: &RequestHeader) -> Option<u64> {
    req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok())
}

pub fn too_big(n: u64, max: u64) -> Error {
    Error::too_large(format!("request body of {n} bytes exceeds the limit of {max} bytes (limits.max_body_bytes)"))
}

/// The binary extension's `Inference-Header-Content-Length`, when present.
pub fn inference_header_length(req: &RequestHeader) -> Result<Option<usize>, Error> {
    match req.headers.get(HEADER_CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).map(Some).ok_or_else(|| {
            Error::bad_field(HEADER_CONTENT_LENGTH, "Inference-Header-Content-Length must be a non-negative integer")
        }),
    }
}

/// The whole body, within `limits.max_body_bytes`.
pub async fn read(session: &mut Session, limits: &Limits) -> Result<Bytes, Error> {
    let max = limits.max_body_bytes;
    let declared = declared_length(session.req_header());
    if let Some(n) = declared.filter(|n| *n > max) {
        return Err(too_big(n, max));
    }
    session.set_read_timeout(Some(limits.header_read_timeout));
    // Each read has `header_read_timeout`; the whole body `body_read_timeout`,
    // so a body trickled a byte at a time is cut too.
    tokio::time::timeout(limits.body_read_timeout, read_within(session, max, declared)).await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::RequestTimeout,
            format!("the request body did not arrive within {:?} (limits.body_read_timeout)", limits.body_read_timeout),
        ))
    })
}

async fn read_within(session: &mut Session, max: u64, declared: Option<u64>) -> Result<Bytes, Error> {
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let chunk = session.read_request_body().await.map_err(|e| {
            if e.etype() == &ErrorType::ReadTimedout {
                Error::new(ErrorKind::RequestTimeout, "timed out reading the request body")
            } else {
                Error::bad_request(format!("cannot read the request body: {e}"))
            }
        })?;
        let Some(chunk) = chunk else { break };
        let have = first.as_ref().map_or(0, |f| f.len()) + buf.len();
        if (have + chunk.len()) as u64 > max {
            return Err(too_big((have + chunk.len()) as u64, max));
        }
        // The common case is one chunk: keep it without copying.
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            None => buf.extend_from_slice(&chunk),
            Some(f) => {
                buf.reserve(declared.unwrap_or(0) as usize);
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}
