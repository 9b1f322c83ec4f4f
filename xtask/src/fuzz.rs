//! `cargo xtask fuzz`: the seed corpus checked, then a bounded cargo-fuzz run of the
//! `add_fault_request` target (part of `cargo xtask test`).
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

pub const TARGET: &str = "add_fault_request";

#[derive(clap::Args, Debug)]
pub struct Options {
    /// How long the fuzzer runs (libFuzzer's -max_total_time), in seconds.
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
    let scratch = root.join("target/fuzz/corpus").join(TARGET);
    std::fs::create_dir_all(&scratch)?;
    let fuzz_dir = ["--fuzz-dir", "fuzz", "--target-dir", "target/fuzz"];
    let status = cargo_fuzz(&root)
        .arg("build")
        .args(fuzz_dir)
        .arg(TARGET)
        .status()
        .context("cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    let log_path = root.join("target/fuzz").join(format!("{TARGET}.log"));
    eprintln!(
        "xtask: fuzzing {TARGET} for {} s (log: {})",
        opts.seconds,
        log_path.display()
    );
    let log = File::create(&log_path)?;
    let status = cargo_fuzz(&root)
        .arg("run")
        .args(fuzz_dir)
        .arg(TARGET)
        .arg(&scratch)
        .arg(Path::new("fuzz/corpus").join(TARGET))
        .arg("--")
        .arg(format!("-max_total_time={}", opts.seconds))
        .args(&opts.libfuzzer)
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .context("cargo fuzz run")?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(80)..].join("\n");
        bail!(
            "cargo fuzz run {TARGET} failed ({status}):\n{tail}\n(whole log: {})",
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
        "xtask: fuzz {TARGET}: {done}; no failure; {corpus} inputs in {}",
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
