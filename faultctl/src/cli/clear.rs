//! `faultctl clear`.

use clap::Args;
use tonic::transport::Channel;

use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct ClearArgs {
    /// Only the faults this user added (as faultd identifies the caller); others' stay.
    #[arg(long)]
    pub mine: bool,
    /// Only the faults with exactly this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only the faults this uid added.
    #[arg(long, value_name = "UID")]
    pub owner_uid: Option<u32>,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: ClearArgs,
    json: bool,
) -> anyhow::Result<()> {
    let removed = client
        .clear_faults(proto::ClearFaultsRequest {
            label: args.label,
            owner_uid: args.owner_uid,
            mine: args.mine,
        })
        .await
        .map_err(super::rpc_error)?
        .into_inner()
        .removed;
    if json {
        println!("{}", serde_json::json!({ "removed": removed }));
    } else {
        println!("removed {removed} fault(s)");
    }
    Ok(())
}
