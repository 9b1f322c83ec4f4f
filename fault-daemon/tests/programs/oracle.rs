//! The packet library the tests judge by (etherparse, through `tests/support/packets.rs`),
//! checked against published vectors and against corruption. No privilege needed.

use etherparse::checksum::Sum16BitWords;
use etherparse::{EtherType, IpHeaders, IpNumber};

use super::fixture::{tcp, udp};
use super::packets::tcp_flags::*;
use super::packets::*;

#[test]
fn builder_checksums_match_published_vectors() {
    // RFC 1071 §3 worked example, through the sums the checksum checks use.
    let sum = Sum16BitWords::new().add_slice(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
    assert_eq!(sum.ones_complement().to_be(), !0xddf2u16);
    // The IPv4 header example in Wikipedia's "IPv4 header checksum": 192.168.0.1 →
    // 192.168.0.199, total length 0x73, UDP, TTL 64, DF, id 0 → checksum 0xb861.
    let frame = FrameBuilder::udp(sock("192.168.0.1:1"), sock("192.168.0.199:2"))
        .ipv4_id(0)
        .payload(&[0; 0x73 - 28])
        .build();
    let want = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN], want);
}

#[test]
fn builder_frames_parse_back_field_by_field() {
    let f = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:2379"))
        .src_mac([1, 2, 3, 4, 5, 6])
        .dst_mac([6, 5, 4, 3, 2, 1])
        .flags(SYN | ACK)
        .seq(0xdead_beef)
        .ack(0x0102_0304)
        .window(1234)
        .tcp_options(&[2, 4, 0x05, 0xb4]) // MSS 1460
        .ttl(17)
        .payload(b"abc")
        .build();
    let p = parse_frame(&f).unwrap();
    assert_eq!(p.eth.source, [1, 2, 3, 4, 5, 6]);
    assert_eq!(p.eth.destination, [6, 5, 4, 3, 2, 1]);
    assert_eq!(p.eth.ether_type, EtherType::IPV4);
    assert_eq!(p.src(), sock("10.0.0.1:40000"));
    assert_eq!(p.dst(), sock("10.0.0.2:2379"));
    let IpHeaders::Ipv4(ip, _) = &p.ip else {
        panic!("{:?}", p.ip)
    };
    assert_eq!(ip.time_to_live, 17);
    assert!(ip.dont_fragment && !ip.more_fragments, "DF");
    assert_eq!(ip.fragment_offset.value(), 0);
    assert_eq!(ip.identification, 0x1234);
    let t = p.tcp().unwrap();
    assert_eq!(
        (
            flags(t),
            t.sequence_number,
            t.acknowledgment_number,
            t.window_size
        ),
        (SYN | ACK, 0xdead_beef, 0x0102_0304, 1234)
    );
    assert_eq!(t.header_len(), 24);
    assert_eq!(t.options.as_slice(), [2, 4, 0x05, 0xb4]);
    assert_eq!(p.payload, b"abc");
    assert_eq!(f.len(), ETH_HLEN + IPV4_HLEN + 24 + 3);
    // Where RFC 793 puts them, read from the bytes rather than through the parser.
    let l4 = ETH_HLEN + IPV4_HLEN;
    assert_eq!(f[l4 + 4..l4 + 8], 0xdead_beefu32.to_be_bytes());
    assert_eq!(f[l4 + 12], 6 << 4, "data offset 6 words");
    assert_eq!(f[l4 + 13], SYN | ACK);
    verify_checksums(&f).unwrap();

    let f = FrameBuilder::udp(sock("[fd00::1]:5353"), sock("[ff02::fb]:53"))
        .ipv6_ext(Ipv6Ext::HopByHop, 0)
        .ipv6_ext(Ipv6Ext::DestinationOptions, 2)
        .tos(0xb8)
        .ipv6_flow_label(0xabcde)
        .ttl(3)
        .payload(b"query")
        .pad_frame_to(200)
        .build();
    let p = parse_frame(&f).unwrap();
    assert_eq!(p.eth.ether_type, EtherType::IPV6);
    let IpHeaders::Ipv6(ip, exts) = &p.ip else {
        panic!("{:?}", p.ip)
    };
    assert_eq!(
        (ip.traffic_class, ip.flow_label.value(), ip.hop_limit),
        (0xb8, 0xabcde, 3)
    );
    assert_eq!(ip.next_header, IpNumber::IPV6_HEADER_HOP_BY_HOP);
    let hop = exts.hop_by_hop_options.as_ref().expect("hop-by-hop");
    assert_eq!(hop.next_header, IpNumber::IPV6_DESTINATION_OPTIONS);
    let dst = exts
        .destination_options
        .as_ref()
        .expect("destination options");
    assert_eq!((dst.next_header, dst.header_len()), (IpNumber::UDP, 24));
    assert!(exts.routing.is_none());
    assert_eq!(p.l4_offset, ETH_HLEN + IPV6_HLEN + 8 + 24);
    assert_eq!(p.src(), sock("[fd00::1]:5353"));
    assert_eq!(p.dst(), sock("[ff02::fb]:53"));
    assert_eq!(p.udp().unwrap().length, 8 + 5);
    assert_eq!(p.payload, b"query", "Ethernet padding is not payload");
    assert_eq!(f.len(), 200);
    verify_checksums(&f).unwrap();

    // A routing header, then final destination options: RFC 8200's order, kept.
    let f = FrameBuilder::tcp(sock("[fd00::1]:1"), sock("[fd00::2]:2"))
        .ipv6_ext(Ipv6Ext::HopByHop, 0)
        .ipv6_ext(Ipv6Ext::Routing, 1)
        .ipv6_ext(Ipv6Ext::DestinationOptions, 0)
        .build();
    let p = parse_frame(&f).unwrap();
    let IpHeaders::Ipv6(_, exts) = &p.ip else {
        panic!("{:?}", p.ip)
    };
    let routing = exts.routing.as_ref().expect("routing");
    assert_eq!(
        routing.routing.payload()[..2],
        [0, 0],
        "type 0, 0 segments left"
    );
    assert!(routing.final_destination_options.is_some());
    assert!(exts.destination_options.is_none());
    assert_eq!(p.l4_offset, ETH_HLEN + IPV6_HLEN + 8 + 16 + 8);
    verify_checksums(&f).unwrap();
}

#[test]
fn verify_checksums_catches_every_corruption() {
    let frames = [
        tcp("10.0.0.1:40000", "10.0.0.2:2379"),
        udp("10.0.0.1:40000", "10.0.0.2:2379"),
        tcp("[fd00::1]:40000", "[fd00::2]:2379"),
        FrameBuilder::udp(sock("[fd00::1]:1"), sock("[fd00::2]:2"))
            .ipv6_ext(Ipv6Ext::DestinationOptions, 0)
            .payload(b"x")
            .build(),
    ];
    for frame in &frames {
        verify_checksums(frame).unwrap();
        let p = parse_frame(frame).unwrap();
        // Any flipped bit in what the checksums cover is caught: the IPv4 header, the
        // addresses (IPv6 pseudo-header), the whole segment.
        let covered: Vec<usize> = if p.is_ipv4() {
            (ETH_HLEN..frame.len()).collect()
        } else {
            (ETH_HLEN + 8..ETH_HLEN + IPV6_HLEN)
                .chain(p.l4_offset..frame.len())
                .collect()
        };
        // Fields that give the packet its shape (version/IHL, total length, protocol, TCP
        // data offset, UDP length) are caught as format errors rather than checksum ones.
        let l4 = p.l4_offset;
        let structural = |at: usize| {
            (p.is_ipv4() && [ETH_HLEN, ETH_HLEN + 2, ETH_HLEN + 3, ETH_HLEN + 9].contains(&at))
                || (p.tcp().is_some() && at == l4 + 12)
                || (p.udp().is_some() && (at == l4 + 4 || at == l4 + 5))
        };
        for at in covered {
            let mut bad = frame.clone();
            bad[at] ^= 0x10;
            let err = verify_checksums(&bad)
                .expect_err(&format!("byte {at} flipped went unnoticed\n{}", hex(&bad)));
            assert!(
                structural(at) || err.contains("checksum"),
                "byte {at}: {err}"
            );
        }
    }
    // The TTL is in the IPv4 header checksum but not in the pseudo-header.
    let mut ttl = frames[0].clone();
    ttl[ETH_HLEN + 8] -= 1;
    assert!(verify_ipv4_checksum(&ttl).is_err());
    assert!(verify_l4_checksum(&ttl).is_ok());
    // A zero UDP checksum means "none" over IPv4 and is refused over IPv6.
    let none4 = FrameBuilder::udp(sock("10.0.0.1:1"), sock("10.0.0.2:2"))
        .l4_checksum_override(0)
        .build();
    assert_eq!(verify_checksums(&none4), Ok(()));
    let none6 = FrameBuilder::udp(sock("[fd00::1]:1"), sock("[fd00::2]:2"))
        .l4_checksum_override(0)
        .build();
    assert!(verify_checksums(&none6).is_err());
}

/// A UDP checksum that computes to 0 is sent as 0xffff, and verifies.
#[test]
fn builder_sends_a_zero_udp_checksum_as_ffff() {
    for (src, dst) in [
        ("10.0.0.1:1000", "10.0.0.2:2000"),
        ("[fd00::1]:1", "[fd00::2]:2"),
    ] {
        let with = |last: [u8; 2]| {
            FrameBuilder::udp(sock(src), sock(dst))
                .payload(&[0xab, 0xcd, last[0], last[1]])
                .build()
        };
        // Make the last word of the payload equal to the checksum computed with it zero:
        // the sum then folds to 0xffff, whose complement is 0.
        let zeroed = with([0, 0]);
        let c = parse_frame(&zeroed).unwrap().udp().unwrap().checksum;
        let frame = with(c.to_be_bytes());
        assert_eq!(parse_frame(&frame).unwrap().udp().unwrap().checksum, 0xffff);
        verify_checksums(&frame).unwrap();
    }
}
