//! Names of the headers (HTTP) and metadata keys (gRPC) Switchyard itself
//! reads and writes, shared by every listener. A leaf.

/// Which variant answered.
pub const VARIANT_HEADER: &str = "x-switchyard-variant";
/// Microseconds spent in Switchyard, the backend call excluded.
pub const OVERHEAD_HEADER: &str = "x-switchyard-overhead-us";
/// Rows of the batch the request ran in.
pub const BATCH_SIZE_HEADER: &str = "x-switchyard-batch-size";
/// Where an answer came from: `hit-l1`, `hit-l2`, `miss`, `bypass`.
pub const CACHE_HEADER: &str = "x-switchyard-cache";
/// The prefix of every header Switchyard owns; never forwarded to a backend.
pub const OWN_PREFIX: &str = "x-switchyard-";
