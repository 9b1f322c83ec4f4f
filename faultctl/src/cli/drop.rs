//! `faultctl drop`: the silent blackhole.

use super::target::ProbabilityArgs;
use crate::proto;

pub fn action(args: &ProbabilityArgs) -> proto::action::Kind {
    proto::action::Kind::Drop(proto::Drop {
        probability: args.probability,
    })
}
