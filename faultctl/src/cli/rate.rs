//! `faultctl rate`: a bandwidth limit.

use clap::Args;

use super::target::TargetArgs;
use crate::proto;

#[derive(Args, Debug)]
#[command(
    after_help = "Units as tc writes them: bit, kbit, mbit, gbit (bits per second) and \
bps, kbps, mbps (bytes per second); k = 1000. Counted over whole packets. Where the fq qdisc \
is available the traffic is paced at TC egress (packets wait, none is lost); elsewhere it is \
policed (packets beyond a 10 ms burst are dropped). `faultctl list` shows which."
)]
pub struct RateArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The limit: 1mbit, 500kbit, 2mbps…
    #[arg(long, value_parser = parse_rate)]
    pub limit: u64,
}

pub fn action(args: &RateArgs) -> proto::action::Kind {
    proto::action::Kind::Rate(proto::Rate {
        bits_per_second: i64::try_from(args.limit).unwrap_or(i64::MAX),
        mode: String::new(),
    })
}

/// A rate as tc writes it, in bits per second (as scenario files do).
pub use faultd_api::units::parse_rate;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_like_tc() {
        assert_eq!(parse_rate("1mbit"), Ok(1_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert_eq!(parse_rate("2gbit"), Ok(2_000_000_000));
        assert_eq!(parse_rate("100bit"), Ok(100));
        assert_eq!(parse_rate("100"), Ok(100));
        assert_eq!(parse_rate("1bps"), Ok(8));
        assert_eq!(parse_rate("2kbps"), Ok(16_000));
        assert_eq!(parse_rate("1.5mbps"), Ok(12_000_000));
        assert_eq!(
            parse_rate("0mbit"),
            Ok(0),
            "0 goes to the daemon, which refuses it"
        );
        for bad in ["10furlongs", "fast", "", "mbit", "-1mbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
