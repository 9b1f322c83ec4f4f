//! Forging a TCP RST in place of a packet, addressed back to the packet's sender, and for a
//! flow a limit cuts, a second one to its receiver.
//!
//! RFC 793, "Reset Generation": if the offending segment has ACK set, the RST takes its
//! sequence number from the segment's acknowledgment number (exactly the sender's
//! `rcv_nxt`, so it is accepted at once); otherwise the RST has sequence 0 and acknowledges
//! the segment (sequence + payload + SYN + FIN), with ACK set.
//!
//! The receiver's RST ([`Ends::Both`]) goes the packet's own way, from its sender's address
//! and port, with the packet's sequence number: the receiver has had every byte before it
//! (the limit passed them), so that is exactly its `rcv_nxt`, and RFC 5961 §3.2 (which
//! Linux follows) accepts a RST at once only with that sequence number; another in the
//! window only draws a challenge ACK, which then meets the cut flow and is answered with
//! its own sender's RST. It acknowledges what the packet acknowledged (ACK set when the
//! packet's was). It is the packet forged first and sent on by `bpf_clone_redirect`; the
//! packet itself is then forged again into the sender's RST.
//!
//! The packet is shrunk to the bare headers (no IP options or extension headers, no TCP
//! options, no payload) and its IP and TCP headers rewritten whole, with full, correct
//! IPv4 and TCP checksums computed here rather than left to offload. What comes before the
//! IP header stays: the Ethernet header with its addresses swapped and any VLAN tags as
//! they were, or nothing on a device without a link header.
//!
//! IPv4 options and IPv6 extension headers are taken out first, from the middle of the
//! packet (`bpf_skb_adjust_room`): shrinking from the tail alone cannot go below the end of
//! the TCP checksum of a CHECKSUM_PARTIAL packet (locally generated TCP), which sits past
//! the bare headers' length while they are in front of it.

use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_INGRESS, TC_ACT_OK, TC_ACT_REDIRECT},
    helpers::{bpf_clone_redirect, bpf_skb_adjust_room, bpf_skb_change_tail},
    programs::TcContext,
};
use fault_common::{PEER_V4, PROTO_TCP};

use crate::packet::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};
use crate::rules::{Effects, Hook};

const IPV4: usize = 20;
const IPV6: usize = 40;
const TCP: usize = 20;
const V4_LEN: usize = IPV4 + TCP;
const V6_LEN: usize = IPV6 + TCP;
/// `bpf_skb_adjust_room` mode: room at the network layer, right after the fixed IP header.
const BPF_ADJ_ROOM_NET: u32 = 0;
/// An IP header starts at least this far into an Ethernet frame; before it, nothing.
const ETH_HLEN: u32 = 14;

/// How the forged RST reaches the packet's sender.
pub enum Way {
    /// The packet was leaving a loopback, which hands it straight back to this host: let
    /// it go on. (Redirecting it would strip its route, and a 127.0.0.0/8 packet without
    /// one is dropped as a martian.)
    Onward,
    /// The packet was leaving through the interface: redirect the RST into this host.
    BackIn,
    /// The packet arrived on the interface: send the RST back out of it.
    BackOut,
}

/// Which ends of the flow get a RST.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Ends {
    /// The packet's sender (reset, refuse).
    Sender,
    /// Its receiver too (a limit's cut, `--then reset`): a reader blocked in `recv` at the
    /// other end gets ECONNRESET at once instead of waiting until it writes.
    Both,
}

/// Which way a forged RST travels.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Toward {
    /// Back to the packet's sender: addresses and ports swapped.
    Sender,
    /// On to the packet's receiver: addresses and ports as they are.
    Receiver,
}

/// Rewrites the packet into the RST for its sender and sends it there; when the verdict
/// was a limit's cut ([`Effects::take_cut`](crate::rules::Effects::take_cut) at `hook`),
/// first sends a copy forged into the RST for its receiver on the packet's way.
///
/// The TC verdict (TC_ACT_OK or TC_ACT_REDIRECT), or a helper's negative error, as one
/// number: a `Result` is returned through a pointer, one more argument, and a BPF call takes
/// at most five, in registers ("stack arguments are not supported").
///
/// Not inlined, so that its frame reuses the stack the rule walk used (see rules::decide):
/// the deepest chain through it is the program's frame (128) and this one, far from 6.1's
/// 512 bytes. The cut flag is read here, not in the program, whose frame lies on the rule
/// walk's chain, where 6.1 has no 8 bytes to spare (see try_tc).
#[inline(never)]
pub fn send_rst(ctx: &TcContext, pkt: &Packet, ifindex: u32, way: Way, hook: Hook) -> i64 {
    let ends = if Effects::take_cut(hook) {
        Ends::Both
    } else {
        Ends::Sender
    };
    match forge_and_send(ctx, pkt, ifindex, way, ends) {
        Ok(action) => action as i64,
        Err(e) if e < 0 => e,
        Err(_) => -1,
    }
}

#[inline(always)]
fn forge_and_send(
    ctx: &TcContext,
    pkt: &Packet,
    ifindex: u32,
    way: Way,
    ends: Ends,
) -> Result<i32, i64> {
    let l3 = pkt.l3_offset as usize;
    let v4 = pkt.family == PEER_V4;
    let fixed = if v4 { IPV4 } else { IPV6 };
    let extra = pkt.l4_offset as usize - l3 - fixed;
    if extra > 0 {
        shrink_network_header(ctx, extra)?;
    }
    resize(ctx, l3 + if v4 { V4_LEN } else { V6_LEN })?;
    if ends == Ends::Both {
        // The receiver's RST: the packet's link header as it is, its headers forged, sent
        // on the packet's way. Out of an egress hook the copy goes through dev_queue_xmit
        // inside the call and meets this program again at once, as a RST, which the cut
        // flow lets by (rules::limit); into an ingress hook it is queued to the backlog and
        // meets the ingress program later, likewise. On a loopback's egress it is sent out
        // of the loopback, which hands it to this host with the packet's route (a
        // redirect *into* lo would lose it: see Way::Onward). The copy shares the packet's
        // data until the stores below, which unshare it first (skb_ensure_writable).
        store_headers(ctx, pkt, l3, v4, Toward::Receiver)?;
        let flags = match way {
            Way::Onward | Way::BackIn => 0,
            Way::BackOut => BPF_F_INGRESS as u64,
        };
        // SAFETY: the context pointer is valid for the program's run; the helper copies
        // the skb and leaves the original to this program.
        let rc = unsafe { bpf_clone_redirect(ctx.skb.skb, ifindex, flags) };
        // A copy that could not be sent (no memory, the device down) leaves the receiver
        // to learn of the cut when it next writes, as a `reset` fault's receiver does: the
        // sender's RST still goes.
        let _ = rc;
    }
    if pkt.l3_offset >= ETH_HLEN {
        let macs: [u8; 12] = ctx.load(0)?;
        ctx.store(0, &swapped(&macs), 0)?;
    }
    store_headers(ctx, pkt, l3, v4, Toward::Sender)?;
    let flags = match way {
        Way::Onward => return Ok(TC_ACT_OK),
        Way::BackIn => BPF_F_INGRESS as u64,
        Way::BackOut => 0,
    };
    // SAFETY: plain helper call; the verdict it returns is TC_ACT_REDIRECT on success.
    let rc = unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, flags) };
    if rc != TC_ACT_REDIRECT as i64 {
        return Err(rc);
    }
    Ok(TC_ACT_REDIRECT)
}

/// Writes the IP and TCP headers of the RST going `toward` one end over the packet's (which
/// is already cut to their length).
#[inline(always)]
fn store_headers(
    ctx: &TcContext,
    pkt: &Packet,
    l3: usize,
    v4: bool,
    toward: Toward,
) -> Result<(), i64> {
    if v4 {
        ctx.store(l3, &v4_headers(pkt, toward), 0)
    } else {
        ctx.store(l3, &v6_headers(pkt, toward), 0)
    }
}

/// Takes `len` bytes of IPv4 options or IPv6 extension headers out from behind the fixed
/// IP header. The kernel refuses when `skb->protocol` is not IP (a VLAN tag left in the
/// data, as the inner tag of QinQ): such a packet is dropped without its RST.
#[inline(always)]
fn shrink_network_header(ctx: &TcContext, len: usize) -> Result<(), i64> {
    // SAFETY: the context pointer is valid for the program's run.
    let rc = unsafe {
        bpf_skb_adjust_room(
            ctx.skb.skb,
            -(len as i32),
            BPF_ADJ_ROOM_NET,
            BPF_F_ADJ_ROOM_FIXED_GSO as u64,
        )
    };
    if rc != 0 { Err(rc) } else { Ok(()) }
}

#[inline(always)]
fn swapped(macs: &[u8; 12]) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[0..6].copy_from_slice(&macs[6..12]);
    out[6..12].copy_from_slice(&macs[0..6]);
    out
}

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Result<(), i64> {
    // SAFETY: the context pointer is valid for the program's run. The helper also
    // linearises the skb and drops its GSO state: this is a control reply now.
    let rc = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) };
    if rc != 0 { Err(rc) } else { Ok(()) }
}

/// Sequence number, acknowledgment number and flags of the RST going `toward` one end.
#[inline(always)]
fn numbers(pkt: &Packet, toward: Toward) -> (u32, u32, u8) {
    match toward {
        Toward::Sender => rst_numbers(pkt),
        // The receiver's rcv_nxt is the packet's sequence number (see the module's notes).
        Toward::Receiver if pkt.tcp_flags & TCP_ACK != 0 => (pkt.seq, pkt.ack, TCP_RST | TCP_ACK),
        Toward::Receiver => (pkt.seq, 0, TCP_RST),
    }
}

/// Sequence number, acknowledgment number and flags of the RST answering `pkt`.
#[inline(always)]
fn rst_numbers(pkt: &Packet) -> (u32, u32, u8) {
    if pkt.tcp_flags & TCP_ACK != 0 {
        return (pkt.ack, 0, TCP_RST);
    }
    let mut seg_len = pkt.payload_len;
    if pkt.tcp_flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if pkt.tcp_flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    (0, pkt.seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
}

#[inline(always)]
fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// The (source, destination) addresses and ports of the RST going `toward` one end.
#[inline(always)]
fn endpoints(pkt: &Packet, toward: Toward) -> (&[u32; 4], &[u32; 4], u16, u16) {
    match toward {
        Toward::Sender => (&pkt.dst_addr, &pkt.src_addr, pkt.dst_port, pkt.src_port),
        Toward::Receiver => (&pkt.src_addr, &pkt.dst_addr, pkt.src_port, pkt.dst_port),
    }
}

/// TCP header of the RST going `toward` one end; checksum left zero.
#[inline(always)]
fn put_tcp(buf: &mut [u8], at: usize, pkt: &Packet, toward: Toward) {
    let (seq, ack, flags) = numbers(pkt, toward);
    let (_, _, src_port, dst_port) = endpoints(pkt, toward);
    put_u16(buf, at, src_port);
    put_u16(buf, at + 2, dst_port);
    put_u32(buf, at + 4, seq);
    put_u32(buf, at + 8, ack);
    buf[at + 12] = (TCP as u8 / 4) << 4;
    buf[at + 13] = flags;
    // Window, checksum and urgent pointer stay zero.
}

#[inline(always)]
fn v4_headers(pkt: &Packet, toward: Toward) -> [u8; V4_LEN] {
    let (src, dst, _, _) = endpoints(pkt, toward);
    let mut f = [0u8; V4_LEN];
    let ip = 0;
    f[ip] = 0x45;
    put_u16(&mut f, ip + 2, (IPV4 + TCP) as u16);
    put_u16(&mut f, ip + 6, 0x4000); // don't fragment
    f[ip + 8] = 64;
    f[ip + 9] = PROTO_TCP;
    f[ip + 12..ip + 16].copy_from_slice(&src[0].to_ne_bytes());
    f[ip + 16..ip + 20].copy_from_slice(&dst[0].to_ne_bytes());
    let ip_sum = sum_words(0, &f, ip, IPV4);
    put_u16(&mut f, ip + 10, !fold(ip_sum));

    let tcp = IPV4;
    put_tcp(&mut f, tcp, pkt, toward);
    // Pseudo-header: addresses, protocol, TCP length.
    let mut sum = sum_words(0, &f, ip + 12, 8);
    sum += PROTO_TCP as u32 + TCP as u32;
    sum = sum_words(sum, &f, tcp, TCP);
    put_u16(&mut f, tcp + 16, !fold(sum));
    f
}

#[inline(always)]
fn v6_headers(pkt: &Packet, toward: Toward) -> [u8; V6_LEN] {
    let (src, dst, _, _) = endpoints(pkt, toward);
    let mut f = [0u8; V6_LEN];
    let ip = 0;
    f[ip] = 0x60;
    put_u16(&mut f, ip + 4, TCP as u16);
    f[ip + 6] = PROTO_TCP;
    f[ip + 7] = 64;
    for i in 0..4 {
        f[ip + 8 + 4 * i..ip + 12 + 4 * i].copy_from_slice(&src[i].to_ne_bytes());
        f[ip + 24 + 4 * i..ip + 28 + 4 * i].copy_from_slice(&dst[i].to_ne_bytes());
    }
    let tcp = IPV6;
    put_tcp(&mut f, tcp, pkt, toward);
    let mut sum = sum_words(0, &f, ip + 8, 32);
    sum += PROTO_TCP as u32 + TCP as u32;
    sum = sum_words(sum, &f, tcp, TCP);
    put_u16(&mut f, tcp + 16, !fold(sum));
    f
}

/// One's-complement sum of the big-endian 16-bit words of `buf[at..at + len]` (len even).
#[inline(always)]
fn sum_words(mut sum: u32, buf: &[u8], at: usize, len: usize) -> u32 {
    let mut i = 0;
    while i < len {
        sum += ((buf[at + i] as u32) << 8) | buf[at + i + 1] as u32;
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}
