//! `cargo xtask fuzz`: the seed corpora checked, then a bounded cargo-fuzz run of each
//! target, sharing one time budget (part of `cargo xtask test`): `add_fault_request`
//! (AddFault requests through validation and compilation) and `bpf_frames` (frames through
//! the eBPF programs under BPF_PROG_TEST_RUN; needs root).
//!
//! The fuzz crate (`fuzz/`) is a workspace of its own, built into `target/fuzz/`: its seed
//! test with the stable toolchain, the fuzz target by cargo-fuzz with nightly and
//! sanitizers. (Sharing `target/` with the main workspace would make the two rerun
//! fault-daemon's build script, and so rebuild the eBPF object, each after the other.) New inputs the
//! fuzzer finds go to `target/fuzz/corpus/` (kept between runs); the committed seeds in
//! `fuzz/corpus/` are only read. A crash is written to `fuzz/artifacts/` and fails the run.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::workspace_root;

pub const TARGETS: [&str; 2] = ["add_fault_request", "bpf_frames"];

#[derive(clap::Args, Debug)]
pub struct Options {
    /// How long the fuzzers run in all, in seconds, shared evenly between the targets
    /// (each gets libFuzzer's -max_total_time of its share).
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Extra libFuzzer options, e.g. `-- -fork=2` for two fuzzing processes.
    #[arg(last = true)]
    pub libfuzzer: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let root = workspace_root();
    crate::cargo(&[
        "test",
        "--manifest-path",
        "fuzz/Cargo.toml",
        "--target-dir",
        "target/fuzz",
    ])?;
    let fuzz_dir = ["--fuzz-dir", "fuzz", "--target-dir", "target/fuzz"];
    let status = cargo_fuzz(&root)
        .arg("build")
        .args(fuzz_dir)
        .status()
        .context("cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let share = (opts.seconds / TARGETS.len() as u64).max(1);
    for target in TARGETS {
        fuzz_one(&root, target, share, &opts.libfuzzer)?;
    }
    Ok(())
}

/// One target for `seconds`; its new inputs go to `target/fuzz/corpus/<target>`.
fn fuzz_one(root: &Path, target: &str, seconds: u64, libfuzzer: &[String]) -> anyhow::Result<()> {
    let scratch = root.join("target/fuzz/corpus").join(target);
    std::fs::create_dir_all(&scratch)?;
    let fuzz_dir = ["--fuzz-dir", "fuzz", "--target-dir", "target/fuzz"];
    let log_path = root.join("target/fuzz").join(format!("{target}.log"));
    eprintln!(
        "xtask: fuzzing {target} for {} s (log: {})",
        seconds,
        log_path.display()
    );
    let log = File::create(&log_path)?;
    let status = cargo_fuzz(root)
        .arg("run")
        .args(fuzz_dir)
        .arg(target)
        .arg(&scratch)
        .arg(Path::new("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(libfuzzer)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("cargo fuzz run")?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        bail!(
            "cargo fuzz run {target} failed ({status}):\n{tail}\n(whole log: {})",
            log_path.display()
        );
    }
    let done = text
        .lines()
        .rev()
        // "Done N runs in S second(s)", or in -fork mode the last status line.
        .find(|l| l.starts_with("Done ") || (l.starts_with('#') && l.contains("exec/s")))
        .unwrap_or("(no summary line)");
    let corpus = std::fs::read_dir(&scratch).map_or(0, |d| d.count());
    eprintln!(
        "xtask: fuzz {target}: {done}; no failure; {corpus} inputs in {}",
        scratch.display()
    );
    Ok(())
}

/// cargo-fuzz with the nightly toolchain, whatever toolchain runs xtask.
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(root)
        .env_remove("RUSTC")
        .env_remove("CARGO");
    cmd
}
