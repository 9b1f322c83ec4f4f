//! `faultctl loss`: a random share of packets vanish.

use super::target::PercentArgs;
use crate::proto;

pub fn action(args: &PercentArgs) -> proto::action::Kind {
    proto::action::Kind::Loss(proto::Loss {
        percent: args.percent,
    })
}
