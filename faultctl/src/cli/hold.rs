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
    let (mut session, session_id) = open_session(
        client,
        format!("faultctl --hold (pid {})", std::process::id()),
    )
    .await?;
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

/// Opens a session named `name`: its stream (which ends only when faultd ends the session)
/// and its id, to bind faults to. Shared by `--hold` and `faultctl run`.
pub(super) async fn open_session(
    client: &mut FaultServiceClient<Channel>,
    name: String,
) -> anyhow::Result<(tonic::Streaming<proto::SessionEvent>, u64)> {
    let mut session = client
        .open_session(proto::OpenSessionRequest { name })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let session_id = session
        .message()
        .await
        .map_err(rpc_error)?
        .ok_or_else(|| ended("before naming it"))?
        .session_id;
    Ok((session, session_id))
}

/// The session ended on faultd's side: as unreachable as faultd gets (exit 2).
pub(super) fn ended(when: &str) -> anyhow::Error {
    Rpc(tonic::Status::unavailable(format!(
        "faultd ended the session {when}"
    )))
    .into()
}
