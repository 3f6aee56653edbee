//! HTTP/1.1 connections to one endpoint, driven by the request's own task:
//! the task that sends a request polls the connection (hyper's
//! `client::conn::http1`) while it writes the request and reads the answer,
//! so a call costs no hand-off to a connection task and no cross-thread
//! wake-up. After a complete keep-alive exchange the connection goes back to
//! an idle shelf of the thread that used it (`pool_size` idle connections per
//! endpoint in all threads together); the next request on that thread takes
//! the most recently used one. Nobody polls an idle connection: one the
//! server closed meanwhile is found (polled once) when taken, and dropped.
//! A request whose task is dropped (the client hung up, a timeout) drops its
//! connection with it: a half-read connection never goes back on a shelf.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use switchyard_tls::{Connector, Stream};
use tower_service::Service;

use crate::error::error_chain;

/// An idle connection older than this is closed instead of reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

type Sender = http1::SendRequest<Full<Bytes>>;
type Conn = http1::Connection<Stream, Full<Bytes>>;

/// Why an exchange failed, and whether the request may have reached the server.
pub enum CallError {
    /// No connection was made (refused, connect timeout, TLS handshake).
    Connect(std::io::Error),
    /// The connection failed before the request was written: provably not sent.
    NotSent(hyper::Error),
    /// The connection failed with the request (maybe) sent, or mid-answer.
    Request(hyper::Error),
}

impl CallError {
    /// The request provably never reached the server.
    pub fn not_sent(&self) -> bool {
        matches!(self, CallError::Connect(_) | CallError::NotSent(_))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Connect(e) => f.write_str(&error_chain(e)),
            CallError::NotSent(e) | CallError::Request(e) => f.write_str(&error_chain(e)),
        }
    }
}

/// Source of the pools' identities on the thread-local shelves.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The connections of one endpoint.
pub struct ConnPool {
    id: u64,
    connector: Connector,
    /// `scheme://authority`: what the connector dials.
    target: Uri,
    max_idle: usize,
    /// Idle connections on all threads' shelves (each `Idle` holds one count).
    idle: Arc<AtomicUsize>,
    /// Dropped with the pool: a shelf whose owner is gone is swept.
    alive: Arc<()>,
}

/// A keep-alive connection waiting on a shelf.
struct Idle {
    sender: Sender,
    conn: Conn,
    since: Instant,
    _count: IdleCount,
}

/// One unit of `ConnPool::idle`, given back however the connection leaves the shelf.
struct IdleCount(Arc<AtomicUsize>);

impl Drop for IdleCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint's idle connections on one thread.
struct Shelf {
    id: u64,
    owner: Weak<()>,
    /// Oldest first; taken from the end.
    conns: Vec<Idle>,
}

thread_local! {
    /// Dropped with the thread: its connections close with the runtime that drove them.
    static SHELVES: RefCell<Vec<Shelf>> = const { RefCell::new(Vec::new()) };
}

impl ConnPool {
    /// `target`: `http://authority` or `https://authority`; `max_idle`: the idle
    /// connections kept across all threads.
    pub fn new(connector: Connector, target: Uri, max_idle: usize) -> ConnPool {
        ConnPool {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            connector,
            target,
            max_idle,
            idle: Arc::new(AtomicUsize::new(0)),
            alive: Arc::new(()),
        }
    }

    /// One exchange: the answer with its body read whole. `req` carries the
    /// origin-form path and its headers (`Host` included).
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, CallError> {
        let (mut sender, conn, reused) = match self.take_idle() {
            Some((s, c)) => (s, c, true),
            None => {
                let (s, c) = self.connect().await?;
                (s, c, false)
            }
        };
        let (result, conn) = drive(conn, exchange(&mut sender, req)).await;
        let (result, sender, conn) = match result {
            // A reused connection that broke before the request left (the server
            // closed it as we took it): once more, on a new connection.
            Err(Unsent::Back(req, _)) if reused => {
                let (mut sender, conn) = self.connect().await?;
                let (result, conn) = drive(conn, exchange(&mut sender, *req)).await;
                (result, sender, conn)
            }
            r => (r, sender, conn),
        };
        let r = result?;
        if let Some(conn) = conn {
            self.put_back(sender, conn);
        }
        Ok(r)
    }

    async fn connect(&self) -> Result<(Sender, Conn), CallError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await.map_err(CallError::Connect)?;
        let io = connector.call(self.target.clone()).await.map_err(CallError::Connect)?;
        // No I/O happens in an HTTP/1 handshake: a failure here is local, nothing was sent.
        http1::Builder::new().handshake(io).await.map_err(CallError::NotSent)
    }

    /// The most recently used idle connection of this thread that still serves.
    fn take_idle(&self) -> Option<(Sender, Conn)> {
        loop {
            let idle = SHELVES.with(|s| {
                let mut shelves = s.borrow_mut();
                shelves.iter_mut().find(|s| s.id == self.id).and_then(|s| s.conns.pop())
            })?;
            if idle.since.elapsed() > IDLE_TIMEOUT {
                // The rest of the shelf is older still.
                self.clear_shelf();
                return None;
            }
            let Idle { sender, mut conn, .. } = idle;
            // Polled once: a connection the server closed while it was idle
            // (FIN read, or an error) finishes now instead of failing the request.
            if usable(&sender, &mut conn) {
                return Some((sender, conn));
            }
        }
    }

    fn clear_shelf(&self) {
        let stale = SHELVES.with(|s| {
            let mut shelves = s.borrow_mut();
            shelves.iter_mut().find(|s| s.id == self.id).map(|s| std::mem::take(&mut s.conns))
        });
        drop(stale);
    }

    /// Shelves a connection after a complete exchange, when it can take
    /// another request and the endpoint's idle limit has room.
    fn put_back(&self, sender: Sender, mut conn: Conn) {
        if !usable(&sender, &mut conn) {
            return;
        }
        if self.idle.fetch_add(1, Ordering::Relaxed) >= self.max_idle {
            self.idle.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let idle = Idle { sender, conn, since: Instant::now(), _count: IdleCount(self.idle.clone()) };
        // Dropped outside the borrow: a connection's drop runs no code of ours, but keep it simple.
        let swept = SHELVES.with(|s| {
            let mut shelves = s.borrow_mut();
            if let Some(shelf) = shelves.iter_mut().find(|s| s.id == self.id) {
                // The oldest connections time out first, from the front.
                let expired = shelf.conns.iter().take_while(|c| c.since.elapsed() > IDLE_TIMEOUT).count();
                let old: Vec<Idle> = shelf.conns.drain(..expired).collect();
                shelf.conns.push(idle);
                return (old, Vec::new());
            }
            // A new shelf: sweep those of endpoints that are gone (DNS changes, reloads).
            let (gone, kept): (Vec<Shelf>, Vec<Shelf>) =
                std::mem::take(&mut *shelves).into_iter().partition(|s| s.owner.strong_count() == 0);
            *shelves = kept;
            shelves.push(Shelf { id: self.id, owner: Arc::downgrade(&self.alive), conns: vec![idle] });
            (Vec::new(), gone)
        });
        drop(swept);
    }

    /// Idle connections on all threads now.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.load(Ordering::Relaxed)
    }
}

/// Whether an idle connection can take a request: polled once (with a waker
/// that does nothing: whoever uses it next polls it again), it must not have
/// finished, and must be waiting for a request.
fn usable(sender: &Sender, conn: &mut Conn) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    if Pin::new(conn).poll(&mut cx).is_ready() {
        return false;
    }
    sender.is_ready()
}

/// A failed exchange; the request is handed back when it provably never left.
enum Unsent {
    /// Boxed: the rare case should not make every result a request's size.
    Back(Box<Request<Full<Bytes>>>, hyper::Error),
    Failed(hyper::Error),
}

impl From<Unsent> for CallError {
    fn from(e: Unsent) -> CallError {
        match e {
            Unsent::Back(_, e) => CallError::NotSent(e),
            Unsent::Failed(e) => CallError::Request(e),
        }
    }
}

/// Sends the request and reads the answer whole.
async fn exchange(sender: &mut Sender, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, Unsent> {
    let resp = match sender.try_send_request(req).await {
        Ok(r) => r,
        Err(mut e) => {
            return Err(match e.take_message() {
                Some(req) => Unsent::Back(Box::new(req), e.into_error()),
                None => Unsent::Failed(e.into_error()),
            })
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(Unsent::Failed)?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Runs `exchange` while polling the connection that carries it, on this
/// task; gives the connection back unless it finished (closed by either
/// side: `Connection: close`, an error). A finished connection is dropped at
/// once: that drops its request queue, which fails (and hands back) a request
/// it never took instead of leaving it waiting.
async fn drive<T>(conn: Conn, exchange: impl Future<Output = T>) -> (T, Option<Conn>) {
    let mut exchange = pin!(exchange);
    let mut conn = Some(conn);
    let out = poll_fn(|cx| {
        if let Some(c) = conn.as_mut() {
            // Its error reaches the exchange too (hyper fails the pending request).
            if let Poll::Ready(r) = Pin::new(c).poll(cx) {
                conn = None;
                if let Err(e) = r {
                    tracing::trace!(error = %e, "upstream connection ended");
                }
            }
        }
        exchange.as_mut().poll(cx)
    })
    .await;
    (out, conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn request(authority: &str) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(Bytes::from_static(b"{}")));
        *req.uri_mut() = Uri::from_static("/v2/health/ready");
        req.headers_mut().insert(HOST, authority.parse().unwrap());
        req
    }

    /// A server answering every request on a connection with `answer`, then
    /// closing it when `close_after` answers were given (0: never); counts
    /// connections accepted, and those it closed.
    async fn server(answer: &'static [u8], close_after: usize) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, closes) = (accepted.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let closes = closes.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut answered = 0;
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        // Requests carry a 2-byte body after the head.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            if buf.len() < end + 4 + 2 {
                                break;
                            }
                            buf.drain(..end + 4 + 2);
                            s.write_all(answer).await.unwrap();
                            answered += 1;
                            if close_after > 0 && answered >= close_after {
                                drop(s);
                                closes.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted, closed)
    }

    fn pool(addr: &str, max_idle: usize) -> ConnPool {
        let connector = Connector::new(Some(Duration::from_secs(2)), None);
        ConnPool::new(connector, format!("http://{addr}").parse().unwrap(), max_idle)
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn keep_alive_connections_are_reused() {
        let (addr, accepted, _) = server(OK, 0).await;
        let p = pool(&addr, 4);
        for _ in 0..5 {
            let r = p.send(request(&addr)).await.ok().unwrap();
            assert_eq!(r.body().as_ref(), b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(p.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_not_reused() {
        // Answers one request per connection, keeps it open until told, then closes it.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let close = Arc::new(tokio::sync::Notify::new());
        let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c, shut) = (accepted.clone(), closed.clone(), close.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                a.fetch_add(1, Ordering::SeqCst);
                let (c, shut) = (c.clone(), shut.clone());
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    s.write_all(OK).await.unwrap();
                    shut.notified().await;
                    drop(s);
                    c.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let p = pool(&addr, 4);
        for i in 1..=3 {
            // Bounded: a request stuck on a dead connection fails the test instead of hanging it.
            let r = tokio::time::timeout(Duration::from_secs(30), p.send(request(&addr))).await;
            let r = r.expect("not stuck").ok().expect("each request is answered");
            assert_eq!(r.body().as_ref(), b"ok");
            assert_eq!(p.idle_count(), 1, "the connection is shelved while open");
            // The server closes the shelved connection; the next request must not fail on it.
            close.notify_one();
            while closed.load(Ordering::SeqCst) < i {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connection_close_answers_are_not_shelved() {
        let close = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        let (addr, accepted, _) = server(close, 1).await;
        let p = pool(&addr, 4);
        for _ in 0..3 {
            let r = p.send(request(&addr)).await.ok().unwrap();
            assert_eq!(r.body().as_ref(), b"ok");
            assert_eq!(p.idle_count(), 0);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn at_most_pool_size_connections_stay_idle() {
        let (addr, accepted, _) = server(OK, 0).await;
        let p = pool(&addr, 2);
        let ten = (0..10).map(|_| p.send(request(&addr)));
        let answers = futures_util::future::join_all(ten).await;
        assert!(answers.iter().all(|r| r.is_ok()));
        assert_eq!(p.idle_count(), 2);
        let first = accepted.load(Ordering::SeqCst);
        assert!(first > 2, "concurrent requests each had a connection: {first}");
        // Sequential requests now ride the shelved connections: no new ones.
        for _ in 0..4 {
            p.send(request(&addr)).await.ok().unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), first);
    }

    #[tokio::test]
    async fn a_dropped_request_leaves_nothing_on_the_shelf() {
        // Announces a longer body than it sends: the request stays mid-answer.
        let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nok";
        let (addr, _, _) = server(partial, 0).await;
        let p = pool(&addr, 4);
        let r = tokio::time::timeout(Duration::from_millis(100), p.send(request(&addr))).await;
        assert!(r.is_err(), "the answer never completes");
        assert_eq!(p.idle_count(), 0);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let err = pool(&addr, 4).send(request(&addr)).await.err().unwrap();
        assert!(err.not_sent() && matches!(err, CallError::Connect(_)));
    }
}
