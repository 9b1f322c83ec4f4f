//! Measurement 5, memory: faultd's resident set size, and beside it the kernel memory of its
//! BPF maps (which the RSS does not include), at each number of installed faults.

use anyhow::Context as _;

use super::netns::{bpf_fdinfo, fdinfo_field};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub bpf_map_bytes: u64,
}

pub fn sample(pid: u32) -> anyhow::Result<Memory> {
    Ok(Memory {
        rss_bytes: rss_bytes(pid)?,
        bpf_map_bytes: bpf_map_bytes(pid)?,
    })
}

/// faultd's resident set size, in bytes (also sampled by the soak).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kb * 1024)
}

/// Kernel memory of faultd's BPF maps (the sum of their `memlock`), in bytes.
fn bpf_map_bytes(pid: u32) -> anyhow::Result<u64> {
    let mut maps = std::collections::HashMap::new();
    for (_, info) in bpf_fdinfo(pid, "bpf-map")? {
        if let (Some(id), Some(bytes)) = (
            fdinfo_field(&info, "map_id"),
            fdinfo_field(&info, "memlock"),
        ) {
            maps.insert(id, bytes);
        }
    }
    Ok(maps.values().sum())
}
