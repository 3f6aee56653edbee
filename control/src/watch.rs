//! What triggers a file reload: events in the config file's *directory*
//! (editors save by rename; Kubernetes swaps a `..data` symlink, and later
//! rotations must be seen too, so the file itself is never watched); SIGHUP;
//! and a slow content check in case an event was lost. Every trigger reads
//! the file until its contents stop changing (`settle`) and applies only
//! settled contents that differ from the live file's.
//!
//! Each apply runs in a task of its own: a panic in one (a bug in building
//! a generation) is logged, recorded in `switchyard_stats::tasks` and shown
//! as a refused reload, and the loop goes on watching.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config_file::base_dir;
use crate::plane::ControlPlane;
use crate::settle::{self, Contents, Settled};
use crate::supervise::{self, TaskFailure, RELOAD_TASK};

/// Content check that catches a missed event.
const SAFETY_NET: Duration = Duration::from_secs(5);

/// Starts watching the config file's directory and the reload loop on the current tokio runtime.
pub fn spawn(plane: Arc<ControlPlane>) -> Result<(), String> {
    let dir = base_dir(plane.config_path()).to_path_buf();
    let (tx, rx) = mpsc::unbounded_channel::<()>();
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
    supervise::spawn(RELOAD_TASK, async move {
        // The watcher lives as long as the loop.
        let _watcher = watcher;
        reload_loop(plane, rx).await;
    });
    Ok(())
}

async fn reload_loop(plane: Arc<ControlPlane>, mut events: mpsc::UnboundedReceiver<()>) {
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "SIGHUP reloads unavailable");
            None
        }
    };
    let mut safety = tokio::time::interval(SAFETY_NET);
    safety.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let path = plane.config_path().to_path_buf();
    loop {
        let trigger = tokio::select! {
            ev = events.recv() => {
                if ev.is_none() {
                    return;
                }
                "file"
            }
            Some(()) = recv_hup(&mut hup) => "SIGHUP",
            _ = safety.tick() => "content check",
        };
        let contents = match settle_file(&path, &mut events, &plane).await {
            Some(c) => c,
            None => return,
        };
        // Truncated and not yet written (a writer stalled longer than the
        // settle window): its write will trigger again. Only an explicit
        // SIGHUP is told that an empty file is refused.
        if trigger != "SIGHUP" && matches!(&contents, Ok(text) if text.trim().is_empty()) {
            tracing::debug!(trigger, "config file is empty; waiting for it to be written");
            continue;
        }
        apply(&plane, trigger, contents).await;
    }
}

/// The file's contents once they stopped changing; `None` when the watcher is gone.
async fn settle_file(path: &Path, events: &mut mpsc::UnboundedReceiver<()>, plane: &ControlPlane) -> Option<Contents> {
    loop {
        match settle::settle(|| settle::read(path), Some(&mut *events), plane.settle_timing(), None).await {
            Settled::Stable(c) => return Some(c),
            Settled::Closed => return None,
            // Without a give-up time settling never stops early; should it, settle again.
            Settled::StillChanging(_) => continue,
        }
    }
}

/// One reload, in a task of its own.
async fn apply(plane: &Arc<ControlPlane>, trigger: &'static str, contents: Contents) {
    let p = plane.clone();
    match supervise::isolated(RELOAD_TASK, async move { p.reload_contents(trigger, contents).await }).await {
        // A refused config is logged and published by `reload_contents`; the last good one stays.
        Ok(_) => {}
        Err(TaskFailure::Panicked(message)) => plane.reload_panicked(trigger, &message),
        Err(TaskFailure::Cancelled) => {}
    }
}

async fn recv_hup(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::testing::{config_text, eventually, two_models, weight, ConfigDir, FakeServing};

    const PATIENCE: Duration = Duration::from_secs(20);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_apply_is_recorded_and_the_next_reload_still_applies() {
        let dir = ConfigDir::new("panic", &two_models(90.0, 10.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        spawn(plane.clone()).unwrap();

        fake.panic_next.store(true, Ordering::SeqCst);
        dir.write(&two_models(80.0, 20.0));
        eventually(PATIENCE, "the reload panic is recorded", async || {
            switchyard_stats::tasks::panicked()
                .iter()
                .any(|p| p.task == RELOAD_TASK && p.message.starts_with("fake apply panicked"))
        })
        .await;
        eventually(PATIENCE, "the refused reload is reported", async || !plane.published().last_reload.successful)
            .await;
        let p = plane.published();
        assert_eq!(p.generation, 1, "the panicked generation never went live");
        assert!(p.last_reload.errors[0].contains("panicked"), "{:?}", p.last_reload);

        dir.write(&two_models(70.0, 30.0));
        eventually(PATIENCE, "the next write applies", async || {
            weight(&plane.published().effective, "m", "v1") == 70.0
        })
        .await;
        let p = plane.published();
        assert_eq!((p.generation, p.last_reload.successful), (2, true));
        assert_eq!(weight(&fake.last_applied(), "m", "v2"), 30.0);
    }

    /// A writer that truncates the file and stalls past the settle window
    /// before writing: the empty file is neither applied nor refused, and
    /// the contents that follow apply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_truncation_is_neither_applied_nor_refused() {
        let dir = ConfigDir::new("stall", &two_models(90.0, 10.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        spawn(plane.clone()).unwrap();
        let f = std::fs::File::create(&dir.config).unwrap();
        // Several settle windows of an empty file (the quiet window is 50 ms).
        tokio::time::sleep(Duration::from_millis(400)).await;
        let p = plane.published();
        assert!(p.last_reload.successful && p.last_reload.errors.is_empty(), "refused: {:?}", p.last_reload);
        drop(f);
        dir.write(&two_models(60.0, 40.0));
        eventually(PATIENCE, "the written file applies", async || {
            weight(&plane.published().effective, "m", "v1") == 60.0
        })
        .await;
        let p = plane.published();
        assert!(p.last_reload.successful, "{:?}", p.last_reload);
        assert_eq!(p.generation, 2, "exactly one new generation, for the written file");
        assert!(fake.applied.lock().unwrap().iter().all(|(_, c)| !c.models.is_empty()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_trickled_in_place_is_applied_only_once_complete() {
        let dir = ConfigDir::new("trickle", &two_models(90.0, 10.0));
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        spawn(plane.clone()).unwrap();

        // Model `n` comes last, after a long comment: every prefix in between is a valid config without `n`.
        let body = format!(
            "models:\n  m:\n    variants:\n      - {{name: v1, backend: b, weight: 60}}\n      - {{name: v2, backend: b, weight: 40}}\n{}  n:\n    variants:\n      - {{name: a, backend: b, weight: 1}}\n",
            "  # padding padding padding padding padding padding\n".repeat(12)
        );
        let text = config_text(&body);
        let path = dir.config.clone();
        let writer = std::thread::spawn(move || {
            let mut f = std::fs::File::create(&path).unwrap();
            for chunk in text.as_bytes().chunks(8) {
                f.write_all(chunk).unwrap();
                // A slow writer: pauses well inside the settle window.
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        while !writer.is_finished() {
            assert!(
                fake.applied.lock().unwrap().iter().all(|(_, c)| c.models.contains_key("n")),
                "a prefix of the file without model `n` was applied"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        writer.join().unwrap();
        eventually(PATIENCE, "the whole file applies", async || {
            weight(&plane.published().effective, "m", "v1") == 60.0
        })
        .await;
        let applied = fake.applied.lock().unwrap();
        assert!(applied.iter().all(|(_, c)| c.models.contains_key("n")), "a prefix was applied");
        assert_eq!(applied.len(), 2, "startup and the complete file, nothing in between");
        assert!(plane.published().last_reload.successful);
    }
}
