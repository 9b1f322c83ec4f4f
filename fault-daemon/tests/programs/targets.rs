//! Richer targets (issue #14): port ranges, port tuples and address-only partitions, IPv4
//! and IPv6, with the packets just outside each one (the ports beside a range, the other
//! order of a one-way tuple, addresses one bit outside a prefix) that must pass untouched.

use std::sync::Arc;

use faultd::faults::{Action, Direction, FaultSpec, Peer, Protocol};
use faultd::partitions::Partition;

use super::fixture::*;

/// The hooks that carry a reset away from lo.
const RESET_HOOKS: [Hook; 2] = [Hook::TcIngress, Hook::TcEgress];

fn range(first: u16, last: u16, protocol: Protocol) -> FaultSpec {
    let mut s = drop_spec(first, protocol, Direction::Both, None);
    s.target.last_port = Some(last);
    s
}

fn tuple(port: u16, remote: u16, direction: Direction) -> FaultSpec {
    let mut s = drop_spec(port, Protocol::Any, direction, None);
    s.target.remote_port = Some(remote);
    s
}

fn partition(between: &[&str], and: &[&str], one_way: bool, action: Action) -> FaultSpec {
    let peers = |s: &[&str]| {
        s.iter()
            .map(|t| Peer::parse(t, "test").unwrap())
            .collect::<Vec<_>>()
    };
    let mut s = spec(action, 1, Protocol::Any, Direction::Both, None);
    s.target.port = 0;
    s.target.partition = Some(Arc::new(Partition {
        between: peers(between),
        and: peers(and),
        one_way,
    }));
    s
}

fn drop_partition(between: &[&str], and: &[&str], one_way: bool) -> FaultSpec {
    partition(between, and, one_way, Action::Drop { probability: 1.0 })
}

/// `--port 2379-2381`: every port of the range, both ways, v4 and v6; 2378 and 2382 pass.
#[test]
fn a_range_drops_each_of_its_ports_and_not_the_ports_beside_it() {
    let mut b = Bench::new();
    let fault = b.add(range(2379, 2381, Protocol::Tcp));
    let mut dropped = Vec::new();
    for port in 2379..=2381 {
        for flow in flows(port) {
            for to_port in [true, false] {
                let (src, dst) = oriented(&flow, to_port);
                dropped.push(tcp(src, dst));
            }
        }
    }
    for frame in &dropped {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "inside the range");
    }
    for port in [2378, 2382] {
        for flow in flows(port) {
            for to_port in [true, false] {
                let (src, dst) = oriented(&flow, to_port);
                b.expect(
                    &ALL_HOOKS,
                    &tcp(src, dst),
                    Verdict::Pass,
                    "beside the range",
                );
            }
        }
        // UDP on the range's ports: the range is TCP only.
        b.expect(
            &ALL_HOOKS,
            &udp("10.0.0.1:40000", "10.0.0.2:2380"),
            Verdict::Pass,
            "udp",
        );
    }
    let each = twice(&dropped);
    assert_eq!(b.counters(&fault), counters(&each, &each));
    // Removal takes every port's entry with it.
    b.remove(&fault);
    for frame in &dropped {
        b.expect(&ALL_HOOKS, frame, Verdict::Pass, "range removed");
    }
}

/// `--port 2380 --remote-port 43210`: the flow between the two ports, either direction,
/// TCP and UDP, v4 and v6; the other end on 43209 or 43211 passes, and so does 2380 with
/// a third port.
#[test]
fn a_tuple_drops_the_flow_between_its_two_ports_either_way() {
    let mut b = Bench::new();
    let fault = b.add(tuple(2380, 43210, Direction::Both));
    let mut dropped = Vec::new();
    for (a, c) in [("10.0.0.1", "10.0.0.2"), ("[fd00::1]", "[fd00::2]")] {
        for build in [tcp, udp] {
            let (remote, port) = (format!("{a}:43210"), format!("{c}:2380"));
            dropped.push(build(&remote, &port));
            dropped.push(build(&port, &remote));
            for other in [43209, 43211, 2381] {
                let remote = format!("{a}:{other}");
                b.expect(
                    &ALL_HOOKS,
                    &build(&remote, &port),
                    Verdict::Pass,
                    "other port",
                );
                b.expect(
                    &ALL_HOOKS,
                    &build(&port, &remote),
                    Verdict::Pass,
                    "other port",
                );
            }
        }
    }
    for frame in &dropped {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "the tuple");
    }
    let each = twice(&dropped);
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// A one-way tuple (`--direction to-port`): 43210 → 2380 is dropped, the other order
/// (2380 → 43210) passes.
#[test]
fn a_one_way_tuple_spares_the_other_order() {
    let mut b = Bench::new();
    b.add(tuple(2380, 43210, Direction::ToPort));
    for (a, c) in [("10.0.0.1", "10.0.0.2"), ("[fd00::1]", "[fd00::2]")] {
        let (remote, port) = (format!("{a}:43210"), format!("{c}:2380"));
        b.expect(&DROP_HOOKS, &tcp(&remote, &port), Verdict::Drop, "its way");
        b.expect(
            &ALL_HOOKS,
            &tcp(&port, &remote),
            Verdict::Pass,
            "other order",
        );
    }
}

/// A partition between 10.0.0.0/24 and 10.0.1.5 (v4), and fd00::/64 and fd01::1 (v6):
/// every port, TCP and UDP, both ways; one bit outside either side passes.
#[test]
fn a_partition_cuts_its_address_pairs_and_not_one_bit_outside() {
    let mut b = Bench::new();
    let fault = b.add(drop_partition(
        &["10.0.0.0/24", "fd00::/64"],
        &["10.0.1.5", "fd01::1"],
        false,
    ));
    let pairs = [
        ("10.0.0.9", "10.0.1.5"),
        ("10.0.0.0", "10.0.1.5"),
        ("10.0.0.255", "10.0.1.5"),
        ("[fd00::5]", "[fd01::1]"),
        ("[fd00::ffff:ffff:ffff:ffff]", "[fd01::1]"),
    ];
    let mut dropped = Vec::new();
    for (a, c) in pairs {
        for build in [tcp, udp] {
            for (pa, pc) in [(40000, 2379), (53, 53), (1, 65535)] {
                let (x, y) = (format!("{a}:{pa}"), format!("{c}:{pc}"));
                dropped.push(build(&x, &y));
                dropped.push(build(&y, &x));
            }
        }
    }
    for frame in &dropped {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "across the partition");
    }
    let outside = [
        // One bit outside the /24 (bit 23), and beside the /32.
        ("10.0.1.9", "10.0.1.5"),
        ("10.0.0.9", "10.0.1.4"),
        ("10.0.0.9", "10.0.1.7"),
        // One bit outside the /64 (bit 63), and beside fd01::1.
        ("[fd00:0:0:1::5]", "[fd01::1]"),
        ("[fd00::5]", "[fd01::0]"),
        ("[fd00::5]", "[fd01::3]"),
        // Within one side.
        ("10.0.0.1", "10.0.0.2"),
        // The same addresses in the other family's form do not match across families.
        ("[::ffff:10.0.0.9]", "[::ffff:10.0.1.5]"),
    ];
    for (a, c) in outside {
        for build in [tcp, udp] {
            let (x, y) = (format!("{a}:40000"), format!("{c}:2379"));
            b.expect(&ALL_HOOKS, &build(&x, &y), Verdict::Pass, "outside");
            b.expect(&ALL_HOOKS, &build(&y, &x), Verdict::Pass, "outside");
        }
    }
    let each = twice(&dropped);
    assert_eq!(b.counters(&fault), counters(&each, &each));
    b.remove(&fault);
    for frame in &dropped {
        b.expect(&ALL_HOOKS, frame, Verdict::Pass, "partition removed");
    }
}

/// `--one-way`: from `between` to `and` only; the answers pass.
#[test]
fn a_one_way_partition_cuts_one_direction_only() {
    let mut b = Bench::new();
    b.add(drop_partition(
        &["10.0.0.2", "fd00::2"],
        &["10.0.0.3", "fd00::3"],
        true,
    ));
    for (a, c) in [("10.0.0.2", "10.0.0.3"), ("[fd00::2]", "[fd00::3]")] {
        for build in [tcp, udp] {
            let (x, y) = (format!("{a}:40000"), format!("{c}:80"));
            b.expect(&DROP_HOOKS, &build(&x, &y), Verdict::Drop, "between → and");
            b.expect(&ALL_HOOKS, &build(&y, &x), Verdict::Pass, "and → between");
        }
    }
}

/// Overlapping partitions: 10.0.0.7 is in partition A's /24 and is partition B's own side;
/// each cuts its own pairs, whichever prefix is longest.
#[test]
fn overlapping_partitions_each_cut_their_own_pairs() {
    let mut b = Bench::new();
    let a = b.add(drop_partition(&["10.0.0.0/24"], &["10.0.1.5"], false));
    let c = b.add(drop_partition(&["10.0.0.7"], &["10.0.2.0/24"], true));
    b.expect(
        &DROP_HOOKS,
        &tcp("10.0.0.7:1000", "10.0.1.5:80"),
        Verdict::Drop,
        "A, from the /32 inside its /24",
    );
    b.expect(
        &DROP_HOOKS,
        &tcp("10.0.0.7:1000", "10.0.2.9:80"),
        Verdict::Drop,
        "B",
    );
    b.expect(
        &ALL_HOOKS,
        &tcp("10.0.0.8:1000", "10.0.2.9:80"),
        Verdict::Pass,
        "B names 10.0.0.7 only",
    );
    b.expect(
        &ALL_HOOKS,
        &tcp("10.0.2.9:80", "10.0.0.7:1000"),
        Verdict::Pass,
        "B is one-way",
    );
    // Removing A leaves B whole.
    b.remove(&a);
    b.expect(
        &ALL_HOOKS,
        &tcp("10.0.0.7:1000", "10.0.1.5:80"),
        Verdict::Pass,
        "A removed",
    );
    b.expect(
        &DROP_HOOKS,
        &tcp("10.0.0.7:1000", "10.0.2.9:80"),
        Verdict::Drop,
        "B stays",
    );
    b.remove(&c);
}

/// `--mode reset`: TCP is answered with a RST (at the TC hooks, as any reset), UDP dropped
/// there; RSTs themselves pass (never a RST for a RST).
#[test]
fn a_reset_partition_answers_tcp_and_drops_the_rest() {
    let mut b = Bench::new();
    b.add(partition(
        &["10.0.0.2"],
        &["10.0.0.3"],
        false,
        Action::Reset { probability: 1.0 },
    ));
    let data = tcp("10.0.0.2:40000", "10.0.0.3:80");
    for hook in RESET_HOOKS {
        assert_eq!(b.run(hook, &data).verdict, Verdict::Redirect, "{hook:?}");
    }
    b.expect(
        &[Hook::Xdp],
        &data,
        Verdict::Pass,
        "XDP leaves resets to TC",
    );
    let dgram = udp("10.0.0.3:53", "10.0.0.2:40000");
    b.expect(&RESET_HOOKS, &dgram, Verdict::Drop, "udp under reset");
    let rst = super::packets::FrameBuilder::tcp(
        super::packets::sock("10.0.0.3:80"),
        super::packets::sock("10.0.0.2:40000"),
    )
    .flags(super::packets::tcp_flags::RST | super::packets::tcp_flags::ACK)
    .build();
    b.expect(&ALL_HOOKS, &rst, Verdict::Pass, "a RST");
}

/// Overlaps: a partition acts before any port's faults. A reset on port 80 would redirect
/// the packet; the partition's drop comes first and the port's fault never sees it.
#[test]
fn a_partition_acts_before_the_ports_faults() {
    let mut b = Bench::new();
    let reset = b.add(spec(
        Action::Reset { probability: 1.0 },
        80,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let cut = b.add(drop_partition(&["10.0.0.2"], &["10.0.0.3"], false));
    let frame = tcp("10.0.0.2:40000", "10.0.0.3:80");
    b.expect(
        &[Hook::TcEgress],
        &frame,
        Verdict::Drop,
        "the partition first",
    );
    assert_eq!(b.counters(&reset), counters(&[], &[]));
    assert_eq!(
        b.counters(&cut),
        counters(&[frame.as_slice()], &[frame.as_slice()])
    );
    // Off the partition's addresses the port's fault acts as before.
    let other = tcp("10.0.0.4:40000", "10.0.0.3:80");
    assert_eq!(b.run(Hook::TcEgress, &other).verdict, Verdict::Redirect);
}

/// Overlaps on one port: a tuple, a range and a single-port fault are slots of the same
/// per-port list, in the order they were added. The older tuple's reset acts before the
/// range's drop on the tuple's flow; other flows of the port meet the range's drop first.
#[test]
fn on_one_port_the_older_fault_acts_first_whatever_its_target() {
    let mut b = Bench::new();
    let mut tuple_reset = spec(
        Action::Reset { probability: 1.0 },
        2380,
        Protocol::Tcp,
        Direction::Both,
        None,
    );
    tuple_reset.target.remote_port = Some(43210);
    let tuple = b.add(tuple_reset);
    let range = b.add(range(2379, 2381, Protocol::Tcp));
    let single = b.add(spec(
        Action::Reset { probability: 1.0 },
        2380,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let on_tuple = tcp("10.0.0.1:43210", "10.0.0.2:2380");
    let other = tcp("10.0.0.1:43211", "10.0.0.2:2380");
    assert_eq!(
        b.run(Hook::TcEgress, &on_tuple).verdict,
        Verdict::Redirect,
        "the tuple's reset first"
    );
    assert_eq!(b.counters(&range), counters(&[], &[]));
    b.expect(&[Hook::TcEgress], &other, Verdict::Drop, "the range's drop");
    assert_eq!(b.counters(&single), counters(&[], &[]), "never reached");
    assert_eq!(
        b.counters(&tuple),
        counters(&[on_tuple.as_slice()], &[on_tuple.as_slice()])
    );
}
