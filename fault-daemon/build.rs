//! Builds the eBPF programs (embedded in faultd) and the gRPC code.
use anyhow::{Context as _, anyhow};

const PROTOS: &[&str] = &[
    "../proto/faultd/v1/faultd.proto",
    "../proto/grpc/testing/reconnect.proto",
];

fn main() -> anyhow::Result<()> {
    build_ebpf()?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    // For server reflection (`faultd::proto::FILE_DESCRIPTOR_SET`).
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("faultd_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(PROTOS, &["../proto"])
        .context("compiling the protos (is protoc installed? `cargo xtask setup` installs it)")?;
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "fault-ebpf")
        .ok_or_else(|| anyhow!("fault-ebpf package not found"))?;
    let root_dir = package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
    let ebpf = aya_build::Package {
        name: package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::default())
}
