//! Skips, which exist only where the kernel itself lacks a feature a test needs.
//!
//! A test that skips says so in one line, `SKIP <test>: <reason>`, on stderr (libtest shows
//! it with `--nocapture`) and, when [`SKIP_LOG_ENV`] names a file, appends the same line
//! there, so that `cargo xtask test` and `cargo xtask vm-test` count every skip of a run
//! and check it against the skips allowed on that kernel ([`allowed`]): an unexpected skip
//! fails the run. What decides a skip is probed from the kernel (a throwaway namespace's
//! `tc qdisc add … fq`, the helpers the running kernel has), never from faultd's report.

use std::io::Write as _;
use std::process::Command;

use crate::Netns;

/// Names a file every skip is appended to, one `SKIP <test>: <reason>` line each.
pub const SKIP_LOG_ENV: &str = "FAULTD_SKIP_LOG";

/// The line's prefix: `SKIP <test>: <reason>`.
pub const SKIP_PREFIX: &str = "SKIP ";

/// Records that the calling test skips (the rest of) what it checks, and why. Call it from
/// the test's own thread (libtest names it after the test), then return.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("{SKIP_PREFIX}{test}: {}", reason.replace('\n', " "));
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path);
        match file {
            Ok(mut f) => {
                let _ = writeln!(f, "{line}");
            }
            Err(e) => panic!("{SKIP_LOG_ENV}={path:?}: {e}"),
        }
    }
}

/// `SKIP <test>: <reason>` parsed back into (test, reason).
pub fn parse_skip(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim_start().strip_prefix(SKIP_PREFIX)?;
    let (test, reason) = rest.split_once(": ")?;
    (!test.is_empty() && !test.contains(' ')).then_some((test, reason))
}

/// Whether this kernel has the `fq` qdisc (delay and paced rate need it), asked of the
/// kernel: `tc qdisc add dev lo root fq` in a throwaway namespace. `Err` says why not.
pub fn kernel_fq() -> Result<(), String> {
    let ns = Netns::new("fdt-", "fqp").map_err(|e| format!("{e:#}"))?;
    let out = ns
        .cmd("tc")
        .args(["qdisc", "add", "dev", "lo", "root", "fq"])
        .output()
        .map_err(|e| format!("running tc: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "this kernel has no sch_fq (tc qdisc add … fq: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this kernel has the `bpf_sock_destroy` kfunc (from 6.5), asked of the kernel's
/// BTF: `bpftool`-free, by looking for the function's name in /sys/kernel/btf/vmlinux.
pub fn kernel_sock_destroy() -> Result<(), String> {
    let btf = std::fs::read("/sys/kernel/btf/vmlinux")
        .map_err(|e| format!("no kernel BTF to look bpf_sock_destroy up in: {e}"))?;
    let name = b"\0bpf_sock_destroy\0";
    if btf.windows(name.len()).any(|w| w == name) {
        Ok(())
    } else {
        Err("this kernel has no bpf_sock_destroy (from 6.5)".to_string())
    }
}

/// The skips allowed on a kernel of the matrix, by its release (`uname -r`): (test name,
/// why). Every other skip fails the run. The host (6.18 here) has no sch_fq; the VM's
/// Debian 6.1 has sch_fq and sch_netem but neither TCX nor bpf_sock_destroy.
pub fn allowed(release: &str) -> &'static [(&'static str, &'static str)] {
    let (major, minor) = version(release);
    if (major, minor) < (6, 5) {
        // Debian's 6.1 in the VM: fq is there, so nothing that needs fq may skip.
        ALLOWED_WITHOUT_SOCK_DESTROY
    } else {
        ALLOWED_WITHOUT_FQ
    }
}

/// Tests that skip, and only skip, for want of sch_fq.
const ALLOWED_WITHOUT_FQ: &[(&str, &str)] = &[
    (
        "delay_adds_its_latency_or_is_refused_without_fq",
        "no sch_fq",
    ),
    ("fq_is_restored_on_sigterm", "no sch_fq"),
    (
        "a_delayed_copy_leaves_no_earlier_than_its_original",
        "no sch_fq",
    ),
    (
        "a_configured_root_qdisc_is_kept_and_the_delay_refused",
        "no sch_fq",
    ),
    (
        "an_fq_left_by_a_killed_faultd_is_removed_by_the_next",
        "no sch_fq",
    ),
    (
        "an_fq_tuned_by_someone_else_stays_when_the_delay_goes",
        "no sch_fq",
    ),
    (
        "a_multiqueue_nic_gets_an_fq_per_queue_for_a_delay",
        "no sch_fq",
    ),
    (
        "sliced_streams_reach_the_application_in_reads_of_at_most_n_bytes",
        "no sch_fq",
    ),
];

/// Tests that skip for want of bpf_sock_destroy (none yet: faultd falls back to a RST).
const ALLOWED_WITHOUT_SOCK_DESTROY: &[(&str, &str)] = &[];

/// Whether `test` (libtest's name, `module::name` or `name`) may skip on `release`.
pub fn is_allowed(release: &str, test: &str) -> bool {
    allowed(release)
        .iter()
        .any(|(name, _)| test == *name || test.ends_with(&format!("::{name}")))
}

fn version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// This machine's kernel release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            Command::new("uname")
                .arg("-r")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_parse_back() {
        assert_eq!(
            parse_skip("SKIP degrade::a_test: this kernel has no sch_fq (x: y)"),
            Some(("degrade::a_test", "this kernel has no sch_fq (x: y)"))
        );
        assert_eq!(parse_skip("SKIP: old form"), None);
        assert_eq!(parse_skip("test x ... ok"), None);
    }

    #[test]
    fn the_vm_kernel_allows_no_fq_skips() {
        assert!(allowed("6.1.0-57-amd64").is_empty());
        assert!(!allowed("6.18.0").is_empty());
        assert_eq!(version("6.18.0-rc1"), (6, 18));
    }
}
