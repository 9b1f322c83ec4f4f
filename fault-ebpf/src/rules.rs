//! Rule lookup: which compiled faults act on a packet at this hook.

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use fault_common::{
    ACTION_DROP, DIR_FROM_PORT, DIR_TO_PORT, FaultCounters, FaultSlot, MAX_FAULTS,
    MAX_FAULTS_PER_PORT, MAX_PORT_RULES, PEER_ANY, PortKey, PortRule, ROLE_EGRESS, ROLE_INGRESS,
};

use crate::packet::Packet;

#[map]
static RULES: HashMap<PortKey, PortRule> = HashMap::with_max_entries(MAX_PORT_RULES, 0);

#[map]
static COUNTERS: PerCpuArray<FaultCounters> = PerCpuArray::with_max_entries(MAX_FAULTS, 0);

/// ifindex → ROLE_* bits; interfaces not listed are left alone.
#[map]
static IFACES: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

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

    /// Drop is cheapest as early as possible: XDP on the way in, TC on the way out.
    fn carries(self, action: u8) -> bool {
        match action {
            ACTION_DROP => self != Hook::TcIngress,
            _ => false,
        }
    }
}

#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
}

/// Whether this hook acts on traffic of interface `ifindex` at all.
#[inline(always)]
pub fn hook_enabled(hook: Hook, ifindex: u32) -> bool {
    // SAFETY: the value is a plain u32 the daemon writes whole.
    match unsafe { IFACES.get(&ifindex) } {
        Some(role) => role & hook.role() != 0,
        None => false,
    }
}

/// Looks up the faults on the packet's destination port, then on its source port, and
/// applies them. Two hash lookups per packet whatever the number of faults installed.
#[inline(always)]
pub fn decide(pkt: &Packet, hook: Hook, len: u64) -> Verdict {
    let by_dst = PortKey::new(pkt.protocol, pkt.dst_port);
    // SAFETY: values are replaced whole by the daemon (hash-map updates are atomic).
    if let Some(rule) = unsafe { RULES.get(&by_dst) } {
        if apply(rule, pkt, DIR_TO_PORT, &pkt.src_addr, hook, len) == Verdict::Drop {
            return Verdict::Drop;
        }
    }
    let by_src = PortKey::new(pkt.protocol, pkt.src_port);
    if let Some(rule) = unsafe { RULES.get(&by_src) } {
        return apply(rule, pkt, DIR_FROM_PORT, &pkt.dst_addr, hook, len);
    }
    Verdict::Pass
}

#[inline(always)]
fn apply(rule: &PortRule, pkt: &Packet, dir: u8, peer: &[u32; 4], hook: Hook, len: u64) -> Verdict {
    for i in 0..MAX_FAULTS_PER_PORT {
        if i as u32 >= rule.len {
            break;
        }
        let slot = &rule.slots[i];
        if slot.directions & dir == 0
            || !hook.carries(slot.action)
            || !peer_matches(slot, pkt, peer)
        {
            continue;
        }
        let counters = COUNTERS.get_ptr_mut(slot.counter);
        count(counters, len, false);
        if !chance(slot.threshold) {
            continue;
        }
        count(counters, len, true);
        if slot.action == ACTION_DROP {
            return Verdict::Drop;
        }
    }
    Verdict::Pass
}

#[inline(always)]
fn peer_matches(slot: &FaultSlot, pkt: &Packet, peer: &[u32; 4]) -> bool {
    if slot.peer_family == PEER_ANY {
        return true;
    }
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
