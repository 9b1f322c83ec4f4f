//! The Python client's own suite (clients/python): the package is installed the way users
//! install it (`pip install ./clients/python`, stubs generated from proto/ at build time)
//! into a venv under target/, then its tests run under pytest against the faultd this
//! workspace built, in a network namespace they create; then the Kubernetes manifests'
//! check (deploy/kubernetes), in the same venv.

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
        &["./clients/python", "pytest", "kubernetes>=37", "pyyaml"],
        "pip install ./clients/python pytest kubernetes pyyaml",
    )?;
    // Rebuilt every time: the stubs must match the proto of this checkout.
    pip(
        &["--force-reinstall", "--no-deps", "./clients/python"],
        "pip install --force-reinstall ./clients/python",
    )?;
    cargo(&["build", "--package", "fault-daemon", "--bin", "faultd"])?;
    pytest(&python, &root, &root.join("target/debug/faultd"))?;
    manifests(&python, &root)
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

/// Runs the suite; fails on any failure, on no tests (pytest's exit code 5) and on skips
/// (this task runs as root with a faultd, so a skip means something is broken).
fn pytest(python: &Path, root: &Path, faultd: &Path) -> anyhow::Result<()> {
    eprintln!("xtask: pytest clients/python/tests");
    let out = Command::new(python)
        .args([
            "-m",
            "pytest",
            "-rs",
            "-p",
            "no:cacheprovider",
            "clients/python/tests",
        ])
        .arg(format!("--faultd-bin={}", faultd.display()))
        .current_dir(root)
        .output()
        .context("running pytest")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().last().unwrap_or_default();
    match out.status.code() {
        Some(0) if summary.contains("skipped") => bail!("python tests skipped: {summary}"),
        Some(0) => Ok(()),
        Some(5) => bail!("pytest collected no tests in clients/python/tests"),
        _ => bail!("python tests failed ({}): {summary}", out.status),
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
