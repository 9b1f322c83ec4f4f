//! Many nodes: a daemon's address with the node's own IP (`198.18.0.1=unix:/run/…sock`),
//! and the faults that partition some nodes from the others, per node.
//!
//! A fault's peer is the flow's end that is not the port's (the client of a service port),
//! so no one fault added on every node can cut a partition: for a node B on the big side,
//! the flow B→A:port (A isolated) has B as its peer wherever it is seen. Each node instead
//! drops the port's traffic whose peer is a node of the *other* side: A drops flows whose
//! client is B (B→A:port), B drops flows whose client is A (A→B:port); both ends of every
//! flow across the partition are then covered, and flows within a side are untouched.

use std::net::IpAddr;

use crate::proto;

/// A daemon to reach, and the address of the node it runs on (needed by partitions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddr {
    /// `unix:/path` or `host:port`, as `--addr` takes it.
    pub addr: String,
    /// The node's own IP, the address the other nodes see its traffic come from.
    pub ip: Option<IpAddr>,
}

impl NodeAddr {
    /// `ADDRESS`, or `NODE_IP=ADDRESS` (`198.18.0.1=unix:/run/faultd/a.sock`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (ip, addr) = match text.split_once('=') {
            Some((ip, addr)) if ip.parse::<IpAddr>().is_ok() => (ip.parse().ok(), addr.trim()),
            Some((ip, _)) if !text.starts_with("unix:") && !text.contains("://") => {
                return Err(format!(
                    "{text:?}: {ip:?} is not an IP address (write NODE_IP=ADDRESS)"
                ));
            }
            _ => (None, text),
        };
        if addr.is_empty() {
            return Err(format!("{text:?}: no daemon address"));
        }
        Ok(NodeAddr {
            addr: addr.to_string(),
            ip,
        })
    }
}

impl std::fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{ip}={}", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

/// What to cut: the service ports, and the traffic's protocol, TTL and label.
#[derive(Clone, Debug)]
pub struct Partition {
    pub ports: Vec<u16>,
    pub protocol: proto::Protocol,
    pub ttl_ms: Option<u64>,
    pub label: String,
}

impl Partition {
    /// A partition of TCP traffic on `ports`, labelled `partition`, with no TTL.
    pub fn ports(ports: impl IntoIterator<Item = u16>) -> Self {
        Partition {
            ports: ports.into_iter().collect(),
            protocol: proto::Protocol::Tcp,
            ttl_ms: None,
            label: "partition".into(),
        }
    }

    /// The faults each node adds (in the order of `nodes`) to cut `isolated` from the other
    /// nodes: on every node, for every port, a drop of the port's traffic (both directions)
    /// whose peer is each node of the other side. Every node needs its IP; `isolated` must
    /// name some, not all, of them.
    pub fn plan(
        &self,
        nodes: &[NodeAddr],
        isolated: &[IpAddr],
    ) -> Result<Vec<Vec<proto::FaultSpec>>, String> {
        if self.ports.is_empty() {
            return Err("a partition needs at least one port".into());
        }
        let ips = nodes
            .iter()
            .map(|n| {
                n.ip.ok_or_else(|| {
                    format!(
                        "{}: a partition needs each node's own IP: write NODE_IP={}",
                        n.addr, n.addr
                    )
                })
            })
            .collect::<Result<Vec<IpAddr>, String>>()?;
        if let Some(stranger) = isolated.iter().find(|ip| !ips.contains(ip)) {
            return Err(format!(
                "isolate: {stranger} is not the IP of any node given"
            ));
        }
        let side = |ip: &IpAddr| isolated.contains(ip);
        if ips.iter().all(side) || isolated.is_empty() {
            return Err("isolate: name some of the nodes' IPs, not none or all".into());
        }
        Ok(ips
            .iter()
            .map(|ip| {
                let others: Vec<&IpAddr> = ips.iter().filter(|o| side(o) != side(ip)).collect();
                self.ports
                    .iter()
                    .flat_map(|&port| others.iter().map(move |&other| self.drop(port, other)))
                    .collect()
            })
            .collect())
    }

    fn drop(&self, port: u16, peer: &IpAddr) -> proto::FaultSpec {
        let prefix = if peer.is_ipv4() { 32 } else { 128 };
        proto::FaultSpec {
            target: Some(proto::Target {
                port: port.into(),
                protocol: self.protocol.into(),
                direction: proto::Direction::Both.into(),
                peer: format!("{peer}/{prefix}"),
                ..Default::default()
            }),
            action: Some(proto::Action {
                kind: Some(proto::action::Kind::Drop(proto::Drop { probability: None })),
            }),
            ttl_ms: self.ttl_ms,
            label: self.label.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(text: &str) -> NodeAddr {
        NodeAddr::parse(text).unwrap()
    }

    #[test]
    fn node_addresses_may_carry_the_nodes_ip() {
        assert_eq!(
            node("198.18.0.1=unix:/run/a.sock"),
            NodeAddr {
                addr: "unix:/run/a.sock".into(),
                ip: Some("198.18.0.1".parse().unwrap())
            }
        );
        assert_eq!(node("fd00::2=10.0.0.2:7447").ip, "fd00::2".parse().ok());
        assert_eq!(
            node("unix:/run/a=b.sock").ip,
            None,
            "a socket path may hold '='"
        );
        assert_eq!(node("10.0.0.2:7447").addr, "10.0.0.2:7447");
        assert!(NodeAddr::parse("node-a=10.0.0.2:7447").is_err());
        assert!(NodeAddr::parse("198.18.0.1=").is_err());
        assert_eq!(node("198.18.0.1=unix:/a").to_string(), "198.18.0.1=unix:/a");
    }

    fn peers(specs: &[proto::FaultSpec]) -> Vec<(u32, String)> {
        specs
            .iter()
            .map(|s| {
                let t = s.target.as_ref().unwrap();
                (t.port, t.peer.clone())
            })
            .collect()
    }

    #[test]
    fn each_node_drops_the_other_sides_peers_on_every_port() {
        let nodes = [
            node("198.18.0.1=unix:/a"),
            node("198.18.0.2=unix:/b"),
            node("198.18.0.3=unix:/c"),
        ];
        let partition = Partition {
            ports: vec![2380, 2379],
            protocol: proto::Protocol::Tcp,
            ttl_ms: Some(30_000),
            label: "partition".into(),
        };
        let plan = partition
            .plan(&nodes, &["198.18.0.1".parse().unwrap()])
            .unwrap();
        let a = |p: u32, ip: &str| (p, format!("{ip}/32"));
        assert_eq!(
            peers(&plan[0]),
            [
                a(2380, "198.18.0.2"),
                a(2380, "198.18.0.3"),
                a(2379, "198.18.0.2"),
                a(2379, "198.18.0.3")
            ]
        );
        for other in &plan[1..] {
            assert_eq!(peers(other), [a(2380, "198.18.0.1"), a(2379, "198.18.0.1")]);
        }
        let spec = &plan[1][0];
        assert_eq!(
            (spec.ttl_ms, spec.label.as_str()),
            (Some(30_000), "partition")
        );
        assert_eq!(
            spec.target.as_ref().unwrap().direction,
            proto::Direction::Both as i32
        );
    }

    #[test]
    fn a_partition_needs_ips_and_two_sides() {
        let partition = Partition {
            ports: vec![2380],
            protocol: proto::Protocol::Tcp,
            ttl_ms: None,
            label: String::new(),
        };
        let nodes = [node("198.18.0.1=unix:/a"), node("unix:/b")];
        let err = partition
            .plan(&nodes, &["198.18.0.1".parse().unwrap()])
            .unwrap_err();
        assert!(err.contains("unix:/b") && err.contains("NODE_IP="), "{err}");
        let nodes = [node("198.18.0.1=unix:/a"), node("198.18.0.2=unix:/b")];
        for isolated in [&[][..], &["198.18.0.1", "198.18.0.2"], &["10.9.9.9"]] {
            let isolated: Vec<IpAddr> = isolated.iter().map(|i| i.parse().unwrap()).collect();
            assert!(partition.plan(&nodes, &isolated).is_err(), "{isolated:?}");
        }
    }
}
