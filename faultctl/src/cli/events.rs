//! `faultctl events [--follow]`: what the kernel saw, with kernel timestamps, and where
//! events were lost (gaps).

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
            syn_port: 0,
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

/// An event as faultctl prints it; a gap says how many events are missing and why.
#[derive(Debug, Serialize)]
pub struct EventRow {
    pub seq: u64,
    pub kind: &'static str,
    pub fault_id: u64,
    pub kernel_ns: u64,
    pub unix_ns: i64,
    pub protocol: &'static str,
    pub src: String,
    pub src_port: u32,
    pub dst: String,
    pub dst_port: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Whether `e` announces lost events rather than being one.
pub fn is_gap(e: &proto::Event) -> bool {
    e.kind == proto::EventKind::Gap as i32
}

impl From<&proto::Event> for EventRow {
    fn from(e: &proto::Event) -> Self {
        let gap = is_gap(e);
        EventRow {
            seq: e.seq,
            kind: proto::EventKind::name_of(e.kind),
            fault_id: e.fault_id,
            kernel_ns: e.kernel_ns,
            unix_ns: e.unix_ns,
            protocol: proto::Protocol::name_of(e.protocol),
            src: e.src.clone(),
            src_port: e.src_port,
            dst: e.dst.clone(),
            dst_port: e.dst_port,
            lost: gap.then_some(e.lost),
            note: gap.then(|| e.note.clone()),
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
        if let (Some(lost), Some(note)) = (self.lost, &self.note) {
            return format!("seq={} gap: {lost} event(s) lost: {note}", self.seq);
        }
        let secs = self.unix_ns.div_euclid(1_000_000_000);
        let time = humantime::format_rfc3339_micros(
            std::time::UNIX_EPOCH
                + std::time::Duration::new(
                    secs as u64,
                    self.unix_ns.rem_euclid(1_000_000_000) as u32,
                ),
        );
        format!(
            "{time} seq={} kernel_ns={} fault={} {} {} -> {}",
            self.seq,
            self.kernel_ns,
            self.fault_id,
            self.kind,
            endpoint(&self.src, self.src_port),
            endpoint(&self.dst, self.dst_port)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_printed_with_the_number_lost() {
        let gap = proto::Event {
            kind: proto::EventKind::Gap as i32,
            seq: 12,
            lost: 3000,
            note: "the kernel's event ring was full".into(),
            ..Default::default()
        };
        let row = EventRow::from(&gap);
        assert_eq!(
            row.text(),
            "seq=12 gap: 3000 event(s) lost: the kernel's event ring was full"
        );
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["kind"], "gap");
        assert_eq!(json["lost"], 3000);
        let syn = proto::Event {
            kind: proto::EventKind::Syn as i32,
            seq: 13,
            src: "127.0.0.1".into(),
            src_port: 40000,
            dst: "127.0.0.1".into(),
            dst_port: 80,
            ..Default::default()
        };
        let row = EventRow::from(&syn);
        assert!(row.text().contains(" seq=13 "), "{}", row.text());
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["seq"], 13);
        assert!(json.get("lost").is_none(), "{json}");
    }
}
