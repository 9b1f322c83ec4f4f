//! `faultctl rm ID`.

use clap::Args;
use serde::Serialize;
use tonic::transport::Channel;

use super::output::{self, FaultRow, Render};
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct RmArgs {
    /// The id `faultctl list` shows.
    pub id: u64,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: RmArgs,
    json: bool,
) -> anyhow::Result<()> {
    let removed = client
        .remove_fault(proto::RemoveFaultRequest { id: args.id })
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    let removed = Removed {
        id: args.id,
        removed: removed.removed.as_ref().map(FaultRow::from),
    };
    output::print(&removed, json)
}

/// `{"removed": <the fault>}`, or `removed ID`.
#[derive(Serialize)]
pub struct Removed {
    #[serde(skip)]
    pub id: u64,
    pub removed: Option<FaultRow>,
}

impl Render for Removed {
    fn text(&self) -> String {
        format!("removed {}", self.id)
    }
}
