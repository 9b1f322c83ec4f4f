//! The bench's network namespaces and faultd processes, from the harness it shares with the
//! system tests (`test-harness`): removed on drop even when a measurement fails; processes
//! are stopped by their PID only. Also the kernel's BPF accounting the bench reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
pub use test_harness::{Faultd, Netns, run};

/// Every namespace the bench makes is named `fdb-<tag>-<pid of xtask>-<n>`.
const PREFIX: &str = "fdb-";

/// Ephemeral ports in the bench's namespaces: above every port that carries a fault, so
/// that no client's source port is one of them.
pub const EPHEMERAL_PORTS: (u16, u16) = (61_000, 65_000);

/// A namespace of the bench's own, with its `lo` up and [`EPHEMERAL_PORTS`].
pub fn new(tag: &str) -> anyhow::Result<Netns> {
    let ns = Netns::new(PREFIX, tag)?;
    ns.set_ephemeral_ports(EPHEMERAL_PORTS.0, EPHEMERAL_PORTS.1)?;
    Ok(ns)
}

/// Deletes the namespaces left by a bench whose process is gone (e.g. killed).
pub fn remove_stale() {
    Netns::remove_stale(PREFIX);
}

/// faultd attached to the `lo` of `ns`, logging to `log` (kept for the report's reader).
pub fn start_faultd(ns: &Netns, faultd: &Path, log: PathBuf) -> anyhow::Result<Faultd> {
    let mut opts = test_harness::FaultdOptions::new(&["lo"], log);
    // A release build loads in a second or two; a debug one under load takes longer.
    opts.ready_within = Duration::from_secs(60);
    // With 100 000 faults installed, faultd removes them all before it exits.
    opts.stop_within = Duration::from_secs(30);
    // The sweep installs up to 100 000 faults: all the kernel maps hold.
    opts.args = vec!["--max-faults".into(), "131072".into()];
    Faultd::start(ns, faultd, &opts).context("faultd")
}

/// The value of `kernel.bpf_stats_enabled` is set to 1 while this lives, and restored after.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "xtask: could not restore {BPF_STATS} to {}: {e}",
                self.previous
            );
        }
    }
}

/// The fds of `pid` that are BPF objects of `kind` ("bpf-prog", "bpf-map"), with their
/// fdinfo text.
pub fn bpf_fdinfo(pid: u32, kind: &str) -> anyhow::Result<Vec<(u32, String)>> {
    let want = format!("anon_inode:{kind}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != want {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
            found.push((fd, info));
        }
    }
    Ok(found)
}

/// A `key: value` number from an fdinfo text.
pub fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}
