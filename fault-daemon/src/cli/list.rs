//! `faultctl list`.

use tonic::transport::Channel;

use super::output;
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(client: &mut FaultServiceClient<Channel>, json: bool) -> anyhow::Result<()> {
    let faults = client
        .list_faults(proto::ListFaultsRequest {})
        .await
        .map_err(super::rpc_error)?
        .into_inner()
        .faults;
    if json {
        let list: Vec<_> = faults.iter().map(output::fault_json).collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    let mut table = output::table(&[
        "ID",
        "ACTION",
        "PORT",
        "PROTO",
        "DIRECTION",
        "PEER",
        "PARAMS",
        "EXPIRES IN",
        "LABEL",
        "OWNER",
        "SESSION",
    ]);
    for f in &faults {
        let v = output::fault_json(f);
        table.add_row(vec![
            v["id"].to_string(),
            output::text(&v["action"]),
            v["port"].to_string(),
            output::text(&v["protocol"]),
            output::text(&v["direction"]),
            output::text(&v["peer"]),
            output::text(&v["params"]),
            output::expires_in(f.expires_unix_ms),
            output::text(&v["label"]),
            output::owner(f.owner.as_ref()),
            output::session(f.session_id),
        ]);
    }
    println!("{table}");
    Ok(())
}
