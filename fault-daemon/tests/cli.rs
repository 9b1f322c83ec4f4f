//! faultctl's output for people: the `list`, `stats` and `clear` tables with real faults and
//! real traffic, and `events --follow` printing events as the kernel reports them.

mod harness;

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;

const LIST_COLUMNS: &[&str] = &[
    "ID",
    "ACTION",
    "PORT",
    "PROTO",
    "DIRECTION",
    "PEER",
    "PARAMS",
    "EXPIRES IN",
    "LABEL",
    "OWNER",
    "SESSION",
];
const STATS_COLUMNS: &[&str] = &[
    "ID",
    "ACTION",
    "PORT",
    "PROTO",
    "MATCHED PKTS",
    "MATCHED BYTES",
    "ACTED PKTS",
    "ACTED BYTES",
    "LABEL",
];

/// The rows of a table printed with a header of `columns` (left-aligned cells, so each
/// cell starts where its header does), as lists of trimmed cells.
fn table_rows(text: &str, columns: &[&str]) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header line");
    let mut starts = Vec::new();
    let mut from = 0;
    for column in columns {
        let at = header[from..]
            .find(column)
            .unwrap_or_else(|| panic!("no column {column:?} in {header:?}"))
            + from;
        starts.push(at);
        from = at + column.len();
    }
    let rest = header[from..].trim();
    assert!(rest.is_empty(), "unexpected columns {rest:?} in {header:?}");
    lines
        .map(|line| {
            let cell = |i: usize| {
                let end = starts.get(i + 1).copied().unwrap_or(line.len());
                line.get(starts[i]..end.min(line.len()))
                    .unwrap_or("")
                    .trim()
                    .to_string()
            };
            (0..columns.len()).map(cell).collect()
        })
        .collect()
}

/// faultctl's stdout as printed (not trimmed: the table's first cell is padded).
fn faultctl_raw(ns: &Netns, args: &[&str]) -> String {
    let out = ns.faultctl(args);
    assert!(
        out.status.success(),
        "faultctl {args:?}: {}",
        stderr_text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn row_of<'a>(rows: &'a [Vec<String>], id: &str) -> &'a [String] {
    rows.iter()
        .find(|r| r[0] == id)
        .unwrap_or_else(|| panic!("no row for fault {id} in {rows:?}"))
}

/// `list`, `stats` and `clear` as people read them: one row per real fault with what was
/// asked for, counters that move with the traffic the kernel dropped, and nothing left
/// (in the table or in the kernel) after `clear`.
#[test]
fn list_stats_and_clear_tables_show_real_faults() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("tables");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let empty = faultctl_raw(&ns, &["list"]);
    assert_eq!(table_rows(&empty, LIST_COLUMNS), Vec::<Vec<String>>::new());

    let dns = ns.faultctl_ok(&[
        "drop",
        "--port",
        "7401",
        "--protocol",
        "udp",
        "--label",
        "quiet dns",
    ]);
    let loss = ns.faultctl_ok(&[
        "loss",
        "--port",
        "7402",
        "--percent",
        "25",
        "--direction",
        "to-port",
        "--peer",
        "198.18.0.0/15",
        "--for",
        "60s",
    ]);
    let limit = ns.faultctl_ok(&[
        "limit-bytes",
        "--port",
        "7403",
        "--bytes",
        "100",
        "--then",
        "drop",
    ]);
    let refuse = ns.faultctl_ok(&[
        "refuse",
        "--port",
        "7404",
        "--protocol",
        "udp",
        "--mode",
        "drop",
    ]);

    let text = faultctl_raw(&ns, &["list"]);
    eprintln!("faultctl list:\n{text}");
    let rows = table_rows(&text, LIST_COLUMNS);
    assert_eq!(rows.len(), 4, "{text}");
    let ids: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(ids, [&dns, &loss, &limit, &refuse], "rows in id order");
    let expect = |id: &str, cells: [&str; 7], label: &str| {
        let row = row_of(&rows, id);
        assert_eq!(&row[1..7], &cells[..6], "fault {id}: {row:?}");
        assert_eq!(row[8], label, "fault {id}: {row:?}");
        assert_eq!(row[10], "-", "fault {id} is bound to no session: {row:?}");
        // Added by root through faultctl (the name where the system has a passwd file).
        let owner: Vec<&str> = row[9].split_whitespace().collect();
        assert!(
            matches!(owner[..], ["root(0)", "pid", pid, "faultctl"] | ["uid", "0", "pid", pid, "faultctl"]
                if pid.parse::<u32>().is_ok()),
            "fault {id}: owner {:?}",
            row[9]
        );
        if cells[6] == "-" {
            assert_eq!(row[7], "-", "fault {id} has no TTL: {row:?}");
        } else {
            let secs: f64 = row[7].strip_suffix('s').unwrap().parse().unwrap();
            assert!(secs > 50.0 && secs <= 60.0, "expires in {secs} s: {row:?}");
        }
    };
    expect(
        &dns,
        ["drop", "7401", "udp", "both", "-", "-", "-"],
        "quiet dns",
    );
    let loss_cells = [
        "loss",
        "7402",
        "tcp",
        "to-port",
        "198.18.0.0/15",
        "percent=25",
        "60s",
    ];
    expect(&loss, loss_cells, "-");
    let limit_cells = [
        "limit-bytes",
        "7403",
        "tcp",
        "both",
        "-",
        "bytes=100 then=drop",
        "-",
    ];
    expect(&limit, limit_cells, "-");
    expect(
        &refuse,
        ["refuse", "7404", "udp", "both", "-", "mode=drop", "-"],
        "-",
    );

    let before = faultctl_raw(&ns, &["stats"]);
    let (_, table) = before.split_once('\n').unwrap();
    let rows = table_rows(table, STATS_COLUMNS);
    assert_eq!(&row_of(&rows, &dns)[4..8], ["0", "0", "0", "0"], "{before}");

    // Traffic: five datagrams into the drop (none arrives), and a TCP exchange on the loss
    // port from 127.0.0.1, which its peer filter leaves alone.
    let (rx, tx, mut client, mut server) = ns.run(|| {
        let rx = UdpSocket::bind("127.0.0.1:7401").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let listener = TcpListener::bind("127.0.0.1:7402").unwrap();
        let client = TcpStream::connect("127.0.0.1:7402").unwrap();
        (rx, tx, client, listener.accept().unwrap().0)
    });
    for _ in 0..5 {
        tx.send_to(&[7u8; 100], "127.0.0.1:7401").unwrap();
    }
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(
        rx.recv(&mut [0u8; 200]).is_err(),
        "a datagram crossed the drop"
    );
    echo(&mut client, &mut server, b"not from 198.18.0.0/15");

    let text = faultctl_raw(&ns, &["stats"]);
    eprintln!("faultctl stats:\n{text}");
    let json: Value = serde_json::from_str(&ns.faultctl_ok(&["stats", "--json"])).unwrap();
    let (attachment, table) = text
        .split_once('\n')
        .expect("an attachment line, then the table");
    let a = &json["attachments"][0];
    assert_eq!(
        attachment,
        format!(
            "lo: xdp {}, tc {}",
            a["xdp_mode"].as_str().unwrap(),
            a["tc_mode"].as_str().unwrap()
        )
    );
    let rows = table_rows(table, STATS_COLUMNS);
    assert_eq!(rows.len(), 4, "{text}");
    let counters = |id: &str| -> Vec<u64> {
        let row = row_of(&rows, id);
        row[4..8].iter().map(|c| c.parse().unwrap()).collect()
    };
    let [matched, matched_bytes, acted, acted_bytes] = counters(&dns)[..] else {
        unreachable!()
    };
    assert_eq!((matched, acted), (5, 5), "the five datagrams: {text}");
    // Each datagram is 100 bytes of payload, 128 with its IPv4 and UDP headers, 142 with
    // the Ethernet header TC sees.
    assert!((5 * 128..=5 * 142).contains(&acted_bytes), "{text}");
    assert_eq!(matched_bytes, acted_bytes, "{text}");
    for quiet in [&loss, &limit, &refuse] {
        assert_eq!(
            counters(quiet),
            [0, 0, 0, 0],
            "fault {quiet} saw no traffic: {text}"
        );
    }
    let row = row_of(&rows, &dns);
    assert_eq!(&row[1..4], ["drop", "7401", "udp"]);
    assert_eq!(row[8], "quiet dns");
    // The table says what the JSON says.
    for fault in json["faults"].as_array().unwrap() {
        let id = fault["id"].to_string();
        let c = &fault["counters"];
        let from_json: Vec<u64> = [
            "matched_packets",
            "matched_bytes",
            "acted_packets",
            "acted_bytes",
        ]
        .iter()
        .map(|k| c[k].as_u64().unwrap())
        .collect();
        assert_eq!(counters(&id), from_json, "fault {id}");
    }

    assert_eq!(ns.faultctl_ok(&["clear"]), "removed 4 fault(s)");
    let text = faultctl_raw(&ns, &["list"]);
    assert_eq!(
        table_rows(&text, LIST_COLUMNS),
        Vec::<Vec<String>>::new(),
        "{text}"
    );
    let text = faultctl_raw(&ns, &["stats"]);
    let (_, table) = text.split_once('\n').unwrap();
    assert_eq!(
        table_rows(table, STATS_COLUMNS),
        Vec::<Vec<String>>::new(),
        "{text}"
    );
    // The kernel let go too: a datagram gets through.
    tx.send_to(b"after clear", "127.0.0.1:7401").unwrap();
    let mut buf = [0u8; 64];
    let n = rx.recv(&mut buf).expect("a datagram after clear");
    assert_eq!(&buf[..n], b"after clear");
    assert_eq!(ns.faultctl_ok(&["clear"]), "removed 0 fault(s)");
}

/// A `faultctl events --follow` process, stopped by its PID when dropped.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(ns: &Netns) -> Self {
        // `ip netns exec` execs faultctl: the child's PID is faultctl's.
        let mut child = ns
            .cmd(FAULTCTL)
            .args(["events", "--follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn faultctl events --follow");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The first line containing `want` printed within `within`; other lines are skipped.
    fn line_with(&self, want: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(want) => return line,
                Ok(line) => eprintln!("other event: {line}"),
                Err(e) => panic!("no event line with {want:?} within {within:?}: {e}"),
            }
        }
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: signalling our own child by its PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn kernel_ns(line: &str) -> u64 {
    let field = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kernel_ns="))
        .unwrap_or_else(|| panic!("no kernel_ns in {line:?}"));
    field.parse().unwrap()
}

/// `events --follow` prints the history, then each new event as the kernel reports it,
/// until it is stopped.
#[test]
fn events_follow_prints_events_as_they_happen() {
    if !require_root() {
        return;
    }
    let ns = Netns::new("follow");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let listener = ns.run(|| TcpListener::bind("127.0.0.1:7501").unwrap());
    let id = ns.faultctl_ok(&["record", "--port", "7501"]);
    let connect = || {
        let client = ns.run(|| TcpStream::connect("127.0.0.1:7501").unwrap());
        let _accepted = listener.accept().unwrap();
        client.local_addr().unwrap()
    };
    // An event before the follower starts: it comes with the history, which also shows
    // that the follower's stream is open.
    let early = connect();
    let mut follower = Follower::start(&ns);
    let syn = |from: std::net::SocketAddr| format!("fault={id} syn {from} -> 127.0.0.1:7501");
    let first = follower.line_with(&syn(early), Duration::from_secs(10));

    for _ in 0..2 {
        let from = connect();
        let line = follower.line_with(&syn(from), Duration::from_secs(5));
        assert!(kernel_ns(&line) > kernel_ns(&first), "{line} after {first}");
    }
    assert!(
        follower.child.try_wait().unwrap().is_none(),
        "--follow exited on its own"
    );
    let status = follower.stop();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGTERM)
    );
}
