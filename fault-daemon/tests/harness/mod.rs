//! System-test harness: network namespaces, veth pairs, real faultd and faultctl processes.
//!
//! The namespaces, veth pairs, faultd command, readiness wait and stop by PID are the
//! `test-harness` crate's, shared with the bench; the types here wrap them with what the
//! tests need: the binaries cargo built for this test run (`CARGO_BIN_EXE_*`, which only
//! integration tests see), faultctl helpers, and panics instead of errors. Everything a
//! test creates is owned by a guard whose Drop removes it, so a failing test cleans up too.
//! Processes are stopped by their PID only.

// Each test binary uses a part of it.
#![allow(dead_code, unused_imports)]

mod scenario;
pub use scenario::*;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

pub use test_harness::{CLIENT_IF, CLIENT_V4, CLIENT_V6, SERVER_IF, SERVER_V4, SERVER_V6};

pub const FAULTD: &str = env!("CARGO_BIN_EXE_faultd");

/// faultctl, a crate of its own: cargo gives tests only their own package's binaries, so it
/// is looked for beside faultd, where `cargo build -p faultctl` (same profile and target
/// directory) puts it. `cargo xtask test` builds it first; [`require_faultctl`] says so when
/// it is missing.
pub const FAULTCTL: &str = beside_faultd::PATH;

mod beside_faultd {
    const DIR: &str = dir_of(super::FAULTD);
    const LEN: usize = DIR.len() + "faultctl".len();
    const BYTES: [u8; LEN] = concat(DIR.as_bytes(), b"faultctl");
    pub const PATH: &str = match std::str::from_utf8(&BYTES) {
        Ok(path) => path,
        Err(_) => panic!("faultd's path is not UTF-8"),
    };

    /// The directory part of `path`, with its trailing `/`.
    const fn dir_of(path: &str) -> &str {
        let bytes = path.as_bytes();
        let mut end = bytes.len();
        while end > 0 && bytes[end - 1] != b'/' {
            end -= 1;
        }
        match std::str::from_utf8(bytes.split_at(end).0) {
            Ok(dir) => dir,
            Err(_) => panic!("faultd's path is not UTF-8"),
        }
    }

    const fn concat<const N: usize>(a: &[u8], b: &[u8]) -> [u8; N] {
        let mut out = [0u8; N];
        let mut i = 0;
        while i < a.len() {
            out[i] = a[i];
            i += 1;
        }
        while i < N {
            out[i] = b[i - a.len()];
            i += 1;
        }
        out
    }
}

/// Panics with what to do when faultctl was not built beside faultd.
pub fn require_faultctl() {
    assert!(
        Path::new(FAULTCTL).is_file(),
        "{FAULTCTL} is missing: faultctl is its own crate, which `cargo test -p fault-daemon` \
         does not build; run `cargo build -p faultctl` first (`cargo xtask test` does)"
    );
}

/// Every namespace a test makes is named `fdt-<tag>-<pid>-<n>`.
const PREFIX: &str = "fdt-";

/// The privileged suites need root; say so loudly instead of failing obscurely.
pub fn require_root() -> bool {
    if !test_harness::is_root() {
        eprintln!("SKIP: not root; this test loads eBPF programs and creates network namespaces");
        return false;
    }
    true
}

fn run_ok(cmd: &mut Command) {
    if let Err(e) = test_harness::run(cmd) {
        panic!("{e:#}");
    }
}

/// A network namespace of the test's own, deleted on drop ([`test_harness::Netns`], whose
/// `name` and other methods are reachable through it).
pub struct Netns(test_harness::Netns);

impl Deref for Netns {
    type Target = test_harness::Netns;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl AsRef<test_harness::Netns> for Netns {
    fn as_ref(&self) -> &test_harness::Netns {
        &self.0
    }
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        Self(test_harness::Netns::new(PREFIX, tag).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Runs `f` on a thread inside the namespace. Sockets created there stay in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.run(f).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        self.0.cmd(program)
    }

    /// `ip -n NS ARGS…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        if let Err(e) = self.0.ip(args) {
            panic!("{e:#}");
        }
    }

    pub fn ip_output(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs faultctl inside the namespace against the daemon's default address.
    pub fn faultctl(&self, args: &[&str]) -> Output {
        require_faultctl();
        self.cmd(FAULTCTL).args(args).output().expect("faultctl")
    }

    /// Runs faultctl and returns its stdout, asserting success.
    pub fn faultctl_ok(&self, args: &[&str]) -> String {
        let out = self.faultctl(args);
        assert!(
            out.status.success(),
            "faultctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts faultctl inside the namespace without waiting for it (`events --follow`,
    /// say), its stdout piped; stopped by its PID when the guard drops.
    pub fn faultctl_spawn(&self, args: &[&str]) -> test_harness::Process {
        require_faultctl();
        test_harness::Process::spawn(
            self.cmd(FAULTCTL)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped()),
        )
        .expect("faultctl")
    }

    pub fn faults_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.faultctl_ok(&["list", "--json"])).unwrap()
    }
}

/// Two namespaces joined by a veth pair, addressed from 198.18.0.0/15 and fd00::/8
/// ([`test_harness::join_veth`]); faultd attaches to [`SERVER_IF`].
pub struct VethPair {
    pub server: Netns,
    pub client: Netns,
}

impl VethPair {
    pub fn new(tag: &str) -> Self {
        let server = Netns::new(&format!("{tag}s"));
        let client = Netns::new(&format!("{tag}c"));
        if let Err(e) = test_harness::join_veth(&server, &client) {
            panic!("{e:#}");
        }
        Self { server, client }
    }
}

/// Names how long the tests wait for faultd to be ready, in seconds: the VM sets it, where
/// the emulated CPU loads and verifies the programs 10-30 times slower.
pub const READY_ENV: &str = "FAULTD_TEST_READY_SECS";

pub fn ready_wait() -> Duration {
    ready_wait_from(std::env::var(READY_ENV).ok().as_deref())
}

/// The wait `READY_ENV` asks for; 30 s when it is not set.
pub fn ready_wait_from(value: Option<&str>) -> Duration {
    match value.map(str::trim) {
        None | Some("") => Duration::from_secs(30),
        Some(v) => Duration::from_secs(
            v.parse()
                .unwrap_or_else(|_| panic!("{READY_ENV}={v:?} is not a number of seconds")),
        ),
    }
}

/// A faultd process inside a namespace; stopped (by PID) on drop, its log removed. Made by
/// [`Daemon::start`], or from a faultd a test spawned its own way (`Daemon { child, log }`,
/// then [`Daemon::wait_ready`]).
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(ns: &Netns, ifaces: &[&str]) -> Self {
        Self::try_start(ns, ifaces, &[]).expect("faultd did not become ready")
    }

    /// Starts faultd with extra arguments; `Err(log)` when it exits before it is ready.
    pub fn try_start(ns: &Netns, ifaces: &[&str], extra: &[&str]) -> Result<Self, String> {
        // Tests drive the daemon they start with faultctl: fail early and clearly without it.
        require_faultctl();
        let log =
            std::env::temp_dir().join(format!("{}-faultd-{}.log", ns.name, std::process::id()));
        let mut opts = test_harness::FaultdOptions::new(ifaces, &log);
        opts.args = extra.iter().map(|s| s.to_string()).collect();
        let child = opts
            .command(ns, Path::new(FAULTD))
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn faultd");
        let mut daemon = Self { child, log };
        daemon.wait_ready(ready_wait())?;
        Ok(daemon)
    }

    /// Waits until faultd logs "faultd ready"; `Err(log)` when it exits first or `within`
    /// passes.
    pub fn wait_ready(&mut self, within: Duration) -> Result<(), String> {
        match test_harness::wait_for_log(&mut self.child, &self.log, "faultd ready", within) {
            Ok(_) => Ok(()),
            Err(test_harness::NotReady::Exited { log, .. }) => Err(log),
            Err(test_harness::NotReady::TimedOut { log, .. }) => {
                Err(format!("timed out; log: {log}"))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to exit; returns its exit code.
    pub fn stop(&mut self, signal: i32) -> Option<i32> {
        test_harness::send_signal(&mut self.child, signal);
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        test_harness::stop_child(&mut self.child, Duration::from_secs(5));
        // A SIGKILLed faultd leaves its socket: the test's cleanup removes it.
        test_harness::remove_left_socket(&self.log);
        let _ = fs::remove_file(&self.log);
    }
}

/// TCP state of a socket, from TCP_INFO (1 = ESTABLISHED, 7 = CLOSE, …).
pub fn tcp_state(fd: &impl AsRawFd) -> u8 {
    let mut info = [0u8; 232];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: buffer and length are valid; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info[0]
}

pub const TCP_ESTABLISHED: u8 = 1;

/// A counter from /proc/net/snmp of the calling thread's namespace, e.g. ("Tcp", "OutRsts").
pub fn snmp(group: &str, name: &str) -> u64 {
    let text = fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{group}:")))
        .collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = header
        .iter()
        .position(|h| *h == name)
        .unwrap_or_else(|| panic!("no {group} {name}"));
    values[i].parse().unwrap()
}

/// Reads what arrives within `wait`: `Ok(None)` on timeout, `Ok(Some(bytes))` otherwise
/// (empty bytes = the peer closed), or the socket error (e.g. ECONNRESET).
pub fn read_for(
    stream: &mut std::net::TcpStream,
    wait: Duration,
) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    stream.set_read_timeout(Some(wait))?;
    let mut buf = vec![0u8; 65536];
    match stream.read(&mut buf) {
        Ok(n) => Ok(Some(buf[..n].to_vec())),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Reads until `want` bytes arrived, the peer closed, or `within` passed.
pub fn read_exact_within(
    stream: &mut std::net::TcpStream,
    want: usize,
    within: Duration,
) -> std::io::Result<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        match read_for(stream, Duration::from_millis(100))? {
            None => continue,
            Some(chunk) if chunk.is_empty() => break,
            Some(chunk) => got.extend(chunk),
        }
    }
    Ok(got)
}

/// Returns the first line of a command's stderr, to check errors are one clear line.
pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Lines of a reader, for logs.
pub fn lines(file: &PathBuf) -> Vec<String> {
    BufReader::new(File::open(file).unwrap())
        .lines()
        .map_while(Result::ok)
        .collect()
}

/// A follow stream whose client never reads: its runtime is never driven again, so it
/// neither reads nor acknowledges anything.
pub fn stuck_event_stream() -> impl Send {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let mut client = faultd::proto::fault_service_client::FaultServiceClient::connect(
            "http://127.0.0.1:7447",
        )
        .await
        .unwrap();
        client
            .watch_events(faultd::proto::WatchEventsRequest {
                follow: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    });
    (rt, stream)
}

/// Whether a datagram sent to `port` on loopback arrives (calling thread's namespace).
pub fn udp_delivers(port: u16) -> bool {
    let receiver = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"ping", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 16];
    receiver.recv(&mut buf).is_ok()
}
