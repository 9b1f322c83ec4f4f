//! Which packets a fault covers: ports, protocols and directions, peers, probability,
//! counters, the hooks and interface roles that act, and removal.

use std::net::SocketAddr;

use fault_common::{FaultCounters, ROLE_EGRESS, ROLE_INGRESS};
use faultd::faults::{Action, Direction, Protocol};

use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

/// TCP port drop, direction both: IPv4 and IPv6 packets to the port and from it are dropped
/// at XDP and TC egress; other ports and UDP on the same port pass; counters add up.
#[test]
fn drop_tcp_port_drops_both_directions_on_v4_and_v6() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(2379, Protocol::Tcp, Direction::Both, None));

    let mut dropped = Vec::new();
    let mut passed = Vec::new();
    for to_port in [true, false] {
        for flow in flows(2379) {
            let (src, dst) = oriented(&flow, to_port);
            dropped.push(tcp(src, dst));
            passed.push(udp(src, dst));
        }
        for flow in flows(2380) {
            let (src, dst) = oriented(&flow, to_port);
            passed.push(tcp(src, dst));
        }
    }
    dropped.extend([
        FrameBuilder::tcp(sock("127.0.0.1:55555"), sock("127.0.0.1:2379"))
            .flags(SYN)
            .seq(7)
            .ack(0)
            .build(),
        // Both ports are the faulted port: one match, one drop.
        tcp("10.0.0.1:2379", "10.0.0.2:2379"),
    ]);
    passed.push(tcp("10.0.0.1:2378", "10.0.0.2:2380"));
    for frame in &dropped {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "tcp on port 2379");
    }
    for frame in &passed {
        b.expect(&DROP_HOOKS, frame, Verdict::Pass, "not tcp on port 2379");
    }
    let each = twice(&dropped);
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// `any` compiles into a TCP and a UDP entry: both are dropped, v4 and v6, and counted on
/// the one fault. A `udp` fault leaves TCP alone.
#[test]
fn drop_any_protocol_catches_tcp_and_udp_and_udp_spares_tcp() {
    let mut b = Bench::new();
    let any = b.add(drop_spec(53, Protocol::Any, Direction::Both, None));
    let only_udp = b.add(drop_spec(5353, Protocol::Udp, Direction::Both, None));

    let on_53 = [
        tcp("10.0.0.1:40000", "10.0.0.2:53"),
        udp("10.0.0.1:40000", "10.0.0.2:53"),
        udp("10.0.0.2:53", "10.0.0.1:40000"),
        tcp("[fd00::2]:53", "[fd00::1]:40000"),
        udp("[fd00::1]:40000", "[fd00::2]:53"),
    ];
    for frame in &on_53 {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "any on port 53");
    }
    let udp_5353 = udp("[fd00::1]:5353", "[ff02::fb]:5353");
    b.expect(&DROP_HOOKS, &udp_5353, Verdict::Drop, "udp on 5353");
    let tcp_5353 = tcp("10.0.0.1:40000", "10.0.0.2:5353");
    b.expect(
        &DROP_HOOKS,
        &tcp_5353,
        Verdict::Pass,
        "tcp on a udp-only port",
    );

    let each = twice(&on_53);
    assert_eq!(b.counters(&any), counters(&each, &each));
    assert_eq!(
        b.counters(&only_udp),
        counters(&[&udp_5353, &udp_5353], &[&udp_5353, &udp_5353])
    );
}

/// A one-way drop on port 8080 (`to-port` or `from-port`) drops TCP and UDP, IPv4 and IPv6,
/// going its way and passes the mirror images, which do not even count as matched. A packet
/// whose ports are both 8080 goes both ways: the destination entry matches `to-port`, the
/// source entry `from-port`.
fn one_way_drop(direction: Direction) {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(8080, Protocol::Any, direction, None));
    let to_port = direction == Direction::ToPort;

    let (mut its_way, mut mirrored) = (Vec::new(), Vec::new());
    for flow in flows(8080) {
        for build in [tcp, udp] {
            let (src, dst) = oriented(&flow, to_port);
            its_way.push(build(src, dst));
            let (src, dst) = oriented(&flow, !to_port);
            mirrored.push(build(src, dst));
        }
    }
    its_way.push(tcp("10.0.0.1:8080", "10.0.0.2:8080"));
    for frame in &its_way {
        b.expect(
            &DROP_HOOKS,
            frame,
            Verdict::Drop,
            &format!("{direction:?}, its way"),
        );
    }
    for frame in &mirrored {
        b.expect(
            &DROP_HOOKS,
            frame,
            Verdict::Pass,
            &format!("{direction:?}, mirrored"),
        );
    }
    let each = twice(&its_way);
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// `to-port` drops only packets whose destination port is the port (client → server).
#[test]
fn direction_to_port_drops_only_packets_to_the_port() {
    one_way_drop(Direction::ToPort);
}

/// `from-port` drops only packets whose source port is the port (server → client).
#[test]
fn direction_from_port_drops_only_packets_from_the_port() {
    one_way_drop(Direction::FromPort);
}

/// An IPv4 CIDR peer: only flows with a remote address in it are dropped. The remote is the
/// source of a packet to the port and the destination of a packet from it.
#[test]
fn peer_ipv4_cidr_drops_only_that_remote() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(
        6379,
        Protocol::Tcp,
        Direction::Both,
        Some("198.18.7.9/15"), // 198.18.0.0 – 198.19.255.255
    ));

    let dropped = [
        tcp("198.18.0.1:40000", "10.0.0.2:6379"), // to the port, remote = source
        tcp("198.19.255.255:40000", "10.0.0.2:6379"), // last address of the /15
        tcp("10.0.0.2:6379", "198.19.1.2:40000"), // from the port, remote = destination
    ];
    let passed = [
        tcp("198.20.0.1:40000", "10.0.0.2:6379"), // just past the /15
        tcp("198.17.255.255:40000", "10.0.0.2:6379"), // just before it
        tcp("10.0.0.2:6379", "198.20.0.1:40000"),
        // The peer is on the port's side, not the remote side.
        tcp("10.0.0.1:40000", "198.18.0.2:6379"),
        tcp("198.18.0.2:6379", "10.0.0.1:40000"),
        // A v4 peer never matches IPv6.
        tcp("[::ffff:198.18.0.1]:40000", "[fd00::2]:6379"),
        tcp("[fd00::1]:40000", "[fd00::2]:6379"),
    ];
    for frame in &dropped {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "remote in 198.18.0.0/15");
    }
    for frame in &passed {
        b.expect(
            &DROP_HOOKS,
            frame,
            Verdict::Pass,
            "remote outside 198.18.0.0/15",
        );
    }
    let each = twice(&dropped);
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// IPv6 peers: a single address (/128 by default) and a prefix, each only its remote.
#[test]
fn peer_ipv6_address_and_prefix_drop_only_that_remote() {
    let mut b = Bench::new();
    let single = b.add(drop_spec(
        443,
        Protocol::Tcp,
        Direction::Both,
        Some("fd00::1"),
    ));
    let prefix = b.add(drop_spec(
        8443,
        Protocol::Udp,
        Direction::Both,
        Some("2001:db8:aa00::/40"),
    ));

    b.expect(
        &DROP_HOOKS,
        &tcp("[fd00::1]:40000", "[fd00::99]:443"),
        Verdict::Drop,
        "from the named peer to the port",
    );
    b.expect(
        &DROP_HOOKS,
        &tcp("[fd00::99]:443", "[fd00::1]:40000"),
        Verdict::Drop,
        "from the port to the named peer",
    );
    for (frame, what) in [
        (tcp("[fd00::2]:40000", "[fd00::99]:443"), "another address"),
        (
            tcp("[fd00::1:0:0:1]:40000", "[fd00::99]:443"),
            "differs in a middle word",
        ),
        (
            tcp("[fd00::99]:40000", "[fd00::1]:443"),
            "peer on the port's side",
        ),
        (tcp("10.0.0.1:40000", "10.0.0.2:443"), "IPv4"),
    ] {
        b.expect(&DROP_HOOKS, &frame, Verdict::Pass, what);
    }
    assert_eq!(b.counters(&single).acted_packets, 4);
    assert_eq!(b.counters(&single).matched_packets, 4);

    for (frame, want, what) in [
        (
            udp("[2001:db8:aa00::1]:5000", "[fd00::2]:8443"),
            Verdict::Drop,
            "first /40",
        ),
        (
            udp("[2001:db8:aaff:ffff::1]:5000", "[fd00::2]:8443"),
            Verdict::Drop,
            "end of /40",
        ),
        (
            udp("[fd00::2]:8443", "[2001:db8:aa12::7]:5000"),
            Verdict::Drop,
            "from the port",
        ),
        (
            udp("[2001:db8:ab00::1]:5000", "[fd00::2]:8443"),
            Verdict::Pass,
            "next /40",
        ),
        (
            udp("[2001:db8:a900::1]:5000", "[fd00::2]:8443"),
            Verdict::Pass,
            "previous /40",
        ),
        (
            udp("[2001:db9:aa00::1]:5000", "[fd00::2]:8443"),
            Verdict::Pass,
            "other /32",
        ),
    ] {
        b.expect(&DROP_HOOKS, &frame, want, what);
    }
    assert_eq!(b.counters(&prefix).acted_packets, 6);
}

// ---------------------------------------------------------------------------------------
// Probability
// ---------------------------------------------------------------------------------------

/// `drop 30 %` acts on a binomial share of packets, within ±5 σ over 10 000 packets, and
/// the counters agree exactly with the verdicts (the same check as `loss`).
#[test]
fn drop_probability_is_binomial() {
    drops_a_binomial_share(
        Action::Drop { probability: 0.3 },
        Protocol::Tcp,
        9000,
        &tcp("10.0.0.1:40000", "10.0.0.2:9000"),
        &tcp("[fd00::2]:9000", "[fd00::1]:40000"),
    );
}

/// Counters: matched = every packet the fault's target covers, acted = the ones it dropped,
/// packets and bytes, over frames of many sizes; other traffic is not counted.
#[test]
fn counters_equal_what_was_sent_and_dropped() {
    let mut b = Bench::new();
    let fault = b.add(spec(
        Action::Drop { probability: 0.5 },
        5432,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    let mut want = FaultCounters::default();
    for i in 0..400usize {
        let payload = vec![i as u8; (i * 37) % 1400];
        let (src, dst): (SocketAddr, SocketAddr) = match i % 4 {
            0 => (sock("10.1.0.1:40000"), sock("10.1.0.2:5432")),
            1 => (sock("10.1.0.2:5432"), sock("10.1.0.1:40000")),
            2 => (sock("[fd00::1]:40000"), sock("[fd00::2]:5432")),
            _ => (sock("[fd00::2]:5432"), sock("[fd00::1]:40000")),
        };
        let protocol = if i % 3 == 0 { IPPROTO_UDP } else { IPPROTO_TCP };
        let frame = FrameBuilder::with_protocol(protocol, src, dst)
            .payload(&payload)
            .build();
        let other =
            FrameBuilder::with_protocol(protocol, sock("10.1.0.1:40000"), sock("10.1.0.2:5433"))
                .payload(&payload)
                .build();
        let hook = DROP_HOOKS[i % 2];
        assert_eq!(b.verdict(hook, &other), Verdict::Pass);
        want.matched_packets += 1;
        want.matched_bytes += frame.len() as u64;
        if b.verdict(hook, &frame) == Verdict::Drop {
            want.acted_packets += 1;
            want.acted_bytes += frame.len() as u64;
        }
    }
    assert_eq!(b.counters(&fault), want);
    assert!(
        want.acted_packets > 100 && want.acted_packets < 300,
        "half of 400 dropped, got {}",
        want.acted_packets
    );
}

/// Faults on one port compose in order: the first (50 %) sees every packet, the second
/// (100 %) sees exactly the ones the first let through, and every packet is dropped once.
#[test]
fn composed_faults_see_what_earlier_ones_let_through() {
    let mut b = Bench::new();
    let half = b.add(spec(
        Action::Drop { probability: 0.5 },
        7000,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let all = b.add(drop_spec(7000, Protocol::Tcp, Direction::ToPort, None));
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:7000");
    const N: u64 = 1000;
    for _ in 0..N {
        assert_eq!(b.verdict(Hook::TcEgress, &frame), Verdict::Drop);
    }
    let h = b.counters(&half);
    let a = b.counters(&all);
    assert_eq!(h.matched_packets, N);
    assert!(h.acted_packets > 350 && h.acted_packets < 650, "{h:?}");
    assert_eq!(a.matched_packets, N - h.acted_packets);
    assert_eq!(a.acted_packets, a.matched_packets);
    assert_eq!(
        h.acted_packets + a.acted_packets,
        N,
        "each packet dropped once"
    );

    // From the port only the first fault applies (the second is to-port).
    let back = tcp("10.0.0.2:7000", "10.0.0.1:40000");
    let mut dropped = 0;
    for _ in 0..N {
        if b.verdict(Hook::TcEgress, &back) == Verdict::Drop {
            dropped += 1;
        }
    }
    assert_eq!(
        b.counters(&all),
        a,
        "a to-port fault never sees packets from the port"
    );
    assert_eq!(b.counters(&half).acted_packets - h.acted_packets, dropped);
}

// ---------------------------------------------------------------------------------------
// Hooks and interface roles
// ---------------------------------------------------------------------------------------

/// TC ingress never carries `drop`: alone it passes and counts nothing, and the real
/// ingress path (XDP, then TC ingress for what XDP let through) acts and counts once.
#[test]
fn tc_ingress_never_carries_drop() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    let frames = [
        tcp("10.0.0.1:40000", "10.0.0.2:2379"),
        udp("[fd00::2]:2379", "[fd00::1]:40000"),
    ];
    for frame in &frames {
        b.expect(&[Hook::TcIngress], frame, Verdict::Pass, "TC ingress");
    }
    assert_eq!(b.counters(&fault), FaultCounters::default());

    for frame in &frames {
        assert_eq!(b.verdict(Hook::Xdp, frame), Verdict::Drop);
    }
    let once: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(b.counters(&fault), counters(&once, &once));
}

/// An interface's role decides which hooks act on it: none when it is not in IFACES (or has
/// no role bits), TC egress only when it is egress-only (how faultd marks `lo`), XDP only
/// when it is ingress-only.
#[test]
fn interface_roles_decide_which_hooks_act() {
    let mut b = Bench::bare();
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:2379");

    // Not in IFACES at all, and only other interfaces are.
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "IFACES empty");
    b.role(0, ROLE_INGRESS | ROLE_EGRESS);
    b.role(7, ROLE_INGRESS | ROLE_EGRESS);
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "ifindex 1 not in IFACES");
    b.role(TEST_RUN_IFINDEX, 0);
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "no role bits");
    assert_eq!(b.counters(&fault), FaultCounters::default());

    b.role(TEST_RUN_IFINDEX, ROLE_EGRESS);
    b.expect(
        &[Hook::Xdp, Hook::TcIngress],
        &frame,
        Verdict::Pass,
        "egress-only, ingress hooks",
    );
    b.expect(
        &[Hook::TcEgress],
        &frame,
        Verdict::Drop,
        "egress-only, egress hook",
    );
    assert_eq!(b.counters(&fault), counters(&[&frame], &[&frame]));

    b.role(TEST_RUN_IFINDEX, ROLE_INGRESS);
    b.expect(
        &[Hook::TcEgress, Hook::TcIngress],
        &frame,
        Verdict::Pass,
        "ingress-only",
    );
    b.expect(&[Hook::Xdp], &frame, Verdict::Drop, "ingress-only, XDP");
    assert_eq!(
        b.counters(&fault),
        counters(&[&frame, &frame], &[&frame, &frame])
    );
}

// ---------------------------------------------------------------------------------------
// Removal
// ---------------------------------------------------------------------------------------

/// Removing faults takes effect at once: with one of two faults on a port left, only it
/// acts; with none left, packets pass and no counter moves.
#[test]
fn removed_faults_let_packets_pass_again() {
    let mut b = Bench::new();
    let to_port = b.add(drop_spec(2379, Protocol::Tcp, Direction::ToPort, None));
    let any = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    let to = tcp("10.0.0.1:40000", "10.0.0.2:2379");
    let from = tcp("10.0.0.2:2379", "10.0.0.1:40000");
    let dgram = udp("10.0.0.1:40000", "10.0.0.2:2379");
    for f in [&to, &from, &dgram] {
        b.expect(&DROP_HOOKS, f, Verdict::Drop, "both faults on");
    }

    b.remove(&any);
    b.expect(&DROP_HOOKS, &to, Verdict::Drop, "to-port fault still on");
    b.expect(
        &DROP_HOOKS,
        &from,
        Verdict::Pass,
        "any removed: from the port",
    );
    b.expect(&DROP_HOOKS, &dgram, Verdict::Pass, "any removed: udp");

    b.remove(&to_port);
    let before = b.counters(&to_port);
    for f in [&to, &from, &dgram] {
        b.expect(&ALL_HOOKS, f, Verdict::Pass, "all removed");
    }
    assert_eq!(
        b.counters(&to_port),
        before,
        "a removed fault is not counted"
    );

    // A new fault on the port acts again, counted from zero in a reused counter slot.
    let again = b.add(drop_spec(2379, Protocol::Udp, Direction::Both, None));
    b.expect(&DROP_HOOKS, &dgram, Verdict::Drop, "re-added");
    b.expect(&DROP_HOOKS, &to, Verdict::Pass, "re-added for udp only");
    assert_eq!(
        b.counters(&again),
        counters(&[&dgram, &dgram], &[&dgram, &dgram])
    );
}
