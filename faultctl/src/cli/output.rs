//! How faultctl's answers look: typed rows, rendered either as text for people or as JSON
//! for scripts, from the same values. Enum names come from [`faultd_api::names`].

use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{Table, presets::NOTHING};
use faultd_api::names::Named as _;
use serde::Serialize;
use tonic::transport::Channel;

use super::target::TargetArgs;
use crate::proto::{self, fault_service_client::FaultServiceClient};

/// An answer faultctl prints: as JSON with `--json`, else as text.
pub trait Render: Serialize {
    /// The text for people, without a trailing newline.
    fn text(&self) -> String;
}

/// Prints `value` on stdout, as JSON (one line) or as text.
pub fn print(value: &impl Render, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", value.text());
    }
    Ok(())
}

/// Adds a fault and prints its id (or the whole fault as JSON); with `--hold`, holds it
/// for as long as faultctl runs ([`super::hold`]).
pub async fn added(
    client: &mut FaultServiceClient<Channel>,
    target: &TargetArgs,
    action: proto::action::Kind,
    json: bool,
) -> anyhow::Result<()> {
    add_spec(client, target.spec(action), target.hold, json).await
}

/// Adds `spec` (and holds it while faultctl runs, with `hold`); prints it.
pub async fn add_spec(
    client: &mut FaultServiceClient<Channel>,
    spec: proto::FaultSpec,
    hold: bool,
    json: bool,
) -> anyhow::Result<()> {
    if hold {
        return super::hold::run(client, spec, json).await;
    }
    let fault = client
        .add_fault(proto::AddFaultRequest {
            spec: Some(spec),
            session_id: 0,
        })
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    print(&Added(FaultRow::from(&fault)), json)
}

/// A fault just added: its id for people, the whole fault for scripts.
#[derive(Serialize)]
#[serde(transparent)]
pub struct Added(pub FaultRow);

impl Render for Added {
    fn text(&self) -> String {
        self.0.id.to_string()
    }
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    table
}

/// "-" for an empty cell.
pub fn cell(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.into()
    }
}

pub fn expires_in(expires_unix_ms: Option<i64>) -> String {
    let Some(expires_unix_ms) = expires_unix_ms else {
        return "-".into();
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    format!("{:.1}s", (expires_unix_ms - now).max(0) as f64 / 1000.0)
}

/// A fault as `list`, `stats`, `rm` and the adding verbs show it.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRow {
    pub id: u64,
    pub action: &'static str,
    /// The action's parameters for people, e.g. `bytes=100 then=reset`.
    pub params: String,
    pub port: u32,
    /// The last port of a range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_end: Option<u32>,
    /// The other end's port of a port tuple.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u32>,
    pub protocol: &'static str,
    pub direction: &'static str,
    pub peer: String,
    /// An address partition's sides.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub between: Vec<String>,
    #[serde(rename = "and", skip_serializing_if = "Vec::is_empty")]
    pub and_peers: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub one_way: bool,
    pub ttl_ms: Option<u64>,
    pub label: String,
    pub created_unix_ms: i64,
    pub expires_unix_ms: Option<i64>,
    pub owner: Option<OwnerRow>,
    /// The session the fault dies with, if any.
    pub session_id: Option<u64>,
}

/// Who added a fault.
#[derive(Clone, Debug, Serialize)]
pub struct OwnerRow {
    pub uid: Option<u32>,
    pub pid: Option<u32>,
    pub command: String,
    pub remote: String,
}

impl From<&proto::Fault> for FaultRow {
    fn from(f: &proto::Fault) -> Self {
        let spec = f.spec.clone().unwrap_or_default();
        let t = spec.target.unwrap_or_default();
        let (action, params) = describe(spec.action.and_then(|a| a.kind));
        FaultRow {
            id: f.id,
            action,
            params,
            port: t.port,
            port_end: (t.port_end != 0).then_some(t.port_end),
            remote_port: (t.remote_port != 0).then_some(t.remote_port),
            protocol: proto::Protocol::name_of(t.protocol),
            direction: proto::Direction::name_of(t.direction),
            peer: t.peer,
            between: t.between,
            and_peers: t.and_peers,
            one_way: t.one_way,
            ttl_ms: spec.ttl_ms,
            label: spec.label,
            created_unix_ms: f.created_unix_ms,
            expires_unix_ms: (f.expires_unix_ms != 0).then_some(f.expires_unix_ms),
            owner: f.owner.as_ref().map(|o| OwnerRow {
                uid: o.uid,
                pid: (o.pid != 0).then_some(o.pid),
                command: o.command.clone(),
                remote: o.remote.clone(),
            }),
            session_id: (f.session_id != 0).then_some(f.session_id),
        }
    }
}

impl FaultRow {
    /// The PORT cell: `2379`, `2379-2381`, `2380:43210` (a tuple), `-` (a partition).
    pub fn ports_text(&self) -> String {
        if self.port == 0 {
            return "-".into();
        }
        let mut text = self.port.to_string();
        if let Some(last) = self.port_end {
            text += &format!("-{last}");
        }
        if let Some(remote) = self.remote_port {
            text += &format!(":{remote}");
        }
        text
    }

    /// The PEER cell: the peer, or a partition's sides (`a,b <-> c`, `a -> c` one-way).
    pub fn peer_text(&self) -> String {
        if self.between.is_empty() {
            return cell(&self.peer);
        }
        let arrow = if self.one_way { "->" } else { "<->" };
        format!(
            "{} {arrow} {}",
            self.between.join(","),
            self.and_peers.join(",")
        )
    }
}

impl OwnerRow {
    /// For people: `root(0) pid 42 faultctl`, `uid 1001 …`, or the remote peer and
    /// certificate.
    pub fn text(owner: Option<&OwnerRow>) -> String {
        let Some(o) = owner else {
            return "-".into();
        };
        let mut parts = Vec::new();
        if let Some(uid) = o.uid {
            parts.push(match user_name(uid) {
                Some(name) => format!("{name}({uid})"),
                None => format!("uid {uid}"),
            });
        }
        if let Some(pid) = o.pid {
            parts.push(format!("pid {pid}"));
        }
        if !o.command.is_empty() {
            parts.push(o.command.clone());
        }
        if !o.remote.is_empty() {
            parts.push(o.remote.clone());
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }
}

/// An action's name and its parameters for people, e.g. ("limit-bytes", "bytes=100 then=reset").
fn describe(kind: Option<proto::action::Kind>) -> (&'static str, String) {
    use proto::action::Kind;
    let p = |p: Option<f64>| p.map(|p| format!("p={p}")).unwrap_or_default();
    let then = proto::Then::name_of;
    match kind {
        Some(Kind::Drop(d)) => ("drop", p(d.probability)),
        Some(Kind::Reset(r)) => ("reset", p(r.probability)),
        Some(Kind::Refuse(r)) => (
            "refuse",
            format!("mode={}", proto::RefuseMode::name_of(r.mode)),
        ),
        Some(Kind::LimitBytes(l)) => (
            "limit-bytes",
            format!("bytes={} then={}", l.bytes, then(l.then)),
        ),
        Some(Kind::LimitAge(l)) => (
            "limit-age",
            format!("after={}ms then={}", l.after_ms, then(l.then)),
        ),
        Some(Kind::Record(_)) => ("record", String::new()),
        Some(Kind::Loss(l)) => ("loss", format!("percent={}", l.percent)),
        Some(Kind::Corrupt(c)) => ("corrupt", format!("percent={}", c.percent)),
        Some(Kind::Duplicate(d)) => ("duplicate", format!("percent={}", d.percent)),
        Some(Kind::Delay(d)) => (
            "delay",
            format!(
                "latency={} jitter={}",
                micros(d.latency_us),
                micros(d.jitter_us)
            ),
        ),
        Some(Kind::Rate(r)) => (
            "rate",
            format!("limit={} mode={}", bits(r.bits_per_second), r.mode),
        ),
        Some(Kind::Stall(_)) => ("stall", String::new()),
        None => ("unknown", String::new()),
    }
}

/// Microseconds for people: `200ms`, `1.5ms`, `250us`.
fn micros(us: i64) -> String {
    if us >= 1000 {
        format!("{}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}

/// A rate the way tc writes it: `1mbit`, `512kbit`, `100bit`.
fn bits(bps: i64) -> String {
    match bps {
        b if b >= 1_000_000_000 && b % 1_000_000_000 == 0 => format!("{}gbit", b / 1_000_000_000),
        b if b >= 1_000_000 && b % 1_000_000 == 0 => format!("{}mbit", b / 1_000_000),
        b if b >= 1000 && b % 1000 == 0 => format!("{}kbit", b / 1000),
        b => format!("{b}bit"),
    }
}

/// An interface faultd is attached to, and how.
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentRow {
    pub interface: String,
    pub xdp_mode: String,
    pub tc_mode: String,
}

impl From<&proto::Attachment> for AttachmentRow {
    fn from(a: &proto::Attachment) -> Self {
        AttachmentRow {
            interface: a.interface.clone(),
            xdp_mode: a.xdp_mode.clone(),
            tc_mode: a.tc_mode.clone(),
        }
    }
}

/// A user's name from the user database, if it has one.
fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(kind: proto::action::Kind, target: proto::Target) -> proto::Fault {
        proto::Fault {
            id: 7,
            spec: Some(proto::FaultSpec {
                target: Some(target),
                action: Some(proto::Action { kind: Some(kind) }),
                ttl_ms: Some(30_000),
                label: "etcd".into(),
            }),
            created_unix_ms: 1000,
            expires_unix_ms: 31_000,
            owner: Some(proto::Owner {
                uid: Some(1001),
                pid: 42,
                command: "faultctl".into(),
                remote: String::new(),
            }),
            session_id: 0,
        }
    }

    #[test]
    fn a_fault_row_names_its_enums_and_parameters() {
        let target = proto::Target {
            port: 2379,
            protocol: proto::Protocol::Udp as i32,
            direction: proto::Direction::ToPort as i32,
            peer: "198.18.0.0/15".into(),
            ..Default::default()
        };
        let limit = proto::action::Kind::LimitBytes(proto::LimitBytes {
            bytes: 100,
            then: proto::Then::Drop as i32,
        });
        let row = FaultRow::from(&fault(limit, target));
        assert_eq!(
            (row.action, row.params.as_str(), row.protocol, row.direction),
            ("limit-bytes", "bytes=100 then=drop", "udp", "to-port")
        );
        let json = serde_json::to_value(&row).unwrap();
        assert_eq!(json["protocol"], "udp");
        assert_eq!(json["expires_unix_ms"], 31_000);
        assert_eq!(json["owner"]["pid"], 42);
        assert_eq!(
            OwnerRow::text(row.owner.as_ref()).split_whitespace().last(),
            Some("faultctl")
        );
    }

    #[test]
    fn unspecified_enums_print_as_what_they_mean() {
        let refuse = proto::action::Kind::Refuse(proto::Refuse { mode: 0 });
        let row = FaultRow::from(&fault(refuse, proto::Target::default()));
        assert_eq!(
            (row.protocol, row.direction, row.params.as_str()),
            ("tcp", "both", "mode=rst")
        );
        let rate = proto::action::Kind::Rate(proto::Rate {
            bits_per_second: 2_000_000,
            mode: "police".into(),
        });
        let row = FaultRow::from(&fault(rate, proto::Target::default()));
        assert_eq!(row.params, "limit=2mbit mode=police");
    }

    #[test]
    fn an_added_fault_is_its_id_for_people_and_the_fault_for_scripts() {
        let drop = proto::action::Kind::Drop(proto::Drop { probability: None });
        let added = Added(FaultRow::from(&fault(drop, proto::Target::default())));
        assert_eq!(added.text(), "7");
        let json = serde_json::to_value(&added).unwrap();
        assert_eq!(
            (json["id"].as_u64(), json["action"].as_str()),
            (Some(7), Some("drop"))
        );
    }
}
