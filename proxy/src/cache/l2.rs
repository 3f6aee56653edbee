//! L2: Redis (standalone or cluster) through multiplexed connections, one
//! per thread that calls it, behind a per-call timeout and one circuit
//! breaker.
//!
//! The cache may be lost, the request never: every GET and SET is bounded by
//! `cache.redis.timeout`; `breaker_failures` consecutive failures (errors,
//! timeouts, failed connects) open the breaker, and while it is open Redis is
//! not called at all. After `breaker_cooldown` one probe goes through; its
//! success closes the breaker, its failure re-opens it. Connecting happens in
//! the background, never on a request: a request that finds no connection
//! just skips L2 (and wakes the connector).
//!
//! A multiplexed connection is a task on the runtime that made it; a call
//! from another runtime's thread would wake that task across threads and be
//! woken back. So each thread that calls Redis gets its own connection, made
//! by a task on its own runtime the first time it calls; until then its
//! calls use the shared one (made on the runtime that built the cache).
//! Every connection feeds the one breaker.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, RedisError};
use switchyard_config::RedisConfig;

use crate::breaker::Breaker;

/// SCAN page size of a model purge.
const PURGE_PAGE: usize = 500;

#[derive(Clone)]
enum Conn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

enum Client {
    Single(redis::Client),
    Cluster(Box<redis::cluster::ClusterClient>),
}

/// What a GET found.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    Hit(Bytes),
    Miss,
    /// Redis was skipped (breaker open, not connected) or failed; the request goes on without it.
    Unavailable,
}

pub struct L2Metrics {
    pub errors: IntCounterVec,
    pub skipped: IntCounter,
    pub breaker_state: IntGauge,
}

/// A connection as it is made and replaced: shared, or one thread's.
#[derive(Default)]
struct Slot {
    conn: ArcSwapOption<Conn>,
    connecting: AtomicBool,
}

/// One thread's connection to one `L2`, and the runtime whose task drives it.
struct ThreadSlot {
    l2: u64,
    owner: Weak<Slot>,
    runtime: tokio::runtime::Id,
    slot: Arc<Slot>,
}

thread_local! {
    /// Dropped with the thread, with the runtime's tasks that drove them.
    static SLOTS: RefCell<Vec<ThreadSlot>> = const { RefCell::new(Vec::new()) };
}

/// Source of the `L2`s' identities in the threads' slot lists.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub struct L2 {
    id: u64,
    cfg: RedisConfig,
    client: Client,
    /// Made on `runtime`; used until a thread has its own, and off the request path.
    shared: Arc<Slot>,
    breaker: Breaker,
    runtime: tokio::runtime::Handle,
    metrics: L2Metrics,
}

impl L2 {
    /// Must be called inside a tokio runtime that outlives the cache: connects
    /// and background writes run on it.
    pub fn new(cfg: &RedisConfig, metrics: L2Metrics) -> Result<Arc<L2>, String> {
        L2::named(cfg, metrics, "cache L2")
    }

    /// The same, for another user of Redis than the cache (its breaker's log lines carry `name`).
    pub fn named(cfg: &RedisConfig, metrics: L2Metrics, name: &'static str) -> Result<Arc<L2>, String> {
        let client = if cfg.cluster {
            Client::Cluster(Box::new(
                redis::cluster::ClusterClient::builder(cfg.urls.clone())
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.timeout)
                    .retries(0)
                    .build()
                    .map_err(|e| format!("cache.redis.cluster: {e}"))?,
            ))
        } else {
            let url = cfg.urls.first().ok_or("cache.redis.url is missing")?;
            Client::Single(redis::Client::open(url.as_str()).map_err(|e| format!("cache.redis.url `{url}`: {e}"))?)
        };
        let l2 = Arc::new(L2 {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            breaker: Breaker::new(name, cfg.breaker_failures, cfg.breaker_cooldown, metrics.breaker_state.clone()),
            cfg: cfg.clone(),
            client,
            shared: Arc::new(Slot::default()),
            runtime: tokio::runtime::Handle::try_current().map_err(|_| "the cache needs a tokio runtime")?,
            metrics,
        });
        l2.connect_in_background(&l2.shared, &l2.runtime);
        Ok(l2)
    }

    /// Connects `slot` by a task on `runtime` (whose tasks then drive the connection).
    fn connect_in_background(self: &Arc<Self>, slot: &Arc<Slot>, runtime: &tokio::runtime::Handle) {
        if slot.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let slot = slot.clone();
        runtime.spawn(async move {
            let attempt = async {
                match &this.client {
                    Client::Single(c) => {
                        let config = AsyncConnectionConfig::new()
                            .set_connection_timeout(Some(this.cfg.connect_timeout))
                            .set_response_timeout(Some(this.cfg.timeout));
                        c.get_multiplexed_async_connection_with_config(&config).await.map(Conn::Single)
                    }
                    Client::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
                }
            };
            match tokio::time::timeout(this.cfg.connect_timeout, attempt).await {
                Ok(Ok(conn)) => {
                    // A connection is not proof of health (a cluster connects while a
                    // master is down): an open breaker stays open until its probe succeeds.
                    slot.conn.store(Some(Arc::new(conn)));
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "redis connect failed");
                    this.metrics.errors.with_label_values(&["connect"]).inc();
                    this.breaker.failure();
                }
                Err(_) => {
                    this.metrics.errors.with_label_values(&["connect"]).inc();
                    this.breaker.failure();
                }
            }
            slot.connecting.store(false, Ordering::Release);
        });
    }

    /// This thread's slot, made (and its connection started on the current
    /// runtime) on first call; `None` outside a runtime.
    fn thread_slot(self: &Arc<Self>) -> Option<(Arc<Slot>, tokio::runtime::Handle)> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let runtime = rt.id();
        let slot = SLOTS.with(|s| {
            let mut list = s.borrow_mut();
            if let Some(ts) = list.iter().find(|ts| ts.l2 == self.id) {
                if ts.runtime == runtime {
                    return ts.slot.clone();
                }
            }
            // Sweep slots of `L2`s that are gone and the one of a runtime this thread left.
            list.retain(|ts| ts.owner.strong_count() > 0 && ts.l2 != self.id);
            let slot = Arc::new(Slot::default());
            list.push(ThreadSlot { l2: self.id, owner: Arc::downgrade(&self.shared), runtime, slot: slot.clone() });
            slot
        });
        Some((slot, rt))
    }

    /// The connection to use now, and the slot it came from, if the breaker
    /// lets a call through: this thread's, else (while this thread's is being
    /// made) the shared one.
    fn conn(self: &Arc<Self>) -> Option<(Arc<Slot>, Arc<Conn>)> {
        if !self.breaker.allow() {
            self.metrics.skipped.inc();
            return None;
        }
        if let Some((slot, rt)) = self.thread_slot() {
            if let Some(c) = slot.conn.load_full() {
                return Some((slot, c));
            }
            // Started only once Redis was reached: a Redis that is down is not
            // dialled from every thread.
            if self.shared.conn.load().is_some() {
                self.connect_in_background(&slot, &rt);
            }
        }
        match self.shared.conn.load_full() {
            Some(c) => Some((self.shared.clone(), c)),
            None => {
                self.metrics.skipped.inc();
                // A probe that finds no connection counts as a failed probe (the
                // breaker re-opens for another cool-down) instead of holding the
                // half-open slot forever.
                self.breaker.no_connection();
                self.connect_in_background(&self.shared, &self.runtime);
                None
            }
        }
    }

    /// Runs one command under the timeout; failures feed the breaker.
    async fn call<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        conn: (Arc<Slot>, Arc<Conn>),
        cmd: redis::Cmd,
    ) -> Option<T> {
        self.exec(conn, Query::Cmd(&cmd)).await
    }

    /// Runs a pipeline (one round trip) under the timeout and the breaker;
    /// `None` when Redis was skipped (breaker open, not connected) or failed.
    pub async fn pipeline<T: redis::FromRedisValue>(self: &Arc<Self>, pipe: &redis::Pipeline) -> Option<T> {
        let conn = self.conn()?;
        self.exec(conn, Query::Pipe(pipe)).await
    }

    async fn exec<T: redis::FromRedisValue>(self: &Arc<Self>, conn: (Arc<Slot>, Arc<Conn>), q: Query<'_>) -> Option<T> {
        let (slot, conn) = conn;
        let mut c = (*conn).clone();
        let fut = async {
            match (&mut c, q) {
                (Conn::Single(c), Query::Cmd(cmd)) => query(c, cmd).await,
                (Conn::Cluster(c), Query::Cmd(cmd)) => query(c, cmd).await,
                (Conn::Single(c), Query::Pipe(p)) => p.query_async(c).await,
                (Conn::Cluster(c), Query::Pipe(p)) => p.query_async(c).await,
            }
        };
        match tokio::time::timeout(self.cfg.timeout, fut).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Some(v)
            }
            Ok(Err(e)) => {
                self.metrics.errors.with_label_values(&["error"]).inc();
                // A multiplexed connection whose server went away fails every call (not always
                // as an I/O error): drop it (if nobody replaced it yet) and reconnect off the
                // request path (the shared one now; this thread's on its next call).
                // A cluster connection repairs itself (slot refresh, reconnects per
                // node), so it is kept.
                if matches!(*conn, Conn::Single(_)) {
                    let _ = slot.conn.compare_and_swap(&Some(conn), None);
                    if Arc::ptr_eq(&slot, &self.shared) {
                        self.connect_in_background(&self.shared, &self.runtime);
                    }
                }
                tracing::debug!(error = %e, "redis call failed");
                self.breaker.failure();
                None
            }
            Err(_) => {
                self.metrics.errors.with_label_values(&["timeout"]).inc();
                self.breaker.failure();
                None
            }
        }
    }

    pub async fn get(self: &Arc<Self>, key: &str) -> Lookup {
        let Some(conn) = self.conn() else { return Lookup::Unavailable };
        let mut cmd = redis::cmd("GET");
        cmd.arg(key);
        match self.call::<Option<Vec<u8>>>(conn, cmd).await {
            Some(Some(v)) => Lookup::Hit(Bytes::from(v)),
            Some(None) => Lookup::Miss,
            None => Lookup::Unavailable,
        }
    }

    /// `SET key value PX ttl`, off the request path: a task of its own, on
    /// the caller's runtime (where its connection lives).
    pub fn set_in_background(self: &Arc<Self>, key: String, value: Bytes, ttl: Duration) {
        let Some(conn) = self.conn() else { return };
        let this = self.clone();
        let runtime = tokio::runtime::Handle::try_current().unwrap_or_else(|_| self.runtime.clone());
        runtime.spawn(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value.as_ref()).arg("PX").arg(ttl.as_millis().max(1) as u64);
            this.call::<()>(conn, cmd).await;
        });
    }

    /// Deletes every key matching `pattern` (standalone only), off the request path.
    pub fn purge_in_background(self: &Arc<Self>, pattern: String) {
        let Some(conn) = self.conn() else { return };
        if matches!(*conn.1, Conn::Cluster(_)) {
            tracing::warn!(pattern, "cache purge in Redis Cluster is not supported; entries expire by TTL");
            return;
        }
        let this = self.clone();
        self.runtime.spawn(async move {
            let mut cursor: u64 = 0;
            let mut deleted = 0usize;
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(PURGE_PAGE);
                let Some((next, keys)) = this.call::<(u64, Vec<String>)>(conn.clone(), scan).await else { return };
                if !keys.is_empty() {
                    deleted += keys.len();
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(keys);
                    this.call::<()>(conn.clone(), unlink).await;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
            tracing::info!(pattern, deleted, "cache entries purged from redis");
        });
    }

    /// `breaker::OPEN`, `CLOSED` or `HALF_OPEN`.
    pub fn breaker_state(&self) -> i64 {
        self.breaker.state()
    }
}

/// One command or a pipeline of them.
#[derive(Clone, Copy)]
enum Query<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
}

async fn query<C: ConnectionLike, T: redis::FromRedisValue>(c: &mut C, cmd: &redis::Cmd) -> Result<T, RedisError> {
    cmd.query_async(c).await
}

/// Escapes glob characters of a SCAN MATCH pattern.
pub fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_escaping() {
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
