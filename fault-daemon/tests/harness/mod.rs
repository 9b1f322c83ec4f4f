//! System-test harness: network namespaces, veth pairs, real faultd and faultctl processes.
//!
//! Everything a test creates is owned by a guard whose Drop removes it, so a failing test
//! cleans up too. Processes are stopped by their PID only.

#![allow(dead_code)]

mod scenario;
pub use scenario::*;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const FAULTD: &str = env!("CARGO_BIN_EXE_faultd");
pub const FAULTCTL: &str = env!("CARGO_BIN_EXE_faultctl");

/// The privileged suites need root; say so loudly instead of failing obscurely.
pub fn require_root() -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: not root; this test loads eBPF programs and creates network namespaces");
        return false;
    }
    true
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace of the test's own, deleted on drop.
pub struct Netns {
    pub name: String,
    file: File,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fdt-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run_ok(Command::new("ip").args(["netns", "add", &name]));
        let file = File::open(format!("/var/run/netns/{name}")).expect("netns file");
        let ns = Self { name, file };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns
    }

    /// Runs `f` on a thread inside the namespace. Sockets created there stay in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.file.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: a valid namespace fd; affects only this thread.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// `ip -n NS ARGS…`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        run_ok(Command::new("ip").arg("-n").arg(&self.name).args(args));
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

    pub fn faults_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.faultctl_ok(&["list", "--json"])).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair, addressed from 198.18.0.0/15 and fd00::/8.
pub struct VethPair {
    pub server: Netns,
    pub client: Netns,
}

pub const SERVER_V4: &str = "198.18.0.1";
pub const CLIENT_V4: &str = "198.18.0.2";
pub const SERVER_V6: &str = "fd00:fa17::1";
pub const CLIENT_V6: &str = "fd00:fa17::2";
/// The veth end in the server namespace: where faultd attaches.
pub const SERVER_IF: &str = "fd0";

impl VethPair {
    pub fn new(tag: &str) -> Self {
        let server = Netns::new(&format!("{tag}s"));
        let client = Netns::new(&format!("{tag}c"));
        server.ip(&[
            "link",
            "add",
            SERVER_IF,
            "type",
            "veth",
            "peer",
            "name",
            "fd1",
            "netns",
            &client.name,
        ]);
        for (ns, ifname, v4, v6) in [
            (&server, SERVER_IF, SERVER_V4, SERVER_V6),
            (&client, "fd1", CLIENT_V4, CLIENT_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/30"), "dev", ifname]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
            ns.ip(&["link", "set", ifname, "up"]);
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

/// A faultd process inside a namespace; stopped (by PID) on drop.
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
        let log =
            std::env::temp_dir().join(format!("{}-faultd-{}.log", ns.name, std::process::id()));
        let mut cmd = ns.cmd(FAULTD);
        for i in ifaces {
            cmd.args(["--iface", i]);
        }
        cmd.args(extra);
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn faultd");
        let mut daemon = Self { child, log };
        let deadline = Instant::now() + ready_wait();
        while Instant::now() < deadline {
            if daemon.log_text().contains("faultd ready") {
                return Ok(daemon);
            }
            if let Some(_status) = daemon.child.try_wait().unwrap() {
                return Err(daemon.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!("timed out; log: {}", daemon.log_text()))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to exit; returns its exit code.
    pub fn stop(&mut self, signal: i32) -> Option<i32> {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.pid(), signal) };
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // SAFETY: signalling our own child by PID.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
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
