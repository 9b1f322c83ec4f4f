//! What a faultd reports it supports (`GetCapabilities`), for people.

use crate::proto;

/// The report as the table `faultctl doctor` prints and faultd logs at start-up.
pub fn table(caps: &proto::Capabilities) -> String {
    let mut out = String::new();
    let mark = |ok: bool| if ok { "yes" } else { "NO " };
    for f in &caps.features {
        out += &format!("{:<12} {}  {}\n", f.name, mark(f.available), f.detail);
    }
    for a in &caps.attachments {
        out += &format!(
            "{:<12} xdp {}, tc {}\n",
            format!("iface {}", a.interface),
            a.xdp_mode,
            a.tc_mode
        );
    }
    for a in &caps.actions {
        out += &format!("{:<12} {}  {}\n", a.action, mark(a.available), a.detail);
    }
    if !caps.maps.is_empty() {
        out += &format!(
            "{:<16} {:<14} {:>11} {:>12}\n",
            "MAP", "TYPE", "MAX ENTRIES", "KERNEL BYTES"
        );
    }
    for m in &caps.maps {
        out += &format!(
            "{:<16} {:<14} {:>11} {:>12}\n",
            m.name, m.r#type, m.max_entries, m.bytes
        );
    }
    if !caps.maps.is_empty() {
        let total: u64 = caps.maps.iter().map(|m| m.bytes).sum();
        out += &format!("{:<16} {:<14} {:>11} {total:>12}\n", "total", "", "");
    }
    out
}
