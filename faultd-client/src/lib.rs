//! A typed async client of faultd for Rust test suites: a builder per
//! action, a guard that removes its fault when dropped, and faults bound to the client's
//! lifetime, so that a test that panics, or a test process that is killed, leaves nothing
//! behind.
//!
//! ```no_run
//! use std::time::Duration;
//! use faultd_client::{Client, Direction};
//!
//! # async fn example() -> Result<(), faultd_client::Error> {
//! // The faultd of this network namespace (its Unix socket, else 127.0.0.1:7447).
//! let client = Client::connect().await?;
//! let partition = client
//!     .drop(2379)
//!     .direction(Direction::ToPort)
//!     .ttl(Duration::from_secs(30))
//!     .label("etcd-partition")
//!     .apply()
//!     .await?;
//! // … the code under test now sees etcd go silent …
//! partition.remove().await?; // or just let `partition` drop
//! # Ok(()) }
//! ```
//!
//! # Three ways a fault goes
//!
//! - **Its guard.** [`FaultBuilder::apply`] returns a [`FaultGuard`]: dropping it removes the
//!   fault (spawned on the current tokio runtime, since `Drop` cannot wait);
//!   [`FaultGuard::remove`] removes it and waits; [`FaultGuard::keep`] leaves it installed.
//! - **The session.** By default [`Client::connect`] opens a session with faultd
//!   (`OpenSession`) and binds every fault it adds to it: when the client goes — dropped,
//!   its runtime stopped, the process exited, crashed or was killed with SIGKILL — faultd
//!   removes the session's faults within a second. [`ClientBuilder::session`]`(false)`
//!   opts out (faults then stay until removed or their TTL passes).
//! - **Its TTL**, [`FaultBuilder::ttl`], counted by faultd.
//!
//! # A fault around a block
//!
//! [`Client::with_fault`] applies a fault, runs a future, and removes the fault — awaited —
//! whether the future returns, returns an error or panics:
//!
//! ```no_run
//! use std::time::Duration;
//! use faultd_client::{Client, Then};
//!
//! # async fn example() -> Result<(), faultd_client::Error> {
//! let client = Client::connect_to("unix:/run/faultd/faultd-4026531840.sock").await?;
//! let answer = client
//!     .with_fault(client.limit_bytes(5432, 1000).then(Then::Reset), async {
//!         // a query whose connection is cut after 1000 bytes
//!         42
//!     })
//!     .await?;
//! assert_eq!(answer, 42);
//! # Ok(()) }
//! ```
//!
//! # Many nodes
//!
//! [`Nodes`] drives the faultd of every node of a cluster as one: a fault applied on all
//! of them, a partition cut ([`Nodes::partition`]), faults listed, cleared, with a result
//! per node ([`PerNode`]).
//!
//! # Scenarios
//!
//! The TOML scenarios of `faultctl run` (docs/scenarios.md) run through a client too:
//! [`Scenario::from_path`] then [`Scenario::run`] with the client (see `scenario.rs`).
//!
//! # Errors
//!
//! faultd validates every request and names the field it refuses; the client maps gRPC
//! status codes to [`Error`] once:
//!
//! ```
//! use faultd_client::Error;
//!
//! let refused = tonic::Status::invalid_argument("target.port: 0 is not a port (1-65535)");
//! let error = Error::from(refused);
//! assert!(matches!(error, Error::InvalidArgument { .. }));
//! assert_eq!(error.field(), Some("target.port"));
//! ```

mod builder;
mod error;
mod guard;
mod nodes;
mod scenario;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt as _;
use tonic::transport::Channel;

pub use builder::{Action, FaultBuilder};
pub use error::{Error, Result};
pub use faultd_api::client::ClientTlsArgs;
pub use faultd_api::partition::{NodeAddr, Partition};
pub use faultd_api::proto;
pub use faultd_api::proto::{Direction, Protocol, RefuseMode, Then};
/// Timed scenarios in TOML, the files `faultctl run` plays: `Scenario::from_path(..)?.run(&client, ..)`.
pub use faultd_api::scenario::{self as scenarios, Scenario};
pub use guard::FaultGuard;
pub use nodes::{Nodes, NodesError, PerNode};

use proto::fault_service_client::FaultServiceClient;

/// A connection to faultd; cheap to clone (clones share the connection and the session).
#[derive(Clone)]
pub struct Client {
    rpc: FaultServiceClient<Channel>,
    session: Option<Arc<Session>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("session_id", &self.session_id())
            .finish_non_exhaustive()
    }
}

/// An open `OpenSession` call, held by a task; the session ends when the last clone of
/// the client (and the last guard, which holds one) is dropped.
struct Session {
    id: u64,
    holder: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping the stream cancels the call: faultd ends the session and removes its
        // faults.
        self.holder.abort();
    }
}

/// How to connect: [`Client::builder`].
///
/// ```no_run
/// use faultd_client::Client;
///
/// # async fn example() -> Result<(), faultd_client::Error> {
/// // Faults that outlive this process (until removed or their TTL passes):
/// let client = Client::builder().addr("127.0.0.1:7447").session(false).connect().await?;
/// assert_eq!(client.session_id(), None);
/// let id = client.refuse(8080).apply().await?.keep().id;
/// client.remove(id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    addr: Option<String>,
    tls: ClientTlsArgs,
    session: bool,
    session_name: Option<String>,
}

impl ClientBuilder {
    /// `unix:/path/to.sock` or `host:port` (a URL with `http://`/`https://` too). Default:
    /// the socket of this network namespace's faultd when there is one, else
    /// `127.0.0.1:7447`.
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.addr = Some(addr.into());
        self
    }

    /// Certificates for a remote faultd (`faultd --allow-remote`).
    pub fn tls(mut self, tls: ClientTlsArgs) -> Self {
        self.tls = tls;
        self
    }

    /// Whether to bind this client's faults to its lifetime (default: yes).
    pub fn session(mut self, session: bool) -> Self {
        self.session = session;
        self
    }

    /// The session's name in faultd's log. Default: this program's name and pid.
    pub fn session_name(mut self, name: impl Into<String>) -> Self {
        self.session_name = Some(name.into());
        self
    }

    /// Connects, and opens the session unless told not to. Must run on a tokio runtime,
    /// which then holds the session: it ends when that runtime stops.
    pub async fn connect(self) -> Result<Client> {
        let channel = faultd_api::client::connect(self.addr.as_deref(), &self.tls)
            .await
            .map_err(Error::connect)?;
        let mut rpc = FaultServiceClient::new(channel);
        let session = match self.session {
            true => {
                let name = self.session_name.unwrap_or_else(default_session_name);
                Some(Arc::new(open_session(&mut rpc, name).await?))
            }
            false => None,
        };
        Ok(Client { rpc, session })
    }
}

fn default_session_name() -> String {
    let program = std::env::args()
        .next()
        .and_then(|arg0| arg0.rsplit('/').next().map(str::to_string))
        .unwrap_or_default();
    format!("faultd-client {program} pid {}", std::process::id())
}

async fn open_session(rpc: &mut FaultServiceClient<Channel>, name: String) -> Result<Session> {
    let mut stream = rpc
        .open_session(proto::OpenSessionRequest { name })
        .await?
        .into_inner();
    let Some(first) = stream.message().await? else {
        return Err(Error::Unavailable {
            message: "faultd ended the session before naming it".into(),
        });
    };
    // faultd sends nothing more (or keepalives); the stream ends when faultd stops.
    let holder = tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
    Ok(Session {
        id: first.session_id,
        holder,
    })
}

impl Client {
    /// How to connect, with options.
    pub fn builder() -> ClientBuilder {
        ClientBuilder {
            addr: None,
            tls: ClientTlsArgs::default(),
            session: true,
            session_name: None,
        }
    }

    /// The faultd of this network namespace (as `faultctl` finds it), with a session.
    pub async fn connect() -> Result<Client> {
        Client::builder().connect().await
    }

    /// The faultd at `addr` (`unix:/path` or `host:port`), with a session.
    pub async fn connect_to(addr: impl Into<String>) -> Result<Client> {
        Client::builder().addr(addr).connect().await
    }

    /// The session this client's faults are bound to; `None` without one.
    pub fn session_id(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Adds a fault given as the proto's spec (the builders are the usual way).
    pub async fn add(&self, spec: proto::FaultSpec) -> Result<FaultGuard> {
        let request = proto::AddFaultRequest {
            spec: Some(spec),
            session_id: self.session_id().unwrap_or(0),
        };
        let fault = self.rpc.clone().add_fault(request).await?.into_inner();
        Ok(FaultGuard::new(self.clone(), fault))
    }

    /// Applies `fault`, runs `body`, then removes the fault and waits for that — also when
    /// `body` panics (the panic then continues) or returns an error. A fault gone already
    /// (its TTL passed) is no error.
    pub async fn with_fault<A: Action, F: Future>(
        &self,
        fault: FaultBuilder<A>,
        body: F,
    ) -> Result<F::Output> {
        let guard = fault.apply().await?;
        let outcome = AssertUnwindSafe(body).catch_unwind().await;
        let removed = guard.remove_if_present().await;
        match outcome {
            Ok(output) => removed.map(|()| output),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Every active fault (everyone's).
    pub async fn list(&self) -> Result<Vec<proto::Fault>> {
        let request = proto::ListFaultsRequest {};
        let response = self.rpc.clone().list_faults(request).await?;
        Ok(response.into_inner().faults)
    }

    /// Removes a fault by id; returns it as it was.
    pub async fn remove(&self, id: u64) -> Result<proto::Fault> {
        let request = proto::RemoveFaultRequest { id };
        let response = self.rpc.clone().remove_fault(request).await?.into_inner();
        response.removed.ok_or_else(|| Error::Other {
            code: tonic::Code::Internal,
            message: format!("faultd removed fault {id} but did not return it"),
        })
    }

    /// Removes every fault; returns how many.
    pub async fn clear(&self) -> Result<u32> {
        self.clear_matching(proto::ClearFaultsRequest::default())
            .await
    }

    /// Removes the faults with exactly this label; returns how many.
    pub async fn clear_label(&self, label: impl Into<String>) -> Result<u32> {
        self.clear_matching(proto::ClearFaultsRequest {
            label: Some(label.into()),
            ..Default::default()
        })
        .await
    }

    /// Removes the faults the request selects (label, owner uid, the caller's own).
    pub async fn clear_matching(&self, request: proto::ClearFaultsRequest) -> Result<u32> {
        let response = self.rpc.clone().clear_faults(request).await?;
        Ok(response.into_inner().removed)
    }

    /// Per-fault counters, attachments and event statistics.
    pub async fn stats(&self) -> Result<proto::GetStatsResponse> {
        let response = self
            .rpc
            .clone()
            .get_stats(proto::GetStatsRequest {})
            .await?;
        Ok(response.into_inner())
    }

    /// What this kernel supports; faultd's version.
    pub async fn capabilities(&self) -> Result<proto::Capabilities> {
        let request = proto::GetCapabilitiesRequest {};
        let response = self.rpc.clone().get_capabilities(request).await?;
        Ok(response.into_inner())
    }

    /// The generated gRPC client, for calls this crate does not wrap (`WatchEvents`).
    pub fn raw(&self) -> FaultServiceClient<Channel> {
        self.rpc.clone()
    }

    /// A client whose channel connects on first use and no session: for tests of what
    /// the builders produce.
    #[cfg(test)]
    pub(crate) fn disconnected() -> Client {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Client {
            rpc: FaultServiceClient::new(channel),
            session: None,
        }
    }
}
