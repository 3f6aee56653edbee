//! The model repository (`MODEL/VERSION/model.onnx`): scanning it, choosing
//! versions by policy, loading them, and publishing the loaded set as one
//! snapshot; plus the watcher that rescans on file events and on a timer.
//!
//! **Architecture Invariant:** a version is published only after it loaded and
//! warmed up; a version that fails to load never replaces a working one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use switchyard_config::{OnnxBackend as Config, VersionPolicy};

use super::model::{Fingerprint, LoadedVersion, SessionSettings};

/// File name of a version's model inside its directory.
pub const MODEL_FILE: &str = "model.onnx";

/// Quiet time after the last file event before rescanning, so a copy in progress is read whole.
pub const EVENT_SETTLE: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct ModelEntry {
    pub versions: BTreeMap<u64, Arc<LoadedVersion>>,
}

pub type Snapshot = HashMap<Arc<str>, ModelEntry>;

/// A version that failed to load, kept until its file changes.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadFailure {
    pub model: String,
    pub version: u64,
    pub error: String,
    pub fingerprint: Fingerprint,
}

pub struct Repository {
    pub backend: Arc<str>,
    pub cfg: Config,
    settings: SessionSettings,
    snapshot: ArcSwap<Snapshot>,
    failures: Mutex<BTreeMap<(String, u64), LoadFailure>>,
    /// Models unloaded through the repository API: not served until loaded again.
    unloaded: Mutex<BTreeSet<String>>,
    /// Serialises rescans (the startup load and the watcher's) and repository API calls.
    scanning: Mutex<()>,
}

/// What a scan of the directory found: model → version → fingerprint of its file.
type OnDisk = BTreeMap<String, BTreeMap<u64, Fingerprint>>;

impl Repository {
    pub fn new(backend: Arc<str>, cfg: Config, settings: SessionSettings) -> Repository {
        Repository {
            backend,
            cfg,
            settings,
            snapshot: ArcSwap::from_pointee(Snapshot::new()),
            failures: Mutex::new(BTreeMap::new()),
            unloaded: Mutex::new(BTreeSet::new()),
            scanning: Mutex::new(()),
        }
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    fn version_path(&self, model: &str, version: u64) -> PathBuf {
        self.cfg.repository.join(model).join(version.to_string()).join(MODEL_FILE)
    }

    /// Whether `model` was unloaded through the repository API (and not loaded since).
    pub fn is_unloaded(&self, model: &str) -> bool {
        self.unloaded.lock().unwrap_or_else(PoisonError::into_inner).contains(model)
    }

    /// Every model directory the backend may serve with its versions on disk, unloaded ones included.
    pub fn on_disk(&self) -> std::io::Result<BTreeMap<String, Vec<u64>>> {
        Ok(self.scan_disk_all()?.into_iter().map(|(m, v)| (m, v.into_keys().collect())).collect())
    }

    /// Loads `model` again (after an unload) or reloads what changed on disk: a
    /// rescan, so versions already serving keep serving until their successors
    /// are ready. Blocking. Errors when the model has no loadable version.
    pub fn load(&self, model: &str) -> Result<(), String> {
        if !self.scan_disk_all().map_err(|e| e.to_string())?.contains_key(model) {
            return Err(format!(
                "failed to load '{model}', failed to poll from model repository: no model directory '{model}' in {}{}",
                self.cfg.repository.display(),
                if self.cfg.models.is_empty() { "" } else { " that the backend's `models` list names" }
            ));
        }
        self.unloaded.lock().unwrap_or_else(PoisonError::into_inner).remove(model);
        self.rescan();
        if self.snapshot.load().contains_key(model) {
            return Ok(());
        }
        let why: Vec<String> = self
            .failures()
            .into_iter()
            .filter(|f| f.model == model)
            .map(|f| format!("version {}: {}", f.version, f.error))
            .collect();
        Err(format!(
            "failed to load '{model}': {}",
            if why.is_empty() { "no version matches the version policy".to_owned() } else { why.join("; ") }
        ))
    }

    /// Stops serving `model` until it is loaded again; returns the versions it
    /// served (requests still running hold them too). Blocking.
    pub fn unload(&self, model: &str) -> Result<Vec<Arc<LoadedVersion>>, String> {
        let _scan = self.scanning.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.snapshot.load_full();
        if !current.contains_key(model) && !self.scan_disk_all().map_err(|e| e.to_string())?.contains_key(model) {
            return Err(format!("failed to unload '{model}': no such model in {}", self.cfg.repository.display()));
        }
        self.unloaded.lock().unwrap_or_else(PoisonError::into_inner).insert(model.to_owned());
        let mut next = Snapshot::new();
        let mut removed = Vec::new();
        for (m, e) in current.iter() {
            if &**m == model {
                removed.extend(e.versions.values().cloned());
            } else {
                next.insert(m.clone(), ModelEntry { versions: e.versions.clone() });
            }
        }
        tracing::info!(backend = %self.backend, model, "unloaded through the repository API");
        self.snapshot.store(Arc::new(next));
        Ok(removed)
    }

    /// Model directories the backend may serve, unloaded ones excluded.
    fn scan_disk(&self) -> std::io::Result<OnDisk> {
        let mut all = self.scan_disk_all()?;
        let unloaded = self.unloaded.lock().unwrap_or_else(PoisonError::into_inner);
        all.retain(|m, _| !unloaded.contains(m));
        Ok(all)
    }

    /// Lists `MODEL/VERSION/model.onnx` (numeric versions only), filtered by the `models` list.
    fn scan_disk_all(&self) -> std::io::Result<OnDisk> {
        let mut out = OnDisk::new();
        for m in std::fs::read_dir(&self.cfg.repository)? {
            let m = m?;
            let Ok(model) = m.file_name().into_string() else {
                continue;
            };
            if model.starts_with('.') || !m.path().is_dir() {
                continue;
            }
            if !self.cfg.models.is_empty() && !self.cfg.models.contains(&model) {
                continue;
            }
            let mut versions = BTreeMap::new();
            let Ok(entries) = std::fs::read_dir(m.path()) else {
                continue;
            };
            for v in entries.flatten() {
                let name = v.file_name();
                let Some(version) = name.to_str().and_then(parse_version) else {
                    continue;
                };
                if let Ok(fp) = Fingerprint::of(&v.path().join(MODEL_FILE)) {
                    versions.insert(version, fp);
                }
            }
            out.insert(model, versions);
        }
        Ok(out)
    }

    /// Brings the published snapshot in line with the directory; blocking (loads models).
    pub fn rescan(&self) {
        let _scan = self.scanning.lock().unwrap_or_else(PoisonError::into_inner);
        let on_disk = match self.scan_disk() {
            Ok(d) => d,
            Err(e) => {
                // Keep serving what is loaded: a transiently unreadable directory must not unload everything.
                tracing::error!(backend = %self.backend, repository = %self.cfg.repository.display(), "cannot read the model repository: {e}");
                return;
            }
        };
        let current = self.snapshot.load_full();
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner).clone();
        failures.retain(|(m, v), _| on_disk.get(m).is_some_and(|vs| vs.contains_key(v)));

        let mut next = Snapshot::new();
        let mut changed = current.keys().any(|m| !on_disk.contains_key(&**m));
        for (model, disk) in &on_disk {
            let old = current.get(model.as_str());
            let versions = self.select_and_load(model, disk, old, &mut failures);
            let old_versions = old.map(|o| &o.versions);
            let same = old_versions.map_or(versions.is_empty(), |o| {
                o.len() == versions.len() && o.iter().zip(&versions).all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y))
            });
            changed |= !same;
            if !versions.is_empty() {
                next.insert(Arc::from(model.as_str()), ModelEntry { versions });
            }
        }
        if changed {
            for (model, e) in &next {
                let v: Vec<&str> = e.versions.values().map(|v| &*v.label).collect();
                tracing::info!(backend = %self.backend, model = %model, versions = ?v, "serving");
            }
            self.snapshot.store(Arc::new(next));
        }
        *self.failures.lock().unwrap_or_else(PoisonError::into_inner) = failures;
    }

    /// The versions of one model to serve: the policy applied to the versions
    /// on disk that are not known to fail, loading what is new or changed.
    fn select_and_load(
        &self,
        model: &str,
        disk: &BTreeMap<u64, Fingerprint>,
        old: Option<&ModelEntry>,
        failures: &mut BTreeMap<(String, u64), LoadFailure>,
    ) -> BTreeMap<u64, Arc<LoadedVersion>> {
        let old_version = |v: u64| old.and_then(|o| o.versions.get(&v)).cloned();
        let known_bad = |failures: &BTreeMap<(String, u64), LoadFailure>, v: u64, fp: &Fingerprint| {
            failures.get(&(model.to_owned(), v)).is_some_and(|f| &f.fingerprint == fp)
        };
        let model_arc: Arc<str> = Arc::from(model);
        // Each pass either succeeds or records one more failure, which the next pass skips: it terminates.
        'pass: loop {
            let candidates: Vec<u64> = disk
                .iter()
                .filter(|(v, fp)| !known_bad(failures, **v, fp) || old_version(**v).is_some())
                .map(|(v, _)| *v)
                .collect();
            let mut out = BTreeMap::new();
            for v in select(&self.cfg.version_policy, &candidates) {
                let fp = disk[&v];
                if let Some(lv) = old_version(v).filter(|lv| lv.fingerprint == fp) {
                    out.insert(v, lv);
                    continue;
                }
                if known_bad(failures, v, &fp) {
                    // A changed file that failed to load: the previous load keeps serving.
                    if let Some(lv) = old_version(v) {
                        out.insert(v, lv);
                    }
                    continue;
                }
                let path = self.version_path(model, v);
                match LoadedVersion::load(&model_arc, v, &path, fp, &self.settings) {
                    Ok(lv) => {
                        tracing::info!(backend = %self.backend, model, version = v, "loaded and warmed up");
                        failures.remove(&(model.to_owned(), v));
                        out.insert(v, Arc::new(lv));
                    }
                    Err(error) => {
                        tracing::error!(backend = %self.backend, model, version = v, path = %path.display(), "cannot load model version: {error}");
                        failures.insert(
                            (model.to_owned(), v),
                            LoadFailure { model: model.to_owned(), version: v, error, fingerprint: fp },
                        );
                        if let Some(lv) = old_version(v) {
                            out.insert(v, lv);
                        } else {
                            continue 'pass;
                        }
                    }
                }
            }
            return out;
        }
    }
}

/// A version directory's name as a version number: plain decimal digits only.
fn parse_version(name: &str) -> Option<u64> {
    let v: u64 = name.parse().ok()?;
    (v.to_string() == name).then_some(v)
}

/// The versions a policy serves out of `available` (ascending).
pub fn select(policy: &VersionPolicy, available: &[u64]) -> Vec<u64> {
    let mut a = available.to_vec();
    a.sort_unstable();
    a.dedup();
    match policy {
        VersionPolicy::All => a,
        VersionPolicy::Latest(n) => a.split_off(a.len().saturating_sub(n.get())),
        VersionPolicy::Specific(list) => a.into_iter().filter(|v| list.contains(v)).collect(),
    }
}

/// Rescans on file events (after they settle) and every `poll_interval`, until the repository is dropped.
/// Must be called within a tokio runtime that lives as long as the repository.
pub fn spawn_watcher(repo: &Arc<Repository>) {
    let wake = Arc::new(tokio::sync::Notify::new());
    let dir: PathBuf = repo.cfg.repository.clone();
    let poll = repo.cfg.poll_interval.max(Duration::from_millis(10));
    let watcher = watch(&dir, wake.clone());
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(backend = %repo.backend, repository = %dir.display(), "cannot watch the model repository ({e}); polling every {poll:?}");
            None
        }
    };
    let weak: Weak<Repository> = Arc::downgrade(repo);
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = wake.notified() => {
                    while tokio::time::timeout(EVENT_SETTLE, wake.notified()).await.is_ok() {}
                }
                _ = tick.tick() => {}
            }
            let Some(repo) = weak.upgrade() else { break };
            if let Err(e) = tokio::task::spawn_blocking(move || repo.rescan()).await {
                tracing::error!("model repository rescan failed: {e}");
            }
        }
    });
}

fn watch(dir: &Path, wake: Arc<tokio::sync::Notify>) -> notify::Result<notify::RecommendedWatcher> {
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
        // Reading a model while loading it must not trigger another scan.
        Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
        Ok(_) => wake.notify_one(),
        Err(e) => {
            tracing::warn!("model repository watch error: {e}");
            wake.notify_one();
        }
    })?;
    w.watch(dir, RecursiveMode::Recursive)?;
    Ok(w)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use super::*;

    #[test]
    fn version_policy_selects() {
        let avail = [3, 1, 10, 2];
        let latest = |n| VersionPolicy::Latest(NonZeroUsize::new(n).unwrap());
        assert_eq!(select(&latest(1), &avail), vec![10]);
        assert_eq!(select(&latest(2), &avail), vec![3, 10]);
        assert_eq!(select(&latest(9), &avail), vec![1, 2, 3, 10]);
        assert_eq!(select(&VersionPolicy::All, &avail), vec![1, 2, 3, 10]);
        assert_eq!(select(&VersionPolicy::Specific(vec![2, 7]), &avail), vec![2]);
        assert!(select(&latest(1), &[]).is_empty());
    }

    #[test]
    fn version_dirs_are_plain_numbers() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("42"), Some(42));
        assert_eq!(parse_version("01"), None);
        assert_eq!(parse_version("+1"), None);
        assert_eq!(parse_version("v1"), None);
        assert_eq!(parse_version(""), None);
    }
}
