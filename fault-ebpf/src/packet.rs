//! Header parsing shared by every hook: Ethernet, IPv4/IPv6, TCP/UDP.

use core::mem::size_of;

use fault_common::{PEER_V4, PEER_V6, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers we step over to find TCP/UDP: hop-by-hop, routing, destination
/// options. Fragments are not followed (only the first fragment has the ports).
const IPV6_EXT_HOP: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_DEST: u8 = 60;
const MAX_IPV6_EXT: usize = 4;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the fault rules need to know about a packet.
pub struct Packet {
    pub family: u8,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Addresses in network byte order; IPv4 in word 0.
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
    /// L4 payload bytes (for a GSO packet, of the whole super-packet).
    pub payload_len: u32,
    /// TCP only (zero for UDP): flags, sequence and acknowledgment numbers (host order).
    pub tcp_flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Offsets from the start of the frame of the L4 header and of its payload.
    pub l4_offset: u32,
    pub payload_offset: u32,
}

impl Packet {
    /// A SYN without ACK: a new connection attempt.
    pub fn is_syn(&self) -> bool {
        self.protocol == PROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    pub fn is_rst(&self) -> bool {
        self.tcp_flags & TCP_RST != 0
    }

    /// Where the L4 checksum sits in the frame.
    pub fn checksum_offset(&self) -> u32 {
        self.l4_offset + if self.protocol == PROTO_TCP { 16 } else { 6 }
    }
}

/// Returns a pointer to a `T` at `offset`, or `None` when it would run past the packet.
#[inline(always)]
fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*const T> {
    if data + offset + size_of::<T>() > data_end {
        return None;
    }
    Some((data + offset) as *const T)
}

#[inline(always)]
fn read<T: Copy>(data: usize, data_end: usize, offset: usize) -> Option<T> {
    // SAFETY: ptr_at checked the bounds; packet data may be unaligned.
    ptr_at::<T>(data, data_end, offset).map(|p| unsafe { p.read_unaligned() })
}

/// [`parse`]'s result: `PARSED`, or why the frame is not for the faults, in the low byte,
/// with a detail (ethertype, offset, protocol…) above it, for the kernel-side log.
pub const PARSED: u32 = 0;
use fault_common::{
    LOG_PARSE_FRAGMENT as SKIP_FRAGMENT, LOG_PARSE_IHL as SKIP_IHL,
    LOG_PARSE_NOT_IP as SKIP_NOT_IP, LOG_PARSE_NOT_TCP_UDP as SKIP_NOT_TCP_UDP,
    LOG_PARSE_TRUNCATED as SKIP_TRUNCATED,
};

/// Reads a `T` at `offset`, or fails as a truncated header at that offset.
#[inline(always)]
fn need<T: Copy>(data: usize, data_end: usize, offset: usize) -> Result<T, u32> {
    read(data, data_end, offset).ok_or(SKIP_TRUNCATED | (offset as u32) << 8)
}

/// Parses an Ethernet frame into `*out`; [`PARSED`] when it is TCP or UDP over IP, and then
/// every field of `*out` is written; else a `SKIP_*` reason (see [`PARSED`]).
///
/// Not inlined, and writing in place rather than returning a `Packet`: its stack frame is
/// then small, which matters because kernels before 6.6 (Debian's 6.1) add the frames of
/// subprograms that do not call each other when they check the 512-byte stack limit.
/// The reason is a plain number, and only turned into words by crate::log, out of here.
#[inline(never)]
pub fn parse(data: usize, data_end: usize, out: *mut Packet) -> u32 {
    // SAFETY: `out` points to a Packet-sized slot of the caller's stack.
    match unsafe { parse_into(data, data_end, &mut *out) } {
        Ok(()) => PARSED,
        Err(why) => why,
    }
}

#[inline(always)]
fn parse_into(data: usize, data_end: usize, pkt: &mut Packet) -> Result<(), u32> {
    let ether_type = u16::from_be(need::<u16>(data, data_end, 12)?);
    let (l4, l4_total) = match ether_type {
        ETH_P_IP => parse_ipv4(data, data_end, pkt)?,
        ETH_P_IPV6 => parse_ipv6(data, data_end, pkt)?,
        _ => return Err(SKIP_NOT_IP | (ether_type as u32) << 8),
    };
    if pkt.protocol != PROTO_TCP && pkt.protocol != PROTO_UDP {
        return Err(SKIP_NOT_TCP_UDP | (pkt.protocol as u32) << 8);
    }
    pkt.l4_offset = l4 as u32;
    // Each header is read whole with one bounds check: the verifier tracks one range per
    // packet pointer, and separate reads at variable offsets lose it.
    if pkt.protocol == PROTO_TCP {
        let tcp: [u8; 20] = need(data, data_end, l4)?;
        pkt.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        pkt.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        pkt.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        pkt.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        pkt.tcp_flags = tcp[13];
        let header_len = ((tcp[12] >> 4) as u32) * 4;
        pkt.payload_len = l4_total.saturating_sub(header_len);
        pkt.payload_offset = l4 as u32 + header_len;
    } else {
        let udp: [u8; 8] = need(data, data_end, l4)?;
        pkt.src_port = u16::from_be_bytes([udp[0], udp[1]]);
        pkt.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
        pkt.seq = 0;
        pkt.ack = 0;
        pkt.tcp_flags = 0;
        pkt.payload_len = l4_total.saturating_sub(8);
        pkt.payload_offset = l4 as u32 + 8;
    }
    Ok(())
}

/// Fills in family, protocol and addresses; returns the L4 offset and the L4 length
/// (header + payload).
#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize, pkt: &mut Packet) -> Result<(usize, u32), u32> {
    let version_ihl: u8 = need(data, data_end, ETH_HLEN)?;
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return Err(SKIP_IHL | (header_len as u32) << 8);
    }
    // Only the first fragment carries the ports.
    let frag: u16 = u16::from_be(need(data, data_end, ETH_HLEN + 6)?);
    if frag & 0x1fff != 0 {
        return Err(SKIP_FRAGMENT | ((frag & 0x1fff) as u32) << 8);
    }
    let total: u16 = u16::from_be(need(data, data_end, ETH_HLEN + 2)?);
    pkt.family = PEER_V4;
    pkt.protocol = need(data, data_end, ETH_HLEN + 9)?;
    pkt.src_addr = [need(data, data_end, ETH_HLEN + 12)?, 0, 0, 0];
    pkt.dst_addr = [need(data, data_end, ETH_HLEN + 16)?, 0, 0, 0];
    Ok((
        ETH_HLEN + header_len,
        (total as u32).saturating_sub(header_len as u32),
    ))
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize, pkt: &mut Packet) -> Result<(usize, u32), u32> {
    let payload: u16 = u16::from_be(need(data, data_end, ETH_HLEN + 4)?);
    let mut next: u8 = need(data, data_end, ETH_HLEN + 6)?;
    pkt.src_addr = need(data, data_end, ETH_HLEN + 8)?;
    pkt.dst_addr = need(data, data_end, ETH_HLEN + 24)?;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT {
        if next != IPV6_EXT_HOP && next != IPV6_EXT_ROUTING && next != IPV6_EXT_DEST {
            break;
        }
        let hdr: [u8; 2] = need(data, data_end, offset)?;
        next = hdr[0];
        offset += (hdr[1] as usize + 1) * 8;
    }
    let ext_len = (offset - ETH_HLEN - IPV6_HLEN) as u32;
    pkt.family = PEER_V6;
    pkt.protocol = next;
    Ok((offset, (payload as u32).saturating_sub(ext_len)))
}
