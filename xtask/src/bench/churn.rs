//! Measurement 4, churn: faults added and removed on port A as fast as the API takes them
//! while four keep-alive HTTP/1.1 clients hit a server on port B. Counts the changes per
//! second, and B's failed requests and reconnects (a client whose connection broke and that
//! had to open another one, from another source port).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

use super::api::{self, proto};
use super::netns::Netns;

pub const CLIENTS: usize = 4;
/// Concurrent add/remove loops on port A (each holds at most one fault: port A never has
/// more than the 8 a port can carry).
const CHURNERS: usize = 4;

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChurnResult {
    pub seconds: f64,
    /// Fault changes (adds plus removes) that faultd accepted.
    pub changes: u64,
    pub changes_per_sec: f64,
    /// Requests on port B answered in full.
    pub requests: u64,
    /// Requests on port B that failed (error, timeout or a wrong answer).
    pub failed: u64,
    /// Connections the clients opened beyond their first one.
    pub reconnects: u64,
    /// Source ports the clients used beyond their first one.
    pub changed_source_ports: u64,
}

pub fn run(
    ns: &Netns,
    port_a: u16,
    port_b: u16,
    duration: Duration,
) -> anyhow::Result<ChurnResult> {
    ns.block_on(|| async move {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port_b))
            .await
            .with_context(|| format!("binding port {port_b}"))?;
        let server = tokio::spawn(serve(listener));
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let (stop, requests, failed) = (stop.clone(), requests.clone(), failed.clone());
            clients.push(tokio::spawn(client(port_b, stop, requests, failed)));
        }
        let client_api = api::connect().await?;
        // The clients are connected and busy before the churn starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = Instant::now();
        let changes = Arc::new(AtomicU64::new(0));
        let mut churners = tokio::task::JoinSet::new();
        for _ in 0..CHURNERS {
            let (mut c, changes) = (client_api.clone(), changes.clone());
            let spec = api::drop_spec(port_a, proto::Protocol::Tcp);
            churners.spawn(async move {
                while start.elapsed() < duration {
                    let id = api::add(&mut c, spec.clone()).await?;
                    changes.fetch_add(1, Ordering::Relaxed);
                    api::remove(&mut c, id).await?;
                    changes.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = churners.join_next().await {
            done??;
        }
        let seconds = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let mut ports = Vec::new();
        for c in clients {
            ports.push(c.await?);
        }
        server.abort();
        let changes = changes.load(Ordering::Relaxed);
        let reconnects: u64 = ports.iter().map(|p| p.connects.saturating_sub(1)).sum();
        let changed: u64 = ports
            .iter()
            .map(|p| p.ports.len().saturating_sub(1) as u64)
            .sum();
        Ok(ChurnResult {
            seconds,
            changes,
            changes_per_sec: changes as f64 / seconds,
            requests: requests.load(Ordering::Relaxed),
            failed: failed.load(Ordering::Relaxed),
            reconnects,
            changed_source_ports: changed,
        })
    })
}

/// A minimal HTTP/1.1 server: every request is answered `200 ok`, connections kept alive.
pub(super) async fn serve(listener: TcpListener) {
    while let Ok((conn, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = conn.set_nodelay(true);
            let mut conn = BufReader::new(conn);
            let mut line = String::new();
            loop {
                // Headers up to the blank line; the clients send no body.
                loop {
                    line.clear();
                    match conn.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let answer =
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok";
                if conn.get_mut().write_all(answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

pub(super) struct ClientReport {
    pub(super) connects: u64,
    pub(super) ports: BTreeSet<u16>,
}

/// Keep-alive requests on one connection, as fast as they are answered; a request that fails
/// is counted and the connection replaced.
pub(super) async fn client(
    port: u16,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> ClientReport {
    let mut report = ClientReport {
        connects: 0,
        ports: BTreeSet::new(),
    };
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
            match tokio::time::timeout(Duration::from_secs(2), connect).await {
                Ok(Ok(c)) => {
                    report.connects += 1;
                    if let Ok(local) = c.local_addr() {
                        report.ports.insert(local.port());
                    }
                    let _ = c.set_nodelay(true);
                    conn = Some(BufReader::new(c));
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        match tokio::time::timeout(Duration::from_secs(2), request(c)).await {
            Ok(Ok(())) => {
                requests.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
    report
}

pub(super) async fn request(conn: &mut BufReader<TcpStream>) -> anyhow::Result<()> {
    conn.get_mut()
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        .await?;
    let mut line = String::new();
    conn.read_line(&mut line).await?;
    anyhow::ensure!(line.starts_with("HTTP/1.1 200"), "bad status line {line:?}");
    let mut length = 0usize;
    loop {
        line.clear();
        anyhow::ensure!(conn.read_line(&mut line).await? > 0, "connection closed");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse()?;
        }
    }
    let mut body = vec![0u8; length];
    conn.read_exact(&mut body).await?;
    anyhow::ensure!(body == b"ok", "bad body");
    Ok(())
}
