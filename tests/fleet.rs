//! Fleet mode (`control.fleet`) of the built `switchyard` binary: a real
//! `redis-server` and three Switchyard processes on loopback sharing one
//! fleet. A change through any replica's control API reaches every replica
//! (the time it takes is measured and printed); concurrent conflicting
//! changes end with one winner everywhere and the loser told; canaries are
//! judged once, fleet-wide, on merged numbers, by the one replica holding the
//! judge lease, and a successor continues a rollout after a kill -9; a frozen
//! or restarted Redis costs no data-plane request and refuses API changes
//! clearly; A/B results are the same on every replica and are those of the
//! union of their samples; sticky keys land on the same variant everywhere.
//!
//! Backends are `common::fault::FaultBackend`s (explicit faults, counted
//! requests). Nothing sleeps to wait: conditions are polled with a patience limit.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fault::FaultBackend;
use common::redis::Redis;
use common::{HttpClient, Metrics, Resp, Switchyard};
use hyper::Method;
use serde_json::{json, Value};

const JSON: (&str, &str) = ("content-type", "application/json");
const VARIANT: &str = "x-switchyard-variant";
/// Patience for the slower conditions (rollouts, lease takeover) on a busy 2-core box.
const LONG: Duration = Duration::from_secs(60);
const LOAD_MAX_TIME: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- fleet harness

fn backend_line(name: &str, url: &str) -> String {
    format!("  {name}: {{kind: v2-http, endpoints: [\"{url}\"]}}\n")
}

/// The `control.fleet` section: a short lease so a takeover is quick to test.
fn fleet_section(redis: &Redis, name: &str) -> String {
    format!(
        "control:\n  fleet: {{redis: '{}', fleet: {name}, poll_interval: 250ms, lease_ttl: 1500ms, timeout: 300ms}}\n",
        redis.url()
    )
}

/// Starts replicas one after the other (each catches up before it is ready).
async fn start_replicas(bodies: &[String]) -> Vec<Switchyard> {
    let mut out = Vec::new();
    for b in bodies {
        out.push(Switchyard::config(b).start().await);
    }
    out
}

async fn ctl_call(sy: &Switchyard, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Resp {
    let mut h = vec![JSON];
    h.extend_from_slice(headers);
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    sy.client.request(method, &format!("{}{path}", sy.control_url()), &h, body).await
}

async fn ctl_get(sy: &Switchyard, path: &str) -> Value {
    let r = ctl_call(sy, Method::GET, path, &[], None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

async fn ctl_post(sy: &Switchyard, path: &str, body: Value) -> Value {
    let r = ctl_call(sy, Method::POST, path, &[], Some(body.clone())).await;
    assert_eq!(r.status, 200, "POST {path} {body}: {}", r.text());
    r.json()
}

/// The `fleet` object of `/ready` (the data-plane listener).
async fn fleet_of(sy: &Switchyard) -> Value {
    let r = sy.get("/ready").await;
    assert_eq!(r.status, 200, "/ready must stay 200 in fleet mode: {}", r.text());
    r.json()["fleet"].clone()
}

/// Weights of `model` a replica serves, from `/config`.
async fn weights(sy: &Switchyard, model: &str) -> BTreeMap<String, f64> {
    weights_in(&ctl_get(sy, "/config").await, model)
}

fn weights_in(cfg: &Value, model: &str) -> BTreeMap<String, f64> {
    cfg["models"][model]["variants"]
        .as_array()
        .unwrap_or_else(|| panic!("no model {model} in {cfg}"))
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["weight"].as_f64().unwrap()))
        .collect()
}

fn w(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn fleet_generation(v: &Value) -> u64 {
    v["fleet_generation"].as_u64().unwrap_or_else(|| panic!("no fleet_generation in {v}"))
}

/// Waits until every replica serves `want` for `model` at the same shared generation.
async fn converged(replicas: &[&Switchyard], model: &str, want: &BTreeMap<String, f64>, what: &str) -> u64 {
    let deadline = Instant::now() + LONG;
    loop {
        let mut gens = Vec::new();
        let mut all = true;
        for sy in replicas {
            let cfg = ctl_get(sy, "/config").await;
            gens.push(cfg["fleet_generation"].as_u64().unwrap_or(0));
            all &= weights_in(&cfg, model) == *want;
        }
        if all && gens.iter().all(|g| *g == gens[0]) {
            return gens[0];
        }
        assert!(Instant::now() < deadline, "{what}: replicas did not converge on {want:?} (generations {gens:?})");
        tokio::time::sleep(common::POLL).await;
    }
}

fn metric(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
    m.get(name, labels).unwrap_or(0.0)
}

// ---------------------------------------------------------------- requests

fn infer_body(i: u64) -> String {
    json!({"id": format!("r{i}"), "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [i as f32, 1.0, 2.0, 3.0]}]})
        .to_string()
}

/// One inference; its status and serving variant, or why it got no answer.
async fn infer(
    client: &HttpClient,
    base: &str,
    model: &str,
    i: u64,
    headers: &[(&str, &str)],
) -> Result<(u16, String), String> {
    let mut h = vec![JSON];
    h.extend_from_slice(headers);
    let url = format!("{base}/v2/models/{model}/infer");
    let r = client.try_request(Method::POST, &url, &h, Bytes::from(infer_body(i))).await?;
    Ok((r.status, r.header(VARIANT).unwrap_or("<none>").to_string()))
}

/// Answers by variant, and what broke (no answer, or a status other than 200 and a backend failure).
#[derive(Debug, Default)]
struct Tally {
    by_variant: BTreeMap<String, u64>,
    ok: u64,
    /// Requests that got no answer, or a status other than 200 and the backend's injected 500.
    broken: Vec<String>,
}

impl Tally {
    fn add(&mut self, i: u64, r: Result<(u16, String), String>) {
        match r {
            Ok((200, v)) => {
                self.ok += 1;
                *self.by_variant.entry(v).or_default() += 1;
            }
            // A backend's injected 500, relayed as a backend failure.
            Ok((500 | 502, v)) => *self.by_variant.entry(v).or_default() += 1,
            Ok((s, v)) => self.broken.push(format!("request {i}: status {s} from {v}")),
            Err(e) => self.broken.push(format!("request {i}: {e}")),
        }
    }

    fn merge(&mut self, o: Tally) {
        for (k, v) in o.by_variant {
            *self.by_variant.entry(k).or_default() += v;
        }
        self.ok += o.ok;
        self.broken.extend(o.broken);
    }
}

async fn send(base: &str, model: &str, n: u64) -> Tally {
    let client = HttpClient::new();
    let mut t = Tally::default();
    for i in 0..n {
        t.add(i, infer(&client, base, model, i, &[]).await);
    }
    t
}

/// Clients sending requests back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn start(base: &str, models: &[&str], tasks: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        let tasks = (0..tasks)
            .map(|t| {
                let (base, models, stop) = (base.to_string(), models.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = HttpClient::new();
                    let mut tally = Tally::default();
                    let deadline = Instant::now() + LOAD_MAX_TIME;
                    let mut i = t * 1_000_000;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let m = &models[(i as usize) % models.len()];
                        tally.add(i, infer(&client, &base, m, i, &[]).await);
                        i += 1;
                    }
                    tally
                })
            })
            .collect();
        Load { stop, tasks }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Tally::default();
        for t in self.tasks {
            all.merge(t.await.expect("load task"));
        }
        all
    }
}

// ---------------------------------------------------------------- 1. propagation

/// A shift through A is served by B and C (measured), concurrent conflicting
/// shifts through A and B end with one winner everywhere and the loser told,
/// a rollback through C applies everywhere, and sticky keys land on the same
/// variant on every replica.
#[tokio::test]
async fn changes_through_any_replica_reach_every_replica_and_conflicts_have_one_winner() {
    let redis = Redis::start().await;
    let a = FaultBackend::start("srv-a").await;
    let b = FaultBackend::start("srv-b").await;
    let body = format!(
        "{}backends:\n{}{}models:\n  m:\n    sticky_header: x-user\n    variants:\n      - {{name: v1, backend: a, weight: 100}}\n      - {{name: v2, backend: b, weight: 0}}\n",
        fleet_section(&redis, "prop"),
        backend_line("a", &a.url()),
        backend_line("b", &b.url()),
    );
    let r = start_replicas(&[body.clone(), body.clone(), body]).await;
    let (ra, rb, rc) = (&r[0], &r[1], &r[2]);
    let all = [ra, rb, rc];
    for sy in all {
        let f = fleet_of(sy).await;
        assert_eq!(f["connected"], true, "{f}");
        assert_eq!(f["name"], "prop", "{f}");
    }
    // A new fleet has no shared record until its first change.
    assert_eq!(converged(&all, "m", &w(&[("v1", 100.0), ("v2", 0.0)]), "start").await, 0);
    assert_eq!(redis.cli(&["EXISTS", "switchyard:fleet:prop:state"]).as_deref(), Some("0"));
    // The fleet's first change can be rolled back: what was live before it is in the history.
    ctl_post(rb, "/ml/models/m/traffic", json!({"weights": {"v1": 95, "v2": 5}})).await;
    converged(&all, "m", &w(&[("v1", 95.0), ("v2", 5.0)]), "the first change").await;
    ctl_post(rc, "/ml/models/m/rollback", json!({})).await;
    converged(&all, "m", &w(&[("v1", 100.0), ("v2", 0.0)]), "its rollback").await;

    // Shifts through A, each timed until B and C serve it. The last three are
    // made right after every subscription was cut (`CLIENT KILL TYPE pubsub`):
    // their notification is lost, and polling (or resubscribing) must find them.
    let (mut took, mut missed) = (Vec::new(), Vec::new());
    for k in 1..=13u32 {
        if k > 10 {
            redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).expect("CLIENT KILL");
        }
        let v2 = (k * 10 % 110) as f64;
        let want = w(&[("v1", 100.0 - v2), ("v2", v2)]);
        let r = ctl_post(ra, "/ml/models/m/traffic", json!({"weights": {"v1": 100.0 - v2, "v2": v2}})).await;
        let g = fleet_generation(&r);
        let t0 = Instant::now();
        for sy in [rb, rc] {
            loop {
                let cfg = ctl_get(sy, "/config").await;
                if cfg["fleet_generation"].as_u64() >= Some(g) && weights_in(&cfg, "m") == want {
                    break;
                }
                assert!(t0.elapsed() < LONG, "shift {k} never reached a replica: {cfg}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        if k > 10 { &mut missed } else { &mut took }.push(t0.elapsed());
    }
    took.sort();
    missed.sort();
    let (median, max) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!(
        "fleet convergence of a shift through A on B and C: median {median:?}, max {max:?} over {} shifts",
        took.len()
    );
    eprintln!("fleet convergence with the notification lost: {missed:?}");
    assert!(
        median < Duration::from_secs(1),
        "a shift must reach every replica within 1 s: median {median:?}, max {max:?}"
    );
    assert!(missed[1] < Duration::from_secs(1), "a lost notification is made up for within 1 s: {missed:?}");
    ctl_post(ra, "/ml/models/m/traffic", json!({"weights": {"v1": 0, "v2": 100}})).await;
    converged(&all, "m", &w(&[("v1", 0.0), ("v2", 100.0)]), "100% v2").await;

    // The data plane of C serves what was set through A.
    let t = send(&rc.http_url(), "m", 20).await;
    assert_eq!(t.by_variant.get("v2"), Some(&20), "100% v2 on C: {t:?}");

    // Concurrent conflicting shifts on the same generation: one wins, the other is told.
    let g = fleet_generation(&ctl_get(ra, "/config").await);
    let if_match = g.to_string();
    let pre = [("if-match", if_match.as_str())];
    let (x, y) = tokio::join!(
        ctl_call(ra, Method::POST, "/ml/models/m/traffic", &pre, Some(json!({"weights": {"v1": 70, "v2": 30}}))),
        ctl_call(rb, Method::POST, "/ml/models/m/traffic", &pre, Some(json!({"weights": {"v1": 20, "v2": 80}}))),
    );
    let mut statuses = [x.status, y.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "one winner, one loser: {} / {}", x.text(), y.text());
    let (winner, loser) = if x.status == 200 { (&x, &y) } else { (&y, &x) };
    assert!(loser.error().contains("generation"), "the loser is told which generation won: {}", loser.text());
    let won = w(if x.status == 200 { &[("v1", 70.0), ("v2", 30.0)] } else { &[("v1", 20.0), ("v2", 80.0)] });
    let gw = converged(&all, "m", &won, "after the conflict").await;
    assert_eq!(gw, fleet_generation(&winner.json()), "the winner's generation is the fleet's");
    let r = ctl_call(ra, Method::POST, "/reload", &pre, None).await;
    assert_eq!(r.status, 400, "If-Match where it cannot apply is refused, not ignored: {}", r.text());
    // Without a precondition a change applies on the latest state.
    ctl_post(rb, "/ml/models/m/traffic", json!({"weights": {"v1": 50, "v2": 50}})).await;
    converged(&all, "m", &w(&[("v1", 50.0), ("v2", 50.0)]), "a later shift through B").await;

    // A rollback through C restores the previous state everywhere.
    let r = ctl_post(rc, "/ml/models/m/rollback", json!({})).await;
    assert_eq!(r["weights"], json!({"v1": won["v1"], "v2": won["v2"]}), "{r}");
    converged(&all, "m", &won, "rollback through C").await;
    for sy in all {
        let s = ctl_get(sy, "/ml/models/m/status").await;
        let v2 = s["variants"].as_array().unwrap().iter().find(|v| v["name"] == "v2").unwrap().clone();
        assert_eq!(v2["source"], "rollback", "{s}");
        let h = ctl_get(sy, "/ml/models/m/versions").await["history"].clone();
        assert_eq!(h, ctl_get(ra, "/ml/models/m/versions").await["history"], "one history for the fleet");
    }

    // Sticky keys: the same key lands on the same variant on every replica.
    let client = HttpClient::new();
    let mut per_key = BTreeMap::new();
    for key in 0..40u64 {
        let user = format!("user-{key}");
        let mut seen = Vec::new();
        for sy in all {
            let (s, v) = infer(&client, &sy.http_url(), "m", key, &[("x-user", &user)]).await.expect("answer");
            assert_eq!(s, 200);
            seen.push(v);
        }
        assert!(seen.iter().all(|v| *v == seen[0]), "{user} landed on {seen:?}");
        per_key.insert(user, seen[0].clone());
    }
    let v2 = per_key.values().filter(|v| *v == "v2").count();
    assert!(v2 > 0 && v2 < 40, "sticky keys spread over both variants: {per_key:?}");
}

// ---------------------------------------------------------------- 2. Redis down

/// Redis frozen (SIGSTOP), then killed and started empty, while every replica
/// serves a load: no data-plane request fails, API changes are refused with
/// 503 naming the cause, `/ready` and the metrics say so, and once Redis is
/// back every replica converges (an empty Redis is seeded again).
#[tokio::test]
async fn a_frozen_or_lost_redis_drops_no_request_refuses_changes_and_converges_after() {
    let mut redis = Redis::start().await;
    let a = FaultBackend::start("srv-a").await;
    let b = FaultBackend::start("srv-b").await;
    let body = format!(
        "{}backends:\n{}{}models:\n  m:\n    variants:\n      - {{name: v1, backend: a, weight: 100}}\n      - {{name: v2, backend: b, weight: 0}}\n",
        fleet_section(&redis, "down"),
        backend_line("a", &a.url()),
        backend_line("b", &b.url()),
    );
    let r = start_replicas(&[body.clone(), body.clone(), body.clone()]).await;
    let all = [&r[0], &r[1], &r[2]];
    let mut late = None;
    ctl_post(all[0], "/ml/models/m/traffic", json!({"weights": {"v1": 60, "v2": 40}})).await;
    let before = w(&[("v1", 60.0), ("v2", 40.0)]);
    converged(&all, "m", &before, "before the outage").await;
    let loads: Vec<Load> = all.iter().map(|sy| Load::start(&sy.http_url(), &["m"], 2)).collect();

    for (what, freeze) in [("frozen", true), ("killed", false)] {
        let g_before = converged(&all, "m", &before, "before the outage").await;
        if freeze {
            redis.freeze();
        } else {
            redis.kill();
        }
        for sy in all {
            assert_eventually!(
                patience = LONG,
                fleet_of(sy).await["connected"] == false,
                "Redis {what}: /ready says the fleet is unreachable: {}",
                fleet_of(sy).await
            );
            assert_eq!(metric(&sy.metrics().await, "switchyard_fleet_connected", &[]), 0.0);
        }
        let f = fleet_of(all[0]).await;
        assert!(f["detail"].as_str().is_some_and(|d| d.contains("unreachable")), "{f}");
        for (i, sy) in all.iter().enumerate() {
            let r = ctl_call(sy, Method::POST, "/ml/models/m/traffic", &[], Some(json!({"weights": {"v2": 99}}))).await;
            assert_eq!(r.status, 503, "Redis {what}: a change through replica {i} is refused: {}", r.text());
            assert!(r.error().contains("unreachable") && r.error().contains("nothing was applied"), "{}", r.text());
            assert_eq!(weights(sy, "m").await, before, "the last state keeps serving");
        }
        if !freeze {
            // A replica that starts while Redis is gone serves its file (ready, and saying so) ...
            let d = Switchyard::config(&body).start().await;
            assert_eq!(fleet_of(&d).await["connected"], false, "{}", fleet_of(&d).await);
            assert_eq!(weights(&d, "m").await, w(&[("v1", 100.0), ("v2", 0.0)]));
            late = Some(d);
        }
        if freeze {
            redis.thaw();
        } else {
            redis.restart().await;
        }
        for sy in all {
            assert_eventually!(
                patience = LONG,
                fleet_of(sy).await["connected"] == true,
                "Redis back after {what}: {}",
                fleet_of(sy).await
            );
        }
        let g_after = converged(&all, "m", &before, &format!("after Redis was {what}")).await;
        // A Redis that lost its data is seeded again with the numbering continued.
        assert!(g_after >= g_before && (freeze || g_after > g_before), "{what}: generation {g_before} → {g_after}");
        if let Some(d) = &late {
            // ... and never seeds an empty Redis with it: it takes the fleet's state.
            converged(&[all[0], all[1], all[2], d], "m", &before, "the replica started while Redis was gone").await;
            assert_eq!(fleet_of(d).await["connected"], true);
        }
        // Changes go through again, and reach everyone.
        let next = if freeze { w(&[("v1", 30.0), ("v2", 70.0)]) } else { w(&[("v1", 60.0), ("v2", 40.0)]) };
        ctl_post(all[1], "/ml/models/m/traffic", json!({"weights": next})).await;
        converged(&all, "m", &next, &format!("a shift through B after Redis was {what}")).await;
        if let Some(d) = &late {
            converged(&[d], "m", &next, "the late replica follows").await;
        }
        // The next round starts from the state just set.
        if freeze {
            ctl_post(all[2], "/ml/models/m/traffic", json!({"weights": before})).await;
            converged(&all, "m", &before, "back to the state before").await;
        }
    }
    let mut tally = Tally::default();
    for l in loads {
        tally.merge(l.stop().await);
    }
    assert!(
        tally.broken.is_empty(),
        "{} data-plane requests failed; first: {:?}",
        tally.broken.len(),
        &tally.broken[..tally.broken.len().min(10)]
    );
    assert!(tally.ok > 100, "the load ran: {tally:?}");
}

// ---------------------------------------------------------------- 3. one judge

fn rollout_model(name: &str, canary_backend: &str, steps: &str, interval: &str, max_err: f64) -> String {
    format!(
        "  {name}:\n    variants:\n      - {{name: baseline, backend: base, weight: 100}}\n      - {{name: canary, backend: {canary_backend}, weight: 0}}\n    rollout: {{baseline: baseline, canary: canary, steps: {steps}, interval: {interval}, min_requests: 20, max_error_rate_increase: {max_err}, max_p99_ratio: 1000}}\n"
    )
}

/// Canary weights in a model's history, in order.
async fn canary_history(sy: &Switchyard, model: &str) -> Vec<f64> {
    let h = ctl_get(sy, &format!("/ml/models/{model}/versions")).await["history"].clone();
    h.as_array().unwrap().iter().map(|e| e["weights"]["canary"].as_f64().unwrap()).collect()
}

async fn rollout_of(sy: &Switchyard, model: &str) -> Value {
    ctl_get(sy, &format!("/ml/models/{model}/status")).await["rollout"].clone()
}

/// Which replica holds the judge lease (every replica's `/ready` agrees on one).
async fn judge(replicas: &[&Switchyard]) -> usize {
    let deadline = Instant::now() + LONG;
    loop {
        let mut judges = Vec::new();
        for (i, sy) in replicas.iter().enumerate() {
            if fleet_of(sy).await["judge"] == true {
                judges.push(i);
            }
        }
        if judges.len() == 1 {
            return judges[0];
        }
        assert!(Instant::now() < deadline, "no single judge: {judges:?}");
        tokio::time::sleep(common::POLL).await;
    }
}

/// B starts first and so judges. The `err` canary fails only behind replica
/// A (every 4th request): on B's own numbers it is healthy, on the fleet's it
/// is not — it is rolled back once, fleet-wide. The `ok` canary is promoted
/// once. Then the judge is killed (-9) in the middle of the `steps` rollout:
/// another replica takes the lease and continues from the persisted step,
/// with no step repeated or skipped.
#[tokio::test]
async fn canaries_are_judged_once_on_merged_numbers_and_a_new_judge_continues_the_rollout() {
    let redis = Redis::start().await;
    let base = FaultBackend::start("base").await;
    let good = FaultBackend::start("good").await;
    let bad = FaultBackend::start("bad").await;
    bad.fail_every(4);
    let body = |err_canary: &str| {
        format!(
            "{}backends:\n{}{}{}models:\n{}{}{}",
            fleet_section(&redis, "judge"),
            backend_line("base", &base.url()),
            backend_line("good", &good.url()),
            backend_line("bad", &bad.url()),
            rollout_model("err", err_canary, "[10, 50, 100]", "500ms", 0.02),
            rollout_model("ok", "good", "[10, 50, 100]", "500ms", 0.02),
            rollout_model("steps", "good", "[10, 20, 30, 40, 50, 60, 70, 80, 90, 100]", "1s", 0.5),
        )
    };
    // B starts first and takes the lease before the others exist.
    let b = Switchyard::config(&body("good")).start().await;
    assert_eventually!(patience = LONG, fleet_of(&b).await["judge"] == true, "B takes the lease");
    let a = Switchyard::config(&body("bad")).start().await;
    let c = Switchyard::config(&body("good")).start().await;
    assert_eq!(judge(&[&b, &a, &c]).await, 0, "B judges");
    let models = ["err", "ok", "steps"];
    let la = Load::start(&a.http_url(), &models, 2);
    let lb = Load::start(&b.http_url(), &models, 2);
    let lc = Load::start(&c.http_url(), &models, 2);

    for (m, want) in [("err", "rolled_back"), ("ok", "promoted")] {
        assert_eventually!(
            patience = LONG,
            rollout_of(&b, m).await["status"] == want,
            "{m} ends {want}: {}",
            rollout_of(&b, m).await
        );
    }
    let err = rollout_of(&b, "err").await;
    assert!(err["reason"].as_str().is_some_and(|r| r.contains("error rate")), "{err}");
    for sy in [&a, &c] {
        assert_eventually!(rollout_of(sy, "err").await["status"] == "rolled_back", "every replica shows the verdict");
        assert_eventually!(rollout_of(sy, "ok").await["status"] == "promoted", "every replica shows the verdict");
    }
    // Once: one rollback counted (by the judge), one rollback in the fleet's history.
    let mut rollbacks = 0.0;
    for sy in [&a, &b, &c] {
        rollbacks += metric(&sy.metrics().await, "switchyard_rollout_rollbacks_total", &[("model", "err")]);
    }
    assert_eq!(rollbacks, 1.0, "one rollback, fleet-wide");
    let h = ctl_get(&a, "/ml/models/err/versions").await["history"].clone();
    let automated =
        h.as_array().unwrap().iter().filter(|e| e["reason"].as_str().unwrap().contains("automated rollback")).count();
    assert_eq!(automated, 1, "{h}");
    assert_eq!(canary_history(&a, "ok").await, [0.0, 10.0, 50.0, 100.0], "the healthy canary stepped once each");
    // B's own numbers were clean (its canary answered every request): the
    // verdict came from the merged ones, where A's canary failures count.
    let canary = |m: &Metrics, code: Option<&str>| {
        let mut labels = vec![("model", "err"), ("variant", "canary")];
        labels.extend(code.map(|c| ("code", c)));
        metric(m, "switchyard_requests_total", &labels)
    };
    let (mb, ma) = (b.metrics().await, a.metrics().await);
    assert!(
        canary(&mb, None) > 0.0 && canary(&mb, Some("200")) == canary(&mb, None),
        "the judge's own canary: no error"
    );
    assert!(canary(&ma, Some("200")) < canary(&ma, None), "A's canary failed some requests");

    // Kill -9 the judge in the middle of `steps`.
    assert_eventually!(
        patience = LONG,
        rollout_of(&b, "steps").await["step"].as_u64() >= Some(2),
        "steps reaches its third step: {}",
        rollout_of(&b, "steps").await
    );
    assert_eq!(rollout_of(&b, "steps").await["status"], "progressing", "still running when the judge dies");
    let killed_at = rollout_of(&a, "steps").await["step"].as_u64().unwrap();
    let tb = lb.stop().await;
    drop(b); // SIGKILL of its process group: no release of the lease
    let t0 = Instant::now();
    let successor = judge(&[&a, &c]).await;
    eprintln!("judge lease taken over {:?} after the kill (lease_ttl 1.5s)", t0.elapsed());
    let s = if successor == 0 { &a } else { &c };
    assert_eventually!(
        patience = LONG,
        rollout_of(s, "steps").await["status"] == "promoted",
        "steps completes under the new judge: {}",
        rollout_of(s, "steps").await
    );
    let steps = canary_history(s, "steps").await;
    assert_eq!(
        steps,
        [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
        "no step repeated or skipped (killed at step {killed_at})"
    );
    for sy in [&a, &c] {
        assert_eventually!(rollout_of(sy, "steps").await["status"] == "promoted", "every replica shows it");
    }
    let (ta, tc) = (la.stop().await, lc.stop().await);
    for (name, t) in [("A", &ta), ("B", &tb), ("C", &tc)] {
        assert!(t.broken.is_empty(), "replica {name}: {:?}", &t.broken[..t.broken.len().min(10)]);
    }
}

// ---------------------------------------------------------------- 4. A/B tests

/// An A/B test created through A, with traffic through all three replicas:
/// every replica reports the same results, and they are those of the union
/// of the samples (the backends count what they answered).
#[tokio::test]
async fn ab_results_are_the_same_on_every_replica_and_those_of_the_union_of_samples() {
    let redis = Redis::start().await;
    let a = FaultBackend::start("srv-a").await;
    let b = FaultBackend::start("srv-b").await;
    b.fail_every(10);
    let body = format!(
        "{}backends:\n{}{}models:\n  m:\n    variants:\n      - {{name: a, backend: a, weight: 100}}\n      - {{name: b, backend: b, weight: 0}}\n",
        fleet_section(&redis, "ab"),
        backend_line("a", &a.url()),
        backend_line("b", &b.url()),
    );
    let r = start_replicas(&[body.clone(), body.clone(), body]).await;
    let all = [&r[0], &r[1], &r[2]];
    let created = ctl_post(
        all[0],
        "/ml/ab-tests/create",
        json!({"test_id": "t1", "model": "m", "model_a": "a", "model_b": "b", "traffic_split": 50,
               "minimum_sample_size": 100, "test_duration": "1h"}),
    )
    .await;
    converged(&all, "m", &w(&[("a", 50.0), ("b", 50.0)]), "the test's split").await;
    assert!(fleet_generation(&created) > 0, "{created}");
    let counts = [150u64, 200, 250];
    for (sy, n) in all.iter().zip(counts) {
        let t = send(&sy.http_url(), "m", n).await;
        assert!(t.broken.is_empty(), "{t:?}");
    }
    let total: u64 = counts.iter().sum();
    let requests = |res: &Value| -> u64 {
        res["variants"].as_array().unwrap().iter().map(|v| v["requests"].as_u64().unwrap()).sum()
    };
    for sy in all {
        assert_eventually!(
            patience = LONG,
            requests(&ctl_get(sy, "/ml/ab-tests/t1/results").await) == total,
            "every sample is counted: {}",
            ctl_get(sy, "/ml/ab-tests/t1/results").await
        );
    }
    let res: Vec<Value> = futures_join(all.iter().map(|sy| ctl_get(sy, "/ml/ab-tests/t1/results"))).await;
    assert_eq!(res[0], res[1], "A and B report the same results");
    assert_eq!(res[0], res[2], "A and C report the same results");
    // The union of samples: what the backends answered.
    let arm = |name: &str| res[0]["variants"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(arm("a")["requests"].as_u64(), Some(a.answered()), "{}", res[0]);
    assert_eq!(arm("b")["requests"].as_u64(), Some(b.answered()), "{}", res[0]);
    assert_eq!(arm("b")["errors"].as_u64(), Some(b.failed()), "{}", res[0]);
    assert_eq!(arm("a")["errors"], 0);
    let (z, p) = switchyard_stats::two_proportion_z_test(0, a.answered(), b.failed(), b.answered())
        .expect("both arms have samples");
    let c = &res[0]["comparisons"][0];
    assert!((c["p_value"].as_f64().unwrap() - p).abs() < 1e-12, "p-value of the union: {p} vs {c}");
    assert!((c["statistic"].as_f64().unwrap().abs() - z.abs()).abs() < 1e-9, "statistic of the union: {z} vs {c}");
    // Per-model metrics are the fleet's too, and agree across replicas.
    let metrics: Vec<Value> = futures_join(all.iter().map(|sy| ctl_get(sy, "/ml/models/m/metrics"))).await;
    for m in &metrics {
        assert_eq!(m["scope"], "fleet", "{m}");
        assert_eq!(m["variants"], metrics[0]["variants"], "the same fleet numbers on every replica");
    }
    let reqs: u64 = metrics[0]["variants"].as_array().unwrap().iter().map(|v| v["requests"].as_u64().unwrap()).sum();
    assert_eq!(reqs, total, "{}", metrics[0]);
    // The counters expire on their own.
    for key in ["switchyard:fleet:ab:stats:m:a", "switchyard:fleet:ab:ab:t1:b"] {
        let ttl: i64 = redis.cli(&["PTTL", key]).and_then(|t| t.parse().ok()).unwrap_or(-3);
        assert!(ttl > 0, "{key} has a TTL: {ttl}");
    }
}

async fn futures_join<F: std::future::Future<Output = Value>>(fs: impl Iterator<Item = F>) -> Vec<Value> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await);
    }
    out
}

// ---------------------------------------------------------------- 5. lease and fencing

/// The Redis scripts themselves, through the control crate's `Fleet`: one
/// lease holder at a time, a new token (higher) for each new holder, a stale
/// holder's decision refused by its fencing token even while it still
/// believes it holds the lease, and a compare-and-set that names what won.
#[tokio::test]
async fn the_lease_has_one_holder_and_a_stale_holders_decision_is_fenced_off() {
    use switchyard_control::fleet::{Fleet, WriteError};
    use switchyard_control::state::PersistedState;
    let redis = Redis::start().await;
    let cfg = switchyard_config::FleetConfig {
        redis: redis.url(),
        name: "fence".into(),
        poll_interval: Duration::from_millis(250),
        lease_ttl: Duration::from_secs(30),
        timeout: Duration::from_millis(500),
    };
    let (one, two) = (Fleet::new(cfg.clone()).unwrap(), Fleet::new(cfg).unwrap());
    assert_ne!(one.replica(), two.replica());
    assert!(one.renew_lease().await, "a free lease is taken");
    assert!(!two.renew_lease().await, "a held lease is not");
    assert!(one.renew_lease().await, "the holder renews");
    let t1 = one.judge_token().expect("the holder has a token");
    assert_eq!(two.judge_token(), None);

    let at = |generation: u64| PersistedState { generation, ..Default::default() };
    let state = at(1);
    assert!(matches!(one.write(0, &at(0), None).await, Err(WriteError::Conflict { .. })), "a generation must grow");
    let g1 = one.write(0, &state, Some(t1)).await.expect("the judge writes");
    assert_eq!(g1, 1);
    // The lease is lost (as if it expired while the holder was stalled); another replica takes it.
    redis.cli(&["DEL", "switchyard:fleet:fence:judge"]).expect("DEL");
    assert!(two.renew_lease().await, "an expired lease is taken over");
    let t2 = two.judge_token().unwrap();
    assert!(t2 > t1, "each new holder gets a higher token: {t1} then {t2}");
    assert_eq!(one.judge_token(), Some(t1), "the stale holder still believes it judges");
    let state = at(2);
    let e = one.write(g1, &state, Some(t1)).await.unwrap_err();
    assert!(matches!(e, WriteError::Fenced { token, .. } if token == t1), "{e:?}");
    assert_eq!(two.write(g1, &state, Some(t2)).await, Ok(2), "the new holder's decision goes through");
    // A change based on an old generation loses and is told who won.
    match one.write(g1, &state, None).await.unwrap_err() {
        WriteError::Conflict { expected, current, by } => {
            assert_eq!((expected, current), (1, 2));
            assert_eq!(by, two.replica());
        }
        e => panic!("{e:?}"),
    }
    assert!(!one.renew_lease().await, "the stale holder learns it lost the lease");
    assert_eq!(one.judge_token(), None);

    // A stats publish is applied once, however often it is sent.
    use switchyard_control::fleet::stats::{encode, Entry};
    let live = switchyard_stats::LiveStats::default();
    for ms in [1, 2, 40] {
        live.record(Duration::from_millis(ms), ms == 40);
    }
    let key = one.stats_key("m", "v");
    let entries = encode(&[Entry { key: key.clone(), ttl: Duration::from_secs(60), delta: live.snapshot() }]);
    assert_eq!(one.add_stats(1, entries.clone()).await, Ok(true));
    assert_eq!(one.add_stats(1, entries.clone()).await, Ok(false), "a publish sent again is not counted again");
    assert_eq!(two.add_stats(1, entries).await, Ok(true), "sequences are per replica");
    let merged = one.read_stats(vec![key]).await.unwrap().remove(0);
    let mut twice = live.snapshot();
    for b in twice.buckets.iter_mut() {
        *b *= 2;
    }
    assert_eq!((merged.requests, merged.errors), (6, 2));
    assert_eq!((merged.latency_us_sum, &merged.buckets), (2 * live.snapshot().latency_us_sum, &twice.buckets));
}
