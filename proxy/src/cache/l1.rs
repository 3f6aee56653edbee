//! L1: answers in process, bounded by bytes (quick_cache's S3-FIFO with a
//! byte weigher), each with its own expiry checked on read.
//!
//! quick_cache has no timer wheel: an expired entry is dropped when it is
//! next read, or evicted by the byte bound like any cold entry. That keeps
//! the hit path to one sharded read lock, one hash probe and an `Arc` clone.
//!
//! An entry keeps its answer's V2 JSON body too (`JsonForm`), less the two
//! fields that are the request's own (`model_name`, `id`): a V2 JSON
//! client's hit is those spliced around a copy of the stored bytes, not an
//! encoding of the tensors every time.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use prometheus::IntCounter;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use switchyard_runtime::codec::v2;
use switchyard_runtime::tensor::RawJson;
use switchyard_runtime::InferResponse;

/// Bytes an entry costs beyond its tensors (key, `Arc`, the response's vectors).
const ENTRY_OVERHEAD: u64 = 160;
/// Expected mean entry size, for sizing the cache's tables.
const TYPICAL_ENTRY_BYTES: u64 = 4096;

/// Largest V2 JSON body an entry keeps beside its tensors: past it a hit is
/// encoded as before (the copy would cost as much, and memory twice over).
const MAX_JSON_FORM: usize = 256 * 1024;

pub struct L1Entry {
    /// The stored answer: no `model_name`, no `id` (both are the request's).
    pub response: InferResponse,
    /// Its V2 JSON body, when it fits `MAX_JSON_FORM`.
    pub json: Option<JsonForm>,
    pub expires: Instant,
    pub weight: u64,
    /// The model's eviction counter.
    pub evictions: IntCounter,
}

impl L1Entry {
    /// An entry of `response` (a stored answer: empty `model_name`, no `id`).
    pub fn new(response: InferResponse, expires: Instant, evictions: IntCounter) -> L1Entry {
        let json = JsonForm::of(&response);
        let weight = L1Entry::weigh(&response) + json.as_ref().map_or(0, |j| j.len() as u64);
        L1Entry { response, json, expires, weight, evictions }
    }

    /// Bytes held by an answer: its tensors, names and the fixed overhead.
    pub fn weigh(resp: &InferResponse) -> u64 {
        ENTRY_OVERHEAD
            + resp.outputs.iter().map(|t| (t.data.len() + t.name.len() + 8 * t.shape.len() + 64) as u64).sum::<u64>()
    }

    /// The answer for a request of model `model` and id `id`: the tensors are
    /// refcounted bytes; with a JSON form, `raw_json` is the body a V2 JSON
    /// client gets (the lifecycle drops it where anything else is wanted).
    pub fn answer(&self, model: &str, id: Option<&str>) -> InferResponse {
        let mut r = self.response.clone();
        if let Some(j) = &self.json {
            r.model_name = model.to_owned();
            r.id = id.map(str::to_owned);
            r.raw_json = Some(RawJson::decoded(j.body(model, id)));
        }
        r
    }
}

/// A stored answer's V2 JSON body as `v2::encode_response` writes it, cut
/// where the request's own fields go: `{"model_name":` NAME VERSION
/// [`,"id":` ID] TAIL. Made only when the encoder's bytes are laid out so
/// (checked), so a hit's body is byte for byte a fresh encoding's.
pub struct JsonForm {
    /// `,"model_version":"…"`, or empty.
    version: Bytes,
    /// Parameters, outputs, the closing brace.
    tail: Bytes,
}

impl JsonForm {
    fn of(resp: &InferResponse) -> Option<JsonForm> {
        if !resp.model_name.is_empty() || resp.id.is_some() {
            return None;
        }
        // Encoded with an empty id, so the cut after it can be found.
        let probe = InferResponse { id: Some(String::new()), ..shallow(resp) };
        let body = v2::encode_response(&probe, |_| false).ok()?.body;
        if body.len() > MAX_JSON_FORM {
            return None;
        }
        let mut head = br#"{"model_name":"""#.to_vec();
        let name_end = head.len();
        if let Some(v) = &resp.model_version {
            head.extend_from_slice(br#","model_version":"#);
            serde_json::to_writer(&mut head, v).ok()?;
        }
        let version_end = head.len();
        head.extend_from_slice(br#","id":"""#);
        if !body.starts_with(&head) {
            return None;
        }
        Some(JsonForm { version: body.slice(name_end..version_end), tail: body.slice(head.len()..) })
    }

    fn len(&self) -> usize {
        self.version.len() + self.tail.len()
    }

    /// The body for model `model` and request id `id`.
    fn body(&self, model: &str, id: Option<&str>) -> Bytes {
        let len = 14 + json_len(model) + self.version.len() + id.map_or(0, |i| 6 + json_len(i)) + self.tail.len();
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(br#"{"model_name":"#);
        put_json_str(&mut b, model);
        b.extend_from_slice(&self.version);
        if let Some(id) = id {
            b.extend_from_slice(br#","id":"#);
            put_json_str(&mut b, id);
        }
        b.extend_from_slice(&self.tail);
        Bytes::from(b)
    }
}

/// The response without its tensors' bytes copied (they are refcounted) and
/// without the raw body, for encoding.
fn shallow(r: &InferResponse) -> InferResponse {
    InferResponse {
        model_name: String::new(),
        model_version: r.model_version.clone(),
        id: None,
        parameters: r.parameters.clone(),
        outputs: r.outputs.clone(),
        raw_json: None,
    }
}

/// Whether serde_json writes `s` as its bytes between two quotes (nothing to escape).
fn plain(s: &str) -> bool {
    s.bytes().all(|c| c >= 0x20 && c != b'"' && c != b'\\')
}

/// Bytes of `s` as a JSON string; exact when `plain`, an estimate otherwise.
fn json_len(s: &str) -> usize {
    if plain(s) {
        s.len() + 2
    } else {
        2 * s.len() + 2
    }
}

fn put_json_str(b: &mut Vec<u8>, s: &str) {
    if plain(s) {
        b.push(b'"');
        b.extend_from_slice(s.as_bytes());
        b.push(b'"');
    } else {
        serde_json::to_writer(&mut *b, s).expect("a str serialises");
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
        Arc::new(L1Entry::new(response, Instant::now() + ttl, ev.clone()))
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

    /// A hit's spliced body is exactly what encoding the answer for that request gives.
    #[test]
    fn json_form_matches_a_fresh_encoding() {
        let mut params = switchyard_runtime::tensor::Parameters::new();
        params.insert("note".into(), serde_json::json!("x"));
        let y = Tensor::new("y", DataType::Fp32, vec![1, 2], Bytes::from(vec![0, 0, 128, 63, 0, 0, 0, 64]));
        for version in [None, Some("3".to_string()), Some("a\"b".to_string())] {
            for parameters in [Default::default(), params.clone()] {
                let stored = InferResponse {
                    model_version: version.clone(),
                    parameters,
                    outputs: vec![y.clone()],
                    ..InferResponse::default()
                };
                let e = L1Entry::new(stored.clone(), Instant::now(), IntCounter::new("e", "e").unwrap());
                assert!(e.json.is_some());
                for (model, id) in [("mlp", None), ("m", Some("req-1")), ("q\"uote\n", Some("\u{1}é"))] {
                    let got = e.answer(model, id);
                    let want = InferResponse { model_name: model.into(), id: id.map(Into::into), ..stored.clone() };
                    let fresh = v2::encode_response(&want, |_| false).unwrap().body;
                    assert_eq!(
                        got.raw_json.as_ref().map(|r| &r.body[..]),
                        Some(&fresh[..]),
                        "{model} {id:?} {version:?}"
                    );
                    assert_eq!(InferResponse { raw_json: None, ..got }, want);
                }
            }
        }
    }

    #[test]
    fn large_answers_keep_no_json_form() {
        let big = InferResponse {
            outputs: vec![Tensor::new("y", DataType::Fp32, vec![100_000], Bytes::from(vec![0u8; 400_000]))],
            ..InferResponse::default()
        };
        let e = L1Entry::new(big, Instant::now(), IntCounter::new("e", "e").unwrap());
        assert!(e.json.is_none());
        assert!(e.answer("m", None).raw_json.is_none());
    }
}
