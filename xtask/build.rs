//! Generates the bench's gRPC client for faultd's control API from its proto, with protox
//! (no protoc: xtask has to build before `cargo xtask setup` installs anything).
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let proto = "../proto/faultd/v1/faultd.proto";
    println!("cargo:rerun-if-changed={proto}");
    let files = protox::compile(["faultd/v1/faultd.proto"], ["../proto"])
        .with_context(|| format!("compiling {proto}"))?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(files)
        .context("generating the gRPC client")?;
    Ok(())
}
