//! System tests of `faultd --config` and `faultd --check-config`: a `[[fault]]` from the
//! file is installed at start and acts, and so do a port range, a port tuple and
//! `[[partition]]` entries; a typo or a bad value is reported at its line and column, with
//! its entry and key, by an unprivileged `--check-config`; a file refused at start leaves
//! the traffic as it was; the repository's example file checks.

use crate::harness;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use harness::*;

/// A file in a directory anyone may read, removed on drop (for `--check-config` as nobody).
struct ConfigFile {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl ConfigFile {
    fn new(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("faultd.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        Self { dir, path }
    }

    fn arg(&self) -> &str {
        let _ = &self.dir;
        self.path.to_str().unwrap()
    }
}

/// `faultd --check-config FILE` as the unprivileged user nobody (when we are root, so
/// that the check demonstrably needs no privilege), else as ourselves.
fn check_config(file: &Path) -> Output {
    let mut cmd = if test_harness::is_root() {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            FAULTD,
        ]);
        cmd
    } else {
        Command::new(FAULTD)
    };
    cmd.arg("--check-config").arg(file).output().unwrap()
}

/// faultd started with only `--config`: the file names the interface, and its
/// `[[fault]]` is listed, owned by faultd, and drops datagrams to its port.
#[test]
fn a_fault_from_the_config_file_is_installed_and_acts() {
    require_root();
    let file = ConfigFile::new(
        r#"
interfaces = ["lo"]

[[fault]]
action = "drop"
port = 5353
protocol = "udp"
label = "from-config"
"#,
    );
    let ns = Netns::new("conf");
    let _daemon = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .unwrap_or_else(|log| panic!("faultd --config did not start: {log}"));
    let faults = ns.faults_json();
    let listed = faults.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{faults}");
    assert_eq!(listed[0]["label"], "from-config", "{faults}");
    assert_eq!(listed[0]["port"], 5353, "{faults}");
    let (to_fault, to_other) = ns.run(|| (udp_delivers(5353), udp_delivers(5354)));
    assert!(!to_fault, "the configured drop lets datagrams through");
    assert!(to_other, "another port must still deliver");
}

/// A fault the daemon refuses at start (one on its own API port) stops the start with
/// the entry's position.
#[test]
fn a_refused_fault_in_the_file_stops_the_start_with_its_position() {
    require_root();
    let file =
        ConfigFile::new("interfaces = [\"lo\"]\n\n[[fault]]\naction = \"drop\"\nport = 7447\n");
    let ns = Netns::new("confr");
    let log = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .err()
        .expect("faultd refuses to start");
    let position = format!(
        "{}:3:1: fault #1: port: 7447 is faultd's own API port",
        file.arg()
    );
    assert!(log.contains(&position), "{log}");
}

/// A typo is an error at its line and column, from a user without privileges.
#[test]
fn check_config_reports_a_typo_with_line_and_column() {
    let file = ConfigFile::new("interfaces = [\"lo\"]\n\n[access]\nno_auht = true\n");
    let out = check_config(&file.path);
    assert!(!out.status.success(), "{out:?}");
    let stderr = stderr_text(&out);
    let at = format!("{}:4:1: unknown field `no_auht`", file.arg());
    assert!(stderr.contains(&at), "{stderr}");

    let file = ConfigFile::new("[[fault]]\naction = \"drop\"\nport = 80\nfor = \"soon\"\n");
    let out = check_config(&file.path);
    assert!(!out.status.success());
    let stderr = stderr_text(&out);
    assert!(
        stderr.contains(&format!("{}:4:7: ", file.arg())),
        "{stderr}"
    );
}

/// The repository's example configuration checks, without privileges.
#[test]
fn the_example_config_checks() {
    // Read at build time: the VM that runs this binary has no checkout.
    let example = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/faultd.toml"
    ));
    let file = ConfigFile::new(example);
    let out = check_config(&file.path);
    assert!(out.status.success(), "{}", stderr_text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": ok (1 interface(s), 2 fault(s))"),
        "{stdout}"
    );
}

/// Whether a datagram sent from `from` (address:port, bound) reaches `to` within 500 ms
/// (calling thread's namespace).
fn datagram_arrives(from: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    let receiver = UdpSocket::bind(to).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sender = UdpSocket::bind(from).unwrap();
    sender.send_to(b"ping", to).unwrap();
    let mut buf = [0u8; 16];
    match receiver.recv(&mut buf) {
        Ok(n) => &buf[..n] == b"ping",
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        Err(e) => panic!("recv on {to}: {e}"),
    }
}

/// Whether a TCP connection from address `from` to `to` (address:port, listening) opens
/// within 700 ms; a dropped SYN must time out, nothing else.
fn tcp_connects(from: &str, to: &str) -> bool {
    let to: SocketAddr = to.parse().unwrap();
    let _listener = TcpListener::bind(to).unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&src.into()).unwrap();
    match socket.connect_timeout(&to.into(), Duration::from_millis(700)) {
        Ok(()) => true,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => false,
        Err(e) => panic!("{from} -> {to}: a dropped SYN times out, got {e}"),
    }
}

/// `port = "5360-5362"` drops on every port of the range and on none around it; listed
/// as the range.
#[test]
fn a_port_range_from_the_config_file_acts_on_its_ports_only() {
    require_root();
    let file = ConfigFile::new(
        "interfaces = [\"lo\"]\n\n[[fault]]\naction = \"drop\"\nport = \"5360-5362\"\nprotocol = \"udp\"\n",
    );
    let ns = Netns::new("confrange");
    let _daemon = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .unwrap_or_else(|log| panic!("faultd --config did not start: {log}"));
    let faults = ns.faults_json();
    assert_eq!(faults[0]["port"], 5360, "{faults}");
    assert_eq!(faults[0]["port_end"], 5362, "{faults}");
    let delivered = ns.run(|| [5359, 5360, 5361, 5362, 5363].map(udp_delivers));
    assert_eq!(
        delivered,
        [true, false, false, false, true],
        "ports 5359..=5363: only 5360-5362 drop"
    );
}

/// `remote_port` makes a port tuple: only the flow between 5370 and 5371 is cut, in
/// either direction; 5370's traffic with another port flows.
#[test]
fn a_port_tuple_from_the_config_file_cuts_only_its_flow() {
    require_root();
    let file = ConfigFile::new(
        "interfaces = [\"lo\"]\n\n[[fault]]\naction = \"drop\"\nport = 5370\nremote_port = 5371\nprotocol = \"udp\"\n",
    );
    let ns = Netns::new("conftuple");
    let _daemon = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .unwrap_or_else(|log| panic!("faultd --config did not start: {log}"));
    let faults = ns.faults_json();
    assert_eq!(faults[0]["remote_port"], 5371, "{faults}");
    let seen = ns.run(|| {
        [
            datagram_arrives("127.0.0.1:5371", "127.0.0.1:5370"),
            datagram_arrives("127.0.0.1:5370", "127.0.0.1:5371"),
            datagram_arrives("127.0.0.1:5372", "127.0.0.1:5370"),
            datagram_arrives("127.0.0.1:5370", "127.0.0.1:5372"),
        ]
    });
    assert_eq!(
        seen,
        [false, false, true, true],
        "5371->5370, 5370->5371, 5372->5370, 5370->5372"
    );
}

/// Two `[[partition]]`s: 127.0.0.2 ↔ 127.0.0.3 cut both ways (TCP and UDP), and
/// 127.0.0.4 → 127.0.0.5 one way (`one_way`); the other pairs keep flowing.
#[test]
fn partitions_from_the_config_file_cut_their_addresses_apart() {
    require_root();
    let file = ConfigFile::new(
        r#"interfaces = ["lo"]

[[partition]]
between = ["127.0.0.2"]
and = ["127.0.0.3"]
label = "split"

[[partition]]
between = ["127.0.0.4"]
and = ["127.0.0.5"]
one_way = true
"#,
    );
    let ns = Netns::new("confpart");
    let _daemon = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .unwrap_or_else(|log| panic!("faultd --config did not start: {log}"));
    let faults = ns.faults_json();
    assert_eq!(faults.as_array().unwrap().len(), 2, "{faults}");
    assert_eq!(faults[0]["between"][0], "127.0.0.2/32", "{faults}");
    assert_eq!(faults[0]["label"], "split", "{faults}");
    assert_eq!(faults[1]["label"], "partition", "{faults}");
    let udp = ns.run(|| {
        [
            ("127.0.0.2", "127.0.0.3"),
            ("127.0.0.3", "127.0.0.2"),
            ("127.0.0.2", "127.0.0.4"),
            ("127.0.0.3", "127.0.0.4"),
            ("127.0.0.4", "127.0.0.5"),
            ("127.0.0.5", "127.0.0.4"),
        ]
        .map(|(from, to)| datagram_arrives(&format!("{from}:0"), &format!("{to}:5380")))
    });
    assert_eq!(
        udp,
        [false, false, true, true, false, true],
        "UDP .2->.3, .3->.2, .2->.4, .3->.4, .4->.5, .5->.4"
    );
    let tcp = ns.run(|| {
        [
            tcp_connects("127.0.0.2", "127.0.0.3:5381"),
            tcp_connects("127.0.0.3", "127.0.0.2:5381"),
            tcp_connects("127.0.0.2", "127.0.0.4:5381"),
        ]
    });
    assert_eq!(tcp, [false, false, true], "TCP .2->.3, .3->.2, .2->.4");
}

/// A file whose second entry faultd refuses at start (a range over its own API port)
/// stops the start with that entry's position, and leaves nothing behind: the partition
/// installed before it no longer cuts once faultd has exited.
#[test]
fn a_file_refused_at_start_leaves_the_traffic_as_it_was() {
    require_root();
    let file = ConfigFile::new(
        "interfaces = [\"lo\"]\n\n[[partition]]\nbetween = [\"127.0.0.2\"]\nand = [\"127.0.0.3\"]\n\n\
         [[fault]]\naction = \"drop\"\nport = \"7440-7450\"\n",
    );
    let ns = Netns::new("confleft");
    let log = Daemon::try_start(&ns, &[], &["--config", file.arg()])
        .err()
        .expect("faultd refuses to start");
    // The entry's position and name, in the file's words.
    let position = format!("{}:7:1: fault #1: ", file.arg());
    assert!(log.contains(&position), "{log}");
    assert!(!log.contains("target."), "a wire field name: {log}");
    assert!(log.contains("7447 is faultd's own API port"), "{log}");
    assert!(
        ns.run(|| datagram_arrives("127.0.0.2:0", "127.0.0.3:5390")),
        "a refused start left the partition cutting"
    );
    let link = ns.ip_output(&["link", "show", "lo"]);
    assert!(
        !link.contains("xdp"),
        "a refused start left XDP on lo: {link}"
    );
}

/// Each bad range, tuple or partition key is an error that names the file, the entry and
/// the key, from a user without privileges.
#[test]
fn check_config_names_the_entry_and_key_of_bad_targets() {
    let cases = [
        (
            "[[fault]]\naction = \"drop\"\nport = \"2381-2379\"\n",
            "1:1: fault #1: port: the range 2381-2379 ends before it starts",
        ),
        (
            "[[fault]]\naction = \"drop\"\nport = 2380\nremote_port = 0\n",
            "1:1: fault #1: remote_port: 0 is not a port",
        ),
        (
            "[[fault]]\naction = \"drop\"\nport = 80\n\n[[partition]]\nbetween = [\"127.0.0.2\"]\nand = [\"banana\"]\n",
            "5:1: partition #1: and: \"banana\" is not an IP address or CIDR",
        ),
        (
            "[[partition]]\nbetween = [\"127.0.0.0/8\"]\nand = [\"127.0.0.3\"]\n",
            "1:1: partition #1: and: 127.0.0.3/32 overlaps 127.0.0.0/8 of between",
        ),
        (
            "[[partition]]\nbetween = [\"127.0.0.2\"]\nand = [\"127.0.0.3\"]\nmode = \"stall\"\n",
            "4:8: unknown variant `stall`, expected `drop` or `reset`",
        ),
    ];
    for (text, want) in cases {
        let file = ConfigFile::new(text);
        let out = check_config(&file.path);
        assert!(!out.status.success(), "{text}: {out:?}");
        let stderr = stderr_text(&out);
        let at = format!("{}:{want}", file.arg());
        assert!(stderr.contains(&at), "{text}: want {at:?} in {stderr}");
    }
}
