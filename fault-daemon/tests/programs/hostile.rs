//! Hostile frames: every IPv4/IPv6 × TCP/UDP frame cut at every byte, and frames whose
//! length fields lie (IHL < 5, TCP data offset < 5 or past the segment, IP lengths past the
//! frame or short of the headers). A frame on a port without faults passes unchanged; one
//! on a faulted port gets its fault or passes unchanged — never a different packet.

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use faultd::datapath::{TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM, XDP_PROGRAM};
use faultd::faults::{Action, Direction, Protocol};

use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

/// The faulted ports and what is on them.
const DROP: u16 = 2379;
const FREE: u16 = 2380;
const RESET: u16 = 2381;
const CORRUPT: u16 = 2382;
const STALL: u16 = 2383;
const PORTS: [u16; 5] = [DROP, FREE, RESET, CORRUPT, STALL];

fn bench() -> Bench {
    let mut b = Bench::new();
    b.add(drop_spec(DROP, Protocol::Any, Direction::Both, None));
    let any = |b: &mut Bench, action, port, protocol| {
        b.add(spec(action, port, protocol, Direction::Both, None));
    };
    any(
        &mut b,
        Action::Reset { probability: 1.0 },
        RESET,
        Protocol::Tcp,
    );
    any(
        &mut b,
        Action::Corrupt { probability: 1.0 },
        CORRUPT,
        Protocol::Any,
    );
    any(&mut b, Action::Stall, STALL, Protocol::Tcp);
    b
}

/// One run, or `None` when BPF_PROG_TEST_RUN refuses the input (a sched_cls run needs a
/// whole IP header behind an IP ethertype; see main.rs).
fn try_run(b: &mut Bench, hook: Hook, frame: &[u8]) -> Option<Run> {
    let mut out = vec![0u8; frame.len() + 256];
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        repeat: 1,
        ..Default::default()
    };
    let ebpf = b.dp.ebpf_mut();
    let result = match hook {
        Hook::Xdp => {
            let p: &mut Xdp = ebpf.program_mut(XDP_PROGRAM).unwrap().try_into().unwrap();
            p.test_run(opts)
        }
        Hook::TcIngress | Hook::TcEgress => {
            let name = if hook == Hook::TcIngress {
                TC_INGRESS_PROGRAM
            } else {
                TC_EGRESS_PROGRAM
            };
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.test_run(opts)
        }
    }
    .ok()?;
    out.truncate(result.data_size_out as usize);
    let verdict = match (hook, result.return_value) {
        (Hook::Xdp, 2) | (Hook::TcIngress | Hook::TcEgress, 0) => Verdict::Pass,
        (Hook::Xdp, 1) | (Hook::TcIngress | Hook::TcEgress, 2) => Verdict::Drop,
        (Hook::TcIngress | Hook::TcEgress, 7) => Verdict::Redirect,
        (_, v) => panic!("{hook:?} returned {v}"),
    };
    Some(Run { verdict, out })
}

/// What a frame to `port` may become, judged against `whole`, the well-formed frame it was
/// made from (so a cut or lying frame is held to what its real headers say).
fn check(port: u16, hook: Hook, input: &[u8], whole: &Parsed, run: &Run, what: &str) {
    let ctx = || {
        format!(
            "{what} {hook:?} port {port}\nin:\n{}out:\n{}",
            hex(input),
            hex(&run.out)
        )
    };
    let unchanged = run.verdict == Verdict::Pass && run.out == input;
    match port {
        FREE => assert!(
            unchanged,
            "a frame on a port without faults changed: {}",
            ctx()
        ),
        DROP => assert!(
            unchanged || run.verdict == Verdict::Drop,
            "neither passed as it was nor dropped: {}",
            ctx()
        ),
        RESET => {
            if unchanged {
                return;
            }
            assert_eq!(run.verdict, Verdict::Redirect, "{}", ctx());
            let rst = parse_frame(&run.out).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
            assert_eq!(
                (rst.src(), rst.dst()),
                (whole.dst(), whole.src()),
                "{}",
                ctx()
            );
            assert!(flags(rst.tcp().expect("TCP")) & RST != 0, "{}", ctx());
            assert!(rst.payload.is_empty(), "{}", ctx());
            verify_checksums(&run.out).unwrap_or_else(|e| panic!("{e}: {}", ctx()));
        }
        CORRUPT | STALL => {
            if unchanged {
                return;
            }
            assert_eq!(run.verdict, Verdict::Pass, "{}", ctx());
            assert_eq!(run.out.len(), input.len(), "{}", ctx());
            let l4 = whole.l4_offset;
            let csum = l4 + if whole.tcp().is_some() { 16 } else { 6 };
            let changed: Vec<usize> = (0..input.len())
                .filter(|&i| input[i] != run.out[i] && i != csum && i != csum + 1)
                .collect();
            let allowed = |i: usize| {
                if port == STALL {
                    i == l4 + 14 || i == l4 + 15
                } else {
                    i >= l4 + whole.transport.header_len()
                }
            };
            assert!(
                changed.len() <= 2 && changed.iter().all(|&i| allowed(i)),
                "bytes {changed:?} changed outside the fault's field: {}",
                ctx()
            );
        }
        _ => unreachable!(),
    }
}

/// The well-formed frames the hostile ones are made from: IPv4 and IPv6 (also with IPv4
/// options, an IPv6 hop-by-hop header and a VLAN tag), TCP and UDP, to each port.
fn wholes() -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    for port in PORTS {
        for (client, server) in flows(port) {
            for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
                let base = || {
                    let b = FrameBuilder::with_protocol(protocol, sock(&client), sock(&server))
                        .payload(b"0123456789abcdef");
                    if protocol == IPPROTO_TCP {
                        b.flags(ACK | PSH).seq(1000).ack(2000).window(4321)
                    } else {
                        b
                    }
                };
                let extra = if sock(&client).is_ipv4() {
                    ("IPv4 options", base().ipv4_options(&[1, 1, 1, 0]))
                } else {
                    ("hop-by-hop", base().ipv6_ext(Ipv6Ext::HopByHop, 0))
                };
                for (shape, b) in [("plain", base()), extra, ("VLAN", base().vlans(&[7]))] {
                    out.push((
                        b.build(),
                        format!("{client} -> {server} proto {protocol} {shape}"),
                    ));
                }
            }
        }
    }
    out
}

fn port_of(p: &Parsed) -> u16 {
    p.dst().port()
}

/// Every frame cut at every length from the Ethernet header on, through every hook.
#[test]
fn frames_cut_at_every_byte_pass_or_get_their_fault() {
    let mut b = bench();
    let mut runs = 0;
    for (frame, what) in wholes() {
        let whole = parse_frame(&frame).expect("the builder's frame");
        let port = port_of(&whole);
        for cut in ETH_HLEN..=frame.len() {
            let input = &frame[..cut];
            for hook in ALL_HOOKS {
                let Some(run) = try_run(&mut b, hook, input) else {
                    // Refused by the test-run setup only for frames cut inside the IP header.
                    assert!(
                        hook != Hook::Xdp && cut < whole.l4_offset,
                        "{what} cut at {cut}: {hook:?} refused it"
                    );
                    continue;
                };
                runs += 1;
                check(
                    port,
                    hook,
                    input,
                    &whole,
                    &run,
                    &format!("{what} cut at {cut}"),
                );
            }
        }
    }
    eprintln!("{runs} runs");
}

/// Ways to make the length fields of `frame` (no VLAN tag) lie, each with its name.
fn lies(frame: &[u8], p: &Parsed) -> Vec<(Vec<u8>, String)> {
    let ip = ETH_HLEN;
    let l4 = p.l4_offset;
    let set = |at: usize, bytes: &[u8]| {
        let mut f = frame.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        f
    };
    let mut out = Vec::new();
    if p.is_ipv4() {
        for ihl in 0..5u8 {
            out.push((set(ip, &[0x40 | ihl]), format!("IHL {ihl}")));
        }
        out.push((set(ip, &[0x4f]), "IHL 15, past the header".into()));
        let real = (frame.len() - ip) as u16;
        for total in [1, 19, 20, real - 1, real + 1, real + 100, 0xffff] {
            out.push((
                set(ip + 2, &total.to_be_bytes()),
                format!("total length {total} of {real}"),
            ));
        }
    } else {
        let real = (frame.len() - ip - IPV6_HLEN) as u16;
        for payload in [1, 7, real - 1, real + 1, real + 1000, 0xffff] {
            out.push((
                set(ip + 4, &payload.to_be_bytes()),
                format!("payload length {payload} of {real}"),
            ));
        }
    }
    if p.tcp().is_some() {
        for doff in [0u8, 1, 4, 6, 15] {
            let byte = (doff << 4) | (frame[l4 + 12] & 0x0f);
            out.push((set(l4 + 12, &[byte]), format!("TCP data offset {doff}")));
        }
    } else {
        for len in [0u16, 1, 7, 0xffff] {
            out.push((set(l4 + 4, &len.to_be_bytes()), format!("UDP length {len}")));
        }
    }
    out
}

/// Frames whose length fields lie, each run ten times (corrupt picks its byte at random).
#[test]
fn frames_with_lying_length_fields_pass_or_get_their_fault() {
    let mut b = bench();
    for (frame, what) in wholes() {
        if what.contains("VLAN") {
            continue;
        }
        let whole = parse_frame(&frame).expect("the builder's frame");
        let port = port_of(&whole);
        for (input, lie) in lies(&frame, &whole) {
            for hook in ALL_HOOKS {
                for _ in 0..10 {
                    let run = try_run(&mut b, hook, &input)
                        .unwrap_or_else(|| panic!("{what} {lie}: {hook:?} refused it"));
                    check(port, hook, &input, &whole, &run, &format!("{what}, {lie}"));
                }
            }
        }
    }
}
