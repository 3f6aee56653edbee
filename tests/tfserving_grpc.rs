//! TF Serving gRPC Predict through the built binary to a remote V2 HTTP
//! backend (the fault backend's echo model), with tonic's client on the
//! generated `tensorflow.serving` stubs: typed values in, `tensor_content`
//! out, the backend's non-numeric version left out of `model_spec`; and the
//! client's `grpc-timeout` enforced by Switchyard (the header is sent
//! without a client-side timer, so the deadline's answer is the server's).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::fault::FaultBackend;
use common::Switchyard;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use switchyard_runtime::codec::tfserving::pb::tensorflow::serving as sv;
use switchyard_runtime::codec::tfserving::pb::tensorflow::{
    tensor_shape_proto::Dim, DataType, TensorProto, TensorShapeProto,
};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

type Client = sv::prediction_service_client::PredictionServiceClient<Channel>;

async fn client(port: u16) -> Client {
    let ch = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to the gRPC listener on {port}: {e}"));
    Client::new(ch)
}

fn request(model: &str, values: Vec<f32>, dims: &[i64]) -> sv::PredictRequest {
    let x = TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: dims.iter().map(|&size| Dim { size, name: String::new() }).collect(),
            unknown_rank: false,
        }),
        float_val: values,
        ..TensorProto::default()
    };
    sv::PredictRequest {
        model_spec: Some(sv::ModelSpec { name: model.into(), ..sv::ModelSpec::default() }),
        inputs: HashMap::from([("x".to_string(), x)]),
        output_filter: Vec::new(),
    }
}

/// A unary call over a bare HTTP/2 connection with `grpc-timeout` set and no
/// client-side timer (tonic's channel would cancel at the same instant the
/// server's deadline passes): (grpc-status, grpc-message) of the answer.
async fn raw_predict(port: u16, msg: sv::PredictRequest, timeout: &str) -> (i32, String) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let body = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let req = hyper::Request::post(format!("http://127.0.0.1:{port}/tensorflow.serving.PredictionService/Predict"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(Full::new(Bytes::from(frame)))
        .unwrap();
    let resp = send.send_request(req).await.expect("an answer");
    let field = |h: &hyper::HeaderMap, name: &str| h.get(name).map(|v| v.to_str().unwrap().to_string());
    // Trailers-only answers carry the status in the headers.
    let headers = resp.headers().clone();
    let (status, message) = match field(&headers, "grpc-status") {
        Some(s) => (s, field(&headers, "grpc-message")),
        None => {
            let trailers = resp.into_body().collect().await.expect("body").trailers().cloned().expect("trailers");
            (field(&trailers, "grpc-status").expect("grpc-status"), field(&trailers, "grpc-message"))
        }
    };
    (status.parse().unwrap(), message.unwrap_or_default())
}

#[tokio::test]
async fn predict_to_a_v2_backend_and_the_clients_deadline() {
    let fb = FaultBackend::start("fb").await;
    let sy = Switchyard::config(&format!(
        r#"
backends:
  fb:
    kind: v2-http
    endpoints: ["{}"]
    timeout: 60s
models:
  echo:
    variants:
      - {{name: main, backend: fb}}
"#,
        fb.url()
    ))
    .start()
    .await;
    let mut c = client(sy.grpc_port).await;

    let resp = c.predict(request("echo", vec![1.5, -2.0, 0.25, 8.0, 0.0, 3.0], &[2, 3])).await.unwrap();
    let variant = resp.metadata().get("x-switchyard-variant").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(variant.as_deref(), Some("main"));
    let out = resp.into_inner();
    let y = &out.outputs["y"];
    let dims: Vec<i64> = y.tensor_shape.as_ref().unwrap().dim.iter().map(|d| d.size).collect();
    assert_eq!((y.dtype, dims), (DataType::DtFloat as i32, vec![2, 3]));
    let want: Vec<u8> = [1.5f32, -2.0, 0.25, 8.0, 0.0, 3.0].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(&y.tensor_content[..], &want[..]);
    let spec = out.model_spec.unwrap();
    // The backend reports version "fb", which is no TF version: none is claimed.
    assert_eq!(
        (spec.name.as_str(), spec.version_choice, spec.signature_name.as_str()),
        ("echo", None, "serving_default")
    );

    // The backend holds every infer for 30 s; the client gives the call 300 ms.
    fb.delay_ms(30_000);
    let (code, message) = tokio::time::timeout(
        Duration::from_secs(20),
        raw_predict(sy.grpc_port, request("echo", vec![1.0], &[1, 1]), "300m"),
    )
    .await
    .expect("Switchyard answered before the test's own patience");
    // Whichever timer on the client's deadline fires first answers: the lifecycle's
    // (DEADLINE_EXCEEDED) or tonic's own server-side one (CANCELLED "Timeout expired"),
    // as on V2 gRPC; the backend's 60 s timeout cannot have ended it.
    assert!(
        code == Code::DeadlineExceeded as i32 || (code == Code::Cancelled as i32 && message == "Timeout%20expired"),
        "{code} {message}"
    );
    assert_eq!(fb.infers(), 2, "the second call reached the backend before its deadline passed");
}
