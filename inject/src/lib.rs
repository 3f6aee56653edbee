//! Switchyard sidecar injection: `switchyard inject` rewrites Kubernetes
//! manifests, `switchyard injector` is the mutating admission webhook; both
//! add the sidecar through one function, [`pod::inject`].
//!
//! - [`annotations`] — the `switchyard.io/*` annotations, their defaults, and the checked [`annotations::Plan`].
//! - [`pod`] — the sidecar container, its volumes, the clash checks: the one injection code path.
//! - [`manifest`] — multi-document YAML, workload kinds, Service retargeting (the CLI's side).
//! - [`webhook`] — AdmissionReview in, AdmissionReview with a JSONPatch out (the webhook's side).
//! - [`server`] — the webhook's HTTPS server, with certificates reloaded when they change on disk.
//! - [`cli`] — the two subcommands' arguments and entry points.

pub mod annotations;
pub mod cli;
pub mod manifest;
pub mod pod;
pub mod server;
pub mod webhook;

pub use annotations::Defaults;
pub use cli::{InjectArgs, InjectorArgs};
