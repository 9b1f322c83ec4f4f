//! `faultctl corrupt`: payload bytes change, checksums stay valid, the application reads
//! the damage.

use clap::Args;
use tonic::transport::Channel;

use super::target::TargetArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct CorruptArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Share of matching packets (with payload) that get one byte flipped, in percent (0-100].
    #[arg(long, allow_hyphen_values = true)]
    pub percent: f64,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: CorruptArgs,
    json: bool,
) -> anyhow::Result<()> {
    let action = proto::action::Kind::Corrupt(proto::Corrupt {
        percent: args.percent,
    });
    super::output::added(client, args.target.spec(action), json).await
}
