//! `faultctl corrupt`: payload bytes change, checksums stay valid, the application reads
//! the damage.

use super::target::PercentArgs;
use crate::proto;

pub fn action(args: &PercentArgs) -> proto::action::Kind {
    proto::action::Kind::Corrupt(proto::Corrupt {
        percent: args.percent,
    })
}
