//! The control service (`grpc.testing.ReconnectService`) and the retry listener, sharing
//! one record of the running test.

use std::net::{IpAddr, SocketAddr};
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

/// How long a test may run without its `Stop` unless told otherwise: longer than the
/// 540 s deadline of gRPC's interop procedure, so that a real run fits.
pub const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// The most reconnections one test records; later ones are counted, not kept, and fail it
/// (a client that reconnects that often does not back off).
pub const MAX_ATTEMPTS: usize = 10_000;

/// The state shared by the control service and the retry listener. Clones share it.
#[derive(Clone)]
pub struct ReconnectServer {
    /// One permit: whoever holds it is being tested. Other `Start`s wait for it in arrival
    /// order, and a waiting `Start` whose client gives up leaves the queue.
    turn: Arc<Semaphore>,
    state: Arc<Mutex<State>>,
    /// A test with no `Stop` after this long is abandoned, and the next client's turn comes.
    test_timeout: Duration,
}

#[derive(Default)]
struct State {
    /// Set by the first `Start` ever and kept, as gRPC's reconnect server does.
    cap: Option<Duration>,
    test: Option<Test>,
    /// Numbers tests, so that a test's timer cannot end the next one.
    last_test: u64,
    /// Whether the last test ended by its timeout rather than its `Stop`.
    last_expired: bool,
}

/// The test of one client, from its `Start` to its `Stop`.
struct Test {
    number: u64,
    /// Held until `Stop`, so the next client's `Start` waits until then.
    _turn: OwnedSemaphorePermit,
    started: Instant,
    attempts: Vec<Instant>,
    /// Reconnections beyond [`MAX_ATTEMPTS`], not recorded.
    unrecorded: u64,
    first_peer: Option<IpAddr>,
}

impl Default for ReconnectServer {
    fn default() -> Self {
        Self::new()
    }
}

impl ReconnectServer {
    pub fn new() -> Self {
        Self::with_test_timeout(DEFAULT_TEST_TIMEOUT)
    }

    /// A server whose tests end by themselves `test_timeout` after their `Start`.
    pub fn with_test_timeout(test_timeout: Duration) -> Self {
        Self {
            turn: Arc::new(Semaphore::new(1)),
            state: Arc::default(),
            test_timeout,
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
        if test.attempts.len() >= MAX_ATTEMPTS {
            test.unrecorded += 1;
            if test.unrecorded == 1 {
                warn!(
                    %peer,
                    "more than {MAX_ATTEMPTS} reconnections in one test: later ones are \
                     counted, not recorded, and the test fails"
                );
            }
            return;
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
        state.last_test += 1;
        let number = state.last_test;
        state.test = Some(Test {
            number,
            _turn: turn,
            started: Instant::now(),
            attempts: Vec::new(),
            unrecorded: 0,
            first_peer: None,
        });
        drop(state);
        let server = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(server.test_timeout).await;
            server.expire(number);
        });
        info!(%client, cap_ms = cap.as_millis() as u64, "test started");
        Ok(())
    }

    /// Ends test `number` if it is still running: its client never sent `Stop`.
    fn expire(&self, number: u64) {
        let mut state = self.state();
        if state.test.as_ref().is_some_and(|t| t.number == number) {
            // Dropping the test releases the turn to the next waiting Start.
            state.test = None;
            state.last_expired = true;
            warn!(
                timeout_ms = self.test_timeout.as_millis() as u64,
                "test abandoned: no Stop within the test timeout; the next client's turn"
            );
        }
    }

    /// `Stop`: ends the running test, judges it and lets the next client begin.
    fn finish(&self) -> Result<Verdict, Status> {
        let (test, cap, expired) = {
            let mut state = self.state();
            let expired = std::mem::take(&mut state.last_expired);
            (
                state.test.take(),
                state.cap.unwrap_or(GRPC_DEFAULT_MAX),
                expired,
            )
        };
        let test = test.ok_or_else(|| {
            Status::failed_precondition(if expired {
                format!(
                    "no test is running: the last one was abandoned after {:?} without Stop",
                    self.test_timeout
                )
            } else {
                "Stop without Start: no test is running".to_string()
            })
        })?;
        let times: Vec<Duration> = test
            .attempts
            .iter()
            .map(|t| t.duration_since(test.started))
            .collect();
        let report = backoff::check(&times, &Policy::grpc(cap));
        let unrecorded = test.unrecorded;
        if report.passed() && unrecorded == 0 {
            info!("test stopped\n{report}");
        } else {
            warn!(unrecorded, "test stopped\n{report}");
        }
        // Dropping the test releases the turn to the next waiting Start.
        drop(test);
        Ok(Verdict { report, unrecorded })
    }
}

/// What `Stop` answers: the judged gaps, and how many reconnections went unrecorded.
#[derive(Debug)]
pub struct Verdict {
    report: Report,
    unrecorded: u64,
}

impl Verdict {
    fn passed(&self) -> bool {
        self.report.passed() && self.unrecorded == 0
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

/// Binds the retry port; gRPC's reconnect server binds every IPv4 address (0.0.0.0).
pub async fn bind_retry_listener(ip: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((ip, port)).await
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
        let verdict = self.finish()?;
        Ok(Response::new(proto::ReconnectInfo {
            passed: verdict.passed(),
            backoff_ms: verdict.report.gaps_ms(),
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
        let report = server.finish().unwrap().report;
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
        let report = server.finish().unwrap().report;
        assert_eq!(report.policy.max(), 1000 * MS);
        assert!(report.passed(), "{report}");
    }

    #[tokio::test]
    async fn zero_means_grpcs_default_cap_and_negative_is_refused() {
        let server = ReconnectServer::new();
        let status = server.begin(-1, None).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        server.begin(0, None).await.unwrap();
        assert_eq!(
            server.finish().unwrap().report.policy.max(),
            GRPC_DEFAULT_MAX
        );
    }

    #[tokio::test]
    async fn another_hosts_attempts_still_count() {
        let server = ReconnectServer::new();
        server.begin(0, None).await.unwrap();
        record(&server, [127, 0, 0, 1], &[1000 * MS]);
        record(&server, [127, 0, 0, 2], &[]);
        let report = server.finish().unwrap().report;
        assert_eq!(report.attempts, 3);
        // The other host connected right after the second attempt: far too soon.
        assert_eq!(report.gaps[1].verdict, GapVerdict::TooSoon);
    }

    #[tokio::test]
    async fn an_abandoned_start_expires_and_the_next_client_gets_its_turn() {
        let server = ReconnectServer::with_test_timeout(200 * MS);
        server.begin(0, None).await.unwrap();
        let asked = Instant::now();
        // The next client's Start waits for the first test, which never sees a Stop.
        server.begin(0, None).await.unwrap();
        assert!(asked.elapsed() >= 150 * MS, "{:?}", asked.elapsed());
        // Its own test is running, not cut short by the first one's timer.
        record(&server, [127, 0, 0, 1], &[1000 * MS]);
        assert_eq!(server.finish().unwrap().report.attempts, 2);

        server.begin(0, None).await.unwrap();
        tokio::time::sleep(400 * MS).await;
        let status = server.finish().unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("abandoned"),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn recorded_attempts_are_capped_and_overflow_fails_the_test() {
        let server = ReconnectServer::new();
        server.begin(0, None).await.unwrap();
        let gaps = vec![1000 * MS; MAX_ATTEMPTS + 5];
        record(&server, [127, 0, 0, 1], &gaps);
        let verdict = server.finish().unwrap();
        assert_eq!(verdict.report.attempts, MAX_ATTEMPTS);
        assert_eq!(verdict.unrecorded, 6);
        assert!(!verdict.passed());
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
