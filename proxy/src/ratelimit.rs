//! Rate limits: token buckets, global, per principal (per client IP address
//! when auth is off) and per model, on requests and optionally on input
//! bytes, checked after authorization and before the request is decoded. A
//! refused request costs nothing; a request refused by a later bucket gets
//! back what earlier ones charged it. By default each process enforces its
//! own buckets (`Local`); with `rate_limits.redis` the buckets are shared by
//! the fleet (`shared`), and `on_unavailable` says what happens while Redis
//! cannot answer: this process's own buckets, no limit, or refusal.

mod shared;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::{IntCounter, Registry};
use switchyard_config::{Bucket as BucketConfig, Rate, RateLimits, Unavailable};

use crate::error::{Error, ErrorKind};
use shared::{Refused, Scope, Shared};

/// Above this many per-principal (or per-model) buckets, full ones are dropped:
/// a full bucket is the same as none, so forgetting it changes nothing.
const MAX_IDLE_BUCKETS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: Rate, now: Instant) -> TokenBucket {
        TokenBucket { rate, tokens: rate.burst, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate.per_second).min(self.rate.burst);
        self.at = now;
    }

    /// Takes `n`, or says in how many seconds it could.
    fn take(&mut self, n: f64, now: Instant) -> Result<(), f64> {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err((n - self.tokens) / self.rate.per_second)
        }
    }

    fn give_back(&mut self, n: f64) {
        self.tokens = (self.tokens + n).min(self.rate.burst);
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.rate.burst
    }
}

/// A bucket for requests and one for bytes, as configured.
#[derive(Debug, Clone, Copy)]
struct Pair {
    requests: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Pair {
    fn new(cfg: &BucketConfig, now: Instant) -> Pair {
        Pair {
            requests: cfg.requests.map(|r| TokenBucket::new(r, now)),
            bytes: cfg.bytes.map(|r| TokenBucket::new(r, now)),
        }
    }

    fn take(&mut self, bytes: u64, now: Instant) -> Result<(), f64> {
        if let Some(r) = &mut self.requests {
            r.take(1.0, now)?;
        }
        if let Some(b) = &mut self.bytes {
            if let Err(wait) = b.take(bytes as f64, now) {
                if let Some(r) = &mut self.requests {
                    r.give_back(1.0);
                }
                return Err(wait);
            }
        }
        Ok(())
    }

    fn give_back(&mut self, bytes: u64) {
        if let Some(r) = &mut self.requests {
            r.give_back(1.0);
        }
        if let Some(b) = &mut self.bytes {
            b.give_back(bytes as f64);
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.requests.as_mut().is_none_or(|b| b.is_full(now)) && self.bytes.as_mut().is_none_or(|b| b.is_full(now))
    }
}

/// Buckets made on first use, one per key.
#[derive(Debug)]
struct Keyed {
    cfg: BucketConfig,
    buckets: Mutex<HashMap<Arc<str>, Pair>>,
}

impl Keyed {
    fn new(cfg: BucketConfig) -> Keyed {
        Keyed { cfg, buckets: Mutex::new(HashMap::new()) }
    }

    fn with<R>(&self, key: &str, now: Instant, f: impl FnOnce(&mut Pair) -> R) -> R {
        let mut map = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= MAX_IDLE_BUCKETS {
            map.retain(|_, p| !p.is_full(now));
        }
        let pair = map.entry(Arc::from(key)).or_insert_with(|| Pair::new(&self.cfg, now));
        f(pair)
    }
}

/// Every configured bucket, in this process.
#[derive(Debug)]
struct Local {
    global: Option<Mutex<Pair>>,
    per_principal: Option<Keyed>,
    per_model: HashMap<Arc<str>, Mutex<Pair>>,
    /// `per_model."*"`: a bucket for each model not named.
    other_models: Option<Keyed>,
    /// Largest byte cost any bucket can ever grant (its smallest burst).
    max_bytes: Option<f64>,
}

/// The process's rate limits: fleet-wide when `rate_limits.redis` is set, else local.
#[derive(Debug)]
pub struct RateLimiter {
    local: Local,
    shared: Option<Arc<Shared>>,
    on_unavailable: Unavailable,
    /// Requests decided without Redis, for this process's `on_unavailable` mode.
    unavailable: Option<IntCounter>,
}

impl RateLimiter {
    /// `None` when nothing is limited. With `rate_limits.redis`, must be
    /// called inside the tokio runtime that drives the Redis connection
    /// (connecting happens there, never on a request).
    pub fn new(cfg: &RateLimits, registry: &Registry) -> Result<Option<RateLimiter>, String> {
        let Some(local) = Local::new(cfg) else { return Ok(None) };
        let (shared, on_unavailable) = match &cfg.redis {
            Some(r) => (Some(Shared::new(cfg, r, registry)?), r.on_unavailable),
            None => (None, Unavailable::Local),
        };
        let unavailable = shared.as_ref().map(|s| s.metrics.unavailable.with_label_values(&[on_unavailable.as_str()]));
        Ok(Some(RateLimiter { local, shared, on_unavailable, unavailable }))
    }

    /// Whether any bucket counts bytes (a request of unknown size is charged once it is read).
    pub fn counts_bytes(&self) -> bool {
        self.local.max_bytes.is_some()
    }

    /// Charges one request of `bytes` input bytes to the global bucket, `who`'s
    /// and `model`'s; 429 with the seconds to wait when one is empty.
    pub async fn admit(&self, who: &str, model: &str, bytes: u64) -> Result<(), Error> {
        self.charge(who, model, bytes, true).await
    }

    /// Charges only `bytes` (a body whose size was learnt when it was read).
    pub async fn admit_bytes(&self, who: &str, model: &str, bytes: u64) -> Result<(), Error> {
        self.charge(who, model, bytes, false).await
    }

    async fn charge(&self, who: &str, model: &str, bytes: u64, request: bool) -> Result<(), Error> {
        let Some(shared) = &self.shared else { return self.local.charge(who, model, bytes, request) };
        self.local.check_size(bytes)?;
        match shared.admit(who, model, bytes, request).await {
            Ok(()) => Ok(()),
            Err(Refused::Over { scope, wait }) => Err(refused(scope, wait, who, model)),
            Err(Refused::Unavailable) => {
                if let Some(c) = &self.unavailable {
                    c.inc();
                }
                match self.on_unavailable {
                    Unavailable::Local => self.local.charge(who, model, bytes, request),
                    Unavailable::Open => Ok(()),
                    Unavailable::Closed => Err(Error::overloaded(
                        shared.retry_after_unavailable(),
                        "the fleet-wide rate limits cannot be checked (Redis is unavailable) and rate_limits.redis.on_unavailable is closed",
                    )),
                }
            }
        }
    }
}

impl Local {
    /// `None` when nothing is limited.
    fn new(cfg: &RateLimits) -> Option<Local> {
        if cfg.global.is_none() && cfg.per_principal.is_none() && cfg.per_model.is_empty() {
            return None;
        }
        let now = Instant::now();
        let mut per_model = HashMap::new();
        let mut other_models = None;
        for (m, b) in &cfg.per_model {
            if &**m == "*" {
                other_models = Some(Keyed::new(*b));
            } else {
                per_model.insert(m.clone(), Mutex::new(Pair::new(b, now)));
            }
        }
        let bursts = cfg.global.iter().chain(cfg.per_principal.iter()).chain(cfg.per_model.values());
        let max_bytes = bursts.filter_map(|b| b.bytes.map(|r| r.burst)).reduce(f64::min);
        Some(Local {
            global: cfg.global.map(|b| Mutex::new(Pair::new(&b, now))),
            per_principal: cfg.per_principal.map(Keyed::new),
            per_model,
            other_models,
            max_bytes,
        })
    }

    /// 413 for a request no bucket could ever admit (larger than the smallest byte burst).
    fn check_size(&self, bytes: u64) -> Result<(), Error> {
        match self.max_bytes {
            Some(max) if bytes as f64 > max => Err(Error::too_large(format!(
                "a request of {bytes} input bytes exceeds the smallest bytes_burst of rate_limits ({max}); it could never be admitted"
            ))),
            _ => Ok(()),
        }
    }

    fn charge(&self, who: &str, model: &str, bytes: u64, request: bool) -> Result<(), Error> {
        self.check_size(bytes)?;
        let now = Instant::now();
        let take = |p: &mut Pair| {
            if request {
                p.take(bytes, now)
            } else {
                match &mut p.bytes {
                    Some(b) => b.take(bytes as f64, now),
                    None => Ok(()),
                }
            }
        };
        let give = |p: &mut Pair| {
            if request {
                p.give_back(bytes)
            } else if let Some(b) = &mut p.bytes {
                b.give_back(bytes as f64)
            }
        };

        if let Some(g) = &self.global {
            take(&mut lock(g)).map_err(|w| refused(Scope::Global, w, who, model))?;
        }
        let refund_global = || {
            if let Some(g) = &self.global {
                give(&mut lock(g));
            }
        };
        if let Some(p) = &self.per_principal {
            if let Err(w) = p.with(who, now, take) {
                refund_global();
                return Err(refused(Scope::Principal, w, who, model));
            }
        }
        let model_result = match (self.per_model.get(model), &self.other_models) {
            (Some(m), _) => take(&mut lock(m)),
            (None, Some(k)) => k.with(model, now, take),
            (None, None) => Ok(()),
        };
        if let Err(w) = model_result {
            refund_global();
            if let Some(p) = &self.per_principal {
                p.with(who, now, give);
            }
            return Err(refused(Scope::Model, w, who, model));
        }
        Ok(())
    }
}

fn lock(m: &Mutex<Pair>) -> std::sync::MutexGuard<'_, Pair> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn refused(scope: Scope, wait_secs: f64, who: &str, model: &str) -> Error {
    let retry_after = wait_secs.ceil().clamp(1.0, 3600.0) as u32;
    let what = match scope {
        Scope::Global => "the global rate limit".to_string(),
        Scope::Principal => format!("the rate limit of '{who}'"),
        Scope::Model => format!("the rate limit of model '{model}'"),
    };
    Error::new(ErrorKind::RateLimited { retry_after }, format!("over {what}; retry after {retry_after}s"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn rate(per_second: f64, burst: f64) -> Option<Rate> {
        Some(Rate { per_second, burst })
    }

    #[test]
    fn buckets_refill_and_refuse_with_a_wait() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate { per_second: 2.0, burst: 3.0 }, t0);
        for _ in 0..3 {
            b.take(1.0, t0).unwrap();
        }
        let wait = b.take(1.0, t0).unwrap_err();
        assert!((wait - 0.5).abs() < 1e-9, "{wait}");
        b.take(1.0, t0 + std::time::Duration::from_millis(500)).unwrap();
        // Never above the burst, however long idle.
        assert!(b.is_full(t0 + std::time::Duration::from_secs(3600)));
        assert_eq!(b.tokens, 3.0);
    }

    #[test]
    fn scopes_are_separate_and_refunded() {
        let mut per_model = BTreeMap::new();
        per_model.insert(Arc::from("hot"), BucketConfig { requests: rate(1e-6, 1.0), bytes: None });
        per_model.insert(Arc::from("*"), BucketConfig { requests: rate(1e-6, 2.0), bytes: None });
        let cfg = RateLimits {
            global: Some(BucketConfig { requests: rate(1e-6, 100.0), bytes: rate(1e-6, 1000.0) }),
            per_principal: Some(BucketConfig { requests: rate(1e-6, 3.0), bytes: None }),
            per_model,
            redis: None,
        };
        let rl = Local::new(&cfg).unwrap();
        let admit = |who: &str, model: &str, bytes: u64| rl.charge(who, model, bytes, true);
        admit("alice", "hot", 10).unwrap();
        let e = admit("alice", "hot", 10).unwrap_err();
        assert!(matches!(e.kind, ErrorKind::RateLimited { .. }) && e.message.contains("model 'hot'"), "{e:?}");
        // alice's bucket got its token back: two more on other models pass, then hers is empty.
        admit("alice", "a", 10).unwrap();
        admit("alice", "b", 10).unwrap();
        assert!(admit("alice", "c", 10).unwrap_err().message.contains("'alice'"));
        // Every other model has its own bucket of 2; bob has his own of 3.
        admit("bob", "a", 10).unwrap();
        assert!(admit("bob", "a", 10).unwrap_err().message.contains("model 'a'"));
        // Bytes: the global byte bucket had 1000, minus 40 charged (refunds included).
        assert!(admit("carol", "z", 961).unwrap_err().message.contains("global"));
        admit("carol", "z", 960).unwrap();
        assert_eq!(admit("dave", "z", 5000).unwrap_err().kind, ErrorKind::TooLarge);
        assert!(Local::new(&RateLimits::default()).is_none());
    }
}
