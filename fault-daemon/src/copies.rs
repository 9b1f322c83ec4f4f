//! The duplicate fault's pending copies (`COPIES` in fault-ebpf/src/copies.rs): a copy is
//! recognised by a token only it carries, and its entry is deleted by the copy itself or by
//! the program that sent it. A copy lost after the kernel queued it (dropped by another
//! program ahead of faultd's, an interface going down) would leave its entry forever in a
//! table that must not evict on its own: a thread sweeps entries older than
//! `PENDING_COPY_TTL_NS`, once a second, for as long as the [`Sweeper`] lives.
//!
//! A late copy whose entry was swept is taken for an original: it meets the faults once
//! more. Two seconds is a thousand times what a copy takes through a receive backlog.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::{HashMap, MapData};
use fault_common::{PENDING_COPY_TTL_NS, PendingCopy};

pub type CopiesMap = HashMap<MapData, u64, PendingCopy>;

const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The pending copies, and the thread that sweeps the lost ones. Dropping it stops the
/// thread.
pub struct Sweeper {
    map: Arc<Mutex<CopiesMap>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    pub fn start(map: CopiesMap) -> std::io::Result<Self> {
        let map = Arc::new(Mutex::new(map));
        let (stop, stopped) = mpsc::channel::<()>();
        let swept = map.clone();
        let thread = std::thread::Builder::new()
            .name("faultd-copies".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(SWEEP_EVERY) {
                    let mut map = swept.lock().unwrap_or_else(|p| p.into_inner());
                    sweep(&mut map, monotonic_ns());
                }
            })?;
        Ok(Self {
            map,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The copies sent and not seen yet: (token, entry).
    pub fn pending(&self) -> Vec<(u64, PendingCopy)> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().filter_map(Result::ok).collect()
    }

    /// Deletes the entries of copies sent before `now_ns - PENDING_COPY_TTL_NS` (CLOCK_MONOTONIC,
    /// as the programs' bpf_ktime_get_ns); returns how many.
    pub fn sweep_older(&self, now_ns: u64) -> usize {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        sweep(&mut map, now_ns)
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sweep(map: &mut CopiesMap, now_ns: u64) -> usize {
    let stale: Vec<u64> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, copy)| now_ns.saturating_sub(copy.sent_ns) > PENDING_COPY_TTL_NS)
        .map(|(token, _)| token)
        .collect();
    // An entry the copy took meanwhile is simply gone: not an error.
    stale
        .iter()
        .filter(|token| map.remove(token).is_ok())
        .count()
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
