//! `faultctl loss`: a random share of packets vanish.

use tonic::transport::Channel;

use super::target::PercentArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: PercentArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Loss(proto::Loss {
        percent: args.percent,
    });
    super::output::added(client, &args.target, action, json).await
}
