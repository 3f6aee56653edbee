//! Backend endpoints from DNS (`dns: name:port`, as a Kubernetes headless
//! Service gives them): the built binary resolves the name through a stub DNS
//! server on loopback that this test controls (`common::dns`), and the endpoint set follows
//! the answers without a reload: replicas that join get traffic, replicas
//! that leave get no new requests but finish the ones they have, a failing
//! DNS server keeps the last set, and a name with no address empties it.
//!
//! The replicas are `common::fault::FaultBackend`s on one port and three
//! loopback addresses (127.0.0.11-13), as pods of one Service would be.

mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use common::dns::{Answer, StubDns};
use common::fault::FaultBackend;
use common::{free_port, HttpClient, Proc, TempDir};
use serde_json::json;

const JSON: (&str, &str) = ("content-type", "application/json");
const NAME: &str = common::dns::NAME;

fn replica_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 10 + i)
}

/// Three replicas on one port (replica i at 127.0.0.(10+i)), named r1..r3.
async fn replicas() -> (u16, Vec<FaultBackend>) {
    for _ in 0..20 {
        let port = free_port();
        let mut out = Vec::new();
        for i in 1..=3u8 {
            match FaultBackend::start_at(&format!("r{i}"), SocketAddr::from((replica_ip(i), port))).await {
                Ok(b) => out.push(b),
                Err(_) => break,
            }
        }
        if out.len() == 3 {
            return (port, out);
        }
    }
    panic!("no port free on 127.0.0.11-13");
}

fn body(i: usize) -> String {
    json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1], "data": [i as f32]}]}).to_string()
}

struct Sy {
    proc: Proc,
    http: String,
    client: HttpClient,
    _dir: TempDir,
}

async fn start(dns_port: u16, backend_port: u16) -> Sy {
    let dir = TempDir::new("dns");
    let http_port = free_port();
    let cfg = format!(
        "listeners:\n  http:\n    address: 127.0.0.1:{http_port}\n  metrics:\n    enabled: false\n  control:\n    enabled: false\n  grpc:\n    enabled: false\n\
         resolver:\n  nameservers: [\"127.0.0.1:{dns_port}\"]\n\
         backends:\n  triton:\n    kind: v2-http\n    dns: \"{}:{backend_port}\"\n    dns_refresh: 1s\n    eject_after_failures: 1000\n\
         models:\n  m:\n    variants:\n      - {{name: a, backend: triton}}\n",
        NAME.trim_end_matches('.')
    );
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("serve").arg("--config").arg(&path).env("SWITCHYARD_LOG_FORMAT", "text");
    let mut proc = Proc::spawn("switchyard", cmd, dir.path().join("switchyard.log"));
    let client = HttpClient::new();
    let http = format!("http://127.0.0.1:{http_port}");
    assert_eventually!(
        {
            proc.assert_running();
            client.try_request(hyper::Method::GET, &format!("{http}/startup"), &[], bytes::Bytes::new()).await.is_ok()
        },
        "switchyard started"
    );
    Sy { proc, http, client, _dir: dir }
}

impl Sy {
    /// Which replicas answer `n` requests (by the name each reports as model_version).
    async fn who_answers(&self, n: usize) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        for i in 0..n {
            let r = self.client.post(&format!("{}/v2/models/m/infer", self.http), &[JSON], body(i)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            seen.insert(r.json()["model_version"].as_str().unwrap_or_default().to_string());
        }
        seen
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_endpoint_set_follows_dns_answers_without_a_reload() {
    let (port, rs) = replicas().await;
    let dns = StubDns::start(Answer::Addresses(vec![replica_ip(1), replica_ip(2)])).await;
    let sy = start(dns.port, port).await;

    // The first answer: r1 and r2 share the traffic; r3 gets nothing.
    assert_eventually!(sy.who_answers(40).await == set(&["r1", "r2"]), "r1 and r2 serve");
    assert_eq!(rs[2].infers(), 0);

    // r1 alone, then r1 holds a request while it leaves the Service: that
    // request finishes on r1; new requests go to r2 and r3 only.
    dns.set(Answer::Addresses(vec![replica_ip(1)]));
    assert_eventually!(sy.who_answers(10).await == set(&["r1"]), "r1 alone serves");
    rs[0].delay_ms(3_000);
    let (client, url) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http));
    let held = tokio::spawn(async move { client.post(&url, &[JSON], body(0)).await });
    assert_eventually!(rs[0].in_flight() > 0, "a request held on r1");
    dns.set(Answer::Addresses(vec![replica_ip(2), replica_ip(3)]));
    assert_eventually!(sy.who_answers(20).await == set(&["r2", "r3"]), "r2 and r3 serve after the change");
    let before = rs[0].infers();
    assert_eq!(sy.who_answers(20).await, set(&["r2", "r3"]));
    let r = held.await.unwrap();
    assert_eq!((r.status, r.json()["model_version"].as_str()), (200, Some("r1")), "the held request finished on r1");
    rs[0].delay_ms(0);
    assert_eq!(rs[0].infers(), before, "no new request reached r1 once DNS dropped it");

    // A broken DNS server keeps the last set.
    dns.set(Answer::ServFail);
    let asked = dns.queries();
    assert_eventually!(dns.queries() >= asked + 2, "switchyard keeps asking");
    assert_eq!(sy.who_answers(20).await, set(&["r2", "r3"]), "SERVFAIL keeps the last endpoints");

    // All three back.
    dns.set(Answer::Addresses(vec![replica_ip(1), replica_ip(2), replica_ip(3)]));
    assert_eventually!(sy.who_answers(60).await == set(&["r1", "r2", "r3"]), "all three serve");

    // The name has no address any more: 503 naming the backend and its name, not ready.
    dns.set(Answer::NxDomain);
    let url = format!("{}/v2/models/m/infer", sy.http);
    assert_eventually!(sy.client.post(&url, &[JSON], body(0)).await.status == 503, "no endpoints: 503");
    let r = sy.client.post(&url, &[JSON], body(0)).await;
    assert!(r.text().contains("no endpoints") && r.text().contains("triton-headless"), "{}", r.text());
    assert_eq!(sy.client.get(&format!("{}/ready", sy.http)).await.status, 503);

    // And back again, without a reload.
    dns.set(Answer::Addresses(vec![replica_ip(3)]));
    assert_eventually!(
        sy.client.post(&url, &[JSON], body(0)).await.status == 200,
        "served again once the name resolves"
    );
    assert!(sy.proc.log().contains("endpoints from DNS changed"), "changes are logged");
}
