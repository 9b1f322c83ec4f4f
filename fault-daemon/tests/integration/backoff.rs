//! `faultctl backoff`: a client's reconnect backoff judged from the SYNs the kernel saw,
//! with no server at all (`refuse --record` answers every attempt).

use crate::harness;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::*;

/// Connects to `port` after each of `gaps`, once more at the start; every attempt is
/// refused. Returns when each attempt began and was refused.
fn client(ns: &Netns, port: u16, gaps_ms: &[u64]) -> Vec<Span> {
    ns.run(|| {
        let attempt = || {
            let before = Instant::now();
            let err = TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
            (before, Instant::now())
        };
        let mut spans = vec![attempt()];
        for gap in gaps_ms {
            std::thread::sleep(Duration::from_millis(*gap));
            spans.push(attempt());
        }
        spans
    })
}

/// The kernel's gaps in a `faultctl backoff --json` report.
fn kernel_gaps(report: &serde_json::Value) -> Vec<f64> {
    report["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gap_ms"].as_f64().unwrap())
        .collect()
}

/// `faultctl backoff ARGS… --json` exits 0 on a pass and 4 on a fail; checks it says what
/// `want` (where the timing decides it) and returns its report.
fn backoff(ns: &Netns, args: &[&str], want: Option<bool>) -> serde_json::Value {
    let out = ns.faultctl(&[&["backoff"], args, &["--json"]].concat());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "faultctl backoff {args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_text(&out)
        )
    });
    match want {
        Some(true) => {
            assert!(out.status.success(), "{report}{}", stderr_text(&out));
            assert_eq!(report["verdict"], "pass", "{report}");
        }
        Some(false) => {
            assert_eq!(out.status.code(), Some(4), "{report}{}", stderr_text(&out));
            assert_eq!(report["verdict"], "fail", "{report}");
            let err = stderr_text(&out);
            assert!(
                err.contains("gap ") && (err.contains("too soon") || err.contains("too late")),
                "{err}"
            );
        }
        None => {
            eprintln!("MEASURE faultctl backoff {args:?}: verdict left to the timing: {report}")
        }
    }
    report
}

#[test]
fn backoff_is_judged_from_kernel_timestamps() {
    require_root();
    let ns = Netns::new("boff");
    let _daemon = Daemon::start(&ns, &["lo"]);
    ns.faultctl_ok(&["refuse", "--port", "7835", "--record"]);
    ns.faultctl_ok(&["record", "--port", "7836"]);
    ns.faultctl_ok(&["refuse", "--port", "7836"]);
    let (good, bad) = std::thread::scope(|s| {
        // gRPC's schedule: 1000, 1600, 2560 ms (all gaps well inside ±20 %).
        let good = s.spawn(|| client(&ns, 7835, &[1000, 1600, 2560]));
        // A client that retries every 100 ms, whatever happens: too soon for gRPC's policy
        // by 600 ms or more.
        let bad = s.spawn(|| client(&ns, 7836, &[100, 100, 100]));
        (good.join().unwrap(), bad.join().unwrap())
    });
    let grpc = faultd_api::backoff::Policy::grpc(faultd_api::backoff::GRPC_DEFAULT_MAX);

    // The kernel's timestamps: one per attempt, each gap where the client's attempts put it.
    let report = backoff(
        &ns,
        &["--port", "7835"],
        expected_backoff_verdict(&good, &grpc),
    );
    assert_eq!(report["attempts"], 4, "{report}");
    assert_gaps_recorded("kernel", &kernel_gaps(&report), &good, &[1000, 1600, 2560]);
    let text = ns.faultctl(&["backoff", "--port", "7835"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("4 connection attempt(s)"), "{text}");

    let want = expected_backoff_verdict(&bad, &grpc);
    assert_eq!(want, Some(false), "100 ms gaps fit gRPC's policy?");
    let report = backoff(&ns, &["--port", "7836"], want);
    assert_eq!(
        report["attempts"], 4,
        "record and refuse on one port count each SYN once: {report}"
    );
    let gaps = report["gaps"].as_array().unwrap();
    assert!(gaps.iter().all(|g| g["verdict"] == "too_soon"), "{report}");
    assert_gaps_recorded("kernel", &kernel_gaps(&report), &bad, &[100, 100, 100]);

    // A custom policy that matches the 100 ms client passes it (where the timing decides).
    let custom = faultd_api::backoff::Policy::new(
        Duration::from_millis(100),
        1.0,
        faultd_api::backoff::GRPC_DEFAULT_MAX,
        0.2,
    )
    .unwrap();
    backoff(
        &ns,
        &[
            "--port",
            "7836",
            "--initial",
            "100ms",
            "--multiplier",
            "1",
            "--jitter",
            "0.2",
        ],
        expected_backoff_verdict(&bad, &custom),
    );
}
