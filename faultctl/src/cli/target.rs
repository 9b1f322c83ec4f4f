//! Arguments every fault verb shares: what traffic, for how long, with what label.

use std::time::Duration;

use clap::Args;

use crate::proto;

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// The port whose traffic misbehaves (1-65535), or a range of ports (2379-2381), each
    /// faulted as if alone.
    #[arg(long, value_name = "PORT[-LAST]", value_parser = parse_ports)]
    pub port: Ports,
    /// Only the flow whose other end is on this port (a port tuple), either direction.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub remote_port: Option<u16>,
    // The values' names are faultd_api::names'.
    #[arg(long, value_enum, default_value = "tcp")]
    pub protocol: proto::Protocol,
    /// Which packets, relative to the port.
    #[arg(long, value_enum, default_value = "both")]
    pub direction: proto::Direction,
    /// Only flows with this remote address or network (ADDR or ADDR/PREFIX).
    #[arg(long)]
    pub peer: Option<String>,
    /// Remove the fault by itself after this long (500ms, 30s, 2m).
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    pub ttl: Option<Duration>,
    /// A free-form label, shown by list and stats.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Keep the fault only while faultctl runs: bind it to a session, print it, wait for
    /// Ctrl-C or SIGTERM, then remove it and exit 0. Should faultctl die (SIGKILL, a lost
    /// terminal), faultd removes the fault within 1 s all the same.
    #[arg(long)]
    pub hold: bool,
}

/// Target options and an optional share of packets as a probability: drop, reset.
#[derive(Args, Debug)]
pub struct ProbabilityArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Act on only this share of matching packets, in (0, 1].
    #[arg(long, value_parser = parse_probability, allow_hyphen_values = true)]
    pub probability: Option<f64>,
}

/// Target options and a share of packets in percent: loss, corrupt, duplicate.
#[derive(Args, Debug)]
pub struct PercentArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Share of matching packets acted on, in percent (0-100].
    #[arg(long, allow_hyphen_values = true)]
    pub percent: f64,
}

impl TargetArgs {
    pub fn spec(&self, action: proto::action::Kind) -> proto::FaultSpec {
        proto::FaultSpec {
            target: Some(proto::Target {
                port: self.port.first.into(),
                port_end: self.port.last.map_or(0, u32::from),
                remote_port: self.remote_port.map_or(0, u32::from),
                protocol: self.protocol.into(),
                direction: self.direction.into(),
                peer: self.peer.clone().unwrap_or_default(),
                ..Default::default()
            }),
            action: Some(proto::Action { kind: Some(action) }),
            ttl_ms: self.ttl.map(|d| d.as_millis() as u64),
            label: self.label.clone(),
        }
    }
}

/// `--port`: one port, or the first and last of a range; parsed as faultd's config file
/// parses its `port`.
pub use faultd_api::units::{Ports, parse_ports};

/// Durations as people write them: `500ms`, `30s`, `2m`, `1h` (as scenario files do).
pub use faultd_api::units::parse_duration;

/// A probability in (0, 1].
pub fn parse_probability(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 1.0 => Ok(p),
        _ => Err(format!("{text:?} is not a probability in (0, 1]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["-1s", "soon", "", "0s", "10"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("0.3"), Ok(0.3));
        assert_eq!(parse_probability("1"), Ok(1.0));
        for bad in ["1.5", "0", "-0.2", "NaN", "x"] {
            assert!(parse_probability(bad).is_err(), "{bad}");
        }
    }
}
