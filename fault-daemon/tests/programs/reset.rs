//! `reset` and `refuse`: the forged RSTs, checked field by field against RFC 793 and byte
//! by byte against the RST etherparse builds, checksums verified independently.

use etherparse::{IpHeaders, IpNumber, Ipv6Extensions};
use fault_common::{FaultCounters, ROLE_EGRESS, ROLE_INGRESS, ROLE_LOOPBACK};
use faultd::faults::{Action, Direction, FaultSpec, Protocol, RefuseMode};

use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

/// MAC addresses of the offending segment's sender and receiver: distinct in every byte
/// but the first, so a half-swapped Ethernet header shows.
const SENDER_MAC: [u8; 6] = [0x02, 0x5e, 0x4d, 0xe7, 0x00, 0x01];
const RECEIVER_MAC: [u8; 6] = [0x02, 0x7e, 0xce, 0x1f, 0xe7, 0x02];

fn reset_spec(port: u16, direction: Direction, probability: f64) -> FaultSpec {
    spec(
        Action::Reset { probability },
        port,
        Protocol::Tcp,
        direction,
        None,
    )
}

/// A TCP segment from the sender's MAC to the receiver's.
fn segment(src: &str, dst: &str, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> FrameBuilder {
    FrameBuilder::tcp(sock(src), sock(dst))
        .src_mac(SENDER_MAC)
        .dst_mac(RECEIVER_MAC)
        .flags(flags)
        .seq(seq)
        .ack(ack)
        .payload(payload)
}

/// An offending segment and the RST that must answer it.
struct RstCase {
    what: String,
    frame: Vec<u8>,
    /// The RST's sequence and acknowledgment numbers and flags, worked out by hand from
    /// RFC 793 "Reset Generation": if the segment has ACK, `<SEQ=SEG.ACK><CTL=RST>`; else
    /// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`, SEG.LEN counting SYN and FIN as one each.
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Offending segments of every shape, IPv4 and IPv6, both directions of a flow to port 2379.
fn rst_cases() -> Vec<RstCase> {
    let mut cases = Vec::new();
    for (client, server) in [
        ("10.0.0.1:40000", "10.0.0.2:2379"),
        ("[fd00::1]:40000", "[fd00::2]:2379"),
    ] {
        let family = if sock(client).is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let mut case = |what: &str, frame: FrameBuilder, seq: u32, ack: u32, flags: u8| {
            cases.push(RstCase {
                what: format!("{family}: {what}"),
                frame: frame.build(),
                seq,
                ack,
                flags,
            })
        };
        // With ACK: the RST's sequence is the segment's acknowledgment, and it has no ACK.
        case(
            "ACK|PSH with payload, to the port",
            segment(client, server, ACK | PSH, 1000, 2000, b"hello"),
            2000,
            0,
            RST,
        );
        case(
            "ACK|PSH with 1400 bytes of payload, from the port",
            segment(
                server,
                client,
                ACK | PSH,
                0x8000_0000,
                0xdead_beef,
                &[0x5a; 1400],
            ),
            0xdead_beef,
            0,
            RST,
        );
        case(
            "bare ACK, no payload",
            segment(client, server, ACK, 1000, 2000, b""),
            2000,
            0,
            RST,
        );
        case(
            "FIN|ACK, no payload",
            segment(client, server, FIN | ACK, 5000, 6000, b""),
            6000,
            0,
            RST,
        );
        case(
            "FIN|ACK|PSH with payload, from the port",
            segment(server, client, FIN | ACK | PSH, 5000, 6000, b"bye"),
            6000,
            0,
            RST,
        );
        case(
            "SYN|ACK from the port",
            segment(server, client, SYN | ACK, 300, 101, b"")
                .tcp_options(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7]),
            101,
            0,
            RST,
        );
        case(
            "URG|ACK with an urgent pointer",
            segment(client, server, URG | ACK | PSH, 1, 0xffff_ffff, b"!!!").urgent(3),
            0xffff_ffff,
            0,
            RST,
        );
        case(
            "ACK with timestamps (12 bytes of options) and payload",
            segment(client, server, ACK | PSH, 42, 4242, b"with options")
                .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
            4242,
            0,
            RST,
        );
        // Without ACK: sequence 0, and the RST acknowledges the whole segment.
        case(
            "SYN with options, no payload",
            segment(client, server, SYN, 100, 0, b"")
                .window(64240)
                .tcp_options(&[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0]),
            0,
            101,
            RST | ACK,
        );
        case(
            "SYN whose ack field is not zero (ACK flag clear, field ignored)",
            segment(client, server, SYN, 100, 0x1234_5678, b""),
            0,
            101,
            RST | ACK,
        );
        case(
            "SYN with data (TCP Fast Open)",
            segment(client, server, SYN, 100, 0, b"early"),
            0,
            106,
            RST | ACK,
        );
        case(
            "FIN|PSH without ACK, with payload",
            segment(client, server, FIN | PSH, 7000, 0, b"last"),
            0,
            7005,
            RST | ACK,
        );
        case(
            "SYN|FIN",
            segment(client, server, SYN | FIN, 100, 0, b""),
            0,
            102,
            RST | ACK,
        );
        case(
            "PSH without ACK, the acknowledgment wraps around 2^32",
            segment(client, server, PSH, 0xffff_fffe, 0, b"wrap!"),
            0,
            3,
            RST | ACK,
        );
        case(
            "no flags at all, no payload",
            segment(server, client, 0, 0xffff_ffff, 0, b""),
            0,
            0xffff_ffff,
            RST | ACK,
        );
    }
    // Headers the RST does not carry over: IPv4 options, TOS and a low TTL; IPv6 extension
    // headers, traffic class, flow label and hop limit 1; Ethernet padding.
    cases.push(RstCase {
        what: "IPv4 with options, TOS and TTL 3".into(),
        frame: segment("10.0.0.1:40000", "10.0.0.2:2379", ACK | PSH, 9, 99, b"opt")
            .ipv4_options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
            .tos(0xb8)
            .ttl(3)
            .build(),
        seq: 99,
        ack: 0,
        flags: RST,
    });
    cases.push(RstCase {
        what: "IPv4 bare ACK padded to Ethernet's 60-byte minimum".into(),
        frame: segment("10.0.0.2:2379", "10.0.0.1:40000", ACK, 9, 99, b"")
            .pad_frame_to(60)
            .build(),
        seq: 99,
        ack: 0,
        flags: RST,
    });
    cases.push(RstCase {
        what: "IPv6 behind hop-by-hop and destination options, class, label, hop limit 1".into(),
        frame: segment(
            "[fd00::1]:40000",
            "[fd00::2]:2379",
            SYN,
            0x7fff_ffff,
            0,
            b"",
        )
        .ipv6_ext(Ipv6Ext::HopByHop, 0)
        .ipv6_ext(Ipv6Ext::DestinationOptions, 1)
        .tos(0xb8)
        .ipv6_flow_label(0xabcde)
        .ttl(1)
        .build(),
        seq: 0,
        ack: 0x8000_0000,
        flags: RST | ACK,
    });
    cases.push(RstCase {
        what: "IPv6 behind a routing header, with payload and ACK".into(),
        frame: segment(
            "[fd00::2]:2379",
            "[fd00::1]:40000",
            ACK | PSH,
            1,
            77,
            b"routed",
        )
        .ipv6_ext(Ipv6Ext::Routing, 0)
        .build(),
        seq: 77,
        ack: 0,
        flags: RST,
    });
    for c in &cases {
        verify_checksums(&c.frame)
            .unwrap_or_else(|e| panic!("{}: the builder's frame: {e}", c.what));
    }
    cases
}

/// The RST answering `offending`, built by etherparse (its own lengths and checksums): to
/// the sender's MAC, address and port, from the receiver's; IPv4 id 0 with DF and TTL 64,
/// or IPv6 with class and label 0 and hop limit 64; no IP options or extension headers;
/// TCP data offset 5, window 0, urgent pointer 0, no options, no payload.
fn expected_rst(offending: &[u8], seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let p = parse_frame(offending).expect("the offending frame parses");
    FrameBuilder::tcp(p.dst(), p.src())
        .src_mac(p.eth.destination)
        .dst_mac(p.eth.source)
        .flags(flags)
        .seq(seq)
        .ack(ack)
        .window(0)
        .ttl(64)
        .ipv4_id(0)
        .build()
}

/// Checks the frame a program let out is the RST for `c`: parsed by etherparse and checked
/// field by field (so that a failure names the field), the checksums verified with
/// etherparse's arithmetic, then byte for byte against [`expected_rst`].
fn check_rst(out: &[u8], c: &RstCase, hook: Hook) {
    let context = || {
        format!(
            "{hook:?}, {}\noffending segment:\n{}frame out:\n{}",
            c.what,
            hex(&c.frame),
            hex(out)
        )
    };
    let offending = parse_frame(&c.frame).unwrap();
    assert_ne!(out, c.frame, "the original went on: {}", context());
    let rst = parse_frame(out).unwrap_or_else(|e| panic!("{e}: {}", context()));

    // Trimmed to the bare headers.
    let ip_len = if offending.is_ipv4() {
        IPV4_HLEN
    } else {
        IPV6_HLEN
    };
    assert_eq!(
        out.len(),
        ETH_HLEN + ip_len + TCP_HLEN,
        "frame length: {}",
        context()
    );

    // Ethernet: addresses swapped, same ethertype.
    let (eth, was) = (&rst.eth, &offending.eth);
    assert_eq!(
        eth.destination,
        was.source,
        "Ethernet destination: {}",
        context()
    );
    assert_eq!(
        eth.source,
        was.destination,
        "Ethernet source: {}",
        context()
    );
    assert_eq!(eth.ether_type, was.ether_type, "ethertype: {}", context());

    // IP: addresses swapped, TCP, lengths for a bare TCP header, TTL / hop limit 64, nothing
    // of the offending packet's options, class or label.
    let ip = &out[ETH_HLEN..];
    match (&rst.ip, &offending.ip) {
        (IpHeaders::Ipv4(h, exts), IpHeaders::Ipv4(was, _)) => {
            assert_eq!(h.source, was.destination, "IP source: {}", context());
            assert_eq!(h.destination, was.source, "IP destination: {}", context());
            assert_eq!(ip[0], 0x45, "IPv4 version and IHL 5: {}", context());
            assert!(h.options.is_empty(), "IPv4 options: {}", context());
            assert_eq!(ip[1], 0, "TOS: {}", context());
            assert_eq!(h.total_len, 40, "total length: {}", context());
            assert_eq!(h.identification, 0, "IPv4 id: {}", context());
            assert!(
                h.dont_fragment && !h.more_fragments && h.fragment_offset.value() == 0,
                "DF, not a fragment: {}",
                context()
            );
            assert_eq!(h.time_to_live, 64, "TTL: {}", context());
            assert_eq!(h.protocol, IpNumber::TCP, "protocol: {}", context());
            assert!(exts.auth.is_none(), "{}", context());
        }
        (IpHeaders::Ipv6(h, exts), IpHeaders::Ipv6(was, _)) => {
            assert_eq!(h.source, was.destination, "IP source: {}", context());
            assert_eq!(h.destination, was.source, "IP destination: {}", context());
            assert_eq!(
                ip[0..4],
                [0x60, 0, 0, 0],
                "version, class, label: {}",
                context()
            );
            assert_eq!(h.payload_length, 20, "payload length: {}", context());
            assert_eq!(h.next_header, IpNumber::TCP, "next header: {}", context());
            assert_eq!(h.hop_limit, 64, "hop limit: {}", context());
            assert_eq!(
                *exts,
                Ipv6Extensions::default(),
                "extension headers: {}",
                context()
            );
        }
        (got, _) => panic!("address family changed: {got:?}: {}", context()),
    }
    // Checksums, verified by a receiver's sum (RFC 1071) over the bytes as they are.
    verify_ipv4_checksum(out).unwrap_or_else(|e| panic!("{e}: {}", context()));
    verify_l4_checksum(out).unwrap_or_else(|e| panic!("{e}: {}", context()));

    // TCP: ports swapped, RFC 793 numbers, bare header, window 0, nothing after it.
    let (t, was) = (rst.tcp().unwrap(), offending.tcp().unwrap());
    assert_eq!(
        (t.source_port, t.destination_port),
        (was.destination_port, was.source_port),
        "ports: {}",
        context()
    );
    assert_eq!(t.sequence_number, c.seq, "sequence number: {}", context());
    assert_eq!(
        t.acknowledgment_number,
        c.ack,
        "acknowledgment number: {}",
        context()
    );
    assert_eq!(flags(t), c.flags, "flags: {}", context());
    assert!(!t.ns, "NS flag: {}", context());
    assert_eq!(t.header_len(), TCP_HLEN, "data offset 5: {}", context());
    assert_eq!(
        out[rst.l4_offset + 12] & 0x0f,
        0,
        "reserved bits: {}",
        context()
    );
    assert_eq!(t.window_size, 0, "window: {}", context());
    assert_eq!(t.urgent_pointer, 0, "urgent pointer: {}", context());
    assert!(rst.payload.is_empty(), "payload: {}", context());

    // And the whole frame, against etherparse's.
    let want = expected_rst(&c.frame, c.seq, c.ack, c.flags);
    assert_eq!(
        out,
        want.as_slice(),
        "byte for byte: {}wanted:\n{}",
        context(),
        hex(&want)
    );
}

/// A reset fault on port 2379, on an interface of `role`: for every segment of
/// [`rst_cases`], each of the `acting` hooks lets out the RST for its sender (never the
/// original) with its verdict, and the `silent` hooks pass the segment untouched.
/// Counters: every acting run matched and acted on, whole frames.
fn answers_each_segment(role: u32, acting: &[(Hook, Verdict)], silent: &[Hook]) {
    let mut b = Bench::bare();
    b.role(TEST_RUN_IFINDEX, role);
    let fault = b.add(reset_spec(2379, Direction::Both, 1.0));
    let cases = rst_cases();
    let mut acted = Vec::new();
    for c in &cases {
        b.expect(silent, &c.frame, Verdict::Pass, &c.what);
        for &(hook, verdict) in acting {
            let run = b.run(hook, &c.frame);
            assert_eq!(
                run.verdict,
                verdict,
                "{hook:?}, {}: the RST's verdict\n{}",
                c.what,
                hex(&c.frame)
            );
            check_rst(&run.out, c, hook);
            acted.push(c.frame.as_slice());
        }
    }
    assert_eq!(b.counters(&fault), counters(&acted, &acted));
}

/// On an interface other than loopback (faultd marks it for ingress and egress), each
/// segment of a reset flow is answered at both TC hooks with the RST for its sender,
/// redirected (back out at ingress, back in at egress): the original is not delivered.
/// XDP does not carry `reset` and lets the segment by untouched.
#[test]
fn reset_forges_the_rst_for_each_segment_and_sends_it_back() {
    answers_each_segment(
        ROLE_INGRESS | ROLE_EGRESS,
        &[
            (Hook::TcIngress, Verdict::Redirect),
            (Hook::TcEgress, Verdict::Redirect),
        ],
        &[Hook::Xdp],
    );
}

/// On loopback (faultd marks `lo` egress-only and loopback), TC egress rewrites the segment
/// into the RST and lets it go on (TC_ACT_OK): loopback hands it straight back to this host.
/// What goes on is the RST, never the original. The ingress hooks leave `lo` alone.
#[test]
fn reset_on_loopback_egress_turns_the_segment_into_the_rst() {
    answers_each_segment(
        ROLE_EGRESS | ROLE_LOOPBACK,
        &[(Hook::TcEgress, Verdict::Pass)],
        &[Hook::Xdp, Hook::TcIngress],
    );
}

/// RSTs themselves pass every hook untouched and uncounted, whichever way they go, with or
/// without ACK or payload, on both kinds of interface: a RST is never answered with a RST
/// (two faulted ends would otherwise ping-pong), and the RSTs faultd forges get through.
#[test]
fn rsts_pass_a_reset_untouched() {
    let mut b = Bench::new();
    let fault = b.add(reset_spec(2379, Direction::Both, 1.0));
    let mut rsts = Vec::new();
    for (client, server) in [
        ("10.0.0.1:40000", "10.0.0.2:2379"),
        ("[fd00::1]:40000", "[fd00::2]:2379"),
    ] {
        rsts.push(segment(client, server, RST, 2000, 0, b"").build());
        rsts.push(segment(server, client, RST, 2000, 0, b"").build());
        rsts.push(segment(client, server, RST | ACK, 0, 101, b"").build());
        rsts.push(segment(server, client, RST | ACK | PSH, 5, 6, b"diagnostic").build());
        rsts.push(segment(client, server, RST | SYN | FIN, 1, 0, b"").build());
    }
    // The RSTs the programs forge, fed back in, pass too.
    for c in rst_cases() {
        rsts.push(expected_rst(&c.frame, c.seq, c.ack, c.flags));
    }
    for frame in &rsts {
        b.expect(
            &ALL_HOOKS,
            frame,
            Verdict::Pass,
            "a RST, ingress and egress",
        );
    }
    b.role(TEST_RUN_IFINDEX, ROLE_EGRESS | ROLE_LOOPBACK);
    for frame in &rsts {
        b.expect(&ALL_HOOKS, frame, Verdict::Pass, "a RST, on loopback");
    }
    assert_eq!(b.counters(&fault), FaultCounters::default());
}

/// The direction of a reset: `from-port` answers only what the port sends (the RST goes to
/// the port's side), `to-port` only what is sent to it. Other traffic passes untouched.
#[test]
fn reset_follows_its_direction() {
    let mut b = Bench::new();
    b.add(reset_spec(2379, Direction::FromPort, 1.0));
    b.add(reset_spec(6379, Direction::ToPort, 1.0));
    let answered = [
        RstCase {
            what: "from-port fault, segment from the port".into(),
            frame: segment("[fd00::2]:2379", "[fd00::1]:40000", ACK, 1, 2, b"x").build(),
            seq: 2,
            ack: 0,
            flags: RST,
        },
        RstCase {
            what: "to-port fault, segment to the port".into(),
            frame: segment("10.0.0.1:40000", "10.0.0.2:6379", SYN, 10, 0, b"").build(),
            seq: 0,
            ack: 11,
            flags: RST | ACK,
        },
    ];
    for c in &answered {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let run = b.run(hook, &c.frame);
            assert_eq!(run.verdict, Verdict::Redirect, "{hook:?}, {}", c.what);
            check_rst(&run.out, c, hook);
        }
    }
    for (frame, what) in [
        (
            segment("[fd00::1]:40000", "[fd00::2]:2379", ACK, 1, 2, b"x").build(),
            "from-port fault, segment to the port",
        ),
        (
            segment("10.0.0.2:6379", "10.0.0.1:40000", SYN | ACK, 10, 11, b"").build(),
            "to-port fault, segment from the port",
        ),
        (
            segment("10.0.0.1:40000", "10.0.0.2:2380", ACK, 1, 2, b"x").build(),
            "another port",
        ),
        (
            FrameBuilder::udp(sock("10.0.0.1:40000"), sock("10.0.0.2:6379"))
                .payload(b"udp")
                .build(),
            "UDP on the port",
        ),
    ] {
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, what);
    }
}

/// `reset --probability 0.5`: each segment is either answered with the RST (never the
/// original) or passed untouched, about half each; the acted counter is the RSTs sent.
#[test]
fn reset_with_probability_answers_a_share_and_passes_the_rest() {
    let mut b = Bench::new();
    let fault = b.add(reset_spec(2379, Direction::Both, 0.5));
    let cases = rst_cases();
    const N: usize = 400;
    let mut resets = 0u64;
    for i in 0..N {
        let c = &cases[i % cases.len()];
        let hook = if i % 2 == 0 {
            Hook::TcIngress
        } else {
            Hook::TcEgress
        };
        let run = b.run(hook, &c.frame);
        match run.verdict {
            Verdict::Pass => assert_eq!(
                run.out, c.frame,
                "{hook:?}, {}: passed, but changed",
                c.what
            ),
            Verdict::Redirect => {
                check_rst(&run.out, c, hook);
                resets += 1;
            }
            Verdict::Drop => panic!("{hook:?}, {}: dropped without a RST", c.what),
        }
    }
    assert!(
        (100..300).contains(&resets),
        "{resets} RSTs for {N} segments at 50 %"
    );
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, N as u64);
    assert_eq!(c.acted_packets, resets);
}

/// `refuse` (rst mode) forges its RST with the same code: a SYN to the port is answered with
/// `<SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK>` (the kernel's own answer to a closed port, so
/// `connect()` fails with ECONNREFUSED). Everything else, including SYNs from the port and
/// the established flow's segments, passes untouched.
#[test]
fn refuse_answers_syns_to_the_port_with_rst_ack() {
    let mut b = Bench::new();
    let fault = b.add(spec(
        Action::Refuse {
            mode: RefuseMode::Rst,
        },
        7835,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let syns = [
        RstCase {
            what: "IPv4 SYN to the port".into(),
            frame: segment(
                "127.0.0.1:51000",
                "127.0.0.1:7835",
                SYN,
                0x0bad_cafe,
                0,
                b"",
            )
            .tcp_options(&[
                2, 4, 0xff, 0xd7, 4, 2, 8, 10, 0, 1, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7,
            ])
            .window(65495)
            .build(),
            seq: 0,
            ack: 0x0bad_caff,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv6 SYN to the port, sequence at 2^32 - 1".into(),
            frame: segment("[::1]:51000", "[::1]:7835", SYN, u32::MAX, 0, b"").build(),
            seq: 0,
            ack: 0,
            flags: RST | ACK,
        },
    ];
    for c in &syns {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let run = b.run(hook, &c.frame);
            assert_eq!(run.verdict, Verdict::Redirect, "{hook:?}, {}", c.what);
            check_rst(&run.out, c, hook);
        }
    }
    for (frame, what) in [
        (
            segment("127.0.0.1:7835", "127.0.0.1:51000", SYN, 1, 0, b"").build(),
            "SYN from the port",
        ),
        (
            segment("127.0.0.1:51000", "127.0.0.1:7835", SYN | ACK, 1, 2, b"").build(),
            "SYN|ACK to the port",
        ),
        (
            segment("[::1]:51000", "[::1]:7835", ACK | PSH, 1, 2, b"data").build(),
            "established data to the port",
        ),
        (
            segment("[::1]:7835", "[::1]:51000", FIN | ACK, 1, 2, b"").build(),
            "FIN from the port",
        ),
    ] {
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, what);
    }
    let each: Vec<&[u8]> = syns
        .iter()
        .flat_map(|c| [c.frame.as_slice(), c.frame.as_slice()])
        .collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));

    // On loopback egress the SYN turns into the RST|ACK and goes on.
    b.role(TEST_RUN_IFINDEX, ROLE_EGRESS | ROLE_LOOPBACK);
    for c in &syns {
        let run = b.run(Hook::TcEgress, &c.frame);
        assert_eq!(run.verdict, Verdict::Pass, "loopback egress, {}", c.what);
        check_rst(&run.out, c, Hook::TcEgress);
    }
}
