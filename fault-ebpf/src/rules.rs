//! Rule lookup: which compiled faults act on a packet at this hook, and how.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use fault_common::{
    ACTION_DROP, ACTION_LIMIT_AGE, ACTION_LIMIT_BYTES, ACTION_RECORD, ACTION_REFUSE_DROP,
    ACTION_REFUSE_RST, ACTION_RESET, DIR_FROM_PORT, DIR_TO_PORT, EVENT_FIRST_HIT, EVENT_FLOW_CUT,
    EVENT_SYN, EVENT_SYN_REFUSED, FaultCounters, FaultSlot, FlowKey, FlowState, MAX_FAULTS,
    MAX_FAULTS_PER_PORT, MAX_FLOWS, MAX_PORT_RULES, PEER_ANY, PROTO_UDP, PortKey, PortRule,
    ROLE_EGRESS, ROLE_INGRESS, THEN_RESET,
};

use crate::events;
use crate::packet::Packet;

#[map]
static RULES: HashMap<PortKey, PortRule> = HashMap::with_max_entries(MAX_PORT_RULES, 0);

#[map]
static COUNTERS: PerCpuArray<FaultCounters> = PerCpuArray::with_max_entries(MAX_FAULTS, 0);

/// ifindex → ROLE_* bits; interfaces not listed are left alone.
#[map]
static IFACES: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Per-(fault, flow) state: first packet time, bytes, whether a limit cut it.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Where a program runs. Each action is carried out at exactly one hook per direction of
/// travel, so a packet is never acted on (or counted) twice.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

impl Hook {
    fn role(self) -> u32 {
        match self {
            Hook::Xdp | Hook::TcIngress => ROLE_INGRESS,
            Hook::TcEgress => ROLE_EGRESS,
        }
    }

    /// Dropping is cheapest as early as possible: XDP on the way in, TC on the way out.
    /// Answering with a RST needs the socket buffer: TC both ways.
    fn carries(self, slot: &FaultSlot) -> bool {
        let needs_skb = match slot.action {
            ACTION_RESET | ACTION_REFUSE_RST => true,
            ACTION_LIMIT_BYTES | ACTION_LIMIT_AGE => slot.then == THEN_RESET,
            _ => false,
        };
        if needs_skb {
            self != Hook::Xdp
        } else {
            self != Hook::TcIngress
        }
    }
}

/// What the hook does with the packet.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// Drop it and answer its sender with a RST (TC hooks only).
    Reset {
        fault_id: u64,
    },
}

/// The interface's `ROLE_*` bits when this hook acts on its traffic at all.
#[inline(always)]
pub fn role_at(hook: Hook, ifindex: u32) -> Option<u32> {
    // SAFETY: the value is a plain u32 the daemon writes whole.
    let role = *unsafe { IFACES.get(&ifindex) }?;
    (role & hook.role() != 0).then_some(role)
}

/// Looks up the faults on the packet's destination port, then on its source port, and
/// applies them. Two hash lookups per packet whatever the number of faults installed.
#[inline(always)]
pub fn decide(pkt: &Packet, hook: Hook, len: u64) -> Verdict {
    let by_dst = PortKey::new(pkt.protocol, pkt.dst_port);
    // SAFETY: values are replaced whole by the daemon (hash-map updates are atomic).
    if let Some(rule) = unsafe { RULES.get(&by_dst) } {
        let verdict = apply(rule, pkt, Side::ToPort, hook, len);
        if verdict != Verdict::Pass {
            return verdict;
        }
    }
    let by_src = PortKey::new(pkt.protocol, pkt.src_port);
    if let Some(rule) = unsafe { RULES.get(&by_src) } {
        return apply(rule, pkt, Side::FromPort, hook, len);
    }
    Verdict::Pass
}

/// Which end of the packet is the faulted port.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Side {
    ToPort,
    FromPort,
}

impl Side {
    fn bit(self) -> u8 {
        match self {
            Side::ToPort => DIR_TO_PORT,
            Side::FromPort => DIR_FROM_PORT,
        }
    }

    /// The address at the other end from the port.
    fn peer(self, pkt: &Packet) -> &[u32; 4] {
        match self {
            Side::ToPort => &pkt.src_addr,
            Side::FromPort => &pkt.dst_addr,
        }
    }
}

#[inline(always)]
fn apply(rule: &PortRule, pkt: &Packet, side: Side, hook: Hook, len: u64) -> Verdict {
    for i in 0..MAX_FAULTS_PER_PORT {
        if i as u32 >= rule.len {
            break;
        }
        let slot = &rule.slots[i];
        if !matches(slot, pkt, side, hook) {
            continue;
        }
        let counters = COUNTERS.get_ptr_mut(slot.counter);
        count(counters, len, false);
        let verdict = act(slot, pkt, side);
        if verdict != Verdict::Pass {
            count(counters, len, true);
            return verdict;
        }
    }
    Verdict::Pass
}

#[inline(always)]
fn matches(slot: &FaultSlot, pkt: &Packet, side: Side, hook: Hook) -> bool {
    if slot.directions & side.bit() == 0 || !hook.carries(slot) || !peer_matches(slot, pkt, side) {
        return false;
    }
    match slot.action {
        // Connection attempts: SYNs to the port (for UDP, any datagram to it).
        ACTION_REFUSE_RST | ACTION_RECORD => pkt.is_syn() && side == Side::ToPort,
        ACTION_REFUSE_DROP => side == Side::ToPort && (pkt.is_syn() || pkt.protocol == PROTO_UDP),
        // Never answer a RST with a RST.
        ACTION_RESET => !pkt.is_rst(),
        _ => true,
    }
}

/// The slot's decision for a packet it matches.
#[inline(always)]
fn act(slot: &FaultSlot, pkt: &Packet, side: Side) -> Verdict {
    let now = unsafe { bpf_ktime_get_ns() };
    match slot.action {
        ACTION_DROP => {
            note_flow(slot, pkt, side, now);
            if chance(slot.threshold) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }
        ACTION_RESET => {
            note_flow(slot, pkt, side, now);
            if chance(slot.threshold) {
                Verdict::Reset {
                    fault_id: slot.fault_id,
                }
            } else {
                Verdict::Pass
            }
        }
        ACTION_REFUSE_RST => {
            events::emit(EVENT_SYN_REFUSED, slot.fault_id, pkt, now);
            Verdict::Reset {
                fault_id: slot.fault_id,
            }
        }
        ACTION_REFUSE_DROP => {
            if pkt.is_syn() {
                events::emit(EVENT_SYN_REFUSED, slot.fault_id, pkt, now);
            }
            Verdict::Drop
        }
        ACTION_RECORD => {
            events::emit(EVENT_SYN, slot.fault_id, pkt, now);
            Verdict::Pass
        }
        ACTION_LIMIT_BYTES | ACTION_LIMIT_AGE => limit(slot, pkt, side, now),
        _ => Verdict::Pass,
    }
}

/// Tracks the flow and cuts it once it is past the slot's limit; a cut flow stays cut.
#[inline(always)]
fn limit(slot: &FaultSlot, pkt: &Packet, side: Side, now: u64) -> Verdict {
    let Some(state) = note_flow(slot, pkt, side, now) else {
        return Verdict::Pass;
    };
    // SAFETY: the pointer came from the map. Two CPUs may race on one flow; the worst case
    // is a byte count short by one packet, never a torn cut flag.
    let over = unsafe {
        (*state).bytes += pkt.payload_len as u64;
        let over = match slot.action {
            ACTION_LIMIT_BYTES => (*state).bytes > slot.param,
            _ => now.saturating_sub((*state).first_ns) > slot.param,
        };
        if over && (*state).cut == 0 {
            (*state).cut = 1;
            events::emit(EVENT_FLOW_CUT, slot.fault_id, pkt, now);
        }
        (*state).cut != 0
    };
    match (over, slot.then) {
        (false, _) => Verdict::Pass,
        // RSTs are what kill the flow: among them, the ones this fault forged, which a
        // veth's other hook sees on their way back.
        (true, THEN_RESET) if pkt.is_rst() => Verdict::Pass,
        (true, THEN_RESET) => Verdict::Reset {
            fault_id: slot.fault_id,
        },
        (true, _) => Verdict::Drop,
    }
}

/// Finds (or starts) the fault's state for the packet's flow; a new flow is reported once.
#[inline(always)]
fn note_flow(slot: &FaultSlot, pkt: &Packet, side: Side, now: u64) -> Option<*mut FlowState> {
    let key = flow_key(slot, pkt, side);
    if let Some(state) = FLOWS.get_ptr_mut(&key) {
        return Some(state);
    }
    let fresh = FlowState {
        first_ns: now,
        ..Default::default()
    };
    FLOWS.insert(&key, &fresh, 0).ok()?;
    events::emit(EVENT_FIRST_HIT, slot.fault_id, pkt, now);
    FLOWS.get_ptr_mut(&key)
}

#[inline(always)]
fn flow_key(slot: &FaultSlot, pkt: &Packet, side: Side) -> FlowKey {
    let (port, remote_port, local_addr, remote_addr) = match side {
        Side::ToPort => (pkt.dst_port, pkt.src_port, pkt.dst_addr, pkt.src_addr),
        Side::FromPort => (pkt.src_port, pkt.dst_port, pkt.src_addr, pkt.dst_addr),
    };
    FlowKey {
        fault_id: slot.fault_id,
        family: pkt.family,
        protocol: pkt.protocol,
        port,
        remote_port,
        _pad: 0,
        local_addr,
        remote_addr,
    }
}

#[inline(always)]
fn peer_matches(slot: &FaultSlot, pkt: &Packet, side: Side) -> bool {
    if slot.peer_family == PEER_ANY {
        return true;
    }
    let peer = side.peer(pkt);
    slot.peer_family == pkt.family
        && peer[0] & slot.peer_mask[0] == slot.peer_addr[0]
        && peer[1] & slot.peer_mask[1] == slot.peer_addr[1]
        && peer[2] & slot.peer_mask[2] == slot.peer_addr[2]
        && peer[3] & slot.peer_mask[3] == slot.peer_addr[3]
}

#[inline(always)]
fn chance(threshold: u32) -> bool {
    // SAFETY: helper with no arguments.
    threshold == u32::MAX || unsafe { bpf_get_prandom_u32() } <= threshold
}

#[inline(always)]
fn count(counters: Option<*mut FaultCounters>, len: u64, acted: bool) {
    let Some(c) = counters else { return };
    // SAFETY: per-CPU slot, so no other CPU writes it; the pointer came from the map.
    unsafe {
        if acted {
            (*c).acted_packets += 1;
            (*c).acted_bytes += len;
        } else {
            (*c).matched_packets += 1;
            (*c).matched_bytes += len;
        }
    }
}
