//! A fault's lifetime as a Rust value: removed when its guard drops.

use faultd_api::proto;

use crate::{Client, Error, Result};

/// An installed fault; dropping it removes the fault.
///
/// `Drop` cannot await, so a dropped guard *spawns* the removal on the current tokio
/// runtime (if there is one) and returns at once; [`remove`](FaultGuard::remove) is the
/// awaited, checked way. Should the removal never run (no runtime, the runtime shuts down,
/// the process dies), the client's session is the backstop: faultd removes the session's
/// faults when the client goes (unless the client was built without a session).
#[derive(Debug)]
#[must_use = "dropping the guard removes the fault at once; bind it (`let _guard = …`) or call .keep()"]
pub struct FaultGuard {
    client: Client,
    fault: proto::Fault,
    armed: bool,
}

impl FaultGuard {
    pub(crate) fn new(client: Client, fault: proto::Fault) -> Self {
        FaultGuard {
            client,
            fault,
            armed: true,
        }
    }

    /// The fault's id, as `faultctl list` shows it.
    pub fn id(&self) -> u64 {
        self.fault.id
    }

    /// The fault as faultd installed it (owner, expiry, session, rate mode…).
    pub fn fault(&self) -> &proto::Fault {
        &self.fault
    }

    /// Removes the fault now and waits for faultd to confirm it. A fault that is gone
    /// already (its TTL passed, someone removed it) is [`Error::NotFound`].
    pub async fn remove(mut self) -> Result<proto::Fault> {
        self.armed = false;
        self.client.remove(self.fault.id).await
    }

    /// Leaves the fault installed: until removed by id, its TTL passes, or — when it is
    /// bound to the client's session — the client goes.
    pub fn keep(mut self) -> proto::Fault {
        self.armed = false;
        std::mem::take(&mut self.fault)
    }

    /// Like [`remove`](FaultGuard::remove), but a fault already gone is no error.
    pub(crate) async fn remove_if_present(self) -> Result<()> {
        match self.remove().await {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.client.clone();
            let id = self.fault.id;
            // The task holds a clone of the client, so the session stays open until the
            // removal is done: the two cannot race.
            runtime.spawn(async move {
                let _ = client.remove(id).await;
            });
        }
    }
}
