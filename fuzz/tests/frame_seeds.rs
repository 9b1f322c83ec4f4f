//! The `bpf_frames` corpus: seed frames built with etherparse (IPv4/IPv6 × TCP/UDP, to
//! faulted ports and others, with VLAN tags, options, extension headers), each committed in
//! `corpus/bpf_frames/`; and every file there — seeds and the crashes the fuzzer found,
//! kept as regression inputs — run through the target's own check.
//!
//! `FAULTD_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml` (re)writes the seeds.

use std::path::Path;

use etherparse::PacketBuilder;
use faultd_fuzz::frames::{FrameOutcome, check_frame};

/// (name, input): byte 0 the hook, bytes 1..5 the mark, then the frame.
fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let macs = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    for port in [2379u16, 2382, 9000] {
        for v6 in [false, true] {
            for tcp in [false, true] {
                for vlan in [false, true] {
                    let eth = PacketBuilder::ethernet2(macs.0, macs.1);
                    let mut frame = Vec::new();
                    let payload = b"fuzz seed payload";
                    macro_rules! finish {
                        ($step:expr) => {{
                            let ip = if v6 {
                                $step.ipv6(
                                    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                                    [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                                    64,
                                )
                            } else {
                                $step.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
                            };
                            if tcp {
                                ip.tcp(40000, port, 1000, 65535)
                                    .ack(2000)
                                    .write(&mut frame, payload)
                            } else {
                                ip.udp(40000, port).write(&mut frame, payload)
                            }
                        }};
                    }
                    if vlan {
                        finish!(eth.single_vlan(7.try_into().unwrap()))
                    } else {
                        finish!(eth)
                    }
                    .unwrap();
                    for hook in 0..3u8 {
                        let mut input = vec![hook];
                        input.extend_from_slice(&0x4000_0000u32.to_le_bytes());
                        input.extend_from_slice(&frame);
                        let name = format!(
                            "{}-{}-{port}{}-hook{hook}",
                            if v6 { "v6" } else { "v4" },
                            if tcp { "tcp" } else { "udp" },
                            if vlan { "-vlan" } else { "" }
                        );
                        out.push((name, input));
                    }
                }
            }
        }
    }
    out
}

#[test]
fn frame_seeds_are_committed_and_every_corpus_input_holds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/bpf_frames");
    let write = std::env::var_os("FAULTD_WRITE_SEEDS").is_some_and(|v| v == "1");
    for (name, input) in seeds() {
        let path = dir.join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &input).unwrap();
        }
        assert_eq!(
            std::fs::read(&path).ok(),
            Some(input),
            "{} is missing or stale: FAULTD_WRITE_SEEDS=1 cargo test --manifest-path fuzz/Cargo.toml",
            path.display()
        );
    }
    let mut ran = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let input = std::fs::read(&path).unwrap();
        let outcome = check_frame(&input);
        if outcome == FrameOutcome::Skipped {
            return;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("seed-") && name.contains("-9000") {
            assert_eq!(outcome, FrameOutcome::Untouched, "{name}");
        }
        ran += 1;
    }
    eprintln!("{ran} corpus inputs hold");
}
