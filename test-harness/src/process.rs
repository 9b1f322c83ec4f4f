//! Processes a test or the bench started (faultd, faultctl, servers): stopped by their PID
//! on drop, never by name.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Netns;

/// Sends `signal` to `child` by its PID, unless it has already exited (and been reaped).
pub fn send_signal(child: &mut Child, signal: i32) {
    if child.try_wait().ok().flatten().is_none() {
        // SAFETY: signalling our own child by its PID; it has not been reaped, so the PID
        // is still its own.
        unsafe { libc::kill(child.id() as i32, signal) };
    }
}

/// Stops `child`: SIGTERM, up to `grace` for it to exit, then SIGKILL; reaps it.
pub fn stop_child(child: &mut Child, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    send_signal(child, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Why a process did not become ready.
#[derive(Debug)]
pub enum NotReady {
    /// It exited first; its log.
    Exited {
        status: std::process::ExitStatus,
        log: String,
    },
    /// The wait ran out; its log so far.
    TimedOut { within: Duration, log: String },
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Exited { status, log } => {
                write!(f, "exited ({status}) before it was ready: {}", log.trim())
            }
            NotReady::TimedOut { within, log } => {
                write!(f, "not ready after {within:?}: {}", log.trim())
            }
        }
    }
}

impl std::error::Error for NotReady {}

/// Waits until the file `log` (where `child` writes) has a line containing `needle`;
/// returns that line. Fails as soon as the child exits, or after `within`.
pub fn wait_for_log(
    child: &mut Child,
    log: &Path,
    needle: &str,
    within: Duration,
) -> Result<String, NotReady> {
    let deadline = Instant::now() + within;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return Ok(line.to_string());
        }
        // An exit is checked after the read, and the log read again: what it wrote just
        // before exiting counts.
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(log).unwrap_or_default();
            return match log.lines().find(|l| l.contains(needle)) {
                Some(line) => Ok(line.to_string()),
                None => Err(NotReady::Exited { status, log }),
            };
        }
        if Instant::now() > deadline {
            return Err(NotReady::TimedOut { within, log: text });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process, stopped on drop ([`stop_child`]): e.g. `faultctl events --follow`.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    /// How long a SIGTERM may take before SIGKILL, on drop.
    pub grace: Duration,
}

impl Process {
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Self> {
        Ok(Self {
            child: cmd.spawn()?,
            grace: Duration::from_secs(5),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (if it is still running).
    pub fn signal(&mut self, sig: i32) {
        send_signal(&mut self.child, sig);
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        stop_child(&mut self.child, self.grace);
    }
}

/// How to start faultd.
#[derive(Clone, Debug)]
pub struct FaultdOptions {
    /// `--iface` for each.
    pub ifaces: Vec<String>,
    /// Further arguments.
    pub args: Vec<String>,
    /// Where its stderr (the log, at RUST_LOG=info) goes.
    pub log: PathBuf,
    /// Whether the log is removed when the guard drops.
    pub remove_log: bool,
    /// How long it may take to log "faultd ready".
    pub ready_within: Duration,
    /// How long a SIGTERM may take before SIGKILL, on drop (faultd removes every fault
    /// before it exits: with 100 000 of them that takes a while).
    pub stop_within: Duration,
}

impl FaultdOptions {
    /// faultd on `ifaces`, its log at `log` (kept), 30 s to be ready, 5 s to stop.
    pub fn new(ifaces: &[&str], log: impl Into<PathBuf>) -> Self {
        Self {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            args: Vec::new(),
            log: log.into(),
            remove_log: false,
            ready_within: Duration::from_secs(120),
            stop_within: Duration::from_secs(5),
        }
    }
}

impl FaultdOptions {
    /// `ip netns exec NS faultd --iface … ARGS…` at RUST_LOG=info without colours, stdin
    /// and stdout null; the caller sends stderr to [`FaultdOptions::log`] and spawns it
    /// (and may change it first: environment, user).
    pub fn command(&self, ns: &Netns, exe: &Path) -> Command {
        let mut cmd = ns.cmd(exe);
        for iface in &self.ifaces {
            cmd.args(["--iface", iface]);
        }
        cmd.args(&self.args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }
}

/// A faultd process inside a namespace (`ip netns exec NS faultd …`, which execs faultd:
/// the child's PID is faultd's), ready when started; stopped by PID on drop.
#[derive(Debug)]
pub struct Faultd {
    pub child: Child,
    pub log: PathBuf,
    remove_log: bool,
    stop_within: Duration,
}

impl Faultd {
    /// Starts the faultd at `exe` in `ns` and waits until it logs "faultd ready".
    pub fn start(ns: &Netns, exe: &Path, opts: &FaultdOptions) -> anyhow::Result<Self> {
        Ok(Self::try_start(ns, exe, opts)??)
    }

    /// [`Faultd::start`], telling apart a faultd that was started but never became ready
    /// (the `Ok(Err(..))`, with its log) from one that could not be started at all.
    pub fn try_start(
        ns: &Netns,
        exe: &Path,
        opts: &FaultdOptions,
    ) -> anyhow::Result<Result<Self, NotReady>> {
        use anyhow::Context as _;
        let log_file =
            File::create(&opts.log).with_context(|| format!("creating {}", opts.log.display()))?;
        let child = opts
            .command(ns, exe)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        // The guard exists from here on: whatever happens next, drop stops the process.
        let mut faultd = Self {
            child,
            log: opts.log.clone(),
            remove_log: opts.remove_log,
            stop_within: opts.stop_within,
        };
        let ready = wait_for_log(
            &mut faultd.child,
            &opts.log,
            "faultd ready",
            opts.ready_within,
        );
        Ok(ready.map(|_| faultd))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` and waits for the process to exit; its exit code (None when a signal
    /// ended it).
    pub fn stop(&mut self, sig: i32) -> Option<i32> {
        send_signal(&mut self.child, sig);
        self.child.wait().ok().and_then(|s| s.code())
    }
}

impl Drop for Faultd {
    fn drop(&mut self) {
        stop_child(&mut self.child, self.stop_within);
        remove_left_socket(&self.log);
        if self.remove_log {
            let _ = fs::remove_file(&self.log);
        }
    }
}

/// The API socket a faultd announced in its log (`faultd ready … socket=PATH`).
pub fn announced_socket(log_text: &str) -> Option<PathBuf> {
    let ready = log_text.lines().find(|l| l.contains("faultd ready"))?;
    let path = ready
        .split_whitespace()
        .find_map(|word| word.strip_prefix("socket="))?;
    Some(PathBuf::from(path.trim_matches('"')))
}

/// Removes the socket file a stopped faultd (its log at `log`) left behind, as one killed
/// by SIGKILL does; not while something listens there (another daemon took the path).
pub fn remove_left_socket(log: &Path) {
    let Some(path) = fs::read_to_string(log)
        .ok()
        .as_deref()
        .and_then(announced_socket)
    else {
        return;
    };
    let refused = std::os::unix::net::UnixStream::connect(&path)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    if refused {
        let _ = fs::remove_file(&path);
    }
}
