//! Fleet-wide statistics as mergeable counters: a replica adds each interval
//! of its live stats (requests, errors, latency sum, the fixed latency
//! buckets, shadow counts) to one Redis hash per variant, so the hash holds
//! the union of every replica's samples — quantiles come from the merged
//! buckets, never from percentiles of percentiles. A/B tests get hashes of
//! their own, added to only while the test runs. Each publish carries a
//! sequence number and is applied at most once (`ADD_STATS` in `fleet`).

use std::collections::HashMap;

use switchyard_stats::{ShadowSnapshot, Snapshot, BUCKETS};

/// The non-zero counters of a delta, as hash fields and increments.
pub fn fields(d: &Snapshot) -> Vec<(String, u64)> {
    let s = &d.shadow;
    let mut out: Vec<(String, u64)> = [
        ("r", d.requests),
        ("e", d.errors),
        ("s", d.latency_us_sum),
        ("sm", s.mirrored),
        ("sf", s.failed),
        ("sd", s.dropped),
        ("sc", s.compared_rows),
        ("sa", s.agreeing_rows),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(f, n)| (f.to_string(), n))
    .collect();
    out.extend(d.buckets.iter().enumerate().filter(|(_, n)| **n > 0).map(|(i, n)| (format!("b{i}"), *n)));
    out
}

/// One counter hash to add a delta to.
pub struct Entry {
    pub key: String,
    pub ttl: std::time::Duration,
    pub delta: Snapshot,
}

/// The entries of one publish as the `ADD_STATS` script reads them.
pub fn encode(entries: &[Entry]) -> String {
    let list: Vec<serde_json::Value> = entries
        .iter()
        .map(|e| {
            let f: Vec<[String; 2]> = fields(&e.delta).into_iter().map(|(f, n)| [f, n.to_string()]).collect();
            serde_json::json!({
                "k": e.key,
                "t": (e.ttl.as_millis() as u64).to_string(),
                "m": e.delta.shadow.max_abs_error.to_string(),
                "f": f,
            })
        })
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// Whether a delta holds anything to add.
pub fn is_empty(d: &Snapshot) -> bool {
    fields(d).is_empty()
}

/// A hash's counters as a cumulative snapshot (missing fields are 0).
pub fn snapshot_of(h: &HashMap<String, String>) -> Snapshot {
    let n = |f: &str| h.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut buckets = vec![0u64; BUCKETS];
    for (k, v) in h {
        if let Some(i) = k.strip_prefix('b').and_then(|i| i.parse::<usize>().ok()) {
            if i < BUCKETS {
                buckets[i] = v.parse().unwrap_or(0);
            }
        }
    }
    Snapshot {
        requests: n("r"),
        errors: n("e"),
        latency_us_sum: n("s"),
        buckets,
        shadow: ShadowSnapshot {
            mirrored: n("sm"),
            failed: n("sf"),
            dropped: n("sd"),
            compared_rows: n("sc"),
            agreeing_rows: n("sa"),
            max_abs_error: h.get("mx").and_then(|v| v.parse().ok()).unwrap_or(0.0),
        },
        // Levels, not counters (drift, feedback quality): each replica's own, never summed.
        ..Snapshot::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn served(latencies_ms: &[u64], errors: usize) -> Snapshot {
        let s = switchyard_stats::LiveStats::default();
        for (i, ms) in latencies_ms.iter().enumerate() {
            s.record(Duration::from_millis(*ms), i < errors);
        }
        s.snapshot()
    }

    /// Adds fields the way Redis's HINCRBY does.
    fn add(h: &mut HashMap<String, String>, d: &Snapshot) {
        for (f, n) in fields(d) {
            let v = h.get(&f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + n;
            h.insert(f, v.to_string());
        }
    }

    #[test]
    fn merged_counters_equal_the_union_of_the_samples() {
        let (a, b) = ([1, 2, 3, 50], [5, 7, 400]);
        let mut h = HashMap::new();
        add(&mut h, &served(&a, 1));
        add(&mut h, &served(&b, 2));
        let union: Vec<u64> = a.iter().chain(b.iter()).copied().collect();
        let mut want = served(&union, 3);
        // Error flags are per-sample: 1 of a's and 2 of b's failed.
        want.errors = 3;
        let got = snapshot_of(&h);
        assert_eq!((got.requests, got.errors, got.latency_us_sum), (7, 3, want.latency_us_sum));
        assert_eq!(got.buckets, want.buckets);
        assert_eq!(got.quantile_ms(0.99), want.quantile_ms(0.99));
        assert!(is_empty(&Snapshot::default()));
    }
}
