//! Generates the KServe V2 gRPC messages, client and server from
//! `proto/grpc_service.proto`, and Triton's model configuration and statistics
//! messages from `proto/triton_model.proto`, Switchyard's own
//! `switchyard.ml.v1` service (`proto/switchyard_ml.proto`: feedback),
//! TensorFlow Serving's `PredictionService` and `ModelService` with their
//! messages (`proto/tensorflow_serving/apis/`, `proto/tensorflow/`: trimmed,
//! wire-compatible rewrites), and TorchServe's inference and management
//! services (`proto/torchserve/`) (protoc from Debian's `protobuf-compiler`,
//! or `$PROTOC`).

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

    // TorchServe: its protos import google.protobuf.Empty/Any and google.rpc.Status,
    // rewritten under proto/torchserve/google so the build needs no protobuf include
    // files; Empty is `()` as tonic users expect, the others are generated here.
    let torchserve = ["proto/torchserve/inference.proto", "proto/torchserve/management.proto"];
    println!("cargo:rerun-if-changed=proto/torchserve");
    tonic_prost_build::configure()
        // Bodies as `Bytes`: a request body becomes a BYTES tensor element without a copy.
        .bytes(".org.pytorch.serve.grpc.inference")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf.Empty", "()")
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_protos(&torchserve, &["proto/torchserve"])?;
    Ok(())
}
