//! `faultctl limit-bytes` and `faultctl limit-age`: each connection dies after N bytes or
//! once it is T old.

use std::time::Duration;

use clap::Args;

use super::target::{TargetArgs, parse_duration};
use crate::proto;

/// `--then`, or the protocol's default (unspecified) when not given.
fn then(then: Option<proto::Then>) -> i32 {
    then.unwrap_or(proto::Then::Unspecified).into()
}

#[derive(Args, Debug)]
pub struct LimitBytesArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Payload bytes (both directions) a connection may carry; 0 cuts it at its first byte.
    #[arg(long, allow_hyphen_values = true)]
    pub bytes: i64,
    /// How the connection dies [default: reset for tcp, drop for udp].
    #[arg(long, value_enum)]
    pub then: Option<proto::Then>,
}

#[derive(Args, Debug)]
pub struct LimitAgeArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Age (from its first packet seen) at which a connection dies: 500ms, 5s, 2m.
    #[arg(long, value_parser = parse_duration, allow_hyphen_values = true)]
    pub after: Duration,
    /// How the connection dies [default: reset for tcp, drop for udp].
    #[arg(long, value_enum)]
    pub then: Option<proto::Then>,
}

pub fn action_bytes(args: &LimitBytesArgs) -> proto::action::Kind {
    proto::action::Kind::LimitBytes(proto::LimitBytes {
        bytes: args.bytes,
        then: then(args.then),
    })
}

pub fn action_age(args: &LimitAgeArgs) -> proto::action::Kind {
    proto::action::Kind::LimitAge(proto::LimitAge {
        after_ms: args.after.as_millis() as i64,
        then: then(args.then),
    })
}
