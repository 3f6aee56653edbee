//! What triggers a reload: events in the config file's *directory* (editors
//! save by rename; Kubernetes swaps a `..data` symlink, and later rotations
//! must be seen too, so the file itself is never watched), debounced; SIGHUP;
//! and a slow content check in case an event was lost. A reload only applies
//! when the file's contents changed. Also runs the rollout and experiment clock.

use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::{rollout, ControlPlane};

/// Quiet time after the last event before the file is read.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Longest wait after the first event: a directory that never goes quiet
/// (a config rewritten every few milliseconds) still gets read.
const MAX_SETTLE: Duration = Duration::from_millis(250);
/// Content check that catches a missed event.
const SAFETY_NET: Duration = Duration::from_secs(5);

/// Starts the watchers and the control loop on the current tokio runtime.
pub fn spawn(plane: Arc<ControlPlane>) -> Result<(), String> {
    let dir = plane
        .config_path()
        .parent()
        .map(|p| if p.as_os_str().is_empty() { std::path::Path::new(".") } else { p })
        .unwrap_or(std::path::Path::new("."))
        .to_path_buf();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let name = plane.config_path().file_name().map(|n| n.to_os_string()).unwrap_or_default();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only the config file (saved in place or renamed into place) and
        // Kubernetes' `..data` symlink swaps matter; other files beside it do not.
        let relevant = |p: &std::path::PathBuf| {
            p.file_name().is_some_and(|f| f == name.as_os_str() || f.to_string_lossy().starts_with(".."))
        };
        if let Ok(ev) = res {
            if ev.paths.is_empty() || ev.paths.iter().any(relevant) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;

    let p = plane.clone();
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "SIGHUP reloads unavailable");
                None
            }
        };
        let mut safety = tokio::time::interval(SAFETY_NET);
        safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                ev = rx.recv() => {
                    if ev.is_none() {
                        return;
                    }
                    // Let a burst of events (write, rename, symlink swap) settle, but not forever.
                    let settle_by = tokio::time::Instant::now() + MAX_SETTLE;
                    loop {
                        let wait = DEBOUNCE.min(settle_by.saturating_duration_since(tokio::time::Instant::now()));
                        if wait.is_zero() {
                            break;
                        }
                        match tokio::time::timeout(wait, rx.recv()).await {
                            Ok(Some(())) => continue,
                            Ok(None) => return,
                            Err(_) => break,
                        }
                    }
                    "file"
                }
                Some(()) = recv_hup(&mut hup) => "SIGHUP",
                _ = safety.tick() => "content check",
            };
            // Errors are logged and published by reload_file; the last good config stays.
            let _ = p.reload_file(trigger).await;
        }
    });

    tokio::spawn(async move {
        loop {
            let period = rollout::tick_period(&plane.published().effective);
            tokio::time::sleep(period).await;
            plane.tick_rollouts().await;
            plane.end_due_experiments().await;
        }
    });
    Ok(())
}

async fn recv_hup(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
