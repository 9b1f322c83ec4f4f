//! `faultctl version`: this client's version and the daemon's.

use faultd_api::client::ClientTlsArgs;
use serde::Serialize;

use super::output::{self, Render};
use crate::proto::{self, fault_service_client::FaultServiceClient};

#[derive(Serialize)]
struct Versions {
    client: &'static str,
    /// `None` when no daemon answers.
    daemon: Option<String>,
}

impl Render for Versions {
    fn text(&self) -> String {
        let daemon = self.daemon.as_deref().unwrap_or("unreachable");
        format!("faultctl {}\nfaultd   {daemon}", self.client)
    }
}

/// Prints both versions; without a daemon prints the client's and fails as unreachable
/// (exit code 2), so a script learns both facts.
pub async fn run(addr: Option<&str>, tls: &ClientTlsArgs, json: bool) -> anyhow::Result<()> {
    let client = env!("CARGO_PKG_VERSION");
    let daemon = match faultd_api::client::connect(addr, tls).await {
        Ok(channel) => FaultServiceClient::new(channel)
            .get_capabilities(proto::GetCapabilitiesRequest {})
            .await
            .map(|caps| caps.into_inner().version)
            .map_err(super::rpc_error),
        Err(e) => Err(e),
    };
    let version = daemon.as_ref().ok().map(|v| {
        // A daemon from before the version field was added.
        if v.is_empty() {
            "unknown".to_string()
        } else {
            v.clone()
        }
    });
    output::print(
        &Versions {
            client,
            daemon: version,
        },
        json,
    )?;
    daemon.map(drop)
}
