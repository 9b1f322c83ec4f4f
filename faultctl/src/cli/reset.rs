//! `faultctl reset`: each packet of a matching TCP flow is answered with a RST.

use super::target::ProbabilityArgs;
use crate::proto;

pub fn action(args: &ProbabilityArgs) -> proto::action::Kind {
    proto::action::Kind::Reset(proto::Reset {
        probability: args.probability,
    })
}
