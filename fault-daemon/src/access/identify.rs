//! Who is at the other end of a connection, according to the kernel.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt as _;

use netlink_packet_core::{NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP, TCP_ESTABLISHED},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr as NetlinkAddr, protocols::NETLINK_SOCK_DIAG};

use super::{Caller, LocalCaller};

/// The peer of a Unix socket connection: its credentials when it connected.
pub fn unix_peer(stream: &tokio::net::UnixStream) -> io::Result<Caller> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    let mut gids = vec![cred.gid()];
    gids.extend(peer_groups(stream)?);
    Ok(Caller::Local(LocalCaller {
        uid: cred.uid(),
        gids,
        pid,
        command: pid.map(command_of).unwrap_or_default(),
        via: "unix socket".into(),
        socket_inode: None,
        found: Default::default(),
    }))
}

/// The supplementary groups of a Unix socket's peer (`SO_PEERGROUPS`).
fn peer_groups(stream: &impl AsRawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0u32; 64];
    loop {
        let mut len = (groups.len() * 4) as libc::socklen_t;
        // SAFETY: the buffer holds `len` bytes; the kernel writes at most that many.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            groups.truncate(len as usize / 4);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        // ERANGE: the kernel wrote the size it needs into `len`.
        if err.raw_os_error() == Some(libc::ERANGE) && len as usize > groups.len() * 4 {
            groups.resize(len as usize / 4, 0);
            continue;
        }
        return Err(err);
    }
}

/// The peer of a TCP connection accepted on `local`: the owner of the socket at the other
/// end, which is in this network namespace when the connection came over loopback. Only
/// its uid and socket: its process, which takes a scan of /proc, is left to
/// [`with_process`].
///
/// Every kind of local caller is found: an IPv4 socket, an IPv6 one (`::1`), and an IPv6
/// socket talking IPv4 through v4-mapped addresses (`[::ffff:127.0.0.1]:p`), which is how
/// gRPC's C core (Python's grpcio, Ruby, C#, C++, PHP) and dual-stack stacks such as Netty
/// connect to `127.0.0.1`. The lookup stays exact (the connection's 4-tuple, established
/// only) in each family asked ([`lookups`]); a caller found in none is refused, and the
/// reason names the families tried.
pub fn tcp_peer(local: SocketAddr, peer: SocketAddr) -> Caller {
    let unknown = |why: String| Caller::Unknown { peer, why };
    let lookups = lookups(peer, local);
    let mut errors = Vec::new();
    for lookup in &lookups {
        match socket_owner(lookup.src, lookup.dst) {
            Ok(Some(owner)) => {
                return Caller::Local(LocalCaller {
                    uid: owner.uid,
                    gids: Vec::new(),
                    pid: None,
                    command: String::new(),
                    via: format!("tcp from {peer}"),
                    socket_inode: Some(owner.inode),
                    found: Default::default(),
                });
            }
            Ok(None) => {}
            Err(e) => errors.push(format!("sock_diag in {}: {e}", lookup.family)),
        }
    }
    let tried = lookups
        .iter()
        .map(|l| l.family)
        .collect::<Vec<_>>()
        .join(" and ");
    if errors.is_empty() {
        unknown(format!(
            "the kernel has no established socket with that address; asked sock_diag in {tried}"
        ))
    } else {
        unknown(errors.join("; "))
    }
}

/// One exact sock_diag lookup: the caller's socket by its local address `src` and remote
/// `dst`, in one address family.
#[derive(Debug, PartialEq, Eq)]
pub struct Lookup {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// For people: "AF_INET", "AF_INET6 with v4-mapped addresses", "AF_INET6".
    pub family: &'static str,
}

/// The lookups that find the socket at the other end of a connection from `peer` to
/// `local` (as faultd's accepted socket sees them; a dual-stack listener sees an IPv4
/// client v4-mapped). An IPv4 peer may hold an IPv4 socket or an IPv6 one with v4-mapped
/// addresses (`IPV6_V6ONLY` off): AF_INET first, then AF_INET6 with both addresses mapped.
/// An IPv6 peer holds an IPv6 socket.
pub fn lookups(peer: SocketAddr, local: SocketAddr) -> Vec<Lookup> {
    match (unmapped(peer), unmapped(local)) {
        (src @ SocketAddr::V4(_), dst @ SocketAddr::V4(_)) => vec![
            Lookup {
                src,
                dst,
                family: "AF_INET",
            },
            Lookup {
                src: mapped(src),
                dst: mapped(dst),
                family: "AF_INET6 with v4-mapped addresses",
            },
        ],
        (src, dst) => vec![Lookup {
            src,
            dst,
            family: "AF_INET6",
        }],
    }
}

/// A TCP caller with its process, command and groups: the process of its uid that holds
/// its socket (a scan of /proc), or the user's groups when none does any more.
pub fn with_process(mut caller: LocalCaller) -> LocalCaller {
    let Some(inode) = caller.socket_inode else {
        return caller;
    };
    let pid = pid_of_socket(caller.uid, inode);
    caller.gids = pid
        .and_then(groups_of_process)
        .unwrap_or_else(|| groups_of_user(caller.uid));
    caller.command = pid.map(command_of).unwrap_or_default();
    caller.pid = pid;
    caller
}

/// An IPv4 address as a dual-stack IPv6 socket holds it (`::ffff:a.b.c.d`).
fn mapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), addr.port()),
        IpAddr::V6(_) => addr,
    }
}

fn unmapped(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// What sock_diag says about a socket.
#[derive(Debug, PartialEq, Eq)]
pub struct SocketOwner {
    pub uid: u32,
    pub inode: u32,
}

/// The owner of the established TCP socket whose local address is `src` and remote `dst`,
/// asked of the kernel through NETLINK_SOCK_DIAG (an exact lookup, as `ss -e` does for one
/// socket). `None` when there is no such socket.
pub fn socket_owner(src: SocketAddr, dst: SocketAddr) -> io::Result<Option<SocketOwner>> {
    let family = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => AF_INET,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => AF_INET6,
        _ => return Ok(None),
    };
    let wanted = SocketId {
        source_port: src.port(),
        destination_port: dst.port(),
        source_address: src.ip(),
        destination_address: dst.ip(),
        interface_id: 0,
        // INET_DIAG_NOCOOKIE: look the socket up by its addresses alone.
        cookie: [0xff; 8],
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::all(),
            socket_id: wanted.clone(),
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);

    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NetlinkAddr::new(0, 0))?;
    socket.send(&bytes, 0)?;
    let mut reply = vec![0u8; 8192];
    let n = socket.recv(&mut &mut reply[..], 0)?;
    let message = NetlinkMessage::<SockDiagMessage>::deserialize(&reply[..n])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    match message.payload {
        NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
            let h = &response.header;
            // An exact lookup falls back to a listener, and a closed socket leaves a
            // time-wait entry reported as uid 0: only the connection itself counts. The
            // kernel looks a v4 tuple up in the IPv4 tables whichever family is asked, and
            // answers in the socket's own family: a dual-stack socket's addresses come
            // back v4-mapped, an IPv4 socket's plain. The same 4-tuple either way.
            let found = |addr: IpAddr, port: u16| unmapped(SocketAddr::new(addr, port));
            let same = found(h.socket_id.source_address, h.socket_id.source_port) == unmapped(src)
                && found(
                    h.socket_id.destination_address,
                    h.socket_id.destination_port,
                ) == unmapped(dst);
            Ok((same && h.state == TCP_ESTABLISHED).then_some(SocketOwner {
                uid: h.uid,
                inode: h.inode,
            }))
        }
        NetlinkPayload::Error(e) => match e.code {
            Some(code) if -code.get() == libc::ENOENT => Ok(None),
            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
            None => Ok(None),
        },
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag reply {other:?}"),
        )),
    }
}

/// The process (of user `uid`) that holds socket `inode`: a scan of /proc/*/fd, skipping
/// other users' processes. The lowest pid when several share it.
pub fn pid_of_socket(uid: u32, inode: u32) -> Option<u32> {
    if inode == 0 {
        return None;
    }
    let target = format!("socket:[{inode}]");
    let mut pids: Vec<u32> = fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            (e.metadata().ok()?.uid() == uid).then_some(pid)
        })
        .collect();
    pids.sort_unstable();
    pids.into_iter().find(|pid| {
        fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.filter_map(|fd| fd.ok()).any(|fd| {
                fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
            })
        })
    })
}

/// A process's command name.
pub fn command_of(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// A process's groups, primary (real) and supplementary, from /proc/PID/status.
fn groups_of_process(pid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|n| n.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
    };
    let mut gids = field("Gid:")?.into_iter().take(1).collect::<Vec<_>>();
    gids.extend(field("Groups:").unwrap_or_default());
    Some(gids)
}

/// A user's groups from the user database, for a socket no process holds any more.
fn groups_of_user(uid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return vec![user.gid.as_raw()];
    };
    nix::unistd::getgrouplist(&name, user.gid)
        .map(|groups| groups.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback connection made by this test: sock_diag names its owner (us), and the
    /// /proc scan, when asked for, finds this process.
    #[test]
    fn the_kernel_names_the_owner_of_a_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let owner = socket_owner(peer, local)
            .unwrap()
            .expect("the client's socket");
        assert_eq!(owner.uid, uid);
        assert_eq!(pid_of_socket(uid, owner.inode), Some(std::process::id()));
        let Caller::Local(c) = tcp_peer(local, peer) else {
            panic!("not identified");
        };
        assert_eq!(c.uid, uid);
        assert_eq!(c.socket_inode, Some(owner.inode));
        assert_eq!((c.pid, c.gids.is_empty()), (None, true), "no scan yet");
        let c = with_process(c);
        assert_eq!(c.pid, Some(std::process::id()));
        assert_eq!(c.command, command_of(std::process::id()));
        assert!(!c.gids.is_empty());
        // The server's own end is the reverse tuple, and a made-up one is not found.
        assert!(socket_owner(local, peer).unwrap().is_some());
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(socket_owner(nobody, local).unwrap(), None);
        drop(client);
    }

    #[test]
    fn a_closed_client_is_not_mistaken_for_root() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        // The client closes first: its end goes through FIN_WAIT to TIME_WAIT.
        drop(client);
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(socket_owner(peer, local).unwrap(), None);
        assert!(matches!(tcp_peer(local, peer), Caller::Unknown { .. }));
    }

    #[tokio::test]
    async fn a_unix_peer_is_known_by_its_credentials() {
        let (a, _b) = tokio::net::UnixStream::pair().unwrap();
        match unix_peer(&a).unwrap() {
            Caller::Local(c) => {
                // SAFETY: these cannot fail.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                assert_eq!(c.uid, uid);
                assert_eq!(c.gids[0], gid);
                assert_eq!(c.pid, Some(std::process::id()));
                assert_eq!(c.command, command_of(std::process::id()));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A connection from `client` (bound to `from`, connected to the listener's port at
    /// `to`) to a listener on `listen`: the caller, as faultd identifies it.
    fn caller_of(listen: &str, from: socket2::Domain, to: &str) -> (Caller, u32) {
        use socket2::{Protocol, SockAddr, Socket, Type};
        let listener = std::net::TcpListener::bind(listen).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = Socket::new(from, Type::STREAM, Some(Protocol::TCP)).unwrap();
        if from == socket2::Domain::IPV6 {
            // Dual stack, whatever net.ipv6.bindv6only says: as grpcio's sockets are.
            client.set_only_v6(false).unwrap();
        }
        let to: SocketAddr = format!("{to}:{port}").parse().unwrap();
        client.connect(&SockAddr::from(to)).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let local = server.local_addr().unwrap();
        let client_local = client.local_addr().unwrap().as_socket().unwrap();
        let caller = tcp_peer(local, peer);
        // The client's socket is what was named: its inode is the one sock_diag gives for
        // the client's own view of the connection.
        let inode = socket_owner(client_local, to)
            .unwrap()
            .expect("client socket")
            .inode;
        drop(client);
        (caller, inode)
    }

    fn identified(caller: &Caller, inode: u32) {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        match caller {
            Caller::Local(c) => {
                assert_eq!(c.uid, uid, "{caller}");
                assert_eq!(c.socket_inode, Some(inode), "{caller}");
            }
            other => panic!("not identified: {other}"),
        }
    }

    /// IPv4, IPv6 and IPv4 through a dual-stack IPv6 socket (v4-mapped, as grpcio's), to
    /// listeners on 127.0.0.1, ::1 and a dual-stack [::]: each caller is found.
    #[test]
    fn every_kind_of_local_caller_is_identified() {
        use socket2::Domain;
        for (listen, from, to) in [
            ("127.0.0.1:0", Domain::IPV4, "127.0.0.1"),
            ("127.0.0.1:0", Domain::IPV6, "[::ffff:127.0.0.1]"),
            ("[::1]:0", Domain::IPV6, "[::1]"),
        ] {
            let (caller, inode) = caller_of(listen, from, to);
            identified(&caller, inode);
        }
        // A dual-stack listener sees an IPv4 client v4-mapped, whatever its socket.
        let listener = socket2::Socket::new(Domain::IPV6, socket2::Type::STREAM, None).unwrap();
        listener.set_only_v6(false).unwrap();
        let any: SocketAddr = "[::]:0".parse().unwrap();
        listener.bind(&any.into()).unwrap();
        listener.listen(8).unwrap();
        let listener: std::net::TcpListener = listener.into();
        let port = listener.local_addr().unwrap().port();
        for to in ["127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"] {
            let to: SocketAddr = format!("{to}:{port}").parse().unwrap();
            let client = std::net::TcpStream::connect(to).unwrap();
            let (server, peer) = listener.accept().unwrap();
            let local = server.local_addr().unwrap();
            let inode = socket_owner(client.local_addr().unwrap(), to)
                .unwrap()
                .expect("client socket")
                .inode;
            identified(&tcp_peer(local, peer), inode);
        }
    }

    #[test]
    fn the_lookups_follow_the_peers_family() {
        let v4 = |s: &str| s.parse::<SocketAddr>().unwrap();
        let tried: Vec<_> = lookups(v4("127.0.0.1:5000"), v4("[::ffff:127.0.0.1]:7447"))
            .into_iter()
            .map(|l| (l.src.to_string(), l.dst.to_string(), l.family))
            .collect();
        assert_eq!(
            tried,
            [
                ("127.0.0.1:5000".into(), "127.0.0.1:7447".into(), "AF_INET"),
                (
                    "[::ffff:127.0.0.1]:5000".into(),
                    "[::ffff:127.0.0.1]:7447".into(),
                    "AF_INET6 with v4-mapped addresses"
                ),
            ]
        );
        let v6 = lookups(v4("[::1]:5000"), v4("[::1]:7447"));
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].family, "AF_INET6");
    }

    /// What cannot be identified is refused, and the reason says where faultd looked.
    #[test]
    fn an_unknown_caller_is_told_which_families_were_asked() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let Caller::Unknown { why, .. } = tcp_peer(local, nobody) else {
            panic!("identified a socket that does not exist");
        };
        assert!(
            why.contains("asked sock_diag in AF_INET and AF_INET6 with v4-mapped addresses"),
            "{why}"
        );
        let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
        let local = listener.local_addr().unwrap();
        let Caller::Unknown { why, .. } = tcp_peer(local, "[::1]:1".parse().unwrap()) else {
            panic!("identified a socket that does not exist");
        };
        assert!(why.ends_with("asked sock_diag in AF_INET6"), "{why}");
    }

    #[test]
    fn v4_mapped_addresses_are_unmapped() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert_eq!(unmapped(mapped), "127.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(unmapped(v6), v6);
    }
}
