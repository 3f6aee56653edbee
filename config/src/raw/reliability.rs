//! The raw shape of the `admission` (concurrency limits and load shedding)
//! and `lifecycle` (drain and upgrade) sections.

use std::collections::BTreeMap;

use serde::Deserialize;

// Its own alias, as `backend.rs` has: `raw` re-exports this module and must not be imported back.
type S<T> = serde_saphyr::Spanned<T>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawAdmission {
    /// `Retry-After` of a refused request.
    pub retry_after: Option<S<String>>,
    /// Priority of a request that names none (Triton's `priority`; 1 is the highest).
    pub default_priority: Option<S<u64>>,
    #[serde(default)]
    pub models: BTreeMap<String, S<RawConcurrency>>,
    #[serde(default)]
    pub backends: BTreeMap<String, S<RawConcurrency>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConcurrency {
    /// The concurrency limit; with `adaptive`, where the limit starts.
    pub limit: S<u64>,
    pub adaptive: Option<bool>,
    pub min_limit: Option<S<u64>>,
    pub max_limit: Option<S<u64>>,
    /// Requests that may wait for a slot beyond the limit.
    pub queue: Option<S<u64>>,
    /// Longest wait for a slot.
    pub queue_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    /// How long in-flight requests get to finish after SIGTERM (or an upgrade).
    pub drain_timeout: Option<S<String>>,
    /// Unix socket over which listeners are handed to a new process (`serve --upgrade`).
    pub upgrade_socket: Option<String>,
}
