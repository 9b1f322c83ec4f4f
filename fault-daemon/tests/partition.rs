//! System test of address-only partitions (`faultctl partition --between … --and …`): three
//! endpoints on 127.0.0.2, .3 and .4 of a test namespace's `lo` exchange TCP and UDP, and
//! what the applications observe is asserted: connects that time out or are refused, bytes
//! that do or do not arrive, datagrams lost or delivered, and the same connection resuming
//! after the partition heals.

mod harness;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use harness::*;
use socket2::{Domain, Socket, Type};

const NODES: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const TCP_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;

/// Each node's TCP listener and UDP socket.
struct Node {
    addr: &'static str,
    listener: TcpListener,
    udp: UdpSocket,
}

fn nodes() -> Vec<Node> {
    NODES
        .iter()
        .map(|&addr| {
            let listener = TcpListener::bind((addr, TCP_PORT)).unwrap();
            let udp = UdpSocket::bind((addr, UDP_PORT)).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            Node {
                addr,
                listener,
                udp,
            }
        })
        .collect()
}

/// Connects from `from` (as the source address) to `to`'s listener within `wait`.
fn connect(from: &str, to: &Node, wait: Duration) -> std::io::Result<(TcpStream, TcpStream)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    let src: SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&src.into())?;
    let dst: SocketAddr = format!("{}:{TCP_PORT}", to.addr).parse().unwrap();
    socket.connect_timeout(&dst.into(), wait)?;
    let client: TcpStream = socket.into();
    let (server, _) = to.listener.accept()?;
    Ok((client, server))
}

/// Whether `msg` written on `from` arrives whole on `to` within `wait`.
fn delivers(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8], wait: Duration) -> bool {
    from.write_all(msg).unwrap();
    read_exact_within(to, msg.len(), wait).unwrap() == msg
}

/// Whether a datagram from `from`'s UDP socket reaches `to`'s within its read timeout.
fn datagram_arrives(from: &Node, to: &Node) -> bool {
    let msg = format!("{}>{}", from.addr, to.addr);
    from.udp
        .send_to(msg.as_bytes(), (to.addr, UDP_PORT))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match to.udp.recv_from(&mut buf) {
            // A late datagram of an earlier check: skip it.
            Ok((n, _)) if &buf[..n] != msg.as_bytes() => continue,
            Ok(_) => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(e) => panic!("recv on {}: {e}", to.addr),
        }
    }
}

/// Each ordered pair of nodes: whether a new TCP connection opens and carries bytes both
/// ways, and whether a datagram arrives.
fn reachability(nodes: &[Node]) -> Vec<(String, bool, bool)> {
    let mut seen = Vec::new();
    for from in nodes {
        for to in nodes.iter().filter(|n| n.addr != from.addr) {
            let tcp = match connect(from.addr, to, Duration::from_millis(700)) {
                Ok((mut c, mut s)) => {
                    delivers(&mut c, &mut s, b"ping", Duration::from_secs(2))
                        && delivers(&mut s, &mut c, b"pong", Duration::from_secs(2))
                }
                Err(e) => {
                    assert!(
                        matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
                        "{} -> {}: a dropped SYN times out, got {e}",
                        from.addr,
                        to.addr
                    );
                    false
                }
            };
            let udp = datagram_arrives(from, to);
            seen.push((format!("{}->{}", from.addr, to.addr), tcp, udp));
        }
    }
    seen
}

/// The reachability a partition of {.2} from {.3, .4} leaves: .3 ↔ .4 only (`cut_back`:
/// whether the direction back to .2 is cut too).
fn expected(cut_forward: bool, cut_back: bool) -> Vec<(String, bool, bool)> {
    let mut want = Vec::new();
    for from in NODES {
        for to in NODES.iter().filter(|&&n| n != from) {
            let forward = from == "127.0.0.2";
            let back = *to == "127.0.0.2";
            // TCP needs both directions (SYN and SYN-ACK); UDP only its own.
            let tcp = !((forward || back) && (cut_forward || cut_back));
            let udp = !((forward && cut_forward) || (back && cut_back));
            want.push((format!("{from}->{to}"), tcp, udp));
        }
    }
    want
}

/// A partition between {.2} and {.3, .4} stops exactly the flows across it, TCP and UDP,
/// new and established, while .3 ↔ .4 keeps flowing; `faultctl rm` heals it, and the
/// established connection delivers what was held, on the same socket.
#[test]
fn a_partition_cuts_exactly_the_flows_across_it_and_heals() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("part");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let nodes = ns.run(nodes);
    assert_eq!(ns.run(|| reachability(&nodes)), expected(false, false));
    // An established connection across the coming partition.
    let (mut across_c, mut across_s) = ns
        .run(|| connect(NODES[0], &nodes[1], Duration::from_secs(2)))
        .unwrap();
    let id = ns.faultctl_ok(&[
        "partition",
        "--between",
        "127.0.0.2",
        "--and",
        "127.0.0.3,127.0.0.4",
    ]);
    assert!(id.parse::<u64>().is_ok(), "partition prints the id: {id:?}");
    let list = ns.faults_json();
    assert_eq!(list[0]["between"][0], "127.0.0.2/32", "{list}");
    assert_eq!(list[0]["and"][1], "127.0.0.4/32", "{list}");
    assert_eq!(list[0]["action"], "drop", "{list}");

    assert_eq!(ns.run(|| reachability(&nodes)), expected(true, true));
    // Held, not reset: the bytes do not arrive and the connection stays open.
    assert!(!delivers(
        &mut across_c,
        &mut across_s,
        b"held",
        Duration::from_millis(1500)
    ));
    assert_eq!(tcp_state(&across_c), TCP_ESTABLISHED);
    assert_eq!(tcp_state(&across_s), TCP_ESTABLISHED);
    let stats: serde_json::Value =
        serde_json::from_str(&ns.faultctl_ok(&["stats", "--json"])).unwrap();
    assert!(
        stats["faults"][0]["counters"]["acted_packets"]
            .as_u64()
            .unwrap()
            > 0,
        "{stats}"
    );

    ns.faultctl_ok(&["rm", &id]);
    assert_eq!(ns.run(|| reachability(&nodes)), expected(false, false));
    // TCP retransmits the held bytes on the very same connection.
    assert_eq!(
        read_exact_within(&mut across_s, 4, Duration::from_secs(15)).unwrap(),
        b"held"
    );
}

/// `--one-way`: only what goes from .2 to {.3, .4} is cut. Datagrams back to .2 arrive;
/// TCP, which needs both directions, opens neither way.
#[test]
fn a_one_way_partition_cuts_one_direction_only() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("part1w");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let nodes = ns.run(nodes);
    ns.faultctl_ok(&[
        "partition",
        "--between",
        "127.0.0.2",
        "--and",
        "127.0.0.3",
        "--and",
        "127.0.0.4",
        "--one-way",
    ]);
    assert_eq!(ns.run(|| reachability(&nodes)), expected(true, false));
}

/// `--mode reset`: a connect across the partition fails at once with ECONNREFUSED (its SYN
/// is answered with a RST); within a side it opens.
#[test]
fn a_reset_partition_refuses_connections_across_it() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("partrst");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let nodes = ns.run(nodes);
    ns.faultctl_ok(&[
        "partition",
        "--between",
        "127.0.0.2",
        "--and",
        "127.0.0.3",
        "--mode",
        "reset",
    ]);
    let err = ns
        .run(|| connect(NODES[0], &nodes[1], Duration::from_secs(2)))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    ns.run(|| connect(NODES[0], &nodes[2], Duration::from_secs(2)))
        .unwrap();
}

/// Bad input names the field and changes nothing.
#[test]
fn bad_partitions_are_refused_naming_the_field() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("partbad");
    let _daemon = Daemon::start(&ns, &["lo"]);
    for (args, field) in [
        (
            &["--between", "127.0.0.0/24", "--and", "127.0.0.4"][..],
            "target.and_peers",
        ),
        (
            &["--between", "banana", "--and", "127.0.0.4"][..],
            "target.between",
        ),
        (
            &["--between", "127.0.0.2", "--and", "::1/129"][..],
            "target.and_peers",
        ),
    ] {
        let out = ns.faultctl(&[&["partition"][..], args].concat());
        assert!(!out.status.success(), "{args:?}");
        let err = stderr_text(&out);
        assert!(err.contains(field), "{args:?}: {err}");
    }
    for (args, field) in [
        (&["drop", "--port", "2381-2379"][..], "--port"),
        (
            &["drop", "--port", "80", "--remote-port", "0"][..],
            "--remote-port",
        ),
    ] {
        let out = ns.faultctl(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr_text(&out).contains(field), "{args:?}");
    }
    assert_eq!(ns.faults_json(), serde_json::json!([]));
}
