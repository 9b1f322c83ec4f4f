//! Generates the gRPC code from the protos with protox (a protobuf compiler in Rust, so no
//! `protoc`), and keeps their file descriptor set for server reflection.
use anyhow::Context as _;
use prost::Message as _;

/// Relative to `proto/` at the repository's root, where the protos stay.
const PROTOS: &[&str] = &["faultd/v1/faultd.proto", "grpc/testing/reconnect.proto"];

fn main() -> anyhow::Result<()> {
    let root = "../proto";
    println!("cargo:rerun-if-changed={root}");
    let files = protox::compile(PROTOS, [root]).context("compiling the protos")?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("file_descriptor_set.bin"), files.encode_to_vec())
        .context("writing the file descriptor set")?;
    tonic_prost_build::configure()
        .compile_fds(files)
        .context("generating the gRPC code")?;
    Ok(())
}
