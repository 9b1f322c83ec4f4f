//! `faultctl stats`.

use tonic::transport::Channel;

use super::output;
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(client: &mut FaultServiceClient<Channel>, json: bool) -> anyhow::Result<()> {
    let stats = client
        .get_stats(proto::GetStatsRequest {})
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    if json {
        let faults: Vec<_> = stats
            .faults
            .iter()
            .map(|s| {
                let mut v = s.fault.as_ref().map(output::fault_json).unwrap_or_default();
                let c = s.counters.unwrap_or_default();
                v["counters"] = serde_json::json!({
                    "matched_packets": c.matched_packets,
                    "matched_bytes": c.matched_bytes,
                    "acted_packets": c.acted_packets,
                    "acted_bytes": c.acted_bytes,
                });
                v
            })
            .collect();
        let attachments: Vec<_> = stats
            .attachments
            .iter()
            .map(|a| serde_json::json!({ "interface": a.interface, "xdp_mode": a.xdp_mode, "tc_mode": a.tc_mode }))
            .collect();
        println!(
            "{}",
            serde_json::json!({ "faults": faults, "attachments": attachments })
        );
        return Ok(());
    }
    for a in &stats.attachments {
        println!("{}: xdp {}, tc {}", a.interface, a.xdp_mode, a.tc_mode);
    }
    let mut table = output::table(&[
        "ID",
        "ACTION",
        "PORT",
        "PROTO",
        "MATCHED PKTS",
        "MATCHED BYTES",
        "ACTED PKTS",
        "ACTED BYTES",
        "LABEL",
    ]);
    for s in &stats.faults {
        let v = s.fault.as_ref().map(output::fault_json).unwrap_or_default();
        let c = s.counters.unwrap_or_default();
        table.add_row(vec![
            v["id"].to_string(),
            output::text(&v["action"]),
            v["port"].to_string(),
            output::text(&v["protocol"]),
            c.matched_packets.to_string(),
            c.matched_bytes.to_string(),
            c.acted_packets.to_string(),
            c.acted_bytes.to_string(),
            output::text(&v["label"]),
        ]);
    }
    println!("{table}");
    Ok(())
}
