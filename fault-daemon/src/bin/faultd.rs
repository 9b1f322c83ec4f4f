//! faultd: loads the fault programs onto interfaces and serves the control API.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{ArgMatches, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tonic::service::InterceptorLayer;
use tonic::transport::server::Router;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use faultd::access::listen::{
    TcpIdentity, bind_socket, default_socket_path, tcp_incoming, unix_incoming,
};
use faultd::access::{Gate, Policy};
use faultd::api::{DEFAULT_MAX_STREAMS, Engine, FaultApi};
use faultd::connections::{ConnectionLimit, DEFAULT_MAX_CONNECTIONS};
use faultd::datapath::{Datapath, MapSizes};
use faultd::events::{EventHub, LossCounter};
use faultd::faults::{DEFAULT_MAX_FAULTS, DEFAULT_MAX_FLOWS, FaultTable, Limits};
use faultd::observe::Observe;
use faultd::proto::fault_service_server::FaultServiceServer;
use faultd::reconnect::{ReconnectServer, bind_retry_listener};

/// How long connections are given to close on shutdown, after the faults are removed and
/// the programs detached; then faultd exits anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Concurrent requests (streams) on one HTTP/2 connection.
const MAX_STREAMS_PER_CONNECTION: u32 = 64;

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
    /// faultd's log on stderr: text (coloured only on a terminal) or json (one object per
    /// line, for log collectors).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: faultd::logging::LogFormat,
    /// Read settings and faults from this TOML file; flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check FILE (a --config file) and exit: needs no root and touches nothing.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    check_config: Option<PathBuf>,
    /// Make the eBPF programs log why packets are skipped (debug) or what each fault did with
    /// them (info), into this log under the target faultd::ebpf. Change it while faultd
    /// runs with `faultctl ebpf-log LEVEL`.
    #[arg(long = "ebpf-log", value_name = "LEVEL", value_enum, default_value_t)]
    ebpf_log: faultd::ebpf_log::EbpfLogLevel,
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
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9747) at /metrics; off by
    /// default. A non-loopback address needs --allow-remote.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
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
    /// Most faults installed at once (AddFault beyond: RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FAULTS)]
    max_faults: usize,
    /// Flows the limits (limit-bytes, limit-age) track at once, and flows whose first hit
    /// is remembered; sizes the kernel's flow maps. A new flow beyond it passes untracked,
    /// counted in `faultctl stats` (16..=1048576).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FLOWS)]
    max_flows: u32,
    /// Longest TTL a fault may have (AddFault beyond: INVALID_ARGUMENT), e.g. 24h, 30m.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    max_ttl: Duration,
    /// Most API connections at once. When all are taken, a new connection replaces the
    /// oldest one that never sent a byte, or is closed.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Most event streams (WatchEvents) open at once (beyond: RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_STREAMS as u32, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams: u32,
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

/// Blocking work (map and netlink writes, /proc lookups, session ends) is short and comes in
/// bursts: a few threads serve it. Tokio's default of 512 lets a burst leave dozens of idle
/// threads, each holding a stack and a malloc cache, which the soak saw as growing RSS.
const BLOCKING_THREADS: usize = 8;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
        .expect("tokio runtime")
}

fn main() {
    limit_malloc_arenas();
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    faultd::logging::init(args.log_format);
    let runtime = runtime();
    let outcome = match args.command {
        Some(Command::Reconnect(reconnect)) => runtime.block_on(run_reconnect(reconnect)),
        None => with_config(args, &matches).and_then(|(args, faults)| match args.check_config {
            Some(_) => check_config(&args, faults.len()),
            None => runtime.block_on(run(args, faults)),
        }),
    };
    // Tasks of connections that outlived the shutdown grace are not waited for.
    runtime.shutdown_background();
    if let Err(e) = outcome {
        eprintln!("faultd: {e:#}");
        std::process::exit(1);
    }
}

/// Fills what the command line left unset from the --config (or --check-config) file; also
/// returns the file's validated faults.
fn with_config(mut args: Args, m: &ArgMatches) -> anyhow::Result<(Args, ConfigFaults)> {
    use faultd::config::pick;
    let Some(path) = args.config.as_ref().or(args.check_config.as_ref()) else {
        return Ok((args, Vec::new()));
    };
    let loaded = faultd::config::load(path)?;
    let (file, access) = (loaded.config, &mut args.access);
    pick(m, "ifaces", &mut args.ifaces, file.interfaces);
    pick(m, "listen", &mut args.listen, file.listen);
    pick(m, "allow_remote", &mut args.allow_remote, file.allow_remote);
    pick(m, "socket", &mut args.socket, file.socket.map(Some));
    pick(m, "metrics", &mut args.metrics, file.metrics.map(Some));
    pick(
        m,
        "retry_port",
        &mut args.retry_port,
        file.retry_port.map(Some),
    );
    pick(m, "retry_bind", &mut args.retry_bind, file.retry_bind);
    pick(
        m,
        "retry_test_timeout",
        &mut args.retry_test_timeout,
        file.retry_test_timeout,
    );
    pick(m, "allow_uids", &mut access.allow_uids, loaded.allow_uids);
    pick(
        m,
        "allow_groups",
        &mut access.allow_groups,
        loaded.allow_groups,
    );
    pick(m, "no_auth", &mut access.no_auth, file.access.no_auth);
    pick(
        m,
        "tls_cert",
        &mut args.tls.tls_cert,
        file.access.tls_cert.map(Some),
    );
    pick(
        m,
        "tls_key",
        &mut args.tls.tls_key,
        file.access.tls_key.map(Some),
    );
    let ca = file.access.tls_client_ca.map(Some);
    pick(m, "tls_client_ca", &mut args.tls.tls_client_ca, ca);
    let limits = file.limits;
    pick(m, "max_faults", &mut args.max_faults, limits.max_faults);
    pick(m, "max_ttl", &mut args.max_ttl, limits.max_ttl);
    pick(m, "max_flows", &mut args.max_flows, limits.max_flows);
    pick(
        m,
        "max_connections",
        &mut args.max_connections,
        limits.max_connections,
    );
    pick(m, "max_streams", &mut args.max_streams, limits.max_streams);
    Ok((args, loaded.faults))
}

type ConfigFaults = Vec<(faultd::faults::FaultSpec, faultd::config::Position)>;

/// `--check-config`: what `run` checks before it touches anything, without root.
fn check_config(args: &Args, faults: usize) -> anyhow::Result<()> {
    args.access.policy()?;
    let tls = &args.tls;
    let with_tls = [&tls.tls_cert, &tls.tls_key, &tls.tls_client_ca].map(Option::is_some);
    if with_tls.iter().any(|t| *t) && !with_tls.iter().all(|t| *t) {
        bail!("tls_cert, tls_key and tls_client_ca go together");
    }
    check_listen(args.listen, args.allow_remote, with_tls[0])?;
    if let Some(addr) = args.metrics {
        faultd::metrics::check_addr(addr, args.allow_remote)?;
    }
    let path = args
        .check_config
        .as_deref()
        .unwrap_or(std::path::Path::new("-"));
    println!(
        "{}: ok ({} interface(s), {faults} fault(s))",
        path.display(),
        args.ifaces.len()
    );
    Ok(())
}

async fn run(args: Args, faults: ConfigFaults) -> anyhow::Result<()> {
    // First of all: from here on SIGTERM, SIGINT and SIGHUP end faultd cleanly.
    let mut signals = Signals::install()?;
    if args.ifaces.is_empty() {
        bail!("--iface is required: name the interface(s) to attach to, e.g. --iface lo");
    }
    let policy = args.access.policy()?;
    let tls = args.tls.config()?;
    check_listen(args.listen, args.allow_remote, tls.is_some())?;
    let limits = Limits {
        max_faults: args.max_faults,
        max_ttl: args.max_ttl,
        max_flows: args.max_flows,
    };
    limits.validate().map_err(anyhow::Error::msg)?;
    // Parses the certificates: a bad one fails here, before anything is attached.
    let (tcp_server, tcp_identity) = match tls {
        Some(tls) => (
            server()
                .tls_config(tls)
                .context("--tls-cert, --tls-key, --tls-client-ca")?,
            TcpIdentity::Certificate,
        ),
        None => (server(), TcpIdentity::Kernel),
    };
    // Bind first: it is the cheapest step to fail and changes nothing on the interfaces.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // The port actually bound (`--listen 127.0.0.1:0` picks one) is the one to protect.
    let api_addr = listener.local_addr()?;
    let metrics = match args.metrics {
        Some(addr) => {
            faultd::metrics::check_addr(addr, args.allow_remote)?;
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            Some(listener)
        }
        None => None,
    };
    let retry = match args.retry_port {
        Some(port) => Some(bind_retry(args.retry_bind, port).await?),
        None => None,
    };

    let sizes = MapSizes::for_limits(&limits);
    let Some(mut datapath) = load_and_attach(args.ifaces.clone(), sizes, &mut signals).await?
    else {
        return Ok(());
    };
    release_startup_memory();
    // Later, whatever large answers and clears free (see faultd::heap).
    faultd::heap::spawn_trimmer();
    let attachments = datapath.attachments();
    let ebpf_log = datapath.ebpf_log().switch();
    ebpf_log
        .set(args.ebpf_log)
        .context("setting the programs' log level")?;
    if let Some(reader) = datapath.ebpf_log().take_reader() {
        tokio::spawn(faultd::ebpf_log::forward(reader));
    }
    let events = Arc::new(EventHub::default());
    if let Some(ring) = datapath.take_events() {
        let losses = datapath.take_event_losses().map(LossCounter::new);
        tokio::spawn(events.clone().pump(ring, losses));
    }
    let api = FaultApi::new(
        Engine::new(
            FaultTable::new(vec![api_addr.port()]).with_limits(limits),
            Box::new(datapath),
            attachments,
        ),
        events,
    )
    .with_max_streams(args.max_streams as usize)
    .with_ebpf_log(ebpf_log);
    if let Some(listener) = metrics {
        info!(metrics = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
        tokio::spawn(faultd::metrics::serve(
            listener,
            faultd::metrics::registry(api.clone()),
        ));
    }
    if let Err(e) = faultd::config::install(&api, faults) {
        api.shut_down().ok();
        return Err(e);
    }
    let observe = Arc::new(faultd::observe::observe().await?);
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
    let gate = Gate::new(policy.clone());

    // Both listeners stop accepting together; the connections' limit covers both.
    let connections = ConnectionLimit::new(args.max_connections as usize);
    let (stop_accepting, stopping) = tokio::sync::watch::channel(false);
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let tcp = routes(
        tcp_server.layer(InterceptorLayer::new(gate.clone())),
        &api,
        &reconnect,
        &observe,
    )
    .serve_with_incoming_shutdown(
        connections.limit(tcp_incoming(listener, tcp_identity, policy)),
        stopped(stopping.clone()),
    );
    let unix = routes(
        server().layer(InterceptorLayer::new(gate)),
        &api,
        &reconnect,
        &observe,
    )
    .serve_with_incoming_shutdown(connections.limit(unix_incoming(unix)), stopped(stopping));
    let server = async { tokio::try_join!(tcp, unix).map(|_| ()) };
    tokio::pin!(server);
    info!(listen = %api_addr, socket = %socket_path.display(), "faultd ready");
    let signal = tokio::select! {
        served = &mut server => {
            // The server stopped by itself: still leave the interfaces as found.
            api.shut_down().ok();
            return served.context("serving the API");
        }
        signal = signals.recv() => signal,
    };
    observe.not_serving().await;
    let stopped = stop(
        signal,
        &api,
        reconnect.as_ref(),
        stop_accepting,
        server,
        &connections,
        &mut signals,
    )
    .await;
    drop(socket_file);
    stopped
}

/// A server builder with the API's bounds on every connection.
fn server() -> Server {
    Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Peers that vanished without closing are found and their connections closed.
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}

/// After `signal`: faults off and programs detached first, whatever the clients do (event
/// streams end there too); then at most [`SHUTDOWN_GRACE`] for the connections to close,
/// cut short by a second signal.
async fn stop(
    signal: &str,
    api: &FaultApi,
    reconnect: Option<&ReconnectServer>,
    stop_accepting: tokio::sync::watch::Sender<bool>,
    mut server: Pin<&mut impl Future<Output = Result<(), tonic::transport::Error>>>,
    connections: &ConnectionLimit,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    info!(signal, "stopping: removing faults and detaching");
    if let Some(reconnect) = reconnect {
        // Fails the Starts still waiting for their turn.
        reconnect.shut_down();
    }
    let _ = stop_accepting.send(true);
    let shutting = api.clone();
    match tokio::task::spawn_blocking(move || shutting.shut_down()).await {
        Ok(Ok(removed)) => info!(removed, "faults removed, programs detached"),
        Ok(Err(e)) => warn!(error = %e, "removing the faults failed; the programs are detached"),
        Err(e) => warn!(error = %e, "shutting the engine down panicked"),
    }
    tokio::select! {
        served = &mut server => served.context("closing the API's connections")?,
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => warn!(
            open = connections.len(),
            "connections still open after {SHUTDOWN_GRACE:?}: exiting without them"
        ),
        second = signals.recv() => info!(
            signal = second,
            "second signal: exiting without waiting for connections"
        ),
    }
    Ok(())
}

/// Where start-up is, shared by the loading thread and the signal handling.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Startup {
    /// The verifier is at work; nothing is attached yet.
    Loading,
    /// A signal came while loading: the programs will not be attached.
    Stopped,
    /// Attaching (quick); the datapath detaches what it attached when dropped.
    Attaching,
}

/// Loads the programs and attaches them, off the async threads. A signal while loading
/// (the verifier cannot be interrupted) means they are never attached: faultd stops as
/// soon as the kernel is done, or at once on a second signal, since nothing is attached
/// yet. A signal while attaching waits for that (milliseconds), then detaches. `None`
/// when stopped.
/// glibc gives each thread that allocates under contention an arena of its own, up to 8 per
/// core, and keeps what each arena ever touched. faultd's changes run on short-lived
/// blocking threads, so under churn new arenas kept being touched: resident memory grew
/// for as long as the soak ran while the live heap stayed under 1 MiB (measured with
/// massif). Two arenas are plenty for a daemon whose changes take turns.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Loading the eBPF object takes about 30 MiB of heap for a moment (the ELF, BTF and
/// relocations); freed, glibc keeps it resident. Hand it back once the programs are in.
fn release_startup_memory() {
    faultd::heap::trim();
}

async fn load_and_attach(
    ifaces: Vec<String>,
    sizes: MapSizes,
    signals: &mut Signals,
) -> anyhow::Result<Option<Datapath>> {
    // Debug: a start-up error stays one line.
    tracing::debug!("loading the programs");
    let phase = Arc::new(std::sync::Mutex::new(Startup::Loading));
    let phase_of_loading = phase.clone();
    let mut loading = tokio::task::spawn_blocking(move || {
        let mut datapath = Datapath::load_sized(&sizes)?;
        {
            let mut phase = phase_of_loading.lock().unwrap_or_else(|p| p.into_inner());
            if *phase == Startup::Stopped {
                return Ok(None);
            }
            *phase = Startup::Attaching;
        }
        for iface in &ifaces {
            // On error, dropping `datapath` detaches what was attached so far.
            datapath.attach(iface)?;
        }
        anyhow::Ok(Some(datapath))
    });
    let signal = tokio::select! {
        loaded = &mut loading => return loaded.context("loading the programs")?,
        signal = signals.recv() => signal,
    };
    let attaching = {
        let mut phase = phase.lock().unwrap_or_else(|p| p.into_inner());
        if *phase == Startup::Loading {
            *phase = Startup::Stopped;
        }
        *phase == Startup::Attaching
    };
    info!(
        signal,
        attaching, "stopping before serving: nothing is left attached once the kernel is done"
    );
    tokio::select! {
        loaded = &mut loading => {
            // Dropping the datapath detaches it.
            drop(loaded);
            info!("stopped before serving");
            Ok(None)
        }
        second = signals.recv(), if !attaching => {
            warn!(signal = second, "second signal while loading: nothing attached, exiting now");
            std::process::exit(0);
        }
    }
}

/// The signals that stop faultd: SIGTERM, SIGINT, and SIGHUP (a closed terminal or
/// session: faultd cleans up rather than being killed with its faults in place) unless
/// SIGHUP was ignored when faultd started (`nohup`).
struct Signals {
    term: Signal,
    int: Signal,
    hup: Option<Signal>,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        let listen = |kind| signal(kind).context("installing a signal handler");
        Ok(Self {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
            hup: if ignored_at_start(libc::SIGHUP) {
                None
            } else {
                Some(listen(SignalKind::hangup())?)
            },
        })
    }

    /// Waits for the next signal; returns its name.
    async fn recv(&mut self) -> &'static str {
        let hup = async {
            match &mut self.hup {
                Some(hup) => hup.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = hup => "SIGHUP",
        }
    }
}

/// Whether `signal` was set to be ignored by whoever started faultd.
fn ignored_at_start(signal: libc::c_int) -> bool {
    // SAFETY: querying (null new action) into a zeroed sigaction.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(signal, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
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
    observe: &Observe<impl tonic_reflection::server::v1::ServerReflection>,
) -> Router<L> {
    let router = server
        .add_service(FaultServiceServer::new(api.clone()))
        .add_optional_service(reconnect.as_ref().map(ReconnectServer::service));
    observe.add_to(router)
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
    match Signals::install() {
        Ok(mut signals) => {
            let signal = signals.recv().await;
            info!(signal, "stopping");
        }
        Err(e) => {
            warn!("{e:#}");
            std::future::pending::<()>().await;
        }
    }
    if let Some(reconnect) = reconnect {
        reconnect.shut_down();
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
    fn limits_have_defaults_and_take_durations() {
        let args = Args::try_parse_from(["faultd", "--iface", "lo"]).unwrap();
        assert_eq!(args.max_faults, DEFAULT_MAX_FAULTS);
        assert_eq!(args.max_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(args.max_connections as usize, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(args.max_streams as usize, DEFAULT_MAX_STREAMS);
        let args = Args::try_parse_from([
            "faultd",
            "--iface",
            "lo",
            "--max-ttl",
            "90s",
            "--max-faults",
            "10",
        ])
        .unwrap();
        assert_eq!(args.max_ttl, Duration::from_secs(90));
        assert_eq!(args.max_faults, 10);
        assert_eq!(args.max_flows, DEFAULT_MAX_FLOWS);
        let args = Args::try_parse_from(["faultd", "--iface", "lo", "--max-flows", "4096"]);
        assert_eq!(args.unwrap().max_flows, 4096);
        for zero in ["--max-connections", "--max-streams"] {
            assert!(Args::try_parse_from(["faultd", "--iface", "lo", zero, "0"]).is_err());
        }
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
    fn flags_override_the_config_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faultd.toml");
        std::fs::write(
            &path,
            "interfaces = [\"lo\"]\nlisten = \"127.0.0.1:7500\"\nmetrics = \"127.0.0.1:9747\"\n\
             retry_port = 8081\n[access]\nno_auth = true\nallow_uid = [1001]\n\
             [[fault]]\naction = \"drop\"\nport = 2379\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let path = path.to_str().unwrap();
            let argv = ["faultd", "--config", path]
                .into_iter()
                .chain(extra.iter().copied());
            let matches = Args::command().try_get_matches_from(argv).unwrap();
            with_config(Args::from_arg_matches(&matches).unwrap(), &matches).unwrap()
        };
        let (file, faults) = parse(&[]);
        assert_eq!(file.ifaces, ["lo"]);
        assert_eq!(file.listen, "127.0.0.1:7500".parse().unwrap());
        assert_eq!(file.metrics, Some("127.0.0.1:9747".parse().unwrap()));
        assert_eq!(file.retry_port, Some(8081));
        assert!(file.access.no_auth);
        assert_eq!(file.access.allow_uids, [1001]);
        assert_eq!(
            file.retry_bind,
            IpAddr::from(Ipv4Addr::LOCALHOST),
            "a default"
        );
        assert_eq!(faults.len(), 1);
        // A flag given on the command line wins, even when it equals the flag's default.
        let (flags, _) = parse(&[
            "--iface",
            "veth0",
            "--listen",
            faultd::DEFAULT_LISTEN,
            "--allow-uid",
            "0",
        ]);
        assert_eq!(flags.ifaces, ["veth0"]);
        assert_eq!(flags.listen, faultd::DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(flags.access.allow_uids, [0]);
        assert_eq!(
            flags.metrics, file.metrics,
            "what the flags leave comes from the file"
        );
    }

    #[test]
    fn config_and_check_config_exclude_each_other() {
        let argv = ["faultd", "--config", "a.toml", "--check-config", "b.toml"];
        assert!(Args::try_parse_from(argv).is_err());
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
