//! faultd: loads the fault programs onto interfaces and serves the control API.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::{info, warn};

use faultd::api::{DEFAULT_MAX_STREAMS, Engine, FaultApi};
use faultd::connections::{ConnectionLimit, DEFAULT_MAX_CONNECTIONS};
use faultd::datapath::Datapath;
use faultd::events::{EventHub, LossCounter};
use faultd::faults::{DEFAULT_MAX_FAULTS, FaultTable, Limits};
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
    /// Interface to attach to (repeatable), e.g. `lo` or a veth.
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// Address of the gRPC control API.
    #[arg(long, default_value = faultd::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Allow the API on a non-loopback address (anyone who reaches it can cut traffic).
    #[arg(long)]
    allow_remote: bool,
    /// Also be a gRPC reconnect interop server: serve grpc.testing.ReconnectService on the
    /// API and close every connection to this port (0.0.0.0:PORT; 0 picks a free one).
    #[arg(long, value_name = "PORT")]
    retry_port: Option<u16>,
    /// Most faults installed at once (AddFault beyond: RESOURCE_EXHAUSTED).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_FAULTS)]
    max_faults: usize,
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

#[derive(Subcommand, Debug)]
enum Command {
    /// Only the gRPC connection-backoff interop server (no root, no eBPF): a drop-in for
    /// gRPC's reconnect_interop_server.
    Reconnect(ReconnectArgs),
}

#[derive(clap::Args, Debug)]
struct ReconnectArgs {
    /// Port of the control service, grpc.testing.ReconnectService, plaintext on 0.0.0.0
    /// (0 picks a free port; the log line "reconnect server ready" names it).
    #[arg(long = "control-port", alias = "control_port", value_name = "PORT")]
    control_port: u16,
    /// Port on 0.0.0.0 whose connections are accepted and closed at once (0 picks one).
    #[arg(long = "retry-port", alias = "retry_port", value_name = "PORT")]
    retry_port: u16,
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
    // Tasks of connections that outlived the shutdown grace are not waited for.
    runtime.shutdown_background();
    if let Err(e) = outcome {
        eprintln!("faultd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // First of all: from here on SIGTERM, SIGINT and SIGHUP end faultd cleanly.
    let mut signals = Signals::install()?;
    if args.ifaces.is_empty() {
        bail!("--iface is required: name the interface(s) to attach to, e.g. --iface lo");
    }
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        bail!(
            "--listen {} is not a loopback address; anyone who reaches the API can cut traffic. \
             Pass --allow-remote to do it anyway",
            args.listen
        );
    }
    let limits = Limits {
        max_faults: args.max_faults,
        max_ttl: args.max_ttl,
    };
    limits.validate().map_err(anyhow::Error::msg)?;
    // Bind first: it is the cheapest step to fail and changes nothing on the interfaces.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let retry = match args.retry_port {
        Some(port) => Some(bind_retry(port).await?),
        None => None,
    };

    let Some(mut datapath) = load_and_attach(args.ifaces.clone(), &mut signals).await? else {
        return Ok(());
    };
    let attachments = datapath.attachments();
    let events = Arc::new(EventHub::default());
    if let Some(ring) = datapath.take_events() {
        let losses = datapath.take_event_losses().map(LossCounter::new);
        tokio::spawn(events.clone().pump(ring, losses));
    }
    let api = FaultApi::new(
        Engine::new(
            FaultTable::new(vec![args.listen.port()]).with_limits(limits),
            Box::new(datapath),
            attachments,
        ),
        events,
    )
    .with_max_streams(args.max_streams as usize);
    let caps = api.capabilities();
    info!(
        "what this kernel supports:\n{}",
        faultd::capabilities::table(&caps)
    );

    let reconnect = match retry {
        Some(retry) => {
            let (reconnect, retry_port) = spawn_reconnect(retry)?;
            info!(retry_port, "reconnect interop service ready on the API");
            Some(reconnect)
        }
        None => None,
    };

    let connections = ConnectionLimit::new(args.max_connections as usize);
    let (stop_accepting, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        // Peers that vanished without closing are found and their connections closed.
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(FaultServiceServer::new(api.clone()))
        .add_optional_service(reconnect.as_ref().map(ReconnectServer::service))
        .serve_with_incoming_shutdown(
            connections.limit(tokio_stream::wrappers::TcpListenerStream::new(listener)),
            async {
                let _ = stopped.await;
            },
        );
    tokio::pin!(server);
    info!(listen = %args.listen, "faultd ready");
    let signal = tokio::select! {
        served = &mut server => {
            // The server stopped by itself: still leave the interfaces as found.
            api.shut_down().ok();
            return served.context("serving the API");
        }
        signal = signals.recv() => signal,
    };

    stop(
        signal,
        &api,
        reconnect.as_ref(),
        stop_accepting,
        server,
        &connections,
        &mut signals,
    )
    .await
}

/// After `signal`: faults off and programs detached first, whatever the clients do (event
/// streams end there too); then at most [`SHUTDOWN_GRACE`] for the connections to close,
/// cut short by a second signal.
async fn stop(
    signal: &str,
    api: &FaultApi,
    reconnect: Option<&ReconnectServer>,
    stop_accepting: tokio::sync::oneshot::Sender<()>,
    mut server: Pin<&mut impl Future<Output = Result<(), tonic::transport::Error>>>,
    connections: &ConnectionLimit,
    signals: &mut Signals,
) -> anyhow::Result<()> {
    info!(signal, "stopping: removing faults and detaching");
    if let Some(reconnect) = reconnect {
        // Fails the Starts still waiting for their turn.
        reconnect.shut_down();
    }
    let _ = stop_accepting.send(());
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
async fn load_and_attach(
    ifaces: Vec<String>,
    signals: &mut Signals,
) -> anyhow::Result<Option<Datapath>> {
    // Debug: a start-up error stays one line.
    tracing::debug!("loading the programs");
    let phase = Arc::new(std::sync::Mutex::new(Startup::Loading));
    let phase_of_loading = phase.clone();
    let mut loading = tokio::task::spawn_blocking(move || {
        let mut datapath = Datapath::load()?;
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

/// `faultd reconnect`: the interop server alone, on its own control port.
async fn run_reconnect(args: ReconnectArgs) -> anyhow::Result<()> {
    let control_addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.control_port));
    let control = TcpListener::bind(control_addr)
        .await
        .with_context(|| format!("cannot listen on control port {control_addr}"))?;
    let control_port = control.local_addr()?.port();
    let (reconnect, retry_port) = spawn_reconnect(bind_retry(args.retry_port).await?)?;
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

async fn bind_retry(port: u16) -> anyhow::Result<TcpListener> {
    bind_retry_listener(port)
        .await
        .with_context(|| format!("cannot listen on retry port 0.0.0.0:{port}"))
}

/// Closes every connection to `retry` in the background; the returned server judges them.
/// Also returns the retry port, which the caller logs (it was chosen here if 0 was asked).
fn spawn_reconnect(retry: TcpListener) -> anyhow::Result<(ReconnectServer, u16)> {
    let retry_port = retry.local_addr()?.port();
    let reconnect = ReconnectServer::new();
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
    }
}
