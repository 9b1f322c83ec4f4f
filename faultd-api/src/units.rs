//! Durations, rates and ports as people write them, for faultctl's arguments, scenario
//! files and faultd's configuration file alike: `500ms`, `30s`, `2m`; `1mbit`, `500kbit`,
//! `2mbps`; `2379`, `2379-2381`.

use std::time::Duration;

/// A duration longer than 0: `500ms`, `30s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = parse_offset(text)?;
    if d.is_zero() {
        return Err("a duration must be longer than 0".into());
    }
    Ok(d)
}

/// A duration that may be 0 (`0s`): an offset from a start.
pub fn parse_offset(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration like 500ms, 30s or 2m ({e})"))
}

/// A rate as tc writes it, in bits per second. A bare number is bits per second, as in tc.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 1mbit, 500kbit or 2mbps"))?;
    let bits_per_unit: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use bit, kbit, mbit, gbit, bps, kbps or mbps"
            ));
        }
    };
    Ok((value * bits_per_unit).round() as u64)
}

/// A port, or the first and last of a range (`--port 2379-2381`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ports {
    pub first: u16,
    pub last: Option<u16>,
}

/// `2379` or `2379-2381` (ports 1-65535, the range not ending before it starts).
pub fn parse_ports(text: &str) -> Result<Ports, String> {
    let port = |t: &str| match t.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{t:?} is not a port (1-65535)")),
    };
    match text.split_once('-') {
        None => Ok(Ports {
            first: port(text)?,
            last: None,
        }),
        Some((a, b)) => {
            let (first, last) = (port(a)?, port(b)?);
            if last < first {
                return Err(format!("the range {first}-{last} ends before it starts"));
            }
            Ok(Ports {
                first,
                last: Some(last),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_offsets() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_offset("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("0s").is_err());
        for bad in ["-1s", "soon", "", "10"] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates_read_like_tc() {
        assert_eq!(parse_rate("1mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("2gbit"), Ok(2_000_000_000));
        assert_eq!(parse_rate("100"), Ok(100));
        assert_eq!(parse_rate("2kbps"), Ok(16_000));
        assert_eq!(parse_rate("1.5mbps"), Ok(12_000_000));
        for bad in ["10furlongs", "fast", "", "mbit", "-1mbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_and_ranges() {
        assert_eq!(
            parse_ports("2379"),
            Ok(Ports {
                first: 2379,
                last: None
            })
        );
        assert_eq!(
            parse_ports("2379-2381"),
            Ok(Ports {
                first: 2379,
                last: Some(2381)
            })
        );
        for bad in ["0", "2381-2379", "1-65536", "a-b", "-5", "5-", ""] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }
}
