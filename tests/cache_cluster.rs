//! The response cache's L2 against a real 3-master Redis Cluster
//! (`cache.redis.cluster`), with two Switchyard replicas over the embedded
//! runtime (mlp): an answer one replica stores is read by the other
//! (`hit-l2`), keys land on several masters (the client routes by slot), and
//! killing a master mid-load loses cache entries but fails no request.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mlp::{cache_status as status, infer, json_body, probabilities, INFER};
use common::redis_cluster::{RedisCluster, NODE_TIMEOUT_MS};
use common::{repo_root, Switchyard};

/// Distinct inputs written by replica A and read back by replica B.
const SEEDS: usize = 30;

/// L1 off, so every lookup goes to the cluster and its faults are felt.
fn config(cluster: &RedisCluster) -> String {
    let seeds = cluster.urls().iter().map(|u| format!("'{u}'")).collect::<Vec<_>>().join(", ");
    format!(
        "cache:\n  l1_max_bytes: 0\n  redis:\n    cluster: [{seeds}]\n    timeout: 100ms\n    connect_timeout: 500ms\n    breaker_failures: 3\n    breaker_cooldown: 300ms\nbackends:\n  ex:\n    kind: onnx\n    repository: {}\n    version_policy: {{latest: 1}}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{name: main, backend: ex, cache: {{ttl: 60s, l2: true}}}}\n",
        repo_root().join("examples/models").display()
    )
}

/// Lookups that reached Redis and found nothing (skipped ones, while not
/// connected, are not counted): > 0 means the replica talks to the cluster.
async fn l2_misses(sy: &Switchyard) -> f64 {
    sy.metrics().await.value("switchyard_cache_misses_total", &[("tier", "l2"), ("model", "mlp")])
}

async fn redis_errors(sy: &Switchyard) -> f64 {
    sy.metrics().await.value("switchyard_cache_redis_errors_total", &[])
}

/// Drives `workers` concurrent clients over `SEEDS` inputs until `stop`;
/// returns (ok, failures (first few described), max latency).
async fn load(sy: &Switchyard, workers: usize, stop: Arc<AtomicBool>) -> (usize, Vec<String>, Duration) {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (client, url, stop) = (sy.client.clone(), format!("{}{INFER}", sy.http_url()), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut worst) = (0, Vec::new(), Duration::ZERO);
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match client.try_request(hyper::Method::POST, &url, &[], Bytes::from(json_body(i % SEEDS))).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("status {}: {}", r.status, r.text())),
                    Err(e) => failed.push(e),
                }
                worst = worst.max(t.elapsed());
                i += 7;
            }
            (ok, failed, worst)
        }));
    }
    let mut total = (0, Vec::new(), Duration::ZERO);
    for t in tasks {
        let (o, f, w) = t.await.unwrap();
        total.0 += o;
        total.1.extend(f);
        total.2 = total.2.max(w);
    }
    total
}

#[tokio::test]
async fn cluster_l2_is_shared_between_replicas_and_a_dead_master_fails_no_request() {
    let mut cluster = RedisCluster::start().await;
    let cfg = config(&cluster);
    let a = Switchyard::config(&cfg).start().await;
    let b = Switchyard::config(&cfg).start().await;

    // Both replicas connect in the background; wait until each has reached the cluster.
    for (sy, seed) in [(&a, 1000), (&b, 1001)] {
        assert_eventually!(
            {
                infer(sy, seed, &[]).await;
                l2_misses(sy).await > 0.0
            },
            "replica :{} connects to the cluster",
            sy.http_port
        );
    }
    assert_eventually!(cluster.total_keys() == 2, "the warm-up answers are written to the cluster");

    // Replica A misses and writes; replica B reads A's answers from the cluster.
    let mut firsts = Vec::new();
    for seed in 0..SEEDS {
        let r = infer(&a, seed, &[]).await;
        assert_eq!(status(&r), "miss", "replica A, seed {seed}");
        firsts.push(r);
    }
    assert_eventually!(cluster.total_keys() == SEEDS + 2, "A's {SEEDS} answers are written to the cluster");
    let holding: Vec<usize> = (0..3).map(|i| cluster.dbsize(i)).collect();
    assert!(holding.iter().filter(|&&n| n > 0).count() >= 2, "keys spread over the masters by slot: {holding:?}");
    for (seed, first) in firsts.iter().enumerate() {
        let r = infer(&b, seed, &[]).await;
        assert_eq!(status(&r), "hit-l2", "replica B reads seed {seed} from the cluster");
        assert_eq!(probabilities(&r), probabilities(first), "seed {seed}");
        assert_eq!(r.json()["model_version"], first.json()["model_version"]);
    }
    assert_eq!(
        b.metrics().await.value("switchyard_cache_hits_total", &[("tier", "l2"), ("model", "mlp")]),
        SEEDS as f64
    );

    // Kill the master holding the most entries while both replicas are under load, and keep
    // the load on past the node timeout, so the survivors also declare the cluster down
    // (CLUSTERDOWN for every slot).
    let victim = (0..3).max_by_key(|&i| holding[i]).unwrap();
    let errors_before = [redis_errors(&a).await, redis_errors(&b).await];
    let stop = Arc::new(AtomicBool::new(false));
    let outage = Duration::from_millis(2 * NODE_TIMEOUT_MS + 1500);
    let faults = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.kill(victim);
        tokio::time::sleep(outage).await;
        stop.store(true, Ordering::Relaxed);
    };
    let ((ok_a, failed_a, worst_a), (ok_b, failed_b, worst_b), ()) =
        tokio::join!(load(&a, 4, stop.clone()), load(&b, 4, stop.clone()), faults);
    let (ok, worst) = (ok_a + ok_b, worst_a.max(worst_b));
    let failed: Vec<String> = failed_a.into_iter().chain(failed_b).collect();
    let errors = [redis_errors(&a).await - errors_before[0], redis_errors(&b).await - errors_before[1]];
    eprintln!(
        "killed master :{} (keys per master {holding:?}): {ok} ok, {} failed, worst {worst:?}, redis errors (A, B) {errors:?}",
        cluster.nodes[victim].port,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed requests of {} after killing master :{}; first: {:?}",
        failed.len(),
        ok + failed.len(),
        cluster.nodes[victim].port,
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests");
    // Redis calls are bounded by `timeout` (100 ms); a busy 2-core box adds its own delays.
    assert!(worst < Duration::from_secs(2), "worst latency {worst:?}");
    assert!(errors.iter().all(|&e| e > 0.0), "the dead master was felt by both replicas: redis errors {errors:?}");
    // Still answering after the load, with the cluster down.
    for sy in [&a, &b] {
        let r = infer(sy, 0, &[]).await;
        assert_eq!(probabilities(&r), probabilities(&firsts[0]));
    }

    // The breaker bounds what a dead or degraded cluster costs (docs/cache.md):
    // `breaker_failures` (3) failures in a row open it, and while open Redis is
    // not called; after each `breaker_cooldown` one probe goes through. While
    // slots on live masters still answer, a successful probe closes it again, and
    // the calls already in flight when it re-opens fail too, so the bound is a
    // share of the requests served: at most 5% may cost a failed Redis call.
    let bound = 0.05 * ok as f64;
    for (sy, e) in [(&a, errors[0]), (&b, errors[1])] {
        let log = sy.log();
        assert!(
            e <= bound,
            "replica :{}: {e} failed redis calls in a {outage:?} cluster outage for {ok} requests (bound {bound}); \
             the breaker opened {} times and closed {} times",
            sy.http_port,
            log.matches("cache L2 breaker open").count(),
            log.matches("redis is back").count()
        );
    }
}
