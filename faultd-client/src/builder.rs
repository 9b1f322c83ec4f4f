//! One builder for every action: the target options all faults share, and the parameters
//! of its action (as the proto's own message, `A`), set by methods only that action has.

use std::time::Duration;

use faultd_api::proto::{self, Direction, Protocol, RefuseMode, Then, action::Kind};

use crate::{Client, FaultGuard, Result};

/// An action's parameters, as faultd's proto defines them.
pub trait Action: Sized {
    /// The action as it goes into a [`proto::FaultSpec`].
    fn into_kind(self) -> Kind;
}

macro_rules! actions {
    ($($ty:ident),*) => {$(
        impl Action for proto::$ty {
            fn into_kind(self) -> Kind {
                Kind::$ty(self)
            }
        }
    )*};
}
actions!(
    Drop, Reset, Refuse, LimitBytes, LimitAge, Record, Loss, Delay, Rate, Corrupt, Duplicate, Stall
);

/// A fault to add: made by [`Client::drop`], [`Client::delay`]… and added by
/// [`apply`](FaultBuilder::apply). Nothing is checked here: faultd validates the whole
/// request and names the field it refuses ([`Error::InvalidArgument`](crate::Error)).
#[derive(Clone, Debug)]
#[must_use = "a fault builder does nothing until .apply().await"]
pub struct FaultBuilder<A> {
    client: Client,
    target: proto::Target,
    ttl: Option<Duration>,
    label: String,
    action: A,
}

impl<A: Action> FaultBuilder<A> {
    pub(crate) fn new(client: &Client, port: u16, action: A) -> Self {
        FaultBuilder {
            client: client.clone(),
            target: proto::Target {
                port: port.into(),
                ..Default::default()
            },
            ttl: None,
            label: String::new(),
            action,
        }
    }

    /// TCP (the default), UDP or both.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.target.protocol = protocol.into();
        self
    }

    /// Which packets, relative to the port: [`Direction::ToPort`] (client → server),
    /// [`Direction::FromPort`], or [`Direction::Both`] (the default).
    pub fn direction(mut self, direction: Direction) -> Self {
        self.target.direction = direction.into();
        self
    }

    /// Only flows with this remote address or network: `"198.18.0.2"`, `"fd00::/8"`.
    pub fn peer(mut self, peer: impl Into<String>) -> Self {
        self.target.peer = peer.into();
        self
    }

    /// A port range: the ports from the builder's port through `last`, each faulted as if
    /// alone (`--port 2379-2381`).
    pub fn through(mut self, last: u16) -> Self {
        self.target.port_end = last.into();
        self
    }

    /// A port tuple: only the flow whose other end is on `port`, either direction.
    pub fn remote_port(mut self, port: u16) -> Self {
        self.target.remote_port = port.into();
        self
    }

    /// A partition cuts only what goes from its `between` side to its `and` side.
    pub fn one_way(mut self) -> Self {
        self.target.one_way = true;
        self
    }

    /// faultd removes the fault by itself after this long (whole milliseconds).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// A free-form label, shown by `faultctl list` and usable by [`Client::clear_label`].
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// The fault as faultd receives it.
    pub fn spec(&self) -> proto::FaultSpec
    where
        A: Clone,
    {
        self.clone().into_spec()
    }

    fn into_spec(self) -> proto::FaultSpec {
        proto::FaultSpec {
            target: Some(self.target),
            action: Some(proto::Action {
                kind: Some(self.action.into_kind()),
            }),
            ttl_ms: self.ttl.map(|ttl| saturate(ttl.as_millis())),
            label: self.label,
        }
    }

    /// Adds the fault, bound to the client's session if it has one. The guard removes it
    /// when dropped (or [`FaultGuard::remove`]), unless [`FaultGuard::keep`] is called.
    pub async fn apply(self) -> Result<FaultGuard> {
        let client = self.client.clone();
        client.add(self.into_spec()).await
    }
}

impl FaultBuilder<proto::Drop> {
    /// Drop only this share of matching packets, in (0, 1]. Default: all of them.
    pub fn probability(mut self, probability: f64) -> Self {
        self.action.probability = Some(probability);
        self
    }
}

impl FaultBuilder<proto::Reset> {
    /// Answer only this share of matching packets with a RST, in (0, 1]. Default: all.
    pub fn probability(mut self, probability: f64) -> Self {
        self.action.probability = Some(probability);
        self
    }
}

impl FaultBuilder<proto::Refuse> {
    /// [`RefuseMode::Rst`] (connect() fails with ECONNREFUSED, the default) or
    /// [`RefuseMode::Drop`] (connect() times out).
    pub fn mode(mut self, mode: RefuseMode) -> Self {
        self.action.mode = mode.into();
        self
    }
}

impl FaultBuilder<proto::LimitBytes> {
    /// How a flow dies at its limit: [`Then::Reset`] (TCP's default) or [`Then::Drop`].
    pub fn then(mut self, then: Then) -> Self {
        self.action.then = then.into();
        self
    }
}

impl FaultBuilder<proto::LimitAge> {
    /// How a flow dies at its limit: [`Then::Reset`] (TCP's default) or [`Then::Drop`].
    pub fn then(mut self, then: Then) -> Self {
        self.action.then = then.into();
        self
    }
}

impl FaultBuilder<proto::Delay> {
    /// Each packet's delay varies uniformly by up to this much either way (≤ the latency).
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.action.jitter_us = saturate(jitter.as_micros());
        self
    }
}

/// A duration's count as the proto's integer; one too large to fit is sent as the
/// largest, which faultd refuses by name.
fn saturate<T: TryFrom<u128> + Bounded>(n: u128) -> T {
    T::try_from(n).unwrap_or(T::MAX)
}

trait Bounded {
    const MAX: Self;
}
impl Bounded for u64 {
    const MAX: Self = u64::MAX;
}
impl Bounded for i64 {
    const MAX: Self = i64::MAX;
}

/// The constructors, one per action.
impl Client {
    /// Packets vanish: no FIN, no RST, no ICMP.
    pub fn drop(&self, port: u16) -> FaultBuilder<proto::Drop> {
        FaultBuilder::new(self, port, proto::Drop::default())
    }

    /// Each packet of a matching TCP flow is answered with a RST: both ends see ECONNRESET.
    pub fn reset(&self, port: u16) -> FaultBuilder<proto::Reset> {
        FaultBuilder::new(self, port, proto::Reset::default())
    }

    /// New connections to the port fail; established ones are untouched.
    pub fn refuse(&self, port: u16) -> FaultBuilder<proto::Refuse> {
        FaultBuilder::new(self, port, proto::Refuse::default())
    }

    /// Each flow dies once its payload (both directions) exceeds `bytes`.
    pub fn limit_bytes(&self, port: u16, bytes: i64) -> FaultBuilder<proto::LimitBytes> {
        let action = proto::LimitBytes { bytes, then: 0 };
        FaultBuilder::new(self, port, action)
    }

    /// Each flow dies once it is older than `after` (whole milliseconds).
    pub fn limit_age(&self, port: u16, after: Duration) -> FaultBuilder<proto::LimitAge> {
        let action = proto::LimitAge {
            after_ms: saturate(after.as_millis()),
            then: 0,
        };
        FaultBuilder::new(self, port, action)
    }

    /// Every connection attempt (SYN) to the port is recorded as an event.
    pub fn record(&self, port: u16) -> FaultBuilder<proto::Record> {
        FaultBuilder::new(self, port, proto::Record {})
    }

    /// `percent` (0, 100] of matching packets vanish.
    pub fn loss(&self, port: u16, percent: f64) -> FaultBuilder<proto::Loss> {
        FaultBuilder::new(self, port, proto::Loss { percent })
    }

    /// Matching packets leave `latency` later (microseconds; needs `sch_fq`).
    pub fn delay(&self, port: u16, latency: Duration) -> FaultBuilder<proto::Delay> {
        let action = proto::Delay {
            latency_us: saturate(latency.as_micros()),
            jitter_us: 0,
        };
        FaultBuilder::new(self, port, action)
    }

    /// Matching traffic is held to `bits_per_second`.
    pub fn rate(&self, port: u16, bits_per_second: i64) -> FaultBuilder<proto::Rate> {
        let action = proto::Rate {
            bits_per_second,
            mode: String::new(),
        };
        FaultBuilder::new(self, port, action)
    }

    /// One payload byte of `percent` (0, 100] of matching packets is flipped.
    pub fn corrupt(&self, port: u16, percent: f64) -> FaultBuilder<proto::Corrupt> {
        FaultBuilder::new(self, port, proto::Corrupt { percent })
    }

    /// `percent` (0, 100] of matching packets are sent twice.
    pub fn duplicate(&self, port: u16, percent: f64) -> FaultBuilder<proto::Duplicate> {
        FaultBuilder::new(self, port, proto::Duplicate { percent })
    }

    /// The TCP window of matching packets is rewritten to 0: the other side stops sending.
    pub fn stall(&self, port: u16) -> FaultBuilder<proto::Stall> {
        FaultBuilder::new(self, port, proto::Stall {})
    }

    /// An address-only partition: every TCP and UDP packet between an address (or CIDR) of
    /// `between` and one of `and` vanishes, any port, both ways (see
    /// [`one_way`](FaultBuilder::one_way)).
    pub fn partition<S: Into<String>>(
        &self,
        between: impl IntoIterator<Item = S>,
        and: impl IntoIterator<Item = S>,
    ) -> FaultBuilder<proto::Drop> {
        partition_of(self, between, and, proto::Drop::default())
    }

    /// [`Client::partition`], answering TCP with a RST instead (other packets vanish).
    pub fn partition_reset<S: Into<String>>(
        &self,
        between: impl IntoIterator<Item = S>,
        and: impl IntoIterator<Item = S>,
    ) -> FaultBuilder<proto::Reset> {
        partition_of(self, between, and, proto::Reset::default())
    }
}

fn partition_of<A: Action, S: Into<String>>(
    client: &Client,
    between: impl IntoIterator<Item = S>,
    and: impl IntoIterator<Item = S>,
    action: A,
) -> FaultBuilder<A> {
    let mut builder = FaultBuilder::new(client, 0, action);
    builder.target.protocol = Protocol::Any.into();
    builder.target.between = between.into_iter().map(Into::into).collect();
    builder.target.and_peers = and.into_iter().map(Into::into).collect();
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(spec: &proto::FaultSpec) -> &proto::Target {
        spec.target.as_ref().unwrap()
    }

    fn kind(spec: proto::FaultSpec) -> Kind {
        spec.action.unwrap().kind.unwrap()
    }

    #[tokio::test]
    async fn target_options_land_in_the_spec() {
        let client = Client::disconnected();
        let spec = client
            .drop(2379)
            .direction(Direction::ToPort)
            .protocol(Protocol::Udp)
            .peer("198.18.0.0/15")
            .ttl(Duration::from_secs(30))
            .label("etcd")
            .probability(0.25)
            .spec();
        assert_eq!(
            target(&spec),
            &proto::Target {
                port: 2379,
                protocol: Protocol::Udp as i32,
                direction: Direction::ToPort as i32,
                peer: "198.18.0.0/15".into(),
                ..Default::default()
            }
        );
        assert_eq!(spec.ttl_ms, Some(30_000));
        assert_eq!(spec.label, "etcd");
        assert_eq!(
            kind(spec),
            Kind::Drop(proto::Drop {
                probability: Some(0.25)
            })
        );
    }

    #[tokio::test]
    async fn ranges_tuples_and_partitions_land_in_the_target() {
        let client = Client::disconnected();
        let t = client.drop(2379).through(2381).spec();
        assert_eq!((target(&t).port, target(&t).port_end), (2379, 2381));
        let t = client.drop(2380).remote_port(43210).spec();
        assert_eq!(target(&t).remote_port, 43210);
        let p = client
            .partition(["127.0.0.2"], ["127.0.0.3", "127.0.0.4"])
            .one_way()
            .spec();
        assert_eq!(
            target(&p),
            &proto::Target {
                protocol: Protocol::Any as i32,
                between: vec!["127.0.0.2".into()],
                and_peers: vec!["127.0.0.3".into(), "127.0.0.4".into()],
                one_way: true,
                ..Default::default()
            }
        );
        let r = client.partition_reset(["fd00::/8"], ["fd01::1"]).spec();
        assert!(matches!(kind(r), Kind::Reset(_)));
    }

    #[tokio::test]
    async fn defaults_leave_the_daemon_to_choose() {
        let client = Client::disconnected();
        let spec = client.stall(80).spec();
        assert_eq!(
            target(&spec),
            &proto::Target {
                port: 80,
                ..Default::default()
            }
        );
        assert_eq!((spec.ttl_ms, spec.label.as_str()), (None, ""));
        assert_eq!(kind(spec), Kind::Stall(proto::Stall {}));
        assert_eq!(
            kind(client.drop(1).spec()),
            Kind::Drop(proto::Drop { probability: None })
        );
    }

    #[tokio::test]
    async fn each_action_carries_its_parameters() {
        let c = Client::disconnected();
        let ms = Duration::from_millis;
        let cases = [
            (
                kind(c.reset(1).probability(0.5).spec()),
                Kind::Reset(proto::Reset {
                    probability: Some(0.5),
                }),
            ),
            (
                kind(c.refuse(1).mode(RefuseMode::Drop).spec()),
                Kind::Refuse(proto::Refuse {
                    mode: RefuseMode::Drop as i32,
                }),
            ),
            (
                kind(c.limit_bytes(1, 100).then(Then::Drop).spec()),
                Kind::LimitBytes(proto::LimitBytes {
                    bytes: 100,
                    then: Then::Drop as i32,
                }),
            ),
            (
                kind(c.limit_age(1, ms(1500)).then(Then::Reset).spec()),
                Kind::LimitAge(proto::LimitAge {
                    after_ms: 1500,
                    then: Then::Reset as i32,
                }),
            ),
            (kind(c.record(1).spec()), Kind::Record(proto::Record {})),
            (
                kind(c.loss(1, 12.5).spec()),
                Kind::Loss(proto::Loss { percent: 12.5 }),
            ),
            (
                kind(c.delay(1, ms(200)).jitter(ms(20)).spec()),
                Kind::Delay(proto::Delay {
                    latency_us: 200_000,
                    jitter_us: 20_000,
                }),
            ),
            (
                kind(c.rate(1, 1_000_000).spec()),
                Kind::Rate(proto::Rate {
                    bits_per_second: 1_000_000,
                    mode: String::new(),
                }),
            ),
            (
                kind(c.corrupt(1, 1.0).spec()),
                Kind::Corrupt(proto::Corrupt { percent: 1.0 }),
            ),
            (
                kind(c.duplicate(1, 50.0).spec()),
                Kind::Duplicate(proto::Duplicate { percent: 50.0 }),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[tokio::test]
    async fn out_of_range_durations_are_sent_for_the_daemon_to_refuse() {
        let c = Client::disconnected();
        let spec = c.delay(1, Duration::MAX).ttl(Duration::MAX).spec();
        assert_eq!(spec.ttl_ms, Some(u64::MAX));
        assert_eq!(
            kind(spec),
            Kind::Delay(proto::Delay {
                latency_us: i64::MAX,
                jitter_us: 0
            })
        );
    }
}
