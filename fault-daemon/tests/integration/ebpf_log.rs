//! System tests of the programs' own log (aya-log): `faultd --ebpf-log LEVEL` and
//! `faultctl ebpf-log LEVEL` make the kernel say what each fault did with a packet, in
//! faultd's log under the target `faultd::ebpf`; off (the default) it says nothing.
//!
//! The datagrams go to a UDP port with a drop fault on `lo` in a namespace, each test from
//! its own source ports, so that a line names exactly the packets that caused it.

use crate::harness;

use std::fs::File;
use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::*;

const PORT: u16 = 7471;

/// faultd on `lo` in `ns` with `extra` arguments, showing the programs' debug lines too
/// (the harness's RUST_LOG=info would hide them).
fn start_faultd(ns: &Netns, extra: &[&str]) -> Daemon {
    let log = std::env::temp_dir().join(format!("{}-faultd-{}.log", ns.name, std::process::id()));
    let mut opts = test_harness::FaultdOptions::new(&["lo"], &log);
    opts.args = extra.iter().map(|s| s.to_string()).collect();
    let child = opts
        .command(ns, Path::new(FAULTD))
        .env("RUST_LOG", "info,faultd::ebpf=debug")
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("spawn faultd");
    let mut daemon = Daemon { child, log };
    daemon.wait_ready(ready_wait()).unwrap();
    daemon
}

/// A drop fault on the UDP port; returns its id.
fn drop_udp(ns: &Netns) -> String {
    ns.faultctl_ok(&["drop", "--port", &PORT.to_string(), "--protocol", "udp"])
}

/// Sends three datagrams from `src_port` to the faulted port and checks that the fault
/// really dropped them: the receiver gets none.
fn send_dropped(ns: &Netns, src_port: u16) {
    ns.run(|| {
        let receiver = UdpSocket::bind(("127.0.0.1", PORT)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let sender = UdpSocket::bind(("127.0.0.1", src_port)).unwrap();
        for _ in 0..3 {
            sender.send_to(b"ping", ("127.0.0.1", PORT)).unwrap();
        }
        let mut buf = [0u8; 16];
        assert!(
            receiver.recv_from(&mut buf).is_err(),
            "the drop fault let a datagram from port {src_port} through"
        );
    });
}

/// The log's lines from the programs that mention packets from `src_port`.
fn kernel_lines(daemon: &Daemon, src_port: u16) -> Vec<String> {
    let needle = format!("udp {src_port} -> {PORT}");
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("faultd::ebpf") && l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// Waits until the programs have logged something about packets from `src_port`.
fn wait_kernel_lines(daemon: &Daemon, src_port: u16) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = kernel_lines(daemon, src_port);
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no line from the programs about port {src_port}; log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `--ebpf-log debug`: the kernel's verdict names the fault, its action and the ports, and
/// the hook that leaves the fault to another one says so.
#[test]
fn debug_logs_each_faults_verdict_with_its_id_and_ports() {
    require_root();
    let ns = Netns::new("ebpflog-debug");
    let daemon = start_faultd(&ns, &["--ebpf-log", "debug"]);
    let id = drop_udp(&ns);
    send_dropped(&ns, 40101);
    let lines = wait_kernel_lines(&daemon, 40101);
    let dropped = format!("fault {id} (drop) matched, dropped udp 40101 -> {PORT}");
    // Drop acts at lo's TC ingress (see rules::Hook::carries); egress passes it on.
    let skipped = format!("fault {id} (drop) skipped (acts at another hook) udp 40101 -> {PORT}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(has(&kernel_lines(&daemon, 40101), &dropped)
        && has(&kernel_lines(&daemon, 40101), &skipped))
    {
        assert!(
            Instant::now() < deadline,
            "expected {dropped:?} and {skipped:?}; the programs said:\n{}",
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let lines = kernel_lines(&daemon, 40101);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tc-ingress") && l.contains(&dropped)),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("tc-egress") && l.contains(&skipped)),
        "{lines:#?}"
    );
}

fn has(lines: &[String], what: &str) -> bool {
    lines.iter().any(|l| l.contains(what))
}

/// Off by default: the same drops leave no line. `faultctl ebpf-log info` turns the verdicts
/// on while faultd runs, `off` turns them off again. Absence is judged after a later line
/// arrived: the programs' records come through one ring buffer, in order.
#[test]
fn off_by_default_and_switched_at_runtime() {
    require_root();
    let ns = Netns::new("ebpflog-switch");
    let daemon = start_faultd(&ns, &[]);
    let id = drop_udp(&ns);

    send_dropped(&ns, 40201);
    let switched = ns.faultctl_ok(&["ebpf-log", "info"]);
    assert_eq!(switched, "eBPF log level: info (was off)");
    send_dropped(&ns, 40202);
    let lines = wait_kernel_lines(&daemon, 40202);
    assert!(
        has(&lines, &format!("fault {id} (drop) matched, dropped")),
        "{lines:#?}"
    );
    // At info, the hook that skips the fault does not say so.
    assert!(!has(&lines, "skipped"), "{lines:#?}");
    assert!(
        kernel_lines(&daemon, 40201).is_empty(),
        "logged while off (the default):\n{}",
        daemon.log_text()
    );

    let json = ns.faultctl_ok(&["--json", "ebpf-log", "off"]);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["previous"], "info");
    assert_eq!(json["level"], "off");
    send_dropped(&ns, 40203);
    ns.faultctl_ok(&["ebpf-log", "info"]);
    send_dropped(&ns, 40204);
    wait_kernel_lines(&daemon, 40204);
    assert!(
        kernel_lines(&daemon, 40203).is_empty(),
        "logged after `faultctl ebpf-log off`:\n{}",
        daemon.log_text()
    );
}
