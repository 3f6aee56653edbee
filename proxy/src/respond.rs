//! The one place a data-plane `Error` becomes an answer in the client's
//! protocol: an HTTP status with a V2 `{"error": ...}` body (or the
//! backend's own 4xx body, relayed unchanged), or a gRPC status. Both are
//! chosen from the same typed error, so they always agree on who failed:
//! 4xx / INVALID_ARGUMENT, NOT_FOUND… the client; 503 / UNAVAILABLE
//! overload or unready; 502, 504 / UNAVAILABLE, DEADLINE_EXCEEDED the
//! backend. A new protocol adds its error body here and nowhere else.

use bytes::Bytes;
use http::HeaderValue;
use switchyard_runtime::codec::v2;
use tonic::Code;

use crate::error::{BackendFailure, Error, ErrorKind};

/// nginx's "client closed request": counted in metrics, never written.
pub const CLIENT_CLOSED: u16 = 499;

/// An error answer for an HTTP client.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub status: u16,
    pub content_type: HeaderValue,
    pub body: Bytes,
    /// Seconds for a `Retry-After` header (overload).
    pub retry_after: Option<u32>,
}

/// The HTTP status that says who failed.
pub fn http_status(e: &Error) -> u16 {
    match &e.kind {
        ErrorKind::BadRequest { .. } => 400,
        ErrorKind::Unauthenticated => 401,
        ErrorKind::PermissionDenied => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::MethodNotAllowed { .. } => 405,
        ErrorKind::RateLimited { .. } => 429,
        ErrorKind::RequestTimeout => 408,
        ErrorKind::TooLarge => 413,
        ErrorKind::ClientClosed => CLIENT_CLOSED,
        ErrorKind::Internal => 500,
        ErrorKind::NotImplemented => 501,
        ErrorKind::Unavailable { .. } => 503,
        ErrorKind::DeadlineExceeded => 504,
        ErrorKind::Backend(b) => match b {
            BackendFailure::Unreachable | BackendFailure::Invalid => 502,
            BackendFailure::Timeout => 504,
            BackendFailure::Failed => 500,
            // The backend's own client errors are the client's to fix: relayed.
            BackendFailure::Http { status, .. } if (400..500).contains(status) => *status,
            BackendFailure::Http { .. } => 502,
            BackendFailure::Grpc { code } => grpc_code_to_http(Code::from(*code)),
        },
    }
}

/// A gRPC backend's code as an HTTP status for an HTTP client.
fn grpc_code_to_http(code: Code) -> u16 {
    match code {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::AlreadyExists => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded | Code::Cancelled => 504,
        _ => 502,
    }
}

/// The V2 REST answer: status, `{"error": message}` — or a backend's 4xx body as it sent it.
pub fn v2_http(e: &Error) -> HttpError {
    let status = http_status(e);
    if let ErrorKind::Backend(BackendFailure::Http { reply: Some(reply), .. }) = &e.kind {
        if (400..500).contains(&status) {
            return HttpError {
                status,
                content_type: reply.content_type.clone().unwrap_or(HeaderValue::from_static("application/json")),
                body: reply.body.clone(),
                retry_after: None,
            };
        }
    }
    HttpError {
        status,
        content_type: HeaderValue::from_static("application/json"),
        body: v2::error_body(&e.message),
        retry_after: e.retry_after(),
    }
}

/// TorchServe's exception name for an error: the `type` of its error body.
fn torchserve_type(e: &Error, status: u16) -> &'static str {
    match status {
        400 => "BadRequestException",
        401 | 403 => "InvalidKeyException",
        404 if e.message.starts_with("Model not found") => "ModelNotFoundException",
        404 if e.message.starts_with("Model version") => "ModelVersionNotFoundException",
        404 => "ResourceNotFoundException",
        405 => "MethodNotAllowedException",
        408 | 504 => "RequestTimeoutException",
        413 => "RequestEntityTooLargeException",
        429 => "TooManyRequestsException",
        501 => "NotImplementedException",
        503 => "ServiceUnavailableException",
        _ => "InternalServerException",
    }
}

/// TorchServe's REST answer: status and `{"code": status, "type":
/// "<exception>", "message": ...}` (its `ErrorResponse`) — or a backend's
/// 4xx body as it sent it (a TorchServe behind a `torchserve` backend).
pub fn torchserve_http(e: &Error) -> HttpError {
    let mut a = v2_http(e);
    if let ErrorKind::Backend(BackendFailure::Http { reply: Some(_), .. }) = &e.kind {
        if (400..500).contains(&a.status) {
            return a;
        }
    }
    let body = serde_json::json!({"code": a.status, "type": torchserve_type(e, a.status), "message": e.message});
    a.body = Bytes::from(serde_json::to_vec_pretty(&body).unwrap_or_default());
    a
}

/// The gRPC status: a gRPC backend's code unchanged, else the code that says who failed.
pub fn grpc_status(e: &Error) -> tonic::Status {
    let code = match &e.kind {
        ErrorKind::BadRequest { .. } => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::RateLimited { .. } => Code::ResourceExhausted,
        ErrorKind::MethodNotAllowed { .. } => Code::Unimplemented,
        ErrorKind::RequestTimeout | ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::TooLarge => Code::ResourceExhausted,
        ErrorKind::ClientClosed => Code::Cancelled,
        ErrorKind::Internal => Code::Internal,
        ErrorKind::NotImplemented => Code::Unimplemented,
        // A full batch queue too, as Triton answers.
        ErrorKind::Unavailable { .. } => Code::Unavailable,
        ErrorKind::Backend(b) => match b {
            BackendFailure::Unreachable | BackendFailure::Invalid => Code::Unavailable,
            BackendFailure::Timeout => Code::DeadlineExceeded,
            BackendFailure::Failed => Code::Internal,
            BackendFailure::Grpc { code } => Code::from(*code),
            BackendFailure::Http { status, .. } => match status {
                400 | 422 => Code::InvalidArgument,
                401 => Code::Unauthenticated,
                403 => Code::PermissionDenied,
                404 => Code::NotFound,
                409 => Code::Aborted,
                429 => Code::ResourceExhausted,
                501 => Code::Unimplemented,
                408 | 504 => Code::DeadlineExceeded,
                400..=499 => Code::FailedPrecondition,
                _ => Code::Unavailable,
            },
        },
    };
    let mut s = tonic::Status::new(code, e.message.clone());
    // A rate-limited or overloaded client learns when to retry, as over HTTP.
    if let Some(secs) = e.retry_after() {
        s.metadata_mut().insert("retry-after", secs.into());
    }
    s
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchyard_runtime::{BackendError, CodecError};

    use super::*;

    fn grpc_backend(code: Code) -> Error {
        BackendError::Grpc { code: code as i32, message: "from the backend".into() }.into()
    }

    /// One row per kind of failure: the HTTP status and the gRPC code chosen together.
    #[test]
    fn http_and_grpc_answers_agree_on_who_failed() {
        let cases: Vec<(Error, u16, Code)> = vec![
            (CodecError::invalid("bad tensor").into(), 400, Code::InvalidArgument),
            (Error::not_found("unknown model 'm'"), 404, Code::NotFound),
            (Error::new(ErrorKind::Unauthenticated, "no token"), 401, Code::Unauthenticated),
            (Error::new(ErrorKind::PermissionDenied, "no permission"), 403, Code::PermissionDenied),
            (Error::new(ErrorKind::RateLimited { retry_after: 2 }, "slow down"), 429, Code::ResourceExhausted),
            (Error::new(ErrorKind::MethodNotAllowed { allowed: "POST" }, "x"), 405, Code::Unimplemented),
            (Error::new(ErrorKind::RequestTimeout, "slow body"), 408, Code::DeadlineExceeded),
            (Error::too_large("too big"), 413, Code::ResourceExhausted),
            (Error::client_closed(), 499, Code::Cancelled),
            (Error::internal("bug"), 500, Code::Internal),
            (Error::new(ErrorKind::NotImplemented, "no such RPC here"), 501, Code::Unimplemented),
            (Error::overloaded(1, "queue full"), 503, Code::Unavailable),
            (Error::deadline(Duration::from_millis(5)), 504, Code::DeadlineExceeded),
            (BackendError::Connect { endpoint: "e".into(), message: "refused".into() }.into(), 502, Code::Unavailable),
            (BackendError::Unavailable("x".into()).into(), 503, Code::Unavailable),
            (BackendError::Timeout(Duration::from_secs(1)).into(), 504, Code::DeadlineExceeded),
            (BackendError::Protocol("garbage".into()).into(), 502, Code::Unavailable),
            (BackendError::Internal("ort failed".into()).into(), 500, Code::Internal),
            (BackendError::InvalidInput("x".into()).into(), 400, Code::InvalidArgument),
            (BackendError::status(404, "no such model").into(), 404, Code::NotFound),
            (BackendError::status(401, "token").into(), 401, Code::Unauthenticated),
            (BackendError::status(500, "boom").into(), 502, Code::Unavailable),
            (grpc_backend(Code::InvalidArgument), 400, Code::InvalidArgument),
            (grpc_backend(Code::PermissionDenied), 403, Code::PermissionDenied),
            (grpc_backend(Code::DataLoss), 502, Code::DataLoss),
            (grpc_backend(Code::Aborted), 409, Code::Aborted),
        ];
        for (e, status, code) in cases {
            assert_eq!(http_status(&e), status, "{e:?}");
            let s = grpc_status(&e);
            assert_eq!(s.code(), code, "{e:?}");
            assert_eq!(s.message(), e.message);
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn a_backend_4xx_body_is_relayed_unchanged() {
        let body = Bytes::from_static(b"{\"error\":\"tenant quota exceeded\",\"code\":\"Q1\"}");
        let e: Error = BackendError::Status {
            status: 429,
            message: "tenant quota exceeded".into(),
            body: Some(body.clone()),
            content_type: Some(HeaderValue::from_static("application/problem+json")),
        }
        .into();
        let a = v2_http(&e);
        assert_eq!((a.status, a.body, a.content_type.to_str().unwrap()), (429, body, "application/problem+json"));
        // A 5xx is the backend's fault: the client gets 502 and a V2 body naming it.
        let e: Error = BackendError::Status {
            status: 500,
            message: "boom".into(),
            body: Some(Bytes::from_static(b"Traceback...")),
            content_type: None,
        }
        .into();
        let a = v2_http(&e);
        assert_eq!(a.status, 502);
        assert_eq!(&a.body[..], br#"{"error":"backend error (HTTP 500): boom"}"#);
    }

    #[test]
    fn torchserve_errors_are_its_error_response() {
        let doc = |e: &Error| {
            let a = torchserve_http(e);
            (a.status, serde_json::from_slice::<serde_json::Value>(&a.body).unwrap(), a.retry_after)
        };
        let (status, body, _) = doc(&Error::not_found("Model not found: m"));
        assert_eq!(status, 404);
        assert_eq!(
            body,
            serde_json::json!({"code": 404, "type": "ModelNotFoundException", "message": "Model not found: m"})
        );
        let (status, body, retry) = doc(&Error::overloaded(2, "queue full"));
        assert_eq!((status, body["type"].as_str(), retry), (503, Some("ServiceUnavailableException"), Some(2)));
        assert_eq!(doc(&CodecError::invalid("x").into()).1["type"], "BadRequestException");
        assert_eq!(doc(&Error::too_large("x")).1["type"], "RequestEntityTooLargeException");
        // A TorchServe behind answered 4xx in its own words: relayed as they came.
        let body =
            Bytes::from_static(b"{\"code\": 400, \"type\": \"PredictionException\", \"message\": \"bad image\"}");
        let e: Error = BackendError::Status {
            status: 400,
            message: "bad image".into(),
            body: Some(body.clone()),
            content_type: None,
        }
        .into();
        assert_eq!(torchserve_http(&e).body, body);
    }

    #[test]
    fn overload_says_when_to_retry() {
        let a = v2_http(&Error::overloaded(2, "full"));
        assert_eq!((a.status, a.retry_after), (503, Some(2)));
        assert_eq!(v2_http(&Error::unavailable("not ready")).retry_after, None);
        let a = v2_http(&Error::new(ErrorKind::RateLimited { retry_after: 3 }, "over the limit"));
        assert_eq!((a.status, a.retry_after), (429, Some(3)));
    }
}
