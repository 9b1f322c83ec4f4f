//! Header parsing shared by every hook: Ethernet (with up to two VLAN tags) or no link
//! header at all (tun, WireGuard), IPv4/IPv6 (options, extension headers, the Fragment
//! header, BIG TCP and jumbogram lengths), TCP/UDP.
//!
//! Lengths are taken from the headers and held to what the packet really has: a header
//! that says more than the packet carries is believed only as far as the packet goes, and
//! one that says less than its own header (IHL < 5, TCP data offset < 5) makes the packet
//! one the faults leave alone.

use core::mem::{MaybeUninit, size_of};
use core::ptr::{read_volatile, write_volatile};

use fault_common::{PEER_V4, PEER_V6, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
/// 802.1Q and 802.1ad (QinQ) tag protocol ids.
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Tags followed in front of the IP header: one 802.1Q tag, or a QinQ pair.
const MAX_VLAN_TAGS: usize = 2;
const VLAN_HLEN: usize = 4;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// IPv6 extension headers stepped over to find TCP/UDP: hop-by-hop, routing, destination
/// options, and the Fragment header (only a first fragment, offset 0, has the ports).
const IPV6_EXT_HOP: u8 = 0;
const IPV6_EXT_ROUTING: u8 = 43;
const IPV6_EXT_FRAGMENT: u8 = 44;
const IPV6_EXT_DEST: u8 = 60;
/// At most this many extension headers are followed (each read is a bounds check the
/// verifier walks); a packet with a longer chain is left alone, as docs/reference.md says.
pub const MAX_IPV6_EXT: usize = 8;
/// RFC 2675: the Jumbo Payload option, first in a hop-by-hop header, when the IPv6 payload
/// length is 0.
const IPV6_OPT_JUMBO: u8 = 0xC2;

/// How a hook's packets begin: `LINK_ETHERNET`, or no link header, with the IP version
/// given (`ETH_P_IP`/`ETH_P_IPV6`, from `skb->protocol` at TC) or read from the first
/// nibble (`LINK_L3_BY_VERSION`, at XDP).
pub const LINK_ETHERNET: u32 = 0;
pub const LINK_L3_BY_VERSION: u32 = 1;
/// No link header, and not IP: nothing to parse.
pub const LINK_NOT_IP: u32 = 0xffff;

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
    /// Offsets from the start of the frame of the IP header, of the L4 header and of its
    /// payload.
    pub l3_offset: u32,
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

/// A frame as the program sees it: where its data begins and ends, and how it begins
/// (`LINK_*`, or the IP ethertype of an L3 device).
#[derive(Copy, Clone)]
pub struct Frame {
    pub data: usize,
    pub data_end: usize,
    pub link: u32,
}

/// Where a program reads its frame from, as often as it needs it: reading it again is cheaper
/// than holding it through code that needs the registers (see main.rs, `Context`).
pub trait FrameSource {
    fn frame(&self) -> Frame;
}

/// What the pass-through test needs of a packet: its IP protocol and ports, read by
/// [`peek`] without the full parse.
#[derive(Copy, Clone)]
pub struct Peek {
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// `PEER_V4` or `PEER_V6`, and where the IP header begins (for a later check on the
    /// addresses, which are not read here).
    pub family: u8,
    pub l3_offset: u32,
}

impl Peek {
    /// The last 32-bit words of the source and destination addresses, as [`Packet`] holds
    /// them (`src_addr[0]` for IPv4, `src_addr[3]` for IPv6), read where `parse` reads them;
    /// `None` when the frame ends before them.
    #[inline(always)]
    pub fn address_tails(&self, data: usize, data_end: usize) -> Option<(u32, u32)> {
        let l3 = self.l3_offset as usize;
        let (src, dst) = if self.family == PEER_V4 {
            (l3 + 12, l3 + 16)
        } else {
            (l3 + 8 + 12, l3 + 24 + 12)
        };
        Some((word_at(data, data_end, src)?, word_at(data, data_end, dst)?))
    }
}

/// Four bytes at `offset` in the order the packet carries them, read one by one through a
/// checked pointer (no copy on the caller's stack: see [`peek`]).
#[inline(always)]
fn word_at(data: usize, data_end: usize, offset: usize) -> Option<u32> {
    let at = ptr_at::<[u8; 4]>(data, data_end, offset)?;
    // SAFETY: ptr_at checked the bounds.
    Some(unsafe { u32::from_ne_bytes([(*at)[0], (*at)[1], (*at)[2], (*at)[3]]) })
}

/// The ports of the most common frames, read with two bounds checks: Ethernet without a
/// VLAN tag, or no link header with the IP version known (`LINK_*` as for [`parse`]);
/// IPv4 (any IHL of at least 5) or IPv6 without extension headers. `None` for any other
/// shape, which then takes the full [`parse`].
///
/// For every frame `parse` accepts, the ports here are the ones it finds (same offsets).
/// For frames it rejects (a later IPv4 fragment, a TCP data offset below 5) these may be
/// anything; that is harmless, as such a frame passes untouched either way: here if its
/// "ports" have no faults, after `parse` otherwise. IPv4 protocols other than TCP and UDP
/// pass here too (no fault is on them), but an IPv6 next header other than TCP or UDP may be
/// an extension header with TCP behind it, so it goes to `parse`.
///
/// Reading through checked pointers rather than copying headers out: it needs no stack, so
/// inlined into the programs (whose frames lie on the deepest call chain, which 6.1's
/// verifier holds to 512 bytes) it adds nothing to their frames; the ports are one 32-bit
/// load ([`load_u32`]), which keeps the registers it needs few enough for nothing to spill.
#[inline(always)]
pub fn peek(data: usize, data_end: usize, link: u32) -> Option<Peek> {
    let (ether_type, l3) = match link {
        LINK_ETHERNET => {
            let eth = ptr_at::<[u8; ETH_HLEN]>(data, data_end, 0)?;
            // SAFETY: ptr_at checked the bounds.
            unsafe { (u16::from_be_bytes([(*eth)[12], (*eth)[13]]), ETH_HLEN) }
        }
        LINK_L3_BY_VERSION => return None,
        ether_type => (ether_type as u16, 0),
    };
    let (family, protocol, l4) = match ether_type {
        ETH_P_IP => {
            let ip = ptr_at::<[u8; IPV4_HLEN]>(data, data_end, l3)?;
            // SAFETY: ptr_at checked the bounds.
            let (first, protocol) = unsafe { ((*ip)[0], (*ip)[9]) };
            let header_len = (first & 0x0f) as usize * 4;
            if header_len < IPV4_HLEN {
                return None;
            }
            (PEER_V4, protocol, l3 + header_len)
        }
        ETH_P_IPV6 => {
            let ip = ptr_at::<[u8; 8]>(data, data_end, l3)?;
            // SAFETY: ptr_at checked the bounds.
            let next = unsafe { (*ip)[6] };
            if next != PROTO_TCP && next != PROTO_UDP {
                return None;
            }
            (PEER_V6, next, l3 + IPV6_HLEN)
        }
        _ => return None,
    };
    let ports = ptr_at::<[u8; 4]>(data, data_end, l4)?;
    // SAFETY: ptr_at checked the bounds.
    let ports = u32::from_be(unsafe { load_u32(ports.cast()) });
    let (src_port, dst_port) = ((ports >> 16) as u16, ports as u16);
    Some(Peek {
        protocol,
        src_port,
        dst_port,
        family,
        l3_offset: l3 as u32,
    })
}

/// The four bytes at `p` as one 32-bit load, aligned or not. LLVM splits an unaligned read
/// into byte loads, shifts and ors (BPF's default: no misaligned access), which also holds
/// twice the registers; the verifier lets packet data be read unaligned where the CPU can
/// (every architecture faultd is built for), and so does the JIT.
///
/// # Safety
/// `p` points to four readable bytes of the packet.
#[inline(always)]
unsafe fn load_u32(p: *const u32) -> u32 {
    let value: u64;
    // SAFETY: the caller's.
    unsafe {
        core::arch::asm!(
            "{value} = *(u32 *)({p} + 0)",
            p = in(reg) p,
            value = out(reg) value,
            options(nostack, readonly, pure),
        );
    }
    value as u32
}

/// [`parse`]'s result: `PARSED`, or why the frame is not for the faults, in the low byte,
/// with a detail (ethertype, offset, protocol…) above it, for the kernel-side log.
pub const PARSED: u32 = 0;
use fault_common::{
    LOG_PARSE_EXT_CHAIN as SKIP_EXT_CHAIN, LOG_PARSE_FRAGMENT as SKIP_FRAGMENT,
    LOG_PARSE_IHL as SKIP_IHL, LOG_PARSE_NOT_IP as SKIP_NOT_IP,
    LOG_PARSE_NOT_TCP_UDP as SKIP_NOT_TCP_UDP, LOG_PARSE_TCP_OFFSET as SKIP_TCP_OFFSET,
    LOG_PARSE_TRUNCATED as SKIP_TRUNCATED,
};

/// Reads a `T` at `offset`, or fails as a truncated header at that offset.
#[inline(always)]
fn need<T: Copy>(data: usize, data_end: usize, offset: usize) -> Result<T, u32> {
    read(data, data_end, offset).ok_or(SKIP_TRUNCATED | (offset as u32) << 8)
}

/// Parses a frame into `*out`; [`PARSED`] when it is TCP or UDP over IP, and then every
/// field of `*out` is written; else a `SKIP_*` reason (see [`PARSED`]). `link` says how the
/// frame begins (`LINK_*`, or the IP ethertype of an L3 device); `len` is the packet's whole
/// length (`skb->len` at TC: a GSO packet is longer than its linear data).
///
/// Not inlined, and writing in place rather than returning a `Packet`: its stack frame is
/// then small, which matters because kernels before 6.6 (Debian's 6.1) add the frames of
/// subprograms that do not call each other when they check the 512-byte stack limit.
/// The reason is a plain number, and only turned into words by crate::log, out of here.
#[inline(never)]
pub fn parse(data: usize, data_end: usize, link: u32, len: u32, out: *mut Packet) -> u32 {
    // SAFETY: `out` points to a Packet-sized slot of the caller's stack.
    match unsafe { parse_into(data, data_end, link, len, &mut *out) } {
        Ok(()) => PARSED,
        Err(why) => why,
    }
}

#[inline(always)]
fn parse_into(
    data: usize,
    data_end: usize,
    link: u32,
    len: u32,
    pkt: &mut Packet,
) -> Result<(), u32> {
    let (ether_type, l3) = match link {
        LINK_ETHERNET => link_header(data, data_end)?,
        // Two bytes: LLVM turns a one-byte bounds check into `data < data_end`, from which
        // the verifier learns nothing.
        LINK_L3_BY_VERSION => match need::<[u8; 2]>(data, data_end, 0)?[0] >> 4 {
            4 => (ETH_P_IP, 0),
            6 => (ETH_P_IPV6, 0),
            v => return Err(SKIP_NOT_IP | (v as u32) << 8),
        },
        ether_type => (ether_type as u16, 0),
    };
    // 0, 14, 18 or 22: forgotten, so that the verifier walks what follows once, not once
    // for each (see `forget`).
    let l3 = forget(l3 as u16) as usize & 0x1f;
    // What the packet has from its IP header on: the most any IP length may claim.
    let ip_len = len.saturating_sub(l3 as u32);
    let (l4, l4_total) = match ether_type {
        ETH_P_IP => parse_ipv4(data, data_end, l3, ip_len, pkt)?,
        ETH_P_IPV6 => parse_ipv6(data, data_end, l3, ip_len, pkt)?,
        _ => return Err(SKIP_NOT_IP | (ether_type as u32) << 8),
    };
    if pkt.protocol != PROTO_TCP && pkt.protocol != PROTO_UDP {
        return Err(SKIP_NOT_TCP_UDP | (pkt.protocol as u32) << 8);
    }
    pkt.l3_offset = l3 as u32;
    pkt.l4_offset = l4 as u32;
    // Each header is read whole with one bounds check: the verifier tracks one range per
    // packet pointer, and separate reads at variable offsets lose it.
    if pkt.protocol == PROTO_TCP {
        let tcp: [u8; 20] = need(data, data_end, l4)?;
        let header_len = ((tcp[12] >> 4) as u32) * 4;
        // A data offset short of the fixed header would put the "payload" inside it.
        if header_len < 20 {
            return Err(SKIP_TCP_OFFSET | header_len << 8);
        }
        pkt.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
        pkt.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
        pkt.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        pkt.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
        pkt.tcp_flags = tcp[13];
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

/// The ethertype after the Ethernet header and up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad
/// tags, and where the header it names begins.
#[inline(always)]
fn link_header(data: usize, data_end: usize) -> Result<(u16, usize), u32> {
    let mut ether_type = u16::from_be(need::<u16>(data, data_end, 12)?);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            break;
        }
        // The tag: TCI, then the ethertype of what follows.
        let tag: [u8; 4] = need(data, data_end, offset)?;
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += VLAN_HLEN;
    }
    Ok((ether_type, offset))
}

/// Fills in family, protocol and addresses; returns the L4 offset and the L4 length
/// (header + payload). `avail` is what the packet has from the IP header on.
#[inline(always)]
fn parse_ipv4(
    data: usize,
    data_end: usize,
    l3: usize,
    avail: u32,
    pkt: &mut Packet,
) -> Result<(usize, u32), u32> {
    let ip: [u8; IPV4_HLEN] = need(data, data_end, l3)?;
    let header_len = ((ip[0] & 0x0f) as u32) * 4;
    if header_len < IPV4_HLEN as u32 {
        return Err(SKIP_IHL | header_len << 8);
    }
    // Only the first fragment carries the ports.
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if frag != 0 {
        return Err(SKIP_FRAGMENT | (frag as u32) << 8);
    }
    // BIG TCP sends IPv4 packets over 64 KiB with a total length of 0.
    let mut total = u16::from_be_bytes([ip[2], ip[3]]) as u32;
    if total == 0 || total > avail {
        total = avail;
    }
    pkt.family = PEER_V4;
    pkt.protocol = ip[9];
    pkt.src_addr = [
        u32::from_ne_bytes([ip[12], ip[13], ip[14], ip[15]]),
        0,
        0,
        0,
    ];
    pkt.dst_addr = [
        u32::from_ne_bytes([ip[16], ip[17], ip[18], ip[19]]),
        0,
        0,
        0,
    ];
    Ok((l3 + header_len as usize, total.saturating_sub(header_len)))
}

#[inline(always)]
fn parse_ipv6(
    data: usize,
    data_end: usize,
    l3: usize,
    avail: u32,
    pkt: &mut Packet,
) -> Result<(usize, u32), u32> {
    let ip: [u8; IPV6_HLEN] = need(data, data_end, l3)?;
    let payload = u16::from_be_bytes([ip[4], ip[5]]) as u32;
    let mut next = ip[6];
    pkt.src_addr = addr_words(&ip, 8);
    pkt.dst_addr = addr_words(&ip, 24);
    // Payload length 0: a jumbogram (RFC 2675: its length in a Jumbo Payload option, first
    // in the hop-by-hop header) or a BIG TCP packet (no option: the packet's own length).
    let after_header = avail.saturating_sub(IPV6_HLEN as u32);
    let mut total = payload;
    if total == 0 {
        total = after_header;
        if next == IPV6_EXT_HOP {
            let hop: [u8; 8] = need(data, data_end, l3 + IPV6_HLEN)?;
            if hop[2] == IPV6_OPT_JUMBO && hop[3] == 4 {
                total = u32::from_be_bytes([hop[4], hop[5], hop[6], hop[7]]);
            }
        }
    }
    if total > after_header {
        total = after_header;
    }
    let mut offset = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT {
        if !is_ipv6_ext(next) {
            break;
        }
        let hdr: [u8; 8] = need(data, data_end, offset)?;
        if next == IPV6_EXT_FRAGMENT {
            // Only the first fragment has the ports. The byte after the next header is
            // reserved (zero) in a Fragment header: then (0 + 1) * 8 below is its length;
            // a packet that says otherwise is left alone.
            let frag = u16::from_be_bytes([hdr[2], hdr[3]]) >> 3;
            if frag != 0 || hdr[1] != 0 {
                return Err(SKIP_FRAGMENT | (frag as u32) << 8);
            }
        }
        next = hdr[0];
        // Forgotten at each step: a Fragment header's path knows its length byte is 0,
        // the others' do not, and without this the paths would double at every header.
        offset = forget((offset + (hdr[1] as usize + 1) * 8) as u16) as usize & 0x7fff;
    }
    if is_ipv6_ext(next) {
        return Err(SKIP_EXT_CHAIN | (next as u32) << 8);
    }
    // At most 31 + 40 + 8 * 2048 (masked to 15 bits at each step); forgotten like l3, so
    // that the loop's exits meet.
    let offset = forget(offset as u16) as usize & 0x7fff;
    let ext_len = (offset as u32).saturating_sub(l3 as u32 + IPV6_HLEN as u32);
    pkt.family = PEER_V6;
    pkt.protocol = next;
    Ok((offset, total.saturating_sub(ext_len)))
}

/// `v`, as a number the verifier knows nothing about. The verifier follows every constant
/// and range it can; paths that differ only in such a number (how many VLAN tags, how many
/// extension headers) never meet, and the work of checking what follows multiplies with
/// each. A store to the stack at an offset that is not a multiple of 8 is not followed: the
/// number read back is any u16, and the caller bounds it again with a mask.
#[inline(always)]
fn forget(v: u16) -> u16 {
    let mut slot = MaybeUninit::<u64>::uninit();
    // SAFETY: two bytes inside an 8-byte stack slot, written before they are read.
    unsafe {
        let at = slot.as_mut_ptr().cast::<u16>().add(1);
        write_volatile(at, v);
        read_volatile(at)
    }
}

/// An IPv6 address as four words in network byte order, as the rules compare them.
#[inline(always)]
fn addr_words(ip: &[u8; IPV6_HLEN], at: usize) -> [u32; 4] {
    let word = |i: usize| {
        let k = at + 4 * i;
        u32::from_ne_bytes([ip[k], ip[k + 1], ip[k + 2], ip[k + 3]])
    };
    [word(0), word(1), word(2), word(3)]
}

fn is_ipv6_ext(next: u8) -> bool {
    next == IPV6_EXT_HOP
        || next == IPV6_EXT_ROUTING
        || next == IPV6_EXT_FRAGMENT
        || next == IPV6_EXT_DEST
}
