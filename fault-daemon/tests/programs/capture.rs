//! A packet socket on the loopback of the test's namespace: what bpf_clone_redirect sent
//! there, for the duplicate tests (degrade, marks).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::fixture::TEST_RUN_IFINDEX;

/// `sll_pkttype` values (linux/if_packet.h).
pub const PACKET_OUTGOING: u8 = 4;

/// A packet socket on loopback that reads at most `cap` frames (a copy that is copied
/// again would otherwise never let the socket go quiet).
pub struct Capture(OwnedFd);

impl Capture {
    pub fn on_loopback() -> Self {
        let all = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket call.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                all.into(),
            )
        };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_ll and timeval are valid; sizes are the structs'.
        unsafe {
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = all;
            sll.sll_ifindex = TEST_RUN_IFINDEX as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let timeout = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            let rc = libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as u32,
            );
            assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
        }
        Self(fd)
    }

    /// (sll_pkttype, bytes) of every frame until 200 ms pass without one, at most `cap`.
    pub fn drain(&self, cap: usize) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while frames.len() < cap {
            let mut buf = vec![0u8; 65_536];
            // SAFETY: valid buffers of the sizes passed.
            let (n, sll) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut sll).cast(),
                    &mut len,
                );
                (n, sll)
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    _ => panic!("recvfrom: {e}"),
                }
            }
            buf.truncate(n as usize);
            frames.push((sll.sll_pkttype, buf));
        }
        frames
    }
}
