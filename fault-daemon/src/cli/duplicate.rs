//! `faultctl duplicate`: packets arrive twice.

use clap::Args;
use tonic::transport::Channel;

use super::target::TargetArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct DuplicateArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Share of matching packets sent twice, in percent (0-100].
    #[arg(long, allow_hyphen_values = true)]
    pub percent: f64,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: DuplicateArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Duplicate(proto::Duplicate {
        percent: args.percent,
    });
    super::output::added(client, args.target.spec(action), json).await
}
