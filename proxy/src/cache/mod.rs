//! The response cache (docs/cache.md): owns the L1 (in process, bounded by
//! bytes), the L2 (Redis, behind a timeout and a breaker), single-flight of
//! identical misses, and the per-variant state that keeps a new model version
//! from ever serving an older one's answers.
//!
//! It sits in `pipeline::infer`, after routing (a key includes the
//! variant, so one variant's answer is never served for another) and before
//! the batch queue, for every protocol alike. It is generic over what it
//! stores (`Stored`: the pipeline's outcome), so it names no other module of
//! the data plane.

pub mod entry;
pub mod flight;
pub mod key;
pub mod l1;
pub mod l2;
pub mod metrics;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use http::HeaderValue;
use switchyard_config::{BackendConfig, CacheConfig, CachePolicy, VariantConfig};
use switchyard_runtime::{Backend, InferRequest, InferResponse, ModelTarget};

use self::flight::{Flights, Join};
use self::key::{CacheKey, ModelTag};
use self::l1::{L1Entry, L1};
use self::l2::{Lookup, L2};
use self::metrics::{CacheMetrics, ModelCacheMetrics};

/// What the cache coalesces and replays: the outcome of running a request,
/// success or failure. Only successes are stored (their response).
pub trait Stored: Clone + Send + Sync + 'static {
    /// The response to store, when this outcome is a success.
    fn response(&self) -> Option<&InferResponse>;
    /// The outcome of answering from a tier of the cache.
    fn hit(response: InferResponse, status: CacheStatus) -> Self;
    /// This outcome, saying where the answer came from.
    fn with_status(self, status: CacheStatus) -> Self;
    /// The copy a coalesced follower gets of its leader's outcome.
    fn replayed(&self) -> Self;
}

/// Where an answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    HitL1,
    HitL2,
    /// From the backend (or from an identical request's backend call in flight).
    Miss,
    /// The lookup was skipped (`cache-control: no-cache`/`no-store`, a sequence request).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::HitL1 => "hit-l1",
            CacheStatus::HitL2 => "hit-l2",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}

/// What the client's `cache-control` asks of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Directive {
    /// `no-cache`: skip the lookup, store the fresh answer.
    pub no_cache: bool,
    /// `no-store`: skip the lookup and do not store.
    pub no_store: bool,
}

impl Directive {
    /// Parses a `cache-control` value (HTTP header or gRPC metadata).
    pub fn from_header(value: Option<&[u8]>) -> Directive {
        let mut d = Directive::default();
        let Some(v) = value.and_then(|v| std::str::from_utf8(v).ok()) else { return d };
        for part in v.split(',') {
            let part = part.trim();
            if part.eq_ignore_ascii_case("no-cache") {
                d.no_cache = true;
            } else if part.eq_ignore_ascii_case("no-store") {
                d.no_store = true;
            }
        }
        d
    }
}

/// (route, variant) names.
type RouteVariant = (Arc<str>, Arc<str>);

/// Per-variant state that outlives routing snapshots while the variant's config is unchanged.
struct VariantState {
    seed: u128,
    /// Changed by `invalidate_model`: entries of earlier epochs are never read again.
    epoch: AtomicU64,
    /// `observed_tag` of the `model_version` remote answers last reported; 0 = none yet.
    observed: AtomicU64,
}

/// The process's cache: both tiers, the flights in progress, the metrics.
pub struct ResponseCache<T: Stored> {
    l1: Option<L1>,
    l2: Option<Arc<L2>>,
    l2_prefix: String,
    flights: Flights<T>,
    metrics: CacheMetrics,
    states: Mutex<HashMap<RouteVariant, Arc<VariantState>>>,
}

impl<T: Stored> ResponseCache<T> {
    /// Builds the tiers of `cfg`; with Redis configured it must run inside the
    /// tokio runtime that will drive Redis connections (it outlives the cache).
    pub fn new(cfg: &CacheConfig, registry: &prometheus::Registry) -> Result<Arc<ResponseCache<T>>, String> {
        let metrics = CacheMetrics::new(registry);
        let l2 = cfg.redis.as_ref().map(|r| L2::new(r, metrics.l2())).transpose()?;
        Ok(Arc::new(ResponseCache {
            l1: L1::new(cfg.l1_max_bytes),
            l2,
            l2_prefix: cfg.redis.as_ref().map(|r| r.key_prefix.clone()).unwrap_or_default(),
            flights: Flights::default(),
            metrics,
            states: Mutex::new(HashMap::new()),
        }))
    }

    /// The cache handle of one variant of route `route`, or `None` when the variant is not cached.
    pub fn variant(
        self: &Arc<Self>,
        route: &Arc<str>,
        v: &VariantConfig,
        backend: Option<&BackendConfig>,
    ) -> Option<VariantCache<T>> {
        let policy = v.cache.clone().filter(|_| v.deterministic)?;
        let backend_cfg = format!("{backend:?}");
        let seed = key::variant_seed(&[
            route.as_bytes(),
            v.name.as_bytes(),
            v.backend.as_bytes(),
            v.model.as_deref().unwrap_or("\u{0}").as_bytes(),
            v.version.as_deref().unwrap_or("\u{0}").as_bytes(),
            backend_cfg.as_bytes(),
        ]);
        let state = {
            let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
            let slot = states.entry((route.clone(), v.name.clone())).or_insert_with(|| {
                Arc::new(VariantState { seed, epoch: AtomicU64::new(0), observed: AtomicU64::new(0) })
            });
            // A changed config is a different model as far as the cache knows: new keys, versions learnt anew.
            if slot.seed != seed {
                *slot = Arc::new(VariantState { seed, epoch: AtomicU64::new(0), observed: AtomicU64::new(0) });
            }
            slot.clone()
        };
        Some(VariantCache {
            cache: self.clone(),
            l2: policy.l2 && self.l2.is_some(),
            policy,
            route: route.clone(),
            state,
            metrics: self.metrics.model(route),
        })
    }

    /// Stops serving every cached answer of `model` (a route name): its
    /// variants move to a new epoch at once, and its Redis entries are deleted
    /// in the background (standalone Redis). Returns the variants affected.
    pub fn invalidate_model(&self, model: &str) -> usize {
        static SALT: AtomicU64 = AtomicU64::new(1);
        let states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let mut n = 0;
        for ((route, _), s) in states.iter().filter(|((r, _), _)| r.as_ref() == model) {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            let salt = SALT.fetch_add(1, Ordering::Relaxed);
            let fresh = xxhash_rust::xxh3::xxh3_64(&[nanos.to_le_bytes(), salt.to_le_bytes()].concat()) | 1;
            s.epoch.store(fresh, Ordering::Release);
            tracing::info!(model = %route, "cache invalidated");
            n += 1;
        }
        drop(states);
        if let Some(l2) = &self.l2 {
            l2.purge_in_background(format!("{}:{}:*", self.l2_prefix, l2::glob_escape(model)));
        }
        n
    }

    fn l2_key(&self, route: &str, key: CacheKey) -> String {
        format!("{}:{}:{}", self.l2_prefix, route, key.hex())
    }

    /// Calls waiting on a backend answer now (for tests and status).
    pub fn flights_in_progress(&self) -> usize {
        self.flights.len()
    }
}

/// The cache as one variant sees it, resolved when a routing snapshot is built.
pub struct VariantCache<T: Stored> {
    cache: Arc<ResponseCache<T>>,
    policy: CachePolicy,
    l2: bool,
    route: Arc<str>,
    state: Arc<VariantState>,
    metrics: ModelCacheMetrics,
}

/// The parts of a key that are fixed for one request.
struct KeyParts<'a> {
    model: &'a str,
    target: &'a ModelTarget,
    epoch: u64,
    digest: u128,
}

impl KeyParts<'_> {
    fn key(&self, seed: u128, tag: ModelTag) -> CacheKey {
        key::full_key(seed, self.model, self.target, tag, self.epoch, self.digest)
    }
}

impl<T: Stored> VariantCache<T> {
    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// Answers `req` from the cache or through `run` (the batch queue or the
    /// backend), storing what `run` returns. `model` is the client's model name.
    pub async fn serve<F, Fut>(
        &self,
        backend: &dyn Backend,
        target: &ModelTarget,
        model: &str,
        req: InferRequest,
        directive: Directive,
        run: F,
    ) -> T
    where
        F: FnOnce(InferRequest) -> Fut,
        Fut: Future<Output = T>,
    {
        if directive.no_store || key::is_sequence(&req) {
            self.metrics.bypass.inc();
            return run(req).await.with_status(CacheStatus::Bypass);
        }
        let parts = KeyParts {
            model,
            target,
            epoch: self.state.epoch.load(Ordering::Acquire),
            digest: key::request_digest(&req),
        };
        let tag = match backend.model_identity(target) {
            Some(id) => ModelTag::Identity(id),
            None => ModelTag::Observed(self.state.observed.load(Ordering::Acquire)),
        };
        let key = parts.key(self.state.seed, tag);
        // Until a remote answer has said which version serves, nothing can be looked up safely.
        let unknown_version = tag == ModelTag::Observed(0);
        if directive.no_cache || unknown_version {
            let status = if directive.no_cache {
                self.metrics.bypass.inc();
                CacheStatus::Bypass
            } else {
                self.metrics.miss_l1.inc();
                CacheStatus::Miss
            };
            let r = run(req).await;
            if let Some(resp) = r.response() {
                self.fill(backend, &parts, tag, key, resp);
            }
            return r.with_status(status);
        }
        if let Some(l1) = &self.cache.l1 {
            if let Some(e) = l1.get(key.0, Instant::now()) {
                self.metrics.hit_l1.inc();
                return T::hit(e.answer(model, req.id.as_deref()), CacheStatus::HitL1);
            }
            self.metrics.miss_l1.inc();
        }
        loop {
            match self.cache.flights.join(key.0) {
                Join::Follower(f) => match f.wait().await {
                    Ok(outcome) => {
                        self.metrics.coalesced.inc();
                        return outcome.replayed();
                    }
                    // The leader was cancelled: look again, maybe lead.
                    Err(flight::LeaderGone) => continue,
                },
                Join::Leader(lead) => {
                    if let Some((resp, expires)) = self.l2_get(key).await {
                        if self.cache.l1.is_some() {
                            self.fill_l1(key, resp.clone(), expires);
                        }
                        let out = T::hit(resp, CacheStatus::HitL2);
                        lead.finish(Arc::new(out.clone()));
                        return out;
                    }
                    let r = run(req).await.with_status(CacheStatus::Miss);
                    if let Some(resp) = r.response() {
                        self.fill(backend, &parts, tag, key, resp);
                    }
                    lead.finish(Arc::new(r.clone()));
                    return r;
                }
            }
        }
    }

    async fn l2_get(&self, key: CacheKey) -> Option<(InferResponse, Instant)> {
        let l2 = self.cache.l2.as_ref().filter(|_| self.l2)?;
        match l2.get(&self.cache.l2_key(&self.route, key)).await {
            Lookup::Hit(bytes) => match entry::decode(bytes) {
                Some((resp, expires_ms)) => {
                    self.metrics.hit_l2.inc();
                    // The L1 copy lives no longer than the Redis entry (clocks of replicas may differ a little).
                    let left = std::time::Duration::from_millis(expires_ms.saturating_sub(unix_ms()));
                    Some((resp, Instant::now() + left.min(self.policy.ttl)))
                }
                None => {
                    tracing::warn!(model = %self.route, "undecodable cache entry in redis; ignored");
                    self.metrics.miss_l2.inc();
                    None
                }
            },
            Lookup::Miss => {
                self.metrics.miss_l2.inc();
                None
            }
            Lookup::Unavailable => None,
        }
    }

    /// Stores a fresh answer under the key of the model that actually gave it.
    fn fill(&self, backend: &dyn Backend, parts: &KeyParts<'_>, tag: ModelTag, key: CacheKey, resp: &InferResponse) {
        let key = match tag {
            // The version may have changed during the call: store only if it provably did not.
            ModelTag::Identity(id) => {
                if backend.model_identity(parts.target) != Some(id) {
                    return;
                }
                key
            }
            ModelTag::Observed(before) => {
                let now = key::observed_tag(resp.model_version.as_deref());
                if now == before {
                    key
                } else {
                    self.state.observed.store(now, Ordering::Release);
                    tracing::debug!(model = %self.route, version = ?resp.model_version, "cache learnt the serving version");
                    parts.key(self.state.seed, ModelTag::Observed(now))
                }
            }
        };
        let data: usize = resp.outputs.iter().map(|t| t.data.len()).sum();
        if data > self.policy.max_entry_bytes {
            self.metrics.too_big.inc();
            return;
        }
        let stored = InferResponse {
            model_name: String::new(),
            model_version: resp.model_version.clone(),
            id: None,
            parameters: resp.parameters.clone(),
            outputs: resp.outputs.clone(),
            raw_json: None,
        };
        let expires = Instant::now() + self.policy.ttl;
        if self.l2 {
            if let Some(l2) = &self.cache.l2 {
                let value = entry::encode(&stored, unix_ms() + self.policy.ttl.as_millis() as u64);
                self.metrics.stored_l2.inc_by(value.len() as u64);
                l2.set_in_background(self.cache.l2_key(&self.route, key), value, self.policy.ttl);
            }
        }
        self.fill_l1(key, stored, expires);
    }

    /// `resp`: a stored answer (no `model_name`, no `id`).
    fn fill_l1(&self, key: CacheKey, resp: InferResponse, expires: Instant) {
        let Some(l1) = &self.cache.l1 else { return };
        let entry = Arc::new(L1Entry::new(resp, expires, self.metrics.evicted_l1.clone()));
        let weight = entry.weight;
        l1.insert(key.0, entry);
        self.metrics.stored_l1.inc_by(weight);
        self.cache.metrics.l1_bytes.set(l1.weight() as i64);
        self.cache.metrics.l1_entries.set(l1.len() as i64);
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_parse() {
        assert_eq!(Directive::from_header(None), Directive::default());
        assert_eq!(Directive::from_header(Some(b"No-Cache")), Directive { no_cache: true, no_store: false });
        assert_eq!(Directive::from_header(Some(b"max-age=0, no-store")), Directive { no_cache: false, no_store: true });
        assert_eq!(Directive::from_header(Some(b"private")), Directive::default());
    }
}
