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
            // Before any work: without root the program and system tests could only fail.
            require_root(
                "the program and system tests load eBPF programs and create network namespaces",
            )?;
            let mut stages = Stages {
                started: Some(std::time::Instant::now()),
                ..Stages::default()
            };
            let result = test_all(&mut stages);
            stages.print();
            result
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

/// `cargo xtask test`'s stages, each timed into `stages`. The VM's column runs beside the
/// stages on this machine: they share no interface (the VM has no network device; the host's
/// tests use namespaces of their own) and the host's tests mostly wait on sockets and
/// timers, while the emulated CPU is busy. Everything is built first, once: after that the VM
/// needs no cargo. A failing stage does not stop the others; the first failure is returned
/// once the VM's column is in.
fn test_all(stages: &mut Stages) -> anyhow::Result<()> {
    stages.run("setup", setup::all)?;
    // fault-daemon's system tests run faultctl, a crate of its own, from beside faultd; the
    // workspace's tests are built here once, for this machine's column and the VM's.
    let vm = stages.run("build, VM prepared", || {
        cargo(&["build", "--package", "faultctl"])?;
        vm::prepare(&vm::Options {
            no_host: true,
            ..vm::Options::default()
        })
    })?;
    // The kernel matrix's other column: the system tests on Debian's 6.1 in a VM (this
    // machine's column is the `cargo test` below; `cargo xtask vm-test` prints both).
    let vm = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        (vm.run(), started.elapsed())
    });
    let mut results = vec![stages.run("host tests (cargo test --workspace)", host_tests)];
    // The release tarball, built once (minutes from scratch, seconds when current), in a bare
    // root and in a container.
    results.push(stages.run("dist tests", dist_tests));
    // The Python client and pytest plugin, against a real faultd.
    results.push(stages.run("python tests", python::tests));
    results.push(stages.run("fuzz (60 s)", || {
        fuzz::run(&fuzz::Options {
            seconds: 60,
            libfuzzer: Vec::new(),
        })
    }));
    eprintln!("xtask: waiting for the VM's column");
    let (vm_result, vm_took) = vm.join().unwrap_or_else(|_| {
        (
            Err(anyhow::anyhow!("the VM's thread panicked")),
            Default::default(),
        )
    });
    stages.record(
        "VM tests (6.1, qemu TCG; beside the above)",
        vm_took,
        &vm_result,
    );
    results.push(vm_result);
    // So that the bench cannot rot; it fails only on errors, never on a figure.
    results.push(stages.run("quick bench", || bench::run(true)));
    let failed = results.iter().filter(|r| r.is_err()).count();
    match results.into_iter().find_map(Result::err) {
        Some(e) if failed > 1 => Err(e.context(format!("{failed} stages failed; the first"))),
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Every test of the workspace on this machine's kernel. Skips (`SKIP <test>: <reason>`,
/// which the tests also append to the file `FAULTD_SKIP_LOG` names) are counted and checked
/// against the skips this kernel allows: an unexpected skip fails the run.
fn host_tests() -> anyhow::Result<()> {
    // fault-daemon's system tests run faultctl, a crate of its own, from beside faultd.
    cargo(&["build", "--package", "faultctl"])?;
    let skip_log = workspace_root().join("target/host-skips.log");
    let _ = std::fs::remove_file(&skip_log);
    let tests = cargo_env(
        &["test", "--workspace", "--no-fail-fast"],
        &[(test_harness::skip::SKIP_LOG_ENV, skip_log.as_os_str())],
    );
    let release = test_harness::skip::kernel_release();
    let text = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let mut allowed = Vec::new();
    let mut unexpected = Vec::new();
    for (test, reason) in text.lines().filter_map(test_harness::skip::parse_skip) {
        let line = format!("  {test}: {reason}");
        if test_harness::skip::is_allowed(&release, test) {
            allowed.push(line);
        } else {
            unexpected.push(line);
        }
    }
    eprintln!(
        "xtask: host tests on {release}: {} skipped as this kernel allows, {} unexpected skip(s)",
        allowed.len(),
        unexpected.len()
    );
    for l in allowed.iter().chain(&unexpected) {
        eprintln!("{l}");
    }
    tests?;
    if !unexpected.is_empty() {
        bail!(
            "{} test(s) skipped on {release} where no skip is allowed:\n{}",
            unexpected.len(),
            unexpected.join("\n")
        );
    }
    Ok(())
}

/// How long each stage of `cargo xtask test` took, printed at the end (also when it fails).
#[derive(Default)]
struct Stages {
    started: Option<std::time::Instant>,
    done: Vec<(&'static str, std::time::Duration, bool)>,
}

impl Stages {
    fn run<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        eprintln!("xtask: == {name}");
        let started = std::time::Instant::now();
        let result = f();
        self.record(name, started.elapsed(), &result);
        result
    }

    fn record<T>(
        &mut self,
        name: &'static str,
        took: std::time::Duration,
        result: &anyhow::Result<T>,
    ) {
        eprintln!(
            "xtask: == {name}: {} in {:.0} s",
            if result.is_ok() { "ok" } else { "FAILED" },
            took.as_secs_f64()
        );
        self.done.push((name, took, result.is_ok()));
    }

    fn print(&self) {
        eprintln!("\nxtask test: stages (the VM's runs beside the ones above it)");
        for (name, took, ok) in &self.done {
            eprintln!(
                "  {name:<44} {:>6.0} s  {}",
                took.as_secs_f64(),
                if *ok { "ok" } else { "FAILED" }
            );
        }
        eprintln!(
            "  {:<44} {:>6.0} s",
            "total (wall)",
            self.started.map_or(0.0, |t| t.elapsed().as_secs_f64())
        );
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
    cargo_env(args, &[])
}

/// `cargo ARGS…` with extra environment variables.
pub fn cargo_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}
