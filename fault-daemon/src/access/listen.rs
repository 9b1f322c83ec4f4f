//! Where faultd listens, and connections that carry who made them.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;
use tracing::warn;

use super::{Caller, Policy, identify};
use crate::wrapped::{Tap, Wrapped};

/// The per-network-namespace socket path, defined once in `faultd-api` for faultd and its
/// clients alike.
pub use faultd_api::{SOCKET_DIR, default_socket_path};

/// The socket file faultd created; removed when dropped, unless another faultd has put its
/// own socket at the same path since.
pub struct SocketFile {
    path: PathBuf,
    /// Inode and change time: an inode number alone is soon reused.
    stamp: (u64, i64, i64),
}

fn stamp(path: &Path) -> io::Result<(u64, i64, i64)> {
    let meta = fs::symlink_metadata(path)?;
    Ok((meta.ino(), meta.ctime(), meta.ctime_nsec()))
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if stamp(&self.path).is_ok_and(|s| s == self.stamp) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Binds faultd's Unix socket at `path`, mode 0660, owned by `owner` and `group` (so that
/// they can connect; whoever connects is still checked). A socket left by a faultd that
/// died is replaced; one that a live faultd serves is not.
pub fn bind_socket(
    path: &Path,
    owner: Option<u32>,
    group: Option<u32>,
) -> anyhow::Result<(UnixListener, SocketFile)> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // Whoever is admitted must reach the socket, whatever umask made faultd's directory.
        if dir == Path::new(SOCKET_DIR) {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod {}", dir.display()))?;
        }
    }
    remove_stale(path)?;
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    let mut file = SocketFile {
        path: path.to_path_buf(),
        stamp: stamp(path)?,
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    nix::unistd::chown(path, owner.map(Into::into), group.map(Into::into))
        .with_context(|| format!("cannot chown {}", path.display()))?;
    // chmod and chown changed the change time.
    file.stamp = stamp(path)?;
    Ok((listener, file))
}

fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; remove it or pass --socket PATH",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "another faultd serves this network namespace at {}; stop it, or give this one \
             its own --socket PATH",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display())),
        Err(e) => Err(e).with_context(|| format!("cannot check {}", path.display())),
    }
}

/// A connection and who made it; tonic hands `Caller` to each request as its connect info.
pub type Identified<S> = Wrapped<S, Caller>;

/// Identifying taps nothing: reads and writes go through as they are.
impl Tap for Caller {}

impl<S> Connected for Identified<S> {
    type ConnectInfo = Caller;

    fn connect_info(&self) -> Caller {
        self.tap().clone()
    }
}

pub type Incoming<S> = ReceiverStream<io::Result<Identified<S>>>;

/// How TCP callers are identified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpIdentity {
    /// By the owner of their socket (sock_diag): loopback, plaintext.
    Kernel,
    /// By their TLS client certificate, read when the request comes.
    Certificate,
}

/// At most this many /proc scans for callers' groups at once, so that a flood of
/// connections from users admitted by no uid neither starves the machine's cores nor
/// holds up the accept loop and the other callers' identification.
const CONCURRENT_PROCESS_SCANS: usize = 2;

/// The connections accepted on `listener`, each with its caller, identified as far as
/// `policy` needs to admit it. Each connection is identified on a task of its own, so a
/// slow one does not hold up the others.
pub fn tcp_incoming(
    listener: TcpListener,
    identity: TcpIdentity,
    policy: Policy,
) -> Incoming<TcpStream> {
    let policy = Arc::new(policy);
    let scans = Arc::new(Semaphore::new(CONCURRENT_PROCESS_SCANS));
    incoming(move |tx| async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    pause_after(e).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            // An answer is a few small writes (HTTP/2 headers, data, trailers): with Nagle,
            // one waits for the client's delayed ACK, 40 ms here and there.
            if let Err(e) = stream.set_nodelay(true) {
                warn!(error = %e, "cannot set TCP_NODELAY on an API connection");
            }
            let tx = tx.clone();
            let (policy, scans) = (policy.clone(), scans.clone());
            tokio::spawn(async move {
                let caller = match (identity, stream.local_addr()) {
                    (TcpIdentity::Certificate, _) => Caller::Remote {
                        peer,
                        subject: String::new(),
                    },
                    (TcpIdentity::Kernel, Ok(local)) => {
                        kernel_identity(local, peer, &policy, &scans).await
                    }
                    (TcpIdentity::Kernel, Err(e)) => Caller::Unknown {
                        peer,
                        why: e.to_string(),
                    },
                };
                let _ = tx.send(Ok(Identified::new(stream, caller))).await;
            });
        }
    })
}

/// The caller at the other end of a loopback connection: its uid from sock_diag (cheap),
/// and its process only when the policy admits it by its groups (a /proc scan, as costly
/// as the user has open files). A caller admitted by uid has its process looked up when
/// it adds a fault ([`Caller::with_process`]).
async fn kernel_identity(
    local: SocketAddr,
    peer: SocketAddr,
    policy: &Policy,
    scans: &Semaphore,
) -> Caller {
    let caller = tokio::task::spawn_blocking(move || identify::tcp_peer(local, peer))
        .await
        .unwrap_or_else(|e| Caller::Unknown {
            peer,
            why: e.to_string(),
        });
    match caller.uid() {
        Some(uid) if policy.needs_groups(uid) => match scans.acquire().await {
            Ok(_permit) => caller.with_process().await,
            Err(_) => caller,
        },
        _ => caller,
    }
}

/// The connections accepted on faultd's Unix socket, each with its peer's credentials.
pub fn unix_incoming(listener: UnixListener) -> Incoming<UnixStream> {
    incoming(move |tx| async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    pause_after(e).await;
                    continue;
                }
            };
            // Cheap (getsockopt and one small /proc read): no task of its own.
            match identify::unix_peer(&stream) {
                Ok(caller) => {
                    if tx.send(Ok(Identified::new(stream, caller))).await.is_err() {
                        return;
                    }
                }
                Err(e) => warn!(error = %e, "cannot read a unix peer's credentials; closed"),
            }
        }
    })
}

/// Runs an accept loop that feeds a stream; the loop ends when the server drops the stream.
fn incoming<S, F, Fut>(accept_loop: F) -> Incoming<S>
where
    S: Send + 'static,
    F: FnOnce(mpsc::Sender<io::Result<Identified<S>>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(tx));
    ReceiverStream::new(rx)
}

async fn pause_after(e: io::Error) {
    // E.g. out of file descriptors: pause instead of spinning.
    warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faultd.sock");
        // A socket file no one listens on any more: what a killed faultd leaves.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let (listener, file) = bind_socket(&path, None, None).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);

        let err = bind_socket(&path, None, None).err().unwrap().to_string();
        assert!(err.contains("another faultd serves"), "{err}");
        assert!(path.exists(), "the live socket stays");

        drop(listener);
        drop(file);
        assert!(!path.exists(), "removed when faultd ends");
    }

    /// A caller admitted by its uid (here: ours) is let in without a scan of /proc, and the
    /// process that holds its socket is still found when a fault records its owner.
    #[tokio::test]
    async fn a_caller_admitted_by_uid_is_not_scanned_until_its_owner_is_asked() {
        use tokio_stream::StreamExt as _;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let policy = Policy {
            uids: vec![uid],
            gids: vec![12345],
            ..Policy::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tcp_incoming(listener, TcpIdentity::Kernel, policy.clone());
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        let caller = accepted.connect_info();
        let Caller::Local(local) = &caller else {
            panic!("not identified: {caller}");
        };
        assert_eq!(local.uid, uid);
        assert!(local.socket_inode.is_some());
        assert_eq!(
            (local.pid, local.gids.len()),
            (None, 0),
            "scanned at accept"
        );
        assert_eq!(policy.check(&caller), Ok(()));

        let owner = caller.clone().with_process().await.owner();
        assert_eq!(owner.uid, Some(uid));
        assert_eq!(owner.pid, Some(std::process::id()));
        assert_eq!(owner.command, identify::command_of(std::process::id()));
    }

    /// The process of a TCP caller is found once per connection: the next request (a
    /// clone of the connection's caller) gets it without a scan of /proc. Shown by closing
    /// the client's socket after the first lookup, so that a second scan would find no
    /// process at all.
    #[tokio::test]
    async fn a_connections_process_is_scanned_for_once() {
        use tokio_stream::StreamExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tcp_incoming(listener, TcpIdentity::Kernel, Policy::default());
        let client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        let caller = accepted.connect_info();
        let first = caller.clone().with_process().await.owner();
        assert_eq!(first.pid, Some(std::process::id()));
        drop(client);
        let again = accepted.connect_info().with_process().await.owner();
        assert_eq!(again, first, "the connection's process was looked up again");
    }

    /// Answers go out at once, not after the client's delayed ACK (Nagle off).
    #[tokio::test]
    async fn api_connections_have_nagle_off() {
        use std::os::fd::AsRawFd as _;
        use tokio_stream::StreamExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tcp_incoming(listener, TcpIdentity::Kernel, Policy::default());
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        let mut on: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live socket; `on` holds `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                accepted.io().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&raw mut on).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        assert_eq!(on, 1, "TCP_NODELAY is off on an accepted API connection");
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faultd.sock");
        fs::write(&path, "data").unwrap();
        let err = bind_socket(&path, None, None).err().unwrap().to_string();
        assert!(err.contains("is not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "data");
    }

    #[tokio::test]
    async fn a_socket_replaced_by_another_daemon_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faultd.sock");
        let (listener, file) = bind_socket(&path, None, None).unwrap();
        drop(listener);
        fs::remove_file(&path).unwrap();
        let _other = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(file);
        assert!(path.exists());
    }
}
