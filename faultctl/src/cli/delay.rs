//! `faultctl delay`: packets leave later (Earliest Departure Time through the fq qdisc).

use std::time::Duration;

use clap::Args;

use super::target::{TargetArgs, parse_duration};
use crate::proto;

#[derive(Args, Debug)]
#[command(
    after_help = "The delay is applied at TC egress. On lo that delays both directions \
(every packet leaves through lo); on other interfaces only packets leaving through them. \
latency + jitter may be at most 10s, fq's horizon. Needs the fq qdisc (sch_fq): faultd \
installs it while a delay is active; where the kernel has none the fault is refused."
)]
pub struct DelayArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Added latency (200ms, 1.5ms, 2s).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub latency: Duration,
    /// Each packet's latency varies uniformly within ± this (at most the latency).
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub jitter: Option<Duration>,
}

pub fn action(args: &DelayArgs) -> proto::action::Kind {
    proto::action::Kind::Delay(proto::Delay {
        latency_us: args.latency.as_micros() as i64,
        jitter_us: args.jitter.map_or(0, |j| j.as_micros() as i64),
    })
}
