//! The namespace-and-daemon harness shared by faultd's system tests
//! (`fault-daemon/tests/harness`) and its bench (`cargo xtask bench`).
//!
//! Everything it creates is owned by a guard whose Drop removes it, so a failing test or a
//! failed measurement cleans up too: network namespaces ([`Netns`], with everything in them,
//! veth pairs included) and processes ([`Process`], [`Faultd`]), which are stopped by their
//! PID only, never by name.
//!
//! The faultd and faultctl binaries are passed in by path: `CARGO_BIN_EXE_*` exists only in
//! integration tests, and the bench runs binaries it built itself.

mod netns;
mod process;
pub mod skip;

pub use netns::{
    CLIENT_IF, CLIENT_V4, CLIENT_V6, Netns, SERVER_IF, SERVER_V4, SERVER_V6, VethPair, join_veth,
};
pub use process::{
    Faultd, FaultdOptions, NotReady, Process, announced_socket, remove_left_socket, send_signal,
    stop_child, wait_for_log,
};
pub use skip::{kernel_fq, kernel_sock_destroy, skip};

use std::process::Command;

use anyhow::{Context as _, bail};

/// Whether this process runs as root (it loads eBPF programs and creates namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The one line a test that needs root fails with when it is not root.
pub const NEEDS_ROOT: &str = "needs root: run as root (cargo xtask test, or sudo -E cargo test); \
                              this test loads eBPF programs or creates network namespaces";

/// Fails the calling test, with [`NEEDS_ROOT`], unless this process is root: a test that
/// needs root either runs or fails, never passes without having run.
#[track_caller]
pub fn require_root() {
    assert!(is_root(), "{NEEDS_ROOT}");
}

/// Runs `cmd` to completion: its stdout, or an error naming the command and its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
