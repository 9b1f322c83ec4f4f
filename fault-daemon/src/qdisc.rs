//! The `fq` qdisc that delays and paced rates need.
//!
//! The TC egress program only writes a departure time into `skb->tstamp`; the packet is held
//! until then by the `fq` qdisc (Earliest Departure Time). faultd puts fq on each attached
//! interface when the first such fault arrives and puts back what was there when the last
//! one goes, and on exit. All of it through rtnetlink ([`crate::netlink`]).
//!
//! faultd replaces only the kernel's default qdiscs (handle `0:`), which deleting what
//! faultd added restores exactly:
//! - a single-queue default (noqueue, pfifo_fast…): fq at the root;
//! - the default `mq` of a multi-queue NIC: an `mq` of faultd's own at the root with an fq
//!   under each transmit queue, so that the queues stay independent.
//!
//! The create itself refuses to overwrite anything (`NLM_F_CREATE | NLM_F_EXCL`): a qdisc
//! that someone configures between faultd's look and its change makes the change fail
//! rather than disappear. An interface someone configured (an htb tree, a tbf, a netem) is
//! not touched: the fault is refused. An fq already there (or an mq of fqs) is used as is
//! and left there.
//!
//! faultd removes only what it installed and finds unchanged: the same handles, the same
//! kinds and the same configuration as the kernel reported when faultd created them. An fq
//! that someone tuned since (`tc qdisc change … fq limit …` keeps the handle) is left
//! alone. A faultd killed with SIGKILL cannot clean up: it notes what it installed in
//! /run/faultd, and the next faultd on the interface checks the same way and removes it.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::netlink::{NetlinkError, Qdisc, ROOT, Rtnl, handle_text};

/// What departure times need on an interface: a qdisc kind and its configuration (the
/// payload of `TCA_OPTIONS`).
#[derive(Clone, Debug)]
pub struct QdiscSpec {
    pub kind: String,
    pub options: Vec<u8>,
}

impl QdiscSpec {
    /// fq, with room for what a long delay holds: fq's own defaults (10 000 packets, 100
    /// per flow) drop packets that a delay holds in large numbers; these let a delayed bulk
    /// flow queue like it would on a slow link.
    pub fn fq() -> Self {
        const TCA_FQ_PLIMIT: u16 = 1;
        const TCA_FQ_FLOW_PLIMIT: u16 = 2;
        let mut options = Vec::new();
        for (kind, value) in [(TCA_FQ_PLIMIT, 100_000u32), (TCA_FQ_FLOW_PLIMIT, 10_000)] {
            options.extend(8u16.to_ne_bytes());
            options.extend(kind.to_ne_bytes());
            options.extend(value.to_ne_bytes());
        }
        Self {
            kind: "fq".into(),
            options,
        }
    }
}

/// Whether this kernel has sch_fq, found by adding it to the loopback of a throwaway
/// network namespace (a thread's own, so nothing the machine uses is touched). Probed
/// once; the error says what is missing.
pub fn fq_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe_fq).clone()
}

fn probe_fq() -> Result<(), String> {
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread, which exits right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "cannot make a network namespace to probe for fq: {}",
                std::io::Error::last_os_error()
            ));
        }
        // The socket belongs to the namespace of the thread that opens it; lo is ifindex 1.
        let mut rtnl = Rtnl::open().map_err(|e| e.to_string())?;
        rtnl.create_qdisc(1, ROOT, 0, "fq", None)
            .map(drop)
            .map_err(|e| {
                format!(
                    "this kernel has no fq qdisc (sch_fq, CONFIG_NET_SCH_FQ): the kernel said \
                     {:?}",
                    e.message
                )
            })
    })
    .join()
    .unwrap_or_else(|_| Err("the fq probe panicked".into()))
}

/// What faultd installed on one interface, as noted in /run/faultd.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Installed {
    /// Kind of the leaves (fq), and their configuration as the kernel reported it.
    kind: String,
    options: String,
    /// The qdisc at the root: the fq itself, or faultd's mq.
    root_kind: String,
    root: u32,
    /// Under an mq: (parent, handle) of each leaf.
    #[serde(default)]
    leaves: Vec<(u32, u32)>,
}

impl Installed {
    /// A note that names something faultd can verify, or nothing: a handle of 0 is the
    /// kernel's default, which is never faultd's to remove.
    fn parse(text: &str) -> Option<Self> {
        let note: Self = serde_json::from_str(text).ok()?;
        let valid = note.root != 0
            && !note.kind.is_empty()
            && note.leaves.iter().all(|&(parent, handle)| {
                handle != 0 && parent >> 16 == note.root >> 16 && parent & 0xFFFF != 0
            })
            && (note.root_kind == note.kind) == note.leaves.is_empty();
        valid.then_some(note)
    }

    /// Whether the interface's qdiscs are still exactly what faultd put there; if not,
    /// what changed.
    fn check(&self, qdiscs: &[Qdisc]) -> Result<(), String> {
        let root = qdiscs
            .iter()
            .find(|q| q.parent == ROOT)
            .ok_or("the root qdisc was replaced by the default")?;
        if root.handle != self.root || root.kind != self.root_kind {
            return Err(format!(
                "the root is now {} {}",
                root.kind,
                handle_text(root.handle)
            ));
        }
        let leaves: Vec<&Qdisc> = if self.leaves.is_empty() {
            vec![root]
        } else {
            let mut leaves = Vec::new();
            for &(parent, handle) in &self.leaves {
                let leaf = qdiscs
                    .iter()
                    .find(|q| q.parent == parent && q.handle == handle)
                    .ok_or_else(|| format!("the qdisc under {} changed", handle_text(parent)))?;
                leaves.push(leaf);
            }
            // Anything else someone put under faultd's mq would go with it.
            let major = self.root >> 16;
            if let Some(other) = qdiscs.iter().find(|q| {
                q.parent >> 16 == major
                    && q.parent != ROOT
                    && q.handle != 0
                    && !self.leaves.contains(&(q.parent, q.handle))
            }) {
                return Err(format!(
                    "{} {} was added under {}",
                    other.kind,
                    handle_text(other.handle),
                    handle_text(other.parent)
                ));
            }
            leaves
        };
        for leaf in leaves {
            if leaf.kind != self.kind || hex(&leaf.options) != self.options {
                return Err(format!(
                    "{} {} under {} was changed (tuned or replaced)",
                    leaf.kind,
                    handle_text(leaf.handle),
                    handle_text(leaf.parent)
                ));
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What sits on an interface, as far as departure times are concerned.
enum Found {
    /// The qdisc departure times need is there (at the root or under every queue).
    Ready,
    /// The kernel's default single-queue qdisc, or none listed.
    Default,
    /// The kernel's default mq; the minors of its transmit queues.
    DefaultMq(Vec<u16>),
    Configured {
        kind: String,
        handle: u32,
    },
}

fn classify(qdiscs: &[Qdisc], kind: &str) -> Found {
    let Some(root) = qdiscs.iter().find(|q| q.parent == ROOT) else {
        return Found::Default;
    };
    let children: Vec<&Qdisc> = qdiscs
        .iter()
        .filter(|q| q.parent >> 16 == root.handle >> 16 && q.parent != ROOT)
        .collect();
    if root.kind == kind
        || (root.kind == "mq" && !children.is_empty() && children.iter().all(|q| q.kind == kind))
    {
        Found::Ready
    } else if root.handle != 0 {
        Found::Configured {
            kind: root.kind.clone(),
            handle: root.handle,
        }
    } else if root.kind == "mq" && !children.is_empty() {
        Found::DefaultMq(
            children
                .iter()
                .map(|q| (q.parent & 0xFFFF) as u16)
                .collect(),
        )
    } else {
        Found::Default
    }
}

/// The qdisc that departure times need, on the attached interfaces, while some fault
/// needs it.
pub struct Fq {
    spec: QdiscSpec,
    /// (name, ifindex) of the attached interfaces.
    ifaces: Vec<(String, u32)>,
    /// What faultd installed, per interface (name, ifindex), to remove it later.
    installed: Vec<(String, u32, Installed)>,
    active: bool,
}

/// Where faultd notes what it put on an interface, so that the next faultd on it can take
/// away what a killed one left behind. Interfaces are per network namespace, as in the
/// datapath's interface locks.
fn note_path(ifindex: u32) -> PathBuf {
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    PathBuf::from(format!("/run/faultd/netns-{netns}-ifindex-{ifindex}.fq"))
}

fn write_note(ifindex: u32, installed: &Installed) {
    let path = note_path(ifindex);
    let tmp = path.with_extension("fq.tmp");
    let written = std::fs::create_dir_all("/run/faultd")
        .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(installed).unwrap_or_default()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        warn!(path = %path.display(), error = %e, "cannot note the fq faultd installed");
    }
}

impl Fq {
    /// Takes over the interfaces (which the caller holds the locks of), removing an fq that
    /// a faultd killed before it could clean up left on them.
    pub fn new(ifaces: Vec<(String, u32)>) -> Self {
        Self::with_spec(ifaces, QdiscSpec::fq())
    }

    /// The same with another qdisc in fq's place (tests on kernels without sch_fq).
    pub fn with_spec(ifaces: Vec<(String, u32)>, spec: QdiscSpec) -> Self {
        for (iface, ifindex) in &ifaces {
            let note = note_path(*ifindex);
            let Ok(text) = std::fs::read_to_string(&note) else {
                continue;
            };
            match Installed::parse(&text) {
                Some(left) => match remove(*ifindex, &left) {
                    Ok(()) => info!(iface = %iface, "removed the fq an earlier faultd left behind"),
                    Err(why) => {
                        warn!(iface = %iface, "left the qdiscs an earlier faultd noted: {why}")
                    }
                },
                None => {
                    warn!(iface = %iface, note = %note.display(), "ignoring an unreadable note")
                }
            }
            let _ = std::fs::remove_file(note);
        }
        Self {
            spec,
            ifaces,
            installed: Vec::new(),
            active: false,
        }
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Puts the qdisc on every interface, or changes nothing and says why not.
    pub fn install(&mut self) -> Result<(), String> {
        if self.active {
            return Ok(());
        }
        if self.spec.kind == "fq" {
            fq_available()?;
        }
        let ifaces = self.ifaces.clone();
        for (iface, ifindex) in ifaces {
            match install(&iface, ifindex, &self.spec) {
                Ok(None) => {}
                Ok(Some(installed)) => {
                    info!(iface = %iface, kind = %self.spec.kind, "installed the qdisc for departure times");
                    write_note(ifindex, &installed);
                    self.installed.push((iface, ifindex, installed));
                }
                Err(e) => {
                    self.restore();
                    return Err(e);
                }
            }
        }
        self.active = true;
        Ok(())
    }

    /// Puts back the default qdiscs wherever faultd installed its own and finds them as it
    /// left them.
    pub fn restore(&mut self) {
        for (iface, ifindex, installed) in self.installed.drain(..) {
            match remove(ifindex, &installed) {
                Ok(()) => info!(iface = %iface, "removed the fq qdisc; the default is back"),
                Err(why) => warn!(iface = %iface, "leaving the fq faultd installed: {why}"),
            }
            let _ = std::fs::remove_file(note_path(ifindex));
        }
        self.active = false;
    }
}

impl Drop for Fq {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Installs `spec` on one interface: `None` when it is there already.
fn install(iface: &str, ifindex: u32, spec: &QdiscSpec) -> Result<Option<Installed>, String> {
    let failed = |e: NetlinkError| format!("{iface}: {e}");
    let mut rtnl = Rtnl::open().map_err(failed)?;
    let qdiscs = rtnl.qdiscs(ifindex).map_err(failed)?;
    let configured = |kind: &str, handle: u32| {
        format!(
            "{iface} has a configured root qdisc {kind} (handle {}); faultd replaces only the \
             kernel's default one. Remove it, or put {spec} there yourself: tc qdisc replace \
             dev {iface} root {spec}",
            handle_text(handle),
            spec = spec.kind,
        )
    };
    // The kernel refuses the create when a configured root appeared since the listing.
    let refused = |rtnl: &mut Rtnl, e: NetlinkError| {
        if !e.is(libc::EEXIST) {
            return failed(e);
        }
        match rtnl
            .qdiscs(ifindex)
            .ok()
            .as_deref()
            .map(|q| classify(q, &spec.kind))
        {
            Some(Found::Configured { kind, handle }) => configured(&kind, handle),
            _ => failed(e),
        }
    };
    let leaf_options = Some(spec.options.as_slice());
    let mut handles = FreeHandles::new(&qdiscs);
    match classify(&qdiscs, &spec.kind) {
        Found::Ready => Ok(None),
        Found::Configured { kind, handle } => Err(configured(&kind, handle)),
        Found::Default => {
            let root = rtnl
                .create_qdisc(ifindex, ROOT, handles.next(), &spec.kind, leaf_options)
                .map_err(|e| refused(&mut rtnl, e))?;
            Ok(Some(Installed {
                kind: root.kind.clone(),
                options: hex(&root.options),
                root_kind: root.kind,
                root: nonzero(root.handle, iface)?,
                leaves: Vec::new(),
            }))
        }
        Found::DefaultMq(queues) => {
            let mq = rtnl
                .create_qdisc(ifindex, ROOT, handles.next(), "mq", None)
                .map_err(|e| refused(&mut rtnl, e))?;
            let mut installed = Installed {
                kind: spec.kind.clone(),
                options: String::new(),
                root_kind: "mq".into(),
                root: nonzero(mq.handle, iface)?,
                leaves: Vec::new(),
            };
            for minor in queues {
                let parent = (mq.handle & 0xFFFF_0000) | u32::from(minor);
                let leaf = rtnl
                    .create_qdisc(ifindex, parent, handles.next(), &spec.kind, leaf_options)
                    .and_then(|leaf| match leaf.handle {
                        0 => Err(NetlinkError {
                            what: format!("adding {} under {}", spec.kind, handle_text(parent)),
                            errno: None,
                            message: "the kernel gave it no handle".into(),
                        }),
                        _ => Ok(leaf),
                    });
                match leaf {
                    Ok(leaf) => {
                        installed.options = hex(&leaf.options);
                        installed.leaves.push((parent, leaf.handle));
                    }
                    Err(e) => {
                        // Deleting faultd's mq brings the default one back, queues and all.
                        let _ = rtnl.delete_qdisc(ifindex, ROOT, installed.root, "mq");
                        return Err(failed(e));
                    }
                }
            }
            Ok(Some(installed))
        }
    }
}

/// Handles for the qdiscs faultd creates, from `fa00:` up, skipping those in use. faultd
/// names them itself because only a create with a handle fails when something is in the
/// way (see [`Rtnl::create_qdisc`]); a handle taken meanwhile fails it too.
struct FreeHandles {
    used: Vec<u32>,
    next: u32,
}

impl FreeHandles {
    const FIRST_MAJOR: u32 = 0xFA00;

    fn new(qdiscs: &[Qdisc]) -> Self {
        Self {
            used: qdiscs.iter().map(|q| q.handle >> 16).collect(),
            next: Self::FIRST_MAJOR,
        }
    }

    fn next(&mut self) -> u32 {
        // Majors run up to ffff; an interface with thousands of qdiscs from fa00 up gets a
        // handle the kernel refuses, and so a clear error.
        while self.used.contains(&self.next) && self.next < 0xFFFF {
            self.next += 1;
        }
        self.used.push(self.next);
        self.next << 16
    }
}

fn nonzero(handle: u32, iface: &str) -> Result<u32, String> {
    match handle {
        0 => Err(format!("{iface}: the kernel gave the new qdisc no handle")),
        h => Ok(h),
    }
}

/// Removes what faultd installed if it is still exactly that; otherwise says what changed.
fn remove(ifindex: u32, installed: &Installed) -> Result<(), String> {
    let mut rtnl = Rtnl::open().map_err(|e| e.to_string())?;
    let qdiscs = rtnl.qdiscs(ifindex).map_err(|e| e.to_string())?;
    installed.check(&qdiscs)?;
    // Handle and kind are checked again by the kernel, in the same step as the delete.
    rtnl.delete_qdisc(ifindex, ROOT, installed.root, &installed.root_kind)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(parent: u32, handle: u32, kind: &str, options: &[u8]) -> Qdisc {
        Qdisc {
            parent,
            handle,
            kind: kind.into(),
            options: options.to_vec(),
        }
    }

    fn single(handle: u32) -> Installed {
        Installed {
            kind: "fq".into(),
            options: "0102".into(),
            root_kind: "fq".into(),
            root: handle,
            leaves: vec![],
        }
    }

    #[test]
    fn only_faultds_unchanged_fq_is_its_own() {
        let ours = single(0x8001_0000);
        assert_eq!(ours.check(&[q(ROOT, 0x8001_0000, "fq", &[1, 2])]), Ok(()));
        // Tuned since: same handle, same kind, other options.
        assert!(ours.check(&[q(ROOT, 0x8001_0000, "fq", &[1, 3])]).is_err());
        // Replaced by another kind, or by another fq.
        assert!(ours.check(&[q(ROOT, 0x8001_0000, "tbf", &[1, 2])]).is_err());
        assert!(ours.check(&[q(ROOT, 0x8002_0000, "fq", &[1, 2])]).is_err());
        // Gone: the default is back.
        assert!(ours.check(&[q(ROOT, 0, "noqueue", &[])]).is_err());
        assert!(ours.check(&[]).is_err());
    }

    #[test]
    fn an_mq_of_fqs_is_checked_leaf_by_leaf() {
        let ours = Installed {
            kind: "fq".into(),
            options: "01".into(),
            root_kind: "mq".into(),
            root: 0x8001_0000,
            leaves: vec![(0x8001_0001, 0x8002_0000), (0x8001_0002, 0x8003_0000)],
        };
        let tree = vec![
            q(ROOT, 0x8001_0000, "mq", &[]),
            q(0x8001_0001, 0x8002_0000, "fq", &[1]),
            q(0x8001_0002, 0x8003_0000, "fq", &[1]),
        ];
        assert_eq!(ours.check(&tree), Ok(()));
        let mut tuned = tree.clone();
        tuned[2].options = vec![2];
        assert!(ours.check(&tuned).is_err());
        let mut added = tree.clone();
        added.push(q(0x8001_0003, 0x9000_0000, "tbf", &[]));
        assert!(ours.check(&added).is_err());
        // A default qdisc under a queue faultd did not touch is fine.
        let mut defaults = tree;
        defaults.push(q(0x8001_0003, 0, "pfifo_fast", &[]));
        assert_eq!(ours.check(&defaults), Ok(()));
    }

    #[test]
    fn a_note_without_a_real_handle_is_never_acted_on() {
        let good = serde_json::to_string(&single(0x8001_0000)).unwrap();
        assert_eq!(Installed::parse(&good), Some(single(0x8001_0000)));
        for bad in [
            String::new(),
            "8001:".to_string(),
            serde_json::to_string(&single(0)).unwrap(),
            r#"{"kind":"","options":"","root_kind":"fq","root":1}"#.to_string(),
        ] {
            assert_eq!(Installed::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn what_is_at_the_root_decides() {
        let kind = "fq";
        assert!(matches!(classify(&[], kind), Found::Default));
        assert!(matches!(
            classify(&[q(ROOT, 0, "noqueue", &[])], kind),
            Found::Default
        ));
        assert!(matches!(
            classify(&[q(ROOT, 0x8001_0000, "fq", &[])], kind),
            Found::Ready
        ));
        assert!(matches!(
            classify(&[q(ROOT, 0x1_0000, "tbf", &[])], kind),
            Found::Configured { .. }
        ));
        let default_mq = [
            q(ROOT, 0, "mq", &[]),
            q(1, 0, "pfifo_fast", &[]),
            q(2, 0, "pfifo_fast", &[]),
        ];
        assert!(matches!(classify(&default_mq, kind), Found::DefaultMq(m) if m == [1, 2]));
        let configured_mq = [
            q(ROOT, 0x1_0000, "mq", &[]),
            q(0x1_0001, 0, "pfifo_fast", &[]),
        ];
        assert!(matches!(
            classify(&configured_mq, kind),
            Found::Configured { .. }
        ));
        let mq_of_fq = [
            q(ROOT, 0x1_0000, "mq", &[]),
            q(0x1_0001, 0x2_0000, "fq", &[]),
        ];
        assert!(matches!(classify(&mq_of_fq, kind), Found::Ready));
    }
}
