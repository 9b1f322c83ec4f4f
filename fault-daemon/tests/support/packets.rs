//! Hand-built Ethernet frames for program tests, and an independent parser and checksum
//! validator for the frames that come back out of a program.
//!
//! Nothing here shares code with the eBPF programs: the builder and the validator are written
//! from the RFCs (791, 793, 768, 8200, 1071) so that a test compares the programs against a
//! second, independent implementation.
//!
//! Include it from a test file with
//!
//! ```ignore
//! #[path = "support/packets.rs"]
//! mod packets;
//! use packets::{FrameBuilder, parse_frame, verify_checksums, tcp_flags::*};
//! ```
//!
//! Building:
//!
//! ```ignore
//! let syn = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:2379"))
//!     .flags(SYN)
//!     .seq(1000)
//!     .window(65535)
//!     .build();
//! let dgram = FrameBuilder::udp(sock("[fd00::1]:5353"), sock("[fd00::2]:53"))
//!     .ipv6_ext(Ipv6Ext::HopByHop, 0)
//!     .payload(b"query")
//!     .build();
//! ```
//!
//! Reading back:
//!
//! ```ignore
//! let f = parse_frame(&out)?;
//! assert_eq!(f.tcp().unwrap().flags, RST | ACK);
//! verify_checksums(&out)?;
//! ```
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Length of an Ethernet header (no VLAN tag).
pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86DD;

pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;

/// IP protocol numbers / IPv6 next-header values.
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_NONE: u8 = 59;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Default MAC addresses (locally administered) used when a test does not choose any.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

/// Parses `"10.0.0.1:80"` or `"[fd00::1]:80"`; panics on a typo (this is test code).
pub fn sock(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a socket address: {e}"))
}

/// Parses an IP address; panics on a typo.
pub fn ip(text: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not an IP address: {e}"))
}

// ---------------------------------------------------------------------------------------
// Checksums (RFC 1071)
// ---------------------------------------------------------------------------------------

/// Adds `data` as big-endian 16-bit words to a 32-bit accumulator (odd length: the last
/// byte is padded with a zero on the right). Fold with [`fold_checksum`].
pub fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so that long buffers never overflow the accumulator.
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Folds the carries and takes the one's complement: the value to store in a header.
pub fn fold_checksum(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data`. Over a header that already carries its checksum this
/// is 0 when the checksum is right.
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold_checksum(checksum_add(0, data))
}

/// Sum of the TCP/UDP pseudo-header: RFC 793 §3.1 for IPv4 (src, dst, zero, protocol,
/// length) and RFC 8200 §8.1 for IPv6 (src, dst, 32-bit length, zeros, next header).
/// `l4_len` is the length of the TCP/UDP header plus payload.
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, protocol: u8, l4_len: usize) -> u32 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut sum = checksum_add(0, &s.octets());
            sum = checksum_add(sum, &d.octets());
            sum = checksum_add(sum, &[0, protocol]);
            checksum_add(sum, &(l4_len as u16).to_be_bytes())
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut sum = checksum_add(0, &s.octets());
            sum = checksum_add(sum, &d.octets());
            sum = checksum_add(sum, &(l4_len as u32).to_be_bytes());
            checksum_add(sum, &[0, 0, 0, protocol])
        }
        _ => panic!("pseudo-header with mixed address families: {src} and {dst}"),
    }
}

/// The TCP/UDP checksum to store in a segment whose checksum field is zero. For UDP a
/// computed 0 is sent as 0xffff (RFC 768): 0 means "no checksum".
pub fn l4_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    let sum = checksum_add(
        pseudo_header_sum(src, dst, protocol, segment.len()),
        segment,
    );
    match fold_checksum(sum) {
        0 if protocol == IPPROTO_UDP => 0xffff,
        c => c,
    }
}

// ---------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------

/// An IPv6 extension header kind the builder can put in front of TCP/UDP.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    /// Hop-by-hop options (next header 0). RFC 8200 wants it first; the builder does not
    /// enforce order, so a test can build odd chains on purpose.
    HopByHop,
    /// Destination options (next header 60).
    DestinationOptions,
    /// Routing header (next header 43), type 0 with zero segments left: ignored by
    /// receivers, so it does not change the final destination.
    Routing,
}

impl Ipv6Ext {
    pub fn next_header(self) -> u8 {
        match self {
            Ipv6Ext::HopByHop => IPPROTO_HOPOPTS,
            Ipv6Ext::DestinationOptions => IPPROTO_DSTOPTS,
            Ipv6Ext::Routing => IPPROTO_ROUTING,
        }
    }
}

#[derive(Clone, Debug)]
struct TcpFields {
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    urgent: u16,
    options: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Transport {
    Tcp(TcpFields),
    Udp,
}

/// Builds one Ethernet frame carrying IPv4 or IPv6 (family taken from the addresses) with
/// TCP or UDP. Every length and checksum is computed in [`FrameBuilder::build`] unless a
/// test overrides it on purpose.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
    payload: Vec<u8>,
    ttl: u8,
    ipv4_id: u16,
    ipv4_dont_fragment: bool,
    ipv4_fragment: Option<(u16, bool)>,
    ipv4_options: Vec<u8>,
    ipv6_flow_label: u32,
    ipv6_ext: Vec<(Ipv6Ext, u8)>,
    tos: u8,
    l4_checksum: Option<u16>,
    eth_padding_to: usize,
}

impl FrameBuilder {
    fn new(src: SocketAddr, dst: SocketAddr, transport: Transport) -> Self {
        assert_eq!(
            src.is_ipv4(),
            dst.is_ipv4(),
            "source {src} and destination {dst} must be of one address family"
        );
        Self {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            src,
            dst,
            transport,
            payload: Vec::new(),
            ttl: 64,
            ipv4_id: 0x1234,
            ipv4_dont_fragment: true,
            ipv4_fragment: None,
            ipv4_options: Vec::new(),
            ipv6_flow_label: 0,
            ipv6_ext: Vec::new(),
            tos: 0,
            l4_checksum: None,
            eth_padding_to: 0,
        }
    }

    /// A TCP segment; by default flags ACK, seq 1, ack 1, window 65535, no options.
    pub fn tcp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Self {
        Self::new(
            src.into(),
            dst.into(),
            Transport::Tcp(TcpFields {
                flags: tcp_flags::ACK,
                seq: 1,
                ack: 1,
                window: 65535,
                urgent: 0,
                options: Vec::new(),
            }),
        )
    }

    /// A UDP datagram.
    pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Self {
        Self::new(src.into(), dst.into(), Transport::Udp)
    }

    /// TCP if `protocol` is 6, UDP if 17.
    pub fn with_protocol(
        protocol: u8,
        src: impl Into<SocketAddr>,
        dst: impl Into<SocketAddr>,
    ) -> Self {
        match protocol {
            IPPROTO_TCP => Self::tcp(src, dst),
            IPPROTO_UDP => Self::udp(src, dst),
            p => panic!("the builder makes TCP (6) or UDP (17), not protocol {p}"),
        }
    }

    pub fn src_mac(mut self, mac: [u8; 6]) -> Self {
        self.src_mac = mac;
        self
    }

    pub fn dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// IPv4 TOS / IPv6 traffic class.
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    pub fn ipv4_id(mut self, id: u16) -> Self {
        self.ipv4_id = id;
        self
    }

    /// Makes an IPv4 fragment: `offset` in 8-byte units, `more` = the MF bit. Only the
    /// first fragment (offset 0) carries the L4 header a filter can read.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        assert!(
            offset < 0x2000,
            "fragment offset {offset} does not fit 13 bits"
        );
        self.ipv4_fragment = Some((offset, more));
        self.ipv4_dont_fragment = false;
        self
    }

    /// IPv4 options (padded with End-of-Options to a multiple of 4 bytes, at most 40).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        let mut o = options.to_vec();
        o.resize(o.len().div_ceil(4) * 4, 0);
        assert!(o.len() <= 40, "IPv4 options are at most 40 bytes");
        self.ipv4_options = o;
        self
    }

    pub fn ipv6_flow_label(mut self, label: u32) -> Self {
        self.ipv6_flow_label = label & 0xf_ffff;
        self
    }

    /// Appends an IPv6 extension header (in chain order) of `8 * (len_units + 1)` bytes,
    /// filled with padding options (PadN/Pad1) for hop-by-hop and destination options.
    pub fn ipv6_ext(mut self, kind: Ipv6Ext, len_units: u8) -> Self {
        self.ipv6_ext.push((kind, len_units));
        self
    }

    /// TCP flags (see [`tcp_flags`]).
    pub fn flags(mut self, f: u8) -> Self {
        self.tcp_mut().flags = f;
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_mut().seq = seq;
        self
    }

    pub fn ack(mut self, ack: u32) -> Self {
        self.tcp_mut().ack = ack;
        self
    }

    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut().window = window;
        self
    }

    pub fn urgent(mut self, urgent: u16) -> Self {
        self.tcp_mut().urgent = urgent;
        self
    }

    /// TCP options, padded with End-of-Options to a multiple of 4 bytes (at most 40).
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        let mut o = options.to_vec();
        o.resize(o.len().div_ceil(4) * 4, 0);
        assert!(o.len() <= 40, "TCP options are at most 40 bytes");
        self.tcp_mut().options = o;
        self
    }

    /// Stores this value as the TCP/UDP checksum instead of the computed one (to build
    /// frames with a wrong checksum on purpose).
    pub fn l4_checksum_override(mut self, checksum: u16) -> Self {
        self.l4_checksum = Some(checksum);
        self
    }

    /// Pads the frame with zeros after the IP packet up to `len` bytes (Ethernet's 60-byte
    /// minimum, say). The IP lengths keep describing the packet only.
    pub fn pad_frame_to(mut self, len: usize) -> Self {
        self.eth_padding_to = len;
        self
    }

    fn tcp_mut(&mut self) -> &mut TcpFields {
        match &mut self.transport {
            Transport::Tcp(t) => t,
            Transport::Udp => panic!("TCP fields set on a UDP frame"),
        }
    }

    pub fn protocol(&self) -> u8 {
        match self.transport {
            Transport::Tcp(_) => IPPROTO_TCP,
            Transport::Udp => IPPROTO_UDP,
        }
    }

    /// The TCP/UDP header and payload, with the checksum filled in.
    fn segment(&self) -> Vec<u8> {
        let mut seg = Vec::new();
        seg.extend_from_slice(&self.src.port().to_be_bytes());
        seg.extend_from_slice(&self.dst.port().to_be_bytes());
        let checksum_at = match &self.transport {
            Transport::Tcp(t) => {
                seg.extend_from_slice(&t.seq.to_be_bytes());
                seg.extend_from_slice(&t.ack.to_be_bytes());
                let data_offset = ((TCP_HLEN + t.options.len()) / 4) as u8;
                seg.push(data_offset << 4);
                seg.push(t.flags);
                seg.extend_from_slice(&t.window.to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                seg.extend_from_slice(&t.urgent.to_be_bytes());
                seg.extend_from_slice(&t.options);
                16
            }
            Transport::Udp => {
                let len = UDP_HLEN + self.payload.len();
                assert!(len <= 0xffff, "UDP datagram of {len} bytes");
                seg.extend_from_slice(&(len as u16).to_be_bytes());
                seg.extend_from_slice(&[0, 0]);
                6
            }
        };
        seg.extend_from_slice(&self.payload);
        let checksum = self
            .l4_checksum
            .unwrap_or_else(|| l4_checksum(self.src.ip(), self.dst.ip(), self.protocol(), &seg));
        seg[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        seg
    }

    fn ext_header(kind: Ipv6Ext, len_units: u8, next: u8) -> Vec<u8> {
        let len = 8 * (len_units as usize + 1);
        let mut h = vec![0u8; len];
        h[0] = next;
        h[1] = len_units;
        match kind {
            Ipv6Ext::HopByHop | Ipv6Ext::DestinationOptions => {
                // RFC 8200 §4.2: pad the options area with one PadN (or Pad1 for 1 byte).
                let room = len - 2;
                if room == 1 {
                    h[2] = 0; // Pad1
                } else {
                    h[2] = 1; // PadN
                    h[3] = (room - 2) as u8;
                }
            }
            Ipv6Ext::Routing => {
                h[2] = 0; // routing type 0 (deprecated, but well-formed)
                h[3] = 0; // segments left: nothing to route
            }
        }
        h
    }

    /// The finished frame: Ethernet + IP (+ extension headers) + TCP/UDP + payload.
    pub fn build(&self) -> Vec<u8> {
        let segment = self.segment();
        let mut frame = Vec::with_capacity(ETH_HLEN + IPV6_HLEN + segment.len() + 64);
        frame.extend_from_slice(&self.dst_mac);
        frame.extend_from_slice(&self.src_mac);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                frame.extend_from_slice(&self.ipv4_header(s, d, segment.len()));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut exts = Vec::new();
                for (i, &(kind, units)) in self.ipv6_ext.iter().enumerate() {
                    let next = match self.ipv6_ext.get(i + 1) {
                        Some((k, _)) => k.next_header(),
                        None => self.protocol(),
                    };
                    exts.extend_from_slice(&Self::ext_header(kind, units, next));
                }
                let first = self
                    .ipv6_ext
                    .first()
                    .map_or(self.protocol(), |(k, _)| k.next_header());
                let payload_len = exts.len() + segment.len();
                assert!(payload_len <= 0xffff, "IPv6 payload of {payload_len} bytes");
                let vtf = (6u32 << 28) | (u32::from(self.tos) << 20) | self.ipv6_flow_label;
                frame.extend_from_slice(&vtf.to_be_bytes());
                frame.extend_from_slice(&(payload_len as u16).to_be_bytes());
                frame.push(first);
                frame.push(self.ttl);
                frame.extend_from_slice(&s.octets());
                frame.extend_from_slice(&d.octets());
                frame.extend_from_slice(&exts);
            }
            _ => unreachable!("checked in new()"),
        }
        frame.extend_from_slice(&segment);
        if frame.len() < self.eth_padding_to {
            frame.resize(self.eth_padding_to, 0);
        }
        frame
    }

    fn ipv4_header(&self, src: Ipv4Addr, dst: Ipv4Addr, l4_len: usize) -> Vec<u8> {
        assert!(
            self.ipv6_ext.is_empty(),
            "IPv6 extension headers on an IPv4 frame"
        );
        let hlen = IPV4_HLEN + self.ipv4_options.len();
        let total = hlen + l4_len;
        assert!(total <= 0xffff, "IPv4 packet of {total} bytes");
        let mut h = Vec::with_capacity(hlen);
        h.push(0x40 | (hlen / 4) as u8);
        h.push(self.tos);
        h.extend_from_slice(&(total as u16).to_be_bytes());
        h.extend_from_slice(&self.ipv4_id.to_be_bytes());
        let mut frag = 0u16;
        if self.ipv4_dont_fragment {
            frag |= 0x4000;
        }
        if let Some((offset, more)) = self.ipv4_fragment {
            frag |= offset;
            if more {
                frag |= 0x2000;
            }
        }
        h.extend_from_slice(&frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.protocol());
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(&self.ipv4_options);
        let checksum = internet_checksum(&h);
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
        h
    }
}

/// An Ethernet frame with any ethertype and payload (ARP, VLAN, garbage...).
pub fn ethernet_frame(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A well-formed ARP request (who-has `target` tell `sender`), 42 bytes.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut arp = Vec::with_capacity(28);
    arp.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    arp.extend_from_slice(&DEFAULT_SRC_MAC);
    arp.extend_from_slice(&sender.octets());
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&target.octets());
    ethernet_frame([0xff; 6], DEFAULT_SRC_MAC, ETH_P_ARP, &arp)
}

// ---------------------------------------------------------------------------------------
// Parsing and validating
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EthHeader {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol, after any IPv6 extension headers.
    pub protocol: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 only (0 for IPv6).
    pub ipv4_id: u16,
    /// IPv4 only: the flags and fragment offset word as sent.
    pub ipv4_frag: u16,
    /// IPv4 only: the header checksum as stored.
    pub ipv4_checksum: u16,
    /// IPv6 extension headers in chain order (their next-header values).
    pub ipv6_ext: Vec<u8>,
    /// Offset of the L4 header in the frame.
    pub l4_offset: usize,
    /// Length of the L4 header plus payload, from the IP length fields.
    pub l4_len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
    pub ack: u32,
    /// Header length in bytes (data offset × 4).
    pub header_len: usize,
    pub flags: u8,
    pub window: u16,
    pub checksum: u16,
    pub urgent: u16,
    pub options: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpHeader {
    pub src_port: u16,
    pub dst_port: u16,
    pub len: u16,
    pub checksum: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum L4Header {
    Tcp(TcpHeader),
    Udp(UdpHeader),
    /// Another protocol; not decoded.
    Other(u8),
}

/// A frame read back field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedFrame {
    pub eth: EthHeader,
    pub ip: IpHeader,
    pub l4: L4Header,
    /// The L4 payload (bounded by the IP length fields, so Ethernet padding is not in it).
    pub payload: Vec<u8>,
}

impl ParsedFrame {
    pub fn tcp(&self) -> Option<&TcpHeader> {
        match &self.l4 {
            L4Header::Tcp(t) => Some(t),
            _ => None,
        }
    }

    pub fn udp(&self) -> Option<&UdpHeader> {
        match &self.l4 {
            L4Header::Udp(u) => Some(u),
            _ => None,
        }
    }

    pub fn ports(&self) -> Option<(u16, u16)> {
        match &self.l4 {
            L4Header::Tcp(t) => Some((t.src_port, t.dst_port)),
            L4Header::Udp(u) => Some((u.src_port, u.dst_port)),
            L4Header::Other(_) => None,
        }
    }

    /// Source address and port; port 0 for other protocols.
    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.ip.src, self.ports().map_or(0, |p| p.0))
    }

    /// Destination address and port; port 0 for other protocols.
    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.ip.dst, self.ports().map_or(0, |p| p.1))
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn need(frame: &[u8], end: usize, what: &str) -> Result<(), String> {
    if frame.len() < end {
        Err(format!(
            "truncated: {what} ends at byte {end} but the frame has {} bytes",
            frame.len()
        ))
    } else {
        Ok(())
    }
}

/// Parses an Ethernet + IPv4/IPv6 (+ hop-by-hop/routing/destination options) + TCP/UDP
/// frame. Lengths are checked against the frame, never trusted.
pub fn parse_frame(frame: &[u8]) -> Result<ParsedFrame, String> {
    need(frame, ETH_HLEN, "Ethernet header")?;
    let eth = EthHeader {
        dst: frame[0..6].try_into().unwrap(),
        src: frame[6..12].try_into().unwrap(),
        ethertype: be16(frame, 12),
    };
    let ip = match eth.ethertype {
        ETH_P_IP => parse_ipv4(frame)?,
        ETH_P_IPV6 => parse_ipv6(frame)?,
        t => return Err(format!("ethertype {t:#06x} is neither IPv4 nor IPv6")),
    };
    let l4_end = ip.l4_offset + ip.l4_len;
    need(frame, l4_end, "the IP packet (by its length field)")?;
    let seg = &frame[ip.l4_offset..l4_end];
    let (l4, payload_at) = match ip.protocol {
        IPPROTO_TCP => {
            if seg.len() < TCP_HLEN {
                return Err(format!("TCP segment of {} bytes", seg.len()));
            }
            let header_len = usize::from(seg[12] >> 4) * 4;
            if header_len < TCP_HLEN || header_len > seg.len() {
                return Err(format!(
                    "TCP data offset {header_len} bytes in a {}-byte segment",
                    seg.len()
                ));
            }
            let t = TcpHeader {
                src_port: be16(seg, 0),
                dst_port: be16(seg, 2),
                seq: be32(seg, 4),
                ack: be32(seg, 8),
                header_len,
                flags: seg[13],
                window: be16(seg, 14),
                checksum: be16(seg, 16),
                urgent: be16(seg, 18),
                options: seg[TCP_HLEN..header_len].to_vec(),
            };
            (L4Header::Tcp(t), header_len)
        }
        IPPROTO_UDP => {
            if seg.len() < UDP_HLEN {
                return Err(format!("UDP datagram of {} bytes", seg.len()));
            }
            let u = UdpHeader {
                src_port: be16(seg, 0),
                dst_port: be16(seg, 2),
                len: be16(seg, 4),
                checksum: be16(seg, 6),
            };
            (L4Header::Udp(u), UDP_HLEN)
        }
        p => (L4Header::Other(p), 0),
    };
    Ok(ParsedFrame {
        eth,
        payload: seg[payload_at..].to_vec(),
        ip,
        l4,
    })
}

fn parse_ipv4(frame: &[u8]) -> Result<IpHeader, String> {
    need(frame, ETH_HLEN + IPV4_HLEN, "IPv4 header")?;
    let h = &frame[ETH_HLEN..];
    if h[0] >> 4 != 4 {
        return Err(format!("IPv4 ethertype but IP version {}", h[0] >> 4));
    }
    let hlen = usize::from(h[0] & 0x0f) * 4;
    if hlen < IPV4_HLEN {
        return Err(format!("IPv4 IHL of {hlen} bytes"));
    }
    need(frame, ETH_HLEN + hlen, "IPv4 header with options")?;
    let total = usize::from(be16(h, 2));
    if total < hlen {
        return Err(format!("IPv4 total length {total} < header length {hlen}"));
    }
    Ok(IpHeader {
        src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
        dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
        protocol: h[9],
        ttl: h[8],
        ipv4_id: be16(h, 4),
        ipv4_frag: be16(h, 6),
        ipv4_checksum: be16(h, 10),
        ipv6_ext: Vec::new(),
        l4_offset: ETH_HLEN + hlen,
        l4_len: total - hlen,
    })
}

fn parse_ipv6(frame: &[u8]) -> Result<IpHeader, String> {
    need(frame, ETH_HLEN + IPV6_HLEN, "IPv6 header")?;
    let h = &frame[ETH_HLEN..];
    if h[0] >> 4 != 6 {
        return Err(format!("IPv6 ethertype but IP version {}", h[0] >> 4));
    }
    let payload_len = usize::from(be16(h, 4));
    let mut next = h[6];
    let src: [u8; 16] = h[8..24].try_into().unwrap();
    let dst: [u8; 16] = h[24..40].try_into().unwrap();
    let mut offset = ETH_HLEN + IPV6_HLEN;
    let mut ext = Vec::new();
    while matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS) {
        need(frame, offset + 2, "IPv6 extension header")?;
        let len = (usize::from(frame[offset + 1]) + 1) * 8;
        need(frame, offset + len, "IPv6 extension header")?;
        ext.push(next);
        next = frame[offset];
        offset += len;
    }
    let ext_len = offset - ETH_HLEN - IPV6_HLEN;
    if ext_len > payload_len {
        return Err(format!(
            "IPv6 extension headers of {ext_len} bytes in a payload of {payload_len}"
        ));
    }
    Ok(IpHeader {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        protocol: next,
        ttl: h[7],
        ipv4_id: 0,
        ipv4_frag: 0,
        ipv4_checksum: 0,
        ipv6_ext: ext,
        l4_offset: offset,
        l4_len: payload_len - ext_len,
    })
}

/// Recomputes the IPv4 header checksum of an Ethernet frame; `Ok` for IPv6 (no header
/// checksum).
pub fn verify_ipv4_checksum(frame: &[u8]) -> Result<(), String> {
    let parsed = parse_frame(frame)?;
    if parsed.eth.ethertype != ETH_P_IP {
        return Ok(());
    }
    let hlen = parsed.ip.l4_offset - ETH_HLEN;
    let header = &frame[ETH_HLEN..ETH_HLEN + hlen];
    if internet_checksum(header) != 0 {
        let mut zeroed = header.to_vec();
        zeroed[10] = 0;
        zeroed[11] = 0;
        return Err(format!(
            "IPv4 header checksum is {:#06x}, should be {:#06x}",
            parsed.ip.ipv4_checksum,
            internet_checksum(&zeroed)
        ));
    }
    Ok(())
}

/// Recomputes the TCP or UDP checksum (with the IPv4 or IPv6 pseudo-header) over the
/// segment the IP length fields describe. A UDP checksum of 0 is accepted over IPv4 (it
/// means "none", RFC 768) and refused over IPv6 (mandatory, RFC 8200 §8.1). The UDP length
/// field must agree with the IP length.
pub fn verify_l4_checksum(frame: &[u8]) -> Result<(), String> {
    let p = parse_frame(frame)?;
    let seg = &frame[p.ip.l4_offset..p.ip.l4_offset + p.ip.l4_len];
    let (stored, name) = match &p.l4 {
        L4Header::Tcp(t) => (t.checksum, "TCP"),
        L4Header::Udp(u) => {
            if usize::from(u.len) != seg.len() {
                return Err(format!(
                    "UDP length field {} but the IP packet carries {} bytes of UDP",
                    u.len,
                    seg.len()
                ));
            }
            if u.checksum == 0 {
                return if p.ip.src.is_ipv4() {
                    Ok(())
                } else {
                    Err("UDP over IPv6 with a zero (absent) checksum".into())
                };
            }
            (u.checksum, "UDP")
        }
        L4Header::Other(proto) => {
            return Err(format!("protocol {proto} is neither TCP nor UDP"));
        }
    };
    let sum = checksum_add(
        pseudo_header_sum(p.ip.src, p.ip.dst, p.ip.protocol, seg.len()),
        seg,
    );
    if fold_checksum(sum) != 0 {
        let mut zeroed = seg.to_vec();
        let at = if p.ip.protocol == IPPROTO_TCP { 16 } else { 6 };
        zeroed[at] = 0;
        zeroed[at + 1] = 0;
        let want = l4_checksum(p.ip.src, p.ip.dst, p.ip.protocol, &zeroed);
        return Err(format!(
            "{name} checksum is {stored:#06x}, should be {want:#06x} ({} -> {})",
            p.src(),
            p.dst()
        ));
    }
    Ok(())
}

/// Both checks: the IPv4 header checksum (if IPv4) and the full TCP/UDP checksum.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    verify_ipv4_checksum(frame)?;
    verify_l4_checksum(frame)
}

/// A hex dump for assertion messages.
pub fn hex(frame: &[u8]) -> String {
    let mut s = String::new();
    for (i, chunk) in frame.chunks(16).enumerate() {
        let _ = write!(s, "{:04x}:", i * 16);
        for b in chunk {
            let _ = write!(s, " {b:02x}");
        }
        s.push('\n');
    }
    s
}
