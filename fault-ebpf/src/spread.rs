//! Corruption as dense as asked (`corrupt --byte-percent`): each payload byte is changed
//! with probability p, independently. Rather than a draw per byte, the gap to the next
//! changed byte is drawn from the geometric law, `floor(ln u / ln(1 - p))`: the work is the
//! number of bytes changed, not the payload's length, and bpf_loop lets the verifier check
//! one step. At most `MAX_CORRUPT_BYTES` bytes change in one packet.
//!
//! A changed byte has all its bits flipped (it always differs); checksums are fixed up as
//! in [`crate::alter`], so the receiving application reads the damage.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::{bpf_get_prandom_u32, bpf_loop},
    programs::TcContext,
};
use fault_common::{CORRUPT_SCALE_BITS, MAX_CORRUPT_BYTES};

use crate::alter::csum_flags;
use crate::packet::Packet;

/// The walk over one packet's payload, shared with [`flip_step`].
#[repr(C)]
struct Spread {
    skb: *mut __sk_buff,
    /// The slot's density: see fault_common::CORRUPT_SCALE_BITS.
    density: u64,
    /// Frame offsets: the next byte that may change, the end of the payload, the L4
    /// header, the checksum.
    at: u32,
    end: u32,
    l4: u32,
    checksum: u32,
    flags: u32,
    _pad: u32,
}

/// Changes the packet's payload bytes, each with the density's probability.
#[inline(never)]
pub fn apply(ctx: &TcContext, pkt: &Packet, density: u64) {
    let mut walk = Spread {
        skb: ctx.skb.skb,
        density,
        at: pkt.payload_offset,
        end: pkt.payload_offset + pkt.payload_len,
        l4: pkt.l4_offset,
        checksum: pkt.checksum_offset(),
        flags: csum_flags(pkt) as u32,
        _pad: 0,
    };
    // SAFETY: the callback has the signature bpf_loop expects and `walk` outlives the call.
    unsafe {
        bpf_loop(
            MAX_CORRUPT_BYTES,
            flip_step as *mut c_void,
            &mut walk as *mut Spread as *mut c_void,
            0,
        );
    }
}

/// One changed byte: skip a geometric gap, flip the byte there. 1 to stop (past the payload,
/// or a helper failed), 0 to go on.
extern "C" fn flip_step(_i: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer apply gave it.
    let walk = unsafe { &mut *(walk as *mut Spread) };
    let gap = geometric_gap(walk.density);
    if gap >= (walk.end - walk.at) as u64 {
        return 1;
    }
    let at = walk.at + gap as u32;
    walk.at = at + 1;
    let ctx = TcContext::new(walk.skb);
    let Ok(byte) = ctx.load::<u8>(at as usize) else {
        return 1;
    };
    let flipped = !byte;
    if ctx.store(at as usize, &flipped, 0).is_err() {
        return 1;
    }
    // A byte at an even distance from the L4 header is the high byte of its checksum word.
    let (from, to) = if (at - walk.l4) & 1 == 0 {
        ([byte, 0], [flipped, 0])
    } else {
        ([0, byte], [0, flipped])
    };
    let fixed = ctx.l4_csum_replace(
        walk.checksum as usize,
        u16::from_ne_bytes(from) as u64,
        u16::from_ne_bytes(to) as u64,
        walk.flags as u64,
    );
    if fixed.is_err() { 1 } else { 0 }
}

/// Bytes to skip before the next changed one: `floor(-log2(u) * density / 2^32)` with
/// `-log2(u)` in Q16 (see [`neg_log2_q16`]).
#[inline(always)]
fn geometric_gap(density: u64) -> u64 {
    // SAFETY: helper with no arguments.
    let u = unsafe { bpf_get_prandom_u32() } as u64 + 1;
    (neg_log2_q16(u) * density) >> CORRUPT_SCALE_BITS
}

/// `-log2(u / 2^32)` in Q16 for `u` in 1..=2^32, so for a uniform u in (0, 1]: the
/// integer part from the highest set bit, the fraction from `log2(1 + f) ≈ f + c f (1 - f)`
/// with c = 0.3465 (off by under 0.01; the mean gap comes out within 1 %, as
/// fault-daemon tests faults::slicing check).
/// Branches on the bit position are few and shallow, for the verifier.
#[inline(always)]
pub fn neg_log2_q16(u: u64) -> u64 {
    let mut top = 0u64;
    let mut x = u;
    if x >> 32 != 0 {
        top += 32;
        x >>= 32;
    }
    if x >> 16 != 0 {
        top += 16;
        x >>= 16;
    }
    if x >> 8 != 0 {
        top += 8;
        x >>= 8;
    }
    if x >> 4 != 0 {
        top += 4;
        x >>= 4;
    }
    if x >> 2 != 0 {
        top += 2;
        x >>= 2;
    }
    if x >> 1 != 0 {
        top += 1;
    }
    // u = 2^top (1 + f), f in [0, 1), in Q16.
    let f = ((u << 16) >> top) - (1 << 16);
    let c = 22_708; // 0.3465 in Q16
    let log_frac = f + ((c * f >> 16) * ((1 << 16) - f) >> 16);
    ((32 - top) << 16) - log_frac
}
