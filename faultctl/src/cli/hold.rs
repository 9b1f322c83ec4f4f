//! `--hold`: a fault that lives as long as this faultctl does. It is bound to a session
//! (OpenSession) that faultctl keeps open; Ctrl-C or SIGTERM removes it and exits 0, and
//! should faultctl die any other way faultd ends the session and removes the fault.

use tokio::signal::unix::{SignalKind, signal};
use tonic::transport::Channel;

use super::output::{Added, FaultRow, print};
use super::{Rpc, rpc_error};
use crate::proto::{self, fault_service_client::FaultServiceClient};

pub async fn run(
    client: &mut FaultServiceClient<Channel>,
    spec: proto::FaultSpec,
    json: bool,
) -> anyhow::Result<()> {
    // Before the fault exists: a signal that comes right after it is printed is handled.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let request = proto::OpenSessionRequest {
        name: format!("faultctl --hold (pid {})", std::process::id()),
    };
    let mut session = client
        .open_session(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    let session_id = session
        .message()
        .await
        .map_err(rpc_error)?
        .ok_or_else(|| ended("before naming it"))?
        .session_id;
    let request = proto::AddFaultRequest {
        spec: Some(spec),
        session_id,
    };
    let fault = client
        .add_fault(request)
        .await
        .map_err(rpc_error)?
        .into_inner();
    print(&Added(FaultRow::from(&fault)), json)?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        // faultd sends nothing more; the stream ends only when faultd does (and the fault
        // with it).
        _ = async { while let Ok(Some(_)) = session.message().await {} } => {
            return Err(ended("while holding the fault (faultd stopped?); the fault is gone"));
        }
    }
    // Removed and confirmed before exiting; ending the session would remove it too.
    let _ = client
        .remove_fault(proto::RemoveFaultRequest { id: fault.id })
        .await;
    Ok(())
}

/// The session ended on faultd's side: as unreachable as faultd gets (exit 2).
fn ended(when: &str) -> anyhow::Error {
    Rpc(tonic::Status::unavailable(format!(
        "faultd ended the session {when}"
    )))
    .into()
}
