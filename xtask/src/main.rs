//! faultd's project tasks: `cargo xtask setup | run | test`.
//!
//! Every task installs what is missing first and is quick when everything is there, so a
//! fresh machine needs nothing but the two commands in README.md.

mod bench;
mod dist;
mod dist_test;
mod fuzz;
mod python;
mod setup;
mod vm;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing faultd needs (idempotent).
    Setup,
    /// Set up, build faultd in release mode and run it as root: `cargo xtask run -- --iface lo`.
    Run {
        /// Arguments for faultd.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run every test suite (unit, program, system, the Python client's), a 60 s
    /// fuzz run, the kernel matrix and the quick bench.
    Test,
    /// The release tarball target/dist/faultd-<version>-x86_64-linux.tar.gz (static
    /// binaries, systemd unit, example config, completions, man page, Dockerfile) and its
    /// .sha256; reproducible from the same commit.
    Dist(dist::Options),
    /// Build the tarball (--quick) and run its tests alone: a bare busybox root, and the
    /// image in a Docker Engine the test starts itself.
    DistTest,
    /// Set up, then run the Python client's suite alone (clients/python/tests, as root).
    PythonTest,
    /// Set up, then check the fuzz seed corpus and fuzz AddFault requests for a while
    /// (`cargo xtask fuzz --seconds 3600` for a long session).
    Fuzz(fuzz::Options),
    /// The kernel matrix: the system tests on this machine's kernel and in a VM (qemu, TCG) on
    /// Debian's 6.1 kernel, as a pass/skip/fail table.
    VmTest(vm::Options),
    /// Set up, then measure faultd (per-packet cost, throughput, apply latency, churn,
    /// memory) and write BENCHMARKS.md and benchmarks.png.
    Bench {
        /// A few seconds with tiny counts, written to target/bench-quick/ (the test suite's).
        #[arg(long, conflicts_with = "soak")]
        quick: bool,
        /// Only the soak: churn with traffic for DURATION (10m, 180s…; 10 minutes when
        /// given without one), faultd's resources sampled throughout; written into the
        /// Soak section of BENCHMARKS.md.
        #[arg(
            long,
            value_name = "DURATION",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "10m",
            value_parser = bench::parse_soak_duration
        )]
        soak: Option<std::time::Duration>,
        /// Only these measurements, comma-separated (memory, apply): printed and written
        /// to target/bench/parts.json; BENCHMARKS.md is left alone.
        #[arg(long, value_name = "PARTS", conflicts_with_all = ["quick", "soak"],
              value_delimiter = ',', value_parser = bench::parse_part)]
        only: Option<Vec<bench::Part>>,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse().task) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => {
            setup::all()?;
            setup::dist()?;
            setup::dist_test()
        }
        Task::Dist(opts) => {
            setup::all()?;
            dist::run(&opts).map(drop)
        }
        Task::DistTest => {
            setup::all()?;
            require_root("the dist's tests chroot, create a network namespace and run dockerd")?;
            dist_tests()
        }
        Task::VmTest(opts) => {
            setup::all()?;
            vm::run(&opts)
        }
        Task::Run { args } => {
            setup::all()?;
            cargo(&[
                "build",
                "--release",
                "--package",
                "fault-daemon",
                "--package",
                "faultctl",
                "--bins",
            ])?;
            let faultd = workspace_root().join("target/release/faultd");
            let status = as_root(&faultd.to_string_lossy(), &args)
                .status()
                .context("starting faultd")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test => {
            setup::all()?;
            require_root(
                "the program and system tests load eBPF programs and create network namespaces",
            )?;
            // fault-daemon's system tests run faultctl, a crate of its own, from beside faultd.
            cargo(&["build", "--package", "faultctl"])?;
            cargo(&["test", "--workspace", "--no-fail-fast"])?;
            // The release tarball, built once (minutes from scratch, seconds when current),
            // in a bare root and in a container.
            dist_tests()?;
            // The Python client and pytest plugin, against a real faultd.
            python::tests()?;
            fuzz::run(&fuzz::Options {
                seconds: 60,
                libfuzzer: Vec::new(),
            })?;
            // The kernel matrix's other column: the system tests on Debian's 6.1 in a VM (this
            // machine's column is the `cargo test` above; `cargo xtask vm-test` prints both).
            vm::run(&vm::Options {
                no_host: true,
                ..vm::Options::default()
            })?;
            // So that the bench cannot rot; it fails only on errors, never on a figure.
            bench::run(true)
        }
        Task::PythonTest => {
            setup::all()?;
            require_root("the Python client's tests create a network namespace and run faultd")?;
            python::tests()
        }
        Task::Fuzz(opts) => {
            setup::all()?;
            fuzz::run(&opts)
        }
        Task::Bench { quick, soak, only } => {
            setup::all()?;
            match (soak, only) {
                (Some(duration), _) => bench::soak(duration),
                (None, Some(parts)) => bench::only(&parts),
                (None, None) => bench::run(quick),
            }
        }
    }
}

/// The release tarball, quick (reusing the last dist build), then its tests; prints how long
/// each part took.
fn dist_tests() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let dist = dist::run(&dist::Options { quick: true })?;
    eprintln!("xtask: dist (quick) took {:.1?}", started.elapsed());
    dist_test::run(&dist)
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn require_root(why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("run as root: {why}");
    }
    Ok(())
}

/// Runs `program args` as root, through sudo when we are not root already.
fn as_root(program: &str, args: &[String]) -> Command {
    if is_root() {
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("-E").arg(program).args(args);
        cmd
    }
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
