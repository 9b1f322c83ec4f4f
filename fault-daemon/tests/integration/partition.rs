//! System test of address-only partitions (`faultctl partition --between … --and …`):
//! three node processes on 127.0.0.2, .3 and .4 of a test namespace's `lo` (the test binary
//! re-executed, see `support/node_process.rs`) exchange TCP and UDP as the test drives
//! them, and what each process's sockets observe is asserted: connects that time out or
//! are refused, bytes that do or do not arrive, datagrams lost or delivered, and the same
//! connection resuming after the partition heals. The nodes are killed by their PIDs when
//! a test ends, passed or failed.

use crate::harness;
use crate::node_process;

use std::time::Duration;

use harness::*;
use node_process::{Connect, NodeProcess, Read};

const NODES: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// Not a test: the entry point of the node processes the tests start, which run this
/// binary again with only this test (see `support/node_process.rs`).
#[test]
#[ignore = "a node process of the partition tests, which start it themselves"]
fn partition_node() {
    node_process::serve_if_node();
}

/// A node process on each of [`NODES`], inside `ns`.
fn start_nodes(ns: &Netns) -> Vec<NodeProcess> {
    NODES
        .iter()
        .map(|addr| NodeProcess::start(ns, addr))
        .collect()
}

/// Whether `msg` written by node `from` on its stream `out` arrives whole on node `to`'s
/// stream `inn` within `wait`.
fn delivers(
    nodes: &mut [NodeProcess],
    (from, out): (usize, &str),
    (to, inn): (usize, &str),
    msg: &str,
    wait: Duration,
) -> bool {
    nodes[from].write(out, msg);
    nodes[to].read(inn, msg.len(), wait) == Read::Bytes(msg.as_bytes().to_vec())
}

/// Whether node `from` opens a new TCP connection to node `to`, which accepts it, and the
/// two carry bytes both ways on it. A connect across a dropping partition must time out.
fn tcp_flows(nodes: &mut [NodeProcess], from: usize, to: usize) -> bool {
    let to_addr = nodes[to].addr.clone();
    match nodes[from].connect("c", &to_addr, Duration::from_millis(700)) {
        Connect::Opened(local) => {
            let flows = nodes[to].accept("s", local, Duration::from_secs(2))
                && delivers(
                    nodes,
                    (from, "c"),
                    (to, "s"),
                    "ping",
                    Duration::from_secs(2),
                )
                && delivers(
                    nodes,
                    (to, "s"),
                    (from, "c"),
                    "pong",
                    Duration::from_secs(2),
                );
            nodes[from].close("c");
            nodes[to].close("s");
            flows
        }
        Connect::TimedOut => false,
        other => panic!(
            "{} -> {to_addr}: a dropped SYN times out, got {other:?}",
            nodes[from].addr
        ),
    }
}

/// Whether a datagram node `from` sends reaches node `to`, from `from`'s address.
fn datagram_arrives(nodes: &mut [NodeProcess], from: usize, to: usize) -> bool {
    let (from_addr, to_addr) = (nodes[from].addr.clone(), nodes[to].addr.clone());
    let msg = format!("{from_addr}>{to_addr}");
    nodes[from].send(&to_addr, &msg);
    match nodes[to].recv(&msg, Duration::from_millis(300)) {
        Some(source) => {
            assert_eq!(source, from_addr, "the datagram {msg}'s source");
            true
        }
        None => false,
    }
}

/// Each ordered pair of nodes: whether a new TCP connection opens and carries bytes both
/// ways, and whether a datagram arrives.
fn reachability(nodes: &mut [NodeProcess]) -> Vec<(String, bool, bool)> {
    let mut seen = Vec::new();
    for from in 0..nodes.len() {
        for to in (0..nodes.len()).filter(|&to| to != from) {
            let tcp = tcp_flows(nodes, from, to);
            let udp = datagram_arrives(nodes, from, to);
            seen.push((
                format!("{}->{}", nodes[from].addr, nodes[to].addr),
                tcp,
                udp,
            ));
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
/// new and established, while .3 ↔ .4 keeps flowing, new and established; `faultctl rm` heals it, and the
/// established connection delivers what was held, on the same socket.
#[test]
fn a_partition_cuts_exactly_the_flows_across_it_and_heals() {
    require_root();
    let ns = Netns::new("part");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let mut nodes = start_nodes(&ns);
    assert_eq!(reachability(&mut nodes), expected(false, false));
    // An established connection across the coming partition: .2's "held" to .3.
    let Connect::Opened(local) = nodes[0].connect("held", NODES[1], Duration::from_secs(2)) else {
        panic!(
            "{} -> {}: no connection before the partition",
            NODES[0], NODES[1]
        );
    };
    assert!(nodes[1].accept("held", local, Duration::from_secs(2)));
    // And one within a side: .3's "side" to .4.
    let Connect::Opened(local) = nodes[1].connect("side", NODES[2], Duration::from_secs(2)) else {
        panic!(
            "{} -> {}: no connection before the partition",
            NODES[1], NODES[2]
        );
    };
    assert!(nodes[2].accept("side", local, Duration::from_secs(2)));
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

    assert_eq!(reachability(&mut nodes), expected(true, true));
    // Held, not reset: the bytes do not arrive and the connection stays open.
    assert!(!delivers(
        &mut nodes,
        (0, "held"),
        (1, "held"),
        "held",
        Duration::from_millis(1500)
    ));
    assert_eq!(nodes[0].tcp_state("held"), TCP_ESTABLISHED);
    assert_eq!(nodes[1].tcp_state("held"), TCP_ESTABLISHED);
    // The connection within a side carries on, both ways.
    let wait = Duration::from_secs(2);
    assert!(delivers(&mut nodes, (1, "side"), (2, "side"), "on", wait));
    assert!(delivers(&mut nodes, (2, "side"), (1, "side"), "on", wait));
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
    assert_eq!(reachability(&mut nodes), expected(false, false));
    // TCP retransmits the held bytes on the very same connection.
    assert_eq!(
        nodes[1].read("held", 4, WAIT),
        Read::Bytes(b"held".to_vec())
    );
}

/// `--one-way`: only what goes from .2 to {.3, .4} is cut. Datagrams back to .2 arrive;
/// TCP, which needs both directions, opens neither way.
#[test]
fn a_one_way_partition_cuts_one_direction_only() {
    require_root();
    let ns = Netns::new("part1w");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let mut nodes = start_nodes(&ns);
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
    assert_eq!(reachability(&mut nodes), expected(true, false));
}

/// `--mode reset`: a connect across the partition fails at once with ECONNREFUSED (its SYN
/// is answered with a RST), both ways; a connection established before it is reset at
/// each end on its next write, and datagrams across it are dropped. From .2 to .4 (not in
/// this partition) connections open and datagrams arrive.
#[test]
fn a_reset_partition_refuses_connections_across_it() {
    require_root();
    let ns = Netns::new("partrst");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let mut nodes = start_nodes(&ns);
    let Connect::Opened(local) = nodes[0].connect("old", NODES[1], Duration::from_secs(2)) else {
        panic!(
            "{} -> {}: no connection before the partition",
            NODES[0], NODES[1]
        );
    };
    assert!(nodes[1].accept("old", local, Duration::from_secs(2)));
    ns.faultctl_ok(&[
        "partition",
        "--between",
        "127.0.0.2",
        "--and",
        "127.0.0.3",
        "--mode",
        "reset",
    ]);
    assert_eq!(
        nodes[0].connect("c", NODES[1], Duration::from_secs(2)),
        Connect::Refused
    );
    assert_eq!(
        nodes[1].connect("c", NODES[0], Duration::from_secs(2)),
        Connect::Refused
    );
    // Each end's write is answered with a RST, which its next read reports.
    for node in [0, 1] {
        nodes[node].write("old", "x");
        let read = nodes[node].read("old", 1, Duration::from_secs(2));
        assert!(
            matches!(&read, Read::Failed(e) if e.starts_with("ConnectionReset")),
            "{}: {read:?}",
            NODES[node]
        );
    }
    assert!(!datagram_arrives(&mut nodes, 0, 1));
    assert!(!datagram_arrives(&mut nodes, 1, 0));
    assert!(tcp_flows(&mut nodes, 0, 2));
    assert!(datagram_arrives(&mut nodes, 0, 2));
}

/// The node processes go with their test, also when it fails: each guard kills its node
/// by PID (and reaps it) while the panic unwinds.
#[test]
fn node_processes_are_killed_when_their_test_fails() {
    require_root();
    let ns = Netns::new("partnode");
    let mut pids = Vec::new();
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let nodes = start_nodes(&ns);
        pids.extend(nodes.iter().map(NodeProcess::pid));
        assert!(pids.iter().all(|pid| proc_entry(*pid).exists()));
        panic!("a test fails with its nodes running");
    }));
    assert!(failed.is_err());
    assert_eq!(pids.len(), NODES.len());
    for pid in pids {
        assert!(
            !proc_entry(pid).exists(),
            "node process {pid} was left running"
        );
    }
}

fn proc_entry(pid: u32) -> std::path::PathBuf {
    format!("/proc/{pid}").into()
}

/// Bad input names the field and changes nothing.
#[test]
fn bad_partitions_are_refused_naming_the_field() {
    require_root();
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
