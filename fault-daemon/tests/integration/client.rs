//! The Rust client (`faultd-client`) against a real faultd, with real sockets in a network
//! namespace: a guard's fault acts in the kernel and goes when the guard drops, when the
//! task holding it panics, and when the client process is killed (its session).
//!
//! The killed client is this test binary run again with `FAULTD_CLIENT_HOLDER` set (as in
//! session.rs): its `client_holder` test applies a fault through the client, prints its id
//! and session, and waits to be killed.

use crate::harness;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use faultd_client::{Client, Direction};
use futures_util::FutureExt as _;
use harness::*;

const HOLDER: &str = "FAULTD_CLIENT_HOLDER";

fn connect_pair(port: u16) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// Polls faultd (through the client) until it lists no fault; panics after a generous
/// deadline ([`WAIT`]: how soon is `cargo xtask bench`'s teardown figure).
async fn wait_no_faults(client: &Client, what: &str) -> Duration {
    let since = Instant::now();
    loop {
        let faults = client.list().await.unwrap();
        if faults.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < WAIT,
            "{what}: faults left after {WAIT:?}: {faults:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The headline: a drop applied through the client silences a connection in the kernel
/// (both ends stay ESTABLISHED, nothing arrives); dropping the guard removes it and TCP
/// delivers the held data on the same connection.
#[test]
fn a_guard_silences_a_connection_until_it_drops() {
    require_root();
    let ns = Netns::new("cguard");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let (mut client_sock, mut server_sock) = ns.run(|| connect_pair(7601));
    ns.block_on(|| async move {
        let client = Client::connect().await.unwrap();
        let session = client.session_id().expect("a session by default");
        let guard = client
            .drop(7601)
            .direction(Direction::ToPort)
            .label("client-test")
            .apply()
            .await
            .unwrap();
        let listed = client.list().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(
            (
                listed[0].id,
                listed[0].session_id,
                listed[0].spec.as_ref().unwrap().label.as_str()
            ),
            (guard.id(), session, "client-test")
        );

        // The block_on future runs on this thread, the client's tasks on the runtime's
        // workers: blocking reads here do not stall them.
        client_sock.write_all(b"held").unwrap();
        assert_eq!(
            read_for(&mut server_sock, Duration::from_millis(1000)).unwrap(),
            None,
            "the drop lets data through"
        );
        assert_eq!(tcp_state(&client_sock), TCP_ESTABLISHED);

        drop(guard);
        let took = wait_no_faults(&client, "a dropped guard").await;
        eprintln!("the dropped guard's fault went in {took:?}");
        let got = read_exact_within(&mut server_sock, 4, WAIT).unwrap();
        assert_eq!(
            got, b"held",
            "TCP delivers the held data once the guard is gone"
        );
        // The client and its session live on: the guard alone removed the fault.
        let again = client.drop(7602).apply().await.unwrap();
        assert_eq!(again.fault().session_id, session);
        again.remove().await.unwrap();
        anyhow::Ok(())
    })
    .unwrap();
}

/// A task that panics while it holds a guard leaves no fault, while the client (and its
/// session) lives on; `with_fault` removes its fault (awaited) when its body panics or
/// fails, and passes the panic on.
#[test]
fn a_panic_holding_a_guard_leaves_no_fault() {
    require_root();
    let ns = Netns::new("cpanic");
    let _daemon = Daemon::start(&ns, &["lo"]);
    ns.block_on(|| async move {
        let client = Client::connect().await.unwrap();
        let task_client = client.clone();
        let task = tokio::spawn(async move {
            let _guard = task_client.drop(7603).apply().await.unwrap();
            assert_eq!(task_client.list().await.unwrap().len(), 1);
            panic!("the test body fails while the fault is on");
        });
        assert!(task.await.unwrap_err().is_panic());
        let took = wait_no_faults(&client, "a panicking task's guard").await;
        eprintln!("the panicking task's fault went in {took:?}");

        let body = client.with_fault(client.reset(7604), async {
            assert_eq!(client.list().await.unwrap().len(), 1);
            panic!("with_fault's body panics");
        });
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        assert!(outcome.is_err(), "the panic goes on to the caller");
        assert!(
            client.list().await.unwrap().is_empty(),
            "removed before the panic went on"
        );

        let failed: Result<(), &str> = client
            .with_fault(client.stall(7605), async { Err("the body failed") })
            .await
            .unwrap();
        assert_eq!(failed, Err("the body failed"));
        assert!(client.list().await.unwrap().is_empty());
        anyhow::Ok(())
    })
    .unwrap();
}

/// faultd's own validation reaches the caller as a typed error naming the field, and
/// nothing is installed.
#[test]
fn invalid_input_is_an_error_naming_the_field() {
    require_root();
    let ns = Netns::new("cinval");
    let _daemon = Daemon::start(&ns, &["lo"]);
    ns.block_on(|| async move {
        let client = Client::connect().await.unwrap();
        let err = client.loss(7606, 150.0).apply().await.unwrap_err();
        assert!(
            matches!(err, faultd_client::Error::InvalidArgument { .. }),
            "{err:?}"
        );
        assert_eq!(err.field(), Some("action.loss.percent"), "{err}");
        let err = client.remove(424242).await.unwrap_err();
        assert!(
            matches!(err, faultd_client::Error::NotFound { .. }),
            "{err:?}"
        );
        assert!(client.list().await.unwrap().is_empty());
        anyhow::Ok(())
    })
    .unwrap();
}

/// The client process (see the module's doc): ignored in a normal test run (it is not a
/// test, and must not count as a passed one); the tests start it with `--ignored`.
#[test]
#[ignore = "the client process the tests start; not a test"]
fn client_holder() {
    if std::env::var(HOLDER).is_err() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = Client::connect().await.unwrap();
        let guard = client.drop(7607).apply().await.unwrap();
        println!("HOLDING {} {}", guard.id(), client.session_id().unwrap());
        std::io::stdout().flush().unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        drop(guard);
    });
}

/// The holder process, killed by its PID when the test ends however it ends.
struct Holder(Child);

impl Drop for Holder {
    fn drop(&mut self) {
        test_harness::stop_child(&mut self.0, Duration::from_secs(2));
    }
}

/// SIGKILL of a client process: its guard never runs, yet faultd removes its fault within
/// 1 s, because the fault was bound to the client's session.
#[test]
fn sigkill_of_a_client_process_leaves_no_fault() {
    require_root();
    let ns = Netns::new("ckill");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let exe = std::env::current_exe().unwrap();
    let child = ns
        .cmd(exe.to_str().unwrap())
        .args([
            "--exact",
            "--ignored",
            "client::client_holder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER, "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut holder = Holder(child);
    let stdout = BufReader::new(holder.0.stdout.take().unwrap());
    // libtest may print "test client_holder ... " on the same line first.
    let (id, session) = stdout
        .lines()
        .find_map(|line| {
            let line = line.unwrap();
            let (_, rest) = line.split_once("HOLDING ")?;
            let (id, session) = rest.trim().split_once(' ')?;
            Some((id.parse::<u64>().unwrap(), session.parse::<u64>().unwrap()))
        })
        .expect("the holder exited before applying its fault");
    let listed = ns.faults_json();
    assert_eq!(listed[0]["id"], id, "{listed}");
    assert_eq!(listed[0]["session_id"], session, "{listed}");

    test_harness::send_signal(&mut holder.0, libc::SIGKILL);
    let took = wait_until("the killed client's fault removed", || {
        ns.faults_json().as_array().unwrap().is_empty()
    });
    eprintln!("MEASURE the killed client's fault went {took:?} after SIGKILL");
}
