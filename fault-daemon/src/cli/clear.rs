//! `faultctl clear`.

use tonic::transport::Channel;

use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(client: &mut FaultServiceClient<Channel>, json: bool) -> anyhow::Result<()> {
    let removed = client
        .clear_faults(proto::ClearFaultsRequest {})
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
