//! Who may steer faultd, with real users: each test creates its own with `useradd` (removed
//! again with `userdel -r`) and runs faultctl as that user through `setpriv`, inside the
//! test's network namespace. Callers are identified by the kernel: peer credentials on the
//! Unix socket, the socket's owner (sock_diag) on loopback TCP, a client certificate over
//! TLS.

use crate::harness;

use std::fs::{self, File};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use faultd::proto::{self, fault_service_client::FaultServiceClient};
use faultd::reconnect::proto::{ReconnectParams, reconnect_service_client::ReconnectServiceClient};
use harness::*;
use serde_json::Value;

/// useradd and groupadd lock /etc/passwd and /etc/group: one at a time in this process.
static ACCOUNTS: Mutex<()> = Mutex::new(());

/// Runs an account command, retrying while another process holds the account files' lock.
fn account_cmd(program: &str, args: &[&str]) -> Output {
    let _one_at_a_time = ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = None;
    for _ in 0..50 {
        let o = Command::new(program).args(args).output().expect(program);
        let busy = String::from_utf8_lossy(&o.stderr).contains("lock");
        out = Some(o);
        if !busy {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out.unwrap()
}

fn id_of(flag: &str, name: &str) -> u32 {
    let out = Command::new("id").args([flag, name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A real user of the machine for the test's duration.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new(tag: &str) -> Self {
        let name = format!("fdt{tag}{}", std::process::id());
        let out = account_cmd(
            "useradd",
            &[
                "--create-home",
                "--user-group",
                "--shell",
                "/usr/sbin/nologin",
                &name,
            ],
        );
        assert!(
            out.status.success(),
            "useradd {name}: {}",
            stderr_text(&out)
        );
        Self {
            uid: id_of("-u", &name),
            gid: id_of("-g", &name),
            name,
        }
    }

    /// `program` as this user (no supplementary groups, or `groups`) inside `ns`.
    fn cmd(&self, ns: &Netns, groups: &[u32], program: &str) -> Command {
        let mut cmd = ns.cmd("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid));
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            let list: Vec<String> = groups.iter().map(u32::to_string).collect();
            cmd.arg(format!("--groups={}", list.join(",")));
        }
        cmd.arg(program).env_remove("FAULTD_ADDR");
        cmd
    }

    fn faultctl(&self, ns: &Netns, args: &[&str]) -> Output {
        self.cmd(ns, &[], FAULTCTL).args(args).output().unwrap()
    }

    fn faultctl_ok(&self, ns: &Netns, args: &[&str]) -> String {
        let out = self.faultctl(ns, args);
        assert!(
            out.status.success(),
            "faultctl {args:?} as {}: {}",
            self.name,
            stderr_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = account_cmd("userdel", &["-r", &self.name]);
    }
}

/// A group of the machine for the test's duration.
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn new(tag: &str) -> Self {
        let name = format!("fdg{tag}{}", std::process::id());
        let out = account_cmd("groupadd", &[&name]);
        assert!(out.status.success(), "groupadd: {}", stderr_text(&out));
        let line = fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find(|l| l.starts_with(&format!("{name}:")))
            .unwrap()
            .to_string();
        let gid = line.split(':').nth(2).unwrap().parse().unwrap();
        Self { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = account_cmd("groupdel", &[&self.name]);
    }
}

/// faultd on the namespace's lo with `args`, its environment plus `env`.
fn start_daemon(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Result<Daemon, String> {
    let log = std::env::temp_dir().join(format!("{}-faultd-{}.log", ns.name, std::process::id()));
    let child = ns
        .cmd(FAULTD)
        .args(["--iface", "lo"])
        .args(args)
        .env_remove("SUDO_UID")
        .envs(env.iter().copied())
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .expect("spawn faultd");
    let mut daemon = Daemon { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if daemon.log_text().contains("faultd ready") {
            return Ok(daemon);
        }
        if daemon.child.try_wait().unwrap().is_some() {
            return Err(daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("timed out; log: {}", daemon.log_text()))
}

fn daemon(ns: &Netns, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    start_daemon(ns, args, env).unwrap_or_else(|log| panic!("faultd did not start: {log}"))
}

/// `name=value` of the "faultd ready" log line.
fn ready_field(daemon: &Daemon, name: &str) -> String {
    let log = daemon.log_text();
    let line = log.lines().find(|l| l.contains("faultd ready")).unwrap();
    line.split(&format!("{name}="))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn socket_of(daemon: &Daemon) -> PathBuf {
    PathBuf::from(ready_field(daemon, "socket"))
}

/// The socket path faultctl computes inside `ns`.
fn client_socket_path(ns: &Netns) -> PathBuf {
    ns.run(|| faultd::access::listen::default_socket_path().unwrap())
}

fn assert_refused(out: &Output, uid: u32, what: &str) {
    let err = stderr_text(out);
    assert!(!out.status.success(), "{what} was admitted");
    assert!(
        err.contains(&format!("permission denied: uid {uid}")),
        "{what}: {err}"
    );
    assert!(
        err.contains(&format!("restart faultd with --allow-uid {uid}")),
        "{what} should say how to grant access: {err}"
    );
}

/// The unprivileged user is refused over TCP and over the socket, told how to get in, and
/// changes nothing; root (the same faultctl) is admitted.
#[test]
fn an_unprivileged_user_is_refused_and_told_how_to_get_in() {
    require_root();
    let user = TestUser::new("deny");
    let ns = Netns::new("deny");
    let daemon = daemon(&ns, &[], &[]);
    let socket = socket_of(&daemon);
    let id = ns.faultctl_ok(&["drop", "--port", "9000", "--label", "roots"]);

    // TCP: faultd asks the kernel who owns the calling socket.
    let tcp = ["--addr", "127.0.0.1:7447"];
    for args in [
        &["drop", "--port", "9001"][..],
        &["list"],
        &["clear"],
        &["rm", &id],
        &["events"],
        &["stats"],
        &["doctor"],
    ] {
        let out = user.faultctl(&ns, &[&tcp[..], args].concat());
        assert_refused(&out, user.uid, &format!("{args:?} over tcp"));
    }

    // The socket's mode (0660, root's) keeps the user out; faultctl then tries TCP, where
    // faultd refuses it.
    let meta = fs::metadata(&socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    let out = user.faultctl(&ns, &["drop", "--port", "9001"]);
    assert_refused(&out, user.uid, "drop by default");
    let unix = format!("unix:{}", socket.display());
    let out = user.faultctl(&ns, &["--addr", &unix, "list"]);
    assert!(
        stderr_text(&out).contains("does not let this user in"),
        "{}",
        stderr_text(&out)
    );

    // Even when the socket's mode lets the user connect, faultd reads their credentials.
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    for args in [&["drop", "--port", "9001"][..], &["list"], &["clear"]] {
        let out = user.faultctl(&ns, &[&["--addr", &unix][..], args].concat());
        assert_refused(&out, user.uid, &format!("{args:?} over the socket"));
    }

    let faults = ns.faults_json();
    assert_eq!(faults.as_array().unwrap().len(), 1, "{faults}");
    assert_eq!(faults[0]["label"], "roots");
    assert!(daemon.log_text().contains("call refused"));
}

/// The same faultctl as root is admitted over TCP, where it is identified as root through
/// the kernel (not through the socket).
#[test]
fn root_is_admitted_over_tcp_too() {
    require_root();
    let ns = Netns::new("root");
    let _daemon = daemon(&ns, &[], &[]);
    let id = ns.faultctl_ok(&["--addr", "127.0.0.1:7447", "drop", "--port", "9000"]);
    let faults = ns.faults_json();
    assert_eq!(faults[0]["id"].to_string(), id);
    assert_eq!(faults[0]["owner"]["uid"], 0);
    assert_eq!(faults[0]["owner"]["command"], "faultctl");
}

/// Every service on the API checks the caller, WatchEvents and the reconnect service
/// included: a client whose sockets belong to the user gets PERMISSION_DENIED from each.
/// (The sockets are the user's because this thread creates them with the user's fsuid, the
/// uid the kernel records as a socket's owner.)
#[test]
fn every_service_refuses_an_unprivileged_caller() {
    require_root();
    let user = TestUser::new("svc");
    let ns = Netns::new("svc");
    let _daemon = daemon(&ns, &["--retry-port", "9091"], &[]);
    let codes = |uid: u32| {
        ns.run(|| {
            // SAFETY: changes this thread's filesystem uid only (a raw per-thread credential).
            unsafe { libc::setfsuid(uid) };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let codes = runtime.block_on(async {
                let api = "http://127.0.0.1:7447";
                let mut faults = FaultServiceClient::connect(api).await.unwrap();
                let mut reconnect = ReconnectServiceClient::connect(api).await.unwrap();
                let code =
                    |r: Result<_, tonic::Status>| r.map_or_else(|s| s.code(), |_| tonic::Code::Ok);
                vec![
                    code(
                        faults
                            .list_faults(proto::ListFaultsRequest {})
                            .await
                            .map(drop),
                    ),
                    code(
                        faults
                            .watch_events(proto::WatchEventsRequest {
                                follow: false,
                                ..Default::default()
                            })
                            .await
                            .map(drop),
                    ),
                    code(
                        faults
                            .get_capabilities(proto::GetCapabilitiesRequest {})
                            .await
                            .map(drop),
                    ),
                    code(faults.get_stats(proto::GetStatsRequest {}).await.map(drop)),
                    code(
                        reconnect
                            .start(ReconnectParams {
                                max_reconnect_backoff_ms: 0,
                            })
                            .await
                            .map(drop),
                    ),
                ]
            });
            // SAFETY: as above.
            unsafe { libc::setfsuid(0) };
            codes
        })
    };
    assert_eq!(codes(user.uid), vec![tonic::Code::PermissionDenied; 5]);
    assert_eq!(codes(0), vec![tonic::Code::Ok; 5], "root is admitted");
}

/// The user who started faultd through sudo (SUDO_UID) is admitted, owns the socket, and
/// is recorded as the owner of what it adds.
#[test]
fn the_sudo_user_is_admitted() {
    require_root();
    let user = TestUser::new("sudo");
    let ns = Netns::new("sudo");
    let uid = user.uid.to_string();
    let daemon = daemon(&ns, &[], &[("SUDO_UID", &uid)]);
    let socket = socket_of(&daemon);
    let meta = fs::metadata(&socket).unwrap();
    assert_eq!(meta.uid(), user.uid, "the sudo user owns the socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    // By default through the socket (peer credentials), and over TCP (sock_diag).
    user.faultctl_ok(&ns, &["drop", "--port", "9000", "--label", "socket"]);
    user.faultctl_ok(&ns, &["--addr", "127.0.0.1:7447", "drop", "--port", "9001"]);
    let faults = user.faultctl_ok(&ns, &["list", "--json"]);
    let faults: Value = serde_json::from_str(&faults).unwrap();
    assert_eq!(faults.as_array().unwrap().len(), 2, "{faults}");
    for fault in faults.as_array().unwrap() {
        assert_eq!(fault["owner"]["uid"], user.uid, "{fault}");
        assert_eq!(fault["owner"]["command"], "faultctl", "{fault}");
        assert!(fault["owner"]["pid"].as_u64().unwrap() > 1, "{fault}");
    }
    assert!(
        daemon.log_text().contains("SUDO_UID"),
        "the policy is logged"
    );
}

/// `--allow-uid` admits that user; `--allow-group` the members of the group (by the groups
/// of the calling process), and not the same user without the group.
#[test]
fn allow_uid_and_allow_group_admit() {
    require_root();
    let alice = TestUser::new("au");
    let bob = TestUser::new("ag");
    let group = TestGroup::new("ag");
    let ns = Netns::new("allow");
    let daemon = daemon(
        &ns,
        &["--allow-uid", &alice.name, "--allow-group", &group.name],
        &[],
    );
    // alice is neither the socket's owner nor in its group: faultctl goes over TCP.
    alice.faultctl_ok(&ns, &["drop", "--port", "9000"]);
    let out = bob.faultctl(&ns, &["drop", "--port", "9001"]);
    assert_refused(&out, bob.uid, "bob without the group");
    // With the group, bob gets in, through the socket whose group it is.
    let meta = fs::metadata(socket_of(&daemon)).unwrap();
    assert_eq!(meta.gid(), group.gid);
    let unix = format!("unix:{}", socket_of(&daemon).display());
    for addr in [unix.as_str(), "127.0.0.1:7447"] {
        let out = bob
            .cmd(&ns, &[group.gid], FAULTCTL)
            .args(["--addr", addr, "drop", "--port", "9001"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{addr}: {}", stderr_text(&out));
    }
    let owners: Vec<u64> = ns
        .faults_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["owner"]["uid"].as_u64().unwrap())
        .collect();
    assert_eq!(
        owners,
        [alice.uid as u64, bob.uid as u64, bob.uid as u64],
        "{}",
        daemon.log_text()
    );
}

/// `--no-auth` admits everyone and says so at start.
#[test]
fn no_auth_admits_everyone_and_warns() {
    require_root();
    let user = TestUser::new("noauth");
    let ns = Netns::new("noauth");
    let daemon = daemon(&ns, &["--no-auth"], &[]);
    user.faultctl_ok(&ns, &["drop", "--port", "9000"]);
    user.faultctl_ok(&ns, &["--addr", "127.0.0.1:7447", "list"]);
    let log = daemon.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("--no-auth"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("without checks"), "{warning}");
}

/// A remote API in plaintext is refused at start, with one line, before anything is
/// attached or bound.
#[test]
fn plaintext_on_a_remote_address_is_refused_at_start() {
    require_root();
    let pair = VethPair::new("plain");
    let listen = format!("{SERVER_V4}:7447");
    // A socket a killed faultd left in a namespace since deleted may be at that path.
    let socket = client_socket_path(&pair.server);
    let stamp = |p: &PathBuf| {
        fs::symlink_metadata(p)
            .ok()
            .map(|m| (m.ino(), m.ctime_nsec()))
    };
    let before = stamp(&socket);
    let out = pair
        .server
        .cmd(FAULTD)
        .args(["--iface", SERVER_IF, "--listen", &listen, "--allow-remote"])
        .output()
        .unwrap();
    let err = stderr_text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("plaintext on a non-loopback address is refused"),
        "{err}"
    );
    assert!(err.contains("--tls-client-ca"), "{err}");
    assert!(
        !pair
            .server
            .ip_output(&["link", "show", SERVER_IF])
            .contains("xdp")
    );
    assert_eq!(stamp(&socket), before, "no socket was made");
}

/// Certificates for one test: a CA faultd trusts, faultd's server certificate, a client
/// certificate from that CA and one from another CA.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| fs::write(dir.path().join(name), text).unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let leaf = |names: Vec<String>, cn: &str, usage, issuer: &CertifiedIssuer<KeyPair>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            (
                params.signed_by(&key, issuer).unwrap().pem(),
                key.serialize_pem(),
            )
        };
        let trusted = ca("faultd test CA");
        let rogue = ca("someone else's CA");
        write("ca.pem", trusted.pem());
        let (cert, key) = leaf(
            vec![SERVER_V4.into()],
            "faultd",
            ExtendedKeyUsagePurpose::ServerAuth,
            &trusted,
        );
        write("server.pem", cert);
        write("server.key", key);
        for (name, issuer) in [("client", &trusted), ("rogue", &rogue)] {
            let (cert, key) = leaf(
                vec!["ci-client".into()],
                &format!("{name}-client"),
                ExtendedKeyUsagePurpose::ClientAuth,
                issuer,
            );
            write(&format!("{name}.pem"), cert);
            write(&format!("{name}.key"), key);
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Over TLS, a client certificate from --tls-client-ca's CA is admitted (and named as the
/// owner); one from another CA, none at all, or plaintext is refused.
#[test]
fn remote_callers_need_a_client_certificate_from_the_ca() {
    require_root();
    let pki = Pki::new();
    let pair = VethPair::new("mtls");
    let listen = format!("{SERVER_V4}:7447");
    let daemon = {
        let (cert, key, ca) = (
            pki.path("server.pem"),
            pki.path("server.key"),
            pki.path("ca.pem"),
        );
        let args = [
            "--iface",
            SERVER_IF,
            "--listen",
            &listen,
            "--allow-remote",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ];
        let log = std::env::temp_dir().join(format!("{}-faultd.log", pair.server.name));
        let child = pair
            .server
            .cmd(FAULTD)
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !daemon.log_text().contains("faultd ready") {
            assert!(Instant::now() < deadline, "{}", daemon.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    };
    let remote = |extra: &[&str], args: &[&str]| {
        pair.client
            .cmd(FAULTCTL)
            .args(["--addr", &listen])
            .args(extra)
            .args(args)
            .env_remove("FAULTD_ADDR")
            .output()
            .unwrap()
    };
    let (ca, cert, key) = (
        pki.path("ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let good = ["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key];
    let out = remote(&good, &["drop", "--port", "9000"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr_text(&out),
        daemon.log_text()
    );

    let (rogue_cert, rogue_key) = (pki.path("rogue.pem"), pki.path("rogue.key"));
    let rogue = [
        "--tls-ca",
        &ca,
        "--tls-cert",
        &rogue_cert,
        "--tls-key",
        &rogue_key,
    ];
    let no_cert = ["--tls-ca", &ca];
    for (what, extra) in [
        ("another CA's certificate", &rogue[..]),
        ("no certificate", &no_cert),
        ("plaintext", &[]),
    ] {
        let out = remote(extra, &["drop", "--port", "9001"]);
        assert!(!out.status.success(), "{what} was admitted");
        eprintln!("{what}: {}", stderr_text(&out).trim());
    }

    // Only the certified client's fault is there, owned by its certificate.
    let list = remote(&good, &["list", "--json"]);
    let faults: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(faults.as_array().unwrap().len(), 1, "{faults}");
    let owner = &faults[0]["owner"];
    assert_eq!(owner["uid"], Value::Null, "{owner}");
    let remote_owner = owner["remote"].as_str().unwrap();
    assert!(
        remote_owner.starts_with(&format!("{CLIENT_V4}:")),
        "{owner}"
    );
    assert!(remote_owner.ends_with("CN=client-client"), "{owner}");
    // Locally, root still steers it through the socket.
    pair.server.faultctl_ok(&["list"]);
}

/// `list` shows who added each fault; `clear --mine` removes the caller's own and leaves
/// everyone else's; `clear --label` only that label's.
#[test]
fn list_shows_owners_and_clear_mine_leaves_others() {
    require_root();
    let user = TestUser::new("mine");
    let ns = Netns::new("mine");
    let uid = user.uid.to_string();
    let _daemon = daemon(&ns, &[], &[("SUDO_UID", &uid)]);
    ns.faultctl_ok(&["drop", "--port", "9000", "--label", "roots"]);
    ns.faultctl_ok(&["drop", "--port", "9001", "--label", "shared"]);
    user.faultctl_ok(&ns, &["drop", "--port", "9002", "--label", "users"]);
    user.faultctl_ok(&ns, &["drop", "--port", "9003", "--label", "shared"]);

    let table = ns.faultctl_ok(&["list"]);
    assert!(table.lines().next().unwrap().contains("OWNER"), "{table}");
    let row = |port: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(2) == Some(port))
            .unwrap_or_else(|| panic!("no {port} in {table}"))
            .to_string()
    };
    assert!(row("9000").contains("root(0)"), "{table}");
    assert!(
        row("9002").contains(&format!("{}({})", user.name, user.uid)),
        "{table}"
    );
    assert!(row("9002").contains("faultctl"), "{table}");

    assert_eq!(
        user.faultctl_ok(&ns, &["clear", "--mine"]),
        "removed 2 fault(s)"
    );
    let left: Vec<Value> = ns.faults_json().as_array().unwrap().clone();
    let ports: Vec<u64> = left.iter().map(|f| f["port"].as_u64().unwrap()).collect();
    assert_eq!(ports, [9000, 9001], "root's faults stay");
    assert_eq!(
        ns.faultctl_ok(&["clear", "--label", "shared"]),
        "removed 1 fault(s)"
    );
    let left = ns.faults_json();
    assert_eq!(left[0]["label"], "roots", "{left}");
    assert_eq!(left.as_array().unwrap().len(), 1);
}

/// A fault on the port faultd's API actually listens on is refused, whatever its protocol,
/// direction or peer; with `--listen 127.0.0.1:0` that is the port the kernel picked.
#[test]
fn a_fault_on_the_bound_api_port_is_refused() {
    require_root();
    let ns = Netns::new("self");
    let daemon = daemon(&ns, &["--listen", "127.0.0.1:0"], &[]);
    let listen: std::net::SocketAddr = ready_field(&daemon, "listen").parse().unwrap();
    let port = listen.port().to_string();
    assert_ne!(port, "0");
    for extra in [
        &[][..],
        &["--protocol", "any"],
        &["--direction", "to-port"],
        &["--direction", "from-port", "--peer", "127.0.0.1"],
    ] {
        for verb in [&["drop"][..], &["loss", "--percent", "10"]] {
            let args = [verb, &["--port", &port], extra].concat();
            let out = ns.faultctl(&args);
            let err = stderr_text(&out);
            assert!(!out.status.success(), "{args:?} was accepted");
            assert!(err.contains("faultd's own API port"), "{args:?}: {err}");
        }
    }
    // Over TCP to that very port, faultd still answers.
    ns.faultctl_ok(&["--addr", &listen.to_string(), "list"]);
    assert_eq!(ns.faults_json(), serde_json::json!([]));
}

/// Each network namespace has its own default socket, the same path for faultd and
/// faultctl; faultctl never reaches another namespace's daemon; the socket goes when
/// faultd ends, and a stale one (left by a killed faultd) is replaced.
#[test]
fn each_namespace_has_its_own_socket() {
    require_root();
    let (a, b, c) = (Netns::new("nsa"), Netns::new("nsb"), Netns::new("nsc"));
    // What a SIGKILLed faultd leaves at c's path: a socket no one listens on.
    let stale = client_socket_path(&c);
    fs::create_dir_all(stale.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&stale);
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());

    // Not on the default TCP port: what answers faultctl's defaults in `a` is the socket.
    let mut da = daemon(&a, &["--listen", "127.0.0.1:7448"], &[]);
    let db = daemon(&b, &[], &[]);
    let dc = daemon(&c, &[], &[]);
    assert_eq!(socket_of(&da), client_socket_path(&a));
    assert_eq!(socket_of(&db), client_socket_path(&b));
    assert_eq!(socket_of(&dc), stale, "the stale socket was replaced");
    assert_ne!(socket_of(&da), socket_of(&db));

    a.faultctl_ok(&["drop", "--port", "9000"]);
    assert_eq!(a.faults_json().as_array().unwrap().len(), 1);
    assert_eq!(b.faults_json(), serde_json::json!([]));

    let socket = socket_of(&da);
    assert_eq!(da.stop(libc::SIGTERM), Some(0), "{}", da.log_text());
    assert!(!socket.exists(), "faultd removes its socket on exit");
    let out = a.faultctl(&["list"]);
    assert!(
        stderr_text(&out).contains("no faultd answers"),
        "{}",
        stderr_text(&out)
    );
    // b's daemon is untouched.
    assert!(socket_of(&db).exists());
    drop(dc);
    assert!(!stale.exists());
}

/// A live faultd's socket is never taken: a second faultd given the same path (from
/// another namespace, so that the interface lock does not stop it first) refuses to start,
/// saying why, and the first one keeps answering there.
#[test]
fn a_socket_a_live_faultd_listens_on_is_refused() {
    require_root();
    let (a, b) = (Netns::new("livea"), Netns::new("liveb"));
    let first = daemon(&a, &[], &[]);
    let socket = socket_of(&first);
    let path = socket.to_str().unwrap();
    let log = start_daemon(&b, &["--socket", path, "--listen", "127.0.0.1:7449"], &[])
        .map(|d| panic!("a second faultd took the live socket: {}", d.log_text()))
        .unwrap_err();
    assert!(
        log.contains(&format!(
            "another faultd serves this network namespace at {path}"
        )),
        "{log}"
    );
    assert!(socket.exists());
    a.faultctl_ok(&["--addr", &format!("unix:{path}"), "list"]);
}

/// The tests' cleanup removes the socket of a faultd they SIGKILLed (faultd cannot), so
/// that killed test daemons leave no files in /run/faultd.
#[test]
fn the_harness_removes_a_killed_faultds_socket() {
    require_root();
    let ns = Netns::new("killsock");
    let mut killed = daemon(&ns, &[], &[]);
    let socket = socket_of(&killed);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    assert!(
        socket.exists(),
        "SIGKILL left no socket: nothing to clean up"
    );
    drop(killed);
    assert!(!socket.exists(), "the harness left {}", socket.display());
}

/// The reconnect service inside the daemon (--retry-port) listens on loopback unless told
/// otherwise: another host (the veth peer) cannot reach it.
#[test]
fn the_daemons_retry_port_listens_on_loopback_only() {
    require_root();
    let pair = VethPair::new("rbind");
    let log = std::env::temp_dir().join(format!("{}-faultd.log", pair.server.name));
    let child = pair
        .server
        .cmd(FAULTD)
        .args(["--iface", SERVER_IF, "--retry-port", "9094"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, log };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log_text().contains("faultd ready") {
        assert!(Instant::now() < deadline, "{}", daemon.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let from_peer = pair.client.run(|| {
        std::net::TcpStream::connect_timeout(
            &format!("{SERVER_V4}:9094").parse().unwrap(),
            Duration::from_secs(2),
        )
    });
    let err = from_peer.expect_err("the retry port answered another host");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    let local = pair
        .server
        .run(|| std::net::TcpStream::connect("127.0.0.1:9094"));
    assert!(local.is_ok(), "{local:?}");
}
