//! Micro benchmark of content routing (`proxy::routing::rules`): what trying
//! a route's rules costs a request, beside the weighted pick it precedes, per
//! operation in nanoseconds and heap allocations. Four rules as
//! `examples/content-routing.yaml` writes them (headers, protocol, path,
//! parameters); requests that match the first rule, the last, or none.
//! Like `codec_v2`, no criterion: wall time on a shared machine is noise, so
//! compare the rows of one run, and the allocation counts (which must be 0).
//!
//!     cargo bench --bench route_rules -- [ITERS]
//!
//! Prints `op iters ns_per_op allocs_per_op`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use http::{HeaderMap, HeaderValue};
use serde_json::json;
use switchyard_config::ValidatedConfig;
use switchyard_proxy::protocol::{Param, Protocol};
use switchyard_proxy::routing::rules::{Facts, Rules, Verdict};
use switchyard_proxy::routing::select::{Arm, Picker};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MODELS: &str = r#"
backends:
  b: {kind: v2-http, endpoints: ['http://127.0.0.1:1']}
models:
  mlp:
    rules:
      - name: gold-tenant
        match: {headers: {x-tenant: [gold, platinum]}}
        variant: gold
      - name: tf-signature
        match: {protocol: [tfserving-rest, tfserving-grpc], parameters: {signature_name: v2}}
        model: other
      - name: batch-jobs
        match: {protocol: v2-grpc, headers: {x-job: {present: true}}}
        variant: batch
      - name: experiment
        match: {path: "/v2/models/mlp/*", parameters: {experiment: {prefix: next}}}
        model: other
    variants:
      - {name: v1, backend: b, weight: 50}
      - {name: v2, backend: b, weight: 50}
      - {name: gold, backend: b, weight: 0}
      - {name: batch, backend: b, weight: 0}
  other:
    variants: [{name: main, backend: b}]
"#;

fn measure(op: &str, iters: u64, mut f: impl FnMut() -> bool) {
    let mut hits = 0u64;
    let a0 = ALLOCS.load(Ordering::Relaxed);
    let t0 = Instant::now();
    for _ in 0..iters {
        hits += u64::from(black_box(f()));
    }
    let ns = t0.elapsed().as_nanos() as f64 / iters as f64;
    let allocs = (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / iters as f64;
    println!("{op} {iters} {ns:.1} {allocs:.3} (matched {hits})");
}

fn main() {
    let iters: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let cfg = ValidatedConfig::parse(MODELS, Path::new(".")).expect("valid config");
    let m = &cfg.models["mlp"];
    let names: Vec<&str> = m.variants.iter().map(|v| v.name.as_ref()).collect();
    let counter = prometheus::IntCounter::new("c", "c").unwrap();
    let rules = Rules::build("mlp", &m.rules, &names, |_| counter.clone()).expect("rules");
    let picker = Picker::new(
        "mlp".into(),
        m.variants.iter().map(|v| Arm::new(v.name.clone(), v.weight, v.version.clone())).collect(),
    );
    let mut plain = HeaderMap::new();
    plain.insert("content-type", HeaderValue::from_static("application/json"));
    plain.insert("user-agent", HeaderValue::from_static("python-requests/2.32"));
    plain.insert("x-user-id", HeaderValue::from_static("user-1234"));
    let mut gold = plain.clone();
    gold.insert("x-tenant", HeaderValue::from_static("platinum"));
    let path = "/v2/models/mlp/infer";
    let experiment = json!("next-7");
    let params = |n: &str| (n == "experiment").then(|| Param::from_json(&experiment)).flatten();
    let none = |_: &str| None;
    let matched = |v: Verdict<'_>| matches!(v, Verdict::Matched(_));

    measure("pick_sticky", iters, || picker.pick("mlp", None, None, Some(b"user-1234")).is_ok());
    measure("rules_first_matches", iters, || {
        matched(rules.evaluate(&Facts { protocol: Protocol::V2Http, path: Some(path), headers: &gold }, None))
    });
    measure("rules_last_matches", iters, || {
        matched(rules.evaluate(&Facts { protocol: Protocol::V2Http, path: Some(path), headers: &plain }, Some(&params)))
    });
    measure("rules_none_match", iters, || {
        matched(rules.evaluate(&Facts { protocol: Protocol::V2Http, path: Some(path), headers: &plain }, Some(&none)))
    });
    measure("rules_asks_for_parameters", iters, || {
        let v = rules.evaluate(&Facts { protocol: Protocol::V2Http, path: Some(path), headers: &plain }, None);
        matches!(v, Verdict::NeedsParameters)
    });
}
