//! The execution pool: a fixed set of std threads that run ONNX sessions, fed
//! by one bounded MPMC queue, so no session ever runs on a tokio worker.

use std::panic::AssertUnwindSafe;

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use crate::error::BackendError;

/// Queued jobs allowed per pool thread before new work is refused (fail fast, never block).
pub const QUEUE_DEPTH_PER_THREAD: usize = 256;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Threads exit when the last `Pool` handle (and so the queue's sender) is dropped.
pub struct Pool {
    tx: Sender<Job>,
    capacity: usize,
}

impl Pool {
    pub fn new(threads: usize) -> Result<Pool, String> {
        let capacity = threads.max(1) * QUEUE_DEPTH_PER_THREAD;
        let (tx, rx) = crossbeam_channel::bounded::<Job>(capacity);
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("switchyard-onnx-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        // A panicking job drops its result sender: its caller sees an error, the thread lives on.
                        if std::panic::catch_unwind(AssertUnwindSafe(job)).is_err() {
                            tracing::error!("an ONNX job panicked");
                        }
                    }
                })
                .map_err(|e| format!("cannot start ONNX pool thread: {e}"))?;
        }
        Ok(Pool { tx, capacity })
    }

    /// Queues `f` and returns where its result arrives. Refuses at once when the
    /// queue is full. `f` is skipped when the caller gave up before it started.
    pub fn submit<F, R>(&self, f: F) -> Result<oneshot::Receiver<R>, BackendError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                return;
            }
            let _ = tx.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                Err(BackendError::Unavailable(format!("ONNX execution queue is full ({} jobs waiting)", self.capacity)))
            }
            Err(TrySendError::Disconnected(_)) => Err(BackendError::Unavailable("ONNX execution pool stopped".into())),
        }
    }

    /// Runs `f` on the pool and waits for it without blocking the reactor.
    pub async fn run<F, R>(&self, f: F) -> Result<R, BackendError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.submit(f)?
            .await
            .map_err(|_| BackendError::Internal("the ONNX job ended without a result (it panicked)".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_panics() {
        let pool = Pool::new(2).unwrap();
        assert_eq!(pool.run(|| 40 + 2).await.unwrap(), 42);
        let err = pool.run(|| -> u32 { panic!("boom") }).await.unwrap_err();
        assert!(matches!(err, BackendError::Internal(_)), "{err:?}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn full_queue_fails_fast() {
        let pool = Pool::new(1).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let blocker = pool.submit(move || release_rx.recv().ok()).unwrap();
        // Wait until the worker has taken the blocker off the queue, so the queue holds exactly what we add.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !pool.tx.is_empty() {
            assert!(std::time::Instant::now() < deadline, "worker never started");
            tokio::task::yield_now().await;
        }
        let mut queued = Vec::new();
        for _ in 0..QUEUE_DEPTH_PER_THREAD {
            queued.push(pool.submit(|| ()).unwrap());
        }
        let err = pool.submit(|| ()).unwrap_err();
        assert!(matches!(err, BackendError::Unavailable(_)), "{err:?}");
        release_tx.send(()).unwrap();
        assert_eq!(blocker.await.unwrap(), Some(()));
        for q in queued {
            q.await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_job_from_many_submitters_runs() {
        // Bursts and gaps from several tasks: a lost wake-up would leave a job unanswered.
        let pool = Arc::new(Pool::new(2).unwrap());
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut sum = 0;
                for i in 0..500u64 {
                    sum += pool.run(move || t * 1000 + i).await.unwrap();
                    if i % 50 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                sum
            }));
        }
        for (t, task) in tasks.into_iter().enumerate() {
            let t = t as u64;
            assert_eq!(task.await.unwrap(), (0..500).map(|i| t * 1000 + i).sum::<u64>());
        }
    }

    #[tokio::test]
    async fn jobs_queued_when_the_pool_drops_still_run() {
        let pool = Pool::new(1).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let blocker = pool.submit(move || release_rx.recv().ok()).unwrap();
        let queued = pool.submit(|| 5).unwrap();
        drop(pool);
        release_tx.send(()).unwrap();
        assert_eq!(blocker.await.unwrap(), Some(()));
        assert_eq!(queued.await.unwrap(), 5);
    }
}
