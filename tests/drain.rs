//! Drain and zero-downtime upgrade against real processes: on SIGTERM the
//! listeners close, HTTP requests, gRPC calls and gRPC streams in flight
//! finish and the process exits 0; with `serve --upgrade` + SIGQUIT a new
//! process takes the sockets over under constant load (HTTP keep-alive,
//! gRPC unary and streaming) and no request fails. Slow clients and
//! oversized headers are cut at the configured limits while others are served.
//! `benches/drain.sh` runs the upgrade loop 20 times (`SWITCHYARD_UPGRADE_ROUNDS`) and prints the figures.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fault::FaultBackend;
use common::Switchyard;
use serde_json::json;
use switchyard_runtime::codec::grpc::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type GrpcClient = pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

async fn start(backend: &FaultBackend, extra: &str) -> Switchyard {
    Switchyard::config(&format!(
        "backends:\n  echo: {{kind: v2-http, endpoints: ['{}']}}\nmodels:\n  m:\n    variants:\n      - {{name: a, backend: echo}}\nlifecycle:\n  drain_timeout: 30s\n  upgrade_socket: upgrade.sock\n{extra}",
        backend.url()
    ))
    .start()
    .await
}

fn body(x: i32) -> String {
    json!({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": [x]}]}).to_string()
}

fn grpc_request(x: i32) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "m".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "INT32".into(),
            shape: vec![1],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes::Bytes::from(x.to_le_bytes().to_vec())],
        ..Default::default()
    }
}

async fn grpc_client(port: u16) -> GrpcClient {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect_lazy();
    GrpcClient::new(ch)
}

/// An RPC the client never sent: hyper cancels requests still queued for a
/// connection when the server's GOAWAY closes it. gRPC clients retry those
/// transparently (gRFC A6); tonic does not, so the test client does, and counts them.
fn never_sent(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    s.code() == tonic::Code::Cancelled && format!("{:?}", s.source()).contains("Canceled")
}

fn answer_of(r: &pb::ModelInferResponse) -> i32 {
    i32::from_le_bytes(r.raw_output_contents[0][..4].try_into().unwrap())
}

#[tokio::test]
async fn sigterm_closes_the_listeners_and_finishes_what_is_in_flight() {
    let backend = FaultBackend::start("b").await;
    let mut sy = start(&backend, "").await;
    backend.delay_ms(4000);
    let mut http = Vec::new();
    for i in 0..4 {
        let (client, url) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http_url()));
        http.push(tokio::spawn(async move { client.post(&url, &[], body(i)).await }));
    }
    let mut grpc = grpc_client(sy.grpc_port).await;
    let unary = {
        let mut c = grpc.clone();
        tokio::spawn(async move { c.model_infer(grpc_request(10)).await })
    };
    let stream = tokio::spawn(async move {
        let reqs = tonic::codegen::tokio_stream::iter(vec![grpc_request(20), grpc_request(21)]);
        let mut s = grpc.model_stream_infer(reqs).await?.into_inner();
        let mut got = Vec::new();
        while let Some(r) = s.message().await? {
            got.push(answer_of(r.infer_response.as_ref().expect("a response")));
        }
        Ok::<_, tonic::Status>(got)
    });
    assert_eventually!(backend.in_flight() >= 6, "all calls reached the backend");

    sy.signal("TERM");
    let signalled = std::time::Instant::now();
    // The listener closes at once while the calls are still running.
    assert_eventually!(
        tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.is_err(),
        "the HTTP listener closes"
    );
    assert!(backend.answered() < 6, "the listener closed before the calls finished");
    for (i, t) in http.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.json()["outputs"][0]["data"].clone()), (200, json!([i])), "{}", r.text());
        assert_eq!(r.header("connection"), Some("close"), "a draining answer closes its connection");
    }
    assert_eq!(answer_of(&unary.await.unwrap().expect("unary call completes").into_inner()), 10);
    let mut got = stream.await.unwrap().expect("the stream completes");
    got.sort();
    assert_eq!(got, [20, 21]);
    assert_eq!(sy.wait_exit(Duration::from_secs(20)).await, Some(0), "exits 0 once drained");
    eprintln!(
        "FIGURES drain: 4 HTTP + 1 unary + 1 stream in flight completed; exited {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert!(sy.log().contains("drained; exiting"), "{}", sy.log());
}

#[tokio::test]
async fn upgrades_under_load_lose_nothing() {
    let backend = FaultBackend::start("b").await;
    let mut sy = start(&backend, "").await;
    backend.delay_ms(20);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let retried = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    // Four keep-alive HTTP clients, one gRPC unary loop and one gRPC stream loop, back to back.
    for w in 0..4 {
        let (client, url) = (sy.client.clone(), format!("{}/v2/models/m/infer", sy.http_url()));
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match client.try_request(hyper::Method::POST, &url, &[], body(w * 100_000 + i).into()).await {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    r => {
                        errors.lock().unwrap().push(format!("http: {:?}", r.map(|r| (r.status, r.text()))));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let grpc = grpc_client(sy.grpc_port).await;
    {
        let (mut c, stop, ok, failed, errors) =
            (grpc.clone(), stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let retried = retried.clone();
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let mut r = c.model_infer(grpc_request(i)).await;
                if r.as_ref().is_err_and(never_sent) {
                    retried.fetch_add(1, Ordering::Relaxed);
                    r = c.model_infer(grpc_request(i)).await;
                }
                match r {
                    Ok(r) if answer_of(r.get_ref()) == i => ok.fetch_add(1, Ordering::Relaxed),
                    r => {
                        errors.lock().unwrap().push(format!("grpc unary: {r:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    {
        let (mut c, stop, ok, failed, errors) =
            (grpc.clone(), stop.clone(), ok.clone(), failed.clone(), errors.clone());
        let retried = retried.clone();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reqs = || tonic::codegen::tokio_stream::iter((0..5).map(grpc_request).collect::<Vec<_>>());
                let result = async {
                    let mut opened = c.model_stream_infer(reqs()).await;
                    if opened.as_ref().is_err_and(never_sent) {
                        retried.fetch_add(1, Ordering::Relaxed);
                        opened = c.model_stream_infer(reqs()).await;
                    }
                    let mut s = opened?.into_inner();
                    let mut n = 0;
                    while let Some(r) = s.message().await? {
                        if !r.error_message.is_empty() {
                            return Err(tonic::Status::internal(r.error_message));
                        }
                        n += 1;
                    }
                    Ok::<_, tonic::Status>(n)
                }
                .await;
                match result {
                    Ok(5) => ok.fetch_add(1, Ordering::Relaxed),
                    r => {
                        errors.lock().unwrap().push(format!("grpc stream: {r:?}"));
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // New connections every 5 ms to both ports: a refused one fails the test.
    let refused = Arc::new(AtomicU64::new(0));
    let connects = Arc::new(AtomicU64::new(0));
    for port in [sy.http_port, sy.grpc_port] {
        let (stop, refused, connects) = (stop.clone(), refused.clone(), connects.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                    Ok(_) => connects.fetch_add(1, Ordering::Relaxed),
                    Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // `benches/drain.sh` sets 20.
    let rounds: usize = std::env::var("SWITCHYARD_UPGRADE_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let socket = sy.config.parent().unwrap().join("upgrade.sock");
    let started = std::time::Instant::now();
    for round in 0..rounds {
        let before = ok.load(Ordering::Relaxed);
        assert_eventually!(ok.load(Ordering::Relaxed) > before + 20, "load flows before upgrade {round}");
        let _ = std::fs::remove_file(&socket);
        let mut old = sy.upgrade();
        assert_eventually!(socket.exists(), "the new process waits for the sockets");
        common::signal(old.pid(), "QUIT");
        assert_eq!(old.wait_exit(Duration::from_secs(40)).await, Some(0), "the old process drains and exits 0");
        assert_eventually!(
            sy.get("/startup").await.status == 200 && ok.load(Ordering::Relaxed) > before + 40,
            "the new process serves after upgrade {round}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let errors = errors.lock().unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failures across upgrades: {errors:?}");
    assert_eq!(refused.load(Ordering::Relaxed), 0, "refused connections across upgrades");
    assert!(ok.load(Ordering::Relaxed) > 100);
    eprintln!(
        "FIGURES upgrades={rounds} seconds={:.1} answered={} failed=0 refused_connections=0 connects={} grpc_retried_never_sent={}",
        started.elapsed().as_secs_f64(),
        ok.load(Ordering::Relaxed),
        connects.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn slow_and_oversized_headers_and_slow_bodies_are_cut_while_others_are_served() {
    let backend = FaultBackend::start("b").await;
    let sy = start(&backend, "limits:\n  header_read_timeout: 1s\n  body_read_timeout: 2s\n  max_header_bytes: 8192\n")
        .await;
    // A header over max_header_bytes, sent at once: the connection is cut, no answer comes.
    let mut big = tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.unwrap();
    let pad = "a".repeat(200_000);
    let _ = big.write_all(format!("GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n").as_bytes()).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), big.read_to_end(&mut buf)).await.expect("cut");
    assert!(
        read.is_err() || !String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // One just under the limit is served.
    let pad = "a".repeat(6000);
    let r = sy.client.get_with(&format!("{}/v2/health/ready", sy.http_url()), &[("x-pad", &pad)]).await;
    assert_eq!(r.status, 200);
    // A header trickled a byte at a time: each read is quick, the whole is not.
    let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Written out: the server must have closed it by now; a read sees the end.
        let mut buf = [0u8; 64];
        matches!(slow.read(&mut buf).await, Ok(0) | Err(_))
    });
    // Others are served meanwhile.
    for i in 0..5 {
        assert_eq!(sy.post("/v2/models/m/infer", &[], body(i)).await.status, 200);
    }
    assert!(tokio::time::timeout(Duration::from_secs(30), trickle).await.unwrap().unwrap(), "slow header cut");

    // A body trickled after its header: cut at body_read_timeout with 408.
    let mut slow_body = tokio::net::TcpStream::connect(("127.0.0.1", sy.http_port)).await.unwrap();
    slow_body
        .write_all(b"POST /v2/models/m/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let cut = tokio::spawn(async move {
        let mut answer = Vec::new();
        for _ in 0..100 {
            if slow_body.write_all(b" ").await.is_err() {
                break;
            }
            let mut buf = [0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), slow_body.read(&mut buf)).await {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
        }
        String::from_utf8_lossy(&answer).to_string()
    });
    let answer = tokio::time::timeout(Duration::from_secs(60), cut).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(sy.get("/v2/health/ready").await.status, 200);
}
