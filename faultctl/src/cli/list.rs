//! `faultctl list`.

use serde::Serialize;
use tonic::transport::Channel;

use super::output::{self, FaultRow, OwnerRow, Render};
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(client: &mut FaultServiceClient<Channel>, json: bool) -> anyhow::Result<()> {
    let faults = client
        .list_faults(proto::ListFaultsRequest {})
        .await
        .map_err(super::rpc_error)?
        .into_inner()
        .faults;
    output::print(&List(faults.iter().map(FaultRow::from).collect()), json)
}

/// The active faults: a JSON array, or a table.
#[derive(Serialize)]
#[serde(transparent)]
pub struct List(pub Vec<FaultRow>);

impl Render for List {
    fn text(&self) -> String {
        let mut table = output::table(&HEADER);
        for f in &self.0 {
            table.add_row(row(f));
        }
        table.to_string()
    }
}

/// The columns of `faultctl list`.
pub const HEADER: [&str; 11] = [
    "ID",
    "ACTION",
    "PORT",
    "PROTO",
    "DIRECTION",
    "PEER",
    "PARAMS",
    "EXPIRES IN",
    "LABEL",
    "OWNER",
    "SESSION",
];

/// A fault as a row of `faultctl list`.
pub fn row(f: &FaultRow) -> Vec<String> {
    vec![
        f.id.to_string(),
        f.action.to_string(),
        f.ports_text(),
        f.protocol.to_string(),
        f.direction.to_string(),
        f.peer_text(),
        output::cell(&f.params),
        output::expires_in(f.expires_unix_ms),
        output::cell(&f.label),
        OwnerRow::text(f.owner.as_ref()),
        f.session_id.map_or("-".into(), |id| id.to_string()),
    ]
}
