//! `faultctl events [--follow]`: what the kernel saw, with kernel timestamps.

use clap::Args;
use faultd_api::names::Named as _;
use serde::Serialize;
use tonic::transport::Channel;

use super::output::{self, Render};
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
    // One line per event (one JSON object per line with --json), as each arrives.
    while let Some(event) = stream.message().await.map_err(super::rpc_error)? {
        output::print(&EventRow::from(&event), json)?;
    }
    Ok(())
}

/// An event as faultctl prints it.
#[derive(Debug, Serialize)]
pub struct EventRow {
    pub kind: &'static str,
    pub fault_id: u64,
    pub kernel_ns: u64,
    pub unix_ns: i64,
    pub protocol: &'static str,
    pub src: String,
    pub src_port: u32,
    pub dst: String,
    pub dst_port: u32,
}

impl From<&proto::Event> for EventRow {
    fn from(e: &proto::Event) -> Self {
        EventRow {
            kind: proto::EventKind::name_of(e.kind),
            fault_id: e.fault_id,
            kernel_ns: e.kernel_ns,
            unix_ns: e.unix_ns,
            protocol: proto::Protocol::name_of(e.protocol),
            src: e.src.clone(),
            src_port: e.src_port,
            dst: e.dst.clone(),
            dst_port: e.dst_port,
        }
    }
}

fn endpoint(addr: &str, port: u32) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

impl Render for EventRow {
    fn text(&self) -> String {
        let secs = self.unix_ns.div_euclid(1_000_000_000);
        let time = humantime::format_rfc3339_micros(
            std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    secs as u64,
                    self.unix_ns.rem_euclid(1_000_000_000) as u32,
                ),
        );
        format!(
            "{time} kernel_ns={} fault={} {} {} -> {}",
            self.kernel_ns,
            self.fault_id,
            self.kind,
            endpoint(&self.src, self.src_port),
            endpoint(&self.dst, self.dst_port)
        )
    }
}
