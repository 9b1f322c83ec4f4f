//! `faultctl backoff`: a client's reconnect backoff judged from the SYNs the kernel saw,
//! with no server at all (`refuse --record` answers every attempt).

mod harness;

use std::net::TcpStream;
use std::time::Duration;

use harness::*;

/// Connects to `port` after each of `gaps`, once more at the start; every attempt is refused.
fn client(ns: &Netns, port: u16, gaps_ms: &[u64]) {
    ns.run(|| {
        let attempt = || {
            let err = TcpStream::connect(("127.0.0.1", port)).expect_err("refused");
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        };
        attempt();
        for gap in gaps_ms {
            std::thread::sleep(Duration::from_millis(*gap));
            attempt();
        }
    });
}

#[test]
fn backoff_is_judged_from_kernel_timestamps() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("boff");
    let _daemon = Daemon::start(&ns, &["lo"]);
    ns.faultctl_ok(&["refuse", "--port", "7835", "--record"]);
    ns.faultctl_ok(&["record", "--port", "7836"]);
    ns.faultctl_ok(&["refuse", "--port", "7836"]);
    std::thread::scope(|s| {
        // gRPC's schedule: 1000, 1600, 2560 ms (all gaps well inside ±20 %).
        s.spawn(|| client(&ns, 7835, &[1000, 1600, 2560]));
        // A client that retries every 500 ms, whatever happens.
        s.spawn(|| client(&ns, 7836, &[500, 500, 500]));
    });

    let good = ns.faultctl(&["backoff", "--port", "7835"]);
    let text = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{text}{}", stderr_text(&good));
    assert!(text.contains("4 connection attempt(s)"), "{text}");
    assert!(text.contains("PASS"), "{text}");

    let bad = ns.faultctl(&["backoff", "--port", "7836", "--json"]);
    assert_eq!(
        bad.status.code(),
        Some(4),
        "a constant 500 ms retry must fail the verdict (exit 4)"
    );
    let report: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(
        report["attempts"], 4,
        "record and refuse on one port count each SYN once: {report}"
    );
    assert_eq!(report["verdict"], "fail");
    let gaps = report["gaps"].as_array().unwrap();
    assert!(gaps.iter().all(|g| g["verdict"] == "too_soon"), "{report}");
    for g in gaps {
        let ms = g["gap_ms"].as_f64().unwrap();
        assert!(
            (450.0..700.0).contains(&ms),
            "kernel gap {ms} ms for a 500 ms sleep"
        );
    }
    let err = stderr_text(&bad);
    assert!(
        err.contains("gap 1 was") && err.contains("too soon"),
        "{err}"
    );

    // A custom policy that matches the 500 ms client passes it.
    let custom = ns.faultctl(&[
        "backoff",
        "--port",
        "7836",
        "--initial",
        "500ms",
        "--multiplier",
        "1",
        "--jitter",
        "0.2",
    ]);
    assert!(
        custom.status.success(),
        "{}",
        String::from_utf8_lossy(&custom.stdout)
    );
}
