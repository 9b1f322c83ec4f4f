//! `faultctl run`: timed scenarios against a real faultd in a test namespace.
//!
//! - Timing: a flapping drop on a UDP port while a sender sends numbered datagrams. Each
//!   round loses one run of datagrams, each sent no earlier than its round's planned add,
//!   with datagrams arriving between the rounds and after the heal, and the kernel reports
//!   each fault's first hit. How far from the plan each step took effect is printed (a
//!   measurement, never asserted: a slow machine is late, and lateness is not a failure).
//! - Interruption: SIGINT, SIGTERM and SIGKILL of `faultctl run` leave no fault behind, in
//!   faultd's list nor in the kernel's rule map.

use crate::harness;
use crate::kernel_rules;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::*;
use serde_json::Value;

fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A scenario file of the test's own, removed on drop.
struct ScenarioFile(PathBuf);

impl ScenarioFile {
    fn new(tag: &str, text: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("faultd-scenario-{tag}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for ScenarioFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `faultctl --json run FILE` inside `ns`, and a reader of its rows.
fn spawn_run(ns: &Netns, file: &ScenarioFile) -> (test_harness::Process, mpsc::Receiver<Value>) {
    let run = test_harness::Process::spawn(
        ns.cmd(FAULTCTL)
            .args(["--json", "run", file.path()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    )
    .expect("faultctl run");
    let mut run = run;
    let stdout = run.child.stdout.take().unwrap();
    (run, rows_of(stdout))
}

fn rows_of(stdout: ChildStdout) -> mpsc::Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let row: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON row: {line:?}: {e}"));
            if tx.send(row).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_row(rows: &mpsc::Receiver<Value>, within: Duration) -> Value {
    rows.recv_timeout(within)
        .unwrap_or_else(|e| panic!("no row from faultctl run within {within:?}: {e}"))
}

/// Kernel first-hit events (fault id → unix ms) from faultd's history.
fn first_hits(ns: &Netns) -> Vec<(u64, i64)> {
    ns.faultctl_ok(&["--json", "events"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "first-hit")
        .map(|e| {
            (
                e["fault_id"].as_u64().unwrap(),
                e["unix_ns"].as_i64().unwrap() / 1_000_000,
            )
        })
        .collect()
}

/// One datagram of [`numbered_while`]: its number, when its `send` returned and, if it
/// arrived, when (unix ms).
#[derive(Clone, Copy, Debug)]
struct Datagram {
    sent_ms: i64,
    arrived_ms: Option<i64>,
}

/// Sends numbered datagrams to `port` (one per millisecond or so) until `stop`, on threads
/// inside `ns`; `received` counts arrivals as they come. Returns every datagram sent, in
/// order, with its arrival.
fn numbered_while(ns: &Netns, port: u16, stop: &AtomicBool, received: &AtomicU64) -> Vec<Datagram> {
    ns.run(|| {
        let receiver = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sent = std::thread::scope(|s| {
            let sending = s.spawn(|| {
                let mut sent = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let seq = sent.len() as u64;
                    let _ = sender.send_to(&seq.to_be_bytes(), ("127.0.0.1", port));
                    // Taken after the send: a dropped datagram left no earlier than this.
                    sent.push(unix_ms_now());
                    std::thread::sleep(Duration::from_millis(1));
                }
                sent
            });
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 16];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(8) = receiver.recv(&mut buf) {
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                    arrivals.push((seq, unix_ms_now()));
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            // What is still queued arrived before `stop`.
            receiver.set_nonblocking(true).unwrap();
            while let Ok(8) = receiver.recv(&mut buf) {
                let seq = u64::from_be_bytes(buf[..8].try_into().unwrap());
                arrivals.push((seq, unix_ms_now()));
            }
            let sent = sending.join().unwrap();
            (sent, arrivals)
        });
        let (sent, arrivals) = sent;
        let mut out: Vec<Datagram> = sent
            .into_iter()
            .map(|sent_ms| Datagram {
                sent_ms,
                arrived_ms: None,
            })
            .collect();
        for (seq, at) in arrivals {
            out[seq as usize].arrived_ms = Some(at);
        }
        out
    })
}

/// The runs of consecutive datagrams that never arrived: (first, last) index.
fn lost_runs(datagrams: &[Datagram]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, d) in datagrams.iter().enumerate() {
        if d.arrived_ms.is_some() {
            continue;
        }
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == i => *last = i,
            _ => runs.push((i, i)),
        }
    }
    runs
}

/// Waits (up to a generous deadline) until `counter` has grown by `by`.
fn wait_for_more(counter: &AtomicU64, by: u64, what: &str) {
    let from = counter.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(30);
    while counter.load(Ordering::Relaxed) < from + by {
        assert!(Instant::now() < deadline, "{what}: nothing arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
}

const FLAP: &str = r#"
name = "timing"

[[step]]
name = "flap"
at = "1s"
for = "400ms"
repeat = 3
every = "1s"
fault = { action = "drop", port = 7601, protocol = "udp" }
"#;

#[test]
fn steps_take_effect_in_the_kernel_on_time() {
    require_root();
    let ns = Netns::new("scnt");
    let daemon = Daemon::start(&ns, &["lo"]);
    let file = ScenarioFile::new("timing", FLAP);
    let stop = AtomicBool::new(false);
    let received = AtomicU64::new(0);
    let (datagrams, rows, status) = std::thread::scope(|s| {
        let traffic = s.spawn(|| numbered_while(&ns, 7601, &stop, &received));
        // Traffic flows before the run starts…
        wait_for_more(&received, 5, "before the run");
        let (mut run, rows) = spawn_run(&ns, &file);
        let status = run.child.wait().unwrap();
        let rows: Vec<Value> = rows.try_iter().collect();
        // …and again after its heal.
        wait_for_more(&received, 5, "after the heal");
        stop.store(true, Ordering::Relaxed);
        (traffic.join().unwrap(), rows, status)
    });
    assert!(status.success(), "faultctl run: {status}; rows {rows:?}");
    let events: Vec<&str> = rows.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert_eq!(
        events,
        [
            "start", "add", "remove", "add", "remove", "add", "remove", "heal"
        ]
    );
    let start = rows[0]["unix_ms"].as_i64().unwrap();
    let hits = first_hits(&ns);
    let runs = lost_runs(&datagrams);
    let at = |i: usize| datagrams[i].sent_ms;
    eprintln!(
        "start {start}; first hits {hits:?}; lost {:?}",
        runs.iter()
            .map(|&(a, b)| (at(a), at(b)))
            .collect::<Vec<_>>()
    );
    // Nothing is lost on loopback but what the fault drops: one run per round, with
    // datagrams arriving before, between and after them (the ends of the runs are
    // datagrams that arrived, by construction).
    assert_eq!(runs.len(), 3, "one outage per round: {runs:?}");
    assert!(runs[0].0 > 0, "nothing arrived before the first round");
    assert!(
        runs[2].1 + 1 < datagrams.len(),
        "nothing arrived after the last round"
    );
    for round in 0..3 {
        let (add, remove) = (&rows[1 + 2 * round], &rows[2 + 2 * round]);
        let planned_add = start + add["at_ms"].as_i64().unwrap();
        let planned_remove = start + remove["at_ms"].as_i64().unwrap();
        let id = add["fault_ids"][0].as_u64().unwrap();
        assert_eq!(remove["fault_ids"][0].as_u64(), Some(id));
        // The kernel began dropping: the fault's first hit.
        let (_, hit) = *hits
            .iter()
            .find(|(fault, _)| *fault == id)
            .unwrap_or_else(|| panic!("no first-hit event of fault {id}: {hits:?}"));
        // The application's view: what was lost was sent after the planned add (faultctl
        // adds no earlier than planned); the order is asserted, the lateness reported.
        let (first, last) = runs[round];
        assert!(
            at(first) >= planned_add,
            "round {round}: a datagram sent {} ms before the planned add was dropped",
            planned_add - at(first)
        );
        eprintln!(
            "MEASURE round {round}: first hit {:+} ms, outage from {:+} ms to {:+} ms of the \
             planned add and removal",
            hit - planned_add,
            at(first) - planned_add,
            at(last) - planned_remove
        );
    }
    assert_eq!(ns.faults_json(), serde_json::json!([]));
    assert_eq!(kernel_rules::read(daemon.pid()), kernel_rules::Rules::new());
}

const LONG: &str = r#"
[[step]]
name = "hold"
at = "0s"
for = "60s"
faults = [
  { action = "drop", port = 7602 },
  { action = "reset", port = 7603, direction = "to-port" },
]
"#;

/// Polls until faultd lists no fault and the kernel's rule map is empty, up to a generous
/// deadline (a session ends within about 1 s: `cargo xtask bench` measures it); returns how
/// long that took.
fn wait_all_gone(ns: &Netns, daemon: &Daemon, since: Instant) -> Duration {
    loop {
        let listed = ns.faults_json();
        let rules = kernel_rules::read(daemon.pid());
        if listed == serde_json::json!([]) && rules.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < GONE_WITHIN,
            "faults outlived faultctl run by {GONE_WITHIN:?}: {listed} / kernel {rules:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long the tests wait for a session's faults to go: a deadline, not a figure.
const GONE_WITHIN: Duration = Duration::from_secs(30);

#[test]
fn an_interrupted_run_leaves_no_fault_behind() {
    require_root();
    let ns = Netns::new("scni");
    let daemon = Daemon::start(&ns, &["lo"]);
    let file = ScenarioFile::new("long", LONG);
    for (signal, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGKILL, "SIGKILL"),
    ] {
        let (mut run, rows) = spawn_run(&ns, &file);
        assert_eq!(next_row(&rows, WAIT)["event"], "start");
        let added = next_row(&rows, WAIT);
        assert_eq!(added["event"], "add", "{added}");
        let listed = ns.faults_json();
        let session = listed[0]["session_id"].as_u64().unwrap();
        assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
        assert!(
            session > 0,
            "the run's faults are bound to its session: {listed}"
        );
        let rules = kernel_rules::read(daemon.pid());
        assert_eq!(rules.len(), 2, "both ports' rules in the kernel: {rules:?}");

        run.signal(signal);
        let signalled = Instant::now();
        let status = run.child.wait().unwrap();
        let took = wait_all_gone(&ns, &daemon, signalled);
        eprintln!("MEASURE {name}: exit {status}, faults gone {took:?} after the signal");
        if signal == libc::SIGKILL {
            continue;
        }
        assert_eq!(status.code(), Some(0), "{name}: {status}");
        let healed = next_row(&rows, WAIT);
        assert_eq!(healed["event"], "heal", "{healed}");
        let why = if signal == libc::SIGINT {
            "interrupted"
        } else {
            "terminated"
        };
        assert_eq!(healed["note"], why);
        assert_eq!(healed["fault_ids"].as_array().unwrap().len(), 2, "{healed}");
    }
}

/// A step faultd refuses fails the run (exit 3, naming the step and the field) after
/// removing what earlier steps added.
#[test]
fn a_refused_step_fails_the_run_after_its_heal() {
    require_root();
    let ns = Netns::new("scnr");
    let daemon = Daemon::start(&ns, &["lo"]);
    let file = ScenarioFile::new(
        "refused",
        "[[step]]\nat = \"0s\"\nfault = { action = \"drop\", port = 7604 }\n\
         [[step]]\nname = \"bad\"\nat = \"200ms\"\nfault = { action = \"loss\", port = 7604, percent = 150 }\n",
    );
    let out = ns.faultctl(&["run", file.path()]);
    let stderr = stderr_text(&out);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.starts_with("faultctl: step 2 \"bad\" at 200ms: action.loss.percent"),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.lines().last().unwrap().contains("heal"), "{stdout}");
    assert_eq!(ns.faults_json(), serde_json::json!([]));
    assert_eq!(kernel_rules::read(daemon.pid()), kernel_rules::Rules::new());
}
