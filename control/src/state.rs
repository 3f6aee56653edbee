//! The shapes the control plane persists beside the config so API changes
//! survive a restart — weight overrides, the rollback history, experiment
//! definitions and rollout progress — and reading and writing them (temp
//! file + rename). Who writes, and on which thread, is `persist`'s business.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::source::Source;

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

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutStatus {
    Progressing,
    Promoted,
    RolledBack,
    Aborted,
}

impl RolloutStatus {
    /// The value of `switchyard_rollout_status`.
    pub fn code(self) -> i64 {
        match self {
            RolloutStatus::Progressing => 0,
            RolloutStatus::Promoted => 1,
            RolloutStatus::RolledBack => 2,
            RolloutStatus::Aborted => 3,
        }
    }
}

/// A rollout's progress, kept across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PersistedRollout {
    pub step: usize,
    pub status: RolloutStatus,
    pub reason: Option<String>,
    /// The rollout config it belongs to; a changed config starts over.
    pub fingerprint: String,
}

/// What an A/B test is judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    ErrorRate,
    Latency,
    /// Prediction quality from feedback (`monitoring.quality`), judged over each arm's feedback window.
    Accuracy,
    Precision,
    Recall,
    F1Score,
}

/// An A/B test as created (its counts are live, never persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentDef {
    pub test_id: String,
    pub model: String,
    /// The first is the control every other variant is compared with.
    pub variants: Vec<String>,
    pub traffic_split: BTreeMap<String, f64>,
    pub success_metric: Metric,
    pub minimum_sample_size: u64,
    pub confidence_level: f64,
    pub test_duration_secs: u64,
    /// Unix seconds.
    pub started_at: u64,
}

impl ExperimentDef {
    /// Unix seconds at which the test ends.
    pub fn ends_at(&self) -> u64 {
        self.started_at + self.test_duration_secs
    }
}

/// Everything persisted, as one JSON document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub generation: u64,
    /// Fleet mode: the shared generation this state is (absent without a fleet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_generation: Option<u64>,
    #[serde(default)]
    pub overrides: BTreeMap<String, ModelOverride>,
    #[serde(default)]
    pub history: BTreeMap<String, Vec<HistoryEntry>>,
    #[serde(default)]
    pub experiments: Vec<ExperimentDef>,
    #[serde(default)]
    pub rollouts: BTreeMap<String, PersistedRollout>,
    /// Drift references captured from live traffic, by model (this replica's own, even in fleet mode).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub references: BTreeMap<String, CapturedReference>,
}

/// A drift reference profile captured from live traffic: it replaces the
/// model's `monitoring.drift.reference` until it is reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedReference {
    /// The profile file (beside the state file, in `<state file>.references/`).
    pub path: PathBuf,
    /// Unix seconds.
    pub captured_at: u64,
    /// Sampled rows the profile was built from.
    pub rows: u64,
    /// The variants whose traffic it covers; `None`: every monitored variant.
    pub variants: Option<Vec<String>>,
    /// The window asked for, as the request said it (`500 samples`, `10m`).
    pub window: String,
}

/// Default place of the state file: beside the config.
pub fn default_state_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".state.json");
    config.with_file_name(name)
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

    /// Writes atomically: a temp file beside it, synced, renamed over it. Blocking.
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

    #[test]
    fn default_state_path_is_beside_the_config() {
        assert_eq!(
            default_state_path(Path::new("/etc/sy/switchyard.yaml")),
            Path::new("/etc/sy/switchyard.yaml.state.json")
        );
    }

    #[test]
    fn a_state_file_of_the_previous_layout_still_loads() {
        // Field names and enum spellings are a file format: they must not drift.
        let text = r#"{"generation": 3,
            "overrides": {"m": {"weights": {"v2": 30.0}, "source": {"kind": "rollback", "to_generation": 2}}},
            "history": {"m": [{"generation": 2, "at": 1, "weights": {"v2": 30.0}, "reason": "x"}]},
            "experiments": [{"test_id": "t", "model": "m", "variants": ["a", "b"], "traffic_split": {"a": 50.0, "b": 50.0},
                "success_metric": "error_rate", "minimum_sample_size": 10, "confidence_level": 0.95,
                "test_duration_secs": 60, "started_at": 100}],
            "rollouts": {"m": {"step": 1, "status": "rolled_back", "reason": "slow", "fingerprint": "f"}}}"#;
        let s: PersistedState = serde_json::from_str(text).unwrap();
        assert_eq!(s.overrides["m"].source, Source::Rollback { to_generation: 2 });
        assert_eq!(s.experiments[0].success_metric, Metric::ErrorRate);
        assert_eq!(s.experiments[0].ends_at(), 160);
        assert_eq!(s.rollouts["m"].status, RolloutStatus::RolledBack);
    }
}
