//! faultd's lifecycle and its answers to bad input, with real processes.

use crate::harness;

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

/// Whether this kernel has TCX, asked of the kernel itself: a TCX query on the loopback of
/// a fresh namespace, which kernels without TCX (< 6.6) refuse. Never what faultd reports:
/// a faultd that fell back to netlink on a TCX kernel must fail the tests, not skip them.
fn kernel_has_tcx() -> bool {
    let ns = Netns::new("tcx");
    ns.run(|| SchedClassifier::query_tcx("lo", TcAttachType::Ingress).is_ok())
}

/// faultd's TC filters (attached through netlink) on one hook of `iface`, as `tc` lists them.
fn faultd_filters(ns: &Netns, iface: &str, hook: &str) -> usize {
    let out = ns
        .cmd("tc")
        .args(["filter", "show", "dev", iface, hook])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("faultd_tc_{hook}")))
        .count()
}

/// A connection from the client's namespace to `port` on the server (lo or the veth),
/// with an echo both ways; `Err` when it cannot be made.
fn connects(pair: &VethPair, iface: &str, port: u16) -> Result<(), String> {
    let (server_ns, client_ns, addr) = if iface == "lo" {
        (&pair.server, &pair.server, "127.0.0.1")
    } else {
        (&pair.server, &pair.client, SERVER_V4)
    };
    let addr: std::net::SocketAddr = format!("{addr}:{port}").parse().unwrap();
    let listener = server_ns.run(|| std::net::TcpListener::bind(addr).unwrap());
    let mut client = client_ns
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let (mut server, _) = listener.accept().unwrap();
    use std::io::Write as _;
    client.write_all(b"ping").unwrap();
    match read_exact_within(&mut server, 4, Duration::from_secs(3)) {
        Ok(got) if got == b"ping" => {}
        other => return Err(format!("{addr}: the server read {other:?}")),
    }
    server.write_all(b"pong").unwrap();
    match read_exact_within(&mut client, 4, Duration::from_secs(3)) {
        Ok(got) if got == b"pong" => Ok(()),
        other => Err(format!("{addr}: the client read {other:?}")),
    }
}

fn check_signal_leaves_nothing(signal: i32) {
    let tcx = kernel_has_tcx();
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
        // TCX links where the kernel has TCX (≥ 6.6), else filters on a clsact qdisc.
        let how = if tcx {
            "TCX egress"
        } else {
            "tc egress filter"
        };
        assert!(
            attached.iter().any(|l| l.contains(how)),
            "{iface}: {how} expected (the kernel {} TCX): {attached:?}",
            if tcx { "has" } else { "has no" }
        );
    }
    let code = daemon.stop(signal);
    if signal == libc::SIGKILL && !tcx {
        check_the_next_faultd_removes_stale_filters(&pair);
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

/// Kernels without TCX: TC filters attached through netlink belong to the interface, so a
/// SIGKILLed faultd's stay, and act with its faults. The next faultd must remove them.
fn check_the_next_faultd_removes_stale_filters(pair: &VethPair) {
    for iface in ["lo", SERVER_IF] {
        let left = wait_until_clean(&pair.server, iface);
        assert!(!left.iter().any(|l| l.contains("XDP")), "{iface}: {left:?}");
        // What the test is about: they are there, and they still drop.
        assert_eq!(faultd_filters(&pair.server, iface, "egress"), 1, "{iface}");
    }
    assert!(
        connects(pair, SERVER_IF, 9000).is_err(),
        "the killed faultd's filters did not act: the test would prove nothing"
    );
    let mut next = Daemon::start(&pair.server, &["lo", SERVER_IF]);
    assert_eq!(
        next.log_text().matches("removed the TC filters").count(),
        2,
        "{}",
        next.log_text()
    );
    for iface in ["lo", SERVER_IF] {
        for hook in ["ingress", "egress"] {
            assert_eq!(
                faultd_filters(&pair.server, iface, hook),
                1,
                "{iface} {hook}: not exactly the new faultd's filter"
            );
        }
        connects(pair, iface, 9000)
            .unwrap_or_else(|e| panic!("{iface}: a stale filter still acts: {e}"));
    }
    assert_eq!(next.stop(libc::SIGTERM), Some(0), "{}", next.log_text());
    for iface in ["lo", SERVER_IF] {
        assert_eq!(
            wait_until_clean(&pair.server, iface),
            Vec::<String>::new(),
            "{iface} after the next faultd's SIGTERM"
        );
    }
}

#[test]
fn sigterm_leaves_the_interfaces_as_found() {
    require_root();
    check_signal_leaves_nothing(libc::SIGTERM);
}

#[test]
fn sigkill_leaves_nothing_attached() {
    require_root();
    check_signal_leaves_nothing(libc::SIGKILL);
}

/// TC filters of faultd's programs that no running faultd owns — what a faultd killed on a
/// kernel without TCX leaves — are removed when a faultd attaches. Planted here through the
/// library, so that every kernel runs this (the VM also gets them from a real SIGKILL).
#[test]
fn tc_filters_a_killed_faultd_left_are_removed_on_attach() {
    require_root();
    let tcx = kernel_has_tcx();
    let pair = VethPair::new("stale");
    pair.server.run(|| plant_stale_filters(SERVER_IF, 9100));
    for hook in ["ingress", "egress"] {
        assert_eq!(faultd_filters(&pair.server, SERVER_IF, hook), 1, "{hook}");
    }
    assert!(
        connects(&pair, SERVER_IF, 9100).is_err(),
        "the planted filters do not act: the test would prove nothing"
    );
    let _daemon = Daemon::start(&pair.server, &[SERVER_IF]);
    for hook in ["ingress", "egress"] {
        // The new faultd's own, through netlink, only where the kernel has no TCX.
        assert_eq!(
            faultd_filters(&pair.server, SERVER_IF, hook),
            usize::from(!tcx),
            "{hook}"
        );
    }
    connects(&pair, SERVER_IF, 9100).expect("a stale filter still acts");
}

/// Attaches faultd's TC programs to `iface` through netlink, with a drop on `port` in their
/// maps, and lets go of them the way a killed process does: the filters stay.
fn plant_stale_filters(iface: &str, port: u16) {
    use aya::programs::tc::{self, NlOptions, TcAttachOptions};
    use faultd::faults::{Action, FaultSpec, FaultTable, Protocol, Target};

    let mut datapath = faultd::datapath::Datapath::load().expect("loading the programs");
    let name = std::ffi::CString::new(iface).unwrap();
    // SAFETY: a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    datapath
        .set_role(
            ifindex,
            fault_common::ROLE_EGRESS | fault_common::ROLE_INGRESS,
        )
        .unwrap();
    let drop = FaultSpec {
        target: Target::port(port, Protocol::Tcp),
        action: Action::Drop { probability: 1.0 },
        ttl: None,
        label: "".into(),
    };
    FaultTable::new(vec![])
        .add(drop, std::time::SystemTime::now(), &mut datapath)
        .unwrap();
    tc::qdisc_add_clsact(iface).expect("adding clsact");
    for (program, hook) in [
        (faultd::datapath::TC_INGRESS_PROGRAM, TcAttachType::Ingress),
        (faultd::datapath::TC_EGRESS_PROGRAM, TcAttachType::Egress),
    ] {
        let prog: &mut SchedClassifier = datapath
            .ebpf_mut()
            .program_mut(program)
            .unwrap()
            .try_into()
            .unwrap();
        let options = TcAttachOptions::Netlink(NlOptions::default());
        let id = prog.attach_with_options(iface, hook, options).unwrap();
        std::mem::forget(prog.take_link(id).unwrap());
    }
}

#[test]
fn the_log_says_which_xdp_mode() {
    require_root();
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
    require_root();
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
        (&["--iface", "lo", "--max-faults", "0"], "--max-faults 0"),
        (&["--iface", "lo", "--max-ttl", "400days"], "--max-ttl"),
        (
            &["--iface", "lo", "--max-flows", "8"],
            "--max-flows 8 is not in 16..=1048576",
        ),
        (
            &["--iface", "lo", "--max-faults", "131073"],
            "--max-faults 131073",
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
    require_root();
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
    require_root();
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

/// The VM exports how long faultd may take to be ready; the harness must wait that long.
#[test]
fn the_readiness_wait_is_what_the_vm_asks_for() {
    assert_eq!(ready_wait_from(None), Duration::from_secs(120));
    assert_eq!(ready_wait_from(Some("240")), Duration::from_secs(240));
    // Read when this test is built: the VM has no source tree.
    let init = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../xtask/src/vm/initramfs.rs"
    ));
    assert!(
        init.contains(&format!("export {READY_ENV}=")),
        "the VM's /init no longer exports {READY_ENV}"
    );
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

/// Waits up to `within` for the process to exit; its exit code (None: killed by a signal),
/// or `Err` when it is still running.
fn exit_within(child: &mut std::process::Child, within: Duration) -> Result<Option<i32>, ()> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Ok(status.code());
        }
        if Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the CPU is emulated (the VM exports FAULTD_TEST_READY_SECS): everything,
/// the verifier first, runs 10 to 30 times slower there.
fn emulated() -> bool {
    std::env::var_os("FAULTD_TEST_READY_SECS").is_some()
}

/// How long faultd may take to load its programs: the harness's ready wait.
fn load_within() -> Duration {
    ready_wait()
}

/// How long the tests wait for faultd to exit after SIGTERM: a deadline that catches a
/// faultd that would wait forever, not the figure it promises (about a second, measured by
/// `cargo xtask bench`); more on an emulated CPU, where running `tc` alone takes a good
/// part of a second.
fn exit_bound() -> Duration {
    if emulated() { 2 * WAIT } else { WAIT }
}

/// Waits until `log` shows `line`.
fn wait_for_log(daemon: &Daemon, line: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !daemon.log_text().contains(line) {
        assert!(
            Instant::now() < deadline,
            "no {line:?} in the log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `faultctl events --follow` that has printed its first event: its stream is open.
struct Follower {
    child: std::process::Child,
}

impl Follower {
    fn start(ns: &Netns) -> Self {
        use std::io::BufRead as _;
        let mut child = ns
            .cmd(FAULTCTL)
            .args(["events", "--follow"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A SYN to the dropped port: the fault's first hit is an event.
        ns.run(|| {
            let addr = "127.0.0.1:9000".parse().unwrap();
            let _ = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        });
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("first-hit"), "follower printed {line:?}");
        Self { child }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What SIGTERM must do whatever clients are connected: the issue's streaming client and
/// a connection that never says anything kept faultd waiting forever.
#[test]
fn sigterm_with_a_follower_and_an_idle_connection_exits() {
    require_root();
    let ns = Netns::new("follow");
    let mut daemon = Daemon::start(&ns, &["lo"]);
    ns.faultctl_ok(&["drop", "--port", "9000"]);
    let mut follower = Follower::start(&ns);
    let _idle = ns.run(|| std::net::TcpStream::connect("127.0.0.1:7447").unwrap());
    assert!(
        !leftovers(&ns, "lo").is_empty(),
        "attached before the signal"
    );

    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(daemon.pid(), libc::SIGTERM) };
    let code = exit_within(&mut daemon.child, exit_bound()).unwrap_or_else(|()| {
        panic!(
            "faultd still runs {:?} after SIGTERM; log:\n{}",
            exit_bound(),
            daemon.log_text()
        )
    });
    assert_eq!(code, Some(0), "log:\n{}", daemon.log_text());
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());
    // The follower's stream ended, and it was told why.
    let status =
        exit_within(&mut follower.child, WAIT).expect("the follower's stream outlived faultd");
    // UNAVAILABLE: faultctl says the daemon is gone (exit code 2, "daemon unreachable").
    assert_eq!(status, Some(2));
    let mut err = String::new();
    std::io::Read::read_to_string(follower.child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("shutting down"), "{err}");
}

/// Opens a follow stream from a client that then never reads (its runtime is never driven
/// again): once its HTTP/2 window is full, its stream cannot end, and a graceful shutdown
/// would wait for it.
fn stuck_follower(ns: &Netns) -> impl Send {
    ns.run(stuck_event_stream)
}

/// Connection attempts refused by a fault on `port`: `n` events.
fn refused_attempts(ns: &Netns, port: u16, n: usize) {
    ns.run(|| {
        for _ in 0..n {
            let err = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        }
    });
}

#[test]
fn a_second_signal_exits_without_waiting_for_connections() {
    require_root();
    let ns = Netns::new("second");
    let mut daemon = Daemon::start(&ns, &["lo"]);
    ns.faultctl_ok(&["refuse", "--port", "9001"]);
    // About 200 KB of history: more than a stream's HTTP/2 window.
    refused_attempts(&ns, 9001, 2000);
    let _stuck = stuck_follower(&ns);

    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(daemon.pid(), libc::SIGTERM) };
    wait_for_log(&daemon, "programs detached", exit_bound());
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "faultd exited at once: the stuck client did not hold the shutdown, so the second \
         signal proves nothing; log:\n{}",
        daemon.log_text()
    );
    // SAFETY: as above.
    unsafe { libc::kill(daemon.pid(), libc::SIGTERM) };
    let code = exit_within(&mut daemon.child, exit_bound()).unwrap_or_else(|()| {
        panic!(
            "a second SIGTERM did not end faultd:\n{}",
            daemon.log_text()
        )
    });
    assert_eq!(code, Some(0), "log:\n{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("second signal"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());
}

/// Starts faultd without waiting for it to be ready.
fn spawn_faultd(cmd: &mut std::process::Command, ns: &Netns, tag: &str) -> Daemon {
    let log = std::env::temp_dir().join(format!("{}-{tag}-{}.log", ns.name, std::process::id()));
    if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
        cmd.env("RUST_LOG", "info");
    }
    let child = cmd
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Daemon { child, log }
}

/// A signal while the verifier works: faultd finishes loading, detaches and exits 0.
#[test]
fn a_signal_during_loading_still_detaches_and_exits_cleanly() {
    require_root();
    let ns = Netns::new("loadsig");
    let mut daemon = spawn_faultd(
        ns.cmd(FAULTD)
            .args(["--iface", "lo"])
            .env("RUST_LOG", "info,faultd=debug"),
        &ns,
        "load",
    );
    // Loading takes seconds (ten times more in a VM): the signal comes in the middle.
    let deadline = Instant::now() + Duration::from_secs(10);
    // (Before faultd said "loading the programs", a program's "loaded" was the first sign.)
    while !["loading the programs", "loaded program="]
        .iter()
        .any(|sign| daemon.log_text().contains(sign))
    {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(daemon.pid(), libc::SIGTERM) };
    let code = exit_within(&mut daemon.child, load_within()).unwrap();
    let log = daemon.log_text();
    assert_eq!(
        code,
        Some(0),
        "killed or failed instead of a clean exit:\n{log}"
    );
    assert!(log.contains("stopping before serving"), "{log}");
    assert!(!log.contains("faultd ready"), "{log}");
    assert!(
        !log.contains("attached iface"),
        "attached after the signal: {log}"
    );
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());
    // The interface is free for the next faultd.
    let _next = Daemon::start(&ns, &["lo"]);
}

/// A second signal while the verifier works: nothing is attached yet, so faultd exits at
/// once instead of waiting for the kernel.
#[test]
fn a_second_signal_during_loading_exits_at_once() {
    require_root();
    let ns = Netns::new("loadsig2");
    let mut daemon = spawn_faultd(
        ns.cmd(FAULTD)
            .args(["--iface", "lo"])
            .env("RUST_LOG", "info,faultd=debug"),
        &ns,
        "load2",
    );
    wait_for_log(&daemon, "loading the programs", WAIT);
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(daemon.pid(), libc::SIGTERM) };
    wait_for_log(&daemon, "stopping before serving", WAIT);
    // SAFETY: as above.
    unsafe { libc::kill(daemon.pid(), libc::SIGINT) };
    let code = exit_within(&mut daemon.child, load_within()).unwrap();
    let log = daemon.log_text();
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("second signal while loading"), "{log}");
    assert!(!log.contains("attached iface"), "{log}");
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());
}

/// SIGHUP (a closed terminal) ends faultd as cleanly as SIGTERM; under `nohup` it is
/// ignored as asked.
#[test]
fn sighup_stops_faultd_cleanly_unless_nohup() {
    require_root();
    let ns = Netns::new("hup");
    let mut daemon = Daemon::start(&ns, &["lo"]);
    ns.faultctl_ok(&["drop", "--port", "9000"]);
    // SAFETY: signalling our own child by PID.
    unsafe { libc::kill(daemon.pid(), libc::SIGHUP) };
    let code = exit_within(&mut daemon.child, Duration::from_secs(2)).unwrap();
    assert_eq!(code, Some(0), "log:\n{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("SIGHUP"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());

    // As `nohup` starts it: SIGHUP ignored, which exec keeps.
    let mut cmd = ns.cmd(FAULTD);
    cmd.args(["--iface", "lo"]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut nohup = spawn_faultd(&mut cmd, &ns, "nohup");
    wait_for_log(&nohup, "faultd ready", load_within());
    // SAFETY: as above.
    unsafe { libc::kill(nohup.pid(), libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(nohup.child.try_wait().unwrap().is_none(), "nohup ignored");
    ns.faultctl_ok(&["list"]);
    assert_eq!(nohup.stop(libc::SIGTERM), Some(0));
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());
}

/// Starts two faultd on `lo` of `ns` at the same moment (other API ports), optionally
/// while `holder` is told to stop; returns the one that got the interface, if any.
fn race(ns: &Netns, round: usize, holder: Option<Daemon>) -> Option<Daemon> {
    let mut racers: Vec<Daemon> = (0..2)
        .map(|i| {
            let listen = format!("127.0.0.1:{}", 7500 + 2 * (round % 50) + i);
            let mut cmd = ns.cmd(FAULTD);
            cmd.args(["--iface", "lo", "--listen", &listen]);
            spawn_faultd(&mut cmd, ns, &format!("race{round}-{i}"))
        })
        .collect();
    let mut holder = holder;
    if let Some(h) = holder.as_mut() {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(h.pid(), libc::SIGTERM) };
    }
    // Each racer ends up ready or gone.
    let deadline = Instant::now() + 2 * load_within();
    let mut winners = Vec::new();
    for (i, racer) in racers.iter_mut().enumerate() {
        loop {
            if racer.log_text().contains("faultd ready") {
                winners.push(i);
                break;
            }
            if let Some(status) = racer.child.try_wait().unwrap() {
                let log = racer.log_text();
                assert_eq!(status.code(), Some(1), "round {round}: {log}");
                assert!(
                    log.contains("already held by another faultd"),
                    "round {round}: lost for another reason: {log}"
                );
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: racer {i} hangs");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(mut h) = holder {
        assert_eq!(h.stop(libc::SIGTERM), Some(0));
    }
    assert!(
        winners.len() <= 1,
        "round {round}: both faultd hold lo:\n{}\n---\n{}",
        racers[0].log_text(),
        racers[1].log_text()
    );
    winners.first().map(|&i| racers.swap_remove(i))
}

/// The interface lock: two faultd starting together, alone or while the holder exits,
/// never both get the interface; alone, exactly one does.
#[test]
fn two_faultd_racing_for_one_interface_never_both_win() {
    require_root();
    let ns = Netns::new("race");
    let mut holder = None;
    // Each race costs two program loads: 10 rounds here, fewer where the CPU is emulated.
    let started = Instant::now();
    for round in 0..10 {
        if round >= 2 && started.elapsed() > Duration::from_secs(120) {
            eprintln!(
                "{} races in {:?}: enough on this slow CPU",
                2 * round,
                started.elapsed()
            );
            break;
        }
        // Alone: exactly one wins.
        let winner = race(&ns, 2 * round, None);
        assert!(winner.is_some(), "round {}: nobody got lo", 2 * round);
        // While that winner exits: at most one of the next two.
        holder = race(&ns, 2 * round + 1, winner);
        if let Some(mut h) = holder.take() {
            assert_eq!(h.stop(libc::SIGTERM), Some(0));
        }
    }
    drop(holder);
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());
}

/// The race window held open, so that the race is run every time rather than by luck: B
/// opens the lock file of `lo` while H holds it and waits there (FAULTD_TEST_LOCK_GATE);
/// H exits, unlinking the file and releasing its lock; C starts and takes a new lock file;
/// then B goes on and locks the file it opened, which nobody else can find any more. B must
/// see that its lock names no file and lose to C. (With the lock counted on any inode, B
/// and C both attach: this test fails.)
#[test]
fn a_starter_that_opened_the_lock_file_before_the_holder_exited_loses() {
    require_root();
    let ns = Netns::new("gate");
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    // Each its own API port and socket: only the interface lock decides.
    let start = |name: &str, port: u16, gated: bool| {
        let mut cmd = ns.cmd(FAULTD);
        let socket = dir.path().join(format!("{name}.sock"));
        cmd.args(["--iface", "lo", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--socket")
            .arg(&socket);
        if gated {
            cmd.env("FAULTD_TEST_LOCK_GATE", &gate);
        }
        spawn_faultd(&mut cmd, &ns, name)
    };
    let mut holder = start("holder", 7561, false);
    wait_for_log(&holder, "faultd ready", load_within());
    let mut b = start("b", 7562, true);
    wait_for_log(&b, "waiting for the test's gate", load_within());
    assert_eq!(holder.stop(libc::SIGTERM), Some(0), "{}", holder.log_text());
    let mut c = start("c", 7563, false);
    wait_for_log(&c, "faultd ready", load_within());
    std::fs::write(&gate, "").unwrap();

    // B ends up gone or ready.
    let deadline = Instant::now() + 2 * load_within();
    let code = loop {
        if let Some(status) = b.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            !b.log_text().contains("faultd ready"),
            "B and C both hold lo\n--- B:\n{}\n--- C:\n{}",
            b.log_text(),
            c.log_text()
        );
        assert!(Instant::now() < deadline, "B hangs:\n{}", b.log_text());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(code, Some(1), "{}", b.log_text());
    assert!(
        b.log_text().contains("already held by another faultd"),
        "B lost for another reason:\n{}",
        b.log_text()
    );
    // C still holds lo and serves.
    assert!(c.child.try_wait().unwrap().is_none(), "{}", c.log_text());
    assert_eq!(c.stop(libc::SIGTERM), Some(0), "{}", c.log_text());
    assert_eq!(wait_until_clean(&ns, "lo"), Vec::<String>::new());
}

/// `--max-flows` sizes the limits' flow table: past it, new flows pass untracked, and
/// `faultctl stats` counts them, an event announces them, `doctor` shows the map's size,
/// and clearing the fault empties the table.
#[test]
fn a_full_flow_table_is_counted_announced_and_emptied() {
    require_root();
    let ns = Netns::new("flows");
    let _daemon = Daemon::try_start(&ns, &["lo"], &["--max-flows", "16"]).unwrap();
    ns.faultctl_ok(&[
        "limit-bytes",
        "--port",
        "7600",
        "--protocol",
        "udp",
        "--bytes",
        "1000000",
        "--then",
        "drop",
    ]);
    // 40 flows (a new source port each), one datagram each: on lo a limit acts at TC
    // ingress only, so each flow is looked up once.
    ns.run(|| {
        let receiver = std::net::UdpSocket::bind("127.0.0.1:7600").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 16];
        for _ in 0..40 {
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sender.send_to(b"ping", "127.0.0.1:7600").unwrap();
            receiver
                .recv(&mut buf)
                .expect("a datagram within the limit");
        }
    });
    let stats: serde_json::Value =
        serde_json::from_str(&ns.faultctl_ok(&["stats", "--json"])).unwrap();
    let flows = &stats["flows"];
    assert_eq!(flows["max_entries"], 16, "{stats}");
    assert_eq!(flows["tracked"], 16, "{stats}");
    assert_eq!(flows["untracked"], 24, "{stats}");
    let text = ns.faultctl_ok(&["stats"]);
    assert!(
        text.contains("flows: 16 of 16 tracked by limits, 24 packets of new flows passed"),
        "{text}"
    );
    let events = ns.faultctl_ok(&["events", "--json"]);
    assert!(events.contains(r#""kind":"flow-untracked""#), "{events}");

    let doctor: serde_json::Value =
        serde_json::from_str(&ns.faultctl_ok(&["doctor", "--json"])).unwrap();
    let maps = doctor["maps"].as_array().expect("doctor lists the maps");
    let map = |name: &str| {
        maps.iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no map {name} in {doctor}"))
    };
    assert_eq!(map("FLOWS")["max_entries"], 16);
    assert_eq!(map("FLOWS")["type"], "hash");
    assert_eq!(map("SEEN")["type"], "lru_hash");
    assert_eq!(
        map("RULE_SLOTS")["max_entries"],
        2 * 1024 + 128,
        "twice --max-faults, and the replaced rules waiting out their readers"
    );
    assert_eq!(map("RULE_INDEX")["max_entries"], 2 * 65_536, "one per port");
    assert!(map("COUNTERS")["bytes"].as_u64().unwrap() > 0, "{doctor}");

    ns.faultctl_ok(&["clear"]);
    let stats: serde_json::Value =
        serde_json::from_str(&ns.faultctl_ok(&["stats", "--json"])).unwrap();
    assert_eq!(
        stats["flows"]["tracked"], 0,
        "a cleared fault leaves no flow: {stats}"
    );
}
