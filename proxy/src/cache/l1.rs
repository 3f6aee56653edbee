//! L1: answers in process, bounded by bytes (quick_cache's S3-FIFO with a
//! byte weigher), each with its own expiry checked on read.
//!
//! quick_cache has no timer wheel: an expired entry is dropped when it is
//! next read, or evicted by the byte bound like any cold entry. That keeps
//! the hit path to one sharded read lock, one hash probe and an `Arc` clone.

use std::sync::Arc;
use std::time::Instant;

use prometheus::IntCounter;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use switchyard_runtime::InferResponse;

/// Bytes an entry costs beyond its tensors (key, `Arc`, the response's vectors).
const ENTRY_OVERHEAD: u64 = 160;
/// Expected mean entry size, for sizing the cache's tables.
const TYPICAL_ENTRY_BYTES: u64 = 4096;

pub struct L1Entry {
    pub response: InferResponse,
    pub expires: Instant,
    pub weight: u64,
    /// The model's eviction counter.
    pub evictions: IntCounter,
}

impl L1Entry {
    /// Bytes held by an answer: its tensors, names and the fixed overhead.
    pub fn weigh(resp: &InferResponse) -> u64 {
        ENTRY_OVERHEAD
            + resp.outputs.iter().map(|t| (t.data.len() + t.name.len() + 8 * t.shape.len() + 64) as u64).sum::<u64>()
    }
}

#[derive(Clone)]
struct ByBytes;

impl Weighter<u128, Arc<L1Entry>> for ByBytes {
    fn weight(&self, _key: &u128, val: &Arc<L1Entry>) -> u64 {
        val.weight
    }
}

/// Counts evictions; evicted entries are dropped after the shard lock is released.
#[derive(Clone)]
struct CountEvictions;

impl Lifecycle<u128, Arc<L1Entry>> for CountEvictions {
    type RequestState = Vec<Arc<L1Entry>>;

    fn on_evict(&self, state: &mut Self::RequestState, _key: u128, val: Arc<L1Entry>) {
        val.evictions.inc();
        state.push(val);
    }
}

pub struct L1 {
    cache: Cache<u128, Arc<L1Entry>, ByBytes, DefaultHashBuilder, CountEvictions>,
    max_bytes: u64,
}

impl L1 {
    /// `None` when `max_bytes` is 0 (L1 off).
    pub fn new(max_bytes: u64) -> Option<L1> {
        if max_bytes == 0 {
            return None;
        }
        let options = OptionsBuilder::new()
            .estimated_items_capacity((max_bytes / TYPICAL_ENTRY_BYTES).clamp(16, 1 << 22) as usize)
            .weight_capacity(max_bytes)
            .build()
            .expect("valid cache options");
        Some(L1 {
            cache: Cache::with_options(options, ByBytes, DefaultHashBuilder::default(), CountEvictions),
            max_bytes,
        })
    }

    /// A live entry; an expired one is removed and reported as absent.
    pub fn get(&self, key: u128, now: Instant) -> Option<Arc<L1Entry>> {
        let e = self.cache.get(&key)?;
        if e.expires > now {
            return Some(e);
        }
        self.cache.remove_if(&key, |v| Arc::ptr_eq(v, &e));
        None
    }

    pub fn insert(&self, key: u128, entry: Arc<L1Entry>) {
        self.cache.insert(key, entry);
    }

    /// Bytes held now (never above `max_bytes`).
    pub fn weight(&self) -> u64 {
        self.cache.weight()
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use switchyard_runtime::{DataType, Tensor};

    use super::*;

    fn entry(bytes: usize, ttl: Duration, ev: &IntCounter) -> Arc<L1Entry> {
        let response = InferResponse {
            outputs: vec![Tensor::new("y", DataType::Uint8, vec![bytes as i64], Bytes::from(vec![7u8; bytes]))],
            ..InferResponse::default()
        };
        let weight = L1Entry::weigh(&response);
        Arc::new(L1Entry { response, expires: Instant::now() + ttl, weight, evictions: ev.clone() })
    }

    #[test]
    fn expiry_and_byte_bound() {
        let ev = IntCounter::new("e", "e").unwrap();
        let l1 = L1::new(64 * 1024).unwrap();
        l1.insert(1, entry(100, Duration::from_secs(60), &ev));
        l1.insert(2, entry(100, Duration::ZERO, &ev));
        assert!(l1.get(1, Instant::now()).is_some());
        assert!(l1.get(2, Instant::now()).is_none(), "expired entries are misses");
        assert!(l1.get(1, Instant::now() + Duration::from_secs(61)).is_none());
        for k in 10..2000u128 {
            l1.insert(k, entry(1000, Duration::from_secs(60), &ev));
            assert!(l1.weight() <= 64 * 1024, "over the bound: {}", l1.weight());
        }
        assert!(ev.get() > 0, "the byte bound evicts");
        assert!(l1.len() < 1990);
    }
}
