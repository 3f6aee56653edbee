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
//! a byte every few seconds held a connection forever. Its `GuardedStream`
//! also cuts a header longer than `limits.max_header_bytes` (pingora's own
//! cap is a fixed 1 MiB). Past `limits.max_connections` open connections a
//! new one may ask for the probes only (others get 503), up to
//! `PROBE_RESERVE` more; past that it is closed at once, so descriptors stay
//! free for the metrics port, the backends and the probes.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef, ALPN};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream, TimingDigest,
    UniqueID, UniqueIDType,
};
use pingora_core::server::{ExecutionPhase, ShutdownWatch};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
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
                            switchyard_stats::access_log::flush();
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    tracing::info!(took_ms = start.elapsed().as_millis() as u64, "drained; exiting");
                    // The access log's writer holds the last lines in its buffer.
                    switchyard_stats::access_log::flush();
                    std::process::exit(0);
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        })
        .expect("spawning the drain watcher");
}

tokio::task_local! {
    /// The request header being read on this connection (see `GuardedStream`).
    static HEADER: Arc<HeaderState>;
}

/// One request header's progress on a connection.
#[derive(Default)]
struct HeaderState {
    done: AtomicBool,
    /// The connection was accepted over `limits.max_connections`: probes only.
    over_cap: bool,
    /// Bytes read from the client since this request began.
    read: AtomicUsize,
}

/// Whether this request's connection was accepted over `limits.max_connections`
/// (it may ask for the probes only).
pub fn over_connection_cap() -> bool {
    HEADER.try_with(|h| h.over_cap).unwrap_or(false)
}

/// Connections accepted past `max_connections` for probes only; more are closed at once.
pub const PROBE_RESERVE: usize = 32;
/// Descriptors kept free below the process's limit for backends, the other listeners and files.
const DESCRIPTOR_RESERVE: usize = 512;

/// The default connection cap: the soft limit on open files less a reserve,
/// so the metrics port, backends and probes still get descriptors when the
/// data port is full. `None` where the limit cannot be read or is unlimited.
pub fn default_max_connections() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft: usize = line.split_whitespace().nth(3)?.parse().ok()?;
    Some(soft.saturating_sub(DESCRIPTOR_RESERVE + PROBE_RESERVE).max(16))
}

/// Tells the connection's guards that this request's header is complete.
/// Called from the HTTP handler's first hook; a no-op outside `GuardedApp`.
pub fn header_complete() {
    let _ = HEADER.try_with(|h| h.done.store(true, Ordering::Release));
}

/// Connection limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// A request header must be complete within this of the connection's start.
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub idle_timeout: Duration,
    /// A request header may not be longer (pingora's own cap is 1 MiB).
    pub max_header_bytes: usize,
    /// Past this many connections, new ones may ask for the probes only
    /// (`PROBE_RESERVE` of them); past that they are closed at once.
    pub max_connections: Option<usize>,
}

/// Pingora's HTTP application with connection counting, a total
/// header-read deadline and a header size cap (see the module doc).
pub struct GuardedApp<A> {
    inner: Arc<A>,
    limits: ConnectionLimits,
}

impl<A> GuardedApp<A> {
    pub fn new(inner: A, limits: ConnectionLimits) -> GuardedApp<A> {
        GuardedApp { inner: Arc::new(inner), limits }
    }
}

struct Connection;

impl Connection {
    /// Counts the connection; the count with it.
    fn new() -> (Connection, usize) {
        (Connection, CONNECTIONS.fetch_add(1, Ordering::AcqRel) + 1)
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
        let (_conn, open) = Connection::new();
        // A connection handed back for another request is already guarded.
        let (stream, header, reused): (Stream, _, bool) = if session.as_any().is::<GuardedStream>() {
            let mut g = session.into_any().downcast::<GuardedStream>().expect("checked above");
            let header = Arc::new(HeaderState { over_cap: g.over_cap, ..HeaderState::default() });
            g.header = header.clone();
            (g, header, true)
        } else {
            let over_cap = match self.limits.max_connections {
                Some(max) if open > max + PROBE_RESERVE => {
                    tracing::debug!(open, max, "connection cap reached; connection closed");
                    return None;
                }
                Some(max) => open > max,
                None => false,
            };
            let header = Arc::new(HeaderState { over_cap, ..HeaderState::default() });
            let g = GuardedStream {
                inner: session,
                header: header.clone(),
                max_header_bytes: self.limits.max_header_bytes,
                over_cap,
            };
            (Box::new(g), header, false)
        };
        let mut budget = self.limits.header_read_timeout;
        if reused {
            budget += self.limits.idle_timeout;
        }
        let deadline = {
            let header = header.clone();
            async move {
                tokio::time::sleep(budget).await;
                if header.done.load(Ordering::Acquire) {
                    // The request is being served: only the header had a deadline.
                    std::future::pending::<()>().await;
                }
            }
        };
        let inner = self.inner.clone();
        HEADER
            .scope(header, async move {
                tokio::select! {
                    biased;
                    next = inner.process_new(stream, shutdown) => next,
                    () = deadline => {
                        tracing::debug!(?budget, "request header not complete in time; connection closed");
                        None
                    }
                }
            })
            .await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// The client connection as pingora reads it: a read that would go past
/// `max_header_bytes` before the request's header is complete fails, so an
/// oversized header is cut after at most one more read's worth of bytes.
#[derive(Debug)]
struct GuardedStream {
    inner: Stream,
    header: Arc<HeaderState>,
    max_header_bytes: usize,
    over_cap: bool,
}

impl std::fmt::Debug for HeaderState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderState").field("done", &self.header_done()).finish()
    }
}

impl HeaderState {
    fn header_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let header_open = !self.header.header_done();
        if header_open && self.header.read.load(Ordering::Relaxed) > self.max_header_bytes {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request header over limits.max_header_bytes",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if header_open {
            self.header.read.fetch_add(buf.filled().len() - before, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
