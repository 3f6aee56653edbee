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
        assert_eq!(
            r.error(),
            format!("Request for unknown model: 'invented-{i}' is not found (no route for it in Switchyard's config)")
        );
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

mod grpc_standin {
    //! A KServe V2 gRPC server stand-in (the published `inference` protocol,
    //! tonic-generated): ModelInfer answers a fixed tensor, or the status
    //! code it is set to, and records the metadata each call carried.
    //! Everything else is UNIMPLEMENTED.

    use std::sync::{Arc, Mutex};

    use switchyard_runtime::codec::grpc::pb;
    use tonic::{Code, Request, Response, Status, Streaming};

    use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};

    #[derive(Clone, Default)]
    pub struct StandIn {
        pub seen: Arc<Mutex<Vec<tonic::metadata::MetadataMap>>>,
        pub fail_with: Option<(Code, &'static str)>,
    }

    pub struct Running {
        pub port: u16,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl StandIn {
        pub async fn start(self) -> Running {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let task = tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .serve_with_incoming(GrpcInferenceServiceServer::new(self), incoming)
                    .await;
            });
            Running { port, task }
        }
    }

    type R<T> = Result<Response<T>, Status>;

    #[tonic::async_trait]
    impl GrpcInferenceService for StandIn {
        async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> R<pb::ServerLiveResponse> {
            Ok(Response::new(pb::ServerLiveResponse { live: true }))
        }
        async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> R<pb::ServerReadyResponse> {
            Ok(Response::new(pb::ServerReadyResponse { ready: true }))
        }
        async fn model_ready(&self, _: Request<pb::ModelReadyRequest>) -> R<pb::ModelReadyResponse> {
            Ok(Response::new(pb::ModelReadyResponse { ready: true }))
        }
        async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> R<pb::ServerMetadataResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn model_metadata(&self, _: Request<pb::ModelMetadataRequest>) -> R<pb::ModelMetadataResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn model_infer(&self, request: Request<pb::ModelInferRequest>) -> R<pb::ModelInferResponse> {
            self.seen.lock().unwrap().push(request.metadata().clone());
            if let Some((code, message)) = self.fail_with {
                return Err(Status::new(code, message));
            }
            let m = request.into_inner();
            Ok(Response::new(pb::ModelInferResponse {
                model_name: m.model_name,
                id: m.id,
                outputs: vec![pb::model_infer_response::InferOutputTensor {
                    name: "y".into(),
                    datatype: "FP32".into(),
                    shape: vec![1],
                    ..Default::default()
                }],
                raw_output_contents: vec![bytes::Bytes::copy_from_slice(&1.0f32.to_le_bytes())],
                ..Default::default()
            }))
        }
        type ModelStreamInferStream =
            tonic::codegen::tokio_stream::wrappers::ReceiverStream<Result<pb::ModelStreamInferResponse, Status>>;
        async fn model_stream_infer(
            &self,
            _: Request<Streaming<pb::ModelInferRequest>>,
        ) -> R<Self::ModelStreamInferStream> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn model_config(&self, _: Request<pb::ModelConfigRequest>) -> R<pb::ModelConfigResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn model_statistics(&self, _: Request<pb::ModelStatisticsRequest>) -> R<pb::ModelStatisticsResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn repository_index(&self, _: Request<pb::RepositoryIndexRequest>) -> R<pb::RepositoryIndexResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn repository_model_load(
            &self,
            _: Request<pb::RepositoryModelLoadRequest>,
        ) -> R<pb::RepositoryModelLoadResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn repository_model_unload(
            &self,
            _: Request<pb::RepositoryModelUnloadRequest>,
        ) -> R<pb::RepositoryModelUnloadResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn system_shared_memory_status(
            &self,
            _: Request<pb::SystemSharedMemoryStatusRequest>,
        ) -> R<pb::SystemSharedMemoryStatusResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn system_shared_memory_register(
            &self,
            _: Request<pb::SystemSharedMemoryRegisterRequest>,
        ) -> R<pb::SystemSharedMemoryRegisterResponse> {
            Err(Status::unimplemented("stand-in"))
        }
        async fn system_shared_memory_unregister(
            &self,
            _: Request<pb::SystemSharedMemoryUnregisterRequest>,
        ) -> R<pb::SystemSharedMemoryUnregisterResponse> {
            Err(Status::unimplemented("stand-in"))
        }
    }
}

fn grpc_backend_config(port: u16) -> String {
    format!(
        "backends:\n  g:\n    kind: v2-grpc\n    endpoints: ['127.0.0.1:{port}']\n    forward_headers: {{deny: [cookie]}}\nmodels:\n  mlp:\n    variants:\n      - {{name: only, backend: g}}\n"
    )
}

async fn grpc_client(
    port: u16,
) -> switchyard_runtime::codec::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient<
    tonic::transport::Channel,
> {
    let ch =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    switchyard_runtime::codec::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(ch)
}

fn grpc_infer(
    md: &[(&'static str, &'static str)],
) -> tonic::Request<switchyard_runtime::codec::grpc::pb::ModelInferRequest> {
    use switchyard_runtime::codec::grpc::pb;
    let mut r = tonic::Request::new(pb::ModelInferRequest {
        model_name: "mlp".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            ..Default::default()
        }],
        raw_input_contents: vec![bytes::Bytes::from([1.0f32.to_le_bytes(), 2.0f32.to_le_bytes()].concat())],
        ..Default::default()
    });
    for (k, v) in md {
        r.metadata_mut().insert(*k, v.parse().unwrap());
    }
    r
}

/// gRPC client metadata reaches a `v2-grpc` backend (minus what is denied and
/// Switchyard's own), and the backend's own status code reaches a gRPC
/// client unchanged — here one no mapping would have produced (DATA_LOSS).
#[tokio::test]
async fn grpc_metadata_reaches_the_backend_and_its_status_code_comes_back_unchanged() {
    let standin = grpc_standin::StandIn::default();
    let seen = standin.seen.clone();
    let backend = standin.start().await;
    let sy = Switchyard::config(&grpc_backend_config(backend.port)).start().await;
    let mut client = grpc_client(sy.grpc_port).await;
    let md =
        [("authorization", "Bearer g-1"), ("x-tenant", "acme"), ("cookie", "s=1"), ("x-switchyard-variant", "only")];
    let r = client.model_infer(grpc_infer(&md)).await.expect("infer through the stand-in");
    assert_eq!(r.metadata().get("x-switchyard-variant").unwrap(), "only");
    let got = seen.lock().unwrap().last().cloned().expect("the backend was called");
    assert_eq!(got.get("authorization").unwrap(), "Bearer g-1");
    assert_eq!(got.get("x-tenant").unwrap(), "acme");
    assert!(got.get("cookie").is_none() && got.get("x-switchyard-variant").is_none(), "{got:?}");

    let failing =
        grpc_standin::StandIn { fail_with: Some((tonic::Code::DataLoss, "shard 3 lost")), ..Default::default() };
    let backend = failing.start().await;
    let sy = Switchyard::config(&grpc_backend_config(backend.port)).start().await;
    let mut client = grpc_client(sy.grpc_port).await;
    let e = client.model_infer(grpc_infer(&[])).await.expect_err("the backend fails");
    assert_eq!(e.code(), tonic::Code::DataLoss, "{e:?}");
    assert_eq!(e.message(), "shard 3 lost");
    // The same failure over HTTP: 502, the backend's fault.
    let r = sy.post(INFER, &[], r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2]}]}"#).await;
    assert_eq!(r.status, 502, "{}", r.text());
}
