//! `switchyard serve`'s command-line settings that replace the config file's
//! (what an injected sidecar runs with: ports from the pod spec, the config
//! from a shared ConfigMap, state on a writable volume), and the per-variant
//! in-flight gauge an autoscaler reads. The built binary, real sockets, a
//! `common::fault::FaultBackend` as the model server.

mod common;

use common::fault::FaultBackend;
use common::{dead_address, free_port, HttpClient, Metrics, Proc, TempDir};
use serde_json::{json, Value};
use std::process::Command;

const JSON: (&str, &str) = ("content-type", "application/json");

fn body(i: usize) -> String {
    json!({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [i as f32, 1.0]}]}).to_string()
}

fn config(control_port: u16, backend: &str, extra_model: bool) -> String {
    // The file's own listener addresses are dead ones: only the overrides can make it serve.
    let mut c = format!(
        "listeners:\n  http:\n    address: {}\n  metrics:\n    address: {}\n  grpc:\n    address: {}\n  control:\n    address: 127.0.0.1:{control_port}\n\
         backends:\n  b: {{kind: v2-http, endpoints: [\"{backend}\"]}}\n\
         models:\n  m:\n    variants:\n      - {{name: a, backend: b, weight: 100}}\n      - {{name: z, backend: b, weight: 0}}\n",
        dead_address(),
        dead_address(),
        dead_address()
    );
    if extra_model {
        c.push_str("  m2:\n    variants:\n      - {name: only, backend: b}\n");
    }
    c
}

async fn wait_until_serving(proc: &mut Proc, client: &HttpClient, url: &str) {
    assert_eventually!(
        {
            proc.assert_running();
            client.try_request(hyper::Method::GET, url, &[], bytes::Bytes::new()).await.is_ok_and(|r| r.status == 200)
        },
        "switchyard serving at {url}"
    );
}

#[tokio::test]
async fn flags_and_environment_replace_the_files_listeners_and_state_location_across_reloads() {
    let backend = FaultBackend::start("server").await;
    let dir = TempDir::new("overrides");
    let cm = dir.path().join("configmap");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&cm).unwrap();
    std::fs::create_dir_all(&state_dir).unwrap();
    let cfg_path = cm.join("config.yaml");
    let control_port = free_port();
    std::fs::write(&cfg_path, config(control_port, &backend.url(), false)).unwrap();
    let (http, grpc, metrics) = (free_port(), free_port(), free_port());
    let state_file = state_dir.join("state.json");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .args(["--http-address", &format!("127.0.0.1:{http}")])
        .args(["--grpc-address", &format!("127.0.0.1:{grpc}")])
        .env("SWITCHYARD_METRICS_ADDRESS", format!("127.0.0.1:{metrics}"))
        .env("SWITCHYARD_STATE_FILE", &state_file)
        .env("SWITCHYARD_LOG_FORMAT", "text");
    let mut proc = Proc::spawn("switchyard", cmd, dir.path().join("switchyard.log"));
    let client = HttpClient::new();
    let data = format!("http://127.0.0.1:{http}");
    wait_until_serving(&mut proc, &client, &format!("{data}/startup")).await;

    // Served where the flags say; gRPC and metrics too.
    let r = client.post(&format!("{data}/v2/models/m/infer"), &[JSON], body(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(std::net::TcpStream::connect(("127.0.0.1", grpc)).is_ok(), "gRPC listens on the --grpc-address");
    let text = client.get(&format!("http://127.0.0.1:{metrics}/metrics")).await.text();
    assert!(text.contains("switchyard_requests_total"), "metrics on SWITCHYARD_METRICS_ADDRESS");

    // A traffic shift persists to SWITCHYARD_STATE_FILE, never beside the config.
    let control = format!("http://127.0.0.1:{control_port}");
    let r = client
        .post(&format!("{control}/ml/models/m/traffic"), &[JSON], json!({"weights": {"a": 0, "z": 100}}).to_string())
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eventually!(
        std::fs::read_to_string(&state_file).is_ok_and(|s| s.contains("\"z\"")),
        "the shift persisted to {}",
        state_file.display()
    );
    let beside: Vec<_> = std::fs::read_dir(&cm).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("config.yaml")], "nothing written beside the config");

    // A reload of the file (new model) keeps the overridden listeners: the
    // status the control API reports names them, and the new model is served there.
    std::fs::write(&cfg_path, config(control_port, &backend.url(), true)).unwrap();
    assert_eventually!(
        client.post(&format!("{data}/v2/models/m2/infer"), &[JSON], body(2)).await.status == 200,
        "the reloaded config's model m2 served on the --http-address"
    );
    let status: Value = client.get(&format!("{control}/config")).await.json();
    assert_eq!(status["listeners"]["http"], format!("127.0.0.1:{http}"), "{status}");
    assert_eq!(status["listeners"]["metrics"], format!("127.0.0.1:{metrics}"), "{status}");
    assert_eq!(status["listeners"]["grpc"], format!("127.0.0.1:{grpc}"), "{status}");
    assert!(!proc.log().contains("take effect on restart only"), "no listener change was seen: {}", proc.log());
    // The shift survived the reload (the API layer over the file).
    let r = client.post(&format!("{data}/v2/models/m/infer"), &[JSON], body(3)).await;
    assert_eq!(r.header("x-switchyard-variant"), Some("z"));
}

#[tokio::test]
async fn a_bad_override_is_refused_at_start_with_its_flag_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--config", "/nonexistent.yaml", "--http-address", "not-an-address"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--http-address"), "{err}");
}

#[tokio::test]
async fn the_variant_in_flight_gauge_counts_requests_until_they_are_answered() {
    let backend = FaultBackend::start("server").await;
    let sy = common::Switchyard::config(&format!(
        "backends:\n  b: {{kind: v2-http, endpoints: [\"{}\"]}}\nmodels:\n  m:\n    variants:\n      - {{name: a, backend: b}}\n",
        backend.url()
    ))
    .start()
    .await;
    let gauge = |m: &Metrics| m.get("switchyard_model_requests_in_flight", &[("model", "m"), ("variant", "a")]);
    assert_eq!(gauge(&sy.metrics().await), Some(0.0), "the series exists at 0 before any request");
    // Held long enough to be seen on a busy box; the test then waits them out.
    backend.delay_ms(5_000);
    let url = format!("{}/v2/models/m/infer", sy.http_url());
    let client = sy.client.clone();
    let slow = tokio::spawn(async move {
        let (a, b) = tokio::join!(client.post(&url, &[JSON], body(1)), client.post(&url, &[JSON], body(2)));
        (a.status, b.status)
    });
    assert_eventually!(gauge(&sy.metrics().await) == Some(2.0), "two requests in flight");
    assert_eq!(slow.await.unwrap(), (200, 200));
    assert_eq!(gauge(&sy.metrics().await), Some(0.0), "back to 0 once answered");
}

#[tokio::test]
async fn no_grpc_turns_the_files_grpc_listener_off() {
    let backend = FaultBackend::start("server").await;
    let dir = TempDir::new("no-grpc");
    let (http, grpc, control) = (free_port(), free_port(), free_port());
    let cfg_path = dir.path().join("config.yaml");
    std::fs::write(
        &cfg_path,
        format!(
            "listeners:\n  http:\n    address: 127.0.0.1:{http}\n  metrics:\n    enabled: false\n  grpc:\n    address: 127.0.0.1:{grpc}\n  control:\n    address: 127.0.0.1:{control}\n\
             backends:\n  b: {{kind: v2-http, endpoints: [\"{}\"]}}\nmodels:\n  m:\n    variants:\n      - {{name: a, backend: b}}\n",
            backend.url()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.arg("serve").arg("--config").arg(&cfg_path).arg("--no-grpc").env("SWITCHYARD_LOG_FORMAT", "text");
    let mut proc = Proc::spawn("switchyard", cmd, dir.path().join("switchyard.log"));
    let client = HttpClient::new();
    wait_until_serving(&mut proc, &client, &format!("http://127.0.0.1:{http}/startup")).await;
    let status: Value = client.get(&format!("http://127.0.0.1:{control}/config")).await.json();
    assert_eq!(status["listeners"]["grpc"], Value::Null, "{status}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err(), "nothing listens on the file's gRPC address");
}
