//! Many nodes: three network namespaces joined by a bridge, a faultd on each node's veth,
//! and one faultctl command (`--addr` once per daemon) — or the Rust client's `Nodes` —
//! partitioning one node from the other two. What the nodes' applications see is asserted:
//! connections across the partition time out, those within a side are made, and after the
//! heal all are made again. Then the same with a real clustered peer, etcd.

use crate::cluster;
use crate::harness;

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
    require_root();
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
    require_root();
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
    require_root();
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

/// etcd's ports: clients, and the members' raft traffic.
const ETCD_CLIENT: u16 = 2379;
const ETCD_PEER: u16 = 2380;

/// An etcd member on a node, stopped by its PID on drop; its data directory removed.
struct Etcd {
    _process: test_harness::Process,
    data: std::path::PathBuf,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
    }
}

/// Starts a three-member cluster, one member per node, with short election timeouts.
fn start_etcd(cluster: &Cluster) -> Vec<Etcd> {
    assert!(
        std::process::Command::new("etcd")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "etcd is missing: `cargo xtask setup` installs Debian's etcd-server and etcd-client"
    );
    let peers: Vec<String> = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("n{i}=http://{}:{ETCD_PEER}", n.addr))
        .collect();
    let initial = peers.join(",");
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let data = std::env::temp_dir().join(format!("fdt-etcd-{}-n{i}", std::process::id()));
            std::fs::create_dir_all(&data).unwrap();
            let log = std::fs::File::create(data.with_extension("log")).unwrap();
            let (peer, client) = (
                format!("http://{}:{ETCD_PEER}", node.addr),
                format!("http://{}:{ETCD_CLIENT}", node.addr),
            );
            let mut cmd = node.ns.cmd("etcd");
            cmd.args(["--name", &format!("n{i}")])
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "fdt-multinode"])
                .args(["--heartbeat-interval", "100", "--election-timeout", "500"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log);
            Etcd {
                _process: test_harness::Process::spawn(&mut cmd).expect("start etcd"),
                data,
            }
        })
        .collect()
}

/// etcdctl on `node`, against its own member; `Err(its output)` when it fails.
fn etcdctl(node: &cluster::Node, args: &[&str]) -> Result<String, String> {
    let endpoint = format!("http://{}:{ETCD_CLIENT}", node.addr);
    let out = node
        .ns
        .cmd("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &endpoint, "--command-timeout", "1s"])
        .args(args)
        .output()
        .expect("etcdctl");
    if out.status.success() {
        Ok(stdout(&out))
    } else {
        Err(format!("{}{}", stdout(&out), stderr_text(&out)))
    }
}

/// The member's id and the leader it knows (0: none), from `etcdctl endpoint status`.
fn member_status(node: &cluster::Node) -> Result<(u64, u64), String> {
    let out = etcdctl(node, &["endpoint", "status", "-w", "json"])?;
    let json: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    let status = &json[0]["Status"];
    let id = status["header"]["member_id"].as_u64();
    let leader = status["leader"].as_u64();
    id.zip(leader)
        .ok_or_else(|| format!("no member_id/leader in {out}"))
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `within`.
fn eventually<T>(within: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every member agrees on one leader; returns the members' ids and the
/// leader's index.
fn wait_for_one_leader(cluster: &Cluster, what: &str) -> (Vec<u64>, usize) {
    eventually(Duration::from_secs(30), what, || {
        let status: Vec<(u64, u64)> = cluster
            .nodes
            .iter()
            .map(member_status)
            .collect::<Result<_, _>>()
            .ok()?;
        let leader = status[0].1;
        let ids: Vec<u64> = status.iter().map(|s| s.0).collect();
        let agreed = leader != 0 && status.iter().all(|s| s.1 == leader);
        let index = ids.iter().position(|&id| id == leader)?;
        agreed.then_some((ids, index))
    })
}

/// A real clustered peer: three etcd members, one per node. Partitioning the leader (raft
/// traffic on 2380, through all three faultds) makes the other two elect a leader without
/// it, while it reports none and cannot serve a linearizable read; a key written during
/// the partition is readable on it after the heal, when the cluster agrees on a leader again.
#[test]
fn an_etcd_cluster_elects_without_the_partitioned_member_and_heals() {
    require_root();
    let cluster = Cluster::new("mne", 3);
    let _etcd = start_etcd(&cluster);
    let (ids, leader) = wait_for_one_leader(&cluster, "a leader at start");
    let isolated = &cluster.nodes[leader];
    let others: Vec<&cluster::Node> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| &cluster.nodes[i])
        .collect();
    eprintln!("partitioning the leader, {}", isolated.addr);

    let port = ETCD_PEER.to_string();
    ok(
        cluster.faultctl(&["partition", "--port", &port, "--isolate", &isolated.addr]),
        "partition",
    );

    // The other two elect a leader among themselves.
    let new_leader = eventually(
        Duration::from_secs(15),
        "a new leader on the majority side",
        || {
            let a = member_status(others[0]).ok()?;
            let b = member_status(others[1]).ok()?;
            (a.1 != 0 && a.1 == b.1 && a.1 != ids[leader]).then_some(a.1)
        },
    );
    assert!(ids.contains(&new_leader), "{new_leader:x} is not a member");
    // The partitioned member knows no leader, and a linearizable read there fails.
    eventually(
        Duration::from_secs(15),
        "no leader on the partitioned member",
        || match member_status(isolated) {
            Ok((_, 0)) => Some(()),
            Ok(_) => None,
            // No leader to answer through.
            Err(e) => e.contains("leader").then_some(()),
        },
    );
    etcdctl(others[0], &["put", "fdt-key", "written-during-partition"])
        .unwrap_or_else(|e| panic!("put on the majority side: {e}"));
    let read = etcdctl(isolated, &["get", "fdt-key"]);
    assert!(
        read.is_err(),
        "a linearizable read on the partitioned member: {read:?}"
    );
    // What it has locally (a serializable read) lacks the key: it was cut off from raft.
    let local = etcdctl(isolated, &["get", "fdt-key", "--consistency=s"]).unwrap();
    assert!(!local.contains("written-during-partition"), "{local}");

    ok(cluster.faultctl(&["clear", "--label", "partition"]), "heal");
    let (_, healed_leader) = wait_for_one_leader(&cluster, "one leader after the heal");
    eprintln!("healed; leader {}", cluster.nodes[healed_leader].addr);
    let value = eventually(
        Duration::from_secs(15),
        "the key on the healed member",
        || etcdctl(isolated, &["get", "fdt-key", "--print-value-only"]).ok(),
    );
    assert_eq!(value.trim(), "written-during-partition");
    for node in &cluster.nodes {
        etcdctl(node, &["endpoint", "health"])
            .unwrap_or_else(|e| panic!("{} unhealthy after the heal: {e}", node.addr));
    }
}
