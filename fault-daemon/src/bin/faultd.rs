//! faultd: loads the fault programs onto interfaces and serves the control API.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

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
    /// Allow the API on a non-loopback address (anyone who reaches it can cut traffic).
    #[arg(long)]
    allow_remote: bool,
    /// Also be a gRPC reconnect interop server: serve grpc.testing.ReconnectService on the
    /// API and close every connection to this port (0.0.0.0:PORT; 0 picks a free one).
    #[arg(long, value_name = "PORT")]
    retry_port: Option<u16>,
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
    if let Err(e) = outcome {
        eprintln!("faultd: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
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
    // Bind first: it is the cheapest step to fail and changes nothing on the interfaces.
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let retry = match args.retry_port {
        Some(port) => Some(bind_retry(port).await?),
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
            FaultTable::new(vec![args.listen.port()]),
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
            let (reconnect, retry_port) = spawn_reconnect(retry)?;
            info!(retry_port, "reconnect interop service ready on the API");
            Some(reconnect)
        }
        None => None,
    };

    info!(listen = %args.listen, "faultd ready");
    tonic::transport::Server::builder()
        .add_service(FaultServiceServer::new(api.clone()))
        .add_optional_service(reconnect.as_ref().map(ReconnectServer::service))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown(reconnect.clone()),
        )
        .await
        .context("serving the API")?;
    info!("shutting down: removing faults and detaching");
    api.clear().ok();
    Ok(())
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
    }
}
