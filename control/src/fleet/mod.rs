//! Fleet mode's Redis side: the shared control state (one versioned record
//! per fleet, changed only by compare-and-set), change notifications
//! (pub/sub), the judge lease with its fencing token, and fleet-wide
//! statistics (`stats`). No consensus code of our own: every rule that must
//! hold across replicas is one atomic Lua script.
//!
//! Keys, all under `switchyard:fleet:{name}:` (docs/operations.md, "Fleet"):
//! `state` (hash: `generation`, `state` JSON, `by`), `changes` (pub/sub
//! channel), `judge` (lease: `"{replica} {token}"`, PX), `judge:token`
//! (fencing counter), `stats:{model}:{variant}` and `ab:{test}:{variant}`
//! (mergeable counters, with TTLs), `published` (each replica's last applied
//! stats publish, so a retried one is never counted twice).
//!
//! Every command is bounded by `control.fleet.timeout`; a failure drops the
//! connection (the next call reconnects) and marks the fleet disconnected.

pub mod stats;
pub mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use switchyard_config::FleetConfig;
use switchyard_stats::Snapshot;

use crate::error::ControlError;
use crate::metrics::ControlMetrics;
use crate::state::PersistedState;

/// Compare-and-set of the shared record. KEYS: state hash, fencing counter.
/// ARGV: expected generation, state JSON, writer, fencing token (`0`: not a
/// judge decision), channel, the new generation (above the expected one; a
/// re-seed after Redis lost its data continues the old numbering, so no
/// replica mistakes the new record for one it already has). Returns
/// `{1, new}`, `{0, current, writer}` when the record moved on,
/// `{-1, current, token}` when the token is stale.
const CAS: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'generation') or '0')
if cur ~= tonumber(ARGV[1]) then
  return {0, cur, redis.call('HGET', KEYS[1], 'by') or ''}
end
if ARGV[4] ~= '0' then
  local t = redis.call('GET', KEYS[2]) or '0'
  if t ~= ARGV[4] then return {-1, cur, t} end
end
local g = tonumber(ARGV[6])
if g <= cur then return {0, cur, redis.call('HGET', KEYS[1], 'by') or ''} end
redis.call('HSET', KEYS[1], 'generation', g, 'state', ARGV[2], 'by', ARGV[3])
redis.call('PUBLISH', ARGV[5], g)
return {1, g, ''}
";

/// Acquires or renews the judge lease. KEYS: lease, fencing counter. ARGV:
/// replica id, ttl ms, the token held (`0`: none). Returns the token held
/// after the call, 0 when another replica holds the lease.
const LEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  local t = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t, 'PX', ARGV[2])
  return t
end
if v == ARGV[1] .. ' ' .. ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return tonumber(ARGV[3])
end
return 0
";

/// Adds one publish of a replica's stats deltas to counter hashes, exactly
/// once: KEYS: the hash of each replica's last applied publish. ARGV:
/// replica, publish sequence, entries as JSON (`[{"k": key, "t": ttl ms,
/// "m": max_abs_error, "f": [[field, increment], ...]}]`, numbers as
/// strings). A sequence already applied (a publish that timed out but
/// landed, then sent again) changes nothing and returns 0. `mx` keeps the
/// largest value.
const ADD_STATS: &str = r"
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) <= last then return 0 end
for _, e in ipairs(cjson.decode(ARGV[3])) do
  for _, f in ipairs(e.f) do redis.call('HINCRBY', e.k, f[1], f[2]) end
  local mx = tonumber(redis.call('HGET', e.k, 'mx') or '0')
  if tonumber(e.m) > mx then redis.call('HSET', e.k, 'mx', e.m) end
  redis.call('PEXPIRE', e.k, e.t)
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

/// How long fleet-wide counters of a variant live after their last update.
pub const STATS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long an A/B test's counters live after the test ends.
pub const AB_TTL_AFTER_END: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shared record as read from Redis.
#[derive(Debug, Clone)]
pub struct Record {
    pub generation: u64,
    pub state: PersistedState,
    pub by: String,
}

/// Why a write of the shared record was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteError {
    /// Another change won: the record is at `current`, written by `by`.
    Conflict { expected: u64, current: u64, by: String },
    /// A judge decision whose fencing token is no longer the latest.
    Fenced { token: u64, latest: String },
    /// Redis could not be reached (or refused the command): nothing was written.
    Unreachable(String),
    /// Sent, but Redis did not answer: the write may or may not have landed.
    Unknown(String),
}

impl WriteError {
    pub fn into_control(self, fleet: &str) -> ControlError {
        match self {
            WriteError::Conflict { expected, current, by } => ControlError::conflict(format!(
                "fleet '{fleet}': this change was based on shared generation {expected}, but generation {current} \
                 (written by {by}) won; nothing was applied — read the state again and retry"
            )),
            WriteError::Fenced { token, latest } => ControlError::conflict(format!(
                "fleet '{fleet}': judge lease token {token} is stale (latest {latest}); another replica judges now"
            )),
            WriteError::Unknown(e) => ControlError::unavailable(format!(
                "fleet '{fleet}': the shared state in Redis did not answer after the change was sent ({e}): \
                 it may or may not have been recorded — this replica applies it if it reads it back; \
                 check `fleet_generation` in GET /config once Redis answers before retrying"
            )),
            WriteError::Unreachable(e) => ControlError::unavailable(format!(
                "fleet '{fleet}': the shared state in Redis is unreachable ({e}); nothing was applied — \
                 this replica keeps serving its last state, retry when Redis is back"
            )),
        }
    }
}

/// Why a Redis call failed.
enum Failure {
    /// Nothing reached Redis (no connection), or Redis refused the command.
    NotSent(String),
    /// Sent, but no answer came: it may have been applied.
    Unknown(String),
}

/// What `/ready` and the metrics say about the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub connected: bool,
    pub generation: u64,
    pub judge: bool,
    /// Why the last Redis call failed, while disconnected.
    pub error: Option<String>,
}

pub struct Fleet {
    cfg: FleetConfig,
    replica: String,
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    connected: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The lease token held (0: none) and until when it is certainly ours.
    token: AtomicU64,
    held_until: Mutex<Option<Instant>>,
    metrics: ControlMetrics,
}

/// `EVAL script numkeys keys...`: the scripts are short, so no SHA caching.
fn eval(script: &str, keys: &[String]) -> redis::Cmd {
    let mut c = redis::cmd("EVAL");
    c.arg(script).arg(keys.len()).arg(keys);
    c
}

fn key(name: &str, rest: &str) -> String {
    format!("switchyard:fleet:{name}:{rest}")
}

impl Fleet {
    pub fn new(cfg: FleetConfig) -> Result<Fleet, String> {
        let client =
            redis::Client::open(cfg.redis.as_str()).map_err(|e| format!("control.fleet.redis `{}`: {e}", cfg.redis))?;
        let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "switchyard".into());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let replica = format!("{host}/{}/{nanos:x}", std::process::id());
        let metrics = ControlMetrics::get();
        metrics.fleet_connected.set(0);
        Ok(Fleet {
            cfg,
            replica,
            client,
            conn: ArcSwapOption::empty(),
            connected: AtomicBool::new(false),
            last_error: Mutex::new(Some("not connected yet".into())),
            token: AtomicU64::new(0),
            held_until: Mutex::new(None),
            metrics,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// This process's id in the fleet (`host/pid/nonce`).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn key(&self, rest: &str) -> String {
        key(&self.cfg.name, rest)
    }

    pub fn channel(&self) -> String {
        self.key("changes")
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn status(&self, generation: u64) -> Status {
        let connected = self.connected.load(Ordering::Acquire);
        Status {
            connected,
            generation,
            judge: self.judge_token().is_some(),
            error: if connected { None } else { self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone() },
        }
    }

    fn failed(&self, e: String) -> String {
        self.conn.store(None);
        if self.connected.swap(false, Ordering::AcqRel) {
            tracing::warn!(fleet = %self.cfg.name, error = %e, "fleet: Redis unreachable; serving the last state");
        }
        self.metrics.fleet_connected.set(0);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.clone());
        e
    }

    fn succeeded(&self) {
        if !self.connected.swap(true, Ordering::AcqRel) {
            tracing::info!(fleet = %self.cfg.name, "fleet: Redis reachable");
        }
        self.metrics.fleet_connected.set(1);
    }

    async fn conn(&self) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.timeout))
            .set_response_timeout(Some(self.cfg.timeout));
        let fut = self.client.get_multiplexed_async_connection_with_config(&cfg);
        match tokio::time::timeout(self.cfg.timeout * 2, fut).await {
            Ok(Ok(c)) => {
                self.conn.store(Some(std::sync::Arc::new(c.clone())));
                Ok(c)
            }
            Ok(Err(e)) => Err(self.failed(format!("cannot connect to {}: {e}", self.cfg.redis))),
            Err(_) => Err(self.failed(format!("connecting to {} timed out", self.cfg.redis))),
        }
    }

    /// Runs one Redis call under the deadline, keeping the connection state.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        self.call_outcome(f).await.map_err(|e| match e {
            Failure::NotSent(m) | Failure::Unknown(m) => m,
        })
    }

    /// [`Self::call`], telling a call that never reached Redis (or was
    /// refused by it) from one whose outcome is unknown (sent, no answer).
    async fn call_outcome<T, F, Fut>(&self, f: F) -> Result<T, Failure>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let c = self.conn().await.map_err(Failure::NotSent)?;
        match tokio::time::timeout(self.cfg.timeout, f(c)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Ok(v)
            }
            Ok(Err(e)) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                Err(Failure::Unknown(self.failed(e.to_string())))
            }
            Ok(Err(e)) => Err(Failure::NotSent(self.failed(e.to_string()))),
            Err(_) => Err(Failure::Unknown(self.failed(format!("no answer within {:?}", self.cfg.timeout)))),
        }
    }

    /// The shared record's generation (0: no record yet).
    pub async fn generation(&self) -> Result<u64, String> {
        let k = self.key("state");
        let g: Option<u64> = self
            .call(|mut c| async move { redis::cmd("HGET").arg(k).arg("generation").query_async(&mut c).await })
            .await?;
        Ok(g.unwrap_or(0))
    }

    /// The shared record; `None` when the fleet has none yet.
    pub async fn read(&self) -> Result<Option<Record>, String> {
        let k = self.key("state");
        let (g, s, by): (Option<u64>, Option<String>, Option<String>) = self
            .call(|mut c| async move {
                redis::cmd("HMGET").arg(k).arg("generation").arg("state").arg("by").query_async(&mut c).await
            })
            .await?;
        match (g, s) {
            (Some(generation), Some(s)) => {
                let state: PersistedState = serde_json::from_str(&s)
                    .map_err(|e| format!("the fleet's shared state in Redis is not readable: {e}"))?;
                Ok(Some(Record { generation, state, by: by.unwrap_or_default() }))
            }
            _ => Ok(None),
        }
    }

    /// Writes `state` as generation `state.generation` (greater than
    /// `expected`) if the record is still at `expected` (and, for a judge
    /// decision, `token` is still the latest).
    pub async fn write(&self, expected: u64, state: &PersistedState, token: Option<u64>) -> Result<u64, WriteError> {
        let json = serde_json::to_string(state).map_err(|e| WriteError::Unreachable(e.to_string()))?;
        let next = state.generation;
        let (k, t, ch, by) = (self.key("state"), self.key("judge:token"), self.channel(), self.replica.clone());
        let tok = token.unwrap_or(0);
        let out: (i64, u64, String) = self
            .call_outcome(|mut c| async move {
                eval(CAS, &[k, t]).arg(expected).arg(json).arg(by).arg(tok).arg(ch).arg(next).query_async(&mut c).await
            })
            .await
            .map_err(|e| match e {
                Failure::NotSent(m) => WriteError::Unreachable(m),
                Failure::Unknown(m) => WriteError::Unknown(m),
            })?;
        match out {
            (1, g, _) => Ok(g),
            (0, current, by) => Err(WriteError::Conflict { expected, current, by }),
            (_, _, latest) => Err(WriteError::Fenced { token: tok, latest }),
        }
    }

    /// The lease token, while the lease is certainly ours.
    pub fn judge_token(&self) -> Option<u64> {
        let until = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        let t = self.token.load(Ordering::Acquire);
        (t != 0 && until.is_some_and(|u| Instant::now() < u)).then_some(t)
    }

    /// Acquires or renews the judge lease; whether this replica is the judge now.
    /// A lease is counted as ours only until `ttl - timeout` after the call
    /// began, so this replica stops judging before any other can start.
    pub async fn renew_lease(&self) -> bool {
        let began = Instant::now();
        let ttl = self.cfg.lease_ttl;
        let (k, t, id) = (self.key("judge"), self.key("judge:token"), self.replica.clone());
        let held = self.token.load(Ordering::Acquire);
        let res: Result<u64, String> = self
            .call(|mut c| async move {
                eval(LEASE, &[k, t]).arg(id).arg(ttl.as_millis() as u64).arg(held).query_async(&mut c).await
            })
            .await;
        let mut until = self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        match res {
            Ok(token) if token != 0 => {
                if token != held {
                    tracing::info!(target: "audit", fleet = %self.cfg.name, replica = %self.replica, token, "fleet: this replica is the judge now");
                }
                self.token.store(token, Ordering::Release);
                *until = Some(began + ttl.saturating_sub(self.cfg.timeout));
                self.metrics.fleet_judge.set(1);
                true
            }
            Ok(_) => {
                if held != 0 {
                    tracing::warn!(fleet = %self.cfg.name, "fleet: the judge lease went to another replica");
                }
                self.token.store(0, Ordering::Release);
                *until = None;
                self.metrics.fleet_judge.set(0);
                false
            }
            // Unreachable: the lease stays ours only as long as it certainly is.
            Err(_) => {
                let ours = until.is_some_and(|u| Instant::now() < u);
                self.metrics.fleet_judge.set(ours as i64);
                ours
            }
        }
    }

    /// Applies publish `seq` of this replica (`stats::encode`d entries);
    /// `Ok(false)` when that publish had already landed.
    pub async fn add_stats(&self, seq: u64, entries: String) -> Result<bool, String> {
        let (k, id) = (self.key("published"), self.replica.clone());
        let ttl = STATS_TTL.as_millis() as u64;
        let applied: i64 = self
            .call(|mut c| async move {
                eval(ADD_STATS, &[k]).arg(id).arg(seq).arg(entries).arg(ttl).query_async(&mut c).await
            })
            .await?;
        Ok(applied == 1)
    }

    /// Merged counters of several hashes, in order (empty where none).
    pub async fn read_stats(&self, keys: Vec<String>) -> Result<Vec<Snapshot>, String> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let maps: Vec<HashMap<String, String>> = self
            .call(|mut c| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                pipe.query_async(&mut c).await
            })
            .await?;
        Ok(maps.iter().map(stats::snapshot_of).collect())
    }

    pub fn stats_key(&self, model: &str, variant: &str) -> String {
        self.key(&format!("stats:{model}:{variant}"))
    }

    pub fn ab_key(&self, test_id: &str, variant: &str) -> String {
        self.key(&format!("ab:{test_id}:{variant}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_under_the_fleet() {
        assert_eq!(key("gw", "state"), "switchyard:fleet:gw:state");
        assert_eq!(key("gw", "stats:m:v1"), "switchyard:fleet:gw:stats:m:v1");
    }

    #[test]
    fn refusals_name_what_won() {
        let e = WriteError::Conflict { expected: 4, current: 5, by: "a/1/f".into() }.into_control("gw");
        assert_eq!(e.kind, crate::error::ErrorKind::Conflict);
        assert!(
            e.message.contains("generation 5") && e.message.contains("a/1/f") && e.message.contains("generation 4"),
            "{e}"
        );
        let e = WriteError::Unreachable("connection refused".into()).into_control("gw");
        assert_eq!(e.kind, crate::error::ErrorKind::Unavailable);
        assert!(e.message.contains("nothing was applied"), "{e}");
        let e = WriteError::Unknown("no answer within 500ms".into()).into_control("gw");
        assert_eq!(e.kind, crate::error::ErrorKind::Unavailable);
        assert!(e.message.contains("may or may not have been recorded"), "{e}");
    }
}
