//! `faultctl rm ID`.

use clap::Args;
use tonic::transport::Channel;

use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct RmArgs {
    /// The id `faultctl list` shows.
    pub id: u64,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: RmArgs,
    json: bool,
) -> anyhow::Result<()> {
    let removed = client
        .remove_fault(proto::RemoveFaultRequest { id: args.id })
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({ "removed": removed.removed.as_ref().map(super::output::fault_json) })
        );
    } else {
        println!("removed {}", args.id);
    }
    Ok(())
}
