//! `faultctl`: a thin client of faultd's gRPC API. One module per subcommand.

mod backoff;
mod clear;
mod corrupt;
mod delay;
mod doctor;
mod drop;
mod duplicate;
mod ebpf_log;
mod events;
mod limit;
mod list;
mod loss;
mod output;
mod rate;
mod record;
mod refuse;
mod reset;
mod rm;
mod stall;
mod stats;
mod target;

use clap::{Parser, Subcommand};

use crate::access::client::ClientTlsArgs;
use crate::proto::fault_service_client::FaultServiceClient;

#[derive(Parser, Debug)]
#[command(
    name = "faultctl",
    version,
    about = "Drive faultd: make chosen traffic misbehave in the kernel",
    after_help = "Start a daemon with `cargo xtask run -- --iface lo` (or `faultd --iface lo` as root)."
)]
pub struct Cli {
    /// faultd's API address: `unix:/path/to.sock` or `host:port`. Default: the socket of
    /// this network namespace's faultd (/run/faultd/faultd-<netns inode>.sock) when there
    /// is one, else 127.0.0.1:7447.
    #[arg(long, global = true, env = "FAULTD_ADDR")]
    pub addr: Option<String>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Blackhole matching packets: they vanish with no FIN, RST or ICMP.
    Drop(target::ProbabilityArgs),
    /// Answer each packet of a matching TCP flow with a RST: both ends see ECONNRESET.
    Reset(target::ProbabilityArgs),
    /// Refuse new connections (SYNs); established ones keep working.
    Refuse(refuse::RefuseArgs),
    /// Kill each connection after N payload bytes.
    LimitBytes(limit::LimitBytesArgs),
    /// Kill each connection once it is older than T.
    LimitAge(limit::LimitAgeArgs),
    /// Record every connection attempt (SYN) to the port, with kernel timestamps.
    Record(record::RecordArgs),
    /// Drop a random share of packets.
    Loss(target::PercentArgs),
    /// Delay packets (egress; on lo both directions). Needs the fq qdisc.
    Delay(delay::DelayArgs),
    /// Limit bandwidth (paced with fq, policed without).
    Rate(rate::RateArgs),
    /// Flip payload bytes of a share of packets, keeping checksums valid.
    Corrupt(target::PercentArgs),
    /// Send a share of packets twice.
    Duplicate(target::PercentArgs),
    /// Rewrite the advertised TCP window to 0: the peer stops sending until removed.
    Stall(stall::StallArgs),
    /// What this kernel supports, and which actions are available.
    Doctor,
    /// Print the kernel's events: first hits, RSTs sent, SYNs refused or recorded.
    Events(events::EventsArgs),
    /// Judge a client's reconnect backoff from the SYNs recorded on a port.
    Backoff(backoff::BackoffArgs),
    /// List the active faults.
    List,
    /// Remove a fault by id.
    Rm(rm::RmArgs),
    /// Remove every fault, or those selected (--mine, --label, --owner-uid).
    Clear(clear::ClearArgs),
    /// Per-fault packet and byte counters.
    Stats,
    /// Set how much faultd's eBPF programs log (into faultd's log): off … debug.
    EbpfLog(ebpf_log::EbpfLogArgs),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let channel = crate::access::client::connect(cli.addr.as_deref(), &cli.tls).await?;
    let mut client = FaultServiceClient::new(channel);
    match cli.command {
        Command::Drop(args) => drop::run(&mut client, args, cli.json).await,
        Command::Reset(args) => reset::run(&mut client, args, cli.json).await,
        Command::Refuse(args) => refuse::run(&mut client, args, cli.json).await,
        Command::LimitBytes(args) => limit::run_bytes(&mut client, args, cli.json).await,
        Command::LimitAge(args) => limit::run_age(&mut client, args, cli.json).await,
        Command::Record(args) => record::run(&mut client, args, cli.json).await,
        Command::Loss(args) => loss::run(&mut client, args, cli.json).await,
        Command::Delay(args) => delay::run(&mut client, args, cli.json).await,
        Command::Rate(args) => rate::run(&mut client, args, cli.json).await,
        Command::Corrupt(args) => corrupt::run(&mut client, args, cli.json).await,
        Command::Duplicate(args) => duplicate::run(&mut client, args, cli.json).await,
        Command::Stall(args) => stall::run(&mut client, args, cli.json).await,
        Command::Doctor => doctor::run(&mut client, cli.json).await,
        Command::Events(args) => events::run(&mut client, args, cli.json).await,
        Command::Backoff(args) => backoff::run(&mut client, args, cli.json).await,
        Command::List => list::run(&mut client, cli.json).await,
        Command::Rm(args) => rm::run(&mut client, args, cli.json).await,
        Command::Clear(args) => clear::run(&mut client, args, cli.json).await,
        Command::Stats => stats::run(&mut client, cli.json).await,
        Command::EbpfLog(args) => ebpf_log::run(&mut client, args, cli.json).await,
    }
}

/// Turns a gRPC error into the daemon's own words.
fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}
