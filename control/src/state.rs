//! What the control plane persists beside the config so API changes survive a
//! restart: weight overrides, the rollback history, experiments and rollout
//! progress. Written atomically (temp file + rename).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::experiments::ExperimentDef;
use crate::rollout::PersistedRollout;

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

/// Weights set at run time for some variants of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelOverride {
    pub weights: BTreeMap<String, f64>,
    pub source: Source,
}

/// A model's routing state as it was live at one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub generation: u64,
    /// Unix seconds.
    pub at: u64,
    pub weights: BTreeMap<String, f64>,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PersistedState {
    pub generation: u64,
    #[serde(default)]
    pub overrides: BTreeMap<String, ModelOverride>,
    #[serde(default)]
    pub history: BTreeMap<String, Vec<HistoryEntry>>,
    #[serde(default)]
    pub experiments: Vec<ExperimentDef>,
    #[serde(default)]
    pub rollouts: BTreeMap<String, PersistedRollout>,
}

impl PersistedState {
    /// A missing file is an empty state; an unreadable one is an error (never silently dropped).
    pub fn load(path: &Path) -> Result<PersistedState, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!("{}: corrupt control state ({e}); move it away to start from the file alone", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PersistedState::default()),
            Err(e) => Err(format!("{}: cannot read control state: {e}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_atomically() {
        let dir = std::env::temp_dir().join(format!("switchyard-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml.state.json");
        assert_eq!(PersistedState::load(&path).unwrap().generation, 0);
        let mut s = PersistedState { generation: 7, ..Default::default() };
        s.overrides
            .insert("mlp".into(), ModelOverride { weights: [("v2".to_string(), 10.0)].into(), source: Source::Api });
        s.save(&path).unwrap();
        let back = PersistedState::load(&path).unwrap();
        assert_eq!(back.generation, 7);
        assert_eq!(back.overrides["mlp"].weights["v2"], 10.0);
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, b"{nope").unwrap();
        assert!(PersistedState::load(&path).unwrap_err().contains("corrupt control state"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
