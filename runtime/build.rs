//! Generates the KServe V2 gRPC messages, client and server from
//! `proto/grpc_service.proto`, and Triton's model configuration and statistics
//! messages from `proto/triton_model.proto`, and Switchyard's own
//! `switchyard.ml.v1` service (`proto/switchyard_ml.proto`: feedback) (protoc from Debian's
//! `protobuf-compiler`, or `$PROTOC`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/grpc_service.proto", "proto/triton_model.proto", "proto/switchyard_ml.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // `bytes` fields as `Bytes`: raw tensor contents become tensor data without a copy.
        .bytes(".inference")
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
