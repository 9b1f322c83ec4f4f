//! The harness's guards clean up what they own, also when the code using them panics, and
//! only what they own. They need root (namespaces); without it each test says so.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use test_harness::{
    CLIENT_IF, Netns, NotReady, Process, SERVER_IF, SERVER_V4, VethPair, run, wait_for_log,
};

const PREFIX: &str = "fdh-";

fn namespaces() -> String {
    run(Command::new("ip").args(["netns", "list"])).unwrap()
}

fn listed(name: &str) -> bool {
    namespaces()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the PID exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{PREFIX}{name}-{}", std::process::id()))
}

#[test]
fn a_namespace_goes_with_its_guard_even_when_the_test_panics() {
    test_harness::require_root();
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::new(PREFIX, "panic").unwrap();
        name = ns.name.clone();
        assert!(listed(&ns.name), "{} not in {}", ns.name, namespaces());
        panic!("the test failed");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!listed(&name), "{name} left behind: {}", namespaces());
}

#[test]
fn run_executes_inside_the_namespace_and_passes_its_panic_on() {
    test_harness::require_root();
    let ns = Netns::new(PREFIX, "run").unwrap();
    let inode =
        |path: &str| std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let inside = ns
        .run(|| inode("/proc/thread-self/ns/net").unwrap())
        .unwrap();
    let file = inode(&format!("/var/run/netns/{}", ns.name)).unwrap();
    assert_eq!(inside, file, "the thread ran in the namespace");
    assert_ne!(
        inside,
        inode("/proc/thread-self/ns/net").unwrap(),
        "and the caller did not"
    );

    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ns.run(|| panic!("the message of the namespace thread"))
    }))
    .unwrap_err();
    assert_eq!(
        panic.downcast_ref::<&str>(),
        Some(&"the message of the namespace thread")
    );
}

#[test]
fn a_veth_pair_joins_two_namespaces_and_carries_traffic() {
    test_harness::require_root();
    let pair = VethPair::new(PREFIX, "veth").unwrap();
    let server_addrs = pair.server.ip(&["-br", "addr", "show", SERVER_IF]).unwrap();
    assert!(server_addrs.contains(SERVER_V4), "{server_addrs}");
    assert!(
        pair.client
            .ip(&["-br", "link", "show", CLIENT_IF])
            .unwrap()
            .contains("UP")
    );
    let listener = pair
        .server
        .run(|| std::net::TcpListener::bind((SERVER_V4, 0)).unwrap())
        .unwrap();
    let addr = listener.local_addr().unwrap();
    pair.client
        .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap()
        .expect("a connection across the pair");
    listener.accept().unwrap();
}

#[test]
fn remove_stale_removes_namespaces_of_dead_processes_only() {
    test_harness::require_root();
    let mut gone = Command::new("true").spawn().unwrap();
    let dead_pid = gone.id();
    gone.wait().unwrap();
    let stale = format!("{PREFIX}stale-{dead_pid}-0");
    run(Command::new("ip").args(["netns", "add", &stale])).unwrap();
    let live = Netns::new(PREFIX, "live").unwrap();
    Netns::remove_stale(PREFIX);
    let left = listed(&stale);
    if left {
        let _ = Command::new("ip").args(["netns", "del", &stale]).status();
    }
    assert!(!left, "{stale} was not removed");
    assert!(listed(&live.name), "{} was removed", live.name);
}

#[test]
fn a_process_guard_stops_its_process_by_pid() {
    let mut sleeper = Process::spawn(Command::new("sleep").arg("60")).unwrap();
    sleeper.grace = Duration::from_secs(2);
    let pid = sleeper.pid();
    assert!(alive(pid));
    drop(sleeper);
    // Stopped and reaped: the PID no longer exists.
    assert!(!alive(pid), "{pid} still runs");
}

#[test]
fn wait_for_log_finds_the_line_and_reports_an_early_exit() {
    let log = temp("ready.log");
    let spawn = |script: &str| {
        Command::new("sh")
            .args(["-c", script])
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = spawn("echo starting >&2; echo 'x: all ready now' >&2; sleep 5");
    let line = wait_for_log(&mut child, &log, "ready", Duration::from_secs(5)).unwrap();
    assert_eq!(line, "x: all ready now");
    test_harness::stop_child(&mut child, Duration::from_secs(1));

    let mut child = spawn("echo 'bad flag' >&2; exit 3");
    match wait_for_log(&mut child, &log, "ready", Duration::from_secs(5)) {
        Err(NotReady::Exited { status, log }) => {
            assert_eq!(status.code(), Some(3));
            assert!(log.contains("bad flag"), "{log}");
        }
        other => panic!("{other:?}"),
    }

    let mut child = spawn("sleep 5");
    match wait_for_log(&mut child, &log, "ready", Duration::from_millis(200)) {
        Err(NotReady::TimedOut { .. }) => {}
        other => panic!("{other:?}"),
    }
    test_harness::stop_child(&mut child, Duration::from_secs(1));
    let _ = std::fs::remove_file(&log);
}
