//! The configuration file (`faultd --config faultd.toml`): the daemon's flags as TOML, and
//! `[[fault]]` and `[[partition]]` entries installed at start. Unknown keys and bad values
//! are errors that name the file, line and column; entries go through the API's own
//! validation (`api::spec_from_proto`), so a fault is checked once, the same way, whether
//! it comes from a file or a call. Flags given on the command line override the file.
//!
//! ```toml
//! interfaces = ["lo"]
//! listen = "127.0.0.1:7447"
//! metrics = "127.0.0.1:9747"
//!
//! [access]
//! allow_uid = ["alice", 1001]
//!
//! [[fault]]
//! action = "drop"
//! port = "2379-2381"
//! for = "30s"
//!
//! [[partition]]
//! between = ["127.0.0.2"]
//! and = ["127.0.0.3", "127.0.0.4"]
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use faultd_api::units::{Ports, parse_ports};

use crate::api::spec_from_proto;
use crate::faults::{FaultError, FaultSpec};
use crate::proto;

/// The file as written; `Option`s are what the file leaves to the flags' defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `--iface`, each.
    pub interfaces: Option<Vec<String>>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--allow-remote`.
    pub allow_remote: Option<bool>,
    /// `--socket`.
    pub socket: Option<PathBuf>,
    /// `--metrics`.
    pub metrics: Option<SocketAddr>,
    /// `--retry-port`, `--retry-bind`, `--retry-test-timeout`.
    pub retry_port: Option<u16>,
    pub retry_bind: Option<IpAddr>,
    #[serde(default, deserialize_with = "duration")]
    pub retry_test_timeout: Option<Duration>,
    #[serde(default)]
    pub access: Access,
    #[serde(default)]
    pub limits: Limits,
    /// `[[fault]]` entries, installed at start in the file's order (with the partitions).
    #[serde(default, rename = "fault")]
    pub faults: Vec<Spanned<FaultEntry>>,
    /// `[[partition]]` entries: `faultctl partition --between … --and …`.
    #[serde(default, rename = "partition")]
    pub partitions: Vec<Spanned<PartitionEntry>>,
}

/// `[access]`: who may call the API, and TLS for a remote one.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// `--allow-uid`: uids or user names.
    pub allow_uid: Option<Vec<Spanned<IdOrName>>>,
    /// `--allow-group`: gids or group names.
    pub allow_group: Option<Vec<Spanned<IdOrName>>>,
    /// `--no-auth`.
    pub no_auth: Option<bool>,
    /// `--tls-cert`, `--tls-key`, `--tls-client-ca`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
}

/// `[limits]`: one `Option` field per limit flag (`max_faults = 100` for `--max-faults`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_faults: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub max_ttl: Option<Duration>,
    pub max_flows: Option<u32>,
    pub max_connections: Option<u32>,
    pub max_streams: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

/// A `[[fault]]`: faultctl's target options and one verb's parameters, by their flag
/// names (`for` is `--for`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultEntry {
    pub action: ActionName,
    /// `2379`, or a range as faultctl's `--port` takes it: `"2379-2381"`.
    pub port: PortValue,
    /// `--remote-port`: a port tuple.
    pub remote_port: Option<u32>,
    pub protocol: Option<ProtocolName>,
    pub direction: Option<DirectionName>,
    pub peer: Option<String>,
    #[serde(default, rename = "for", deserialize_with = "duration")]
    pub ttl: Option<Duration>,
    #[serde(default)]
    pub label: String,
    /// drop, reset: a share of packets in (0, 1].
    pub probability: Option<f64>,
    /// loss, corrupt, duplicate: a share of packets in percent.
    pub percent: Option<f64>,
    /// refuse: rst or drop.
    pub mode: Option<RefuseModeName>,
    /// limit-bytes.
    pub bytes: Option<i64>,
    /// limit-age.
    #[serde(default, deserialize_with = "duration")]
    pub after: Option<Duration>,
    /// limit-bytes, limit-age: reset or drop.
    pub then: Option<ThenName>,
    /// delay.
    #[serde(default, deserialize_with = "duration")]
    pub latency: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub jitter: Option<Duration>,
    /// rate, in bits per second.
    pub bits_per_second: Option<i64>,
    /// corrupt: a share of each packet's bytes, in percent.
    pub byte_percent: Option<f64>,
    /// slice: the spacing of segments (`bytes` is the segment size).
    #[serde(default, deserialize_with = "duration")]
    pub delay: Option<Duration>,
}

/// A `[[partition]]`: `faultctl partition`'s address form, by its flag names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    /// One side: addresses or CIDRs, IPv4 or IPv6.
    pub between: Vec<String>,
    /// The other side.
    pub and: Vec<String>,
    /// Cut only what goes from `between` to `and`.
    #[serde(default)]
    pub one_way: bool,
    /// drop (default) or reset.
    pub mode: Option<CutModeName>,
    /// A share of the packets cut, in (0, 1], as drop's and reset's.
    pub probability: Option<f64>,
    /// By default any: a partition cuts TCP and UDP.
    pub protocol: Option<ProtocolName>,
    #[serde(default, rename = "for", deserialize_with = "duration")]
    pub ttl: Option<Duration>,
    /// `partition` unless given, as faultctl's.
    pub label: Option<String>,
}

/// `port`: a number, or text that `parse_ports` reads (`"2379-2381"`, `"2379"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortValue {
    Number(u32),
    Text(String),
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port like 2379 or a range like \"2379-2381\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortValue, E> {
                u32::try_from(v)
                    .map(PortValue::Number)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl PortValue {
    /// The first port and the range's last (0: one port), as the request carries them;
    /// a number's range is the domain model's to check, as for any request.
    fn wire(&self) -> Result<(u32, u32), FaultError> {
        match self {
            PortValue::Number(port) => Ok((*port, 0)),
            PortValue::Text(text) => {
                let Ports { first, last } =
                    parse_ports(text).map_err(|e| FaultError::invalid("port", e))?;
                Ok((first.into(), last.map_or(0, u32::from)))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionName {
    Drop,
    Reset,
    Refuse,
    LimitBytes,
    LimitAge,
    Record,
    Loss,
    Delay,
    Rate,
    Corrupt,
    Duplicate,
    Stall,
    Slice,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolName {
    Tcp,
    Udp,
    Any,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionName {
    Both,
    ToPort,
    FromPort,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefuseModeName {
    Rst,
    Drop,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CutModeName {
    Drop,
    Reset,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ThenName {
    Reset,
    Drop,
}

/// Durations as people write them: `500ms`, `30s`, `10m`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    match humantime::parse_duration(text.trim()) {
        Ok(d) if !d.is_zero() => Ok(Some(d)),
        Ok(_) => Err(serde::de::Error::custom("a duration must be longer than 0")),
        Err(e) => Err(serde::de::Error::custom(format!(
            "{text:?} is not a duration like 500ms, 30s or 2m ({e})"
        ))),
    }
}

/// A mistake in the file, at a line and column (1-based).
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// A file that parsed and whose every value is valid.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
    /// `[access]`'s users and groups, resolved to ids.
    pub allow_uids: Option<Vec<u32>>,
    pub allow_groups: Option<Vec<u32>>,
    /// The `[[fault]]`s, validated, with where each was written (for errors at start).
    pub faults: Vec<(FaultSpec, Position)>,
}

/// Where an entry was written, and which it is: `file:line:col: partition #2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position(pub String);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads and validates `path`. Touches neither the kernel nor the network.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    Ok(parse(path, &text)?)
}

/// Parses and validates `text`, read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, ConfigError> {
    let at = |span: Option<Range<usize>>, message: String| {
        let (line, column) = line_col(text, span.map_or(0, |s| s.start));
        ConfigError {
            file: path.to_path_buf(),
            line,
            column,
            message,
        }
    };
    let mut config: Config =
        toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_string()))?;
    let resolve = |ids: &Option<Vec<Spanned<IdOrName>>>,
                   by_name: fn(&str) -> Result<u32, String>| {
        ids.as_ref()
            .map(|ids| {
                ids.iter()
                    .map(|id| match id.get_ref() {
                        IdOrName::Id(n) => Ok(*n),
                        IdOrName::Name(name) => by_name(name).map_err(|e| at(Some(id.span()), e)),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
    };
    let allow_uids = resolve(&config.access.allow_uid, crate::access::resolve_uid)?;
    let allow_groups = resolve(&config.access.allow_group, crate::access::resolve_gid)?;
    // Each entry with where it starts, its kind's name and number (`partition #2`), and its
    // spec; installed in the order written, whatever their kinds.
    let faults = std::mem::take(&mut config.faults)
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e.span(), "fault", i, e.into_inner().spec()));
    let partitions = std::mem::take(&mut config.partitions)
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e.span(), "partition", i, e.into_inner().spec()));
    let mut entries: Vec<_> = faults.chain(partitions).collect();
    entries.sort_by_key(|(span, ..)| span.start);
    let faults = entries
        .into_iter()
        .map(|(span, kind, i, spec)| {
            let (line, column) = line_col(text, span.start);
            let entry = format!("{kind} #{}", i + 1);
            let position = Position(format!("{}:{line}:{column}: {entry}", path.display()));
            spec.map(|spec| (spec, position))
                .map_err(|e| at(Some(span), format!("{entry}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    Ok(Loaded {
        path: path.to_path_buf(),
        config,
        allow_uids,
        allow_groups,
        faults,
    })
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

impl FaultEntry {
    /// The fault, validated by the API's own checks; errors name the entry's keys.
    pub fn spec(self) -> Result<FaultSpec, FaultError> {
        let kind = self.action_kind()?;
        let (port, port_end) = self.port.wire()?;
        let request = proto::FaultSpec {
            target: Some(proto::Target {
                port,
                port_end,
                remote_port: remote_port(self.remote_port)?,
                protocol: protocol(self.protocol, proto::Protocol::Tcp),
                direction: match self.direction {
                    None | Some(DirectionName::Both) => proto::Direction::Both,
                    Some(DirectionName::ToPort) => proto::Direction::ToPort,
                    Some(DirectionName::FromPort) => proto::Direction::FromPort,
                } as i32,
                peer: self.peer.unwrap_or_default(),
                ..Default::default()
            }),
            action: Some(proto::Action { kind: Some(kind) }),
            ttl_ms: self.ttl.map(|d| d.as_millis() as u64),
            label: self.label,
        };
        spec_from_proto(request).map_err(in_file_terms)
    }

    /// The action with its parameters; a parameter the action does not take is an error.
    fn action_kind(&self) -> Result<proto::action::Kind, FaultError> {
        use proto::action::Kind;
        let (kind, takes): (Kind, &[&str]) = match self.action {
            ActionName::Drop => (
                Kind::Drop(proto::Drop {
                    probability: self.probability,
                }),
                &["probability"],
            ),
            ActionName::Reset => (
                Kind::Reset(proto::Reset {
                    probability: self.probability,
                }),
                &["probability"],
            ),
            ActionName::Refuse => (
                Kind::Refuse(proto::Refuse {
                    mode: match self.mode {
                        None | Some(RefuseModeName::Rst) => proto::RefuseMode::Rst,
                        Some(RefuseModeName::Drop) => proto::RefuseMode::Drop,
                    } as i32,
                }),
                &["mode"],
            ),
            ActionName::LimitBytes => (
                Kind::LimitBytes(proto::LimitBytes {
                    bytes: self.required(self.bytes, "bytes")?,
                    then: self.then(),
                }),
                &["bytes", "then"],
            ),
            ActionName::LimitAge => (
                Kind::LimitAge(proto::LimitAge {
                    after_ms: self.required(self.after, "after")?.as_millis() as i64,
                    then: self.then(),
                }),
                &["after", "then"],
            ),
            ActionName::Record => (Kind::Record(proto::Record {}), &[]),
            ActionName::Loss => (
                Kind::Loss(proto::Loss {
                    percent: self.required(self.percent, "percent")?,
                }),
                &["percent"],
            ),
            ActionName::Corrupt => (
                Kind::Corrupt(proto::Corrupt {
                    percent: match self.byte_percent {
                        Some(_) => self.percent.unwrap_or(100.0),
                        None => self.required(self.percent, "percent")?,
                    },
                    byte_percent: self.byte_percent,
                }),
                &["percent", "byte_percent"],
            ),
            ActionName::Duplicate => (
                Kind::Duplicate(proto::Duplicate {
                    percent: self.required(self.percent, "percent")?,
                }),
                &["percent"],
            ),
            ActionName::Delay => (
                Kind::Delay(proto::Delay {
                    latency_us: self.required(self.latency, "latency")?.as_micros() as i64,
                    jitter_us: self.jitter.map_or(0, |j| j.as_micros() as i64),
                }),
                &["latency", "jitter"],
            ),
            ActionName::Rate => (
                Kind::Rate(proto::Rate {
                    bits_per_second: self.required(self.bits_per_second, "bits_per_second")?,
                    mode: String::new(),
                }),
                &["bits_per_second"],
            ),
            ActionName::Stall => (Kind::Stall(proto::Stall {}), &[]),
            ActionName::Slice => (
                Kind::Slice(proto::Slice {
                    bytes: self.required(self.bytes, "bytes")?,
                    delay_us: self.delay.map_or(0, |d| d.as_micros() as i64),
                }),
                &["bytes", "delay"],
            ),
        };
        let given = [
            ("probability", self.probability.is_some()),
            ("percent", self.percent.is_some()),
            ("mode", self.mode.is_some()),
            ("bytes", self.bytes.is_some()),
            ("after", self.after.is_some()),
            ("then", self.then.is_some()),
            ("latency", self.latency.is_some()),
            ("jitter", self.jitter.is_some()),
            ("bits_per_second", self.bits_per_second.is_some()),
            ("byte_percent", self.byte_percent.is_some()),
            ("delay", self.delay.is_some()),
        ];
        if let Some((key, _)) = given.iter().find(|(k, set)| *set && !takes.contains(k)) {
            return Err(FaultError::invalid(
                *key,
                format!("{} takes no {key}", self.action_name()),
            ));
        }
        Ok(kind)
    }

    fn required<T>(&self, value: Option<T>, key: &str) -> Result<T, FaultError> {
        value
            .ok_or_else(|| FaultError::invalid(key, format!("required for {}", self.action_name())))
    }

    fn then(&self) -> i32 {
        let then = match self.then {
            None => proto::Then::Unspecified,
            Some(ThenName::Reset) => proto::Then::Reset,
            Some(ThenName::Drop) => proto::Then::Drop,
        };
        then as i32
    }

    fn action_name(&self) -> &'static str {
        match self.action {
            ActionName::Drop => "drop",
            ActionName::Reset => "reset",
            ActionName::Refuse => "refuse",
            ActionName::LimitBytes => "limit-bytes",
            ActionName::LimitAge => "limit-age",
            ActionName::Record => "record",
            ActionName::Loss => "loss",
            ActionName::Delay => "delay",
            ActionName::Rate => "rate",
            ActionName::Corrupt => "corrupt",
            ActionName::Duplicate => "duplicate",
            ActionName::Stall => "stall",
            ActionName::Slice => "slice",
        }
    }
}

impl PartitionEntry {
    /// The partition as faultctl's `partition --between … --and …` sends it, validated by
    /// the API's own checks; errors name the entry's keys.
    pub fn spec(self) -> Result<FaultSpec, FaultError> {
        // The request says "no partition" by two empty sides, and would then ask for a port.
        if self.between.is_empty() && self.and.is_empty() {
            return Err(FaultError::invalid(
                "between",
                "required: at least one address or CIDR",
            ));
        }
        let probability = self.probability;
        let kind = match self.mode {
            None | Some(CutModeName::Drop) => {
                proto::action::Kind::Drop(proto::Drop { probability })
            }
            Some(CutModeName::Reset) => proto::action::Kind::Reset(proto::Reset { probability }),
        };
        let request = proto::FaultSpec {
            target: Some(proto::Target {
                protocol: protocol(self.protocol, proto::Protocol::Unspecified),
                between: self.between,
                and_peers: self.and,
                one_way: self.one_way,
                ..Default::default()
            }),
            action: Some(proto::Action { kind: Some(kind) }),
            ttl_ms: self.ttl.map(|d| d.as_millis() as u64),
            label: self.label.unwrap_or_else(|| "partition".into()),
        };
        // The sides are `between` and `and` here, in the field and in the overlap's reason.
        spec_from_proto(request).map_err(in_file_terms)
    }
}

/// The request's protocol; `unset` when the file names none.
fn protocol(name: Option<ProtocolName>, unset: proto::Protocol) -> i32 {
    let protocol = match name {
        None => unset,
        Some(ProtocolName::Tcp) => proto::Protocol::Tcp,
        Some(ProtocolName::Udp) => proto::Protocol::Udp,
        Some(ProtocolName::Any) => proto::Protocol::Any,
    };
    protocol as i32
}

/// `remote_port` as the request carries it. The request's 0 means "any remote port", so a
/// file's `remote_port = 0` would silently widen the fault: it is refused as faultctl's
/// `--remote-port 0` is.
fn remote_port(port: Option<u32>) -> Result<u32, FaultError> {
    match port {
        Some(0) => Err(FaultError::invalid(
            "remote_port",
            "0 is not a port (1..=65535)",
        )),
        port => Ok(port.unwrap_or(0)),
    }
}

/// A refusal in the file's words: the file's key for each request field it names (`port`
/// for `target.port_end`, `and` for `target.and_peers`), as the field and in the text
/// (a partition's overlap names the other side, a fault over faultd's API port its port).
fn in_file_terms(e: FaultError) -> FaultError {
    match e {
        FaultError::Invalid { field, reason } => FaultError::Invalid {
            field: key_of(&field).to_string(),
            reason: file_words(&reason),
        },
        FaultError::Refused(text) => FaultError::Refused(file_words(&text)),
        FaultError::Exhausted(text) => FaultError::Exhausted(file_words(&text)),
        other => other,
    }
}

/// `text` with each request field it names (`target.between`) written as the file's key.
fn file_words(text: &str) -> String {
    const PREFIX: &str = "target.";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        let after = &rest[at + PREFIX.len()..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(after.len());
        out.push_str(key_of(&after[..name_len]));
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

/// Sets `flag` from the file unless the command line gave it (`id` is clap's id of the
/// flag): flags override the file, and the file overrides the flags' defaults.
pub fn pick<T>(matches: &clap::ArgMatches, id: &str, flag: &mut T, file: Option<T>) {
    use clap::parser::ValueSource;
    let given = matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    );
    if let (false, Some(value)) = (given, file) {
        *flag = value;
    }
}

/// Installs the file's faults, in order, owned by faultd itself; the first refused one
/// (e.g. a delay where the kernel has no fq) stops the start, named by its position.
pub fn install(
    api: &crate::api::FaultApi,
    faults: Vec<(FaultSpec, Position)>,
) -> anyhow::Result<()> {
    let owner = crate::faults::Owner {
        uid: Some(nix::unistd::getuid().as_raw()),
        pid: Some(std::process::id()),
        command: "faultd --config".into(),
        remote: String::new(),
    };
    for (spec, position) in faults {
        api.add(spec, owner.clone())
            .map_err(|e| anyhow::anyhow!("{position}: {}", in_file_terms(e)))?;
    }
    Ok(())
}

/// The file's key for a field of the API's request (`target.port` → `port`,
/// `action.delay.latency_us` → `latency`, `ttl_ms` → `for`; a partition's `and_peers` is
/// `and`, which its entry renames).
fn key_of(field: &str) -> &str {
    match field.rsplit('.').next().unwrap_or(field) {
        "ttl_ms" => "for",
        "latency_us" => "latency",
        "jitter_us" => "jitter",
        "after_ms" => "after",
        "delay_us" => "delay",
        // A range's last port is written in `port` ("2379-2381").
        "port_end" => "port",
        // `[[partition]]`'s second side, `and` as faultctl's --and.
        "and_peers" => "and",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{Action, Direction, Protocol};

    #[test]
    fn refusals_name_the_files_keys() {
        let refused = FaultError::Refused(
            "target.port: 7447 is faultd's own API port; a fault there would cut faultd off".into(),
        );
        assert_eq!(
            in_file_terms(refused).to_string(),
            "port: 7447 is faultd's own API port; a fault there would cut faultd off"
        );
        let overlap = FaultError::invalid(
            "target.and_peers",
            "127.0.0.3/32 overlaps 127.0.0.0/8 of target.between: the two sides must be apart",
        );
        assert_eq!(
            in_file_terms(overlap).to_string(),
            "and: 127.0.0.3/32 overlaps 127.0.0.0/8 of between: the two sides must be apart"
        );
        let full = FaultError::Exhausted("target.ttl_ms and target.port_end.".into());
        assert_eq!(in_file_terms(full).to_string(), "for and port.");
    }

    fn load_str(text: &str) -> Result<Loaded, String> {
        parse(Path::new("faultd.toml"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_full_file_parses() {
        let loaded = load_str(
            r#"
interfaces = ["lo", "veth0"]
listen = "127.0.0.1:7448"
socket = "/run/faultd/test.sock"
metrics = "127.0.0.1:9747"
retry_port = 8081
retry_test_timeout = "30s"

[access]
allow_uid = [1001, "root"]
allow_group = ["root"]

[limits]
max_faults = 100
max_ttl = "1h"
max_flows = 4096
max_connections = 32
max_streams = 8

[[fault]]
action = "drop"
port = 2379
protocol = "udp"
direction = "to-port"
peer = "198.18.0.0/15"
for = "30s"
label = "etcd"

[[fault]]
action = "limit-age"
port = 80
after = "5s"
then = "drop"
"#,
        )
        .unwrap();
        let c = &loaded.config;
        assert_eq!(
            c.interfaces.as_deref(),
            Some(&["lo".to_string(), "veth0".into()][..])
        );
        assert_eq!(c.listen, Some("127.0.0.1:7448".parse().unwrap()));
        assert_eq!(c.retry_port, Some(8081));
        assert_eq!(c.retry_test_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.limits.max_faults, Some(100));
        assert_eq!(c.limits.max_ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.limits.max_flows, Some(4096));
        assert_eq!(c.limits.max_connections, Some(32));
        assert_eq!(c.limits.max_streams, Some(8));
        assert_eq!(loaded.allow_uids, Some(vec![1001, 0]));
        assert_eq!(loaded.allow_groups, Some(vec![0]));
        assert_eq!(loaded.faults.len(), 2);
        let (spec, position) = &loaded.faults[0];
        assert_eq!(spec.target.port, 2379);
        assert_eq!(spec.target.protocol, Protocol::Udp);
        assert_eq!(spec.target.direction, Direction::ToPort);
        assert_eq!(spec.ttl, Some(Duration::from_secs(30)));
        assert_eq!(&*spec.label, "etcd");
        assert_eq!(spec.action, Action::Drop { probability: 1.0 });
        assert!(position.0.starts_with("faultd.toml:"), "{position}");
        assert!(position.0.ends_with(": fault #1"), "{position}");
        assert!(matches!(
            loaded.faults[1].0.action,
            Action::LimitAge {
                after,
                then: crate::faults::Then::Drop
            } if after == Duration::from_secs(5)
        ));
    }

    #[test]
    fn an_empty_file_leaves_everything_to_the_flags() {
        let loaded = load_str("").unwrap();
        assert!(loaded.config.interfaces.is_none() && loaded.config.listen.is_none());
        assert!(loaded.faults.is_empty() && loaded.allow_uids.is_none());
    }

    #[test]
    fn unknown_keys_are_errors_with_line_and_column() {
        let err = load_str("interfaces = [\"lo\"]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:2:1: "), "{err}");
        assert!(err.contains("unknown field `listen_addr`"), "{err}");
        let err = load_str("[access]\n  no_auht = true\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:2:3: "), "{err}");
        let err =
            load_str("[[fault]]\naction = \"drop\"\nport = 80\nprobabilty = 0.5\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:4:1: "), "{err}");
        assert!(err.contains("probabilty"), "{err}");
    }

    #[test]
    fn bad_values_are_errors_with_line_and_column() {
        let err = load_str("listen = \"localhost\"\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:1:10: "), "{err}");
        let err = load_str("retry_port = 70000\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:1:14: "), "{err}");
        let err = load_str("[[fault]]\naction = \"dorp\"\nport = 80\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:2:10: "), "{err}");
        assert!(err.contains("dorp"), "{err}");
        let err =
            load_str("[[fault]]\naction = \"drop\"\nport = 80\nfor = \"soon\"\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:4:7: "), "{err}");
        let err = load_str("[access]\nallow_uid = [\"no-such-user-x\"]\n").unwrap_err();
        assert!(err.starts_with("faultd.toml:2:14: "), "{err}");
    }

    #[test]
    fn faults_are_validated_by_the_api_and_errors_name_the_key() {
        let at = |entry: &str| load_str(&format!("\n[[fault]]\n{entry}\n")).unwrap_err();
        let err = at("action = \"drop\"\nport = 70000");
        assert!(err.starts_with("faultd.toml:"), "{err}");
        assert!(err.contains("fault #1: port: 70000"), "{err}");
        let err = at("action = \"loss\"\nport = 80\npercent = 150.0");
        assert!(err.contains("fault #1: percent: "), "{err}");
        let err = at("action = \"loss\"\nport = 80");
        assert!(err.contains("percent: required for loss"), "{err}");
        let err = at("action = \"drop\"\nport = 80\npercent = 5.0");
        assert!(err.contains("percent: drop takes no percent"), "{err}");
        let err = at("action = \"limit-bytes\"\nport = 80\nthen = \"drop\"");
        assert!(err.contains("bytes: required for limit-bytes"), "{err}");
        let err = at("action = \"delay\"\nport = 80\nlatency = \"10ms\"\njitter = \"20ms\"");
        assert!(err.contains("fault #1: jitter: "), "{err}");
        let err = at("action = \"drop\"\nport = 80\npeer = \"banana\"");
        assert!(err.contains("fault #1: peer: "), "{err}");
        let err = at("action = \"stall\"\nport = 80\nprotocol = \"udp\"");
        assert!(err.contains("fault #1: protocol: "), "{err}");
    }

    #[test]
    fn slice_and_byte_percent_come_from_their_keys() {
        let faults = load_str(
            "[[fault]]\naction = \"slice\"\nport = 80\nbytes = 100\ndelay = \"20ms\"\n\
             [[fault]]\naction = \"corrupt\"\nport = 81\nbyte_percent = 1.0\n",
        )
        .unwrap()
        .faults;
        assert_eq!(
            faults[0].0.action,
            Action::Slice {
                bytes: 100,
                spacing: Duration::from_millis(20)
            }
        );
        assert_eq!(
            faults[1].0.action,
            Action::CorruptBytes {
                probability: 1.0,
                byte_probability: 0.01
            }
        );
        let at = |entry: &str| load_str(&format!("\n[[fault]]\n{entry}\n")).unwrap_err();
        let err = at("action = \"slice\"\nport = 80\nbytes = 47");
        assert!(
            err.contains("fault #1: bytes: 47 bytes is below 48"),
            "{err}"
        );
        let err = at("action = \"slice\"\nport = 80");
        assert!(err.contains("bytes: required for slice"), "{err}");
        let err = at("action = \"drop\"\nport = 80\ndelay = \"1s\"");
        assert!(err.contains("delay: drop takes no delay"), "{err}");
        let err = at("action = \"corrupt\"\nport = 80\nbyte_percent = 0.0");
        assert!(err.contains("fault #1: byte_percent: "), "{err}");
    }

    #[test]
    fn ranges_tuples_and_partitions_come_from_their_keys() {
        let faults = load_str(
            r#"
[[partition]]
between = ["127.0.0.2", "fd00::/16"]
and = ["127.0.0.3/32", "fd01::1"]
one_way = true
mode = "reset"
probability = 0.5
for = "30s"

[[fault]]
action = "drop"
port = "2379-2381"

[[fault]]
action = "reset"
port = 2380
remote_port = 43210

[[partition]]
between = ["198.18.0.1"]
and = ["198.18.0.2"]
protocol = "udp"
label = "split"
"#,
        )
        .unwrap()
        .faults;
        assert_eq!(faults.len(), 4);
        // In the file's order, whatever the entries' kinds, each named by its kind's count.
        let positions: Vec<&str> = faults.iter().map(|(_, p)| p.0.as_str()).collect();
        assert_eq!(
            positions,
            [
                "faultd.toml:2:1: partition #1",
                "faultd.toml:10:1: fault #1",
                "faultd.toml:14:1: fault #2",
                "faultd.toml:19:1: partition #2"
            ]
        );

        let (cut, _) = &faults[0];
        let partition = cut.target.partition.as_ref().expect("a partition");
        let sides = |s: &[crate::faults::Peer]| s.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(sides(&partition.between), ["127.0.0.2/32", "fd00::/16"]);
        assert_eq!(sides(&partition.and), ["127.0.0.3/32", "fd01::1/128"]);
        assert!(partition.one_way);
        assert_eq!(cut.action, Action::Reset { probability: 0.5 });
        assert_eq!(cut.target.protocol, Protocol::Any);
        assert_eq!(cut.ttl, Some(Duration::from_secs(30)));
        assert_eq!(&*cut.label, "partition");

        let range = &faults[1].0.target;
        assert_eq!((range.port, range.last_port), (2379, Some(2381)));
        assert_eq!(range.ports(), 2379..=2381);
        assert_eq!(range.remote_port, None);

        let tuple = &faults[2].0.target;
        assert_eq!((tuple.port, tuple.last_port), (2380, None));
        assert_eq!(tuple.remote_port, Some(43210));

        let (split, _) = &faults[3];
        let partition = split.target.partition.as_ref().expect("a partition");
        assert!(!partition.one_way);
        assert_eq!(split.action, Action::Drop { probability: 1.0 });
        assert_eq!(split.target.protocol, Protocol::Udp);
        assert_eq!(&*split.label, "split");
    }

    #[test]
    fn a_port_written_as_text_is_one_port() {
        let faults = load_str("[[fault]]\naction = \"drop\"\nport = \"2379\"\n")
            .unwrap()
            .faults;
        assert_eq!(faults[0].0.target.port, 2379);
        assert_eq!(faults[0].0.target.last_port, None);
    }

    #[test]
    fn bad_ranges_and_tuples_name_the_entry_and_the_key() {
        let at = |entry: &str| {
            load_str(&format!(
                "[[fault]]\naction = \"drop\"\nport = 80\n\n[[fault]]\n{entry}\n"
            ))
            .unwrap_err()
        };
        let err = at("action = \"drop\"\nport = \"2381-2379\"");
        assert!(err.starts_with("faultd.toml:5:1: "), "{err}");
        assert!(
            err.contains("fault #2: port: the range 2381-2379 ends before it starts"),
            "{err}"
        );
        let err = at("action = \"drop\"\nport = \"2379-\"");
        assert!(err.contains("fault #2: port: \"\" is not a port"), "{err}");
        let err = at("action = \"drop\"\nport = \"2379-70000\"");
        assert!(
            err.contains("fault #2: port: \"70000\" is not a port"),
            "{err}"
        );
        let err = at("action = \"drop\"\nport = \"0-5\"");
        assert!(err.contains("fault #2: port: \"0\" is not a port"), "{err}");
        // Not a number nor text: at the value, saying what a port looks like.
        let err = at("action = \"drop\"\nport = true");
        assert!(err.starts_with("faultd.toml:7:8: "), "{err}");
        assert!(
            err.contains("expected a port like 2379 or a range"),
            "{err}"
        );
        let err = at("action = \"drop\"\nport = -1");
        assert!(err.starts_with("faultd.toml:7:8: "), "{err}");
        assert!(err.contains("integer `-1`"), "{err}");
        let err = at("action = \"drop\"\nport = 80\nremote_port = 0");
        assert!(
            err.contains("fault #2: remote_port: 0 is not a port"),
            "{err}"
        );
        let err = at("action = \"drop\"\nport = 80\nremote_port = 70000");
        assert!(err.contains("fault #2: remote_port: 70000"), "{err}");
        let err = at("action = \"drop\"\nport = 80\nremote_port = \"43210\"");
        assert!(err.starts_with("faultd.toml:8:15: "), "{err}");
    }

    #[test]
    fn bad_partitions_name_the_entry_and_the_key() {
        let at = |entry: &str| {
            load_str(&format!(
                "[[partition]]\nbetween = [\"127.0.0.2\"]\nand = [\"127.0.0.3\"]\n\n\
                 [[fault]]\naction = \"drop\"\nport = 80\n\n[[partition]]\n{entry}\n"
            ))
            .unwrap_err()
        };
        let both = "between = [\"127.0.0.2\"]\nand = [\"127.0.0.3\"]";
        let err = at("between = [\"banana\"]\nand = [\"127.0.0.3\"]");
        assert!(err.starts_with("faultd.toml:9:1: "), "{err}");
        assert!(err.contains("partition #2: between: "), "{err}");
        assert!(err.contains("banana"), "{err}");
        let err = at("between = [\"127.0.0.0/8\"]\nand = [\"127.0.0.3\"]");
        assert!(
            err.contains("partition #2: and: 127.0.0.3/32 overlaps"),
            "{err}"
        );
        let err = at("between = []\nand = [\"127.0.0.3\"]");
        assert!(err.contains("partition #2: between: required"), "{err}");
        let err = at("between = [\"127.0.0.2\"]\nand = []");
        assert!(err.contains("partition #2: and: required"), "{err}");
        let err = at("between = []\nand = []");
        assert!(err.contains("partition #2: between: required"), "{err}");
        let err = at("between = [\"127.0.0.2\"]");
        assert!(err.contains("missing field `and`"), "{err}");
        let err = at(&format!("{both}\nprobability = 1.5"));
        assert!(err.contains("partition #2: probability: "), "{err}");
        let err = at(&format!("{both}\nmode = \"refuse\""));
        assert!(err.starts_with("faultd.toml:12:8: "), "{err}");
        let err = at(&format!("{both}\nport = 80"));
        assert!(err.starts_with("faultd.toml:12:1: "), "{err}");
        assert!(err.contains("unknown field `port`"), "{err}");
        let err = at(&format!("{both}\nfor = \"0s\""));
        assert!(err.starts_with("faultd.toml:12:7: "), "{err}");
        let err = at("between = \"127.0.0.2\"\nand = [\"127.0.0.3\"]");
        assert!(err.starts_with("faultd.toml:10:11: "), "{err}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/faultd.toml");
        let loaded = load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(loaded.config.interfaces.is_some());
        assert!(!loaded.faults.is_empty());
    }

    /// The example's commented "More targets" entries, uncommented, are valid and say what
    /// their comments say.
    #[test]
    fn the_example_configs_commented_targets_are_valid() {
        let text = include_str!("../../deploy/faultd.toml");
        let (head, more) = text
            .split_once("# More targets")
            .expect("the example shows more targets");
        let uncommented: String = more
            .lines()
            .skip(1)
            .filter(|l| l.starts_with("# [") || l.starts_with("# ") && l.contains(" = "))
            .map(|l| format!("{}\n", &l[2..]))
            .collect();
        let loaded = load_str(&format!("{head}{uncommented}")).unwrap();
        let before = load_str(head).unwrap().faults.len();
        let added: Vec<_> = loaded.faults[before..].iter().map(|(s, _)| s).collect();
        assert_eq!(added.len(), 3, "{uncommented}");
        assert_eq!(added[0].target.ports(), 2379..=2381);
        assert_eq!(added[1].target.remote_port, Some(43210));
        let partition = added[2].target.partition.as_ref().expect("a partition");
        assert_eq!(partition.and.len(), 2);
    }
}
