//! What this kernel and these attachments support, and so which actions are available:
//! `faultctl doctor`, and the same table in faultd's start-up log.

use std::path::Path;

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
    let no_fq = |what: &str| format!("unavailable: needs the fq qdisc, which {what}");
    let actions = vec![
        action("drop", true, "XDP ingress, TC egress"),
        action("loss", true, "XDP ingress, TC egress"),
        action("reset", true, "TC ingress and egress (forged RST)"),
        action("refuse", true, "rst: TC; drop: XDP ingress, TC egress"),
        action("limit-bytes", true, "per-flow state; then drop or reset"),
        action("limit-age", true, "per-flow state; then drop or reset"),
        action("record", true, "SYNs to the port, as events"),
        action("corrupt", true, "TC ingress and egress"),
        action("duplicate", true, "TC ingress and egress (clone)"),
        action("stall", true, "TC ingress and egress (window 0)"),
        match &fq {
            Ok(()) => action("delay", true, "TC egress (EDT + fq); on lo both directions"),
            Err(_) => action("delay", false, no_fq("this kernel lacks")),
        },
        match &fq {
            Ok(()) => action("rate", true, "paced (EDT + fq), TC egress"),
            Err(_) => action(
                "rate",
                true,
                "policed (drops above the rate): no fq to pace with",
            ),
        },
    ];
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

/// The report as the table `faultctl doctor` prints and faultd logs at start-up.
pub use faultd_api::capabilities::table;
