//! Errors of the runtime layer: malformed tensors and bodies (the client's
//! fault) and backend failures (with who failed and whether a retry is safe).
//! The proxy's `respond` module is the one place these become status codes.

use std::time::Duration;

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum TensorError {
    #[error("shape has a negative dimension {0}")]
    NegativeDim(i64),
    #[error("shape's element count overflows")]
    ShapeOverflow,
    #[error("data holds {got} bytes but shape and datatype need {expected}")]
    SizeMismatch { expected: usize, got: usize },
    #[error("data holds {got} elements but shape needs {expected}")]
    CountMismatch { expected: usize, got: usize },
    #[error("BYTES element with a bad length prefix")]
    BadBytesElement,
    #[error("BOOL element {value} at {index} (a BOOL byte is 0 or 1)")]
    BadBool { index: usize, value: u8 },
    #[error("request has no inputs")]
    NoInputs,
    #[error("input '{0}' appears more than once")]
    DuplicateInput(String),
    #[error("input '{0}': {1}")]
    In(String, Box<TensorError>),
}

/// A request or response body that cannot be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum CodecError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

impl CodecError {
    pub fn invalid(msg: impl Into<String>) -> CodecError {
        CodecError::Invalid(msg.into())
    }
}

/// What went wrong talking to (or inside) a backend.
#[derive(Debug, thiserror::Error, Clone)]
pub enum BackendError {
    /// The request was never sent (connect refused/failed): safe to retry elsewhere.
    #[error("cannot connect to backend {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
    /// No endpoint is in rotation (all ejected) or the backend is not ready.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("backend did not answer within {0:?}")]
    Timeout(Duration),
    /// An HTTP backend answered with its own error status. `body` and
    /// `content_type` are its answer as sent, for relaying it unchanged.
    #[error("{message}")]
    Status { status: u16, message: String, body: Option<bytes::Bytes>, content_type: Option<http::HeaderValue> },
    /// A gRPC backend answered with its own status code (`tonic::Code` as i32), relayed unchanged.
    #[error("{message}")]
    Grpc { code: i32, message: String },
    /// The backend answered something that is not the protocol.
    #[error("backend sent an invalid response: {0}")]
    Protocol(String),
    /// The request does not fit the model (checked before running it).
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    NotFound(String),
    /// The backend failed while running a valid request.
    #[error("backend failed: {0}")]
    Internal(String),
}

impl BackendError {
    /// An HTTP backend's error status with a message and nothing to relay.
    pub fn status(status: u16, message: impl Into<String>) -> BackendError {
        BackendError::Status { status, message: message.into(), body: None, content_type: None }
    }

    /// True only when the request provably never reached the backend.
    pub fn retry_safe(&self) -> bool {
        matches!(self, BackendError::Connect { .. })
    }
}

/// An error and its sources, `outer: inner: root`, for messages that say what failed and why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
