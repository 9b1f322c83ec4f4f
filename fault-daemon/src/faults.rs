//! The domain model: what a fault is, how it is validated, and how the set of active faults
//! compiles into the rule-map entries the programs read.
//!
//! Nothing here touches the kernel: compiled entries go to a [`RuleSink`], which the
//! datapath implements, so the whole model is unit-tested without privilege.

use smallvec::SmallVec;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use crate::partitions::Partition;
use crate::partitions::{CompiledPartitions, PartitionTable};

mod slicing;

use fault_common::{
    ACTION_CORRUPT, ACTION_DELAY, ACTION_DROP, ACTION_DUPLICATE, ACTION_LIMIT_AGE,
    ACTION_LIMIT_BYTES, ACTION_RATE, ACTION_RECORD, ACTION_REFUSE_DROP, ACTION_REFUSE_RST,
    ACTION_RESET, ACTION_SLICE, ACTION_STALL, CORRUPT_DENSITY, DELAY_HORIZON_NS, DIR_FROM_PORT,
    DIR_TO_PORT, FaultCounters, FaultSlot, MAX_FAULTS, MAX_FAULTS_PER_PORT, MAX_FLOWS, PEER_ANY,
    PEER_V4, PEER_V6, PROTO_TCP, PROTO_UDP, PortKey, PortRule, RATE_PACE, RATE_POLICE, THEN_DROP,
    THEN_RESET,
};

/// Longest TTL (and limit age) ever accepted: a year. Longer is almost surely a unit
/// mistake. `--max-ttl` lowers the TTL's bound.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Longest label accepted, in bytes.
pub const MAX_LABEL: usize = 256;
/// Default of faultd's `--max-faults`.
pub const DEFAULT_MAX_FAULTS: usize = 1024;
/// Default of faultd's `--max-ttl`.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default of faultd's `--max-flows`.
pub const DEFAULT_MAX_FLOWS: u32 = MAX_FLOWS;
/// Bounds of `--max-flows`. Below 16 the kernel's LRU map of first hits (one list per CPU)
/// would be all but useless; above 2^20 the limits' flow table could take over 100 MiB of
/// kernel memory when full.
pub const MAX_FLOWS_RANGE: std::ops::RangeInclusive<u32> = 16..=1 << 20;

/// What one faultd accepts at most; set by its flags.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Faults installed at once (`--max-faults`), at most the kernel maps' [`MAX_FAULTS`].
    pub max_faults: usize,
    /// Longest TTL (`--max-ttl`), at most [`MAX_TTL`].
    pub max_ttl: Duration,
    /// Flows the limits track at once, and flows whose first hit is remembered
    /// (`--max-flows`), within [`MAX_FLOWS_RANGE`].
    pub max_flows: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_faults: DEFAULT_MAX_FAULTS,
            max_ttl: DEFAULT_MAX_TTL,
            max_flows: DEFAULT_MAX_FLOWS,
        }
    }
}

impl Limits {
    /// Checks the limits themselves; errors name the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_faults == 0 || self.max_faults > MAX_FAULTS as usize {
            return Err(format!(
                "--max-faults {} is not in 1..={MAX_FAULTS} (the kernel maps' capacity)",
                self.max_faults
            ));
        }
        if self.max_ttl.is_zero() || self.max_ttl > MAX_TTL {
            return Err(format!(
                "--max-ttl {} is not in 1ms..=365days",
                humantime::format_duration(self.max_ttl)
            ));
        }
        if !MAX_FLOWS_RANGE.contains(&self.max_flows) {
            return Err(format!(
                "--max-flows {} is not in {}..={}",
                self.max_flows,
                MAX_FLOWS_RANGE.start(),
                MAX_FLOWS_RANGE.end()
            ));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultError {
    /// The request is malformed; `field` is its path in the request, e.g. `target.port`.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("no fault with id {0}")]
    NotFound(u64),
    /// The request is valid but cannot be carried out in this state.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Exhausted(String),
    /// The kernel refused a map write.
    #[error("datapath: {0}")]
    Datapath(String),
    /// faultd is stopping: its programs are (being) detached.
    #[error("faultd is shutting down")]
    ShuttingDown,
}

impl FaultError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Any,
}

impl Protocol {
    /// The IP protocol numbers this expands to in the rule map.
    fn numbers(self) -> &'static [u8] {
        match self {
            Protocol::Tcp => &[PROTO_TCP],
            Protocol::Udp => &[PROTO_UDP],
            Protocol::Any => &[PROTO_TCP, PROTO_UDP],
        }
    }

    pub fn covers_tcp(self) -> bool {
        self != Protocol::Udp
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Any => "any",
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    Both,
    ToPort,
    FromPort,
}

impl Direction {
    fn bits(self) -> u8 {
        match self {
            Direction::Both => DIR_TO_PORT | DIR_FROM_PORT,
            Direction::ToPort => DIR_TO_PORT,
            Direction::FromPort => DIR_FROM_PORT,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Both => "both",
            Direction::ToPort => "to-port",
            Direction::FromPort => "from-port",
        })
    }
}

/// A remote address or network: only flows with such a peer are faulted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Peer {
    /// Parses `ADDR` or `ADDR/PREFIX`; errors name `field`.
    pub fn parse(text: &str, field: &str) -> Result<Self, FaultError> {
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text.trim().parse().map_err(|_| {
            FaultError::invalid(field, format!("{text:?} is not an IP address or CIDR"))
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(FaultError::invalid(
                        field,
                        format!("prefix /{p} is out of range for {addr} (0..={max})"),
                    ));
                }
            },
        };
        Ok(Self { addr, prefix })
    }

    /// Address and mask as the programs compare them: network byte order words.
    fn words(&self) -> (u8, [u32; 4], [u32; 4]) {
        let (family, bytes, bits) = match self.addr {
            IpAddr::V4(a) => {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.octets());
                (PEER_V4, b, self.prefix as u32)
            }
            IpAddr::V6(a) => (PEER_V6, a.octets(), self.prefix as u32),
        };
        let mut mask_bytes = [0u8; 16];
        for (i, m) in mask_bytes.iter_mut().enumerate() {
            let start = i as u32 * 8;
            *m = match bits.saturating_sub(start) {
                0 => 0,
                n if n >= 8 => 0xff,
                n => !(0xffu8 >> n),
            };
        }
        let word = |b: &[u8; 16], i: usize| {
            u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        };
        let mut addr = [0u32; 4];
        let mut mask = [0u32; 4];
        for i in 0..4 {
            mask[i] = word(&mask_bytes, i);
            addr[i] = word(&bytes, i) & mask[i];
        }
        (family, addr, mask)
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// The port, or the first of a range (`last_port`); 0 for an address-only partition.
    pub port: u16,
    pub protocol: Protocol,
    pub direction: Direction,
    pub peer: Option<Peer>,
    /// The last port of a range (`--port 2379-2381`); `None` for one port.
    pub last_port: Option<u16>,
    /// A port tuple: only the flow whose other end is on this port (`--remote-port`).
    pub remote_port: Option<u16>,
    /// An address-only partition (`partition --between A --and B`): no port at all.
    pub partition: Option<Arc<Partition>>,
}

impl Target {
    /// One port, any peer, both directions.
    pub fn port(port: u16, protocol: Protocol) -> Self {
        Self {
            port,
            protocol,
            direction: Direction::Both,
            peer: None,
            last_port: None,
            remote_port: None,
            partition: None,
        }
    }

    /// The ports whose rule-map keys the target compiles into (none for a partition).
    pub fn ports(&self) -> std::ops::RangeInclusive<u16> {
        if self.partition.is_some() {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        self.port..=self.last_port.unwrap_or(self.port)
    }

    /// Checks what no type rules out; errors name the request's field.
    pub fn validate(&self) -> Result<(), FaultError> {
        if let Some(partition) = &self.partition {
            let not_with = |field: &str, what: &str| {
                FaultError::invalid(
                    field,
                    format!("a partition cuts every port between its address sets: {what}"),
                )
            };
            if self.port != 0 || self.last_port.is_some() {
                return Err(not_with("target.port", "it takes no port"));
            }
            if self.remote_port.is_some() {
                return Err(not_with("target.remote_port", "it takes no remote port"));
            }
            if self.peer.is_some() {
                return Err(not_with(
                    "target.peer",
                    "it takes no peer (use between/and)",
                ));
            }
            if self.direction != Direction::Both {
                return Err(not_with(
                    "target.direction",
                    "it has no direction (use one_way)",
                ));
            }
            return partition.validate();
        }
        if self.port == 0 {
            return Err(FaultError::invalid(
                "target.port",
                "0 is not a port (1..=65535)",
            ));
        }
        if let Some(last) = self.last_port
            && last < self.port
        {
            return Err(FaultError::invalid(
                "target.port_end",
                format!("the range {}-{last} ends before it starts", self.port),
            ));
        }
        if self.remote_port == Some(0) {
            return Err(FaultError::invalid(
                "target.remote_port",
                "0 is not a port (1..=65535)",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Target {
    /// As `faultctl list` shows it: `tcp 2379-2381`, `udp 53 ↔ 5353`, `127.0.0.2/32 ↔ …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = &self.partition {
            return write!(f, "{} {p}", self.protocol);
        }
        write!(f, "{} {}", self.protocol, self.port)?;
        if let Some(last) = self.last_port {
            write!(f, "-{last}")?;
        }
        if let Some(remote) = self.remote_port {
            write!(f, " remote {remote}")?;
        }
        Ok(())
    }
}

/// How a limit kills a flow once it is reached.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Then {
    Drop,
    Reset,
}

impl fmt::Display for Then {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Then::Drop => "drop",
            Then::Reset => "reset",
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RefuseMode {
    /// connect() fails at once with ECONNREFUSED.
    Rst,
    /// connect() times out.
    Drop,
}

#[derive(Copy, Clone, Debug, PartialEq)]
pub enum Action {
    /// Packets vanish; `probability` in (0, 1].
    Drop { probability: f64 },
    /// Packets are dropped and answered with a RST to their sender.
    Reset { probability: f64 },
    /// New connections (SYN without ACK) fail; established ones are untouched.
    Refuse { mode: RefuseMode },
    /// Each flow dies once its payload bytes exceed `bytes`.
    LimitBytes { bytes: u64, then: Then },
    /// Each flow dies once `after` has passed since its first packet.
    LimitAge { after: Duration, then: Then },
    /// Connection attempts are recorded as events; packets are untouched.
    Record,
    /// A random share of packets vanish: `drop` under the name people look for.
    Loss { probability: f64 },
    /// Packets leave `latency` ± `jitter` later (Earliest Departure Time, needs `fq`).
    Delay { latency: Duration, jitter: Duration },
    /// Traffic held to `bytes_per_sec`: paced (delayed) where `fq` is available, policed
    /// (dropped above the rate) elsewhere. The daemon chooses; see [`RateMode`].
    Rate { bytes_per_sec: u64, mode: RateMode },
    /// One payload byte of a random share of packets is flipped, checksum kept valid.
    Corrupt { probability: f64 },
    /// A random share of packets is sent twice.
    Duplicate { probability: f64 },
    /// The TCP window advertised by matching packets is rewritten to 0.
    Stall,
    /// Corrupt with a per-byte density: in a random share `probability` of packets, each
    /// payload byte changes with `byte_probability` (see [`slicing`]).
    CorruptBytes {
        probability: f64,
        byte_probability: f64,
    },
    /// New TCP connections carry their stream in segments of at most `bytes`, spaced by
    /// `spacing` on the way out (see [`slicing`]).
    Slice { bytes: u32, spacing: Duration },
}

/// How a rate fault holds traffic to its rate.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RateMode {
    /// Packets over the rate wait (EDT pacing through fq): no loss, like netem's rate.
    Pace,
    /// Packets over the rate (beyond a small burst) are dropped, like `tc police`.
    Police,
}

impl fmt::Display for RateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RateMode::Pace => "pace",
            RateMode::Police => "police",
        })
    }
}

/// Largest delay accepted: latency + jitter must stay within the fq qdisc's horizon, beyond
/// which fq drops packets rather than holding them.
pub const MAX_DELAY: Duration = Duration::from_nanos(DELAY_HORIZON_NS);
/// Highest rate accepted: 100 Gbit/s in bytes.
pub const MAX_RATE_BYTES: u64 = 12_500_000_000;

/// Lowest paced rate: 64 kbit/s in bytes. A 64 KiB (GSO) packet then waits 8.2 s for its
/// turn, inside fq's 10 s horizon ([`DELAY_HORIZON_NS`]); slower, fq would drop it and every
/// packet behind it. Policing has no horizon and goes lower.
pub const MIN_PACED_RATE_BYTES: u64 = 8_000;

/// Burst a policer lets through at once: 10 ms worth of the rate, at least two full-size
/// (64 KiB GSO) packets so that a policed TCP flow is not starved by its own segments.
fn police_burst(bytes_per_sec: u64) -> u32 {
    (bytes_per_sec / 100).clamp(2 * 65_536, u32::MAX as u64) as u32
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Drop { .. } => "drop",
            Action::Reset { .. } => "reset",
            Action::Refuse { .. } => "refuse",
            Action::LimitBytes { .. } => "limit-bytes",
            Action::LimitAge { .. } => "limit-age",
            Action::Record => "record",
            Action::Loss { .. } => "loss",
            Action::Delay { .. } => "delay",
            Action::Rate { .. } => "rate",
            Action::Corrupt { .. } | Action::CorruptBytes { .. } => "corrupt",
            Action::Slice { .. } => "slice",
            Action::Duplicate { .. } => "duplicate",
            Action::Stall => "stall",
        }
    }

    /// Whether the action sets departure times, which only the fq qdisc honours.
    pub fn needs_fq(&self) -> bool {
        matches!(
            self,
            Action::Delay { .. }
                | Action::Rate {
                    mode: RateMode::Pace,
                    ..
                }
        ) || matches!(self, Action::Slice { spacing, .. } if !spacing.is_zero())
    }

    /// Whether the action acts on connection attempts only, which go to the port (and
    /// reports them as events).
    pub fn on_syns(&self) -> bool {
        matches!(self, Action::Refuse { .. } | Action::Record)
    }

    /// Whether the action forges TCP packets, and so cannot apply to UDP.
    fn needs_tcp(&self) -> bool {
        matches!(
            self,
            Action::Reset { .. }
                | Action::Refuse {
                    mode: RefuseMode::Rst
                }
                | Action::LimitBytes {
                    then: Then::Reset,
                    ..
                }
                | Action::LimitAge {
                    then: Then::Reset,
                    ..
                }
                | Action::Record
                | Action::Stall
                | Action::Slice { .. }
        )
    }

    /// (action code, probability threshold, parameter, then, aux) as the programs read them.
    pub(crate) fn slot(&self) -> (u8, u32, u64, u8, u32) {
        let then = |t: &Then| match t {
            Then::Drop => THEN_DROP,
            Then::Reset => THEN_RESET,
        };
        let always = u32::MAX;
        match self {
            Action::Drop { probability } | Action::Loss { probability } => {
                (ACTION_DROP, threshold(*probability), 0, 0, 0)
            }
            Action::Reset { probability } => (ACTION_RESET, threshold(*probability), 0, 0, 0),
            Action::Refuse {
                mode: RefuseMode::Rst,
            } => (ACTION_REFUSE_RST, always, 0, 0, 0),
            Action::Refuse {
                mode: RefuseMode::Drop,
            } => (ACTION_REFUSE_DROP, always, 0, 0, 0),
            Action::LimitBytes { bytes, then: t } => {
                (ACTION_LIMIT_BYTES, always, *bytes, then(t), 0)
            }
            Action::LimitAge { after, then: t } => (
                ACTION_LIMIT_AGE,
                always,
                after.as_nanos() as u64,
                then(t),
                0,
            ),
            Action::Record => (ACTION_RECORD, always, 0, 0, 0),
            Action::Delay { latency, jitter } => (
                ACTION_DELAY,
                always,
                latency.as_nanos() as u64,
                0,
                jitter.as_micros() as u32,
            ),
            // The burst is for policing, which a paced rate also does to what comes in
            // on interfaces other than lo.
            Action::Rate {
                bytes_per_sec,
                mode,
            } => (
                ACTION_RATE,
                always,
                *bytes_per_sec,
                match mode {
                    RateMode::Pace => RATE_PACE,
                    RateMode::Police => RATE_POLICE,
                },
                police_burst(*bytes_per_sec),
            ),
            Action::Corrupt { probability } => (ACTION_CORRUPT, threshold(*probability), 0, 0, 0),
            Action::Duplicate { probability } => {
                (ACTION_DUPLICATE, threshold(*probability), 0, 0, 0)
            }
            Action::Stall => (ACTION_STALL, always, 0, 0, 0),
            Action::CorruptBytes {
                probability,
                byte_probability,
            } => (
                ACTION_CORRUPT,
                threshold(*probability),
                slicing::byte_density(threshold(*byte_probability)),
                CORRUPT_DENSITY,
                threshold(*byte_probability),
            ),
            Action::Slice { bytes, spacing } => {
                (ACTION_SLICE, always, spacing.as_nanos() as u64, 0, *bytes)
            }
        }
    }
}

/// Maps a probability in (0, 1] to the threshold the programs compare a random u32 with:
/// the slot acts when `rand <= threshold`, which happens with probability (threshold+1)/2^32.
pub fn threshold(probability: f64) -> u32 {
    let scaled = (probability * 4_294_967_296.0).round();
    if scaled >= 4_294_967_296.0 {
        u32::MAX
    } else {
        (scaled as u64).saturating_sub(1) as u32
    }
}

/// A share of packets in (0, 1]; errors name `field` (a domain field) and give the share
/// in percent, which reads right whether the caller said 0.5 or 50 %.
pub fn validate_probability(p: f64, field: &str) -> Result<f64, FaultError> {
    if p.is_finite() && p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        // Rounded, so that 101 % does not print as 101.00000000000001 %.
        let percent = (p * 100.0 * 1e6).round() / 1e6;
        Err(FaultError::invalid(
            field,
            format!("{percent} % is not a share of packets in (0 %, 100 %]"),
        ))
    }
}

fn validate_delay(latency: Duration, jitter: Duration) -> Result<(), FaultError> {
    if latency.is_zero() {
        return Err(FaultError::invalid(
            "action.delay.latency",
            "a delay must be longer than 0",
        ));
    }
    if jitter > latency {
        return Err(FaultError::invalid(
            "action.delay.jitter",
            format!(
                "jitter {jitter:?} is larger than the latency {latency:?}: \
                 packets cannot leave before they were sent"
            ),
        ));
    }
    if latency + jitter > MAX_DELAY {
        return Err(FaultError::invalid(
            "action.delay.latency",
            format!(
                "latency + jitter = {:?} is beyond the horizon of {MAX_DELAY:?} (fq drops \
                 packets scheduled further ahead)",
                latency + jitter
            ),
        ));
    }
    Ok(())
}

/// A port number as callers give it (32 bits on the wire); errors name `field`.
pub fn validate_port(port: u32, field: &str) -> Result<u16, FaultError> {
    match u16::try_from(port) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(FaultError::invalid(
            field,
            format!("{port} is not a port (1..=65535)"),
        )),
    }
}

/// A signed count (as the wire and files carry numbers) as the domain's unsigned one;
/// errors name `field` and say the count in `unit`.
fn unsigned(n: i64, field: &str, unit: &str) -> Result<u64, FaultError> {
    u64::try_from(n).map_err(|_| FaultError::invalid(field, format!("{n} {unit} is negative")))
}

/// Actions from numbers as callers give them: signed counts in the units of the wire and
/// of configuration files. Only the sign is checked here; [`FaultSpec::validate`] checks
/// the rest, so each bound is stated once. Errors name the domain's fields.
impl Action {
    pub fn limit_bytes(bytes: i64, then: Then) -> Result<Self, FaultError> {
        Ok(Action::LimitBytes {
            bytes: unsigned(bytes, "action.limit_bytes.bytes", "bytes")?,
            then,
        })
    }

    pub fn limit_age_ms(after_ms: i64, then: Then) -> Result<Self, FaultError> {
        Ok(Action::LimitAge {
            after: Duration::from_millis(unsigned(after_ms, "action.limit_age.after", "ms")?),
            then,
        })
    }

    pub fn delay_us(latency_us: i64, jitter_us: i64) -> Result<Self, FaultError> {
        Ok(Action::Delay {
            latency: Duration::from_micros(unsigned(latency_us, "action.delay.latency", "µs")?),
            jitter: Duration::from_micros(unsigned(jitter_us, "action.delay.jitter", "µs")?),
        })
    }

    /// A rate in bits per second, held in whole bytes (rounded up); the mode is the
    /// engine's to choose.
    pub fn rate_bits(bits_per_second: i64) -> Result<Self, FaultError> {
        let bits = unsigned(bits_per_second, "action.rate.bytes_per_sec", "bit/s")?;
        Ok(Action::Rate {
            bytes_per_sec: bits.div_ceil(8),
            mode: RateMode::Police,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultSpec {
    pub target: Target,
    pub action: Action,
    pub ttl: Option<Duration>,
    /// Shared: the table gives a fault the previous fault's label when they are equal (see
    /// [`FaultTable::add_as`]), so 100 000 faults of one test hold one copy, not 100 000.
    pub label: Arc<str>,
}

impl FaultSpec {
    /// Checks the parts that no type rules out.
    pub fn validate(&self) -> Result<(), FaultError> {
        self.target.validate()?;
        if self.target.partition.is_some() {
            crate::partitions::validate_action(&self.action)?;
        }
        match self.action {
            Action::Drop { probability } => {
                validate_probability(probability, "action.drop.probability")?;
            }
            Action::Reset { probability } => {
                validate_probability(probability, "action.reset.probability")?;
            }
            Action::Loss { probability } => {
                validate_probability(probability, "action.loss.probability")?;
            }
            Action::Corrupt { probability } => {
                validate_probability(probability, "action.corrupt.probability")?;
            }
            Action::CorruptBytes {
                probability,
                byte_probability,
            } => {
                validate_probability(probability, "action.corrupt.probability")?;
                slicing::validate_byte_probability(byte_probability)?;
            }
            Action::Slice { bytes, spacing } => slicing::validate_slice(bytes, spacing)?,
            Action::Duplicate { probability } => {
                validate_probability(probability, "action.duplicate.probability")?;
            }
            Action::Delay { latency, jitter } => validate_delay(latency, jitter)?,
            Action::Rate { bytes_per_sec, .. } if bytes_per_sec == 0 => {
                return Err(FaultError::invalid(
                    "action.rate.bytes_per_sec",
                    "0 bit/s is not a rate above 0",
                ));
            }
            Action::Rate {
                bytes_per_sec,
                mode: RateMode::Pace,
            } if bytes_per_sec < MIN_PACED_RATE_BYTES => {
                return Err(FaultError::invalid(
                    "action.rate.bits_per_second",
                    format!(
                        "{} bit/s is below 64kbit, the lowest rate faultd paces: fq drops a \
                         packet held past its 10 s horizon, and one 64 KiB packet takes longer \
                         than that at a lower rate",
                        bytes_per_sec * 8
                    ),
                ));
            }
            Action::Rate { bytes_per_sec, .. } if bytes_per_sec > MAX_RATE_BYTES => {
                return Err(FaultError::invalid(
                    "action.rate.bytes_per_sec",
                    format!("{} bit/s is above 100gbit", bytes_per_sec * 8),
                ));
            }
            Action::LimitAge { after, .. } if after.is_zero() || after > MAX_TTL => {
                return Err(FaultError::invalid(
                    "action.limit_age.after",
                    format!("{} ms is not in 1 ms ..= 365 days", after.as_millis()),
                ));
            }
            _ => {}
        }
        // The handshake's options are agreed by both ends: a slice rewrites the MSS and
        // window scale of the SYN and of the SYN-ACK, which travel in opposite directions.
        // One direction would rewrite one of them (issue #23, defect 3): the client turns
        // window scaling off while the server keeps it, and windows are overrun. Rewriting
        // the other one too would act on packets outside the fault's direction.
        if matches!(self.action, Action::Slice { .. }) && self.target.direction != Direction::Both {
            return Err(FaultError::invalid(
                "target.direction",
                format!(
                    "slice acts in both directions, got {}: the MSS and window scale options \
                     of the SYN and of the SYN-ACK, which go opposite ways, are rewritten \
                     together or the two ends disagree on window scaling",
                    self.target.direction
                ),
            ));
        }
        // A partition resets TCP and drops the rest.
        if self.action.needs_tcp()
            && self.target.protocol != Protocol::Tcp
            && self.target.partition.is_none()
        {
            return Err(FaultError::invalid(
                "target.protocol",
                format!(
                    "{} needs tcp, got {}: only TCP has connections to reset, SYNs to see and a window to close{}",
                    self.action.name(),
                    self.target.protocol,
                    match self.action {
                        Action::Refuse { .. } => " (for udp use refuse --mode drop)",
                        Action::LimitBytes { .. } | Action::LimitAge { .. } => " (use --then drop)",
                        Action::Slice { .. } => {
                            " (UDP has no segments: a datagram arrives whole, as it was sent)"
                        }
                        _ => "",
                    }
                ),
            ));
        }
        if let Some(ttl) = self.ttl
            && (ttl.is_zero() || ttl > MAX_TTL)
        {
            return Err(FaultError::invalid(
                "ttl",
                format!("{} ms is not in 1 ms ..= 365 days", ttl.as_millis()),
            ));
        }
        if self.label.len() > MAX_LABEL {
            return Err(FaultError::invalid(
                "label",
                format!(
                    "{} bytes is longer than the limit of {MAX_LABEL} bytes",
                    self.label.len()
                ),
            ));
        }
        Ok(())
    }

    /// The rule-map keys the fault compiles into: each port of its range, for each
    /// protocol; none for a partition.
    fn keys(&self) -> impl Iterator<Item = PortKey> + '_ {
        self.target.ports().flat_map(|port| {
            self.target
                .protocol
                .numbers()
                .iter()
                .map(move |&proto| PortKey::new(proto, port))
        })
    }
}

/// Who added a fault, as the kernel identified the caller (see `access`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    /// The caller's user id; `None` for a remote caller (known by its certificate) or a
    /// caller faultd could not identify.
    pub uid: Option<u32>,
    /// The calling process; `None` when the kernel did not say (e.g. remote callers).
    pub pid: Option<u32>,
    /// The calling process's command name (`/proc/PID/comm`), e.g. `faultctl`.
    pub command: String,
    /// For remote callers: their address and certificate subject. Empty for local ones.
    pub remote: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(uid) = self.uid {
            parts.push(format!("uid {uid}"));
        }
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if !self.command.is_empty() {
            parts.push(format!("({})", self.command));
        }
        if !self.remote.is_empty() {
            parts.push(format!("remote {}", self.remote));
        }
        if parts.is_empty() {
            return f.write_str("unknown");
        }
        f.write_str(&parts.join(" "))
    }
}

/// Which faults a selective clear removes: those matching every criterion given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub label: Option<String>,
    pub owner_uid: Option<u32>,
}

impl Selector {
    pub fn matches(&self, fault: &Fault) -> bool {
        self.label.as_ref().is_none_or(|l| **l == *fault.spec.label)
            && self
                .owner_uid
                .is_none_or(|uid| fault.owner.uid == Some(uid))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    pub id: u64,
    pub spec: FaultSpec,
    pub created: SystemTime,
    pub expires: Option<SystemTime>,
    /// Index of the fault's counters in the per-CPU counter array.
    pub counter: u32,
    /// Who added it; shared by the faults one caller adds in a row (see
    /// [`FaultTable::add_as`]): 100 000 faults then hold one copy of its strings.
    pub owner: Arc<Owner>,
    /// The client session it is bound to (removed when that session ends), if any.
    pub session: Option<u64>,
}

impl Fault {
    fn slot(&self) -> FaultSlot {
        let (action, threshold, param, then, aux) = self.spec.action.slot();
        // Connection attempts travel to the port, whatever direction was asked for.
        let directions = if self.spec.action.on_syns() {
            DIR_TO_PORT
        } else {
            self.spec.target.direction.bits()
        };
        let (peer_family, peer_addr, peer_mask) = match self.spec.target.peer {
            Some(peer) => peer.words(),
            None => (PEER_ANY, [0; 4], [0; 4]),
        };
        FaultSlot {
            counter: self.counter,
            threshold,
            action,
            directions,
            peer_family,
            then,
            aux,
            fault_id: self.id,
            param,
            peer_addr,
            peer_mask,
            remote_port: self.spec.target.remote_port.unwrap_or(0),
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Where compiled entries go: the datapath's maps, or a recording in tests.
pub trait RuleSink: Send {
    /// Installs (replacing atomically) or, with `None`, removes the entry for `key`.
    fn write_rule(&mut self, key: PortKey, rule: Option<&PortRule>) -> Result<(), FaultError>;
    /// Zeroes a counter slot before a new fault uses it.
    fn reset_counters(&mut self, counter: u32) -> Result<(), FaultError>;
    /// The counters of a slot, summed over CPUs.
    fn read_counters(&self, counter: u32) -> Result<FaultCounters, FaultError>;
    /// Returns once every program run that may have read the rules as they were before the
    /// call has ended (an RCU grace period): what those runs held of a removed fault (its
    /// counter slot, its flows' state) is then no packet's any more.
    fn wait_for_readers(&mut self) -> Result<(), FaultError> {
        Ok(())
    }
    /// Deletes the per-flow state the programs keep for these (removed) faults. Best
    /// effort: ids are never reused, so what is left over is never read again, only takes
    /// room; the sink reports its own failures.
    fn forget_flows(&mut self, _fault_ids: &[u64]) {}
    /// The limits' flow table (stats, metrics); `None` without programs.
    fn flow_stats(&self) -> Option<crate::datapath::FlowTable> {
        None
    }
    /// The programs' maps (doctor); none without programs.
    fn map_usage(&self) -> Vec<crate::datapath::MapUsage> {
        Vec::new()
    }
    /// Installs the partitions as compiled (replacing what was written before), so that
    /// no packet sees a partition half installed; see `partitions`.
    fn write_partitions(&mut self, _compiled: &CompiledPartitions) -> Result<(), FaultError> {
        Err(FaultError::Refused(
            "address-only partitions need faultd's programs".into(),
        ))
    }
}

/// The set of active faults, indexed by the rule-map key they compile into.
#[derive(Default)]
pub struct FaultTable {
    /// Boxed: a B-tree filled in id order keeps its nodes about half full, and half-empty
    /// slots of a 170-byte `Fault` cost more than the fault (100 000 faults: 22 MiB).
    faults: BTreeMap<u64, Box<Fault>>,
    /// The faults on each rule key, in id order. Inline up to two: a vector's allocation
    /// per key was 3 MB of faultd's heap with 100 000 faults.
    by_key: HashMap<PortKey, SmallVec<[u64; 2]>>,
    last_id: u64,
    /// Counter slots of removed faults, free for a new fault. A slot is here, in
    /// `retired_counters` or with exactly one fault, never two of them: a new fault's slot
    /// is zeroed, which must never hit a live fault's counters.
    free_counters: Vec<u32>,
    /// Counter slots of removed faults that packets may still be counting into (they read
    /// the fault's rule before it left the index): free only after a grace period
    /// (`RuleSink::wait_for_readers`), else a packet of the old fault counts on the new one
    /// and uses its rate state (issue #23, defect 7).
    retired_counters: Vec<u32>,
    next_counter: u32,
    /// Ports (tcp) no fault may touch: faultd's own API.
    protected_tcp_ports: Vec<u16>,
    limits: Limits,
    /// The owner of the last fault added, given again to the next one of the same owner.
    last_owner: Option<Arc<Owner>>,
    /// The label of the last fault added, given again to the next one with the same text.
    last_label: Option<Arc<str>>,
    /// The partitions' slots in the programs' partition maps.
    partitions: PartitionTable,
}

impl FaultTable {
    pub fn new(protected_tcp_ports: Vec<u16>) -> Self {
        Self {
            protected_tcp_ports,
            ..Default::default()
        }
    }

    /// The same table with other limits (checked by [`Limits::validate`] beforehand).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a fault that reports connection attempts (refuse, record) is on TCP `port`.
    pub fn reports_syns(&self, port: u16) -> bool {
        self.faults.values().any(|f| {
            f.spec.action.on_syns()
                && f.spec.target.ports().contains(&port)
                && f.spec.target.protocol.covers_tcp()
        })
    }

    /// The faults whose TTL has run out at `now`.
    pub fn expired(&self, now: SystemTime) -> Vec<u64> {
        self.faults
            .values()
            .filter(|f| f.expires.is_some_and(|at| at <= now))
            .map(|f| f.id)
            .collect()
    }

    /// When the next TTL runs out, if any fault has one.
    pub fn next_expiry(&self) -> Option<SystemTime> {
        self.faults.values().filter_map(|f| f.expires).min()
    }

    pub fn get(&self, id: u64) -> Option<&Fault> {
        self.faults.get(&id).map(|f| &**f)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Fault> {
        self.faults.values().map(|f| &**f)
    }

    pub fn len(&self) -> usize {
        self.faults.len()
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// The entry the programs should see for `key`, or `None` when no fault is on it.
    pub fn compile(&self, key: PortKey) -> Option<PortRule> {
        let ids = self.by_key.get(&key)?;
        let mut rule = PortRule::default();
        for (slot, id) in rule.slots.iter_mut().zip(ids) {
            *slot = self.faults[id].slot();
        }
        rule.len = ids.len().min(MAX_FAULTS_PER_PORT) as u32;
        Some(rule)
    }

    /// Validates `spec` and installs it: the table changes only if every map write succeeds.
    /// Its owner is unknown; see [`FaultTable::add_as`].
    pub fn add(
        &mut self,
        spec: FaultSpec,
        now: SystemTime,
        sink: &mut dyn RuleSink,
    ) -> Result<Fault, FaultError> {
        self.add_as(spec, Owner::default(), now, sink)
    }

    /// [`FaultTable::add`], recording who added the fault.
    pub fn add_as(
        &mut self,
        spec: FaultSpec,
        owner: Owner,
        now: SystemTime,
        sink: &mut dyn RuleSink,
    ) -> Result<Fault, FaultError> {
        spec.validate()?;
        let expires = self.check_ttl(&spec, now)?;
        self.check_room(&spec)?;
        let counter = self.take_counter(sink)?;
        let spec = FaultSpec {
            label: self.shared_label(spec.label),
            ..spec
        };
        let fault = Fault {
            id: self.last_id + 1,
            expires,
            spec,
            created: now,
            counter,
            owner: self.shared_owner(owner),
            session: None,
        };
        if let Err(e) = sink.reset_counters(counter) {
            self.free_counters.push(counter);
            return Err(e);
        }
        self.insert(fault.clone());
        if let Err(e) = self.write_keys(&fault.spec, sink) {
            self.unlink(fault.id);
            // Some of its keys may have been in force a moment.
            self.retired_counters.push(counter);
            // Best effort: put back what the programs saw before.
            let _ = self.write_keys(&fault.spec, sink);
            return Err(e);
        }
        self.last_id = fault.id;
        Ok(fault)
    }

    /// Removes a fault: the table changes only if every map write succeeds, and the
    /// fault's counter slot is free for reuse only then.
    pub fn remove(&mut self, id: u64, sink: &mut dyn RuleSink) -> Result<Fault, FaultError> {
        let fault = self.remove_rules(id, sink)?;
        sink.forget_flows(&[id]);
        Ok(fault)
    }

    /// [`FaultTable::remove`], leaving the fault's per-flow state to the caller (deleted
    /// for many faults in one pass over the flow tables).
    fn remove_rules(&mut self, id: u64, sink: &mut dyn RuleSink) -> Result<Fault, FaultError> {
        let fault = self.unlink(id).ok_or(FaultError::NotFound(id))?;
        if let Err(e) = self.write_keys(&fault.spec, sink) {
            // The fault stays, with its counter slot: the programs may still count into it.
            self.insert(fault.clone());
            let _ = self.write_keys(&fault.spec, sink);
            return Err(e);
        }
        self.retired_counters.push(fault.counter);
        Ok(fault)
    }

    /// Binds a fault to a client session; returns it as bound, `None` when no such fault.
    pub fn bind_session(&mut self, id: u64, session: u64) -> Option<&Fault> {
        let fault = self.faults.get_mut(&id)?;
        fault.session = Some(session);
        Some(fault)
    }

    /// The ids of the faults bound to `session`.
    pub fn session_faults(&self, session: u64) -> Vec<u64> {
        self.faults
            .values()
            .filter(|f| f.session == Some(session))
            .map(|f| f.id)
            .collect()
    }

    pub fn clear(&mut self, sink: &mut dyn RuleSink) -> Result<usize, FaultError> {
        let ids: Vec<u64> = self.faults.keys().copied().collect();
        let removed = self.remove_all(&ids, sink)?;
        Ok(removed.len())
    }

    /// Removes the faults `ids` in turn, then their per-flow state in one pass; on an
    /// error, those removed so far stay removed (and their state is deleted).
    fn remove_all(
        &mut self,
        ids: &[u64],
        sink: &mut dyn RuleSink,
    ) -> Result<Vec<Fault>, FaultError> {
        let mut removed = Vec::with_capacity(ids.len());
        let mut result = Ok(());
        for &id in ids {
            match self.remove_rules(id, sink) {
                Ok(fault) => removed.push(fault),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if !removed.is_empty() {
            let gone: Vec<u64> = removed.iter().map(|f| f.id).collect();
            sink.forget_flows(&gone);
        }
        result.map(|()| removed)
    }

    /// Removes the faults `selector` matches, and returns them (for the log). On an error,
    /// the faults removed so far stay removed and the others stay.
    pub fn clear_matching(
        &mut self,
        selector: &Selector,
        sink: &mut dyn RuleSink,
    ) -> Result<Vec<Fault>, FaultError> {
        let ids: Vec<u64> = self
            .faults
            .values()
            .filter(|f| selector.matches(f))
            .map(|f| f.id)
            .collect();
        self.remove_all(&ids, sink)
    }

    /// The TTL within `--max-ttl`, and when it runs out.
    fn check_ttl(
        &self,
        spec: &FaultSpec,
        now: SystemTime,
    ) -> Result<Option<SystemTime>, FaultError> {
        let Some(ttl) = spec.ttl else {
            return Ok(None);
        };
        let beyond = || {
            FaultError::invalid(
                "ttl",
                format!(
                    "{} ms is beyond this faultd's limit of {} (faultd --max-ttl)",
                    ttl.as_millis(),
                    humantime::format_duration(self.limits.max_ttl)
                ),
            )
        };
        if ttl > self.limits.max_ttl {
            return Err(beyond());
        }
        now.checked_add(ttl).map(Some).ok_or_else(beyond)
    }

    fn check_room(&self, spec: &FaultSpec) -> Result<(), FaultError> {
        if self.faults.len() >= self.limits.max_faults {
            return Err(FaultError::Exhausted(format!(
                "{} faults are installed, this faultd's limit (faultd --max-faults)",
                self.faults.len()
            )));
        }
        let t = &spec.target;
        if let Some(partition) = &t.partition {
            return self.partitions.check_room(partition);
        }
        // Whatever its direction or peer, a fault on the port cuts some of the API's flows.
        if let Some(port) = self
            .protected_tcp_ports
            .iter()
            .find(|p| t.protocol.covers_tcp() && t.ports().contains(p))
        {
            return Err(FaultError::Refused(format!(
                "target.port: {port} is faultd's own API port; a fault there would cut faultd off",
            )));
        }
        let mut new_keys = 0;
        for key in spec.keys() {
            let used = self.by_key.get(&key).map_or(0, |ids| ids.len());
            if used >= MAX_FAULTS_PER_PORT {
                return Err(FaultError::Exhausted(format!(
                    "port {} already has {MAX_FAULTS_PER_PORT} faults, the most one port can carry",
                    key.port
                )));
            }
            new_keys += usize::from(used == 0);
        }
        // The rule map holds two keys per fault of --max-faults (datapath::MapSizes).
        let capacity = 2 * self.limits.max_faults;
        if self.by_key.len() + new_keys > capacity {
            return Err(FaultError::Exhausted(format!(
                "target.port: {} more (protocol, port) keys would pass this faultd's {capacity} \
                 (2 × faultd --max-faults; {} in use); a range takes one key per port and \
                 protocol",
                new_keys,
                self.by_key.len()
            )));
        }
        Ok(())
    }

    /// A counter slot no packet counts into: a free one, a never used one, or else the
    /// retired ones after one grace period for all of them (so the wait is rare: once per
    /// as many removals as there are retired slots).
    fn take_counter(&mut self, sink: &mut dyn RuleSink) -> Result<u32, FaultError> {
        if let Some(c) = self.free_counters.pop() {
            return Ok(c);
        }
        // The counter maps hold --max-faults slots (datapath::MapSizes).
        if self.next_counter < self.limits.max_faults.min(MAX_FAULTS as usize) as u32 {
            self.next_counter += 1;
            return Ok(self.next_counter - 1);
        }
        if self.retired_counters.is_empty() {
            return Err(FaultError::Exhausted(format!(
                "all {} counter slots are taken (faultd --max-faults)",
                self.next_counter
            )));
        }
        sink.wait_for_readers()?;
        self.free_counters.append(&mut self.retired_counters);
        Ok(self.free_counters.pop().expect("retired slots were moved"))
    }

    fn shared_label(&mut self, label: Arc<str>) -> Arc<str> {
        match &self.last_label {
            Some(last) if *last == label => last.clone(),
            _ => self.last_label.insert(label).clone(),
        }
    }

    fn shared_owner(&mut self, owner: Owner) -> Arc<Owner> {
        match &self.last_owner {
            Some(last) if **last == owner => last.clone(),
            _ => self.last_owner.insert(Arc::new(owner)).clone(),
        }
    }

    fn insert(&mut self, fault: Fault) {
        if let Some(partition) = &fault.spec.target.partition {
            self.partitions.insert(fault.id, partition.clone());
        }
        for key in fault.spec.keys() {
            let ids = self.by_key.entry(key).or_default();
            ids.push(fault.id);
            ids.sort_unstable();
        }
        self.faults.insert(fault.id, Box::new(fault));
    }

    /// Takes a fault out of the table (not out of the maps); its counter slot stays
    /// taken until the caller frees it.
    fn unlink(&mut self, id: u64) -> Option<Fault> {
        let fault = *self.faults.remove(&id)?;
        self.partitions.remove(id);
        for key in fault.spec.keys() {
            if let Some(ids) = self.by_key.get_mut(&key) {
                ids.retain(|i| *i != id);
                if ids.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
        Some(fault)
    }

    fn write_keys(&self, spec: &FaultSpec, sink: &mut dyn RuleSink) -> Result<(), FaultError> {
        if spec.target.partition.is_some() {
            return sink.write_partitions(&self.compile_partitions());
        }
        for key in spec.keys() {
            sink.write_rule(key, self.compile(key).as_ref())?;
        }
        Ok(())
    }

    /// The partition maps' contents for the partitions in the table.
    pub fn compile_partitions(&self) -> CompiledPartitions {
        self.partitions
            .compile(|id| self.faults.get(&id).map(|f| &**f))
    }
}

/// A fault as the programs see it, read back from compiled rule-map entries by
/// [`decode_rules`]. The map holds less than a [`FaultSpec`]: no TTL and no label, `loss`
/// compiles to the slot `drop` does (so it reads back as `drop`), a probability is held as a
/// 32-bit threshold, a delay's jitter in whole microseconds, a peer already masked, and
/// `refuse` and `record` always act on what goes to the port. [`DecodedFault::check_against`]
/// compares what the map can hold.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedFault {
    pub id: u64,
    pub counter: u32,
    pub target: Target,
    pub action: Action,
}

/// Compiled entries that no fault table could have written.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{0}")]
pub struct DecodeError(String);

/// The probability a threshold stands for: the slot acts when `rand <= threshold`.
fn probability_of(threshold: u32) -> f64 {
    (threshold as f64 + 1.0) / 4_294_967_296.0
}

/// Reads every fault back from rule-map entries (all of them: a fault on `any` is in a tcp
/// and a udp entry, which must agree). Strict: anything compiling never writes — an unknown
/// code, a stray parameter, a used slot past `len`, slots out of id order — is an error.
pub fn decode_rules(
    entries: impl IntoIterator<Item = (PortKey, PortRule)>,
) -> Result<BTreeMap<u64, DecodedFault>, DecodeError> {
    let mut faults: BTreeMap<u64, DecodedFault> = BTreeMap::new();
    let mut keys_of: BTreeMap<u64, std::collections::BTreeSet<(u8, u16)>> = BTreeMap::new();
    for (key, rule) in entries {
        let err = |reason: String| DecodeError(format!("entry {key:?}: {reason}"));
        if !matches!(key.protocol, PROTO_TCP | PROTO_UDP) {
            let p = key.protocol;
            return Err(err(format!("protocol {p} is neither tcp nor udp")));
        }
        if key.port == 0 || key._pad != 0 || rule._pad != 0 {
            return Err(err("port 0 or padding set".into()));
        }
        let len = rule.len as usize;
        if len == 0 || len > MAX_FAULTS_PER_PORT {
            return Err(err(format!(
                "len {len} is not in 1..={MAX_FAULTS_PER_PORT}"
            )));
        }
        if rule.slots[len..].iter().any(|s| *s != FaultSlot::default()) {
            return Err(err("a slot past len is set".into()));
        }
        if rule.slots[..len]
            .windows(2)
            .any(|w| w[0].fault_id >= w[1].fault_id)
        {
            return Err(err("slots are not in increasing id order".into()));
        }
        for slot in &rule.slots[..len] {
            let fault = decode_slot(key.port, slot).map_err(err)?;
            let keys = keys_of.entry(fault.id).or_default();
            if !keys.insert((key.protocol, key.port)) {
                return Err(err(format!("fault {} is in it twice", fault.id)));
            }
            match faults.get(&fault.id) {
                None => {
                    faults.insert(fault.id, fault);
                }
                // The same fault in another entry: it was on `any`, or on a range.
                Some(seen) => {
                    let mut same = fault.clone();
                    same.target.port = seen.target.port;
                    if *seen != same {
                        return Err(err(format!(
                            "fault {} differs between tcp and udp, or between its ports",
                            fault.id
                        )));
                    }
                }
            }
        }
    }
    for (id, keys) in keys_of {
        let fault = faults.get_mut(&id).expect("decoded with its keys");
        let ports = |proto: u8| -> Vec<u16> {
            keys.iter()
                .filter(|(p, _)| *p == proto)
                .map(|(_, port)| *port)
                .collect()
        };
        let (tcp, udp) = (ports(PROTO_TCP), ports(PROTO_UDP));
        let (protocol, ports) = match (tcp.is_empty(), udp.is_empty()) {
            (false, true) => (Protocol::Tcp, tcp),
            (true, false) => (Protocol::Udp, udp),
            _ if tcp == udp => (Protocol::Any, tcp),
            _ => {
                return Err(DecodeError(format!(
                    "fault {id} is on other ports for tcp than for udp"
                )));
            }
        };
        let (first, last) = (ports[0], ports[ports.len() - 1]);
        if usize::from(last - first) + 1 != ports.len() {
            return Err(DecodeError(format!(
                "fault {id} is on ports {first}..={last} with gaps"
            )));
        }
        fault.target.protocol = protocol;
        fault.target.port = first;
        fault.target.last_port = (last != first).then_some(last);
    }
    Ok(faults)
}

/// One slot as a fault on `port` (its protocol is the entry's, set by the caller).
fn decode_slot(port: u16, slot: &FaultSlot) -> Result<DecodedFault, String> {
    let direction = match slot.directions {
        d if d == DIR_TO_PORT | DIR_FROM_PORT => Direction::Both,
        DIR_TO_PORT => Direction::ToPort,
        DIR_FROM_PORT => Direction::FromPort,
        d => return Err(format!("directions {d:#x}")),
    };
    let target = Target {
        direction,
        peer: decode_peer(slot)?,
        remote_port: (slot.remote_port != 0).then_some(slot.remote_port),
        ..Target::port(port, Protocol::Tcp)
    };
    if slot._pad != 0 || slot._pad2 != 0 {
        return Err("padding set".into());
    }
    Ok(DecodedFault {
        id: slot.fault_id,
        counter: slot.counter,
        target,
        action: decode_action(slot)?,
    })
}

fn decode_peer(slot: &FaultSlot) -> Result<Option<Peer>, String> {
    let bytes = |words: &[u32; 4]| {
        let mut b = [0u8; 16];
        for (chunk, w) in b.chunks_mut(4).zip(words) {
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        u128::from_be_bytes(b)
    };
    let (addr, mask) = (bytes(&slot.peer_addr), bytes(&slot.peer_mask));
    let bits = match slot.peer_family {
        PEER_ANY if addr == 0 && mask == 0 => return Ok(None),
        PEER_V4 => 32,
        PEER_V6 => 128,
        f => return Err(format!("peer family {f} with address {addr:#x}/{mask:#x}")),
    };
    let prefix = mask.leading_ones();
    let contiguous = mask.checked_shl(prefix).unwrap_or(0) == 0;
    let unused = if bits == 32 { u128::MAX >> 32 } else { 0 };
    if !contiguous || prefix > bits || addr & !mask != 0 || (addr | mask) & unused != 0 {
        return Err(format!(
            "peer {addr:#x} mask {mask:#x} is not a masked /{bits} network"
        ));
    }
    let ip = if bits == 32 {
        IpAddr::from(((addr >> 96) as u32).to_be_bytes())
    } else {
        IpAddr::from(addr.to_be_bytes())
    };
    Ok(Some(Peer {
        addr: ip,
        prefix: prefix as u8,
    }))
}

fn decode_action(slot: &FaultSlot) -> Result<Action, String> {
    let probability = probability_of(slot.threshold);
    let then = |t: u8| match t {
        THEN_DROP => Ok(Then::Drop),
        THEN_RESET => Ok(Then::Reset),
        t => Err(format!("then {t}")),
    };
    let (action, uses_threshold, uses_param, uses_then, uses_aux) = match slot.action {
        ACTION_DROP => (Action::Drop { probability }, true, false, false, false),
        ACTION_RESET => (Action::Reset { probability }, true, false, false, false),
        ACTION_CORRUPT if slot.then == CORRUPT_DENSITY => {
            let byte_probability = probability_of(slot.aux);
            if slot.param != slicing::byte_density(slot.aux) {
                return Err(format!(
                    "corrupt slot with density {} for its aux",
                    slot.param
                ));
            }
            let action = Action::CorruptBytes {
                probability,
                byte_probability,
            };
            (action, true, true, true, true)
        }
        ACTION_CORRUPT => (Action::Corrupt { probability }, true, false, false, false),
        ACTION_SLICE => {
            let (bytes, spacing) = (slot.aux, Duration::from_nanos(slot.param));
            (Action::Slice { bytes, spacing }, false, true, false, true)
        }
        ACTION_DUPLICATE => (Action::Duplicate { probability }, true, false, false, false),
        ACTION_REFUSE_RST => {
            let mode = RefuseMode::Rst;
            (Action::Refuse { mode }, false, false, false, false)
        }
        ACTION_REFUSE_DROP => {
            let mode = RefuseMode::Drop;
            (Action::Refuse { mode }, false, false, false, false)
        }
        ACTION_LIMIT_BYTES => {
            let (bytes, then) = (slot.param, then(slot.then)?);
            (Action::LimitBytes { bytes, then }, false, true, true, false)
        }
        ACTION_LIMIT_AGE => {
            let (after, then) = (Duration::from_nanos(slot.param), then(slot.then)?);
            (Action::LimitAge { after, then }, false, true, true, false)
        }
        ACTION_RECORD => (Action::Record, false, false, false, false),
        ACTION_STALL => (Action::Stall, false, false, false, false),
        ACTION_DELAY => {
            let latency = Duration::from_nanos(slot.param);
            let jitter = Duration::from_micros(slot.aux.into());
            (Action::Delay { latency, jitter }, false, true, false, true)
        }
        ACTION_RATE => {
            let mode = match slot.then {
                RATE_PACE => RateMode::Pace,
                RATE_POLICE => RateMode::Police,
                m => return Err(format!("rate mode {m}")),
            };
            // The burst (aux) is derived from the rate; a policer without one passes nothing.
            if slot.aux == 0 {
                return Err("rate slot without a burst".into());
            }
            let bytes_per_sec = slot.param;
            (
                Action::Rate {
                    bytes_per_sec,
                    mode,
                },
                false,
                true,
                true,
                true,
            )
        }
        a => return Err(format!("action code {a}")),
    };
    let stray = [
        (!uses_threshold && slot.threshold != u32::MAX, "threshold"),
        (!uses_param && slot.param != 0, "param"),
        (!uses_then && slot.then != 0, "then"),
        (!uses_aux && slot.aux != 0, "aux"),
    ];
    match stray.iter().find(|(bad, _)| *bad) {
        Some((_, field)) => Err(format!("{} slot has a stray {field}", action.name())),
        None => Ok(action),
    }
}

impl DecodedFault {
    /// Whether this is what `spec` compiles to, in what the map can hold (see
    /// [`DecodedFault`]); the error names each difference.
    pub fn check_against(&self, spec: &FaultSpec) -> Result<(), String> {
        let mut diffs = Vec::new();
        let t = &spec.target;
        let direction = match spec.action {
            Action::Refuse { .. } | Action::Record => Direction::ToPort,
            _ => t.direction,
        };
        let expected = (t.ports(), t.protocol, direction, t.remote_port);
        let got = (
            self.target.ports(),
            self.target.protocol,
            self.target.direction,
            self.target.remote_port,
        );
        if expected != got {
            diffs.push(format!("target {got:?}, expected {expected:?}"));
        }
        if self.target.peer != t.peer.map(masked) {
            diffs.push(format!(
                "peer {:?}, expected {:?}",
                self.target.peer, t.peer
            ));
        }
        if !same_action(&spec.action, &self.action) {
            diffs.push(format!(
                "action {:?}, expected {:?}",
                self.action, spec.action
            ));
        }
        match diffs.is_empty() {
            true => Ok(()),
            false => Err(format!("fault {}: {}", self.id, diffs.join("; "))),
        }
    }
}

/// `peer` with the bits past its prefix cleared.
fn masked(peer: Peer) -> Peer {
    let keep = |bits: u32, width: u32| match bits {
        0 => 0,
        b => u128::MAX << (width - b),
    };
    let addr = match peer.addr {
        IpAddr::V4(a) => {
            let m = keep(peer.prefix.into(), 32) as u32;
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => IpAddr::V6((u128::from(a) & keep(peer.prefix.into(), 128)).into()),
    };
    Peer { addr, ..peer }
}

/// Whether `decoded` is `spec`'s action as compiled: probabilities within one step of the
/// 32-bit threshold, jitter in whole microseconds, loss as drop.
fn same_action(spec: &Action, decoded: &Action) -> bool {
    let close = |p: f64, q: f64| (p - q).abs() <= 1.0 / 4_294_967_296.0;
    match (spec, decoded) {
        (
            Action::Drop { probability: p } | Action::Loss { probability: p },
            Action::Drop { probability: q },
        )
        | (Action::Reset { probability: p }, Action::Reset { probability: q })
        | (Action::Corrupt { probability: p }, Action::Corrupt { probability: q })
        | (Action::Duplicate { probability: p }, Action::Duplicate { probability: q }) => {
            close(*p, *q)
        }
        (
            Action::CorruptBytes {
                probability: p,
                byte_probability: b,
            },
            Action::CorruptBytes {
                probability: q,
                byte_probability: c,
            },
        ) => close(*p, *q) && close(*b, *c),
        (
            Action::Delay { latency, jitter },
            Action::Delay {
                latency: l,
                jitter: j,
            },
        ) => latency == l && jitter.as_micros() == j.as_micros(),
        (spec, decoded) => spec == decoded,
    }
}

#[cfg(test)]
mod decode_tests {
    use super::tests::{MemorySink, drop_spec};
    use super::*;

    fn spec(port: u16, protocol: Protocol, action: Action) -> FaultSpec {
        let mut s = drop_spec(port, protocol);
        s.action = action;
        s
    }

    fn table_with(specs: &[FaultSpec]) -> (Vec<Fault>, MemorySink) {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let now = SystemTime::UNIX_EPOCH;
        let faults = specs
            .iter()
            .map(|s| table.add(s.clone(), now, &mut sink).unwrap())
            .collect();
        (faults, sink)
    }

    fn every_action() -> Vec<FaultSpec> {
        let then = Then::Drop;
        let mut specs = vec![
            spec(1, Protocol::Any, Action::Drop { probability: 1.0 }),
            spec(1, Protocol::Udp, Action::Loss { probability: 0.3 }),
            spec(2, Protocol::Tcp, Action::Reset { probability: 1e-12 }),
            spec(
                2,
                Protocol::Tcp,
                Action::Refuse {
                    mode: RefuseMode::Rst,
                },
            ),
            spec(
                3,
                Protocol::Udp,
                Action::Refuse {
                    mode: RefuseMode::Drop,
                },
            ),
            spec(
                4,
                Protocol::Tcp,
                Action::LimitBytes {
                    bytes: 0,
                    then: Then::Reset,
                },
            ),
            spec(
                4,
                Protocol::Any,
                Action::LimitBytes {
                    bytes: u64::MAX >> 1,
                    then,
                },
            ),
            spec(
                5,
                Protocol::Udp,
                Action::LimitAge {
                    after: MAX_TTL,
                    then,
                },
            ),
            spec(5, Protocol::Tcp, Action::Record),
            spec(6, Protocol::Any, Action::Corrupt { probability: 0.5 }),
            spec(6, Protocol::Any, Action::Duplicate { probability: 0.999 }),
            spec(7, Protocol::Tcp, Action::Stall),
            spec(
                7,
                Protocol::Any,
                Action::CorruptBytes {
                    probability: 0.25,
                    byte_probability: 1e-6,
                },
            ),
            spec(
                7,
                Protocol::Tcp,
                Action::Slice {
                    bytes: 48,
                    spacing: MAX_DELAY,
                },
            ),
            spec(
                10,
                Protocol::Tcp,
                Action::Slice {
                    bytes: 65_535,
                    spacing: Duration::ZERO,
                },
            ),
            spec(
                10,
                Protocol::Udp,
                Action::CorruptBytes {
                    probability: 1.0,
                    byte_probability: 1.0,
                },
            ),
            spec(
                8,
                Protocol::Tcp,
                Action::Delay {
                    latency: Duration::from_micros(9_999_000),
                    jitter: Duration::from_micros(1_000),
                },
            ),
            spec(
                9,
                Protocol::Any,
                Action::Rate {
                    bytes_per_sec: MAX_RATE_BYTES,
                    mode: RateMode::Pace,
                },
            ),
            spec(
                9,
                Protocol::Tcp,
                Action::Rate {
                    bytes_per_sec: 1,
                    mode: RateMode::Police,
                },
            ),
        ];
        let peers = [
            "198.18.7.9/15",
            "fd00::1:2/8",
            "0.0.0.0/0",
            "::/0",
            "10.1.2.3",
            "::1",
        ];
        for (i, peer) in peers.into_iter().enumerate() {
            let mut s = drop_spec(10, Protocol::Any);
            s.target.peer = Some(Peer::parse(peer, "target.peer").unwrap());
            s.target.direction = [Direction::ToPort, Direction::FromPort][i % 2];
            specs.push(s);
        }
        specs
    }

    /// Issue #23, defect 3: a slice in one direction would rewrite one handshake packet.
    #[test]
    fn a_slice_in_one_direction_is_refused_naming_the_direction() {
        for direction in [Direction::ToPort, Direction::FromPort] {
            let mut s = spec(
                80,
                Protocol::Tcp,
                Action::Slice {
                    bytes: 100,
                    spacing: Duration::ZERO,
                },
            );
            s.target.direction = direction;
            match s.validate() {
                Err(FaultError::Invalid { field, reason }) => {
                    assert_eq!(field, "target.direction", "{reason}");
                    assert!(reason.contains(&direction.to_string()), "{reason}");
                }
                other => panic!("{direction}: {other:?}"),
            }
            s.target.direction = Direction::Both;
            s.validate().expect("both directions");
        }
    }

    #[test]
    fn every_action_reads_back_as_its_spec() {
        let specs = every_action();
        let (faults, sink) = table_with(&specs);
        let decoded = decode_rules(sink.rules.clone()).unwrap();
        assert_eq!(decoded.len(), specs.len());
        for fault in &faults {
            let d = &decoded[&fault.id];
            assert_eq!(d.counter, fault.counter);
            d.check_against(&fault.spec).unwrap();
        }
    }

    #[test]
    fn what_the_map_cannot_hold_reads_back_as_compiled() {
        let mut refuse = spec(
            80,
            Protocol::Tcp,
            Action::Refuse {
                mode: RefuseMode::Rst,
            },
        );
        refuse.target.direction = Direction::FromPort;
        refuse.target.peer = Some(Peer::parse("198.18.7.9/15", "p").unwrap());
        let loss = spec(81, Protocol::Any, Action::Loss { probability: 0.25 });
        let (faults, sink) = table_with(&[refuse, loss]);
        let decoded = decode_rules(sink.rules).unwrap();
        let refuse = &decoded[&faults[0].id];
        assert_eq!(
            refuse.target.direction,
            Direction::ToPort,
            "SYNs go to the port"
        );
        let expected_peer = Peer {
            addr: "198.18.0.0".parse().unwrap(),
            prefix: 15,
        };
        assert_eq!(refuse.target.peer, Some(expected_peer));
        let loss = &decoded[&faults[1].id];
        assert_eq!(loss.target.protocol, Protocol::Any);
        assert_eq!(loss.action, Action::Drop { probability: 0.25 });
    }

    #[test]
    fn check_against_names_each_difference() {
        let delay = Action::Delay {
            latency: Duration::from_millis(5),
            jitter: Duration::from_micros(7),
        };
        let original = spec(8, Protocol::Tcp, delay);
        let (faults, sink) = table_with(&[original.clone()]);
        let decoded = &decode_rules(sink.rules).unwrap()[&faults[0].id];
        // Sub-microsecond jitter is not held; anything more is a difference.
        let mut close = original.clone();
        close.action = Action::Delay {
            latency: Duration::from_millis(5),
            jitter: Duration::from_nanos(7_900),
        };
        decoded.check_against(&close).unwrap();
        let mut other = original.clone();
        other.action = Action::Delay {
            latency: Duration::from_millis(5),
            jitter: Duration::from_micros(8),
        };
        other.target.port = 9;
        other.target.peer = Some(Peer::parse("::1", "p").unwrap());
        let err = decoded.check_against(&other).unwrap_err();
        for part in ["target", "peer", "action"] {
            assert!(err.contains(part), "{err}");
        }
        // A probability one threshold step away still matches; two steps do not.
        let half = spec(8, Protocol::Tcp, Action::Drop { probability: 0.5 });
        let (faults, sink) = table_with(&[half.clone()]);
        let decoded = &decode_rules(sink.rules).unwrap()[&faults[0].id];
        let step = 1.0 / 4_294_967_296.0;
        let mut near = half.clone();
        near.action = Action::Loss {
            probability: 0.5 + step,
        };
        decoded.check_against(&near).unwrap();
        near.action = Action::Drop {
            probability: 0.5 + 2.0 * step,
        };
        assert!(decoded.check_against(&near).is_err());
    }

    #[test]
    fn decode_refuses_entries_compiling_never_writes() {
        let specs = [
            spec(1, Protocol::Any, Action::Drop { probability: 1.0 }),
            spec(1, Protocol::Tcp, Action::Stall),
        ];
        let (_, sink) = table_with(&specs);
        let tcp = PortKey::new(PROTO_TCP, 1);
        let good = sink.rules.clone();
        decode_rules(good.clone()).unwrap();
        let mutations: Vec<(&str, Box<dyn Fn(&mut PortRule)>)> = vec![
            ("action code", Box::new(|r| r.slots[0].action = 99)),
            ("len", Box::new(|r| r.len = 0)),
            ("len", Box::new(|r| r.len = 9)),
            ("past len", Box::new(|r| r.slots[5].param = 1)),
            ("stray param", Box::new(|r| r.slots[1].param = 1)),
            ("stray threshold", Box::new(|r| r.slots[1].threshold = 5)),
            ("directions", Box::new(|r| r.slots[0].directions = 0)),
            (
                "differs between tcp and udp",
                Box::new(|r| r.slots[0].threshold = 5),
            ),
            ("id order", Box::new(|r| r.slots.swap(0, 1))),
            (
                "not a masked",
                Box::new(|r| {
                    r.slots[1].peer_family = PEER_V4;
                    r.slots[1].peer_mask[0] = u32::from_ne_bytes([255, 0, 255, 0]);
                }),
            ),
            (
                "not a masked",
                Box::new(|r| {
                    r.slots[1].peer_family = PEER_V4;
                    r.slots[1].peer_addr[0] = u32::from_ne_bytes([10, 0, 0, 1]);
                    r.slots[1].peer_mask[0] = u32::from_ne_bytes([255, 0, 0, 0]);
                }),
            ),
            ("peer family", Box::new(|r| r.slots[1].peer_family = 5)),
            (
                "without a burst",
                Box::new(|r| {
                    r.slots[1].action = ACTION_RATE;
                    r.slots[1].param = 1000;
                }),
            ),
        ];
        for (what, mutate) in mutations {
            let mut entries = good.clone();
            mutate(entries.get_mut(&tcp).unwrap());
            let err = decode_rules(entries).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        let mut entries = good.clone();
        entries.insert(PortKey::new(1, 1), good[&tcp]);
        assert!(
            decode_rules(entries)
                .unwrap_err()
                .to_string()
                .contains("protocol 1")
        );
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Records what the datapath would be told.
    #[derive(Default)]
    pub struct MemorySink {
        pub rules: HashMap<PortKey, PortRule>,
        pub fail_writes: bool,
        pub writes: usize,
        /// Counter slots zeroed, in order.
        pub resets: Vec<u32>,
        /// The fault ids of each forget_flows call, in order.
        pub forgotten: Vec<Vec<u64>>,
        /// Grace periods waited for (wait_for_readers).
        pub waits: usize,
        /// Each counter slot zeroed, with the grace periods waited before it.
        pub resets_after: Vec<(u32, usize)>,
        /// The partitions as last written.
        pub partitions: CompiledPartitions,
    }

    impl RuleSink for MemorySink {
        fn write_rule(&mut self, key: PortKey, rule: Option<&PortRule>) -> Result<(), FaultError> {
            if self.fail_writes {
                return Err(FaultError::Datapath("map full".into()));
            }
            self.writes += 1;
            match rule {
                Some(r) => self.rules.insert(key, *r),
                None => self.rules.remove(&key),
            };
            Ok(())
        }
        fn wait_for_readers(&mut self) -> Result<(), FaultError> {
            self.waits += 1;
            Ok(())
        }
        fn reset_counters(&mut self, counter: u32) -> Result<(), FaultError> {
            self.resets.push(counter);
            self.resets_after.push((counter, self.waits));
            Ok(())
        }
        fn read_counters(&self, _: u32) -> Result<FaultCounters, FaultError> {
            Ok(FaultCounters::default())
        }
        fn forget_flows(&mut self, fault_ids: &[u64]) {
            self.forgotten.push(fault_ids.to_vec());
        }
        fn write_partitions(&mut self, compiled: &CompiledPartitions) -> Result<(), FaultError> {
            if self.fail_writes {
                return Err(FaultError::Datapath("map full".into()));
            }
            self.writes += 1;
            self.partitions = compiled.clone();
            Ok(())
        }
    }

    pub fn drop_spec(port: u16, protocol: Protocol) -> FaultSpec {
        FaultSpec {
            target: Target::port(port, protocol),
            action: Action::Drop { probability: 1.0 },
            ttl: None,
            label: "".into(),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
    }

    /// Faults added in a row with the same label share its text; another label is its own.
    #[test]
    fn faults_in_a_row_share_an_equal_label() {
        let labelled = |port: u16, label: &str| FaultSpec {
            label: label.into(),
            ..drop_spec(port, Protocol::Tcp)
        };
        let specs = [
            labelled(7001, "chaos"),
            labelled(7002, "chaos"),
            labelled(7003, "other"),
        ];
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let faults: Vec<Fault> = specs
            .into_iter()
            .map(|s| table.add(s, now(), &mut sink).unwrap())
            .collect();
        assert!(Arc::ptr_eq(&faults[0].spec.label, &faults[1].spec.label));
        assert!(!Arc::ptr_eq(&faults[1].spec.label, &faults[2].spec.label));
        assert_eq!(&*faults[2].spec.label, "other");
    }

    #[test]
    fn drop_on_any_protocol_compiles_into_tcp_and_udp_entries() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let fault = table
            .add(drop_spec(2379, Protocol::Any), now(), &mut sink)
            .unwrap();
        assert_eq!(fault.id, 1);
        for proto in [PROTO_TCP, PROTO_UDP] {
            let rule = sink.rules[&PortKey::new(proto, 2379)];
            assert_eq!(rule.len, 1);
            assert_eq!(rule.slots[0].action, ACTION_DROP);
            assert_eq!(rule.slots[0].threshold, u32::MAX);
            assert_eq!(rule.slots[0].directions, DIR_TO_PORT | DIR_FROM_PORT);
        }
        table.remove(fault.id, &mut sink).unwrap();
        assert!(sink.rules.is_empty());
    }

    #[test]
    fn faults_on_one_port_compose_in_one_entry() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let mut a = drop_spec(80, Protocol::Tcp);
        a.target.direction = Direction::ToPort;
        let mut b = drop_spec(80, Protocol::Tcp);
        b.action = Action::Drop { probability: 0.5 };
        let fa = table.add(a, now(), &mut sink).unwrap();
        let fb = table.add(b, now(), &mut sink).unwrap();
        let rule = sink.rules[&PortKey::new(PROTO_TCP, 80)];
        assert_eq!(rule.len, 2);
        assert_eq!(rule.slots[0].counter, fa.counter);
        assert_eq!(rule.slots[0].directions, DIR_TO_PORT);
        assert_eq!(rule.slots[1].counter, fb.counter);
        assert_ne!(fa.counter, fb.counter);
        table.remove(fa.id, &mut sink).unwrap();
        let rule = sink.rules[&PortKey::new(PROTO_TCP, 80)];
        assert_eq!(rule.len, 1);
        assert_eq!(rule.slots[0].counter, fb.counter);
    }

    #[test]
    fn a_port_carries_at_most_max_faults() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        for _ in 0..MAX_FAULTS_PER_PORT {
            table
                .add(drop_spec(9, Protocol::Udp), now(), &mut sink)
                .unwrap();
        }
        let err = table
            .add(drop_spec(9, Protocol::Udp), now(), &mut sink)
            .unwrap_err();
        assert!(matches!(err, FaultError::Exhausted(_)), "{err}");
        assert_eq!(table.len(), MAX_FAULTS_PER_PORT);
    }

    #[test]
    fn failed_write_changes_nothing() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        table
            .add(drop_spec(1, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        sink.fail_writes = true;
        assert!(
            table
                .add(drop_spec(1, Protocol::Tcp), now(), &mut sink)
                .is_err()
        );
        assert_eq!(table.len(), 1);
        sink.fail_writes = false;
        // The id of the failed add is not burnt. Its counter slot waits for a grace period
        // (its key may have been in force a moment): the next fault takes a fresh one.
        let f = table
            .add(drop_spec(2, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        assert_eq!(f.id, 2);
        assert_eq!(f.counter, 2);
    }

    #[test]
    fn a_failed_removal_keeps_the_fault_and_its_counter_slot() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let live = table
            .add(drop_spec(1, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        sink.fail_writes = true;
        let err = table.remove(live.id, &mut sink).unwrap_err();
        assert!(matches!(err, FaultError::Datapath(_)), "{err}");
        assert_eq!(table.get(live.id), Some(&live), "the fault is still listed");
        sink.fail_writes = false;
        sink.resets.clear();
        let next = table
            .add(drop_spec(2, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        assert_ne!(
            next.counter, live.counter,
            "the new fault took the live fault's counter slot"
        );
        assert_eq!(sink.resets, [next.counter], "only the new slot is zeroed");
        // Once the removal succeeds the slot is retired (free after a grace period): two
        // new faults, two slots, neither shared.
        table.remove(live.id, &mut sink).unwrap();
        let a = table
            .add(drop_spec(3, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        let b = table
            .add(drop_spec(4, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        let counters: std::collections::HashSet<u32> = table.iter().map(|f| f.counter).collect();
        assert_eq!(counters.len(), table.len(), "a slot shared: {counters:?}");
        assert_ne!(b.counter, a.counter);
    }

    /// Issue #23, defect 7: a removed fault's counter slot (and rate state, indexed alike)
    /// is reused only after a grace period, so that a packet still counting on the removed
    /// fault never counts on the new one. No wait while never used slots remain.
    #[test]
    fn a_removed_faults_counter_slot_is_reused_only_after_a_grace_period() {
        let mut table = FaultTable::default().with_limits(Limits {
            max_faults: 2,
            ..Limits::default()
        });
        let mut sink = MemorySink::default();
        let a = table
            .add(drop_spec(1, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        table.remove(a.id, &mut sink).unwrap();
        let b = table
            .add(drop_spec(2, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        assert_ne!(b.counter, a.counter, "a fresh slot first");
        assert_eq!(sink.waits, 0, "no wait while fresh slots remain");
        let c = table
            .add(drop_spec(3, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        assert_eq!(c.counter, a.counter, "the retired slot, once all are used");
        assert_eq!(
            sink.resets_after.last(),
            Some(&(c.counter, 1)),
            "zeroed after one grace period"
        );
    }

    #[test]
    fn the_fault_limit_is_refused_naming_it() {
        let mut table = FaultTable::default().with_limits(Limits {
            max_faults: 3,
            ..Limits::default()
        });
        let mut sink = MemorySink::default();
        for port in 1..=3 {
            table
                .add(drop_spec(port, Protocol::Tcp), now(), &mut sink)
                .unwrap();
        }
        let err = table
            .add(drop_spec(4, Protocol::Tcp), now(), &mut sink)
            .unwrap_err();
        assert!(matches!(err, FaultError::Exhausted(_)), "{err}");
        assert!(err.to_string().contains("--max-faults"), "{err}");
        assert_eq!(table.len(), 3);
        assert!(!sink.rules.contains_key(&PortKey::new(PROTO_TCP, 4)));
    }

    #[test]
    fn ttls_beyond_the_limit_are_refused_naming_it() {
        let mut table = FaultTable::default().with_limits(Limits {
            max_ttl: Duration::from_secs(60),
            ..Limits::default()
        });
        let mut sink = MemorySink::default();
        let mut spec = drop_spec(1, Protocol::Tcp);
        spec.ttl = Some(Duration::from_secs(60));
        table.add(spec.clone(), now(), &mut sink).unwrap();
        spec.ttl = Some(Duration::from_millis(60_001));
        let err = table.add(spec.clone(), now(), &mut sink).unwrap_err();
        assert!(err.to_string().starts_with("ttl:"), "{err}");
        assert!(err.to_string().contains("--max-ttl"), "{err}");
        // A TTL that would overflow the clock is refused, not a panic.
        let mut table = FaultTable::default().with_limits(Limits {
            max_ttl: MAX_TTL,
            ..Limits::default()
        });
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 2);
        spec.ttl = Some(MAX_TTL);
        if SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(u64::MAX / 2))
            .is_some()
        {
            let err = table.add(spec, late, &mut sink).unwrap_err();
            assert!(err.to_string().starts_with("ttl:"), "{err}");
        }
        assert!(
            Limits {
                max_faults: 0,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Limits {
                max_faults: MAX_FAULTS as usize + 1,
                ..Limits::default()
            }
            .validate()
            .is_err()
        );
        assert!(Limits::default().validate().is_ok());
        for bad in [0, 15, (1 << 20) + 1] {
            let err = Limits {
                max_flows: bad,
                ..Limits::default()
            }
            .validate()
            .unwrap_err();
            assert_eq!(err, format!("--max-flows {bad} is not in 16..=1048576"));
        }
        for good in [16, 1 << 20] {
            let limits = Limits {
                max_flows: good,
                ..Limits::default()
            };
            assert!(limits.validate().is_ok());
        }
    }

    /// Removing faults deletes their flows: one at a time, or all at once for a clear.
    #[test]
    fn removals_forget_the_faults_flows() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let a = table
            .add(drop_spec(1, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        let b = table
            .add(drop_spec(2, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        let c = table
            .add(drop_spec(3, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        table.remove(a.id, &mut sink).unwrap();
        assert_eq!(sink.forgotten, vec![vec![a.id]]);
        table.clear(&mut sink).unwrap();
        assert_eq!(sink.forgotten, vec![vec![a.id], vec![b.id, c.id]]);
    }

    #[test]
    fn expiry_follows_the_table() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let mut spec = drop_spec(1, Protocol::Tcp);
        spec.ttl = Some(Duration::from_secs(10));
        let a = table.add(spec.clone(), now(), &mut sink).unwrap();
        spec.ttl = Some(Duration::from_secs(5));
        let b = table.add(spec, now(), &mut sink).unwrap();
        table
            .add(drop_spec(2, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        assert_eq!(table.next_expiry(), b.expires);
        assert_eq!(table.expired(now() + Duration::from_secs(5)), [b.id]);
        table.remove(b.id, &mut sink).unwrap();
        // A removed fault's TTL is gone with it.
        assert_eq!(table.next_expiry(), a.expires);
        assert!(table.expired(now() + Duration::from_secs(9)).is_empty());
    }

    #[test]
    fn counters_are_reused_after_removal() {
        // Once every slot has been used (here one), after a grace period.
        let mut table = FaultTable::default().with_limits(Limits {
            max_faults: 1,
            ..Limits::default()
        });
        let mut sink = MemorySink::default();
        let a = table
            .add(drop_spec(1, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        table.remove(a.id, &mut sink).unwrap();
        let b = table
            .add(drop_spec(1, Protocol::Tcp), now(), &mut sink)
            .unwrap();
        assert_eq!(b.counter, a.counter);
        assert_eq!(sink.waits, 1);
        assert_ne!(b.id, a.id, "ids are never reused");
    }

    #[test]
    fn api_port_is_protected_for_tcp_only() {
        let mut table = FaultTable::new(vec![7447]);
        let mut sink = MemorySink::default();
        for proto in [Protocol::Tcp, Protocol::Any] {
            let err = table
                .add(drop_spec(7447, proto), now(), &mut sink)
                .unwrap_err();
            assert!(err.to_string().contains("API port"), "{err}");
        }
        table
            .add(drop_spec(7447, Protocol::Udp), now(), &mut sink)
            .unwrap();
    }

    #[test]
    fn api_port_is_protected_whatever_the_direction_or_peer() {
        let mut table = FaultTable::new(vec![40123]);
        let mut sink = MemorySink::default();
        for direction in [Direction::Both, Direction::ToPort, Direction::FromPort] {
            for peer in [None, Some(Peer::parse("127.0.0.1", "p").unwrap())] {
                let mut spec = drop_spec(40123, Protocol::Any);
                spec.target.direction = direction;
                spec.target.peer = peer;
                let err = table.add(spec, now(), &mut sink).unwrap_err();
                assert!(matches!(err, FaultError::Refused(_)), "{err}");
            }
        }
        assert!(table.is_empty());
    }

    #[test]
    fn owners_are_recorded_and_select_what_clear_removes() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let alice = Owner {
            uid: Some(1001),
            pid: Some(42),
            command: "faultctl".into(),
            remote: String::new(),
        };
        let root = Owner {
            uid: Some(0),
            ..alice.clone()
        };
        let mut labelled = drop_spec(1, Protocol::Tcp);
        labelled.label = "etcd".into();
        let a = table
            .add_as(labelled.clone(), alice.clone(), now(), &mut sink)
            .unwrap();
        assert_eq!(*a.owner, alice);
        table
            .add_as(drop_spec(2, Protocol::Tcp), alice.clone(), now(), &mut sink)
            .unwrap();
        table
            .add_as(labelled, root.clone(), now(), &mut sink)
            .unwrap();
        let r = table
            .add_as(drop_spec(3, Protocol::Tcp), root, now(), &mut sink)
            .unwrap();

        let by_label_and_owner = Selector {
            label: Some("etcd".into()),
            owner_uid: Some(1001),
        };
        let removed = table
            .clear_matching(&by_label_and_owner, &mut sink)
            .unwrap();
        assert_eq!(removed.iter().map(|f| f.id).collect::<Vec<_>>(), [a.id]);
        let mine = Selector {
            owner_uid: Some(1001),
            ..Default::default()
        };
        assert_eq!(table.clear_matching(&mine, &mut sink).unwrap().len(), 1);
        assert_eq!(table.clear_matching(&mine, &mut sink).unwrap().len(), 0);
        assert_eq!(table.len(), 2, "root's faults stay");
        let everything = Selector::default();
        assert_eq!(
            table.clear_matching(&everything, &mut sink).unwrap().len(),
            2
        );
        assert!(sink.rules.is_empty());
        assert!(table.get(r.id).is_none());
    }

    #[test]
    fn owners_read_as_people_say_them() {
        let owner = Owner {
            uid: Some(1001),
            pid: Some(42),
            command: "faultctl".into(),
            remote: String::new(),
        };
        assert_eq!(owner.to_string(), "uid 1001 pid 42 (faultctl)");
        assert_eq!(Owner::default().to_string(), "unknown");
    }

    #[test]
    fn invalid_specs_name_their_field() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let mut s = drop_spec(0, Protocol::Tcp);
        assert_eq!(
            table.add(s.clone(), now(), &mut sink).unwrap_err(),
            FaultError::invalid("target.port", "0 is not a port (1..=65535)")
        );
        s.target.port = 5;
        for p in [1.5, 0.0, -0.1, f64::NAN] {
            s.action = Action::Drop { probability: p };
            let err = table.add(s.clone(), now(), &mut sink).unwrap_err();
            assert!(
                err.to_string().starts_with("action.drop.probability:"),
                "{err}"
            );
        }
        s.action = Action::Drop { probability: 1.0 };
        s.ttl = Some(Duration::ZERO);
        assert!(
            table
                .add(s.clone(), now(), &mut sink)
                .unwrap_err()
                .to_string()
                .starts_with("ttl:")
        );
        assert!(table.is_empty());
        assert!(sink.rules.is_empty());
    }

    /// Every range is checked here, in the domain, whoever builds the spec; errors name
    /// the domain's fields (the API renames them to the wire's).
    #[test]
    fn the_domain_checks_every_range_and_names_its_own_fields() {
        let field = |r: Result<Action, FaultError>| -> String {
            match r {
                Err(e) => e.to_string(),
                Ok(action) => {
                    let spec = FaultSpec {
                        action,
                        ..drop_spec(5, Protocol::Tcp)
                    };
                    spec.validate()
                        .map_or_else(|e| e.to_string(), |()| "accepted".into())
                }
            }
        };
        let ms = Duration::from_millis;
        let cases = [
            (
                Ok(Action::Loss { probability: 1.01 }),
                "action.loss.probability: 101 %",
            ),
            (
                Ok(Action::Corrupt {
                    probability: f64::NAN,
                }),
                "action.corrupt.probability:",
            ),
            (
                Ok(Action::Duplicate { probability: 0.0 }),
                "action.duplicate.probability: 0 %",
            ),
            (
                Ok(Action::Drop { probability: 1.5 }),
                "action.drop.probability: 150 %",
            ),
            (Action::delay_us(-1, 0), "action.delay.latency: -1 µs"),
            (Action::delay_us(0, 0), "action.delay.latency:"),
            (Action::delay_us(1000, -1), "action.delay.jitter: -1 µs"),
            (Action::delay_us(1000, 2000), "action.delay.jitter:"),
            (
                Ok(Action::Delay {
                    latency: ms(9_000),
                    jitter: ms(1_500),
                }),
                "action.delay.latency:",
            ),
            (Action::rate_bits(-8), "action.rate.bytes_per_sec: -8 bit/s"),
            (Action::rate_bits(0), "action.rate.bytes_per_sec: 0 bit/s"),
            (Action::rate_bits(i64::MAX), "action.rate.bytes_per_sec:"),
            (
                Action::limit_bytes(-1, Then::Drop),
                "action.limit_bytes.bytes: -1 bytes",
            ),
            (
                Action::limit_age_ms(-1, Then::Drop),
                "action.limit_age.after: -1 ms",
            ),
            (
                Action::limit_age_ms(0, Then::Drop),
                "action.limit_age.after:",
            ),
        ];
        for (action, expected) in cases {
            let got = field(action);
            assert!(
                got.starts_with(expected),
                "{got:?} should start with {expected:?}"
            );
        }
        assert_eq!(
            Action::rate_bits(9).unwrap(),
            Action::Rate {
                bytes_per_sec: 2,
                mode: RateMode::Police
            }
        );
        assert_eq!(
            Action::delay_us(1000, 10).unwrap(),
            Action::Delay {
                latency: ms(1),
                jitter: Duration::from_micros(10)
            }
        );
    }

    #[test]
    fn tcp_only_actions_refuse_udp_and_any() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let actions = [
            Action::Reset { probability: 1.0 },
            Action::Refuse {
                mode: RefuseMode::Rst,
            },
            Action::LimitBytes {
                bytes: 5,
                then: Then::Reset,
            },
            Action::LimitAge {
                after: Duration::from_secs(1),
                then: Then::Reset,
            },
            Action::Record,
        ];
        for action in actions {
            for protocol in [Protocol::Udp, Protocol::Any] {
                let mut spec = drop_spec(53, protocol);
                spec.action = action;
                let err = table.add(spec, now(), &mut sink).unwrap_err();
                assert!(err.to_string().starts_with("target.protocol:"), "{err}");
            }
        }
        let mut spec = drop_spec(53, Protocol::Udp);
        spec.action = Action::Refuse {
            mode: RefuseMode::Drop,
        };
        table.add(spec, now(), &mut sink).unwrap();
    }

    #[test]
    fn actions_compile_to_their_slots() {
        let mut table = FaultTable::default();
        let mut sink = MemorySink::default();
        let mut spec = drop_spec(80, Protocol::Tcp);
        spec.target.direction = Direction::FromPort;
        spec.action = Action::Refuse {
            mode: RefuseMode::Rst,
        };
        let refuse = table.add(spec.clone(), now(), &mut sink).unwrap();
        spec.action = Action::LimitAge {
            after: Duration::from_millis(1500),
            then: Then::Drop,
        };
        let age = table.add(spec, now(), &mut sink).unwrap();
        let rule = sink.rules[&PortKey::new(PROTO_TCP, 80)];
        assert_eq!(rule.slots[0].action, ACTION_REFUSE_RST);
        assert_eq!(rule.slots[0].directions, DIR_TO_PORT, "SYNs go to the port");
        assert_eq!(rule.slots[0].fault_id, refuse.id);
        assert_eq!(rule.slots[1].action, ACTION_LIMIT_AGE);
        assert_eq!(rule.slots[1].param, 1_500_000_000);
        assert_eq!(rule.slots[1].then, THEN_DROP);
        assert_eq!(rule.slots[1].directions, DIR_FROM_PORT);
        assert_eq!(rule.slots[1].fault_id, age.id);
    }

    #[test]
    fn threshold_matches_probability() {
        assert_eq!(threshold(1.0), u32::MAX);
        assert_eq!(threshold(0.5), (1u32 << 31) - 1);
        assert_eq!(threshold(1e-12), 0);
    }

    #[test]
    fn peers_parse_and_mask() {
        let p = Peer::parse("198.18.7.9/15", "target.peer").unwrap();
        let (family, addr, mask) = p.words();
        assert_eq!(family, PEER_V4);
        assert_eq!(addr[0].to_ne_bytes(), [198, 18, 0, 0]);
        assert_eq!(mask[0].to_ne_bytes(), [255, 254, 0, 0]);
        assert_eq!(&addr[1..], &[0, 0, 0]);
        let p = Peer::parse("fd00::1/8", "target.peer").unwrap();
        let (family, addr, mask) = p.words();
        assert_eq!(family, PEER_V6);
        assert_eq!(addr[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(mask[0].to_ne_bytes(), [0xff, 0, 0, 0]);
        assert_eq!(Peer::parse("::1", "p").unwrap().prefix, 128);
        for bad in ["banana", "10.0.0.1/33", "fd00::/129", "1.2.3.4/x"] {
            let err = Peer::parse(bad, "target.peer").unwrap_err();
            assert!(err.to_string().starts_with("target.peer:"), "{err}");
        }
    }

    /// Below 64 kbit/s a paced 64 KiB packet would wait past fq's horizon: refused, naming
    /// the field and the lowest rate. Policing has no horizon: 8 kbit/s is fine there.
    #[test]
    fn paced_rates_below_the_lowest_are_refused() {
        let rate = |bytes_per_sec, mode| {
            let mut s = drop_spec(80, Protocol::Tcp);
            s.action = Action::Rate {
                bytes_per_sec,
                mode,
            };
            s.validate()
        };
        let err = rate(1_000, RateMode::Pace).unwrap_err().to_string();
        assert!(
            err.contains("action.rate.bits_per_second") && err.contains("64kbit"),
            "{err}"
        );
        assert!(rate(MIN_PACED_RATE_BYTES - 1, RateMode::Pace).is_err());
        rate(MIN_PACED_RATE_BYTES, RateMode::Pace).unwrap();
        rate(1_000, RateMode::Police).unwrap();
        // The lowest paced rate keeps a 64 KiB packet inside the horizon.
        assert!(65_536 * 1_000_000_000 / MIN_PACED_RATE_BYTES < DELAY_HORIZON_NS);
    }
}
