//! Route selection, as a pure function of the request: which arm (variant)
//! of a route serves it, from the weights, the versions arms pin, the
//! variant-override header and the sticky key; and which requests are
//! mirrored to shadow arms. No backends, queues or metrics: testable alone.
//!
//! Sticky A/B without randomness: a hash of (route, sticky key) is a point in
//! [0,1) walked along the cumulative weights. Keyless requests take the next
//! step of a golden-ratio Weyl sequence, so shares follow the weights far
//! more closely than chance would.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

/// Golden-ratio step of the Weyl sequence that spreads keyless requests.
const WEYL_STEP: u64 = 0x9E37_79B9_7F4A_7C15;
/// √2−1 step of the per-arm sequence that samples shadow mirrors: jointly
/// equidistributed with `WEYL_STEP`, so which requests are mirrored does not
/// depend on which variant served them.
const SHADOW_STEP: u64 = 0x6A09_E667_F3BC_C908;

/// One arm of a route, as selection sees it.
pub struct Arm {
    pub name: Arc<str>,
    pub weight: f64,
    /// The version this arm pins, if any: a client naming it lands here.
    pub version: Option<Arc<str>>,
    shadow_counter: AtomicU64,
}

impl Arm {
    pub fn new(name: Arc<str>, weight: f64, version: Option<Arc<str>>) -> Arm {
        Arm { name, weight, version, shadow_counter: AtomicU64::new(0) }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    UnknownModel(String),
    UnknownVariant { model: String, variant: String, known: String },
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Triton's words, which clients match on; the detail after them is Switchyard's.
            RouteError::UnknownModel(m) => {
                write!(f, "Request for unknown model: '{m}' is not found (no route for it in Switchyard's config)")
            }
            RouteError::UnknownVariant { model, variant, known } => {
                write!(f, "model '{model}' has no variant '{variant}' (variants: {known})")
            }
        }
    }
}

/// The selection state of one route: its arms and the keyless sequence.
pub struct Picker {
    route: Arc<str>,
    arms: Vec<Arm>,
    counter: AtomicU64,
}

impl Picker {
    /// A picker over `arms` (at least one; config validation guarantees it).
    pub fn new(route: Arc<str>, arms: Vec<Arm>) -> Picker {
        assert!(!arms.is_empty(), "a route has at least one variant");
        Picker { route, arms, counter: AtomicU64::new(0) }
    }

    pub fn arms(&self) -> &[Arm] {
        &self.arms
    }

    /// The arm for one request: the override when given, else among the arms
    /// pinning `version` when some do, else among all, by weight.
    pub fn pick(
        &self,
        model: &str,
        version: Option<&str>,
        override_variant: Option<&[u8]>,
        sticky: Option<&[u8]>,
    ) -> Result<usize, RouteError> {
        if let Some(want) = override_variant {
            return self.arms.iter().position(|a| a.name.as_bytes() == want).ok_or_else(|| {
                RouteError::UnknownVariant {
                    model: model.to_string(),
                    variant: String::from_utf8_lossy(want).into_owned(),
                    known: self.arms.iter().map(|a| a.name.as_ref()).collect::<Vec<_>>().join(", "),
                }
            });
        }
        let u = self.point(sticky);
        let idx = match version.filter(|v| self.arms.iter().any(|a| a.version.as_deref() == Some(*v))) {
            Some(v) => self.walk(u, (0..self.arms.len()).filter(move |&i| self.arms[i].version.as_deref() == Some(v))),
            None => self.walk(u, 0..self.arms.len()),
        };
        Ok(idx.unwrap_or(0))
    }

    /// Maps a point in [0,1) onto the cumulative weights of the candidates;
    /// when every candidate weighs 0, the first of them.
    fn walk(&self, u: f64, candidates: impl Iterator<Item = usize> + Clone) -> Option<usize> {
        let total: f64 = candidates.clone().map(|i| self.arms[i].weight).sum();
        if total <= 0.0 {
            return candidates.clone().next();
        }
        let target = u * total;
        let mut acc = 0.0;
        let mut last = None;
        for i in candidates {
            let w = self.arms[i].weight;
            if w <= 0.0 {
                continue;
            }
            acc += w;
            last = Some(i);
            if target < acc {
                return Some(i);
            }
        }
        last
    }

    /// The point in [0,1) that places this request.
    fn point(&self, sticky: Option<&[u8]>) -> f64 {
        let bits = match sticky {
            Some(key) => {
                // Hash (route, 0xff, key) from a stack buffer: no allocation for keys up to ~200 bytes.
                let name = self.route.as_bytes();
                let n = name.len() + 1 + key.len();
                let mut buf = [0u8; 256];
                if n <= buf.len() {
                    buf[..name.len()].copy_from_slice(name);
                    buf[name.len()] = 0xff;
                    buf[name.len() + 1..n].copy_from_slice(key);
                    xxh3_64(&buf[..n])
                } else {
                    xxh3_64(&[name, &[0xff], key].concat())
                }
            }
            None => self.counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(WEYL_STEP),
        };
        unit(bits)
    }

    /// Whether this request is mirrored to shadow arm `idx`, which takes `percent` of them.
    pub fn sample_shadow(&self, idx: usize, percent: f64) -> bool {
        sample(&self.arms[idx].shadow_counter, percent)
    }
}

fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Deterministic sampling of `percent` of the calls: a Weyl sequence per counter.
fn sample(counter: &AtomicU64, percent: f64) -> bool {
    unit(counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(SHADOW_STEP)) * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// The split of the routing tests: stable 90 (v1), canary 10 (v2), dark 0.
    fn split() -> Picker {
        Picker::new(
            "mlp".into(),
            vec![
                Arm::new("stable".into(), 90.0, Some("1".into())),
                Arm::new("canary".into(), 10.0, Some("2".into())),
                Arm::new("dark".into(), 0.0, None),
            ],
        )
    }

    fn name(p: &Picker, i: usize) -> &str {
        &p.arms()[i].name
    }

    #[test]
    fn keyless_requests_follow_weights_and_never_hit_a_zero_arm() {
        let p = split();
        let mut counts: HashMap<&str, u32> = HashMap::new();
        for _ in 0..10_000 {
            *counts.entry(name(&p, p.pick("mlp", None, None, None).unwrap())).or_default() += 1;
        }
        assert_eq!(counts.get("dark"), None);
        // 3σ of a binomial(10k, 0.9) is 90; the sequence does far better.
        assert!((counts["stable"] as f64 - 9000.0).abs() < 90.0, "{counts:?}");
    }

    #[test]
    fn sticky_keys_stay_put_and_spread_by_weight() {
        let p = split();
        let mut canary = 0;
        for i in 0..10_000 {
            let key = format!("user-{i}");
            let first = p.pick("mlp", None, None, Some(key.as_bytes())).unwrap();
            for _ in 0..3 {
                assert_eq!(p.pick("mlp", None, None, Some(key.as_bytes())).unwrap(), first);
            }
            canary += (name(&p, first) == "canary") as u32;
            assert_ne!(name(&p, first), "dark");
        }
        assert!((canary as f64 - 1000.0).abs() < 90.0, "canary share {canary}");
        // A key longer than the stack buffer hashes the same way every time.
        let long = vec![b'k'; 1000];
        let a = p.pick("mlp", None, None, Some(&long)).unwrap();
        assert!((0..20).all(|_| p.pick("mlp", None, None, Some(&long)).unwrap() == a));
    }

    #[test]
    fn override_and_pinned_versions() {
        let p = split();
        assert_eq!(name(&p, p.pick("mlp", None, Some(b"dark"), Some(b"k")).unwrap()), "dark");
        let e = p.pick("mlp", None, Some(b"nope"), None).unwrap_err();
        assert_eq!(e.to_string(), "model 'mlp' has no variant 'nope' (variants: stable, canary, dark)");
        for _ in 0..50 {
            assert_eq!(name(&p, p.pick("mlp", Some("2"), None, None).unwrap()), "canary");
        }
        // A version no arm pins goes to the weighted pick.
        let mut seen: HashMap<&str, u32> = HashMap::new();
        for _ in 0..100 {
            *seen.entry(name(&p, p.pick("mlp", Some("7"), None, None).unwrap())).or_default() += 1;
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
    }

    #[test]
    fn all_zero_weights_pick_the_first_candidate() {
        let p = Picker::new("m".into(), vec![Arm::new("a".into(), 0.0, None), Arm::new("b".into(), 0.0, None)]);
        assert!((0..10).all(|_| p.pick("m", None, None, None).unwrap() == 0));
    }

    #[test]
    fn shadow_sampling_matches_the_percentage_and_ignores_the_split() {
        let c = AtomicU64::new(0);
        let hits = (0..10_000).filter(|_| sample(&c, 10.0)).count();
        assert!((950..=1050).contains(&hits), "{hits}");
        // The keyless split uses the golden-ratio sequence; mirror sampling
        // must hit both halves of it alike.
        let route = AtomicU64::new(0);
        let shadow = AtomicU64::new(0);
        let mut per_half = [0u32; 2];
        for _ in 0..10_000 {
            let first_half = unit(route.fetch_add(1, Ordering::Relaxed).wrapping_mul(WEYL_STEP)) < 0.5;
            if sample(&shadow, 50.0) {
                per_half[first_half as usize] += 1;
            }
        }
        assert!(per_half.iter().all(|&n| (2300..=2700).contains(&n)), "{per_half:?}");
    }
}
