//! `faultctl doctor`: what this kernel supports, and so which actions are available.

use tonic::transport::Channel;

use crate::proto::{self, fault_service_client::FaultServiceClient};
use faultd_api::capabilities;

pub async fn run(client: &mut FaultServiceClient<Channel>, json: bool) -> anyhow::Result<()> {
    let caps = client
        .get_capabilities(proto::GetCapabilitiesRequest {})
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    if json {
        let entry = |name: &str, available: bool, detail: &str| serde_json::json!({"name": name, "available": available, "detail": detail});
        let out = serde_json::json!({
            "features": caps.features.iter()
                .map(|f| entry(&f.name, f.available, &f.detail)).collect::<Vec<_>>(),
            "interfaces": caps.attachments.iter()
                .map(|a| serde_json::json!({
                    "interface": a.interface, "xdp_mode": a.xdp_mode, "tc_mode": a.tc_mode,
                }))
                .collect::<Vec<_>>(),
            "actions": caps.actions.iter()
                .map(|a| entry(&a.action, a.available, &a.detail)).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        print!("{}", capabilities::table(&caps));
    }
    Ok(())
}
