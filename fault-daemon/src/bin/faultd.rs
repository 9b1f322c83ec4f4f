//! faultd: loads the fault programs onto interfaces and serves the control API.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use faultd::api::{Engine, FaultApi};
use faultd::datapath::Datapath;
use faultd::faults::FaultTable;
use faultd::proto::fault_service_server::FaultServiceServer;

#[derive(Parser, Debug)]
#[command(
    name = "faultd",
    version,
    about = "Kernel-level network fault injector (run as root)"
)]
struct Args {
    /// Interface to attach to (repeatable), e.g. `lo` or a veth.
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// Address of the gRPC control API.
    #[arg(long, default_value = faultd::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Allow the API on a non-loopback address (anyone who reaches it can cut traffic).
    #[arg(long)]
    allow_remote: bool,
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
    if let Err(e) = runtime.block_on(run(args)) {
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

    let mut datapath = Datapath::load()?;
    for iface in &args.ifaces {
        // On error, dropping `datapath` detaches what was attached so far.
        datapath.attach(iface)?;
    }
    let attachments = datapath.attachments();
    let api = FaultApi::new(Engine {
        table: FaultTable::new(vec![args.listen.port()]),
        sink: Box::new(datapath),
        attachments,
    });

    info!(listen = %args.listen, "faultd ready");
    tonic::transport::Server::builder()
        .add_service(FaultServiceServer::new(api.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown_signal(),
        )
        .await
        .context("serving the API")?;
    info!("shutting down: removing faults and detaching");
    api.clear().ok();
    Ok(())
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}
