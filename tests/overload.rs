//! Admission control against a real process: excess load past a model's
//! concurrency limit and queue is refused at once with 503 + `Retry-After`
//! (before its body is read), never reaches the backend, and priorities
//! decide who is shed. The heavy figures (3× capacity) are
//! `benches/overload.sh`'s; these check the behaviour only.

mod common;

use std::time::Duration;

use common::fault::FaultBackend;
use common::Switchyard;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn body(x: i32, priority: Option<u64>) -> String {
    let mut b = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [x]}]});
    if let Some(p) = priority {
        b["parameters"] = json!({ "priority": p });
    }
    b.to_string()
}

async fn start(backend: &FaultBackend, admission: &str) -> Switchyard {
    Switchyard::config(&format!(
        "backends:\n  echo: {{kind: v2-http, endpoints: ['{}']}}\nmodels:\n  m:\n    variants:\n      - {{name: a, backend: echo}}\nadmission:\n{admission}",
        backend.url()
    ))
    .start()
    .await
}

#[tokio::test]
async fn excess_is_refused_at_once_with_retry_after_and_never_reaches_the_backend() {
    let backend = FaultBackend::start("b").await;
    let sy = start(&backend, "  retry_after: 2s\n  models:\n    m: { limit: 2, queue: 1, queue_timeout: 60s }\n").await;
    backend.delay_ms(3000);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (client, url) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http_url()));
        tasks.push(tokio::spawn(async move { client.post(&url, &[], body(i, None)).await }));
    }
    // Two slots and one queue place: three are held, five refused.
    assert_eventually!(
        sy.metrics().await.value("switchyard_admission_refused_total", &[("name", "m"), ("reason", "full")]) == 5.0,
        "five refused"
    );
    // Refused while the backend still holds the admitted ones: nothing waited on it.
    assert_eq!(backend.answered(), 0, "the refusals did not wait for the backend");
    assert!(backend.in_flight() <= 2, "the backend never sees more than the limit");
    // A request whose body would be large is refused from its headers alone:
    // the answer comes although not one byte of the body was sent.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.unwrap();
    raw.write_all(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), raw.read(&mut head)).await.expect("answered").unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after: 2"), "{head}");

    let mut codes = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        if r.status == 503 {
            assert_eq!(r.header("retry-after"), Some("2"));
            assert!(r.error().contains("concurrency limit"), "{}", r.error());
        }
        codes.push(r.status);
    }
    codes.sort();
    assert_eq!(codes, [200, 200, 200, 503, 503, 503, 503, 503]);
    assert_eq!(backend.infers(), 3, "refused requests never reached the backend");
    let m = sy.metrics().await;
    assert_eq!(m.value("switchyard_concurrency_in_flight", &[("scope", "model"), ("name", "m")]), 0.0);
    assert_eq!(m.value("switchyard_concurrency_queued", &[("scope", "model"), ("name", "m")]), 0.0);
}

#[tokio::test]
async fn a_higher_priority_request_displaces_a_queued_lower_one() {
    let backend = FaultBackend::start("b").await;
    let sy =
        start(&backend, "  default_priority: 2\n  backends:\n    echo: { limit: 1, queue: 1, queue_timeout: 60s }\n")
            .await;
    backend.delay_ms(1500);
    let post = |x: i32, p: Option<u64>| {
        let (client, url) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http_url()));
        tokio::spawn(async move { client.post(&url, &[], body(x, p)).await })
    };
    let queued = |n: f64| {
        let sy = &sy;
        async move {
            sy.metrics().await.value("switchyard_concurrency_queued", &[("scope", "backend"), ("name", "echo")]) == n
        }
    };
    let holder = post(0, None);
    assert_eventually!(backend.in_flight() == 1, "the slot is taken");
    let low = post(1, Some(3));
    assert_eventually!(queued(1.0).await, "the low-priority request waits");
    let high = post(2, Some(1));
    let low = low.await.unwrap();
    assert_eq!(low.status, 503, "{}", low.text());
    assert!(low.error().contains("higher priority"), "{}", low.error());
    assert_eq!(holder.await.unwrap().status, 200);
    let high = high.await.unwrap();
    assert_eq!((high.status, high.json()["outputs"][0]["data"].clone()), (200, json!([2])));
    // A default-priority request cannot displace the queued priority-1 one, so it is refused at once.
    let holder = post(3, None);
    assert_eventually!(backend.in_flight() == 1, "the slot is taken again");
    let top = post(4, Some(1));
    assert_eventually!(queued(1.0).await, "the top-priority request waits");
    let r = sy.post("/v2/models/m/infer", &[], body(5, None)).await;
    assert_eq!(r.status, 503);
    assert_eq!((holder.await.unwrap().status, top.await.unwrap().status), (200, 200));
    let m = sy.metrics().await;
    assert_eq!(m.value("switchyard_admission_refused_total", &[("name", "echo"), ("reason", "shed")]), 1.0);
}

/// One request on a fresh connection: the status line, or `None` when the
/// connection is closed without an answer.
async fn fresh(port: u16, request: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(request.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    text.lines().next().filter(|l| l.starts_with("HTTP/")).map(|l| format!("{l}\n{text}"))
}

#[tokio::test]
async fn at_the_connection_cap_probes_and_metrics_still_answer() {
    let backend = FaultBackend::start("b").await;
    let sy = Switchyard::config(&format!(
        "backends:\n  echo: {{kind: v2-http, endpoints: ['{}']}}\nmodels:\n  m:\n    variants:\n      - {{name: a, backend: echo}}\nlimits:\n  max_connections: 4\n  header_read_timeout: 60s\n",
        backend.url()
    ))
    .start()
    .await;
    let infer = format!(
        "POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body(1, None).len(),
        body(1, None)
    );
    let ready = "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    assert!(fresh(sy.http_port, &infer).await.unwrap().starts_with("HTTP/1.1 200"));
    // Four idle connections fill the cap.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.unwrap());
    }
    assert_eventually!(
        fresh(sy.http_port, &infer).await.is_some_and(|r| r.starts_with("HTTP/1.1 503")),
        "past the cap an inference is refused"
    );
    let refused = fresh(sy.http_port, &infer).await.unwrap();
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("max_connections"), "{refused}");
    assert!(fresh(sy.http_port, ready).await.unwrap().starts_with("HTTP/1.1 200"), "probes still answer");
    assert_eq!(sy.client.get(&sy.metrics_url()).await.status, 200, "the metrics port still answers");
    // Past the probe reserve (32 more) a new connection is closed at once:
    // of 44 idle connections, the process keeps at most 36 open.
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.unwrap());
    }
    let open = async |idle: &mut Vec<tokio::net::TcpStream>| {
        let mut n = 0;
        for s in idle.iter_mut() {
            let mut b = [0u8; 16];
            if tokio::time::timeout(Duration::from_millis(50), s.read(&mut b)).await.is_err() {
                n += 1; // still open: nothing to read, no end
            }
        }
        n
    };
    assert_eventually!(open(&mut idle).await <= 36, "the process holds at most max_connections + 32");
    assert_eq!(sy.client.get(&sy.metrics_url()).await.status, 200, "the metrics port still answers");
    drop(idle);
    assert_eventually!(
        fresh(sy.http_port, &infer).await.is_some_and(|r| r.starts_with("HTTP/1.1 200")),
        "served again once connections close"
    );
}

#[tokio::test]
async fn a_queued_request_whose_client_left_never_runs() {
    let backend = FaultBackend::start("b").await;
    let sy = start(&backend, "  models:\n    m: { limit: 1, queue: 4, queue_timeout: 60s }\n").await;
    backend.delay_ms(1500);
    let holder = {
        let (client, url) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http_url()));
        tokio::spawn(async move { client.post(&url, &[], body(0, None)).await })
    };
    assert_eventually!(backend.in_flight() == 1, "the slot is taken");
    // A client queues a request, then hangs up while it waits.
    let b = body(1, None);
    let mut gone = tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.unwrap();
    gone.write_all(
        format!("POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len())
            .as_bytes(),
    )
    .await
    .unwrap();
    let queued =
        || async { sy.metrics().await.value("switchyard_concurrency_queued", &[("scope", "model"), ("name", "m")]) };
    assert_eventually!(queued().await == 1.0, "the request waits for the slot");
    drop(gone);
    assert_eventually!(queued().await == 0.0, "the abandoned request leaves the queue");
    assert_eq!(holder.await.unwrap().status, 200);
    // The slot is free again and the abandoned request never reached the backend.
    assert_eq!(sy.post("/v2/models/m/infer", &[], body(2, None)).await.status, 200);
    assert_eq!(backend.infers(), 2, "only the two requests whose clients waited ran");
}

/// Priorities from the principal: under overload a priority-1 principal keeps
/// being served while a priority-5 one is shed, although the latter asks for
/// priority 1 in every request (a principal's priority caps what its
/// requests may claim).
#[tokio::test]
async fn a_high_priority_principal_is_served_while_a_low_one_is_shed() {
    let hash = |k: &str| -> String {
        switchyard_proxy::auth::sha256(k.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    };
    let backend = FaultBackend::start("b").await;
    let sy = Switchyard::config(&format!(
        "backends:\n  echo: {{kind: v2-http, endpoints: ['{}']}}\nmodels:\n  m:\n    variants:\n      - {{name: a, backend: echo}}\n\
         admission:\n  default_priority: 3\n  models:\n    m: {{ limit: 1, queue: 4, queue_timeout: 60s }}\n\
         auth:\n  api_keys:\n    - {{principal: gold, sha256: 'sha256:{}', permissions: ['model:*:infer'], priority: 1}}\n\
         \x20   - {{principal: bronze, sha256: 'sha256:{}', permissions: ['model:*:infer'], priority: 5}}\n",
        backend.url(),
        hash("gold-key"),
        hash("bronze-key"),
    ))
    .start()
    .await;
    backend.delay_ms(50);
    // Closed loops: 2 gold clients, 5 bronze ones (which alone fill the slot and the queue).
    let worker = |key: &'static str, claim: Option<u64>, rounds: usize| {
        let (client, url) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http_url()));
        tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..rounds {
                let r = client.post(&url, &[("x-api-key", key)], body(i as i32, claim)).await;
                out.push((r.status, if r.status == 200 { String::new() } else { r.error() }));
            }
            out
        })
    };
    let bronze: Vec<_> = (0..5).map(|_| worker("bronze-key", Some(1), 12)).collect();
    assert_eventually!(backend.in_flight() == 1, "bronze holds the slot");
    let gold: Vec<_> = (0..2).map(|_| worker("gold-key", None, 10)).collect();
    let (mut gold_served, mut gold_failed) = (0, Vec::new());
    for g in gold {
        for (status, err) in g.await.unwrap() {
            if status == 200 {
                gold_served += 1;
            } else {
                gold_failed.push((status, err));
            }
        }
    }
    let (mut bronze_served, mut bronze_shed) = (0, 0);
    for b in bronze {
        for (status, err) in b.await.unwrap() {
            match status {
                200 => bronze_served += 1,
                503 if err.contains("higher priority") => bronze_shed += 1,
                _ => {}
            }
        }
    }
    // Gold is never shed for bronze, and is served nearly always (a gold
    // request can only be refused at the first gate, in the instant every
    // place is reserved by bronze requests still reading their bodies).
    assert!(gold_failed.iter().all(|(_, e)| !e.contains("higher priority")), "{gold_failed:?}");
    assert!(gold_served >= 18, "gold served {gold_served} of 20: {gold_failed:?}");
    assert!(bronze_shed > 0, "bronze requests were shed for gold ones");
    assert!(bronze_served < 60, "bronze was refused part of its load ({bronze_served} of 60 served)");
    let m = sy.metrics().await;
    assert!(m.value("switchyard_admission_refused_total", &[("name", "m"), ("reason", "shed")]) >= 1.0);
}
