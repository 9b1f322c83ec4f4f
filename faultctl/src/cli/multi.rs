//! One command on several daemons (`--addr` more than once, `--hosts`): a fault added, a
//! partition cut, the faults listed, or cleared on every node at once, with a result per
//! node.
//!
//! Nodes are asked concurrently and independently: one that fails (unreachable, or it
//! refuses the request) does not stop the others, and nothing is rolled back on the nodes
//! that succeeded — the output says which did. A failure is a line `faultctl: NODE: …` on
//! stderr (and an `error` entry in `--json`); the exit code is [`exit_code`]'s.

use faultd_api::client::ClientTlsArgs;
use faultd_api::partition::NodeAddr;
use futures_util::future::join_all;
use serde::Serialize;

use super::output::{self, FaultRow, Render};
use super::{Cli, Command, exit, help, list, partition};
use crate::proto::{self, fault_service_client::FaultServiceClient};

/// What faultctl does on each node.
enum Request {
    /// The faults each node adds, in the order of the nodes (the same one on every node,
    /// but for a partition).
    Add(Vec<Vec<proto::FaultSpec>>),
    List,
    Clear(proto::ClearFaultsRequest),
}

/// One node's answer.
enum Answer {
    Added(Vec<FaultRow>),
    Listed(Vec<FaultRow>),
    Cleared(u32),
}

/// Some of the daemons failed: the error `run` returns after printing every result.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {of} daemons failed")]
pub struct NodesFailed {
    pub failed: usize,
    pub of: usize,
    /// What faultctl exits with ([`exit_code`]).
    pub code: u8,
}

pub async fn run(nodes: Vec<NodeAddr>, cli: Cli) -> anyhow::Result<()> {
    let request = match request(&cli.command, &nodes)? {
        Some(request) => request,
        // Completions and the man page need no daemon.
        None => {
            return match cli.command {
                Command::Completions(args) => help::completions(args, cli.json),
                Command::Man => help::man(cli.json),
                _ => unreachable!("request() refuses every other command"),
            };
        }
    };
    let asked = nodes.iter().enumerate();
    let answers = join_all(asked.map(|(i, node)| ask(i, &node.addr, &cli.tls, &request))).await;
    let names = nodes.iter().map(ToString::to_string);
    let results: Vec<(String, anyhow::Result<Answer>)> = names.zip(answers).collect();
    for (node, result) in &results {
        if let Err(e) = result {
            eprintln!("faultctl: {node}: {e:#}");
        }
    }
    output::print(&PerNode::new(&request, &results), cli.json)?;
    let codes: Vec<u8> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().map(super::exit_code))
        .collect();
    match exit_code(&codes, results.len()) {
        exit::OK => Ok(()),
        code => Err(NodesFailed {
            failed: codes.len(),
            of: results.len(),
            code,
        }
        .into()),
    }
}

/// The exit code for several daemons, from the codes of those that failed: 0 when none
/// did; when every one failed in the same way, that way's code (2 all unreachable, 3 all
/// refused it…), as with one daemon; otherwise (some succeeded, or they failed in different
/// ways) [`exit::NODES_FAILED`].
pub fn exit_code(failed: &[u8], of: usize) -> u8 {
    match failed.first() {
        None => exit::OK,
        Some(&code) if failed.len() == of && failed.iter().all(|&c| c == code) => code,
        Some(_) => exit::NODES_FAILED,
    }
}

/// What to ask every node, or `None` for commands that need no daemon; commands that
/// make sense on one daemon only are bad input.
fn request(command: &Command, nodes: &[NodeAddr]) -> anyhow::Result<Option<Request>> {
    if let Command::Partition(args) = command {
        return Ok(Some(Request::Add(partition::plan(args, nodes)?)));
    }
    if nodes.is_empty() {
        // Without --addr, the default daemon: as if it was named.
        anyhow::bail!("no daemon named: give --addr or --hosts");
    }
    if let Some((target, action)) = command.fault() {
        if target.hold {
            anyhow::bail!(
                "--hold works with one daemon; with several, add the fault with --for (a TTL) \
                 or remove it with `faultctl clear --label`"
            );
        }
        let spec = target.spec(action);
        return Ok(Some(Request::Add(vec![vec![spec]; nodes.len()])));
    }
    let one_daemon = match command {
        Command::List => return Ok(Some(Request::List)),
        Command::Clear(args) => {
            return Ok(Some(Request::Clear(proto::ClearFaultsRequest {
                label: args.label.clone(),
                owner_uid: args.owner_uid,
                mine: args.mine,
            })));
        }
        Command::Completions(_) | Command::Man => return Ok(None),
        Command::Doctor => "doctor",
        Command::Events(_) => "events",
        Command::Backoff(_) => "backoff",
        Command::Rm(_) => "rm (fault ids are per daemon)",
        Command::Stats => "stats",
        Command::EbpfLog(_) => "ebpf-log",
        Command::Version => "version",
        Command::Health(_) => "health",
        _ => unreachable!("every fault verb is handled above"),
    };
    anyhow::bail!(
        "faultctl {one_daemon} talks to one daemon; with several (--addr more than once, \
         --hosts) only the fault verbs, list and clear run"
    )
}

/// Asks the `i`th node, at `addr`.
async fn ask(
    i: usize,
    addr: &str,
    tls: &ClientTlsArgs,
    request: &Request,
) -> anyhow::Result<Answer> {
    let channel = faultd_api::client::connect(Some(addr), tls).await?;
    let mut client = FaultServiceClient::new(channel);
    let rpc = super::rpc_error;
    Ok(match request {
        Request::Add(specs) => Answer::Added(add_all(&mut client, &specs[i]).await?),
        Request::List => {
            let faults = client
                .list_faults(proto::ListFaultsRequest {})
                .await
                .map_err(rpc)?
                .into_inner()
                .faults;
            Answer::Listed(faults.iter().map(FaultRow::from).collect())
        }
        Request::Clear(request) => {
            let removed = client
                .clear_faults(request.clone())
                .await
                .map_err(rpc)?
                .into_inner()
                .removed;
            Answer::Cleared(removed)
        }
    })
}

/// Adds `specs` on one daemon, all or none: when one is refused, those added before it are
/// removed again (the node's result is the refusal).
async fn add_all(
    client: &mut FaultServiceClient<tonic::transport::Channel>,
    specs: &[proto::FaultSpec],
) -> anyhow::Result<Vec<FaultRow>> {
    let mut added = Vec::new();
    for spec in specs {
        let request = proto::AddFaultRequest {
            spec: Some(spec.clone()),
            session_id: 0,
        };
        match client.add_fault(request).await {
            Ok(fault) => added.push(FaultRow::from(&fault.into_inner())),
            Err(status) => {
                for fault in &added {
                    let request = proto::RemoveFaultRequest { id: fault.id };
                    let _ = client.remove_fault(request).await;
                }
                return Err(super::rpc_error(status));
            }
        }
    }
    Ok(added)
}

/// The results of all nodes: in JSON an array whose every element has `node` and either
/// the fields one daemon's answer has (a fault, or `removed`) or `error`; a node's list
/// gives one element per fault. As text, a table with a NODE column.
#[derive(Serialize)]
#[serde(transparent)]
struct PerNode {
    items: Vec<NodeItem>,
    /// Whether the answers are counts removed (else faults).
    #[serde(skip)]
    cleared: bool,
}

#[derive(Serialize)]
struct NodeItem {
    node: String,
    #[serde(flatten)]
    item: Item,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Item {
    Fault(Box<FaultRow>),
    Cleared { removed: u32 },
    Error { error: String },
}

impl PerNode {
    fn new(request: &Request, results: &[(String, anyhow::Result<Answer>)]) -> Self {
        let mut items = Vec::new();
        for (node, result) in results {
            let mut push = |item| {
                items.push(NodeItem {
                    node: node.clone(),
                    item,
                })
            };
            match result {
                Ok(Answer::Added(faults) | Answer::Listed(faults)) => faults
                    .iter()
                    .for_each(|f| push(Item::Fault(Box::new(f.clone())))),
                Ok(Answer::Cleared(removed)) => push(Item::Cleared { removed: *removed }),
                Err(e) => push(Item::Error {
                    error: format!("{e:#}"),
                }),
            }
        }
        PerNode {
            items,
            cleared: matches!(request, Request::Clear(_)),
        }
    }
}

impl Render for PerNode {
    /// The nodes that answered; failures are on stderr already. A list shows every
    /// column of `faultctl list`, an added fault its id, a clear the count removed.
    fn text(&self) -> String {
        let mut table = if self.cleared {
            output::table(&["NODE", "REMOVED"])
        } else {
            output::table(&[&["NODE"][..], &list::HEADER[..]].concat())
        };
        for i in &self.items {
            let mut row = vec![i.node.clone()];
            match &i.item {
                Item::Fault(f) => row.extend(list::row(f)),
                Item::Cleared { removed } => row.push(removed.to_string()),
                Item::Error { .. } => continue,
            }
            table.add_row(row);
        }
        table.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_for_several_daemons() {
        assert_eq!(exit_code(&[], 3), exit::OK);
        // All failed alike: as with one daemon.
        assert_eq!(exit_code(&[2, 2, 2], 3), exit::UNREACHABLE);
        assert_eq!(exit_code(&[3, 3], 2), exit::REFUSED);
        // Some succeeded, or they failed differently.
        assert_eq!(exit_code(&[2], 3), exit::NODES_FAILED);
        assert_eq!(exit_code(&[2, 3], 2), exit::NODES_FAILED);
    }
}
