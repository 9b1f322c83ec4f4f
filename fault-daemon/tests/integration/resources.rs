//! Bounded resources: clients that open event streams and never read them, and thousands
//! of connections that never say anything, neither grow faultd's memory without bound nor
//! keep a normal client out.

use crate::harness;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::*;

const IDLE_CONNECTIONS: usize = 4000;
const STUCK_STREAMS: usize = 50;
/// faultd's default --max-connections.
const MAX_CONNECTIONS: usize = 256;
/// What all of that may add to faultd's resident memory. Each stuck stream used to hold a
/// copy of the 10 000-event history (about 2 MB), and each connection its buffers.
const RSS_GROWTH_BOUND_KB: u64 = 40 * 1024;

/// A process's resident memory, from /proc/PID/status.
/// Raises this process's limit of open descriptors to at least `n` (root may raise the hard
/// limit too).
fn allow_open_files(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill, then to set.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < n {
            lim.rlim_cur = n;
            lim.rlim_max = lim.rlim_max.max(n);
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "setrlimit: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// `n` connection attempts to `port`, each refused (an event each).
fn refused(port: u16, n: usize) {
    for _ in 0..n {
        let _ = std::net::TcpStream::connect(("127.0.0.1", port));
    }
}

#[test]
fn stuck_streams_and_idle_connections_neither_grow_memory_nor_starve_clients() {
    require_root();
    // This process holds every idle connection: more than the usual 1024 descriptors (the
    // VM's init leaves that default). faultd, started after, inherits the limit too.
    allow_open_files(IDLE_CONNECTIONS as u64 + 1024);
    let ns = Netns::new("res");
    let daemon = Daemon::start(&ns, &["lo"]);
    let pid = daemon.pid();
    ns.faultctl_ok(&["refuse", "--port", "9001"]);
    // A full history: 10 000 events (each attempt is a first hit and a refused SYN).
    ns.run(|| refused(9001, 5_500));
    let before = rss_kb(pid);

    let producing = AtomicBool::new(true);
    std::thread::scope(|s| {
        // Stops the producer however the test ends.
        struct Stop<'a>(&'a AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Relaxed);
            }
        }
        let _stop = Stop(&producing);
        // Events keep coming the whole time.
        s.spawn(|| {
            ns.run(|| {
                while producing.load(Ordering::Relaxed) {
                    refused(9001, 50);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        });
        let stuck = ns.run(|| {
            (0..STUCK_STREAMS)
                .map(|_| stuck_event_stream())
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_secs(1));
        let with_streams = rss_kb(pid);
        let idle = ns.run(|| {
            (0..IDLE_CONNECTIONS)
                .map(|_| {
                    std::net::TcpStream::connect_timeout(
                        &"127.0.0.1:7447".parse().unwrap(),
                        Duration::from_secs(5),
                    )
                    .expect("connecting")
                })
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_secs(2));

        // A normal client still gets its answer.
        let asked = Instant::now();
        let list = ns.faultctl(&["list", "--json"]);
        let took = asked.elapsed();
        assert!(
            list.status.success(),
            "faultctl list failed with {IDLE_CONNECTIONS} idle connections open: {}",
            stderr_text(&list)
        );
        eprintln!("MEASURE faultctl list answered in {took:?}");
        let events = ns.faultctl(&["events", "--json"]);
        assert!(events.status.success(), "{}", stderr_text(&events));

        let after = rss_kb(pid);
        let fds = open_fds(pid);
        eprintln!(
            "faultd RSS {before} kB before, {with_streams} kB with {STUCK_STREAMS} stuck \
             streams, {after} kB with {IDLE_CONNECTIONS} idle connections too; {fds} open fds; \
             list answered in {took:?}"
        );
        assert!(
            after.saturating_sub(before) < RSS_GROWTH_BOUND_KB,
            "faultd grew by {} kB",
            after - before
        );
        assert!(
            fds < MAX_CONNECTIONS + 64,
            "faultd holds {fds} fds: connections are not bounded"
        );
        producing.store(false, Ordering::Relaxed);
        drop(idle);
        drop(stuck);
    });
    // Once they are gone, faultd serves as before.
    ns.faultctl_ok(&["list"]);
}
