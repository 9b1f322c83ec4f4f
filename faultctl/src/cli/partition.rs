//! `faultctl partition`: cut some nodes off from the others, through every node's faultd.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use faultd_api::partition::{NodeAddr, Partition};

use super::target::parse_duration;
use crate::proto;

#[derive(Args, Debug)]
#[command(
    after_help = "Give every node as NODE_IP=ADDRESS (--addr or a --hosts line), e.g. \
--addr 198.18.0.1=unix:/run/faultd/a.sock: the node's own IP is what the other nodes see. \
Each node then drops the ports' traffic (both directions) whose peer is a node of the other \
side, so connections across the partition vanish (no FIN, no RST) and connections within a \
side are untouched. Heal with `faultctl clear --label partition` on the same nodes, or give \
--for."
)]
pub struct PartitionArgs {
    /// A port whose traffic is cut (repeat for several: --port 2379 --port 2380).
    #[arg(long = "port", required = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// The IP of a node to cut off from the others (repeat for several).
    #[arg(long, required = true, value_name = "NODE_IP")]
    pub isolate: Vec<IpAddr>,
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: proto::Protocol,
    /// Heal by itself after this long (500ms, 30s, 2m).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
    /// The faults' label, for `faultctl clear --label`.
    #[arg(long, default_value = "partition")]
    pub label: String,
}

/// The faults each node adds, in the order of `nodes`; bad input names what is wrong.
pub fn plan(
    args: &PartitionArgs,
    nodes: &[NodeAddr],
) -> anyhow::Result<Vec<Vec<proto::FaultSpec>>> {
    let partition = Partition {
        ports: args.ports.clone(),
        protocol: args.protocol,
        ttl_ms: args.ttl.map(|d| d.as_millis() as u64),
        label: args.label.clone(),
    };
    partition
        .plan(nodes, &args.isolate)
        .map_err(|e| anyhow::anyhow!("partition: {e}"))
}
