//! Generates the gRPC server and client for `proto/grpc_predict_v2.proto`. The proto is
//! parsed by `protox` (pure Rust), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // Tensor bytes decode into `bytes::Bytes`: the raw contents become tensor data
        // without another copy.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
