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

/// Parses an Ethernet frame; `None` for anything that is not TCP or UDP over IP.
/// Not inlined: its frame on the stack is a sibling of the rule walk's, not added to it.
#[inline(never)]
pub fn parse(data: usize, data_end: usize) -> Option<Packet> {
    let ether_type = u16::from_be(read::<u16>(data, data_end, 12)?);
    let (family, protocol, l4, l4_total, src_addr, dst_addr) = match ether_type {
        ETH_P_IP => parse_ipv4(data, data_end)?,
        ETH_P_IPV6 => parse_ipv6(data, data_end)?,
        _ => return None,
    };
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return None;
    }
    let mut pkt = Packet {
        family,
        protocol,
        src_port: 0,
        dst_port: 0,
        src_addr,
        dst_addr,
        payload_len: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        l4_offset: l4 as u32,
        payload_offset: 0,
    };
    // Each header is read whole with one bounds check: the verifier tracks one range per
    // packet pointer, and separate reads at variable offsets lose it.
    if protocol == PROTO_TCP {
        let tcp: [u8; 20] = read(data, data_end, l4)?;
        pkt.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        pkt.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        pkt.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        pkt.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        pkt.tcp_flags = tcp[13];
        let header_len = ((tcp[12] >> 4) as u32) * 4;
        pkt.payload_len = l4_total.saturating_sub(header_len);
        pkt.payload_offset = l4 as u32 + header_len;
    } else {
        let udp: [u8; 8] = read(data, data_end, l4)?;
        pkt.src_port = u16::from_be_bytes([udp[0], udp[1]]);
        pkt.dst_port = u16::from_be_bytes([udp[2], udp[3]]);
        pkt.payload_len = l4_total.saturating_sub(8);
        pkt.payload_offset = l4 as u32 + 8;
    }
    Some(pkt)
}

/// family, protocol, L4 offset, L4 length (header + payload), source, destination.
type L3 = (u8, u8, usize, u32, [u32; 4], [u32; 4]);

#[inline(always)]
fn parse_ipv4(data: usize, data_end: usize) -> Option<L3> {
    let version_ihl: u8 = read(data, data_end, ETH_HLEN)?;
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if header_len < 20 {
        return None;
    }
    // Only the first fragment carries the ports.
    let frag: u16 = u16::from_be(read(data, data_end, ETH_HLEN + 6)?);
    if frag & 0x1fff != 0 {
        return None;
    }
    let total: u16 = u16::from_be(read(data, data_end, ETH_HLEN + 2)?);
    let protocol: u8 = read(data, data_end, ETH_HLEN + 9)?;
    let src: u32 = read(data, data_end, ETH_HLEN + 12)?;
    let dst: u32 = read(data, data_end, ETH_HLEN + 16)?;
    Some((
        PEER_V4,
        protocol,
        ETH_HLEN + header_len,
        (total as u32).saturating_sub(header_len as u32),
        [src, 0, 0, 0],
        [dst, 0, 0, 0],
    ))
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize) -> Option<L3> {
    let payload: u16 = u16::from_be(read(data, data_end, ETH_HLEN + 4)?);
    let mut next: u8 = read(data, data_end, ETH_HLEN + 6)?;
    let src: [u32; 4] = read(data, data_end, ETH_HLEN + 8)?;
    let dst: [u32; 4] = read(data, data_end, ETH_HLEN + 24)?;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT {
        if next != IPV6_EXT_HOP && next != IPV6_EXT_ROUTING && next != IPV6_EXT_DEST {
            break;
        }
        let hdr: [u8; 2] = read(data, data_end, offset)?;
        next = hdr[0];
        offset += (hdr[1] as usize + 1) * 8;
    }
    let ext_len = (offset - ETH_HLEN - IPV6_HLEN) as u32;
    Some((
        PEER_V6,
        next,
        offset,
        (payload as u32).saturating_sub(ext_len),
        src,
        dst,
    ))
}
