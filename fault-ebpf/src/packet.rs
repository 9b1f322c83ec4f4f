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

/// What the fault rules need to know about a packet.
pub struct Packet {
    pub family: u8,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Addresses in network byte order; IPv4 in word 0.
    pub src_addr: [u32; 4],
    pub dst_addr: [u32; 4],
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
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Option<Packet> {
    let ether_type = u16::from_be(read::<u16>(data, data_end, 12)?);
    let (family, protocol, l4, src_addr, dst_addr) = match ether_type {
        ETH_P_IP => parse_ipv4(data, data_end)?,
        ETH_P_IPV6 => parse_ipv6(data, data_end)?,
        _ => return None,
    };
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return None;
    }
    let src_port = u16::from_be(read::<u16>(data, data_end, l4)?);
    let dst_port = u16::from_be(read::<u16>(data, data_end, l4 + 2)?);
    Some(Packet {
        family,
        protocol,
        src_port,
        dst_port,
        src_addr,
        dst_addr,
    })
}

type L3 = (u8, u8, usize, [u32; 4], [u32; 4]);

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
    let protocol: u8 = read(data, data_end, ETH_HLEN + 9)?;
    let src: u32 = read(data, data_end, ETH_HLEN + 12)?;
    let dst: u32 = read(data, data_end, ETH_HLEN + 16)?;
    Some((
        PEER_V4,
        protocol,
        ETH_HLEN + header_len,
        [src, 0, 0, 0],
        [dst, 0, 0, 0],
    ))
}

#[inline(always)]
fn parse_ipv6(data: usize, data_end: usize) -> Option<L3> {
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
    Some((PEER_V6, next, offset, src, dst))
}
