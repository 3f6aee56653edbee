//! Endpoint affinity for Triton sequences: the one replica of a remote
//! backend a stateful sequence lives on. The data plane's sequence table
//! owns an `EndpointPin` per live sequence; a backend with several endpoints
//! places the sequence's first request by its usual picking and records the
//! endpoint in the pin, then sends every later request of the sequence there
//! and nowhere else. A pinned endpoint that left the set or is out of
//! rotation fails the request (`BackendError::Unavailable` naming the
//! sequence and the endpoint): the state lives on that replica, so moving
//! the sequence would answer from an empty state without saying so. A leaf.

use std::sync::{Arc, Mutex};

use crate::error::BackendError;

/// Where one sequence's requests go: unplaced until its first request is sent.
#[derive(Debug)]
pub struct EndpointPin {
    /// The sequence as errors name it: `sequence 42 of model 'm'`.
    label: Box<str>,
    /// The endpoint (`host:port`, a replica's identity across DNS changes
    /// and reloads) its first request was sent to.
    endpoint: Mutex<Option<Arc<str>>>,
}

impl EndpointPin {
    pub fn new(label: impl Into<Box<str>>) -> EndpointPin {
        EndpointPin { label: label.into(), endpoint: Mutex::new(None) }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The endpoint the sequence lives on, once placed.
    pub fn endpoint(&self) -> Option<Arc<str>> {
        self.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records where the sequence's first request went (a retry of that
    /// request on another endpoint moves it there: nothing reached the first).
    pub fn place(&self, authority: &str) {
        let mut e = self.endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if e.as_deref() != Some(authority) {
            *e = Some(Arc::from(authority));
        }
    }
}

/// How a request of a sequence may reach the backend's endpoints.
#[derive(Clone, Copy, Debug)]
pub struct Affinity<'a> {
    pub pin: &'a EndpointPin,
    /// The sequence's first request (`sequence_start`): it places the pin;
    /// any other request must find it placed.
    pub start: bool,
}

/// Why a pinned endpoint cannot take the sequence's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMiss {
    /// The sequence's first request reached no endpoint.
    Unplaced,
    /// The endpoint is no longer in the backend's set (DNS or config changed).
    Removed,
    /// The endpoint is ejected or failed its health checks.
    OutOfRotation,
}

impl PinMiss {
    /// The error a request of the sequence fails with.
    pub fn error(self, backend: &str, pin: &EndpointPin) -> BackendError {
        let endpoint = pin.endpoint();
        let ep = endpoint.as_deref().unwrap_or("-");
        let label = pin.label();
        BackendError::Unavailable(match self {
            PinMiss::Unplaced => format!(
                "{label} has no endpoint of backend `{backend}`: its first request reached none; \
                 start the sequence again (sequence_start)"
            ),
            PinMiss::Removed => format!(
                "{label} lives on endpoint {ep}, which backend `{backend}` no longer has \
                 (DNS or config changed); its state cannot move: start the sequence again"
            ),
            PinMiss::OutOfRotation => format!(
                "{label} lives on endpoint {ep} of backend `{backend}`, which is ejected or failing \
                 its health checks; its state cannot move: start the sequence again"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_placed_once_and_errors_name_sequence_and_endpoint() {
        let pin = EndpointPin::new("sequence 7 of model 'acc'");
        assert_eq!(pin.endpoint(), None);
        let unplaced = PinMiss::Unplaced.error("b", &pin).to_string();
        assert!(unplaced.contains("sequence 7 of model 'acc'"), "{unplaced}");
        pin.place("10.0.0.1:8000");
        assert_eq!(pin.endpoint().as_deref(), Some("10.0.0.1:8000"));
        let e = PinMiss::Removed.error("b", &pin).to_string();
        assert!(e.contains("10.0.0.1:8000") && e.contains("sequence 7"), "{e}");
        let e = PinMiss::OutOfRotation.error("b", &pin).to_string();
        assert!(e.contains("ejected") && e.contains("10.0.0.1:8000"), "{e}");
    }
}
