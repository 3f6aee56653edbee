//! What running an inference produced: the response, and what the lifecycle
//! learnt on the way (batch size, cache status, time spent in the backend
//! call itself). A leaf shared by the cache (which stores and replays it),
//! the batch queue and the pipeline.

use std::time::Duration;

use switchyard_runtime::InferResponse;

use crate::cache::{CacheStatus, Stored};
use crate::error::Error;

#[derive(Clone, Debug)]
pub struct Executed {
    pub response: InferResponse,
    /// Rows of the batch the request ran in, when it went through a batch queue.
    pub batch_rows: Option<usize>,
    /// Where the answer came from, when the variant is cached (`x-switchyard-cache`).
    pub cache: Option<CacheStatus>,
    /// Time inside the backend call this request rode on (zero when no call
    /// was made for it: a cache hit, or a coalesced follower of another call).
    pub backend_time: Duration,
}

impl Executed {
    /// A fresh answer from a backend call of `backend_time`.
    pub fn from_backend(response: InferResponse, backend_time: Duration) -> Executed {
        Executed { response, batch_rows: None, cache: None, backend_time }
    }
}

/// The result of running one request, as the cache coalesces and replays it.
pub type Outcome = Result<Executed, Error>;

impl Stored for Outcome {
    fn response(&self) -> Option<&InferResponse> {
        self.as_ref().ok().map(|e| &e.response)
    }

    fn hit(response: InferResponse, status: CacheStatus) -> Outcome {
        Ok(Executed { response, batch_rows: None, cache: Some(status), backend_time: Duration::ZERO })
    }

    fn with_status(self, status: CacheStatus) -> Outcome {
        self.map(|e| Executed { cache: Some(status), ..e })
    }

    fn replayed(&self) -> Outcome {
        // A follower made no backend call of its own: it waited on the leader's.
        self.clone().map(|e| Executed { backend_time: Duration::ZERO, ..e })
    }
}
