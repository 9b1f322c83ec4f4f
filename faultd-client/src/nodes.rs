//! Several faultds — one per node of a cluster — driven as one: a fault applied on every
//! node, the faults listed or cleared everywhere, with a result per node.

use std::future::Future;
use std::net::IpAddr;

use faultd_api::partition::{NodeAddr, Partition};
use faultd_api::proto;
use futures_util::future::join_all;

use crate::{Action, Client, ClientBuilder, Error, FaultBuilder, FaultGuard, Result};

/// A client per node, each with its own session (unless the builder says otherwise): when
/// the `Nodes` go, every node removes the faults it added.
///
/// ```no_run
/// use faultd_client::{Nodes, Partition};
///
/// # async fn example() -> Result<(), faultd_client::NodesError> {
/// // Each node as NODE_IP=ADDRESS: its own IP, and where its faultd listens.
/// let nodes = Nodes::connect([
///     "10.0.0.1=unix:/run/a/faultd.sock",
///     "10.0.0.2=10.0.0.2:7447",
///     "10.0.0.3=10.0.0.3:7447",
/// ])
/// .await?;
/// // Cut 10.0.0.1 off from the others on etcd's peer port.
/// let partition = nodes
///     .partition(&Partition::ports([2380]), &["10.0.0.1".parse().unwrap()])
///     .await
///     .all()?; // when a node refused, the others' guards drop here: no half partition
/// // … the cluster runs without 10.0.0.1 …
/// drop(partition); // heal
///
/// // The same fault on every node: UDP port 53 silent everywhere.
/// let dns = nodes.apply(|client| client.drop(53).protocol(faultd_client::Protocol::Udp)).await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Nodes {
    nodes: Vec<(NodeAddr, Client)>,
}

/// One result per node, in the order the nodes were given, each with the node's address.
#[derive(Debug)]
pub struct PerNode<T> {
    pub results: Vec<(String, Result<T>)>,
}

/// The nodes that failed, each with its error.
#[derive(Debug, thiserror::Error)]
#[error("{} of {of} faultd nodes failed: {}", .failed.len(), list(.failed))]
pub struct NodesError {
    /// Each failed node's address and error.
    pub failed: Vec<(String, Error)>,
    /// How many nodes were asked.
    pub of: usize,
}

fn list(failed: &[(String, Error)]) -> String {
    let parts: Vec<String> = failed.iter().map(|(n, e)| format!("{n}: {e}")).collect();
    parts.join("; ")
}

impl Nodes {
    /// Connects to every node: `ADDRESS` (`unix:/path` or `host:port`) or, for
    /// [`Nodes::partition`], `NODE_IP=ADDRESS`. Each client has a session.
    pub async fn connect<I>(addrs: I) -> Result<Nodes, NodesError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Nodes::connect_with(Client::builder(), addrs).await
    }

    /// Connects to every address with the options of `builder` (TLS, session or not); its
    /// own address, if it has one, is replaced by each node's. All nodes must answer: the
    /// error names each one that did not.
    pub async fn connect_with<I>(builder: ClientBuilder, addrs: I) -> Result<Nodes, NodesError>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let texts: Vec<String> = addrs.into_iter().map(Into::into).collect();
        let of = texts.len();
        let mut nodes = Vec::new();
        let mut failed = Vec::new();
        for text in texts {
            match NodeAddr::parse(&text) {
                Ok(node) => nodes.push(node),
                Err(message) => failed.push((text, Error::Config { message })),
            }
        }
        if !failed.is_empty() {
            return Err(NodesError { failed, of });
        }
        let connect = |n: &NodeAddr| builder.clone().addr(n.addr.clone()).connect();
        let clients = join_all(nodes.iter().map(connect)).await;
        let connected = PerNode {
            results: nodes.iter().map(ToString::to_string).zip(clients).collect(),
        };
        let clients = connected.all()?;
        Ok(Nodes {
            nodes: nodes.into_iter().zip(clients).collect(),
        })
    }

    /// The nodes and their clients, in the order given: for what one node alone does.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeAddr, &Client)> {
        self.nodes.iter().map(|(n, c)| (n, c))
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Applies on every node, at once, the fault `fault` builds with that node's client.
    /// Each guard removes its node's fault when dropped.
    pub async fn apply<A, F>(&self, fault: F) -> PerNode<FaultGuard>
    where
        A: Action,
        F: Fn(&Client) -> FaultBuilder<A>,
    {
        self.each(|client| fault(client).apply()).await
    }

    /// Cuts the nodes whose IPs are `isolated` off from the others: every node drops the
    /// partition's ports' traffic (both directions) whose peer is a node of the other side
    /// ([`Partition::plan`]). Each node's guards heal its part when dropped. Every node
    /// must have been given as `NODE_IP=ADDRESS`; otherwise, or when `isolated` does not
    /// name some (not all) of them, every node's result is that error and nothing is added.
    pub async fn partition(
        &self,
        partition: &Partition,
        isolated: &[IpAddr],
    ) -> PerNode<Vec<FaultGuard>> {
        let nodes: Vec<NodeAddr> = self.nodes.iter().map(|(n, _)| n.clone()).collect();
        let plan = match partition.plan(&nodes, isolated) {
            Ok(plan) => plan,
            Err(message) => {
                let results = nodes.iter().map(|n| {
                    let message = message.clone();
                    (n.to_string(), Err(Error::Config { message }))
                });
                return PerNode {
                    results: results.collect(),
                };
            }
        };
        let adds = self
            .nodes
            .iter()
            .zip(&plan)
            .map(|((_, client), specs)| async move {
                let mut guards = Vec::new();
                for spec in specs {
                    // A refusal drops the guards added before it: the node's part is whole or
                    // not there.
                    guards.push(client.add(spec.clone()).await?);
                }
                Ok(guards)
            });
        let answers = join_all(adds).await;
        PerNode {
            results: nodes.iter().map(ToString::to_string).zip(answers).collect(),
        }
    }

    /// Every node's active faults.
    pub async fn list(&self) -> PerNode<Vec<proto::Fault>> {
        self.each(|client| client.list()).await
    }

    /// Removes every fault on every node; how many each removed.
    pub async fn clear(&self) -> PerNode<u32> {
        self.each(|client| client.clear()).await
    }

    /// Removes the faults with exactly this label on every node; how many each removed.
    pub async fn clear_label(&self, label: &str) -> PerNode<u32> {
        self.each(|client| client.clear_label(label)).await
    }

    /// Runs `call` on every node's client concurrently.
    pub async fn each<'a, T, F, Fut>(&'a self, call: F) -> PerNode<T>
    where
        F: Fn(&'a Client) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let answers = join_all(self.nodes.iter().map(|(_, client)| call(client))).await;
        PerNode {
            results: self
                .nodes
                .iter()
                .map(|(node, _)| node.to_string())
                .zip(answers)
                .collect(),
        }
    }
}

impl<T> PerNode<T> {
    /// Every node's value, or — when any node failed — an error naming each node that did.
    /// The other nodes' values are dropped then: for [`Nodes::apply`] their guards remove
    /// the fault they added, so a fault is on all nodes or on none.
    pub fn all(self) -> Result<Vec<T>, NodesError> {
        Ok(self.all_named()?.into_iter().map(|(_, v)| v).collect())
    }

    /// [`PerNode::all`], each value with its node's address.
    pub fn all_named(self) -> Result<Vec<(String, T)>, NodesError> {
        let of = self.results.len();
        let (ok, failed): (Vec<_>, Vec<_>) = self.results.into_iter().partition(|(_, r)| r.is_ok());
        if failed.is_empty() {
            return Ok(ok.into_iter().map(|(n, r)| (n, r.ok().unwrap())).collect());
        }
        Err(NodesError {
            failed: failed
                .into_iter()
                .map(|(n, r)| (n, r.err().unwrap()))
                .collect(),
            of,
        })
    }

    /// The nodes that failed, with their errors.
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Error)> {
        self.results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| (n.as_str(), e)))
    }

    /// Whether every node succeeded.
    pub fn is_ok(&self) -> bool {
        self.results.iter().all(|(_, r)| r.is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(n: u32) -> Error {
        Error::InvalidArgument {
            message: format!("target.port: {n}"),
        }
    }

    #[test]
    fn all_is_every_value_or_every_failure_by_node() {
        let ok = PerNode {
            results: vec![("a".into(), Ok(1)), ("b".into(), Ok(2))],
        };
        assert!(ok.is_ok());
        assert_eq!(ok.all().unwrap(), [1, 2]);

        let mixed = PerNode {
            results: vec![
                ("a".into(), Ok(1)),
                ("b".into(), Err(refused(0))),
                ("c".into(), Err(refused(7))),
            ],
        };
        assert!(!mixed.is_ok());
        let failed: Vec<&str> = mixed.failures().map(|(n, _)| n).collect();
        assert_eq!(failed, ["b", "c"]);
        let e = mixed.all().unwrap_err();
        assert_eq!((e.failed.len(), e.of), (2, 3));
        assert_eq!(
            e.to_string(),
            "2 of 3 faultd nodes failed: b: invalid argument: target.port: 0; \
             c: invalid argument: target.port: 7"
        );
    }

    #[tokio::test]
    async fn connect_names_every_node_that_does_not_answer() {
        let dir = std::env::temp_dir().join(format!("faultd-client-nodes-{}", std::process::id()));
        let a = format!("unix:{}", dir.join("a.sock").display());
        let b = format!("unix:{}", dir.join("b.sock").display());
        let e = Nodes::connect([a.clone(), b.clone()]).await.unwrap_err();
        assert_eq!(e.of, 2);
        let named: Vec<&str> = e.failed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(named, [a.as_str(), b.as_str()]);
        for (node, error) in &e.failed {
            assert!(
                matches!(error, Error::Transport { .. }),
                "{node}: {error:?}"
            );
            assert!(error.to_string().contains(node.as_str()), "{error}");
        }
    }
}
