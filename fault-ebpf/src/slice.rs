//! Slicing (`slice`): the stream reaches the receiving application in segments of at most N
//! bytes. Only the handshake decides how large a sender's segments are, so:
//! - the MSS option of SYN and SYN-ACK is lowered to N (never raised): each end then sends
//!   segments of at most N bytes (Linux takes away its TCP options from it, too);
//! - their window scale option becomes three NOPs, so the windows stay unscaled;
//! - the window of every packet is held to N: at most one segment is in flight, so neither
//!   GSO/TSO on the sender nor GRO on the receiver can put two of them in one packet.
//!
//! A SYN without an MSS option is left as it is: growing a packet by an option is a
//! rewrite of the IP header too, and every stack faultd meets sends one (the peer of one
//! that does not uses 536 bytes, RFC 9293, or 1220 for IPv6).
//!
//! Checksums are fixed up byte by byte (see [`replace_byte`]), as options sit at any offset.

use core::ffi::c_void;

use aya_ebpf::{bindings::__sk_buff, helpers::bpf_loop, programs::TcContext};

use crate::alter::{CSUM_FIELD_2, csum_flags};
use crate::packet::{Packet, TCP_SYN};

const TCP_WINDOW: u32 = 14;
const TCP_HLEN: u32 = 20;
/// TCP options: end of list, no-operation, maximum segment size, window scale.
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
/// At most 40 bytes of options: at most 40 of them.
const MAX_OPTIONS: u32 = 40;

/// Rewrites the packet as the slice says; best effort, as every rewrite here.
#[inline(never)]
pub fn apply(ctx: &TcContext, pkt: &Packet, bytes: u32) -> Result<(), i64> {
    if pkt.tcp_flags & TCP_SYN != 0 {
        rewrite_options(ctx, pkt, bytes);
    }
    hold_window(ctx, pkt, bytes)
}

/// The window the packet advertises, held to `bytes`.
#[inline(always)]
fn hold_window(ctx: &TcContext, pkt: &Packet, bytes: u32) -> Result<(), i64> {
    let offset = (pkt.l4_offset + TCP_WINDOW) as usize;
    let raw: u16 = ctx.load(offset)?;
    if (u16::from_be(raw) as u32) <= bytes {
        return Ok(());
    }
    let held = (bytes as u16).to_be();
    ctx.store(offset, &held, 0)?;
    ctx.l4_csum_replace(
        pkt.checksum_offset() as usize,
        raw as u64,
        held as u64,
        CSUM_FIELD_2,
    )
}

/// The walk over a SYN's options, shared with [`option_step`].
#[repr(C)]
struct Options {
    skb: *mut __sk_buff,
    /// Frame offsets: the next option, the end of the options, the TCP header, the checksum.
    at: u32,
    end: u32,
    l4: u32,
    checksum: u32,
    bytes: u32,
    flags: u32,
}

fn rewrite_options(ctx: &TcContext, pkt: &Packet, bytes: u32) {
    let mut walk = Options {
        skb: ctx.skb.skb,
        at: pkt.l4_offset + TCP_HLEN,
        end: pkt.payload_offset,
        l4: pkt.l4_offset,
        checksum: pkt.checksum_offset(),
        bytes,
        flags: csum_flags(pkt) as u32,
    };
    // bpf_loop: the verifier checks one step, not forty.
    // SAFETY: the callback has the signature bpf_loop expects and `walk` outlives the call.
    unsafe {
        bpf_loop(
            MAX_OPTIONS,
            option_step as *mut c_void,
            &mut walk as *mut Options as *mut c_void,
            0,
        );
    }
}

/// One option: 0 to go on to the next, 1 to stop (end of list, or an option that runs past
/// the header, which is then left alone).
extern "C" fn option_step(_i: u64, walk: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer rewrite_options gave it.
    let walk = unsafe { &mut *(walk as *mut Options) };
    let ctx = TcContext::new(walk.skb);
    let at = walk.at;
    if at >= walk.end {
        return 1;
    }
    let Ok(kind) = ctx.load::<u8>(at as usize) else {
        return 1;
    };
    match kind {
        OPT_EOL => return 1,
        OPT_NOP => {
            walk.at = at + 1;
            return 0;
        }
        _ => {}
    }
    let Ok(len) = ctx.load::<u8>(at as usize + 1) else {
        return 1;
    };
    let len = len as u32;
    if len < 2 || at + len > walk.end {
        return 1;
    }
    if kind == OPT_MSS && len == 4 {
        lower_mss(&ctx, walk, at + 2);
    } else if kind == OPT_WSCALE && len == 3 {
        for i in 0..3 {
            let _ = replace_byte(&ctx, walk, at + i, OPT_NOP);
        }
    }
    walk.at = at + len;
    0
}

/// The MSS at `at` (two bytes, big-endian), lowered to the slice's bytes.
#[inline(always)]
fn lower_mss(ctx: &TcContext, walk: &Options, at: u32) {
    let Ok(mss) = ctx.load::<[u8; 2]>(at as usize) else {
        return;
    };
    if u16::from_be_bytes(mss) as u32 <= walk.bytes {
        return;
    }
    let lowered = (walk.bytes as u16).to_be_bytes();
    let _ = replace_byte(ctx, walk, at, lowered[0]);
    let _ = replace_byte(ctx, walk, at + 1, lowered[1]);
}

/// Writes `new` at frame offset `at` and fixes the checksum up. The checksum adds 16-bit
/// words counted from the TCP header: a byte at an even distance from it is a word's high
/// (first) byte, at an odd one its low byte, so the change is that of [byte, 0] or [0, byte].
#[inline(always)]
fn replace_byte(ctx: &TcContext, walk: &Options, at: u32, new: u8) -> Result<(), i64> {
    let old: u8 = ctx.load(at as usize)?;
    if old == new {
        return Ok(());
    }
    ctx.store(at as usize, &new, 0)?;
    let (from, to) = if (at - walk.l4) & 1 == 0 {
        ([old, 0], [new, 0])
    } else {
        ([0, old], [0, new])
    };
    ctx.l4_csum_replace(
        walk.checksum as usize,
        u16::from_ne_bytes(from) as u64,
        u16::from_ne_bytes(to) as u64,
        walk.flags as u64,
    )
}
