//! Packet shapes beyond plain Ethernet + IP + TCP/UDP: VLAN and QinQ tags, the IPv6
//! Fragment header, long IPv6 extension chains, devices without an Ethernet header (tun,
//! WireGuard), jumbograms and BIG TCP, and `reset` answering packets that carry IPv4
//! options or IPv6 extension headers from a real socket.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::{
    EtherType, Ethernet2Header, IpHeaders, Ipv6Header, Ipv6RawExtHeader, PacketHeaders, TcpHeader,
    ip_number,
};
use fault_common::{ROLE_EGRESS, ROLE_INGRESS, ROLE_L3};
use faultd::datapath::XDP_PROGRAM;
use faultd::faults::{Action, Direction, Protocol};

use super::fixture::*;
use super::packets::tcp_flags::*;
use super::packets::*;

/// v4/v6 × TCP/UDP frames of a flow between a client on 40000 and `port`, both ways.
fn both_ways(port: u16) -> Vec<(FrameBuilder, String)> {
    let mut out = Vec::new();
    for flow in flows(port) {
        for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
            for to_port in [true, false] {
                let (src, dst) = oriented(&flow, to_port);
                let b = FrameBuilder::with_protocol(protocol, sock(src), sock(dst))
                    .payload(b"tagged payload");
                out.push((b, format!("{src} -> {dst} proto {protocol}")));
            }
        }
    }
    out
}

/// 802.1Q and 802.1ad (QinQ) tags in the frame are followed: a faulted port's packets get
/// their fault whatever the tags, other ports' packets pass byte for byte.
#[test]
fn vlan_and_qinq_tagged_frames_get_their_faults() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    let mut acted = 0;
    for tags in [&[100u16][..], &[200, 300]] {
        for (builder, what) in both_ways(2379) {
            let frame = builder.vlans(tags).build();
            let parsed = PacketHeaders::from_ethernet_slice(&frame).expect("etherparse reads it");
            assert_eq!(parsed.link_exts.len(), tags.len(), "{what}");
            verify_l4_checksum(&frame).expect("the builder's own frame");
            b.expect(
                &DROP_HOOKS,
                &frame,
                Verdict::Drop,
                &format!("{tags:?} {what}"),
            );
            acted += 2;
        }
        for (builder, what) in both_ways(2380) {
            let frame = builder.vlans(tags).build();
            b.expect(
                &ALL_HOOKS,
                &frame,
                Verdict::Pass,
                &format!("{tags:?} {what}"),
            );
        }
    }
    assert_eq!(b.counters(&fault).acted_packets, acted);
}

/// A forged RST answering a tagged segment keeps its tags, so it goes back on the VLAN the
/// segment came from; MACs, addresses and ports are swapped.
#[test]
fn reset_keeps_the_vlan_tags() {
    let mut b = Bench::new();
    b.add(spec(
        Action::Reset { probability: 1.0 },
        2379,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    for tags in [&[100u16][..], &[200, 300]] {
        for (client, server) in flows(2379) {
            let frame = FrameBuilder::tcp(sock(&client), sock(&server))
                .flags(ACK | PSH)
                .seq(1000)
                .ack(2000)
                .payload(b"hello")
                .vlans(tags)
                .build();
            for hook in [Hook::TcIngress, Hook::TcEgress] {
                let what = format!("{tags:?} {client} {hook:?}\n{}", hex(&frame));
                let run = b.run(hook, &frame);
                assert_eq!(run.verdict, Verdict::Redirect, "{what}");
                let rst = PacketHeaders::from_ethernet_slice(&run.out).expect("a frame");
                let was = PacketHeaders::from_ethernet_slice(&frame).unwrap();
                assert_eq!(rst.link_exts, was.link_exts, "tags: {what}");
                let (
                    Some(etherparse::LinkHeader::Ethernet2(e)),
                    Some(etherparse::LinkHeader::Ethernet2(w)),
                ) = (&rst.link, &was.link)
                else {
                    panic!("Ethernet: {what}")
                };
                assert_eq!(
                    (e.source, e.destination),
                    (w.destination, w.source),
                    "{what}"
                );
                let p = parse_frame(&run.out).expect("an IP RST");
                assert_eq!(p.src(), sock(&server), "{what}");
                assert_eq!(p.dst(), sock(&client), "{what}");
                let t = p.tcp().expect("TCP");
                assert_eq!((flags(t), t.sequence_number), (RST, 2000), "{what}");
                assert!(p.payload.is_empty(), "{what}");
                verify_l4_checksum(&run.out).unwrap_or_else(|e| panic!("{e}: {what}"));
                if let IpHeaders::Ipv4(h, _) = &p.ip {
                    assert_eq!(h.header_checksum, h.calc_header_checksum(), "{what}");
                }
            }
        }
    }
}

/// The IPv6 Fragment header is followed: the first fragment (offset 0) carries the ports
/// and gets its fault; later fragments carry no ports and pass untouched and uncounted
/// (the first one dropped, the datagram cannot be reassembled anyway).
#[test]
fn ipv6_first_fragment_gets_its_fault_later_fragments_pass() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    for protocol in [IPPROTO_TCP, IPPROTO_UDP] {
        for more in [true, false] {
            let first = FrameBuilder::with_protocol(
                protocol,
                sock("[fd00::1]:40000"),
                sock("[fd00::2]:2379"),
            )
            .payload(&[7; 64]);
            let fragment = Ipv6Ext::Fragment { offset: 0, more };
            let frame = first.clone().ipv6_ext(fragment, 0).build();
            b.expect(&DROP_HOOKS, &frame, Verdict::Drop, "first fragment");
            let behind = first
                .ipv6_ext(Ipv6Ext::HopByHop, 0)
                .ipv6_ext(fragment, 0)
                .build();
            b.expect(
                &DROP_HOOKS,
                &behind,
                Verdict::Drop,
                "first fragment after hop-by-hop",
            );
        }
    }
    let acted = b.counters(&fault);
    assert_eq!(acted.acted_packets, 2 * 2 * 2 * 2);
    for offset in [1, 8, 185] {
        // Bytes that would read as port 2379 where a first fragment has its L4 header.
        let frame = FrameBuilder::udp(sock("[fd00::1]:2379"), sock("[fd00::2]:2379"))
            .ipv6_ext(
                Ipv6Ext::Fragment {
                    offset,
                    more: false,
                },
                0,
            )
            .build();
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, "later fragment");
    }
    assert_eq!(b.counters(&fault), acted);
}

/// An IPv6 packet whose extension chain is `n` destination-options headers (8 bytes each)
/// in front of TCP to `port`, each header serialised by etherparse.
fn ext_chain(n: usize, port: u16) -> Vec<u8> {
    let payload = b"deep";
    let mut tcp = TcpHeader::new(40000, port, 1, 65535);
    tcp.ack = true;
    let l4_len = tcp.header_len() + payload.len();
    let ip = Ipv6Header {
        payload_length: (8 * n + l4_len) as u16,
        next_header: if n == 0 {
            ip_number::TCP
        } else {
            ip_number::IPV6_DEST_OPTIONS
        },
        hop_limit: 64,
        source: "fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        destination: "fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets(),
        ..Default::default()
    };
    tcp.checksum = tcp.calc_checksum_ipv6(&ip, payload).expect("checksum");
    let mut frame = Vec::new();
    Ethernet2Header {
        source: DEFAULT_SRC_MAC,
        destination: DEFAULT_DST_MAC,
        ether_type: EtherType::IPV6,
    }
    .write(&mut frame)
    .unwrap();
    ip.write(&mut frame).unwrap();
    for i in 0..n {
        let next = if i + 1 == n {
            ip_number::TCP
        } else {
            ip_number::IPV6_DEST_OPTIONS
        };
        // One PadN option filling the 6 bytes after the two header bytes (RFC 8200 §4.2).
        let ext = Ipv6RawExtHeader::new_raw(next, &[1, 4, 0, 0, 0, 0]).unwrap();
        frame.extend_from_slice(&ext.to_bytes());
    }
    tcp.write(&mut frame).unwrap();
    frame.extend_from_slice(payload);
    frame
}

/// The programs follow up to `MAX_IPV6_EXT_HEADERS` (8) extension headers; a packet with a
/// longer chain passes untouched and uncounted (docs/reference.md, "Packet shapes").
#[test]
fn long_ipv6_extension_chains_are_followed_up_to_the_limit() {
    let mut b = Bench::new();
    let fault = b.add(drop_spec(2379, Protocol::Any, Direction::Both, None));
    for n in 0..=8 {
        // etherparse itself reads at most RFC 8200's order of headers, not such a chain.
        let frame = ext_chain(n, 2379);
        b.expect(&DROP_HOOKS, &frame, Verdict::Drop, &format!("{n} headers"));
    }
    let c = b.counters(&fault);
    for n in [9, 10, 16] {
        let frame = ext_chain(n, 2379);
        b.expect(&ALL_HOOKS, &frame, Verdict::Pass, &format!("{n} headers"));
    }
    assert_eq!(b.counters(&fault), c, "nothing beyond the limit is counted");
}

/// `frame` with its IPv4 total length or IPv6 payload length rewritten to 0, as BIG TCP
/// sends packets over 64 KiB; with `jumbo`, an IPv6 hop-by-hop Jumbo Payload option
/// (RFC 2675) carries the real length. Headers re-serialised by etherparse.
fn zero_length(frame: &[u8], jumbo: bool) -> Vec<u8> {
    let p = PacketHeaders::from_ethernet_slice(frame).expect("a frame");
    let mut out = frame[..ETH_HLEN].to_vec();
    match p.net {
        Some(etherparse::NetHeaders::Ipv4(mut h, _)) => {
            assert!(!jumbo, "IPv4 has no jumbograms");
            h.total_len = 0;
            h.header_checksum = h.calc_header_checksum();
            out.extend_from_slice(&h.to_bytes());
            out.extend_from_slice(&frame[ETH_HLEN + h.header_len()..]);
        }
        Some(etherparse::NetHeaders::Ipv6(mut h, _)) => {
            let rest = &frame[ETH_HLEN + IPV6_HLEN..];
            if jumbo {
                let next = h.next_header;
                h.next_header = ip_number::IPV6_HOP_BY_HOP;
                h.payload_length = 0;
                out.extend_from_slice(&h.to_bytes());
                let len = (8 + rest.len()) as u32;
                let [a, b2, c, d] = len.to_be_bytes();
                let hbh = Ipv6RawExtHeader::new_raw(next, &[0xc2, 4, a, b2, c, d]).unwrap();
                out.extend_from_slice(&hbh.to_bytes());
            } else {
                h.payload_length = 0;
                out.extend_from_slice(&h.to_bytes());
            }
            out.extend_from_slice(rest);
        }
        other => panic!("not IP: {other:?}"),
    }
    out
}

/// BIG TCP (IPv4 total length 0, IPv6 payload length 0) and IPv6 jumbograms (payload
/// length 0 and a Jumbo Payload option): the L4 length comes from the packet (or the
/// option), not from the zero. Shown by `reset` answering a segment without ACK: the RST
/// acknowledges sequence + payload length (RFC 793), so a length read as zero shows.
#[test]
fn big_tcp_and_jumbograms_have_their_real_length() {
    let mut b = Bench::new();
    b.add(spec(
        Action::Reset { probability: 1.0 },
        2379,
        Protocol::Tcp,
        Direction::Both,
        None,
    ));
    let payload = vec![0x42u8; 2000];
    for (client, server) in flows(2379) {
        let plain = FrameBuilder::tcp(sock(&client), sock(&server))
            .flags(PSH)
            .seq(5000)
            .payload(&payload)
            .build();
        let mut shapes = vec![(zero_length(&plain, false), "length field 0 (BIG TCP)")];
        if !sock(&client).is_ipv4() {
            shapes.push((zero_length(&plain, true), "jumbogram"));
        }
        for (frame, what) in shapes {
            for hook in [Hook::TcIngress, Hook::TcEgress] {
                let what = format!("{client} {what} {hook:?}");
                let run = b.run(hook, &frame);
                assert_eq!(run.verdict, Verdict::Redirect, "{what}");
                let p = parse_frame(&run.out).unwrap_or_else(|e| panic!("{e}: {what}"));
                let t = p.tcp().expect("TCP");
                assert_eq!(flags(t), RST | ACK, "{what}");
                assert_eq!(t.acknowledgment_number, 5000 + 2000, "{what}");
                verify_checksums(&run.out).unwrap_or_else(|e| panic!("{e}: {what}"));
            }
        }
    }
}

/// A tun device (TUN mode: IP packets, no link header) in a namespace of the test's own,
/// with 198.18.5.1/24 on it.
struct Tun {
    ifindex: u32,
}

const TUN_ADDR: &str = "198.18.5.1";
const TUN_PEER: &str = "198.18.5.2";

impl Tun {
    fn new(ns: &super::harness::Netns) -> Self {
        ns.ip(&["tuntap", "add", "dev", "ftun0", "mode", "tun"]);
        ns.ip(&["addr", "add", "198.18.5.1/24", "dev", "ftun0"]);
        ns.ip(&["link", "set", "ftun0", "up"]);
        let ifindex = ns.run(|| {
            // SAFETY: a valid NUL-terminated string.
            unsafe { libc::if_nametoindex(c"ftun0".as_ptr()) }
        });
        assert_ne!(ifindex, 0, "ftun0 exists");
        Self { ifindex }
    }

    /// XDP on this device under BPF_PROG_TEST_RUN: the IP packet as given, as generic XDP
    /// on a tun sees it. (A sched_cls test run always gets an Ethernet header pushed back,
    /// so TC is tested on the real device, `l3_devices_*`.)
    fn xdp(&self, b: &mut Bench, ip: &[u8]) -> Verdict {
        let mut out = vec![0u8; ip.len() + 256];
        let ctx: Vec<u8> = [0, ip.len() as u32, 0, self.ifindex, 0, 0]
            .iter()
            .flat_map(|w: &u32| w.to_ne_bytes())
            .collect();
        let prog: &mut Xdp =
            b.dp.ebpf_mut()
                .program_mut(XDP_PROGRAM)
                .unwrap()
                .try_into()
                .unwrap();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(ip),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat: 1,
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("XDP test_run on the tun: {e:?}"));
        match r.return_value {
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            v => panic!("XDP returned {v}"),
        }
    }

    /// The device's file (IFF_TUN | IFF_NO_PI, non-blocking): what is written to it comes
    /// in on the device, what the device sends is read from it.
    fn open(&self) -> OwnedFd {
        // SAFETY: a valid path; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        assert!(fd >= 0, "/dev/net/tun: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed ifreq is valid; TUNSETIFF reads name and flags.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(b"ftun0") {
                *d = *s as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            let rc = libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req);
            assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
        }
        fd
    }
}

fn write_packet(fd: &OwnedFd, ip: &[u8]) {
    // SAFETY: a valid buffer of the length passed.
    let n = unsafe { libc::write(fd.as_raw_fd(), ip.as_ptr().cast(), ip.len()) };
    assert_eq!(
        n,
        ip.len() as isize,
        "write to the tun: {}",
        std::io::Error::last_os_error()
    );
}

/// IPv4 packets the device sends within `within`, other traffic (IPv6 chatter) left out.
fn read_packets(fd: &OwnedFd, within: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut packets = Vec::new();
    while Instant::now() < deadline {
        let mut buf = vec![0u8; 65_536];
        // SAFETY: a valid buffer of the length passed.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        buf.truncate(n as usize);
        if buf[0] >> 4 == 4 {
            packets.push(buf);
        }
    }
    packets
}

/// An IPv4 packet from the tun's peer to its address, built by etherparse.
fn to_tun(tcp_syn: bool, port: u16, payload: &[u8]) -> Vec<u8> {
    let peer: std::net::Ipv4Addr = TUN_PEER.parse().unwrap();
    let addr: std::net::Ipv4Addr = TUN_ADDR.parse().unwrap();
    let ip = etherparse::PacketBuilder::ipv4(peer.octets(), addr.octets(), 64);
    let mut out = Vec::new();
    if tcp_syn {
        ip.tcp(40000, port, 7000, 65535)
            .syn()
            .write(&mut out, payload)
            .unwrap();
    } else {
        ip.udp(40000, port).write(&mut out, payload).unwrap();
    }
    out
}

/// On a tun device faultd parses packets from the IP header: generic XDP drops what comes
/// in to a faulted port, TC egress drops what goes out to one, TC ingress answers a SYN with
/// a RST sent back out of the device as a bare IP packet; other ports' traffic flows.
#[test]
fn l3_devices_are_parsed_from_the_ip_header() {
    require_root();
    let ns = super::harness::Netns::new("pl3");
    let tun = Tun::new(&ns);
    ns.run(|| {
        let mut b = Bench::bare();
        let fd = tun.open();
        b.dp.attach("ftun0").expect("attaching to the tun");
        b.add(drop_spec(2380, Protocol::Udp, Direction::Both, None));
        b.add(spec(
            Action::Reset { probability: 1.0 },
            2379,
            Protocol::Tcp,
            Direction::Both,
            None,
        ));

        // XDP under BPF_PROG_TEST_RUN, every family and protocol.
        for (builder, what) in both_ways(2380) {
            let ip = builder.build()[ETH_HLEN..].to_vec();
            let want = if what.contains("proto 17") {
                Verdict::Drop
            } else {
                Verdict::Pass
            };
            assert_eq!(tun.xdp(&mut b, &ip), want, "{what}");
        }

        // Coming in: UDP to the faulted port vanishes, to another port arrives.
        let faulted = std::net::UdpSocket::bind((TUN_ADDR, 2380)).unwrap();
        let free = std::net::UdpSocket::bind((TUN_ADDR, 2390)).unwrap();
        for s in [&faulted, &free] {
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
        }
        write_packet(&fd, &to_tun(false, 2380, b"faulted"));
        write_packet(&fd, &to_tun(false, 2390, b"free"));
        let mut buf = [0u8; 64];
        assert_eq!(free.recv(&mut buf).expect("the free port's datagram"), 4);
        assert!(
            faulted.recv(&mut buf).is_err(),
            "the faulted port's datagram arrived"
        );

        // Going out: to the faulted port it is dropped at TC egress, to another it leaves.
        let out = std::net::UdpSocket::bind((TUN_ADDR, 0)).unwrap();
        read_packets(&fd, Duration::from_millis(100));
        out.send_to(b"faulted", (TUN_PEER, 2380)).unwrap();
        out.send_to(b"free", (TUN_PEER, 2391)).unwrap();
        let sent: Vec<u16> = read_packets(&fd, Duration::from_millis(500))
            .iter()
            .filter_map(|p| etherparse::PacketHeaders::from_ip_slice(p).ok())
            .filter_map(|h| match h.transport {
                Some(etherparse::TransportHeader::Udp(u)) => Some(u.destination_port),
                _ => None,
            })
            .collect();
        assert_eq!(sent, [2391], "datagrams that left the tun, by port");

        // A SYN to a listening faulted port: answered with the RST, not the SYN|ACK.
        let _listener = TcpListener::bind((TUN_ADDR, 2379)).unwrap();
        write_packet(&fd, &to_tun(true, 2379, b""));
        let replies = read_packets(&fd, Duration::from_millis(500));
        let tcp: Vec<_> = replies
            .iter()
            .filter_map(|p| {
                let h = etherparse::PacketHeaders::from_ip_slice(p).ok()?;
                match h.transport {
                    Some(etherparse::TransportHeader::Tcp(t)) => Some((p.len(), t)),
                    _ => None,
                }
            })
            .collect();
        assert_eq!(tcp.len(), 1, "one reply to the SYN: {tcp:?}");
        let (len, t) = &tcp[0];
        assert_eq!((t.source_port, t.destination_port), (2379, 40000));
        assert_eq!(flags(t), RST | ACK, "{t:?}");
        assert_eq!(t.acknowledgment_number, 7001);
        assert_eq!(*len, 40, "bare IPv4 + TCP headers, no link header");
    });
}

/// faultd marks a tun device `ROLE_L3` when it attaches, and attaches XDP there in generic
/// mode (a tun in TUN mode runs no native XDP program); a veth stays Ethernet.
#[test]
fn attach_marks_devices_without_ethernet() {
    require_root();
    let ns = super::harness::Netns::new("pl3a");
    let dev = Tun::new(&ns);
    ns.ip(&[
        "link", "add", "fveth0", "type", "veth", "peer", "name", "fveth1",
    ]);
    ns.run(|| {
        let mut b = Bench::bare();
        let tun = b.dp.attach("ftun0").expect("attaching to a tun");
        assert_eq!(tun.xdp_mode, "generic");
        assert_eq!(
            b.dp.role(dev.ifindex),
            Some(ROLE_INGRESS | ROLE_EGRESS | ROLE_L3)
        );
        let veth = b.dp.attach("fveth0").expect("attaching to a veth");
        assert_eq!(b.dp.role(veth.ifindex), Some(ROLE_INGRESS | ROLE_EGRESS));
    });
}

/// Connects to `addr` with the socket prepared by `setup`; the error (or success) within
/// three seconds (SO_SNDTIMEO bounds a blocking connect).
fn connect_with(addr: SocketAddr, setup: &dyn Fn(i32)) -> Result<(), std::io::Error> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket call.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 3,
        tv_usec: 0,
    };
    // SAFETY: a timeval, as SO_SNDTIMEO takes.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const timeout).cast::<u8>(),
            size_of::<libc::timeval>(),
        )
    };
    setsockopt(
        socket.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_SNDTIMEO,
        bytes,
    );
    setup(socket.as_raw_fd());
    // SAFETY: zeroed sockaddr structs are valid; the sizes passed are theirs.
    let rc = unsafe {
        match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                libc::connect(
                    fd,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                libc::connect(
                    fd,
                    (&raw const sa).cast(),
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            }
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn setsockopt(fd: i32, level: i32, name: i32, value: &[u8]) {
    // SAFETY: a valid buffer of the size passed.
    let rc =
        unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as u32) };
    assert_eq!(
        rc,
        0,
        "setsockopt {level}/{name}: {}",
        std::io::Error::last_os_error()
    );
}

/// `reset` (and `refuse`) answer a real SYN that carries IPv4 options (IP_OPTIONS) or an
/// IPv6 destination-options header (IPV6_DSTOPTS): connect() fails with ECONNREFUSED at
/// once. The programs are attached to `lo` of a namespace of the test's own, where the
/// SYN is CHECKSUM_PARTIAL: shrinking such a packet to bare headers fails while the
/// options are still in front of the TCP header, so they are taken out first.
#[test]
fn reset_answers_a_real_syn_with_ip_options_or_extension_headers() {
    require_root();
    let ns = super::harness::Netns::new("prsto");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.run(|| {
        let mut b = Bench::bare();
        b.dp.attach("lo").expect("attaching to lo");
        b.add(spec(
            Action::Reset { probability: 1.0 },
            2379,
            Protocol::Tcp,
            Direction::Both,
            None,
        ));
        let v4 = TcpListener::bind("127.0.0.1:2379").unwrap();
        let v6 = TcpListener::bind("[::1]:2379").unwrap();
        let cases: [(SocketAddr, &str, Box<dyn Fn(i32)>); 4] = [
            (
                "127.0.0.1:2379".parse().unwrap(),
                "IPv4, no options",
                Box::new(|_| {}),
            ),
            (
                "127.0.0.1:2379".parse().unwrap(),
                "IPv4 with 8 bytes of options",
                // NOP, NOP, NOP, NOP, Router Alert (RFC 2113): 4 + 4 bytes.
                Box::new(|fd| {
                    setsockopt(
                        fd,
                        libc::IPPROTO_IP,
                        libc::IP_OPTIONS,
                        &[1, 1, 1, 1, 0x94, 4, 0, 0],
                    )
                }),
            ),
            (
                "[::1]:2379".parse().unwrap(),
                "IPv6, no extension header",
                Box::new(|_| {}),
            ),
            (
                "[::1]:2379".parse().unwrap(),
                "IPv6 with a destination-options header",
                // Next header (filled in by the kernel), length 0 (8 bytes), PadN of 4.
                Box::new(|fd| {
                    setsockopt(
                        fd,
                        libc::IPPROTO_IPV6,
                        libc::IPV6_DSTOPTS,
                        &[0, 0, 1, 4, 0, 0, 0, 0],
                    )
                }),
            ),
        ];
        for (addr, what, setup) in &cases {
            let started = Instant::now();
            let got = connect_with(*addr, setup.as_ref());
            let took = started.elapsed();
            eprintln!("{what}: {got:?} after {took:?}");
            match got {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
                other => panic!("{what}: connect gave {other:?} after {took:?}, want ECONNREFUSED"),
            }
        }
        drop((v4, v6));
    });
}
