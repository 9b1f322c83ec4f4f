//! `faultctl refuse`: new connections to the port fail; established ones are untouched.

use clap::Args;

use super::target::TargetArgs;
use crate::proto;

#[derive(Args, Debug)]
pub struct RefuseArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[arg(long, value_enum, default_value = "rst")]
    pub mode: proto::RefuseMode,
    /// Every refused SYN is recorded anyway (see `faultctl events` and `faultctl backoff`);
    /// accepted for symmetry with `faultctl record`.
    #[arg(long)]
    pub record: bool,
}

pub fn action(args: &RefuseArgs) -> proto::action::Kind {
    proto::action::Kind::Refuse(proto::Refuse {
        mode: args.mode.into(),
    })
}
