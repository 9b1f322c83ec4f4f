//! What this kernel and these attachments support, and so which actions are available:
//! `faultctl doctor`, and the same table in faultd's start-up log.

use std::path::Path;

use fault_common::{
    ACTION_CORRUPT, ACTION_DELAY, ACTION_DROP, ACTION_DUPLICATE, ACTION_LIMIT_AGE,
    ACTION_LIMIT_BYTES, ACTION_RATE, ACTION_RECORD, ACTION_REFUSE_DROP, ACTION_REFUSE_RST,
    ACTION_RESET, ACTION_SLICE, ACTION_STALL, HOOK_TC_EGRESS, HOOK_TC_INGRESS, HOOK_XDP, RATE_PACE,
    RATE_POLICE, THEN_DROP, THEN_RESET, hooks_for,
};

use crate::datapath::Attachment;
use crate::proto;
use crate::qdisc;

/// Kernel release, as `uname -r` prints it.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn feature(name: &str, available: bool, detail: impl Into<String>) -> proto::Feature {
    proto::Feature {
        name: name.into(),
        available,
        detail: detail.into(),
    }
}

fn action(name: &str, available: bool, detail: impl Into<String>) -> proto::ActionSupport {
    proto::ActionSupport {
        action: name.into(),
        available,
        detail: detail.into(),
    }
}

/// Probes the kernel (fq in a throwaway namespace; the rest from /sys and /proc) and
/// describes the attachments. faultd is running, so BPF, the maps and the RingBuf work.
pub fn report(attachments: &[Attachment]) -> proto::Capabilities {
    let fq = qdisc::fq_available();
    let tcx = attachments.iter().any(|a| a.tc_mode == "tcx");
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    let features = vec![
        feature("kernel", true, kernel_release()),
        feature(
            "btf",
            btf,
            if btf {
                "/sys/kernel/btf/vmlinux"
            } else {
                "no /sys/kernel/btf/vmlinux (not needed by faultd)"
            },
        ),
        feature(
            "ringbuf",
            true,
            "events: first hits, RSTs, SYNs (kernel ≥ 5.8)",
        ),
        feature(
            "tcx",
            tcx,
            if tcx {
                "TC programs attach through TCX links (kernel ≥ 6.6)"
            } else {
                "TC programs attach to a clsact qdisc through netlink"
            },
        ),
        feature(
            "fq",
            fq.is_ok(),
            match &fq {
                Ok(()) => "sch_fq: departure times are honoured".to_string(),
                Err(e) => e.clone(),
            },
        ),
    ];
    let actions = actions(attachments, &fq);
    proto::Capabilities {
        features,
        attachments: attachments
            .iter()
            .map(|a| proto::Attachment {
                interface: a.iface.clone(),
                xdp_mode: a.xdp_mode.into(),
                tc_mode: a.tc_mode.into(),
            })
            .collect(),
        actions,
        version: env!("CARGO_PKG_VERSION").into(),
        // The datapath's, added by FaultApi::capabilities.
        maps: Vec::new(),
    }
}

/// Each action, whether this kernel has what it needs, and where it acts on each attached
/// interface (fault_common::hooks_for, the table the programs act by).
fn actions(attachments: &[Attachment], fq: &Result<(), String>) -> Vec<proto::ActionSupport> {
    let at = |action: u8, then: u8| placed(attachments, action, then);
    let rate = match fq {
        Ok(()) => action(
            "rate",
            true,
            format!("paced (EDT + fq): {}", at(ACTION_RATE, RATE_PACE)),
        ),
        Err(_) => action(
            "rate",
            true,
            format!(
                "policed (drops above the rate), no fq to pace with: {}",
                at(ACTION_RATE, RATE_POLICE)
            ),
        ),
    };
    vec![
        action("drop", true, at(ACTION_DROP, 0)),
        action("loss", true, at(ACTION_DROP, 0)),
        action(
            "reset",
            true,
            format!("forged RST: {}", at(ACTION_RESET, 0)),
        ),
        action(
            "refuse",
            true,
            format!(
                "rst: {} | drop: {}",
                at(ACTION_REFUSE_RST, 0),
                at(ACTION_REFUSE_DROP, 0)
            ),
        ),
        limit(
            "limit-bytes",
            at(ACTION_LIMIT_BYTES, THEN_DROP),
            at(ACTION_LIMIT_BYTES, THEN_RESET),
        ),
        limit(
            "limit-age",
            at(ACTION_LIMIT_AGE, THEN_DROP),
            at(ACTION_LIMIT_AGE, THEN_RESET),
        ),
        action(
            "record",
            true,
            format!("SYNs to the port, as events: {}", at(ACTION_RECORD, 0)),
        ),
        action("corrupt", true, at(ACTION_CORRUPT, 0)),
        action(
            "duplicate",
            true,
            format!("clone: {}", at(ACTION_DUPLICATE, 0)),
        ),
        action("stall", true, format!("window 0: {}", at(ACTION_STALL, 0))),
        action(
            "slice",
            true,
            format!(
                "MSS + window, new connections; --delay needs fq: {}",
                at(ACTION_SLICE, 0)
            ),
        ),
        match fq {
            Ok(()) => action("delay", true, format!("EDT + fq: {}", at(ACTION_DELAY, 0))),
            Err(_) => action(
                "delay",
                false,
                "unavailable: needs the fq qdisc, which this kernel lacks",
            ),
        },
        rate,
    ]
}

fn limit(name: &str, then_drop: String, then_reset: String) -> proto::ActionSupport {
    action(
        name,
        true,
        format!("per-flow state; then drop: {then_drop} | then reset: {then_reset}"),
    )
}

/// Where the action acts, per kind of attached interface: "lo: TC ingress; veth0: XDP
/// ingress, TC egress". With nothing attached, both kinds.
fn placed(attachments: &[Attachment], action: u8, then: u8) -> String {
    let names = |loopback: bool| -> Option<String> {
        let names: Vec<&str> = attachments
            .iter()
            .filter(|a| a.loopback == loopback)
            .map(|a| a.iface.as_str())
            .collect();
        match (names.is_empty(), attachments.is_empty(), loopback) {
            (false, _, _) => Some(names.join(", ")),
            (true, true, true) => Some("a loopback".into()),
            (true, true, false) => Some("other interfaces".into()),
            (true, false, _) => None,
        }
    };
    [true, false]
        .into_iter()
        .filter_map(|loopback| {
            let hooks = hooks_for(action, then, loopback);
            names(loopback).map(|names| format!("{names}: {}", hook_names(hooks)))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// "XDP ingress, TC egress" for `hooks_for`'s bits.
fn hook_names(hooks: u8) -> String {
    [
        (HOOK_XDP, "XDP ingress"),
        (HOOK_TC_INGRESS, "TC ingress"),
        (HOOK_TC_EGRESS, "TC egress"),
    ]
    .into_iter()
    .filter(|(bit, _)| hooks & bit != 0)
    .map(|(_, name)| name)
    .collect::<Vec<_>>()
    .join(", ")
}

/// The report as the table `faultctl doctor` prints and faultd logs at start-up.
pub use faultd_api::capabilities::table;

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(iface: &str, loopback: bool) -> Attachment {
        Attachment {
            iface: iface.into(),
            ifindex: 1,
            xdp_mode: if loopback { "none" } else { "driver" },
            tc_mode: "tcx",
            loopback,
        }
    }

    fn detail(actions: &[proto::ActionSupport], name: &str) -> String {
        actions
            .iter()
            .find(|a| a.action == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .detail
            .clone()
    }

    #[test]
    fn each_interface_is_told_the_hooks_that_act_on_it() {
        let both = [attached("lo", true), attached("veth0", false)];
        let actions = actions(&both, &Ok(()));
        assert_eq!(
            detail(&actions, "drop"),
            "lo: TC ingress; veth0: XDP ingress, TC egress"
        );
        assert_eq!(
            detail(&actions, "stall"),
            "window 0: lo: TC egress; veth0: TC ingress, TC egress"
        );
        assert_eq!(
            detail(&actions, "delay"),
            "EDT + fq: lo: TC egress; veth0: TC egress"
        );
        assert_eq!(
            detail(&actions, "rate"),
            "paced (EDT + fq): lo: TC egress; veth0: XDP ingress, TC egress"
        );
        // Only the kinds attached are named.
        let lo_only = actions_for_lo();
        assert_eq!(detail(&lo_only, "drop"), "lo: TC ingress");
        assert!(!detail(&lo_only, "corrupt").contains("ingress"));
    }

    fn actions_for_lo() -> Vec<proto::ActionSupport> {
        actions(&[attached("lo", true)], &Err("no fq".into()))
    }
}
