//! Per-flow state and the rule map under load: a cut flow stays cut when the flow table
//! fills, a new connection (SYN without ACK) starts fresh, byte counts and the cut flag
//! hold when two CPUs race on one flow, a packet whose two ports are the faulted port is
//! acted on once, and a packet never reads another port's rule while rules are rewritten.
//!
//! The races run BPF_PROG_TEST_RUN from threads pinned to CPUs 0 and 1, through the raw
//! syscall on the program's fd (aya's `test_run` wants the program mutably, so one thread
//! at a time), and rewrite rules through the datapath from the other thread.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use aya::programs::Xdp;
use fault_common::{EVENT_FIRST_HIT, EVENT_FLOW_CUT, PortKey, ROLE_EGRESS, ROLE_INGRESS};
use faultd::datapath::{Datapath, MapSizes, XDP_PROGRAM};
use faultd::faults::{Action, Direction, FaultTable, Limits, Protocol, RuleSink, Then};

use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

/// A bench whose maps are sized for `max_flows` flows (and the default number of faults).
fn bench_with_flows(max_flows: u32) -> Bench {
    require_root();
    let sizes = MapSizes {
        max_flows,
        ..MapSizes::default()
    };
    let dp = Datapath::load_sized(&sizes).unwrap_or_else(|e| panic!("loading the programs: {e}"));
    let mut b = Bench {
        dp,
        table: FaultTable::default().with_limits(Limits::default()),
    };
    b.role(TEST_RUN_IFINDEX, ROLE_INGRESS | ROLE_EGRESS);
    b
}

fn limit_bytes(bytes: u64) -> Action {
    Action::LimitBytes {
        bytes,
        then: Then::Drop,
    }
}

/// A TCP data segment (ACK|PSH) with `payload` bytes.
fn segment(src: &str, dst: &str, payload: usize) -> Vec<u8> {
    FrameBuilder::tcp(sock(src), sock(dst))
        .flags(ACK | PSH)
        .seq(1000)
        .ack(2000)
        .payload(&vec![0x5a; payload])
        .build()
}

fn syn(src: &str, dst: &str) -> Vec<u8> {
    FrameBuilder::tcp(sock(src), sock(dst))
        .flags(SYN)
        .seq(7)
        .ack(0)
        .build()
}

/// The kinds of the events waiting in the ring.
fn event_kinds(ring: &mut RingBuf<MapData>) -> Vec<u32> {
    let mut kinds = Vec::new();
    while let Some(item) = ring.next() {
        kinds.push(u32::from_ne_bytes(item[16..20].try_into().unwrap()));
    }
    kinds
}

fn count(kinds: &[u32], kind: u32) -> usize {
    kinds.iter().filter(|&&k| k == kind).count()
}

/// Defect 1: a flow a limit has cut stays cut while the flow table fills past its size
/// with flows of another limit fault on another port. Flows that find the table full pass
/// untracked, and are counted.
#[test]
fn a_cut_flow_stays_cut_when_the_flow_table_fills() {
    const MAX_FLOWS: u32 = 512;
    let mut b = bench_with_flows(MAX_FLOWS);
    let cut = b.add(spec(
        limit_bytes(150),
        7000,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let filler = b.add(spec(
        limit_bytes(1 << 30),
        7001,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    // Cut by its second segment: a flow that started over would pass one again.
    let victim = segment("10.0.0.1:40000", "10.0.0.2:7000", 100);
    b.expect(&[Hook::Xdp], &victim, Verdict::Pass, "100 of 150 bytes");
    b.expect(
        &[Hook::Xdp],
        &victim,
        Verdict::Drop,
        "200 of 150 bytes: cut",
    );

    // Eight times the table's size in other flows, each seen twice.
    let total = 8 * MAX_FLOWS;
    for i in 0..total {
        let client = format!("10.1.{}.{}:{}", i / 250, i % 250 + 1, 10_000 + i % 50_000);
        let frame = segment(&client, "10.0.0.2:7001", 10);
        for _ in 0..2 {
            assert_eq!(
                b.verdict(Hook::Xdp, &frame),
                Verdict::Pass,
                "filler flow {i}"
            );
        }
    }
    for hook in DROP_HOOKS {
        assert_eq!(
            b.verdict(hook, &victim),
            Verdict::Drop,
            "{hook:?}: the cut flow came back to life after {total} other flows"
        );
    }
    // The table held what it could; every packet of a flow it had no room for counted.
    let stats = b.dp.flow_table().expect("flow table stats");
    assert_eq!(stats.max_entries, MAX_FLOWS);
    assert_eq!(stats.entries, MAX_FLOWS as usize, "the table is full");
    let untracked = 2 * (total as u64 - (MAX_FLOWS as u64 - 1));
    assert_eq!(stats.full, untracked, "packets that found the table full");
    // Removing a fault deletes its flows; the other keeps its own.
    b.remove(&filler);
    assert_eq!(b.dp.flow_table().unwrap().entries, 1, "only the cut flow");
    b.expect(&[Hook::Xdp], &victim, Verdict::Drop, "still cut");
    b.remove(&cut);
    assert_eq!(b.dp.flow_table().unwrap().entries, 0, "no fault, no flow");
}

/// Defect 2: a SYN without ACK on a 4-tuple that has state starts a new flow: not cut,
/// its bytes counted from zero; a SYN|ACK (the server's answer) does not restart it.
#[test]
fn a_syn_starts_a_fresh_flow_on_a_reused_four_tuple() {
    let mut b = Bench::new();
    b.add(spec(
        limit_bytes(150),
        7010,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let (client, server) = ("10.0.0.1:40000", "10.0.0.2:7010");
    let data = segment(client, server, 100);
    b.expect(&[Hook::Xdp], &syn(client, server), Verdict::Pass, "SYN");
    b.expect(&[Hook::Xdp], &data, Verdict::Pass, "100 of 150 bytes");
    b.expect(&[Hook::Xdp], &data, Verdict::Drop, "200 of 150: cut");
    let syn_ack = FrameBuilder::tcp(sock(server), sock(client))
        .flags(SYN | ACK)
        .build();
    b.expect(&[Hook::Xdp], &syn_ack, Verdict::Drop, "SYN|ACK: still cut");

    // The client port comes round again: a new connection.
    b.expect(
        &[Hook::Xdp],
        &syn(client, server),
        Verdict::Pass,
        "a new SYN",
    );
    b.expect(
        &[Hook::Xdp],
        &data,
        Verdict::Pass,
        "100 bytes of the new flow",
    );
    b.expect(&[Hook::Xdp], &data, Verdict::Drop, "200 bytes: cut again");

    // limit-age: an old flow is cut; a SYN on its 4-tuple is young again.
    b.add(spec(
        Action::LimitAge {
            after: Duration::from_secs(1),
            then: Then::Drop,
        },
        7011,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let (client, server) = ("10.0.0.1:40001", "10.0.0.2:7011");
    let data = segment(client, server, 10);
    // The flow begins with this packet: age 0, however slow the machine.
    b.expect(&[Hook::Xdp], &data, Verdict::Pass, "young");
    std::thread::sleep(Duration::from_millis(1100));
    b.expect(&[Hook::Xdp], &data, Verdict::Drop, "older than 1 s");
    // A second is the margin for the next two runs to follow one another: the age is a
    // fault's parameter, and a long one keeps the machine's pauses well inside it.
    b.expect(&[Hook::Xdp], &syn(client, server), Verdict::Pass, "new SYN");
    b.expect(&[Hook::Xdp], &data, Verdict::Pass, "the new flow is young");
}

// ---------------------------------------------------------------------------------------
// Two CPUs at once
// ---------------------------------------------------------------------------------------

/// `bpf_attr` for BPF_PROG_TEST_RUN (include/uapi/linux/bpf.h, `test` member).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Runs `frame` `repeat` times through the program behind `fd`; its last return value.
fn test_run_raw(fd: i32, frame: &[u8], repeat: u32) -> u32 {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat,
        ..Default::default()
    };
    // SAFETY: a bpf_attr of the kernel's layout, with buffers that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    attr.retval
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "pinning to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether CPUs 0 and 1 are both online for this process (the kernel's own answer).
fn two_cpus() -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid out buffer.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        set
    };
    // SAFETY: reads within the set.
    let ok = unsafe { libc::CPU_ISSET(0, &set) && libc::CPU_ISSET(1, &set) };
    if !ok {
        super::harness::skip("CPUs 0 and 1 are not both available to this process");
    }
    ok
}

fn xdp_fd(b: &mut Bench) -> i32 {
    let prog: &mut Xdp =
        b.dp.ebpf_mut()
            .program_mut(XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
    prog.fd().unwrap().as_fd().as_raw_fd()
}

/// Defect 3: one flow's segments run through XDP on CPUs 0 and 1 at once. Exactly the
/// segments within the limit pass (the byte count loses no update), the flow is reported
/// once when first seen and cut exactly once.
#[test]
fn two_cpus_pass_exactly_the_limit_and_cut_once() {
    let mut b = Bench::new();
    if !two_cpus() {
        return;
    }
    const SEGMENT: u64 = 100;
    const WITHIN: u64 = 200_000;
    const REPEAT: u32 = 400_000;
    let limit = WITHIN * SEGMENT + SEGMENT / 2;
    let fault = b.add(spec(
        limit_bytes(limit),
        7020,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let mut ring = b.dp.take_events().unwrap();
    let frame = segment("10.0.0.1:40000", "10.0.0.2:7020", SEGMENT as usize);
    let fd = xdp_fd(&mut b);
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        for cpu in [0, 1] {
            let (start, frame) = (&start, &frame);
            s.spawn(move || {
                pin_to(cpu);
                start.wait();
                test_run_raw(fd, frame, REPEAT);
            });
        }
    });
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, 2 * REPEAT as u64, "every run is counted");
    let passed = c.matched_packets - c.acted_packets;
    assert_eq!(
        passed, WITHIN,
        "{passed} segments of {SEGMENT} bytes passed, want exactly {WITHIN} (limit {limit} bytes)"
    );
    let kinds = event_kinds(&mut ring);
    assert_eq!(
        count(&kinds, EVENT_FLOW_CUT),
        1,
        "FLOW_CUT events: {kinds:?}"
    );
    assert_eq!(count(&kinds, EVENT_FIRST_HIT), 1, "FIRST_HIT events");
}

// ---------------------------------------------------------------------------------------
// Source port = destination port
// ---------------------------------------------------------------------------------------

/// Defect 5: NTP's 123 ↔ 123. Loss at 50 % loses half the packets (within 5 σ over 10 000),
/// not three quarters; each packet is counted once.
#[test]
fn loss_on_a_packet_from_and_to_the_faulted_port_acts_once() {
    let mut b = Bench::new();
    let fault = b.add(spec(
        Action::Loss { probability: 0.5 },
        123,
        Protocol::Udp,
        Direction::Both,
        None,
    ));
    const N: u64 = 10_000;
    let frame = udp("10.0.0.1:123", "10.0.0.2:123");
    b.run_with(Hook::Xdp, &frame, N as u32, None);
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, N, "each packet matched once");
    let (mean, sigma) = (N as f64 / 2.0, (N as f64 / 4.0).sqrt());
    assert!(
        (c.acted_packets as f64 - mean).abs() <= 5.0 * sigma,
        "{} of {N} lost, want {mean} ± {:.0}",
        c.acted_packets,
        5.0 * sigma
    );
}

/// A fault for one direction still acts on 123 ↔ 123 (the packet is both to and from the
/// port), and a delay is added once.
#[test]
fn one_direction_and_delay_act_once_when_both_ports_are_the_faulted_port() {
    let mut b = Bench::new();
    let frame = udp("10.0.0.1:123", "10.0.0.2:123");
    for direction in [Direction::ToPort, Direction::FromPort] {
        let f = b.add(drop_spec(123, Protocol::Udp, direction, None));
        b.expect(
            &DROP_HOOKS,
            &frame,
            Verdict::Drop,
            &format!("{direction:?}"),
        );
        assert_eq!(b.counters(&f).matched_packets, 2, "{direction:?}");
        b.remove(&f);
    }
    // A peer filter: the peer is the other end, whichever way the packet goes.
    let f = b.add(drop_spec(
        123,
        Protocol::Udp,
        Direction::FromPort,
        Some("10.0.0.2"),
    ));
    b.expect(
        &[Hook::Xdp],
        &frame,
        Verdict::Drop,
        "from the port to the peer",
    );
    let back = udp("10.0.0.2:123", "10.0.0.1:123");
    b.expect(
        &[Hook::Xdp],
        &back,
        Verdict::Pass,
        "from the peer to the port",
    );
    b.remove(&f);

    b.add(spec(
        Action::Delay {
            latency: Duration::from_millis(100),
            jitter: Duration::ZERO,
        },
        123,
        Protocol::Udp,
        Direction::Both,
        None,
    ));
    b.run_skb_timed(Hook::TcEgress, &frame, &SkBuff::new())
        .departs_after(&frame, 100 * MS, 100 * MS, "100 ms once, not twice");
}

/// A limit on 123 ↔ 123 counts each packet's bytes once, and both directions share the
/// flow's state.
#[test]
fn a_limit_counts_a_same_port_flow_once_in_both_directions() {
    let mut b = Bench::new();
    b.add(spec(
        limit_bytes(250),
        123,
        Protocol::Udp,
        Direction::Both,
        None,
    ));
    let payload = [0u8; 100];
    let there = FrameBuilder::udp(sock("10.0.0.1:123"), sock("10.0.0.2:123"))
        .payload(&payload)
        .build();
    let back = FrameBuilder::udp(sock("10.0.0.2:123"), sock("10.0.0.1:123"))
        .payload(&payload)
        .build();
    b.expect(&[Hook::Xdp], &there, Verdict::Pass, "100 of 250");
    b.expect(&[Hook::Xdp], &back, Verdict::Pass, "200 of 250");
    b.expect(&[Hook::Xdp], &there, Verdict::Drop, "300 of 250");
    b.expect(&[Hook::Xdp], &back, Verdict::Drop, "cut both ways");
}

// ---------------------------------------------------------------------------------------
// Rule updates
// ---------------------------------------------------------------------------------------

/// Defect 8: port A's rule (drop everything) and port B's (8 faults that let B's data
/// packets pass) are rewritten over and over from CPU 1, through the datapath's own write
/// protocol, while B's packets run through XDP on CPU 0. A packet on B reads B's old or new
/// rule, never A's: A's counters stay at zero and nothing on B is dropped.
///
/// Before the fix (one hash keyed by port, updated in place) this caught a packet reading
/// A's rule about once in 550 000 packets on 6.18. The default run is short (1 s);
/// `FAULTD_RULE_RACE_SECS` makes it longer.
#[test]
fn packets_never_read_another_ports_rule_while_rules_are_rewritten() {
    let mut b = Bench::new();
    if !two_cpus() {
        return;
    }
    let secs: u64 = std::env::var("FAULTD_RULE_RACE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let a = b.add(drop_spec(7030, Protocol::Tcp, Direction::Both, None));
    let mut on_b = Vec::new();
    for _ in 0..8 {
        on_b.push(b.add(spec(
            Action::Record,
            7031,
            Protocol::Tcp,
            Direction::Both,
            None,
        )));
    }
    let key_a = PortKey::new(6, 7030);
    let key_b = PortKey::new(6, 7031);
    let rule_a = b.table.compile(key_a).unwrap();
    let rule_b = b.table.compile(key_b).unwrap();
    let fd = xdp_fd(&mut b);
    let frame = segment("10.0.0.1:40000", "10.0.0.2:7031", 10);
    let done = AtomicBool::new(false);
    let mut runs = 0u64;
    let mut updates = 0u64;
    let dp = &mut b.dp;
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            pin_to(1);
            let until = Instant::now() + Duration::from_secs(secs);
            let mut n = 0u64;
            while Instant::now() < until {
                for _ in 0..100 {
                    dp.write_rule(key_b, Some(&rule_b)).unwrap();
                    dp.write_rule(key_a, Some(&rule_a)).unwrap();
                }
                n += 200;
            }
            done.store(true, Ordering::Relaxed);
            n
        });
        pin_to(0);
        while !done.load(Ordering::Relaxed) {
            test_run_raw(fd, &frame, 10_000);
            runs += 10_000;
        }
        updates = writer.join().unwrap();
    });
    pin_any();
    let seen_a = b.counters(&a);
    eprintln!("{runs} packets on B during {updates} rule updates; A's counters: {seen_a:?}");
    assert!(runs > 0 && updates > 0, "the race ran");
    assert_eq!(seen_a.matched_packets, 0, "packets on B read A's rule");
    for f in &on_b {
        assert_eq!(b.counters(f).acted_packets, 0);
    }
}

/// Lets the calling thread run on any CPU again.
fn pin_any() {
    // SAFETY: as in pin_to.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
