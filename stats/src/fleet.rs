//! Fleet mode's state as `/ready` reports it: the control plane sets a JSON
//! object (fleet name, whether the shared state is reachable, the shared
//! generation served, whether this replica is the judge); the data plane's
//! readiness answer carries it. Process-wide, like `tasks`: one process is
//! one replica of one fleet.

use std::sync::Mutex;

static DETAIL: Mutex<Option<String>> = Mutex::new(None);

/// Sets the fleet's readiness detail (a JSON object), `None` without fleet mode.
pub fn set(detail: Option<String>) {
    *DETAIL.lock().unwrap_or_else(|e| e.into_inner()) = detail;
}

/// The detail last set.
pub fn detail() -> Option<String> {
    DETAIL.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
