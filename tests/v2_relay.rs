//! The V2 JSON relay (issue 16): when nothing changes a request or its
//! answer, a `v2-http` backend receives the client's own bytes and the client
//! the backend's own bytes — checked against a stub that records what it got
//! and answers with formatting Switchyard's encoder would never write. A
//! malformed request is still a 400 naming the problem and never forwarded;
//! a renamed model, a binary output or a cached variant still re-encode.

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::Switchyard;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Records every infer body; answers with `answer` (model name substituted).
struct Stub {
    port: u16,
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

/// Deliberately not what Switchyard's encoder writes: spaces, `1.50`, key order, an extra field.
const ANSWER: &str = r#"{ "id" : "r-1", "outputs" : [ { "name" : "y", "datatype" : "FP32", "shape" : [1, 2], "data" : [1.50, -2.0] } ], "model_name" : "MODEL", "x-extra" : true }"#;

async fn stub() -> Stub {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let answer = if let Some(model) =
                            path.strip_prefix("/v2/models/").and_then(|p| p.strip_suffix("/infer"))
                        {
                            seen.lock().unwrap().push(body);
                            ANSWER.replace("MODEL", model)
                        } else if path == "/v2" {
                            r#"{"name":"stub","version":"1","extensions":[]}"#.to_string()
                        } else {
                            String::new()
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Stub { port, bodies }
}

const JSON: (&str, &str) = ("content-type", "application/json");

#[tokio::test]
async fn json_requests_and_answers_are_relayed_byte_for_byte() {
    let s = stub().await;
    let sy = Switchyard::config(&format!(
        r#"
backends:
  stub: {{ kind: v2-http, endpoints: ["http://127.0.0.1:{port}"], binary: never }}
  cached: {{ kind: v2-http, endpoints: ["http://127.0.0.1:{port}"], binary: never }}
models:
  m:
    variants: [ {{ name: a, backend: stub }} ]
  renamed:
    variants: [ {{ name: a, backend: stub, model: inner }} ]
  c:
    cache: {{ ttl: 60s }}
    variants: [ {{ name: a, backend: cached }} ]
"#,
        port = s.port
    ))
    .start()
    .await;

    // 1. Unchanged both ways.
    let body = r#"{"id" : "r-1", "inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.50, 2]}]}"#;
    let r = sy.post("/v2/models/m/infer", &[JSON], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.bodies.lock().unwrap().last().unwrap(), body.as_bytes(), "the backend got the client's bytes");
    assert_eq!(r.text(), ANSWER.replace("MODEL", "m"), "the client got the backend's bytes");
    assert_eq!(r.header("x-switchyard-variant"), Some("a"));

    // 2. A malformed request is refused, naming the problem, and never forwarded.
    let sent = s.bodies.lock().unwrap().len();
    let bad = r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1.5, 2]}]}"#;
    let r = sy.post("/v2/models/m/infer", &[JSON], bad).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("input 'x'"), "names the input: {}", r.text());
    let overflow = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1e39, 2]}]}"#;
    let r = sy.post("/v2/models/m/infer", &[JSON], overflow).await;
    assert_eq!(r.status, 400, "an FP32 out of range: {}", r.text());
    assert_eq!(s.bodies.lock().unwrap().len(), sent, "nothing malformed reached the backend");

    // 3. A renamed model: the request still goes as sent, and the answer is
    // the backend's bytes with only its model name patched to the public one.
    let r = sy.post("/v2/models/renamed/infer", &[JSON], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.bodies.lock().unwrap().last().unwrap(), body.as_bytes());
    assert_eq!(r.text(), ANSWER.replace("MODEL", "renamed"), "only model_name patched");

    // 4. Binary outputs asked for: the answer is encoded for the client, not relayed.
    let bin = r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.5,2]}],"parameters":{"binary_data_output":true}}"#;
    let r = sy.post("/v2/models/m/infer", &[JSON], bin).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert!(r.header("inference-header-content-length").is_some());

    // 5. A cached variant: the first answer is relayed, the hit is encoded from the cache.
    let first = sy.post("/v2/models/c/infer", &[JSON], body).await;
    assert_eq!(first.text(), ANSWER.replace("MODEL", "c"));
    let hit = sy.post("/v2/models/c/infer", &[JSON], body).await;
    assert_eq!(hit.header("x-switchyard-cache"), Some("hit-l1"));
    let v = hit.json();
    assert_eq!((v["model_name"].as_str(), v["id"].as_str()), (Some("c"), Some("r-1")));
    assert_eq!(v["outputs"][0]["data"], serde_json::json!([1.5, -2.0]));
}

/// The fast path (issue 16): a V2 JSON request to a variant that needs no
/// tensors is checked in one pass, never built, and forwarded as it came; a
/// malformed one is a 400 with the decode's own words and never reaches the
/// backend. A request read before routing (a content rule on parameters)
/// takes it too, or has its tensors built when routed to a variant that needs them.
#[tokio::test]
async fn checked_requests_go_as_sent_and_malformed_ones_nowhere() {
    let s = stub().await;
    let sy = Switchyard::config(&format!(
        r#"
backends:
  stub: {{ kind: v2-http, endpoints: ["http://127.0.0.1:{port}"], binary: never }}
models:
  m:
    rules:
      - {{ name: cached, match: {{ parameters: {{ lane: cached }} }}, model: c }}
    variants: [ {{ name: a, backend: stub }} ]
  c:
    cache: {{ ttl: 60s }}
    variants: [ {{ name: a, backend: stub }} ]
"#,
        port = s.port
    ))
    .start()
    .await;
    let last = || s.bodies.lock().unwrap().last().cloned().unwrap_or_default();

    // Read before routing (the rule may need `lane`), routed to `m`: sent as written.
    let body = "{ \"inputs\" : [ {\"data\":[[1.50, 2e0]], \"name\":\"x\", \"shape\":[1,2], \"datatype\":\"FP32\"} ],\n \"parameters\": {\"lane\": \"plain\"} }";
    let r = sy.post("/v2/models/m/infer", &[JSON], body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last(), body.as_bytes(), "the backend got the client's bytes");
    assert_eq!(r.text(), ANSWER.replace("MODEL", "m"), "the client got the backend's bytes");

    // The client's own id differs from the backend's: only `id` is patched.
    let with_id = r#"{"id":"c-9","inputs":[{"name":"x","shape":[2],"datatype":"INT8","data":[-128,127]}]}"#;
    let r = sy.post("/v2/models/m/infer", &[JSON], with_id).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last(), with_id.as_bytes());
    assert_eq!(r.text(), ANSWER.replace("MODEL", "m").replace("r-1", "c-9"));

    // Sent by the rule to a cached model: the tensors are built (the cache
    // key hashes them), the second request is a hit.
    let cached = r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[3]}],"parameters":{"lane":"cached"}}"#;
    let r = sy.post("/v2/models/m/infer", &[JSON], cached).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(last(), cached.as_bytes(), "a built request still sends the client's JSON");
    let hit = sy.post("/v2/models/m/infer", &[JSON], cached).await;
    assert_eq!(hit.header("x-switchyard-cache"), Some("hit-l1"), "{}", hit.text());

    // Every kind of malformed body: 400 in the decode's words, nothing forwarded.
    let sent = s.bodies.lock().unwrap().len();
    let bad = [
        "{",
        r#"{"inputs":[]}"#,
        r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP33","data":[1,2]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[[1],[2,3]]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[128]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"UINT64","data":[-1]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP16","data":[70000]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[null]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"binary_data_output":"yes"}}"#,
        r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}]} trailing"#,
    ];
    for body in bad {
        let want = switchyard_runtime::codec::v2::decode_request(&Bytes::from(body), None).expect_err(body).to_string();
        let r = sy.post("/v2/models/m/infer", &[JSON], body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let got = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(got.contains(&want), "{body}: `{got}` lacks the decode's `{want}`");
    }
    assert_eq!(s.bodies.lock().unwrap().len(), sent, "nothing malformed reached the backend");
}
