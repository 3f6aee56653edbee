//! Drift reference captures as the control plane keeps them: each model's
//! last capture and where it stands (`reference` serves the API), and where a
//! captured profile is kept. A leaf: the plane holds these, the API fills them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Where a model's last capture stands (not persisted: a capture running at a restart is lost).
#[derive(Clone)]
pub struct CaptureStatus {
    state: &'static str,
    started_at: u64,
    window: String,
    variants: Option<Vec<String>>,
    rows: Arc<AtomicU64>,
    finished_at: Option<u64>,
    error: Option<String>,
    generation: Option<u64>,
}

impl CaptureStatus {
    pub fn started(window: String, variants: Option<Vec<String>>, rows: Arc<AtomicU64>) -> CaptureStatus {
        CaptureStatus {
            state: "capturing",
            started_at: now_secs(),
            window,
            variants,
            rows,
            finished_at: None,
            error: None,
            generation: None,
        }
    }

    pub fn running(&self) -> bool {
        self.state == "capturing"
    }

    /// The capture ended: in a new generation serving its profile, or with why not.
    pub fn finish(&mut self, outcome: Result<u64, String>) {
        self.finished_at = Some(now_secs());
        match outcome {
            Ok(g) => {
                self.state = "done";
                self.generation = Some(g);
            }
            Err(e) => {
                self.state = "failed";
                self.error = Some(e);
            }
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "state": self.state,
            "started_at": self.started_at,
            "window": self.window,
            "variants": self.variants,
            "rows": self.rows.load(Ordering::Relaxed),
            "finished_at": self.finished_at,
            "error": self.error,
            "generation": self.generation,
        })
    }
}

/// The captures by model.
#[derive(Default)]
pub struct Captures(Mutex<BTreeMap<String, CaptureStatus>>);

impl Captures {
    pub fn insert(&self, model: &str, status: CaptureStatus) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(model.to_string(), status);
    }

    pub fn get(&self, model: &str) -> Option<CaptureStatus> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(model).cloned()
    }

    pub fn update(&self, model: &str, f: impl FnOnce(&mut CaptureStatus)) {
        if let Some(s) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get_mut(model) {
            f(s);
        }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The file a model's captured profile is kept in: `<state file>.references/<model>.profile.json`
/// (bytes of the name other than letters, digits, `.`, `-` and `_` written `%XX`).
pub fn reference_path(state_file: &Path, model: &str) -> PathBuf {
    let mut dir = state_file.as_os_str().to_os_string();
    dir.push(".references");
    let mut name = String::new();
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_') || (b == b'.' && !name.is_empty()) {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    PathBuf::from(dir).join(format!("{name}.profile.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_files_sit_beside_the_state_file_with_safe_names() {
        let p = reference_path(Path::new("/var/lib/sy/state.json"), "mlp");
        assert_eq!(p, Path::new("/var/lib/sy/state.json.references/mlp.profile.json"));
        let p = reference_path(Path::new("s.json"), "../a/b c");
        assert_eq!(p.file_name().unwrap(), "%2E.%2Fa%2Fb%20c.profile.json");
    }
}
