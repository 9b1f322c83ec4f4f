//! Frames for the program tests, built, read back and checksummed with etherparse.
//!
//! Nothing here shares code with the eBPF programs or with anything else in this
//! repository: headers are serialised and parsed by etherparse, and checksums computed and
//! verified with its arithmetic, so a test compares the programs against an independent
//! implementation. What is left here is what etherparse does not do: a builder with the
//! defaults these tests want, a family-agnostic view of a parsed frame, frames that are
//! wrong on purpose (a chosen checksum, Ethernet padding), and a hex dump.
//!
//! ```ignore
//! let syn = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:2379"))
//!     .flags(SYN)
//!     .seq(1000)
//!     .build();
//! let f = parse_frame(&out)?;
//! assert_eq!(flags(f.tcp().unwrap()), RST | ACK);
//! verify_checksums(&out)?;
//! ```
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use etherparse::checksum::Sum16BitWords;
use etherparse::{
    ArpEthIpv4Packet, ArpOperation, Ethernet2Header, IpDscp, IpEcn, IpFragOffset, IpHeaders,
    IpNumber, Ipv4Header, Ipv4Options, Ipv6Extensions, Ipv6FlowLabel, Ipv6Header, Ipv6RawExtHeader,
    Ipv6RoutingExtensions, NetHeaders, PacketBuilder, PacketHeaders, TcpHeader, TransportHeader,
    UdpHeader, ip_number,
};

pub const ETH_HLEN: usize = Ethernet2Header::LEN;
pub const IPV4_HLEN: usize = Ipv4Header::MIN_LEN;
pub const IPV6_HLEN: usize = Ipv6Header::LEN;
pub const TCP_HLEN: usize = TcpHeader::MIN_LEN;
pub const UDP_HLEN: usize = UdpHeader::LEN;
pub const IPPROTO_TCP: u8 = ip_number::TCP.0;
pub const IPPROTO_UDP: u8 = ip_number::UDP.0;

/// Default MAC addresses (locally administered) used when a test does not choose any.
pub const DEFAULT_SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DEFAULT_DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// TCP flags as the bits of byte 13 of the header: how the tests write expected flags.
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
use tcp_flags::*;

/// The flags etherparse read, as [`tcp_flags`] bits.
pub fn flags(t: &TcpHeader) -> u8 {
    [
        (t.fin, FIN),
        (t.syn, SYN),
        (t.rst, RST),
        (t.psh, PSH),
        (t.ack, ACK),
        (t.urg, URG),
        (t.ece, ECE),
        (t.cwr, CWR),
    ]
    .iter()
    .filter(|(set, _)| *set)
    .fold(0, |bits, (_, bit)| bits | bit)
}

/// Parses `"10.0.0.1:80"` or `"[fd00::1]:80"`; panics on a typo (this is test code).
pub fn sock(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{text:?} is not a socket address: {e}"))
}

// ---------------------------------------------------------------------------------------
// Building
// ---------------------------------------------------------------------------------------

/// An IPv6 extension header the builder can put in front of TCP/UDP. A chain is laid out
/// in RFC 8200's order (hop-by-hop, destination options, routing, destination options).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Ipv6Ext {
    HopByHop,
    /// Before a routing header, or the final one after it.
    DestinationOptions,
    /// Type 0 with zero segments left: ignored by receivers, so it does not change the
    /// final destination.
    Routing,
    /// A Fragment header: `offset` in 8-byte units, `more` = the M bit (identification
    /// 0x1234). Only the first fragment (offset 0) carries the L4 header.
    Fragment {
        offset: u16,
        more: bool,
    },
}

#[derive(Clone, Debug)]
enum Transport {
    Tcp(TcpHeader),
    Udp,
}

/// One Ethernet frame carrying IPv4 or IPv6 (family taken from the addresses) with TCP or
/// UDP, serialised by etherparse's `PacketBuilder`, which computes every length and
/// checksum unless a test overrides one on purpose.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
    payload: Vec<u8>,
    ttl: u8,
    tos: u8,
    ipv4_id: u16,
    /// Offset in 8-byte units and the MF bit; DF is set when this is None.
    ipv4_fragment: Option<(u16, bool)>,
    ipv4_options: Vec<u8>,
    ipv6_flow_label: u32,
    ipv6_ext: Vec<(Ipv6Ext, u8)>,
    /// VLAN ids, outermost first: one is an 802.1Q tag, two are 802.1ad (QinQ).
    vlans: Vec<u16>,
    l4_checksum: Option<u16>,
    pad_to: usize,
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
            tos: 0,
            ipv4_id: 0x1234,
            ipv4_fragment: None,
            ipv4_options: Vec::new(),
            ipv6_flow_label: 0,
            ipv6_ext: Vec::new(),
            vlans: Vec::new(),
            l4_checksum: None,
            pad_to: 0,
        }
    }

    /// A TCP segment; by default flags ACK, seq 1, ack 1, window 65535, no options.
    pub fn tcp(src: SocketAddr, dst: SocketAddr) -> Self {
        let mut t = TcpHeader::new(src.port(), dst.port(), 1, 65535);
        t.ack = true;
        t.acknowledgment_number = 1;
        Self::new(src, dst, Transport::Tcp(t))
    }

    pub fn udp(src: SocketAddr, dst: SocketAddr) -> Self {
        Self::new(src, dst, Transport::Udp)
    }

    /// TCP if `protocol` is 6, UDP if 17.
    pub fn with_protocol(protocol: u8, src: SocketAddr, dst: SocketAddr) -> Self {
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

    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN).
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }

    pub fn ipv4_id(mut self, id: u16) -> Self {
        self.ipv4_id = id;
        self
    }

    /// An IPv4 fragment: `offset` in 8-byte units, `more` = the MF bit (and no DF). Only
    /// the first fragment (offset 0) carries the L4 header a filter can read.
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = Some((offset, more));
        self
    }

    /// IPv4 options, padded with End-of-Options to a multiple of 4 bytes (at most 40).
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = padded(options);
        self
    }

    pub fn ipv6_flow_label(mut self, label: u32) -> Self {
        self.ipv6_flow_label = label;
        self
    }

    /// Adds an IPv6 extension header of `8 * (len_units + 1)` bytes (options headers are
    /// filled with one PadN option).
    pub fn ipv6_ext(mut self, kind: Ipv6Ext, len_units: u8) -> Self {
        self.ipv6_ext.push((kind, len_units));
        self
    }

    /// VLAN tags, outermost first: one id makes an 802.1Q tag (TPID 0x8100), two make an
    /// 802.1ad QinQ pair (outer TPID 0x88a8, inner 0x8100), as etherparse writes them.
    pub fn vlans(mut self, ids: &[u16]) -> Self {
        assert!(ids.len() <= 2, "etherparse writes one or two VLAN tags");
        self.vlans = ids.to_vec();
        self
    }

    fn tcp_mut(&mut self) -> &mut TcpHeader {
        match &mut self.transport {
            Transport::Tcp(t) => t,
            Transport::Udp => panic!("TCP fields set on a UDP frame"),
        }
    }

    /// TCP flags ([`tcp_flags`] bits).
    pub fn flags(mut self, bits: u8) -> Self {
        let t = self.tcp_mut();
        t.fin = bits & FIN != 0;
        t.syn = bits & SYN != 0;
        t.rst = bits & RST != 0;
        t.psh = bits & PSH != 0;
        t.ack = bits & ACK != 0;
        t.urg = bits & URG != 0;
        t.ece = bits & ECE != 0;
        t.cwr = bits & CWR != 0;
        self
    }

    pub fn seq(mut self, seq: u32) -> Self {
        self.tcp_mut().sequence_number = seq;
        self
    }

    /// The acknowledgment number field, whether or not the ACK flag is set.
    pub fn ack(mut self, ack: u32) -> Self {
        self.tcp_mut().acknowledgment_number = ack;
        self
    }

    pub fn window(mut self, window: u16) -> Self {
        self.tcp_mut().window_size = window;
        self
    }

    pub fn urgent(mut self, urgent: u16) -> Self {
        self.tcp_mut().urgent_pointer = urgent;
        self
    }

    /// TCP options, padded with End-of-Options to a multiple of 4 bytes (at most 40).
    pub fn tcp_options(mut self, options: &[u8]) -> Self {
        self.tcp_mut()
            .set_options_raw(&padded(options))
            .expect("TCP options of at most 40 bytes");
        self
    }

    /// Stores this value as the TCP/UDP checksum instead of the computed one.
    pub fn l4_checksum_override(mut self, checksum: u16) -> Self {
        self.l4_checksum = Some(checksum);
        self
    }

    /// Pads the frame with zeros after the IP packet up to `len` bytes (Ethernet's 60-byte
    /// minimum, say). The IP lengths keep describing the packet only.
    pub fn pad_frame_to(mut self, len: usize) -> Self {
        self.pad_to = len;
        self
    }

    fn ip_headers(&self) -> IpHeaders {
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                assert!(self.ipv6_ext.is_empty(), "IPv6 extensions on IPv4");
                let mut h = Ipv4Header::new(0, self.ttl, ip_number::TCP, s.octets(), d.octets())
                    .expect("an empty IPv4 payload fits");
                h.dscp = IpDscp::try_new(self.tos >> 2).unwrap();
                h.ecn = IpEcn::try_new(self.tos & 3).unwrap();
                h.identification = self.ipv4_id;
                if let Some((offset, more)) = self.ipv4_fragment {
                    h.dont_fragment = false;
                    h.more_fragments = more;
                    h.fragment_offset = IpFragOffset::try_new(offset).expect("13-bit offset");
                }
                h.options = Ipv4Options::try_from(&self.ipv4_options[..])
                    .expect("IPv4 options of at most 40 bytes");
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let h = Ipv6Header {
                    traffic_class: self.tos,
                    flow_label: Ipv6FlowLabel::try_new(self.ipv6_flow_label).expect("20 bits"),
                    payload_length: 0,
                    next_header: ip_number::TCP,
                    hop_limit: self.ttl,
                    source: s.octets(),
                    destination: d.octets(),
                };
                IpHeaders::Ipv6(h, self.ipv6_extensions())
            }
            _ => unreachable!("checked in new()"),
        }
    }

    /// The extension chain in etherparse's slots (the next-header fields are filled in when
    /// the packet is written).
    fn ipv6_extensions(&self) -> Ipv6Extensions {
        let mut exts = Ipv6Extensions::default();
        let mut after_routing = false;
        for &(kind, units) in &self.ipv6_ext {
            if let Ipv6Ext::Fragment { offset, more } = kind {
                assert!(exts.fragment.is_none(), "one Fragment header");
                exts.fragment = Some(etherparse::Ipv6FragmentHeader::new(
                    ip_number::TCP,
                    IpFragOffset::try_new(offset).expect("13-bit offset"),
                    more,
                    0x1234,
                ));
                continue;
            }
            let len = 6 + 8 * usize::from(units);
            let mut data = vec![0u8; len];
            if kind != Ipv6Ext::Routing {
                // RFC 8200 §4.2: one PadN option fills the options area.
                data[0] = 1;
                data[1] = (len - 2) as u8;
            } // A routing header of type 0, 0 segments left: all zeros.
            let header = Ipv6RawExtHeader::new_raw(ip_number::TCP, &data).expect("length");
            let slot_taken = match (kind, after_routing) {
                (Ipv6Ext::HopByHop, false) if exts == Ipv6Extensions::default() => {
                    exts.hop_by_hop_options = Some(header);
                    false
                }
                (Ipv6Ext::DestinationOptions, false) if exts.destination_options.is_none() => {
                    exts.destination_options = Some(header);
                    false
                }
                (Ipv6Ext::Routing, false) => {
                    exts.routing = Some(Ipv6RoutingExtensions {
                        routing: header,
                        final_destination_options: None,
                    });
                    after_routing = true;
                    false
                }
                (Ipv6Ext::DestinationOptions, true) => {
                    let routing = exts.routing.as_mut().unwrap();
                    let taken = routing.final_destination_options.is_some();
                    routing.final_destination_options = Some(header);
                    taken
                }
                _ => true,
            };
            assert!(!slot_taken, "extension chain {:?}", self.ipv6_ext);
        }
        exts
    }

    /// The finished frame: Ethernet + IP (+ options or extension headers) + TCP/UDP +
    /// payload.
    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let vlan_id = |id: u16| etherparse::VlanId::try_new(id).expect("12-bit VLAN id");
        let step = match self.vlans[..] {
            [] => eth.ip(self.ip_headers()),
            [id] => eth.single_vlan(vlan_id(id)).ip(self.ip_headers()),
            [outer, inner] => eth
                .double_vlan(vlan_id(outer), vlan_id(inner))
                .ip(self.ip_headers()),
            _ => unreachable!("checked in vlans()"),
        };
        let mut frame = Vec::new();
        match &self.transport {
            Transport::Tcp(t) => step.tcp_header(t.clone()).write(&mut frame, &self.payload),
            Transport::Udp => step
                .udp(self.src.port(), self.dst.port())
                .write(&mut frame, &self.payload),
        }
        .expect("etherparse writes the frame");
        if let Some(checksum) = self.l4_checksum {
            let p = parse_frame(&frame).expect("a frame just built");
            let at = p.l4_offset + if p.tcp().is_some() { 16 } else { 6 };
            frame[at..at + 2].copy_from_slice(&checksum.to_be_bytes());
        }
        if frame.len() < self.pad_to {
            frame.resize(self.pad_to, 0);
        }
        frame
    }
}

fn padded(options: &[u8]) -> Vec<u8> {
    let mut o = options.to_vec();
    o.resize(o.len().div_ceil(4) * 4, 0);
    o
}

/// A well-formed ARP request (who-has `target` tell `sender`), 42 bytes.
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let arp = ArpEthIpv4Packet {
        operation: ArpOperation::REQUEST,
        sender_mac: DEFAULT_SRC_MAC,
        sender_ipv4: sender,
        target_mac: [0; 6],
        target_ipv4: target,
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(DEFAULT_SRC_MAC, [0xff; 6])
        .arp(arp.into())
        .write(&mut frame)
        .expect("etherparse writes the frame");
    frame
}

// ---------------------------------------------------------------------------------------
// Reading back
// ---------------------------------------------------------------------------------------

/// A frame parsed by etherparse, with where its L4 header starts and how long the IP
/// length fields say the L4 part is (Ethernet padding is after it).
#[derive(Clone, Debug)]
pub struct Parsed {
    pub eth: Ethernet2Header,
    pub ip: IpHeaders,
    pub transport: TransportHeader,
    pub l4_offset: usize,
    pub l4_len: usize,
    pub payload: Vec<u8>,
}

impl Parsed {
    pub fn tcp(&self) -> Option<&TcpHeader> {
        match &self.transport {
            TransportHeader::Tcp(t) => Some(t),
            _ => None,
        }
    }

    pub fn udp(&self) -> Option<&UdpHeader> {
        match &self.transport {
            TransportHeader::Udp(u) => Some(u),
            _ => None,
        }
    }

    pub fn is_ipv4(&self) -> bool {
        matches!(self.ip, IpHeaders::Ipv4(..))
    }

    /// The upper-layer protocol, after any extension headers.
    pub fn protocol(&self) -> IpNumber {
        match &self.transport {
            TransportHeader::Tcp(_) => ip_number::TCP,
            TransportHeader::Udp(_) => ip_number::UDP,
            other => panic!("not TCP or UDP: {other:?}"),
        }
    }

    fn addrs(&self) -> (IpAddr, IpAddr) {
        match &self.ip {
            IpHeaders::Ipv4(h, _) => (h.source.into(), h.destination.into()),
            IpHeaders::Ipv6(h, _) => (h.source.into(), h.destination.into()),
        }
    }

    fn ports(&self) -> (u16, u16) {
        match &self.transport {
            TransportHeader::Tcp(t) => (t.source_port, t.destination_port),
            TransportHeader::Udp(u) => (u.source_port, u.destination_port),
            other => panic!("not TCP or UDP: {other:?}"),
        }
    }

    pub fn src(&self) -> SocketAddr {
        SocketAddr::new(self.addrs().0, self.ports().0)
    }

    pub fn dst(&self) -> SocketAddr {
        SocketAddr::new(self.addrs().1, self.ports().1)
    }
}

/// Parses an Ethernet + IPv4/IPv6 (+ options, extension headers) + TCP/UDP frame with
/// etherparse, which checks every length against the frame.
pub fn parse_frame(frame: &[u8]) -> Result<Parsed, String> {
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| format!("etherparse: {e}"))?;
    let eth = match h.link {
        Some(etherparse::LinkHeader::Ethernet2(eth)) => eth,
        other => return Err(format!("not Ethernet II: {other:?}")),
    };
    let (ip, ip_len, l4_len) = match h.net {
        Some(NetHeaders::Ipv4(v4, exts)) => {
            let hlen = v4.header_len() + exts.header_len();
            let total = usize::from(v4.total_len);
            (IpHeaders::Ipv4(v4, exts), hlen, total.checked_sub(hlen))
        }
        Some(NetHeaders::Ipv6(v6, exts)) => {
            let payload = usize::from(v6.payload_length);
            let ext_len = exts.header_len();
            (
                IpHeaders::Ipv6(v6, exts),
                IPV6_HLEN + ext_len,
                payload.checked_sub(ext_len),
            )
        }
        other => return Err(format!("neither IPv4 nor IPv6: {other:?}")),
    };
    let l4_len = l4_len.ok_or("IP length fields shorter than the headers")?;
    let transport = h.transport.ok_or("no TCP or UDP header")?;
    let tags: usize = h.link_exts.iter().map(|e| e.header_len()).sum();
    let l4_offset = ETH_HLEN + tags + ip_len;
    let payload_at = l4_offset + transport.header_len();
    let end = l4_offset + l4_len;
    if payload_at > end || end > frame.len() {
        return Err(format!(
            "L4 of {l4_len} bytes at {l4_offset} in a frame of {}",
            frame.len()
        ));
    }
    Ok(Parsed {
        eth,
        ip,
        transport,
        l4_offset,
        l4_len,
        payload: frame[payload_at..end].to_vec(),
    })
}

// ---------------------------------------------------------------------------------------
// Checksums, verified as a receiver does (RFC 1071): the one's-complement sum of the bytes
// as they are, stored checksum included, must be all ones. Sums are etherparse's; the
// value a checksum should have, for the message, is etherparse's too.
// ---------------------------------------------------------------------------------------

/// The IPv4 header checksum of an Ethernet frame; `Ok` for IPv6 (none). Only the IPv4
/// header is parsed, so this works whatever the packet carries.
pub fn verify_ipv4_checksum(frame: &[u8]) -> Result<(), String> {
    if frame.get(12..14) != Some(&[0x08, 0x00][..]) {
        return Ok(());
    }
    let (h, _) = Ipv4Header::from_slice(&frame[ETH_HLEN..]).map_err(|e| format!("IPv4: {e}"))?;
    let bytes = &frame[ETH_HLEN..ETH_HLEN + h.header_len()];
    if Sum16BitWords::new().add_slice(bytes).ones_complement() != 0 {
        return Err(format!(
            "IPv4 header checksum is {:#06x}, should be {:#06x}",
            h.header_checksum,
            h.calc_header_checksum()
        ));
    }
    Ok(())
}

/// The TCP or UDP checksum, with the IPv4 or IPv6 pseudo-header, over the segment the IP
/// length fields describe. A UDP checksum of 0 is accepted over IPv4 (it means "none",
/// RFC 768) and refused over IPv6 (mandatory, RFC 8200 §8.1). The UDP length field must
/// agree with the IP length.
pub fn verify_l4_checksum(frame: &[u8]) -> Result<(), String> {
    let p = parse_frame(frame)?;
    let segment = &frame[p.l4_offset..p.l4_offset + p.l4_len];
    let (stored, want) = match &p.transport {
        TransportHeader::Tcp(t) => {
            let want = match &p.ip {
                IpHeaders::Ipv4(h, _) => t.calc_checksum_ipv4(h, &p.payload),
                IpHeaders::Ipv6(h, _) => t.calc_checksum_ipv6(h, &p.payload),
            };
            (t.checksum, want)
        }
        TransportHeader::Udp(u) => {
            if usize::from(u.length) != segment.len() {
                return Err(format!(
                    "UDP length field {} but the IP packet carries {} bytes of UDP",
                    u.length,
                    segment.len()
                ));
            }
            if u.checksum == 0 {
                return if p.is_ipv4() {
                    Ok(())
                } else {
                    Err("UDP over IPv6 with a zero (absent) checksum".into())
                };
            }
            let want = match &p.ip {
                IpHeaders::Ipv4(h, _) => u.calc_checksum_ipv4(h, &p.payload),
                IpHeaders::Ipv6(h, _) => u.calc_checksum_ipv6(h, &p.payload),
            };
            (u.checksum, want)
        }
        other => return Err(format!("neither TCP nor UDP: {other:?}")),
    };
    let len = segment.len() as u32;
    let proto = p.protocol().0;
    let mut sum = Sum16BitWords::new();
    sum = match &p.ip {
        // RFC 793 §3.1: source, destination, zero, protocol, TCP/UDP length.
        IpHeaders::Ipv4(h, _) => sum
            .add_4bytes(h.source)
            .add_4bytes(h.destination)
            .add_2bytes([0, proto])
            .add_2bytes((len as u16).to_be_bytes()),
        // RFC 8200 §8.1: source, destination, 32-bit length, zeros, next header.
        IpHeaders::Ipv6(h, _) => sum
            .add_16bytes(h.source)
            .add_16bytes(h.destination)
            .add_4bytes(len.to_be_bytes())
            .add_4bytes([0, 0, 0, proto]),
    };
    if sum.add_slice(segment).ones_complement() != 0 {
        let want = want.map_err(|e| format!("etherparse: {e}"))?;
        return Err(format!(
            "{} checksum is {stored:#06x}, should be {want:#06x} ({} -> {})",
            if proto == IPPROTO_TCP { "TCP" } else { "UDP" },
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
