//! Switchyard's configuration contract: the YAML schema, its defaults and the
//! one validation step that turns a file into a [`ValidatedConfig`].
//!
//! Pure by design: no tokio, no sockets. Every error names the field path, the
//! offending value and `line:column` in the file, and all errors of a file are
//! reported at once.

pub mod cpus;
mod graph;
pub mod pem;
mod protocol;
mod raw;
mod rules;
mod sources;
mod validate;
mod validated;

pub use graph::*;
pub use protocol::Protocol;
pub use rules::*;
pub use sources::*;
pub use validate::{check_permission, parse_duration, parse_sha256};
pub use validated::*;
