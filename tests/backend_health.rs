//! Backend health through the built binary, each test printing the figures
//! docs/backend-health.md records (`cargo test --test backend_health -- --nocapture`):
//! a replica killed (SIGKILL) and frozen (SIGSTOP) behind v2-http and v2-grpc
//! backends (the replicas are `switchyard` processes serving the example
//! `mlp`, one version each, so every answer says which replica gave it), a
//! slow replica and an erroring one ejected as outliers, a flapping one
//! contained by ejection back-off, the retry budget, and load-aware picking
//! from the servers' own queues against plain P2C when another client loads
//! one replica (the FaultBackend's `/metrics` is a stand-in for Triton's).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fault::FaultBackend;
use common::{dead_address, free_port, mlp, repo_root, HttpClient, Switchyard};
use hyper::Method;
use serde_json::json;

/// One answer of a load loop: when it was sent (since the load began), its
/// status (0: no answer), which replica answered (`model_version`), latency.
#[derive(Clone, Debug)]
struct Sample {
    at: Duration,
    status: u16,
    version: String,
    latency: Duration,
}

/// A closed-loop load of `concurrency` clients on `url` until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
    start: Instant,
}

impl Load {
    fn start(url: String, body: String, concurrency: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let tasks = (0..concurrency)
            .map(|_| {
                let (url, body, stop) = (url.clone(), body.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = HttpClient::new();
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let r = client
                            .try_request(
                                Method::POST,
                                &url,
                                &[("content-type", "application/json")],
                                Bytes::from(body.clone()),
                            )
                            .await;
                        let (status, version) = match r {
                            Ok(r) if r.status == 200 => {
                                (200, r.json()["model_version"].as_str().unwrap_or_default().to_string())
                            }
                            Ok(r) => (r.status, String::new()),
                            Err(_) => (0, String::new()),
                        };
                        out.push(Sample { at: sent - start, status, version, latency: sent.elapsed() });
                    }
                    out
                })
            })
            .collect();
        Load { stop, tasks, start }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.expect("load task"));
        }
        all.sort_by_key(|s| s.at);
        all
    }
}

fn failures(samples: &[Sample], from: Duration, to: Duration) -> Vec<&Sample> {
    samples.iter().filter(|s| s.at >= from && s.at < to && s.status != 200).collect()
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// A `switchyard` replica serving only version `version` of the example `mlp`.
async fn replica(version: u32, ports: (u16, u16)) -> Switchyard {
    Switchyard::config(&format!(
        "backends:\n  local:\n    kind: onnx\n    repository: {}\n    version_policy: {{specific: [{version}]}}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{name: main, backend: local}}\n",
        repo_root().join("examples/models").display()
    ))
    .ports(ports.0, ports.1)
    .start()
    .await
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill").success();
    assert!(ok, "kill {sig} {pid}");
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Kill,
    Freeze,
}

/// Two replicas behind one backend under a steady load; replica "2" is
/// killed (then restarted on its ports) or frozen (then continued).
/// Figures: failed requests and when the last one was sent (time to eject),
/// and how long until the replica serves again (time to recover).
async fn replica_fault(kind: &str, fault: Fault) {
    let ports_a = (free_port(), free_port());
    let ports_b = (free_port(), free_port());
    let a = replica(1, ports_a).await;
    let mut b = Some(replica(2, ports_b).await);
    let endpoints = match kind {
        "v2-http" => format!("['http://127.0.0.1:{}', 'http://127.0.0.1:{}']", ports_a.0, ports_b.0),
        _ => format!("['127.0.0.1:{}', '127.0.0.1:{}']", ports_a.1, ports_b.1),
    };
    let sy = Switchyard::config(&format!(
        "backends:\n  pair:\n    kind: {kind}\n    endpoints: {endpoints}\n    timeout: 1s\n    connect_timeout: 200ms\n    eject_after_failures: 3\n    eject_for: 2s\n    health_check: {{interval: 300ms, timeout: 300ms, unhealthy_after: 2, healthy_after: 2}}\nmodels:\n  mlp:\n    variants:\n      - {{name: main, backend: pair}}\n"
    ))
    .start()
    .await;
    let load = Load::start(format!("{}{}", sy.http_url(), mlp::INFER), mlp::json_body(1), 4);
    // Both replicas serve before the fault.
    assert_eventually!(
        a.metrics().await.get("switchyard_requests_total", &[]).unwrap_or(0.0) > 20.0,
        "replica 1 serves"
    );
    let pid = b.as_ref().unwrap().pid();
    let served_before = b.as_ref().unwrap().metrics().await.get("switchyard_requests_total", &[]).unwrap_or(0.0);
    let t0 = load.now();
    let fault_at = seconds_of_day(std::time::SystemTime::now());
    let mut held = Vec::new();
    match fault {
        Fault::Kill => {
            signal(pid, "-KILL");
            // Hold the dead replica's ports (bound, not listening: connections are
            // still refused) so no other test's server takes them before the restart.
            for port in [ports_b.0, ports_b.1] {
                let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                sock.set_reuseaddr(true).expect("SO_REUSEADDR");
                for _ in 0..100 {
                    if sock.bind(([127, 0, 0, 1], port).into()).is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                held.push(sock);
            }
        }
        Fault::Freeze => signal(pid, "-STOP"),
    }
    // The replica stays down 3 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t1 = load.now();
    match fault {
        Fault::Kill => {
            drop(b.take());
            drop(held);
            b = Some(replica(2, ports_b).await);
        }
        Fault::Freeze => signal(pid, "-CONT"),
    }
    let back = load.now();
    // Replica 2 serves again: its own counter moves well past what it had
    // (a restarted one starts from 0; a continued one may first finish the
    // requests that were stuck in it).
    let baseline = match fault {
        Fault::Kill => 0.0,
        Fault::Freeze => served_before + 20.0,
    };
    assert_eventually!(
        b.as_ref().unwrap().metrics().await.get("switchyard_requests_total", &[]).unwrap_or(0.0) > baseline + 10.0,
        "{kind} {fault:?}: replica 2 serves again\n{}",
        sy.log()
    );
    let samples = load.finish().await;
    // Time to recover: the first answer from replica 2 to a request sent after it came back.
    let recovered = samples.iter().find(|s| s.at > back && s.version == "2").map(|s| s.at + s.latency);
    // Failed requests: every one of the run (those sent just before the fault
    // and stuck in the replica count too).
    let before = failures(&samples, Duration::ZERO, t0.saturating_sub(Duration::from_secs(1)));
    let down = failures(&samples, Duration::ZERO, t1);
    let after = failures(&samples, t1, Duration::MAX);
    let in_window = samples.iter().filter(|s| s.at + s.latency >= t0 && s.at < t1).count();
    let last_failure = down.iter().map(|s| s.at + s.latency).max().map(|t| t.saturating_sub(t0));
    let replica_2 = format!("127.0.0.1:{}", if kind == "v2-http" { ports_b.0 } else { ports_b.1 });
    let out_of_rotation = sy
        .log()
        .lines()
        .filter(|l| l.contains(&replica_2) && (l.contains("endpoint ejected") || l.contains("out of rotation")))
        .filter_map(|l| Some(log_seconds_of_day(l)? - fault_at))
        .find(|d| *d >= 0.0);
    let served_by_2 = samples.iter().filter(|s| s.at > back && s.version == "2").count();
    assert!(before.is_empty(), "{kind}: failures before the fault: {before:?}");
    println!(
        "FIGURE {kind} {fault:?}: requests during the outage {in_window}, failed {} ({:.2}%), out of rotation {} ms after the fault, last failure {} ms after it; after it came back: failed {}, replica 2 serving again {} ms after it came back ({} answers from it); statuses of failures {:?}",
        down.len(),
        100.0 * down.len() as f64 / in_window.max(1) as f64,
        out_of_rotation.map_or("never logged".to_string(), |d| format!("{:.0}", d * 1000.0)),
        last_failure.map_or(0, ms),
        after.len(),
        recovered.map_or(u128::MAX, |r| ms(r - back)),
        served_by_2,
        down.iter().map(|s| s.status).collect::<std::collections::BTreeSet<_>>(),
    );
    // Ejected: no failure among requests sent in the last second of the outage.
    let late = failures(&samples, t1.saturating_sub(Duration::from_secs(1)), t1);
    assert!(late.is_empty(), "{kind} {fault:?}: failures 2 s after the fault: {late:?}\n{}", sy.log());
    assert!(after.is_empty(), "{kind} {fault:?}: failures after recovery: {after:?}");
    assert!(served_by_2 > 0, "{kind} {fault:?}: replica 2 never served again\n{}", sy.log());
}

/// Seconds since midnight (UTC) of a time, and of a log line's RFC 3339 timestamp.
fn seconds_of_day(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs_f64() % 86_400.0
}

fn log_seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = time.split(':');
    let (h, m, s): (f64, f64, f64) =
        (parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?);
    Some(h * 3600.0 + m * 60.0 + s)
}

#[tokio::test]
async fn http_replica_killed() {
    replica_fault("v2-http", Fault::Kill).await;
}

#[tokio::test]
async fn http_replica_frozen() {
    replica_fault("v2-http", Fault::Freeze).await;
}

#[tokio::test]
async fn grpc_replica_killed() {
    replica_fault("v2-grpc", Fault::Kill).await;
}

#[tokio::test]
async fn grpc_replica_frozen() {
    replica_fault("v2-grpc", Fault::Freeze).await;
}

/// A body the FaultBackend echoes.
fn echo_body() -> String {
    json!({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}).to_string()
}

/// A replica 20× slower than its peer is ejected as a latency outlier; one
/// that fails a third of its requests (500s, never twice in a row, so
/// consecutive-failure ejection never fires) as an error-rate outlier.
#[tokio::test]
async fn slow_and_erroring_replicas_are_ejected_as_outliers() {
    let slow = FaultBackend::start("slow").await;
    let erroring = FaultBackend::start("erroring").await;
    let fast = FaultBackend::start("fast").await;
    slow.delay_ms(100);
    fast.delay_ms(5);
    erroring.delay_ms(5);
    erroring.fail_every(3);
    let od = "outlier_detection: {interval: 500ms, min_requests: 5, max_error_rate: 0.2, max_latency_ratio: 3, max_ejected_percent: 50}";
    let sy = Switchyard::config(&format!(
        "backends:\n  slowpair:\n    kind: v2-http\n    endpoints: ['{}', '{}']\n    eject_for: 30s\n    {od}\n  errpair:\n    kind: v2-http\n    endpoints: ['{}', '{}']\n    eject_for: 30s\n    {od}\nmodels:\n  s:\n    variants:\n      - {{name: main, backend: slowpair}}\n  e:\n    variants:\n      - {{name: main, backend: errpair}}\n",
        slow.url(),
        fast.url(),
        erroring.url(),
        fast.url()
    ))
    .start()
    .await;
    for (model, bad, reason) in [("s", &slow, "latency"), ("e", &erroring, "error rate")] {
        let load = Load::start(format!("{}/v2/models/{model}/infer", sy.http_url()), echo_body(), 4);
        let endpoint = format!("127.0.0.1:{}", bad.port);
        let ejected =
            || sy.log().lines().any(|l| l.contains("endpoint ejected") && l.contains(&endpoint) && l.contains(reason));
        assert_eventually!(ejected(), "{model}: {reason} outlier ejected:\n{}", sy.log());
        let ejected_at = load.now();
        let before = bad.infers();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let samples = load.finish().await;
        let to_bad_after = bad.infers() - before;
        let (pre, post): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| s.at < ejected_at);
        let share = |v: &[&Sample]| v.iter().filter(|s| s.version == bad.name()).count() as f64 / v.len().max(1) as f64;
        let errs = |v: &[&Sample]| v.iter().filter(|s| s.status != 200).count();
        let p99 = |v: &[&Sample]| ms(percentile(v.iter().map(|s| s.latency).collect(), 0.99));
        println!(
            "FIGURE {reason} outlier: ejected {} ms into the load; before: {} requests, {:.0}% to it, {} failed, p99 {} ms; after: {} requests, {} reached it (in flight at ejection), {} failed, p99 {} ms",
            ms(ejected_at),
            pre.len(),
            100.0 * share(&pre),
            errs(&pre),
            p99(&pre),
            post.len(),
            to_bad_after,
            errs(&post),
            p99(&post),
        );
        // Only requests already in flight (at most one per client) may still reach it.
        assert!(to_bad_after <= 4, "{model}: {to_bad_after} requests reached the ejected replica");
    }
}

/// A replica that goes down and up every 250 ms: with ejection (and its
/// back-off on relapse) most requests avoid it; without, every request
/// picked for it while it is down fails.
#[tokio::test]
async fn a_flapping_replica_is_contained_by_ejection_back_off() {
    let flappy = Arc::new(FaultBackend::start("flappy").await);
    let steady = FaultBackend::start("steady").await;
    let sy = Switchyard::config(&format!(
        "backends:\n  guarded:\n    kind: v2-http\n    endpoints: ['{f}', '{s}']\n    eject_after_failures: 2\n    eject_for: 500ms\n  plain:\n    kind: v2-http\n    endpoints: ['{f}', '{s}']\n    eject_after_failures: 1000000\nmodels:\n  guarded:\n    variants:\n      - {{name: main, backend: guarded}}\n  plain:\n    variants:\n      - {{name: main, backend: plain}}\n",
        f = flappy.url(),
        s = steady.url()
    ))
    .start()
    .await;
    let flapping = Arc::new(AtomicBool::new(true));
    let flipper = {
        let (flappy, flapping) = (flappy.clone(), flapping.clone());
        tokio::spawn(async move {
            let mut down = false;
            while flapping.load(Ordering::Relaxed) {
                down = !down;
                flappy.down(down);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            flappy.down(false);
        })
    };
    let mut rates = Vec::new();
    for model in ["plain", "guarded"] {
        let load = Load::start(format!("{}/v2/models/{model}/infer", sy.http_url()), echo_body(), 4);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let samples = load.finish().await;
        let failed = samples.iter().filter(|s| s.status != 200).count();
        let to_flappy = samples.iter().filter(|s| s.version == "flappy").count();
        println!(
            "FIGURE flapping ({model}): {} requests in 4 s, {failed} failed ({:.2}%), {to_flappy} answered by the flapping replica",
            samples.len(),
            100.0 * failed as f64 / samples.len() as f64
        );
        rates.push(failed as f64 / samples.len() as f64);
    }
    flapping.store(false, Ordering::Relaxed);
    flipper.await.unwrap();
    assert!(rates[0] > 0.0, "the flapping replica must fail some requests without ejection");
    assert!(rates[1] < rates[0] / 2.0, "ejection must at least halve the error rate: {rates:?}");
}

/// A dead endpoint beside a live one: connection-refused requests are
/// retried on the live one within the budget; with a zero budget they fail.
#[tokio::test]
async fn the_retry_budget_bounds_retries() {
    let live = FaultBackend::start("live").await;
    let dead = dead_address();
    let sy = Switchyard::config(&format!(
        "backends:\n  budgeted:\n    kind: v2-http\n    endpoints: ['http://{dead}', '{l}']\n    eject_after_failures: 1000000\n  none:\n    kind: v2-http\n    endpoints: ['http://{dead}', '{l}']\n    eject_after_failures: 1000000\n    retry_budget: {{ratio: 0, min_per_second: 0}}\nmodels:\n  budgeted:\n    variants:\n      - {{name: main, backend: budgeted}}\n  none:\n    variants:\n      - {{name: main, backend: none}}\n",
        l = live.url()
    ))
    .start()
    .await;
    let mut failed = Vec::new();
    for model in ["budgeted", "none"] {
        let mut n = 0;
        for _ in 0..60 {
            let r = sy
                .post(&format!("/v2/models/{model}/infer"), &[("content-type", "application/json")], echo_body())
                .await;
            if r.status != 200 {
                assert_eq!(r.status, 502, "{model}: {}", r.text());
                n += 1;
            }
        }
        failed.push(n);
    }
    println!(
        "FIGURE retry budget: of 60 requests with a dead endpoint in two, failed: default budget {}, zero budget {}",
        failed[0], failed[1]
    );
    assert_eq!(failed[0], 0, "within the default budget every connect failure is retried");
    assert!(failed[1] > 0, "a zero budget retries nothing");
}

/// Two replicas that execute one request at a time; another client keeps
/// three requests queued on replica "a". Plain P2C sees no load of its own on
/// either (one request at a time) and sends about half to "a", where they
/// queue; picking by the servers' own queues (`load_metrics`, read from the
/// stand-in for Triton's metrics endpoint) avoids it.
#[tokio::test]
async fn load_aware_picking_beats_p2c_when_others_load_a_replica() {
    let a = FaultBackend::start("a").await;
    let b = FaultBackend::start("b").await;
    for r in [&a, &b] {
        r.capacity(1);
        r.delay_ms(20);
    }
    let sy = Switchyard::config(&format!(
        "backends:\n  p2c:\n    kind: v2-http\n    endpoints: ['{a}', '{b}']\n  aware:\n    kind: v2-http\n    endpoints: ['{a}', '{b}']\n    load_metrics: {{interval: 100ms}}\nmodels:\n  p2c:\n    variants:\n      - {{name: main, backend: p2c}}\n  aware:\n    variants:\n      - {{name: main, backend: aware}}\n",
        a = a.url(),
        b = b.url()
    ))
    .start()
    .await;
    // The other client: three requests always queued or running on "a".
    let other = Load::start(format!("{}/v2/models/x/infer", a.url()), echo_body(), 3);
    assert_eventually!(a.pending() >= 1, "the other client queues on a");
    let mut shares = Vec::new();
    for model in ["p2c", "aware"] {
        let client = HttpClient::new();
        let mut latencies = Vec::new();
        let mut to_a = 0;
        let n = 60;
        for _ in 0..n {
            let sent = Instant::now();
            let r = client
                .post(
                    &format!("{}/v2/models/{model}/infer", sy.http_url()),
                    &[("content-type", "application/json")],
                    echo_body(),
                )
                .await;
            assert_eq!(r.status, 200, "{model}: {}", r.text());
            latencies.push(sent.elapsed());
            if r.json()["model_version"] == "a" {
                to_a += 1;
            }
        }
        println!(
            "FIGURE load-aware ({model}): {to_a} of {n} to the loaded replica, p50 {} ms, p99 {} ms, mean {} ms",
            ms(percentile(latencies.clone(), 0.5)),
            ms(percentile(latencies.clone(), 0.99)),
            ms(latencies.iter().sum::<Duration>() / n as u32),
        );
        shares.push(to_a);
    }
    other.finish().await;
    assert!(shares[0] >= 12, "P2C without the servers' queues sends about half to the loaded replica: {shares:?}");
    assert!(shares[1] * 3 <= shares[0], "load-aware picking sends far fewer there: {shares:?}");
}
