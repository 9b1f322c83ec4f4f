//! The Python client's own suite (clients/python): the package is installed the way users
//! install it (`pip install ./clients/python`, stubs generated from proto/ at build time)
//! into a venv under target/, then its tests run under pytest against the faultd this
//! workspace built, in a network namespace they create; then the cross-language acceptance
//! matrix (clients/acceptance: grpcio with raw stubs, through reflection alone and its
//! health client, the Python client, Node's @grpc/grpc-js, each over TCP and the Unix
//! socket, as root and as nobody), with @grpc/grpc-js and @grpc/proto-loader installed by
//! npm into target/node-acceptance; then the Kubernetes manifests' check
//! (deploy/kubernetes), in the same venv.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cargo, workspace_root};

pub fn tests() -> anyhow::Result<()> {
    let root = workspace_root();
    let venv = root.join("target/python-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv target/python-venv",
        )?;
    }
    let pip = |args: &[&str], what: &str| {
        run(
            Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(args)
                .current_dir(&root),
            what,
        )
    };
    pip(
        &[
            "./clients/python",
            "pytest",
            "kubernetes>=37",
            "pyyaml",
            // The acceptance matrix's grpcio clients: stubs generated from proto/, reflection
            // messages, the health client.
            "grpcio-tools",
            "grpcio-reflection",
            "grpcio-health-checking",
        ],
        "pip install ./clients/python pytest kubernetes pyyaml grpcio-tools grpcio-reflection \
         grpcio-health-checking",
    )?;
    // Rebuilt every time: the stubs must match the proto of this checkout.
    pip(
        &["--force-reinstall", "--no-deps", "./clients/python"],
        "pip install --force-reinstall ./clients/python",
    )?;
    cargo(&["build", "--package", "fault-daemon", "--bin", "faultd"])?;
    let faultd = root.join("target/debug/faultd");
    pytest(&python, &root, &faultd, "clients/python/tests", &[])?;
    let modules = node_modules(&root)?;
    eprintln!(
        "xtask: the acceptance matrix runs on this host only: the kernel matrix's VM \
         (xtask vm-test) boots a busybox initramfs that carries no Python or Node runtime"
    );
    pytest(
        &python,
        &root,
        &faultd,
        "clients/acceptance",
        &[format!("--node-modules={}", modules.display())],
    )?;
    manifests(&python, &root)
}

/// @grpc/grpc-js and @grpc/proto-loader, installed with npm into target/node-acceptance
/// (once; npm install is quick when they are there already). Their node_modules directory.
fn node_modules(root: &Path) -> anyhow::Result<std::path::PathBuf> {
    let dir = root.join("target/node-acceptance");
    let modules = dir.join("node_modules");
    if modules.join("@grpc/grpc-js").is_dir() && modules.join("@grpc/proto-loader").is_dir() {
        return Ok(modules);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    run(
        Command::new("npm")
            .args([
                "install",
                "--prefix",
                ".",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "@grpc/grpc-js@^1",
                "@grpc/proto-loader@^0.8",
            ])
            .current_dir(&dir),
        "npm install @grpc/grpc-js @grpc/proto-loader (into target/node-acceptance)",
    )?;
    Ok(modules)
}

/// deploy/kubernetes checked against the Kubernetes API's types (no cluster: the models
/// of the `kubernetes` package validate them).
fn manifests(python: &Path, root: &Path) -> anyhow::Result<()> {
    run(
        Command::new(python)
            .args([
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "deploy/kubernetes",
            ])
            .current_dir(root),
        "pytest deploy/kubernetes",
    )
}

/// Runs a suite; fails on any failure, on no tests (pytest's exit code 5) and on skips
/// (this task runs as root with a faultd, so a skip means something is broken).
fn pytest(
    python: &Path,
    root: &Path,
    faultd: &Path,
    suite: &str,
    extra: &[String],
) -> anyhow::Result<()> {
    eprintln!("xtask: pytest {suite}");
    let out = Command::new(python)
        .args(["-m", "pytest", "-rs", "-p", "no:cacheprovider", suite])
        .arg(format!("--faultd-bin={}", faultd.display()))
        .args(extra)
        .current_dir(root)
        .output()
        .context("running pytest")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().last().unwrap_or_default();
    match out.status.code() {
        Some(0) if summary.contains("skipped") => bail!("{suite}: tests skipped: {summary}"),
        Some(0) => Ok(()),
        Some(5) => bail!("pytest collected no tests in {suite}"),
        _ => bail!("{suite}: tests failed ({}): {summary}", out.status),
    }
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd.status().with_context(|| what.to_string())?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
