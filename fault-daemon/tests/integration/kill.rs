//! System tests of the connection-killing faults — reset, refuse, limit-bytes, limit-age —
//! and of peer filters, UDP and events, with real sockets, over `lo` and a veth, IPv4 and
//! IPv6.

use crate::harness;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;

/// Reads until the socket fails; returns the error, panicking if it never fails.
fn read_error(stream: &mut TcpStream) -> std::io::Error {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match read_for(stream, Duration::from_millis(100)) {
            Err(e) => return e,
            Ok(Some(b)) if b.is_empty() => panic!("clean EOF instead of an error"),
            Ok(_) => {}
        }
    }
    panic!("the socket never failed");
}

fn assert_reset(stream: &mut TcpStream) {
    let err = read_error(stream);
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["kind"].as_str().unwrap()).collect()
}

#[test]
fn reset_gives_both_ends_econnreset() {
    require_root();
    Scenario::each("rst", |s| {
        let listener = s.listen(7100);
        let (mut client, mut server) = s.pair(&listener, 7100);
        let (mut other_c, mut other_s) = s.pair(&s.listen(7101), 7101);
        s.faultctl(&["reset", "--port", "7100"]);

        client.write_all(b"x").unwrap();
        assert_reset(&mut client);
        server.write_all(b"y").unwrap();
        assert_reset(&mut server);
        echo(&mut other_c, &mut other_s, b"another port is untouched");

        let events = s.events();
        assert!(kinds(&events).contains(&"first-hit"), "{events:?}");
        let rsts: Vec<_> = events.iter().filter(|e| e["kind"] == "rst-sent").collect();
        assert!(rsts.len() >= 2, "one RST for each side: {events:?}");
        assert!(rsts.iter().all(|e| e["kernel_ns"].as_u64().unwrap() > 0));
    });
}

#[test]
fn refuse_rst_fails_new_connections_at_once_and_spares_established_ones() {
    require_root();
    Scenario::each("ref", |s| {
        let listener = s.listen(7200);
        let (mut client, mut server) = s.pair(&listener, 7200);
        s.faultctl(&["refuse", "--port", "7200"]);
        let err = s
            .connect(7200)
            .expect_err("connect succeeded through refuse");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        echo(&mut client, &mut server, b"established flows keep working");
        echo(&mut server, &mut client, b"both ways");
        assert!(kinds(&s.events()).contains(&"syn-refused"));
    });
}

#[test]
fn refuse_drop_makes_connect_time_out() {
    require_root();
    Scenario::each("rfd", |s| {
        let listener = s.listen(7300);
        let (mut client, mut server) = s.pair(&listener, 7300);
        s.faultctl(&["refuse", "--port", "7300", "--mode", "drop"]);
        let addr = s.addr(7300);
        let err = s
            .client_ns()
            .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(1500)))
            .expect_err("connect succeeded through refuse --mode drop");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        echo(&mut client, &mut server, b"still alive");
    });
}

#[test]
fn limit_bytes_delivers_exactly_n_bytes_then_resets() {
    require_root();
    Scenario::each("lb", |s| {
        let listener = s.listen(7400);
        s.faultctl(&["limit-bytes", "--port", "7400", "--bytes", "100"]);
        let (mut client, mut server) = s.pair(&listener, 7400); // 4 bytes ("ping")
        echo(&mut client, &mut server, &[b'a'; 60]);
        echo(&mut client, &mut server, &[b'b'; 36]); // 100 bytes so far
        client.write_all(b"one too many").unwrap();
        assert_reset(&mut client);
        // Byte 101 never arrives: the server is reset too, before it writes.
        assert_reset(&mut server);
        assert!(kinds(&s.events()).contains(&"flow-cut"));
    });
}

#[test]
fn limit_bytes_zero_closes_on_first_data() {
    require_root();
    let s = Scenario::lo_v4("lb0");
    let listener = s.listen(7401);
    s.faultctl(&[
        "limit-bytes",
        "--port",
        "7401",
        "--bytes",
        "0",
        "--then",
        "drop",
    ]);
    let mut client = s
        .connect(7401)
        .expect("the handshake carries no data and passes");
    let (mut server, _) = listener.accept().unwrap();
    client.write_all(b"first byte").unwrap();
    assert_eq!(
        read_for(&mut server, Duration::from_millis(800)).unwrap(),
        None
    );
    // Dropped, not reset: both ends believe the connection is up.
    assert_eq!(tcp_state(&client), TCP_ESTABLISHED);
    assert_eq!(tcp_state(&server), TCP_ESTABLISHED);
}

/// The cut comes at age T: measured with the kernel's own timestamps of the flow's first
/// packet and of the cut, while the client sends a byte every 10 ms.
#[test]
fn limit_age_cuts_at_the_age() {
    require_root();
    Scenario::each("la", |s| {
        let listener = s.listen(7500);
        s.faultctl(&["limit-age", "--port", "7500", "--after", "1s"]);
        let (mut client, _server) = s.pair(&listener, 7500);
        let deadline = Instant::now() + WAIT;
        let err = loop {
            assert!(Instant::now() < deadline, "the connection was never cut");
            if let Err(e) = client.write_all(b".") {
                break e;
            }
            match read_for(&mut client, Duration::from_millis(10)) {
                Err(e) => break e,
                Ok(_) => {}
            }
        };
        assert!(
            [libc::ECONNRESET, libc::EPIPE].contains(&err.raw_os_error().unwrap_or(0)),
            "{err}"
        );
        let events = s.events();
        let at = |kind: &str| {
            events
                .iter()
                .find(|e| e["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind}: {events:?}"))["kernel_ns"]
                .as_u64()
                .unwrap()
        };
        let age_ms = (at("flow-cut") - at("first-hit")) as f64 / 1e6;
        eprintln!("cut at {age_ms:.1} ms");
        assert!(
            (1000.0..=1100.0).contains(&age_ms),
            "cut at {age_ms} ms, wanted 1000 ms"
        );
    });
}

/// `--peer` narrows a fault to one remote address; traffic from elsewhere is untouched.
#[test]
fn peer_filter_selects_the_remote_address() {
    require_root();
    let pair = VethPair::new("peer");
    let _daemon = Daemon::start(&pair.server, &["lo", SERVER_IF]);
    let listener = pair
        .server
        .run(|| TcpListener::bind("0.0.0.0:7600").unwrap());
    let connect_from = |ns: &Netns, to: &str| {
        let addr: SocketAddr = format!("{to}:7600").parse().unwrap();
        let mut c = ns.run(|| TcpStream::connect(addr).unwrap());
        let (mut srv, _) = listener.accept().unwrap();
        echo(&mut c, &mut srv, b"hi");
        (c, srv)
    };
    let (mut remote, mut remote_srv) = connect_from(&pair.client, SERVER_V4);
    let (mut local, mut local_srv) = connect_from(&pair.server, "127.0.0.1");

    let id = pair
        .server
        .faultctl_ok(&["drop", "--port", "7600", "--peer", "198.18.0.99/32"]);
    echo(&mut remote, &mut remote_srv, b"another peer is not matched");
    pair.server.faultctl_ok(&["rm", &id]);

    pair.server.faultctl_ok(&[
        "drop",
        "--port",
        "7600",
        "--peer",
        &format!("{CLIENT_V4}/32"),
    ]);
    remote.write_all(b"blocked").unwrap();
    assert_eq!(
        read_for(&mut remote_srv, Duration::from_millis(800)).unwrap(),
        None
    );
    echo(&mut local, &mut local_srv, b"local traffic flows");
    echo(&mut local_srv, &mut local, b"both ways");
}

#[test]
fn udp_refuse_and_probability_drop() {
    require_root();
    let ns = Netns::new("udp3");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let (rx, tx) = ns.run(|| {
        (
            UdpSocket::bind("127.0.0.1:7700").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        )
    });
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 64];
    let mut received = |count: usize| {
        let mut got = 0;
        for batch in 0..count / 50 {
            for i in 0..50 {
                tx.send_to(format!("{batch}-{i}").as_bytes(), "127.0.0.1:7700")
                    .unwrap();
            }
            while rx.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        got
    };
    assert_eq!(received(100), 100, "no fault yet");

    let id = ns.faultctl_ok(&[
        "refuse",
        "--port",
        "7700",
        "--protocol",
        "udp",
        "--mode",
        "drop",
    ]);
    assert_eq!(
        received(100),
        0,
        "refuse --mode drop lets no datagram to the port through"
    );
    ns.faultctl_ok(&["rm", &id]);

    ns.faultctl_ok(&[
        "drop",
        "--port",
        "7700",
        "--protocol",
        "udp",
        "--probability",
        "0.5",
    ]);
    let got = received(2000);
    // Binomial(2000, 0.5): mean 1000, sd 22.4; ±6 sd.
    assert!(
        (866..=1134).contains(&got),
        "{got} of 2000 datagrams with p=0.5"
    );
}

#[test]
fn bad_connection_faults_change_nothing() {
    require_root();
    let ns = Netns::new("bad3");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["reset", "--port", "80", "--protocol", "udp"],
            "target.protocol",
        ),
        (
            &["refuse", "--port", "80", "--protocol", "udp"],
            "target.protocol",
        ),
        (
            &["limit-bytes", "--port", "80", "--bytes", "-1"],
            "action.limit_bytes.bytes",
        ),
        (
            &[
                "limit-bytes",
                "--port",
                "80",
                "--bytes",
                "5",
                "--protocol",
                "udp",
                "--then",
                "reset",
            ],
            "target.protocol",
        ),
        (&["limit-age", "--port", "80", "--after", "-1s"], "--after"),
        (
            &["reset", "--port", "80", "--peer", "banana"],
            "target.peer",
        ),
        (
            &["refuse", "--port", "80", "--peer", "198.18.0.1/33"],
            "target.peer",
        ),
        (
            &[
                "limit-age",
                "--port",
                "80",
                "--after",
                "1s",
                "--peer",
                "fd00::/129",
            ],
            "target.peer",
        ),
    ];
    for (args, field) in cases {
        let out = ns.faultctl(args);
        let err = stderr_text(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(field), "{args:?} should name {field}: {err}");
    }
    assert_eq!(ns.faults_json(), serde_json::json!([]));
}
