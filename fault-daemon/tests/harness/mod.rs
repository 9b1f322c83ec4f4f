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

/// Fails the test with one line saying to run as root unless it is root: a test that needs
/// root either runs or fails, never passes without having run.
pub use test_harness::require_root;

/// Records that the calling test skips, printing `SKIP <test>: <reason>` (counted and
/// checked against the kernel's allowed skips by `cargo xtask test`); then return.
pub use test_harness::skip;

/// Whether the kernel has the `fq` qdisc, probed in a throwaway namespace (`Err`: why not).
pub use test_harness::kernel_fq;

/// For tests that only check what faultd does with fq: `false`, after recording the skip,
/// where the kernel has none.
pub fn need_fq() -> bool {
    match kernel_fq() {
        Ok(()) => true,
        Err(why) => {
            skip(&why);
            false
        }
    }
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

/// The wait `READY_ENV` asks for; 120 s when it is not set: a deadline, not a figure. An
/// idle machine loads the programs in about a second, but the verifier shares the CPUs:
/// with a VM and builds beside the tests (load 6-7 on two cores) a debug faultd took 12 s,
/// and more than 30 s when a dozen started at once.
pub fn ready_wait_from(value: Option<&str>) -> Duration {
    match value.map(str::trim) {
        None | Some("") => Duration::from_secs(120),
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

/// How long a test waits for something that must happen: a deadline for the wait, never a
/// figure the test asserts (how soon it happens is `cargo xtask bench`'s to measure).
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `done` every 10 ms until it holds; fails the test, naming `what`, when it still
/// does not after [`WAIT`]. Returns how long it took (to print as a measurement).
#[track_caller]
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let since = Instant::now();
    while !done() {
        assert!(since.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    since.elapsed()
}

/// When a client made one connection attempt: it began no earlier than `.0` and was over
/// (answered, refused or closed) no later than `.1`. Whatever recorded the attempt (the
/// kernel's SYN, a listener's accept) did so in between, however slow the machine.
pub type Span = (Instant, Instant);

/// The range, in ms, each gap between consecutive recorded attempts must fall in, by
/// causality alone.
pub fn gap_brackets(spans: &[Span]) -> Vec<(f64, f64)> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    spans
        .windows(2)
        .map(|w| {
            (
                ms(w[1].0.saturating_duration_since(w[0].1)),
                ms(w[1].1 - w[0].0),
            )
        })
        .collect()
}

/// The gaps a recorder reported (`who`) are the client's: one per pair of attempts, each
/// within its bracket (±1 ms for rounding). How close each came to the client's schedule is
/// printed, never asserted.
#[track_caller]
pub fn assert_gaps_recorded(who: &str, gaps_ms: &[f64], spans: &[Span], scheduled: &[u64]) {
    let brackets = gap_brackets(spans);
    eprintln!("MEASURE {who} gaps {gaps_ms:?} ms, scheduled {scheduled:?} ms");
    assert_eq!(
        gaps_ms.len(),
        brackets.len(),
        "{who}: gaps {gaps_ms:?} for {} attempts",
        spans.len()
    );
    for (got, (lo, hi)) in gaps_ms.iter().zip(&brackets) {
        assert!(
            *got >= lo - 1.0 && *got <= hi + 1.0,
            "{who}: gaps {gaps_ms:?} ms; the client's attempts allow {brackets:?}"
        );
    }
}

/// The verdict `policy` must give the client's attempts where their timing decides it:
/// `Some(passed)` when every gap's bracket lies wholly inside its window, or one wholly
/// outside; `None` when a bracket straddles a window's edge (a machine slow enough to put
/// the answer in doubt), and then the verdict must not be asserted.
pub fn expected_backoff_verdict(
    spans: &[Span],
    policy: &faultd_api::backoff::Policy,
) -> Option<bool> {
    use faultd_api::backoff::{GapVerdict, check};
    let brackets = gap_brackets(spans);
    let judged = |pick: fn(&(f64, f64)) -> f64| {
        let mut t = 0.0;
        let mut times = vec![Duration::ZERO];
        for b in &brackets {
            t += pick(b);
            times.push(Duration::from_secs_f64(t / 1e3));
        }
        check(&times, policy)
    };
    let (low, high) = (judged(|b| b.0), judged(|b| b.1));
    let mut all_ok = true;
    for (l, h) in low.gaps.iter().zip(&high.gaps) {
        match (l.verdict, h.verdict) {
            (GapVerdict::Ok, GapVerdict::Ok) => {}
            (a, b) if a == b => return Some(false),
            _ => all_ok = false,
        }
    }
    all_ok.then_some(true)
}

/// TCP state of a socket, from TCP_INFO (1 = ESTABLISHED, 7 = CLOSE, …).
pub fn tcp_state(fd: &impl AsRawFd) -> u8 {
    tcp_info(fd).0[0]
}

/// The socket's TCP_INFO bytes and how many of them the kernel filled.
fn tcp_info(fd: &impl AsRawFd) -> ([u8; 232], usize) {
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
    (info, len as usize)
}

pub const TCP_ESTABLISHED: u8 = 1;

/// Data segments a TCP socket has received (TCP_INFO `tcpi_data_segs_in`): the kernel's
/// count, whatever the application's reads merged.
pub fn tcp_data_segs_in(fd: &impl AsRawFd) -> u32 {
    let (info, len) = tcp_info(fd);
    assert!(
        len >= 156,
        "TCP_INFO of {len} bytes has no tcpi_data_segs_in"
    );
    // struct tcp_info: tcpi_data_segs_in is the u32 at byte 152 (Linux >= 4.6).
    u32::from_ne_bytes(info[152..156].try_into().unwrap())
}

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
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"ping", ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 16];
    receiver.recv(&mut buf).is_ok()
}
