//! Faults that die with their client (OpenSession), with a real faultd, a real client
//! process and real sockets in a network namespace.
//!
//! The client process is this test binary run again with `FAULTD_SESSION_HOLDER` set: its
//! `session_holder` test then connects with faultd-client (which opens a session), binds
//! faults to it, prints the session id and holds on until it is killed (or, with `close`,
//! drops the client — ending the session — on a line on stdin and lives on).

use crate::harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use faultd::proto::{self, fault_service_client::FaultServiceClient};
use faultd_client::Client;
use harness::*;

const HOLDER: &str = "FAULTD_SESSION_HOLDER";

fn drop_spec(port: u32) -> proto::FaultSpec {
    proto::FaultSpec {
        target: Some(proto::Target {
            port,
            ..Default::default()
        }),
        action: Some(proto::Action {
            kind: Some(proto::action::Kind::Drop(proto::Drop { probability: None })),
        }),
        ttl_ms: None,
        label: "session".into(),
    }
}

/// The client process (see the module's doc): ignored in a normal test run (it is not a
/// test, and must not count as a passed one); the tests start it with `--ignored`.
#[test]
#[ignore = "the client process the tests start; not a test"]
fn session_holder() {
    let Ok(mode) = std::env::var(HOLDER) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // faultd-client opens the session on connect and binds every fault it adds to it.
        let client = Client::builder()
            .addr(faultd::DEFAULT_LISTEN)
            .session_name("session test")
            .connect()
            .await
            .unwrap();
        for port in [7501, 7502] {
            // Kept: these faults are to go with the session, not with a guard.
            let fault = client.drop(port).label("session").apply().await.unwrap();
            fault.keep();
        }
        println!("SESSION {}", client.session_id().unwrap());
        if mode == "close" {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            drop(client); // ends the session (cancels its call); the process lives on
        }
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

/// Starts the holder inside `ns`; returns it and its session id.
fn spawn_holder(ns: &Netns, mode: &str) -> (Child, u64) {
    let exe = std::env::current_exe().unwrap();
    let mut child = ns
        .cmd(exe.to_str().unwrap())
        .args([
            "--exact",
            "--ignored",
            "session::session_holder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    // libtest may print "test session_holder ... " on the same line first.
    for line in stdout.lines() {
        if let Some((_, id)) = line.unwrap().split_once("SESSION ") {
            return (child, id.trim().parse().unwrap());
        }
    }
    panic!("the holder exited before opening its session");
}

/// The holder process, killed by its PID when the test ends however it ends.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        test_harness::stop_child(&mut self.0, Duration::from_secs(2));
    }
}

fn sessions_of(ns: &Netns) -> Vec<u64> {
    ns.faults_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["session_id"].as_u64().unwrap_or(0))
        .collect()
}

/// Polls faultd until no fault of `session` is left (a deadline, not a budget: how soon is
/// `cargo xtask bench`'s teardown figure); returns how long that took.
fn wait_gone(ns: &Netns, session: u64) -> Duration {
    wait_until(&format!("session {session}'s faults removed"), || {
        !sessions_of(ns).contains(&session)
    })
}

fn connect_pair(port: u16) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// The headline: SIGKILL of the client → its faults are gone from faultd and from the
/// kernel (the held data arrives); a fault of no session stays.
#[test]
fn sigkill_of_the_client_removes_its_faults() {
    require_root();
    let ns = Netns::new("sess");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let (mut client, mut server) = ns.run(|| connect_pair(7501));
    let keeper = ns.faultctl_ok(&["drop", "--port", "7503"]);
    let (child, session) = spawn_holder(&ns, "kill");
    let mut holder = Holder(child);
    assert_ne!(session, 0);
    assert_eq!(sessions_of(&ns), [0, session, session]);
    let table = ns.faultctl_ok(&["list"]);
    assert!(table.lines().next().unwrap().contains("SESSION"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains("7501") && l.trim_end().ends_with(&session.to_string())),
        "{table}"
    );

    client.write_all(b"held").unwrap();
    assert_eq!(
        read_for(&mut server, Duration::from_millis(1000)).unwrap(),
        None
    );

    test_harness::send_signal(&mut holder.0, libc::SIGKILL);
    let took = wait_gone(&ns, session);
    eprintln!("MEASURE session faults gone {took:?} after SIGKILL");
    let left = ns.faults_json();
    assert_eq!(left.as_array().unwrap().len(), 1, "{left}");
    assert_eq!(
        left[0]["id"].to_string(),
        keeper,
        "the session-less fault stays"
    );
    // The kernel no longer acts: TCP's retransmission arrives.
    let got = read_exact_within(&mut server, 4, WAIT).unwrap();
    assert_eq!(got, b"held");
}

/// A client that ends its session (cancels the stream) but lives on: its faults go too.
#[test]
fn ending_the_session_removes_its_faults_while_the_client_lives() {
    require_root();
    let ns = Netns::new("sessc");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let (child, session) = spawn_holder(&ns, "close");
    let mut holder = Holder(child);
    assert_eq!(sessions_of(&ns), [session, session]);
    let mut stdin = holder.0.stdin.take().unwrap();
    writeln!(stdin, "close").unwrap();
    let took = wait_gone(&ns, session);
    eprintln!("MEASURE session faults gone {took:?} after the stream ended");
    assert_eq!(ns.faults_json(), serde_json::json!([]));
    assert!(
        holder.0.try_wait().unwrap().is_none(),
        "the client still runs"
    );
}

/// AddFault naming no open session is refused, naming `session_id`, and changes nothing.
#[test]
fn an_unknown_session_is_refused() {
    require_root();
    let ns = Netns::new("sessu");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let status = ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let url = format!("http://{}", faultd::DEFAULT_LISTEN);
            let mut client = FaultServiceClient::connect(url).await.unwrap();
            let request = proto::AddFaultRequest {
                spec: Some(drop_spec(7504)),
                session_id: 4242,
            };
            client.add_fault(request).await.unwrap_err()
        })
    });
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().starts_with("session_id:"),
        "{}",
        status.message()
    );
    assert_eq!(ns.faults_json(), serde_json::json!([]));
}

/// An open session does not hold faultd up: SIGTERM ends the session's call, faultd stops
/// (a graceful shutdown waits for open calls) and the holder sees its stream end.
#[test]
fn faultd_stops_while_a_session_is_open() {
    require_root();
    let ns = Netns::new("sesst");
    let mut daemon = Daemon::start(&ns, &["lo"]);
    let (child, _) = spawn_holder(&ns, "kill");
    let _holder = Holder(child);
    test_harness::send_signal(&mut daemon.child, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "faultd still runs 10 s after SIGTERM with a session open:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = daemon.log_text();
    assert!(log.contains("session ended"), "{log}");
}
