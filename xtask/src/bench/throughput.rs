//! Measurement 2, throughput of a loopback TCP transfer on a port without faults, and the
//! alternatives to compare faultd with: iptables DROP rules on other ports, and a userspace
//! TCP proxy.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::netns::{Netns, run};

const CHUNK: usize = 128 * 1024;
/// No socket operation of the bench waits longer than this: a bug in faultd (a packet of the
/// unfaulted port dropped) fails the bench instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts one connection within [`IO_TIMEOUT`]; the stream is blocking, with timeouts.
pub fn accept_within(listener: &TcpListener) -> anyhow::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false)?;
                with_timeouts(&conn)?;
                return Ok(conn);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    bail!("no connection came within {IO_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Connects within [`IO_TIMEOUT`]; the stream has read and write timeouts.
pub fn connect_within(port: u16) -> anyhow::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&(Ipv4Addr::LOCALHOST, port).into(), IO_TIMEOUT)
        .with_context(|| format!("connecting to port {port}"))?;
    with_timeouts(&conn)?;
    Ok(conn)
}

fn with_timeouts(conn: &TcpStream) -> std::io::Result<()> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))
}

/// Bytes received over seconds, added up over several transfers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub bytes: u64,
    pub secs: f64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.bytes += other.bytes;
        self.secs += other.secs;
    }

    pub fn gbps(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs / 1e9
    }
}

/// Sends as much as it can for `duration` from a client to a server listening on
/// `listen_port` (connecting to `connect_port`: the same port, or a proxy's) inside `ns`, and
/// returns what the server received, from its first byte to the end.
pub fn transfer(
    ns: &Netns,
    listen_port: u16,
    connect_port: u16,
    duration: Duration,
) -> anyhow::Result<Tally> {
    ns.try_run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, listen_port))
            .with_context(|| format!("binding port {listen_port}"))?;
        std::thread::scope(|s| {
            let server = s.spawn(|| -> anyhow::Result<(u64, Duration)> {
                let mut conn = accept_within(&listener)?;
                let mut buf = vec![0u8; CHUNK];
                let mut received = 0u64;
                let mut start = None;
                loop {
                    let n = conn.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    start.get_or_insert_with(Instant::now);
                    received += n as u64;
                }
                let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
                Ok((received, elapsed))
            });
            let mut conn = connect_within(connect_port)?;
            let buf = vec![0x5au8; CHUNK];
            let deadline = Instant::now() + duration;
            while Instant::now() < deadline {
                conn.write_all(&buf)?;
            }
            conn.shutdown(Shutdown::Write)?;
            // Until the server (or the proxy) closes its side: everything was delivered.
            let mut rest = [0u8; 64];
            while conn.read(&mut rest)? > 0 {}
            let (received, elapsed) = server
                .join()
                .unwrap_or_else(|_| bail!("transfer server panicked"))?;
            if received == 0 || elapsed.is_zero() {
                bail!("nothing was transferred on port {connect_port}");
            }
            Ok(Tally {
                bytes: received,
                secs: elapsed.as_secs_f64(),
            })
        })
    })
}

/// A pass-through TCP proxy inside a namespace: a plain tokio copy in both directions.
/// Stopped on drop.
pub struct Proxy {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(ns: &Netns, listen_port: u16, upstream_port: u16) -> anyhow::Result<Self> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        let ns_name = ns.name.clone();
        let thread = std::thread::spawn(move || {
            let setup = || -> anyhow::Result<tokio::runtime::Runtime> {
                Netns::enter_named(&ns_name)?;
                Ok(tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?)
            };
            let runtime = match setup() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener =
                    match tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, listen_port)).await {
                        Ok(l) => {
                            let _ = ready_tx.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.into()));
                            return;
                        }
                    };
                let serve = async {
                    loop {
                        let Ok((mut client, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let Ok(mut upstream) = tokio::net::TcpStream::connect((
                                Ipv4Addr::LOCALHOST,
                                upstream_port,
                            ))
                            .await
                            else {
                                return;
                            };
                            let _ = client.set_nodelay(true);
                            let _ = upstream.set_nodelay(true);
                            let _ = tokio::io::copy_bidirectional_with_sizes(
                                &mut client,
                                &mut upstream,
                                64 * 1024,
                                64 * 1024,
                            )
                            .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = stopped => {}
                }
            });
        });
        ready_rx
            .recv()
            .context("the proxy thread ended before it was ready")??;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One `-A INPUT -p tcp --dport P -j DROP` rule for each port, loaded at once with
/// iptables-restore inside the namespace (where they vanish with it).
pub fn install_iptables(ns: &Netns, ports: &[u16]) -> anyhow::Result<()> {
    let mut rules = String::from("*filter\n");
    for port in ports {
        rules.push_str(&format!("-A INPUT -p tcp --dport {port} -j DROP\n"));
    }
    rules.push_str("COMMIT\n");
    let mut child = ns
        .cmd("iptables-restore")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting iptables-restore (is iptables installed? `cargo xtask setup`)")?;
    child
        .stdin
        .take()
        .context("iptables-restore stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "iptables-restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let listed = run(ns.cmd("iptables").args(["-S", "INPUT"]))?;
    let count = listed.lines().filter(|l| l.starts_with("-A INPUT")).count();
    if count != ports.len() {
        bail!(
            "iptables holds {count} rules in INPUT, expected {}",
            ports.len()
        );
    }
    Ok(())
}
