//! faultd's gRPC status codes, asked for directly with the generated client (not through
//! faultctl's parser, which refuses much of this before it is sent), and after each
//! refusal the daemon's list and the kernel's rule map exactly as before.

use crate::harness;
use crate::kernel_rules;

use faultd::proto::{self, action::Kind, fault_service_client::FaultServiceClient};
use harness::*;
use tonic::Code;
use tonic::transport::Channel;

/// What the daemon was started with.
const MAX_FAULTS: usize = 12;
const MAX_STREAMS: usize = 2;

fn spec(port: u32, kind: Kind) -> proto::FaultSpec {
    proto::FaultSpec {
        target: Some(proto::Target {
            port,
            ..Default::default()
        }),
        action: Some(proto::Action { kind: Some(kind) }),
        ttl_ms: None,
        label: "status".into(),
    }
}

fn drop_all() -> Kind {
    Kind::Drop(proto::Drop { probability: None })
}

fn add_request(spec: proto::FaultSpec) -> proto::AddFaultRequest {
    proto::AddFaultRequest {
        spec: Some(spec),
        ..Default::default()
    }
}

/// An AddFault that must be refused: what it is, the request, the code, and what the
/// message must name.
struct Refusal {
    what: &'static str,
    request: proto::AddFaultRequest,
    code: Code,
    names: &'static str,
}

fn invalid(what: &'static str, request: proto::AddFaultRequest, names: &'static str) -> Refusal {
    Refusal {
        what,
        request,
        code: Code::InvalidArgument,
        names,
    }
}

fn with(
    base: proto::FaultSpec,
    change: impl FnOnce(&mut proto::FaultSpec),
) -> proto::AddFaultRequest {
    let mut s = base;
    change(&mut s);
    add_request(s)
}

fn invalid_arguments() -> Vec<Refusal> {
    let base = || spec(5000, drop_all());
    let kind = |k: Kind| add_request(spec(5000, k));
    vec![
        invalid(
            "no spec",
            proto::AddFaultRequest {
                spec: None,
                ..Default::default()
            },
            "spec",
        ),
        invalid("no target", with(base(), |s| s.target = None), "target"),
        invalid("no action", with(base(), |s| s.action = None), "action"),
        invalid(
            "an action without a kind",
            with(base(), |s| s.action = Some(proto::Action { kind: None })),
            "action",
        ),
        invalid(
            "port 0",
            with(base(), |s| s.target.as_mut().unwrap().port = 0),
            "target.port",
        ),
        invalid(
            "port 70000",
            with(base(), |s| s.target.as_mut().unwrap().port = 70_000),
            "target.port",
        ),
        invalid(
            "an unknown protocol",
            with(base(), |s| s.target.as_mut().unwrap().protocol = 9),
            "target.protocol",
        ),
        invalid(
            "an unknown direction",
            with(base(), |s| s.target.as_mut().unwrap().direction = 9),
            "target.direction",
        ),
        invalid(
            "a peer that is no address",
            with(base(), |s| {
                s.target.as_mut().unwrap().peer = "banana".into()
            }),
            "target.peer",
        ),
        invalid(
            "an unknown refuse mode",
            kind(Kind::Refuse(proto::Refuse { mode: 7 })),
            "action.refuse.mode",
        ),
        invalid(
            "an unknown then",
            kind(Kind::LimitBytes(proto::LimitBytes { bytes: 1, then: 9 })),
            "action.limit_bytes.then",
        ),
        invalid(
            "a label over the limit",
            with(base(), |s| s.label = "x".repeat(257)),
            "label",
        ),
        invalid(
            "a TTL that overflows",
            with(base(), |s| s.ttl_ms = Some(u64::MAX)),
            "ttl_ms",
        ),
        invalid(
            "a TTL beyond --max-ttl",
            with(base(), |s| s.ttl_ms = Some(2 * 3600 * 1000)),
            "--max-ttl",
        ),
        invalid("a TTL of 0", with(base(), |s| s.ttl_ms = Some(0)), "ttl_ms"),
        invalid(
            "a NaN loss",
            kind(Kind::Loss(proto::Loss { percent: f64::NAN })),
            "action.loss.percent",
        ),
        invalid(
            "an infinite corruption",
            kind(Kind::Corrupt(proto::Corrupt {
                percent: f64::INFINITY,
                byte_percent: None,
            })),
            "action.corrupt.percent",
        ),
        invalid(
            "a minus infinite duplication",
            kind(Kind::Duplicate(proto::Duplicate {
                percent: f64::NEG_INFINITY,
            })),
            "action.duplicate.percent",
        ),
        invalid(
            "a NaN drop probability",
            kind(Kind::Drop(proto::Drop {
                probability: Some(f64::NAN),
            })),
            "action.drop.probability",
        ),
        invalid(
            "an infinite reset probability",
            kind(Kind::Reset(proto::Reset {
                probability: Some(f64::INFINITY),
            })),
            "action.reset.probability",
        ),
        invalid(
            "a rate of 0",
            kind(Kind::Rate(proto::Rate {
                bits_per_second: 0,
                mode: String::new(),
            })),
            "action.rate.bits_per_second",
        ),
        invalid(
            "a negative limit age",
            kind(Kind::LimitAge(proto::LimitAge {
                after_ms: -1,
                then: 0,
            })),
            "action.limit_age.after_ms",
        ),
        invalid(
            "a negative delay",
            kind(Kind::Delay(proto::Delay {
                latency_us: -1,
                jitter_us: 0,
            })),
            "action.delay.latency_us",
        ),
    ]
}

async fn connect() -> FaultServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:7447")
        .connect()
        .await
        .expect("connecting to faultd");
    FaultServiceClient::new(channel)
}

async fn list(c: &mut FaultServiceClient<Channel>) -> Vec<proto::Fault> {
    c.list_faults(proto::ListFaultsRequest {})
        .await
        .unwrap()
        .into_inner()
        .faults
}

/// Both views of the state: the daemon's list and the kernel's rules.
struct State {
    pid: i32,
}

impl State {
    async fn snapshot(
        &self,
        c: &mut FaultServiceClient<Channel>,
    ) -> (Vec<proto::Fault>, kernel_rules::Rules) {
        (list(c).await, kernel_rules::read(self.pid))
    }

    /// Runs `call`, which must fail with `code` naming `names`, and checks nothing changed.
    async fn refused<T: std::fmt::Debug>(
        &self,
        c: &mut FaultServiceClient<Channel>,
        what: &str,
        code: Code,
        names: &str,
        call: impl AsyncFnOnce(&mut FaultServiceClient<Channel>) -> Result<T, tonic::Status>,
    ) {
        let before = self.snapshot(c).await;
        let status = call(c)
            .await
            .map(|ok| panic!("{what} was accepted: {ok:?}"))
            .unwrap_err();
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(
            status.message().contains(names),
            "{what}: the message should name {names:?}: {}",
            status.message()
        );
        let after = self.snapshot(c).await;
        assert_eq!(after.0, before.0, "{what} changed faultd's list");
        assert_eq!(after.1, before.1, "{what} changed the kernel's rules");
    }
}

#[test]
fn every_refusal_has_its_code_and_changes_nothing() {
    require_root();
    let fq = kernel_fq().is_ok();
    let ns = Netns::new("status");
    let daemon = Daemon::try_start(
        &ns,
        &["lo"],
        &[
            "--max-faults",
            &MAX_FAULTS.to_string(),
            "--max-ttl",
            "1h",
            "--max-streams",
            &MAX_STREAMS.to_string(),
        ],
    )
    .expect("faultd did not start");
    let state = State { pid: daemon.pid() };
    ns.run(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut c = connect().await;
            // A fault in place: a refusal must not touch it.
            let kept = c
                .add_fault(add_request(spec(4000, drop_all())))
                .await
                .unwrap()
                .into_inner();
            let rules = kernel_rules::read(state.pid);
            assert_eq!(
                rules[&(6, 4000)]
                    .iter()
                    .map(|s| s.fault_id)
                    .collect::<Vec<_>>(),
                [kept.id],
                "the kernel's rules can be read: {rules:?}"
            );

            for r in invalid_arguments() {
                let request = r.request;
                state
                    .refused(&mut c, r.what, r.code, r.names, async move |c| {
                        c.add_fault(request).await
                    })
                    .await;
            }

            state
                .refused(
                    &mut c,
                    "an unknown id",
                    Code::NotFound,
                    "999999",
                    async |c| {
                        c.remove_fault(proto::RemoveFaultRequest { id: 999_999 })
                            .await
                    },
                )
                .await;

            state
                .refused(
                    &mut c,
                    "a fault on faultd's API port",
                    Code::FailedPrecondition,
                    "API port",
                    async |c| c.add_fault(add_request(spec(7447, drop_all()))).await,
                )
                .await;
            if fq {
                eprintln!(
                    "this kernel has the fq qdisc (tc added it): a delay is accepted here, so \
                     its FAILED_PRECONDITION is not checked on this kernel"
                );
            } else {
                let delay = Kind::Delay(proto::Delay {
                    latency_us: 10_000,
                    jitter_us: 0,
                });
                state
                    .refused(
                        &mut c,
                        "a delay without fq",
                        Code::FailedPrecondition,
                        "fq",
                        async |c| c.add_fault(add_request(spec(5000, delay))).await,
                    )
                    .await;
            }

            // 8 faults on one port (the kept one and 7 more), then a 9th.
            for _ in 0..7 {
                c.add_fault(add_request(spec(4000, drop_all())))
                    .await
                    .unwrap();
            }
            state
                .refused(
                    &mut c,
                    "a 9th fault on a port",
                    Code::ResourceExhausted,
                    "8 faults",
                    async |c| c.add_fault(add_request(spec(4000, drop_all()))).await,
                )
                .await;
            // Up to the daemon's limit on other ports, then one more.
            for port in 4001..4001 + (MAX_FAULTS - 8) as u32 {
                c.add_fault(add_request(spec(port, drop_all())))
                    .await
                    .unwrap();
            }
            assert_eq!(list(&mut c).await.len(), MAX_FAULTS);
            state
                .refused(
                    &mut c,
                    "a fault beyond --max-faults",
                    Code::ResourceExhausted,
                    "--max-faults",
                    async |c| c.add_fault(add_request(spec(4100, drop_all()))).await,
                )
                .await;

            // Event streams beyond --max-streams.
            let follow = proto::WatchEventsRequest {
                follow: true,
                ..Default::default()
            };
            let mut open = Vec::new();
            for _ in 0..MAX_STREAMS {
                open.push(c.watch_events(follow).await.unwrap());
            }
            state
                .refused(
                    &mut c,
                    "an event stream beyond --max-streams",
                    Code::ResourceExhausted,
                    "--max-streams",
                    async |c| c.watch_events(follow).await.map(|_| ()),
                )
                .await;
            drop(open);

            // And what is accepted reaches the kernel: clear empties it.
            let removed = c
                .clear_faults(proto::ClearFaultsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .removed;
            assert_eq!(removed as usize, MAX_FAULTS);
            assert!(list(&mut c).await.is_empty());
            assert_eq!(kernel_rules::read(state.pid), kernel_rules::Rules::new());
        });
    });
}
