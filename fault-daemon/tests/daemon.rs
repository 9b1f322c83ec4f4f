//! faultd's lifecycle and its answers to bad input, with real processes.

mod harness;

use std::time::{Duration, Instant};

use aya::programs::{SchedClassifier, TcAttachType};
use harness::*;

/// What faultd could leave on an interface: XDP, TCX programs, qdiscs and TC filters.
fn leftovers(ns: &Netns, iface: &str) -> Vec<String> {
    let mut found = Vec::new();
    if ns
        .ip_output(&["link", "show", "dev", iface])
        .contains("xdp")
    {
        found.push("an XDP program".to_string());
    }
    for (attach, name) in [
        (TcAttachType::Ingress, "ingress"),
        (TcAttachType::Egress, "egress"),
    ] {
        let progs = ns.run(|| {
            SchedClassifier::query_tcx(iface, attach)
                .map(|(_, p)| p.len())
                .unwrap_or(0)
        });
        if progs > 0 {
            found.push(format!("{progs} TCX {name} program(s)"));
        }
    }
    let qdiscs = String::from_utf8_lossy(
        &ns.cmd("tc")
            .args(["qdisc", "show", "dev", iface])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    if qdiscs.contains("clsact") || qdiscs.contains("ingress") {
        found.push(format!("qdisc: {qdiscs}"));
    }
    for dir in ["ingress", "egress"] {
        let filters = ns
            .cmd("tc")
            .args(["filter", "show", "dev", iface, dir])
            .output()
            .unwrap()
            .stdout;
        if !filters.is_empty() {
            found.push(format!(
                "tc {dir} filter: {}",
                String::from_utf8_lossy(&filters)
            ));
        }
    }
    found
}

fn wait_until_clean(ns: &Netns, iface: &str) -> Vec<String> {
    // Links close with the process, but the kernel releases them asynchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(ns, iface);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_signal_leaves_nothing(signal: i32) {
    let pair = VethPair::new(if signal == libc::SIGKILL {
        "kill"
    } else {
        "term"
    });
    for iface in ["lo", SERVER_IF] {
        assert_eq!(
            leftovers(&pair.server, iface),
            Vec::<String>::new(),
            "dirty before the test"
        );
    }
    let mut daemon = Daemon::start(&pair.server, &["lo", SERVER_IF]);
    pair.server.faultctl_ok(&["drop", "--port", "9000"]);
    for iface in ["lo", SERVER_IF] {
        // The check can see attachments: otherwise "nothing left" would prove nothing.
        let attached = leftovers(&pair.server, iface);
        // No XDP on lo: TC carries every action there.
        assert_eq!(
            attached.iter().any(|l| l.contains("XDP")),
            iface != "lo",
            "{iface}: {attached:?}"
        );
        // TCX links (kernel ≥ 6.6), or filters on a clsact qdisc through netlink.
        assert!(
            attached
                .iter()
                .any(|l| l.contains("TCX egress") || l.contains("tc egress filter")),
            "{iface}: {attached:?}"
        );
    }
    let tcx = leftovers(&pair.server, "lo")
        .iter()
        .any(|l| l.contains("TCX"));
    let code = daemon.stop(signal);
    if signal == libc::SIGKILL && !tcx {
        // Without TCX, TC filters are attached through netlink and belong to the interface,
        // not to the process: nothing can take them away when the process is killed.
        for iface in ["lo", SERVER_IF] {
            let _ = pair
                .server
                .cmd("tc")
                .args(["qdisc", "del", "dev", iface, "clsact"])
                .status();
        }
        eprintln!(
            "SKIP: this kernel has no TCX (< 6.6): TC filters outlive a SIGKILLed faultd \
             (XDP links checked only)"
        );
        for iface in ["lo", SERVER_IF] {
            let left = wait_until_clean(&pair.server, iface);
            assert!(!left.iter().any(|l| l.contains("XDP")), "{iface}: {left:?}");
        }
        return;
    }
    if signal == libc::SIGTERM {
        assert_eq!(
            code,
            Some(0),
            "clean exit on SIGTERM; log:\n{}",
            daemon.log_text()
        );
    }
    for iface in ["lo", SERVER_IF] {
        assert_eq!(
            wait_until_clean(&pair.server, iface),
            Vec::<String>::new(),
            "{iface} after signal {signal}"
        );
    }
}

#[test]
fn sigterm_leaves_the_interfaces_as_found() {
    if require_root() {
        check_signal_leaves_nothing(libc::SIGTERM);
    }
}

#[test]
fn sigkill_leaves_nothing_attached() {
    if require_root() {
        check_signal_leaves_nothing(libc::SIGKILL);
    }
}

#[test]
fn the_log_says_which_xdp_mode() {
    if !require_root() {
        return;
    }
    let pair = VethPair::new("mode");
    // A bridge has no XDP of its own: faultd falls back to generic XDP there.
    pair.server.ip(&["link", "add", "fdbr0", "type", "bridge"]);
    let daemon = Daemon::start(&pair.server, &["lo", SERVER_IF, "fdbr0"]);
    let log = daemon.log_text();
    assert!(log.contains(r#"iface="lo" xdp_mode="none""#), "{log}");
    assert!(log.contains(r#"iface="fdbr0" xdp_mode="generic""#), "{log}");
    assert!(
        log.contains(&format!(r#"iface="{SERVER_IF}" xdp_mode="driver""#)),
        "{log}"
    );
}

/// Startup errors are one clear line on stderr, exit code 1, and leave nothing behind.
#[test]
fn startup_errors_are_one_clear_line() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("start");
    let cases: &[(&[&str], &str)] = &[
        (
            &["--iface", "nosuch0"],
            r#"interface "nosuch0" does not exist"#,
        ),
        (&[], "--iface is required"),
        (
            &["--iface", "lo", "--listen", "0.0.0.0:7447"],
            "--allow-remote",
        ),
        (
            &["--iface", "lo", "--listen", "banana"],
            "invalid value 'banana' for '--listen",
        ),
    ];
    for (args, expected) in cases {
        let out = ns.cmd(FAULTD).args(*args).output().unwrap();
        let err = stderr_text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
            "{err}"
        );
        if !expected.starts_with("invalid value") {
            assert_eq!(err.trim().lines().count(), 1, "one line, got: {err}");
        }
    }
    assert_eq!(leftovers(&ns, "lo"), Vec::<String>::new());

    // A second faultd on the same interface is refused, and the first keeps working.
    let _first = Daemon::start(&ns, &["lo"]);
    let second = Daemon::try_start(&ns, &["lo"], &["--listen", "127.0.0.1:7448"]);
    let err = second
        .err()
        .expect("a second faultd started on the same interface");
    assert!(err.contains("already held by another faultd"), "{err}");
    ns.faultctl_ok(&["drop", "--port", "9000"]);
}

#[test]
fn without_privilege_faultd_says_so() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("priv");
    // setpriv drops every capability; the kernel then refuses to load BPF.
    let out = ns
        .cmd("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .args([FAULTD, "--iface", "lo"])
        .output()
        .unwrap();
    let err = stderr_text(&out);
    assert!(!out.status.success());
    assert!(err.contains("not permitted to load BPF programs"), "{err}");
    assert_eq!(leftovers(&ns, "lo"), Vec::<String>::new());
}

/// Bad input to faultctl: a clear error naming the field, and nothing changes.
#[test]
fn bad_input_changes_nothing() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("bad");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let id = ns.faultctl_ok(&["drop", "--port", "4000", "--label", "keep"]);
    let before = ns.faults_json();
    let cases: &[(&[&str], &str)] = &[
        (&["drop", "--port", "0"], "--port"),
        (&["drop", "--port", "70000"], "--port"),
        (
            &["drop", "--port", "80", "--protocol", "sctp"],
            "--protocol",
        ),
        (
            &["drop", "--port", "80", "--direction", "sideways"],
            "--direction",
        ),
        (
            &["drop", "--port", "80", "--probability", "1.5"],
            "--probability",
        ),
        (&["drop", "--port", "80", "--for", "-1s"], "--for"),
        (&["drop", "--port", "80", "--for", "soon"], "--for"),
        (&["drop", "--port", "80", "--peer", "banana"], "target.peer"),
        (
            &["drop", "--port", "80", "--peer", "10.0.0.0/33"],
            "target.peer",
        ),
        (
            &["drop", "--port", "80", "--peer", "fd00::/129"],
            "target.peer",
        ),
        (&["drop", "--port", "7447"], "API port"),
        (&["rm", "999"], "no fault with id 999"),
        (&["rm", "x"], "ID"),
    ];
    for (args, field) in cases {
        let out = ns.faultctl(args);
        let err = stderr_text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(field), "{args:?} should name {field}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert_eq!(ns.faults_json(), before, "bad input changed the faults");
    ns.faultctl_ok(&["rm", &id]);
}

#[test]
fn faultctl_without_a_daemon_says_how_to_start_one() {
    let out = std::process::Command::new(FAULTCTL)
        .args(["--addr", "127.0.0.1:1", "list"])
        .output()
        .unwrap();
    let err = stderr_text(&out);
    assert!(!out.status.success());
    assert!(err.contains("no faultd answers at 127.0.0.1:1"), "{err}");
    assert!(err.contains("faultd --iface lo"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
