//! `faultctl reset`: each packet of a matching TCP flow is answered with a RST.

use clap::Args;
use tonic::transport::Channel;

use super::target::{TargetArgs, parse_probability};
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct ResetArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Answer only this share of matching packets, in (0, 1].
    #[arg(long, value_parser = parse_probability, allow_hyphen_values = true)]
    pub probability: Option<f64>,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: ResetArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Reset(proto::Reset {
        probability: args.probability,
    });
    super::output::added(client, args.target.spec(action), json).await
}
