//! Recognising the copies a duplicate fault sends (issue #23, defect 1): by something only
//! the copy carries, never by its bytes (every same-size UDP datagram of a flow across a
//! veth looks alike: CHECKSUM_PARTIAL leaves only the pseudo-header sum in the checksum
//! field), and never by a bit of `skb->mark` (Cilium, Calico and fwmark routing use its
//! bits; the programs neither read nor write it).
//!
//! The carrier is a 64-bit random token in the first two words of `skb->cb` (the
//! `__sk_buff` view of `qdisc_skb_cb.data`, the 20 bytes the kernel leaves to TC programs),
//! set on the original just before `bpf_clone_redirect` and put back to what it was just
//! after: the clone (`skb_clone` copies `cb` whole, in `__copy_skb_header`) leaves with the
//! token, the original goes on with its own words. A pending entry under the token, in a
//! plain hash (not LRU: the kernel would evict entries still awaited), holds the two words
//! the token replaced. A packet whose `cb` names a pending token is the copy if, and only
//! if, its `bpf_map_delete_elem` of that token succeeds: the kernel's delete returns 0 to
//! exactly one caller, so one skb, on one CPU, is ever taken for the copy, whatever the
//! timing, and it gets the original's two words back. A packet carrying a token that is not
//! pending (never sent, already seen, or swept) is an original and meets the faults.
//!
//! Why `cb` reaches the program again (read in the kernel's net/core/filter.c, dev.c,
//! sch_api/cls_bpf and tcx code of 6.1 and 6.18):
//! - sent out (`bpf_clone_redirect` without BPF_F_INGRESS): `__bpf_tx_skb` →
//!   `dev_queue_xmit` → `sch_handle_egress` runs the egress program on the copy inside the
//!   helper call; only `qdisc_skb_cb.pkt_len` (before `data`) is written on the way. The
//!   sender then deletes the entry whatever happened: if the copy came by it is gone
//!   already, and if it did not (dropped before faultd's program) it never will.
//! - sent in (BPF_F_INGRESS): `__bpf_rx_skb` → `____dev_forward_skb` (`skb_scrub_packet`
//!   leaves `cb` alone; it zeroes `skb->priority`, which is why priority could not carry
//!   the token) → `netif_rx` → the backlog → `__netif_receive_skb_core` →
//!   `sch_handle_ingress` (cls_bpf on 6.1, tcx on 6.6+), which sets `pkt_len`, `tc_skb_cb`
//!   (after `qdisc_skb_cb`) and the data pointers (after it too) and runs the program. Packet
//!   taps on the way (`ptype_all`) work on their own clone. The IP layer's `IPCB` comes
//!   after TC ingress. If `netif_rx` refuses the copy the sender deletes the entry.
//!   Checked on both kernels of the matrix by `programs::copies` and `tests/exact.rs`.
//!
//! A copy lost after it was queued (dropped by another program ahead of faultd's, an
//! interface going down) leaves its entry behind: faultd sweeps entries older than
//! `PENDING_COPY_TTL_NS` (fault-daemon's `Datapath::sweep_copies`).
//!
//! Other programs at the same hook see the token in the copy's first two `cb` words until
//! faultd's program has recognised it (then the original's words are back); `cb` is
//! scratch space that TC programs write before they read, so nothing is known to mind.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::map,
    maps::HashMap,
    programs::TcContext,
};
use fault_common::{MAX_PENDING_COPIES, PendingCopy};

/// Token → the copy sent with it, until it comes by. Preallocated: no allocation on the
/// packet's path. Entries are deleted by the copy itself, by the sender (a copy sent out,
/// or one the backlog refused), or by faultd's sweep (a copy lost on its way).
#[map]
static COPIES: HashMap<u64, PendingCopy> = HashMap::with_max_entries(MAX_PENDING_COPIES, 0);

/// Whether this packet is a copy a duplicate fault sent, come by the programs again. If so,
/// its pending entry is taken (only one skb can take it) and its `cb` words are the
/// original's again.
///
/// Not inlined: a sibling of rules::decide under the program's frame, with its own frame
/// for the key, so the program's frame (on the deepest call chain, see main::try_tc) does
/// not grow; it is called only after the pass-through test, so packets no fault matches
/// never pay for it.
#[inline(never)]
pub fn take_copy(ctx: &TcContext) -> bool {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for the program's run; cb[0..2] are readable
    // and writable at both TC hooks.
    let token = unsafe { (*skb).cb[0] as u64 | ((*skb).cb[1] as u64) << 32 };
    // No token is 0 (see send_copy): most originals pay this test only.
    if token == 0 {
        return false;
    }
    // SAFETY: a map value, valid for the program's run (RCU); copied out at once.
    let Some(saved) = (unsafe { COPIES.get(&token) }).map(|p| p.cb) else {
        return false;
    };
    // The one deleter that succeeds is the copy. Anyone else (a packet carrying a stale
    // token that another took meanwhile) is an original.
    if COPIES.remove(&token).is_err() {
        return false;
    }
    // SAFETY: as above.
    unsafe {
        (*skb).cb[0] = saved[0];
        (*skb).cb[1] = saved[1];
    }
    true
}

/// Sends a copy of the packet to `ifindex` (in when `ingress`), carrying a fresh token (see
/// the module's comment). No copy is sent when the pending table is full.
#[inline(always)]
pub fn send_copy(ctx: &TcContext, ifindex: u32, ingress: bool) -> Result<(), i64> {
    let skb = ctx.skb.skb;
    // SAFETY: helpers with no arguments. Never 0, which take_copy reads as "no token".
    let token = unsafe { (bpf_get_prandom_u32() as u64) << 32 | bpf_get_prandom_u32() as u64 } | 1;
    // SAFETY: the context pointer is valid for the program's run.
    let saved = unsafe { [(*skb).cb[0], (*skb).cb[1]] };
    let pending = PendingCopy {
        cb: saved,
        // SAFETY: helper with no arguments.
        sent_ns: unsafe { bpf_ktime_get_ns() },
    };
    // NOEXIST: a token already pending (2^-64 a pair) is not taken over.
    COPIES.insert(&token, &pending, BPF_NOEXIST as u64)?;
    // SAFETY: as above; the words are put back below, whatever the helper did.
    unsafe {
        (*skb).cb[0] = token as u32;
        (*skb).cb[1] = (token >> 32) as u32;
    }
    let flags = if ingress { BPF_F_INGRESS as u64 } else { 0 };
    let sent = ctx.clone_redirect(ifindex, flags);
    // SAFETY: as above.
    unsafe {
        (*skb).cb[0] = saved[0];
        (*skb).cb[1] = saved[1];
    }
    // Out: the copy has come by (and taken its entry) inside the call, or never will. In:
    // a copy the backlog refused never will.
    if !ingress || sent.is_err() {
        let _ = COPIES.remove(&token);
    }
    sent
}
