//! Measurement 3, fault-apply latency: from the AddFault call to the first packet the fault
//! affects (the kernel timestamp of the fault's first-hit event, on the same CLOCK_MONOTONIC),
//! the AddFault round trip, and the wall time of a whole `faultctl drop`.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::api::{self, proto};
use super::netns::Netns;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ApplyResult {
    /// AddFault call → first packet dropped, per add, in ns.
    pub apply_ns: Vec<u64>,
    /// AddFault round trip, per add, in ns.
    pub rpc_ns: Vec<u64>,
    /// RemoveFault round trip, per remove, in ns.
    pub remove_ns: Vec<u64>,
    /// Adds whose first-hit event did not come within a second.
    pub missing: usize,
    /// Mean gap between the packets of the probe stream: the resolution of `apply_ns`.
    pub probe_interval_ns: u64,
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; CLOCK_MONOTONIC is what bpf_ktime_get_ns() reads.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `adds` times: add a UDP drop fault on `port` while a probe stream of datagrams flows to
/// it, wait for the fault's first-hit event, remove the fault.
pub fn run(ns: &Netns, port: u16, adds: usize) -> anyhow::Result<ApplyResult> {
    ns.block_on(|| async move {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        // Started from a thread inside the namespace, so they run there too.
        let receiver = std::thread::spawn({
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, port))
                .with_context(|| format!("binding UDP port {port}"))?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            let stop = stop.clone();
            move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.recv(&mut buf);
                }
            }
        });
        let sender = std::thread::spawn({
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
            socket.connect((Ipv4Addr::LOCALHOST, port))?;
            let (stop, sent) = (stop.clone(), sent.clone());
            move || {
                // SAFETY: prctl on this thread: sleep with a 1 µs slack instead of 50 µs.
                unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000u64) };
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.send(&[1u8; 32]);
                    sent.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(20));
                }
                start.elapsed()
            }
        });
        let outcome = measure(port, adds).await;
        stop.store(true, Ordering::Relaxed);
        let elapsed = sender
            .join()
            .unwrap_or_else(|_| panic!("probe sender panicked"));
        let _ = receiver.join();
        let mut result = outcome?;
        let packets = sent.load(Ordering::Relaxed).max(1);
        result.probe_interval_ns = (elapsed.as_nanos() / packets as u128) as u64;
        Ok(result)
    })
}

async fn measure(port: u16, adds: usize) -> anyhow::Result<ApplyResult> {
    let mut client = api::connect().await?;
    let mut stream = client
        .watch_events(proto::WatchEventsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .context("WatchEvents")?
        .into_inner();
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        while let Ok(Some(event)) = stream.message().await {
            if event.kind == proto::EventKind::FirstHit as i32 && tx.send(event).is_err() {
                break;
            }
        }
    });
    let mut result = ApplyResult::default();
    let spec = api::drop_spec(port, proto::Protocol::Udp);
    for _ in 0..adds {
        let t0 = monotonic_ns();
        let id = api::add(&mut client, spec.clone()).await?;
        result.rpc_ns.push(monotonic_ns() - t0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let hit = loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) if event.fault_id == id => break Some(event.kernel_ns),
                Ok(Some(_)) => continue,
                Ok(None) => bail!("the event stream ended"),
                Err(_) => break None,
            }
        };
        match hit {
            Some(kernel_ns) => result.apply_ns.push(kernel_ns.saturating_sub(t0)),
            None => result.missing += 1,
        }
        let t1 = monotonic_ns();
        api::remove(&mut client, id).await?;
        result.remove_ns.push(monotonic_ns() - t1);
    }
    pump.abort();
    Ok(result)
}

/// Wall time of `faultctl drop --port PORT` (process start to exit, connection included),
/// `reps` times after one unmeasured run; each fault is removed again with `faultctl rm`.
pub fn faultctl(ns: &Netns, faultctl: &Path, port: u16, reps: usize) -> anyhow::Result<Vec<u64>> {
    ns.try_run(|| {
        let mut walls = Vec::with_capacity(reps);
        for i in 0..=reps {
            let start = Instant::now();
            // Started from a thread inside the namespace: faultctl runs there too.
            let out = Command::new(faultctl)
                .args(["drop", "--port", &port.to_string()])
                .env_remove("FAULTD_ADDR")
                .output()
                .context("running faultctl drop")?;
            let wall = start.elapsed();
            if !out.status.success() {
                bail!(
                    "faultctl drop failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            if i > 0 {
                walls.push(wall.as_nanos() as u64);
            }
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let out = Command::new(faultctl)
                .args(["rm", &id])
                .env_remove("FAULTD_ADDR")
                .output()
                .context("running faultctl rm")?;
            if !out.status.success() {
                bail!(
                    "faultctl rm {id} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(walls)
    })
}
