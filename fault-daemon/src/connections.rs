//! Bounds the API's connections (`faultd --max-connections`).
//!
//! A connection costs a task and buffers whether or not it ever sends a request, so
//! faultd holds at most `max` at once. When they are all taken, a new connection takes the
//! place of the oldest one that has not sent a single byte (a port scanner, a client stuck
//! before its first request): a flood of idle connections cannot keep a real client out.
//! When every connection has spoken, the new one is closed at once.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Context;
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::server::Connected;
use tracing::warn;

use crate::wrapped::{Tap, Wrapped};

/// Default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The open connections, by the order they came in.
pub struct ConnectionLimit {
    max: usize,
    open: Mutex<BTreeMap<u64, Arc<ConnState>>>,
    next_id: AtomicU64,
    refused: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct ConnState {
    /// Set once a byte came in.
    spoken: AtomicBool,
    /// Set when a newer connection took this one's place: reads and writes fail.
    evicted: AtomicBool,
    /// The task reading the connection, woken to see that it was evicted.
    reader: AtomicWaker,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            last_warning: Mutex::default(),
        })
    }

    fn open(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<ConnState>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.open().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Connections closed at once because every place was taken by one that had spoken.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The accepted connections of `incoming` that fit, each holding its place until
    /// dropped.
    pub fn limit<S, IO>(
        self: &Arc<Self>,
        incoming: S,
    ) -> impl Stream<Item = io::Result<Limited<IO>>> + use<S, IO>
    where
        S: Stream<Item = io::Result<IO>>,
    {
        let limit = self.clone();
        incoming.filter_map(move |accepted| match accepted {
            Ok(io) => limit.admit(io).map(Ok),
            Err(e) => Some(Err(e)),
        })
    }

    /// Gives `io` a place, evicting the oldest silent connection if needed; `None` (and
    /// `io` closed) when there is no place.
    pub fn admit<IO>(self: &Arc<Self>, io: IO) -> Option<Limited<IO>> {
        let mut open = self.open();
        if open.len() >= self.max {
            let silent = open
                .iter()
                .find(|(_, c)| !c.spoken.load(Ordering::Relaxed))
                .map(|(id, _)| *id);
            match silent.and_then(|id| open.remove(&id)) {
                Some(evicted) => {
                    evicted.evicted.store(true, Ordering::Relaxed);
                    evicted.reader.wake();
                }
                None => {
                    drop(open);
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    self.warn_full();
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::default());
        open.insert(id, state.clone());
        Some(Limited::new(
            io,
            Place {
                state,
                id,
                limit: self.clone(),
            },
        ))
    }

    /// At most one warning every 10 s, with the count so far.
    fn warn_full(&self) {
        let mut last = self.last_warning.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            warn!(
                max = self.max,
                refused = self.refused(),
                "connection closed at once: every place is taken by an active client \
                 (faultd --max-connections)"
            );
        }
    }
}

/// A connection holding one place of its [`ConnectionLimit`] until dropped.
pub type Limited<IO> = Wrapped<IO, Place>;

/// One place of a [`ConnectionLimit`], given back when dropped.
pub struct Place {
    state: Arc<ConnState>,
    id: u64,
    limit: Arc<ConnectionLimit>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.limit.open().remove(&self.id);
    }
}

fn evicted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed to make room for a new connection (faultd --max-connections)",
    )
}

/// Reads and writes fail once a newer connection took the place; the first byte read
/// marks the connection as one that has spoken (never evicted).
impl Tap for Place {
    fn before_read(&self, cx: &mut Context<'_>) -> io::Result<()> {
        self.state.reader.register(cx.waker());
        self.before_write()
    }

    fn after_read(&self) {
        self.state.spoken.store(true, Ordering::Relaxed);
    }

    fn before_write(&self) -> io::Result<()> {
        if self.state.evicted.load(Ordering::Relaxed) {
            return Err(evicted());
        }
        Ok(())
    }
}

impl<IO: Connected> Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream, duplex};

    fn pair() -> (DuplexStream, DuplexStream) {
        duplex(64)
    }

    #[tokio::test]
    async fn a_full_limit_evicts_the_oldest_silent_connection() {
        let limit = ConnectionLimit::new(3);
        let (mut spoke_peer, spoke) = pair();
        let mut spoke = limit.admit(spoke).unwrap();
        let (_p1, silent_old) = pair();
        let mut silent_old = limit.admit(silent_old).unwrap();
        let (_p2, silent_new) = pair();
        let _silent_new = limit.admit(silent_new).unwrap();
        spoke_peer.write_all(b"PRI").await.unwrap();
        let mut buf = [0u8; 3];
        spoke.read_exact(&mut buf).await.unwrap();
        assert_eq!(limit.len(), 3);

        let (_p3, newcomer) = pair();
        let _newcomer = limit.admit(newcomer).expect("no place made");
        assert_eq!(limit.len(), 3);
        let err = silent_old.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        // The client that spoke keeps its connection.
        spoke_peer.write_all(b"ok!").await.unwrap();
        spoke.read_exact(&mut buf).await.unwrap();
        drop(silent_old);
        assert_eq!(limit.len(), 3, "the evicted one no longer counts");
    }

    #[tokio::test]
    async fn when_every_connection_has_spoken_a_new_one_is_refused() {
        let limit = ConnectionLimit::new(1);
        let (mut peer, io) = pair();
        let mut held = limit.admit(io).unwrap();
        peer.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        held.read_exact(&mut buf).await.unwrap();
        let (_p, io) = pair();
        assert!(limit.admit(io).is_none());
        assert_eq!(limit.refused(), 1);
        drop(held);
        assert!(limit.is_empty());
        let (_p, io) = pair();
        assert!(
            limit.admit(io).is_some(),
            "a closed connection frees its place"
        );
    }
}
