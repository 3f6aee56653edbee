//! The control plane's one error type: what went wrong, in words, and which
//! kind of failure it is. Only `api` turns a kind into an HTTP status.

use std::fmt;

/// Who failed, and so how the control API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A malformed request, or one asking for something invalid (a negative weight).
    BadRequest,
    /// An unknown model, variant, generation or A/B test.
    NotFound,
    /// Refused in the current state: a duplicate test id, nothing to roll back
    /// to, no response cache, a config file that keeps changing.
    Conflict,
    /// The config file was refused: unreadable, empty or invalid.
    InvalidConfig,
    /// The serving plane could not apply a generation (a backend failed to build).
    ServingPlane,
    /// Fleet mode: the shared state is unreachable, so no change can be made.
    Unavailable,
}

/// A refused control-plane operation; nothing changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ControlError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ControlError {
        ControlError { kind, message: message.into() }
    }

    pub fn bad_request(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::Conflict, message)
    }

    pub fn invalid_config(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::InvalidConfig, message)
    }

    pub fn unavailable(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::Unavailable, message)
    }

    pub fn serving_plane(message: impl Into<String>) -> ControlError {
        ControlError::new(ErrorKind::ServingPlane, message)
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ControlError {}
