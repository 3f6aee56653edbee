//! The response cache against the built binary: the embedded runtime (mlp),
//! a counting V2 test backend, and a real `redis-server` started per test.
//!
//! Covered: L1 hits across V2 JSON, V2 binary and gRPC (one key for the same
//! tensors), `cache-control`, non-deterministic variants, TTL, the byte
//! bound, single-flight of 1000 concurrent identical misses, L2 hits (and L2
//! filling L1), Redis killed / frozen mid-load with zero failed requests,
//! recovery after a Redis restart, and no stale answer after a version change
//! (hot-added version, variant config change).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fault::FaultBackend;
use common::mlp::{
    cache_status as status, infer, input as mlp_input, json_body, probabilities, CACHE_HEADER as CACHE, INFER,
};
use common::redis::Redis;
use common::{repo_root, Switchyard, TempDir};
use serde_json::{json, Value};

use switchyard_runtime::codec::grpc::pb;
use tonic::transport::{Channel, Endpoint};

type GrpcClient = pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>;

fn binary_body(seed: usize) -> (Vec<u8>, usize) {
    let header = json!({
        "inputs": [{"name": "input", "shape": [2, 16], "datatype": "FP32", "parameters": {"binary_data_size": 128}}],
        "parameters": {"binary_data_output": false}
    })
    .to_string();
    let mut body = header.as_bytes().to_vec();
    body.extend(mlp_input(2, seed).iter().flat_map(|x| x.to_le_bytes()));
    (body, header.len())
}

/// An onnx backend `ex` over `repo` and the `mlp` route with `variant` (a flow mapping's inside).
fn embedded(repo: &Path, policy: &str, cache: &str, variant: &str) -> String {
    format!(
        "{cache}backends:\n  ex:\n    kind: onnx\n    repository: {}\n    version_policy: {policy}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{{variant}}}\n",
        repo.display()
    )
}

fn examples() -> std::path::PathBuf {
    repo_root().join("examples/models")
}

async fn grpc_client(port: u16) -> GrpcClient {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect to the gRPC listener");
    GrpcClient::new(ch)
}

fn grpc_request(seed: usize, raw: bool) -> pb::ModelInferRequest {
    let x = mlp_input(2, seed);
    pb::ModelInferRequest {
        model_name: "mlp".into(),
        id: "g".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![2, 16],
            parameters: Default::default(),
            contents: (!raw).then(|| pb::InferTensorContents { fp32_contents: x.clone(), ..Default::default() }),
        }],
        raw_input_contents: if raw {
            vec![Bytes::from(x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())]
        } else {
            vec![]
        },
        ..Default::default()
    }
}

#[tokio::test]
async fn l1_serves_json_binary_and_grpc_from_one_entry() {
    let cfg = embedded(&examples(), "{latest: 1}", "", "name: main, backend: ex, cache: {ttl: 60s}");
    // A second, non-deterministic route that must never be cached.
    let cfg = format!(
        "{cfg}  noisy:\n    cache: {{ttl: 60s}}\n    variants:\n      - {{name: n, backend: ex, model: mlp, deterministic: false}}\n"
    );
    let sy = Switchyard::config(&cfg).start().await;

    let first = infer(&sy, 1, &[]).await;
    assert_eq!(status(&first), "miss");
    let again = infer(&sy, 1, &[]).await;
    assert_eq!(status(&again), "hit-l1");
    assert_eq!(probabilities(&first), probabilities(&again));
    assert_eq!(again.json()["model_name"], "mlp");
    assert_eq!(again.json()["model_version"], first.json()["model_version"]);

    // The same tensors in the binary extension: the same key.
    let (body, hlen) = binary_body(1);
    let r = sy.post(INFER, &[("inference-header-content-length", &hlen.to_string())], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(status(&r), "hit-l1", "binary request of the same tensors");
    assert_eq!(probabilities(&r), probabilities(&first));

    // ... and over gRPC, typed contents and raw.
    let mut g = grpc_client(sy.grpc_port).await;
    for raw in [false, true] {
        let resp = g.model_infer(grpc_request(1, raw)).await.expect("gRPC infer");
        assert_eq!(resp.metadata().get(CACHE).and_then(|v| v.to_str().ok()), Some("hit-l1"), "gRPC raw={raw}");
        assert_eq!(resp.get_ref().id, "g", "the request's id, not the cached one");
    }
    let other = g.model_infer(grpc_request(2, true)).await.expect("gRPC infer");
    assert_eq!(other.metadata().get(CACHE).and_then(|v| v.to_str().ok()), Some("miss"));
    assert_eq!(status(&infer(&sy, 2, &[]).await), "hit-l1", "a gRPC miss fills for HTTP too");

    // cache-control: no-cache skips the lookup (and refreshes); no-store neither reads nor writes.
    assert_eq!(status(&infer(&sy, 1, &[("cache-control", "no-cache")]).await), "bypass");
    assert_eq!(status(&infer(&sy, 3, &[("cache-control", "no-store")]).await), "bypass");
    assert_eq!(status(&infer(&sy, 3, &[]).await), "miss", "no-store stored nothing");

    // Non-deterministic variants are never cached.
    for _ in 0..2 {
        let r = sy.post("/v2/models/noisy/infer", &[], json_body(1)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header(CACHE), None);
    }

    let m = sy.metrics().await;
    assert!(m.value("switchyard_cache_hits_total", &[("tier", "l1"), ("model", "mlp")]) >= 5.0, "{}", m.0);
    assert!(m.value("switchyard_cache_misses_total", &[("tier", "l1"), ("model", "mlp")]) >= 3.0);
    assert_eq!(m.value("switchyard_cache_bypass_total", &[("model", "mlp")]), 2.0);
    assert!(m.value("switchyard_cache_l1_bytes", &[]) > 0.0);
    assert!(m.value("switchyard_cache_stored_bytes_total", &[("tier", "l1"), ("model", "mlp")]) > 0.0);
}

#[tokio::test]
async fn ttl_expires_and_the_byte_bound_evicts() {
    let cfg = embedded(
        &examples(),
        "{latest: 1}",
        "cache:\n  l1_max_bytes: 32768\n",
        "name: main, backend: ex, cache: {ttl: 1s}",
    );
    let sy = Switchyard::config(&cfg).start().await;
    assert_eq!(status(&infer(&sy, 1, &[]).await), "miss");
    assert_eq!(status(&infer(&sy, 1, &[]).await), "hit-l1");
    let filled = Instant::now();
    assert_eventually!(status(&infer(&sy, 1, &[]).await) == "miss", "the entry expires after its ttl");
    assert!(filled.elapsed() >= Duration::from_millis(900), "expired early: {:?}", filled.elapsed());

    for seed in 100..600 {
        infer(&sy, seed, &[]).await;
    }
    let m = sy.metrics().await;
    let held = m.value("switchyard_cache_l1_bytes", &[]);
    assert!(held > 0.0 && held <= 32768.0, "L1 holds {held} bytes");
    assert!(m.value("switchyard_cache_evictions_total", &[("tier", "l1"), ("model", "mlp")]) > 0.0, "{}", m.0);
}

#[tokio::test]
async fn a_thousand_concurrent_identical_misses_make_one_backend_call() {
    let backend = FaultBackend::start("b").await;
    let sy = Switchyard::config(&format!(
        "backends:\n  echo: {{kind: v2-http, endpoints: ['{}']}}\nmodels:\n  m:\n    variants:\n      - {{name: a, backend: echo, cache: {{ttl: 60s}}}}\n",
        backend.url()
    ))
    .start()
    .await;
    let body = |x: i32| json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [x]}]}).to_string();
    // The first answer tells the cache which version serves (remote backends report it).
    let r = sy.post("/v2/models/m/infer", &[], body(0)).await;
    assert_eq!((r.status, status(&r)), (200, "miss"), "{}", r.text());
    assert_eq!(status(&sy.post("/v2/models/m/infer", &[], body(0)).await), "hit-l1");
    let before = backend.infers();

    backend.delay_ms(500);
    // Over HTTP/1.1: one connection per request, so all 1000 are in flight at once.
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (client, url, ok) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http_url()), ok.clone());
        tasks.push(tokio::spawn(async move {
            let r = client.post(&url, &[], body(7)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.json()["outputs"][0]["data"], json!([7]));
            ok.fetch_add(1, Ordering::Relaxed);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::Relaxed), 1000);
    assert_eq!(backend.infers() - before, 1, "one backend call for 1000 identical misses");
    let m = sy.metrics().await;
    assert!(m.value("switchyard_cache_coalesced_total", &[("model", "m")]) > 0.0);
}

fn with_redis(redis: &Redis, l1: u64, extra: &str) -> String {
    format!(
        "cache:\n  l1_max_bytes: {l1}\n  redis:\n    url: {}\n    timeout: 100ms\n    breaker_failures: 3\n    breaker_cooldown: 300ms\n{extra}",
        redis.url()
    )
}

#[tokio::test]
async fn l2_hits_fill_l1_and_are_shared_between_replicas() {
    let redis = Redis::start().await;
    let cfg = embedded(
        &examples(),
        "{latest: 1}",
        &with_redis(&redis, 1 << 20, ""),
        "name: main, backend: ex, cache: {ttl: 60s, l2: true}",
    );
    let a = Switchyard::config(&cfg).start().await;
    let b = Switchyard::config(&cfg).start().await;
    assert_eventually!(a.metrics().await.value("switchyard_cache_redis_breaker_state", &[]) == 0.0, "connected");
    let first = infer(&a, 1, &[]).await;
    assert_eq!(status(&first), "miss");
    assert_eventually!(redis.dbsize() == 1, "the answer is written to redis");
    let r = infer(&b, 1, &[]).await;
    assert_eq!(status(&r), "hit-l2", "the other replica reads it from redis");
    assert_eq!(probabilities(&r), probabilities(&first));
    assert_eq!(r.json()["model_version"], first.json()["model_version"]);
    assert_eq!(status(&infer(&b, 1, &[]).await), "hit-l1", "an L2 hit fills L1");
    let ttl: i64 = redis.cli(&["--scan"]).and_then(|k| redis.cli(&["PTTL", &k])).unwrap().parse().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "PX ttl: {ttl}");
    let m = b.metrics().await;
    assert_eq!(m.value("switchyard_cache_hits_total", &[("tier", "l2"), ("model", "mlp")]), 1.0);
}

#[tokio::test]
async fn a_serving_thread_talks_to_redis_on_a_connection_of_its_own() {
    let redis = Redis::start().await;
    let cfg = embedded(
        &examples(),
        "{latest: 1}",
        &with_redis(&redis, 1 << 20, ""),
        "name: main, backend: ex, cache: {ttl: 60s, l2: true}",
    );
    let sy = Switchyard::config(&cfg).start().await;
    assert_eventually!(sy.metrics().await.value("switchyard_cache_redis_breaker_state", &[]) == 0.0, "connected");
    // Before any request: the one connection made where the cache was built.
    let clients = || redis.cli(&["CLIENT", "LIST"]).map_or(0, |l| l.lines().count()) - 1;
    assert_eq!(clients(), 1);
    // A request's L2 lookup makes its thread's own connection (on its runtime), used from then on.
    assert_eq!(status(&infer(&sy, 1, &[]).await), "miss");
    assert_eventually!(clients() >= 2, "the serving thread connected");
    assert_eventually!(redis.dbsize() == 1, "the answer is written to redis");
}

/// Drives `workers` concurrent clients over `seeds` distinct inputs until `stop`; returns (ok, failed, max latency).
async fn load(
    sy: &Switchyard,
    workers: usize,
    seeds: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (usize, usize, Duration) {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url, stop) = (sy.client.clone(), format!("{}{INFER}", sy.http_url()), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut worst) = (0, 0, Duration::ZERO);
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match client.try_request(hyper::Method::POST, &url, &[], Bytes::from(json_body(i % seeds))).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    _ => failed += 1,
                }
                worst = worst.max(t.elapsed());
                i += 7;
            }
            (ok, failed, worst)
        }));
    }
    let mut total = (0, 0, Duration::ZERO);
    for t in tasks {
        let (o, f, w) = t.await.unwrap();
        total = (total.0 + o, total.1 + f, total.2.max(w));
    }
    total
}

async fn breaker(sy: &Switchyard) -> f64 {
    sy.metrics().await.value("switchyard_cache_redis_breaker_state", &[])
}

#[tokio::test]
async fn redis_killed_frozen_and_restarted_mid_load_fails_no_request() {
    let mut redis = Redis::start().await;
    // L1 off: every repeat goes to redis, so its faults are felt.
    let cfg = embedded(
        &examples(),
        "{latest: 1}",
        &with_redis(&redis, 0, ""),
        "name: main, backend: ex, cache: {ttl: 60s, l2: true}",
    );
    let sy = Switchyard::config(&cfg).start().await;
    assert_eventually!(breaker(&sy).await == 0.0, "connected");
    infer(&sy, 1, &[]).await;
    assert_eventually!(status(&infer(&sy, 1, &[]).await) == "hit-l2", "L2 serves");

    for fault in ["kill", "freeze"] {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = {
            let stop = stop.clone();
            let sy = &sy;
            async move { load(sy, 8, 40, stop).await }
        };
        let faults = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match fault {
                "kill" => redis.kill(),
                _ => redis.freeze(),
            }
            assert_eventually!(breaker(&sy).await == 1.0, "the breaker opens ({fault})");
            tokio::time::sleep(Duration::from_millis(1000)).await;
            stop.store(true, Ordering::Relaxed);
        };
        let ((ok, failed, worst), ()) = tokio::join!(running, faults);
        assert_eq!(failed, 0, "{fault}: {failed} failed requests of {}", ok + failed);
        assert!(ok > 50, "{fault}: only {ok} requests");
        // Timeouts are 100 ms; a busy 2-core box adds its own scheduling delays.
        assert!(worst < Duration::from_secs(2), "{fault}: worst latency {worst:?}");
        match fault {
            "kill" => redis.restart().await,
            _ => redis.thaw(),
        }
        // It recovers by itself: the breaker closes and L2 serves again.
        // The breaker is driven by traffic: each request after the cool-down may probe.
        assert_eventually!(
            {
                infer(&sy, 5, &[]).await;
                breaker(&sy).await == 0.0
            },
            "the breaker closes after {fault}"
        );
        infer(&sy, 5, &[]).await;
        assert_eventually!(status(&infer(&sy, 5, &[]).await) == "hit-l2", "L2 hits again after {fault}");
    }
    let m = sy.metrics().await;
    assert!(m.value("switchyard_cache_redis_errors_total", &[]) > 0.0);
    assert!(m.value("switchyard_cache_redis_skipped_total", &[]) > 0.0);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[tokio::test]
async fn a_new_version_never_serves_older_answers() {
    // Hot-added version in the repository.
    let dir = TempDir::new("cache-repo");
    let repo = dir.path().join("models");
    copy_dir(&examples().join("mlp/1"), &repo.join("mlp/1"));
    let cfg =
        embedded(&repo, "{latest: 1}\n    poll_interval: 200ms", "", "name: main, backend: ex, cache: {ttl: 600s}");
    let sy = Switchyard::config(&cfg).start().await;
    assert_eq!(status(&infer(&sy, 1, &[]).await), "miss");
    let old = infer(&sy, 1, &[]).await;
    assert_eq!((status(&old), old.json()["model_version"].as_str()), ("hit-l1", Some("1")));
    let staging = repo.join("mlp/.2");
    copy_dir(&examples().join("mlp/2"), &staging);
    std::fs::rename(&staging, repo.join("mlp/2")).unwrap();
    let mut seen_v2 = false;
    assert_eventually!(
        {
            let r = infer(&sy, 1, &[]).await;
            let v = r.json()["model_version"].as_str().unwrap().to_string();
            if seen_v2 {
                assert_eq!(v, "2", "an older version's answer after the new one served");
            }
            if v == "2" && !seen_v2 {
                assert_eq!(status(&r), "miss", "the first answer of version 2 is computed, not cached");
                assert_ne!(probabilities(&r), probabilities(&old));
                seen_v2 = true;
            }
            seen_v2 && status(&r) == "hit-l1"
        },
        "version 2 is loaded, served fresh, then cached"
    );

    // A variant config change (pinned version 1 → 2) never serves the old entries.
    let pinned = |v: u32| {
        embedded(
            &examples(),
            "{all: true}",
            "",
            &format!("name: main, backend: ex, version: {v}, cache: {{ttl: 600s}}"),
        )
    };
    let sy = Switchyard::config(&pinned(1)).start().await;
    infer(&sy, 1, &[]).await;
    assert_eq!(infer(&sy, 1, &[]).await.json()["model_version"], "1");
    let text = std::fs::read_to_string(&sy.config).unwrap();
    std::fs::write(&sy.config, text.replace("version: 1,", "version: 2,")).unwrap();
    assert_eventually!(
        {
            let r = infer(&sy, 1, &[]).await;
            let v: Value = r.json();
            v["model_version"] == "2"
        },
        "the reloaded variant serves version 2"
    );
}

#[tokio::test]
async fn the_control_api_invalidates_a_models_entries() {
    let cfg = embedded(
        &examples(),
        "{latest: 1}",
        "cache:\n  l1_max_bytes: 1048576\n",
        "name: main, backend: ex, cache: {ttl: 60s}",
    );
    let sy = Switchyard::config(&cfg).start().await;
    assert_eq!(status(&infer(&sy, 7, &[]).await), "miss");
    assert_eq!(status(&infer(&sy, 7, &[]).await), "hit-l1");
    let url = format!("{}/ml/models/mlp/cache/invalidate", sy.control_url());
    let r = sy.client.post(&url, &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["invalidated_variants"], 1);
    assert_eq!(status(&infer(&sy, 7, &[]).await), "miss", "an invalidated entry was served");
    assert_eq!(status(&infer(&sy, 7, &[]).await), "hit-l1");
    let r = sy.client.post(&format!("{}/ml/models/nope/cache/invalidate", sy.control_url()), &[], "").await;
    assert_eq!(r.status, 404);
}
