//! Generates the KServe V2 gRPC messages, client and server from
//! `proto/grpc_service.proto` (protoc from Debian's `protobuf-compiler`, or `$PROTOC`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_service.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        // `bytes` fields as `Bytes`: raw tensor contents become tensor data without a copy.
        .bytes(".inference")
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_protos(&[proto], &["proto"])?;
    Ok(())
}
