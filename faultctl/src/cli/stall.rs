//! `faultctl stall`: the advertised TCP window drops to 0, so the other side stops sending
//! as if its peer stopped reading. Removing the fault lets the flow resume.

use clap::Args;
use tonic::transport::Channel;

use super::target::TargetArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct StallArgs {
    /// With --direction from-port the server looks stalled (the client's writes block);
    /// with to-port the client does; both (default) stalls both ways.
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: StallArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Stall(proto::Stall {});
    super::output::added(client, &args.target, action, json).await
}
