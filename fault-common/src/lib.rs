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

/// Capacity of the per-fault counter array, and so of the daemon's fault table.
pub const MAX_FAULTS: u32 = 131_072;

/// Capacity of the rule map: one entry per (protocol, port) with faults on it.
pub const MAX_PORT_RULES: u32 = 131_072;

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

/// Capacity of the per-flow state map (LRU: the oldest flows are forgotten first).
pub const MAX_FLOWS: u32 = 65_536;
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

/// Per-interface role bits (value of the `IFACES` map): which hooks act on the interface.
pub const ROLE_EGRESS: u32 = 1;
pub const ROLE_INGRESS: u32 = 2;
/// The interface is a loopback: what leaves it comes straight back in, so each action acts
/// at one of the two only — drops at TC ingress, the rest at TC egress, nothing at XDP.
pub const ROLE_LOOPBACK: u32 = 4;
/// The interface has no link-layer header (tun, WireGuard, other ARPHRD_NONE / raw-IP
/// devices): packets start at the IP header, and at TC `skb->protocol` says which IP.
pub const ROLE_L3: u32 = 8;

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
}

/// Value of the rule map: the faults acting on one (protocol, port), in the order the daemon
/// compiled them. An update replaces the whole value atomically.
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
    /// Non-zero once a limit has cut the flow: every later packet is cut too.
    pub cut: u32,
    pub _pad: u32,
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<PortKey>(), 4);
        assert_eq!(size_of::<FaultSlot>(), 64);
        assert_eq!(size_of::<PortRule>(), 8 + 64 * MAX_FAULTS_PER_PORT);
        assert_eq!(size_of::<FaultCounters>(), 32);
        assert_eq!(size_of::<FlowKey>(), 48);
        assert_eq!(size_of::<FlowState>(), 24);
        assert_eq!(size_of::<Event>(), 64);
    }
}
