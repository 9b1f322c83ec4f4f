//! Measurement 6, accuracy: how closely faultd keeps to what a fault asks, and how soon a
//! session's faults go. The system tests assert only what faultd guarantees on any machine
//! (a delayed round trip is never shorter than the latency; a rate never lets more through
//! than the rate and one burst; a session's faults do go); how close the figures come to
//! their targets is measured here, printed beside the target, and never fails the bench.
//!
//! - delay: a 20 ms delay on one direction of a TCP ping-pong on `lo`: the median round trip
//!   added (target 20 ± 2 ms). Needs `sch_fq`; where the kernel has none, not measured.
//! - rate: an 8 Mbit/s rate on a 1.5 MB transfer on `lo`: what `lo` carried per second, as a
//!   share of the rate (paced: 100 ± 10 %; policed: at most 100 % plus one burst).
//! - teardown: a `faultctl drop --hold` killed with SIGKILL: the time until faultd lists no
//!   fault (target ≤ 1 s).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::netns::Netns;

const DELAY_PORT: u16 = 6101;
const RATE_PORT: u16 = 6102;
const TEARDOWN_PORT: u16 = 6103;

/// One figure with its target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figure {
    pub name: String,
    /// The measured value, in words and units ("20.4 ms"), or why it was not measured.
    pub value: String,
    pub target: String,
    /// Whether the value met the target; `None` when not measured.
    pub met: Option<bool>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Accuracy {
    pub figures: Vec<Figure>,
}

/// Measures every figure with the faultd running in `ns` (attached to its `lo`).
pub fn run(ns: &Netns, faultctl: &Path) -> anyhow::Result<Accuracy> {
    let mut figures = vec![delay(ns, faultctl)?, rate(ns, faultctl)?];
    figures.push(teardown(ns, faultctl)?);
    Ok(Accuracy { figures })
}

fn faultctl_ok(ns: &Netns, faultctl: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = ns
        .cmd(faultctl)
        .args(args)
        .output()
        .with_context(|| format!("faultctl {args:?}"))?;
    if !out.status.success() {
        bail!(
            "faultctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn faults(ns: &Netns, faultctl: &Path) -> anyhow::Result<usize> {
    let list: serde_json::Value =
        serde_json::from_str(&faultctl_ok(ns, faultctl, &["list", "--json"])?)?;
    Ok(list.as_array().map_or(0, Vec::len))
}

fn pair(ns: &Netns, port: u16) -> anyhow::Result<(TcpStream, TcpStream)> {
    ns.run(|| -> anyhow::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let client = TcpStream::connect(("127.0.0.1", port))?;
        let (server, _) = listener.accept()?;
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok((client, server))
    })?
}

fn median_rtt(client: &mut TcpStream, server: &mut TcpStream, rounds: usize) -> Duration {
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let mut byte = [0u8; 1];
            let start = Instant::now();
            let _ = client.write_all(b"p");
            let _ = server.read_exact(&mut byte);
            let _ = server.write_all(b"q");
            let _ = client.read_exact(&mut byte);
            start.elapsed()
        })
        .collect();
    samples.sort();
    samples[rounds / 2]
}

fn delay(ns: &Netns, faultctl: &Path) -> anyhow::Result<Figure> {
    let target = "20 ± 2 ms".to_string();
    let name = "delay 20 ms: round trip added (median)".to_string();
    if let Err(why) = test_harness::kernel_fq() {
        return Ok(Figure {
            name,
            value: format!("not measured: {why}"),
            target,
            met: None,
        });
    }
    let (mut client, mut server) = pair(ns, DELAY_PORT)?;
    let base = median_rtt(&mut client, &mut server, 21);
    let port = DELAY_PORT.to_string();
    let id = faultctl_ok(
        ns,
        faultctl,
        &[
            "delay",
            "--port",
            &port,
            "--latency",
            "20ms",
            "--direction",
            "to-port",
        ],
    )?;
    let delayed = median_rtt(&mut client, &mut server, 21);
    faultctl_ok(ns, faultctl, &["rm", &id])?;
    let added = (delayed.as_secs_f64() - base.as_secs_f64()) * 1e3;
    Ok(Figure {
        name,
        value: format!("{added:.2} ms"),
        target,
        met: Some((added - 20.0).abs() <= 2.0),
    })
}

/// Bytes `lo` has sent, read on a thread inside the namespace.
fn lo_tx_bytes(ns: &Netns) -> anyhow::Result<u64> {
    let dev = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/dev"))??;
    let fields: Vec<u64> = dev
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .context("no lo in /proc/net/dev")?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    fields.get(8).copied().context("no tx bytes for lo")
}

fn rate(ns: &Netns, faultctl: &Path) -> anyhow::Result<Figure> {
    const LIMIT: f64 = 1_000_000.0; // 8 Mbit/s in bytes per second
    const TOTAL: usize = 1_500_000;
    let paced = test_harness::kernel_fq().is_ok();
    let port = RATE_PORT.to_string();
    let id = faultctl_ok(ns, faultctl, &["rate", "--port", &port, "--limit", "8mbit"])?;
    let before = lo_tx_bytes(ns)?;
    let start = Instant::now();
    let (client, mut server) = pair(ns, RATE_PORT)?;
    let writer = std::thread::spawn(move || {
        let mut client = client;
        let chunk = [1u8; 65536];
        let _ = client.set_write_timeout(Some(Duration::from_secs(5)));
        let mut sent = 0;
        while sent < TOTAL {
            match client.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
    });
    server.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < TOTAL {
        match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let wire = lo_tx_bytes(ns)? - before;
    let secs = start.elapsed().as_secs_f64();
    drop(server);
    let _ = writer.join();
    faultctl_ok(ns, faultctl, &["rm", &id])?;
    let share = wire as f64 / (LIMIT * secs) * 100.0;
    let (target, met) = if paced {
        (
            "paced: 100 ± 10 %".to_string(),
            (share - 100.0).abs() <= 10.0,
        )
    } else {
        // One burst (128 KiB) over the transfer, as a share of it.
        let burst = 131_072.0 / (LIMIT * secs) * 100.0;
        (
            format!("policed: ≤ 100 % + one burst ({:.0} %)", 100.0 + burst),
            share <= 100.0 + burst,
        )
    };
    Ok(Figure {
        name: format!("rate 8 Mbit/s: carried, share of the rate ({got} B in {secs:.2} s)"),
        value: format!("{share:.1} %"),
        target,
        met: Some(met),
    })
}

fn teardown(ns: &Netns, faultctl: &Path) -> anyhow::Result<Figure> {
    let port = TEARDOWN_PORT.to_string();
    let mut holder = ns
        .cmd(faultctl)
        .args(["drop", "--port", &port, "--hold"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("faultctl drop --hold")?;
    let mut guard = scopeguard(&mut holder);
    let deadline = Instant::now() + Duration::from_secs(30);
    while faults(ns, faultctl)? == 0 {
        if Instant::now() > deadline {
            bail!("faultctl drop --hold added no fault within 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child by its PID.
    unsafe { libc::kill(guard.id() as i32, libc::SIGKILL) };
    let killed = Instant::now();
    let _ = guard.wait();
    while faults(ns, faultctl)? != 0 {
        if killed.elapsed() > Duration::from_secs(30) {
            bail!("the killed faultctl's fault was still there after 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed.elapsed();
    Ok(Figure {
        name: "teardown: a killed client's session faults gone".to_string(),
        value: format!("{:.0} ms", took.as_secs_f64() * 1e3),
        target: "≤ 1000 ms".to_string(),
        met: Some(took <= Duration::from_secs(1)),
    })
}

/// The child, killed (by its PID) and reaped if it is still running when this drops.
fn scopeguard(child: &mut std::process::Child) -> ChildGuard<'_> {
    ChildGuard(child)
}

struct ChildGuard<'a>(&'a mut std::process::Child);

impl ChildGuard<'_> {
    fn id(&self) -> u32 {
        self.0.id()
    }
    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for ChildGuard<'_> {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The figures as a table: name, value, target, and whether it was met.
pub fn table(acc: &Accuracy) -> String {
    let mut s = String::from("| figure | measured | target | met |\n|---|---|---|---|\n");
    for f in &acc.figures {
        let met = match f.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        s.push_str(&format!(
            "| {} | {} | {} | {met} |\n",
            f.name, f.value, f.target
        ));
    }
    s
}
