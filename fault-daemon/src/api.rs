//! The gRPC control service: converts requests into the domain model and back, and owns
//! the expiry of faults with a TTL.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::capabilities;
use crate::datapath::Attachment;
use crate::events::EventHub;
use crate::faults::{
    Action, Direction, Fault, FaultError, FaultSpec, FaultTable, Peer, Protocol, RateMode,
    RefuseMode, RuleSink, Target, Then, validate_port, validate_probability,
};
use crate::proto::{self, fault_service_server::FaultService};
use crate::qdisc::Fq;

/// The active faults and where they are compiled to.
pub struct Engine {
    pub table: FaultTable,
    pub sink: Box<dyn RuleSink>,
    pub attachments: Vec<Attachment>,
    /// The fq qdisc that departure times (delay, paced rate) need.
    pub fq: Fq,
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
        }
    }

    /// Installs a fault, and fq first when it needs it: a delay where fq cannot be had is
    /// refused (FAILED_PRECONDITION); a rate is then policed instead of paced.
    fn add(&mut self, mut spec: FaultSpec) -> Result<Fault, FaultError> {
        spec.validate()?;
        let fq_before = self.fq.is_active();
        if let Action::Rate { mode, .. } = &mut spec.action {
            *mode = match self.fq.install() {
                Ok(()) => RateMode::Pace,
                Err(_) => RateMode::Police,
            };
        }
        if spec.action.needs_fq() {
            self.fq
                .install()
                .map_err(|why| FaultError::Refused(format!("action.delay: {why}")))?;
        }
        let added = self.table.add(spec, SystemTime::now(), self.sink.as_mut());
        if added.is_err() && !fq_before {
            self.release_fq_if_unused();
        }
        added
    }

    fn remove(&mut self, id: u64) -> Result<Fault, FaultError> {
        let removed = self.table.remove(id, self.sink.as_mut())?;
        self.release_fq_if_unused();
        Ok(removed)
    }

    fn clear(&mut self) -> Result<usize, FaultError> {
        let cleared = self.table.clear(self.sink.as_mut());
        self.release_fq_if_unused();
        cleared
    }

    /// Puts back the interfaces' own qdiscs once no fault sets departure times.
    fn release_fq_if_unused(&mut self) {
        if self.fq.is_active() && !self.table.iter().any(|f| f.spec.action.needs_fq()) {
            self.fq.restore();
        }
    }
}

#[derive(Clone)]
pub struct FaultApi {
    engine: Arc<Mutex<Engine>>,
    events: Arc<EventHub>,
    /// Changes take turns here before they take a blocking thread (see `change`).
    changes: Arc<tokio::sync::Mutex<()>>,
}

impl FaultApi {
    pub fn new(engine: Engine, events: Arc<EventHub>) -> Self {
        Self {
            engine: Arc::new(Mutex::new(engine)),
            events,
            changes: Arc::default(),
        }
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
        change: impl FnOnce(&mut Engine) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let _turn = self.changes.lock().await;
        let api = self.clone();
        tokio::task::spawn_blocking(move || change(&mut api.engine()))
            .await
            .map_err(|e| Status::internal(format!("changing the faults: {e}")))
    }

    /// Removes faults of the table; used on shutdown so the maps are empty before detach.
    pub fn clear(&self) -> Result<usize, FaultError> {
        self.engine().clear()
    }

    /// What this kernel and these attachments support; also logged at start-up.
    pub fn capabilities(&self) -> proto::Capabilities {
        capabilities::report(&self.engine().attachments)
    }

    fn expire_later(&self, id: u64, ttl: Duration) {
        let api = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            // Ids are never reused, so a fault removed meanwhile is simply not found.
            if let Ok(Ok(_)) = api.change(move |engine| engine.remove(id)).await {
                info!(id, "fault expired");
            }
        });
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send>>;

#[tonic::async_trait]
impl FaultService for FaultApi {
    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let proto::WatchEventsRequest { follow, fault_id } = request.into_inner();
        let wanted = move |e: &proto::Event| fault_id == 0 || e.fault_id == fault_id;
        let (history, live) = self.events.subscribe();
        let past = tokio_stream::iter(history.into_iter().filter(wanted).map(Ok));
        if !follow {
            return Ok(Response::new(Box::pin(past)));
        }
        // A subscriber that falls far behind loses the oldest events, not the stream.
        let future = tokio_stream::wrappers::BroadcastStream::new(live)
            .filter_map(move |e| e.ok().filter(wanted).map(Ok));
        Ok(Response::new(Box::pin(past.chain(future))))
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

    async fn add_fault(
        &self,
        request: Request<proto::AddFaultRequest>,
    ) -> Result<Response<proto::Fault>, Status> {
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| FaultError::invalid("spec", "required"))
            .and_then(spec_from_proto)
            .map_err(status)?;
        let fault = self
            .change(move |engine| engine.add(spec))
            .await?
            .map_err(status)?;
        info!(
            id = fault.id,
            action = fault.spec.action.name(),
            port = fault.spec.target.port,
            "fault added"
        );
        if let Some(ttl) = fault.spec.ttl {
            self.expire_later(fault.id, ttl);
        }
        Ok(Response::new(fault_to_proto(&fault)))
    }

    async fn remove_fault(
        &self,
        request: Request<proto::RemoveFaultRequest>,
    ) -> Result<Response<proto::RemoveFaultResponse>, Status> {
        let id = request.into_inner().id;
        let fault = self
            .change(move |engine| engine.remove(id))
            .await?
            .map_err(status)?;
        info!(id = fault.id, "fault removed");
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
        _: Request<proto::ClearFaultsRequest>,
    ) -> Result<Response<proto::ClearFaultsResponse>, Status> {
        let removed = self
            .change(|engine| engine.clear())
            .await?
            .map_err(status)?;
        info!(removed, "faults cleared");
        Ok(Response::new(proto::ClearFaultsResponse {
            removed: removed as u32,
        }))
    }

    async fn get_stats(
        &self,
        _: Request<proto::GetStatsRequest>,
    ) -> Result<Response<proto::GetStatsResponse>, Status> {
        let engine = self.engine();
        let faults = engine
            .table
            .iter()
            .map(|fault| {
                let c = engine.sink.read_counters(fault.counter)?;
                Ok(proto::FaultStats {
                    fault: Some(fault_to_proto(fault)),
                    counters: Some(proto::Counters {
                        matched_packets: c.matched_packets,
                        matched_bytes: c.matched_bytes,
                        acted_packets: c.acted_packets,
                        acted_bytes: c.acted_bytes,
                    }),
                })
            })
            .collect::<Result<_, FaultError>>()
            .map_err(status)?;
        let attachments = engine
            .attachments
            .iter()
            .map(|a| proto::Attachment {
                interface: a.iface.clone(),
                xdp_mode: a.xdp_mode.into(),
                tc_mode: a.tc_mode.into(),
            })
            .collect();
        Ok(Response::new(proto::GetStatsResponse {
            faults,
            attachments,
        }))
    }
}

fn status(e: FaultError) -> Status {
    match e {
        FaultError::Invalid { .. } => Status::invalid_argument(e.to_string()),
        FaultError::NotFound(_) => Status::not_found(e.to_string()),
        FaultError::Refused(_) => Status::failed_precondition(e.to_string()),
        FaultError::Exhausted(_) => Status::resource_exhausted(e.to_string()),
        FaultError::Datapath(_) => Status::internal(e.to_string()),
    }
}

/// Converts and validates a request; errors name the field as the request spells it.
pub fn spec_from_proto(spec: proto::FaultSpec) -> Result<FaultSpec, FaultError> {
    let t = spec
        .target
        .ok_or_else(|| FaultError::invalid("target", "required"))?;
    let protocol = match proto::Protocol::try_from(t.protocol) {
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
    let target = Target {
        port: validate_port(t.port, "target.port")?,
        protocol,
        direction,
        peer,
    };
    let kind = spec.action.and_then(|a| a.kind).ok_or_else(|| {
        FaultError::invalid(
            "action",
            "required: one of drop, reset, refuse, limit_bytes, limit_age, record, loss, \
             delay, rate, corrupt, duplicate, stall",
        )
    })?;
    let action = action_from_proto(kind, protocol)?;
    let spec = FaultSpec {
        target,
        action,
        ttl: spec.ttl_ms.map(Duration::from_millis),
        label: spec.label,
    };
    spec.validate()?;
    Ok(spec)
}

fn action_from_proto(kind: proto::action::Kind, protocol: Protocol) -> Result<Action, FaultError> {
    use proto::action::Kind;
    let probability = |p: Option<f64>, field: &str| match p {
        None => Ok(1.0),
        Some(p) => validate_probability(p, field),
    };
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
            probability: probability(d.probability, "action.drop.probability")?,
        },
        Kind::Reset(r) => Action::Reset {
            probability: probability(r.probability, "action.reset.probability")?,
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
        Kind::LimitBytes(l) => Action::LimitBytes {
            bytes: u64::try_from(l.bytes).map_err(|_| {
                FaultError::invalid(
                    "action.limit_bytes.bytes",
                    format!("{} is negative", l.bytes),
                )
            })?,
            then: then(l.then, "action.limit_bytes.then")?,
        },
        Kind::LimitAge(l) => Action::LimitAge {
            after: match u64::try_from(l.after_ms) {
                Ok(ms) if ms > 0 => Duration::from_millis(ms),
                _ => {
                    return Err(FaultError::invalid(
                        "action.limit_age.after_ms",
                        format!("{} ms is not a positive duration", l.after_ms),
                    ));
                }
            },
            then: then(l.then, "action.limit_age.then")?,
        },
        Kind::Record(_) => Action::Record,
        Kind::Loss(l) => Action::Loss {
            probability: percent(l.percent, "action.loss.percent")?,
        },
        Kind::Corrupt(c) => Action::Corrupt {
            probability: percent(c.percent, "action.corrupt.percent")?,
        },
        Kind::Duplicate(d) => Action::Duplicate {
            probability: percent(d.percent, "action.duplicate.percent")?,
        },
        Kind::Delay(d) => Action::Delay {
            latency: micros(d.latency_us, "action.delay.latency_us")?,
            jitter: micros(d.jitter_us, "action.delay.jitter_us")?,
        },
        Kind::Rate(r) => Action::Rate {
            bytes_per_sec: match u64::try_from(r.bits_per_second) {
                Ok(bits) if bits > 0 => bits.div_ceil(8),
                _ => {
                    return Err(FaultError::invalid(
                        "action.rate.bits_per_second",
                        format!("{} is not a rate above 0", r.bits_per_second),
                    ));
                }
            },
            // The engine decides, from what the kernel offers.
            mode: RateMode::Police,
        },
        Kind::Stall(_) => Action::Stall,
    })
}

/// A percentage in (0, 100] as a probability; errors name `field`.
fn percent(p: f64, field: &str) -> Result<f64, FaultError> {
    if p.is_finite() && p > 0.0 && p <= 100.0 {
        Ok(p / 100.0)
    } else {
        Err(FaultError::invalid(
            field,
            format!("{p} is not a percentage in (0, 100]"),
        ))
    }
}

/// A non-negative count of microseconds; errors name `field`.
fn micros(us: i64, field: &str) -> Result<Duration, FaultError> {
    u64::try_from(us)
        .map(Duration::from_micros)
        .map_err(|_| FaultError::invalid(field, format!("{us} µs is negative")))
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
            }),
            action: Some(proto::Action { kind: Some(action) }),
            ttl_ms: fault.spec.ttl.map(|d| d.as_millis() as u64),
            label: fault.spec.label.clone(),
        }),
        created_unix_ms: unix_ms(fault.created),
        expires_unix_ms: fault.expires.map_or(0, unix_ms),
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
            field_of(with(Kind::Corrupt(proto::Corrupt { percent: f64::NAN }))),
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
    }

    #[test]
    fn degradations_round_trip_through_the_proto() {
        use proto::action::Kind;
        for kind in [
            Kind::Loss(proto::Loss { percent: 30.0 }),
            Kind::Corrupt(proto::Corrupt { percent: 5.0 }),
            Kind::Duplicate(proto::Duplicate { percent: 100.0 }),
            Kind::Delay(proto::Delay {
                latency_us: 200_000,
                jitter_us: 50_000,
            }),
            Kind::Stall(proto::Stall {}),
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
        api.add_fault(Request::new(proto::AddFaultRequest { spec: Some(r) }))
            .await
            .unwrap();
        assert_eq!(api.engine().table.len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(api.engine().table.len(), 0);
    }
}
