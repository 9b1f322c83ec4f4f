//! `slice` (MSS, window scale and window rewrites) and corrupt's per-byte density, on frames
//! judged by etherparse.

use std::time::Duration;

use faultd::faults::{Action, Direction, Protocol};

use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

const PORT: u16 = 8500;
const SLICE: u32 = 100;

/// The TCP header's option bytes (after the 20-byte header) and window of a frame.
fn tcp_parts(frame: &[u8]) -> (Vec<u8>, u16) {
    let p = parse_frame(frame).expect("a frame etherparse reads");
    let t = p.tcp().expect("a TCP frame");
    (t.options.as_slice().to_vec(), t.window_size)
}

/// Checks `out` against `input`: same length, checksums valid, options as `want_options`,
/// window `min(window, SLICE)`, and nothing else changed outside the options, the window
/// and the checksum.
fn check_sliced(input: &[u8], out: &[u8], want_options: &[u8], what: &str) {
    let both = || format!("{what}\nin:\n{}out:\n{}", hex(input), hex(out));
    assert_eq!(out.len(), input.len(), "{}", both());
    verify_checksums(out).unwrap_or_else(|e| panic!("{e}\n{}", both()));
    let (options_in, window_in) = tcp_parts(input);
    let (options_out, window_out) = tcp_parts(out);
    assert_eq!(options_out, want_options, "options\n{}", both());
    assert_eq!(
        window_out as u32,
        (window_in as u32).min(SLICE),
        "window\n{}",
        both()
    );
    let l4 = parse_frame(input).unwrap().l4_offset;
    let opts = l4 + TCP_HLEN..l4 + TCP_HLEN + options_in.len();
    for i in 0..input.len() {
        let rewritten = opts.contains(&i) || (l4 + 14..l4 + 18).contains(&i);
        if !rewritten {
            assert_eq!(out[i], input[i], "byte {i} changed\n{}", both());
        }
    }
}

/// SYN and SYN-ACK, IPv4 and IPv6, at both TC hooks: the MSS is lowered to the slice (at
/// even and odd offsets, among timestamps, SACK and NOPs), a smaller MSS is kept, the window
/// scale option becomes three NOPs, the window is held to the slice, checksums stay valid.
/// A SYN without an MSS option keeps none (the slice does not grow packets). Options that
/// run past the header are left as they are.
#[test]
fn slice_lowers_the_mss_and_turns_window_scaling_off() {
    let mut b = Bench::new();
    let spacing = Duration::ZERO;
    b.add(spec(
        Action::Slice {
            bytes: SLICE,
            spacing,
        },
        PORT,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let ts = [8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
    // (options in, options out)
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        // Linux's own SYN: MSS, SACK permitted, timestamps, NOP, window scale.
        (
            [&[2, 4, 0xff, 0xd7, 4, 2][..], &ts, &[1, 3, 3, 7]].concat(),
            [&[2, 4, 0, 100, 4, 2][..], &ts, &[1, 1, 1, 1]].concat(),
        ),
        // MSS at an odd offset, window scale at an even one.
        (
            vec![1, 2, 4, 0x05, 0xb4, 3, 3, 14, 0, 0, 0, 0],
            vec![1, 2, 4, 0, 100, 1, 1, 1, 0, 0, 0, 0],
        ),
        // Window scale first, at an odd offset, MSS after timestamps.
        (
            [&[1, 3, 3, 9][..], &ts, &[1, 1, 2, 4, 0x40, 0x00]].concat(),
            [&[1, 1, 1, 1][..], &ts, &[1, 1, 2, 4, 0, 100]].concat(),
        ),
        // An MSS below the slice is kept.
        (vec![2, 4, 0, 60, 1, 1, 1, 0], vec![2, 4, 0, 60, 1, 1, 1, 0]),
        // No MSS option: none is added.
        ([&[1, 1][..], &ts].concat(), [&[1, 1][..], &ts].concat()),
        // An MSS after the end of the list is not an option.
        (
            vec![0, 0, 2, 4, 0x05, 0xb4, 0, 0],
            vec![0, 0, 2, 4, 0x05, 0xb4, 0, 0],
        ),
        // An option whose length runs past the header stops the walk.
        (
            vec![1, 8, 20, 2, 4, 0x05, 0xb4, 0],
            vec![1, 8, 20, 2, 4, 0x05, 0xb4, 0],
        ),
    ];
    for (src, dst) in [
        ("10.0.0.1:40000", "10.0.0.2:8500"),
        ("[fd00::2]:8500", "[fd00::1]:40000"),
    ] {
        for flags in [SYN, SYN | ACK] {
            for (options, want) in &cases {
                let frame = FrameBuilder::tcp(sock(src), sock(dst))
                    .flags(flags)
                    .window(64_240)
                    .tcp_options(options)
                    .build();
                let mut padded = want.clone();
                padded.resize(options.len().div_ceil(4) * 4, 0);
                for hook in [Hook::TcIngress, Hook::TcEgress] {
                    let what = format!("{hook:?} {src} -> {dst} flags {flags:#x} {options:?}");
                    let run = b.run(hook, &frame);
                    assert_eq!(run.verdict, Verdict::Pass, "{what}");
                    check_sliced(&frame, &run.out, &padded, &what);
                }
                assert_eq!(b.run(Hook::Xdp, &frame).out, frame, "XDP leaves it");
            }
        }
    }
}

/// Every packet of the flow after the handshake advertises at most the slice, so at most
/// one segment is in flight; payload and options untouched. RSTs are left alone, and other
/// ports too.
#[test]
fn slice_holds_every_window_to_the_slice() {
    let mut b = Bench::new();
    b.add(spec(
        Action::Slice {
            bytes: SLICE,
            spacing: Duration::ZERO,
        },
        PORT,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let ts = [1, 1, 8, 10, 1, 2, 3, 4, 5, 6, 7, 8];
    for (src, dst) in [
        ("10.0.0.1:40000", "10.0.0.2:8500"),
        ("[fd00::2]:8500", "[fd00::1]:40000"),
    ] {
        for (window, payload) in [(65_535u16, 0usize), (501, 1000), (100, 33), (99, 7)] {
            let payload: Vec<u8> = (0..payload).map(|i| (i * 7) as u8).collect();
            let frame = FrameBuilder::tcp(sock(src), sock(dst))
                .flags(ACK | PSH)
                .window(window)
                .tcp_options(&ts)
                .payload(&payload)
                .build();
            for hook in [Hook::TcIngress, Hook::TcEgress] {
                let what = format!("{hook:?} {src} -> {dst} window {window}");
                let run = b.run(hook, &frame);
                check_sliced(&frame, &run.out, &ts, &what);
            }
        }
        let rst = FrameBuilder::tcp(sock(src), sock(dst))
            .flags(RST | ACK)
            .window(5000)
            .build();
        assert_eq!(b.run(Hook::TcEgress, &rst).out, rst, "a RST is left alone");
    }
    let elsewhere = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:8501"))
        .flags(SYN)
        .window(64_240)
        .tcp_options(&[2, 4, 0xff, 0xd7])
        .build();
    assert_eq!(b.run(Hook::TcEgress, &elsewhere).out, elsewhere);
}

/// Counts the payload bytes `out` changed from `input`; each must be the bitwise NOT of the
/// original, only payload bytes may change (besides the checksum), and checksums verify.
fn changed_bytes(input: &[u8], out: &[u8], what: &str) -> usize {
    let both = || format!("{what}\nin:\n{}out:\n{}", hex(input), hex(out));
    assert_eq!(out.len(), input.len(), "{}", both());
    verify_checksums(out).unwrap_or_else(|e| panic!("{e}\n{}", both()));
    let p = parse_frame(input).unwrap();
    let payload_at = p.l4_offset + p.transport.header_len();
    let payload_end = p.l4_offset + p.l4_len;
    let checksum_at = p.l4_offset + if p.tcp().is_some() { 16 } else { 6 };
    let mut n = 0;
    for i in 0..input.len() {
        if input[i] == out[i] || (checksum_at..checksum_at + 2).contains(&i) {
            continue;
        }
        assert!(
            (payload_at..payload_end).contains(&i),
            "byte {i} outside the payload changed\n{}",
            both()
        );
        assert_eq!(out[i], !input[i], "byte {i} not flipped\n{}", both());
        n += 1;
    }
    n
}

/// corrupt with a byte density of 1 %: over 300 runs of 1400-byte payloads (420 000 bytes,
/// TCP and UDP, IPv4 and IPv6, both TC hooks) the number of changed bytes is within 6σ of
/// the binomial's mean (4 200 ± 6 × 64.5), bytes at odd and even offsets both change, every
/// changed byte is flipped and checksums stay valid. At 100 % every payload byte changes.
#[test]
fn corrupt_bytes_changes_a_binomial_share_of_bytes_with_valid_checksums() {
    let mut b = Bench::new();
    let fault = b.add(spec(
        Action::CorruptBytes {
            probability: 1.0,
            byte_probability: 0.01,
        },
        PORT,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    const LEN: usize = 1400;
    const RUNS: usize = 300;
    let payload: Vec<u8> = (0..LEN).map(|i| (i * 37 + 11) as u8).collect();
    let frames: Vec<Vec<u8>> = [IPPROTO_TCP, IPPROTO_UDP]
        .into_iter()
        .flat_map(|protocol| {
            [
                ("10.0.0.1:40000", "10.0.0.2:8500"),
                ("[fd00::2]:8500", "[fd00::1]:40000"),
            ]
            .map(|(src, dst)| {
                let b = FrameBuilder::with_protocol(protocol, sock(src), sock(dst));
                let b = if protocol == IPPROTO_TCP {
                    b.flags(ACK | PSH)
                } else {
                    b
                };
                b.payload(&payload).build()
            })
        })
        .collect();
    let mut changed = 0usize;
    let mut odd = 0usize;
    for i in 0..RUNS {
        let frame = &frames[i % frames.len()];
        let hook = if i % 2 == 0 {
            Hook::TcEgress
        } else {
            Hook::TcIngress
        };
        let run = b.run(hook, frame);
        assert_eq!(run.verdict, Verdict::Pass);
        changed += changed_bytes(frame, &run.out, &format!("run {i} {hook:?}"));
        let p = parse_frame(frame).unwrap();
        let at = p.l4_offset + p.transport.header_len();
        odd += (at..frame.len())
            .filter(|&j| (j - at) % 2 == 1 && frame[j] != run.out[j])
            .count();
    }
    let n = (LEN * RUNS) as f64;
    let (mean, sigma) = (n * 0.01, (n * 0.01 * 0.99).sqrt());
    assert!(
        (changed as f64 - mean).abs() <= 6.0 * sigma,
        "{changed} bytes changed of {n}, want {mean} ± {}",
        6.0 * sigma
    );
    assert!(
        odd > changed / 4,
        "{odd} of {changed} at odd offsets: not spread"
    );
    assert_eq!(b.counters(&fault).acted_packets, RUNS as u64);
    b.remove(&fault);

    b.add(spec(
        Action::CorruptBytes {
            probability: 1.0,
            byte_probability: 1.0,
        },
        PORT,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    for frame in &frames {
        let run = b.run(Hook::TcEgress, frame);
        assert_eq!(changed_bytes(frame, &run.out, "100 %"), LEN, "every byte");
    }
}
