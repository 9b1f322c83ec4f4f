//! Several partitions cutting one address pair (issue #23, defect 2): each is tried, lowest
//! number first, until one acts. One for another protocol, one whose probability said no,
//! or one whose action another hook carries, leaves the packet to the next.

use std::sync::Arc;

use faultd::faults::{Action, Direction, FaultSpec, Peer, Protocol};
use faultd::partitions::Partition;

use super::fixture::*;

fn partition(protocol: Protocol, action: Action) -> FaultSpec {
    let peers = |s: &str| vec![Peer::parse(s, "test").unwrap()];
    let mut s = spec(action, 1, protocol, Direction::Both, None);
    s.target.port = 0;
    s.target.partition = Some(Arc::new(Partition {
        between: peers("10.0.0.0/24"),
        and: peers("10.0.1.5"),
        one_way: false,
    }));
    s
}

const DROP: Action = Action::Drop { probability: 1.0 };

/// `--protocol tcp` and `--protocol udp` partitions between the same sets: both protocols
/// are cut, whichever partition came first.
#[test]
fn partitions_for_each_protocol_on_one_pair_cut_both() {
    let mut b = Bench::new();
    let tcp_cut = b.add(partition(Protocol::Tcp, DROP));
    let udp_cut = b.add(partition(Protocol::Udp, DROP));
    let t = tcp("10.0.0.7:40000", "10.0.1.5:80");
    let u = udp("10.0.1.5:53", "10.0.0.7:40000");
    b.expect(&DROP_HOOKS, &t, Verdict::Drop, "tcp across");
    b.expect(&DROP_HOOKS, &u, Verdict::Drop, "udp across");
    assert_eq!(b.counters(&tcp_cut).acted_packets, 2);
    assert_eq!(b.counters(&udp_cut).acted_packets, 2);
    // The other order of installation too.
    b.remove(&tcp_cut);
    let tcp_cut = b.add(partition(Protocol::Tcp, DROP));
    b.expect(
        &DROP_HOOKS,
        &t,
        Verdict::Drop,
        "tcp across, installed second",
    );
    b.expect(
        &DROP_HOOKS,
        &u,
        Verdict::Drop,
        "udp across, installed first",
    );
    assert_eq!(b.counters(&tcp_cut).acted_packets, 2);
}

/// A `loss 10 %` partition and a `drop` partition on one pair: every packet is dropped,
/// by the loss when its draw says so, else by the drop; the counters add up to the packets.
#[test]
fn a_loss_partition_before_a_drop_partition_leaves_nothing_through() {
    let mut b = Bench::new();
    let loss = b.add(partition(Protocol::Any, Action::Drop { probability: 0.1 }));
    let drop = b.add(partition(Protocol::Any, DROP));
    let frame = udp("10.0.0.7:40000", "10.0.1.5:53");
    const N: u64 = 2000;
    for _ in 0..N {
        assert_eq!(b.verdict(Hook::Xdp, &frame), Verdict::Drop);
    }
    let (l, d) = (b.counters(&loss), b.counters(&drop));
    assert_eq!(
        l.matched_packets, N,
        "the loss is tried first, on every packet"
    );
    assert!(
        l.acted_packets > 0 && l.acted_packets < N / 2,
        "the loss drops about 10 %: {l:?}"
    );
    assert_eq!(
        d.matched_packets,
        N - l.acted_packets,
        "the rest meet the drop"
    );
    assert_eq!(d.acted_packets, N - l.acted_packets);
}

/// A reset partition (carried by TC) and a drop partition on one pair: at XDP, where resets
/// are not carried, the drop acts.
#[test]
fn a_partition_another_hook_carries_leaves_the_packet_to_the_next() {
    let mut b = Bench::new();
    b.add(partition(Protocol::Any, Action::Reset { probability: 1.0 }));
    let drop = b.add(partition(Protocol::Any, DROP));
    let frame = tcp("10.0.0.7:40000", "10.0.1.5:80");
    assert_eq!(b.verdict(Hook::Xdp, &frame), Verdict::Drop);
    assert_eq!(b.counters(&drop).acted_packets, 1);
    // At TC the reset comes first.
    assert_eq!(b.verdict(Hook::TcEgress, &frame), Verdict::Redirect);
}
