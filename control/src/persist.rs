//! Writes the persisted state off the async runtimes: one dedicated thread
//! does every file write (serialize, temp file, fsync, rename), so a slow
//! disk never stalls the tokio workers that also drive the batch schedulers.
//!
//! Ordering: every state carries a sequence number, taken by the owner under
//! its lock. The thread writes in arrival order, coalesces a backlog to its
//! newest state, and never writes a state older than one it already wrote —
//! a later state is never overwritten by an earlier one.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::state::PersistedState;

/// Task name under which a panic of the writer is recorded.
pub const WRITER_TASK: &str = "control-state-writer";

struct Job {
    seq: u64,
    state: PersistedState,
    done: oneshot::Sender<()>,
}

/// Resolves once a state at least as new as the submitted one is on disk (or its write failed, logged).
pub struct Written(oneshot::Receiver<()>);

impl Written {
    pub async fn wait(self) {
        let _ = self.0.await;
    }

    /// For callers outside a runtime (tests, shutdown).
    pub fn wait_blocking(self) {
        let _ = self.0.blocking_recv();
    }
}

/// The handle of the writer thread; dropping it lets the thread finish its backlog and end.
pub struct StateWriter {
    path: PathBuf,
    tx: mpsc::Sender<Job>,
}

impl StateWriter {
    pub fn spawn(path: PathBuf) -> Result<StateWriter, String> {
        let (tx, rx) = mpsc::channel::<Job>();
        let p = path.clone();
        std::thread::Builder::new()
            .name("switchyard-state".into())
            .spawn(move || run(&p, rx))
            .map_err(|e| format!("cannot start the state writer thread: {e}"))?;
        Ok(StateWriter { path, tx })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `state` (sequence `seq`) for writing; never blocks.
    pub fn submit(&self, seq: u64, state: PersistedState) -> Written {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Job { seq, state, done }).is_err() {
            tracing::error!(path = %self.path.display(), "the state writer is gone; control state not persisted");
        }
        Written(rx)
    }
}

fn run(path: &Path, rx: mpsc::Receiver<Job>) {
    let mut written = 0u64;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let newest = batch.iter().map(|j| j.seq).max().unwrap_or(0);
        if newest > written {
            let job = batch.iter().find(|j| j.seq == newest).expect("the newest is in the batch");
            let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.state.save(path)));
            match saved {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(path = %path.display(), error = %e, "cannot persist control state"),
                Err(payload) => {
                    let message = switchyard_stats::tasks::panic_message(payload.as_ref());
                    tracing::error!(task = WRITER_TASK, panic = %message, "background task panicked");
                    switchyard_stats::tasks::record_panic(WRITER_TASK, message);
                }
            }
            written = newest;
        }
        for job in batch {
            let _ = job.done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::PersistedState;

    fn temp_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("switchyard-persist-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("c.yaml.state.json")
    }

    fn state(generation: u64) -> PersistedState {
        PersistedState { generation, ..Default::default() }
    }

    #[test]
    fn a_burst_of_states_ends_on_the_newest() {
        let path = temp_path("burst");
        let w = StateWriter::spawn(path.clone()).unwrap();
        let tickets: Vec<Written> = (1..=200).map(|g| w.submit(g, state(g))).collect();
        for t in tickets {
            t.wait_blocking();
        }
        assert_eq!(PersistedState::load(&path).unwrap().generation, 200);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn an_older_state_never_overwrites_a_newer_one() {
        let path = temp_path("order");
        let w = StateWriter::spawn(path.clone()).unwrap();
        w.submit(5, state(5)).wait_blocking();
        // Submitted later, but older: it is acknowledged and not written.
        w.submit(3, state(3)).wait_blocking();
        assert_eq!(PersistedState::load(&path).unwrap().generation, 5);
        w.submit(6, state(6)).wait_blocking();
        assert_eq!(PersistedState::load(&path).unwrap().generation, 6);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_failed_write_is_acknowledged_and_later_ones_still_happen() {
        let path = temp_path("fail");
        let dir = path.parent().unwrap().to_path_buf();
        let bad = dir.join("missing-dir").join("s.json");
        let w = StateWriter::spawn(bad).unwrap();
        w.submit(1, state(1)).wait_blocking();
        drop(w);
        let w = StateWriter::spawn(path.clone()).unwrap();
        w.submit(2, state(2)).wait_blocking();
        assert_eq!(PersistedState::load(&path).unwrap().generation, 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn submitting_never_blocks_the_runtime_and_the_ticket_resolves() {
        let path = temp_path("async");
        let w = StateWriter::spawn(path.clone()).unwrap();
        let t = w.submit(1, state(1));
        t.wait().await;
        assert_eq!(PersistedState::load(&path).unwrap().generation, 1);
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
