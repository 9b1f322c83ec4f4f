//! The copies a duplicate fault sends are recognised by a token only the copy carries, in
//! the first two words of `skb->cb`, matched by deleting its pending entry in `COPIES`:
//! exactly one skb can (fault-ebpf/src/copies.rs; issue #23, defect 1). These tests replay,
//! in a fixed order, the interleavings that fooled the fingerprint this replaced: identical
//! originals before the first copy comes back, a copy carrying a wrong or a stale token.
//!
//! BPF_PROG_TEST_RUN sends a copy to the loopback of the caller's namespace, so each test
//! runs in a namespace of its own. Where no program is attached to that `lo`, a copy sent in
//! waits in the backlog unseen by faultd, as it would behind a busy CPU; the test then plays
//! the copy itself: the same frame with the token in `cb`.

use faultd::faults::{Action, Direction, Protocol};

use super::capture::{Capture, PACKET_OUTGOING};
use super::fixture::*;
use super::packets::*;

const PORT: u16 = 8700;

fn duplicate_all(b: &mut Bench) -> faultd::faults::Fault {
    b.add(spec(
        Action::Duplicate { probability: 1.0 },
        PORT,
        Protocol::Any,
        Direction::Both,
        None,
    ))
}

/// The same-size datagrams of one flow: across a veth their fingerprints were equal.
fn frames() -> [Vec<u8>; 2] {
    [
        udp("10.0.0.1:40000", "10.0.0.2:8700"),
        udp("[fd00::2]:8700", "[fd00::1]:40000"),
    ]
}

fn with_cb(cb: [u32; 5]) -> SkBuff {
    let mut ctx = SkBuff::new();
    ctx.cb = cb;
    ctx
}

/// Copies received on `lo` (not sent out of it).
fn received(capture: &Capture) -> usize {
    capture
        .drain(64)
        .iter()
        .filter(|c| c.0 != PACKET_OUTGOING)
        .count()
}

/// Two identical datagrams reach TC ingress before the first one's copy comes back (one
/// NAPI poll holding both): both are originals, each is copied once and counted once. The
/// fingerprint took the second for the copy and let it pass uncopied.
#[test]
fn identical_datagrams_are_each_copied_before_any_copy_returns() {
    require_root();
    let ns = super::harness::Netns::new("pcopy1");
    ns.run(|| {
        let mut b = Bench::new();
        let fault = duplicate_all(&mut b);
        let capture = Capture::on_loopback();
        assert_eq!(capture.drain(16), [], "a fresh namespace's lo is quiet");
        let mut runs = 0;
        for frame in &frames() {
            for i in 0..3 {
                let what = format!("original {i}\n{}", hex(frame));
                let (run, _) = b.run_skb(Hook::TcIngress, frame, &SkBuff::new());
                runs += 1;
                assert_eq!(run.verdict, Verdict::Pass, "{what}");
                assert_eq!(run.out, *frame, "{what}");
                assert_eq!(received(&capture), 1, "one copy sent in: {what}");
            }
        }
        let c = b.counters(&fault);
        assert_eq!(
            (c.matched_packets, c.acted_packets),
            (runs, runs),
            "every original matched and copied once"
        );
    });
}

/// The copy is the one packet that carries its token: taken once (it passes untouched,
/// uncounted, not copied again, with the original's `cb` words back), and a packet that
/// carries the token again afterwards (stale), or a token never sent, is an original.
#[test]
fn only_the_copy_with_a_pending_token_is_taken_once() {
    require_root();
    let ns = super::harness::Netns::new("pcopy2");
    ns.run(|| {
        let mut b = Bench::new();
        let fault = duplicate_all(&mut b);
        let capture = Capture::on_loopback();
        let frame = &frames()[0];
        // Foreign words in cb: the original keeps them, and the copy gets them back.
        let foreign = [0xdead_beef, 0x1234_5678, 3, 4, 5];
        let (run, ctx) = b.run_skb(Hook::TcIngress, frame, &with_cb(foreign));
        assert_eq!(run.verdict, Verdict::Pass);
        assert_eq!(ctx.cb, foreign, "the original's cb is as it came");
        assert_eq!(received(&capture), 1);
        let pending = b.dp.copies().pending();
        assert_eq!(pending.len(), 1, "one copy in flight: {pending:?}");
        let (token, entry) = pending[0];
        assert_eq!(
            entry.cb,
            [foreign[0], foreign[1]],
            "the words the token took"
        );
        let carrying = [token as u32, (token >> 32) as u32, 3, 4, 5];

        // The copy comes by: taken, untouched, its cb the original's again.
        let (run, ctx) = b.run_skb(Hook::TcIngress, frame, &with_cb(carrying));
        assert_eq!(run.verdict, Verdict::Pass);
        assert_eq!(run.out, *frame);
        assert_eq!(ctx.cb, foreign, "the copy's cb words are given back");
        assert_eq!(received(&capture), 0, "a copy is not copied again");
        assert_eq!(b.dp.copies().pending(), [], "its entry is gone");
        assert_eq!(b.counters(&fault).acted_packets, 1, "a copy is not counted");

        // The same token again (a stale one), and a token never sent: originals.
        for (what, cb) in [
            ("stale token", carrying),
            (
                "wrong token",
                [token as u32 ^ 1, (token >> 32) as u32, 3, 4, 5],
            ),
        ] {
            let (run, ctx) = b.run_skb(Hook::TcIngress, frame, &with_cb(cb));
            assert_eq!(run.verdict, Verdict::Pass, "{what}");
            assert_eq!(ctx.cb, cb, "{what}: an original's cb is as it came");
            assert_eq!(received(&capture), 1, "{what}: an original is copied");
        }
        assert_eq!(b.counters(&fault).acted_packets, 3);
        // Two copies in flight, neither seen yet: each with its own token.
        let pending = b.dp.copies().pending();
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert_ne!(pending[0].0, pending[1].0);
    });
}

/// Sent out, the copy comes by the egress program inside the send, or never: either way
/// the sender leaves no entry behind, and the original's cb is as it came. With the program
/// attached where the copy goes (`marks::duplicate_copies_are_recognised_without_a_mark`)
/// the copy is taken there.
#[test]
fn a_copy_sent_out_leaves_no_entry_behind() {
    require_root();
    let ns = super::harness::Netns::new("pcopy3");
    ns.run(|| {
        let mut b = Bench::new();
        let fault = duplicate_all(&mut b);
        let capture = Capture::on_loopback();
        let foreign = [7, 0, 0xffff_ffff, 0, 1];
        for frame in &frames() {
            let (run, ctx) = b.run_skb(Hook::TcEgress, frame, &with_cb(foreign));
            assert_eq!(run.verdict, Verdict::Pass);
            assert_eq!(run.out, *frame);
            assert_eq!(ctx.cb, foreign);
            let outgoing = capture
                .drain(64)
                .iter()
                .filter(|c| c.0 == PACKET_OUTGOING)
                .count();
            assert_eq!(outgoing, 1, "sent out once");
            assert_eq!(b.dp.copies().pending(), [], "no entry left behind");
        }
        assert_eq!(b.counters(&fault).acted_packets, 2);
    });
}

/// A copy lost on its way leaves its entry until faultd sweeps it, after
/// `PENDING_COPY_TTL_NS`; a copy still within it is kept.
#[test]
fn lost_copies_are_swept_after_their_time() {
    require_root();
    let ns = super::harness::Netns::new("pcopy4");
    ns.run(|| {
        let mut b = Bench::new();
        duplicate_all(&mut b);
        let _capture = Capture::on_loopback();
        b.run_skb(Hook::TcIngress, &frames()[0], &SkBuff::new());
        let pending = b.dp.copies().pending();
        assert_eq!(pending.len(), 1);
        let sent = pending[0].1.sent_ns;
        assert_eq!(b.dp.copies().sweep_older(sent + 1), 0, "not yet lost");
        assert_eq!(b.dp.copies().pending().len(), 1);
        let later = sent + fault_common::PENDING_COPY_TTL_NS + 1;
        assert_eq!(b.dp.copies().sweep_older(later), 1, "lost: swept");
        assert_eq!(b.dp.copies().pending(), []);
    });
}
