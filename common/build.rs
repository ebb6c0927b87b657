//! Compiles `proto/trainer.proto` with a vendored `protoc`, so building needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through this variable; edition 2021 keeps set_var safe.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        // Tensor payloads as `bytes::Bytes`: decoding is zero-copy and one encoded
        // weight buffer is shared by every worker's Step of a step.
        .bytes(".ddp.v1")
        // For gRPC server reflection (`grpcurl list` with no .proto at hand).
        .file_descriptor_set_path(
            std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("ddp_descriptor.bin"),
        )
        .compile_protos(&["../proto/trainer.proto"], &["../proto"])?;
    println!("cargo:rerun-if-changed=../proto/trainer.proto");
    Ok(())
}
