//! Types shared by faultd's eBPF programs and its daemon.
//!
//! Everything here crosses the user/kernel boundary through BPF maps, so every struct is
//! `#[repr(C)]` with explicit padding: the layout the daemon writes is the layout the
//! programs read.
#![no_std]

/// How many faults may act on one (protocol, port) key at once. The programs walk these
/// slots per packet, so the per-packet cost is bounded by this, never by the total number
/// of faults installed.
pub const MAX_FAULTS_PER_PORT: usize = 8;

/// The most faults one faultd may hold (`--max-faults`); the daemon sizes the per-fault
/// maps (counters, rate state) from its `--max-faults` when it loads the programs.
pub const MAX_FAULTS: u32 = 131_072;

/// Capacity of the rule slots (`RULE_SLOTS`) as compiled: a slot holds the rule of one
/// (protocol, port) with faults on it, or one replaced a moment ago that a packet may still
/// be reading. The daemon sizes it at load from `--max-faults` (a fault on `any` takes two
/// keys; as many slots again wait out readers).
pub const MAX_PORT_RULES: u32 = 131_072;

/// Entries of the rule index (`RULE_INDEX`): one per (protocol, port), TCP's 65 536 ports
/// first, then UDP's. Each holds the number of the rule slot in force for the port, 0 for
/// none. The daemon writes an entry with one aligned 32-bit store through a shared mapping
/// (the array is `BPF_F_MMAPABLE`), so a packet reads the old slot number or the new one,
/// never a mix of their bytes (a map update through the syscall is a byte copy).
pub const RULE_INDEX_ENTRIES: u32 = 2 * 65_536;

/// The entry of (protocol, port) in the rule index; `None` for a protocol that never has
/// faults.
#[inline(always)]
pub const fn rule_index(protocol: u8, port: u16) -> Option<u32> {
    match protocol {
        PROTO_TCP => Some(port as u32),
        PROTO_UDP => Some(65_536 + port as u32),
        _ => None,
    }
}

/// IP protocol numbers, as they appear in the IPv4 header and IPv6 next-header field.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Actions a slot can take.
/// Packets vanish.
pub const ACTION_DROP: u8 = 1;
/// Each packet is dropped and answered with a RST to its sender.
pub const ACTION_RESET: u8 = 2;
/// SYNs (without ACK) are answered with RST|ACK: connect() fails with ECONNREFUSED.
pub const ACTION_REFUSE_RST: u8 = 3;
/// SYNs (without ACK) vanish: connect() times out. For UDP: datagrams to the port vanish.
pub const ACTION_REFUSE_DROP: u8 = 4;
/// The flow is cut (`then`) once its payload bytes exceed `param`.
pub const ACTION_LIMIT_BYTES: u8 = 5;
/// The flow is cut (`then`) once `param` ns have passed since its first packet.
pub const ACTION_LIMIT_AGE: u8 = 6;
/// Nothing happens to packets; each SYN to the port is reported as an event.
pub const ACTION_RECORD: u8 = 7;
/// The packet leaves `param` ns (± `aux` µs of jitter) later: its `skb->tstamp` is set to
/// an Earliest Departure Time that the `fq` qdisc honours. TC egress only.
pub const ACTION_DELAY: u8 = 8;
/// The fault's traffic is held to `param` bytes per second, with a burst of `aux` bytes.
/// `then` says how: `RATE_POLICE` drops what is over, `RATE_PACE` delays it (EDT + fq).
pub const ACTION_RATE: u8 = 9;
/// One payload byte of the packet is flipped; the L4 checksum is fixed up to match, so the
/// receiving application reads the corrupted data.
pub const ACTION_CORRUPT: u8 = 10;
/// The packet is sent twice.
pub const ACTION_DUPLICATE: u8 = 11;
/// The TCP window the packet advertises is rewritten to 0: its sender looks like a peer
/// that stopped reading. SYNs and RSTs are left alone so connections still open and close.
pub const ACTION_STALL: u8 = 12;
/// The stream is cut into segments of at most `aux` bytes: the MSS option of SYN and
/// SYN-ACK is lowered to `aux` (never raised), their window scale option is turned into
/// NOPs, and the window every packet advertises is held to `aux`, so that one segment at
/// most is in flight. `param` ns, when not 0, space the data segments at TC egress (EDT,
/// honoured by `fq`). TCP only; new connections only (the MSS is agreed in the handshake).
pub const ACTION_SLICE: u8 = 13;

/// The lowest MSS a Linux sender uses whatever its peer says (`TCP_MIN_SND_MSS`, the floor
/// of `net.ipv4.tcp_min_snd_mss`, since 5.2): a slice below it could not be honoured.
pub const MIN_SLICE_BYTES: u32 = 48;
/// The highest slice: an unscaled TCP window (the slice turns window scaling off).
pub const MAX_SLICE_BYTES: u32 = 65_535;

/// Corrupt's per-byte density (`param` of a corrupt slot, 0 = one byte per packet): the
/// number of bytes skipped between two changed bytes is drawn from the geometric law,
/// `floor(-log2(u) * param / 2^32)` with `u` uniform in (0, 1] and `-log2(u)` in Q16, so
/// `param` is `2^16 / -log2(1 - p)` in Q16. The work per packet is the number of bytes
/// changed, held to `MAX_CORRUPT_BYTES`.
pub const CORRUPT_SCALE_BITS: u32 = 32;
/// `then` of a corrupt slot: `CORRUPT_DENSITY` changes each byte with the density in
/// `param` (and `aux` holds its threshold, as `threshold` holds the packets'); 0 changes one
/// byte per packet.
pub const CORRUPT_DENSITY: u8 = 1;
/// The most bytes a density changes in one packet (a 64 KiB packet at 1 %: about 655).
pub const MAX_CORRUPT_BYTES: u32 = 8_192;

/// How a rate slot holds traffic to its rate.
pub const RATE_POLICE: u8 = 0;
pub const RATE_PACE: u8 = 1;

/// Furthest into the future a delay may send a packet: the `fq` qdisc's default horizon,
/// beyond which it drops packets instead of holding them.
pub const DELAY_HORIZON_NS: u64 = 10_000_000_000;

/// How a limit cuts a flow.
pub const THEN_DROP: u8 = 0;
pub const THEN_RESET: u8 = 1;

/// Kinds of events in the `EVENTS` ring buffer.
/// A fault matched a flow for the first time.
pub const EVENT_FIRST_HIT: u32 = 1;
/// A forged RST was sent to a packet's sender.
pub const EVENT_RST_SENT: u32 = 2;
/// A SYN was refused (answered with RST or dropped).
pub const EVENT_SYN_REFUSED: u32 = 3;
/// A SYN to a recorded port was seen.
pub const EVENT_SYN: u32 = 4;
/// A limit cut a flow.
pub const EVENT_FLOW_CUT: u32 = 5;
/// A limit met a new flow while its flow table was full: the flow passes untracked. Sent
/// for the 1st, 2nd, 4th, 8th… such packet on each CPU; the `FLOWS_FULL` counter has them
/// all. 7, not 6: the API numbers kinds as these, and its 6 is the daemon's GAP.
pub const EVENT_FLOW_UNTRACKED: u32 = 7;

/// Capacity of the limits' per-flow state map (`FLOWS`) and of the first-hit map (`SEEN`)
/// as compiled, and the default of `--max-flows`; the daemon sizes both at load.
pub const MAX_FLOWS: u32 = 65_536;
/// Copies a duplicate fault has sent and not yet seen come by (`COPIES`, keyed by the
/// token the copy carries in `skb->cb`; see fault-ebpf/src/copies.rs). A copy sent out
/// comes by inside the send; one sent in waits in a receive backlog, at most
/// `netdev_max_backlog` (1 000 by default) per CPU. When the map is full, no copy is sent.
pub const MAX_PENDING_COPIES: u32 = 16_384;
/// A pending copy older than this was lost on its way (dropped before faultd's program saw
/// it); faultd deletes its entry (`Datapath::sweep_copies`).
pub const PENDING_COPY_TTL_NS: u64 = 2_000_000_000;

/// A copy sent and not yet seen (`COPIES` value): the `cb` words of the original that the
/// copy's token took the place of, given back to the copy when it is recognised, and when
/// it was sent (bpf_ktime_get_ns: CLOCK_MONOTONIC).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingCopy {
    pub cb: [u32; 2],
    pub sent_ns: u64,
}

/// Size of the event ring buffer in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 1 << 20;

// The programs' log records (aya-log, see fault-ebpf/src/log.rs). The kernel writes only
// numbers, at fixed sizes: a string whose length depends on the packet multiplies the paths
// the verifier walks through aya-log's byte-by-byte copy past its million-instruction limit.
// faultd turns them into words (fault-daemon/src/ebpf_log.rs). A record is a keyword and
// numbers separated by spaces:
//   `verdict PACKED FAULT_ID SRC_PORT DST_PORT`, PACKED = hook << 24 | action << 16 |
//     outcome << 8 | IP protocol;
//   `parse HOOK WHY`, WHY = reason | detail << 8 (LOG_PARSE_*);
//   `rst-failed HOOK FAULT_ID`.
/// Hooks, as `rules::Hook` numbers them.
pub const LOG_HOOK_XDP: u32 = 0;
pub const LOG_HOOK_TC_INGRESS: u32 = 1;
pub const LOG_HOOK_TC_EGRESS: u32 = 2;
/// What a fault's slot did with a packet on its port.
pub const LOG_SLOT_SKIPPED_DIRECTION: u32 = 1;
pub const LOG_SLOT_SKIPPED_HOOK: u32 = 2;
pub const LOG_SLOT_SKIPPED_PEER: u32 = 3;
pub const LOG_SLOT_SKIPPED_KIND: u32 = 4;
pub const LOG_SLOT_UNTOUCHED: u32 = 5;
pub const LOG_SLOT_ALTERED: u32 = 6;
pub const LOG_SLOT_DROPPED: u32 = 7;
pub const LOG_SLOT_RESET: u32 = 8;
/// Why the parser gave up on a frame.
pub const LOG_PARSE_NOT_IP: u32 = 1;
pub const LOG_PARSE_TRUNCATED: u32 = 2;
pub const LOG_PARSE_IHL: u32 = 3;
pub const LOG_PARSE_FRAGMENT: u32 = 4;
pub const LOG_PARSE_NOT_TCP_UDP: u32 = 5;
/// More IPv6 extension headers than the programs follow (detail: the next header type).
pub const LOG_PARSE_EXT_CHAIN: u32 = 6;
/// A TCP data offset short of the 20-byte header (detail: the length it gives, in bytes).
pub const LOG_PARSE_TCP_OFFSET: u32 = 7;

/// Directions, relative to the faulted port: bit set = the slot applies.
/// `TO_PORT`: the packet's destination port is the faulted port (client → server).
pub const DIR_TO_PORT: u8 = 1;
/// `FROM_PORT`: the packet's source port is the faulted port (server → client).
pub const DIR_FROM_PORT: u8 = 2;

/// Address families for a slot's peer filter.
pub const PEER_ANY: u8 = 0;
pub const PEER_V4: u8 = 4;
pub const PEER_V6: u8 = 6;

/// Interfaces with an ifindex below this have their role in the `IFACES` array, indexed by
/// ifindex: an array read costs a packet next to nothing, where a hash lookup cost about as
/// much as running the program at all. Higher ifindexes (hosts with thousands of
/// interfaces) are in the `IFACES_HIGH` hash map.
pub const LOW_IFINDEXES: u32 = 4096;

/// Per-interface role bits (value of the `IFACES` maps): which hooks act on the interface;
/// 0 for an interface faultd does not hold.
pub const ROLE_EGRESS: u32 = 1;
pub const ROLE_INGRESS: u32 = 2;
/// The interface is a loopback: what leaves it comes straight back in, so each action acts
/// at one of the two only — drops at TC ingress, the rest at TC egress, nothing at XDP.
pub const ROLE_LOOPBACK: u32 = 4;
/// The interface has no link-layer header (tun, WireGuard, other ARPHRD_NONE / raw-IP
/// devices): packets start at the IP header, and at TC `skb->protocol` says which IP.
pub const ROLE_L3: u32 = 8;

/// Words (u64) of the faulted-ports bitmap: one bit per (protocol, port), TCP's 65 536
/// bits first, then UDP's (16 KiB), then one summary word per protocol, TCP's then UDP's,
/// with one bit per block of 1 024 ports that holds any faulted port. The programs test a
/// packet's two ports in the summary first (one word, nearly always in cache), then, only
/// when a block is marked, in the fine bits: traffic on ports without faults pays an array
/// read, never a hash lookup. The daemon sets a port's bits before it writes the port's rule
/// and clears them after the rule is gone, so a rule is never hidden from the programs.
/// Last, the partitions' gate ([`PARTITIONS_GATE_WORD`]), in the summaries' cache line.
pub const FAULTED_PORT_WORDS: u32 = 2 * 65_536 / 64 + 3;

/// The faulted-ports word that is non-zero while any address partition is in force: the
/// pass-through test reads it beside the summary words rather than a map of its own. The
/// daemon sets it before a partition starts acting and clears it after the last one stopped.
pub const PARTITIONS_GATE_WORD: u32 = 2 * 65_536 / 64 + 2;

/// Where (protocol, port) lives in the faulted-ports bitmap.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct PortBits {
    /// The fine bit: the word's index and the bit's mask in it.
    pub word: u32,
    pub mask: u64,
    /// The bit of the port's block of 1 024 in its protocol's summary word.
    pub summary_word: u32,
    pub summary_mask: u64,
}

/// The bits of (protocol, port) in the faulted-ports bitmap; `None` for a protocol that never
/// has faults.
#[inline(always)]
pub const fn faulted_port_bits(protocol: u8, port: u16) -> Option<PortBits> {
    let which = match protocol {
        PROTO_TCP => 0,
        PROTO_UDP => 1,
        _ => return None,
    };
    Some(PortBits {
        word: which * 1024 + (port as u32 >> 6),
        mask: 1u64 << (port & 63),
        summary_word: 2048 + which,
        summary_mask: 1u64 << (port >> 10),
    })
}

/// The hooks, as bits of [`hooks_for`]'s answer (and as `rules::Hook` numbers them, shifted).
pub const HOOK_XDP: u8 = 1 << LOG_HOOK_XDP;
pub const HOOK_TC_INGRESS: u8 = 1 << LOG_HOOK_TC_INGRESS;
pub const HOOK_TC_EGRESS: u8 = 1 << LOG_HOOK_TC_EGRESS;

/// Where an action runs: the one table the programs, `faultctl doctor` and the tests read.
/// Each action acts at exactly one hook per direction of travel, so a packet is never acted
/// on (or counted) twice.
///
/// Dropping is cheapest as early as possible: XDP on the way in, TC on the way out.
/// Answering with a RST or rewriting a packet needs the socket buffer: TC both ways. A
/// departure time only means something on the way out, where a qdisc holds packets; a paced
/// rate on other interfaces than lo is policed at XDP on the way in (nothing can hold back
/// what comes in) and paced at TC egress.
///
/// A loopback is different: every packet crosses its egress and then its ingress, so one of
/// the two must act, never both. Rewrites and departure times act at egress (a RST forged
/// there continues into the host). Drops act at TC ingress, after the sender's transmit has
/// succeeded: dropped at egress, the sender's stack would see the local drop and send again
/// at once, which is not how a packet lost on a wire looks (no retransmission timeout, no
/// TCP_USER_TIMEOUT).
#[inline(always)]
pub const fn hooks_for(action: u8, then: u8, loopback: bool) -> u8 {
    let place = match action {
        ACTION_DELAY => Place::Departure,
        ACTION_RATE if then == RATE_PACE && loopback => Place::Departure,
        ACTION_RESET | ACTION_REFUSE_RST | ACTION_CORRUPT | ACTION_DUPLICATE | ACTION_STALL
        | ACTION_SLICE => Place::Rewrite,
        ACTION_LIMIT_BYTES | ACTION_LIMIT_AGE if then == THEN_RESET => Place::Rewrite,
        _ => Place::Drop,
    };
    match (place, loopback) {
        (Place::Drop, true) => HOOK_TC_INGRESS,
        (_, true) | (Place::Departure, false) => HOOK_TC_EGRESS,
        (Place::Rewrite, false) => HOOK_TC_INGRESS | HOOK_TC_EGRESS,
        (Place::Drop, false) => HOOK_XDP | HOOK_TC_EGRESS,
    }
}

/// Kinds of actions, by where they can act (see [`hooks_for`]).
#[derive(Copy, Clone, PartialEq, Eq)]
enum Place {
    /// Drops (and watches): as early as possible.
    Drop,
    /// Rewrites or answers the packet: needs the socket buffer.
    Rewrite,
    /// Sets a departure time: egress only.
    Departure,
}

/// Key of the rule map.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct PortKey {
    /// Port in host byte order.
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}

impl PortKey {
    pub const fn new(protocol: u8, port: u16) -> Self {
        Self {
            port,
            protocol,
            _pad: 0,
        }
    }
}

/// One compiled fault acting on a port.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FaultSlot {
    /// Index of this fault's counters in the `COUNTERS` array.
    pub counter: u32,
    /// The slot acts on a packet when `bpf_get_prandom_u32() <= threshold`;
    /// `u32::MAX` means always.
    pub threshold: u32,
    pub action: u8,
    /// `DIR_*` bits.
    pub directions: u8,
    /// `PEER_*`: which family `peer_addr` is in, or any peer.
    pub peer_family: u8,
    /// `THEN_*`: how a limit cuts the flow; `RATE_*` for a rate.
    pub then: u8,
    /// Second parameter: jitter in µs for `DELAY`, burst bytes for `RATE`.
    pub aux: u32,
    /// The fault's id: keys per-flow state and events, and is never reused.
    pub fault_id: u64,
    /// Action parameter: bytes for `LIMIT_BYTES`, nanoseconds for `LIMIT_AGE` and `DELAY`,
    /// bytes per second for `RATE`.
    pub param: u64,
    /// Peer address, network byte order, IPv4 in word 0; already masked.
    pub peer_addr: [u32; 4],
    /// Prefix mask matching `peer_addr`.
    pub peer_mask: [u32; 4],
    /// The port at the other end of the flow from the faulted port (a port tuple), host
    /// byte order; 0 for any.
    pub remote_port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// A rule slot's value (`RULE_SLOTS`): the faults acting on one (protocol, port), in the
/// order the daemon compiled them. Written once, before `RULE_INDEX` names it, and never
/// rewritten while a packet may read it: a new rule goes into another slot.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct PortRule {
    pub len: u32,
    pub _pad: u32,
    pub slots: [FaultSlot; MAX_FAULTS_PER_PORT],
}

impl Default for PortRule {
    fn default() -> Self {
        Self {
            len: 0,
            _pad: 0,
            slots: [FaultSlot::default(); MAX_FAULTS_PER_PORT],
        }
    }
}

/// Per-fault counters (one copy per CPU; the daemon sums them).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FaultCounters {
    /// Packets (and their bytes) that matched the fault's target.
    pub matched_packets: u64,
    pub matched_bytes: u64,
    /// Packets the fault acted on (dropped, for `drop`).
    pub acted_packets: u64,
    pub acted_bytes: u64,
}

/// Per-flow state of one fault, keyed from the faulted port's side so that both directions
/// of a flow share it.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct FlowKey {
    pub fault_id: u64,
    pub family: u8,
    pub protocol: u8,
    /// The faulted port, and the port at the other end.
    pub port: u16,
    pub remote_port: u16,
    pub _pad: u16,
    /// Address on the faulted port's side, and the remote address (network byte order).
    pub local_addr: [u32; 4],
    pub remote_addr: [u32; 4],
}

#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct FlowState {
    /// bpf_ktime_get_ns() of the first packet the fault matched on this flow.
    pub first_ns: u64,
    /// Payload bytes seen, both directions.
    pub bytes: u64,
    /// Non-zero once a limit has cut the flow and FLOW_CUT was sent (claimed by
    /// compare-and-swap: once per flow). The verdict itself follows `bytes` or the age,
    /// which only grow, so every later packet is cut too. 64 bits for the atomic
    /// compare-and-swap, as the BPF target's atomics are.
    pub cut: u64,
}

/// One record of the `EVENTS` ring buffer.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Event {
    /// bpf_ktime_get_ns(): CLOCK_MONOTONIC.
    pub ktime_ns: u64,
    pub fault_id: u64,
    /// `EVENT_*`.
    pub kind: u32,
    pub family: u8,
    pub protocol: u8,
    pub _pad: u16,
    /// The packet's ports and addresses, as it travelled.
    pub src_port: u16,
    pub dst_port: u16,
    pub _pad2: u32,
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
}

/// Address-only partitions (`faultctl partition --between A --and B`): how many may be
/// installed at once. Each takes two bits of a 64-bit word: its `between` side at bit 2·i,
/// its `and` side at bit 2·i + 1.
pub const MAX_PARTITIONS: u32 = 32;
/// Distinct prefixes (CIDRs) all partitions together may name, per address family: the
/// capacity of each of the `PARTITION_V4` and `PARTITION_V6` LPM tries.
pub const MAX_PARTITION_PREFIXES: u32 = 1024;
/// Bits of the `between` sides in a partition word (the `and` sides are these shifted by 1).
pub const PARTITION_BETWEEN_BITS: u64 = 0x5555_5555_5555_5555;

/// Entry 0 of the `PARTITION_STATE` array: which partitions act. The programs read it for
/// every packet and stop there while `active` is 0, so partitions cost nothing when none is
/// installed.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PartitionState {
    /// `PARTITION_BETWEEN_BITS` bits of the partitions in force.
    pub active: u64,
    /// The same bits for the partitions that also cut `and` → `between` (not `--one-way`).
    pub two_way: u64,
}

/// One partition in force, at index i of the `PARTITION_SLOTS` array.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PartitionSlot {
    pub fault_id: u64,
    /// Index of the fault's counters in `COUNTERS`.
    pub counter: u32,
    /// As a `FaultSlot`'s: `u32::MAX` always.
    pub threshold: u32,
    /// `ACTION_DROP` or `ACTION_RESET` (TCP answered with a RST, other packets dropped).
    pub action: u8,
    /// Which protocols it cuts: bit 0 TCP, bit 1 UDP.
    pub protocols: u8,
    pub _pad: [u8; 6],
}

/// Words (u64) of the partitions' address filter: one bit per value of an address's low 16
/// bits (IPv4's last two bytes, IPv6's last two), set for every address some partition's
/// prefix holds (all bits for a prefix of /16 or shorter, /112 for IPv6). A packet whose
/// source or destination has its bit clear is in no partition: two array reads, and the
/// tries are not looked up. The daemon sets bits before it adds a prefix to the tries and
/// clears them after the prefix is gone.
pub const PARTITION_FILTER_WORDS: u32 = 65_536 / 64;

/// The word and mask of an address in the partition filter, from the address's last 32-bit
/// word as the packet carries it (network byte order).
#[inline(always)]
pub const fn partition_filter_bit(last_word_be: u32) -> (u32, u64) {
    let low = u32::from_be(last_word_be) & 0xffff;
    (low >> 6, 1u64 << (low & 63))
}

pub const PARTITION_TCP: u8 = 1;
pub const PARTITION_UDP: u8 = 2;

/// The slots of the partitions that cut a packet from an address in `src` (the partition
/// word its LPM lookup found) to one in `dst`: bit 2·i set for partition i.
#[inline(always)]
pub const fn partitions_cutting(src: u64, dst: u64, state: &PartitionState) -> u64 {
    let forward = src & (dst >> 1) & PARTITION_BETWEEN_BITS;
    let backward = (src >> 1) & dst & PARTITION_BETWEEN_BITS & state.two_way;
    (forward | backward) & state.active
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], Copy, made only of integers, with explicit padding.
    unsafe impl aya::Pod for PortKey {}
    unsafe impl aya::Pod for FaultSlot {}
    unsafe impl aya::Pod for PortRule {}
    unsafe impl aya::Pod for FaultCounters {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for PartitionState {}
    unsafe impl aya::Pod for PartitionSlot {}
    unsafe impl aya::Pod for PendingCopy {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// The hooks each action runs at, on a loopback and elsewhere: one hook per direction.
    #[test]
    fn where_each_action_runs() {
        const XDP: u8 = HOOK_XDP;
        const IN: u8 = HOOK_TC_INGRESS;
        const OUT: u8 = HOOK_TC_EGRESS;
        // (action, then, hooks on lo, hooks on other interfaces)
        let table = [
            (ACTION_DROP, 0, IN, XDP | OUT),
            (ACTION_REFUSE_DROP, 0, IN, XDP | OUT),
            (ACTION_RECORD, 0, IN, XDP | OUT),
            (ACTION_LIMIT_BYTES, THEN_DROP, IN, XDP | OUT),
            (ACTION_LIMIT_AGE, THEN_DROP, IN, XDP | OUT),
            (ACTION_RATE, RATE_POLICE, IN, XDP | OUT),
            (ACTION_RATE, RATE_PACE, OUT, XDP | OUT),
            (ACTION_DELAY, 0, OUT, OUT),
            (ACTION_RESET, 0, OUT, IN | OUT),
            (ACTION_REFUSE_RST, 0, OUT, IN | OUT),
            (ACTION_CORRUPT, 0, OUT, IN | OUT),
            (ACTION_DUPLICATE, 0, OUT, IN | OUT),
            (ACTION_STALL, 0, OUT, IN | OUT),
            (ACTION_SLICE, 0, OUT, IN | OUT),
            (ACTION_LIMIT_BYTES, THEN_RESET, OUT, IN | OUT),
            (ACTION_LIMIT_AGE, THEN_RESET, OUT, IN | OUT),
        ];
        for (action, then, lo, other) in table {
            assert_eq!(
                hooks_for(action, then, true),
                lo,
                "action {action} then {then} on lo"
            );
            assert_eq!(
                hooks_for(action, then, false),
                other,
                "action {action} then {then}"
            );
            // Never both ingress hooks: a packet crosses XDP and then TC ingress.
            assert_ne!(
                other & (XDP | IN),
                XDP | IN,
                "action {action} acts twice inbound"
            );
            // On lo a packet crosses egress then ingress: exactly one acts.
            assert_eq!(lo.count_ones(), 1, "action {action} on lo");
        }
    }

    #[test]
    fn faulted_port_bits_are_distinct_and_inside_the_bitmap() {
        let bits = |p, port| {
            let b = faulted_port_bits(p, port).unwrap();
            (b.word, b.mask, b.summary_word, b.summary_mask)
        };
        assert_eq!(bits(PROTO_TCP, 0), (0, 1, 2048, 1));
        assert_eq!(bits(PROTO_TCP, 130), (2, 1 << 2, 2048, 1));
        assert_eq!(bits(PROTO_TCP, 1024), (16, 1, 2048, 1 << 1));
        assert_eq!(bits(PROTO_TCP, 65_535), (1023, 1 << 63, 2048, 1 << 63));
        assert_eq!(bits(PROTO_UDP, 0), (1024, 1, 2049, 1));
        assert_eq!(
            bits(PROTO_UDP, 65_535),
            (2047, 1 << 63, PARTITIONS_GATE_WORD - 1, 1 << 63)
        );
        assert_eq!(faulted_port_bits(1, 80), None);
        // Every port has its own fine bit, and its block's summary bit covers it.
        let mut seen = [0u64; 2048];
        for p in [PROTO_TCP, PROTO_UDP] {
            for port in 0..=u16::MAX {
                let b = faulted_port_bits(p, port).unwrap();
                assert_eq!(seen[b.word as usize] & b.mask, 0);
                seen[b.word as usize] |= b.mask;
                assert_eq!(b.summary_mask, 1 << ((b.word % 1024) / 16));
            }
        }
        assert!(seen.iter().all(|w| *w == u64::MAX));
    }

    /// Partition 0 between {a} and {b}, partition 1 one-way from {a} to {c}.
    #[test]
    fn partition_words_cut_the_pairs_they_name_and_no_others() {
        let state = PartitionState {
            active: 0b0101,
            two_way: 0b0001,
        };
        let (a, b, c, none) = (0b0101, 0b0010, 0b1000, 0);
        assert_eq!(partitions_cutting(a, b, &state), 0b0001);
        assert_eq!(partitions_cutting(b, a, &state), 0b0001);
        assert_eq!(partitions_cutting(a, c, &state), 0b0100);
        assert_eq!(partitions_cutting(c, a, &state), 0, "one-way");
        assert_eq!(partitions_cutting(b, c, &state), 0);
        assert_eq!(partitions_cutting(a, a, &state), 0);
        assert_eq!(partitions_cutting(none, b, &state), 0);
        let off = PartitionState {
            active: 0b0100,
            two_way: 0b0001,
        };
        assert_eq!(partitions_cutting(a, b, &off), 0, "inactive");
    }

    #[test]
    fn every_port_has_its_own_rule_index_entry() {
        assert_eq!(rule_index(PROTO_TCP, 0), Some(0));
        assert_eq!(rule_index(PROTO_TCP, 65_535), Some(65_535));
        assert_eq!(rule_index(PROTO_UDP, 0), Some(65_536));
        assert_eq!(rule_index(PROTO_UDP, 65_535), Some(RULE_INDEX_ENTRIES - 1));
        assert_eq!(rule_index(1, 80), None);
        // The programs' branchless form (fault-ebpf rules::rule_for) gives the same entries.
        for protocol in [PROTO_TCP, PROTO_UDP] {
            for port in [0, 1, 80, 1023, 40_000, 65_535] {
                let branchless = port as u32 | (protocol as u32 & 0x10) << 12;
                assert_eq!(Some(branchless), rule_index(protocol, port));
            }
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<PortKey>(), 4);
        assert_eq!(size_of::<FaultSlot>(), 72);
        assert_eq!(size_of::<PortRule>(), 8 + 72 * MAX_FAULTS_PER_PORT);
        assert_eq!(size_of::<PartitionState>(), 16);
        assert_eq!(size_of::<PartitionSlot>(), 24);
        assert_eq!(size_of::<FaultCounters>(), 32);
        assert_eq!(size_of::<FlowKey>(), 48);
        assert_eq!(size_of::<FlowState>(), 24);
        assert_eq!(size_of::<Event>(), 64);
    }
}
