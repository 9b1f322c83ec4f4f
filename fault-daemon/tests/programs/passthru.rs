//! The pass-through path: the faulted-ports bitmap (fault_common::faulted_port_bits) that
//! the programs read before any rule lookup. A port's bit and its block's summary bit are
//! kept by the daemon as rules come and go; a fault must act whenever its rule is there,
//! whatever its neighbours in the bitmap do.

use faultd::faults::{Direction, Protocol};

use super::fixture::*;

/// Both directions of a TCP flow to `port`, in IPv4 and IPv6.
fn tcp_frames(port: u16) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for flow in flows(port) {
        for to_port in [true, false] {
            let (src, dst) = oriented(&flow, to_port);
            frames.push(tcp(src, dst));
        }
    }
    frames
}

fn expect_dropped(b: &mut Bench, port: u16, what: &str) {
    for frame in tcp_frames(port) {
        b.expect(&DROP_HOOKS, &frame, Verdict::Drop, what);
    }
}

fn expect_passed(b: &mut Bench, port: u16, what: &str) {
    for frame in tcp_frames(port) {
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, what);
    }
}

/// 2048 and 2049 share a word of the bitmap; 3071 is another word of the same block of
/// 1 024 ports (one summary bit). Removing a fault clears its port only.
#[test]
fn removing_a_fault_leaves_its_neighbours_in_the_bitmap_acting() {
    let mut b = Bench::new();
    let ports = [2048u16, 2049, 3071];
    let faults: Vec<_> = ports
        .iter()
        .map(|&p| b.add(drop_spec(p, Protocol::Tcp, Direction::Both, None)))
        .collect();
    for &p in &ports {
        expect_dropped(&mut b, p, &format!("port {p}, all three faulted"));
    }
    // Neither the other protocol nor the next block's first port.
    for flow in flows(2049) {
        b.expect(
            &ALL_HOOKS,
            &udp(&flow.0, &flow.1),
            Verdict::Pass,
            "udp on 2049",
        );
    }
    expect_passed(&mut b, 3072, "port 3072, in the next block");

    b.remove(&faults[0]);
    expect_passed(&mut b, 2048, "2048 after its fault went");
    expect_dropped(&mut b, 2049, "2049, same word as the removed 2048");
    expect_dropped(&mut b, 3071, "3071, same block as the removed 2048");

    b.remove(&faults[1]);
    expect_passed(&mut b, 2049, "2049 after its fault went");
    expect_dropped(&mut b, 3071, "3071, last of its block");

    b.remove(&faults[2]);
    for &p in &ports {
        expect_passed(&mut b, p, &format!("port {p}, no fault left"));
    }
    // And back: a new fault on a cleared port acts at once.
    b.add(drop_spec(2048, Protocol::Tcp, Direction::Both, None));
    expect_dropped(&mut b, 2048, "2048 faulted again");
}

/// A port faulted as `any` is faulted for both protocols; removing it clears both.
#[test]
fn a_fault_on_both_protocols_sets_and_clears_both_bits() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(5353, Protocol::Any, Direction::Both, None));
    for flow in flows(5353) {
        b.expect(&DROP_HOOKS, &udp(&flow.0, &flow.1), Verdict::Drop, "udp");
        b.expect(&DROP_HOOKS, &tcp(&flow.0, &flow.1), Verdict::Drop, "tcp");
    }
    b.remove(&fault);
    for flow in flows(5353) {
        b.expect(&ALL_HOOKS, &udp(&flow.0, &flow.1), Verdict::Pass, "udp");
        b.expect(&ALL_HOOKS, &tcp(&flow.0, &flow.1), Verdict::Pass, "tcp");
    }
}
