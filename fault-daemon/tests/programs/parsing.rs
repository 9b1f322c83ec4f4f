//! Headers the programs step over (IPv4 options, IPv6 extension headers), and frames they
//! cannot classify, which pass untouched and uncounted.

use fault_common::FaultCounters;
use faultd::faults::{Direction, Protocol};

use super::fixture::*;
use super::packets::*;

/// TCP and UDP behind IPv6 extension headers (hop-by-hop, destination options, routing,
/// longer ones, chains) are still matched, by port and by peer.
#[test]
fn ipv6_extension_headers_are_stepped_over() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(
        2379,
        Protocol::Any,
        Direction::Both,
        Some("fd00::/16"),
    ));
    let chains: &[&[(Ipv6Ext, u8)]] = &[
        &[(Ipv6Ext::HopByHop, 0)],
        &[(Ipv6Ext::DestinationOptions, 0)],
        &[(Ipv6Ext::HopByHop, 3)],
        &[(Ipv6Ext::Routing, 0)],
        &[(Ipv6Ext::HopByHop, 0), (Ipv6Ext::DestinationOptions, 1)],
        &[
            (Ipv6Ext::HopByHop, 0),
            (Ipv6Ext::Routing, 0),
            (Ipv6Ext::DestinationOptions, 0),
        ],
    ];
    let mut acted = 0;
    for chain in chains {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            for (src, dst, want) in [
                ("[fd00::1]:40000", "[fd00::2]:2379", Verdict::Drop),
                ("[fd00::2]:2379", "[fd00::1]:40000", Verdict::Drop),
                ("[fd00::1]:40000", "[fd00::2]:2380", Verdict::Pass),
                ("[fe80::1]:40000", "[fd00::2]:2379", Verdict::Pass),
            ] {
                let mut builder = FrameBuilder::with_protocol(protocol, sock(src), sock(dst))
                    .payload(b"behind extension headers");
                for &(kind, units) in chain.iter() {
                    builder = builder.ipv6_ext(kind, units);
                }
                let frame = builder.build();
                verify_checksums(&frame).expect("the builder's own frame");
                b.expect(
                    &DROP_HOOKS,
                    &frame,
                    want,
                    &format!("{chain:?} proto {protocol}"),
                );
                if want == Verdict::Drop {
                    acted += 2;
                }
            }
        }
    }
    assert_eq!(b.counters(&fault).acted_packets, acted);
}

/// IPv4 headers with options (IHL > 5) are parsed past the options.
#[test]
fn ipv4_options_are_stepped_over() {
    let mut b = Bench::new();
    b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    for options in [&[1u8, 1, 1, 0][..], &[0x94, 4, 0, 0], &[1; 40]] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            let frame = FrameBuilder::with_protocol(
                protocol,
                sock("10.0.0.1:40000"),
                sock("10.0.0.2:2379"),
            )
            .ipv4_options(options)
            .build();
            verify_checksums(&frame).expect("the builder's own frame");
            b.expect(&DROP_HOOKS, &frame, Verdict::Drop, "IPv4 with options");
        }
    }
}

/// Frames the programs cannot classify pass untouched and uncounted, even with a fault on
/// every protocol of the port their bytes mention: non-IP, other L4 protocols, IPv4
/// fragments after the first, and frames truncated anywhere before the fields the rules need.
#[test]
fn unclassifiable_and_truncated_frames_pass() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));

    let v4 = tcp("10.0.0.1:40000", "10.0.0.2:2379");
    let v6 = tcp("[fd00::1]:40000", "[fd00::2]:2379");
    let v6_ext = FrameBuilder::tcp(sock("[fd00::1]:40000"), sock("[fd00::2]:2379"))
        .ipv6_ext(Ipv6Ext::HopByHop, 1)
        .build();
    let l4_v4 = ETH_HLEN + IPV4_HLEN;
    let l4_v6 = ETH_HLEN + IPV6_HLEN;
    let mut frames: Vec<(Vec<u8>, &str)> = vec![
        (arp_request([10, 0, 0, 1], [10, 0, 0, 2]), "ARP"),
        (
            ethertype(&v4, 0x88b5),
            "unknown ethertype over an IPv4 body",
        ),
        (ethertype(&v4, 0x8100), "VLAN tag over a non-IP ethertype"),
        (ethertype(&v4[..ETH_HLEN], 0x88b5), "Ethernet header only"),
        (v4[..l4_v4].to_vec(), "IPv4 header, no L4"),
        (v4[..l4_v4 + 3].to_vec(), "IPv4, TCP ports cut"),
        (v4[..l4_v4 + 13].to_vec(), "IPv4, TCP cut before the flags"),
        (v6[..l4_v6].to_vec(), "IPv6 header, no L4"),
        (v6[..l4_v6 + 13].to_vec(), "IPv6, TCP cut before the flags"),
        (v6_ext[..l4_v6 + 12].to_vec(), "IPv6 hop-by-hop header cut"),
        (
            v6_ext[..l4_v6 + 16 + 3].to_vec(),
            "IPv6, ports after the extension cut",
        ),
        (bad_ihl(&v4), "IPv4 with IHL < 5"),
        (
            FrameBuilder::udp(sock("10.0.0.1:2379"), sock("10.0.0.2:2379"))
                .ipv4_fragment(185, false)
                .build(),
            "IPv4 fragment after the first",
        ),
        (with_protocol(&v4, 1), "ICMP whose bytes look like ports"),
        (with_protocol(&v4, 132), "SCTP on the port"),
        (
            // Ethernet minimum-frame padding on a packet of another port changes nothing.
            FrameBuilder::udp(sock("10.0.0.1:40000"), sock("10.0.0.2:53"))
                .pad_frame_to(60)
                .build(),
            "padded frame on another port",
        ),
    ];
    for (frame, what) in &frames {
        b.expect(&ALL_HOOKS, frame, Verdict::Pass, what);
    }
    // Cut inside the IP header: only XDP accepts these under BPF_PROG_TEST_RUN.
    frames = vec![
        (v4[..ETH_HLEN].to_vec(), "IPv4 ethertype, no header"),
        (v4[..ETH_HLEN + 1].to_vec(), "one byte of IPv4"),
        (v4[..ETH_HLEN + 10].to_vec(), "IPv4 header cut at 10 bytes"),
        (
            v4[..ETH_HLEN + 19].to_vec(),
            "IPv4 header cut before the last address byte",
        ),
        (
            v6[..ETH_HLEN + 30].to_vec(),
            "IPv6 header cut in the source address",
        ),
        (
            v6[..ETH_HLEN + 39].to_vec(),
            "IPv6 header cut before the last address byte",
        ),
    ];
    for (frame, what) in &frames {
        b.expect(&[Hook::Xdp], frame, Verdict::Pass, what);
    }
    assert_eq!(b.counters(&fault), FaultCounters::default());

    // The same fault does drop the whole frames these were cut from.
    b.expect(&DROP_HOOKS, &v4, Verdict::Drop, "whole IPv4 frame");
    b.expect(&DROP_HOOKS, &v6_ext, Verdict::Drop, "whole IPv6 frame");
}

fn ethertype(frame: &[u8], ethertype: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f
}

fn bad_ihl(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[ETH_HLEN] = 0x44;
    f
}

/// Rewrites the IPv4 protocol field, and the header checksum with it (etherparse's).
fn with_protocol(frame: &[u8], protocol: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    let (mut h, _) = etherparse::Ipv4Header::from_slice(&f[ETH_HLEN..]).expect("IPv4");
    h.protocol = etherparse::IpNumber(protocol);
    h.header_checksum = h.calc_header_checksum();
    f[ETH_HLEN..ETH_HLEN + h.header_len()].copy_from_slice(&h.to_bytes());
    f
}
