//! `faultctl slice`: the receiving application gets the stream in segments of at most N
//! bytes, optionally spaced apart.

use std::time::Duration;

use clap::Args;

use super::target::{TargetArgs, parse_duration};
use crate::proto;

#[derive(Args, Debug)]
pub struct SliceArgs {
    /// The port's new TCP connections (opened after the fault is added: the segment size
    /// is agreed in the handshake), both ways. TCP only.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Largest segment, in payload bytes [48-65535]: the MSS of SYN and SYN-ACK is lowered
    /// to it and every advertised window is held to it (one segment in flight at a time).
    /// 48 is the smallest segment Linux sends.
    #[arg(long)]
    pub bytes: i64,
    /// Space data segments this far apart on the way out (EDT; needs the fq qdisc, as
    /// delay does). Without it, segments go as fast as their acknowledgments come.
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
}

pub fn action(args: &SliceArgs) -> proto::action::Kind {
    proto::action::Kind::Slice(proto::Slice {
        bytes: args.bytes,
        delay_us: args.delay.map_or(0, |d| d.as_micros() as i64),
    })
}
