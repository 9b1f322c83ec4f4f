//! `faultctl doctor`: what this kernel supports, and so which actions are available.

use serde::Serialize;
use tonic::transport::Channel;

use super::output::{self, AttachmentRow, Render};
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(client: &mut FaultServiceClient<Channel>, json: bool) -> anyhow::Result<()> {
    let caps = client
        .get_capabilities(proto::GetCapabilitiesRequest {})
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    output::print(&Doctor::from(caps), json)
}

#[derive(Serialize)]
pub struct Doctor {
    pub features: Vec<Support>,
    pub interfaces: Vec<AttachmentRow>,
    pub actions: Vec<Support>,
    /// faultd's BPF maps: name, kernel type, max entries, kernel bytes now.
    pub maps: Vec<MapRow>,
    /// The daemon's report, for the table faultd also logs at start-up.
    #[serde(skip)]
    caps: proto::Capabilities,
}

#[derive(Serialize)]
pub struct MapRow {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub max_entries: u32,
    pub bytes: u64,
}

/// A feature of the kernel, or an action, and whether it is available.
#[derive(Serialize)]
pub struct Support {
    pub name: String,
    pub available: bool,
    pub detail: String,
}

impl From<proto::Capabilities> for Doctor {
    fn from(caps: proto::Capabilities) -> Self {
        let support = |name: &str, available: bool, detail: &str| Support {
            name: name.into(),
            available,
            detail: detail.into(),
        };
        Doctor {
            features: caps
                .features
                .iter()
                .map(|f| support(&f.name, f.available, &f.detail))
                .collect(),
            interfaces: caps.attachments.iter().map(AttachmentRow::from).collect(),
            actions: caps
                .actions
                .iter()
                .map(|a| support(&a.action, a.available, &a.detail))
                .collect(),
            maps: caps
                .maps
                .iter()
                .map(|m| MapRow {
                    name: m.name.clone(),
                    kind: m.r#type.clone(),
                    max_entries: m.max_entries,
                    bytes: m.bytes,
                })
                .collect(),
            caps,
        }
    }
}

impl Render for Doctor {
    fn text(&self) -> String {
        faultd_api::capabilities::table(&self.caps)
            .trim_end()
            .to_string()
    }
}
