//! The reconnect interop server with real processes and real clients: gRPC's own client
//! (grpcio) passes, a client that reconnects too often fails with the gaps named, clients
//! take turns, and the daemon serves the same service with `--retry-port`.
//!
//! `faultd reconnect` needs no privilege; it is started with port 0 and its ports are read
//! from its "reconnect server ready" log line. Only the daemon tests need root; one of them
//! checks that the kernel's SYN recorder (`faultctl record` + `faultctl backoff`) and the
//! userspace retry listener see the same attempts.

use crate::harness;

use std::fs;
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faultd::reconnect::proto::{
    Empty, ReconnectInfo, ReconnectParams, reconnect_service_client::ReconnectServiceClient,
};
use harness::{Daemon, FAULTD, Netns, require_root};
use tokio::io::AsyncReadExt as _;
use tonic::transport::Channel;

const MS: Duration = Duration::from_millis(1);

/// A `faultd reconnect` process; stopped by its PID on drop.
struct ReconnectServer {
    child: Child,
    log: tempfile::NamedTempFile,
    control_port: u16,
    retry_port: u16,
}

impl ReconnectServer {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// `faultd reconnect` with `extra` flags.
    fn start_with(extra: &[&str]) -> Self {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(FAULTD)
            .args(["reconnect", "--control_port=0", "--retry_port=0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("spawn faultd reconnect");
        let mut server = Self {
            child,
            log,
            control_port: 0,
            retry_port: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let log = server.log_text();
            if let Some(line) = log.lines().find(|l| l.contains("reconnect server ready")) {
                server.control_port = field(line, "control_port");
                server.retry_port = field(line, "retry_port");
                return server;
            }
            if server.child.try_wait().unwrap().is_some() {
                panic!("faultd reconnect exited: {log}");
            }
            std::thread::sleep(20 * MS);
        }
        panic!("faultd reconnect not ready: {}", server.log_text());
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    async fn client(&self) -> ReconnectServiceClient<Channel> {
        ReconnectServiceClient::connect(format!("http://127.0.0.1:{}", self.control_port))
            .await
            .expect("connect to the control port")
    }
}

impl Drop for ReconnectServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(20 * MS);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> u16 {
    let rest = line
        .split(&format!("{name}="))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

async fn start(client: &mut ReconnectServiceClient<Channel>, max_backoff_ms: i32) {
    client
        .start(ReconnectParams {
            max_reconnect_backoff_ms: max_backoff_ms,
        })
        .await
        .expect("Start");
}

async fn stop(client: &mut ReconnectServiceClient<Channel>) -> ReconnectInfo {
    client.stop(Empty {}).await.expect("Stop").into_inner()
}

/// One connection to the retry port: its local port, when the client began to connect and
/// when it saw the server close it. The server records the attempt between the two (it
/// accepts, timestamps, records, then closes), however slow either side is.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    port: u16,
    before: Instant,
    closed: Instant,
}

/// Connects to the retry port once, then once more after each of `gaps` (measured from
/// the first connection, so that sleeping late once does not shift every later attempt).
/// Returns each attempt, in order.
async fn reconnect_after(retry_port: u16, gaps: &[Duration]) -> Vec<Attempt> {
    let first = tokio::time::Instant::now();
    let mut due = first;
    let mut attempts = Vec::new();
    for gap in std::iter::once(&Duration::ZERO).chain(gaps) {
        due += *gap;
        tokio::time::sleep_until(due).await;
        let before = Instant::now();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", retry_port))
            .await
            .expect("connect to the retry port");
        let port = stream.local_addr().unwrap().port();
        // The server records the attempt, then closes: wait for the close, so that a Stop
        // sent next cannot overtake the attempt.
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "the retry port did not close the connection: {closed:?}"
        );
        attempts.push(Attempt {
            port,
            before,
            closed: Instant::now(),
        });
    }
    attempts
}

fn ports(attempts: &[Attempt]) -> Vec<u16> {
    attempts.iter().map(|a| a.port).collect()
}

fn spans(attempts: &[Attempt]) -> Vec<harness::Span> {
    attempts.iter().map(|a| (a.before, a.closed)).collect()
}

/// The gaps a recorder reported are where the client's attempts put them.
fn assert_recorded(who: &str, gaps_ms: &[f64], attempts: &[Attempt], scheduled: &[u64]) {
    harness::assert_gaps_recorded(who, gaps_ms, &spans(attempts), scheduled);
}

fn listener_gaps(info: &ReconnectInfo) -> Vec<f64> {
    info.backoff_ms.iter().map(|&g| f64::from(g)).collect()
}

/// The verdict gRPC's policy (capped at `cap`) must give the attempts, where their timing
/// decides it ([`harness::expected_backoff_verdict`]).
fn expected_verdict(attempts: &[Attempt], cap: Duration) -> Option<bool> {
    harness::expected_backoff_verdict(&spans(attempts), &faultd_api::backoff::Policy::grpc(cap))
}

/// `passed`, as the server reported it, is what the policy gives the attempts (where their
/// timing decides it).
fn assert_verdict(passed: bool, attempts: &[Attempt], cap: Duration, context: &str) {
    match expected_verdict(attempts, cap) {
        Some(want) => assert_eq!(passed, want, "{context}"),
        None => eprintln!(
            "MEASURE the attempts' gaps straddle a window's edge ({:?} ms): verdict {passed} not \
             checked",
            harness::gap_brackets(&spans(attempts))
        ),
    }
}

/// gRPC's default cap, where `Start` names none (`max_reconnect_backoff_ms` 0).
const DEFAULT_CAP: Duration = Duration::from_secs(120);

/// Python stubs for proto/grpc/testing/reconnect.proto, generated into `dir`.
fn python_stubs(dir: &Path) {
    let proto_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/grpc/testing");
    let out = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto_dir)
        .arg(format!("--python_out={}", dir.display()))
        .arg(format!("--grpc_python_out={}", dir.display()))
        .arg("reconnect.proto")
        .output()
        .expect("python3 (run `cargo xtask setup` to install it and grpcio-tools)");
    assert!(
        out.status.success(),
        "generating Python stubs failed (run `cargo xtask setup` for grpcio-tools): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway self-signed certificate for the client's TLS channel, when the openssl CLI
/// is there; otherwise the client uses grpcio's bundled roots, which make a TLS channel
/// just as well (the handshake never completes either way).
fn root_cert(dir: &Path) -> Option<PathBuf> {
    let cert = dir.join("root.pem");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=faultd-test",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("no openssl CLI: the TLS channel uses grpcio's bundled root certificates");
    }
    made.then_some(cert)
}

#[test]
fn grpcs_own_client_reconnects_with_backoff_and_passes() {
    let server = ReconnectServer::start();
    let tmp = tempfile::tempdir().unwrap();
    python_stubs(tmp.path());
    let client = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/reconnect_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(client)
        .args(["--control-port", &server.control_port.to_string()])
        .args(["--retry-port", &server.retry_port.to_string()])
        // A 2 s cap: gaps of about 1, 1.6, 2, 2 s, so the multiplier and the cap both show
        // within a 7 s deadline.
        .args(["--max-backoff-ms", "2000", "--deadline-s", "7"])
        .arg("--stubs")
        .arg(tmp.path());
    if let Some(cert) = root_cert(tmp.path()) {
        cmd.arg("--root-cert").arg(cert);
    }
    let out = cmd.output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = server.log_text();
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client printed no result ({e}): {stdout}\n{}\nserver log:\n{log}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(result["retry_status"], "DEADLINE_EXCEEDED", "{result}");
    let gaps: Vec<u64> = result["backoff_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    eprintln!("MEASURE grpcio's gaps {gaps:?} ms");
    // Two gaps show the backoff grow (1 s, then 1.6 s); a slow machine may fit no more in
    // the 7 s deadline.
    assert!(gaps.len() >= 2, "too few reconnections in 7 s: {gaps:?}");
    // gRPC's client never comes back sooner than its policy allows; it may come back later
    // on a slow machine, and only then may the server's verdict be a failure.
    let mut at = Duration::ZERO;
    let mut times = vec![at];
    for g in &gaps {
        at += Duration::from_millis(*g);
        times.push(at);
    }
    let report = faultd_api::backoff::check(
        &times,
        &faultd_api::backoff::Policy::grpc(Duration::from_secs(2)),
    );
    use faultd_api::backoff::GapVerdict;
    assert!(
        report.gaps.iter().all(|g| g.verdict != GapVerdict::TooSoon),
        "grpcio reconnected too soon: {gaps:?}\nserver log:\n{log}"
    );
    let late = report.gaps.iter().any(|g| g.verdict == GapVerdict::TooLate);
    assert_eq!(result["passed"], !late, "{result}\nserver log:\n{log}");
    assert_eq!(out.status.success(), !late, "{result}");
    assert_eq!(log.contains("PASS: "), !late, "{log}");
}

#[tokio::test]
async fn reconnecting_every_500ms_fails_and_names_the_gaps() {
    let server = ReconnectServer::start();
    let mut client = server.client().await;
    start(&mut client, 0).await;
    // 100 ms apart: too soon by 600 ms or more, so that no slow machine makes them fit.
    let attempts = reconnect_after(server.retry_port, &[100 * MS, 100 * MS, 100 * MS]).await;
    let info = stop(&mut client).await;
    assert!(!info.passed);
    assert_eq!(expected_verdict(&attempts, DEFAULT_CAP), Some(false));
    assert_recorded(
        "listener",
        &listener_gaps(&info),
        &attempts,
        &[100, 100, 100],
    );
    let log = server.log_text();
    assert!(
        log.contains("FAIL: 3 of 3 gaps outside their windows"),
        "{log}"
    );
    assert!(log.contains("too soon for [700, 1300] ms"), "{log}");
    assert!(log.contains("too soon for [1180, 2020] ms"), "{log}");
    assert!(log.contains("too soon for [1948, 3172] ms"), "{log}");
}

#[tokio::test]
async fn a_second_start_waits_for_the_first_stop() {
    let server = ReconnectServer::start();
    let mut first = server.client().await;
    start(&mut first, 0).await;
    // A client of its own (its own connection) that arrives while the first is tested.
    let mut second = server.client().await;
    let second_start = tokio::spawn(async move {
        start(&mut second, 0).await;
        (second, Instant::now())
    });
    // The first client's test sees one reconnection; the second's must not see it.
    reconnect_after(server.retry_port, &[]).await;
    // However long we give it, the second Start waits while the first test runs.
    tokio::time::sleep(500 * MS).await;
    assert!(
        !second_start.is_finished(),
        "the second Start returned while the first test ran"
    );

    let stop_asked = Instant::now();
    let first_info = stop(&mut first).await;
    let (mut second, second_started) = second_start.await.unwrap();
    assert!(
        second_started >= stop_asked,
        "the second Start returned {:?} before the first Stop was sent",
        stop_asked - second_started
    );
    // One reconnection is no evidence of backoff: not a pass.
    assert!(!first_info.passed);
    assert!(first_info.backoff_ms.is_empty());

    let attempts = reconnect_after(server.retry_port, &[1000 * MS]).await;
    let second_info = stop(&mut second).await;
    assert_verdict(
        second_info.passed,
        &attempts,
        DEFAULT_CAP,
        &format!("{second_info:?}"),
    );
    assert_recorded("listener", &listener_gaps(&second_info), &attempts, &[1000]);
}

/// A client that calls `Start` and never `Stop` cannot hold the server: after the test
/// timeout its test is abandoned, the next client's `Start` returns, and the first client's
/// late `Stop` is told what happened.
#[tokio::test]
async fn an_abandoned_start_expires() {
    let server = ReconnectServer::start_with(&["--test-timeout", "1s", "--bind", "127.0.0.1"]);
    let mut abandoned = server.client().await;
    start(&mut abandoned, 0).await;
    let mut next = server.client().await;
    let next_start = tokio::spawn(async move {
        start(&mut next, 0).await;
        next
    });
    let mut next = tokio::time::timeout(Duration::from_secs(10), next_start)
        .await
        .expect("the next Start still waits: the abandoned test never expired")
        .unwrap();
    // Once no test runs, the abandoned client's late Stop is told its test is gone.
    stop(&mut next).await;
    let status = abandoned.stop(Empty {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let log = server.log_text();
    assert!(log.contains("test abandoned"), "{log}");
}

#[test]
fn a_busy_port_is_one_line_of_error() {
    let taken = StdListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(FAULTD)
        .args(["reconnect", "--control-port", "0", "--retry-port"])
        .arg(port.to_string())
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with(&format!(
            "faultd: cannot listen on retry port 0.0.0.0:{port}"
        )),
        "{stderr}"
    );
}

#[test]
fn the_daemon_serves_the_interop_service_with_retry_port() {
    require_root();
    let ns = Netns::new("recon");
    let daemon = Daemon::try_start(&ns, &["lo"], &["--retry-port", "9091"])
        .unwrap_or_else(|log| panic!("faultd did not start: {log}"));
    // The namespace has ports of its own: fixed ones cannot collide with anything.
    let info = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let api = format!("http://{}", faultd::DEFAULT_LISTEN);
            let mut client = ReconnectServiceClient::connect(api).await.unwrap();
            start(&mut client, 1000).await;
            let attempts = reconnect_after(9091, &[1000 * MS, 1000 * MS]).await;
            (stop(&mut client).await, attempts)
        })
    });
    let (info, attempts) = info;
    // With a 1 s cap the second gap is expected to be 1 s, not 1.6 s.
    assert_verdict(
        info.passed,
        &attempts,
        Duration::from_secs(1),
        &format!("{info:?}\n{}", daemon.log_text()),
    );
    assert_recorded("listener", &listener_gaps(&info), &attempts, &[1000, 1000]);
    // The fault API is still there beside it.
    assert_eq!(ns.faults_json(), serde_json::json!([]));
    assert!(daemon.log_text().contains("retry_port=9091"));
}

/// The local port in each "retry connection closed" line of a log, in order.
fn listener_peer_ports(log: &str) -> Vec<u16> {
    log.lines()
        .filter(|l| l.contains("retry connection closed attempt="))
        .map(|l| {
            let peer = l
                .split("peer=")
                .nth(1)
                .unwrap_or_else(|| panic!("no peer in {l:?}"));
            let addr = peer.split_whitespace().next().unwrap();
            addr.parse::<std::net::SocketAddr>()
                .unwrap_or_else(|e| panic!("peer {addr:?} in {l:?}: {e}"))
                .port()
        })
        .collect()
}

/// The kernel recorder (`record` on the retry port, read back by `faultctl backoff`) and the
/// userspace retry listener (`Stop`'s `backoff_ms`) see the same attempts of the same client:
/// the same source ports in the same order, the same number of attempts, and each gap equal
/// within a few ms (the SYN leaves `lo` a handshake and a wake-up before the accept).
#[test]
fn the_kernel_recorder_sees_the_attempts_the_listener_sees() {
    require_root();
    const RETRY: u16 = 9092;
    let ns = Netns::new("recrec");
    let daemon = Daemon::try_start(&ns, &["lo"], &["--retry-port", &RETRY.to_string()])
        .unwrap_or_else(|log| panic!("faultd did not start: {log}"));
    ns.faultctl_ok(&["record", "--port", &RETRY.to_string()]);

    let gaps = [400 * MS, 1000 * MS, 250 * MS, 1600 * MS, 700 * MS];
    let (info, attempts) = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let api = format!("http://{}", faultd::DEFAULT_LISTEN);
            let mut client = ReconnectServiceClient::connect(api).await.unwrap();
            start(&mut client, 0).await;
            let attempts = reconnect_after(RETRY, &gaps).await;
            (stop(&mut client).await, attempts)
        })
    });
    let log = daemon.log_text();
    let scheduled = [400, 1000, 250, 1600, 700];
    let ports = ports(&attempts);

    // The listener: one gap per pair of attempts, each where the client's attempts put it.
    assert_recorded("listener", &listener_gaps(&info), &attempts, &scheduled);
    assert_verdict(
        info.passed,
        &attempts,
        DEFAULT_CAP,
        &format!("400 ms is too soon for gRPC's policy: {info:?}"),
    );
    assert_eq!(
        listener_peer_ports(&log),
        ports,
        "the listener's peers are the client's sockets\n{log}"
    );

    // The kernel: the same sockets' SYNs, in the same order.
    let events = ns.faultctl_ok(&["events", "--json"]);
    let syn_ports: Vec<u16> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "syn" && e["dst_port"] == RETRY)
        .map(|e| e["src_port"].as_u64().unwrap() as u16)
        .collect();
    assert_eq!(
        syn_ports, ports,
        "the kernel's SYNs are the client's sockets\n{events}"
    );

    // `faultctl backoff` from the kernel timestamps: same attempts, same gaps. It fails the
    // client (400 ms is too soon for gRPC's policy) and says so with exit status 4.
    let out = ns.faultctl(&["backoff", "--port", &RETRY.to_string(), "--json"]);
    match expected_verdict(&attempts, DEFAULT_CAP) {
        Some(passed) => assert_eq!(
            out.status.code(),
            Some(if passed { 0 } else { 4 }),
            "{}",
            harness::stderr_text(&out)
        ),
        None => eprintln!("MEASURE faultctl backoff: {:?}", out.status),
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "faultctl backoff --json: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(report["attempts"], ports.len(), "{report}");
    let kernel_gaps: Vec<f64> = report["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gap_ms"].as_f64().unwrap())
        .collect();
    assert_eq!(
        kernel_gaps.len(),
        info.backoff_ms.len(),
        "kernel gaps {kernel_gaps:?}, listener gaps {:?}",
        info.backoff_ms
    );
    // The kernel's SYN times lie within the same brackets (the SYN leaves between the
    // client's `before` and the close it sees).
    assert_recorded("kernel", &kernel_gaps, &attempts, &scheduled);
}
