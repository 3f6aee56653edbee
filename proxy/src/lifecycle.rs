//! The listeners' lifecycle: drain on SIGTERM, the listener hand-over of
//! `serve --upgrade`, and the deadlines every HTTP connection runs under.
//!
//! Pingora owns the signals. On SIGTERM it stops accepting; on SIGQUIT it
//! first sends its listening sockets (the gRPC one included: `GrpcService`
//! registers it in pingora's table) to the new process over
//! `lifecycle.upgrade_socket`, keeps accepting beside it for 5 s, then stops.
//! From either signal on, `draining` is set: every HTTP answer carries
//! `Connection: close` (a keep-alive client moves to a fresh connection,
//! which the new process accepts, instead of meeting a closed one) and the
//! gRPC listener sends GOAWAY, stops accepting and lets its calls and streams
//! finish. Pingora waits `lifecycle.drain_timeout` before it cuts what is
//! left; `watch` exits the process as soon as no HTTP connection and no gRPC
//! call is left, so a drain takes as long as the slowest request, no longer.
//!
//! `GuardedApp` wraps pingora's HTTP application: it counts connections (for
//! the drain) and closes a connection whose request header is not complete
//! within `limits.header_read_timeout` of its start (of the previous answer
//! plus `limits.idle_timeout` on a reused connection), however slowly it
//! trickles: pingora's own timeout applies to each read, so a client sending
//! a byte every few seconds held a connection forever.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::{ExecutionPhase, ShutdownWatch};
use tokio::sync::broadcast;

static DRAINING: AtomicBool = AtomicBool::new(false);
/// HTTP connections being served (from accept to close).
static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// gRPC listeners still serving (they finish their calls after GOAWAY).
static GRPC_SERVING: AtomicUsize = AtomicUsize::new(0);
static DRAIN: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> = std::sync::OnceLock::new();

fn drain_sender() -> &'static tokio::sync::watch::Sender<bool> {
    DRAIN.get_or_init(|| tokio::sync::watch::channel(false).0)
}

/// Whether the process is draining: answers close their connections.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Acquire)
}

/// Resolves once draining starts (SIGTERM, or SIGQUIT after the listeners were handed over).
pub async fn drain_started() {
    let mut rx = drain_sender().subscribe();
    let _ = rx.wait_for(|d| *d).await;
}

fn start_drain() {
    if !DRAINING.swap(true, Ordering::AcqRel) {
        tracing::info!("draining: answers close their connections, gRPC sends GOAWAY");
        drain_sender().send_replace(true);
    }
}

/// Held while a gRPC listener serves.
pub struct GrpcServing(());

impl GrpcServing {
    pub fn new() -> GrpcServing {
        GRPC_SERVING.fetch_add(1, Ordering::AcqRel);
        GrpcServing(())
    }
}

impl Default for GrpcServing {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for GrpcServing {
    fn drop(&mut self) {
        GRPC_SERVING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Follows pingora's shutdown phases on a thread of its own: starts the
/// drain, and exits the process once the listeners are closed and nothing
/// is in flight (pingora would otherwise sleep out the whole drain timeout).
pub fn watch(mut phases: broadcast::Receiver<ExecutionPhase>, drain_timeout: Duration) {
    std::thread::Builder::new()
        .name("switchyard-drain".into())
        .spawn(move || loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulTerminate | ExecutionPhase::GracefulUpgradeCloseTimeout) => start_drain(),
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    start_drain();
                    let start = Instant::now();
                    while CONNECTIONS.load(Ordering::Acquire) > 0 || GRPC_SERVING.load(Ordering::Acquire) > 0 {
                        if start.elapsed() >= drain_timeout {
                            tracing::warn!(
                                http_connections = CONNECTIONS.load(Ordering::Acquire),
                                "drain timeout reached; cutting what is left"
                            );
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    tracing::info!(took_ms = start.elapsed().as_millis() as u64, "drained; exiting");
                    std::process::exit(0);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        })
        .expect("spawning the drain watcher");
}

tokio::task_local! {
    /// Set by the HTTP handler once a request's header is read.
    static HEADER_DONE: Arc<AtomicBool>;
}

/// Tells the connection's deadline that this request's header is complete.
/// Called from the HTTP handler's first hook; a no-op outside `GuardedApp`.
pub fn header_complete() {
    let _ = HEADER_DONE.try_with(|d| d.store(true, Ordering::Release));
}

/// Connection deadlines of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request header must be complete within this of the connection's start.
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
}

/// Pingora's HTTP application with connection counting and a total
/// header-read deadline (see the module doc).
pub struct GuardedApp<A> {
    inner: Arc<A>,
    limits: ConnectionLimits,
    /// Connections (by socket id) handed back for another request.
    reused: Mutex<HashSet<i32>>,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> GuardedApp<A> {
        GuardedApp { inner: Arc::new(inner), limits, reused: Mutex::new(HashSet::new()) }
    }
}

struct Connection;

impl Connection {
    fn new() -> Connection {
        CONNECTIONS.fetch_add(1, Ordering::AcqRel);
        Connection
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        CONNECTIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(self: &Arc<Self>, session: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let _conn = Connection::new();
        let id = session.id();
        let reused = self.reused.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        let mut budget = self.limits.header_read_timeout;
        if reused {
            budget += self.limits.idle_timeout;
        }
        let done = Arc::new(AtomicBool::new(false));
        let deadline = {
            let done = done.clone();
            async move {
                tokio::time::sleep(budget).await;
                if done.load(Ordering::Acquire) {
                    // The request is being served: only the header had a deadline.
                    std::future::pending::<()>().await;
                }
            }
        };
        let inner = self.inner.clone();
        let next = HEADER_DONE
            .scope(done, async move {
                tokio::select! {
                    biased;
                    next = inner.process_new(session, shutdown) => next,
                    () = deadline => {
                        tracing::debug!(?budget, "request header not complete in time; connection closed");
                        None
                    }
                }
            })
            .await;
        if let Some(s) = &next {
            self.reused.lock().unwrap_or_else(|p| p.into_inner()).insert(s.id());
        }
        next
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
