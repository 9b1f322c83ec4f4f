//! `faultctl partition`: cut some nodes off from the others, through every node's faultd.

use std::net::IpAddr;
use std::time::Duration;

use clap::Args;
use faultd_api::partition::{NodeAddr, Partition};

use super::target::parse_duration;
use crate::proto;

#[derive(Args, Debug)]
#[command(after_help = "Two forms.\n\
\n\
Address sets, on one daemon (one host, or a host whose veths carry the traffic): \
--between 127.0.0.2,127.0.0.3 --and 127.0.0.4 cuts every TCP and UDP packet between an \
address of one set and an address of the other, any port, both ways (--one-way: only from \
--between to --and). Addresses or CIDRs, IPv4 or IPv6, comma-separated or repeated. \
--mode drop (default) makes packets vanish; --mode reset answers TCP with a RST (other \
packets vanish). ICMP and other protocols pass. A partition acts before any port's faults. \
At most 32 partitions at once, naming at most 1024 distinct prefixes per address family. \
It is one fault: list, rm, clear, --for, --label and --hold work as for any other.\n\
\n\
Nodes, through every node's faultd: give every node as NODE_IP=ADDRESS (--addr or a --hosts \
line), e.g. --addr 198.18.0.1=unix:/run/faultd/a.sock, and --isolate NODE_IP with --port: \
the node's own IP is what the other nodes see. \
Each node then drops the ports' traffic (both directions) whose peer is a node of the other \
side, so connections across the partition vanish (no FIN, no RST) and connections within a \
side are untouched. Heal with `faultctl clear --label partition` on the same nodes, or give \
--for.")]
pub struct PartitionArgs {
    /// A port whose traffic is cut (repeat for several: --port 2379 --port 2380); with
    /// --isolate.
    #[arg(long = "port", required_unless_present = "between", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// The IP of a node to cut off from the others (repeat for several).
    #[arg(
        long,
        required_unless_present = "between",
        conflicts_with = "between",
        value_name = "NODE_IP"
    )]
    pub isolate: Vec<IpAddr>,
    /// One side of an address partition: addresses or CIDRs (comma-separated or repeated).
    #[arg(
        long,
        value_delimiter = ',',
        requires = "and",
        conflicts_with = "ports",
        value_name = "ADDR[/PREFIX]"
    )]
    pub between: Vec<String>,
    /// The other side of an address partition.
    #[arg(
        long = "and",
        value_delimiter = ',',
        requires = "between",
        value_name = "ADDR[/PREFIX]"
    )]
    pub and: Vec<String>,
    /// Cut only what goes from --between to --and (an asymmetric partition).
    #[arg(long, requires = "between")]
    pub one_way: bool,
    /// How an address partition cuts: drop (packets vanish) or reset (TCP gets a RST).
    #[arg(long, value_enum, default_value = "drop", requires = "between")]
    pub mode: CutMode,
    /// Protocols cut: tcp by default with --isolate, any with --between.
    #[arg(long, value_enum)]
    pub protocol: Option<proto::Protocol>,
    /// Heal by itself after this long (500ms, 30s, 2m).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
    /// The faults' label, for `faultctl clear --label`.
    #[arg(long, default_value = "partition")]
    pub label: String,
    /// Keep an address partition only while faultctl runs (see `faultctl drop --help`).
    #[arg(long, requires = "between")]
    pub hold: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CutMode {
    Drop,
    Reset,
}

impl PartitionArgs {
    /// Whether this is the address form (`--between … --and …`), one fault on one daemon.
    pub fn by_address(&self) -> bool {
        !self.between.is_empty()
    }

    /// The address form's one fault.
    pub fn address_spec(&self) -> proto::FaultSpec {
        let kind = match self.mode {
            CutMode::Drop => proto::action::Kind::Drop(proto::Drop { probability: None }),
            CutMode::Reset => proto::action::Kind::Reset(proto::Reset { probability: None }),
        };
        proto::FaultSpec {
            target: Some(proto::Target {
                protocol: self.protocol.unwrap_or(proto::Protocol::Any).into(),
                between: self.between.clone(),
                and_peers: self.and.clone(),
                one_way: self.one_way,
                ..Default::default()
            }),
            action: Some(proto::Action { kind: Some(kind) }),
            ttl_ms: self.ttl.map(|d| d.as_millis() as u64),
            label: self.label.clone(),
        }
    }
}

/// The faults each node adds, in the order of `nodes`; bad input names what is wrong.
pub fn plan(
    args: &PartitionArgs,
    nodes: &[NodeAddr],
) -> anyhow::Result<Vec<Vec<proto::FaultSpec>>> {
    if args.by_address() {
        if nodes.is_empty() {
            anyhow::bail!("no daemon named: give --addr or --hosts");
        }
        return Ok(vec![vec![args.address_spec()]; nodes.len()]);
    }
    let partition = Partition {
        ports: args.ports.clone(),
        protocol: args.protocol.unwrap_or(proto::Protocol::Tcp),
        ttl_ms: args.ttl.map(|d| d.as_millis() as u64),
        label: args.label.clone(),
    };
    partition
        .plan(nodes, &args.isolate)
        .map_err(|e| anyhow::anyhow!("partition: {e}"))
}
