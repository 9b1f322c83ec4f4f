//! `faultctl events [--follow]`: what the kernel saw, with kernel timestamps.

use clap::Args;
use tonic::transport::Channel;

use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    pub follow: bool,
    /// Only events of this fault.
    #[arg(long)]
    pub fault: Option<u64>,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: EventsArgs,
    json: bool,
) -> anyhow::Result<()> {
    let mut stream = client
        .watch_events(proto::WatchEventsRequest {
            follow: args.follow,
            fault_id: args.fault.unwrap_or(0),
        })
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    while let Some(event) = stream.message().await.map_err(super::rpc_error)? {
        if json {
            println!("{}", event_json(&event));
        } else {
            println!("{}", event_line(&event));
        }
    }
    Ok(())
}

pub fn kind_name(kind: i32) -> &'static str {
    match proto::EventKind::try_from(kind) {
        Ok(proto::EventKind::FirstHit) => "first-hit",
        Ok(proto::EventKind::RstSent) => "rst-sent",
        Ok(proto::EventKind::SynRefused) => "syn-refused",
        Ok(proto::EventKind::Syn) => "syn",
        Ok(proto::EventKind::FlowCut) => "flow-cut",
        _ => "unknown",
    }
}

fn endpoint(addr: &str, port: u32) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

fn event_line(e: &proto::Event) -> String {
    let secs = e.unix_ns.div_euclid(1_000_000_000);
    let time = humantime::format_rfc3339_micros(
        std::time::UNIX_EPOCH
            + std::time::Duration::new(secs as u64, e.unix_ns.rem_euclid(1_000_000_000) as u32),
    );
    format!(
        "{time} kernel_ns={} fault={} {} {} -> {}",
        e.kernel_ns,
        e.fault_id,
        kind_name(e.kind),
        endpoint(&e.src, e.src_port),
        endpoint(&e.dst, e.dst_port)
    )
}

pub fn event_json(e: &proto::Event) -> serde_json::Value {
    serde_json::json!({
        "kind": kind_name(e.kind),
        "fault_id": e.fault_id,
        "kernel_ns": e.kernel_ns,
        "unix_ns": e.unix_ns,
        "protocol": if e.protocol == proto::Protocol::Udp as i32 { "udp" } else { "tcp" },
        "src": e.src,
        "src_port": e.src_port,
        "dst": e.dst,
        "dst_port": e.dst_port,
    })
}
