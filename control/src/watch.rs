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
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = tx.send(());
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
                    // Let a burst of events (write, rename, symlink swap) settle.
                    loop {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
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
