//! System tests of `slice` and of corrupt's `--byte-percent`: real sockets over a
//! namespace's `lo` and across a veth, IPv4 and IPv6, judged by what the applications read.

use crate::harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::*;

/// All four: IPv4 and IPv6 on lo, IPv4 and IPv6 across a veth.
fn each(tag: &str, test: impl Fn(&Scenario)) {
    for s in [
        Scenario::lo_v4(&format!("{tag}l4")),
        Scenario::lo_v6(&format!("{tag}l6")),
        Scenario::veth(&format!("{tag}4"), SERVER_V4),
        Scenario::veth(&format!("{tag}6"), SERVER_V6),
    ] {
        eprintln!("scenario: {} {}", s.kind(), s.server_addr);
        test(&s);
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
}

/// Writes `data` on `from` in one call (from another thread) while `to` reads it with a
/// 64 KiB buffer: what arrived, and the size of every read.
fn transfer(from: &TcpStream, mut to: &TcpStream, data: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let mut writer = from.try_clone().unwrap();
    let sent = data.to_vec();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    to.set_read_timeout(Some(WAIT)).unwrap();
    let (mut got, mut sizes) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + WAIT;
    while got.len() < data.len() && Instant::now() < deadline {
        let n = to.read(&mut buf).expect("read");
        assert_ne!(n, 0, "the peer closed after {} bytes", got.len());
        sizes.push(n);
        got.extend_from_slice(&buf[..n]);
    }
    t.join().unwrap();
    (got, sizes)
}

/// The sizes seen, for messages: a histogram.
fn histogram(sizes: &[usize]) -> String {
    let mut h = std::collections::BTreeMap::new();
    for s in sizes {
        *h.entry(*s).or_insert(0) += 1;
    }
    format!("{h:?}")
}

#[test]
fn sliced_streams_reach_the_application_in_reads_of_at_most_n_bytes() {
    require_root();
    if let Err(why) = kernel_fq() {
        // Refused as a delay is: one line naming the field and fq, nothing left behind.
        let s = Scenario::lo_v4("slq");
        let ns = s.server_ns();
        let out = ns.faultctl(&[
            "slice", "--port", "5301", "--bytes", "100", "--delay", "5ms",
        ]);
        let err = stderr_text(&out);
        assert!(!out.status.success(), "slice --delay accepted without fq");
        assert!(
            err.contains("action.slice.delay_us") && err.contains("fq"),
            "{err}"
        );
        assert_eq!(ns.faults_json().as_array().unwrap().len(), 0);
        skip(&format!(
            "slice --delay needs fq to space segments, and {why}; refusal checked"
        ));
        return;
    }
    each("slc", |s| {
        let listener = s.listen(5301);
        let (before, before_server) = s.pair(&listener, 5301);
        s.faultctl(&[
            "slice", "--port", "5301", "--bytes", "100", "--delay", "50ms",
        ]);
        let (client, server) = s.pair(&listener, 5301);
        let data = pattern(2000);
        for (way, from, to) in [
            ("to the server", &client, &server),
            ("to the client", &server, &client),
        ] {
            let segs_before = tcp_data_segs_in(to);
            let start = Instant::now();
            let (got, sizes) = transfer(from, to, &data);
            let took = start.elapsed();
            let segs = tcp_data_segs_in(to) - segs_before;
            assert!(got == data, "{way}: the bytes are not intact");
            // What faultd guarantees, however late the reader runs: segments of at most 100
            // bytes (the receiver's kernel counted at least 2000 / 100 of them), each
            // leaving 50 ms after the one before (so the 20 take at least 19 × 50 ms). An
            // application that reads as data comes reads at most 100 bytes at once: printed,
            // not asserted, since a reader that falls 50 ms behind takes two at once.
            eprintln!(
                "MEASURE {} {way}: {segs} segments in {took:?}, reads {}",
                s.server_addr,
                histogram(&sizes)
            );
            assert!(
                segs >= 20,
                "{} {way}: 2000 bytes in {segs} segments: some were larger than 100 bytes",
                s.server_addr
            );
            // Spacing is a departure time, set at TC egress (docs/actions/slice.md): on `lo`
            // every segment leaves through it; across the veth (faultd on the server's end)
            // only the server's segments do, and the client's arrive at ingress unspaced.
            let spaced = s.kind() == "lo" || way == "to the client";
            assert!(
                !spaced || took >= Duration::from_millis(19 * 50),
                "{} {way}: 20 segments 50 ms apart arrived within {took:?}",
                s.server_addr
            );
        }
        // The connection from before keeps its MSS: one write arrives in larger reads.
        let (got, sizes) = transfer(&before, &before_server, &pattern(60_000));
        assert_eq!(got.len(), 60_000);
        assert!(
            sizes.iter().any(|&n| n > 100),
            "an old connection was sliced: {}",
            histogram(&sizes)
        );
    });
}

/// `slice --bytes 100` without spacing: what the receiving application reads is intact and
/// comes in many small reads. Every segment is at most 100 bytes and one at most is in
/// flight (the window is held to it), but without spacing the next segment can arrive
/// before the reader ran, and one read takes what the queue holds: seen here, reads of
/// 100 bytes on lo and of 100 to 300 (now and then more) across a veth. The test prints
/// them; the bound on reads is the spaced test's.
#[test]
fn sliced_streams_arrive_intact_in_small_reads() {
    require_root();
    each("sln", |s| {
        let listener = s.listen(5302);
        s.faultctl(&["slice", "--port", "5302", "--bytes", "100"]);
        let (client, server) = s.pair(&listener, 5302);
        let data = pattern(20_000);
        let (got, sizes) = transfer(&client, &server, &data);
        assert!(got == data, "the bytes are not intact");
        eprintln!(
            "{} {}: {} reads: {}",
            s.kind(),
            s.server_addr,
            sizes.len(),
            histogram(&sizes)
        );
        // Unsliced, one write of 20 000 bytes arrives in one to three reads.
        assert!(
            sizes.len() >= 20,
            "{} reads: the stream was not sliced: {}",
            sizes.len(),
            histogram(&sizes)
        );
    });
}

/// Slices the kernel cannot honour, UDP and negative spacings are refused naming the field,
/// and leave no fault behind.
#[test]
fn slices_below_the_minimum_or_on_udp_are_refused() {
    require_root();
    let s = Scenario::lo_v4("slr");
    let ns = s.server_ns();
    for (args, field, says) in [
        (vec!["--bytes", "47"], "action.slice.bytes", "48"),
        (vec!["--bytes", "0"], "action.slice.bytes", "48"),
        (vec!["--bytes", "65536"], "action.slice.bytes", "65535"),
        (
            vec!["--bytes", "100", "--protocol", "udp"],
            "target.protocol",
            "tcp",
        ),
    ] {
        let mut all = vec!["slice", "--port", "5303"];
        all.extend(&args);
        let out = ns.faultctl(&all);
        let err = stderr_text(&out);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(err.contains(field) && err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(ns.faults_json().as_array().unwrap().len(), 0);
}

/// `corrupt --byte-percent 1`: 102 400 bytes sent arrive complete, with a binomial share of
/// them changed (mean 1 024, within 6σ = 191), each changed byte flipped; the receiver's TCP
/// took them (valid checksums) without a retransmission storm.
#[test]
fn byte_percent_corrupts_a_binomial_share_of_the_bytes() {
    require_root();
    each("cbp", |s| {
        let listener = s.listen(5304);
        let (client, server) = s.pair(&listener, 5304);
        s.faultctl(&[
            "corrupt",
            "--port",
            "5304",
            "--direction",
            "to-port",
            "--byte-percent",
            "1",
        ]);
        let data = pattern(102_400);
        let (got, _) = transfer(&client, &server, &data);
        assert_eq!(got.len(), data.len(), "bytes lost");
        let changed: Vec<usize> = (0..data.len()).filter(|&i| got[i] != data[i]).collect();
        for &i in &changed {
            assert_eq!(got[i], !data[i], "byte {i} changed but not flipped");
        }
        let (mean, sigma) = (1024.0, (102_400.0f64 * 0.01 * 0.99).sqrt());
        eprintln!(
            "{} {}: {} bytes changed",
            s.kind(),
            s.server_addr,
            changed.len()
        );
        assert!(
            (changed.len() as f64 - mean).abs() <= 6.0 * sigma,
            "{} bytes changed, want {mean} ± {}",
            changed.len(),
            6.0 * sigma
        );
        let retrans = total_retrans(&client);
        assert!(retrans < 20, "{retrans} retransmissions");
    });
}

/// TCP_INFO's tcpi_total_retrans of a socket.
fn total_retrans(stream: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a live socket, a buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            &mut info as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    info.tcpi_total_retrans
}
