//! Many nodes: three network namespaces joined by a bridge, a faultd on each node's veth,
//! and one faultctl command (`--addr` once per daemon) — or the Rust client's `Nodes` —
//! partitioning one node from the other two. What the nodes' applications see is asserted:
//! connections across the partition time out, those within a side are made, and after the
//! heal all are made again. Then the same with a real clustered peer, etcd.

#[path = "harness/cluster.rs"]
mod cluster;
mod harness;

use std::io::ErrorKind;
use std::time::Duration;

use cluster::Cluster;
use harness::*;
use serde_json::Value;

/// The service port the partition test's nodes listen on.
const SERVICE: u16 = 7300;
/// How long a connection may take where it must be made; where a drop stands in the way,
/// it times out after this.
const CONNECT_WAIT: Duration = Duration::from_millis(700);

/// Asserts, for every ordered pair of nodes, whether a TCP connection to the other's
/// service port is made: `cut(i, j)` says whether the partition stands between them.
fn assert_reachability(cluster: &Cluster, cut: impl Fn(usize, usize) -> bool, when: &str) {
    let nodes = &cluster.nodes;
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let result = from.connect(&to.addr, SERVICE, CONNECT_WAIT);
            let pair = format!("{when}: {} -> {}:{SERVICE}", from.addr, to.addr);
            if cut(i, j) {
                let e = result.expect_err(&format!("{pair} connected across the partition"));
                // Dropped in the kernel: no RST (refused), no ICMP — the SYN vanishes.
                assert_eq!(e.kind(), ErrorKind::TimedOut, "{pair}: {e}");
            } else {
                result.unwrap_or_else(|e| panic!("{pair} failed: {e}"));
            }
        }
    }
}

/// Whether `i` and `j` are on different sides of a partition of `isolated`.
fn across(isolated: usize) -> impl Fn(usize, usize) -> bool {
    move |i, j| (i == isolated) != (j == isolated)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: std::process::Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {}{}",
        stdout(&out),
        stderr_text(&out)
    );
    stdout(&out)
}

/// The node of each `--json` result item.
fn nodes_of(json: &Value) -> Vec<&str> {
    json.as_array()
        .unwrap()
        .iter()
        .map(|item| item["node"].as_str().unwrap())
        .collect()
}

/// One faultctl command partitions node 0 from nodes 1 and 2 through all three daemons:
/// exactly the traffic across the partition stops, both ways, and `clear` heals it.
#[test]
fn one_faultctl_command_partitions_a_node_and_heals() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::new("mnp", 3);
    for node in &cluster.nodes {
        node.listen(SERVICE);
    }
    assert_reachability(&cluster, |_, _| false, "before");

    let port = SERVICE.to_string();
    let isolated = cluster.nodes[0].addr.clone();
    let added = ok(
        cluster.faultctl(&[
            "--json",
            "partition",
            "--port",
            &port,
            "--isolate",
            &isolated,
        ]),
        "partition",
    );
    let added: Value = serde_json::from_str(&added).unwrap();
    // Node 0 drops its flows with 1 and 2; nodes 1 and 2 their flows with 0.
    let peers: Vec<(&str, &str)> = added
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["node"].as_str().unwrap(), f["peer"].as_str().unwrap()))
        .collect();
    let nodes = cluster.node_addrs();
    assert_eq!(
        peers,
        [
            (nodes[0].as_str(), "198.18.0.2/32"),
            (nodes[0].as_str(), "198.18.0.3/32"),
            (nodes[1].as_str(), "198.18.0.1/32"),
            (nodes[2].as_str(), "198.18.0.1/32"),
        ],
        "{added}"
    );

    assert_reachability(&cluster, across(0), "partitioned");

    // The table has a NODE column and a row per fault, each with its node.
    let table = ok(cluster.faultctl(&["list"]), "list");
    let header = table.lines().next().unwrap();
    assert!(header.trim_start().starts_with("NODE"), "{table}");
    for (node, faults) in nodes.iter().zip([2, 1, 1]) {
        let rows = table.lines().filter(|l| l.contains(node.as_str())).count();
        assert_eq!(rows, faults, "{node} in\n{table}");
    }

    let cleared: Value = serde_json::from_str(&ok(
        cluster.faultctl(&["--json", "clear", "--label", "partition"]),
        "clear",
    ))
    .unwrap();
    assert_eq!(nodes_of(&cleared), nodes);
    let removed: Vec<u64> = cleared
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["removed"].as_u64().unwrap())
        .collect();
    assert_eq!(removed, [2, 1, 1]);
    assert_reachability(&cluster, |_, _| false, "healed");
}

/// A node that fails does not stop the others: their results are printed, the failure is
/// named on stderr and in --json, and faultctl exits 5.
#[test]
fn one_unreachable_node_is_reported_and_the_others_still_act() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::new("mnf", 2);
    let live = cluster.nodes[0].socket.clone();
    // Plain addresses, without the node's IP: enough for every verb but partition.
    let dead = format!(
        "unix:/run/faultd/faultd-test-{}-none.sock",
        std::process::id()
    );
    let faultctl = |args: &[&str]| {
        std::process::Command::new(FAULTCTL)
            .args(["--addr", &live, "--addr", &dead])
            .args(args)
            .env_remove("FAULTD_ADDR")
            .output()
            .unwrap()
    };
    let out = faultctl(&["--json", "drop", "--port", "7301", "--label", "half"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr_text(&out));
    let err = stderr_text(&out);
    assert!(
        err.contains(&format!("faultctl: {dead}: no faultd answers")),
        "{err}"
    );
    assert!(err.contains("1 of 2 daemons failed"), "{err}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes_of(&json), [live.as_str(), dead.as_str()]);
    assert_eq!(json[0]["port"], 7301);
    assert!(
        json[1]["error"]
            .as_str()
            .unwrap()
            .contains("no faultd answers"),
        "{json}"
    );
    // The live node did add it: its own list says so.
    let listed = cluster.nodes[0].ns.faults_json();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");

    // Refused by every node alike: the code one daemon gives (3), not 5.
    let out = cluster.faultctl(&["drop", "--port", "7302", "--peer", "198.18.0.0/33"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_text(&out));
    assert_eq!(
        stderr_text(&out).matches("target.peer").count(),
        2,
        "{}",
        stderr_text(&out)
    );
}

/// The Rust client's `Nodes`: a partition of node 2 applied through the three daemons'
/// sockets, acting in the kernel, and healed by dropping the guards.
#[test]
fn the_rust_clients_nodes_partition_and_heal() {
    if !require_root() {
        return;
    }
    let cluster = Cluster::new("mnr", 3);
    for node in &cluster.nodes {
        node.listen(SERVICE);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nodes = runtime
        .block_on(faultd_client::Nodes::connect(cluster.node_addrs()))
        .unwrap();
    let isolated = cluster.nodes[2].addr.parse().unwrap();
    let partition = faultd_client::Partition::ports([SERVICE]);
    let guards = runtime
        .block_on(nodes.partition(&partition, &[isolated]))
        .all()
        .unwrap();
    let counts: Vec<usize> = guards.iter().map(Vec::len).collect();
    assert_eq!(counts, [1, 1, 2]);
    let listed = runtime.block_on(nodes.list()).all_named().unwrap();
    for ((node, faults), expected) in listed.iter().zip(cluster.node_addrs()) {
        assert_eq!(node, &expected);
        assert!(
            faults
                .iter()
                .all(|f| f.spec.as_ref().unwrap().label == "partition")
        );
    }

    assert_reachability(&cluster, across(2), "partitioned by the Rust client");

    // The guards remove their faults when they drop: inside the runtime, which spawns the
    // removals and runs them while the loop below waits.
    runtime.block_on(async move { drop(guards) });
    runtime.block_on(async {
        for _ in 0..100 {
            let faults = nodes.list().await.all().unwrap();
            if faults.iter().all(Vec::is_empty) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("faults left after their guards dropped");
    });
    assert_reachability(&cluster, |_, _| false, "healed");
}
