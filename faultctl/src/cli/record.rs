//! `faultctl record`: record every connection attempt (SYN) to the port, touching nothing.

use clap::Args;
use tonic::transport::Channel;

use super::target::TargetArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct RecordArgs {
    #[command(flatten)]
    pub target: TargetArgs,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: RecordArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Record(proto::Record {});
    super::output::added(client, &args.target, action, json).await
}
