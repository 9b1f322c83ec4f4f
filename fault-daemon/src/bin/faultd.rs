//! faultd: loads the fault programs onto interfaces and serves the control API.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tonic::service::InterceptorLayer;
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use faultd::access::listen::{
    TcpIdentity, bind_socket, default_socket_path, tcp_incoming, unix_incoming,
};
use faultd::access::{Gate, Policy};
use faultd::api::{Engine, FaultApi};
use faultd::datapath::Datapath;
use faultd::events::EventHub;
use faultd::faults::FaultTable;
use faultd::proto::fault_service_server::FaultServiceServer;
use faultd::reconnect::{ReconnectServer, bind_retry_listener};

#[derive(Parser, Debug)]
#[command(
    name = "faultd",
    version,
    about = "Kernel-level network fault injector (run as root)",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Interface to attach to (repeatable), e.g. `lo` or a veth.
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// Address of the gRPC control API.
    #[arg(long, default_value = faultd::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Allow the API on a non-loopback address: only over TLS with client certificates
    /// (--tls-cert, --tls-key, --tls-client-ca); plaintext is refused.
    #[arg(long)]
    allow_remote: bool,
    /// The API's Unix socket (mode 0660). Default: /run/faultd/faultd-<netns inode>.sock,
    /// one per network namespace, where faultctl looks first.
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(flatten)]
    access: AccessArgs,
    #[command(flatten)]
    tls: ServerTlsArgs,
    /// Also be a gRPC reconnect interop server: serve grpc.testing.ReconnectService on the
    /// API and close every connection to this port (0 picks a free one).
    #[arg(long, value_name = "PORT")]
    retry_port: Option<u16>,
    /// Address the --retry-port listens on.
    #[arg(
        long,
        value_name = "IP",
        default_value = "127.0.0.1",
        requires = "retry_port"
    )]
    retry_bind: IpAddr,
    /// A reconnect test whose Stop never comes ends after this long (--retry-port).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "10m", requires = "retry_port")]
    retry_test_timeout: Duration,
}

/// Who may call the API besides root and the user who started faultd through sudo.
#[derive(clap::Args, Debug)]
struct AccessArgs {
    /// Also admit this user, by uid or name (repeatable).
    #[arg(long = "allow-uid", value_name = "USER", value_parser = faultd::access::resolve_uid)]
    allow_uids: Vec<u32>,
    /// Also admit the members of this group, by gid or name (repeatable).
    #[arg(long = "allow-group", value_name = "GROUP", value_parser = faultd::access::resolve_gid)]
    allow_groups: Vec<u32>,
    /// Admit every caller without checks: only for throwaway containers (warned at start).
    #[arg(long)]
    no_auth: bool,
}

impl AccessArgs {
    fn policy(&self) -> anyhow::Result<Policy> {
        let sudo = std::env::var("SUDO_UID").ok();
        Ok(Policy {
            no_auth: self.no_auth,
            sudo_uid: faultd::access::sudo_uid(sudo.as_deref()).map_err(anyhow::Error::msg)?,
            uids: self.allow_uids.clone(),
            gids: self.allow_groups.clone(),
        })
    }
}

/// TLS for the TCP API; all three or none.
#[derive(clap::Args, Debug)]
struct ServerTlsArgs {
    /// faultd's certificate (PEM) for TLS on --listen.
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// faultd's private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) whose client certificates are admitted; every TLS client must present one.
    #[arg(long, value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    fn config(&self) -> anyhow::Result<Option<ServerTlsConfig>> {
        let read = |path: &PathBuf, flag: &str| {
            std::fs::read(path).with_context(|| format!("{flag} {}", path.display()))
        };
        match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => Ok(Some(
                ServerTlsConfig::new()
                    .identity(Identity::from_pem(
                        read(cert, "--tls-cert")?,
                        read(key, "--tls-key")?,
                    ))
                    .client_ca_root(Certificate::from_pem(read(ca, "--tls-client-ca")?)),
            )),
            _ => bail!(
                "--tls-cert, --tls-key and --tls-client-ca go together: TLS on the API always \
                 asks clients for a certificate"
            ),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Only the gRPC connection-backoff interop server (no root, no eBPF): a drop-in for
    /// gRPC's reconnect_interop_server.
    Reconnect(ReconnectArgs),
}

#[derive(clap::Args, Debug)]
struct ReconnectArgs {
    /// Port of the control service, grpc.testing.ReconnectService, plaintext on --bind
    /// (0 picks a free port; the log line "reconnect server ready" names it).
    #[arg(long = "control-port", alias = "control_port", value_name = "PORT")]
    control_port: u16,
    /// Port on --bind whose connections are accepted and closed at once (0 picks one).
    #[arg(long = "retry-port", alias = "retry_port", value_name = "PORT")]
    retry_port: u16,
    /// Address both ports listen on; every interface by default, as gRPC's server.
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    bind: IpAddr,
    /// A test whose Stop never comes ends after this long, and the next client's begins.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration,
          default_value = "10m")]
    test_timeout: Duration,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let outcome = match args.command {
        Some(Command::Reconnect(reconnect)) => runtime.block_on(run_reconnect(reconnect)),
        None => runtime.block_on(run(args)),
    };
    if let Err(e) = outcome {
        eprintln!("faultd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.ifaces.is_empty() {
        bail!("--iface is required: name the interface(s) to attach to, e.g. --iface lo");
    }
    let policy = args.access.policy()?;
    let tls = args.tls.config()?;
    check_listen(args.listen, args.allow_remote, tls.is_some())?;
    // Parses the certificates: a bad one fails here, before anything is attached.
    let (tcp_server, tcp_identity) = match tls {
        Some(tls) => (
            Server::builder()
                .tls_config(tls)
                .context("--tls-cert, --tls-key, --tls-client-ca")?,
            TcpIdentity::Certificate,
        ),
        None => (Server::builder(), TcpIdentity::Kernel),
    };
    // Bind first: it is the cheapest step to fail and changes nothing on the interfaces.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // The port actually bound (`--listen 127.0.0.1:0` picks one) is the one to protect.
    let api_addr = listener.local_addr()?;
    let retry = match args.retry_port {
        Some(port) => Some(bind_retry(args.retry_bind, port).await?),
        None => None,
    };

    let mut datapath = Datapath::load()?;
    for iface in &args.ifaces {
        // On error, dropping `datapath` detaches what was attached so far.
        datapath.attach(iface)?;
    }
    let attachments = datapath.attachments();
    let events = Arc::new(EventHub::default());
    if let Some(ring) = datapath.take_events() {
        tokio::spawn(events.clone().pump(ring));
    }
    let api = FaultApi::new(
        Engine::new(
            FaultTable::new(vec![api_addr.port()]),
            Box::new(datapath),
            attachments,
        ),
        events,
    );
    let caps = api.capabilities();
    info!(
        "what this kernel supports:\n{}",
        faultd::capabilities::table(&caps)
    );

    let reconnect = match retry {
        Some(retry) => {
            let (reconnect, retry_port) = spawn_reconnect(retry, args.retry_test_timeout)?;
            info!(retry_port, "reconnect interop service ready on the API");
            Some(reconnect)
        }
        None => None,
    };

    let socket_path = match &args.socket {
        Some(path) => path.clone(),
        None => default_socket_path().context("cannot tell this network namespace apart")?,
    };
    // The sudo user owns it and the first --allow-group is its group, so that they can
    // connect; others admitted (--allow-uid) reach faultd over TCP.
    let (unix, socket_file) =
        bind_socket(&socket_path, policy.sudo_uid, policy.gids.first().copied())?;
    if policy.no_auth {
        warn!(
            "--no-auth: every caller is admitted without checks; any user of this machine \
             can cut or corrupt its traffic"
        );
    } else {
        info!(admits = %policy.admitted(), "access policy");
    }
    let gate = Gate::new(policy);

    // Both listeners stop together, on SIGTERM or SIGINT.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let reconnect = reconnect.clone();
        let api = api.clone();
        async move {
            shutdown(reconnect).await;
            // Open sessions hold their calls open; a graceful shutdown waits for those.
            api.end_sessions();
            let _ = stop.send(true);
        }
    });
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    info!(listen = %api_addr, socket = %socket_path.display(), "faultd ready");
    let tcp = routes(
        tcp_server.layer(InterceptorLayer::new(gate.clone())),
        &api,
        &reconnect,
    )
    .serve_with_incoming_shutdown(
        tcp_incoming(listener, tcp_identity),
        stopped(stopping.clone()),
    );
    let unix = routes(
        Server::builder().layer(InterceptorLayer::new(gate)),
        &api,
        &reconnect,
    )
    .serve_with_incoming_shutdown(unix_incoming(unix), stopped(stopping));
    tokio::try_join!(tcp, unix).context("serving the API")?;
    drop(socket_file);
    info!("shutting down: removing faults and detaching");
    api.clear().ok();
    Ok(())
}

/// A non-loopback API only over TLS with client certificates, and only when asked for.
fn check_listen(listen: SocketAddr, allow_remote: bool, tls: bool) -> anyhow::Result<()> {
    if listen.ip().is_loopback() {
        return Ok(());
    }
    if !allow_remote {
        bail!(
            "--listen {listen} is not a loopback address; anyone who reaches the API can cut \
             traffic. Pass --allow-remote with --tls-cert, --tls-key and --tls-client-ca to do \
             it anyway"
        );
    }
    if !tls {
        bail!(
            "--listen {listen} with --allow-remote needs TLS with client certificates \
             (--tls-cert, --tls-key, --tls-client-ca): plaintext on a non-loopback address is \
             refused"
        );
    }
    Ok(())
}

/// The services of the API, behind whatever layers `server` has (the access gate).
fn routes<L: Clone>(
    mut server: Server<L>,
    api: &FaultApi,
    reconnect: &Option<ReconnectServer>,
) -> Router<L> {
    server
        .add_service(FaultServiceServer::new(api.clone()))
        .add_optional_service(reconnect.as_ref().map(ReconnectServer::service))
}

/// `faultd reconnect`: the interop server alone, on its own control port.
async fn run_reconnect(args: ReconnectArgs) -> anyhow::Result<()> {
    let control_addr = SocketAddr::from((args.bind, args.control_port));
    let control = TcpListener::bind(control_addr)
        .await
        .with_context(|| format!("cannot listen on control port {control_addr}"))?;
    let control_port = control.local_addr()?.port();
    let retry = bind_retry(args.bind, args.retry_port).await?;
    let (reconnect, retry_port) = spawn_reconnect(retry, args.test_timeout)?;
    info!(control_port, retry_port, "reconnect server ready");
    tonic::transport::Server::builder()
        .add_service(reconnect.service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(control),
            shutdown(Some(reconnect.clone())),
        )
        .await
        .context("serving the control service")
}

async fn bind_retry(ip: IpAddr, port: u16) -> anyhow::Result<TcpListener> {
    bind_retry_listener(ip, port)
        .await
        .with_context(|| format!("cannot listen on retry port {}", SocketAddr::new(ip, port)))
}

/// Closes every connection to `retry` in the background; the returned server judges them.
/// Also returns the retry port, which the caller logs (it was chosen here if 0 was asked).
fn spawn_reconnect(
    retry: TcpListener,
    test_timeout: Duration,
) -> anyhow::Result<(ReconnectServer, u16)> {
    let retry_port = retry.local_addr()?.port();
    let reconnect = ReconnectServer::with_test_timeout(test_timeout);
    tokio::spawn(reconnect.clone().run_retry_listener(retry));
    Ok((reconnect, retry_port))
}

/// Waits for SIGTERM or SIGINT, then fails the `Start`s still waiting for their turn: a
/// graceful shutdown waits for every running call to end.
async fn shutdown(reconnect: Option<ReconnectServer>) {
    shutdown_signal().await;
    if let Some(reconnect) = reconnect {
        reconnect.shut_down();
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultd::reconnect::DEFAULT_TEST_TIMEOUT;
    use std::net::Ipv4Addr;

    fn reconnect_ports(argv: &[&str]) -> (u16, u16) {
        match Args::try_parse_from(argv).unwrap().command {
            Some(Command::Reconnect(r)) => (r.control_port, r.retry_port),
            other => panic!("not the reconnect subcommand: {other:?}"),
        }
    }

    #[test]
    fn reconnect_takes_grpcs_underscore_flags_and_dashed_ones() {
        let underscore = [
            "faultd",
            "reconnect",
            "--control_port=8080",
            "--retry_port=8081",
        ];
        assert_eq!(reconnect_ports(&underscore), (8080, 8081));
        let dashed = [
            "faultd",
            "reconnect",
            "--control-port",
            "8080",
            "--retry-port",
            "8081",
        ];
        assert_eq!(reconnect_ports(&dashed), (8080, 8081));
    }

    #[test]
    fn reconnect_needs_both_ports_and_no_daemon_flags() {
        assert!(Args::try_parse_from(["faultd", "reconnect", "--control_port=1"]).is_err());
        let mixed = [
            "faultd",
            "--iface",
            "lo",
            "reconnect",
            "--control_port=1",
            "--retry_port=2",
        ];
        assert!(Args::try_parse_from(mixed).is_err());
    }

    #[test]
    fn the_daemon_takes_a_retry_port() {
        let args =
            Args::try_parse_from(["faultd", "--iface", "lo", "--retry-port", "8081"]).unwrap();
        assert_eq!(args.retry_port, Some(8081));
        assert!(args.command.is_none());
        // The copy inside the daemon listens on loopback unless told otherwise.
        assert_eq!(args.retry_bind, IpAddr::from(Ipv4Addr::LOCALHOST));
        assert_eq!(args.retry_test_timeout, DEFAULT_TEST_TIMEOUT);
    }

    #[test]
    fn faultd_reconnect_binds_every_interface_unless_told() {
        let parse = |extra: &[&str]| {
            let argv = ["faultd", "reconnect", "--control_port=1", "--retry_port=2"];
            match Args::try_parse_from(argv.iter().chain(extra))
                .unwrap()
                .command
            {
                Some(Command::Reconnect(r)) => (r.bind, r.test_timeout),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            parse(&[]),
            (IpAddr::from(Ipv4Addr::UNSPECIFIED), DEFAULT_TEST_TIMEOUT)
        );
        assert_eq!(
            parse(&["--bind", "127.0.0.1", "--test-timeout", "30s"]),
            (IpAddr::from(Ipv4Addr::LOCALHOST), Duration::from_secs(30))
        );
    }

    #[test]
    fn access_flags_are_repeatable_and_take_names() {
        let args = Args::try_parse_from([
            "faultd",
            "--iface",
            "lo",
            "--allow-uid",
            "1001",
            "--allow-uid",
            "root",
            "--allow-group",
            "root",
            "--no-auth",
        ])
        .unwrap();
        assert_eq!(args.access.allow_uids, [1001, 0]);
        assert_eq!(args.access.allow_groups, [0]);
        assert!(args.access.no_auth);
        let err = Args::try_parse_from(["faultd", "--iface", "lo", "--allow-uid", "nobody-x"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--allow-uid"), "{err}");
    }

    #[test]
    fn remote_listening_needs_tls() {
        let lo: SocketAddr = "127.0.0.1:7447".parse().unwrap();
        let veth: SocketAddr = "198.18.0.1:7447".parse().unwrap();
        assert!(check_listen(lo, false, false).is_ok());
        let err = check_listen(veth, false, true).unwrap_err().to_string();
        assert!(err.contains("--allow-remote"), "{err}");
        let err = check_listen(veth, true, false).unwrap_err().to_string();
        assert!(err.contains("plaintext"), "{err}");
        assert!(check_listen(veth, true, true).is_ok());
    }

    #[test]
    fn tls_flags_go_together() {
        let tls = ServerTlsArgs {
            tls_cert: Some("c.pem".into()),
            tls_key: None,
            tls_client_ca: None,
        };
        let err = tls.config().unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
    }
}
