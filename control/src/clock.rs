//! The control plane's clock: a few times per shortest rollout interval it
//! lets the rollouts observe the live stats and ends experiments whose time
//! is up. In fleet mode only the replica holding the judge lease ticks. Each tick runs in a task of its own: a panic in one is logged and
//! recorded, and the clock goes on (after a pause that grows while ticks
//! keep panicking).

use std::sync::Arc;
use std::time::Duration;

use crate::plane::ControlPlane;
use crate::rollout;
use crate::supervise::{self, TaskFailure, CLOCK_TASK};

/// Longest pause after consecutive panicking ticks.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Starts the clock on the current tokio runtime.
pub fn spawn(plane: Arc<ControlPlane>) {
    supervise::spawn(CLOCK_TASK, async move {
        let mut panics = 0u32;
        loop {
            let period = rollout::tick_period(&plane.published().effective);
            let backoff = Duration::from_secs(1).saturating_mul(panics).min(MAX_BACKOFF);
            tokio::time::sleep(period.max(backoff)).await;
            let p = plane.clone();
            if !plane.is_judge() {
                continue;
            }
            let tick = supervise::isolated(CLOCK_TASK, async move {
                p.tick_rollouts().await;
                p.end_due_experiments().await;
            });
            match tick.await {
                Ok(()) => panics = 0,
                Err(TaskFailure::Panicked(_)) => panics = panics.saturating_add(1),
                Err(TaskFailure::Cancelled) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::testing::{eventually, weight, ConfigDir, FakeServing};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_tick_is_recorded_and_the_clock_goes_on() {
        let body = "models:\n  m:\n    variants:\n      - {name: v1, backend: b, weight: 100}\n      - {name: v2, backend: b, weight: 0}\n    rollout: {baseline: v1, canary: v2, steps: [10, 100], interval: 200ms, min_requests: 1}\n";
        let dir = ConfigDir::new("clock", body);
        let fake = FakeServing::new();
        let plane = dir.start(fake.clone()).await;
        fake.panic_stats_next.store(true, Ordering::SeqCst);
        spawn(plane.clone());
        eventually(Duration::from_secs(20), "the tick panic is recorded", async || {
            switchyard_stats::tasks::panicked()
                .iter()
                .any(|p| p.task == CLOCK_TASK && p.message == "fake stats panicked")
        })
        .await;
        // The clock still runs: the rollout takes its first step.
        eventually(Duration::from_secs(20), "the rollout steps after the panic", async || {
            weight(&plane.published().effective, "m", "v2") == 10.0
        })
        .await;
    }
}
