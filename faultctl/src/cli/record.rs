//! `faultctl record`: record every connection attempt (SYN) to the port, touching nothing.

use clap::Args;

use super::target::TargetArgs;
use crate::proto;

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

pub fn action(_: &RecordArgs) -> proto::action::Kind {
    proto::action::Kind::Record(proto::Record {})
}
