//! `faultctl run`: timed scenarios against a real faultd in a test namespace.
//!
//! - Timing: a flapping drop on a UDP port while a sender sends a datagram every 5 ms. The
//!   kernel's first-hit event of each fault says when the kernel began dropping, and the
//!   receiver's gap in arrivals says when the drop ended: both within 100 ms of the plan.
//! - Interruption: SIGINT, SIGTERM and SIGKILL of `faultctl run` leave no fault behind, in
//!   faultd's list nor in the kernel's rule map.

mod harness;
#[path = "support/kernel_rules.rs"]
mod kernel_rules;

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use harness::*;
use serde_json::Value;

/// How far from the plan an add or a removal may take effect.
const TOLERANCE_MS: i64 = 100;

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

/// Sends a datagram to `port` every 5 ms until `stop`, and records when each arrived
/// (unix ms), on threads inside `ns`.
fn arrivals_while(ns: &Netns, port: u16, stop: &AtomicBool) -> Vec<i64> {
    ns.run(|| {
        let receiver = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let _ = sender.send_to(b"tick", ("127.0.0.1", port));
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
            let mut arrivals = Vec::new();
            let mut buf = [0u8; 16];
            while !stop.load(Ordering::Relaxed) {
                if receiver.recv(&mut buf).is_ok() {
                    arrivals.push(unix_ms_now());
                }
            }
            arrivals
        })
    })
}

/// The gaps longer than 50 ms between arrivals: (last before, first after), unix ms.
fn gaps(arrivals: &[i64]) -> Vec<(i64, i64)> {
    arrivals
        .windows(2)
        .filter(|w| w[1] - w[0] > 50)
        .map(|w| (w[0], w[1]))
        .collect()
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
    if !require_root() {
        return;
    }
    let ns = Netns::new("scnt");
    let daemon = Daemon::start(&ns, &["lo"]);
    let file = ScenarioFile::new("timing", FLAP);
    let stop = AtomicBool::new(false);
    let (arrivals, rows, status) = std::thread::scope(|s| {
        let traffic = s.spawn(|| arrivals_while(&ns, 7601, &stop));
        // Traffic flows before the run starts.
        std::thread::sleep(Duration::from_millis(300));
        let (mut run, rows) = spawn_run(&ns, &file);
        let status = run.child.wait().unwrap();
        let rows: Vec<Value> = rows.try_iter().collect();
        std::thread::sleep(Duration::from_millis(300));
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
    let gaps = gaps(&arrivals);
    eprintln!("start {start}; first hits {hits:?}; gaps {gaps:?}");
    assert_eq!(gaps.len(), 3, "one outage per round: {gaps:?}");
    for round in 0..3 {
        let (add, remove) = (&rows[1 + 2 * round], &rows[2 + 2 * round]);
        let planned_add = start + add["at_ms"].as_i64().unwrap();
        let planned_remove = start + remove["at_ms"].as_i64().unwrap();
        let id = add["fault_ids"][0].as_u64().unwrap();
        assert_eq!(remove["fault_ids"][0].as_u64(), Some(id));
        // The kernel began dropping: the fault's first hit, by the kernel's clock.
        let (_, hit) = *hits
            .iter()
            .find(|(fault, _)| *fault == id)
            .unwrap_or_else(|| panic!("no first-hit event of fault {id}: {hits:?}"));
        assert!(
            (hit - planned_add).abs() <= TOLERANCE_MS,
            "round {round}: fault {id} first hit {} ms from its planned add",
            hit - planned_add
        );
        // The application's view: no datagram from the add to the removal.
        let (last_before, first_after) = gaps[round];
        assert!(
            (last_before - planned_add).abs() <= TOLERANCE_MS,
            "round {round}: the outage began {} ms from the plan",
            last_before - planned_add
        );
        assert!(
            (first_after - planned_remove).abs() <= TOLERANCE_MS,
            "round {round}: datagrams came back {} ms from the planned removal",
            first_after - planned_remove
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

/// Polls until faultd lists no fault and the kernel's rule map is empty, for up to 1.5 s
/// (a session ends within 1 s); returns how long that took.
fn wait_all_gone(ns: &Netns, daemon: &Daemon, since: Instant) -> Duration {
    loop {
        let listed = ns.faults_json();
        let rules = kernel_rules::read(daemon.pid());
        if listed == serde_json::json!([]) && rules.is_empty() {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_millis(1500),
            "faults outlived faultctl run: {listed} / kernel {rules:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_interrupted_run_leaves_no_fault_behind() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("scni");
    let daemon = Daemon::start(&ns, &["lo"]);
    let file = ScenarioFile::new("long", LONG);
    for (signal, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGKILL, "SIGKILL"),
    ] {
        let (mut run, rows) = spawn_run(&ns, &file);
        assert_eq!(next_row(&rows, Duration::from_secs(10))["event"], "start");
        let added = next_row(&rows, Duration::from_secs(10));
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
        eprintln!("{name}: exit {status}, faults gone {took:?} after the signal");
        if signal == libc::SIGKILL {
            continue;
        }
        assert_eq!(status.code(), Some(0), "{name}: {status}");
        let healed = next_row(&rows, Duration::from_secs(1));
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
    if !require_root() {
        return;
    }
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
