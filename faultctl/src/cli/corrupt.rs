//! `faultctl corrupt`: payload bytes change, checksums stay valid, the application reads
//! the damage.

use clap::Args;

use super::target::TargetArgs;
use crate::proto;

#[derive(Args, Debug)]
pub struct CorruptArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Share of matching packets corrupted, in percent (0-100]. Defaults to 100 with
    /// --byte-percent, and is required without it.
    #[arg(
        long,
        allow_hyphen_values = true,
        required_unless_present = "byte_percent"
    )]
    pub percent: Option<f64>,
    /// Change each payload byte of a corrupted packet with this probability, in percent
    /// [0.0001-100] (all its bits flipped), instead of one byte per packet: about
    /// percent x byte-percent / 10^4 of the payload bytes change. At most 8192 bytes change
    /// in one packet.
    #[arg(long, allow_hyphen_values = true)]
    pub byte_percent: Option<f64>,
}

pub fn action(args: &CorruptArgs) -> proto::action::Kind {
    proto::action::Kind::Corrupt(proto::Corrupt {
        percent: args.percent.unwrap_or(100.0),
        byte_percent: args.byte_percent,
    })
}
