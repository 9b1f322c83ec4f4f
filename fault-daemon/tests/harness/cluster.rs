//! A cluster of nodes for the many-node tests: N network namespaces, each with a veth
//! (`mn0`, addressed 198.18.0.<i+1>/24) whose other end is on a bridge that lives in a
//! namespace of its own (never in the host's), and a faultd on each node's veth.
//!
//! The daemons listen on Unix sockets named after their namespace's inode
//! (/run/faultd/faultd-<inode>.sock). The filesystem is shared, so a faultctl in the host's
//! namespace reaches every one of them at `unix:<socket>` — TCP on each namespace's
//! loopback would not be reachable from here.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Output;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::{Daemon, FAULTCTL, Netns, require_faultctl};

/// The node end of each veth.
pub const NODE_IF: &str = "mn0";

/// A node: its namespace, address and faultd.
pub struct Node {
    pub ns: Netns,
    /// 198.18.0.<i+1>
    pub addr: String,
    /// Held for its Drop, which stops faultd.
    #[allow(dead_code)]
    pub daemon: Daemon,
    /// `unix:/run/faultd/faultd-<inode>.sock`.
    pub socket: String,
}

/// The nodes and the bridge between them; everything goes when it drops (the daemons
/// first, then the namespaces, and with them the veths and the bridge).
pub struct Cluster {
    // Dropped in declaration order: the daemons (in the nodes) before the bridge, and the
    // turn last.
    pub nodes: Vec<Node>,
    #[allow(dead_code)]
    pub bridge: Netns,
    _turn: MutexGuard<'static, ()>,
}

/// One cluster at a time in a test binary: each loads its programs on every node, and a
/// dozen faultds verifying programs at once on two cores can outlast the ready wait.
static TURN: Mutex<()> = Mutex::new(());

impl Cluster {
    /// `n` nodes joined by a bridge, each running faultd on its veth.
    pub fn new(tag: &str, n: usize) -> Self {
        require_faultctl();
        // A test that failed holding the turn poisoned it; the turn itself is sound.
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let bridge = Netns::new(&format!("{tag}br"));
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for i in 0..n {
            let ns = Netns::new(&format!("{tag}{i}"));
            let port = format!("p{i}");
            ns.ip(&[
                "link",
                "add",
                NODE_IF,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &bridge.name,
            ]);
            bridge.ip(&["link", "set", &port, "master", "br0", "up"]);
            let addr = format!("198.18.0.{}", i + 1);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", NODE_IF]);
            ns.ip(&["link", "set", NODE_IF, "up"]);
            let daemon = Daemon::start(&ns, &[NODE_IF]);
            let socket = socket_of(&daemon);
            nodes.push(Node {
                ns,
                addr,
                daemon,
                socket,
            });
        }
        Self {
            nodes,
            bridge,
            _turn: turn,
        }
    }

    /// Every node as faultctl's --addr takes it, and names it in its results:
    /// `NODE_IP=unix:/run/faultd/…sock`.
    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(Node::node_addr).collect()
    }

    /// `--addr NODE_IP=unix:… --addr …` for every node.
    pub fn addr_args(&self) -> Vec<String> {
        self.node_addrs()
            .into_iter()
            .flat_map(|a| ["--addr".to_string(), a])
            .collect()
    }

    /// Runs faultctl in the host's namespace with `args` (after the nodes' --addr).
    pub fn faultctl(&self, args: &[&str]) -> Output {
        std::process::Command::new(FAULTCTL)
            .args(self.addr_args())
            .args(args)
            .env_remove("FAULTD_ADDR")
            .output()
            .expect("faultctl")
    }
}

/// The socket faultd names in its "faultd ready" line (`socket=/run/faultd/…`).
fn socket_of(daemon: &Daemon) -> String {
    let log = daemon.log_text();
    let path = log
        .lines()
        .find(|l| l.contains("faultd ready"))
        .and_then(|l| l.split("socket=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no socket= in faultd's ready line: {log}"));
    format!("unix:{path}")
}

impl Node {
    /// `NODE_IP=unix:/run/faultd/…sock`.
    pub fn node_addr(&self) -> String {
        format!("{}={}", self.addr, self.socket)
    }

    /// A listener on `port` at this node's address, accepting (and dropping) connections
    /// on a thread for as long as the test runs.
    pub fn listen(&self, port: u16) {
        let addr: SocketAddr = format!("{}:{port}", self.addr).parse().unwrap();
        let listener = self.ns.run(|| TcpListener::bind(addr).unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
    }

    /// Whether a TCP connection from this node to `to:port` is made within `wait`: `Ok`,
    /// or the error (a drop shows as a timeout, never as a refusal).
    pub fn connect(&self, to: &str, port: u16, wait: Duration) -> std::io::Result<()> {
        let addr: SocketAddr = format!("{to}:{port}").parse().unwrap();
        self.ns
            .run(|| TcpStream::connect_timeout(&addr, wait))
            .map(drop)
    }
}
