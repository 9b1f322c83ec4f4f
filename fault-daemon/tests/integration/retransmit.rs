//! The README's claim about `lo`: drops act at TC ingress, after the sender's transmit has
//! succeeded, so the sender cannot tell them from a packet lost on a wire — it waits for its
//! retransmission timeout and retransmits, as TCP_USER_TIMEOUT and keepalive expect.
//! Dropped at egress instead, the sender's own stack would see the drop: the segment would
//! never count as sent (nothing unacknowledged, nothing retransmitted), or its
//! retransmissions would fail locally (TcpExt TCPRetransFail).

use crate::harness;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use harness::*;

/// The kernel's view of a TCP socket.
fn tcp_info(sock: &impl AsRawFd) -> libc::tcp_info {
    // SAFETY: tcp_info is plain integers, valid when zeroed.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: buffer and length are valid; the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info
}

/// A counter from /proc/net/netstat of the calling thread's namespace, e.g.
/// ("TcpExt", "TCPRetransFail").
fn netstat(group: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut lines = text.lines().filter(|l| l.starts_with(&format!("{group}:")));
    let (header, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = header
        .split_whitespace()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no {group} {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

#[test]
fn a_drop_on_lo_makes_the_sender_retransmit_on_its_timeout() {
    require_root();
    let ns = Netns::new("rto");
    let _daemon = Daemon::start(&ns, &["lo"]);
    let port = 7301u16;
    let (mut client, mut server) = ns.run(|| {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        (client, listener.accept().unwrap().0)
    });
    echo(&mut client, &mut server, b"before");
    let before = tcp_info(&client);
    assert_eq!(
        before.tcpi_total_retrans, 0,
        "a retransmission before the fault"
    );
    let fails_before = ns.run(|| netstat("TcpExt", "TCPRetransFail"));

    let id = ns.faultctl_ok(&["drop", "--port", &port.to_string()]);
    client.write_all(b"held").unwrap();
    assert_eq!(
        read_for(&mut server, Duration::from_millis(1500)).unwrap(),
        None,
        "data crossed the drop"
    );
    let info = tcp_info(&client);
    let fails = ns.run(|| netstat("TcpExt", "TCPRetransFail")) - fails_before;
    eprintln!(
        "after 1.5 s: unacked {} total_retrans {} retransmits {} backoff {} rto {} µs; \
         TCPRetransFail +{fails}",
        info.tcpi_unacked,
        info.tcpi_total_retrans,
        info.tcpi_retransmits,
        info.tcpi_backoff,
        info.tcpi_rto
    );
    // The segment left the sender's stack and waits for an ACK, as on a wire.
    assert!(info.tcpi_unacked >= 1, "the segment never counted as sent");
    // The retransmission timer fired (and backed off), and the sender retransmitted.
    assert!(info.tcpi_retransmits >= 1 && info.tcpi_backoff >= 1);
    assert!(info.tcpi_total_retrans >= 1, "no retransmission in 1.5 s");
    // Each retransmission, too, left the stack: none failed locally.
    assert_eq!(fails, 0, "retransmissions failed in the sender's own stack");
    assert_eq!(tcp_state(&client), TCP_ESTABLISHED);

    ns.faultctl_ok(&["rm", &id]);
    // The next retransmission gets through, on the same connection.
    let got = read_exact_within(&mut server, 4, WAIT).unwrap();
    assert_eq!(got, b"held");
    echo(&mut client, &mut server, b"after");
}
