//! `faultctl`: a thin client of faultd's gRPC API. One module per subcommand.
//!
//! Exit codes, for scripts ([`exit_code`]): 0 done; 1 bad input (arguments, or what faultctl
//! checks itself); 2 faultd unreachable; 3 refused by faultd (a gRPC error status);
//! 4 `faultctl backoff`'s verdict is FAIL; 5 some of several daemons failed ([`multi`]).

mod backoff;
mod clear;
mod corrupt;
mod delay;
mod doctor;
mod drop;
mod duplicate;
mod ebpf_log;
mod events;
mod health;
mod help;
mod hold;
mod limit;
mod list;
mod loss;
mod multi;
mod nodes;
mod output;
mod partition;
mod rate;
mod record;
mod refuse;
mod reset;
mod rm;
mod run;
mod slice;
mod stall;
mod stats;
mod target;
mod version;

use clap::{Parser, Subcommand};

use faultd_api::client::{ClientTlsArgs, ConnectError};

use crate::proto::{self, fault_service_client::FaultServiceClient};

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
    /// is one, else 127.0.0.1:7447. Repeat it to apply, list or clear on several daemons at
    /// once (results per node).
    #[arg(long, global = true, env = "FAULTD_ADDR", action = clap::ArgAction::Append)]
    pub addr: Vec<String>,
    /// A file of daemon addresses, one per line (`#` starts a comment): like --addr given
    /// once per line, after any --addr.
    #[arg(long, global = true, value_name = "FILE")]
    pub hosts: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Print JSON for scripts instead of text and tables (every command).
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
    /// Flip payload bytes of a share of packets (one each, or each byte with
    /// --byte-percent), keeping checksums valid.
    Corrupt(corrupt::CorruptArgs),
    /// Send a share of packets twice.
    Duplicate(target::PercentArgs),
    /// Rewrite the advertised TCP window to 0: the peer stops sending until removed.
    Stall(stall::StallArgs),
    /// Cut new TCP connections' streams into segments of at most --bytes, optionally spaced
    /// by --delay: the application's reads come in small pieces.
    Slice(slice::SliceArgs),
    /// What this kernel supports, and which actions are available.
    Doctor,
    /// Print the kernel's events: first hits, RSTs sent, SYNs refused or recorded.
    Events(events::EventsArgs),
    /// Judge a client's reconnect backoff from the SYNs recorded on a port.
    Backoff(backoff::BackoffArgs),
    /// Play a timed scenario (TOML): steps that add faults for a while or remove them, then
    /// a heal. Everything it added is removed when it ends, fails or is interrupted.
    Run(run::RunArgs),
    /// Cut two address sets apart (--between A --and B, any port), or some nodes off from
    /// the others (--isolate: every node, --addr NODE_IP=ADDRESS, drops the ports' traffic).
    Partition(partition::PartitionArgs),
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
    /// faultd's gRPC health (grpc.health.v1): prints SERVING and exits 0, else exits 2.
    /// For exec probes (Kubernetes liveness and readiness).
    Health(health::HealthArgs),
    /// This faultctl's version and the daemon's.
    Version,
    /// Print a shell completion script: `faultctl completions bash > /etc/bash_completion.d/faultctl`.
    Completions(help::CompletionsArgs),
    /// Print faultctl's man page (roff): `faultctl man | man -l -`.
    Man,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let nodes = nodes::from_args(&cli.addr, cli.hosts.as_deref())?;
    if let Command::Run(args) = &cli.command {
        // The file is checked before any daemon is asked, and --check asks none.
        let scenario = run::load(args)?;
        if args.check {
            return run::check(&scenario, cli.json);
        }
        if nodes.len() > 1 {
            anyhow::bail!("faultctl run talks to one daemon; give one --addr");
        }
        let addr = nodes.into_iter().next().map(|n| n.addr);
        let channel = faultd_api::client::connect(addr.as_deref(), &cli.tls).await?;
        return run::run(&mut FaultServiceClient::new(channel), scenario, cli.json).await;
    }
    let by_nodes = matches!(&cli.command, Command::Partition(p) if !p.by_address());
    if nodes.len() > 1 || by_nodes {
        return multi::run(nodes, cli).await;
    }
    let addr = nodes.into_iter().next().map(|n| n.addr);
    // What needs no daemon, or copes without one.
    match cli.command {
        Command::Completions(args) => return help::completions(args, cli.json),
        Command::Man => return help::man(cli.json),
        Command::Version => return version::run(addr.as_deref(), &cli.tls, cli.json).await,
        // Bad input is bad input whether or not a daemon answers: check it first.
        Command::Backoff(ref args) => drop(args.policy()?),
        _ => {}
    }
    let channel = faultd_api::client::connect(addr.as_deref(), &cli.tls).await?;
    let mut client = FaultServiceClient::new(channel.clone());
    if let Some((target, action)) = cli.command.fault() {
        return output::added(&mut client, target, action, cli.json).await;
    }
    if let Command::Partition(args) = &cli.command {
        let spec = args.address_spec();
        return output::add_spec(&mut client, spec, args.hold, cli.json).await;
    }
    match cli.command {
        Command::Doctor => doctor::run(&mut client, cli.json).await,
        Command::Events(args) => events::run(&mut client, args, cli.json).await,
        Command::Backoff(args) => backoff::run(&mut client, args, cli.json).await,
        Command::List => list::run(&mut client, cli.json).await,
        Command::Rm(args) => rm::run(&mut client, args, cli.json).await,
        Command::Clear(args) => clear::run(&mut client, args, cli.json).await,
        Command::Stats => stats::run(&mut client, cli.json).await,
        Command::EbpfLog(args) => ebpf_log::run(&mut client, args, cli.json).await,
        Command::Health(args) => health::run(channel, args, cli.json).await,
        _ => unreachable!("faults and the commands that need no daemon are handled above"),
    }
}

impl Command {
    /// For the verbs that add a fault: what traffic, and the action.
    pub fn fault(&self) -> Option<(&target::TargetArgs, proto::action::Kind)> {
        Some(match self {
            Command::Drop(args) => (&args.target, drop::action(args)),
            Command::Reset(args) => (&args.target, reset::action(args)),
            Command::Refuse(args) => (&args.target, refuse::action(args)),
            Command::LimitBytes(args) => (&args.target, limit::action_bytes(args)),
            Command::LimitAge(args) => (&args.target, limit::action_age(args)),
            Command::Record(args) => (&args.target, record::action(args)),
            Command::Loss(args) => (&args.target, loss::action(args)),
            Command::Delay(args) => (&args.target, delay::action(args)),
            Command::Rate(args) => (&args.target, rate::action(args)),
            Command::Corrupt(args) => (&args.target, corrupt::action(args)),
            Command::Duplicate(args) => (&args.target, duplicate::action(args)),
            Command::Stall(args) => (&args.target, stall::action(args)),
            Command::Slice(args) => (&args.target, slice::action(args)),
            _ => return None,
        })
    }
}

/// A gRPC error status, shown in the daemon's own words.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.message())]
pub struct Rpc(pub tonic::Status);

fn rpc_error(status: tonic::Status) -> anyhow::Error {
    Rpc(status).into()
}

/// `faultctl backoff`'s verdict is FAIL (the summary names the offending gaps).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackoffFailed(pub String);

/// What faultctl exits with.
pub mod exit {
    pub const OK: u8 = 0;
    /// Bad arguments, or input faultctl refuses itself.
    pub const BAD_INPUT: u8 = 1;
    /// No faultd answers (or the connection broke).
    pub const UNREACHABLE: u8 = 2;
    /// faultd answered with an error status: invalid argument, permission denied, not found…
    pub const REFUSED: u8 = 3;
    /// `faultctl backoff`: the client's backoff is outside its windows.
    pub const BACKOFF_FAILED: u8 = 4;
    /// Several daemons (--addr more than once, --hosts, partition): some of them failed and others
    /// did not, or they failed in different ways (when all fail alike, that way's code);
    /// every node's result is printed.
    pub const NODES_FAILED: u8 = 5;
}

/// The exit code for an error `run` returned.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<ConnectError>().is_some() {
        return exit::UNREACHABLE;
    }
    if e.downcast_ref::<BackoffFailed>().is_some() {
        return exit::BACKOFF_FAILED;
    }
    if let Some(failed) = e.downcast_ref::<multi::NodesFailed>() {
        return failed.code;
    }
    match e.downcast_ref::<Rpc>() {
        // UNAVAILABLE is the transport's, not faultd's: the connection failed or broke.
        Some(Rpc(status)) if status.code() == tonic::Code::Unavailable => exit::UNREACHABLE,
        Some(_) => exit::REFUSED,
        None => exit::BAD_INPUT,
    }
}
