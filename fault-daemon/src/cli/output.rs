//! How faults look to people (tables) and to scripts (JSON).

use std::time::{SystemTime, UNIX_EPOCH};

use comfy_table::{Table, presets::NOTHING};
use serde_json::{Value, json};
use tonic::transport::Channel;

use crate::proto::{self, fault_service_client::FaultServiceClient};

/// Adds a fault and prints its id (or the whole fault as JSON).
pub async fn added(
    client: &mut FaultServiceClient<Channel>,
    spec: proto::FaultSpec,
    json: bool,
) -> anyhow::Result<()> {
    let fault = client
        .add_fault(proto::AddFaultRequest {
            spec: Some(spec),
            session_id: 0,
        })
        .await
        .map_err(super::rpc_error)?
        .into_inner();
    if json {
        println!("{}", fault_json(&fault));
    } else {
        println!("{}", fault.id);
    }
    Ok(())
}

pub fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(NOTHING).set_header(header.to_vec());
    table
}

/// A JSON string value without its quotes; "-" when empty.
pub fn text(v: &Value) -> String {
    match v.as_str() {
        Some("") | None => "-".into(),
        Some(s) => s.into(),
    }
}

pub fn expires_in(expires_unix_ms: i64) -> String {
    if expires_unix_ms == 0 {
        return "-".into();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    format!("{:.1}s", (expires_unix_ms - now).max(0) as f64 / 1000.0)
}

pub fn fault_json(f: &proto::Fault) -> Value {
    let spec = f.spec.clone().unwrap_or_default();
    let t = spec.target.unwrap_or_default();
    let protocol = match proto::Protocol::try_from(t.protocol) {
        Ok(proto::Protocol::Udp) => "udp",
        Ok(proto::Protocol::Any) => "any",
        _ => "tcp",
    };
    let direction = match proto::Direction::try_from(t.direction) {
        Ok(proto::Direction::ToPort) => "to-port",
        Ok(proto::Direction::FromPort) => "from-port",
        _ => "both",
    };
    let (action, params) = describe(spec.action.and_then(|a| a.kind));
    json!({
        "id": f.id,
        "action": action,
        "params": params,
        "port": t.port,
        "protocol": protocol,
        "direction": direction,
        "peer": t.peer,
        "ttl_ms": spec.ttl_ms,
        "label": spec.label,
        "created_unix_ms": f.created_unix_ms,
        "expires_unix_ms": (f.expires_unix_ms != 0).then_some(f.expires_unix_ms),
        "owner": f.owner.as_ref().map(|o| json!({
            "uid": o.uid,
            "pid": (o.pid != 0).then_some(o.pid),
            "command": o.command,
            "remote": o.remote,
        })),
        "session_id": (f.session_id != 0).then_some(f.session_id),
    })
}

/// The session a fault dies with, for people; "-" when none.
pub fn session(session_id: u64) -> String {
    match session_id {
        0 => "-".into(),
        id => id.to_string(),
    }
}

/// Who added a fault, for people: `root pid 42 (faultctl)`, `alice (uid 1001) …`, or the
/// remote peer and certificate.
pub fn owner(owner: Option<&proto::Owner>) -> String {
    let Some(o) = owner else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if let Some(uid) = o.uid {
        parts.push(match crate::access::user_name(uid) {
            Some(name) => format!("{name}({uid})"),
            None => format!("uid {uid}"),
        });
    }
    if o.pid != 0 {
        parts.push(format!("pid {}", o.pid));
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

/// An action's name and its parameters for people, e.g. ("limit-bytes", "bytes=100 then=reset").
fn describe(kind: Option<proto::action::Kind>) -> (&'static str, String) {
    use proto::action::Kind;
    let p = |p: Option<f64>| p.map(|p| format!("p={p}")).unwrap_or_default();
    let then = |t: i32| match proto::Then::try_from(t) {
        Ok(proto::Then::Drop) => "drop",
        _ => "reset",
    };
    match kind {
        Some(Kind::Drop(d)) => ("drop", p(d.probability)),
        Some(Kind::Reset(r)) => ("reset", p(r.probability)),
        Some(Kind::Refuse(r)) => (
            "refuse",
            match proto::RefuseMode::try_from(r.mode) {
                Ok(proto::RefuseMode::Drop) => "mode=drop",
                _ => "mode=rst",
            }
            .into(),
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
