//! Prometheus metrics of the response cache; per-model handles are resolved
//! when a routing snapshot is built, so lookups only bump atomics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::l2::L2Metrics;

#[derive(Clone)]
pub struct CacheMetrics {
    hits: IntCounterVec,
    misses: IntCounterVec,
    bypass: IntCounterVec,
    coalesced: IntCounterVec,
    evictions: IntCounterVec,
    stored_bytes: IntCounterVec,
    too_big: IntCounterVec,
    pub l1_bytes: IntGauge,
    pub l1_entries: IntGauge,
    redis_errors: IntCounterVec,
    redis_skipped: IntCounter,
    breaker_state: IntGauge,
}

/// Handles of one model (route).
#[derive(Clone)]
pub struct ModelCacheMetrics {
    pub hit_l1: IntCounter,
    pub hit_l2: IntCounter,
    pub miss_l1: IntCounter,
    pub miss_l2: IntCounter,
    pub bypass: IntCounter,
    pub coalesced: IntCounter,
    pub evicted_l1: IntCounter,
    pub stored_l1: IntCounter,
    pub stored_l2: IntCounter,
    pub too_big: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("cache metrics are registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("cache metrics are registered once");
    g
}

impl CacheMetrics {
    pub fn new(registry: &Registry) -> CacheMetrics {
        let redis_skipped = IntCounter::new(
            "switchyard_cache_redis_skipped_total",
            "L2 calls not made because the breaker was open or no connection was up",
        )
        .expect("valid metric");
        registry.register(Box::new(redis_skipped.clone())).expect("cache metrics are registered once");
        CacheMetrics {
            hits: counter_vec(
                registry,
                "switchyard_cache_hits_total",
                "Answers served from the cache",
                &["tier", "model"],
            ),
            misses: counter_vec(
                registry,
                "switchyard_cache_misses_total",
                "Cache lookups that found nothing",
                &["tier", "model"],
            ),
            bypass: counter_vec(
                registry,
                "switchyard_cache_bypass_total",
                "Requests of cached variants that skipped the lookup (cache-control, sequences)",
                &["model"],
            ),
            coalesced: counter_vec(
                registry,
                "switchyard_cache_coalesced_total",
                "Misses that waited for an identical request's backend call instead of making their own",
                &["model"],
            ),
            evictions: counter_vec(
                registry,
                "switchyard_cache_evictions_total",
                "Entries evicted by the byte bound",
                &["tier", "model"],
            ),
            stored_bytes: counter_vec(
                registry,
                "switchyard_cache_stored_bytes_total",
                "Bytes written to the cache",
                &["tier", "model"],
            ),
            too_big: counter_vec(
                registry,
                "switchyard_cache_too_big_total",
                "Answers not cached because they exceed max_entry_bytes",
                &["model"],
            ),
            l1_bytes: gauge(registry, "switchyard_cache_l1_bytes", "Bytes held by the in-process cache"),
            l1_entries: gauge(registry, "switchyard_cache_l1_entries", "Entries in the in-process cache"),
            redis_errors: counter_vec(
                registry,
                "switchyard_cache_redis_errors_total",
                "Failed Redis calls, by kind (timeout, error, connect)",
                &["kind"],
            ),
            redis_skipped,
            breaker_state: gauge(
                registry,
                "switchyard_cache_redis_breaker_state",
                "L2 circuit breaker: 0 closed, 1 open, 2 half-open (one probe)",
            ),
        }
    }

    pub fn model(&self, model: &str) -> ModelCacheMetrics {
        ModelCacheMetrics {
            hit_l1: self.hits.with_label_values(&["l1", model]),
            hit_l2: self.hits.with_label_values(&["l2", model]),
            miss_l1: self.misses.with_label_values(&["l1", model]),
            miss_l2: self.misses.with_label_values(&["l2", model]),
            bypass: self.bypass.with_label_values(&[model]),
            coalesced: self.coalesced.with_label_values(&[model]),
            evicted_l1: self.evictions.with_label_values(&["l1", model]),
            stored_l1: self.stored_bytes.with_label_values(&["l1", model]),
            stored_l2: self.stored_bytes.with_label_values(&["l2", model]),
            too_big: self.too_big.with_label_values(&[model]),
        }
    }

    pub fn l2(&self) -> L2Metrics {
        L2Metrics {
            errors: self.redis_errors.clone(),
            skipped: self.redis_skipped.clone(),
            breaker_state: self.breaker_state.clone(),
        }
    }
}
