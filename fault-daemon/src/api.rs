//! The gRPC control service: converts requests into the domain model and back, and owns
//! the expiry of faults with a TTL.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fault_common::{FaultCounters, PortKey, PortRule};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::access::Caller;
use crate::capabilities;
use crate::datapath::Attachment;
use crate::events::{EventHub, Filter, Subscription};
use crate::faults::{
    Action, Direction, Fault, FaultError, FaultSpec, FaultTable, Owner, Peer, Protocol, RateMode,
    RefuseMode, RuleSink, Selector, Target, Then, validate_port,
};
use crate::proto::{self, fault_service_server::FaultService};
use crate::qdisc::Fq;
use crate::sessions::{OnDrop, SessionStream, Sessions};

/// The active faults and where they are compiled to.
pub struct Engine {
    pub table: FaultTable,
    pub sink: Box<dyn RuleSink>,
    pub attachments: Vec<Attachment>,
    /// The fq qdisc that departure times (delay, paced rate) need.
    pub fq: Fq,
    /// Faults added and removed so far (metrics).
    pub updates: RuleUpdates,
}

/// How many faults were added and removed since faultd started, whatever removed them
/// (a call, a clear, a TTL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleUpdates {
    pub adds: u64,
    pub removes: u64,
}

impl Engine {
    pub fn new(table: FaultTable, sink: Box<dyn RuleSink>, attachments: Vec<Attachment>) -> Self {
        let ifaces = attachments
            .iter()
            .map(|a| (a.iface.clone(), a.ifindex))
            .collect();
        Self {
            table,
            sink,
            attachments,
            fq: Fq::new(ifaces),
            updates: RuleUpdates::default(),
        }
    }

    /// Installs a fault, and fq first when it needs it: a delay where fq cannot be had is
    /// refused (FAILED_PRECONDITION); a rate is then policed instead of paced.
    fn add(&mut self, mut spec: FaultSpec, owner: Owner) -> Result<Fault, FaultError> {
        spec.validate()?;
        let fq_before = self.fq.is_active();
        if let Action::Rate { mode, .. } = &mut spec.action {
            *mode = match self.fq.install() {
                Ok(()) => RateMode::Pace,
                Err(_) => RateMode::Police,
            };
        }
        if spec.action.needs_fq() {
            let field = match spec.action {
                Action::Slice { .. } => "action.slice.delay_us",
                _ => "action.delay",
            };
            self.fq
                .install()
                .map_err(|why| FaultError::Refused(format!("{field}: {why}")))?;
        }
        let added = self
            .table
            .add_as(spec, owner, SystemTime::now(), self.sink.as_mut());
        if added.is_err() && !fq_before {
            self.release_fq_if_unused();
        }
        if added.is_ok() {
            self.updates.adds += 1;
        }
        added
    }

    fn remove(&mut self, id: u64) -> Result<Fault, FaultError> {
        let removed = self.table.remove(id, self.sink.as_mut())?;
        self.updates.removes += 1;
        self.release_fq_if_unused();
        Ok(removed)
    }

    fn clear(&mut self) -> Result<usize, FaultError> {
        let cleared = self.table.clear(self.sink.as_mut());
        if let Ok(n) = cleared {
            self.updates.removes += n as u64;
        }
        self.release_fq_if_unused();
        cleared
    }

    /// Removes the faults `selector` matches; returns them.
    fn clear_matching(&mut self, selector: &Selector) -> Result<Vec<Fault>, FaultError> {
        let cleared = self.table.clear_matching(selector, self.sink.as_mut());
        if let Ok(removed) = &cleared {
            self.updates.removes += removed.len() as u64;
        }
        self.release_fq_if_unused();
        cleared
    }

    /// Removes every fault, puts the interfaces' own qdiscs back and detaches the programs
    /// (the datapath is dropped here, whoever still holds the engine). Every change after
    /// this is refused with [`FaultError::ShuttingDown`].
    pub fn shut_down(&mut self) -> Result<usize, FaultError> {
        let cleared = self.clear();
        if self.fq.is_active() {
            self.fq.restore();
        }
        self.sink = Box::new(Detached);
        cleared
    }

    /// Puts back the interfaces' own qdiscs once no fault sets departure times.
    fn release_fq_if_unused(&mut self) {
        if self.fq.is_active() && !self.table.iter().any(|f| f.spec.action.needs_fq()) {
            self.fq.restore();
        }
    }
}

/// What the engine writes to once the programs are detached: nothing.
struct Detached;

impl RuleSink for Detached {
    fn write_rule(&mut self, _: PortKey, _: Option<&PortRule>) -> Result<(), FaultError> {
        Err(FaultError::ShuttingDown)
    }
    fn reset_counters(&mut self, _: u32) -> Result<(), FaultError> {
        Err(FaultError::ShuttingDown)
    }
    fn read_counters(&self, _: u32) -> Result<FaultCounters, FaultError> {
        Err(FaultError::ShuttingDown)
    }
}

/// Default of `faultd --max-streams`: event streams open at once.
pub const DEFAULT_MAX_STREAMS: usize = 128;

#[derive(Clone)]
pub struct FaultApi {
    engine: Arc<Mutex<Engine>>,
    events: Arc<EventHub>,
    /// The programs' log level (SetEbpfLog); `None` without loaded programs (unit tests).
    ebpf_log: Option<crate::ebpf_log::EbpfLogSwitch>,
    /// One permit per open WatchEvents stream.
    streams: Arc<Semaphore>,
    max_streams: usize,
    /// Cancelled when faultd shuts down: event streams end.
    shutdown: CancellationToken,
    /// Wakes the expiry task when a fault with a TTL is added.
    expiry: Arc<Notify>,
    /// Changes take turns here before they take a blocking thread (see `change`).
    changes: Arc<tokio::sync::Mutex<()>>,
    /// Locked after the engine, never before: adding a fault to a session and ending that
    /// session then cannot interleave.
    sessions: Arc<Mutex<Sessions>>,
    /// Set when faultd stops: open session streams end, so a graceful shutdown can finish.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl FaultApi {
    /// Also starts the task that expires faults (so: call it within a tokio runtime).
    pub fn new(engine: Engine, events: Arc<EventHub>) -> Self {
        let api = Self {
            engine: Arc::new(Mutex::new(engine)),
            events,
            streams: Arc::new(Semaphore::new(DEFAULT_MAX_STREAMS)),
            max_streams: DEFAULT_MAX_STREAMS,
            shutdown: CancellationToken::new(),
            expiry: Arc::new(Notify::new()),
            changes: Arc::default(),
            sessions: Arc::default(),
            stopping: Arc::new(tokio::sync::watch::channel(false).0),
            ebpf_log: None,
        };
        tokio::spawn(expire_faults(
            Arc::downgrade(&api.engine),
            api.expiry.clone(),
            api.shutdown.clone(),
        ));
        api
    }

    /// At most `max` event streams open at once (`faultd --max-streams`).
    pub fn with_max_streams(mut self, max: usize) -> Self {
        self.streams = Arc::new(Semaphore::new(max));
        self.max_streams = max;
        self
    }

    /// Ends every event stream, removes every fault and detaches the programs; the API
    /// answers UNAVAILABLE afterwards. Returns how many faults were removed.
    pub fn shut_down(&self) -> Result<usize, FaultError> {
        self.shutdown.cancel();
        self.end_sessions();
        self.engine().shut_down()
    }

    /// Lets SetEbpfLog change the programs' log level through `switch`.
    pub fn with_ebpf_log(mut self, switch: crate::ebpf_log::EbpfLogSwitch) -> Self {
        self.ebpf_log = Some(switch);
        self
    }

    fn engine(&self) -> MutexGuard<'_, Engine> {
        // A panic while holding the lock cannot leave the table half-changed (every change
        // is applied after its map writes succeed), so a poisoned lock is still usable.
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a change of the engine on a blocking thread, not on the async runtime's workers:
    /// a change may add or remove qdiscs through netlink (fq for a delay) while it holds
    /// the engine's lock. Changes wait for their turn without a thread, so that many
    /// concurrent calls do not each hold a blocking thread waiting for the lock.
    async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&FaultApi) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let _turn = self.changes.lock().await;
        let api = self.clone();
        tokio::task::spawn_blocking(move || change(&api))
            .await
            .map_err(|e| Status::internal(format!("changing the faults: {e}")))
    }

    /// What this kernel and these attachments support; also logged at start-up.
    pub fn capabilities(&self) -> proto::Capabilities {
        let engine = self.engine();
        let mut caps = capabilities::report(&engine.attachments);
        caps.maps = engine
            .sink
            .map_usage()
            .into_iter()
            .map(|m| proto::MapUsage {
                name: m.name,
                r#type: m.kind,
                max_entries: m.max_entries,
                bytes: m.bytes,
            })
            .collect();
        caps
    }

    /// The limits' flow table (GetStats and the metrics); `None` without programs.
    pub fn flow_stats(&self) -> Option<crate::datapath::FlowTable> {
        self.engine().sink.flow_stats()
    }

    /// Ends every open session stream (and so its session): faultd is stopping.
    pub fn end_sessions(&self) {
        self.stopping.send_replace(true);
    }

    fn sessions(&self) -> MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every active fault with its counters, read from the per-CPU maps now (GetStats and
    /// the metrics endpoint).
    pub fn counters(&self) -> Result<Vec<(Fault, FaultCounters)>, FaultError> {
        let engine = self.engine();
        engine
            .table
            .iter()
            .map(|fault| Ok((fault.clone(), engine.sink.read_counters(fault.counter)?)))
            .collect()
    }

    /// Events received from the kernel and lost on their way (GetStats and the metrics).
    pub fn event_stats(&self) -> crate::events::EventStats {
        self.events.stats()
    }

    /// Faults added and removed since start.
    pub fn rule_updates(&self) -> RuleUpdates {
        self.engine().updates
    }

    /// Installs a validated fault for `owner`: AddFault, and the configuration file's
    /// faults at start. A fault that reports connection attempts on a port that had none
    /// starts that port's attempt history afresh (what `faultctl backoff` judges).
    pub fn add(&self, spec: FaultSpec, owner: Owner) -> Result<Fault, FaultError> {
        self.add_in_session(spec, owner, 0)
    }

    /// [`FaultApi::add`], bound to session `session_id` unless 0; the session is checked
    /// and the fault bound under the engine's lock, so a session ending meanwhile takes it
    /// too.
    fn add_in_session(
        &self,
        spec: FaultSpec,
        owner: Owner,
        session_id: u64,
    ) -> Result<Fault, FaultError> {
        let mut engine = self.engine();
        let session = self.sessions().bind(session_id)?;
        let port = spec.target.port;
        let first_to_report_syns = spec.action.on_syns()
            && spec.target.protocol.covers_tcp()
            && !engine.table.reports_syns(port);
        // Events numbered from here on may come from the new fault.
        let next_seq = self.events.next_seq();
        let mut fault = engine.add(spec, owner)?;
        if let Some(session) = session {
            engine.table.bind_session(fault.id, session);
            fault.session = Some(session);
        }
        info!(
            id = fault.id,
            action = fault.spec.action.name(),
            port = fault.spec.target.port,
            owner = %fault.owner,
            session = fault.session.unwrap_or(0),
            "fault added"
        );
        if first_to_report_syns {
            self.events.restart_syns(port, next_seq - 1);
        }
        if fault.expires.is_some() {
            self.expiry.notify_one();
        }
        Ok(fault)
    }

    fn stream_permit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} event streams are open, this faultd's limit (faultd --max-streams)",
                self.max_streams
            ))
        })
    }

    /// Ends a session when its stream is dropped: from now on no fault can join it, and its
    /// faults are removed like every other change, on a blocking thread (map writes and
    /// netlink may block, under the engine's lock), not on the async worker that dropped
    /// the stream. Without a runtime (faultd stopping) they are removed here.
    fn end_session(&self, id: u64) {
        // Closed before the engine is locked: an add binding to the session meanwhile holds
        // the engine's lock, so its fault is in the table when the removal below looks.
        let Some(session) = self.sessions().close(id) else {
            return;
        };
        let remove = move |api: &FaultApi| api.remove_session_faults(id, session);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let api = self.clone();
                runtime.spawn(async move {
                    if let Err(e) = api.change(remove).await {
                        warn!(
                            session = id,
                            "session ended; removing its faults failed: {e}"
                        );
                    }
                });
            }
            Err(_) => remove(self),
        }
    }

    fn remove_session_faults(&self, id: u64, session: crate::sessions::SessionInfo) {
        let mut engine = self.engine();
        let ids = engine.table.session_faults(id);
        for fault in &ids {
            match engine.remove(*fault) {
                Ok(f) => {
                    info!(id = f.id, session = id, owner = %f.owner, "fault removed (session ended)")
                }
                Err(e) => warn!(
                    id = fault,
                    session = id,
                    "session ended; removing fault failed: {e}"
                ),
            }
        }
        info!(
            session = id,
            name = %session.name,
            owner = %session.owner,
            removed = ids.len(),
            "session ended"
        );
    }
}

/// First wait before retrying the removal of an expired fault, and the longest.
const EXPIRY_RETRY_FIRST: Duration = Duration::from_millis(500);
const EXPIRY_RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest sleep between looks at the table: wall-clock jumps are noticed within it.
const EXPIRY_MAX_SLEEP: Duration = Duration::from_secs(10);

/// Removes faults whose TTL ran out. One task for every fault: it sleeps until the next
/// expiry in the table, so a fault removed by hand leaves no timer behind. A removal that
/// fails is logged, the fault stays listed (and acting), and the removal is retried with
/// a growing wait. Ends with the engine or on shutdown.
async fn expire_faults(
    engine: Weak<Mutex<Engine>>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    // Faults whose removal failed: when to try again, and the wait after that.
    let mut retry: HashMap<u64, (Instant, Duration)> = HashMap::new();
    loop {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        // A removal may restore a qdisc through netlink: off the async workers.
        let looked = tokio::task::spawn_blocking(move || {
            let mut engine = engine.lock().unwrap_or_else(|p| p.into_inner());
            expire_due(&mut engine, &mut retry);
            let wait = next_expiry_wait(&engine, &retry);
            (retry, wait)
        })
        .await;
        let Ok((kept, wait)) = looked else {
            return;
        };
        retry = kept;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn expire_due(engine: &mut Engine, retry: &mut HashMap<u64, (Instant, Duration)>) {
    let now = Instant::now();
    for id in engine.table.expired(SystemTime::now()) {
        let wait = match retry.get(&id) {
            Some((at, _)) if *at > now => continue,
            Some((_, wait)) => *wait,
            None => EXPIRY_RETRY_FIRST,
        };
        match engine.remove(id) {
            Ok(_) => {
                info!(id, "fault expired");
                retry.remove(&id);
            }
            Err(FaultError::NotFound(_)) => {}
            Err(e) => {
                warn!(
                    id,
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "could not remove an expired fault: it stays listed and in force; retrying"
                );
                retry.insert(id, (now + wait, (wait * 2).min(EXPIRY_RETRY_MAX)));
            }
        }
    }
    retry.retain(|id, _| engine.table.get(*id).is_some());
}

/// How long until the next expiry or retry is due.
fn next_expiry_wait(engine: &Engine, retry: &HashMap<u64, (Instant, Duration)>) -> Duration {
    let now = SystemTime::now();
    let expiry = engine
        .table
        .iter()
        .filter(|f| !retry.contains_key(&f.id))
        .filter_map(|f| f.expires)
        .min()
        .map(|at| at.duration_since(now).unwrap_or(Duration::ZERO));
    let retry = retry
        .values()
        .map(|(at, _)| at.saturating_duration_since(Instant::now()))
        .min();
    expiry
        .into_iter()
        .chain(retry)
        .min()
        .unwrap_or(EXPIRY_MAX_SLEEP)
        .min(EXPIRY_MAX_SLEEP)
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;
type SessionEvents = Pin<Box<dyn Stream<Item = Result<proto::SessionEvent, Status>> + Send>>;

/// A subscription as a gRPC stream: it ends with UNAVAILABLE when faultd shuts down, and
/// holds its stream permit while it lives.
fn event_stream(
    sub: Subscription,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) -> EventStream {
    let state = Some((sub, shutdown, permit));
    Box::pin(futures_util::stream::unfold(state, |state| async move {
        let (mut sub, shutdown, permit) = state?;
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                Some((Err(Status::unavailable("faultd is shutting down")), None))
            }
            event = sub.next() => {
                event.map(|e| (Ok(e), Some((sub, shutdown, permit))))
            }
        }
    }))
}

#[tonic::async_trait]
impl FaultService for FaultApi {
    type WatchEventsStream = EventStream;
    type OpenSessionStream = SessionEvents;

    async fn open_session(
        &self,
        request: Request<proto::OpenSessionRequest>,
    ) -> Result<Response<SessionEvents>, Status> {
        let owner = full_owner_of(&request).await;
        let name = request.into_inner().name;
        let session_id = self.sessions().open(name.clone(), owner.clone());
        info!(session = session_id, name = %name, owner = %owner, "session opened");
        let api = self.clone();
        let guard = OnDrop::new(move || api.end_session(session_id));
        let first = Ok(proto::SessionEvent { session_id });
        let mut stopping = self.stopping.subscribe();
        let ended = async move {
            let _ = stopping.wait_for(|s| *s).await;
        };
        Ok(Response::new(Box::pin(SessionStream::new(
            first, ended, guard,
        ))))
    }

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let proto::WatchEventsRequest {
            follow,
            fault_id,
            syn_port,
        } = request.into_inner();
        if syn_port != 0 {
            let port = validate_port(syn_port, "syn_port").map_err(status)?;
            if follow {
                return Err(status(FaultError::invalid(
                    "follow",
                    "not with syn_port: the attempt history is read once",
                )));
            }
            let permit = self.stream_permit()?;
            let attempts = self.events.syn_history(port);
            return Ok(Response::new(Box::pin(tokio_stream::iter(
                attempts.into_iter().map(move |e| {
                    let _held = &permit;
                    Ok(e)
                }),
            ))));
        }
        let permit = self.stream_permit()?;
        let sub = self.events.subscribe(Filter { fault_id }, follow);
        Ok(Response::new(event_stream(
            sub,
            self.shutdown.clone(),
            permit,
        )))
    }

    async fn get_capabilities(
        &self,
        _: Request<proto::GetCapabilitiesRequest>,
    ) -> Result<Response<proto::Capabilities>, Status> {
        let api = self.clone();
        // The fq probe goes to the kernel through netlink: keep it off the async threads.
        let caps = tokio::task::spawn_blocking(move || api.capabilities())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(caps))
    }

    async fn set_ebpf_log(
        &self,
        request: Request<proto::SetEbpfLogRequest>,
    ) -> Result<Response<proto::SetEbpfLogResponse>, Status> {
        let by = owner_of(&request);
        let level = crate::ebpf_log::EbpfLogLevel::from_proto(request.into_inner().level)
            .ok_or_else(|| {
                Status::invalid_argument("level: required, one of off, error, warn, info, debug")
            })?;
        let switch = self
            .ebpf_log
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("no eBPF programs are loaded"))?;
        let previous = switch
            .set(level)
            .map_err(|e| Status::internal(format!("writing map LOG_LEVEL: {e}")))?;
        info!(level = level.name(), by = %by, "eBPF log level set");
        Ok(Response::new(proto::SetEbpfLogResponse {
            previous: previous.to_proto() as i32,
        }))
    }

    async fn add_fault(
        &self,
        request: Request<proto::AddFaultRequest>,
    ) -> Result<Response<proto::Fault>, Status> {
        let owner = full_owner_of(&request).await;
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| FaultError::invalid("spec", "required"))
            .and_then(spec_from_proto)
            .map_err(status)?;
        let session_id = request.session_id;
        let fault = self
            .change(move |api| api.add_in_session(spec, owner, session_id))
            .await?
            .map_err(status)?;
        Ok(Response::new(fault_to_proto(&fault)))
    }

    async fn remove_fault(
        &self,
        request: Request<proto::RemoveFaultRequest>,
    ) -> Result<Response<proto::RemoveFaultResponse>, Status> {
        let by = owner_of(&request);
        let id = request.into_inner().id;
        let fault = self
            .change(move |api| api.engine().remove(id))
            .await?
            .map_err(status)?;
        info!(id = fault.id, owner = %fault.owner, by = %by, "fault removed");
        Ok(Response::new(proto::RemoveFaultResponse {
            removed: Some(fault_to_proto(&fault)),
        }))
    }

    async fn list_faults(
        &self,
        _: Request<proto::ListFaultsRequest>,
    ) -> Result<Response<proto::ListFaultsResponse>, Status> {
        let faults = self.engine().table.iter().map(fault_to_proto).collect();
        Ok(Response::new(proto::ListFaultsResponse { faults }))
    }

    async fn clear_faults(
        &self,
        request: Request<proto::ClearFaultsRequest>,
    ) -> Result<Response<proto::ClearFaultsResponse>, Status> {
        let by = owner_of(&request);
        let selector = selector_from_proto(request.into_inner(), &by).map_err(status)?;
        let removed = self
            .change(move |api| api.engine().clear_matching(&selector))
            .await?
            .map_err(status)?;
        for fault in &removed {
            info!(id = fault.id, owner = %fault.owner, by = %by, "fault removed (clear)");
        }
        info!(removed = removed.len(), by = %by, "faults cleared");
        Ok(Response::new(proto::ClearFaultsResponse {
            removed: removed.len() as u32,
        }))
    }

    async fn get_stats(
        &self,
        _: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        let faults = self
            .counters()
            .map_err(status)?
            .iter()
            .map(|(fault, c)| proto::FaultStats {
                fault: Some(fault_to_proto(fault)),
                counters: Some(proto::Counters {
                    matched_packets: c.matched_packets,
                    matched_bytes: c.matched_bytes,
                    acted_packets: c.acted_packets,
                    acted_bytes: c.acted_bytes,
                }),
            })
            .collect();
        let engine = self.engine();
        let attachments = engine
            .attachments
            .iter()
            .map(|a| proto::Attachment {
                interface: a.iface.clone(),
                xdp_mode: a.xdp_mode.into(),
                tc_mode: a.tc_mode.into(),
            })
            .collect();
        drop(engine);
        let flows = self.flow_stats().map(|f| proto::FlowStats {
            max_entries: f.max_entries,
            entries: f.entries as u64,
            untracked: f.full,
        });
        let e = self.event_stats();
        Ok(Response::new(proto::GetStatsResponse {
            flows,
            faults,
            attachments,
            events: Some(proto::EventStats {
                received: e.received,
                lost_in_kernel: e.lost_in_kernel,
                lost_to_slow_subscribers: e.lost_to_slow_subscribers,
            }),
        }))
    }
}

/// Who sent a request, as the access gate identified the connection.
fn owner_of<T>(request: &Request<T>) -> Owner {
    request
        .extensions()
        .get::<Caller>()
        .map(Caller::owner)
        .unwrap_or_default()
}

/// The owner recorded for a fault a request adds: with the calling process, looked up now
/// (off the async threads) if the connection was admitted by its uid alone.
async fn full_owner_of<T>(request: &Request<T>) -> Owner {
    match request.extensions().get::<Caller>() {
        Some(caller) => caller.clone().with_process().await.owner(),
        None => Owner::default(),
    }
}

/// Which faults a `ClearFaults` removes; `mine` is the caller's uid.
fn selector_from_proto(
    request: proto::ClearFaultsRequest,
    caller: &Owner,
) -> Result<Selector, FaultError> {
    let mine = match (request.mine, caller.uid) {
        (false, _) => None,
        (true, Some(uid)) => Some(uid),
        (true, None) => {
            return Err(FaultError::invalid(
                "mine",
                "faultd knows no uid of this caller (a remote one): select by label or owner_uid",
            ));
        }
    };
    let owner_uid = match (mine, request.owner_uid) {
        (Some(a), Some(b)) if a != b => {
            return Err(FaultError::invalid(
                "owner_uid",
                format!("{b} contradicts mine (uid {a}); give one of them"),
            ));
        }
        (a, b) => a.or(b),
    };
    Ok(Selector {
        label: request.label,
        owner_uid,
    })
}

fn status(e: FaultError) -> Status {
    match in_wire_terms(e) {
        e @ FaultError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        e @ FaultError::NotFound(_) => Status::not_found(e.to_string()),
        e @ FaultError::Refused(_) => Status::failed_precondition(e.to_string()),
        e @ FaultError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
        e @ FaultError::Datapath(_) => Status::internal(e.to_string()),
        e @ FaultError::ShuttingDown => Status::unavailable(e.to_string()),
    }
}

/// The one place where the domain's field names become the request's: the domain holds
/// probabilities, durations and bytes per second, the wire percentages, counts of ms or
/// µs and bits per second. Names the two share, and names of request fields only (e.g.
/// `syn_port`), pass unchanged.
fn wire_field(domain: &str) -> &str {
    match domain {
        "ttl" => "ttl_ms",
        "action.loss.probability" => "action.loss.percent",
        "action.corrupt.probability" => "action.corrupt.percent",
        "action.corrupt.byte_probability" => "action.corrupt.byte_percent",
        "action.slice.delay" => "action.slice.delay_us",
        "action.duplicate.probability" => "action.duplicate.percent",
        "action.delay.latency" => "action.delay.latency_us",
        "action.delay.jitter" => "action.delay.jitter_us",
        "action.limit_age.after" => "action.limit_age.after_ms",
        "action.rate.bytes_per_sec" => "action.rate.bits_per_second",
        same => same,
    }
}

/// `e` with the field of an invalid request named as the request spells it.
pub fn in_wire_terms(e: FaultError) -> FaultError {
    match e {
        FaultError::Invalid { field, reason } => FaultError::Invalid {
            field: wire_field(&field).to_string(),
            reason,
        },
        other => other,
    }
}

/// Converts a request and validates it in the domain model; errors name the field as the
/// request spells it.
pub fn spec_from_proto(spec: proto::FaultSpec) -> Result<FaultSpec, FaultError> {
    let spec = decode_spec(spec).map_err(in_wire_terms)?;
    spec.validate().map_err(in_wire_terms)?;
    Ok(spec)
}

/// Decodes the wire: required messages present, enum numbers known. Every value's range is
/// the domain model's to check.
fn decode_spec(spec: proto::FaultSpec) -> Result<FaultSpec, FaultError> {
    let t = spec
        .target
        .ok_or_else(|| FaultError::invalid("target", "required"))?;
    let is_partition = !t.between.is_empty() || !t.and_peers.is_empty();
    let protocol = match proto::Protocol::try_from(t.protocol) {
        // A partition cuts whatever flows between its address sets.
        Ok(proto::Protocol::Unspecified) if is_partition => Protocol::Any,
        Ok(proto::Protocol::Unspecified | proto::Protocol::Tcp) => Protocol::Tcp,
        Ok(proto::Protocol::Udp) => Protocol::Udp,
        Ok(proto::Protocol::Any) => Protocol::Any,
        Err(_) => {
            return Err(FaultError::invalid(
                "target.protocol",
                format!("{} is not a protocol (tcp, udp, any)", t.protocol),
            ));
        }
    };
    let direction = match proto::Direction::try_from(t.direction) {
        Ok(proto::Direction::Unspecified | proto::Direction::Both) => Direction::Both,
        Ok(proto::Direction::ToPort) => Direction::ToPort,
        Ok(proto::Direction::FromPort) => Direction::FromPort,
        Err(_) => {
            return Err(FaultError::invalid(
                "target.direction",
                format!(
                    "{} is not a direction (both, to-port, from-port)",
                    t.direction
                ),
            ));
        }
    };
    let peer = match t.peer.trim() {
        "" => None,
        text => Some(Peer::parse(text, "target.peer")?),
    };
    let port = |n: u32, field: &str| match n {
        0 => Ok(None),
        n => validate_port(n, field).map(Some),
    };
    let partition = if is_partition {
        Some(std::sync::Arc::new(crate::partitions::Partition::parse(
            &t.between,
            &t.and_peers,
            t.one_way,
        )?))
    } else {
        None
    };
    let target = Target {
        port: if is_partition {
            port(t.port, "target.port")?.unwrap_or(0)
        } else {
            validate_port(t.port, "target.port")?
        },
        protocol,
        direction,
        peer,
        last_port: port(t.port_end, "target.port_end")?,
        remote_port: port(t.remote_port, "target.remote_port")?,
        partition,
    };
    if t.one_way && !is_partition {
        return Err(FaultError::invalid(
            "target.one_way",
            "only a partition (between/and_peers) is one-way",
        ));
    }
    let kind = spec.action.and_then(|a| a.kind).ok_or_else(|| {
        FaultError::invalid(
            "action",
            "required: one of drop, reset, refuse, limit_bytes, limit_age, record, loss, \
             delay, rate, corrupt, duplicate, stall, slice",
        )
    })?;
    Ok(FaultSpec {
        target,
        action: action_from_proto(kind, protocol)?,
        ttl: spec.ttl_ms.map(Duration::from_millis),
        label: spec.label.into(),
    })
}

fn action_from_proto(kind: proto::action::Kind, protocol: Protocol) -> Result<Action, FaultError> {
    use proto::action::Kind;
    let then = |t: i32, field: &str| match proto::Then::try_from(t) {
        Ok(proto::Then::Unspecified) if protocol == Protocol::Tcp => Ok(Then::Reset),
        Ok(proto::Then::Unspecified | proto::Then::Drop) => Ok(Then::Drop),
        Ok(proto::Then::Reset) => Ok(Then::Reset),
        Err(_) => Err(FaultError::invalid(
            field,
            format!("{t} is not drop or reset"),
        )),
    };
    Ok(match kind {
        Kind::Drop(d) => Action::Drop {
            probability: d.probability.unwrap_or(1.0),
        },
        Kind::Reset(r) => Action::Reset {
            probability: r.probability.unwrap_or(1.0),
        },
        Kind::Refuse(r) => Action::Refuse {
            mode: match proto::RefuseMode::try_from(r.mode) {
                Ok(proto::RefuseMode::Unspecified | proto::RefuseMode::Rst) => RefuseMode::Rst,
                Ok(proto::RefuseMode::Drop) => RefuseMode::Drop,
                Err(_) => {
                    return Err(FaultError::invalid(
                        "action.refuse.mode",
                        format!("{} is not rst or drop", r.mode),
                    ));
                }
            },
        },
        Kind::LimitBytes(l) => {
            Action::limit_bytes(l.bytes, then(l.then, "action.limit_bytes.then")?)?
        }
        Kind::LimitAge(l) => {
            Action::limit_age_ms(l.after_ms, then(l.then, "action.limit_age.then")?)?
        }
        Kind::Record(_) => Action::Record,
        // The wire's percentages are the domain's probabilities; their range is checked there.
        Kind::Loss(l) => Action::Loss {
            probability: l.percent / 100.0,
        },
        Kind::Corrupt(proto::Corrupt {
            percent,
            byte_percent: Some(bytes),
        }) => Action::CorruptBytes {
            probability: percent / 100.0,
            byte_probability: bytes / 100.0,
        },
        Kind::Corrupt(c) => Action::Corrupt {
            probability: c.percent / 100.0,
        },
        Kind::Slice(s) => Action::slice(s.bytes, s.delay_us)?,
        Kind::Duplicate(d) => Action::Duplicate {
            probability: d.percent / 100.0,
        },
        Kind::Delay(d) => Action::delay_us(d.latency_us, d.jitter_us)?,
        // The engine chooses the mode, from what the kernel offers.
        Kind::Rate(r) => Action::rate_bits(r.bits_per_second)?,
        Kind::Stall(_) => Action::Stall,
    })
}

fn action_to_proto(action: &Action) -> proto::action::Kind {
    use proto::action::Kind;
    let partial = |p: f64| (p < 1.0).then_some(p);
    let then = |t: &Then| match t {
        Then::Drop => proto::Then::Drop,
        Then::Reset => proto::Then::Reset,
    } as i32;
    match action {
        Action::Drop { probability } => Kind::Drop(proto::Drop {
            probability: partial(*probability),
        }),
        Action::Reset { probability } => Kind::Reset(proto::Reset {
            probability: partial(*probability),
        }),
        Action::Refuse { mode } => Kind::Refuse(proto::Refuse {
            mode: match mode {
                RefuseMode::Rst => proto::RefuseMode::Rst,
                RefuseMode::Drop => proto::RefuseMode::Drop,
            } as i32,
        }),
        Action::LimitBytes { bytes, then: t } => Kind::LimitBytes(proto::LimitBytes {
            bytes: *bytes as i64,
            then: then(t),
        }),
        Action::LimitAge { after, then: t } => Kind::LimitAge(proto::LimitAge {
            after_ms: after.as_millis() as i64,
            then: then(t),
        }),
        Action::Record => Kind::Record(proto::Record {}),
        Action::Loss { probability } => Kind::Loss(proto::Loss {
            percent: probability * 100.0,
        }),
        Action::Corrupt { probability } => Kind::Corrupt(proto::Corrupt {
            percent: probability * 100.0,
            byte_percent: None,
        }),
        Action::CorruptBytes {
            probability,
            byte_probability,
        } => Kind::Corrupt(proto::Corrupt {
            percent: probability * 100.0,
            byte_percent: Some(byte_probability * 100.0),
        }),
        Action::Slice { bytes, spacing } => Kind::Slice(proto::Slice {
            bytes: (*bytes).into(),
            delay_us: spacing.as_micros() as i64,
        }),
        Action::Duplicate { probability } => Kind::Duplicate(proto::Duplicate {
            percent: probability * 100.0,
        }),
        Action::Delay { latency, jitter } => Kind::Delay(proto::Delay {
            latency_us: latency.as_micros() as i64,
            jitter_us: jitter.as_micros() as i64,
        }),
        Action::Rate {
            bytes_per_sec,
            mode,
        } => Kind::Rate(proto::Rate {
            bits_per_second: (*bytes_per_sec * 8) as i64,
            mode: mode.to_string(),
        }),
        Action::Stall => Kind::Stall(proto::Stall {}),
    }
}

pub fn fault_to_proto(fault: &Fault) -> proto::Fault {
    let t = &fault.spec.target;
    let action = action_to_proto(&fault.spec.action);
    proto::Fault {
        id: fault.id,
        spec: Some(proto::FaultSpec {
            target: Some(proto::Target {
                port: t.port.into(),
                protocol: match t.protocol {
                    Protocol::Tcp => proto::Protocol::Tcp,
                    Protocol::Udp => proto::Protocol::Udp,
                    Protocol::Any => proto::Protocol::Any,
                } as i32,
                direction: match t.direction {
                    Direction::Both => proto::Direction::Both,
                    Direction::ToPort => proto::Direction::ToPort,
                    Direction::FromPort => proto::Direction::FromPort,
                } as i32,
                peer: t.peer.map(|p| p.to_string()).unwrap_or_default(),
                port_end: t.last_port.map_or(0, u32::from),
                remote_port: t.remote_port.map_or(0, u32::from),
                between: t.partition.as_ref().map_or_else(Vec::new, |p| {
                    p.between.iter().map(|a| a.to_string()).collect()
                }),
                and_peers: t
                    .partition
                    .as_ref()
                    .map_or_else(Vec::new, |p| p.and.iter().map(|a| a.to_string()).collect()),
                one_way: t.partition.as_ref().is_some_and(|p| p.one_way),
            }),
            action: Some(proto::Action { kind: Some(action) }),
            ttl_ms: fault.spec.ttl.map(|d| d.as_millis() as u64),
            label: fault.spec.label.to_string(),
        }),
        created_unix_ms: unix_ms(fault.created),
        expires_unix_ms: fault.expires.map_or(0, unix_ms),
        owner: Some(proto::Owner {
            uid: fault.owner.uid,
            pid: fault.owner.pid.unwrap_or(0),
            command: fault.owner.command.clone(),
            remote: fault.owner.remote.clone(),
        }),
        session_id: fault.session.unwrap_or(0),
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::tests::MemorySink;
    use std::time::Instant;
    use tokio_stream::StreamExt as _;

    fn request(port: u32) -> proto::FaultSpec {
        proto::FaultSpec {
            target: Some(proto::Target {
                port,
                ..Default::default()
            }),
            action: Some(proto::Action {
                kind: Some(proto::action::Kind::Drop(proto::Drop { probability: None })),
            }),
            ttl_ms: None,
            label: "x".into(),
        }
    }

    fn field_of(spec: proto::FaultSpec) -> String {
        match spec_from_proto(spec).unwrap_err() {
            FaultError::Invalid { field, .. } => field,
            other => panic!("not an Invalid error: {other}"),
        }
    }

    #[test]
    fn bad_requests_name_the_field() {
        assert_eq!(field_of(request(0)), "target.port");
        assert_eq!(field_of(request(70000)), "target.port");
        let mut r = request(80);
        r.target.as_mut().unwrap().protocol = 9;
        assert_eq!(field_of(r), "target.protocol");
        let mut r = request(80);
        r.target.as_mut().unwrap().direction = 9;
        assert_eq!(field_of(r), "target.direction");
        let mut r = request(80);
        r.target.as_mut().unwrap().peer = "banana".into();
        assert_eq!(field_of(r), "target.peer");
        let mut r = request(80);
        r.action = Some(proto::Action {
            kind: Some(proto::action::Kind::Drop(proto::Drop {
                probability: Some(1.5),
            })),
        });
        assert_eq!(field_of(r), "action.drop.probability");
        let mut r = request(80);
        r.action = None;
        assert_eq!(field_of(r), "action");
        let mut r = request(80);
        r.ttl_ms = Some(0);
        assert_eq!(field_of(r), "ttl_ms");
        let with = |kind: proto::action::Kind| {
            let mut r = request(80);
            r.action = Some(proto::Action { kind: Some(kind) });
            r
        };
        use proto::action::Kind;
        let bytes = Kind::LimitBytes(proto::LimitBytes { bytes: -1, then: 0 });
        assert_eq!(field_of(with(bytes)), "action.limit_bytes.bytes");
        let age = Kind::LimitAge(proto::LimitAge {
            after_ms: 0,
            then: 0,
        });
        assert_eq!(field_of(with(age)), "action.limit_age.after_ms");
        let mode = Kind::Refuse(proto::Refuse { mode: 7 });
        assert_eq!(field_of(with(mode)), "action.refuse.mode");
        let mut udp_reset = with(Kind::Reset(proto::Reset { probability: None }));
        udp_reset.target.as_mut().unwrap().protocol = proto::Protocol::Udp as i32;
        assert_eq!(field_of(udp_reset), "target.protocol");

        let delay = |latency_us, jitter_us| {
            with(Kind::Delay(proto::Delay {
                latency_us,
                jitter_us,
            }))
        };
        assert_eq!(field_of(delay(-1000, 0)), "action.delay.latency_us");
        assert_eq!(field_of(delay(0, 0)), "action.delay.latency_us");
        assert_eq!(field_of(delay(1000, -1)), "action.delay.jitter_us");
        assert_eq!(field_of(delay(1000, 2000)), "action.delay.jitter_us");
        assert_eq!(
            field_of(delay(9_000_000, 1_500_000)),
            "action.delay.latency_us"
        );
        assert_eq!(
            field_of(with(Kind::Loss(proto::Loss { percent: 101.0 }))),
            "action.loss.percent"
        );
        assert_eq!(
            field_of(with(Kind::Loss(proto::Loss { percent: 0.0 }))),
            "action.loss.percent"
        );
        assert_eq!(
            field_of(with(Kind::Corrupt(proto::Corrupt {
                percent: f64::NAN,
                byte_percent: None,
            }))),
            "action.corrupt.percent"
        );
        assert_eq!(
            field_of(with(Kind::Duplicate(proto::Duplicate { percent: -1.0 }))),
            "action.duplicate.percent"
        );
        for bits in [0, -8] {
            let rate = Kind::Rate(proto::Rate {
                bits_per_second: bits,
                mode: String::new(),
            });
            assert_eq!(field_of(with(rate)), "action.rate.bits_per_second");
        }
        let mut udp_stall = with(Kind::Stall(proto::Stall {}));
        udp_stall.target.as_mut().unwrap().protocol = proto::Protocol::Udp as i32;
        assert_eq!(field_of(udp_stall), "target.protocol");
        let slice = |bytes, delay_us| with(Kind::Slice(proto::Slice { bytes, delay_us }));
        assert_eq!(field_of(slice(47, 0)), "action.slice.bytes");
        assert_eq!(field_of(slice(-1, 0)), "action.slice.bytes");
        assert_eq!(field_of(slice(1 << 40, 0)), "action.slice.bytes");
        assert_eq!(field_of(slice(100, -1)), "action.slice.delay_us");
        assert_eq!(field_of(slice(100, 10_000_001)), "action.slice.delay_us");
        let mut udp_slice = slice(100, 0);
        udp_slice.target.as_mut().unwrap().protocol = proto::Protocol::Udp as i32;
        assert_eq!(field_of(udp_slice), "target.protocol");
        for byte_percent in [0.0, 1e-5, 100.5, f64::NAN] {
            let corrupt = with(Kind::Corrupt(proto::Corrupt {
                percent: 100.0,
                byte_percent: Some(byte_percent),
            }));
            assert_eq!(field_of(corrupt), "action.corrupt.byte_percent");
        }
    }

    #[test]
    fn degradations_round_trip_through_the_proto() {
        use proto::action::Kind;
        for kind in [
            Kind::Loss(proto::Loss { percent: 30.0 }),
            Kind::Corrupt(proto::Corrupt {
                percent: 5.0,
                byte_percent: None,
            }),
            Kind::Duplicate(proto::Duplicate { percent: 100.0 }),
            Kind::Delay(proto::Delay {
                latency_us: 200_000,
                jitter_us: 50_000,
            }),
            Kind::Stall(proto::Stall {}),
            Kind::Corrupt(proto::Corrupt {
                percent: 50.0,
                byte_percent: Some(1.0),
            }),
            Kind::Slice(proto::Slice {
                bytes: 100,
                delay_us: 20_000,
            }),
        ] {
            let mut r = request(80);
            r.action = Some(proto::Action {
                kind: Some(kind.clone()),
            });
            let spec = spec_from_proto(r).unwrap();
            assert_eq!(action_to_proto(&spec.action), kind);
        }
        let mut r = request(80);
        r.action = Some(proto::Action {
            kind: Some(Kind::Rate(proto::Rate {
                bits_per_second: 1_000_000,
                mode: "ignored".into(),
            })),
        });
        let spec = spec_from_proto(r).unwrap();
        assert_eq!(
            spec.action,
            Action::Rate {
                bytes_per_sec: 125_000,
                mode: RateMode::Police
            }
        );
    }

    #[test]
    fn limits_default_to_reset_for_tcp_and_drop_for_udp() {
        let kind = || proto::action::Kind::LimitBytes(proto::LimitBytes { bytes: 10, then: 0 });
        assert_eq!(
            action_from_proto(kind(), Protocol::Tcp).unwrap(),
            Action::LimitBytes {
                bytes: 10,
                then: Then::Reset
            }
        );
        assert_eq!(
            action_from_proto(kind(), Protocol::Udp).unwrap(),
            Action::LimitBytes {
                bytes: 10,
                then: Then::Drop
            }
        );
    }

    #[test]
    fn a_fault_round_trips_through_the_proto() {
        let mut r = request(2379);
        r.target.as_mut().unwrap().peer = "198.18.0.0/15".into();
        r.target.as_mut().unwrap().direction = proto::Direction::FromPort as i32;
        r.ttl_ms = Some(30_000);
        let spec = spec_from_proto(r).unwrap();
        let mut table = FaultTable::default();
        let fault = table
            .add(spec.clone(), SystemTime::now(), &mut MemorySink::default())
            .unwrap();
        let back = spec_from_proto(fault_to_proto(&fault).spec.unwrap()).unwrap();
        assert_eq!(back, spec);
    }

    fn api() -> FaultApi {
        FaultApi::new(
            Engine::new(
                FaultTable::default(),
                Box::new(MemorySink::default()),
                vec![],
            ),
            Arc::default(),
        )
    }

    fn as_caller<T>(message: T, uid: u32) -> Request<T> {
        let mut request = Request::new(message);
        request
            .extensions_mut()
            .insert(Caller::Local(crate::access::LocalCaller {
                uid,
                gids: vec![uid],
                pid: Some(77),
                command: "faultctl".into(),
                via: "unix socket".into(),
                socket_inode: None,
                found: Default::default(),
            }));
        request
    }

    #[tokio::test]
    async fn faults_carry_their_owner_and_clear_mine_takes_only_the_callers() {
        let api = api();
        for (uid, label) in [(0, "a"), (1001, "a"), (1001, "b")] {
            let mut spec = request(5000);
            spec.label = label.into();
            let fault = api
                .add_fault(as_caller(
                    proto::AddFaultRequest {
                        spec: Some(spec),
                        session_id: 0,
                    },
                    uid,
                ))
                .await
                .unwrap()
                .into_inner();
            let owner = fault.owner.unwrap();
            assert_eq!((owner.uid, owner.pid), (Some(uid), 77));
            assert_eq!(owner.command, "faultctl");
        }
        let clear = |label: Option<&str>, mine| proto::ClearFaultsRequest {
            label: label.map(Into::into),
            owner_uid: None,
            mine,
        };
        let removed = api
            .clear_faults(as_caller(clear(Some("a"), true), 1001))
            .await
            .unwrap()
            .into_inner()
            .removed;
        assert_eq!(removed, 1);
        let removed = api
            .clear_faults(as_caller(clear(None, true), 1001))
            .await
            .unwrap()
            .into_inner()
            .removed;
        assert_eq!(removed, 1);
        let left: Vec<_> = api.engine().table.iter().map(|f| f.owner.uid).collect();
        assert_eq!(left, [Some(0)], "root's fault stays");

        // A caller with no uid cannot ask for its own.
        let status = api
            .clear_faults(Request::new(clear(None, true)))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(
            status.message().starts_with("mine:"),
            "{}",
            status.message()
        );
        let mut contradiction = clear(None, true);
        contradiction.owner_uid = Some(0);
        let status = api
            .clear_faults(as_caller(contradiction, 1001))
            .await
            .unwrap_err();
        assert!(status.message().starts_with("owner_uid:"));
        assert_eq!(api.engine().table.len(), 1);
    }

    /// The level is checked before anything else: an unspecified or unknown one is the
    /// caller's mistake, named by its field, whether or not programs are loaded.
    #[tokio::test]
    async fn set_ebpf_log_names_a_missing_or_unknown_level() {
        for level in [0, 99] {
            let status = api()
                .set_ebpf_log(Request::new(proto::SetEbpfLogRequest { level }))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().starts_with("level:"), "{status:?}");
        }
        let status = api()
            .set_ebpf_log(Request::new(proto::SetEbpfLogRequest {
                level: proto::EbpfLogLevel::Debug as i32,
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    async fn add_to(api: &FaultApi, port: u32, session_id: u64) -> Result<proto::Fault, Status> {
        let request = proto::AddFaultRequest {
            spec: Some(request(port)),
            session_id,
        };
        api.add_fault(Request::new(request))
            .await
            .map(Response::into_inner)
    }

    #[tokio::test]
    async fn a_session_takes_its_faults_when_its_stream_ends() {
        let api = api();
        let open = |name: &str| proto::OpenSessionRequest { name: name.into() };
        let mut stream = api
            .open_session(as_caller(open("pytest"), 1001))
            .await
            .unwrap()
            .into_inner();
        let session = stream.next().await.unwrap().unwrap().session_id;
        assert_ne!(session, 0);
        let bound = add_to(&api, 5000, session).await.unwrap();
        assert_eq!(bound.session_id, session);
        add_to(&api, 5001, session).await.unwrap();
        let free = add_to(&api, 5002, 0).await.unwrap();
        assert_eq!(free.session_id, 0);
        let listed = api
            .list_faults(Request::new(proto::ListFaultsRequest {}))
            .await
            .unwrap()
            .into_inner()
            .faults;
        let sessions: Vec<_> = listed.iter().map(|f| f.session_id).collect();
        assert_eq!(sessions, [session, session, 0]);

        // Another session's end leaves these alone.
        let other = api.open_session(Request::new(open("other"))).await.unwrap();
        drop(other);
        settle(&api).await;
        assert_eq!(api.engine().table.len(), 3);

        drop(stream);
        settle(&api).await;
        let left: Vec<_> = api.engine().table.iter().map(|f| f.id).collect();
        assert_eq!(left, [free.id], "the session's faults went with it");

        for (id, why) in [(session, "ended"), (session + 100, "no session")] {
            let status = add_to(&api, 5003, id).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::FailedPrecondition);
            assert!(status.message().starts_with("session_id:"), "{status:?}");
            assert!(status.message().contains(why), "{status:?}");
        }
        assert_eq!(
            api.engine().table.len(),
            1,
            "a refused fault changes nothing"
        );
    }

    #[tokio::test]
    async fn a_ttl_removes_the_fault_by_itself() {
        let api = FaultApi::new(
            Engine::new(
                FaultTable::default(),
                Box::new(MemorySink::default()),
                vec![],
            ),
            Arc::default(),
        );
        let mut r = request(5000);
        r.ttl_ms = Some(50);
        api.add_fault(Request::new(proto::AddFaultRequest {
            spec: Some(r),
            session_id: 0,
        }))
        .await
        .unwrap();
        assert_eq!(api.engine().table.len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(api.engine().table.len(), 0);
    }

    /// Waits until the changes started so far (a session's end) are done: changes take
    /// turns, so one more waits for them.
    async fn settle(api: &FaultApi) {
        // The spawned removal first takes its turn; then ours waits for it.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        api.change(|_| ()).await.unwrap();
    }

    /// A sink whose writes wait, while `held`, until the test opens the gate: a datapath
    /// whose map writes or netlink calls block. A write that waited in vain (the gate was
    /// never opened, because whoever should open it could not run) is counted.
    struct GatedSink {
        inner: MemorySink,
        gate: Arc<Gate>,
    }

    #[derive(Default)]
    struct Gate {
        held: std::sync::atomic::AtomicBool,
        open: Mutex<bool>,
        opened: std::sync::Condvar,
        waited_in_vain: std::sync::atomic::AtomicUsize,
    }

    impl Gate {
        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    impl RuleSink for GatedSink {
        fn write_rule(&mut self, key: PortKey, rule: Option<&PortRule>) -> Result<(), FaultError> {
            use std::sync::atomic::Ordering::SeqCst;
            if self.gate.held.load(SeqCst) {
                let open = self.gate.open.lock().unwrap();
                let (open, _) = self
                    .gate
                    .opened
                    .wait_timeout_while(open, Duration::from_secs(2), |open| !*open)
                    .unwrap();
                if !*open {
                    self.gate.waited_in_vain.fetch_add(1, SeqCst);
                }
            }
            self.inner.write_rule(key, rule)
        }
        fn reset_counters(&mut self, counter: u32) -> Result<(), FaultError> {
            self.inner.reset_counters(counter)
        }
        fn read_counters(&self, counter: u32) -> Result<FaultCounters, FaultError> {
            self.inner.read_counters(counter)
        }
    }

    /// A session's end removes its faults off the async workers: while the removal's map
    /// writes block, the runtime (here one thread) still answers other calls, and then the
    /// faults are gone. Done in the stream's Drop, the removal blocked the only worker: the
    /// call that opens the gate could not run, and every write waited in vain.
    #[tokio::test(flavor = "current_thread")]
    async fn a_session_ending_does_not_block_the_runtime() {
        let gate = Arc::new(Gate::default());
        let api = api_with(Box::new(GatedSink {
            inner: MemorySink::default(),
            gate: gate.clone(),
        }));
        let mut stream = api
            .open_session(Request::new(proto::OpenSessionRequest {
                name: "big".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        let session = stream.next().await.unwrap().unwrap().session_id;
        for port in 5000..5010 {
            add_to(&api, port, session).await.unwrap();
        }
        gate.held.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(stream);
        // Other calls are answered while the removal waits at the gate.
        let other = api
            .open_session(Request::new(proto::OpenSessionRequest {
                name: "other".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .next()
            .await
            .unwrap()
            .unwrap();
        assert_ne!(other.session_id, session);
        gate.open();
        settle(&api).await;
        assert_eq!(
            gate.waited_in_vain
                .load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the session's removal blocked the runtime"
        );
        assert!(
            api.engine().table.is_empty(),
            "the session's faults are gone"
        );
    }

    /// A sink whose writes fail while the flag is set: a datapath that refuses removals.
    struct FlakySink {
        inner: MemorySink,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl RuleSink for FlakySink {
        fn write_rule(&mut self, key: PortKey, rule: Option<&PortRule>) -> Result<(), FaultError> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(FaultError::Datapath("map busy".into()));
            }
            self.inner.write_rule(key, rule)
        }
        fn reset_counters(&mut self, counter: u32) -> Result<(), FaultError> {
            self.inner.reset_counters(counter)
        }
        fn read_counters(&self, counter: u32) -> Result<FaultCounters, FaultError> {
            self.inner.read_counters(counter)
        }
    }

    fn api_with(sink: Box<dyn RuleSink>) -> FaultApi {
        FaultApi::new(
            Engine::new(FaultTable::default(), sink, vec![]),
            Arc::default(),
        )
    }

    async fn add(api: &FaultApi, spec: proto::FaultSpec) -> Result<proto::Fault, Status> {
        api.add_fault(Request::new(proto::AddFaultRequest {
            spec: Some(spec),
            session_id: 0,
        }))
        .await
        .map(Response::into_inner)
    }

    #[tokio::test]
    async fn an_expired_fault_whose_removal_fails_stays_listed_and_is_retried() {
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let api = api_with(Box::new(FlakySink {
            inner: MemorySink::default(),
            failing: failing.clone(),
        }));
        let mut r = request(5000);
        r.ttl_ms = Some(50);
        let fault = add(&api, r).await.unwrap();
        failing.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            api.engine().table.get(fault.id).is_some(),
            "a fault still in the maps was dropped from the list"
        );
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        // Retried: first after 500 ms, then 1 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        while api.engine().table.get(fault.id).is_some() {
            assert!(Instant::now() < deadline, "the expiry was never retried");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn removed_faults_leave_no_timer_behind() {
        let api = api_with(Box::new(MemorySink::default()));
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for port in 1..=200 {
            let mut r = request(port);
            r.ttl_ms = Some(3_600_000);
            let fault = add(&api, r).await.unwrap();
            api.remove_fault(Request::new(proto::RemoveFaultRequest { id: fault.id }))
                .await
                .unwrap();
        }
        tokio::task::yield_now().await;
        assert_eq!(
            metrics.num_alive_tasks(),
            before,
            "tasks left behind by 200 removed faults"
        );
    }

    #[tokio::test]
    async fn event_streams_are_limited_and_end_on_shutdown() {
        let api = api_with(Box::new(MemorySink::default())).with_max_streams(2);
        let watch = |follow| proto::WatchEventsRequest {
            follow,
            ..Default::default()
        };
        let mut a = api
            .watch_events(Request::new(watch(true)))
            .await
            .unwrap()
            .into_inner();
        let _b = api.watch_events(Request::new(watch(true))).await.unwrap();
        let third = api.watch_events(Request::new(watch(false))).await;
        let err = third.err().expect("a third stream was opened");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("--max-streams"), "{}", err.message());

        add(&api, request(80)).await.unwrap();
        assert_eq!(api.shut_down().unwrap(), 1);
        let ended = tokio::time::timeout(Duration::from_secs(5), a.next())
            .await
            .expect("a follow stream outlived the shutdown");
        assert_eq!(ended.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), a.next())
                .await
                .unwrap()
                .is_none()
        );
        // Nothing changes any more, and the clients are told why.
        let err = add(&api, request(81)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert!(api.engine().table.is_empty());
    }

    #[tokio::test]
    async fn a_new_recording_fault_starts_the_ports_attempt_history_afresh() {
        let api = api_with(Box::new(MemorySink::default()));
        let syn = |port| proto::Event {
            kind: proto::EventKind::SynRefused as i32,
            dst_port: port,
            ..Default::default()
        };
        // Attempts of an earlier experiment on the port.
        api.events.publish(syn(7000));
        api.events.publish(syn(7000));
        let mut r = request(7000);
        r.action = Some(proto::Action {
            kind: Some(proto::action::Kind::Refuse(proto::Refuse { mode: 0 })),
        });
        add(&api, r.clone()).await.unwrap();
        api.events.publish(syn(7000));
        assert_eq!(api.events.syns(7000).0.len(), 1);
        // A second reporting fault on the port keeps the history going.
        r.action = Some(proto::Action {
            kind: Some(proto::action::Kind::Record(proto::Record {})),
        });
        add(&api, r).await.unwrap();
        api.events.publish(syn(7000));
        assert_eq!(api.events.syns(7000).0.len(), 2);
    }
}
