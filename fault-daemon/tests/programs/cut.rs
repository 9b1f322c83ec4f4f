//! A limit's cut with `--then reset`: the RST for the packet's sender comes out of the
//! program (in place of the packet, as `reset` forges it), and the RST for its receiver is a
//! real copy sent on the packet's way through `bpf_clone_redirect`. Under
//! BPF_PROG_TEST_RUN that copy goes to the loopback of the caller's network namespace, so
//! each test runs in a namespace of its own and reads it there with a packet socket
//! (see `capture`). Both RSTs are checked field by field and byte for byte against the ones
//! etherparse builds, checksums verified independently.
//!
//! The receiver's RST (RFC 793 and RFC 5961 §3.2): the packet's addresses, ports and MACs as
//! they were, sequence number = the packet's (the receiver's `rcv_nxt`, since the limit let
//! every earlier byte through), acknowledgment = the packet's with ACK, no payload, window
//! 0, TTL / hop limit 64, IPv4 id 0 with DF.

use etherparse::IpHeaders;
use fault_common::{ROLE_EGRESS, ROLE_INGRESS, ROLE_LOOPBACK};
use faultd::faults::{Action, Direction, Protocol, Then};

use super::capture::{Capture, PACKET_OUTGOING};
use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

const SENDER_MAC: [u8; 6] = [0x02, 0x5e, 0x4d, 0xe7, 0x00, 0x01];
const RECEIVER_MAC: [u8; 6] = [0x02, 0x7e, 0xce, 0x1f, 0xe7, 0x02];
const SEQ: u32 = 0x1122_3344;
const ACK_NO: u32 = 0x5566_7788;

/// A data segment (ACK|PSH, 32 bytes) from `src` to `dst`, between the two MACs.
fn data(src: &str, dst: &str) -> Vec<u8> {
    FrameBuilder::tcp(sock(src), sock(dst))
        .src_mac(SENDER_MAC)
        .dst_mac(RECEIVER_MAC)
        .flags(ACK | PSH)
        .seq(SEQ)
        .ack(ACK_NO)
        .window(512)
        .payload(&[0x5a; 32])
        .build()
}

/// The RST etherparse builds from `src` to `dst` (MACs likewise) with these numbers and flags.
fn rst(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
) -> Vec<u8> {
    FrameBuilder::tcp(src, dst)
        .src_mac(src_mac)
        .dst_mac(dst_mac)
        .flags(flags)
        .seq(seq)
        .ack(ack)
        .window(0)
        .ttl(64)
        .ipv4_id(0)
        .build()
}

/// Checks `got` is `want`, naming the field that differs first, checksums verified.
fn check(got: &[u8], want: &[u8], what: &str) {
    let context = || format!("{what}\ngot:\n{}wanted:\n{}", hex(got), hex(want));
    let g = parse_frame(got).unwrap_or_else(|e| panic!("{e}: {}", context()));
    let w = parse_frame(want).unwrap();
    assert_eq!(g.eth.source, w.eth.source, "Ethernet source: {}", context());
    assert_eq!(
        g.eth.destination,
        w.eth.destination,
        "Ethernet destination: {}",
        context()
    );
    assert_eq!(
        (g.src(), g.dst()),
        (w.src(), w.dst()),
        "addresses and ports: {}",
        context()
    );
    let (gt, wt) = (g.tcp().unwrap(), w.tcp().unwrap());
    assert_eq!(
        gt.sequence_number,
        wt.sequence_number,
        "sequence: {}",
        context()
    );
    assert_eq!(
        gt.acknowledgment_number,
        wt.acknowledgment_number,
        "acknowledgment: {}",
        context()
    );
    assert_eq!(flags(gt), flags(wt), "flags: {}", context());
    assert!(g.payload.is_empty(), "payload: {}", context());
    match &g.ip {
        IpHeaders::Ipv4(h, _) => assert!(h.options.is_empty(), "IPv4 options: {}", context()),
        IpHeaders::Ipv6(_, exts) => assert_eq!(
            *exts,
            Default::default(),
            "IPv6 extension headers: {}",
            context()
        ),
    }
    verify_ipv4_checksum(got).unwrap_or_else(|e| panic!("{e}: {}", context()));
    verify_l4_checksum(got).unwrap_or_else(|e| panic!("{e}: {}", context()));
    assert_eq!(got, want, "byte for byte: {}", context());
}

fn limit_bytes(then: Then) -> Action {
    Action::LimitBytes { bytes: 0, then }
}

/// For each hook that carries a cut on an interface of `role`: a data segment past
/// `limit-bytes 0 --then reset` comes out as the sender's RST with `verdict`, and exactly one
/// copy, the receiver's RST, is seen on the namespace's `lo` (sent out of it from egress,
/// received on it from ingress).
fn cuts_both_ends(role: u32, hooks: &[(Hook, Verdict)]) {
    require_root();
    let ns = super::harness::Netns::new("pcut");
    ns.run(|| {
        let mut b = Bench::bare();
        b.role(TEST_RUN_IFINDEX, role);
        let fault = b.add(spec(
            limit_bytes(Then::Reset),
            8800,
            Protocol::Tcp,
            Direction::Both,
            None,
        ));
        let capture = Capture::on_loopback();
        assert_eq!(
            capture.drain(usize::MAX),
            [],
            "a fresh namespace's lo is quiet"
        );
        for (client, server) in [
            ("10.0.0.1:40000", "10.0.0.2:8800"),
            ("[fd00::1]:40000", "[fd00::2]:8800"),
        ] {
            // Both directions: to the port and from it.
            for (src, dst) in [(client, server), (server, client)] {
                let frame = data(src, dst);
                for &(hook, verdict) in hooks {
                    let what = format!("{hook:?}, {src} -> {dst}");
                    let run = b.run(hook, &frame);
                    assert_eq!(run.verdict, verdict, "{what}: the sender's RST's verdict");
                    // RFC 793: the segment had ACK, so <SEQ=SEG.ACK><CTL=RST>.
                    let to_sender = rst(
                        (RECEIVER_MAC, SENDER_MAC),
                        sock(dst),
                        sock(src),
                        ACK_NO,
                        0,
                        RST,
                    );
                    check(&run.out, &to_sender, &format!("{what}: the sender's RST"));

                    let copies = capture.drain(usize::MAX);
                    let sent: Vec<_> = match hook {
                        // Out of lo, then back in: the outgoing one is the copy as sent.
                        Hook::TcEgress => {
                            copies.iter().filter(|c| c.0 == PACKET_OUTGOING).collect()
                        }
                        _ => copies.iter().collect(),
                    };
                    assert_eq!(
                        sent.len(),
                        1,
                        "{what}: one receiver's RST, seen with sll_pkttype {:?}",
                        copies.iter().map(|c| c.0).collect::<Vec<_>>()
                    );
                    let to_receiver = rst(
                        (SENDER_MAC, RECEIVER_MAC),
                        sock(src),
                        sock(dst),
                        SEQ,
                        ACK_NO,
                        RST | ACK,
                    );
                    check(
                        &sent[0].1,
                        &to_receiver,
                        &format!("{what}: the receiver's RST"),
                    );
                }
            }
        }
        assert!(b.counters(&fault).acted_packets > 0);
        b.remove(&fault);
    });
}

/// On an interface other than loopback, each TC hook cuts both ends: the sender's RST is
/// redirected back (out at ingress, in at egress) and the receiver's goes on.
#[test]
fn a_cut_sends_a_rst_to_both_ends() {
    cuts_both_ends(
        ROLE_INGRESS | ROLE_EGRESS,
        &[
            (Hook::TcIngress, Verdict::Redirect),
            (Hook::TcEgress, Verdict::Redirect),
        ],
    );
}

/// On loopback (egress only), the sender's RST goes on in place of the segment and the
/// receiver's is sent out of lo beside it.
#[test]
fn a_cut_on_loopback_sends_a_rst_to_both_ends() {
    cuts_both_ends(
        ROLE_EGRESS | ROLE_LOOPBACK,
        &[(Hook::TcEgress, Verdict::Pass)],
    );
}

/// `--then drop` stays silent: no RST to anyone, no copy.
#[test]
fn a_cut_with_then_drop_sends_nothing() {
    require_root();
    let ns = super::harness::Netns::new("pcutd");
    ns.run(|| {
        let mut b = Bench::new();
        b.add(spec(
            limit_bytes(Then::Drop),
            8801,
            Protocol::Tcp,
            Direction::Both,
            None,
        ));
        let capture = Capture::on_loopback();
        for frame in [
            data("10.0.0.1:40000", "10.0.0.2:8801"),
            data("[fd00::1]:40000", "[fd00::2]:8801"),
        ] {
            assert_eq!(b.verdict(Hook::TcEgress, &frame), Verdict::Drop);
            assert_eq!(b.verdict(Hook::Xdp, &frame), Verdict::Drop);
        }
        assert_eq!(
            capture.drain(usize::MAX),
            [],
            "a dropped flow's ends hear nothing"
        );
    });
}
