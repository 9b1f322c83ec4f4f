//! `faultctl drop`: the silent blackhole.

use tonic::transport::Channel;

use super::target::ProbabilityArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: ProbabilityArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Drop(proto::Drop {
        probability: args.probability,
    });
    super::output::added(client, &args.target, action, json).await
}
