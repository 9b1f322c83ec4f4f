//! `faultctl stall`: the advertised TCP window drops to 0, so the other side stops sending
//! as if its peer stopped reading. Removing the fault lets the flow resume.

use clap::Args;

use super::target::TargetArgs;
use crate::proto;

#[derive(Args, Debug)]
pub struct StallArgs {
    /// With --direction from-port the server looks stalled (the client's writes block);
    /// with to-port the client does; both (default) stalls both ways.
    #[command(flatten)]
    pub target: TargetArgs,
}

pub fn action(_: &StallArgs) -> proto::action::Kind {
    proto::action::Kind::Stall(proto::Stall {})
}
