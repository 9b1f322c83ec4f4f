//! The `fq` qdisc that delays and paced rates need.
//!
//! The TC egress program only writes a departure time into `skb->tstamp`; the packet is held
//! until then by the `fq` qdisc (Earliest Departure Time). faultd puts fq at the root of
//! each attached interface when the first such fault arrives and puts back what was there
//! when the last one goes, and on exit.
//!
//! It replaces only the kernel's default root qdisc (noqueue, pfifo_fast, mq… with handle
//! `0:`), which deleting fq restores exactly. An interface someone configured (an htb tree,
//! a netem) is not touched: the fault is refused instead. An fq already there is used as
//! is and left there. A faultd killed with SIGKILL cannot clean up: it notes each fq it puts
//! down in /run/faultd, and the next faultd on the interface removes it.

use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use tracing::{info, warn};

/// fq's own defaults (10 000 packets, 100 per flow) drop packets that a long delay holds
/// in large numbers; these let a delayed bulk flow queue like it would on a slow link.
const FQ_OPTIONS: &[&str] = &["limit", "100000", "flow_limit", "10000"];

/// Whether this kernel has sch_fq, found by adding it to the loopback of a throwaway
/// network namespace (a thread's own, so nothing the machine uses is touched). Probed
/// once; the error says what is missing.
pub fn fq_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe_fq).clone()
}

fn probe_fq() -> Result<(), String> {
    let outcome = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which exits right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot make a network namespace to probe for fq: {}",
                std::io::Error::last_os_error()
            ));
        }
        // A child takes the network namespace of the thread that spawns it.
        tc(&["qdisc", "add", "dev", "lo", "root", "fq"])
    })
    .join()
    .unwrap_or_else(|_| Err("the fq probe panicked".into()));
    outcome.map_err(|e| {
        format!("this kernel has no fq qdisc (sch_fq, CONFIG_NET_SCH_FQ): tc said {e:?}")
    })
}

/// fq at the root of the attached interfaces, while some fault needs it.
pub struct Fq {
    /// (name, ifindex) of the attached interfaces.
    ifaces: Vec<(String, u32)>,
    /// Interfaces where faultd put fq, with the handle it got, to remove it later.
    installed: Vec<(String, u32, String)>,
    active: bool,
}

/// Where faultd notes the fq it put on an interface, so that the next faultd on it can take
/// away what a killed one left behind. Interfaces are per network namespace, as in the
/// datapath's interface locks.
fn note_path(ifindex: u32) -> PathBuf {
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    PathBuf::from(format!("/run/faultd/netns-{netns}-ifindex-{ifindex}.fq"))
}

impl Fq {
    /// Takes over the interfaces (which the caller holds the locks of), removing an fq that
    /// a faultd killed before it could clean up left on them.
    pub fn new(ifaces: Vec<(String, u32)>) -> Self {
        for (iface, ifindex) in &ifaces {
            let note = note_path(*ifindex);
            let Ok(handle) = std::fs::read_to_string(&note) else {
                continue;
            };
            if matches!(root_qdisc(iface), Ok(Root::Fq { handle: h }) if h == handle.trim()) {
                match tc(&["qdisc", "del", "dev", iface, "root"]) {
                    Ok(()) => info!(iface = %iface, "removed the fq an earlier faultd left behind"),
                    Err(e) => {
                        warn!(iface = %iface, error = %e, "could not remove a left-behind fq")
                    }
                }
            }
            let _ = std::fs::remove_file(note);
        }
        Self {
            ifaces,
            installed: Vec::new(),
            active: false,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Makes fq the root qdisc of every interface, or changes nothing and says why not.
    pub fn install(&mut self) -> Result<(), String> {
        if self.active {
            return Ok(());
        }
        fq_available()?;
        let mut plan = Vec::new();
        for (iface, ifindex) in &self.ifaces {
            match root_qdisc(iface)? {
                Root::Fq { .. } => {}
                Root::Default => plan.push((iface.clone(), *ifindex)),
                Root::Configured { kind, handle } => {
                    return Err(format!(
                        "{iface} has a configured root qdisc {kind} (handle {handle}); faultd \
                         replaces only the kernel's default one. Remove it, or put fq there \
                         yourself: tc qdisc replace dev {iface} root fq"
                    ));
                }
            }
        }
        for (iface, ifindex) in plan {
            let mut args = vec!["qdisc", "replace", "dev", &iface, "root", "fq"];
            args.extend_from_slice(FQ_OPTIONS);
            if let Err(e) = tc(&args) {
                self.restore();
                return Err(format!("installing fq on {iface}: {e}"));
            }
            let handle = match root_qdisc(&iface) {
                Ok(Root::Fq { handle }) => handle,
                _ => String::new(),
            };
            info!(iface = %iface, "installed the fq qdisc for departure times");
            let _ = std::fs::write(note_path(ifindex), &handle);
            self.installed.push((iface, ifindex, handle));
        }
        self.active = true;
        Ok(())
    }

    /// Puts back the default qdisc wherever faultd installed fq and it is still there.
    pub fn restore(&mut self) {
        for (iface, ifindex, handle) in self.installed.drain(..) {
            let _ = std::fs::remove_file(note_path(ifindex));
            let still_ours =
                matches!(root_qdisc(&iface), Ok(Root::Fq { handle: h }) if h == handle);
            if !still_ours {
                warn!(iface = %iface, "the fq qdisc faultd installed was replaced; leaving it");
                continue;
            }
            match tc(&["qdisc", "del", "dev", &iface, "root"]) {
                Ok(()) => info!(iface = %iface, "removed the fq qdisc; the default is back"),
                Err(e) => warn!(iface = %iface, error = %e, "could not remove the fq qdisc"),
            }
        }
        self.active = false;
    }
}

impl Drop for Fq {
    fn drop(&mut self) {
        self.restore();
    }
}

/// What sits at the root of an interface.
enum Root {
    /// The kernel's default (handle 0:, or noqueue which `tc` does not list).
    Default,
    /// fq, put there by faultd or by someone else: usable either way.
    Fq {
        handle: String,
    },
    Configured {
        kind: String,
        handle: String,
    },
}

fn root_qdisc(iface: &str) -> Result<Root, String> {
    let out = Command::new("tc")
        .args(["-j", "qdisc", "show", "dev", iface, "root"])
        .output()
        .map_err(|e| format!("running tc: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tc qdisc show dev {iface}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let list: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("tc qdisc show dev {iface}: unreadable JSON: {e}"))?;
    let Some(root) = list.as_array().and_then(|l| l.first()) else {
        return Ok(Root::Default);
    };
    let kind = root["kind"].as_str().unwrap_or_default().to_string();
    let handle = root["handle"].as_str().unwrap_or_default().to_string();
    Ok(if handle == "0:" {
        Root::Default
    } else if kind == "fq" {
        Root::Fq { handle }
    } else {
        Root::Configured { kind, handle }
    })
}

fn tc(args: &[&str]) -> Result<(), String> {
    let out = Command::new("tc")
        .args(args)
        .output()
        .map_err(|e| format!("running tc: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
