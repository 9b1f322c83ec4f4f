//! Network namespaces of a test's (or the bench's) own, and veth pairs between them.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

use crate::run;

/// A network namespace with its `lo` up, deleted on drop (and with it every interface,
/// qdisc, socket and TC link that lives only there).
///
/// Named `<prefix><tag>-<pid>-<n>`: the prefix says whose it is (`fdt-` tests, `fdb-` the
/// bench), the PID which process made it, so [`Netns::remove_stale`] can tell leftovers
/// of a process that is gone from namespaces still in use.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// Kept open: entering by fd cannot race with another process reusing the name.
    file: File,
}

impl Netns {
    pub fn new(prefix: &str, tag: &str) -> anyhow::Result<Self> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let path = format!("/var/run/netns/{name}");
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
                return Err(e).with_context(|| format!("opening {path}"));
            }
        };
        // From here on Drop deletes it.
        let ns = Self { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Deletes the namespaces named with `prefix` whose creating process is gone (killed
    /// before its guards ran). Namespaces of live processes are left alone.
    pub fn remove_stale(prefix: &str) {
        let Ok(out) = run(Command::new("ip").args(["netns", "list"])) else {
            return;
        };
        for name in out.lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            // <tag>-<pid>-<n>
            let mut parts = rest.rsplitn(3, '-');
            let (_, Some(pid)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing namespace {name}, left by process {pid} which is gone");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    /// Moves the calling thread into the namespace: sockets it creates, and threads and
    /// processes it starts, from then on live there.
    pub fn enter(&self) -> anyhow::Result<()> {
        setns(&self.file, &self.name)
    }

    /// Moves the calling thread into the namespace named `name` (for a thread that
    /// outlives the borrow of its [`Netns`]).
    pub fn enter_named(name: &str) -> anyhow::Result<()> {
        let path = format!("/var/run/netns/{name}");
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        setns(&file, name)
    }

    /// Runs `f` on a thread inside the namespace and returns what it returns; sockets
    /// created there stay in the namespace. A panic in `f` is resumed on the caller's
    /// thread, with its own message. Fails only if the thread cannot enter the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// [`Netns::run`] for a fallible `f`: its error or the namespace's.
    pub fn try_run<T: Send>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send,
    ) -> anyhow::Result<T> {
        self.run(f)?
    }

    /// Runs the future that `make` returns on a tokio runtime inside the namespace.
    pub fn block_on<T: Send, F: Future<Output = anyhow::Result<T>>>(
        &self,
        make: impl FnOnce() -> F + Send,
    ) -> anyhow::Result<T> {
        self.try_run(|| {
            // Built here, so that its worker threads start inside the namespace too.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("tokio runtime")?;
            runtime.block_on(make())
        })
    }

    /// `ip netns exec NS program`: a command run inside the namespace (ip execs it, so
    /// the child's PID is the program's).
    pub fn cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `ip -n NS ARGS…`, which must succeed; its stdout.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Sets the range of ephemeral ports (`net.ipv4.ip_local_port_range`, which IPv6 uses
    /// too), e.g. to keep clients' source ports off the ports that carry faults.
    pub fn set_ephemeral_ports(&self, first: u16, last: u16) -> anyhow::Result<()> {
        self.try_run(|| {
            std::fs::write(
                "/proc/sys/net/ipv4/ip_local_port_range",
                format!("{first} {last}"),
            )
            .context("setting the namespace's ephemeral port range")
        })
    }
}

impl AsRef<Netns> for Netns {
    fn as_ref(&self) -> &Netns {
        self
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

fn setns(file: &File, name: &str) -> anyhow::Result<()> {
    // SAFETY: a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Addresses of a [`VethPair`]: 198.18.0.0/15 (benchmarking) and fd00::/8 (unique local),
/// never routed beyond the pair.
pub const SERVER_V4: &str = "198.18.0.1";
pub const CLIENT_V4: &str = "198.18.0.2";
pub const SERVER_V6: &str = "fd00:fa17::1";
pub const CLIENT_V6: &str = "fd00:fa17::2";
/// The veth end in the server namespace: where faultd attaches.
pub const SERVER_IF: &str = "fd0";
/// The veth end in the client namespace.
pub const CLIENT_IF: &str = "fd1";

/// Joins two namespaces with a veth pair: [`SERVER_IF`] in `server` with [`SERVER_V4`]/30
/// and [`SERVER_V6`]/64, [`CLIENT_IF`] in `client` with the client addresses; both up, no
/// duplicate address detection. The pair goes with the namespaces.
pub fn join_veth(server: &Netns, client: &Netns) -> anyhow::Result<()> {
    server.ip(&[
        "link",
        "add",
        SERVER_IF,
        "type",
        "veth",
        "peer",
        "name",
        CLIENT_IF,
        "netns",
        &client.name,
    ])?;
    for (ns, ifname, v4, v6) in [
        (server, SERVER_IF, SERVER_V4, SERVER_V6),
        (client, CLIENT_IF, CLIENT_V4, CLIENT_V6),
    ] {
        ns.ip(&["addr", "add", &format!("{v4}/30"), "dev", ifname])?;
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// Two namespaces joined by a veth pair ([`join_veth`]). `N` is [`Netns`] or a type that
/// wraps one (the system tests' own, with their faultctl helpers).
#[derive(Debug)]
pub struct VethPair<N = Netns> {
    pub server: N,
    pub client: N,
}

impl<N: AsRef<Netns>> VethPair<N> {
    pub fn join(server: N, client: N) -> anyhow::Result<Self> {
        join_veth(server.as_ref(), client.as_ref())?;
        Ok(Self { server, client })
    }
}

impl VethPair {
    /// Namespaces `<prefix><tag>s-…` (server) and `<prefix><tag>c-…` (client), joined.
    pub fn new(prefix: &str, tag: &str) -> anyhow::Result<Self> {
        let server = Netns::new(prefix, &format!("{tag}s"))?;
        let client = Netns::new(prefix, &format!("{tag}c"))?;
        Self::join(server, client)
    }
}
