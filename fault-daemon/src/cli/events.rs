//! `faultctl events [--follow]`: what the kernel saw, with kernel timestamps, and where
//! events were lost (gaps).

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
            syn_port: 0,
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
        Ok(proto::EventKind::Gap) => "gap",
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

pub fn is_gap(e: &proto::Event) -> bool {
    e.kind == proto::EventKind::Gap as i32
}

fn event_line(e: &proto::Event) -> String {
    if is_gap(e) {
        return format!("seq={} gap: {} event(s) lost: {}", e.seq, e.lost, e.note);
    }
    let secs = e.unix_ns.div_euclid(1_000_000_000);
    let time = humantime::format_rfc3339_micros(
        std::time::UNIX_EPOCH
            + std::time::Duration::new(secs as u64, e.unix_ns.rem_euclid(1_000_000_000) as u32),
    );
    format!(
        "{time} seq={} kernel_ns={} fault={} {} {} -> {}",
        e.seq,
        e.kernel_ns,
        e.fault_id,
        kind_name(e.kind),
        endpoint(&e.src, e.src_port),
        endpoint(&e.dst, e.dst_port)
    )
}

pub fn event_json(e: &proto::Event) -> serde_json::Value {
    if is_gap(e) {
        return serde_json::json!({
            "kind": "gap",
            "seq": e.seq,
            "lost": e.lost,
            "note": e.note,
        });
    }
    serde_json::json!({
        "seq": e.seq,
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
        assert_eq!(
            event_line(&gap),
            "seq=12 gap: 3000 event(s) lost: the kernel's event ring was full"
        );
        let json = event_json(&gap);
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
        assert!(
            event_line(&syn).contains(" seq=13 "),
            "{}",
            event_line(&syn)
        );
        assert_eq!(event_json(&syn)["seq"], 13);
    }
}
