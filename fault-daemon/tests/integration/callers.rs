//! Every kind of local caller over TCP, and cut connections dead at both ends.
//!
//! - Callers: faultd listening on `127.0.0.1` or `::1` admits root calling from an IPv4
//!   socket, an IPv6 one, and an IPv6 socket talking IPv4 through v4-mapped addresses (what
//!   gRPC's C core and dual-stack stacks open: faultctl does the same when given
//!   `[::ffff:127.0.0.1]:7447`, since its connector opens a socket of the address's
//!   family). What is asserted is what the caller observes: the fault it added acts on
//!   traffic (a refused port), and a user no rule admits is told the flag that would.
//! - Cuts: under `limit-bytes --then reset` and `limit-age --then reset`, a reader blocked in
//!   `recv` at either end gets ECONNRESET at once when the flow is cut, over lo (IPv4,
//!   IPv6) and across a veth (IPv4, IPv6); `--then drop` stays silent.
//!
//! Everything runs in network namespaces the tests create, as root; processes are stopped
//! by PID and namespaces removed by their guards, also when a test fails.

use crate::harness;

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use harness::*;

const NOBODY: u32 = 65534;

/// faultctl against `addr` inside `ns`, as root.
fn faultctl_at(ns: &Netns, addr: &str, args: &[&str]) -> Output {
    require_faultctl();
    ns.cmd(FAULTCTL)
        .env_remove("FAULTD_ADDR")
        .arg("--addr")
        .arg(addr)
        .args(args)
        .output()
        .expect("faultctl")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// faultctl against `addr` inside `ns` as user `nobody`, with no groups.
fn faultctl_as_nobody(ns: &Netns, addr: &str, args: &[&str]) -> Output {
    require_faultctl();
    let mut cmd: Command = ns.cmd("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg(FAULTCTL)
        .env_remove("FAULTD_ADDR")
        .arg("--addr")
        .arg(addr)
        .args(args);
    cmd.output().expect("setpriv faultctl")
}

/// Whether a new connection to `port` on `ip` inside `ns` is refused (ECONNREFUSED) while a
/// listener is there: what a `refuse` fault does.
fn refused(ns: &Netns, ip: &str, port: u16) -> bool {
    let addr = SocketAddr::new(ip.parse().unwrap(), port);
    ns.run(|| {
        let _listener = TcpListener::bind(addr).unwrap();
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => true,
            Err(e) => panic!("connect to {addr}: {e}"),
        }
    })
}

/// Root adds a refuse fault through `addr` and removes it: the port refuses connections in
/// between and accepts them after; the fault's owner is root and faultctl. A user no rule
/// admits is refused through the same address, told the flag that would admit them.
fn admits_root_and_refuses_nobody(ns: &Netns, addr: &str, port: u16) {
    let what = format!("through {addr}");
    assert!(!refused(ns, "127.0.0.1", port), "{what}: refused before");
    let id = ok(
        faultctl_at(ns, addr, &["refuse", "--port", &port.to_string()]),
        &what,
    );
    assert!(
        refused(ns, "127.0.0.1", port),
        "{what}: the fault does not act"
    );
    let list: serde_json::Value =
        serde_json::from_str(&ok(faultctl_at(ns, addr, &["list", "--json"]), &what)).unwrap();
    let fault = list
        .as_array()
        .and_then(|faults| faults.iter().find(|f| f["id"].as_u64() == id.parse().ok()))
        .unwrap_or_else(|| panic!("{what}: fault {id} not listed: {list}"));
    assert_eq!(fault["owner"]["uid"], 0, "{what}: {fault}");
    assert_eq!(fault["owner"]["command"], "faultctl", "{what}: {fault}");
    ok(faultctl_at(ns, addr, &["rm", &id]), &what);
    assert!(
        !refused(ns, "127.0.0.1", port),
        "{what}: refused after removal"
    );

    let out = faultctl_as_nobody(ns, addr, &["list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: nobody was admitted");
    assert!(
        err.contains(&format!("permission denied: uid {NOBODY}")),
        "{what}: {err}"
    );
    assert!(
        err.contains(&format!("restart faultd with --allow-uid {NOBODY}")),
        "{what}: {err}"
    );
}

/// faultd on `127.0.0.1:7447` (the default) admits root from an IPv4 socket and from a
/// dual-stack IPv6 socket with v4-mapped addresses, as grpcio connects.
#[test]
fn ipv4_and_v4_mapped_callers_are_identified() {
    require_root();
    let ns = Netns::new("callv4");
    let _daemon = Daemon::start(&ns, &["lo"]);
    admits_root_and_refuses_nobody(&ns, "127.0.0.1:7447", 7811);
    admits_root_and_refuses_nobody(&ns, "[::ffff:127.0.0.1]:7447", 7812);
}

/// `--listen [::1]:7447`: an IPv6 caller is identified the same way.
#[test]
fn ipv6_callers_are_identified() {
    require_root();
    let ns = Netns::new("callv6");
    let _daemon = Daemon::try_start(&ns, &["lo"], &["--listen", "[::1]:7447"])
        .unwrap_or_else(|log| panic!("faultd --listen [::1]:7447 did not start: {log}"));
    admits_root_and_refuses_nobody(&ns, "[::1]:7447", 7813);
}

/// A thread blocked in `recv` on a clone of `stream`, reading until it fails: the error and
/// when it came. SO_RCVTIMEO is a guard against a hang, far beyond what is asserted.
fn blocked_reader(stream: &TcpStream) -> (JoinHandle<(std::io::Error, Instant)>, i32) {
    let mut s = stream.try_clone().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // SAFETY: gettid cannot fail.
        tx.send(unsafe { libc::gettid() }).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (std::io::Error::other("clean EOF"), Instant::now()),
                Ok(_) => continue,
                Err(e) => return (e, Instant::now()),
            }
        }
    });
    (handle, rx.recv().unwrap())
}

/// Waits until thread `tid` of this process sleeps in recvfrom (syscall 45 on x86-64, 0 for
/// read elsewhere): the reader is blocked before the cut, not merely about to read.
fn wait_blocked_in_recv(tid: i32) {
    let path = format!("/proc/self/task/{tid}/syscall");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let nr = text.split_whitespace().next().unwrap_or("");
        if matches!(nr, "45" | "0") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the reader never blocked in recv ({path}: {text})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Readers blocked in `recv` at both ends; `cut` (which writes) cuts the flow; each reader
/// gets ECONNRESET within a second of the write.
fn both_ends_reset(client: &TcpStream, server: &TcpStream, what: &str, cut: impl FnOnce()) {
    let (client_reader, client_tid) = blocked_reader(client);
    let (server_reader, server_tid) = blocked_reader(server);
    wait_blocked_in_recv(client_tid);
    wait_blocked_in_recv(server_tid);
    let at = Instant::now();
    cut();
    for (end, reader) in [("client", client_reader), ("server", server_reader)] {
        let (err, when) = reader.join().unwrap();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ECONNRESET),
            "{what}: the {end}'s blocked recv: {err}"
        );
        // Only a RST ends the recv with ECONNRESET before its 20 s guard (a silent cut gives
        // EAGAIN): the figure is a measurement, not an assertion (bench's domain).
        let after = when.saturating_duration_since(at);
        eprintln!("MEASURE {what}: the {end}'s recv failed {after:?} after the cut");
    }
}

fn scenarios(tag: &str) -> Vec<Scenario> {
    vec![
        Scenario::lo_v4(&format!("{tag}l4")),
        Scenario::lo_v6(&format!("{tag}l6")),
        Scenario::veth(&format!("{tag}v4"), SERVER_V4),
        Scenario::veth(&format!("{tag}v6"), SERVER_V6),
    ]
}

#[test]
fn limit_bytes_then_reset_resets_a_blocked_reader_at_both_ends() {
    require_root();
    for s in scenarios("cutb") {
        let what = format!("{} {}", s.kind(), s.server_addr);
        let listener = s.listen(7820);
        s.faultctl(&[
            "limit-bytes",
            "--port",
            "7820",
            "--bytes",
            "100",
            "--then",
            "reset",
        ]);
        let (mut client, mut server) = s.pair(&listener, 7820); // 4 bytes
        echo(&mut client, &mut server, &[b'a'; 96]); // 100: the limit
        let mut writer = client.try_clone().unwrap();
        both_ends_reset(&client, &server, &what, || {
            writer.write_all(b"one too many").unwrap();
        });
    }
}

#[test]
fn limit_age_then_reset_resets_a_blocked_reader_at_both_ends() {
    require_root();
    for s in scenarios("cuta") {
        let what = format!("{} {}", s.kind(), s.server_addr);
        let listener = s.listen(7821);
        s.faultctl(&[
            "limit-age",
            "--port",
            "7821",
            "--after",
            "1s",
            "--then",
            "reset",
        ]);
        let (client, server) = s.pair(&listener, 7821);
        // The flow's age counts from its SYN, before `pair` returned: past this, it is over
        // the age, and the next packet cuts it.
        std::thread::sleep(Duration::from_millis(1100));
        let mut writer = client.try_clone().unwrap();
        both_ends_reset(&client, &server, &what, || {
            writer.write_all(b"past the age").unwrap();
        });
    }
}

/// `--then drop`: the cut is silent, as documented; a reader blocked in recv hears nothing.
#[test]
fn limit_bytes_then_drop_leaves_a_blocked_reader_waiting() {
    require_root();
    let s = Scenario::lo_v4("cutd");
    let listener = s.listen(7822);
    s.faultctl(&[
        "limit-bytes",
        "--port",
        "7822",
        "--bytes",
        "4",
        "--then",
        "drop",
    ]);
    let (mut client, mut server) = s.pair(&listener, 7822); // 4 bytes: the limit
    client.write_all(b"dropped").unwrap();
    assert_eq!(
        read_for(&mut server, Duration::from_millis(500)).unwrap(),
        None,
        "the server heard something of a silent cut"
    );
    assert_eq!(
        read_for(&mut client, Duration::from_millis(100)).unwrap(),
        None,
        "the client heard something of a silent cut"
    );
}
