//! The data plane's one error type: what went wrong in protocol-neutral
//! terms (who failed, whether to retry, the backend's own answer when it
//! gave one) and a message for people. It stays typed through the whole
//! request lifecycle; `respond` is the one module that turns it into an HTTP
//! status and body or a gRPC status. A leaf: it names no other module of
//! this crate, so every module may return it.

use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use switchyard_runtime::{BackendError, CodecError};

/// What failed, and so how every protocol answers it.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// The client sent something wrong; `field` names the offending part when known
    /// (a tensor, a header, a parameter).
    BadRequest { field: Option<String> },
    /// No such model, version or path.
    NotFound,
    /// A known path with the wrong method; `allowed` is the one it takes.
    MethodNotAllowed { allowed: &'static str },
    /// A request (or the answer to it) over a configured size limit.
    TooLarge,
    /// The client did not send its request body in time.
    RequestTimeout,
    /// Overloaded (a full queue) or not ready: the client may retry, after
    /// `retry_after` seconds when set.
    Unavailable { retry_after: Option<u32> },
    /// No credentials, or credentials that do not verify.
    Unauthenticated,
    /// A known principal without the permission the request needs.
    PermissionDenied,
    /// Over a rate limit: retry after `retry_after` seconds.
    RateLimited { retry_after: u32 },
    /// The request's own deadline passed (queue deadline, client deadline).
    DeadlineExceeded,
    /// The client went away; nothing is written back.
    ClientClosed,
    /// The backend failed, or answered with an error of its own.
    Backend(BackendFailure),
    /// A known API that this server does not offer for what was asked (e.g. an RPC its backend kind lacks).
    NotImplemented,
    /// A fault of Switchyard itself.
    Internal,
}

impl ErrorKind {
    /// A stable name for logs (`error` in the access log).
    pub fn label(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest { .. } => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed { .. } => "method_not_allowed",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::Unavailable { .. } => "unavailable",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::RateLimited { .. } => "rate_limited",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::ClientClosed => "client_closed",
            ErrorKind::Backend(b) => match b {
                BackendFailure::Unreachable => "backend_unreachable",
                BackendFailure::Timeout => "backend_timeout",
                BackendFailure::Invalid => "backend_invalid",
                BackendFailure::Failed => "backend_failed",
                BackendFailure::Http { .. } => "backend_http_error",
                BackendFailure::Grpc { .. } => "backend_grpc_error",
            },
            ErrorKind::NotImplemented => "not_implemented",
            ErrorKind::Internal => "internal",
        }
    }
}

/// How a backend failed.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendFailure {
    /// Never reached: connect refused or failed.
    Unreachable,
    /// No answer within the backend's timeout.
    Timeout,
    /// The backend answered something that is not the protocol.
    Invalid,
    /// The backend failed while running a valid request (the embedded runtime).
    Failed,
    /// An HTTP backend answered this status; `reply` is its body, relayed
    /// unchanged to HTTP clients when the status is a 4xx.
    Http { status: u16, reply: Option<RawReply> },
    /// A gRPC backend answered this status code, relayed unchanged to gRPC clients.
    Grpc { code: i32 },
}

/// A backend's error answer as it came: content type and body bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawReply {
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// A data-plane error: its kind and a message that says what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadRequest { field: None }, message)
    }

    /// A bad request whose offending part is `field` (a tensor, header or parameter name).
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::BadRequest { field: Some(field.into()) }, message)
    }

    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable { retry_after: None }, message)
    }

    /// Overload: the client should retry after `secs` seconds.
    pub fn overloaded(retry_after_secs: u32, message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unavailable { retry_after: Some(retry_after_secs) }, message)
    }

    pub fn deadline(after: Duration) -> Error {
        Error::new(ErrorKind::DeadlineExceeded, format!("the client's deadline of {after:?} passed before the answer"))
    }

    pub fn client_closed() -> Error {
        Error::new(ErrorKind::ClientClosed, "client closed the connection")
    }

    pub fn too_large(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::TooLarge, message)
    }

    /// A backend's answer that cannot be encoded for the client: the backend's fault.
    pub fn unencodable(e: CodecError) -> Error {
        Error::new(
            ErrorKind::Backend(BackendFailure::Invalid),
            format!("the backend's answer cannot be sent to the client: {e}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, message)
    }

    /// Seconds a client should wait before retrying, for overload answers.
    /// A failure that says the backend is past its capacity: feeds adaptive limits.
    pub fn signals_overload(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Unavailable { .. }
                | ErrorKind::DeadlineExceeded
                | ErrorKind::Backend(BackendFailure::Timeout)
                | ErrorKind::Backend(BackendFailure::Http { status: 503 | 429, .. })
        )
    }

    pub fn retry_after(&self) -> Option<u32> {
        match self.kind {
            ErrorKind::Unavailable { retry_after } => retry_after,
            ErrorKind::RateLimited { retry_after } => Some(retry_after),
            _ => None,
        }
    }
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Error {
        let field = match &e {
            CodecError::Tensor(switchyard_runtime::TensorError::In(name, _)) => Some(name.clone()),
            _ => None,
        };
        Error::new(ErrorKind::BadRequest { field }, e.to_string())
    }
}

impl From<BackendError> for Error {
    fn from(e: BackendError) -> Error {
        let kind = match &e {
            BackendError::Connect { .. } => ErrorKind::Backend(BackendFailure::Unreachable),
            BackendError::Unavailable(_) => ErrorKind::Unavailable { retry_after: None },
            BackendError::Timeout(_) => ErrorKind::Backend(BackendFailure::Timeout),
            BackendError::Status { status, body, content_type, .. } => ErrorKind::Backend(BackendFailure::Http {
                status: *status,
                reply: body.clone().map(|body| RawReply { content_type: content_type.clone(), body }),
            }),
            BackendError::Grpc { code, .. } => ErrorKind::Backend(BackendFailure::Grpc { code: *code }),
            BackendError::Protocol(_) => ErrorKind::Backend(BackendFailure::Invalid),
            BackendError::InvalidInput(_) => ErrorKind::BadRequest { field: None },
            BackendError::NotFound(_) => ErrorKind::NotFound,
            BackendError::Internal(_) => ErrorKind::Backend(BackendFailure::Failed),
        };
        let message = match &e {
            BackendError::Status { status, message, .. } if *status >= 500 => {
                format!("backend error (HTTP {status}): {message}")
            }
            _ => e.to_string(),
        };
        Error { kind, message }
    }
}
