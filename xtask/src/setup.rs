//! Installs what faultd needs on a fresh machine of this kind, and nothing when it is there.

use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// Debian packages: LLVM for bpf-linker, iproute2 for the tests' namespaces and veths,
/// iptables for the bench's comparison with iptables DROP rules, prometheus for `promtool
/// check metrics` on faultd's metrics (tests/integration/observe.rs), etcd (server and etcdctl) for the
/// three-member cluster of tests/integration/multinode.rs. (No protoc: faultd-api compiles the protos
/// with protox, and the Python tests' stubs come from grpcio-tools.)
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "iptables",
    "prometheus",
    "etcd-server",
    "etcd-client",
];
/// Debian packages for `cargo xtask vm-test`: the emulator, a static busybox for the VM's
/// userland, and `xz` for kernels whose modules are compressed.
const VM_APT_PACKAGES: &[&str] = &["qemu-system-x86", "busybox-static", "xz-utils"];
/// Debian packages for `cargo xtask dist`: musl-gcc, for the C in ring (tonic's TLS) when
/// it builds for the musl target.
const DIST_APT_PACKAGES: &[&str] = &["musl-tools"];
/// Debian packages for the dist's tests: a static busybox for the bare root and the test
/// image, and Docker Engine (the test starts its own dockerd).
const DIST_TEST_APT_PACKAGES: &[&str] = &["busybox-static", "docker.io"];
/// The target of the static release binaries.
const DIST_TARGET: &str = crate::dist::TARGET;
/// Python modules the tests import, and the PyPI packages that provide them.
const PYTHON_PACKAGES: &[(&str, &str)] = &[("grpc", "grpcio"), ("grpc_tools", "grpcio-tools")];
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn all() -> anyhow::Result<()> {
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    python_packages()?;
    python_venv()?;
    Ok(())
}

/// What `cargo xtask vm-test` needs besides [`all`]: kept apart so that `cargo xtask run`
/// does not install an emulator.
pub fn vm() -> anyhow::Result<()> {
    install_missing(VM_APT_PACKAGES)
}

/// What `cargo xtask dist` needs besides [`all`]: the musl target's standard library and
/// musl-gcc.
pub fn dist() -> anyhow::Result<()> {
    install_missing(DIST_APT_PACKAGES)?;
    musl_target()
}

/// What the dist's tests need besides [`dist`]: busybox and Docker Engine.
pub fn dist_test() -> anyhow::Result<()> {
    install_missing(DIST_TEST_APT_PACKAGES)
}

fn musl_target() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup (the static binaries build for the musl target)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == DIST_TARGET)
    {
        return Ok(());
    }
    loud(
        Command::new("rustup").args(["target", "add", DIST_TARGET]),
        &format!("rustup target add {DIST_TARGET}"),
    )
}

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn loud(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().with_context(|| what.to_string())?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    install_missing(APT_PACKAGES)
}

fn install_missing(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output();
            !out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root, or `sudo apt-get install {}`",
            missing.join(" ")
        );
    }
    loud(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    loud(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        &format!("apt-get install {}", missing.join(" ")),
    )
}

fn rust_src() -> anyhow::Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup (the eBPF programs build with the nightly toolchain)")?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        return Ok(());
    }
    loud(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        "rustup component add rust-src --toolchain nightly",
    )
}

fn bpf_linker() -> anyhow::Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let path = format!(
        "{LLVM_PREFIX}/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    loud(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--version", "^0.13", "--locked"])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path)
            .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
        "cargo install bpf-linker (about a minute)",
    )
}

/// cargo-fuzz, for the fuzz step of `cargo xtask test` (it builds with the nightly toolchain,
/// which the eBPF programs need anyway).
fn cargo_fuzz() -> anyhow::Result<()> {
    if quiet(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    loud(
        Command::new("cargo").args(["install", "cargo-fuzz", "--version", "^0.13", "--locked"]),
        "cargo install cargo-fuzz (about a minute)",
    )
}

/// `python3 -m venv`, where the Python client's tests install it (Debian splits it off).
fn python_venv() -> anyhow::Result<()> {
    if quiet(Command::new("python3").args(["-c", "import ensurepip, venv"])) {
        return Ok(());
    }
    install_missing(&["python3-venv"])
}

fn python_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PYTHON_PACKAGES
        .iter()
        .filter(|(module, _)| {
            !quiet(Command::new("python3").args(["-c", &format!("import {module}")]))
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    loud(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing),
        &format!("pip install {}", missing.join(" ")),
    )
}
