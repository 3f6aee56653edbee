//! Background tasks that must not die silently. Every task the control
//! plane spawns goes through here: a panic is logged at error level and
//! recorded in `switchyard_stats::tasks` (which `/ready` and the metrics
//! read). Work that must survive a panic in one run — a reload, a clock
//! tick — runs [`isolated`], in a task of its own, so its loop goes on.

use std::future::Future;

use tokio::task::JoinError;

/// The config watcher and reload loop.
pub const RELOAD_TASK: &str = "config-reload";
/// The rollout and experiment clock.
pub const CLOCK_TASK: &str = "control-clock";
/// Fleet mode: sync with the shared state, the judge lease, stats publishing.
pub const FLEET_TASK: &str = "control-fleet";
/// The control API listener and its connections.
pub const API_TASK: &str = "control-api";

/// How a supervised run ended, when it did not return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskFailure {
    /// It panicked with this message (logged and recorded).
    Panicked(String),
    /// The runtime cancelled it (shutting down).
    Cancelled,
}

/// Logs and records a failed task; the panic message, if it panicked.
fn report(task: &'static str, e: JoinError) -> TaskFailure {
    if e.is_panic() {
        let message = switchyard_stats::tasks::panic_message(e.into_panic().as_ref());
        tracing::error!(task, panic = %message, "background task panicked");
        switchyard_stats::tasks::record_panic(task, message.clone());
        TaskFailure::Panicked(message)
    } else {
        tracing::debug!(task, "background task cancelled");
        TaskFailure::Cancelled
    }
}

/// Spawns `fut` on the current runtime; if it panics, that is logged and recorded.
pub fn spawn<F>(task: &'static str, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let handle = tokio::spawn(fut);
    tokio::spawn(async move {
        if let Err(e) = handle.await {
            report(task, e);
        }
    });
}

/// Runs `fut` in a task of its own and waits for it; a panic is logged,
/// recorded and returned instead of unwinding into the caller.
pub async fn isolated<T, F>(task: &'static str, fut: F) -> Result<T, TaskFailure>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    tokio::spawn(fut).await.map_err(|e| report(task, e))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn an_isolated_panic_is_recorded_and_returned() {
        let r = isolated("test-isolated", async { panic!("boom {}", 1) }).await;
        assert_eq!(r, Err::<(), _>(TaskFailure::Panicked("boom 1".into())));
        assert!(switchyard_stats::tasks::panicked().iter().any(|p| p.task == "test-isolated" && p.message == "boom 1"));
        assert_eq!(isolated("test-isolated", async { 7 }).await, Ok(7));
    }

    #[tokio::test]
    async fn a_spawned_task_that_panics_is_recorded() {
        spawn("test-spawned", async { panic!("spawned boom") });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !switchyard_stats::tasks::panicked().iter().any(|p| p.task == "test-spawned") {
            assert!(Instant::now() < deadline, "the panic was never recorded");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
