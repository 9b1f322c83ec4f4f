//! The configuration file (`faultd --config faultd.toml`): the daemon's flags as TOML, and
//! `[[fault]]` entries installed at start. Unknown keys and bad values are errors that
//! name the file, line and column; `[[fault]]` entries go through the API's own
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
//! port = 2379
//! for = "30s"
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

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
    /// `[[fault]]` entries, installed at start in this order.
    #[serde(default, rename = "fault")]
    pub faults: Vec<Spanned<FaultEntry>>,
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
    pub port: u32,
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

/// Where an entry was written: `file:line:col`.
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
    let faults = std::mem::take(&mut config.faults)
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let span = entry.span();
            let (line, column) = line_col(text, span.start);
            let position = Position(format!("{}:{line}:{column}", path.display()));
            entry
                .into_inner()
                .spec()
                .map(|spec| (spec, position))
                .map_err(|e| at(Some(span), format!("fault #{}: {e}", i + 1)))
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
        let request = proto::FaultSpec {
            target: Some(proto::Target {
                port: self.port,
                protocol: match self.protocol {
                    None | Some(ProtocolName::Tcp) => proto::Protocol::Tcp,
                    Some(ProtocolName::Udp) => proto::Protocol::Udp,
                    Some(ProtocolName::Any) => proto::Protocol::Any,
                } as i32,
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
        spec_from_proto(request).map_err(|e| match e {
            FaultError::Invalid { field, reason } => FaultError::Invalid {
                field: key_of(&field).to_string(),
                reason,
            },
            other => other,
        })
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
                    percent: self.required(self.percent, "percent")?,
                }),
                &["percent"],
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
        }
    }
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
            .map_err(|e| anyhow::anyhow!("{position}: fault: {e}"))?;
    }
    Ok(())
}

/// The file's key for a field of the API's request (`target.port` → `port`,
/// `action.delay.latency_us` → `latency`, `ttl_ms` → `for`).
fn key_of(field: &str) -> &str {
    match field.rsplit('.').next().unwrap_or(field) {
        "ttl_ms" => "for",
        "latency_us" => "latency",
        "jitter_us" => "jitter",
        "after_ms" => "after",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{Action, Direction, Protocol};

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
        assert_eq!(spec.label, "etcd");
        assert_eq!(spec.action, Action::Drop { probability: 1.0 });
        assert!(position.0.starts_with("faultd.toml:"), "{position}");
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
    fn the_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/faultd.toml");
        let loaded = load(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(loaded.config.interfaces.is_some());
        assert!(!loaded.faults.is_empty());
    }
}
