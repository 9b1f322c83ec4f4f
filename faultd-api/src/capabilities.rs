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
    out
}
