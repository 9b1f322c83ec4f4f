//! Client sessions: faults bound to a client's lifetime (`OpenSession`).
//!
//! A session lives as long as its gRPC response stream. The stream holds an [`OnDrop`]
//! guard; tonic drops the stream when the client cancels it, closes its channel, exits, or
//! is killed (the kernel closes its socket), and the guard then ends the session, which
//! removes its faults. This keeps a crashed test run from leaving a blackhole behind.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::Stream;

use crate::faults::{FaultError, Owner};

/// Who opened a session, for the log.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionInfo {
    pub name: String,
    pub owner: Owner,
}

/// The open sessions. Ids are never reused, so a fault can never be bound to a session
/// that ended and was replaced by a stranger's.
#[derive(Default)]
pub struct Sessions {
    last_id: u64,
    open: HashMap<u64, SessionInfo>,
}

impl Sessions {
    pub fn open(&mut self, name: String, owner: Owner) -> u64 {
        self.last_id += 1;
        self.open.insert(self.last_id, SessionInfo { name, owner });
        self.last_id
    }

    /// The session a new fault is bound to: `None` for 0 (no session), the id when it is
    /// open, and FAILED_PRECONDITION naming `session_id` when it is not.
    pub fn bind(&self, session_id: u64) -> Result<Option<u64>, FaultError> {
        match session_id {
            0 => Ok(None),
            id if self.open.contains_key(&id) => Ok(Some(id)),
            id if id <= self.last_id => Err(FaultError::Refused(format!(
                "session_id: session {id} has ended; open a new one (OpenSession)"
            ))),
            id => Err(FaultError::Refused(format!(
                "session_id: no session {id}; open one first (OpenSession)"
            ))),
        }
    }

    /// Ends a session; returns who held it, `None` when it was not open.
    pub fn close(&mut self, id: u64) -> Option<SessionInfo> {
        self.open.remove(&id)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// Runs a closure when dropped: what ends a session when tonic drops its stream.
pub struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub fn new(f: F) -> Self {
        Self(Some(f))
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// A session's response stream: its first item, then nothing, for as long as the client
/// keeps it or until `ended` completes (faultd stopping: a graceful shutdown waits for
/// every open call to end); `guard` is dropped with the stream.
pub struct SessionStream<T, G> {
    first: Option<T>,
    ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    _guard: G,
}

impl<T, G> SessionStream<T, G> {
    pub fn new(first: T, ended: impl Future<Output = ()> + Send + 'static, guard: G) -> Self {
        Self {
            first: Some(first),
            ended: Box::pin(ended),
            _guard: guard,
        }
    }
}

impl<T: Unpin, G: Unpin> Stream for SessionStream<T, G> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // After the first item the stream ends only when faultd stops; otherwise it is the
        // client going away (hyper notices the reset or closed connection and drops it).
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(first));
        }
        this.ended.as_mut().poll(cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio_stream::StreamExt as _;

    fn refused(r: Result<Option<u64>, FaultError>) -> String {
        match r {
            Err(FaultError::Refused(why)) => why,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn ids_are_never_reused_and_ended_sessions_refuse_faults() {
        let mut sessions = Sessions::default();
        let a = sessions.open("a".into(), Owner::default());
        let b = sessions.open("b".into(), Owner::default());
        assert_ne!(a, b);
        assert_eq!(sessions.bind(0).unwrap(), None, "0 is no session");
        assert_eq!(sessions.bind(a).unwrap(), Some(a));
        assert_eq!(sessions.close(a).unwrap().name, "a");
        assert_eq!(sessions.close(a), None, "closing twice is harmless");
        let ended = refused(sessions.bind(a));
        assert!(
            ended.starts_with("session_id:") && ended.contains("ended"),
            "{ended}"
        );
        let unknown = refused(sessions.bind(99));
        assert!(
            unknown.starts_with("session_id: no session 99"),
            "{unknown}"
        );
        let c = sessions.open("c".into(), Owner::default());
        assert!(c > b, "a new session never takes an old id");
        assert_eq!(sessions.len(), 2);
    }

    #[tokio::test]
    async fn the_stream_yields_its_first_item_and_drops_its_guard_with_it() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let (stop, mut stopping) = tokio::sync::watch::channel(false);
        let ended = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        let mut stream = SessionStream::new(
            7u64,
            ended,
            OnDrop::new(move || {
                d.fetch_add(1, Ordering::SeqCst);
            }),
        );
        assert_eq!(stream.next().await, Some(7));
        let more = tokio::time::timeout(std::time::Duration::from_millis(50), stream.next());
        assert!(more.await.is_err(), "nothing after the first item");
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        stop.send(true).unwrap();
        assert_eq!(stream.next().await, None, "faultd stopping ends the stream");
        drop(stream);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }
}
