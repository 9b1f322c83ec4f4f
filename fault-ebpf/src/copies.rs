//! Recognising the copies a duplicate fault sends, without claiming a bit of `skb->mark`
//! (Cilium, Calico and fwmark routing use its bits; the programs neither read nor write it).
//!
//! - A copy sent out (TC egress, `bpf_clone_redirect` without BPF_F_INGRESS) goes through
//!   `dev_queue_xmit` inside the helper call: it meets the egress program again at once, on
//!   the same CPU, with bottom halves off. A per-CPU flag set around the call marks it.
//! - A copy sent in (TC ingress, BPF_F_INGRESS) is queued to the receive backlog
//!   (`netif_rx`) and meets the ingress program later, maybe on another CPU. Its
//!   fingerprint (addresses, ports, sequence and acknowledgment numbers, length, L4
//!   checksum) is noted when it is sent and taken off when it comes by. Only for a second
//!   after the last copy sent in is the note looked for, so other traffic pays one array
//!   read. An identical packet arriving before the copy (a retransmission inside that
//!   window) is taken for it: the copy is then treated as that packet would have been.

use aya_ebpf::{
    helpers::bpf_ktime_get_coarse_ns,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray},
    programs::TcContext,
};

use crate::packet::Packet;

/// Entry 0: 1 while this CPU's egress program is inside bpf_clone_redirect.
#[map]
static COPYING: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Fingerprint → copies sent in and not seen yet. LRU: a copy lost on its way (a full
/// backlog) is forgotten in time. Counts are updated without atomics (the BPF target has
/// no atomic read-modify-write in `core`): two CPUs race only on one fingerprint, that is
/// on two copies of one packet in flight at once, and the worst case is such a copy
/// passing once more through the faults.
#[map]
static INGRESS_COPIES: LruHashMap<u64, u64> = LruHashMap::with_max_entries(1024, 0);

/// Entry 0: when the last copy was sent in (bpf_ktime_get_coarse_ns), 0 for never.
#[map]
static LAST_INGRESS_COPY: Array<u64> = Array::with_max_entries(1, 0);

/// A copy sent in is back at the ingress program well within this.
const INGRESS_WINDOW_NS: u64 = 1_000_000_000;

/// Whether this egress packet is a copy being sent by this CPU's egress program.
#[inline(always)]
pub fn is_egress_copy() -> bool {
    COPYING.get(0).is_some_and(|copying| *copying != 0)
}

/// Runs `send` (a bpf_clone_redirect out) with the per-CPU flag up.
#[inline(always)]
pub fn sending_out<T>(send: impl FnOnce() -> T) -> T {
    set_copying(1);
    let sent = send();
    set_copying(0);
    sent
}

#[inline(always)]
fn set_copying(value: u32) {
    if let Some(flag) = COPYING.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot; this program is the only one on this CPU now.
        unsafe { *flag = value };
    }
}

/// Notes a copy of `pkt` about to be sent in.
#[inline(always)]
pub fn note_ingress_copy(ctx: &TcContext, pkt: &Packet) {
    let key = fingerprint(ctx, pkt);
    match INGRESS_COPIES.get_ptr_mut(&key) {
        // SAFETY: a map value (see INGRESS_COPIES for the race).
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = INGRESS_COPIES.insert(&key, &1, 0);
        }
    }
    if let Some(last) = LAST_INGRESS_COPY.get_ptr_mut(0) {
        // SAFETY: a map value; a racing writer writes an equally recent time.
        unsafe { *last = bpf_ktime_get_coarse_ns() };
    }
}

/// Whether this ingress packet is a copy sent in; if so, its note is taken off. Also
/// takes back the note of a copy that could not be sent.
#[inline(never)]
pub fn take_ingress_copy(ctx: &TcContext, pkt: &Packet) -> bool {
    let Some(last) = LAST_INGRESS_COPY.get(0) else {
        return false;
    };
    // SAFETY: helper with no arguments.
    if *last == 0 || unsafe { bpf_ktime_get_coarse_ns() }.wrapping_sub(*last) > INGRESS_WINDOW_NS {
        return false;
    }
    let key = fingerprint(ctx, pkt);
    let Some(n) = INGRESS_COPIES.get_ptr_mut(&key) else {
        return false;
    };
    // SAFETY: a map value (see INGRESS_COPIES for the race).
    unsafe {
        if *n == 0 {
            return false;
        }
        *n -= 1;
    }
    true
}

/// What tells one packet from another of its flow, as a 64-bit hash.
#[inline(always)]
fn fingerprint(ctx: &TcContext, pkt: &Packet) -> u64 {
    let check: u16 = ctx.load(pkt.checksum_offset() as usize).unwrap_or(0);
    let words = [
        pkt.src_addr[0],
        pkt.src_addr[1],
        pkt.src_addr[2],
        pkt.src_addr[3],
        pkt.dst_addr[0],
        pkt.dst_addr[1],
        pkt.dst_addr[2],
        pkt.dst_addr[3],
        (pkt.src_port as u32) << 16 | pkt.dst_port as u32,
        pkt.seq,
        pkt.ack,
        ctx.len(),
        (pkt.protocol as u32) << 16 | check as u32,
    ];
    let mut h: u64 = 0;
    for w in words {
        h = (h ^ w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^= h >> 29;
    }
    h
}
