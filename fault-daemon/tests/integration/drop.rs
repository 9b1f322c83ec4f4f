//! System tests of `drop` with real processes and real sockets in a network namespace.

use crate::harness;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use harness::*;

/// A connected client/server pair on `port` inside the calling thread's namespace.
fn connect_pair(addr: &str, port: u16) -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((addr, port)).unwrap();
    let client = TcpStream::connect((addr, port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

fn echo_once(from: &mut TcpStream, to: &mut TcpStream, msg: &[u8]) {
    from.write_all(msg).unwrap();
    let got = read_exact_within(to, msg.len(), WAIT).unwrap();
    assert_eq!(got, msg);
}

/// The headline: after `faultctl drop` both ends stay ESTABLISHED, nothing arrives and no
/// FIN or RST is sent; after `faultctl rm` the same connection delivers the buffered data.
/// Another port is unaffected throughout.
#[test]
fn drop_silences_a_connection_that_resumes_after_rm() {
    require_root();
    let ns = Netns::new("drop");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let (mut client, mut server, mut other_c, mut other_s) = ns.run(|| {
        let (c, s) = connect_pair("127.0.0.1", 2379);
        let (oc, os) = connect_pair("127.0.0.1", 2380);
        (c, s, oc, os)
    });
    echo_once(&mut client, &mut server, b"before");
    let rsts_before = ns.run(|| snmp("Tcp", "OutRsts"));

    let id = ns.faultctl_ok(&["drop", "--port", "2379"]);
    assert!(
        id.parse::<u64>().is_ok(),
        "drop prints the new id, got {id:?}"
    );

    client.write_all(b"lost-for-now").unwrap();
    server.write_all(b"also-held").unwrap();
    // Nothing arrives, in either direction, and nothing ends the connection.
    assert_eq!(
        read_for(&mut server, Duration::from_millis(1500)).unwrap(),
        None
    );
    assert_eq!(
        read_for(&mut client, Duration::from_millis(500)).unwrap(),
        None
    );
    // The other port keeps working while the fault is on.
    echo_once(&mut other_c, &mut other_s, b"unaffected");
    echo_once(&mut other_s, &mut other_c, b"still fine");
    assert_eq!(tcp_state(&client), TCP_ESTABLISHED);
    assert_eq!(tcp_state(&server), TCP_ESTABLISHED);
    assert_eq!(
        ns.run(|| snmp("Tcp", "OutRsts")),
        rsts_before,
        "no RST was sent"
    );

    let stats: serde_json::Value =
        serde_json::from_str(&ns.faultctl_ok(&["stats", "--json"])).unwrap();
    let counters = &stats["faults"][0]["counters"];
    assert!(counters["acted_packets"].as_u64().unwrap() >= 2, "{stats}");
    assert!(counters["acted_bytes"].as_u64().unwrap() > 0, "{stats}");

    ns.faultctl_ok(&["rm", &id]);
    // TCP retransmits the held data on the very same connection.
    let got = read_exact_within(&mut server, b"lost-for-now".len(), WAIT).unwrap();
    assert_eq!(got, b"lost-for-now");
    let got = read_exact_within(&mut client, b"also-held".len(), WAIT).unwrap();
    assert_eq!(got, b"also-held");
    echo_once(&mut client, &mut server, b"after");
    assert_eq!(ns.run(|| snmp("Tcp", "OutRsts")), rsts_before);
    assert_eq!(ns.faults_json(), serde_json::json!([]));
}

/// One-way drop over a veth (XDP carries ingress, TC egress carries egress): with
/// `--direction from-port` the server hears the client but the client hears nothing.
#[test]
fn one_way_drop_over_veth_in_both_families() {
    require_root();
    let pair = VethPair::new("dir");
    let _daemon = Daemon::start(&pair.server, &[SERVER_IF]);
    for (server_addr, port) in [(SERVER_V4, 7001u16), (SERVER_V6, 7002)] {
        let listener = pair
            .server
            .run(|| TcpListener::bind((server_addr, port)).unwrap());
        let mut client = pair
            .client
            .run(|| TcpStream::connect((server_addr, port)).unwrap());
        let (mut server, _) = listener.accept().unwrap();
        echo_once(&mut client, &mut server, b"hello");

        let id = pair.server.faultctl_ok(&[
            "drop",
            "--port",
            &port.to_string(),
            "--direction",
            "from-port",
        ]);
        echo_once(&mut client, &mut server, b"client to server still flows");
        server.write_all(b"server to client vanishes").unwrap();
        assert_eq!(
            read_for(&mut client, Duration::from_millis(1000)).unwrap(),
            None
        );
        pair.server.faultctl_ok(&["rm", &id]);
        let got = read_exact_within(&mut client, 25, WAIT).unwrap();
        assert_eq!(got, b"server to client vanishes");
    }
}

/// A UDP drop on a port, and a TTL that lifts the fault by itself.
#[test]
fn udp_drop_with_ttl_lifts_by_itself() {
    require_root();
    let ns = Netns::new("udp");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let (rx, tx) = ns.run(|| {
        let rx = std::net::UdpSocket::bind("127.0.0.1:5353").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (rx, tx)
    });
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let id = ns.faultctl_ok(&["drop", "--port", "5353", "--protocol", "udp", "--for", "3s"]);
    tx.send_to(b"dropped", "127.0.0.1:5353").unwrap();
    assert!(
        rx.recv(&mut buf).is_err(),
        "a datagram got through the drop"
    );
    // In that order: the datagram was sent while the fault was in force.
    assert_eq!(
        ns.faults_json()[0]["id"].to_string(),
        id,
        "the fault's TTL ran out before the datagram was sent: the machine is too slow for \
         this test's 3 s TTL"
    );
    // The TTL lifts it by itself: the fault leaves the list, then datagrams flow again.
    let took = wait_until("the fault removed by its TTL", || {
        ns.faults_json() == serde_json::json!([])
    });
    eprintln!("MEASURE a 3 s TTL: the fault went {took:?} after the datagram's check");
    rx.set_read_timeout(Some(WAIT)).unwrap();
    tx.send_to(b"through", "127.0.0.1:5353").unwrap();
    let n = rx.recv(&mut buf).expect("datagram after the TTL");
    assert_eq!(&buf[..n], b"through");
}
