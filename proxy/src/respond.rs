//! The one place errors become HTTP statuses: 4xx when the client is at
//! fault, 503 for overload or unready, 502/504 when the backend failed —
//! and, from those, gRPC status codes (`ApiError::grpc_status`).

use switchyard_runtime::{BackendError, CodecError};

use crate::batch::BatchError;
use crate::routing::RouteError;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// Seconds for a `Retry-After` header (overload).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: None }
    }
}

impl ApiError {
    /// The same error as a gRPC status, with the code that says who failed:
    /// INVALID_ARGUMENT (400), NOT_FOUND (404), RESOURCE_EXHAUSTED (413, 429),
    /// UNAVAILABLE (502, 503 — a full batch queue too, as Triton answers),
    /// DEADLINE_EXCEEDED (408, 504), CANCELLED (499), UNIMPLEMENTED (405, 501),
    /// INTERNAL (500).
    pub fn grpc_status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self.status {
            400 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            405 | 501 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            409 => Code::Aborted,
            413 | 429 => Code::ResourceExhausted,
            499 => Code::Cancelled,
            502 | 503 => Code::Unavailable,
            500 => Code::Internal,
            400..=499 => Code::FailedPrecondition,
            _ => Code::Unknown,
        };
        tonic::Status::new(code, self.message.clone())
    }
}

impl From<BatchError> for ApiError {
    fn from(e: BatchError) -> ApiError {
        match e {
            BatchError::QueueFull { .. } => ApiError { retry_after: Some(1), ..ApiError::new(503, e.to_string()) },
            BatchError::Expired { .. } => ApiError::new(504, e.to_string()),
            BatchError::BadParameter(_) => ApiError::new(400, e.to_string()),
            BatchError::Closed => ApiError::new(503, e.to_string()),
            BatchError::Backend(b) => b.into(),
        }
    }
}

impl From<CodecError> for ApiError {
    fn from(e: CodecError) -> ApiError {
        ApiError::new(400, e.to_string())
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> ApiError {
        match e {
            RouteError::UnknownModel(_) => ApiError::new(404, e.to_string()),
            RouteError::UnknownVariant { .. } => ApiError::new(400, e.to_string()),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> ApiError {
        let status = match &e {
            BackendError::Connect { .. } => 502,
            BackendError::Unavailable(_) => 503,
            BackendError::Timeout(_) => 504,
            // The backend's own client errors are the client's to fix: relay them.
            BackendError::Status { status, .. } if (400..500).contains(status) => *status,
            BackendError::Status { status, message } => {
                return ApiError::new(502, format!("backend error (HTTP {status}): {message}"));
            }
            BackendError::Protocol(_) => 502,
            BackendError::InvalidInput(_) => 400,
            BackendError::NotFound(_) => 404,
            BackendError::Internal(_) => 500,
        };
        ApiError::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn statuses_say_who_failed() {
        let cases: Vec<(ApiError, u16)> = vec![
            (CodecError::invalid("x").into(), 400),
            (RouteError::UnknownModel("m".into()).into(), 404),
            (BackendError::Connect { endpoint: "e".into(), message: "refused".into() }.into(), 502),
            (BackendError::Unavailable("x".into()).into(), 503),
            (BackendError::Timeout(Duration::from_secs(1)).into(), 504),
            (BackendError::Status { status: 404, message: "no such model".into() }.into(), 404),
            (BackendError::Status { status: 500, message: "boom".into() }.into(), 502),
            (BackendError::InvalidInput("x".into()).into(), 400),
        ];
        for (e, status) in cases {
            assert_eq!(e.status, status, "{e:?}");
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn grpc_codes_say_who_failed() {
        use tonic::Code;
        let cases: Vec<(ApiError, Code)> = vec![
            (CodecError::invalid("bad tensor").into(), Code::InvalidArgument),
            (RouteError::UnknownModel("m".into()).into(), Code::NotFound),
            (BackendError::Connect { endpoint: "e".into(), message: "refused".into() }.into(), Code::Unavailable),
            (BackendError::Unavailable("x".into()).into(), Code::Unavailable),
            (BackendError::Timeout(Duration::from_secs(1)).into(), Code::DeadlineExceeded),
            (BackendError::Internal("x".into()).into(), Code::Internal),
            (ApiError::new(413, "too big"), Code::ResourceExhausted),
        ];
        for (e, code) in cases {
            let s = e.grpc_status();
            assert_eq!(s.code(), code, "{e:?}");
            assert_eq!(s.message(), e.message);
        }
    }
}
