//! Honest events: what the kernel could not put in its full ring is counted and announced
//! as a gap, and `faultctl backoff` judges from the attempts of its port, never from a
//! history that other events pushed them out of.

use crate::harness;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use fault_common::{ROLE_EGRESS, ROLE_INGRESS};
use faultd::datapath::{Datapath, XDP_PROGRAM};
use faultd::events::{EventHub, Filter, LossCounter};
use faultd::faults::{Action, FaultSpec, FaultTable, Protocol, Target};
use faultd::proto;
use harness::*;

/// An Ethernet + IPv4 + TCP SYN from 10.0.0.2:40000 to 10.0.0.1:`port` (checksums are not
/// looked at on the way in).
fn syn_frame(port: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    f
}

/// BPF_PROG_TEST_RUN runs the XDP program on one SYN `RUNS` times while nobody reads the
/// ring: it fills, and every event it cannot hold must be counted, then announced.
#[test]
fn events_lost_to_a_full_kernel_ring_are_counted_and_announced() {
    require_root();
    const RUNS: u32 = 30_000;
    let mut dp = Datapath::load().expect("loading the programs as root");
    // BPF_PROG_TEST_RUN gives XDP the loopback device's ifindex, 1.
    dp.set_role(1, ROLE_INGRESS | ROLE_EGRESS).unwrap();
    let mut table = FaultTable::default();
    let record = table
        .add(
            FaultSpec {
                target: Target::port(80, Protocol::Tcp),
                action: Action::Record,
                ttl: None,
                label: "".into(),
            },
            SystemTime::now(),
            &mut dp,
        )
        .unwrap();
    let ring = dp.take_events().unwrap();
    let losses = LossCounter::new(dp.take_event_losses().unwrap());
    let frame = syn_frame(80);
    let mut out = vec![0u8; frame.len() + 256];
    let prog: &mut Xdp = dp
        .ebpf_mut()
        .program_mut(XDP_PROGRAM)
        .unwrap()
        .try_into()
        .unwrap();
    prog.test_run(TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        repeat: RUNS,
        ..Default::default()
    })
    .unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hub = Arc::new(EventHub::default());
        tokio::spawn(hub.clone().pump(ring, Some(losses)));
        let deadline = Instant::now() + Duration::from_secs(20);
        let stats = loop {
            let s = hub.stats();
            if s.received + s.lost_in_kernel >= u64::from(RUNS) {
                break s;
            }
            assert!(Instant::now() < deadline, "events missing: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            stats.received + stats.lost_in_kernel,
            u64::from(RUNS),
            "every run made an event, delivered or counted lost: {stats:?}"
        );
        assert!(
            stats.lost_in_kernel > 0,
            "the 1 MiB ring held {RUNS} events? {stats:?}"
        );
        // A subscriber sees the kept events and one gap that says how many are missing.
        let mut sub = hub.subscribe(Filter::default(), false);
        let (mut seen, mut lost, mut gaps) = (0u64, 0u64, 0);
        while let Some(e) = sub.next().await {
            if e.kind == proto::EventKind::Gap as i32 {
                gaps += 1;
                lost += e.lost;
                assert!(e.note.contains("ring"), "{e:?}");
            } else {
                assert_eq!(e.fault_id, record.id);
                seen += 1;
            }
        }
        assert!(gaps >= 1);
        assert_eq!(lost, stats.lost_in_kernel);
        // The history keeps the last 10 000 events (gaps included).
        assert!(seen > 0);
        // And the port's attempt history knows some may be missing (more: it keeps
        // only the last SYN_HISTORY).
        assert!(hub.syns(80).1 >= stats.lost_in_kernel);
    });
}

/// Connection attempts to `port`, each refused at once by a fault (reset or refuse);
/// when each began and was refused.
fn refused(ns: &Netns, port: u16, n: usize, gap: Duration) -> Vec<Span> {
    ns.run(|| {
        let mut spans = Vec::with_capacity(n);
        for i in 0..n {
            if i > 0 {
                std::thread::sleep(gap);
            }
            let before = Instant::now();
            let err = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
            spans.push((before, Instant::now()));
        }
        spans
    })
}

/// The case: `reset` emits an event per packet, and 12 000 of them push the
/// refused SYNs out of the shared 10 000-event history; backoff must still see them.
#[test]
fn backoff_still_sees_its_attempts_after_a_flood_of_other_events() {
    require_root();
    let ns = Netns::new("flood");
    let _daemon = Daemon::start(&ns, &["lo"]);
    ns.faultctl_ok(&["refuse", "--port", "7835", "--record"]);
    ns.faultctl_ok(&["reset", "--port", "9100"]);
    let attempts = refused(&ns, 7835, 4, Duration::from_millis(300));
    refused(&ns, 9100, 12_000, Duration::ZERO);
    let events = ns.faultctl_ok(&["events", "--json"]);
    assert!(
        !events.contains("\"dst_port\":7835"),
        "the flood did not push the attempts out of the shared history; the test proves nothing"
    );
    let judged = ns.faultctl(&[
        "backoff",
        "--port",
        "7835",
        "--initial",
        "300ms",
        "--multiplier",
        "1",
        "--jitter",
        "0.2",
    ]);
    let text = String::from_utf8_lossy(&judged.stdout);
    assert!(text.contains("4 connection attempt(s)"), "{text}");
    // The verdict, where the attempts' timing decides it (a slow machine may stretch a gap
    // past the policy's window; that is not the kernel losing attempts).
    let policy = faultd_api::backoff::Policy::new(
        Duration::from_millis(300),
        1.0,
        faultd_api::backoff::GRPC_DEFAULT_MAX,
        0.2,
    )
    .unwrap();
    match expected_backoff_verdict(&attempts, &policy) {
        Some(passed) => assert_eq!(
            judged.status.success(),
            passed,
            "{text}{}",
            stderr_text(&judged)
        ),
        None => eprintln!("MEASURE backoff verdict left to the timing: {text}"),
    }
}

/// More attempts than a port's history holds: backoff says the history is incomplete and
/// judges nothing, rather than judging the part it has.
#[test]
fn backoff_refuses_to_judge_an_incomplete_history() {
    require_root();
    let ns = Netns::new("trunc");
    let _daemon = Daemon::start(&ns, &["lo"]);
    ns.faultctl_ok(&["refuse", "--port", "7836", "--record"]);
    refused(&ns, 7836, faultd::events::SYN_HISTORY + 10, Duration::ZERO);
    let out = ns.faultctl(&["backoff", "--port", "7836"]);
    let err = stderr_text(&out);
    assert!(!out.status.success());
    assert!(err.contains("incomplete"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).is_empty(),
        "judged anyway"
    );
    // `faultctl events` prints nothing lost here: the shared history only rolls over.
    let stats = ns.faultctl_ok(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["events"]["lost_in_kernel"], 0, "{stats}");
    // A fresh refuse on the port starts a fresh history, which is judged.
    ns.faultctl_ok(&["clear"]);
    ns.faultctl_ok(&["refuse", "--port", "7836"]);
    refused(&ns, 7836, 3, Duration::from_millis(300));
    let out = ns.faultctl(&[
        "backoff",
        "--port",
        "7836",
        "--initial",
        "300ms",
        "--multiplier",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr_text(&out)
    );
}
