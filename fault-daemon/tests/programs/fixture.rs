//! The fixture every program test uses: a private copy of the programs and maps with the
//! daemon's fault table ([`Bench`]), runs through BPF_PROG_TEST_RUN with their verdicts,
//! the `__sk_buff` context ([`SkBuff`]) and clocks; and the tests of the test-run
//! environment's own facts that the rest relies on.

use std::time::SystemTime;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use fault_common::{FaultCounters, ROLE_EGRESS, ROLE_INGRESS};
use faultd::datapath::{Datapath, TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM, XDP_PROGRAM};
use faultd::faults::{
    Action, Direction, Fault, FaultSpec, FaultTable, Peer, Protocol, RuleSink, Target, threshold,
};

use super::packets::tcp_flags::{ACK, PSH};
use super::packets::{FrameBuilder, hex, sock};

/// The ifindex BPF_PROG_TEST_RUN reports to both program types: loopback.
pub const TEST_RUN_IFINDEX: u32 = 1;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

/// The three programs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    TcIngress,
    TcEgress,
}

pub const ALL_HOOKS: [Hook; 3] = [Hook::Xdp, Hook::TcIngress, Hook::TcEgress];
/// The hooks that carry `drop`.
pub const DROP_HOOKS: [Hook; 2] = [Hook::Xdp, Hook::TcEgress];

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Drop,
    /// TC only: the program rewrote the frame and redirected it (a forged RST).
    Redirect,
}

/// One program run: its verdict and the frame it let out.
pub struct Run {
    pub verdict: Verdict,
    pub out: Vec<u8>,
}

/// Fails the test with one line saying to run as root unless it is root: program tests
/// load eBPF programs and run BPF_PROG_TEST_RUN; they run or fail, never pass unrun.
pub use test_harness::require_root;

/// A private copy of the programs and their maps, with the daemon's fault table.
pub struct Bench {
    pub dp: Datapath,
    pub table: FaultTable,
}

impl Bench {
    /// Programs loaded, with the test-run ifindex marked for every hook.
    pub fn new() -> Self {
        let mut bench = Self::bare();
        bench.role(TEST_RUN_IFINDEX, ROLE_INGRESS | ROLE_EGRESS);
        bench
    }

    /// Programs loaded, `IFACES` empty: no interface is faulted. Fails the test when not root.
    pub fn bare() -> Self {
        require_root();
        let dp = Datapath::load().unwrap_or_else(|e| panic!("loading the programs as root: {e}"));
        Self {
            dp,
            table: FaultTable::default(),
        }
    }

    pub fn role(&mut self, ifindex: u32, role: u32) {
        self.dp.set_role(ifindex, role).expect("writing IFACES");
    }

    pub fn add(&mut self, spec: FaultSpec) -> Fault {
        self.table
            .add(spec, SystemTime::now(), &mut self.dp)
            .expect("installing the fault")
    }

    pub fn remove(&mut self, fault: &Fault) {
        self.table
            .remove(fault.id, &mut self.dp)
            .expect("removing the fault");
    }

    pub fn counters(&self, fault: &Fault) -> FaultCounters {
        self.dp
            .read_counters(fault.counter)
            .expect("reading counters")
    }

    /// Runs `frame` through `hook` `repeat` times; the verdict is the last run's.
    pub fn run_with(&mut self, hook: Hook, frame: &[u8], repeat: u32, ctx: Option<&[u8]>) -> Run {
        self.run_raw(hook, frame, repeat, ctx, None).0
    }

    /// Runs a TC program once with a `struct __sk_buff` in `ctx_in` and `ctx_out`: the
    /// verdict, the frame let out and the context as the program left it.
    pub fn run_skb(&mut self, hook: Hook, frame: &[u8], ctx: &SkBuff) -> (Run, SkBuff) {
        assert_ne!(hook, Hook::Xdp, "an XDP program takes a struct xdp_md");
        // Larger than the struct: the kernel fails with ENOSPC rather than cut it short.
        let mut out = [0u8; 2 * SkBuff::LEN];
        let (run, size) = self.run_raw(hook, frame, 1, Some(ctx.as_bytes()), Some(&mut out));
        assert_eq!(
            size as usize,
            SkBuff::LEN,
            "the kernel's struct __sk_buff is {size} bytes, this file's {}",
            SkBuff::LEN
        );
        (run, SkBuff::from_bytes(&out))
    }

    /// [`Bench::run_skb`] with CLOCK_MONOTONIC read just before and just after the run: the
    /// program's `bpf_ktime_get_ns()` falls between the two.
    pub fn run_skb_timed(&mut self, hook: Hook, frame: &[u8], ctx: &SkBuff) -> Timed {
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
    pub fn run_raw(
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

    pub fn run(&mut self, hook: Hook, frame: &[u8]) -> Run {
        self.run_with(hook, frame, 1, None)
    }

    /// The verdict; a passed frame must come out byte for byte as it went in.
    pub fn verdict(&mut self, hook: Hook, frame: &[u8]) -> Verdict {
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
    pub fn expect(&mut self, hooks: &[Hook], frame: &[u8], want: Verdict, what: &str) {
        for &hook in hooks {
            let got = self.verdict(hook, frame);
            assert_eq!(got, want, "{what}: {hook:?}\n{}", hex(frame));
        }
    }
}

/// A fault spec as the API would build it.
pub fn spec(
    action: Action,
    port: u16,
    protocol: Protocol,
    direction: Direction,
    peer: Option<&str>,
) -> FaultSpec {
    FaultSpec {
        target: Target {
            direction,
            peer: peer.map(|p| Peer::parse(p, "target.peer").expect("peer")),
            ..Target::port(port, protocol)
        },
        action,
        ttl: None,
        label: "program-test".into(),
    }
}

pub fn drop_spec(
    port: u16,
    protocol: Protocol,
    direction: Direction,
    peer: Option<&str>,
) -> FaultSpec {
    spec(
        Action::Drop { probability: 1.0 },
        port,
        protocol,
        direction,
        peer,
    )
}

pub fn tcp(src: &str, dst: &str) -> Vec<u8> {
    FrameBuilder::tcp(sock(src), sock(dst))
        .flags(ACK | PSH)
        .seq(1000)
        .ack(2000)
        .payload(b"hello")
        .build()
}

pub fn udp(src: &str, dst: &str) -> Vec<u8> {
    FrameBuilder::udp(sock(src), sock(dst))
        .payload(b"datagram")
        .build()
}

/// A client (port 40000) and a server on `port`, in IPv4 and in IPv6: the mirror-image
/// tests run every case over both, in both directions.
pub fn flows(port: u16) -> [(String, String); 2] {
    [
        ("10.0.0.1:40000".to_string(), format!("10.0.0.2:{port}")),
        ("[fd00::1]:40000".to_string(), format!("[fd00::2]:{port}")),
    ]
}

/// (source, destination) of a flow: towards the port (client → server) or away from it.
pub fn oriented(flow: &(String, String), to_port: bool) -> (&str, &str) {
    if to_port {
        (&flow.0, &flow.1)
    } else {
        (&flow.1, &flow.0)
    }
}

/// Each frame twice: what the counters see when a frame runs through both [`DROP_HOOKS`].
pub fn twice(frames: &[Vec<u8>]) -> Vec<&[u8]> {
    frames
        .iter()
        .flat_map(|f| [f.as_slice(), f.as_slice()])
        .collect()
}

pub fn counters(matched: &[&[u8]], acted: &[&[u8]]) -> FaultCounters {
    FaultCounters {
        matched_packets: matched.len() as u64,
        matched_bytes: matched.iter().map(|f| f.len() as u64).sum(),
        acted_packets: acted.len() as u64,
        acted_bytes: acted.iter().map(|f| f.len() as u64).sum(),
    }
}

/// A fault of `action` at 30 % (drop or loss) installed on `port` for `protocol`, both
/// directions, acts on a binomial share of packets at XDP and at TC egress (within ±5 σ of
/// the mean over 10 000 runs each), the counters agree exactly with what was run and
/// dropped, packets and bytes, and TC ingress never drops (XDP did, on the way in).
/// `xdp_frame` and `tc_frame` are frames the fault covers.
pub fn drops_a_binomial_share(
    action: Action,
    protocol: Protocol,
    port: u16,
    xdp_frame: &[u8],
    tc_frame: &[u8],
) {
    let mut b = Bench::new();
    let name = format!("{action:?}");
    let fault = b.add(spec(action, port, protocol, Direction::Both, None));
    const N: u64 = 10_000;
    let p = (threshold(0.3) as f64 + 1.0) / 4_294_967_296.0;
    let mean = N as f64 * p;
    let sigma = (N as f64 * p * (1.0 - p)).sqrt();
    let check = |hook: &str, dropped: u64| {
        eprintln!(
            "{name} at {hook}: {dropped} of {N} dropped ({:.4}; expected {mean:.0} ± {:.0} at \
             5 σ)",
            dropped as f64 / N as f64,
            5.0 * sigma
        );
        assert!(
            (dropped as f64 - mean).abs() <= 5.0 * sigma,
            "{name}: {hook} dropped {dropped} of {N}, expected {mean:.0} ± {:.0}",
            5.0 * sigma
        );
    };

    // XDP in one syscall: `repeat` runs the program N times; the verdict returned is only
    // the last run's, but the counters see every run.
    b.run_with(Hook::Xdp, xdp_frame, N as u32, None);
    let c = b.counters(&fault);
    assert_eq!(c.matched_packets, N, "every repeat is counted");
    assert_eq!(c.matched_bytes, N * xdp_frame.len() as u64);
    assert_eq!(c.acted_bytes, c.acted_packets * xdp_frame.len() as u64);
    check("XDP", c.acted_packets);

    // TC egress, one syscall per packet: tally the verdicts themselves.
    let mut dropped = 0;
    for _ in 0..N {
        if b.verdict(Hook::TcEgress, tc_frame) == Verdict::Drop {
            dropped += 1;
        }
    }
    check("TC egress", dropped);
    let c2 = b.counters(&fault);
    assert_eq!(c2.matched_packets - c.matched_packets, N);
    assert_eq!(
        c2.acted_packets - c.acted_packets,
        dropped,
        "acted = verdicts"
    );
    assert_eq!(
        c2.acted_bytes - c.acted_bytes,
        dropped * tc_frame.len() as u64
    );

    // TC ingress carries neither.
    for frame in [xdp_frame, tc_frame] {
        for _ in 0..100 {
            assert_eq!(b.verdict(Hook::TcIngress, frame), Verdict::Pass);
        }
    }
    assert_eq!(b.counters(&fault), c2);
}

// ---------------------------------------------------------------------------------------
// The test-run environment itself
// ---------------------------------------------------------------------------------------

/// The facts the rest of this file relies on: both program types run on ifindex 1 (not 0)
/// under BPF_PROG_TEST_RUN, and the byte counters see the whole frame.
#[test]
fn test_run_runs_on_loopback_and_counts_whole_frames() {
    let mut b = Bench::bare();
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

pub const MS: u64 = 1_000_000;
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// `struct __sk_buff` (include/uapi/linux/bpf.h), the context of a sched_cls program, as
/// BPF_PROG_TEST_RUN takes it (`ctx_in`) and gives it back (`ctx_out`). aya does not export
/// this binding for user space, so here is the kernel's layout, every field to the end
/// (`hwtstamp`, since 5.16): the kernel checks the size it is given. Going in, the kernel
/// (net/bpf/test_run.c, `convert___skb_to_skb`) copies only mark, priority,
/// ingress_ifindex, ifindex, cb, tstamp, wire_len, gso_segs, gso_size and hwtstamp into the
/// skb, and fails with EINVAL unless every other byte is zero; coming out, it fills the
/// struct from the skb the program left (`convert_skb_to___skb`).
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SkBuff {
    pub len: u32,
    pub pkt_type: u32,
    pub mark: u32,
    pub queue_mapping: u32,
    pub protocol: u32,
    pub vlan_present: u32,
    pub vlan_tci: u32,
    pub vlan_proto: u32,
    pub priority: u32,
    pub ingress_ifindex: u32,
    pub ifindex: u32,
    pub tc_index: u32,
    pub cb: [u32; 5],
    pub hash: u32,
    pub tc_classid: u32,
    pub data: u32,
    pub data_end: u32,
    pub napi_id: u32,
    pub family: u32,
    pub remote_ip4: u32,
    pub local_ip4: u32,
    pub remote_ip6: [u32; 4],
    pub local_ip6: [u32; 4],
    pub remote_port: u32,
    pub local_port: u32,
    pub data_meta: u32,
    /// `__bpf_md_ptr(struct bpf_flow_keys *, flow_keys)`: 8 bytes, 8-aligned.
    pub flow_keys: u64,
    /// CLOCK_MONOTONIC, as `bpf_ktime_get_ns()`: the EDT departure time.
    pub tstamp: u64,
    pub wire_len: u32,
    pub gso_segs: u32,
    /// `__bpf_md_ptr(struct bpf_sock *, sk)`.
    pub sk: u64,
    pub gso_size: u32,
    pub tstamp_type: u8,
    /// `__u32 :24`.
    pub reserved: [u8; 3],
    pub hwtstamp: u64,
}

// The UAPI's offsets and size (the size is also checked against the kernel's on every run,
// the offsets by `test_run_context_round_trips_mark_and_tstamp`). Every field is written
// out, so there is no padding, and any bytes are a valid value.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<SkBuff>() == 192);
    assert!(offset_of!(SkBuff, mark) == 8);
    assert!(offset_of!(SkBuff, ifindex) == 40);
    assert!(offset_of!(SkBuff, cb) == 48);
    assert!(offset_of!(SkBuff, data_meta) == 140);
    assert!(offset_of!(SkBuff, flow_keys) == 144);
    assert!(offset_of!(SkBuff, tstamp) == 152);
    assert!(offset_of!(SkBuff, sk) == 168);
    assert!(offset_of!(SkBuff, tstamp_type) == 180);
    assert!(offset_of!(SkBuff, hwtstamp) == 184);
};

impl SkBuff {
    pub const LEN: usize = std::mem::size_of::<SkBuff>();

    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_mark(mut self, mark: u32) -> Self {
        self.mark = mark;
        self
    }

    pub fn with_tstamp(mut self, tstamp: u64) -> Self {
        self.tstamp = tstamp;
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) with every field written out (no padding bytes, checked above),
        // all plain integers: its bytes are initialised and may be read as u8.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), Self::LEN) }
    }

    /// The struct in the first [`SkBuff::LEN`] bytes of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        assert!(
            bytes.len() >= Self::LEN,
            "{} bytes of __sk_buff",
            bytes.len()
        );
        // SAFETY: at least LEN readable bytes; every bit pattern is a valid SkBuff (plain
        // integers); read_unaligned needs no alignment.
        unsafe { bytes.as_ptr().cast::<Self>().read_unaligned() }
    }
}

/// A TC run with the CLOCK_MONOTONIC time read just before and just after it.
pub struct Timed {
    pub run: Run,
    pub ctx: SkBuff,
    pub before: u64,
    pub after: u64,
}

impl Timed {
    /// Asserts that the packet passed, unchanged, with a departure time of the run's
    /// `bpf_ktime_get_ns()` plus a delay in [`min`, `max`].
    pub fn departs_after(&self, frame: &[u8], min: u64, max: u64, what: &str) {
        assert_eq!(self.run.verdict, Verdict::Pass, "{what}");
        assert_eq!(self.run.out, frame, "{what}: the bytes must not change");
        let t = self.ctx.tstamp;
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
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
    ts.tv_sec as u64 * NS_PER_SEC + ts.tv_nsec as u64
}

/// The context as the kernel gives it back: `ifindex` is loopback, and what `ctx_in` gave
/// (mark, tstamp) comes back untouched when no fault acts; the delay and duplicate tests
/// read their results from it. (`len` is not copied back: it reads 0.)
#[test]
fn test_run_context_round_trips_mark_and_tstamp() {
    let mut b = Bench::new();
    let frame = tcp("10.0.0.1:40000", "10.0.0.2:8000");
    for hook in [Hook::TcIngress, Hook::TcEgress] {
        let ctx = SkBuff::new()
            .with_mark(0x1234_5678)
            .with_tstamp(987_654_321);
        let (run, out) = b.run_skb(hook, &frame, &ctx);
        assert_eq!(run.verdict, Verdict::Pass);
        assert_eq!(run.out, frame);
        assert_eq!(out.ifindex, TEST_RUN_IFINDEX, "{hook:?}: {out:?}");
        assert_eq!(out.mark, 0x1234_5678, "{hook:?}: {out:?}");
        assert_eq!(out.tstamp, 987_654_321, "{hook:?}: {out:?}");
    }
}
