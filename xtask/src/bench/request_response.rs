//! Request/response: 1-byte TCP ping-pong transactions per second on a port without faults.
//! Bulk transfers hide a per-packet cost in 64 KiB GSO packets; here every transaction is
//! two small packets, each crossing faultd's programs twice on `lo`, so what a packet costs
//! shows in the rate.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::netns::Netns;
use super::packet_cost::echo_messages;
use super::throughput::connect_within;

/// Transactions per second of one connection on `port` in `ns`, over `duration`: the client
/// writes one byte, the server echoes it, the client reads it back (TCP_NODELAY both ends).
pub fn transactions_per_sec(ns: &Netns, port: u16, duration: Duration) -> anyhow::Result<f64> {
    ns.try_run(|| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .with_context(|| format!("binding port {port}"))?;
        std::thread::scope(|s| {
            let server = s.spawn(|| echo_messages(&listener, 1));
            let mut conn = connect_within(port)?;
            conn.set_nodelay(true)?;
            let mut byte = [7u8; 1];
            // One unmeasured exchange: the connection's first packets take slow paths.
            conn.write_all(&byte)?;
            conn.read_exact(&mut byte)?;
            let start = Instant::now();
            let mut done = 0u64;
            while start.elapsed() < duration {
                for _ in 0..64 {
                    conn.write_all(&byte)?;
                    conn.read_exact(&mut byte)?;
                }
                done += 64;
            }
            let rate = done as f64 / start.elapsed().as_secs_f64();
            drop(conn);
            server
                .join()
                .unwrap_or_else(|_| bail!("request/response server panicked"))?;
            Ok(rate)
        })
    })
}
