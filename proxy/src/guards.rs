//! What guards the data plane (authentication, rate limits, body hashing):
//! one bundle both listeners take. A leaf, so the listeners never reach back
//! into the crate root for it.

use std::sync::Arc;

use crate::{auth, ratelimit};

/// What guards the data plane, shared by the HTTP and gRPC listeners.
#[derive(Clone, Default)]
pub struct Guards {
    /// Required credentials on every path but the probes; `None`: open.
    pub auth: Option<Arc<auth::Auth>>,
    pub limiter: Option<Arc<ratelimit::RateLimiter>>,
    /// `access_log.body_hash`.
    pub body_hash: bool,
}
