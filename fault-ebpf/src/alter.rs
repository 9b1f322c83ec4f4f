//! Changes to packets that go on: a zero window (stall), segments cut small (slice, in
//! crate::slice), flipped payload bytes (corrupt; as dense as asked in crate::spread),
//! a later departure (delay, rate pacing) and a second copy (duplicate).
//!
//! Checksums are fixed up with `bpf_l4_csum_replace`, which does the right thing for each
//! way the kernel may be carrying the packet: a full checksum is updated; a partial one
//! (CHECKSUM_PARTIAL, usual for locally generated traffic) covers only the pseudo-header
//! until the stack or the NIC completes it over the changed bytes, so it is left alone.

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_skb_set_tstamp},
    programs::TcContext,
};
use fault_common::{DELAY_HORIZON_NS, PROTO_UDP};

use crate::copies;
use crate::packet::Packet;
use crate::rules::{CORRUPT_ONE_BYTE, Effects, Hook};
use crate::{slice, spread};

/// Size of the replaced field, in the flags of bpf_l4_csum_replace.
pub(crate) const CSUM_FIELD_2: u64 = 2;
/// A UDP checksum of 0 means "none": keep it so, and never produce 0 by accident.
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
const TCP_WINDOW: u32 = 14;
/// `BPF_SKB_TSTAMP_DELIVERY_MONO` (include/uapi/linux/bpf.h, 5.18+): aya's bindings have it
/// only in an anonymous enum's module.
const BPF_SKB_TSTAMP_DELIVERY_MONO: u32 = 1;

/// Carries out the effects; each is best effort (a failed rewrite leaves the packet as it
/// was, which is still a valid packet). Not inlined, for the stack (see rules::decide).
#[inline(never)]
pub fn apply(ctx: &TcContext, pkt: &Packet, fx: &Effects, hook: Hook, ifindex: u32) {
    if fx.stall != 0 {
        let _ = zero_window(ctx, pkt);
    }
    // After a stall, whose zero window it keeps.
    if fx.slice_bytes != 0 {
        let _ = slice::apply(ctx, pkt, fx.slice_bytes);
    }
    if fx.corrupt == CORRUPT_ONE_BYTE {
        let _ = flip_payload_byte(ctx, pkt);
    } else if fx.corrupt != 0 {
        spread::apply(ctx, pkt, fx.corrupt_density);
    }
    if fx.delay_ns != 0 || fx.not_before_ns != 0 {
        set_departure(ctx, fx);
    }
    // Last, so that the copy carries every other change too.
    if fx.duplicate != 0 {
        let _ = duplicate(ctx, hook, ifindex);
    }
}

pub(crate) fn csum_flags(pkt: &Packet) -> u64 {
    if pkt.protocol == PROTO_UDP {
        CSUM_FIELD_2 | BPF_F_MARK_MANGLED_0
    } else {
        CSUM_FIELD_2
    }
}

#[inline(always)]
fn zero_window(ctx: &TcContext, pkt: &Packet) -> Result<(), i64> {
    let offset = (pkt.l4_offset + TCP_WINDOW) as usize;
    let window: u16 = ctx.load(offset)?;
    if window == 0 {
        return Ok(());
    }
    ctx.store(offset, &0u16, 0)?;
    ctx.l4_csum_replace(
        pkt.checksum_offset() as usize,
        window as u64,
        0,
        csum_flags(pkt),
    )
}

/// Flips every bit of one payload byte at a random even offset. The payload starts at an
/// even offset from the L4 header (TCP headers are whole words, UDP's is 8 bytes), so the
/// byte is the first of a 16-bit checksum word: the checksum changes as if that word went
/// from [byte, 0] to [!byte, 0].
#[inline(always)]
fn flip_payload_byte(ctx: &TcContext, pkt: &Packet) -> Result<(), i64> {
    // SAFETY: helper with no arguments.
    let draw = unsafe { bpf_get_prandom_u32() } as u64;
    let at = ((draw * pkt.payload_len as u64) >> 32) as u32 & !1;
    let offset = (pkt.payload_offset + at) as usize;
    let byte: u8 = ctx.load(offset)?;
    let flipped = !byte;
    ctx.store(offset, &flipped, 0)?;
    ctx.l4_csum_replace(
        pkt.checksum_offset() as usize,
        u16::from_ne_bytes([byte, 0]) as u64,
        u16::from_ne_bytes([flipped, 0]) as u64,
        csum_flags(pkt),
    )
}

/// Earliest Departure Time: the fq qdisc holds the packet until `skb->tstamp`.
#[inline(always)]
fn set_departure(ctx: &TcContext, fx: &Effects) {
    // SAFETY: helper with no arguments; the context pointer is valid for the program's run.
    let now = unsafe { bpf_ktime_get_ns() };
    let skb = ctx.skb.skb;
    let current = unsafe { (*skb).tstamp };
    // A departure time TCP already set (its own pacing) is kept as the base; anything else
    // in the field (a wall-clock timestamp) is not a departure time.
    let mut base = now;
    if current > now && current - now <= DELAY_HORIZON_NS {
        base = current;
    }
    base = base.max(fx.not_before_ns);
    let departure = (base + fx.delay_ns).min(now + DELAY_HORIZON_NS);
    // Marked a delivery time (mono_delivery_time on 6.1, tstamp_type on 6.11+), as TCP's
    // own departure times are: the redirect path (`__bpf_tx_skb` → `skb_clear_tstamp`)
    // clears any other tstamp, so a UDP copy sent out by a duplicate fault would lose it
    // and leave ahead of its original (issue #23, defect 5). A plain store of
    // `__sk_buff->tstamp` leaves the type as it was. The helper refuses a packet whose
    // `skb->protocol` is not IPv4 or IPv6 (a VLAN tag the device does not take off): the
    // plain store still gives the original its time there.
    // SAFETY: the context pointer is valid for the program's run.
    let typed = unsafe { bpf_skb_set_tstamp(skb, departure, BPF_SKB_TSTAMP_DELIVERY_MONO) };
    if typed != 0 {
        unsafe { (*skb).tstamp = departure };
    }
}

/// Sends a copy of the packet the same way it is going. The copy carries a token that only
/// it has (crate::copies), by which the programs know it when it comes by, so it is not
/// copied again; its mark is the original's, untouched.
#[inline(always)]
fn duplicate(ctx: &TcContext, hook: Hook, ifindex: u32) -> Result<(), i64> {
    copies::send_copy(ctx, ifindex, hook == Hook::TcIngress)
}
