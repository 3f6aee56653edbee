//! The request lifecycle every protocol shares (proxy::pipeline), end to end
//! through the built binary: what it times, what it counts, what it relays
//! from backends and forwards to them, and the pass-through upstream's
//! resolution off the request path.

mod common;

use common::mlp::{cache_status, infer, json_body, INFER};
use common::{read_request, repo_root, Switchyard, TestUpstream};
use tokio::io::AsyncWriteExt;

fn cached_mlp() -> String {
    format!(
        "backends:\n  ex:\n    kind: onnx\n    repository: {}\n    version_policy: {{latest: 1}}\n    warmup: 1\nmodels:\n  mlp:\n    variants:\n      - {{name: main, backend: ex, cache: {{ttl: 60s}}}}\n",
        repo_root().join("examples/models").display()
    )
}

/// A cache hit makes no backend call, so it records no backend time: the
/// backend histogram counts only the miss.
#[tokio::test]
async fn a_cache_hit_records_no_backend_time() {
    let sy = Switchyard::config(&cached_mlp()).start().await;
    let backend_calls = |m: &common::Metrics| {
        m.get("switchyard_backend_request_duration_seconds_count", &[("model", "mlp"), ("variant", "main")])
            .unwrap_or(0.0)
    };
    let first = infer(&sy, 1, &[]).await;
    assert_eq!(cache_status(&first), "miss");
    assert_eq!(backend_calls(&sy.metrics().await), 1.0);
    for _ in 0..5 {
        let hit = infer(&sy, 1, &[]).await;
        assert_eq!(cache_status(&hit), "hit-l1");
        assert!(hit.header("x-switchyard-overhead-us").is_some());
    }
    let m = sy.metrics().await;
    assert_eq!(backend_calls(&m), 1.0, "cache hits were timed as backend calls");
    assert_eq!(m.value("switchyard_requests_total", &[("model", "mlp"), ("variant", "main"), ("code", "200")]), 6.0);
}

/// Model names clients invent never become metric labels.
#[tokio::test]
async fn unknown_models_share_one_metric_label() {
    let sy = Switchyard::config(&cached_mlp()).start().await;
    for i in 0..20 {
        let r = sy.post(&format!("/v2/models/invented-{i}/infer"), &[], json_body(1)).await;
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.error(), format!("unknown model 'invented-{i}'"));
    }
    let m = sy.metrics().await;
    assert!(!m.0.contains("invented-"), "client-chosen model names leaked into metric labels");
    assert_eq!(m.value("switchyard_requests_total", &[("model", "<unknown>"), ("code", "404")]), 20.0);
}

/// A V2 server stand-in that answers every inference with a fixed status,
/// content type and body, and records the request heads it received.
struct ScriptedBackend {
    port: u16,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedBackend {
    async fn start(status: &'static str, content_type: &'static str, body: &'static str) -> ScriptedBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = heads.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    while let Some((head, _)) = read_request(&mut sock).await {
                        let (status, ctype, body) = if head.starts_with("GET /v2 ") {
                            ("200 OK", "application/json", r#"{"name":"scripted","extensions":[]}"#)
                        } else {
                            log.lock().unwrap().push(head);
                            (status, content_type, body)
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if sock.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        ScriptedBackend { port, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP backend's 4xx answer reaches the HTTP client as the backend sent it.
#[tokio::test]
async fn a_backend_4xx_body_reaches_the_client_unchanged() {
    const BODY: &str = r#"{"error":"tenant t1 is over its quota","quota":"q-17","retry":false}"#;
    let backend = ScriptedBackend::start("403 Forbidden", "application/problem+json", BODY).await;
    let sy = Switchyard::config(&format!(
        "backends:\n  b: {{kind: v2-http, endpoints: ['http://127.0.0.1:{}']}}\nmodels:\n  mlp:\n    variants:\n      - {{name: only, backend: b}}\n",
        backend.port
    ))
    .start()
    .await;
    let r = sy.post(INFER, &[], json_body(1)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), BODY);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.header("x-switchyard-variant"), Some("only"));
    // A 5xx is the backend's fault: 502, in V2's shape, naming it.
    let failing = ScriptedBackend::start("500 Internal Server Error", "text/plain", "Traceback: boom").await;
    let sy5 = Switchyard::config(&format!(
        "backends:\n  b: {{kind: v2-http, endpoints: ['http://127.0.0.1:{}']}}\nmodels:\n  mlp:\n    variants:\n      - {{name: only, backend: b}}\n",
        failing.port
    ))
    .start()
    .await;
    let r = sy5.post(INFER, &[], json_body(1)).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error(), "backend error (HTTP 500): Traceback: boom");
}

/// The client's own headers reach a remote backend (its auth, tenant and
/// tracing), minus hop-by-hop headers, Switchyard's own and what the
/// backend's `forward_headers` denies.
#[tokio::test]
async fn client_headers_reach_the_backend() {
    const ANSWER: &str = r#"{"model_name":"mlp","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1.0]}]}"#;
    let backend = ScriptedBackend::start("200 OK", "application/json", ANSWER).await;
    let sy = Switchyard::config(&format!(
        "backends:\n  b:\n    kind: v2-http\n    endpoints: ['http://127.0.0.1:{}']\n    forward_headers: {{deny: [cookie]}}\nmodels:\n  mlp:\n    variants:\n      - {{name: only, backend: b}}\n",
        backend.port
    ))
    .start()
    .await;
    let headers = [
        ("authorization", "Bearer secret-1"),
        ("x-tenant", "acme"),
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("cookie", "session=1"),
        ("x-switchyard-variant", "only"),
        ("accept-encoding", "gzip"),
    ];
    let r = sy.post(INFER, &headers, json_body(1)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let heads = backend.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    for want in ["authorization: bearer secret-1", "x-tenant: acme", "traceparent: 00-0af7651916cd43dd8448eb211c80319c"]
    {
        assert!(head.contains(want), "{want:?} not forwarded:\n{head}");
    }
    for never in ["cookie:", "x-switchyard-", "accept-encoding:"] {
        assert!(!head.contains(never), "{never:?} forwarded:\n{head}");
    }
    assert_eq!(head.matches("content-type:").count(), 1, "{head}");
}

/// A pass-through upstream named by hostname is resolved off the request
/// path; one that never resolves answers 502 naming it, and the listener
/// keeps serving.
#[tokio::test]
async fn a_hostname_default_upstream_resolves_off_the_request_path() {
    let up = TestUpstream::start().await;
    let sy = Switchyard::config(&cached_mlp()).default_upstream(&format!("http://localhost:{}", up.port)).start().await;
    // The test upstream closes every connection: a fresh client each time.
    let get = |url: String| async move { common::HttpClient::new().get(&url).await };
    for _ in 0..3 {
        let r = get(format!("{}/v1/models/other", sy.http_url())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), r#"{"upstream":"test"}"#);
    }
    assert_eq!(up.received().len(), 3);

    let bad = Switchyard::config(&cached_mlp()).default_upstream("http://no-such-upstream.invalid:9000").start().await;
    for _ in 0..3 {
        let r = get(format!("{}/v1/models/other", bad.http_url())).await;
        assert_eq!(r.status, 502, "{}", r.text());
        assert!(r.error().contains("no-such-upstream.invalid"), "{}", r.error());
    }
    // Still serving natively, and alive.
    assert_eq!(infer(&bad, 1, &[]).await.status, 200);
    assert_eq!(bad.get("/health").await.status, 200);
}
