//! Every fault acts on exactly the packets it names, under any timing (issue #23): what
//! applications observe, across a veth (IPv4 and IPv6), with the timing that fooled the old
//! programs made to happen on purpose.
//!
//! - Duplicate: 1 000 distinct same-size UDP datagrams each arrive exactly twice, both ways
//!   through faultd's interface (a copy sent in through the receive backlog, a copy sent
//!   out), with threaded NAPI on faultd's veth and the datagrams sent in bursts, so that
//!   several originals wait in one poll before any copy comes back (defect 1).
//! - Corrupt + duplicate: every arrival is corrupted, copies included (defect 1).
//! - Two partitions on one pair, one per protocol: both protocols are cut (defect 2).
//! - `slice` in one direction is refused naming the direction (defect 3).
//! - Delay + duplicate on UDP: the copy leaves no earlier than its original (defect 5;
//!   needs sch_fq, so it measures in the VM of `cargo xtask vm-test`).

use crate::harness;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use harness::*;

/// How a test's datagrams cross faultd's interface.
#[derive(Copy, Clone, Debug)]
enum Way {
    /// Client → server: in through faultd's veth (TC ingress; a copy sent in).
    ToPort,
    /// Server → client: out of faultd's veth (TC egress; a copy sent out).
    FromPort,
}

/// (receiver, sender), connected, for datagrams going `way` to or from `port`.
fn udp_pair(s: &Scenario, port: u16, way: Way) -> (UdpSocket, UdpSocket) {
    let server = s.addr(port);
    let client_ip = if server.is_ipv4() {
        CLIENT_V4
    } else {
        CLIENT_V6
    };
    let client = SocketAddr::new(client_ip.parse().unwrap(), 40_000 + port % 1000);
    let (receiver, sender) = match way {
        Way::ToPort => (
            s.server_ns().run(|| UdpSocket::bind(server).unwrap()),
            s.client_ns().run(|| UdpSocket::bind(client).unwrap()),
        ),
        Way::FromPort => (
            s.client_ns().run(|| UdpSocket::bind(client).unwrap()),
            s.server_ns().run(|| UdpSocket::bind(server).unwrap()),
        ),
    };
    sender.connect(receiver.local_addr().unwrap()).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Room for every copy, whatever the reader's pace.
    let size: libc::c_int = 32 << 20;
    // SAFETY: a valid socket and an int option of its size.
    unsafe {
        libc::setsockopt(
            receiver.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            size_of::<libc::c_int>() as u32,
        );
    }
    (receiver, sender)
}

/// Threaded NAPI on faultd's veth (where the kernel allows it): its packets are polled by a
/// kernel thread, many per poll, while the sender runs on another CPU.
fn threaded_napi(s: &Scenario) {
    let ns = &s.server_ns().name;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c"])
        .arg(format!("echo 1 > /sys/class/net/{SERVER_IF}/threaded"))
        .output()
        .unwrap();
    if !out.status.success() {
        eprintln!(
            "threaded NAPI not set on {SERVER_IF}: {}",
            stderr_text(&out).trim()
        );
    }
}

/// Datagram `seq`: its number in two bytes, then a pattern; all the same size.
fn datagram(seq: u16) -> Vec<u8> {
    let mut d = seq.to_be_bytes().to_vec();
    d.extend((2..200u32).map(|i| (i * 7 % 251) as u8));
    d
}

/// Reads until `want` datagrams have come or `deadline` passes, then until the socket
/// stays quiet (so that extra copies are counted too).
fn receive(receiver: &UdpSocket, want: usize, deadline: Instant, got: &mut Vec<Vec<u8>>) {
    let mut buf = [0u8; 2048];
    let start = got.len();
    while got.len() - start < want && Instant::now() < deadline {
        if let Ok(n) = receiver.recv(&mut buf) {
            got.push(buf[..n].to_vec());
        }
    }
}

fn drain(receiver: &UdpSocket, got: &mut Vec<Vec<u8>>) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = receiver.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
}

const DATAGRAMS: u16 = 1000;
const BURST: u16 = 20;

/// Sends DATAGRAMS datagrams in bursts of BURST, each burst once the previous one's two
/// copies each have come (within a deadline): returns every arrival.
fn send_in_bursts(receiver: &UdpSocket, sender: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    for first in (0..DATAGRAMS).step_by(BURST as usize) {
        for seq in first..first + BURST {
            sender.send(&datagram(seq)).unwrap();
        }
        receive(
            receiver,
            2 * BURST as usize,
            Instant::now() + Duration::from_secs(10),
            &mut got,
        );
    }
    drain(receiver, &mut got);
    got
}

/// How many times each sequence number arrived.
fn arrivals(got: &[Vec<u8>]) -> Vec<u32> {
    let mut n = vec![0u32; DATAGRAMS as usize];
    for d in got {
        let seq = u16::from_be_bytes([d[0], d[1]]) as usize;
        assert!(seq < n.len(), "a datagram that was never sent: {d:?}");
        n[seq] += 1;
    }
    n
}

fn veths(tag: &str) -> [Scenario; 2] {
    [
        Scenario::veth(&format!("{tag}4"), SERVER_V4),
        Scenario::veth(&format!("{tag}6"), SERVER_V6),
    ]
}

/// `duplicate --percent 100`: each of 1 000 distinct same-size datagrams arrives exactly
/// twice, going in and going out, with several originals in one NAPI poll.
#[test]
fn each_of_a_thousand_datagrams_arrives_exactly_twice() {
    require_root();
    for s in veths("xdup") {
        threaded_napi(&s);
        s.faultctl(&[
            "duplicate",
            "--port",
            "5601",
            "--protocol",
            "udp",
            "--percent",
            "100",
        ]);
        for way in [Way::ToPort, Way::FromPort] {
            let (receiver, sender) = udp_pair(&s, 5601, way);
            let got = send_in_bursts(&receiver, &sender);
            let n = arrivals(&got);
            let wrong: Vec<(usize, u32)> = n
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != 2)
                .map(|(i, c)| (i, *c))
                .collect();
            assert!(
                wrong.is_empty(),
                "{} {way:?}: datagrams that did not arrive exactly twice (seq, times): {wrong:?}",
                s.server_addr
            );
            for d in &got {
                assert_eq!(d[2..], datagram(0)[2..], "intact");
            }
        }
    }
}

/// `corrupt` + `duplicate` on one port: every arrival, original or copy, is corrupted (the
/// copy carries the original's changes), and each datagram arrives twice.
#[test]
fn under_corrupt_and_duplicate_every_arrival_is_corrupted() {
    require_root();
    for s in veths("xcd") {
        threaded_napi(&s);
        for args in [
            [
                "corrupt",
                "--port",
                "5602",
                "--protocol",
                "udp",
                "--percent",
                "100",
            ],
            [
                "duplicate",
                "--port",
                "5602",
                "--protocol",
                "udp",
                "--percent",
                "100",
            ],
        ] {
            s.faultctl(&args);
        }
        for way in [Way::ToPort, Way::FromPort] {
            let (receiver, sender) = udp_pair(&s, 5602, way);
            let got = send_in_bursts(&receiver, &sender);
            // Corrupt may flip the sequence number's bytes too: count by content instead.
            assert_eq!(
                got.len(),
                2 * DATAGRAMS as usize,
                "{} {way:?}: every datagram twice",
                s.server_addr
            );
            let intact: Vec<&Vec<u8>> = got
                .iter()
                .filter(|d| (0..DATAGRAMS).any(|seq| **d == datagram(seq)))
                .collect();
            assert_eq!(
                intact.len(),
                0,
                "{} {way:?}: arrivals that were not corrupted: {:?}",
                s.server_addr,
                intact.iter().map(|d| [d[0], d[1]]).collect::<Vec<_>>()
            );
        }
    }
}

/// A `--protocol tcp` and a `--protocol udp` partition between the same two addresses: UDP
/// is cut too (only the first partition was consulted).
#[test]
fn partitions_for_each_protocol_between_one_pair_cut_both() {
    require_root();
    for s in veths("xpart") {
        let (receiver, sender) = udp_pair(&s, 5603, Way::ToPort);
        sender.send(&datagram(0)).unwrap();
        let mut got = Vec::new();
        receive(
            &receiver,
            1,
            Instant::now() + Duration::from_secs(10),
            &mut got,
        );
        assert_eq!(got.len(), 1, "UDP passes before the partitions");
        let client = if s.server_addr.contains(':') {
            CLIENT_V6
        } else {
            CLIENT_V4
        };
        for protocol in ["tcp", "udp"] {
            s.faultctl(&[
                "partition",
                "--between",
                s.server_addr,
                "--and",
                client,
                "--protocol",
                protocol,
            ]);
        }
        for seq in 1..20 {
            sender.send(&datagram(seq)).unwrap();
        }
        got.clear();
        drain(&receiver, &mut got);
        assert_eq!(
            got.len(),
            0,
            "{}: UDP crossed the partitions",
            s.server_addr
        );
        let listener = s.listen(5604);
        assert!(s.connect(5604).is_err(), "TCP crossed the partitions");
        drop(listener);
    }
}

/// `slice --direction to-port/from-port` is refused, naming the direction: one direction
/// would rewrite the handshake's options in one of SYN and SYN-ACK only.
#[test]
fn a_slice_in_one_direction_is_refused_naming_the_direction() {
    require_root();
    let ns = Netns::new("xslc");
    let _daemon = Daemon::start(&ns, &["lo"]);
    for direction in ["to-port", "from-port"] {
        let out = ns.faultctl(&[
            "slice",
            "--port",
            "5605",
            "--bytes",
            "100",
            "--direction",
            direction,
        ]);
        let err = stderr_text(&out);
        assert!(!out.status.success(), "{direction}: accepted");
        assert!(err.contains("direction"), "{direction}: {err}");
    }
    assert_eq!(ns.faults_json().as_array().map(Vec::len), Some(0));
    ns.faultctl_ok(&["slice", "--port", "5605", "--bytes", "100"]);
}

/// `delay 300ms` + `duplicate` on UDP leaving faultd's veth: the copy keeps its original's
/// departure time, so no datagram arrives, either time, before the delay has passed since
/// it was sent. (The redirect path cleared a UDP copy's departure time: it left at once.)
/// A lower bound only: an emulated CPU can only make arrivals later.
#[test]
fn a_delayed_copy_leaves_no_earlier_than_its_original() {
    require_root();
    if !need_fq() {
        return;
    }
    const DELAY: Duration = Duration::from_millis(300);
    for s in veths("xdly") {
        for args in [
            vec![
                "delay",
                "--port",
                "5606",
                "--protocol",
                "udp",
                "--latency",
                "300ms",
            ],
            vec![
                "duplicate",
                "--port",
                "5606",
                "--protocol",
                "udp",
                "--percent",
                "100",
            ],
        ] {
            s.faultctl(&args);
        }
        let (receiver, sender) = udp_pair(&s, 5606, Way::FromPort);
        let mut early = Vec::new();
        let mut got = 0;
        for seq in 0..10u16 {
            let sent = Instant::now();
            sender.send(&datagram(seq)).unwrap();
            let mut buf = [0u8; 2048];
            let deadline = sent + Duration::from_secs(20);
            let mut n = 0;
            while n < 2 && Instant::now() < deadline {
                if receiver.recv(&mut buf).is_ok() {
                    n += 1;
                    let after = sent.elapsed();
                    if after < DELAY - Duration::from_millis(20) {
                        early.push((seq, after));
                    }
                }
            }
            got += n;
        }
        assert_eq!(got, 20, "{}: each datagram twice", s.server_addr);
        assert!(
            early.is_empty(),
            "{}: arrivals before the delay (seq, after): {early:?}",
            s.server_addr
        );
    }
}
