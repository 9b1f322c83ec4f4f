//! Kernel events (first hit on a flow, RST sent, SYN refused or seen) on their way to
//! subscribers: read from the programs' ring buffer, kept in a bounded history, broadcast.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use aya::maps::{MapData, RingBuf};
use fault_common::{Event, PEER_V4, PROTO_UDP};
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;
use tracing::warn;

use crate::proto;

/// How many past events a new subscriber is given.
pub const HISTORY: usize = 10_000;

pub struct EventHub {
    history: Mutex<VecDeque<proto::Event>>,
    live: broadcast::Sender<proto::Event>,
    /// Wall clock minus CLOCK_MONOTONIC, to put kernel timestamps on the wall clock.
    wall_offset_ns: i64,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            history: Mutex::new(VecDeque::with_capacity(HISTORY)),
            live: broadcast::channel(4096).0,
            wall_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        }
    }
}

impl EventHub {
    pub fn publish(&self, event: proto::Event) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if history.len() == HISTORY {
            history.pop_front();
        }
        history.push_back(event.clone());
        // Sent under the lock so that a subscriber sees each event exactly once.
        let _ = self.live.send(event);
    }

    /// The history so far and a receiver for what comes after it, with no gap between.
    pub fn subscribe(&self) -> (Vec<proto::Event>, broadcast::Receiver<proto::Event>) {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        (history.iter().cloned().collect(), self.live.subscribe())
    }

    /// Converts a kernel record into the API's event.
    pub fn convert(&self, e: &Event) -> proto::Event {
        let addr = |words: &[u32; 4]| -> IpAddr {
            if e.family == PEER_V4 {
                IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
            } else {
                let mut b = [0u8; 16];
                for (i, w) in words.iter().enumerate() {
                    b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(b))
            }
        };
        proto::Event {
            kind: e.kind as i32,
            fault_id: e.fault_id,
            kernel_ns: e.ktime_ns,
            unix_ns: e.ktime_ns as i64 + self.wall_offset_ns,
            protocol: if e.protocol == PROTO_UDP {
                proto::Protocol::Udp
            } else {
                proto::Protocol::Tcp
            } as i32,
            src: addr(&e.src_addr).to_string(),
            src_port: e.src_port.into(),
            dst: addr(&e.dst_addr).to_string(),
            dst_port: e.dst_port.into(),
        }
    }

    /// Reads the programs' ring buffer until the task is dropped.
    pub async fn pump(self: Arc<Self>, ring: RingBuf<MapData>) {
        // SAFETY: the AsyncFd owns the ring buffer, so its fd outlives the registration.
        let mut fd = match unsafe { AsyncFd::register(ring) } {
            Ok(fd) => fd,
            Err(e) => {
                warn!("events unavailable: {e}");
                return;
            }
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                if item.len() >= size_of::<Event>() {
                    // SAFETY: the programs write whole `Event`s; read_unaligned copes with
                    // the ring's 8-byte alignment.
                    let event = unsafe { (item.as_ptr() as *const Event).read_unaligned() };
                    self.publish(self.convert(&event));
                }
            }
            guard.clear_ready();
        }
    }
}

fn clock_ns(clock: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}
