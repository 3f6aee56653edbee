//! Switchyard's control plane: the config file (watched, validated whole,
//! applied or refused), runtime overrides of traffic weights made through the
//! control API, experiments and rollouts, the rollback history, and the
//! persisted state that makes API changes survive a restart.
//!
//! Control never touches proxy internals. The binary implements
//! [`ServingPlane`]: `apply` builds and publishes a new routing snapshot from
//! an effective config; the control plane only commits a generation once that
//! succeeded, so an invalid config or a failed build never replaces a good one.
//!
//! Module map (dependencies point down; no module imports the crate root):
//!
//! - owner and its drivers: `api` (control API), `watch` (file reloads),
//!   `clock` (rollout/experiment ticks), `fleet::tasks` (fleet sync, judge
//!   lease, stats publishing) → `plane` ([`ControlPlane`]) → `fleet` (Redis);
//! - state machines and pure functions: `rollout`, `experiments`,
//!   `effective`, `settle`, `monitoring` (drift reports as the API shows them),
//!   `reference` (drift reference capture from live traffic, for the API);
//! - leaves: `state` (persisted shapes), `source`, `error`, `serving`,
//!   `config_file`, `persist` (the writer thread), `supervise`, `metrics`,
//!   `capture` (captures' status and profile files).

pub mod api;
pub mod capture;
pub mod clock;
pub mod config_file;
pub mod effective;
pub mod error;
pub mod experiments;
pub mod fleet;
pub mod metrics;
pub mod monitoring;
pub mod persist;
pub mod plane;
pub mod reference;
pub mod rollout;
pub mod serving;
pub mod settle;
pub mod source;
pub mod state;
pub mod supervise;
pub mod watch;
pub mod webhook;

#[cfg(test)]
mod testing;

pub use config_file::ConfigFile;
pub use error::{ControlError, ErrorKind};
pub use plane::{ControlPlane, Published, ReloadStatus};
pub use serving::ServingPlane;
pub use source::Source;
