//! Who may steer faultd.
//!
//! faultd can cut any traffic on the machine, so its API admits only root, the user who
//! started it through sudo (`SUDO_UID`), and the users and groups `--allow-uid` and
//! `--allow-group` name. Callers are identified by the kernel, never by what they claim:
//!
//! - on the Unix socket ([`listen::default_socket_path`]) by their peer credentials
//!   (`SO_PEERCRED`, `SO_PEERGROUPS`);
//! - on loopback TCP by the owner of the calling socket, which the kernel reports through
//!   sock_diag as `ss -e` shows it ([`identify`]); the caller is in faultd's own network
//!   namespace, since loopback is per namespace;
//! - remotely (`--allow-remote`, TLS only) by a client certificate `--tls-client-ca` signed.
//!
//! The caller is identified once per connection, when it is accepted ([`listen`]), and
//! travels with each request as its connection info; [`Gate`] checks it against the
//! [`Policy`] in one place, in front of every service of the API.
//!
//! Over TCP, finding the calling process means scanning /proc/*/fd, which costs as much as
//! the user has open files: at accept faultd asks only what admission needs (the socket's
//! uid, and the process's groups only when the policy admits by group), and finds the
//! process of a caller admitted by uid when it records an owner ([`Caller::with_process`]).

pub mod identify;
pub mod listen;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::server::TlsConnectInfo;
use tonic::{Request, Status};
use tracing::warn;

use crate::faults::Owner;

/// A caller of the API, as the kernel (or TLS) identified it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A process on this machine.
    Local(LocalCaller),
    /// A peer that came over TCP with TLS; `subject` is its certificate's (empty until the
    /// handshake's certificate is read, see [`Gate`]).
    Remote { peer: SocketAddr, subject: String },
    /// A TCP peer the kernel could not name, e.g. its socket closed before faultd asked.
    Unknown { peer: SocketAddr, why: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalCaller {
    pub uid: u32,
    /// Primary and supplementary groups.
    pub gids: Vec<u32>,
    /// The calling process; `None` when no process held the socket any more, or when it
    /// was not looked up yet (see `socket_inode`).
    pub pid: Option<u32>,
    /// Its command name, `/proc/PID/comm`.
    pub command: String,
    /// "unix socket" or the TCP peer address.
    pub via: String,
    /// The calling TCP socket's inode, by which [`Caller::with_process`] finds the process
    /// of a caller whose process was not looked up when it connected; `None` over the
    /// Unix socket, whose peer credentials name the process.
    pub socket_inode: Option<u32>,
    /// The process [`Caller::with_process`] found, shared by every request of the
    /// connection: found once, not once per request.
    pub found: FoundProcess,
}

/// What a scan of /proc found for a connection's TCP socket (its process, command and
/// groups); empty until the first request that needs it. A scan costs as much as the user
/// has open files (milliseconds with a few thousand), which every AddFault over TCP paid
/// before.
#[derive(Clone, Debug, Default)]
pub struct FoundProcess(Arc<std::sync::OnceLock<LocalCaller>>);

/// Connection-level memory, not part of who the caller is.
impl PartialEq for FoundProcess {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for FoundProcess {}

impl Caller {
    /// The owner recorded for a fault this caller adds.
    pub fn owner(&self) -> Owner {
        match self {
            Caller::Local(local) => Owner {
                uid: Some(local.uid),
                pid: local.pid,
                command: local.command.clone(),
                remote: String::new(),
            },
            Caller::Remote { peer, subject } => Owner {
                remote: format!("{peer} {subject}").trim().to_string(),
                ..Owner::default()
            },
            Caller::Unknown { peer, .. } => Owner {
                remote: peer.to_string(),
                ..Owner::default()
            },
        }
    }

    /// Whether this caller's process (pid, command, groups) is still to be looked up.
    pub fn lacks_process(&self) -> bool {
        matches!(self, Caller::Local(c) if c.pid.is_none() && c.socket_inode.is_some())
    }

    /// This caller with its process looked up if it [lacks](Self::lacks_process) one: a
    /// scan of /proc, run on a blocking thread, once per connection (later requests get
    /// what it found). Unchanged if the scan cannot run.
    pub async fn with_process(self) -> Caller {
        let local = match &self {
            Caller::Local(local) if self.lacks_process() => local.clone(),
            _ => return self,
        };
        if let Some(found) = local.found.0.get() {
            return Caller::Local(found.clone());
        }
        tokio::task::spawn_blocking(move || {
            let found = identify::with_process(local);
            // A scan that found no process may be luckier next time. What is kept holds
            // an empty cell of its own: no cycle through the connection's.
            if found.pid.is_some() {
                let kept = LocalCaller {
                    found: FoundProcess::default(),
                    ..found.clone()
                };
                let _ = found.found.0.set(kept);
            }
            Caller::Local(found)
        })
        .await
        .unwrap_or(self)
    }

    pub fn uid(&self) -> Option<u32> {
        match self {
            Caller::Local(local) => Some(local.uid),
            _ => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local(c) => {
                write!(f, "uid {}", c.uid)?;
                if let Some(pid) = c.pid {
                    write!(f, " pid {pid} ({})", c.command)?;
                }
                write!(f, " via {}", c.via)
            }
            Caller::Remote { peer, subject } => write!(f, "{peer} ({subject})"),
            Caller::Unknown { peer, why } => write!(f, "{peer} (unidentified: {why})"),
        }
    }
}

/// Who is admitted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// `--no-auth`: everyone.
    pub no_auth: bool,
    /// The user who started faultd through sudo.
    pub sudo_uid: Option<u32>,
    /// `--allow-uid`.
    pub uids: Vec<u32>,
    /// `--allow-group`.
    pub gids: Vec<u32>,
}

impl Policy {
    /// Whether a local caller of user `uid` is admitted whatever its groups.
    pub fn admits_uid(&self, uid: u32) -> bool {
        self.no_auth || uid == 0 || self.sudo_uid == Some(uid) || self.uids.contains(&uid)
    }

    /// Whether admitting a local caller of user `uid` depends on its groups, so that they
    /// must be looked up when it connects.
    pub fn needs_groups(&self, uid: u32) -> bool {
        !self.admits_uid(uid) && !self.gids.is_empty()
    }

    /// `Ok` when `caller` may call the API; otherwise what to tell them.
    pub fn check(&self, caller: &Caller) -> Result<(), String> {
        if self.no_auth {
            return Ok(());
        }
        match caller {
            Caller::Local(c) => {
                let admitted =
                    self.admits_uid(c.uid) || c.gids.iter().any(|g| self.gids.contains(g));
                if admitted {
                    Ok(())
                } else {
                    Err(format!(
                        "permission denied: uid {uid}{name} may not steer this faultd, which \
                         admits {admits}. To grant access, restart faultd with --allow-uid \
                         {uid} (or --allow-group GROUP for a group of yours)",
                        uid = c.uid,
                        name = user_name(c.uid).map_or(String::new(), |n| format!(" ({n})")),
                        admits = self.admitted(),
                    ))
                }
            }
            // The TLS handshake required a certificate signed by --tls-client-ca.
            Caller::Remote { subject, .. } if !subject.is_empty() => Ok(()),
            Caller::Remote { peer, .. } => Err(format!(
                "permission denied: {peer} presented no client certificate; remote callers \
                 need one signed by faultd's --tls-client-ca"
            )),
            Caller::Unknown { peer, why } => Err(format!(
                "permission denied: faultd could not identify the caller at {peer} ({why}); \
                 connect through faultd's Unix socket, or restart faultd with --no-auth"
            )),
        }
    }

    /// Who is admitted, for people: "root, uid 1000 (SUDO_UID), group 27".
    pub fn admitted(&self) -> String {
        if self.no_auth {
            return "everyone (--no-auth)".into();
        }
        let mut who = vec!["root".to_string()];
        if let Some(uid) = self.sudo_uid {
            who.push(format!("uid {uid} (SUDO_UID)"));
        }
        who.extend(self.uids.iter().map(|u| format!("uid {u}")));
        who.extend(self.gids.iter().map(|g| format!("group {g}")));
        who.join(", ")
    }
}

/// A user given as a uid or a name (`--allow-uid`).
pub fn resolve_uid(text: &str) -> Result<u32, String> {
    if let Ok(uid) = text.parse() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(text) {
        Ok(Some(user)) => Ok(user.uid.as_raw()),
        _ => Err(format!("{text:?} is neither a uid nor a user name")),
    }
}

/// A group given as a gid or a name (`--allow-group`).
pub fn resolve_gid(text: &str) -> Result<u32, String> {
    if let Ok(gid) = text.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(text) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        _ => Err(format!("{text:?} is neither a gid nor a group name")),
    }
}

/// The user who started faultd through sudo, from the value of `SUDO_UID`.
pub fn sudo_uid(value: Option<&str>) -> Result<Option<u32>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("SUDO_UID={text:?} is not a uid")),
    }
}

/// A user's name from the user database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The check in front of every service: reads the caller the connection was identified as,
/// refuses those the policy does not admit (PERMISSION_DENIED), and hands the others'
/// identity to the services as a [`Caller`] in the request's extensions.
#[derive(Clone)]
pub struct Gate {
    policy: Arc<Policy>,
}

impl Gate {
    pub fn new(policy: Policy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = caller_of(&request).ok_or_else(|| {
            // Every listener faultd serves identifies its connections: this is a bug.
            Status::internal("the connection carries no caller identity")
        })?;
        if let Err(why) = self.policy.check(&caller) {
            warn!(%caller, "call refused");
            return Err(Status::permission_denied(why));
        }
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller of a request, from its connection info; over TLS with the certificate's
/// subject filled in.
fn caller_of<T>(request: &Request<T>) -> Option<Caller> {
    let extensions = request.extensions();
    // Over TLS tonic inserts both the TLS info and the inner connection's.
    let Some(tls) = extensions.get::<TlsConnectInfo<Caller>>() else {
        return extensions.get::<Caller>().cloned();
    };
    let mut caller = tls.get_ref().clone();
    if let Caller::Remote { subject, .. } = &mut caller {
        *subject = tls
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| certificate_subject(c)))
            .unwrap_or_default();
    }
    Some(caller)
}

/// The subject of a DER certificate for people: `CN=name`, or its fingerprint-free
/// fallback `certificate` when it has no common name.
fn certificate_subject(der: &[u8]) -> String {
    der::common_name(der).map_or_else(|| "certificate".to_string(), |cn| format!("CN={cn}"))
}

/// Just enough DER to read a certificate's subject common name.
mod der {
    /// One TLV: (tag, contents, rest).
    fn tlv(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = bytes.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | *b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The subject's commonName (OID 2.5.4.3) of an X.509 certificate.
    pub fn common_name(cert: &[u8]) -> Option<String> {
        let (_, certificate, _) = tlv(cert)?;
        let (_, tbs, _) = tlv(certificate)?;
        let mut fields = tbs;
        // [0] version is optional; then serial, signature, issuer, validity, subject.
        let (tag, _, rest) = tlv(fields)?;
        if tag == 0xa0 {
            fields = rest;
        }
        for _ in 0..4 {
            fields = tlv(fields)?.2;
        }
        let (_, mut subject, _) = tlv(fields)?;
        while !subject.is_empty() {
            let (_, set, rest) = tlv(subject)?;
            subject = rest;
            let (_, attribute, _) = tlv(set)?;
            let (_, oid, value) = tlv(attribute)?;
            if oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = tlv(value)?;
                return Some(String::from_utf8_lossy(text).into_owned());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(uid: u32, gids: &[u32]) -> Caller {
        Caller::Local(LocalCaller {
            uid,
            gids: gids.to_vec(),
            pid: Some(4242),
            command: "faultctl".into(),
            via: "unix socket".into(),
            socket_inode: None,
            found: FoundProcess::default(),
        })
    }

    fn peer() -> SocketAddr {
        "198.18.0.2:40000".parse().unwrap()
    }

    #[test]
    fn root_is_admitted_and_others_are_told_how_to_get_in() {
        let policy = Policy::default();
        assert_eq!(policy.check(&local(0, &[0])), Ok(()));
        let why = policy.check(&local(1001, &[1001])).unwrap_err();
        assert!(why.starts_with("permission denied: uid 1001"), "{why}");
        assert!(
            why.contains("restart faultd with --allow-uid 1001"),
            "{why}"
        );
        assert!(why.contains("admits root."), "{why}");
    }

    #[test]
    fn sudo_uid_allowed_uids_and_groups_are_admitted() {
        let policy = Policy {
            sudo_uid: Some(1000),
            uids: vec![1001],
            gids: vec![2000],
            ..Policy::default()
        };
        for admitted in [
            local(1000, &[1000]),
            local(1001, &[]),
            local(1500, &[7, 2000]),
        ] {
            assert_eq!(policy.check(&admitted), Ok(()), "{admitted}");
        }
        let why = policy.check(&local(1002, &[1002, 100])).unwrap_err();
        assert!(
            why.contains("admits root, uid 1000 (SUDO_UID), uid 1001, group 2000"),
            "{why}"
        );
    }

    /// Only a uid that no rule admits by itself, under a policy that admits groups, needs
    /// its process's groups looked up.
    #[test]
    fn groups_are_needed_only_for_uids_not_admitted_by_themselves() {
        let policy = Policy {
            sudo_uid: Some(1000),
            uids: vec![1001],
            gids: vec![2000],
            ..Policy::default()
        };
        for uid in [0, 1000, 1001] {
            assert!(policy.admits_uid(uid) && !policy.needs_groups(uid), "{uid}");
        }
        assert!(!policy.admits_uid(1002) && policy.needs_groups(1002));
        // Without --allow-group the groups cannot admit anyone: no need to look them up.
        let no_groups = Policy {
            gids: vec![],
            ..policy.clone()
        };
        assert!(!no_groups.admits_uid(1002) && !no_groups.needs_groups(1002));
        let everyone = Policy {
            no_auth: true,
            ..policy
        };
        assert!(everyone.admits_uid(1002) && !everyone.needs_groups(1002));
    }

    #[test]
    fn no_auth_admits_everyone() {
        let policy = Policy {
            no_auth: true,
            ..Policy::default()
        };
        let unknown = Caller::Unknown {
            peer: peer(),
            why: "gone".into(),
        };
        for caller in [local(1002, &[]), unknown] {
            assert_eq!(policy.check(&caller), Ok(()));
        }
    }

    #[test]
    fn remote_callers_need_a_certificate_and_unknown_ones_are_refused() {
        let policy = Policy {
            uids: vec![0],
            ..Policy::default()
        };
        let certified = Caller::Remote {
            peer: peer(),
            subject: "CN=ci".into(),
        };
        assert_eq!(policy.check(&certified), Ok(()));
        let bare = Caller::Remote {
            peer: peer(),
            subject: String::new(),
        };
        assert!(policy.check(&bare).unwrap_err().contains("--tls-client-ca"));
        let unknown = Caller::Unknown {
            peer: peer(),
            why: "no such socket".into(),
        };
        let why = policy.check(&unknown).unwrap_err();
        assert!(why.contains("could not identify"), "{why}");
    }

    #[test]
    fn the_gate_refuses_with_permission_denied_and_passes_the_caller_on() {
        use tonic::service::Interceptor as _;
        let mut gate = Gate::new(Policy::default());
        let mut refused = Request::new(());
        refused.extensions_mut().insert(local(1001, &[]));
        let status = gate.call(refused).unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("--allow-uid 1001"));

        let mut admitted = Request::new(());
        admitted.extensions_mut().insert(local(0, &[]));
        let passed = gate.call(admitted).unwrap();
        assert_eq!(passed.extensions().get::<Caller>(), Some(&local(0, &[])));

        let status = gate.call(Request::new(())).unwrap_err();
        assert_eq!(status.code(), tonic::Code::Internal);
    }

    #[test]
    fn users_and_groups_are_named_by_number_or_name() {
        assert_eq!(resolve_uid("1001"), Ok(1001));
        assert_eq!(resolve_uid("root"), Ok(0));
        assert!(
            resolve_uid("no-such-user-x")
                .unwrap_err()
                .contains("neither")
        );
        assert_eq!(resolve_gid("27"), Ok(27));
        assert_eq!(resolve_gid("root"), Ok(0));
        assert!(resolve_gid("no-such-group-x").is_err());
        assert_eq!(sudo_uid(None), Ok(None));
        assert_eq!(sudo_uid(Some("1000")), Ok(Some(1000)));
        assert!(sudo_uid(Some("alice")).unwrap_err().contains("SUDO_UID"));
    }

    #[test]
    fn owners_come_from_callers() {
        let owner = local(1001, &[]).owner();
        assert_eq!((owner.uid, owner.pid), (Some(1001), Some(4242)));
        assert_eq!(owner.command, "faultctl");
        let remote = Caller::Remote {
            peer: peer(),
            subject: "CN=ci".into(),
        };
        assert_eq!(remote.owner().remote, "198.18.0.2:40000 CN=ci");
        assert_eq!(remote.owner().uid, None);
    }

    #[test]
    fn the_subject_common_name_is_read_from_a_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["faultd".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "faultd tests");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ci-runner");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(certificate_subject(cert.der()), "CN=ci-runner");
        assert_eq!(certificate_subject(b"\x30\x03\x02\x01\x00"), "certificate");
    }
}
