//! The reconnect interop server with real processes and real clients: gRPC's own client
//! (grpcio) passes, a client that reconnects too often fails with the gaps named, clients
//! take turns, and the daemon serves the same service with `--retry-port`.
//!
//! `faultd reconnect` needs no privilege; it is started with port 0 and its ports are read
//! from its "reconnect server ready" log line. Only the daemon tests need root; one of them
//! checks that the kernel's SYN recorder (`faultctl record` + `faultctl backoff`) and the
//! userspace retry listener see the same attempts.

mod harness;

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

/// Connects to the retry port once, then once more after each of `gaps` (measured from
/// the first connection, so that sleeping late once does not shift every later attempt).
/// Returns the local port of each attempt, in order.
async fn reconnect_after(retry_port: u16, gaps: &[Duration]) -> Vec<u16> {
    let first = tokio::time::Instant::now();
    let mut due = first;
    let mut ports = Vec::new();
    for gap in std::iter::once(&Duration::ZERO).chain(gaps) {
        due += *gap;
        tokio::time::sleep_until(due).await;
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", retry_port))
            .await
            .expect("connect to the retry port");
        ports.push(stream.local_addr().unwrap().port());
        // The server records the attempt, then closes: wait for the close, so that a Stop
        // sent next cannot overtake the attempt.
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "the retry port did not close the connection: {closed:?}"
        );
    }
    ports
}

fn assert_near(gaps_ms: &[i32], wanted: &[u64]) {
    assert_eq!(
        gaps_ms.len(),
        wanted.len(),
        "gaps {gaps_ms:?}, wanted {wanted:?}"
    );
    for (got, want) in gaps_ms.iter().zip(wanted) {
        // Attempts are scheduled from the first one, so one late attempt makes its gap
        // longer and the next one shorter; a loaded machine may be tens of ms late.
        assert!(
            got.abs_diff(*want as i32) <= 90,
            "gaps {gaps_ms:?}, wanted about {wanted:?}"
        );
    }
}

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
    assert_eq!(result["passed"], true, "{result}\nserver log:\n{log}");
    let gaps: Vec<u64> = result["backoff_ms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g.as_u64().unwrap())
        .collect();
    assert!(gaps.len() >= 3, "too few reconnections in 7 s: {gaps:?}");
    assert!((700..=1300).contains(&gaps[0]), "first backoff {gaps:?}");
    assert!(out.status.success(), "{result}");
    assert!(log.contains("PASS: "), "{log}");
}

#[tokio::test]
async fn reconnecting_every_500ms_fails_and_names_the_gaps() {
    let server = ReconnectServer::start();
    let mut client = server.client().await;
    start(&mut client, 0).await;
    reconnect_after(server.retry_port, &[500 * MS, 500 * MS, 500 * MS]).await;
    let info = stop(&mut client).await;
    assert!(!info.passed);
    assert_near(&info.backoff_ms, &[500, 500, 500]);
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
        let asked = Instant::now();
        start(&mut second, 0).await;
        (second, asked, Instant::now())
    });
    // The first client's test sees one reconnection; the second's must not see it.
    reconnect_after(server.retry_port, &[]).await;
    tokio::time::sleep(500 * MS).await;
    assert!(
        !second_start.is_finished(),
        "the second Start returned early"
    );

    let stop_asked = Instant::now();
    let first_info = stop(&mut first).await;
    let (mut second, second_asked, second_started) = second_start.await.unwrap();
    assert!(
        second_started >= stop_asked,
        "the second Start returned {:?} before the first Stop was sent",
        stop_asked - second_started
    );
    assert!(second_started - second_asked >= 500 * MS);
    // One reconnection is no evidence of backoff: not a pass.
    assert!(!first_info.passed);
    assert!(first_info.backoff_ms.is_empty());

    reconnect_after(server.retry_port, &[1000 * MS]).await;
    let second_info = stop(&mut second).await;
    assert!(second_info.passed, "{second_info:?}");
    assert_near(&second_info.backoff_ms, &[1000]);
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
    let asked = Instant::now();
    let next_start = tokio::spawn(async move {
        start(&mut next, 0).await;
        next
    });
    let mut next = tokio::time::timeout(Duration::from_secs(10), next_start)
        .await
        .expect("the next Start still waits: the abandoned test never expired")
        .unwrap();
    let waited = asked.elapsed();
    assert!(
        waited >= 800 * MS,
        "the next Start returned after {waited:?}"
    );
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
    if !require_root() {
        return;
    }
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
            reconnect_after(9091, &[1000 * MS, 1000 * MS]).await;
            stop(&mut client).await
        })
    });
    // With a 1 s cap the second gap is expected to be 1 s, not 1.6 s.
    assert!(info.passed, "{info:?}\n{}", daemon.log_text());
    assert_near(&info.backoff_ms, &[1000, 1000]);
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
    if !require_root() {
        return;
    }
    const RETRY: u16 = 9092;
    /// The SYN's timestamp at `lo` egress vs. the listener's after the handshake and the
    /// accept's wake-up (seen 0–5 ms apart with two builds running beside the test), plus
    /// the listener's rounding to whole ms.
    const TOLERANCE_MS: f64 = 10.0;
    let ns = Netns::new("recrec");
    let daemon = Daemon::try_start(&ns, &["lo"], &["--retry-port", &RETRY.to_string()])
        .unwrap_or_else(|log| panic!("faultd did not start: {log}"));
    ns.faultctl_ok(&["record", "--port", &RETRY.to_string()]);

    let gaps = [400 * MS, 1000 * MS, 250 * MS, 1600 * MS, 700 * MS];
    let (info, ports) = ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let api = format!("http://{}", faultd::DEFAULT_LISTEN);
            let mut client = ReconnectServiceClient::connect(api).await.unwrap();
            start(&mut client, 0).await;
            let ports = reconnect_after(RETRY, &gaps).await;
            (stop(&mut client).await, ports)
        })
    });
    let log = daemon.log_text();

    // The listener: one gap per pair of attempts, about the scheduled ones, from our client.
    assert_near(&info.backoff_ms, &[400, 1000, 250, 1600, 700]);
    assert!(
        !info.passed,
        "400 ms is too soon for gRPC's policy: {info:?}"
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
    assert_eq!(out.status.code(), Some(4), "{}", harness::stderr_text(&out));
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
    for (kernel, listener) in kernel_gaps.iter().zip(&info.backoff_ms) {
        assert!(
            (kernel - f64::from(*listener)).abs() <= TOLERANCE_MS,
            "kernel gaps {kernel_gaps:?} ms, listener gaps {:?} ms: more than {TOLERANCE_MS} ms apart",
            info.backoff_ms
        );
    }
    eprintln!(
        "kernel gaps {kernel_gaps:?} ms, listener gaps {:?} ms",
        info.backoff_ms
    );
}
