//! `faultctl reset`: each packet of a matching TCP flow is answered with a RST.

use tonic::transport::Channel;

use super::target::ProbabilityArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: ProbabilityArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Reset(proto::Reset {
        probability: args.probability,
    });
    super::output::added(client, &args.target, action, json).await
}
