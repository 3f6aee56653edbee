//! Fleet-wide token buckets (`rate_limits.redis`): every replica that names
//! the same Redis and key prefix draws from the same buckets.
//!
//! The buckets live in Redis as hashes (`tokens`, `at`) that one Lua script
//! refills and draws from atomically, using Redis' own `TIME`, so the
//! replicas' clocks never enter the arithmetic and a skewed replica cannot
//! mint tokens. One script call serves every bucket a request touches
//! (global, principal, model; requests and bytes): one round trip.
//!
//! Most requests make none: a replica takes tokens ahead of its requests —
//! a lease of at most `lease` worth of the bucket's rate (never more than a
//! tenth of its burst, never less than the request needs) — and spends them
//! locally until they run out or the lease ends. Leased tokens were taken
//! from the shared bucket, so the fleet never admits more than the limit;
//! tokens a replica leased and did not use lapse with their lease, so it may
//! admit slightly less. A bucket whose rate is below one token per `lease`
//! is charged a round trip per request, which keeps low limits exact.
//!
//! When Redis cannot answer — a failed or timed-out call, no connection, the
//! breaker open — the request is decided by `on_unavailable` (the caller
//! does that) and counted; the breaker logs its opening and closing once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::MultiplexedConnection;
use redis::AsyncConnectionConfig;
use switchyard_config::{Bucket as BucketConfig, Rate, RateLimits, SharedRateLimits};

use crate::breaker::Breaker;

/// Refills and draws several buckets at once. Per bucket (KEYS[i]), ARGV
/// holds rate per second, burst, tokens needed now and tokens wanted (the
/// lease, ≥ needed). A bucket holding what is needed grants min(wanted,
/// held); one that does not grants nothing and says how many seconds until
/// it would. Time is Redis' own (`TIME`, allowed in scripts since Redis 5's
/// effects replication); `at` never moves back, so a failover to a node
/// whose clock is behind grants nothing early. A key expires once its bucket
/// would be full again: a full bucket and no key are the same.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local rate = tonumber(ARGV[a + 1])
  local burst = tonumber(ARGV[a + 2])
  local need = tonumber(ARGV[a + 3])
  local want = tonumber(ARGV[a + 4])
  local s = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(s[1])
  local at = tonumber(s[2])
  if tokens == nil or at == nil then
    tokens = burst
    at = now
  end
  if now > at then
    tokens = math.min(burst, tokens + (now - at) * rate)
    at = now
  end
  local granted = 0
  local wait = 0
  if tokens >= need then
    granted = math.min(want, tokens)
    tokens = tokens - granted
  else
    wait = (need - tokens) / rate
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'at', tostring(at))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
  out[i] = {tostring(granted), tostring(wait)}
end
return out
"#;

/// Above this many leases of one scope, lapsed ones are dropped.
const MAX_LEASES: usize = 10_000;
/// A lease never takes more than this share of a bucket's burst, so one
/// replica cannot sit on what the others need.
const MAX_LEASE_SHARE: f64 = 0.1;

/// Which bucket, for keys and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Scope {
    Global,
    Principal,
    Model,
}

impl Scope {
    fn index(self) -> usize {
        self as usize
    }

    fn tag(self) -> &'static str {
        match self {
            Scope::Global => "g",
            Scope::Principal => "p",
            Scope::Model => "m",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Requests,
    Bytes,
}

/// Tokens this replica took from a shared bucket, usable until `until`.
#[derive(Clone, Copy, Debug, Default)]
struct Lease {
    tokens: f64,
    until: Option<Instant>,
}

impl Lease {
    fn available(&self, now: Instant) -> f64 {
        match self.until {
            Some(u) if now <= u => self.tokens,
            _ => 0.0,
        }
    }

    fn take(&mut self, n: f64, now: Instant) -> bool {
        if self.available(now) >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn add(&mut self, n: f64, now: Instant, lease: Duration) {
        let kept = self.available(now);
        self.tokens = kept + n;
        self.until = Some(now + lease);
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Leases {
    requests: Lease,
    bytes: Lease,
}

impl Leases {
    fn get(&mut self, kind: Kind) -> &mut Lease {
        match kind {
            Kind::Requests => &mut self.requests,
            Kind::Bytes => &mut self.bytes,
        }
    }
}

/// One bucket a request must draw from.
#[derive(Clone, Copy)]
struct Need<'a> {
    scope: Scope,
    key: &'a str,
    kind: Kind,
    rate: Rate,
    amount: f64,
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq)]
pub(super) enum Refused {
    /// The shared bucket of `scope` is empty; it holds enough in `wait` seconds.
    Over { scope: Scope, wait: f64 },
    /// Redis could not be asked; `on_unavailable` decides.
    Unavailable,
}

pub(super) struct SharedMetrics {
    calls: IntCounterVec,
    round_trip: Histogram,
    decisions_lease: IntCounter,
    decisions_redis: IntCounter,
    pub(super) unavailable: IntCounterVec,
    breaker_state: IntGauge,
}

impl SharedMetrics {
    pub(super) fn new(registry: &Registry) -> SharedMetrics {
        let calls = IntCounterVec::new(
            Opts::new(
                "switchyard_ratelimit_redis_calls_total",
                "Rate-limit script calls to Redis, by result (ok, error, timeout)",
            ),
            &["result"],
        )
        .expect("valid metric");
        let round_trip = Histogram::with_opts(
            HistogramOpts::new(
                "switchyard_ratelimit_redis_seconds",
                "Time of one rate-limit script call (the latency a request that needs one pays)",
            )
            .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
        )
        .expect("valid metric");
        let decisions = IntCounterVec::new(
            Opts::new(
                "switchyard_ratelimit_shared_decisions_total",
                "Requests charged to fleet-wide buckets, by where the tokens came from (lease: this replica's leased tokens, no round trip; redis: a script call)",
            ),
            &["path"],
        )
        .expect("valid metric");
        let unavailable = IntCounterVec::new(
            Opts::new(
                "switchyard_ratelimit_redis_unavailable_total",
                "Requests decided without Redis (breaker open, no connection, failed call), by on_unavailable mode",
            ),
            &["mode"],
        )
        .expect("valid metric");
        let breaker_state = IntGauge::new(
            "switchyard_ratelimit_redis_breaker_state",
            "The rate limits' Redis breaker: 0 closed, 1 open, 2 half-open",
        )
        .expect("valid metric");
        for c in [
            Box::new(calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(round_trip.clone()),
            Box::new(decisions.clone()),
            Box::new(unavailable.clone()),
            Box::new(breaker_state.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        SharedMetrics {
            calls,
            round_trip,
            decisions_lease: decisions.with_label_values(&["lease"]),
            decisions_redis: decisions.with_label_values(&["redis"]),
            unavailable,
            breaker_state,
        }
    }
}

/// The fleet-wide buckets of one process.
pub(super) struct Shared {
    cfg: SharedRateLimits,
    global: Option<BucketConfig>,
    per_principal: Option<BucketConfig>,
    per_model: HashMap<Arc<str>, BucketConfig>,
    other_models: Option<BucketConfig>,
    /// This replica's leases, by scope, by key.
    leases: [Mutex<HashMap<Arc<str>, Leases>>; 3],
    client: redis::Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    connecting: AtomicBool,
    breaker: Breaker,
    runtime: tokio::runtime::Handle,
    script_sha: String,
    pub(super) metrics: SharedMetrics,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Shared {
    /// Must be called inside the tokio runtime that drives the connection.
    pub(super) fn new(cfg: &RateLimits, shared: &SharedRateLimits, registry: &Registry) -> Result<Arc<Shared>, String> {
        let client = redis::Client::open(shared.url.as_str())
            .map_err(|e| format!("rate_limits.redis.url `{}`: {e}", shared.url))?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| "rate_limits.redis needs a tokio runtime")?;
        let metrics = SharedMetrics::new(registry);
        let mut per_model = HashMap::new();
        let mut other_models = None;
        for (m, b) in &cfg.per_model {
            if &**m == "*" {
                other_models = Some(*b);
            } else {
                per_model.insert(m.clone(), *b);
            }
        }
        let sha = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, SCRIPT.as_bytes());
        let s = Arc::new(Shared {
            cfg: shared.clone(),
            global: cfg.global,
            per_principal: cfg.per_principal,
            per_model,
            other_models,
            leases: Default::default(),
            client,
            conn: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            breaker: Breaker::new(
                "rate limits",
                shared.breaker_failures,
                shared.breaker_cooldown,
                metrics.breaker_state.clone(),
            ),
            runtime,
            script_sha: sha.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
            metrics,
        });
        s.connect_in_background();
        Ok(s)
    }

    /// Seconds a client refused for want of Redis should wait (the breaker's cool-down).
    pub(super) fn retry_after_unavailable(&self) -> u32 {
        self.breaker.cooldown().as_secs_f64().ceil().max(1.0) as u32
    }

    fn connect_in_background(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        self.runtime.spawn(async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(this.cfg.connect_timeout))
                .set_response_timeout(Some(this.cfg.timeout));
            let attempt = this.client.get_multiplexed_async_connection_with_config(&config);
            match tokio::time::timeout(this.cfg.connect_timeout, attempt).await {
                Ok(Ok(conn)) => this.conn.store(Some(Arc::new(conn))),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "rate limits: redis connect failed");
                    this.metrics.calls.with_label_values(&["error"]).inc();
                    this.breaker.failure();
                }
                Err(_) => {
                    this.metrics.calls.with_label_values(&["timeout"]).inc();
                    this.breaker.failure();
                }
            }
            this.connecting.store(false, Ordering::Release);
        });
    }

    /// Charges one request (when `request`) of `bytes` input bytes to every
    /// shared bucket it falls under.
    pub(super) async fn admit(
        self: &Arc<Self>,
        who: &str,
        model: &str,
        bytes: u64,
        request: bool,
    ) -> Result<(), Refused> {
        let mut needs: Vec<Need<'_>> = Vec::with_capacity(6);
        let model_cfg = self.per_model.get(model).or(self.other_models.as_ref());
        for (scope, key, cfg) in [
            (Scope::Global, "", self.global.as_ref()),
            (Scope::Principal, who, self.per_principal.as_ref()),
            (Scope::Model, model, model_cfg),
        ] {
            let Some(cfg) = cfg else { continue };
            if let (true, Some(rate)) = (request, cfg.requests) {
                needs.push(Need { scope, key, kind: Kind::Requests, rate, amount: 1.0 });
            }
            if let (Some(rate), true) = (cfg.bytes, bytes > 0) {
                needs.push(Need { scope, key, kind: Kind::Bytes, rate, amount: bytes as f64 });
            }
        }
        if needs.is_empty() {
            return Ok(());
        }
        if self.take_leased(&needs, Instant::now()) {
            self.metrics.decisions_lease.inc();
            return Ok(());
        }
        // Tokens short: one script call tops up every bucket that lacks them.
        let now = Instant::now();
        let mut asks = Vec::with_capacity(needs.len());
        for need in &needs {
            let held = self.with_lease(need, |l| l.available(now));
            if held < need.amount {
                let short = need.amount - held;
                asks.push((*need, short, short.max(self.lease_size(need.rate))));
            }
        }
        let answers = self.call(&asks).await?;
        self.metrics.decisions_redis.inc();
        let now = Instant::now();
        let mut refused: Option<(Scope, f64)> = None;
        for ((need, _, _), (granted, wait)) in asks.iter().zip(&answers) {
            if *granted > 0.0 {
                self.with_lease(need, |l| l.add(*granted, now, self.cfg.lease));
            } else if refused.is_none() {
                refused = Some((need.scope, *wait));
            }
        }
        if let Some((scope, wait)) = refused {
            return Err(Refused::Over { scope, wait });
        }
        if self.take_leased(&needs, now) {
            return Ok(());
        }
        // Granted, then spent by this replica's other requests in the meantime.
        let (scope, rate) = needs.first().map_or((Scope::Global, 1.0), |n| (n.scope, n.rate.per_second));
        Err(Refused::Over { scope, wait: 1.0 / rate })
    }

    /// Tokens to take ahead for a bucket of `rate`.
    fn lease_size(&self, rate: Rate) -> f64 {
        (rate.per_second * self.cfg.lease.as_secs_f64()).min(rate.burst * MAX_LEASE_SHARE).max(1.0)
    }

    fn with_lease<R>(&self, need: &Need<'_>, f: impl FnOnce(&mut Lease) -> R) -> R {
        let mut map = self.leases[need.scope.index()].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = map.get_mut(need.key) {
            return f(l.get(need.kind));
        }
        if map.len() >= MAX_LEASES {
            let now = Instant::now();
            map.retain(|_, l| l.requests.available(now) > 0.0 || l.bytes.available(now) > 0.0);
        }
        f(map.entry(Arc::from(need.key)).or_default().get(need.kind))
    }

    /// Takes every need from this replica's leases, or none of them.
    fn take_leased(&self, needs: &[Need<'_>], now: Instant) -> bool {
        for (i, need) in needs.iter().enumerate() {
            if !self.with_lease(need, |l| l.take(need.amount, now)) {
                for done in &needs[..i] {
                    self.with_lease(done, |l| l.tokens += done.amount);
                }
                return false;
            }
        }
        true
    }

    /// One script call: per ask, (tokens granted, seconds to wait when none).
    async fn call(self: &Arc<Self>, asks: &[(Need<'_>, f64, f64)]) -> Result<Vec<(f64, f64)>, Refused> {
        if !self.breaker.allow() {
            return Err(Refused::Unavailable);
        }
        let Some(conn) = self.conn.load_full() else {
            // A probe that finds no connection counts as failed instead of holding the half-open slot.
            self.breaker.no_connection();
            self.connect_in_background();
            return Err(Refused::Unavailable);
        };
        let prefix = &self.cfg.key_prefix;
        let keys: Vec<String> = asks
            .iter()
            .map(|(n, _, _)| {
                let kind = if n.kind == Kind::Requests { "r" } else { "b" };
                format!("{prefix}:rl:{}:{kind}:{}", n.scope.tag(), n.key)
            })
            .collect();
        let args: Vec<f64> =
            asks.iter().flat_map(|(n, need, want)| [n.rate.per_second, n.rate.burst, *need, *want]).collect();
        let eval = |name: &str, first: &str| {
            let mut c = redis::cmd(name);
            c.arg(first).arg(keys.len()).arg(&keys).arg(&args);
            c
        };
        let mut c = (*conn).clone();
        let t0 = Instant::now();
        let run = async {
            match eval("EVALSHA", &self.script_sha).query_async::<Vec<(String, String)>>(&mut c).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    // EVAL also caches the script for the next EVALSHA.
                    eval("EVAL", SCRIPT).query_async::<Vec<(String, String)>>(&mut c).await
                }
                r => r,
            }
        };
        let result = tokio::time::timeout(self.cfg.timeout, run).await;
        self.metrics.round_trip.observe(t0.elapsed().as_secs_f64());
        let parse = |s: &str| s.parse::<f64>().ok().filter(|v| v.is_finite()).unwrap_or(0.0);
        match result {
            Ok(Ok(rows)) if rows.len() == asks.len() => {
                self.metrics.calls.with_label_values(&["ok"]).inc();
                self.breaker.success();
                Ok(rows.iter().map(|(g, w)| (parse(g), parse(w))).collect())
            }
            Ok(Ok(_)) | Ok(Err(_)) => {
                if let Ok(Err(e)) = &result {
                    tracing::debug!(error = %e, "rate limits: redis call failed");
                }
                self.metrics.calls.with_label_values(&["error"]).inc();
                // A multiplexed connection whose server went away fails every call: reconnect off the request path.
                let _ = self.conn.compare_and_swap(&Some(conn), None);
                self.connect_in_background();
                self.breaker.failure();
                Err(Refused::Unavailable)
            }
            Err(_) => {
                self.metrics.calls.with_label_values(&["timeout"]).inc();
                self.breaker.failure();
                Err(Refused::Unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_lapse_and_never_go_negative() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        assert!(!l.take(1.0, t0), "no lease, no tokens");
        l.add(3.0, t0, Duration::from_millis(100));
        assert!(l.take(2.0, t0 + Duration::from_millis(50)));
        assert!(!l.take(2.0, t0 + Duration::from_millis(50)), "one token left");
        assert!(!l.take(1.0, t0 + Duration::from_millis(101)), "lapsed");
        // A new grant does not resurrect lapsed tokens.
        l.add(1.0, t0 + Duration::from_millis(200), Duration::from_millis(100));
        assert_eq!(l.available(t0 + Duration::from_millis(200)), 1.0);
        // A zero-length lease is spent by the request that took it, at the same instant.
        let mut z = Lease::default();
        z.add(1.0, t0, Duration::ZERO);
        assert!(z.take(1.0, t0));
    }
}
