//! Who set a variant's weight, when it was not the config file.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Who set a weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A traffic shift through the control API.
    Api,
    /// A rollback through the control API (or an automated one).
    Rollback { to_generation: u64 },
    /// An A/B test's split.
    Experiment { test_id: String },
    /// Automated canary analysis.
    Rollout,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Api => f.write_str("api"),
            Source::Rollback { to_generation } => write!(f, "rollback to generation {to_generation}"),
            Source::Experiment { test_id } => write!(f, "experiment {test_id}"),
            Source::Rollout => f.write_str("rollout"),
        }
    }
}

impl Source {
    /// The short name the status endpoint reports.
    pub fn label(&self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Rollback { .. } => "rollback",
            Source::Experiment { .. } => "experiment",
            Source::Rollout => "rollout",
        }
    }
}
