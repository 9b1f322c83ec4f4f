//! A node of the partition tests as a process of its own: the test binary re-executed (its
//! `partition_node` test, which does nothing unless [`NODE_ENV`] is set) inside the test's
//! namespace with `ip netns exec`, like faultd. A node binds its address on the namespace's
//! `lo`, listens on TCP [`TCP_PORT`] and UDP [`UDP_PORT`], and does what the test asks over
//! its stdin, one command a line, answering on its stdout with what its sockets observed
//! (a connect that timed out, was refused or opened; the bytes a read got; whether a
//! datagram arrived). libtest prints its own lines on that stdout too: answers start with
//! [`ANSWER`].
//!
//! Commands (`WAIT` in milliseconds; messages are single words of ASCII):
//! - `connect NAME ADDR WAIT`: a TCP connect from this node's address to ADDR's listener →
//!   `opened LOCAL_ADDR` | `timed-out` | `refused` | `failed ERROR`; the stream is kept as NAME.
//! - `accept NAME PEER_ADDR WAIT`: the connection the listener accepted from PEER_ADDR (a
//!   socket address) → `accepted` | `none`; kept as NAME.
//! - `write NAME MSG` → `wrote` | `failed ERROR`.
//! - `read NAME LEN WAIT`: reads until LEN bytes, end of stream or WAIT →
//!   `read BYTES` (maybe none) | `eof BYTES` | `failed KIND ERROR` (KIND: Rust's `ErrorKind`).
//! - `state NAME`: the socket's TCP state from TCP_INFO → `state N`.
//! - `close NAME` → `closed`.
//! - `send ADDR MSG`: a datagram to ADDR's UDP socket → `sent`.
//! - `recv MSG WAIT`: whether a datagram MSG arrives within WAIT (others are skipped) →
//!   `delivered FROM` | `none`.
//!
//! A node first answers `ready net:[INODE]`, the namespace it runs in, which the test checks
//! is its own (or `failed binding …`).
//!
//! A node exits when its stdin closes (the test's end of the pipe goes with the test
//! process), and is killed by its PID when its [`NodeProcess`] drops, so a failing test
//! leaves none behind; PR_SET_PDEATHSIG kills it if the test process dies first.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::harness::{read_for, tcp_state};

/// Set to its address in a node process's environment.
pub const NODE_ENV: &str = "FAULTD_TEST_PARTITION_NODE";
/// The test that is a node's entry point (see the module doc).
pub const NODE_TEST: &str = "partition::partition_node";
pub const TCP_PORT: u16 = 7000;
pub const UDP_PORT: u16 = 7001;
/// What a node's answers start with, to tell them from libtest's own lines.
const ANSWER: &str = "node> ";
/// How long past a command's own wait the test waits for its answer before it gives up on
/// the node.
const SLACK: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The node's side.

/// The node's entry point: serves the test over stdin/stdout when this process is a node,
/// and returns at once when it is not (the test binary run as usual).
pub fn serve_if_node() {
    let Ok(addr) = std::env::var(NODE_ENV) else {
        eprintln!("not a node process ({NODE_ENV} is not set): nothing to do");
        return;
    };
    let node = match Node::bind(&addr) {
        Ok(node) => node,
        Err(e) => {
            answer(&format!("failed binding {addr}: {e}"));
            std::process::exit(1);
        }
    };
    // The namespace it runs in, for the test to check it is its own.
    let netns = std::fs::read_link("/proc/self/ns/net").expect("/proc/self/ns/net");
    answer(&format!("ready {}", netns.display()));
    node.serve();
    // The test closed our stdin: it is done with us (the accept thread goes with the exit).
    std::process::exit(0);
}

fn answer(line: &str) {
    let mut out = std::io::stdout().lock();
    // A test that stopped reading has gone: the node's exit follows from its stdin.
    let _ = writeln!(out, "{ANSWER}{line}").and_then(|_| out.flush());
}

/// Connections the listener accepted, by the peer's address.
#[derive(Default)]
struct Accepted {
    streams: Mutex<HashMap<SocketAddr, TcpStream>>,
    arrived: Condvar,
}

impl Accepted {
    fn take(&self, peer: SocketAddr, wait: Duration) -> Option<TcpStream> {
        let deadline = Instant::now() + wait;
        let mut streams = self.streams.lock().unwrap();
        loop {
            if let Some(stream) = streams.remove(&peer) {
                return Some(stream);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            streams = self.arrived.wait_timeout(streams, left).unwrap().0;
        }
    }
}

struct Node {
    addr: String,
    udp: UdpSocket,
    accepted: Arc<Accepted>,
    /// The node's streams, by the test's names for them.
    streams: HashMap<String, TcpStream>,
}

impl Node {
    fn bind(addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind((addr, TCP_PORT))?;
        let udp = UdpSocket::bind((addr, UDP_PORT))?;
        let accepted = Arc::new(Accepted::default());
        let shared = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let Ok(peer) = stream.peer_addr() else {
                    continue;
                };
                shared.streams.lock().unwrap().insert(peer, stream);
                shared.arrived.notify_all();
            }
        });
        Ok(Self {
            addr: addr.to_string(),
            udp,
            accepted,
            streams: HashMap::new(),
        })
    }

    fn serve(mut self) {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let reply = self.command(&words);
            answer(&reply);
        }
    }

    fn command(&mut self, words: &[&str]) -> String {
        let ms = |w: &str| Duration::from_millis(w.parse().expect("a wait in ms"));
        match *words {
            ["connect", name, to, wait] => self.connect(name, to, ms(wait)),
            ["accept", name, peer, wait] => {
                match self.accepted.take(peer.parse().expect("a peer"), ms(wait)) {
                    Some(stream) => {
                        self.streams.insert(name.to_string(), stream);
                        "accepted".into()
                    }
                    None => "none".into(),
                }
            }
            ["write", name, msg] => match self.stream(name).write_all(msg.as_bytes()) {
                Ok(()) => "wrote".into(),
                Err(e) => format!("failed {e}"),
            },
            ["read", name, len, wait] => {
                read(self.stream(name), len.parse().expect("a length"), ms(wait))
            }
            ["state", name] => format!("state {}", tcp_state(self.stream(name))),
            ["close", name] => {
                self.streams.remove(name);
                "closed".into()
            }
            ["send", to, msg] => {
                self.udp
                    .send_to(msg.as_bytes(), (to, UDP_PORT))
                    .expect("send_to");
                "sent".into()
            }
            ["recv", msg, wait] => self.recv(msg, ms(wait)),
            _ => panic!("not a command: {words:?}"),
        }
    }

    fn stream(&mut self, name: &str) -> &mut TcpStream {
        self.streams
            .get_mut(name)
            .unwrap_or_else(|| panic!("no stream {name}"))
    }

    fn connect(&mut self, name: &str, to: &str, wait: Duration) -> String {
        let opened = || -> std::io::Result<TcpStream> {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            let src: SocketAddr = format!("{}:0", self.addr).parse().unwrap();
            socket.bind(&src.into())?;
            let dst: SocketAddr = format!("{to}:{TCP_PORT}").parse().unwrap();
            socket.connect_timeout(&dst.into(), wait)?;
            Ok(socket.into())
        };
        match opened() {
            Ok(stream) => {
                let local = stream.local_addr().unwrap();
                self.streams.insert(name.to_string(), stream);
                format!("opened {local}")
            }
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                "timed-out".into()
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => "refused".into(),
            Err(e) => format!("failed {e}"),
        }
    }

    fn recv(&mut self, msg: &str, wait: Duration) -> String {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 64];
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return "none".into();
            };
            self.udp
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.udp.recv_from(&mut buf) {
                // A late datagram of an earlier check: skip it.
                Ok((n, _)) if &buf[..n] != msg.as_bytes() => continue,
                Ok((_, from)) => return format!("delivered {}", from.ip()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return "none".into();
                }
                Err(e) => panic!("recv on {}: {e}", self.addr),
            }
        }
    }
}

/// Reads until `len` bytes arrived, the peer closed, or `wait` passed; the answer says which.
fn read(stream: &mut TcpStream, len: usize, wait: Duration) -> String {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < len {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        match read_for(stream, left.max(Duration::from_millis(1))) {
            Ok(None) => break,
            Ok(Some(chunk)) if chunk.is_empty() => {
                return format!("eof {}", String::from_utf8_lossy(&got));
            }
            Ok(Some(chunk)) => got.extend(chunk),
            Err(e) => return format!("failed {:?} {e}", e.kind()),
        }
    }
    format!("read {}", String::from_utf8_lossy(&got))
}

// ---------------------------------------------------------------------------------------
// The test's side.

/// What a node's connect observed.
#[derive(Debug, PartialEq, Eq)]
pub enum Connect {
    /// Opened, from this local address.
    Opened(SocketAddr),
    TimedOut,
    Refused,
    Failed(String),
}

/// What a node's read observed.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// These bytes (maybe none) within the wait.
    Bytes(Vec<u8>),
    /// These bytes, then the end of the stream.
    Eof(Vec<u8>),
    Failed(String),
}

/// A node process, driven by the test; killed by its PID when dropped.
pub struct NodeProcess {
    pub addr: String,
    // Dropped first: closing the node's stdin is its cue to exit.
    stdin: ChildStdin,
    answers: Receiver<String>,
    process: test_harness::Process,
}

impl NodeProcess {
    /// Starts a node on `addr` inside `ns` and waits until it listens.
    pub fn start(ns: &test_harness::Netns, addr: &str) -> Self {
        let exe = std::env::current_exe().expect("the test binary's path");
        let mut cmd = ns.cmd(exe);
        cmd.args([NODE_TEST, "--exact", "--ignored", "--nocapture", "--quiet"])
            .env(NODE_ENV, addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // Killed if the test's thread goes without dropping us (the test process
                // killed); `ip netns exec` execs the node, which keeps it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut process = test_harness::Process::spawn(&mut cmd).expect("spawning a node");
        process.grace = Duration::from_secs(1);
        let stdin = process.child.stdin.take().unwrap();
        let stdout = process.child.stdout.take().unwrap();
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(answer) = line.strip_prefix(ANSWER)
                    && tx.send(answer.to_string()).is_err()
                {
                    break;
                }
            }
        });
        let mut node = Self {
            addr: addr.to_string(),
            stdin,
            answers,
            process,
        };
        let ready = node.answer("start", Duration::ZERO);
        // /proc/self/ns/net reads `net:[INODE]`, the inode of the namespace's file.
        let netns = std::fs::metadata(format!("/var/run/netns/{}", ns.name))
            .expect("the namespace's file")
            .ino();
        assert_eq!(
            ready,
            format!("ready net:[{netns}]"),
            "node {addr} runs in the test's namespace {}",
            ns.name
        );
        node
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `command`, returns the node's answer (waiting for at most `wait` + [`SLACK`]).
    fn ask(&mut self, command: &str, wait: Duration) -> String {
        writeln!(self.stdin, "{command}")
            .and_then(|_| self.stdin.flush())
            .unwrap_or_else(|e| panic!("node {}: sending {command:?}: {e}", self.addr));
        self.answer(command, wait)
    }

    fn answer(&mut self, command: &str, wait: Duration) -> String {
        match self.answers.recv_timeout(wait + SLACK) {
            Ok(answer) => answer,
            Err(RecvTimeoutError::Timeout) => {
                panic!("node {} did not answer {command:?} in time", self.addr)
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("node {} exited before answering {command:?}", self.addr)
            }
        }
    }

    /// Connects to `to`'s listener, keeping the stream as `name`.
    pub fn connect(&mut self, name: &str, to: &str, wait: Duration) -> Connect {
        let answer = self.ask(&format!("connect {name} {to} {}", wait.as_millis()), wait);
        match answer.split_once(' ') {
            Some(("opened", local)) => Connect::Opened(local.parse().unwrap()),
            Some(("failed", e)) => Connect::Failed(e.to_string()),
            _ if answer == "timed-out" => Connect::TimedOut,
            _ if answer == "refused" => Connect::Refused,
            _ => panic!("node {}: connect answered {answer:?}", self.addr),
        }
    }

    /// Whether the listener accepted a connection from `peer` within `wait`; kept as `name`.
    pub fn accept(&mut self, name: &str, peer: SocketAddr, wait: Duration) -> bool {
        let answer = self.ask(&format!("accept {name} {peer} {}", wait.as_millis()), wait);
        answer == "accepted"
    }

    pub fn write(&mut self, name: &str, msg: &str) {
        assert_one_word(msg);
        let answer = self.ask(&format!("write {name} {msg}"), Duration::ZERO);
        assert_eq!(answer, "wrote", "node {}: write {name}", self.addr);
    }

    /// What a read of up to `len` bytes on `name` got within `wait`.
    pub fn read(&mut self, name: &str, len: usize, wait: Duration) -> Read {
        let answer = self.ask(&format!("read {name} {len} {}", wait.as_millis()), wait);
        let (kind, bytes) = answer.split_once(' ').unwrap_or((&answer, ""));
        match kind {
            "read" => Read::Bytes(bytes.as_bytes().to_vec()),
            "eof" => Read::Eof(bytes.as_bytes().to_vec()),
            "failed" => Read::Failed(bytes.to_string()),
            _ => panic!("node {}: read answered {answer:?}", self.addr),
        }
    }

    /// The TCP state of `name` (1 = ESTABLISHED, …).
    pub fn tcp_state(&mut self, name: &str) -> u8 {
        let answer = self.ask(&format!("state {name}"), Duration::ZERO);
        match answer.strip_prefix("state ") {
            Some(state) => state.parse().unwrap(),
            None => panic!("node {}: state answered {answer:?}", self.addr),
        }
    }

    pub fn close(&mut self, name: &str) {
        self.ask(&format!("close {name}"), Duration::ZERO);
    }

    /// Sends the datagram `msg` to `to`'s UDP socket.
    pub fn send(&mut self, to: &str, msg: &str) {
        assert_one_word(msg);
        let answer = self.ask(&format!("send {to} {msg}"), Duration::ZERO);
        assert_eq!(answer, "sent", "node {}", self.addr);
    }

    /// The source address of the datagram `msg` if it arrives within `wait`.
    pub fn recv(&mut self, msg: &str, wait: Duration) -> Option<String> {
        let answer = self.ask(&format!("recv {msg} {}", wait.as_millis()), wait);
        match answer.split_once(' ') {
            Some(("delivered", from)) => Some(from.to_string()),
            _ if answer == "none" => None,
            _ => panic!("node {}: recv answered {answer:?}", self.addr),
        }
    }
}

fn assert_one_word(msg: &str) {
    assert!(
        !msg.is_empty() && msg.bytes().all(|b| b.is_ascii_graphic()),
        "a node's message is one word of ASCII: {msg:?}"
    );
}
