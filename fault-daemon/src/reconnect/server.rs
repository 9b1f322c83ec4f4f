//! The control service (`grpc.testing.ReconnectService`) and the retry listener, sharing
//! one record of the running test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use super::backoff::{self, GRPC_DEFAULT_MAX, Policy, Report};
use super::proto::{
    self,
    reconnect_service_server::{ReconnectService, ReconnectServiceServer},
};

/// The state shared by the control service and the retry listener. Clones share it.
#[derive(Clone)]
pub struct ReconnectServer {
    /// One permit: whoever holds it is being tested. Other `Start`s wait for it in arrival
    /// order, and a waiting `Start` whose client gives up leaves the queue.
    turn: Arc<Semaphore>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Set by the first `Start` ever and kept, as gRPC's reconnect server does.
    cap: Option<Duration>,
    test: Option<Test>,
}

/// The test of one client, from its `Start` to its `Stop`.
struct Test {
    /// Held until `Stop`, so the next client's `Start` waits until then.
    _turn: OwnedSemaphorePermit,
    started: Instant,
    attempts: Vec<Instant>,
    first_peer: Option<IpAddr>,
}

impl Default for ReconnectServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ReconnectServer {
    pub fn new() -> Self {
        Self {
            turn: Arc::new(Semaphore::new(1)),
            state: Arc::default(),
        }
    }

    /// The gRPC service, to add to a tonic server.
    pub fn service(&self) -> ReconnectServiceServer<Self> {
        ReconnectServiceServer::new(self.clone())
    }

    /// Makes `Start` calls that wait for their turn, now or later, fail with UNAVAILABLE,
    /// so that a graceful shutdown does not wait for them forever.
    pub fn shut_down(&self) {
        self.turn.close();
    }

    /// Accepts and at once closes every connection on `listener`, recording when each
    /// arrived. Runs until the task is dropped.
    pub async fn run_retry_listener(self, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    // Timestamp before anything else: the gap is what is being judged.
                    let at = Instant::now();
                    // Record, then close: a client that sees the close knows it counted.
                    self.record_attempt(at, peer);
                    drop(stream);
                }
                Err(e) => {
                    // E.g. out of file descriptors; pause instead of spinning.
                    warn!(error = %e, "accept on the retry port failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change to the state is a single assignment or push, so a panic elsewhere
        // cannot leave it half-changed; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_attempt(&self, at: Instant, peer: SocketAddr) {
        let mut state = self.state();
        let Some(test) = state.test.as_mut() else {
            info!(%peer, "retry connection closed; no test is running, not recorded");
            return;
        };
        match test.first_peer {
            None => test.first_peer = Some(peer.ip()),
            Some(first) if first != peer.ip() => error!(
                %peer,
                %first,
                "retry connection from another host than the first of this test; \
                 its timing is recorded too and will likely fail the test"
            ),
            Some(_) => {}
        }
        let previous = test.attempts.last().copied();
        test.attempts.push(at);
        let attempt = test.attempts.len();
        match previous {
            Some(previous) => {
                let gap_ms = backoff::whole_ms(at - previous);
                info!(attempt, %peer, gap_ms, "retry connection closed");
            }
            None => info!(attempt, %peer, "retry connection closed"),
        }
    }

    /// `Start`: waits for this client's turn, then begins its test.
    async fn begin(&self, max_backoff_ms: i32, client: Option<SocketAddr>) -> Result<(), Status> {
        let requested = cap_from_request(max_backoff_ms)?;
        let client = client.map_or_else(|| "unknown".to_string(), |a| a.to_string());
        if self.turn.available_permits() == 0 {
            info!(%client, "Start waits: another client's test is running");
        }
        let turn = self
            .turn
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the reconnect server is shutting down"))?;
        let mut state = self.state();
        let cap = *state.cap.get_or_insert(requested);
        if cap != requested {
            warn!(
                requested_ms = requested.as_millis() as u64,
                cap_ms = cap.as_millis() as u64,
                "max_reconnect_backoff_ms differs from the first Start's; the first one's \
                 cap is kept for every test, as in gRPC's reconnect server"
            );
        }
        state.test = Some(Test {
            _turn: turn,
            started: Instant::now(),
            attempts: Vec::new(),
            first_peer: None,
        });
        info!(%client, cap_ms = cap.as_millis() as u64, "test started");
        Ok(())
    }

    /// `Stop`: ends the running test, judges it and lets the next client begin.
    fn finish(&self) -> Result<Report, Status> {
        let (test, cap) = {
            let mut state = self.state();
            (state.test.take(), state.cap.unwrap_or(GRPC_DEFAULT_MAX))
        };
        let test = test
            .ok_or_else(|| Status::failed_precondition("Stop without Start: no test is running"))?;
        let times: Vec<Duration> = test
            .attempts
            .iter()
            .map(|t| t.duration_since(test.started))
            .collect();
        let report = backoff::check(&times, &Policy::grpc(cap));
        if report.passed() {
            info!("test stopped\n{report}");
        } else {
            warn!("test stopped\n{report}");
        }
        // Dropping the test releases the turn to the next waiting Start.
        drop(test);
        Ok(report)
    }
}

/// The cap a `Start` asks for: 0 means gRPC's default.
fn cap_from_request(max_backoff_ms: i32) -> Result<Duration, Status> {
    match u64::try_from(max_backoff_ms) {
        Ok(0) => Ok(GRPC_DEFAULT_MAX),
        Ok(ms) => Ok(Duration::from_millis(ms)),
        Err(_) => Err(Status::invalid_argument(format!(
            "max_reconnect_backoff_ms {max_backoff_ms} is negative"
        ))),
    }
}

/// Binds the retry port on every IPv4 address, as gRPC's reconnect server does.
pub async fn bind_retry_listener(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).await
}

#[tonic::async_trait]
impl ReconnectService for ReconnectServer {
    async fn start(
        &self,
        request: Request<proto::ReconnectParams>,
    ) -> Result<Response<proto::Empty>, Status> {
        let client = request.remote_addr();
        self.begin(request.into_inner().max_reconnect_backoff_ms, client)
            .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn stop(
        &self,
        _: Request<proto::Empty>,
    ) -> Result<Response<proto::ReconnectInfo>, Status> {
        let report = self.finish()?;
        Ok(Response::new(proto::ReconnectInfo {
            passed: report.passed(),
            backoff_ms: report.gaps_ms(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconnect::backoff::{GapVerdict, Verdict};

    const MS: Duration = Duration::from_millis(1);

    fn peer(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    /// Records attempts `gaps` apart, starting now.
    fn record(server: &ReconnectServer, from: [u8; 4], gaps: &[Duration]) {
        let mut at = Instant::now();
        server.record_attempt(at, peer(from, 40000));
        for (i, gap) in gaps.iter().enumerate() {
            at += *gap;
            server.record_attempt(at, peer(from, 40001 + i as u16));
        }
    }

    #[tokio::test]
    async fn stop_judges_the_attempts_since_start() {
        let server = ReconnectServer::new();
        record(&server, [127, 0, 0, 1], &[300 * MS]); // before Start: ignored
        server.begin(2000, None).await.unwrap();
        record(&server, [127, 0, 0, 1], &[1000 * MS, 1600 * MS, 2000 * MS]);
        let report = server.finish().unwrap();
        assert_eq!(report.attempts, 4);
        assert_eq!(report.verdict, Verdict::Pass, "{report}");
        assert_eq!(report.gaps_ms(), vec![1000, 1600, 2000]);
    }

    #[tokio::test]
    async fn the_first_starts_cap_is_kept() {
        let server = ReconnectServer::new();
        server.begin(1000, None).await.unwrap();
        server.finish().unwrap();
        // Asks for gRPC's default, but the first Start's 1 s cap still applies.
        server.begin(0, None).await.unwrap();
        record(&server, [127, 0, 0, 1], &[1000 * MS, 1000 * MS]);
        let report = server.finish().unwrap();
        assert_eq!(report.policy.max(), 1000 * MS);
        assert!(report.passed(), "{report}");
    }

    #[tokio::test]
    async fn zero_means_grpcs_default_cap_and_negative_is_refused() {
        let server = ReconnectServer::new();
        let status = server.begin(-1, None).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        server.begin(0, None).await.unwrap();
        assert_eq!(server.finish().unwrap().policy.max(), GRPC_DEFAULT_MAX);
    }

    #[tokio::test]
    async fn another_hosts_attempts_still_count() {
        let server = ReconnectServer::new();
        server.begin(0, None).await.unwrap();
        record(&server, [127, 0, 0, 1], &[1000 * MS]);
        record(&server, [127, 0, 0, 2], &[]);
        let report = server.finish().unwrap();
        assert_eq!(report.attempts, 3);
        // The other host connected right after the second attempt: far too soon.
        assert_eq!(report.gaps[1].verdict, GapVerdict::TooSoon);
    }

    #[tokio::test]
    async fn stop_without_start_is_refused() {
        let server = ReconnectServer::new();
        let status = server.finish().unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    #[tokio::test]
    async fn a_waiting_start_fails_when_the_server_shuts_down() {
        let server = ReconnectServer::new();
        server.begin(0, None).await.unwrap();
        let waiting = tokio::spawn({
            let server = server.clone();
            async move { server.begin(0, None).await }
        });
        tokio::time::sleep(50 * MS).await;
        assert!(!waiting.is_finished(), "the second Start must wait");
        server.shut_down();
        let status = waiting.await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }
}
