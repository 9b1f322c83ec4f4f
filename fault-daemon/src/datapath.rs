//! The kernel side, through aya: load the embedded programs, attach them to interfaces,
//! write the maps they read, and take everything away again.
//!
//! Programs are attached once; fault changes are map writes only, so traffic on ports
//! without faults never sees a program swap. Every attachment is a link owned by this
//! process (never pinned): if faultd is killed, the kernel detaches it.

use std::fs::{self, File};
use std::io::{self, Write as _};
use std::os::fd::{AsFd as _, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::maps::{HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues, RingBuf};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader, include_bytes_aligned};
use fault_common::{
    FAULTED_PORT_WORDS, FaultCounters, FlowKey, FlowState, LOW_IFINDEXES, PARTITIONS_GATE_WORD,
    PortKey, PortRule, ROLE_EGRESS, ROLE_INGRESS, ROLE_L3, ROLE_LOOPBACK, faulted_port_bits,
};
use tracing::{info, warn};

use crate::ebpf_log::KernelLog;
use crate::faults::{FaultError, Limits, RuleSink};
use crate::global_array::GlobalArray;
use crate::netlink::{self, Rtnl};
use crate::rule_slots::{RuleSlots, slot_capacity};

/// The programs, built by build.rs and embedded so that faultd is one file to copy.
static PROGRAMS: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/fault-ebpf"));

pub const XDP_PROGRAM: &str = "faultd_xdp";
pub const TC_INGRESS_PROGRAM: &str = "faultd_tc_ingress";
pub const TC_EGRESS_PROGRAM: &str = "faultd_tc_egress";

/// Where lock files live; one per (network namespace, interface).
const LOCK_DIR: &str = "/run/faultd";

/// The sections of the programs' global arrays (see crate::global_array).
const FAULTED_PORTS_SECTION: &str = ".bss.faultports";
const IFACES_SECTION: &str = ".bss.ifaces";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "not permitted to load BPF programs: run faultd as root (or with CAP_BPF and CAP_NET_ADMIN)"
    )]
    NotPermitted,
    #[error("interface {0:?} does not exist in this network namespace")]
    NoSuchInterface(String),
    #[error("interface {iface:?} is already held by another faultd (pid {pid})")]
    Held { iface: String, pid: String },
    #[error(
        "interface {0:?} already has an XDP program attached by another tool; faultd will not replace it"
    )]
    XdpBusy(String),
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        #[source]
        source: anyhow::Error,
    },
}

fn kernel(what: impl Into<String>, source: impl Into<anyhow::Error>) -> DatapathError {
    DatapathError::Kernel {
        what: what.into(),
        source: source.into(),
    }
}

/// How the programs are attached to one interface.
#[derive(Clone, Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    /// "driver" or "generic"; "none" on a loopback, where TC carries every action.
    pub xdp_mode: &'static str,
    /// "tcx" or "netlink".
    pub tc_mode: &'static str,
    /// A loopback: each action acts at one of its TC hooks (fault_common::hooks_for).
    pub loopback: bool,
}

struct Held {
    attachment: Attachment,
    /// Set when faultd added a clsact qdisc (kernels without TCX), or took over the one a
    /// killed faultd added, and must remove it.
    added_clsact: bool,
    /// Kept open: the flock on it marks the interface as ours until we exit or die.
    _lock: File,
    lock_path: String,
}

/// How many entries the sized maps hold: from `--max-faults` and `--max-flows`
/// ([`MapSizes::for_limits`]). The defaults keep all of faultd's maps under 32 MiB of kernel
/// memory (docs/operations.md has the figures).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MapSizes {
    /// Faults at once: the counters' and rate states' slots; the rule slots hold two keys
    /// per fault (a fault on `any` compiles into a TCP and a UDP entry) and the replaced
    /// rules packets may still read (see [`crate::rule_slots`]).
    pub max_faults: u32,
    /// The limits' flow table (`FLOWS`) and the first-hit memory (`SEEN`).
    pub max_flows: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self::for_limits(&Limits::default())
    }
}

impl MapSizes {
    /// The sizes faultd's limits need (checked by [`Limits::validate`] beforehand).
    pub fn for_limits(limits: &Limits) -> Self {
        Self {
            max_faults: limits.max_faults as u32,
            max_flows: limits.max_flows,
        }
    }

    /// (map name, max_entries) for the loader.
    fn entries(&self) -> [(&'static str, u32); 5] {
        [
            ("RULE_SLOTS", slot_capacity(self.max_faults)),
            ("COUNTERS", self.max_faults),
            ("BUCKETS", self.max_faults),
            ("FLOWS", self.max_flows),
            ("SEEN", self.max_flows),
        ]
    }
}

/// One of faultd's maps in the kernel, for `doctor`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub name: String,
    /// The kernel's map type, e.g. "hash", "lru_hash", "percpu_array".
    pub kind: String,
    pub max_entries: u32,
    /// Kernel memory charged to the map (`memlock` in its fdinfo): for a hash without
    /// preallocation, what its entries take now.
    pub bytes: u64,
}

/// The limits' flow table, for `stats` and metrics.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowTable {
    pub max_entries: u32,
    /// Flows tracked now.
    pub entries: usize,
    /// Packets of new flows that found the table full and passed untracked, since start.
    pub full: u64,
}

pub struct Datapath {
    /// `None` only while dropping: the programs go first, then the qdiscs they needed.
    ebpf: Option<Ebpf>,
    /// RULE_INDEX and RULE_SLOTS, written so that packets never read another port's rule.
    rules: RuleSlots,
    /// The limits' per-flow state, and the flows whose first hit was reported.
    flows: HashMap<MapData, FlowKey, FlowState>,
    seen: HashMap<MapData, FlowKey, u64>,
    /// Per-CPU count of packets whose flow found `flows` full.
    flows_full: PerCpuArray<MapData, u64>,
    sizes: MapSizes,
    /// One bit per (protocol, port) with a rule, the summaries and the partitions' gate: the
    /// programs' FAULTED_PORTS.
    faulted_ports: GlobalArray<u64, { FAULTED_PORT_WORDS as usize }>,
    counters: PerCpuArray<MapData, FaultCounters>,
    /// Per-fault rate state, indexed like the counters.
    buckets: aya::maps::Array<MapData, u64>,
    /// Roles of interfaces by ifindex: below LOW_IFINDEXES in the programs' IFACES, others
    /// in the hash.
    ifaces: GlobalArray<u32, { LOW_IFINDEXES as usize }>,
    ifaces_high: HashMap<MapData, u32, u32>,
    events: Option<RingBuf<MapData>>,
    /// The programs' own log: its level and the reader of its records.
    log: KernelLog,
    /// Per-CPU count of events that found the ring full.
    events_lost: Option<PerCpuArray<MapData, u64>>,
    cpus: usize,
    held: Vec<Held>,
    /// Address-only partitions (see `partitions`).
    partitions: crate::partitions::PartitionMaps,
    /// The duplicate fault's copies in flight, and the sweep of lost ones.
    copies: crate::copies::Sweeper,
}

impl Datapath {
    /// Loads the programs into the kernel without attaching them anywhere, with the maps
    /// sized for faultd's default limits.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_sized(&MapSizes::default())
    }

    /// [`Datapath::load`] with the maps sized as `sizes` says.
    pub fn load_sized(sizes: &MapSizes) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        for (name, entries) in sizes.entries() {
            loader.map_max_entries(name, entries);
        }
        let mut ebpf = loader.load(PROGRAMS).map_err(|e| {
            if is_permission_error(&e) {
                DatapathError::NotPermitted
            } else {
                kernel("loading the eBPF object", e)
            }
        })?;
        for name in [XDP_PROGRAM, TC_INGRESS_PROGRAM, TC_EGRESS_PROGRAM] {
            load_program(&mut ebpf, name)?;
        }
        let take = |ebpf: &mut Ebpf, name: &str| {
            ebpf.take_map(name).ok_or_else(|| {
                kernel(
                    format!("map {name}"),
                    anyhow::anyhow!("missing from the object"),
                )
            })
        };
        let rules = RuleSlots::new(
            take(&mut ebpf, "RULE_INDEX")?,
            take(&mut ebpf, "RULE_SLOTS")?,
            sizes.max_faults,
        )
        .map_err(|e| kernel("maps RULE_INDEX and RULE_SLOTS", e))?;
        let faulted_ports = GlobalArray::take(&mut ebpf, FAULTED_PORTS_SECTION)
            .map_err(|e| kernel("FAULTED_PORTS", e))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?)
            .map_err(|e| kernel("map COUNTERS", e))?;
        let buckets = aya::maps::Array::try_from(take(&mut ebpf, "BUCKETS")?)
            .map_err(|e| kernel("map BUCKETS", e))?;
        let ifaces =
            GlobalArray::take(&mut ebpf, IFACES_SECTION).map_err(|e| kernel("IFACES", e))?;
        let ifaces_high = HashMap::try_from(take(&mut ebpf, "IFACES_HIGH")?)
            .map_err(|e| kernel("map IFACES_HIGH", e))?;
        let flows =
            HashMap::try_from(take(&mut ebpf, "FLOWS")?).map_err(|e| kernel("map FLOWS", e))?;
        let seen =
            HashMap::try_from(take(&mut ebpf, "SEEN")?).map_err(|e| kernel("map SEEN", e))?;
        let flows_full = PerCpuArray::try_from(take(&mut ebpf, "FLOWS_FULL")?)
            .map_err(|e| kernel("map FLOWS_FULL", e))?;
        let events =
            RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(|e| kernel("map EVENTS", e))?;
        let log = KernelLog::init(&mut ebpf).map_err(|e| kernel("the programs' log", e))?;
        let events_lost = PerCpuArray::try_from(take(&mut ebpf, "EVENTS_LOST")?)
            .map_err(|e| kernel("map EVENTS_LOST", e))?;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| kernel(what, e))?;
        let partitions = crate::partitions::PartitionMaps::take(&mut ebpf)
            .map_err(|e| kernel("the partition maps", e))?;
        let copies =
            HashMap::try_from(take(&mut ebpf, "COPIES")?).map_err(|e| kernel("map COPIES", e))?;
        let copies = crate::copies::Sweeper::start(copies)
            .map_err(|e| kernel("the thread sweeping COPIES", e))?;
        Ok(Self {
            ebpf: Some(ebpf),
            rules,
            flows,
            seen,
            flows_full,
            sizes: *sizes,
            faulted_ports,
            counters,
            buckets,
            ifaces,
            ifaces_high,
            events: Some(events),
            log,
            events_lost: Some(events_lost),
            cpus,
            held: Vec::new(),
            partitions,
            copies,
        })
    }

    pub fn attachments(&self) -> Vec<Attachment> {
        self.held.iter().map(|h| h.attachment.clone()).collect()
    }

    /// Attaches XDP and TC ingress and egress to `iface`.
    pub fn attach(&mut self, iface: &str) -> Result<Attachment, DatapathError> {
        let ifindex = ifindex(iface)?;
        let (lock, lock_path) = lock_interface(iface, ifindex)?;
        let ebpf = self.ebpf.as_mut().expect("programs are loaded");

        let xdp: &mut Xdp = program(ebpf, XDP_PROGRAM)?;
        // On a loopback TC carries every action (rules::Hook::carries in fault-ebpf), and
        // generic XDP there would only cost throughput (it linearizes 64 KiB packets).
        let l3 = has_no_link_header(iface);
        let xdp_mode = if is_loopback(iface) {
            "none"
        } else if l3 {
            // A tun device in TUN mode runs a native XDP program on no packet at all (only
            // TAP mode builds XDP buffers); generic XDP sees each packet from its IP header.
            match xdp.attach_to_if_index(ifindex, XdpMode::Skb) {
                Ok(_) => "generic",
                Err(e) if is_busy(&e) => return Err(DatapathError::XdpBusy(iface.into())),
                Err(e) => return Err(kernel(format!("attaching XDP to {iface}"), e)),
            }
        } else {
            match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(_) => "driver",
                Err(e) if is_busy(&e) => return Err(DatapathError::XdpBusy(iface.into())),
                Err(_) => match xdp.attach_to_if_index(ifindex, XdpMode::Skb) {
                    Ok(_) => "generic",
                    Err(e) if is_busy(&e) => return Err(DatapathError::XdpBusy(iface.into())),
                    Err(e) => return Err(kernel(format!("attaching XDP to {iface}"), e)),
                },
            }
        };

        let has_tcx = KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0));
        let added_clsact = !has_tcx && add_clsact(iface, ifindex)?;
        // Filters attached through netlink outlive a faultd killed by SIGKILL and would go on
        // acting with its faults beside ours. We hold the interface's lock: no running faultd
        // owns them.
        remove_stale_filters(iface, ifindex)?;
        for (name, attach_type) in [
            (TC_INGRESS_PROGRAM, TcAttachType::Ingress),
            (TC_EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            let prog: &mut SchedClassifier = program(ebpf, name)?;
            prog.attach(iface, attach_type)
                .map_err(|e| kernel(format!("attaching {name} to {iface}"), e))?;
        }
        let tc_mode = if has_tcx { "tcx" } else { "netlink" };

        // On loopback a packet crosses egress and then ingress; the programs act on each
        // packet at one of the two (fault-ebpf rules::Hook::carries).
        let mut role = if is_loopback(iface) {
            ROLE_EGRESS | ROLE_INGRESS | ROLE_LOOPBACK
        } else {
            ROLE_EGRESS | ROLE_INGRESS
        };
        if l3 {
            role |= ROLE_L3;
        }
        self.set_role(ifindex, role)?;
        let attachment = Attachment {
            iface: iface.into(),
            ifindex,
            xdp_mode,
            tc_mode,
            loopback: is_loopback(iface),
        };
        info!(iface, xdp_mode, tc_mode, "attached");
        self.held.push(Held {
            attachment: attachment.clone(),
            added_clsact,
            _lock: lock,
            lock_path,
        });
        Ok(attachment)
    }

    /// Tells the programs which hooks act on interface `ifindex` (`ROLE_*` bits).
    pub fn set_role(&mut self, ifindex: u32, role: u32) -> Result<(), DatapathError> {
        if ifindex < LOW_IFINDEXES {
            self.ifaces
                .set(ifindex as usize, role)
                .map_err(|e| kernel("IFACES", e))
        } else {
            self.ifaces_high
                .insert(ifindex, role, 0)
                .map_err(|e| kernel("writing map IFACES_HIGH", e))
        }
    }

    /// The `ROLE_*` bits the programs have for interface `ifindex`, if any.
    pub fn role(&self, ifindex: u32) -> Option<u32> {
        if ifindex < LOW_IFINDEXES {
            self.ifaces.get(ifindex as usize).filter(|&role| role != 0)
        } else {
            self.ifaces_high.get(&ifindex, 0).ok()
        }
    }

    /// The ring buffer the programs write events to (once; the reader owns it).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The programs' log: its level switch ([`KernelLog::switch`]) and the reader of its
    /// records ([`KernelLog::take_reader`]).
    pub fn ebpf_log(&mut self) -> &mut KernelLog {
        &mut self.log
    }

    /// The per-CPU count of events the programs lost to a full ring (once; the reader owns it).
    pub fn take_event_losses(&mut self) -> Option<PerCpuArray<MapData, u64>> {
        self.events_lost.take()
    }

    /// The limits' flow table: its size, how many flows it holds, how often it was full.
    pub fn flow_table(&self) -> Result<FlowTable, DatapathError> {
        let full = self
            .flows_full
            .get(&0, 0)
            .map_err(|e| kernel("reading map FLOWS_FULL", e))?
            .iter()
            .sum();
        Ok(FlowTable {
            max_entries: self.sizes.max_flows,
            entries: self.flows.keys().filter(Result::is_ok).count(),
            full,
        })
    }

    /// Every map of the programs: name, type, size and the kernel memory it takes now.
    pub fn maps(&self) -> Vec<MapUsage> {
        let ebpf = self.ebpf.as_ref().expect("programs are loaded");
        let mut ids: Vec<u32> = ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok()?.map_ids().ok().flatten())
            .flatten()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut maps: Vec<MapUsage> = ids
            .into_iter()
            .filter_map(|id| map_usage(id).ok())
            .collect();
        maps.sort_by(|a, b| a.name.cmp(&b.name));
        maps
    }

    /// The duplicate fault's copies sent and not seen come by yet (see [`crate::copies`]).
    pub fn copies(&self) -> &crate::copies::Sweeper {
        &self.copies
    }

    /// The loaded programs, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        self.ebpf.as_mut().expect("programs are loaded")
    }
}

/// What the kernel says of map `id`; its memory from `memlock` in the fdinfo of an fd on it.
fn map_usage(id: u32) -> anyhow::Result<MapUsage> {
    let info = MapInfo::from_id(id)?;
    let fd = info.fd()?;
    let fdinfo = fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd()))?;
    let field = |key: &str| {
        fdinfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
    };
    let kind = match info.map_type() {
        Ok(t) => format!("{t:?}"),
        Err(_) => format!("type {}", field("map_type:").unwrap_or(0)),
    };
    Ok(MapUsage {
        name: info.name_as_str().unwrap_or("?").to_string(),
        kind: map_kind_name(&kind),
        max_entries: info.max_entries(),
        bytes: field("memlock:").unwrap_or(0),
    })
}

/// aya's `MapType` names (`LruHash`, `PerCpuArray`) as the kernel's (`lru_hash`,
/// `percpu_array`).
fn map_kind_name(debug: &str) -> String {
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out.replace("per_cpu", "percpu")
        .replace("ring_buf", "ringbuf")
}

impl Datapath {
    /// Sets or clears the key's bit in FAULTED_PORTS, and its block's summary bit (set with
    /// the first faulted port of the block, cleared with the last). faultd is the only
    /// writer, so it keeps the words it wrote and writes only those that change.
    fn mark_faulted(&mut self, key: PortKey, faulted: bool) -> Result<(), FaultError> {
        let Some(bits) = faulted_port_bits(key.protocol, key.port) else {
            return Ok(());
        };
        let word = |w: u32| self.faulted_ports.get(w as usize).unwrap_or(0);
        let fine = word(bits.word);
        let fine = if faulted {
            fine | bits.mask
        } else {
            fine & !bits.mask
        };
        // The block's 16 fine words.
        let first = (bits.word & !15) as usize;
        let block_faulted = (first..first + 16)
            .any(|w| if w == bits.word as usize { fine } else { word(w as u32) } != 0);
        let summary = word(bits.summary_word);
        let summary = if block_faulted {
            summary | bits.summary_mask
        } else {
            summary & !bits.summary_mask
        };
        // Fine bit first: a packet that finds the summary bit finds the port's bit too.
        self.write_faulted_word(bits.word, fine)?;
        self.write_faulted_word(bits.summary_word, summary)
    }

    /// Writes one word of FAULTED_PORTS. A packet that reads the words as they are written
    /// sees this word's bits old or new, each: the bit being changed, a moment early or late.
    fn write_faulted_word(&mut self, word: u32, value: u64) -> Result<(), FaultError> {
        self.faulted_ports
            .set(word as usize, value)
            .map_err(|e| FaultError::Datapath(e.to_string()))
    }
}

impl RuleSink for Datapath {
    /// The port's bit in FAULTED_PORTS is set before its rule is written and cleared after
    /// its rule is removed: a rule in force is never hidden from the programs by its bit.
    fn write_rule(&mut self, key: PortKey, rule: Option<&PortRule>) -> Result<(), FaultError> {
        match rule {
            Some(rule) => {
                self.mark_faulted(key, true)?;
                self.rules.write(key, Some(rule))
            }
            None => {
                self.rules.write(key, None)?;
                self.mark_faulted(key, false)
            }
        }
    }

    fn reset_counters(&mut self, counter: u32) -> Result<(), FaultError> {
        let zeros = PerCpuValues::try_from(vec![FaultCounters::default(); self.cpus])
            .map_err(|e| FaultError::Datapath(format!("counters: {e}")))?;
        self.counters
            .set(counter, zeros, 0)
            .map_err(|e| FaultError::Datapath(format!("counters: {e}")))?;
        // A rate fault reusing the slot starts with a full bucket, not its predecessor's.
        self.buckets
            .set(counter, 0, 0)
            .map_err(|e| FaultError::Datapath(format!("rate state: {e}")))
    }

    fn wait_for_readers(&mut self) -> Result<(), FaultError> {
        self.rules.wait_for_readers()
    }

    /// The faults' rules have left the index: after a grace period no packet is inside
    /// their work any more. Only then are their flows deleted: a packet in `limit()` holds
    /// a pointer to its flow's element, and 6.1's hash maps hand a deleted element to the
    /// next insert at once, so it could set `cut` on another flow (issue #23, defect 7). No
    /// wait when the faults left no state. Left over on an error: ids are never reused, so
    /// it is never read again, only takes room.
    fn forget_flows(&mut self, fault_ids: &[u64]) {
        let flows = doomed(&self.flows, fault_ids);
        let seen = doomed(&self.seen, fault_ids);
        if flows.is_empty() && seen.is_empty() {
            return;
        }
        if let Err(e) = self.rules.wait_for_readers() {
            warn!(error = %e, "could not delete the per-flow state of removed faults");
            return;
        }
        if let Err(e) = forget(&mut self.flows, flows) {
            warn!(error = %e, "could not delete the per-flow state of removed faults");
        }
        if let Err(e) = forget(&mut self.seen, seen) {
            warn!(error = %e, "could not delete the first hits of removed faults");
        }
    }

    fn flow_stats(&self) -> Option<FlowTable> {
        self.flow_table()
            .inspect_err(|e| warn!(error = %e, "could not read the flow table"))
            .ok()
    }

    fn map_usage(&self) -> Vec<MapUsage> {
        self.maps()
    }

    fn write_partitions(
        &mut self,
        compiled: &crate::partitions::CompiledPartitions,
    ) -> Result<(), FaultError> {
        // The gate of the pass-through test opens before a partition starts acting and
        // closes after the last one stopped: no packet a partition cuts passes untouched.
        let in_force = compiled.state.active != 0;
        if in_force {
            self.write_faulted_word(PARTITIONS_GATE_WORD, 1)?;
        }
        self.partitions.write(compiled)?;
        if !in_force {
            self.write_faulted_word(PARTITIONS_GATE_WORD, 0)?;
        }
        Ok(())
    }

    fn read_counters(&self, counter: u32) -> Result<FaultCounters, FaultError> {
        let per_cpu = self
            .counters
            .get(&counter, 0)
            .map_err(|e| FaultError::Datapath(format!("counters: {e}")))?;
        Ok(per_cpu
            .iter()
            .fold(FaultCounters::default(), |sum, c| FaultCounters {
                matched_packets: sum.matched_packets + c.matched_packets,
                matched_bytes: sum.matched_bytes + c.matched_bytes,
                acted_packets: sum.acted_packets + c.acted_packets,
                acted_bytes: sum.acted_bytes + c.acted_bytes,
            }))
    }
}

/// Deletes the entries of `map` whose key belongs to one of `fault_ids`. The keys are read
/// first: deleting while walking would start the walk over.
/// The keys of `map` that belong to these faults.
fn doomed<V: aya::Pod>(map: &HashMap<MapData, FlowKey, V>, fault_ids: &[u64]) -> Vec<FlowKey> {
    let ids: std::collections::HashSet<u64> = fault_ids.iter().copied().collect();
    map.keys()
        .filter_map(Result::ok)
        .filter(|k| ids.contains(&k.fault_id))
        .collect()
}

fn forget<V: aya::Pod>(
    map: &mut HashMap<MapData, FlowKey, V>,
    doomed: Vec<FlowKey>,
) -> Result<(), aya::maps::MapError> {
    for key in doomed {
        match map.remove(&key) {
            // Replaced by a SYN and gone meanwhile, or evicted: what was wanted.
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // Dropping the object closes every link: the programs leave the interfaces.
        drop(self.ebpf.take());
        for held in &self.held {
            if held.added_clsact {
                remove_clsact(&held.attachment.iface, held.attachment.ifindex);
                let _ = fs::remove_file(clsact_note(held.attachment.ifindex));
            }
            let _ = fs::remove_file(&held.lock_path);
            info!(iface = held.attachment.iface, "detached");
        }
    }
}

fn load_program(ebpf: &mut Ebpf, name: &str) -> Result<(), DatapathError> {
    let prog = ebpf.program_mut(name).ok_or_else(|| {
        kernel(
            format!("program {name}"),
            anyhow::anyhow!("missing from the object"),
        )
    })?;
    let started = std::time::Instant::now();
    let loaded = match prog {
        aya::programs::Program::Xdp(p) => p.load(),
        aya::programs::Program::SchedClassifier(p) => p.load(),
        _ => {
            return Err(kernel(
                format!("program {name}"),
                anyhow::anyhow!("unexpected type"),
            ));
        }
    };
    loaded.map_err(|e| {
        if is_permission_error(&e) {
            DatapathError::NotPermitted
        } else {
            kernel(format!("loading program {name}"), e)
        }
    })?;
    // The verifier's work grows with the programs' paths; worth seeing when it creeps up.
    let verified = prog
        .info()
        .ok()
        .and_then(|i| i.verified_instruction_count());
    tracing::debug!(
        program = name,
        verified_insns = verified,
        load_ms = started.elapsed().as_millis() as u64,
        "loaded"
    );
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or_else(|| {
        kernel(
            format!("program {name}"),
            anyhow::anyhow!("missing from the object"),
        )
    })?;
    prog.try_into()
        .map_err(|e| kernel(format!("program {name}"), e))
}

fn ifindex(iface: &str) -> Result<u32, DatapathError> {
    let name =
        std::ffi::CString::new(iface).map_err(|_| DatapathError::NoSuchInterface(iface.into()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(DatapathError::NoSuchInterface(iface.into())),
        n => Ok(n),
    }
}

fn is_loopback(iface: &str) -> bool {
    link_type(iface) == Some(772)
}

/// Devices whose packets start at the IP header (the programs parse them from there):
/// ARPHRD_NONE (tun in TUN mode, WireGuard), RAWIP, PPP and IP-in-IP/SIT/GRE tunnels.
fn has_no_link_header(iface: &str) -> bool {
    matches!(
        link_type(iface),
        Some(65534 | 519 | 512 | 768 | 769 | 776 | 778)
    )
}

/// The interface's ARPHRD_* hardware type, asked of the kernel (SIOCGIFHWADDR) in the
/// caller's network namespace; /sys/class/net shows the namespace that mounted it.
fn link_type(iface: &str) -> Option<u32> {
    let name = iface.as_bytes();
    // SAFETY: a zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    // SAFETY: plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR fills the ifreq we pass.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR as _, &mut req) };
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    // SAFETY: SIOCGIFHWADDR wrote the hardware address member.
    (rc == 0).then(|| unsafe { req.ifr_ifru.ifru_hwaddr.sa_family } as u32)
}

/// Takes an exclusive, non-blocking flock that the kernel releases when faultd exits or dies.
fn lock_interface(iface: &str, ifindex: u32) -> Result<(File, String), DatapathError> {
    fs::create_dir_all(LOCK_DIR).map_err(|e| kernel(format!("creating {LOCK_DIR}"), e))?;
    // Interfaces are per network namespace: name the lock after both.
    let netns = fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    let path = format!("{LOCK_DIR}/netns-{netns}-ifindex-{ifindex}.lock");
    match lock_file(Path::new(&path)) {
        Ok(file) => Ok((file, path)),
        Err(LockError::Held { pid }) => Err(DatapathError::Held {
            iface: iface.into(),
            pid,
        }),
        Err(LockError::Io { what, source }) => Err(kernel(what, source)),
    }
}

#[derive(Debug)]
enum LockError {
    /// Another process holds the lock; its pid as it wrote it (maybe not yet).
    Held {
        pid: String,
    },
    Io {
        what: String,
        source: io::Error,
    },
}

/// Locks the file at `path` (creating it) and writes our pid into it.
///
/// A holder unlinks its lock file on exit while it still holds the lock. A starter that
/// opened the file just before that and locks it just after holds an inode that nobody
/// else can find any more, while the next starter creates and locks a fresh file: two
/// holders. So a lock counts only while the path still names the locked inode; otherwise
/// the starter tries again on the path's new file.
fn lock_file(path: &Path) -> Result<File, LockError> {
    let io_error = |what: &str, source| LockError::Io {
        what: format!("{what} {}", path.display()),
        source,
    };
    // Each retry means that a holder unlinked the file in between: a few suffice.
    for _ in 0..64 {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error("opening", e))?;
        wait_at_test_gate();
        if let Some(mut file) = lock_opened(file, path)? {
            file.set_len(0).ok();
            write!(file, "{}", std::process::id()).ok();
            return Ok(file);
        }
    }
    Err(io_error(
        "locking",
        io::Error::other("the lock file was replaced 64 times in a row"),
    ))
}

/// Test hook: with `FAULTD_TEST_LOCK_GATE=PATH`, a starter waits between opening the lock
/// file and locking it until PATH exists. That is the window in which a holder's exit can
/// replace the file; held open, a test (daemon.rs) races through it every time instead of
/// by luck.
fn wait_at_test_gate() {
    let Some(gate) = std::env::var_os("FAULTD_TEST_LOCK_GATE") else {
        return;
    };
    let gate = Path::new(&gate);
    info!(gate = %gate.display(), "lock file opened; waiting for the test's gate");
    while !gate.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Locks `file`, opened at `path`: `Ok(None)` when the lock was taken on a file that `path`
/// no longer names (its holder unlinked it on exit), which is no lock on the interface.
fn lock_opened(file: File, path: &Path) -> Result<Option<File>, LockError> {
    // SAFETY: a valid open file descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::WouldBlock {
            let pid = fs::read_to_string(path)
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(LockError::Held { pid });
        }
        return Err(LockError::Io {
            what: format!("locking {}", path.display()),
            source: err,
        });
    }
    let locked = file.metadata().map_err(|e| LockError::Io {
        what: format!("reading {}", path.display()),
        source: e,
    })?;
    let still_there =
        fs::metadata(path).is_ok_and(|now| now.dev() == locked.dev() && now.ino() == locked.ino());
    Ok(still_there.then_some(file))
}

/// Where faultd notes that it added the clsact qdisc of an interface, so that the faultd
/// after one killed by SIGKILL knows the clsact it finds is faultd's to remove.
fn clsact_note(ifindex: u32) -> String {
    let netns = fs::metadata("/proc/thread-self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    format!("{LOCK_DIR}/netns-{netns}-ifindex-{ifindex}.clsact")
}

/// Adds a clsact qdisc unless one is there; `true` when it is faultd's to remove: added
/// now, or by a faultd that was killed before it could remove it.
fn add_clsact(iface: &str, ifindex: u32) -> Result<bool, DatapathError> {
    let added = Rtnl::open().and_then(|mut rtnl| {
        rtnl.create_qdisc(
            ifindex,
            netlink::CLSACT_PARENT,
            netlink::CLSACT_HANDLE,
            "clsact",
            None,
        )
    });
    match added {
        Ok(_) => {
            let _ = fs::write(clsact_note(ifindex), b"");
            Ok(true)
        }
        // Already there: a killed faultd's (noted), or someone else's: used, and left.
        Err(e) if e.is(libc::EEXIST) => Ok(fs::metadata(clsact_note(ifindex)).is_ok()),
        Err(e) => Err(kernel(format!("adding clsact to {iface}"), e)),
    }
}

/// Whether a TC filter runs one of faultd's programs: `bpf` filters carry the name of
/// their program (`TCA_BPF_NAME`), which aya sets to the program's.
fn is_faultds(filter: &netlink::Filter) -> bool {
    filter.kind == "bpf"
        && filter
            .bpf_name
            .as_deref()
            .is_some_and(|n| n == TC_INGRESS_PROGRAM || n == TC_EGRESS_PROGRAM)
}

/// Deletes the TC filters of faultd's programs from the interface's clsact hooks.
fn remove_stale_filters(iface: &str, ifindex: u32) -> Result<(), DatapathError> {
    let what = || format!("removing the TC filters an earlier faultd left on {iface}");
    let mut rtnl = Rtnl::open().map_err(|e| kernel(what(), e))?;
    let mut removed = 0;
    for parent in [netlink::CLSACT_INGRESS, netlink::CLSACT_EGRESS] {
        let filters = rtnl
            .filters(ifindex, parent)
            .map_err(|e| kernel(what(), e))?;
        // A dump also lists each priority's head (handle 0), which has no program.
        for filter in filters.iter().filter(|f| f.handle != 0 && is_faultds(f)) {
            match rtnl.delete_filter(ifindex, filter) {
                Ok(()) => removed += 1,
                // Gone meanwhile: what was wanted.
                Err(e) if e.is(libc::ENOENT) => {}
                Err(e) => return Err(kernel(what(), e)),
            }
        }
    }
    if removed > 0 {
        warn!(
            iface,
            removed, "removed the TC filters of a faultd that was killed before it could"
        );
    }
    Ok(())
}

/// Removes the clsact qdisc faultd added, unless someone else's filters now hang on it.
fn remove_clsact(iface: &str, ifindex: u32) {
    let removed = Rtnl::open().and_then(|mut rtnl| {
        let mut others = Vec::new();
        for parent in [netlink::CLSACT_INGRESS, netlink::CLSACT_EGRESS] {
            others.extend(
                rtnl.filters(ifindex, parent)?
                    .into_iter()
                    .filter(|f| f.handle != 0 && !is_faultds(f)),
            );
        }
        if !others.is_empty() {
            warn!(
                iface,
                filters = others.len(),
                "leaving the clsact qdisc faultd added: other filters use it now"
            );
            return Ok(());
        }
        rtnl.delete_qdisc(
            ifindex,
            netlink::CLSACT_PARENT,
            netlink::CLSACT_HANDLE,
            "clsact",
        )
    });
    if let Err(e) = removed {
        warn!(iface, error = %e, "could not remove the clsact qdisc faultd added");
    }
}

type DynError = dyn std::error::Error + 'static;

fn has_os_error(e: &DynError, codes: &[i32]) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| {
        e.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            .is_some_and(|c| codes.contains(&c))
    })
}

fn is_permission_error(e: &DynError) -> bool {
    // Only EPERM: the verifier answers EACCES when it rejects a program.
    has_os_error(e, &[libc::EPERM])
}

fn is_busy(e: &DynError) -> bool {
    has_os_error(e, &[libc::EBUSY, libc::EEXIST])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_types_read_as_the_kernel_names_them() {
        for (aya, kernel) in [
            ("Hash", "hash"),
            ("LruHash", "lru_hash"),
            ("PerCpuArray", "percpu_array"),
            ("RingBuf", "ringbuf"),
            ("Array", "array"),
        ] {
            assert_eq!(map_kind_name(aya), kernel);
        }
    }

    #[test]
    fn map_sizes_follow_the_limits() {
        let limits = Limits {
            max_faults: 100,
            max_flows: 4096,
            ..Limits::default()
        };
        let sizes = MapSizes::for_limits(&limits);
        assert_eq!(
            sizes.entries(),
            [
                ("RULE_SLOTS", 264),
                ("COUNTERS", 100),
                ("BUCKETS", 100),
                ("FLOWS", 4096),
                ("SEEN", 4096)
            ]
        );
    }

    #[test]
    fn a_lock_file_held_by_a_live_holder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("if.lock");
        let _held = lock_file(&path).unwrap();
        match lock_file(&path) {
            Err(LockError::Held { pid }) => assert_eq!(pid, std::process::id().to_string()),
            other => panic!("a second lock was not refused: {other:?}"),
        }
    }

    /// The race: B opens the lock file, A (the holder) unlinks it and exits, B locks what it
    /// opened and C creates and locks a new file. Only one of B and C may hold the interface.
    #[test]
    fn a_lock_on_an_unlinked_lock_file_does_not_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("if.lock");
        let a = lock_file(&path).unwrap();
        let opened_by_b = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // A exits the way Datapath::drop does: unlink while holding, then release.
        fs::remove_file(&path).unwrap();
        drop(a);
        let c = lock_file(&path).unwrap();
        assert!(
            lock_opened(opened_by_b, &path).unwrap().is_none(),
            "B's lock on the unlinked file counted: B and C both hold the interface"
        );
        assert!(matches!(lock_file(&path), Err(LockError::Held { .. })));
        drop(c);
        // Released: the next starter gets it, on the same path.
        lock_file(&path).unwrap();
    }
}
