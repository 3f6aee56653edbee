//! Generates the KServe V2 gRPC messages, client and server from
//! `proto/grpc_service.proto`, and Triton's model configuration and statistics
//! messages from `proto/triton_model.proto`, Switchyard's own
//! `switchyard.ml.v1` service (`proto/switchyard_ml.proto`: feedback), and
//! TensorFlow Serving's `PredictionService` and `ModelService` with their
//! messages (`proto/tensorflow_serving/apis/`, `proto/tensorflow/`: trimmed,
//! wire-compatible rewrites) (protoc from Debian's `protobuf-compiler`, or
//! `$PROTOC`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/grpc_service.proto",
        "proto/triton_model.proto",
        "proto/switchyard_ml.proto",
        "proto/tensorflow_serving/apis/prediction_service.proto",
        "proto/tensorflow_serving/apis/model_service.proto",
    ];
    // Everything the entry points import, so an edit to any of them rebuilds.
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        // `bytes` fields as `Bytes`: raw tensor contents become tensor data without a copy.
        .bytes(".inference")
        .bytes(".tensorflow.TensorProto")
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
