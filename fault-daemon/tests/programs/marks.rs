//! `skb->mark` belongs to others (Cilium, Calico, fwmark routing): the programs neither
//! read nor write it. The copies a duplicate fault sends are recognised without a mark: a
//! copy sent out re-enters the egress program at once, on the same CPU, inside
//! bpf_clone_redirect, while a per-CPU flag says "copying"; a copy sent in comes back
//! through the receive backlog later and is recognised by its fingerprint (rules of
//! fault-ebpf/src/copies.rs).

use aya::programs::{SchedClassifier, TcAttachType};
use faultd::datapath::{TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM};
use faultd::faults::{Action, Direction, Protocol};

use super::capture::{Capture, PACKET_OUTGOING};
use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

/// Marks with the bits others use, 0x40000000 (faultd's old duplicate bit) among them.
const MARKS: [u32; 6] = [
    0,
    0x4000_0000,
    0x4000_0005,
    0xc000_0000,
    0xffff_ffff,
    0x0000_0e00,
];

/// Packets on ports without faults leave byte for byte and mark for mark as they came,
/// whatever their mark, at both TC hooks, with faults installed on other ports.
#[test]
fn foreign_marks_on_ports_without_faults_are_left_alone() {
    let mut b = Bench::new();
    b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    b.add(spec(
        Action::Stall,
        2380,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    for (client, server) in flows(9000) {
        for frame in [tcp(&client, &server), udp(&server, &client)] {
            for hook in [Hook::TcIngress, Hook::TcEgress] {
                for mark in MARKS {
                    let (run, ctx) = b.run_skb(hook, &frame, &SkBuff::new().with_mark(mark));
                    let what = format!("{hook:?} mark {mark:#x}\n{}", hex(&frame));
                    assert_eq!(run.verdict, Verdict::Pass, "{what}");
                    assert_eq!(run.out, frame, "{what}");
                    assert_eq!(
                        ctx.mark, mark,
                        "the mark must come out as it went in: {what}"
                    );
                }
            }
        }
    }
}

/// A mark, whatever its bits, does not exempt a packet from the faults of its port: it is
/// dropped, or stalled with its mark kept.
#[test]
fn foreign_marks_do_not_exempt_packets_from_faults() {
    let mut b = Bench::new();
    let dropped = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    b.add(spec(
        Action::Stall,
        2380,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    for mark in MARKS {
        for (client, server) in flows(2379) {
            let frame = tcp(&client, &server);
            let (run, _) = b.run_skb(Hook::TcEgress, &frame, &SkBuff::new().with_mark(mark));
            assert_eq!(run.verdict, Verdict::Drop, "mark {mark:#x}: {client}");
        }
        for (client, server) in flows(2380) {
            let frame = FrameBuilder::tcp(sock(&client), sock(&server))
                .flags(ACK | PSH)
                .window(4321)
                .payload(b"x")
                .build();
            for hook in [Hook::TcIngress, Hook::TcEgress] {
                let (run, ctx) = b.run_skb(hook, &frame, &SkBuff::new().with_mark(mark));
                let what = format!("{hook:?} mark {mark:#x} {client}");
                assert_eq!(run.verdict, Verdict::Pass, "{what}");
                let p = parse_frame(&run.out).expect("a frame");
                assert_eq!(p.tcp().unwrap().window_size, 0, "stalled: {what}");
                assert_eq!(ctx.mark, mark, "{what}");
            }
        }
    }
    assert_eq!(b.counters(&dropped).acted_packets, (MARKS.len() * 2) as u64);
}

/// Attaches one of the TC programs of `b` to this namespace's `lo` (TCX), so that what
/// bpf_clone_redirect sends there meets the program again, as on an interface faultd holds.
fn attach_to_lo(
    b: &mut Bench,
    name: &str,
    at: TcAttachType,
) -> aya::programs::tc::SchedClassifierLinkId {
    // Before TCX (6.6) a TC program hangs off a clsact qdisc, which dies with the namespace.
    let _ = aya::programs::tc::qdisc_add_clsact("lo");
    let prog: &mut SchedClassifier =
        b.dp.ebpf_mut()
            .program_mut(name)
            .unwrap()
            .try_into()
            .unwrap();
    prog.attach("lo", at)
        .unwrap_or_else(|e| panic!("attaching {name} to lo: {e}"))
}

fn detach(b: &mut Bench, name: &str, link: aya::programs::tc::SchedClassifierLinkId) {
    let prog: &mut SchedClassifier =
        b.dp.ebpf_mut()
            .program_mut(name)
            .unwrap()
            .try_into()
            .unwrap();
    prog.detach(link).expect("detaching");
}

/// `duplicate 100 %` with the programs attached where the copy goes: the copy meets the
/// program again and passes (one copy, not a chain of copies), with no mark involved —
/// the original's mark, 0x40000000 included, comes out as it went in. Egress: the copy is
/// sent out of `lo` once (and comes back in). Ingress: the copy is received once.
#[test]
fn duplicate_copies_are_recognised_without_a_mark() {
    require_root();
    let ns = super::harness::Netns::new("pmark");
    ns.run(|| {
        let mut b = Bench::new();
        let fault = b.add(spec(
            Action::Duplicate { probability: 1.0 },
            8700,
            Protocol::Any,
            Direction::Both,
            None,
        ));
        let capture = Capture::on_loopback();
        assert_eq!(capture.drain(10), [], "a fresh namespace's lo is quiet");
        let frames = [
            tcp("10.0.0.1:40000", "10.0.0.2:8700"),
            udp("[fd00::2]:8700", "[fd00::1]:40000"),
        ];
        let mut runs = 0;
        for (name, at, hook) in [
            (TC_EGRESS_PROGRAM, TcAttachType::Egress, Hook::TcEgress),
            (TC_INGRESS_PROGRAM, TcAttachType::Ingress, Hook::TcIngress),
        ] {
            let link = attach_to_lo(&mut b, name, at);
            for frame in &frames {
                for mark in [0x4000_0000, 0x5] {
                    let what = format!("{hook:?} mark {mark:#x}\n{}", hex(frame));
                    let (run, ctx) = b.run_skb(hook, frame, &SkBuff::new().with_mark(mark));
                    runs += 1;
                    assert_eq!(run.verdict, Verdict::Pass, "{what}");
                    assert_eq!(run.out, *frame, "{what}");
                    assert_eq!(ctx.mark, mark, "the original keeps its mark: {what}");
                    let copies = capture.drain(20);
                    eprintln!(
                        "{hook:?}: copies seen on lo with sll_pkttype {:?}",
                        copies.iter().map(|c| c.0).collect::<Vec<_>>()
                    );
                    for (_, copy) in &copies {
                        assert_eq!(copy, frame, "the copy is the frame: {what}");
                    }
                    let outgoing = copies.iter().filter(|c| c.0 == PACKET_OUTGOING).count();
                    let received = copies.len() - outgoing;
                    match hook {
                        // Sent out once; lo hands it back in once.
                        Hook::TcEgress => assert_eq!((outgoing, received), (1, 1), "{what}"),
                        _ => assert_eq!((outgoing, received), (0, 1), "{what}"),
                    }
                }
            }
            detach(&mut b, name, link);
        }
        // Counted once per original: the copies were not acted on again.
        assert_eq!(b.counters(&fault).acted_packets, runs);
    });
}
