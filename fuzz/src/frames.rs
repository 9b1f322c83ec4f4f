//! What the `bpf_frames` fuzz target checks: arbitrary frames through faultd's eBPF
//! programs under BPF_PROG_TEST_RUN, with a fixed rule set installed the way the daemon
//! installs it. One invariant: a frame on a port without faults comes out as it went in —
//! verdict pass, the same bytes, and at TC the same `skb->mark`.
//!
//! Which ports a frame is on is decided without the programs' parser: by etherparse (lax,
//! so that cut and lying frames still show their ports), and where etherparse finds no
//! TCP/UDP header, by whether a faulted port's two bytes appear anywhere in the frame
//! (the programs can only act on a port they read from it).
//!
//! Input: byte 0 picks the hook (XDP, TC ingress, TC egress) and bytes 1..5 the mark; the
//! rest is the Ethernet frame. Needs root (it loads the programs); without it every input
//! is skipped, and the run says so once.

use std::cell::RefCell;
use std::time::SystemTime;

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use etherparse::{LaxPacketHeaders, TransportHeader};
use fault_common::{ROLE_EGRESS, ROLE_INGRESS};
use faultd::datapath::{Datapath, TC_EGRESS_PROGRAM, TC_INGRESS_PROGRAM, XDP_PROGRAM};
use faultd::faults::{Action, FaultSpec, FaultTable, Protocol, Target};

/// Ports with faults in the fixed rule set; every other port has none.
pub const FAULTED_PORTS: [u16; 5] = [2379, 2381, 2382, 2383, 2384];

/// The ifindex BPF_PROG_TEST_RUN gives both program types: loopback.
const TEST_RUN_IFINDEX: u32 = 1;

/// `struct __sk_buff` is 192 bytes; `mark` at offset 8.
const SKB_LEN: usize = 192;
const SKB_MARK: usize = 8;

/// What became of an input.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameOutcome {
    /// Shorter than the Ethernet header, or refused by the test-run setup.
    NotRun,
    /// On a faulted port (it may have been acted on).
    Faulted,
    /// On no faulted port, and it came out as it went in.
    Untouched,
    /// Not root: nothing ran.
    Skipped,
}

struct Programs {
    dp: Datapath,
    _table: FaultTable,
}

thread_local! {
    static PROGRAMS: RefCell<Option<Programs>> = RefCell::new(load());
}

fn load() -> Option<Programs> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: not root; the bpf_frames target loads eBPF programs");
        return None;
    }
    let mut dp = Datapath::load().expect("loading the programs as root");
    dp.set_role(TEST_RUN_IFINDEX, ROLE_INGRESS | ROLE_EGRESS)
        .expect("writing IFACES");
    let mut table = FaultTable::default();
    let actions = [
        (Action::Drop { probability: 1.0 }, Protocol::Any),
        (Action::Reset { probability: 1.0 }, Protocol::Tcp),
        (Action::Corrupt { probability: 1.0 }, Protocol::Any),
        (Action::Stall, Protocol::Tcp),
        (Action::Loss { probability: 0.5 }, Protocol::Udp),
    ];
    for ((action, protocol), port) in actions.into_iter().zip(FAULTED_PORTS) {
        let spec = FaultSpec {
            target: Target::port(port, protocol),
            action,
            ttl: None,
            label: "fuzz".into(),
        };
        table
            .add(spec, SystemTime::now(), &mut dp)
            .expect("installing the fixed rule set");
    }
    Some(Programs { dp, _table: table })
}

/// Runs the input through its hook and checks the invariant; panics (a fuzzer crash) when
/// a frame on a port without faults comes out changed.
pub fn check_frame(data: &[u8]) -> FrameOutcome {
    let Some((&pick, rest)) = data.split_first() else {
        return FrameOutcome::NotRun;
    };
    if rest.len() < 4 + 14 {
        return FrameOutcome::NotRun;
    }
    let mark = u32::from_le_bytes(rest[..4].try_into().unwrap());
    let frame = &rest[4..];
    let hook = pick % 3;
    PROGRAMS.with_borrow_mut(|programs| {
        let Some(programs) = programs else {
            return FrameOutcome::Skipped;
        };
        let Some((verdict_pass, out, mark_out)) = run(&mut programs.dp, hook, frame, mark) else {
            return FrameOutcome::NotRun;
        };
        if on_faulted_port(frame) {
            return FrameOutcome::Faulted;
        }
        let hook_name = ["XDP", "TC ingress", "TC egress"][hook as usize];
        assert!(
            verdict_pass,
            "{hook_name}: a frame on no faulted port was not passed:\n{}",
            hex(frame)
        );
        assert_eq!(
            out, frame,
            "{hook_name}: a frame on no faulted port changed"
        );
        if let Some(m) = mark_out {
            assert_eq!(
                m, mark,
                "{hook_name}: the mark of a frame on no faulted port changed"
            );
        }
        FrameOutcome::Untouched
    })
}

/// (passed, bytes out, mark out at TC), or `None` when the kernel refuses the input.
fn run(
    dp: &mut Datapath,
    hook: u8,
    frame: &[u8],
    mark: u32,
) -> Option<(bool, Vec<u8>, Option<u32>)> {
    let mut out = vec![0u8; frame.len() + 256];
    let ebpf = dp.ebpf_mut();
    if hook == 0 {
        let prog: &mut Xdp = ebpf.program_mut(XDP_PROGRAM)?.try_into().ok()?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..Default::default()
            })
            .ok()?;
        out.truncate(r.data_size_out as usize);
        return Some((r.return_value == 2, out, None));
    }
    let name = if hook == 1 {
        TC_INGRESS_PROGRAM
    } else {
        TC_EGRESS_PROGRAM
    };
    let prog: &mut SchedClassifier = ebpf.program_mut(name)?.try_into().ok()?;
    let mut ctx_in = [0u8; SKB_LEN];
    ctx_in[SKB_MARK..SKB_MARK + 4].copy_from_slice(&mark.to_ne_bytes());
    let mut ctx_out = [0u8; 2 * SKB_LEN];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx_in),
            ctx_out: Some(&mut ctx_out),
            repeat: 1,
            ..Default::default()
        })
        .ok()?;
    out.truncate(r.data_size_out as usize);
    let mark_out = u32::from_ne_bytes(ctx_out[SKB_MARK..SKB_MARK + 4].try_into().unwrap());
    Some((r.return_value == 0, out, Some(mark_out)))
}

/// Whether the frame may be on a faulted port (see the module's comment).
pub fn on_faulted_port(frame: &[u8]) -> bool {
    let faulted = |p: u16| FAULTED_PORTS.contains(&p);
    if let Ok(h) = LaxPacketHeaders::from_ethernet(frame) {
        match h.transport {
            Some(TransportHeader::Tcp(t)) => {
                return faulted(t.source_port) || faulted(t.destination_port);
            }
            Some(TransportHeader::Udp(u)) => {
                return faulted(u.source_port) || faulted(u.destination_port);
            }
            _ => {}
        }
    }
    FAULTED_PORTS
        .iter()
        .any(|p| frame.windows(2).any(|w| w == p.to_be_bytes()))
}

fn hex(frame: &[u8]) -> String {
    frame
        .chunks(16)
        .map(|c| {
            c.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}
