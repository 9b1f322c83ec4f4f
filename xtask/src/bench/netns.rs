//! The bench's own network namespaces and faultd processes, removed on drop even when a
//! measurement fails. Processes are stopped by their PID only.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Every namespace the bench makes is named `fdb-<tag>-<pid of xtask>`.
const PREFIX: &str = "fdb-";

/// Ephemeral ports in the bench's namespaces: above every port that carries a fault, so
/// that no client's source port is one of them.
pub const EPHEMERAL_PORTS: &str = "61000 65000";

pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace of the bench's own, with its `lo` up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let name = format!("{PREFIX}{tag}-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        ns.run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", EPHEMERAL_PORTS)
                .context("setting the namespace's ephemeral port range")
        })?;
        Ok(ns)
    }

    /// Deletes the namespaces left by a bench whose process is gone (e.g. killed).
    pub fn remove_stale() {
        let Ok(out) = run(Command::new("ip").args(["netns", "list"])) else {
            return;
        };
        for name in out.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("xtask: removing namespace {name} left by an earlier bench");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    /// Moves the calling thread into the namespace; sockets it creates and threads and
    /// processes it starts from then on live there.
    pub fn enter(&self) -> anyhow::Result<()> {
        enter(&self.name)
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send) -> anyhow::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                f()
            })
            .join()
            .unwrap_or_else(|_| bail!("a bench thread in {} panicked", self.name))
        })
    }

    /// Runs the future that `make` returns on a tokio runtime inside the namespace.
    pub fn block_on<T: Send, F: Future<Output = anyhow::Result<T>>>(
        &self,
        make: impl FnOnce() -> F + Send,
    ) -> anyhow::Result<T> {
        self.run(|| {
            // Built here, so its worker threads start inside the namespace too.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("tokio runtime")?;
            runtime.block_on(make())
        })
    }

    /// `ip netns exec NS program`.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

/// Moves the calling thread into the namespace named `name`.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let path = format!("/var/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// faultd attached to the `lo` of a namespace (`ip netns exec NS faultd --iface lo`, which
/// execs faultd: the child's PID is faultd's); stopped by PID on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn start(ns: &Netns, faultd: &Path, log: PathBuf) -> anyhow::Result<Self> {
        let child = ns
            .exec(faultd)
            // The sweep installs up to 100 000 faults: all the kernel maps hold.
            .args(["--iface", "lo", "--max-faults", "131072"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .with_context(|| format!("starting {}", faultd.display()))?;
        let mut daemon = Self { child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&daemon.log).unwrap_or_default();
            if text.contains("faultd ready") {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!(
                    "faultd exited ({status}) before it was ready: {}",
                    text.trim()
                );
            }
            if Instant::now() > deadline {
                bail!("faultd not ready after 60 s: {}", text.trim());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        // With 100 000 faults installed, faultd removes them all before it exits.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `kernel.bpf_stats_enabled` is set to 1 while this lives, and restored after.
pub struct BpfStats {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_string();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "xtask: could not restore {BPF_STATS} to {}: {e}",
                self.previous
            );
        }
    }
}

/// The fds of `pid` that are BPF objects of `kind` ("bpf-prog", "bpf-map"), with their
/// fdinfo text.
pub fn bpf_fdinfo(pid: u32, kind: &str) -> anyhow::Result<Vec<(u32, String)>> {
    let want = format!("anon_inode:{kind}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != want {
            continue;
        }
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) {
            found.push((fd, info));
        }
    }
    Ok(found)
}

/// A `key: value` number from an fdinfo text.
pub fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}
