//! `faultctl backoff`: judge a client's reconnect backoff from the connection attempts the
//! kernel recorded (`faultctl record` or `faultctl refuse`) on a port.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use faultd_api::backoff::{self, Policy, Report};
use serde::Serialize;
use tonic::transport::Channel;

use super::output::{self, Render};
use super::target::parse_duration;
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum PolicyArg {
    /// gRPC's: 1 s, ×1.6, ±20 %, each gap within [0.8·e − 100 ms, 1.2·e + 100 ms], capped at --max.
    Grpc,
}

#[derive(Args, Debug)]
pub struct BackoffArgs {
    /// The port the client connects to.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: u16,
    /// A named policy [default: grpc unless --initial, --multiplier or --jitter is given].
    #[arg(long, value_enum, conflicts_with_all = ["initial", "multiplier", "jitter"])]
    pub policy: Option<PolicyArg>,
    /// First expected gap of a custom policy [default: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub initial: Option<Duration>,
    /// Growth of each expected gap in a custom policy [default: 1.6].
    #[arg(long, allow_hyphen_values = true)]
    pub multiplier: Option<f64>,
    /// Cap of the expected gap [default: 120s].
    #[arg(long, value_parser = parse_duration, default_value = "120s")]
    pub max: Duration,
    /// Allowed deviation of each gap, as a fraction of the expected gap [default: 0.2].
    #[arg(long, allow_hyphen_values = true)]
    pub jitter: Option<f64>,
}

impl BackoffArgs {
    pub fn policy(&self) -> anyhow::Result<Policy> {
        if self.initial.is_none() && self.multiplier.is_none() && self.jitter.is_none() {
            return Ok(Policy::grpc(self.max));
        }
        Policy::new(
            self.initial.unwrap_or(Duration::from_secs(1)),
            self.multiplier.unwrap_or(1.6),
            self.max,
            self.jitter.unwrap_or(0.2),
        )
        .context("--multiplier/--jitter")
    }
}

/// Fails with [`super::BackoffFailed`] (its own exit code) when the backoff fails, so
/// scripts can use the verdict.
pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: BackoffArgs,
    json: bool,
) -> anyhow::Result<()> {
    let policy = args.policy()?;
    let attempts = attempts(client, args.port).await?;
    let verdict = Verdict {
        report: backoff::check(&attempts, &policy),
        attempts: attempts.len(),
        port: args.port,
    };
    output::print(&verdict, json)?;
    if !verdict.report.passed() {
        return Err(super::BackoffFailed(verdict.report.summary()).into());
    }
    Ok(())
}

/// The checker's report: as JSON exactly the report; as text, how many attempts the kernel
/// recorded, then the report's table and verdict.
#[derive(Serialize)]
#[serde(transparent)]
struct Verdict {
    report: Report,
    #[serde(skip)]
    attempts: usize,
    #[serde(skip)]
    port: u16,
}

impl Render for Verdict {
    fn text(&self) -> String {
        format!(
            "{} connection attempt(s) to port {} recorded by the kernel\n{}",
            self.attempts, self.port, self.report
        )
    }
}

/// Kernel timestamps of the connection attempts (SYNs) to `port`, from faultd's history of
/// attempts to that port. A SYN retransmitted by the same socket (same source address and
/// port) is one attempt, counted at its first SYN. Fails when the history says attempts
/// may be missing: a judgment on part of the attempts would be wrong.
async fn attempts(
    client: &mut FaultServiceClient<Channel>,
    port: u16,
) -> anyhow::Result<Vec<Duration>> {
    let mut stream = client
        .watch_events(proto::WatchEventsRequest {
            follow: false,
            fault_id: 0,
            syn_port: port.into(),
        })
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    let mut seen = HashSet::new();
    let mut times = Vec::new();
    while let Some(e) = stream.message().await.map_err(super::rpc_error)? {
        if super::events::is_gap(&e) {
            anyhow::bail!(
                "the history of attempts to port {port} is incomplete ({} lost: {}); \
                 nothing judged. Remove the port's refuse/record faults, add them again \
                 and let the client retry",
                e.lost,
                e.note
            );
        }
        let syn = matches!(
            proto::EventKind::try_from(e.kind),
            Ok(proto::EventKind::Syn | proto::EventKind::SynRefused)
        );
        if syn && e.dst_port == u32::from(port) && seen.insert((e.src.clone(), e.src_port)) {
            times.push(Duration::from_nanos(e.kernel_ns));
        }
    }
    Ok(times)
}
