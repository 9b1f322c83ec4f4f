//! `faultctl clear`.

use clap::Args;
use serde::Serialize;
use tonic::transport::Channel;

use super::output::{self, Render};
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Args, Debug)]
pub struct ClearArgs {
    /// Only the faults this user added (as faultd identifies the caller); others' stay.
    #[arg(long)]
    pub mine: bool,
    /// Only the faults with exactly this label.
    #[arg(long)]
    pub label: Option<String>,
    /// Only the faults this uid added.
    #[arg(long, value_name = "UID")]
    pub owner_uid: Option<u32>,
}

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    args: ClearArgs,
    json: bool,
) -> anyhow::Result<()> {
    let removed = client
        .clear_faults(proto::ClearFaultsRequest {
            label: args.label,
            owner_uid: args.owner_uid,
            mine: args.mine,
        })
        .await
        .map_err(super::rpc_error)?
        .into_inner()
        .removed;
    output::print(&Cleared { removed }, json)
}

/// `{"removed": N}`, or `removed N fault(s)`.
#[derive(Serialize)]
pub struct Cleared {
    pub removed: u32,
}

impl Render for Cleared {
    fn text(&self) -> String {
        format!("removed {} fault(s)", self.removed)
    }
}
