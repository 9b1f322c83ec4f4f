//! Program tests: the eBPF programs run on hand-built frames through BPF_PROG_TEST_RUN, with
//! faults installed exactly the way the daemon installs them (`FaultTable::add` into the
//! `Datapath`'s maps). Every test loads its own copy of the programs and maps, so tests are
//! independent and run in parallel.
//!
//! What BPF_PROG_TEST_RUN gives the programs (kernel 6.18, net/bpf/test_run.c; checked by
//! `test_run_runs_on_loopback_and_counts_whole_frames` below):
//! - sched_cls (`faultd_tc_ingress`, `faultd_tc_egress`): the skb is built on the loopback
//!   device of the caller's network namespace unless `ctx_in` names another device, so
//!   `skb->ifindex` is 1 (loopback is ifindex 1 in every namespace). The Ethernet header is
//!   pushed back before the program runs: `skb->len` is the whole frame.
//! - XDP (`faultd_xdp`): the frame is given the rx queue 0 of that same loopback device
//!   unless `ctx_in` (`xdp_md.ingress_ifindex`) names another, so `ingress_ifindex` is **1**
//!   too — not 0: a role written for ifindex 0 is never seen. `data_end - data` is the whole
//!   frame.
//!
//! So every test marks ifindex 1 in the `IFACES` map. Input sizes: XDP takes any frame of 14
//! bytes or more. sched_cls takes 14 bytes or more too, except that an IPv4 (IPv6) ethertype
//! needs a whole 20-byte (40-byte) IP header behind it, else the syscall fails with EINVAL:
//! frames cut inside the IP header can only be given to XDP.
//!
//! sched_cls runs may also carry a `struct __sk_buff` in `ctx_in`/`ctx_out` ([`SkBuff`]):
//! `mark` and `tstamp` go in and come back as the program left them, which is how the delay
//! tests read `skb->tstamp` (CLOCK_MONOTONIC, as `bpf_ktime_get_ns()`). The test-run skb is
//! CHECKSUM_NONE, so checksum fix-ups (corrupt, stall) must leave fully valid checksums. And
//! `bpf_clone_redirect` sends a real copy out of the caller's `lo`: the duplicate test runs
//! in a network namespace of its own.
//!
//! Verdicts: XDP_DROP = 1, XDP_PASS = 2; TC_ACT_OK = 0, TC_ACT_SHOT = 2, TC_ACT_REDIRECT = 7
//! (a forged RST sent back; under BPF_PROG_TEST_RUN the redirect goes nowhere, and
//! `data_out` holds the rewritten frame). `drop` is carried
//! by XDP (on the way in) and TC egress, never by TC ingress (fault-ebpf/src/rules.rs,
//! `Hook::carries`): a packet that crosses XDP and then TC ingress is acted on and counted
//! once.
//!
//! These tests need root. Without it each one says so and returns; with it, any failure to
//! load the programs is a test failure, never a skip.

#[path = "support/packets.rs"]
mod packets;
// Only its network namespaces: the duplicate test sends a real copy out of `lo`.
#[allow(unused)]
mod harness;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use fault_common::{FaultCounters, ROLE_EGRESS, ROLE_INGRESS, ROLE_LOOPBACK};
use faultd::datapath::{Datapath, TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM, XDP_PROGRAM};
use faultd::faults::{
    Action, Direction, Fault, FaultSpec, FaultTable, Peer, Protocol, RateMode, RefuseMode,
    RuleSink, Target, threshold,
};
use packets::tcp_flags::{ACK, FIN, PSH, RST, SYN, URG};
use packets::*;

/// The ifindex BPF_PROG_TEST_RUN reports to both program types: loopback.
const TEST_RUN_IFINDEX: u32 = 1;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The three programs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

const ALL_HOOKS: [Hook; 3] = [Hook::Xdp, Hook::TcIngress, Hook::TcEgress];
/// The hooks that carry `drop`.
const DROP_HOOKS: [Hook; 2] = [Hook::Xdp, Hook::TcEgress];

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
    /// TC only: the program rewrote the frame and redirected it (a forged RST).
    Redirect,
}

/// One program run: its verdict and the frame it let out.
struct Run {
    verdict: Verdict,
    out: Vec<u8>,
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIP: not root; program tests load eBPF programs and run BPF_PROG_TEST_RUN \
             (the CI suite runs as root)"
        );
        return false;
    }
    true
}

/// A private copy of the programs and their maps, with the daemon's fault table.
struct Bench {
    dp: Datapath,
    table: FaultTable,
}

impl Bench {
    /// Programs loaded, with the test-run ifindex marked for every hook.
    fn new() -> Option<Self> {
        let mut bench = Self::bare()?;
        bench.role(TEST_RUN_IFINDEX, ROLE_INGRESS | ROLE_EGRESS);
        Some(bench)
    }

    /// Programs loaded, `IFACES` empty: no interface is faulted. `None` when not root.
    fn bare() -> Option<Self> {
        if !is_root() {
            return None;
        }
        let dp = Datapath::load().unwrap_or_else(|e| panic!("loading the programs as root: {e}"));
        Some(Self {
            dp,
            table: FaultTable::default(),
        })
    }

    fn role(&mut self, ifindex: u32, role: u32) {
        self.dp.set_role(ifindex, role).expect("writing IFACES");
    }

    fn add(&mut self, spec: FaultSpec) -> Fault {
        self.table
            .add(spec, SystemTime::now(), &mut self.dp)
            .expect("installing the fault")
    }

    fn remove(&mut self, fault: &Fault) {
        self.table
            .remove(fault.id, &mut self.dp)
            .expect("removing the fault");
    }

    fn counters(&self, fault: &Fault) -> FaultCounters {
        self.dp
            .read_counters(fault.counter)
            .expect("reading counters")
    }

    /// Runs `frame` through `hook` `repeat` times; the verdict is the last run's.
    fn run_with(&mut self, hook: Hook, frame: &[u8], repeat: u32, ctx: Option<&[u8]>) -> Run {
        self.run_raw(hook, frame, repeat, ctx, None).0
    }

    /// Runs a TC program once with a `struct __sk_buff` in `ctx_in` and `ctx_out`: the
    /// verdict, the frame let out and the context as the program left it.
    fn run_skb(&mut self, hook: Hook, frame: &[u8], ctx: &SkBuff) -> (Run, SkBuff) {
        assert_ne!(hook, Hook::Xdp, "an XDP program takes a struct xdp_md");
        // Larger than the struct: the kernel fails with ENOSPC rather than cut it short.
        let mut out = [0u8; 2 * SK_BUFF_LEN];
        let (run, size) = self.run_raw(hook, frame, 1, Some(&ctx.0), Some(&mut out));
        assert_eq!(
            size as usize, SK_BUFF_LEN,
            "the kernel's struct __sk_buff is {size} bytes, this file assumes {SK_BUFF_LEN}"
        );
        let back = SkBuff(out[..SK_BUFF_LEN].try_into().expect("length checked"));
        (run, back)
    }

    /// [`Bench::run_skb`] with CLOCK_MONOTONIC read just before and just after the run: the
    /// program's `bpf_ktime_get_ns()` falls between the two.
    fn run_skb_timed(&mut self, hook: Hook, frame: &[u8], ctx: &SkBuff) -> Timed {
        let before = monotonic_ns();
        let (run, ctx) = self.run_skb(hook, frame, ctx);
        let after = monotonic_ns();
        Timed {
            run,
            ctx,
            before,
            after,
        }
    }

    /// One BPF_PROG_TEST_RUN; also returns `ctx_size_out`.
    fn run_raw(
        &mut self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
        ctx_in: Option<&[u8]>,
        ctx_out: Option<&mut [u8]>,
    ) -> (Run, u32) {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in,
            ctx_out,
            repeat,
            ..Default::default()
        };
        let ebpf = self.dp.ebpf_mut();
        let result = match hook {
            Hook::Xdp => {
                let prog: &mut Xdp = ebpf
                    .program_mut(XDP_PROGRAM)
                    .expect("XDP program")
                    .try_into()
                    .expect("an XDP program");
                prog.test_run(opts)
            }
            Hook::TcIngress | Hook::TcEgress => {
                let name = if hook == Hook::TcIngress {
                    TC_INGRESS_PROGRAM
                } else {
                    TC_EGRESS_PROGRAM
                };
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .expect("TC program")
                    .try_into()
                    .expect("a sched_cls program");
                prog.test_run(opts)
            }
        }
        .unwrap_or_else(|e| panic!("test_run on {hook:?}: {e:?}\n{}", hex(frame)));
        let verdict = match (hook, result.return_value) {
            (Hook::Xdp, XDP_PASS) | (Hook::TcIngress | Hook::TcEgress, TC_ACT_OK) => Verdict::Pass,
            (Hook::Xdp, XDP_DROP) | (Hook::TcIngress | Hook::TcEgress, TC_ACT_SHOT) => {
                Verdict::Drop
            }
            (Hook::TcIngress | Hook::TcEgress, TC_ACT_REDIRECT) => Verdict::Redirect,
            (_, other) => panic!("{hook:?} returned unexpected verdict {other}"),
        };
        out.truncate(result.data_size_out as usize);
        (Run { verdict, out }, result.ctx_size_out)
    }

    fn run(&mut self, hook: Hook, frame: &[u8]) -> Run {
        self.run_with(hook, frame, 1, None)
    }

    /// The verdict; a passed frame must come out byte for byte as it went in.
    fn verdict(&mut self, hook: Hook, frame: &[u8]) -> Verdict {
        let run = self.run(hook, frame);
        if run.verdict == Verdict::Pass {
            assert_eq!(
                run.out,
                frame,
                "{hook:?} passed the frame but changed it:\nin:\n{}out:\n{}",
                hex(frame),
                hex(&run.out)
            );
        }
        run.verdict
    }

    /// Asserts the verdict of every hook in `hooks` for `frame`.
    fn expect(&mut self, hooks: &[Hook], frame: &[u8], want: Verdict, what: &str) {
        for &hook in hooks {
            let got = self.verdict(hook, frame);
            assert_eq!(got, want, "{what}: {hook:?}\n{}", hex(frame));
        }
    }
}

/// A fault spec as the API would build it.
fn spec(
    action: Action,
    port: u16,
    protocol: Protocol,
    direction: Direction,
    peer: Option<&str>,
) -> FaultSpec {
    FaultSpec {
        target: Target {
            port,
            protocol,
            direction,
            peer: peer.map(|p| Peer::parse(p, "target.peer").expect("peer")),
        },
        action,
        ttl: None,
        label: "program-test".into(),
    }
}

fn drop_spec(port: u16, protocol: Protocol, direction: Direction, peer: Option<&str>) -> FaultSpec {
    spec(
        Action::Drop { probability: 1.0 },
        port,
        protocol,
        direction,
        peer,
    )
}

fn tcp(src: &str, dst: &str) -> Vec<u8> {
    FrameBuilder::tcp(sock(src), sock(dst))
        .flags(ACK | PSH)
        .seq(1000)
        .ack(2000)
        .payload(b"hello")
        .build()
}

fn udp(src: &str, dst: &str) -> Vec<u8> {
    FrameBuilder::udp(sock(src), sock(dst))
        .payload(b"datagram")
        .build()
}

fn counters(matched: &[&[u8]], acted: &[&[u8]]) -> FaultCounters {
    FaultCounters {
        matched_packets: matched.len() as u64,
        matched_bytes: matched.iter().map(|f| f.len() as u64).sum(),
        acted_packets: acted.len() as u64,
        acted_bytes: acted.iter().map(|f| f.len() as u64).sum(),
    }
}

// ---------------------------------------------------------------------------------------
// The test-run environment itself
// ---------------------------------------------------------------------------------------

/// The facts the rest of this file relies on: both program types run on ifindex 1 (not 0)
/// under BPF_PROG_TEST_RUN, and the byte counters see the whole frame.
#[test]
fn test_run_runs_on_loopback_and_counts_whole_frames() {
    let Some(mut b) = Bench::bare() else { return };
    // SAFETY: a valid NUL-terminated string.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    assert_eq!(lo, TEST_RUN_IFINDEX, "loopback is ifindex 1 in every netns");

    let fault = b.add(drop_spec(2379, Protocol::Tcp, Direction::Both, None));
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:2379");

    // A role for ifindex 0 only: no hook sees ifindex 0.
    b.role(0, ROLE_INGRESS | ROLE_EGRESS);
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "role on ifindex 0 only");
    assert_eq!(b.counters(&fault), FaultCounters::default());

    // A role for ifindex 1: XDP and TC egress act.
    b.role(0, 0);
    b.role(TEST_RUN_IFINDEX, ROLE_INGRESS | ROLE_EGRESS);
    b.expect(&DROP_HOOKS, &frame, Verdict::Drop, "role on ifindex 1");
    assert_eq!(
        b.counters(&fault),
        counters(&[&frame, &frame], &[&frame, &frame])
    );

    // Naming loopback explicitly in the XDP context changes nothing.
    let ctx: Vec<u8> = [0, frame.len() as u32, 0, TEST_RUN_IFINDEX, 0, 0]
        .iter()
        .flat_map(|w: &u32| w.to_ne_bytes())
        .collect(); // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue, egress
    let run = b.run_with(Hook::Xdp, &frame, 1, Some(&ctx));
    assert_eq!(run.verdict, Verdict::Drop);

    // Byte counters count the whole frame, Ethernet header included, at both hook types.
    let big = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:2379"))
        .payload(&[0x5a; 1000])
        .build();
    let before = b.counters(&fault);
    b.expect(&DROP_HOOKS, &big, Verdict::Drop, "big frame");
    let after = b.counters(&fault);
    assert_eq!(
        after.matched_bytes - before.matched_bytes,
        2 * big.len() as u64
    );
    assert_eq!(after.acted_bytes - before.acted_bytes, 2 * big.len() as u64);
}

// ---------------------------------------------------------------------------------------
// drop: ports, protocols, directions
// ---------------------------------------------------------------------------------------

/// TCP port drop, direction both: IPv4 and IPv6 packets to the port and from it are dropped
/// at XDP and TC egress; other ports and UDP on the same port pass; counters add up.
#[test]
fn drop_tcp_port_drops_both_directions_on_v4_and_v6() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(drop_spec(2379, Protocol::Tcp, Direction::Both, None));

    let dropped = [
        tcp("10.0.0.1:40000", "10.0.0.2:2379"),
        tcp("10.0.0.2:2379", "10.0.0.1:40000"),
        tcp("[fd00::1]:40000", "[fd00::2]:2379"),
        tcp("[fd00::2]:2379", "[fd00::1]:40000"),
        FrameBuilder::tcp(sock("127.0.0.1:55555"), sock("127.0.0.1:2379"))
            .flags(SYN)
            .seq(7)
            .ack(0)
            .build(),
        // Both ports are the faulted port: one match, one drop.
        tcp("10.0.0.1:2379", "10.0.0.2:2379"),
    ];
    let passed = [
        tcp("10.0.0.1:40000", "10.0.0.2:2380"),
        tcp("10.0.0.2:2380", "10.0.0.1:40000"),
        tcp("[fd00::1]:40000", "[fd00::2]:2378"),
        tcp("10.0.0.1:2378", "10.0.0.2:2380"),
        udp("10.0.0.1:40000", "10.0.0.2:2379"),
        udp("10.0.0.2:2379", "10.0.0.1:40000"),
        udp("[fd00::1]:40000", "[fd00::2]:2379"),
        udp("[fd00::2]:2379", "[fd00::1]:40000"),
    ];
    for frame in &dropped {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "tcp on port 2379");
    }
    for frame in &passed {
        b.expect(&DROP_HOOKS, frame, Verdict::Pass, "not tcp on port 2379");
    }
    let each: Vec<&[u8]> = dropped
        .iter()
        .flat_map(|f| [f.as_slice(), f.as_slice()])
        .collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// `any` compiles into a TCP and a UDP entry: both are dropped, v4 and v6, and counted on
/// the one fault. A `udp` fault leaves TCP alone.
#[test]
fn drop_any_protocol_catches_tcp_and_udp_and_udp_spares_tcp() {
    let Some(mut b) = Bench::new() else { return };
    let any = b.add(drop_spec(53, Protocol::Any, Direction::Both, None));
    let only_udp = b.add(drop_spec(5353, Protocol::Udp, Direction::Both, None));

    let on_53 = [
        tcp("10.0.0.1:40000", "10.0.0.2:53"),
        udp("10.0.0.1:40000", "10.0.0.2:53"),
        udp("10.0.0.2:53", "10.0.0.1:40000"),
        tcp("[fd00::2]:53", "[fd00::1]:40000"),
        udp("[fd00::1]:40000", "[fd00::2]:53"),
    ];
    for frame in &on_53 {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "any on port 53");
    }
    let udp_5353 = udp("[fd00::1]:5353", "[ff02::fb]:5353");
    b.expect(&DROP_HOOKS, &udp_5353, Verdict::Drop, "udp on 5353");
    let tcp_5353 = tcp("10.0.0.1:40000", "10.0.0.2:5353");
    b.expect(
        &DROP_HOOKS,
        &tcp_5353,
        Verdict::Pass,
        "tcp on a udp-only port",
    );

    let each: Vec<&[u8]> = on_53
        .iter()
        .flat_map(|f| [f.as_slice(), f.as_slice()])
        .collect();
    assert_eq!(b.counters(&any), counters(&each, &each));
    assert_eq!(
        b.counters(&only_udp),
        counters(&[&udp_5353, &udp_5353], &[&udp_5353, &udp_5353])
    );
}

/// `to-port` drops only packets whose destination port is the port (client → server).
#[test]
fn direction_to_port_drops_only_packets_to_the_port() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(drop_spec(8080, Protocol::Any, Direction::ToPort, None));

    let to_port = [
        tcp("10.0.0.1:40000", "10.0.0.2:8080"),
        udp("10.0.0.1:40000", "10.0.0.2:8080"),
        tcp("[fd00::1]:40000", "[fd00::2]:8080"),
        // Destination is the port, and so is the source.
        tcp("10.0.0.1:8080", "10.0.0.2:8080"),
    ];
    let from_port = [
        tcp("10.0.0.2:8080", "10.0.0.1:40000"),
        udp("10.0.0.2:8080", "10.0.0.1:40000"),
        tcp("[fd00::2]:8080", "[fd00::1]:40000"),
    ];
    for frame in &to_port {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "to the port");
    }
    for frame in &from_port {
        b.expect(&DROP_HOOKS, frame, Verdict::Pass, "from the port");
    }
    // Packets from the port do not even count as matched.
    let each: Vec<&[u8]> = to_port
        .iter()
        .flat_map(|f| [f.as_slice(), f.as_slice()])
        .collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// `from-port` drops only packets whose source port is the port (server → client).
#[test]
fn direction_from_port_drops_only_packets_from_the_port() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(drop_spec(8080, Protocol::Any, Direction::FromPort, None));

    let from_port = [
        tcp("10.0.0.2:8080", "10.0.0.1:40000"),
        udp("10.0.0.2:8080", "10.0.0.1:40000"),
        tcp("[fd00::2]:8080", "[fd00::1]:40000"),
        // Both ports are 8080: the destination entry does not match this direction, the
        // source entry does.
        tcp("10.0.0.1:8080", "10.0.0.2:8080"),
    ];
    let to_port = [
        tcp("10.0.0.1:40000", "10.0.0.2:8080"),
        udp("10.0.0.1:40000", "10.0.0.2:8080"),
        tcp("[fd00::1]:40000", "[fd00::2]:8080"),
    ];
    for frame in &from_port {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "from the port");
    }
    for frame in &to_port {
        b.expect(&DROP_HOOKS, frame, Verdict::Pass, "to the port");
    }
    let each: Vec<&[u8]> = from_port
        .iter()
        .flat_map(|f| [f.as_slice(), f.as_slice()])
        .collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

// ---------------------------------------------------------------------------------------
// Peer filters
// ---------------------------------------------------------------------------------------

/// An IPv4 CIDR peer: only flows with a remote address in it are dropped. The remote is the
/// source of a packet to the port and the destination of a packet from it.
#[test]
fn peer_ipv4_cidr_drops_only_that_remote() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(drop_spec(
        6379,
        Protocol::Tcp,
        Direction::Both,
        Some("198.18.7.9/15"), // 198.18.0.0 – 198.19.255.255
    ));

    let dropped = [
        tcp("198.18.0.1:40000", "10.0.0.2:6379"), // to the port, remote = source
        tcp("198.19.255.255:40000", "10.0.0.2:6379"), // last address of the /15
        tcp("10.0.0.2:6379", "198.19.1.2:40000"), // from the port, remote = destination
    ];
    let passed = [
        tcp("198.20.0.1:40000", "10.0.0.2:6379"), // just past the /15
        tcp("198.17.255.255:40000", "10.0.0.2:6379"), // just before it
        tcp("10.0.0.2:6379", "198.20.0.1:40000"),
        // The peer is on the port's side, not the remote side.
        tcp("10.0.0.1:40000", "198.18.0.2:6379"),
        tcp("198.18.0.2:6379", "10.0.0.1:40000"),
        // A v4 peer never matches IPv6.
        tcp("[::ffff:198.18.0.1]:40000", "[fd00::2]:6379"),
        tcp("[fd00::1]:40000", "[fd00::2]:6379"),
    ];
    for frame in &dropped {
        b.expect(&DROP_HOOKS, frame, Verdict::Drop, "remote in 198.18.0.0/15");
    }
    for frame in &passed {
        b.expect(
            &DROP_HOOKS,
            frame,
            Verdict::Pass,
            "remote outside 198.18.0.0/15",
        );
    }
    let each: Vec<&[u8]> = dropped
        .iter()
        .flat_map(|f| [f.as_slice(), f.as_slice()])
        .collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// IPv6 peers: a single address (/128 by default) and a prefix, each only its remote.
#[test]
fn peer_ipv6_address_and_prefix_drop_only_that_remote() {
    let Some(mut b) = Bench::new() else { return };
    let single = b.add(drop_spec(
        443,
        Protocol::Tcp,
        Direction::Both,
        Some("fd00::1"),
    ));
    let prefix = b.add(drop_spec(
        8443,
        Protocol::Udp,
        Direction::Both,
        Some("2001:db8:aa00::/40"),
    ));

    b.expect(
        &DROP_HOOKS,
        &tcp("[fd00::1]:40000", "[fd00::99]:443"),
        Verdict::Drop,
        "from the named peer to the port",
    );
    b.expect(
        &DROP_HOOKS,
        &tcp("[fd00::99]:443", "[fd00::1]:40000"),
        Verdict::Drop,
        "from the port to the named peer",
    );
    for (frame, what) in [
        (tcp("[fd00::2]:40000", "[fd00::99]:443"), "another address"),
        (
            tcp("[fd00::1:0:0:1]:40000", "[fd00::99]:443"),
            "differs in a middle word",
        ),
        (
            tcp("[fd00::99]:40000", "[fd00::1]:443"),
            "peer on the port's side",
        ),
        (tcp("10.0.0.1:40000", "10.0.0.2:443"), "IPv4"),
    ] {
        b.expect(&DROP_HOOKS, &frame, Verdict::Pass, what);
    }
    assert_eq!(b.counters(&single).acted_packets, 4);
    assert_eq!(b.counters(&single).matched_packets, 4);

    for (frame, want, what) in [
        (
            udp("[2001:db8:aa00::1]:5000", "[fd00::2]:8443"),
            Verdict::Drop,
            "first /40",
        ),
        (
            udp("[2001:db8:aaff:ffff::1]:5000", "[fd00::2]:8443"),
            Verdict::Drop,
            "end of /40",
        ),
        (
            udp("[fd00::2]:8443", "[2001:db8:aa12::7]:5000"),
            Verdict::Drop,
            "from the port",
        ),
        (
            udp("[2001:db8:ab00::1]:5000", "[fd00::2]:8443"),
            Verdict::Pass,
            "next /40",
        ),
        (
            udp("[2001:db8:a900::1]:5000", "[fd00::2]:8443"),
            Verdict::Pass,
            "previous /40",
        ),
        (
            udp("[2001:db9:aa00::1]:5000", "[fd00::2]:8443"),
            Verdict::Pass,
            "other /32",
        ),
    ] {
        b.expect(&DROP_HOOKS, &frame, want, what);
    }
    assert_eq!(b.counters(&prefix).acted_packets, 6);
}

// ---------------------------------------------------------------------------------------
// Probability
// ---------------------------------------------------------------------------------------

/// `drop 30 %` acts on a binomial share of packets, within ±5 σ over 10 000 packets, and
/// the counters agree exactly with the verdicts.
#[test]
fn drop_probability_is_binomial() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(spec(
        Action::Drop { probability: 0.3 },
        9000,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    const N: u64 = 10_000;
    let p = (threshold(0.3) as f64 + 1.0) / 4_294_967_296.0;
    let mean = N as f64 * p;
    let sigma = (N as f64 * p * (1.0 - p)).sqrt();
    let within = |acted: u64| (acted as f64 - mean).abs() <= 5.0 * sigma;
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:9000");

    // XDP in one syscall: `repeat` runs the program N times; the verdict returned is only
    // the last run's, but the counters see every run.
    b.run_with(Hook::Xdp, &frame, N as u32, None);
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, N, "every repeat is counted");
    assert_eq!(c.matched_bytes, N * frame.len() as u64);
    assert!(
        within(c.acted_packets),
        "XDP dropped {} of {N}, expected {mean:.0} ± {:.0}",
        c.acted_packets,
        5.0 * sigma
    );
    assert_eq!(c.acted_bytes, c.acted_packets * frame.len() as u64);

    // TC egress, one syscall per packet: tally the verdicts themselves.
    let mut drops = 0;
    for _ in 0..N {
        if b.verdict(Hook::TcEgress, &frame) == Verdict::Drop {
            drops += 1;
        }
    }
    assert!(
        within(drops),
        "TC egress dropped {drops} of {N}, expected {mean:.0} ± {:.0}",
        5.0 * sigma
    );
    let c2 = b.counters(&fault);
    assert_eq!(c2.matched_packets - c.matched_packets, N);
    assert_eq!(
        c2.acted_packets - c.acted_packets,
        drops,
        "acted = verdicts"
    );
}

// ---------------------------------------------------------------------------------------
// Header parsing
// ---------------------------------------------------------------------------------------

/// TCP and UDP behind IPv6 extension headers (hop-by-hop, destination options, routing,
/// longer ones, chains) are still matched, by port and by peer.
#[test]
fn ipv6_extension_headers_are_stepped_over() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(drop_spec(
        2379,
        Protocol::Any,
        Direction::Both,
        Some("fd00::/16"),
    ));
    let chains: &[&[(Ipv6Ext, u8)]] = &[
        &[(Ipv6Ext::HopByHop, 0)],
        &[(Ipv6Ext::DestinationOptions, 0)],
        &[(Ipv6Ext::HopByHop, 3)],
        &[(Ipv6Ext::Routing, 0)],
        &[(Ipv6Ext::HopByHop, 0), (Ipv6Ext::DestinationOptions, 1)],
        &[
            (Ipv6Ext::HopByHop, 0),
            (Ipv6Ext::Routing, 0),
            (Ipv6Ext::DestinationOptions, 0),
        ],
    ];
    let mut acted = 0;
    for chain in chains {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            for (src, dst, want) in [
                ("[fd00::1]:40000", "[fd00::2]:2379", Verdict::Drop),
                ("[fd00::2]:2379", "[fd00::1]:40000", Verdict::Drop),
                ("[fd00::1]:40000", "[fd00::2]:2380", Verdict::Pass),
                ("[fe80::1]:40000", "[fd00::2]:2379", Verdict::Pass),
            ] {
                let mut builder = FrameBuilder::with_protocol(protocol, sock(src), sock(dst))
                    .payload(b"behind extension headers");
                for &(kind, units) in chain.iter() {
                    builder = builder.ipv6_ext(kind, units);
                }
                let frame = builder.build();
                verify_checksums(&frame).expect("the builder's own frame");
                b.expect(
                    &DROP_HOOKS,
                    &frame,
                    want,
                    &format!("{chain:?} proto {protocol}"),
                );
                if want == Verdict::Drop {
                    acted += 2;
                }
            }
        }
    }
    assert_eq!(b.counters(&fault).acted_packets, acted);
}

/// IPv4 headers with options (IHL > 5) are parsed past the options.
#[test]
fn ipv4_options_are_stepped_over() {
    let Some(mut b) = Bench::new() else { return };
    b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    for options in [&[1u8, 1, 1, 0][..], &[0x94, 4, 0, 0], &[1; 40]] {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            let frame = FrameBuilder::with_protocol(
                protocol,
                sock("10.0.0.1:40000"),
                sock("10.0.0.2:2379"),
            )
            .ipv4_options(options)
            .build();
            verify_checksums(&frame).expect("the builder's own frame");
            b.expect(&DROP_HOOKS, &frame, Verdict::Drop, "IPv4 with options");
        }
    }
}

/// Frames the programs cannot classify pass untouched and uncounted, even with a fault on
/// every protocol of the port their bytes mention: non-IP, other L4 protocols, IPv4
/// fragments after the first, and frames truncated anywhere before the fields the rules need.
#[test]
fn unclassifiable_and_truncated_frames_pass() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));

    let v4 = tcp("10.0.0.1:40000", "10.0.0.2:2379");
    let v6 = tcp("[fd00::1]:40000", "[fd00::2]:2379");
    let v6_ext = FrameBuilder::tcp(sock("[fd00::1]:40000"), sock("[fd00::2]:2379"))
        .ipv6_ext(Ipv6Ext::HopByHop, 1)
        .build();
    let l4_v4 = ETH_HLEN + IPV4_HLEN;
    let l4_v6 = ETH_HLEN + IPV6_HLEN;
    let mut frames: Vec<(Vec<u8>, &str)> = vec![
        (
            arp_request("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()),
            "ARP",
        ),
        (
            ethertype(&v4, 0x88b5),
            "unknown ethertype over an IPv4 body",
        ),
        (ethertype(&v4, 0x8100), "VLAN-tagged (not followed)"),
        (ethertype(&v4[..ETH_HLEN], 0x88b5), "Ethernet header only"),
        (v4[..l4_v4].to_vec(), "IPv4 header, no L4"),
        (v4[..l4_v4 + 3].to_vec(), "IPv4, TCP ports cut"),
        (v4[..l4_v4 + 13].to_vec(), "IPv4, TCP cut before the flags"),
        (v6[..l4_v6].to_vec(), "IPv6 header, no L4"),
        (v6[..l4_v6 + 13].to_vec(), "IPv6, TCP cut before the flags"),
        (v6_ext[..l4_v6 + 12].to_vec(), "IPv6 hop-by-hop header cut"),
        (
            v6_ext[..l4_v6 + 16 + 3].to_vec(),
            "IPv6, ports after the extension cut",
        ),
        (bad_ihl(&v4), "IPv4 with IHL < 5"),
        (
            FrameBuilder::udp(sock("10.0.0.1:2379"), sock("10.0.0.2:2379"))
                .ipv4_fragment(185, false)
                .build(),
            "IPv4 fragment after the first",
        ),
        (with_protocol(&v4, 1), "ICMP whose bytes look like ports"),
        (with_protocol(&v4, 132), "SCTP on the port"),
        (
            // Ethernet minimum-frame padding on a packet of another port changes nothing.
            FrameBuilder::udp(sock("10.0.0.1:40000"), sock("10.0.0.2:53"))
                .pad_frame_to(60)
                .build(),
            "padded frame on another port",
        ),
    ];
    for (frame, what) in &frames {
        b.expect(&ALL_HOOKS, frame, Verdict::Pass, what);
    }
    // Cut inside the IP header: only XDP accepts these under BPF_PROG_TEST_RUN.
    frames = vec![
        (v4[..ETH_HLEN].to_vec(), "IPv4 ethertype, no header"),
        (v4[..ETH_HLEN + 1].to_vec(), "one byte of IPv4"),
        (v4[..ETH_HLEN + 10].to_vec(), "IPv4 header cut at 10 bytes"),
        (
            v4[..ETH_HLEN + 19].to_vec(),
            "IPv4 header cut before the last address byte",
        ),
        (
            v6[..ETH_HLEN + 30].to_vec(),
            "IPv6 header cut in the source address",
        ),
        (
            v6[..ETH_HLEN + 39].to_vec(),
            "IPv6 header cut before the last address byte",
        ),
    ];
    for (frame, what) in &frames {
        b.expect(&[Hook::Xdp], frame, Verdict::Pass, what);
    }
    assert_eq!(b.counters(&fault), FaultCounters::default());

    // The same fault does drop the whole frames these were cut from.
    b.expect(&DROP_HOOKS, &v4, Verdict::Drop, "whole IPv4 frame");
    b.expect(&DROP_HOOKS, &v6_ext, Verdict::Drop, "whole IPv6 frame");
}

fn ethertype(frame: &[u8], ethertype: u16) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
    f
}

fn bad_ihl(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[ETH_HLEN] = 0x44;
    f
}

/// Rewrites the IPv4 protocol field (and the header checksum with it).
fn with_protocol(frame: &[u8], protocol: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[ETH_HLEN + 9] = protocol;
    f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
    let c = internet_checksum(&f[ETH_HLEN..ETH_HLEN + IPV4_HLEN]);
    f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&c.to_be_bytes());
    f
}

// ---------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------

/// Counters: matched = every packet the fault's target covers, acted = the ones it dropped,
/// packets and bytes, over frames of many sizes; other traffic is not counted.
#[test]
fn counters_equal_what_was_sent_and_dropped() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(spec(
        Action::Drop { probability: 0.5 },
        5432,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    let mut want = FaultCounters::default();
    for i in 0..400usize {
        let payload = vec![i as u8; (i * 37) % 1400];
        let (src, dst): (SocketAddr, SocketAddr) = match i % 4 {
            0 => (sock("10.1.0.1:40000"), sock("10.1.0.2:5432")),
            1 => (sock("10.1.0.2:5432"), sock("10.1.0.1:40000")),
            2 => (sock("[fd00::1]:40000"), sock("[fd00::2]:5432")),
            _ => (sock("[fd00::2]:5432"), sock("[fd00::1]:40000")),
        };
        let protocol = if i % 3 == 0 { IPPROTO_UDP } else { IPPROTO_TCP };
        let frame = FrameBuilder::with_protocol(protocol, src, dst)
            .payload(&payload)
            .build();
        let other =
            FrameBuilder::with_protocol(protocol, sock("10.1.0.1:40000"), sock("10.1.0.2:5433"))
                .payload(&payload)
                .build();
        let hook = DROP_HOOKS[i % 2];
        assert_eq!(b.verdict(hook, &other), Verdict::Pass);
        want.matched_packets += 1;
        want.matched_bytes += frame.len() as u64;
        if b.verdict(hook, &frame) == Verdict::Drop {
            want.acted_packets += 1;
            want.acted_bytes += frame.len() as u64;
        }
    }
    assert_eq!(b.counters(&fault), want);
    assert!(
        want.acted_packets > 100 && want.acted_packets < 300,
        "half of 400 dropped, got {}",
        want.acted_packets
    );
}

/// Faults on one port compose in order: the first (50 %) sees every packet, the second
/// (100 %) sees exactly the ones the first let through, and every packet is dropped once.
#[test]
fn composed_faults_see_what_earlier_ones_let_through() {
    let Some(mut b) = Bench::new() else { return };
    let half = b.add(spec(
        Action::Drop { probability: 0.5 },
        7000,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let all = b.add(drop_spec(7000, Protocol::Tcp, Direction::ToPort, None));
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:7000");
    const N: u64 = 1000;
    for _ in 0..N {
        assert_eq!(b.verdict(Hook::TcEgress, &frame), Verdict::Drop);
    }
    let h = b.counters(&half);
    let a = b.counters(&all);
    assert_eq!(h.matched_packets, N);
    assert!(h.acted_packets > 350 && h.acted_packets < 650, "{h:?}");
    assert_eq!(a.matched_packets, N - h.acted_packets);
    assert_eq!(a.acted_packets, a.matched_packets);
    assert_eq!(
        h.acted_packets + a.acted_packets,
        N,
        "each packet dropped once"
    );

    // From the port only the first fault applies (the second is to-port).
    let back = tcp("10.0.0.2:7000", "10.0.0.1:40000");
    let mut dropped = 0;
    for _ in 0..N {
        if b.verdict(Hook::TcEgress, &back) == Verdict::Drop {
            dropped += 1;
        }
    }
    assert_eq!(
        b.counters(&all),
        a,
        "a to-port fault never sees packets from the port"
    );
    assert_eq!(b.counters(&half).acted_packets - h.acted_packets, dropped);
}

// ---------------------------------------------------------------------------------------
// reset: the forged RST, byte by byte
// ---------------------------------------------------------------------------------------

/// MAC addresses of the offending segment's sender and receiver: distinct in every byte
/// but the first, so a half-swapped Ethernet header shows.
const SENDER_MAC: [u8; 6] = [0x02, 0x5e, 0x4d, 0xe7, 0x00, 0x01];
const RECEIVER_MAC: [u8; 6] = [0x02, 0x7e, 0xce, 0x1f, 0xe7, 0x02];

fn reset_spec(port: u16, direction: Direction, probability: f64) -> FaultSpec {
    spec(
        Action::Reset { probability },
        port,
        Protocol::Tcp,
        direction,
        None,
    )
}

/// A TCP segment from the sender's MAC to the receiver's.
fn segment(src: &str, dst: &str, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> FrameBuilder {
    FrameBuilder::tcp(sock(src), sock(dst))
        .src_mac(SENDER_MAC)
        .dst_mac(RECEIVER_MAC)
        .flags(flags)
        .seq(seq)
        .ack(ack)
        .payload(payload)
}

/// An offending segment and the RST that must answer it.
struct RstCase {
    what: String,
    frame: Vec<u8>,
    /// The RST's sequence and acknowledgment numbers and flags, worked out by hand from
    /// RFC 793 "Reset Generation": if the segment has ACK, `<SEQ=SEG.ACK><CTL=RST>`; else
    /// `<SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>`, SEG.LEN counting SYN and FIN as one each.
    seq: u32,
    ack: u32,
    flags: u8,
}

/// Offending segments of every shape, IPv4 and IPv6, both directions of a flow to port 2379.
fn rst_cases() -> Vec<RstCase> {
    let mut cases = Vec::new();
    for (client, server) in [
        ("10.0.0.1:40000", "10.0.0.2:2379"),
        ("[fd00::1]:40000", "[fd00::2]:2379"),
    ] {
        let family = if sock(client).is_ipv4() {
            "IPv4"
        } else {
            "IPv6"
        };
        let mut case = |what: &str, frame: FrameBuilder, seq: u32, ack: u32, flags: u8| {
            cases.push(RstCase {
                what: format!("{family}: {what}"),
                frame: frame.build(),
                seq,
                ack,
                flags,
            })
        };
        // With ACK: the RST's sequence is the segment's acknowledgment, and it has no ACK.
        case(
            "ACK|PSH with payload, to the port",
            segment(client, server, ACK | PSH, 1000, 2000, b"hello"),
            2000,
            0,
            RST,
        );
        case(
            "ACK|PSH with 1400 bytes of payload, from the port",
            segment(
                server,
                client,
                ACK | PSH,
                0x8000_0000,
                0xdead_beef,
                &[0x5a; 1400],
            ),
            0xdead_beef,
            0,
            RST,
        );
        case(
            "bare ACK, no payload",
            segment(client, server, ACK, 1000, 2000, b""),
            2000,
            0,
            RST,
        );
        case(
            "FIN|ACK, no payload",
            segment(client, server, FIN | ACK, 5000, 6000, b""),
            6000,
            0,
            RST,
        );
        case(
            "FIN|ACK|PSH with payload, from the port",
            segment(server, client, FIN | ACK | PSH, 5000, 6000, b"bye"),
            6000,
            0,
            RST,
        );
        case(
            "SYN|ACK from the port",
            segment(server, client, SYN | ACK, 300, 101, b"")
                .tcp_options(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7]),
            101,
            0,
            RST,
        );
        case(
            "URG|ACK with an urgent pointer",
            segment(client, server, URG | ACK | PSH, 1, 0xffff_ffff, b"!!!").urgent(3),
            0xffff_ffff,
            0,
            RST,
        );
        case(
            "ACK with timestamps (12 bytes of options) and payload",
            segment(client, server, ACK | PSH, 42, 4242, b"with options")
                .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]),
            4242,
            0,
            RST,
        );
        // Without ACK: sequence 0, and the RST acknowledges the whole segment.
        case(
            "SYN with options, no payload",
            segment(client, server, SYN, 100, 0, b"")
                .window(64240)
                .tcp_options(&[2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0]),
            0,
            101,
            RST | ACK,
        );
        case(
            "SYN whose ack field is not zero (ACK flag clear, field ignored)",
            segment(client, server, SYN, 100, 0x1234_5678, b""),
            0,
            101,
            RST | ACK,
        );
        case(
            "SYN with data (TCP Fast Open)",
            segment(client, server, SYN, 100, 0, b"early"),
            0,
            106,
            RST | ACK,
        );
        case(
            "FIN|PSH without ACK, with payload",
            segment(client, server, FIN | PSH, 7000, 0, b"last"),
            0,
            7005,
            RST | ACK,
        );
        case(
            "SYN|FIN",
            segment(client, server, SYN | FIN, 100, 0, b""),
            0,
            102,
            RST | ACK,
        );
        case(
            "PSH without ACK, the acknowledgment wraps around 2^32",
            segment(client, server, PSH, 0xffff_fffe, 0, b"wrap!"),
            0,
            3,
            RST | ACK,
        );
        case(
            "no flags at all, no payload",
            segment(server, client, 0, 0xffff_ffff, 0, b""),
            0,
            0xffff_ffff,
            RST | ACK,
        );
    }
    // Headers the RST does not carry over: IPv4 options, TOS and a low TTL; IPv6 extension
    // headers, traffic class, flow label and hop limit 1; Ethernet padding.
    cases.push(RstCase {
        what: "IPv4 with options, TOS and TTL 3".into(),
        frame: segment("10.0.0.1:40000", "10.0.0.2:2379", ACK | PSH, 9, 99, b"opt")
            .ipv4_options(&[0x94, 4, 0, 0, 1, 1, 1, 0])
            .tos(0xb8)
            .ttl(3)
            .build(),
        seq: 99,
        ack: 0,
        flags: RST,
    });
    cases.push(RstCase {
        what: "IPv4 bare ACK padded to Ethernet's 60-byte minimum".into(),
        frame: segment("10.0.0.2:2379", "10.0.0.1:40000", ACK, 9, 99, b"")
            .pad_frame_to(60)
            .build(),
        seq: 99,
        ack: 0,
        flags: RST,
    });
    cases.push(RstCase {
        what: "IPv6 behind hop-by-hop and destination options, class, label, hop limit 1".into(),
        frame: segment(
            "[fd00::1]:40000",
            "[fd00::2]:2379",
            SYN,
            0x7fff_ffff,
            0,
            b"",
        )
        .ipv6_ext(Ipv6Ext::HopByHop, 0)
        .ipv6_ext(Ipv6Ext::DestinationOptions, 1)
        .tos(0xb8)
        .ipv6_flow_label(0xabcde)
        .ttl(1)
        .build(),
        seq: 0,
        ack: 0x8000_0000,
        flags: RST | ACK,
    });
    cases.push(RstCase {
        what: "IPv6 behind a routing header, with payload and ACK".into(),
        frame: segment(
            "[fd00::2]:2379",
            "[fd00::1]:40000",
            ACK | PSH,
            1,
            77,
            b"routed",
        )
        .ipv6_ext(Ipv6Ext::Routing, 0)
        .build(),
        seq: 77,
        ack: 0,
        flags: RST,
    });
    for c in &cases {
        verify_checksums(&c.frame)
            .unwrap_or_else(|e| panic!("{}: the builder's frame: {e}", c.what));
    }
    cases
}

/// The RST answering `offending`, built by the test's own builder (its own checksums): to
/// the sender's MAC, address and port, from the receiver's; IPv4 id 0 with DF and TTL 64,
/// or IPv6 with class and label 0 and hop limit 64; no IP options or extension headers;
/// TCP data offset 5, window 0, urgent pointer 0, no options, no payload.
fn expected_rst(offending: &[u8], seq: u32, ack: u32, flags: u8) -> Vec<u8> {
    let p = parse_frame(offending).expect("the offending frame parses");
    FrameBuilder::tcp(p.dst(), p.src())
        .src_mac(p.eth.dst)
        .dst_mac(p.eth.src)
        .flags(flags)
        .seq(seq)
        .ack(ack)
        .window(0)
        .ttl(64)
        .ipv4_id(0)
        .build()
}

/// Checks the frame a program let out is the RST for `c`, field by field (so that a failure
/// names the field) and then byte for byte.
fn check_rst(out: &[u8], c: &RstCase, hook: Hook) {
    let context = || {
        format!(
            "{hook:?}, {}\noffending segment:\n{}frame out:\n{}",
            c.what,
            hex(&c.frame),
            hex(out)
        )
    };
    let offending = parse_frame(&c.frame).unwrap();
    let v4 = offending.ip.src.is_ipv4();
    assert_ne!(out, c.frame, "the original went on: {}", context());
    let rst = parse_frame(out).unwrap_or_else(|e| panic!("{e}: {}", context()));

    // Trimmed to the bare headers.
    let want_len = ETH_HLEN + if v4 { IPV4_HLEN } else { IPV6_HLEN } + TCP_HLEN;
    assert_eq!(out.len(), want_len, "frame length: {}", context());

    // Ethernet: addresses swapped, same ethertype.
    assert_eq!(
        rst.eth.dst,
        offending.eth.src,
        "Ethernet destination: {}",
        context()
    );
    assert_eq!(
        rst.eth.src,
        offending.eth.dst,
        "Ethernet source: {}",
        context()
    );
    assert_eq!(rst.eth.ethertype, offending.eth.ethertype, "{}", context());

    // IP: addresses swapped, TCP, lengths for a bare TCP header, TTL / hop limit 64.
    assert_eq!(rst.ip.src, offending.ip.dst, "IP source: {}", context());
    assert_eq!(
        rst.ip.dst,
        offending.ip.src,
        "IP destination: {}",
        context()
    );
    assert_eq!(rst.ip.protocol, IPPROTO_TCP, "{}", context());
    assert_eq!(rst.ip.ttl, 64, "TTL / hop limit: {}", context());
    assert_eq!(rst.ip.l4_len, TCP_HLEN, "IP length fields: {}", context());
    let ip = &out[ETH_HLEN..];
    if v4 {
        assert_eq!(ip[0], 0x45, "IPv4 version and IHL 5: {}", context());
        assert_eq!(ip[1], 0, "TOS: {}", context());
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]),
            40,
            "total length: {}",
            context()
        );
        assert_eq!(
            rst.ip.ipv4_frag,
            0x4000,
            "DF, not a fragment: {}",
            context()
        );
    } else {
        assert_eq!(
            ip[0..4],
            [0x60, 0, 0, 0],
            "version, class, label: {}",
            context()
        );
        assert_eq!(
            u16::from_be_bytes([ip[4], ip[5]]),
            20,
            "payload length: {}",
            context()
        );
        assert_eq!(ip[6], IPPROTO_TCP, "next header: {}", context());
        assert!(
            rst.ip.ipv6_ext.is_empty(),
            "extension headers: {}",
            context()
        );
    }
    // Checksums recomputed here, from RFC 1071 and the pseudo-headers of RFC 793 / 8200.
    verify_ipv4_checksum(out).unwrap_or_else(|e| panic!("{e}: {}", context()));
    verify_l4_checksum(out).unwrap_or_else(|e| panic!("{e}: {}", context()));

    // TCP: ports swapped, RFC 793 numbers, bare header, window 0, nothing after it.
    let t = rst.tcp().unwrap();
    let (sport, dport) = offending.ports().unwrap();
    assert_eq!(
        (t.src_port, t.dst_port),
        (dport, sport),
        "ports: {}",
        context()
    );
    assert_eq!(t.seq, c.seq, "sequence number: {}", context());
    assert_eq!(t.ack, c.ack, "acknowledgment number: {}", context());
    assert_eq!(t.flags, c.flags, "flags: {}", context());
    assert_eq!(t.header_len, TCP_HLEN, "data offset 5: {}", context());
    assert_eq!(
        out[rst.ip.l4_offset + 12] & 0x0f,
        0,
        "reserved bits: {}",
        context()
    );
    assert_eq!(t.window, 0, "window: {}", context());
    assert_eq!(t.urgent, 0, "urgent pointer: {}", context());
    assert!(rst.payload.is_empty(), "payload: {}", context());

    // And the whole frame, against the test builder's.
    let want = expected_rst(&c.frame, c.seq, c.ack, c.flags);
    assert_eq!(
        out,
        want.as_slice(),
        "byte for byte: {}wanted:\n{}",
        context(),
        hex(&want)
    );
}

/// On an interface other than loopback (faultd marks it for ingress and egress), each
/// segment of a reset flow is answered at both TC hooks with the RST for its sender,
/// redirected (back out at ingress, back in at egress): the original is not delivered.
/// XDP does not carry `reset` and lets the segment by untouched. Counters: every segment
/// matched and acted on, whole frames.
#[test]
fn reset_forges_the_rst_for_each_segment_and_sends_it_back() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(reset_spec(2379, Direction::Both, 1.0));
    let cases = rst_cases();
    for c in &cases {
        assert_eq!(
            b.verdict(Hook::Xdp, &c.frame),
            Verdict::Pass,
            "XDP: {}",
            c.what
        );
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let run = b.run(hook, &c.frame);
            assert_eq!(
                run.verdict,
                Verdict::Redirect,
                "{hook:?}, {}: the RST must be redirected to the sender\n{}",
                c.what,
                hex(&c.frame)
            );
            check_rst(&run.out, c, hook);
        }
    }
    let each: Vec<&[u8]> = cases
        .iter()
        .flat_map(|c| [c.frame.as_slice(), c.frame.as_slice()])
        .collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// On loopback (faultd marks `lo` egress-only and loopback), TC egress rewrites the segment
/// into the RST and lets it go on (TC_ACT_OK): loopback hands it straight back to this host.
/// What goes on is the RST, never the original. The ingress hooks leave `lo` alone.
#[test]
fn reset_on_loopback_egress_turns_the_segment_into_the_rst() {
    let Some(mut b) = Bench::bare() else { return };
    b.role(TEST_RUN_IFINDEX, ROLE_EGRESS | ROLE_LOOPBACK);
    let fault = b.add(reset_spec(2379, Direction::Both, 1.0));
    let cases = rst_cases();
    for c in &cases {
        b.expect(
            &[Hook::Xdp, Hook::TcIngress],
            &c.frame,
            Verdict::Pass,
            &format!("ingress on loopback: {}", c.what),
        );
        let run = b.run(Hook::TcEgress, &c.frame);
        assert_eq!(
            run.verdict,
            Verdict::Pass,
            "TcEgress on loopback, {}: the RST goes on\n{}",
            c.what,
            hex(&c.frame)
        );
        check_rst(&run.out, c, Hook::TcEgress);
    }
    let each: Vec<&[u8]> = cases.iter().map(|c| c.frame.as_slice()).collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// RSTs themselves pass every hook untouched and uncounted, whichever way they go, with or
/// without ACK or payload, on both kinds of interface: a RST is never answered with a RST
/// (two faulted ends would otherwise ping-pong), and the RSTs faultd forges get through.
#[test]
fn rsts_pass_a_reset_untouched() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(reset_spec(2379, Direction::Both, 1.0));
    let mut rsts = Vec::new();
    for (client, server) in [
        ("10.0.0.1:40000", "10.0.0.2:2379"),
        ("[fd00::1]:40000", "[fd00::2]:2379"),
    ] {
        rsts.push(segment(client, server, RST, 2000, 0, b"").build());
        rsts.push(segment(server, client, RST, 2000, 0, b"").build());
        rsts.push(segment(client, server, RST | ACK, 0, 101, b"").build());
        rsts.push(segment(server, client, RST | ACK | PSH, 5, 6, b"diagnostic").build());
        rsts.push(segment(client, server, RST | SYN | FIN, 1, 0, b"").build());
    }
    // The RSTs the programs forge, fed back in, pass too.
    for c in rst_cases() {
        rsts.push(expected_rst(&c.frame, c.seq, c.ack, c.flags));
    }
    for frame in &rsts {
        b.expect(
            &ALL_HOOKS,
            frame,
            Verdict::Pass,
            "a RST, ingress and egress",
        );
    }
    b.role(TEST_RUN_IFINDEX, ROLE_EGRESS | ROLE_LOOPBACK);
    for frame in &rsts {
        b.expect(&ALL_HOOKS, frame, Verdict::Pass, "a RST, on loopback");
    }
    assert_eq!(b.counters(&fault), FaultCounters::default());
}

/// The direction of a reset: `from-port` answers only what the port sends (the RST goes to
/// the port's side), `to-port` only what is sent to it. Other traffic passes untouched.
#[test]
fn reset_follows_its_direction() {
    let Some(mut b) = Bench::new() else { return };
    b.add(reset_spec(2379, Direction::FromPort, 1.0));
    b.add(reset_spec(6379, Direction::ToPort, 1.0));
    let answered = [
        RstCase {
            what: "from-port fault, segment from the port".into(),
            frame: segment("[fd00::2]:2379", "[fd00::1]:40000", ACK, 1, 2, b"x").build(),
            seq: 2,
            ack: 0,
            flags: RST,
        },
        RstCase {
            what: "to-port fault, segment to the port".into(),
            frame: segment("10.0.0.1:40000", "10.0.0.2:6379", SYN, 10, 0, b"").build(),
            seq: 0,
            ack: 11,
            flags: RST | ACK,
        },
    ];
    for c in &answered {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let run = b.run(hook, &c.frame);
            assert_eq!(run.verdict, Verdict::Redirect, "{hook:?}, {}", c.what);
            check_rst(&run.out, c, hook);
        }
    }
    for (frame, what) in [
        (
            segment("[fd00::1]:40000", "[fd00::2]:2379", ACK, 1, 2, b"x").build(),
            "from-port fault, segment to the port",
        ),
        (
            segment("10.0.0.2:6379", "10.0.0.1:40000", SYN | ACK, 10, 11, b"").build(),
            "to-port fault, segment from the port",
        ),
        (
            segment("10.0.0.1:40000", "10.0.0.2:2380", ACK, 1, 2, b"x").build(),
            "another port",
        ),
        (
            FrameBuilder::udp(sock("10.0.0.1:40000"), sock("10.0.0.2:6379"))
                .payload(b"udp")
                .build(),
            "UDP on the port",
        ),
    ] {
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, what);
    }
}

/// `reset --probability 0.5`: each segment is either answered with the RST (never the
/// original) or passed untouched, about half each; the acted counter is the RSTs sent.
#[test]
fn reset_with_probability_answers_a_share_and_passes_the_rest() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(reset_spec(2379, Direction::Both, 0.5));
    let cases = rst_cases();
    const N: usize = 400;
    let mut resets = 0u64;
    for i in 0..N {
        let c = &cases[i % cases.len()];
        let hook = if i % 2 == 0 {
            Hook::TcIngress
        } else {
            Hook::TcEgress
        };
        let run = b.run(hook, &c.frame);
        match run.verdict {
            Verdict::Pass => assert_eq!(
                run.out, c.frame,
                "{hook:?}, {}: passed, but changed",
                c.what
            ),
            Verdict::Redirect => {
                check_rst(&run.out, c, hook);
                resets += 1;
            }
            Verdict::Drop => panic!("{hook:?}, {}: dropped without a RST", c.what),
        }
    }
    assert!(
        (100..300).contains(&resets),
        "{resets} RSTs for {N} segments at 50 %"
    );
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, N as u64);
    assert_eq!(c.acted_packets, resets);
}

/// `refuse` (rst mode) forges its RST with the same code: a SYN to the port is answered with
/// `<SEQ=0><ACK=SEG.SEQ+1><CTL=RST,ACK>` (the kernel's own answer to a closed port, so
/// `connect()` fails with ECONNREFUSED). Everything else, including SYNs from the port and
/// the established flow's segments, passes untouched.
#[test]
fn refuse_answers_syns_to_the_port_with_rst_ack() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(spec(
        Action::Refuse {
            mode: RefuseMode::Rst,
        },
        7835,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let syns = [
        RstCase {
            what: "IPv4 SYN to the port".into(),
            frame: segment(
                "127.0.0.1:51000",
                "127.0.0.1:7835",
                SYN,
                0x0bad_cafe,
                0,
                b"",
            )
            .tcp_options(&[
                2, 4, 0xff, 0xd7, 4, 2, 8, 10, 0, 1, 0, 0, 0, 0, 0, 0, 1, 3, 3, 7,
            ])
            .window(65495)
            .build(),
            seq: 0,
            ack: 0x0bad_caff,
            flags: RST | ACK,
        },
        RstCase {
            what: "IPv6 SYN to the port, sequence at 2^32 - 1".into(),
            frame: segment("[::1]:51000", "[::1]:7835", SYN, u32::MAX, 0, b"").build(),
            seq: 0,
            ack: 0,
            flags: RST | ACK,
        },
    ];
    for c in &syns {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let run = b.run(hook, &c.frame);
            assert_eq!(run.verdict, Verdict::Redirect, "{hook:?}, {}", c.what);
            check_rst(&run.out, c, hook);
        }
    }
    for (frame, what) in [
        (
            segment("127.0.0.1:7835", "127.0.0.1:51000", SYN, 1, 0, b"").build(),
            "SYN from the port",
        ),
        (
            segment("127.0.0.1:51000", "127.0.0.1:7835", SYN | ACK, 1, 2, b"").build(),
            "SYN|ACK to the port",
        ),
        (
            segment("[::1]:51000", "[::1]:7835", ACK | PSH, 1, 2, b"data").build(),
            "established data to the port",
        ),
        (
            segment("[::1]:7835", "[::1]:51000", FIN | ACK, 1, 2, b"").build(),
            "FIN from the port",
        ),
    ] {
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, what);
    }
    let each: Vec<&[u8]> = syns
        .iter()
        .flat_map(|c| [c.frame.as_slice(), c.frame.as_slice()])
        .collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));

    // On loopback egress the SYN turns into the RST|ACK and goes on.
    b.role(TEST_RUN_IFINDEX, ROLE_EGRESS | ROLE_LOOPBACK);
    for c in &syns {
        let run = b.run(Hook::TcEgress, &c.frame);
        assert_eq!(run.verdict, Verdict::Pass, "loopback egress, {}", c.what);
        check_rst(&run.out, c, Hook::TcEgress);
    }
}

// ---------------------------------------------------------------------------------------
// Hooks and interface roles
// ---------------------------------------------------------------------------------------

/// TC ingress never carries `drop`: alone it passes and counts nothing, and the real
/// ingress path (XDP, then TC ingress for what XDP let through) acts and counts once.
#[test]
fn tc_ingress_never_carries_drop() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    let frames = [
        tcp("10.0.0.1:40000", "10.0.0.2:2379"),
        udp("[fd00::2]:2379", "[fd00::1]:40000"),
    ];
    for frame in &frames {
        b.expect(&[Hook::TcIngress], frame, Verdict::Pass, "TC ingress");
    }
    assert_eq!(b.counters(&fault), FaultCounters::default());

    for frame in &frames {
        assert_eq!(b.verdict(Hook::Xdp, frame), Verdict::Drop);
    }
    let once: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    assert_eq!(b.counters(&fault), counters(&once, &once));
}

/// An interface's role decides which hooks act on it: none when it is not in IFACES (or has
/// no role bits), TC egress only when it is egress-only (how faultd marks `lo`), XDP only
/// when it is ingress-only.
#[test]
fn interface_roles_decide_which_hooks_act() {
    let Some(mut b) = Bench::bare() else { return };
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:2379");

    // Not in IFACES at all, and only other interfaces are.
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "IFACES empty");
    b.role(0, ROLE_INGRESS | ROLE_EGRESS);
    b.role(7, ROLE_INGRESS | ROLE_EGRESS);
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "ifindex 1 not in IFACES");
    b.role(TEST_RUN_IFINDEX, 0);
    b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "no role bits");
    assert_eq!(b.counters(&fault), FaultCounters::default());

    b.role(TEST_RUN_IFINDEX, ROLE_EGRESS);
    b.expect(
        &[Hook::Xdp, Hook::TcIngress],
        &frame,
        Verdict::Pass,
        "egress-only, ingress hooks",
    );
    b.expect(
        &[Hook::TcEgress],
        &frame,
        Verdict::Drop,
        "egress-only, egress hook",
    );
    assert_eq!(b.counters(&fault), counters(&[&frame], &[&frame]));

    b.role(TEST_RUN_IFINDEX, ROLE_INGRESS);
    b.expect(
        &[Hook::TcEgress, Hook::TcIngress],
        &frame,
        Verdict::Pass,
        "ingress-only",
    );
    b.expect(&[Hook::Xdp], &frame, Verdict::Drop, "ingress-only, XDP");
    assert_eq!(
        b.counters(&fault),
        counters(&[&frame, &frame], &[&frame, &frame])
    );
}

// ---------------------------------------------------------------------------------------
// Removal
// ---------------------------------------------------------------------------------------

/// Removing faults takes effect at once: with one of two faults on a port left, only it
/// acts; with none left, packets pass and no counter moves.
#[test]
fn removed_faults_let_packets_pass_again() {
    let Some(mut b) = Bench::new() else { return };
    let to_port = b.add(drop_spec(2379, Protocol::Tcp, Direction::ToPort, None));
    let any = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    let to = tcp("10.0.0.1:40000", "10.0.0.2:2379");
    let from = tcp("10.0.0.2:2379", "10.0.0.1:40000");
    let dgram = udp("10.0.0.1:40000", "10.0.0.2:2379");
    for f in [&to, &from, &dgram] {
        b.expect(&DROP_HOOKS, f, Verdict::Drop, "both faults on");
    }

    b.remove(&any);
    b.expect(&DROP_HOOKS, &to, Verdict::Drop, "to-port fault still on");
    b.expect(
        &DROP_HOOKS,
        &from,
        Verdict::Pass,
        "any removed: from the port",
    );
    b.expect(&DROP_HOOKS, &dgram, Verdict::Pass, "any removed: udp");

    b.remove(&to_port);
    let before = b.counters(&to_port);
    for f in [&to, &from, &dgram] {
        b.expect(&ALL_HOOKS, f, Verdict::Pass, "all removed");
    }
    assert_eq!(
        b.counters(&to_port),
        before,
        "a removed fault is not counted"
    );

    // A new fault on the port acts again, counted from zero in a reused counter slot.
    let again = b.add(drop_spec(2379, Protocol::Udp, Direction::Both, None));
    b.expect(&DROP_HOOKS, &dgram, Verdict::Drop, "re-added");
    b.expect(&DROP_HOOKS, &to, Verdict::Pass, "re-added for udp only");
    assert_eq!(
        b.counters(&again),
        counters(&[&dgram, &dgram], &[&dgram, &dgram])
    );
}

// ---------------------------------------------------------------------------------------
// Degradation actions: delay, rate, loss, corrupt, stall, duplicate
// ---------------------------------------------------------------------------------------

const MS: u64 = 1_000_000;
const NS_PER_SEC: u64 = 1_000_000_000;

/// Size of `struct __sk_buff` (include/uapi/linux/bpf.h; 192 bytes since `hwtstamp` came in
/// 5.16), the context of a sched_cls program.
const SK_BUFF_LEN: usize = 192;
/// Offsets in it of the fields these tests read or write.
const SKB_LEN: usize = 0;
const SKB_MARK: usize = 8;
const SKB_IFINDEX: usize = 40;
const SKB_TSTAMP: usize = 152;

/// A `struct __sk_buff` as BPF_PROG_TEST_RUN takes it (`ctx_in`) and gives it back
/// (`ctx_out`). Going in, the kernel (net/bpf/test_run.c, `convert___skb_to_skb`) copies
/// only mark, priority, ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_segs, gso_size
/// and hwtstamp into the skb, and fails with EINVAL unless every other byte is zero; coming
/// out, it fills the struct from the skb the program left (`convert_skb_to___skb`).
#[derive(Copy, Clone, PartialEq, Eq)]
struct SkBuff([u8; SK_BUFF_LEN]);

impl SkBuff {
    fn new() -> Self {
        Self([0; SK_BUFF_LEN])
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.0[at..at + 4].try_into().unwrap())
    }

    fn len(&self) -> u32 {
        self.u32_at(SKB_LEN)
    }

    fn ifindex(&self) -> u32 {
        self.u32_at(SKB_IFINDEX)
    }

    fn mark(&self) -> u32 {
        self.u32_at(SKB_MARK)
    }

    fn tstamp(&self) -> u64 {
        u64::from_ne_bytes(self.0[SKB_TSTAMP..SKB_TSTAMP + 8].try_into().unwrap())
    }

    fn with_mark(mut self, mark: u32) -> Self {
        self.0[SKB_MARK..SKB_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
        self
    }

    fn with_tstamp(mut self, tstamp: u64) -> Self {
        self.0[SKB_TSTAMP..SKB_TSTAMP + 8].copy_from_slice(&tstamp.to_ne_bytes());
        self
    }
}

impl std::fmt::Debug for SkBuff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("__sk_buff")
            .field("len", &self.len())
            .field("mark", &format_args!("{:#x}", self.mark()))
            .field("ifindex", &self.ifindex())
            .field("tstamp", &self.tstamp())
            .finish_non_exhaustive()
    }
}

/// A TC run with the CLOCK_MONOTONIC time read just before and just after it.
struct Timed {
    run: Run,
    ctx: SkBuff,
    before: u64,
    after: u64,
}

impl Timed {
    /// Asserts that the packet passed, unchanged, with a departure time of the run's
    /// `bpf_ktime_get_ns()` plus a delay in [`min`, `max`].
    fn departs_after(&self, frame: &[u8], min: u64, max: u64, what: &str) {
        assert_eq!(self.run.verdict, Verdict::Pass, "{what}");
        assert_eq!(self.run.out, frame, "{what}: the bytes must not change");
        let t = self.ctx.tstamp();
        assert!(
            t >= self.before + min && t <= self.after + max,
            "{what}: tstamp {t} is now + {} ns (run between now + 0 and now + {} ns), want \
             [{min}, {max}]",
            t as i128 - self.before as i128,
            self.after - self.before
        );
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()` and of EDT departure times.
fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    ts.tv_sec as u64 * NS_PER_SEC + ts.tv_nsec as u64
}

/// A TCP (ACK|PSH, window 4321) or UDP frame with `payload`.
fn data_frame(protocol: u8, src: &str, dst: &str, payload: &[u8]) -> FrameBuilder {
    let b = FrameBuilder::with_protocol(protocol, sock(src), sock(dst)).payload(payload);
    if protocol == IPPROTO_TCP {
        b.flags(ACK | PSH).seq(1000).ack(2000).window(4321)
    } else {
        b
    }
}

/// `len` payload bytes of every value: 0x00 and 0xff included, no two neighbours equal.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 37 + 11) as u8).collect()
}

/// Where the fields a degradation may touch are in a frame.
struct Layout {
    checksum_at: usize,
    /// TCP only.
    window_at: Option<usize>,
    payload_at: usize,
    /// End of the payload as the IP length says (Ethernet padding is after it).
    payload_end: usize,
}

fn layout(frame: &[u8]) -> Layout {
    let p = parse_frame(frame).expect("a frame the builder made");
    let l4 = p.ip.l4_offset;
    let (checksum_at, window_at, header) = match &p.l4 {
        L4Header::Tcp(t) => (l4 + 16, Some(l4 + 14), t.header_len),
        L4Header::Udp(_) => (l4 + 6, None, UDP_HLEN),
        L4Header::Other(proto) => panic!("protocol {proto}"),
    };
    Layout {
        checksum_at,
        window_at,
        payload_at: l4 + header,
        payload_end: l4 + p.ip.l4_len,
    }
}

/// Checks what a corrupt fault made of `input`: exactly one byte differs outside the L4
/// checksum, it is in the payload at an even offset from the payload's start, it is the
/// bitwise NOT of the original, and the checksums verify (independent verifier). Returns the
/// byte's offset from the start of the payload.
fn check_corrupted(input: &[u8], out: &[u8], what: &str) -> usize {
    let l = layout(input);
    let both = || format!("{what}\nin:\n{}out:\n{}", hex(input), hex(out));
    assert_eq!(out.len(), input.len(), "{}", both());
    let csum = l.checksum_at..l.checksum_at + 2;
    let changed: Vec<usize> = (0..input.len())
        .filter(|&i| input[i] != out[i] && !csum.contains(&i))
        .collect();
    let [at] = changed[..] else {
        panic!(
            "{} bytes changed besides the checksum, want 1: {changed:?}\n{}",
            changed.len(),
            both()
        );
    };
    assert!(
        (l.payload_at..l.payload_end).contains(&at),
        "byte {at} changed, outside the payload [{}, {})\n{}",
        l.payload_at,
        l.payload_end,
        both()
    );
    let offset = at - l.payload_at;
    assert_eq!(offset % 2, 0, "odd payload offset {offset}\n{}", both());
    assert_eq!(out[at], !input[at], "byte {at} is not flipped\n{}", both());
    verify_checksums(out).unwrap_or_else(|e| panic!("{e}\n{}", both()));
    offset
}

/// Checks what a stall made of `input`: the TCP window is 0, the checksums verify, and every
/// other byte but the checksum is as it was.
fn check_stalled(input: &[u8], out: &[u8], what: &str) {
    let l = layout(input);
    let both = || format!("{what}\nin:\n{}out:\n{}", hex(input), hex(out));
    let window = l.window_at.expect("a TCP frame");
    assert_eq!(out.len(), input.len(), "{}", both());
    assert_eq!(out[window..window + 2], [0, 0], "window\n{}", both());
    for i in 0..input.len() {
        if !(window..window + 2).contains(&i) && !(l.checksum_at..l.checksum_at + 2).contains(&i) {
            assert_eq!(out[i], input[i], "byte {i} changed\n{}", both());
        }
    }
    verify_checksums(out).unwrap_or_else(|e| panic!("{e}\n{}", both()));
}

fn delay_spec(port: u16, latency: u64, jitter: u64) -> FaultSpec {
    spec(
        Action::Delay {
            latency: Duration::from_nanos(latency),
            jitter: Duration::from_nanos(jitter),
        },
        port,
        Protocol::Any,
        Direction::Both,
        None,
    )
}

/// The context as the kernel gives it back: `ifindex` is loopback, and what `ctx_in` gave
/// (mark, tstamp) comes back untouched when no fault acts; the delay and duplicate tests
/// read their results from it. (`len` is not copied back: it reads 0.)
#[test]
fn test_run_context_round_trips_mark_and_tstamp() {
    let Some(mut b) = Bench::new() else { return };
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:8000");
    for hook in [Hook::TcIngress, Hook::TcEgress] {
        let ctx = SkBuff::new()
            .with_mark(0x1234_5678)
            .with_tstamp(987_654_321);
        let (run, out) = b.run_skb(hook, &frame, &ctx);
        assert_eq!(run.verdict, Verdict::Pass);
        assert_eq!(run.out, frame);
        assert_eq!(out.ifindex(), TEST_RUN_IFINDEX, "{hook:?}: {out:?}");
        assert_eq!(out.mark(), 0x1234_5678, "{hook:?}: {out:?}");
        assert_eq!(out.tstamp(), 987_654_321, "{hook:?}: {out:?}");
    }
}

/// `delay 50 ms` at TC egress: TCP and UDP, IPv4 and IPv6, both directions of the port leave
/// with `skb->tstamp = now + 50 ms` (now: `bpf_ktime_get_ns()`, CLOCK_MONOTONIC), bytes
/// untouched. Other ports keep their tstamp, and TC ingress and XDP never set one.
#[test]
fn delay_sets_the_departure_time_at_tc_egress() {
    let Some(mut b) = Bench::new() else { return };
    const LATENCY: u64 = 50 * MS;
    let fault = b.add(delay_spec(8100, LATENCY, 0));
    let delayed = [
        tcp("10.0.0.1:40000", "10.0.0.2:8100"),
        tcp("10.0.0.2:8100", "10.0.0.1:40000"),
        udp("10.0.0.1:40000", "10.0.0.2:8100"),
        tcp("[fd00::1]:40000", "[fd00::2]:8100"),
        udp("[fd00::2]:8100", "[fd00::1]:40000"),
        FrameBuilder::tcp(sock("127.0.0.1:51000"), sock("127.0.0.1:8100"))
            .flags(SYN)
            .build(),
    ];
    for frame in &delayed {
        let t = b.run_skb_timed(Hook::TcEgress, frame, &SkBuff::new());
        t.departs_after(frame, LATENCY, LATENCY, &hex(frame));
    }
    let each: Vec<&[u8]> = delayed.iter().map(Vec::as_slice).collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));

    // Another port: the tstamp stays as it came, zero or not.
    for frame in [
        tcp("10.0.0.1:40000", "10.0.0.2:8101"),
        udp("[fd00::2]:8099", "[fd00::1]:40000"),
    ] {
        for given in [0, monotonic_ns() + 5 * MS] {
            let (run, out) = b.run_skb(Hook::TcEgress, &frame, &SkBuff::new().with_tstamp(given));
            assert_eq!(run.verdict, Verdict::Pass);
            assert_eq!(run.out, frame);
            assert_eq!(out.tstamp(), given, "another port\n{}", hex(&frame));
        }
    }
    // TC ingress and XDP carry no delay: no departure time, nothing counted.
    for frame in &delayed {
        for given in [0, monotonic_ns() + 5 * MS] {
            let (run, out) = b.run_skb(Hook::TcIngress, frame, &SkBuff::new().with_tstamp(given));
            assert_eq!(run.verdict, Verdict::Pass);
            assert_eq!(run.out, *frame);
            assert_eq!(out.tstamp(), given, "TC ingress\n{}", hex(frame));
        }
        assert_eq!(b.verdict(Hook::Xdp, frame), Verdict::Pass);
    }
    assert_eq!(b.counters(&fault), counters(&each, &each));
}

/// The departure time's base: a later departure time already in the skb (TCP's own pacing,
/// within fq's 10 s horizon) is delayed further; a past one, one beyond the horizon or a
/// wall-clock stamp is not a departure time and now is the base; and nothing leaves more
/// than 10 s from now.
#[test]
fn delay_builds_on_an_earlier_departure_time_and_caps_at_the_horizon() {
    let Some(mut b) = Bench::new() else { return };
    const LATENCY: u64 = 50 * MS;
    const HORIZON: u64 = fault_common::DELAY_HORIZON_NS;
    b.add(delay_spec(8110, LATENCY, 0));
    let frame = tcp("[fd00::1]:40000", "[fd00::2]:8110");
    let run = |b: &mut Bench, given: u64| {
        b.run_skb_timed(Hook::TcEgress, &frame, &SkBuff::new().with_tstamp(given))
    };

    // Already paced 100 ms, 3 s or 9 s ahead: exactly that plus the latency. (Less than the
    // syscall's own time ahead, slow under emulation, would be past by then.)
    for ahead in [100 * MS, 3 * NS_PER_SEC, HORIZON - NS_PER_SEC] {
        let given = monotonic_ns() + ahead;
        let t = run(&mut b, given);
        assert_eq!(t.run.verdict, Verdict::Pass);
        assert_eq!(
            t.ctx.tstamp(),
            given + LATENCY,
            "a departure {ahead} ns ahead is the base"
        );
    }
    // Not departure times: now is the base.
    let past = monotonic_ns() - NS_PER_SEC;
    let wall_clock = clock_ns(libc::CLOCK_REALTIME);
    for (given, what) in [
        (1, "1 ns after boot"),
        (past, "a second ago"),
        (monotonic_ns() + HORIZON + NS_PER_SEC, "beyond the horizon"),
        (wall_clock, "a CLOCK_REALTIME stamp"),
    ] {
        run(&mut b, given).departs_after(&frame, LATENCY, LATENCY, what);
    }
    // 9.99 s ahead + 50 ms would be past the horizon: capped at now + 10 s.
    let t = run(&mut b, monotonic_ns() + HORIZON - 10 * MS);
    t.departs_after(&frame, HORIZON, HORIZON, "capped");
}

/// `delay 20 ms ± 5 ms`: over 200 packets every departure is within [15, 25] ms of now, and
/// the draws cover the range (the lowest in its bottom tenth, the highest in its top tenth,
/// the mean near 20 ms).
#[test]
fn delay_jitter_spreads_departures_over_the_range() {
    let Some(mut b) = Bench::new() else { return };
    const LATENCY: u64 = 20 * MS;
    const JITTER: u64 = 5 * MS;
    const N: usize = 200;
    let fault = b.add(delay_spec(8120, LATENCY, JITTER));
    let frames = [
        tcp("10.0.0.1:40000", "10.0.0.2:8120"),
        udp("[fd00::2]:8120", "[fd00::1]:40000"),
    ];
    // Each run's delay lies in [tstamp - after, tstamp - before]. The lowest delay is at
    // most the least `tstamp - before`, the highest at least the greatest `tstamp - after`,
    // and the mean between the means of the two.
    let (mut min, mut max) = (u64::MAX, 0);
    let (mut mean_hi, mut mean_lo) = (0.0, 0.0);
    for i in 0..N {
        let frame = &frames[i % 2];
        let t = b.run_skb_timed(Hook::TcEgress, frame, &SkBuff::new());
        t.departs_after(frame, LATENCY - JITTER, LATENCY + JITTER, "jitter");
        let ts = t.ctx.tstamp();
        min = min.min(ts - t.before);
        max = max.max(ts - t.after);
        mean_hi += (ts - t.before) as f64 / N as f64;
        mean_lo += (ts - t.after) as f64 / N as f64;
    }
    let ms = |ns: f64| ns / MS as f64;
    eprintln!(
        "delay 20 ms ± 5 ms over {N} packets: min {:.3} ms, max {:.3} ms, mean in \
         [{:.3}, {:.3}] ms",
        ms(min as f64),
        ms(max as f64),
        ms(mean_lo),
        ms(mean_hi)
    );
    let tenth = 2 * JITTER / 10;
    assert!(min < LATENCY - JITTER + tenth, "lowest departure {min} ns");
    assert!(max > LATENCY + JITTER - tenth, "highest departure {max} ns");
    // The mean of 200 uniform draws on ±5 ms has σ ≈ 0.2 ms: 1 ms is 5 σ.
    assert!(
        mean_hi > (LATENCY - MS) as f64 && mean_lo < (LATENCY + MS) as f64,
        "mean departure in [{mean_lo}, {mean_hi}] ns"
    );
    let c = b.counters(&fault);
    assert_eq!((c.matched_packets, c.acted_packets), (N as u64, N as u64));
}

/// `loss 30 %` (compiled to a drop with a threshold): over 10 000 runs at XDP and 10 000 at
/// TC egress the dropped share is within ±5 σ of the binomial mean, the counters equal what
/// was run and dropped, and TC ingress never drops.
#[test]
fn loss_drops_a_binomial_share() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(spec(
        Action::Loss { probability: 0.3 },
        8200,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    const N: u64 = 10_000;
    let p = (threshold(0.3) as f64 + 1.0) / 4_294_967_296.0;
    let mean = N as f64 * p;
    let sigma = (N as f64 * p * (1.0 - p)).sqrt();
    let check = |hook: &str, dropped: u64| {
        eprintln!(
            "loss 30 % at {hook}: {dropped} of {N} dropped ({:.4}; expected {mean:.0} ± {:.0} at 5 σ)",
            dropped as f64 / N as f64,
            5.0 * sigma
        );
        assert!(
            (dropped as f64 - mean).abs() <= 5.0 * sigma,
            "{hook} dropped {dropped} of {N}, expected {mean:.0} ± {:.0}",
            5.0 * sigma
        );
    };

    // XDP: one syscall, N repeats; the counters see every run.
    let v4 = tcp("10.0.0.1:40000", "10.0.0.2:8200");
    b.run_with(Hook::Xdp, &v4, N as u32, None);
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, N);
    assert_eq!(c.matched_bytes, N * v4.len() as u64);
    assert_eq!(c.acted_bytes, c.acted_packets * v4.len() as u64);
    check("XDP", c.acted_packets);

    // TC egress: one syscall per packet, verdicts tallied against the counters.
    let v6 = udp("[fd00::2]:8200", "[fd00::1]:40000");
    let mut dropped = 0;
    for _ in 0..N {
        if b.verdict(Hook::TcEgress, &v6) == Verdict::Drop {
            dropped += 1;
        }
    }
    check("TC egress", dropped);
    let c2 = b.counters(&fault);
    assert_eq!(c2.matched_packets - c.matched_packets, N);
    assert_eq!(c2.acted_packets - c.acted_packets, dropped, "acted = drops");
    assert_eq!(c2.acted_bytes - c.acted_bytes, dropped * v6.len() as u64);

    // TC ingress does not carry loss (XDP did, on the way in).
    for _ in 0..100 {
        assert_eq!(b.verdict(Hook::TcIngress, &v4), Verdict::Pass);
    }
    assert_eq!(b.counters(&fault), c2);
}

/// `rate` in police mode (GCRA per fault, burst = faults.rs police_burst: 10 ms of the rate,
/// at least 128 KiB): a burst of 1454-byte frames passes up to the burst, then frames are
/// dropped; after a pause a few pass again. XDP and TC egress share the fault's bucket; TC
/// ingress does not police.
#[test]
fn rate_police_passes_the_burst_then_drops_until_time_refills_it() {
    let Some(mut b) = Bench::new() else { return };
    const RATE: u64 = 100_000; // bytes per second
    const BURST_BYTES: u64 = 2 * 65_536; // police_burst(100 kB/s): the 128 KiB floor
    let fault = b.add(spec(
        Action::Rate {
            bytes_per_sec: RATE,
            mode: RateMode::Police,
        },
        8250,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let frame = data_frame(
        IPPROTO_TCP,
        "10.0.0.1:40000",
        "10.0.0.2:8250",
        &pattern(1400),
    )
    .build();
    let len = frame.len() as u64;
    assert_eq!(len, 1454);
    // The programs' integer arithmetic (rules.rs, rate()).
    let cost = len * NS_PER_SEC / RATE;
    let burst = BURST_BYTES * NS_PER_SEC / RATE;
    let instant = burst / cost + 1; // what passes when all come at once
    // Frames that may pass by `elapsed` ns after the first one.
    let allowed = |elapsed: u64| (burst + elapsed) / cost + 1;

    const N: u64 = 150;
    let start = monotonic_ns();
    let verdicts: Vec<Verdict> = (0..N).map(|_| b.verdict(Hook::Xdp, &frame)).collect();
    let elapsed = monotonic_ns() - start;
    let passed = verdicts.iter().filter(|&&v| v == Verdict::Pass).count() as u64;
    eprintln!(
        "police {RATE} B/s, burst {BURST_BYTES} B: {passed} of {N} {len}-byte frames passed \
         in {:.1} ms (at once: {instant})",
        elapsed as f64 / MS as f64
    );
    assert!(
        verdicts[..instant as usize]
            .iter()
            .all(|&v| v == Verdict::Pass),
        "the first {instant} frames fit the burst: {verdicts:?}"
    );
    assert!(
        passed <= allowed(elapsed),
        "{passed} passed, at most {} may in {elapsed} ns",
        allowed(elapsed)
    );
    assert!(passed < N, "nothing was dropped");
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, N);
    assert_eq!(c.acted_packets, N - passed);

    // TC ingress does not police.
    for _ in 0..10 {
        assert_eq!(b.verdict(Hook::TcIngress, &frame), Verdict::Pass);
    }
    assert_eq!(b.counters(&fault), c);

    // A pause refills the bucket: at least pause / cost frames pass again at TC egress.
    let pause = 3 * cost + cost / 2;
    std::thread::sleep(Duration::from_nanos(pause));
    let mut again = 0;
    let mut tc_runs = 0;
    while tc_runs < 20 {
        tc_runs += 1;
        if b.verdict(Hook::TcEgress, &frame) == Verdict::Drop {
            break;
        }
        again += 1;
    }
    let total = monotonic_ns() - start;
    eprintln!(
        "after a {:.1} ms pause: {again} passed",
        pause as f64 / MS as f64
    );
    assert!(again >= pause / cost, "{again} passed after the pause");
    assert!(
        passed + again <= allowed(total),
        "{} passed, at most {} may in {total} ns",
        passed + again,
        allowed(total)
    );
    let c2 = b.counters(&fault);
    assert_eq!(c2.matched_packets, N + tc_runs);
    assert_eq!(c2.acted_packets, N + tc_runs - passed - again);
}

/// `rate` in pace mode on a loopback, TC egress only: the first packet leaves at once (no
/// tstamp), each next one exactly one packet's time (len / rate) after the one before; a
/// packet that would wait past fq's 10 s horizon is dropped instead. (On other interfaces
/// what comes in is policed at XDP: `rate_pace_polices_what_comes_in_elsewhere`.)
#[test]
fn rate_pace_spaces_departures_by_the_packet_time() {
    let Some(mut b) = Bench::new() else { return };
    b.role(TEST_RUN_IFINDEX, ROLE_INGRESS | ROLE_EGRESS | ROLE_LOOPBACK);
    const RATE: u64 = 1000;
    let fault = b.add(spec(
        Action::Rate {
            bytes_per_sec: RATE,
            mode: RateMode::Pace,
        },
        8260,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    let frame = udp("10.0.0.1:40000", "10.0.0.2:8260");
    let cost = frame.len() as u64 * NS_PER_SEC / RATE;

    // On a loopback XDP and TC ingress do not pace, and do not touch the bucket.
    assert_eq!(b.verdict(Hook::Xdp, &frame), Verdict::Pass);
    let (_, out) = b.run_skb(Hook::TcIngress, &frame, &SkBuff::new());
    assert_eq!(out.tstamp(), 0);
    assert_eq!(b.counters(&fault), FaultCounters::default());

    let first = b.run_skb_timed(Hook::TcEgress, &frame, &SkBuff::new());
    assert_eq!(first.run.verdict, Verdict::Pass);
    assert_eq!(first.ctx.tstamp(), 0, "the first packet is on time");
    let mut last = 0;
    for k in 1..=5u64 {
        let t = b.run_skb_timed(Hook::TcEgress, &frame, &SkBuff::new());
        assert_eq!(t.run.verdict, Verdict::Pass);
        assert_eq!(t.run.out, frame);
        let ts = t.ctx.tstamp();
        if k == 1 {
            assert!(
                ts >= first.before + cost && ts <= first.after + cost,
                "second departure {ts}: first run at [{}, {}], cost {cost}",
                first.before,
                first.after
            );
        } else {
            assert_eq!(ts - last, cost, "departure {k} after {}", k - 1);
        }
        last = ts;
    }
    let c = b.counters(&fault);
    assert_eq!((c.matched_packets, c.acted_packets), (6, 5));

    // Past the horizon: the bucket is 6 packets ahead of the first one's time, so
    // horizon / cost - 5 more fit within 10 s; then packets are dropped.
    let expected = fault_common::DELAY_HORIZON_NS / cost - 5;
    let mut passed = 0;
    for _ in 0..expected + 10 {
        let (run, _) = b.run_skb(Hook::TcEgress, &frame, &SkBuff::new());
        if run.verdict == Verdict::Pass {
            passed += 1;
        }
    }
    let most = (fault_common::DELAY_HORIZON_NS + monotonic_ns() - first.before) / cost - 5;
    eprintln!("pace {RATE} B/s, {cost} ns a packet: {passed} more fit the horizon");
    assert!(
        passed >= expected && passed <= most,
        "{passed} passed, expected {expected}..={most}"
    );
    let c2 = b.counters(&fault);
    assert_eq!(c2.matched_packets, c.matched_packets + expected + 10);
    // Each was either held (a departure time) or dropped: all acted on.
    assert_eq!(c2.acted_packets, c.acted_packets + expected + 10);
}

/// Pace + delay on one port: the delay is added to the pacing bound, so the first packet
/// leaves `latency` from now and each next one a packet's time after the one before.
#[test]
fn rate_pace_and_delay_compose() {
    let Some(mut b) = Bench::new() else { return };
    const RATE: u64 = 1000;
    const LATENCY: u64 = 30 * MS;
    b.add(spec(
        Action::Rate {
            bytes_per_sec: RATE,
            mode: RateMode::Pace,
        },
        8265,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    b.add(delay_spec(8265, LATENCY, 0));
    let frame = tcp("[fd00::1]:40000", "[fd00::2]:8265");
    let cost = frame.len() as u64 * NS_PER_SEC / RATE;
    let first = b.run_skb_timed(Hook::TcEgress, &frame, &SkBuff::new());
    first.departs_after(&frame, LATENCY, LATENCY, "first packet");
    let second = b.run_skb_timed(Hook::TcEgress, &frame, &SkBuff::new());
    // The pacing bound is the first packet's `now` + cost, a time between these two.
    let ts = second.ctx.tstamp();
    assert!(
        ts >= first.before + cost + LATENCY && ts <= first.after + cost + LATENCY,
        "second departure {ts}, first run in [{}, {}]",
        first.before,
        first.after
    );
    let third = b.run_skb_timed(Hook::TcEgress, &frame, &SkBuff::new());
    assert_eq!(third.ctx.tstamp() - ts, cost);
}

/// A rate fault added after another was removed starts with a full bucket, even when it
/// reuses the removed fault's counter slot (the `BUCKETS` map is indexed like the counters).
/// A policer left 1.3 s ahead must not make its successor (100 MB/s, 10 ms of burst) drop.
///
/// Fails today (faultd bug, not the programs'): the daemon resets `COUNTERS[slot]` for a new
/// fault (`RuleSink::reset_counters`) but never `BUCKETS[slot]`, so the new policer inherits
/// a theoretical arrival time 1.3 s ahead and drops its first packets; a pacer would inherit
/// up to 10 s of departure delay. Fix: have `Datapath::reset_counters` also write 0 to
/// `BUCKETS[counter]`.
#[test]
fn rate_fault_in_a_reused_slot_starts_with_a_full_bucket() {
    let Some(mut b) = Bench::new() else { return };
    let police = |bytes_per_sec| {
        spec(
            Action::Rate {
                bytes_per_sec,
                mode: RateMode::Police,
            },
            8270,
            Protocol::Tcp,
            Direction::Both,
            None,
        )
    };
    let frame = data_frame(
        IPPROTO_TCP,
        "10.0.0.1:40000",
        "10.0.0.2:8270",
        &pattern(1400),
    )
    .build();
    let old = b.add(police(100_000));
    for _ in 0..150 {
        b.verdict(Hook::Xdp, &frame);
    }
    assert!(
        b.counters(&old).acted_packets > 0,
        "the old policer dropped"
    );
    b.remove(&old);
    let new = b.add(police(100_000_000));
    assert_eq!(
        new.counter, old.counter,
        "the slot is reused (else this test shows nothing)"
    );
    let verdict = b.verdict(Hook::Xdp, &frame);
    assert_eq!(
        verdict,
        Verdict::Pass,
        "the new fault's first packet was dropped: BUCKETS[{}] still holds the removed \
         fault's theoretical arrival time",
        new.counter,
    );
}

/// `corrupt 100 %` at TC ingress and egress, TCP and UDP, IPv4 and IPv6, payloads of 1, 2,
/// 3, 100 and 1400 bytes: one payload byte at an even offset is flipped (bitwise NOT), the
/// L4 checksum verifies, nothing else changes; the offsets spread over the payload. XDP
/// leaves the frame alone, and a packet without payload is neither changed nor acted on.
#[test]
fn corrupt_flips_one_payload_byte_with_a_valid_checksum() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(spec(
        Action::Corrupt { probability: 1.0 },
        8300,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    const RUNS: usize = 24; // per frame and hook
    let mut acted: Vec<Vec<u8>> = Vec::new();
    for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
        for (src, dst) in [
            ("10.0.0.1:40000", "10.0.0.2:8300"),
            ("[fd00::2]:8300", "[fd00::1]:40000"),
        ] {
            for len in [1usize, 2, 3, 100, 1400] {
                let frame = data_frame(protocol, src, dst, &pattern(len)).build();
                let what = format!("protocol {protocol}, {src} -> {dst}, {len}-byte payload");
                let mut seen = std::collections::BTreeSet::new();
                for hook in [Hook::TcIngress, Hook::TcEgress] {
                    for _ in 0..RUNS {
                        let run = b.run(hook, &frame);
                        assert_eq!(run.verdict, Verdict::Pass, "{what}");
                        seen.insert(check_corrupted(
                            &frame,
                            &run.out,
                            &format!("{hook:?}, {what}"),
                        ));
                        acted.push(frame.clone());
                    }
                }
                let seen: Vec<usize> = seen.into_iter().collect();
                match len {
                    1 | 2 => assert_eq!(seen, [0], "{what}"),
                    3 => assert_eq!(seen, [0, 2], "{what}: the last byte too"),
                    _ => assert!(
                        seen.len() >= 20 && *seen.last().unwrap() >= len / 2,
                        "{what}: offsets do not spread: {seen:?}"
                    ),
                }
                assert_eq!(b.verdict(Hook::Xdp, &frame), Verdict::Pass, "{what}");
            }
        }
    }

    // Other header shapes: TCP options, IPv4 options, IPv6 extension headers.
    for frame in [
        data_frame(IPPROTO_TCP, "10.0.0.1:40000", "10.0.0.2:8300", &pattern(33))
            .tcp_options(&[2, 4, 0x05, 0xb4, 1, 3, 3, 7])
            .build(),
        data_frame(IPPROTO_UDP, "10.0.0.1:40000", "10.0.0.2:8300", &pattern(9))
            .ipv4_options(&[1, 1, 1, 1, 1, 1, 1, 0])
            .build(),
        data_frame(
            IPPROTO_TCP,
            "[fd00::1]:40000",
            "[fd00::2]:8300",
            &pattern(5),
        )
        .ipv6_ext(Ipv6Ext::HopByHop, 0)
        .ipv6_ext(Ipv6Ext::DestinationOptions, 1)
        .build(),
        data_frame(
            IPPROTO_UDP,
            "[fd00::2]:8300",
            "[fd00::1]:40000",
            &pattern(77),
        )
        .ipv6_ext(Ipv6Ext::Routing, 0)
        .build(),
    ] {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            for _ in 0..4 {
                let run = b.run(hook, &frame);
                assert_eq!(run.verdict, Verdict::Pass);
                check_corrupted(&frame, &run.out, &format!("{hook:?}, header shapes"));
                acted.push(frame.clone());
            }
        }
    }

    // Ethernet padding after a 1-byte payload is not payload.
    let padded = data_frame(IPPROTO_TCP, "10.0.0.1:40000", "10.0.0.2:8300", b"x")
        .pad_frame_to(64)
        .build();
    for hook in [Hook::TcIngress, Hook::TcEgress] {
        let run = b.run(hook, &padded);
        assert_eq!(check_corrupted(&padded, &run.out, "padded"), 0);
        acted.push(padded.clone());
    }

    // UDP over IPv4 without a checksum (0): the byte is flipped, the checksum stays 0.
    let unsummed = data_frame(IPPROTO_UDP, "10.0.0.1:40000", "10.0.0.2:8300", &pattern(30))
        .l4_checksum_override(0)
        .build();
    for hook in [Hook::TcIngress, Hook::TcEgress] {
        let run = b.run(hook, &unsummed);
        check_corrupted(&unsummed, &run.out, "UDP checksum 0");
        let l = layout(&unsummed);
        assert_eq!(
            run.out[l.checksum_at..l.checksum_at + 2],
            [0, 0],
            "UDP checksum 0 kept"
        );
        acted.push(unsummed.clone());
    }

    // A UDP datagram whose checksum, once its byte is flipped, computes to 0: it is sent as
    // 0xffff (0 would mean "no checksum"). Two payload bytes, so the flip is at offset 0.
    for (src, dst) in [
        ("10.0.0.1:40000", "10.0.0.2:8300"),
        ("[fd00::1]:40000", "[fd00::2]:8300"),
    ] {
        let zeroed = data_frame(IPPROTO_UDP, src, dst, &[0, 0]).build();
        let c0 = parse_frame(&zeroed).unwrap().udp().unwrap().checksum;
        assert_ne!(c0, 0xffff, "pick other ports");
        let [hi, lo] = c0.to_be_bytes();
        // After the flip the payload word is c0, the complement of the rest's sum.
        let frame = data_frame(IPPROTO_UDP, src, dst, &[!hi, lo]).build();
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let run = b.run(hook, &frame);
            check_corrupted(&frame, &run.out, "UDP checksum computing to 0");
            let l = layout(&frame);
            assert_eq!(
                run.out[l.checksum_at..l.checksum_at + 2],
                [0xff, 0xff],
                "{src}: a computed 0 is sent as 0xffff\n{}",
                hex(&run.out)
            );
            acted.push(frame.clone());
        }
    }

    let each: Vec<&[u8]> = acted.iter().map(Vec::as_slice).collect();
    assert_eq!(b.counters(&fault), counters(&each, &each));

    // No payload: nothing to flip, not acted on.
    for frame in [
        FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:8300"))
            .flags(ACK)
            .build(),
        FrameBuilder::tcp(sock("[fd00::2]:8300"), sock("[fd00::1]:40000"))
            .flags(FIN | ACK)
            .pad_frame_to(90)
            .build(),
        FrameBuilder::udp(sock("10.0.0.1:40000"), sock("10.0.0.2:8300")).build(),
    ] {
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "no payload");
    }
    assert_eq!(b.counters(&fault).acted_packets, each.len() as u64);
}

/// `corrupt` at 50 %: about half the packets come out corrupted (checked as above), the rest
/// byte for byte as they went in; the acted counter is the corrupted ones.
#[test]
fn corrupt_with_probability_alters_a_share() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(spec(
        Action::Corrupt { probability: 0.5 },
        8310,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let frame = data_frame(
        IPPROTO_TCP,
        "[fd00::1]:40000",
        "[fd00::2]:8310",
        &pattern(64),
    )
    .build();
    const N: u64 = 400;
    let mut corrupted = 0;
    for _ in 0..N {
        let run = b.run(Hook::TcEgress, &frame);
        assert_eq!(run.verdict, Verdict::Pass);
        if run.out != frame {
            check_corrupted(&frame, &run.out, "50 %");
            corrupted += 1;
        }
    }
    assert!(
        (140..260).contains(&corrupted),
        "{corrupted} of {N} corrupted at 50 %"
    );
    let c = b.counters(&fault);
    assert_eq!((c.matched_packets, c.acted_packets), (N, corrupted));
}

/// `stall`: the TCP window becomes 0 with a valid checksum and nothing else changes, at TC
/// ingress and egress, IPv4 and IPv6, data and bare ACKs and FINs; SYN, SYN|ACK and RST
/// segments and UDP pass untouched and uncounted; XDP leaves everything alone; `to-port`
/// and `from-port` stall only their direction.
#[test]
fn stall_zeroes_the_window_with_a_valid_checksum() {
    let Some(mut b) = Bench::new() else { return };
    let stall = |port, direction| spec(Action::Stall, port, Protocol::Tcp, direction, None);
    let both = b.add(stall(8400, Direction::Both));
    let to_port = b.add(stall(8401, Direction::ToPort));
    let from_port = b.add(stall(8402, Direction::FromPort));

    // Segments between a client and `port`, to it (true) or from it (false).
    let segments = |port: u16, to: bool| -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (client, server) in [
            ("10.0.0.1:40000".to_string(), format!("10.0.0.2:{port}")),
            ("[fd00::1]:40000".to_string(), format!("[fd00::2]:{port}")),
        ] {
            let (src, dst) = if to {
                (&client, &server)
            } else {
                (&server, &client)
            };
            for (flags, window, payload) in [
                (ACK | PSH, 65535, &b"some data"[..]),
                (ACK, 0x8001, &b""[..]),
                (FIN | ACK, 1, &b""[..]),
                (ACK | PSH | URG, 0x1234, &pattern(999)[..]),
            ] {
                out.push(
                    FrameBuilder::tcp(sock(src), sock(dst))
                        .flags(flags)
                        .seq(0xfeed_0000)
                        .ack(0x0000_beef)
                        .window(window)
                        .tcp_options(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
                        .payload(payload)
                        .build(),
                );
            }
        }
        out
    };
    let mut stalled = vec![Vec::new(); 3];
    for (i, (port, to, from)) in [(8400, true, true), (8401, true, false), (8402, false, true)]
        .into_iter()
        .enumerate()
    {
        for (direction, acts) in [(true, to), (false, from)] {
            for frame in segments(port, direction) {
                let what = format!("port {port}, to the port: {direction}\n{}", hex(&frame));
                assert_eq!(b.verdict(Hook::Xdp, &frame), Verdict::Pass, "XDP, {what}");
                for hook in [Hook::TcIngress, Hook::TcEgress] {
                    if acts {
                        let run = b.run(hook, &frame);
                        assert_eq!(run.verdict, Verdict::Pass, "{hook:?}, {what}");
                        check_stalled(&frame, &run.out, &format!("{hook:?}, {what}"));
                        stalled[i].push(frame.clone());
                    } else {
                        b.expect(&[hook], &frame, Verdict::Pass, &what);
                    }
                }
            }
        }
    }
    // Other header shapes: IPv4 options, IPv6 extension headers.
    for frame in [
        FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:8400"))
            .ipv4_options(&[1, 1, 1, 0])
            .window(777)
            .payload(b"x")
            .build(),
        FrameBuilder::tcp(sock("[fd00::2]:8400"), sock("[fd00::1]:40000"))
            .ipv6_ext(Ipv6Ext::HopByHop, 0)
            .ipv6_ext(Ipv6Ext::Routing, 2)
            .window(0xffff)
            .build(),
    ] {
        for hook in [Hook::TcIngress, Hook::TcEgress] {
            let run = b.run(hook, &frame);
            assert_eq!(run.verdict, Verdict::Pass);
            check_stalled(&frame, &run.out, &format!("{hook:?}, header shapes"));
            stalled[0].push(frame.clone());
        }
    }
    for (fault, frames) in [&both, &to_port, &from_port].into_iter().zip(&stalled) {
        let each: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(
            b.counters(fault),
            counters(&each, &each),
            "fault on port {}",
            fault.spec.target.port
        );
    }

    // Connections still open and close: SYN, SYN|ACK, RST, RST|ACK untouched, not counted.
    // UDP on the port is not TCP's to stall.
    let before = b.counters(&both);
    for (src, dst, flags) in [
        ("10.0.0.1:40000", "10.0.0.2:8400", SYN),
        ("10.0.0.2:8400", "10.0.0.1:40000", SYN | ACK),
        ("[fd00::1]:40000", "[fd00::2]:8400", RST),
        ("[fd00::2]:8400", "[fd00::1]:40000", RST | ACK),
    ] {
        let frame = FrameBuilder::tcp(sock(src), sock(dst))
            .flags(flags)
            .window(512)
            .build();
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "SYN or RST");
    }
    for frame in [
        udp("10.0.0.1:40000", "10.0.0.2:8400"),
        udp("[fd00::2]:8400", "[fd00::1]:40000"),
    ] {
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "UDP");
    }
    assert_eq!(b.counters(&both), before);

    // A window that is already 0 stays 0, checksum and all.
    let zero = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:8400"))
        .window(0)
        .payload(b"abc")
        .build();
    b.expect(
        &[Hook::TcIngress, Hook::TcEgress],
        &zero,
        Verdict::Pass,
        "window 0 already",
    );
}

/// Faults compose on one port: corrupt + stall show both changes with one valid checksum.
#[test]
fn corrupt_and_stall_compose_with_a_valid_checksum() {
    let Some(mut b) = Bench::new() else { return };
    let corrupt = b.add(spec(
        Action::Corrupt { probability: 1.0 },
        8500,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let stall = b.add(spec(
        Action::Stall,
        8500,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let mut runs = 0;
    for (src, dst) in [
        ("10.0.0.1:40000", "10.0.0.2:8500"),
        ("[fd00::2]:8500", "[fd00::1]:40000"),
    ] {
        for len in [1, 7, 1000] {
            let frame = data_frame(IPPROTO_TCP, src, dst, &pattern(len));
            let input = frame.clone().build();
            // What the stall alone would make: window 0, checksum recomputed.
            let stalled = frame.window(0).build();
            for hook in [Hook::TcIngress, Hook::TcEgress] {
                for _ in 0..8 {
                    let run = b.run(hook, &input);
                    assert_eq!(run.verdict, Verdict::Pass);
                    let what = format!("{hook:?}, {src} -> {dst}, {len} bytes");
                    check_corrupted(&stalled, &run.out, &what);
                    runs += 1;
                }
            }
        }
    }
    for fault in [&corrupt, &stall] {
        let c = b.counters(fault);
        assert_eq!((c.matched_packets, c.acted_packets), (runs, runs));
    }
}

/// Loss + delay on one port at TC egress: the packets the loss lets through carry the
/// delay's departure time; the delay sees (and counts) only those.
#[test]
fn loss_and_delay_compose_at_tc_egress() {
    let Some(mut b) = Bench::new() else { return };
    const LATENCY: u64 = 30 * MS;
    let loss = b.add(spec(
        Action::Loss { probability: 0.3 },
        8600,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    let delay = b.add(delay_spec(8600, LATENCY, 0));
    let frames = [
        tcp("10.0.0.1:40000", "10.0.0.2:8600"),
        udp("[fd00::2]:8600", "[fd00::1]:40000"),
    ];
    const N: u64 = 1000;
    let mut dropped = 0;
    for i in 0..N {
        let frame = &frames[i as usize % 2];
        let t = b.run_skb_timed(Hook::TcEgress, frame, &SkBuff::new());
        if t.run.verdict == Verdict::Drop {
            dropped += 1;
        } else {
            t.departs_after(frame, LATENCY, LATENCY, "passed the loss");
        }
    }
    // 300 ± 5 σ (σ ≈ 14.5).
    assert!(
        (228..=372).contains(&dropped),
        "{dropped} of {N} lost at 30 %"
    );
    let l = b.counters(&loss);
    let d = b.counters(&delay);
    assert_eq!((l.matched_packets, l.acted_packets), (N, dropped));
    assert_eq!(
        (d.matched_packets, d.acted_packets),
        (N - dropped, N - dropped)
    );
}

/// A packet socket on loopback (ifindex 1 of the caller's namespace), all protocols.
struct Capture(std::os::fd::OwnedFd);

/// `sll_pkttype` values (linux/if_packet.h).
const PACKET_OUTGOING: u8 = 4;

impl Capture {
    fn on_loopback() -> Self {
        use std::os::fd::FromRawFd;
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                all.into(),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        use std::os::fd::AsRawFd;
        // SAFETY: a zeroed sockaddr_ll is valid; the sizes passed are the structs'.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all;
            sll.sll_ifindex = TEST_RUN_IFINDEX as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        }
        Self(fd)
    }

    /// Every frame seen until 100 ms pass without one: (sll_pkttype, bytes).
    fn drain(&self) -> Vec<(u8, Vec<u8>)> {
        use std::os::fd::AsRawFd;
        let mut frames = Vec::new();
        loop {
            let mut buf = vec![0u8; 65_536];
            // SAFETY: valid buffers of the sizes passed.
            let (n, sll) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut sll).cast(),
                    &mut len,
                );
                (n, sll)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                assert!(
                    matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)),
                    "recvfrom: {e}"
                );
                if e.raw_os_error() == Some(libc::EAGAIN) {
                    return frames;
                }
                continue;
            }
            buf.truncate(n as usize);
            frames.push((sll.sll_pkttype, buf));
        }
    }
}

/// `duplicate 100 %`: the original passes unchanged with its mark as it was, and a real copy
/// goes out through `bpf_clone_redirect` — under BPF_PROG_TEST_RUN to the loopback device
/// of the caller's namespace, so the test runs in a namespace of its own and watches that
/// `lo` with a packet socket. From TC egress the copy is transmitted on `lo` (seen outgoing)
/// and loops back in; from TC ingress it is received on `lo`. A packet carrying the
/// duplicate mark (a copy coming back by) passes with the mark taken off and is not copied
/// again.
#[test]
fn duplicate_sends_a_real_copy_and_passes_the_original() {
    if !is_root() {
        return;
    }
    let ns = harness::Netns::new("pdup");
    ns.run(|| {
        let mut b = Bench::new().expect("root");
        let fault = b.add(spec(
            Action::Duplicate { probability: 1.0 },
            8700,
            Protocol::Any,
            Direction::Both,
            None,
        ));
        let capture = Capture::on_loopback();
        assert_eq!(capture.drain(), [], "a fresh namespace's lo is quiet");
        let frames = [
            tcp("10.0.0.1:40000", "10.0.0.2:8700"),
            udp("[fd00::2]:8700", "[fd00::1]:40000"),
        ];
        let mut acted = Vec::new();
        for frame in &frames {
            for hook in [Hook::TcEgress, Hook::TcIngress] {
                let what = format!("{hook:?}\n{}", hex(frame));
                let (run, ctx) = b.run_skb(hook, frame, &SkBuff::new().with_mark(0x5));
                assert_eq!(run.verdict, Verdict::Pass, "{what}");
                assert_eq!(run.out, *frame, "{what}");
                assert_eq!(ctx.mark(), 0x5, "the original keeps its mark: {what}");
                acted.push(frame.as_slice());
                let copies = capture.drain();
                eprintln!(
                    "duplicate at {hook:?}: copies seen on lo with sll_pkttype {:?}",
                    copies.iter().map(|c| c.0).collect::<Vec<_>>()
                );
                assert!(!copies.is_empty(), "no copy seen on lo: {what}");
                for (_, copy) in &copies {
                    assert_eq!(copy, frame, "the copy is the frame: {what}\n{}", hex(copy));
                }
                let outgoing = copies.iter().filter(|c| c.0 == PACKET_OUTGOING).count();
                match hook {
                    Hook::TcEgress => assert_eq!(outgoing, 1, "sent out once: {what}"),
                    _ => assert_eq!(outgoing, 0, "received, not sent: {what}"),
                }
            }
        }
        let c = b.counters(&fault);
        assert_eq!(c, counters(&acted, &acted));

        // A copy coming back by: passes with the mark bit off, no new copy, not counted.
        for frame in &frames {
            for hook in [Hook::TcEgress, Hook::TcIngress] {
                let marked = SkBuff::new().with_mark(fault_common::DUPLICATE_MARK | 0x5);
                let (run, ctx) = b.run_skb(hook, frame, &marked);
                assert_eq!(run.verdict, Verdict::Pass);
                assert_eq!(run.out, *frame);
                assert_eq!(ctx.mark(), 0x5, "{hook:?}: the duplicate bit is taken off");
                assert_eq!(capture.drain(), [], "{hook:?}: a copy is not copied again");
            }
        }
        assert_eq!(b.counters(&fault), c);

        // XDP carries no duplicate.
        for frame in &frames {
            assert_eq!(b.verdict(Hook::Xdp, frame), Verdict::Pass);
        }
        assert_eq!(capture.drain(), []);
        assert_eq!(b.counters(&fault), c);
    });
}

// ---------------------------------------------------------------------------------------
// The packet builder and validator themselves (no privilege needed)
// ---------------------------------------------------------------------------------------

#[test]
fn builder_checksums_match_published_vectors() {
    // RFC 1071 §3 worked example.
    assert_eq!(
        internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
        !0xddf2u16
    );
    // The IPv4 header example in Wikipedia's "IPv4 header checksum": 192.168.0.1 →
    // 192.168.0.199, total length 0x73, UDP, TTL 64, DF, id 0 → checksum 0xb861.
    let frame = FrameBuilder::udp(sock("192.168.0.1:1"), sock("192.168.0.199:2"))
        .ipv4_id(0)
        .payload(&[0; 0x73 - 28])
        .build();
    let want = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN], want);
}

#[test]
fn builder_frames_parse_back_field_by_field() {
    let f = FrameBuilder::tcp(sock("10.0.0.1:40000"), sock("10.0.0.2:2379"))
        .src_mac([1, 2, 3, 4, 5, 6])
        .dst_mac([6, 5, 4, 3, 2, 1])
        .flags(SYN | ACK)
        .seq(0xdead_beef)
        .ack(0x0102_0304)
        .window(1234)
        .tcp_options(&[2, 4, 0x05, 0xb4]) // MSS 1460
        .ttl(17)
        .payload(b"abc")
        .build();
    let p = parse_frame(&f).unwrap();
    assert_eq!(p.eth.src, [1, 2, 3, 4, 5, 6]);
    assert_eq!(p.eth.dst, [6, 5, 4, 3, 2, 1]);
    assert_eq!(p.eth.ethertype, ETH_P_IP);
    assert_eq!(p.src(), sock("10.0.0.1:40000"));
    assert_eq!(p.dst(), sock("10.0.0.2:2379"));
    assert_eq!(p.ip.ttl, 17);
    assert_eq!(p.ip.ipv4_frag, 0x4000, "DF");
    let t = p.tcp().unwrap();
    assert_eq!(
        (t.flags, t.seq, t.ack, t.window),
        (SYN | ACK, 0xdead_beef, 0x0102_0304, 1234)
    );
    assert_eq!(t.header_len, 24);
    assert_eq!(t.options, [2, 4, 0x05, 0xb4]);
    assert_eq!(p.payload, b"abc");
    assert_eq!(f.len(), ETH_HLEN + IPV4_HLEN + 24 + 3);
    verify_checksums(&f).unwrap();

    let f = FrameBuilder::udp(sock("[fd00::1]:5353"), sock("[ff02::fb]:53"))
        .ipv6_ext(Ipv6Ext::HopByHop, 0)
        .ipv6_ext(Ipv6Ext::DestinationOptions, 2)
        .payload(b"query")
        .pad_frame_to(200)
        .build();
    let p = parse_frame(&f).unwrap();
    assert_eq!(p.eth.ethertype, ETH_P_IPV6);
    assert_eq!(p.ip.ipv6_ext, [IPPROTO_HOPOPTS, IPPROTO_DSTOPTS]);
    assert_eq!(p.ip.protocol, IPPROTO_UDP);
    assert_eq!(p.ip.l4_offset, ETH_HLEN + IPV6_HLEN + 8 + 24);
    assert_eq!(p.src(), sock("[fd00::1]:5353"));
    assert_eq!(p.dst(), sock("[ff02::fb]:53"));
    assert_eq!(p.udp().unwrap().len, 8 + 5);
    assert_eq!(p.payload, b"query", "Ethernet padding is not payload");
    assert_eq!(f.len(), 200);
    verify_checksums(&f).unwrap();
}

#[test]
fn verify_checksums_catches_every_corruption() {
    let frames = [
        tcp("10.0.0.1:40000", "10.0.0.2:2379"),
        udp("10.0.0.1:40000", "10.0.0.2:2379"),
        tcp("[fd00::1]:40000", "[fd00::2]:2379"),
        FrameBuilder::udp(sock("[fd00::1]:1"), sock("[fd00::2]:2"))
            .ipv6_ext(Ipv6Ext::DestinationOptions, 0)
            .payload(b"x")
            .build(),
    ];
    for frame in &frames {
        verify_checksums(frame).unwrap();
        let p = parse_frame(frame).unwrap();
        // Any flipped bit in what the checksums cover is caught: the IPv4 header, the
        // addresses (IPv6 pseudo-header), the whole segment.
        let covered: Vec<usize> = if p.ip.src.is_ipv4() {
            (ETH_HLEN..frame.len()).collect()
        } else {
            (ETH_HLEN + 8..ETH_HLEN + IPV6_HLEN)
                .chain(p.ip.l4_offset..frame.len())
                .collect()
        };
        // Fields that give the packet its shape (version/IHL, total length, protocol, TCP
        // data offset, UDP length) are caught as format errors rather than checksum ones.
        let l4 = p.ip.l4_offset;
        let structural = |at: usize| {
            (p.ip.src.is_ipv4()
                && [ETH_HLEN, ETH_HLEN + 2, ETH_HLEN + 3, ETH_HLEN + 9].contains(&at))
                || (p.tcp().is_some() && at == l4 + 12)
                || (p.udp().is_some() && (at == l4 + 4 || at == l4 + 5))
        };
        for at in covered {
            let mut bad = frame.clone();
            bad[at] ^= 0x10;
            let err = verify_checksums(&bad)
                .expect_err(&format!("byte {at} flipped went unnoticed\n{}", hex(&bad)));
            assert!(
                structural(at) || err.contains("checksum"),
                "byte {at}: {err}"
            );
        }
    }
    // The TTL is in the IPv4 header checksum but not in the pseudo-header.
    let mut ttl = frames[0].clone();
    ttl[ETH_HLEN + 8] -= 1;
    assert!(verify_ipv4_checksum(&ttl).is_err());
    assert!(verify_l4_checksum(&ttl).is_ok());
    // A zero UDP checksum means "none" over IPv4 and is refused over IPv6.
    let none4 = FrameBuilder::udp(sock("10.0.0.1:1"), sock("10.0.0.2:2"))
        .l4_checksum_override(0)
        .build();
    assert_eq!(verify_checksums(&none4), Ok(()));
    let none6 = FrameBuilder::udp(sock("[fd00::1]:1"), sock("[fd00::2]:2"))
        .l4_checksum_override(0)
        .build();
    assert!(verify_checksums(&none6).is_err());
}

/// A UDP checksum that computes to 0 is sent as 0xffff, and verifies.
#[test]
fn builder_sends_a_zero_udp_checksum_as_ffff() {
    for (src, dst) in [
        ("10.0.0.1:1000", "10.0.0.2:2000"),
        ("[fd00::1]:1", "[fd00::2]:2"),
    ] {
        let with = |last: [u8; 2]| {
            FrameBuilder::udp(sock(src), sock(dst))
                .payload(&[0xab, 0xcd, last[0], last[1]])
                .build()
        };
        // Make the last word of the payload equal to the checksum computed with it zero:
        // the sum then folds to 0xffff, whose complement is 0.
        let zeroed = with([0, 0]);
        let c = parse_frame(&zeroed).unwrap().udp().unwrap().checksum;
        let frame = with(c.to_be_bytes());
        assert_eq!(parse_frame(&frame).unwrap().udp().unwrap().checksum, 0xffff);
        verify_checksums(&frame).unwrap();
    }
}

/// `rate` in pace mode on an interface other than lo: packets coming in cannot be held back,
/// so XDP polices them against the same bucket (a burst passes, then drops).
#[test]
fn rate_pace_polices_what_comes_in_elsewhere() {
    let Some(mut b) = Bench::new() else { return };
    let fault = b.add(spec(
        Action::Rate {
            bytes_per_sec: 100_000,
            mode: RateMode::Pace,
        },
        8261,
        Protocol::Any,
        Direction::Both,
        None,
    ));
    // 400 frames of 1.4 kB: far beyond the 128 KiB burst.
    let frame = data_frame(
        IPPROTO_TCP,
        "10.0.0.1:40000",
        "10.0.0.2:8261",
        &pattern(1400),
    )
    .build();
    let verdicts: Vec<Verdict> = (0..400).map(|_| b.verdict(Hook::Xdp, &frame)).collect();
    let passed = verdicts.iter().filter(|v| **v == Verdict::Pass).count();
    assert!(passed > 0, "nothing came in");
    assert!(passed < 400, "nothing was policed");
    assert_eq!(b.counters(&fault).acted_packets, 400 - passed as u64);
}
