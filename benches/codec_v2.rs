//! Micro benchmark of the V2 REST codec on the bodies of
//! `benches/run proxy` (a ~1 KB FP32 [1,64] request as Python clients
//! write it, a small FP32 [1,10] response): per operation, nanoseconds and heap
//! allocations. No criterion: meant to run under callgrind for deterministic
//! instruction counts, where wall time on a shared machine is noise.
//!
//!     cargo bench --bench codec_v2 -- [OP] [ITERS]
//!     valgrind --tool=callgrind --toggle-collect='codec_v2::measured' \
//!       target/release/deps/codec_v2-* decode_request 10000
//!
//! OP is one of `decode_request`, `decode_request_data_first`,
//! `encode_request_json`, `encode_request_binary`, `decode_response`,
//! `encode_response`, `proxy_json` (decode request, encode it for a JSON
//! backend, decode the backend's answer, encode it for the client: the
//! codec work of one proxied request), `check_request` / `check_response`
//! (the one-pass checks of the relaying fast path, no tensors built),
//! `relay_json` (both checks: the codec work of one request on that path),
//! or `all` (default: each in turn).
//! Prints `op iters ns_per_op allocs_per_op`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use switchyard_runtime::codec::v2;
use switchyard_runtime::{InferRequest, InferResponse};

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

/// What `benches/run` sends as `request.json` (json.dumps defaults).
const REQUEST: &str = r#"{"id": "bench-1", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [-1.33755036, -1.07621022, -0.0316639641, 0.568910648, -0.396671404, -1.96154756, -0.368151481, 0.625586514, -0.940664597, -1.93547621, 0.227379343, 0.225284263, -0.530081963, 0.656339122, -0.508221692, -0.377764791, 0.872623899, 0.172253746, 0.0801200302, 0.842657984, -0.591333865, 0.349346821, 1.37561157, -0.228875742, -0.120324458, -0.961052038, 1.75873016, -0.754385424, 0.033817102, 1.57495564, 1.22500464, -0.440374334, -0.667687112, 0.707712459, 0.622224157, -1.06813385, 1.39843098, -0.603600972, 0.615297382, -1.34666278, -0.636163639, 0.627085661, 1.49831042, -0.39407911, -0.372122184, 0.248783604, -1.36810693, 0.808125199, -1.00309478, 1.79358668, 1.01156338, 0.908794118, -0.144484975, -0.328224724, -0.793340833, -1.2601088, -0.363595881, -1.56852368, -0.803051499, -2.59678289, 0.768780429, -0.472454078, -2.36380524, -0.638615912]}], "outputs": [{"name": "output"}]}"#;
const RESPONSE: &str = r#"{"model_name":"mlp","model_version":"1","id":"bench-1","outputs":[{"name":"output","shape":[1,10],"datatype":"FP32","data":[0.0298776,2.831088,0.6617957,-4.783355,-0.8189006,0.4112349,0.6978393,-6.637157,3.828298,-3.131191]}]}"#;

struct Inputs {
    request: Bytes,
    request_data_first: Bytes,
    response: Bytes,
    decoded_request: InferRequest,
    decoded_response: InferResponse,
}

impl Inputs {
    fn new() -> Inputs {
        let request = Bytes::from_static(REQUEST.as_bytes());
        let response = Bytes::from_static(RESPONSE.as_bytes());
        // Same tensor, `data` before `datatype` (the order no common client writes).
        let data_first = REQUEST
            .replace(r#""shape": [1, 64], "datatype": "FP32", "data""#, r#""data""#)
            .replace(r#"]}], "outputs""#, r#"], "shape": [1, 64], "datatype": "FP32"}], "outputs""#);
        let decoded_request = v2::decode_request(&request, None).expect("request decodes");
        let request_data_first = Bytes::from(data_first);
        let again = v2::decode_request(&request_data_first, None).expect("data-first request decodes");
        assert_eq!(again, decoded_request, "both key orders give the same request");
        let decoded_response = v2::decode_response(&response, None).expect("response decodes");
        Inputs { request, request_data_first, response, decoded_request, decoded_response }
    }
}

const OPS: [&str; 10] = [
    "decode_request",
    "decode_request_data_first",
    "encode_request_json",
    "encode_request_binary",
    "decode_response",
    "encode_response",
    "proxy_json",
    "check_request",
    "check_response",
    "relay_json",
];

fn one(op: &str, x: &Inputs) {
    match op {
        "decode_request" => drop(black_box(v2::decode_request(black_box(&x.request), None))),
        "decode_request_data_first" => drop(black_box(v2::decode_request(black_box(&x.request_data_first), None))),
        "encode_request_json" => drop(black_box(v2::encode_request(black_box(&x.decoded_request), false))),
        "encode_request_binary" => drop(black_box(v2::encode_request(black_box(&x.decoded_request), true))),
        "decode_response" => drop(black_box(v2::decode_response(black_box(&x.response), None))),
        "encode_response" => drop(black_box(v2::encode_response(black_box(&x.decoded_response), |_| false))),
        "proxy_json" => {
            let req = v2::decode_request(black_box(&x.request), None).expect("request");
            let enc = v2::encode_request(&req, false).expect("encodes");
            black_box(&enc.body);
            let resp = v2::decode_response(black_box(&x.response), None).expect("response");
            let prefs = req.outputs.clone();
            let out = v2::encode_response(&resp, |n| prefs.iter().any(|o| o.name == n && o.binary == Some(true)))
                .expect("encodes");
            black_box(out.body);
        }
        "check_request" => drop(black_box(v2::check_request(black_box(&x.request)))),
        "check_response" => drop(black_box(v2::check_response(black_box(&x.response)))),
        "relay_json" => {
            drop(black_box(v2::check_request(black_box(&x.request)).expect("request")));
            drop(black_box(v2::check_response(black_box(&x.response)).expect("response")));
        }
        other => panic!("unknown op `{other}`; one of {OPS:?} or all"),
    }
}

/// The measured loop: `--toggle-collect` this under callgrind.
#[inline(never)]
fn measured(op: &str, x: &Inputs, iters: u64) {
    for _ in 0..iters {
        one(op, x);
    }
}

fn main() {
    // `cargo bench` appends `--bench`; ignore flags.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let op = args.first().map_or("all", String::as_str);
    let iters: u64 = args.get(1).map_or(20_000, |s| s.parse().expect("ITERS is a number"));
    let x = Inputs::new();
    let ops: Vec<&str> = if op == "all" { OPS.to_vec() } else { vec![op] };
    for op in ops {
        one(op, &x); // warm-up, and an unknown op fails before timing
        let a0 = ALLOCS.load(Ordering::Relaxed);
        let t0 = Instant::now();
        measured(op, &x, iters);
        let ns = t0.elapsed().as_nanos() as f64 / iters as f64;
        let allocs = (ALLOCS.load(Ordering::Relaxed) - a0) as f64 / iters as f64;
        println!("{op}\t{iters}\t{ns:.0}\t{allocs:.2}");
    }
}
