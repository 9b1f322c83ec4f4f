//! `faultctl health`: faultd's standard gRPC health service (`grpc.health.v1.Health`), for
//! exec probes (a Kubernetes liveness or readiness probe, a container HEALTHCHECK), where a
//! network probe cannot reach faultd's loopback-only listener.

use clap::Args;
use serde::Serialize;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::output::{self, Render};
use super::{Rpc, rpc_error};

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// The service to ask about: "" (the daemon as a whole) or faultd.v1.FaultService.
    #[arg(long, default_value = "")]
    pub service: String,
}

/// `SERVING` (exit 0); anything else — `NOT_SERVING` once faultd is stopping — exits 2,
/// as for a daemon that does not answer.
pub async fn run(channel: Channel, args: HealthArgs, json: bool) -> anyhow::Result<()> {
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    let status = HealthClient::new(channel)
        .check(request)
        .await
        .map_err(rpc_error)?
        .into_inner()
        .status();
    let health = Health {
        service: args.service,
        status: status.as_str_name(),
    };
    output::print(&health, json)?;
    if status != ServingStatus::Serving {
        return Err(Rpc(tonic::Status::unavailable(format!(
            "faultd is {}",
            health.status
        )))
        .into());
    }
    Ok(())
}

#[derive(Serialize)]
struct Health {
    service: String,
    status: &'static str,
}

impl Render for Health {
    fn text(&self) -> String {
        self.status.to_string()
    }
}
