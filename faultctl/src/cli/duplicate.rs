//! `faultctl duplicate`: packets arrive twice.

use super::target::PercentArgs;
use crate::proto;

pub fn action(args: &PercentArgs) -> proto::action::Kind {
    proto::action::Kind::Duplicate(proto::Duplicate {
        percent: args.percent,
    })
}
