//! The names people and scripts use for the API's enums — `tcp`, `to-port`, `reset`,
//! `syn-refused` — in one place: faultctl's arguments and output, JSON, logs.
//!
//! A value's name is what the CLI accepts and what output prints; the unspecified value (0)
//! prints as what it means (`tcp`, `both`, `rst`, `reset`). A fault's rate mode is already
//! a name on the wire (`pace` or `police`), chosen by the daemon.

use crate::proto::{Direction, EventKind, Protocol, RefuseMode, Then};

/// An API enum with names.
pub trait Named: Copy + PartialEq + TryFrom<i32> + 'static {
    /// Every value that has a name, with the help text for it, in the order help lists them.
    const NAMES: &'static [(Self, &'static str, &'static str)];
    /// What the unspecified value (or a value this client does not know) prints as.
    const OTHERWISE: &'static str;

    /// The name of this value.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(value, ..)| *value == self)
            .map_or(Self::OTHERWISE, |(_, name, _)| name)
    }

    /// The name of a value as it travels (an `i32` field).
    fn name_of(wire: i32) -> &'static str {
        Self::try_from(wire).map_or(Self::OTHERWISE, Self::name)
    }

    /// The value a name stands for.
    fn from_name(name: &str) -> Option<Self> {
        Self::NAMES
            .iter()
            .find(|(_, n, _)| *n == name)
            .map(|(value, ..)| *value)
    }
}

impl Named for Protocol {
    const NAMES: &'static [(Self, &'static str, &'static str)] = &[
        (Protocol::Tcp, "tcp", "TCP"),
        (Protocol::Udp, "udp", "UDP"),
        (Protocol::Any, "any", "TCP and UDP"),
    ];
    const OTHERWISE: &'static str = "tcp";
}

impl Named for Direction {
    const NAMES: &'static [(Self, &'static str, &'static str)] = &[
        (Direction::Both, "both", "Both directions"),
        (
            Direction::ToPort,
            "to-port",
            "Packets to the port (client → server)",
        ),
        (
            Direction::FromPort,
            "from-port",
            "Packets from the port (server → client)",
        ),
    ];
    const OTHERWISE: &'static str = "both";
}

impl Named for RefuseMode {
    const NAMES: &'static [(Self, &'static str, &'static str)] = &[
        (
            RefuseMode::Rst,
            "rst",
            "connect() fails at once with ECONNREFUSED (TCP)",
        ),
        (
            RefuseMode::Drop,
            "drop",
            "connect() times out; for UDP, datagrams to the port vanish",
        ),
    ];
    const OTHERWISE: &'static str = "rst";
}

impl Named for Then {
    const NAMES: &'static [(Self, &'static str, &'static str)] = &[
        (Then::Drop, "drop", "The flow goes silent"),
        (Then::Reset, "reset", "Both ends get a RST (TCP only)"),
    ];
    const OTHERWISE: &'static str = "reset";
}

impl Named for EventKind {
    const NAMES: &'static [(Self, &'static str, &'static str)] = &[
        (
            EventKind::FirstHit,
            "first-hit",
            "a fault matched a flow for the first time",
        ),
        (
            EventKind::RstSent,
            "rst-sent",
            "a forged RST was sent to a packet's sender",
        ),
        (
            EventKind::SynRefused,
            "syn-refused",
            "a connection attempt was refused",
        ),
        (
            EventKind::Syn,
            "syn",
            "a connection attempt to a recorded port",
        ),
        (EventKind::FlowCut, "flow-cut", "a limit cut a flow"),
        (
            EventKind::FlowUntracked,
            "flow-untracked",
            "a limit's flow table (faultd --max-flows) was full: a new flow passes untracked",
        ),
        (
            EventKind::Gap,
            "gap",
            "events are missing here: the kernel's ring was full, or a reader was too slow",
        ),
    ];
    const OTHERWISE: &'static str = "unknown";
}

/// The named enums as clap value enums, so that faultctl's arguments take exactly these
/// names and its help shows their help texts.
#[cfg(feature = "clap")]
mod value_enums {
    use clap::builder::PossibleValue;

    use super::*;

    macro_rules! value_enum {
        ($($ty:ty),*) => {$(
            impl clap::ValueEnum for $ty {
                fn value_variants<'a>() -> &'a [Self] {
                    const VALUES: &[$ty] = &{
                        let names = <$ty as Named>::NAMES;
                        let mut values = [<$ty>::Unspecified; <$ty as Named>::NAMES.len()];
                        let mut i = 0;
                        while i < names.len() {
                            values[i] = names[i].0;
                            i += 1;
                        }
                        values
                    };
                    VALUES
                }

                fn to_possible_value(&self) -> Option<PossibleValue> {
                    let (_, name, help) = Self::NAMES.iter().find(|(v, ..)| v == self)?;
                    Some(PossibleValue::new(*name).help(*help))
                }
            }
        )*};
    }

    value_enum!(Protocol, Direction, RefuseMode, Then, EventKind);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Named + std::fmt::Debug>(unspecified: i32) {
        for (value, name, _) in T::NAMES {
            assert_eq!(T::from_name(name), Some(*value), "{name}");
            assert_eq!(value.name(), *name);
        }
        assert_eq!(T::name_of(unspecified), T::OTHERWISE);
        assert_eq!(
            T::name_of(999),
            T::OTHERWISE,
            "a value this client does not know"
        );
        assert_eq!(T::from_name("no-such-name"), None);
    }

    #[test]
    fn every_name_maps_back_to_its_value() {
        round_trips::<Protocol>(0);
        round_trips::<Direction>(0);
        round_trips::<RefuseMode>(0);
        round_trips::<Then>(0);
        round_trips::<EventKind>(0);
    }

    #[test]
    fn names_are_the_ones_the_cli_and_the_docs_use() {
        assert_eq!(Protocol::name_of(Protocol::Udp as i32), "udp");
        assert_eq!(Protocol::name_of(0), "tcp", "unspecified means tcp");
        assert_eq!(Direction::ToPort.name(), "to-port");
        assert_eq!(Direction::name_of(0), "both");
        assert_eq!(RefuseMode::name_of(0), "rst");
        assert_eq!(Then::Drop.name(), "drop");
        assert_eq!(EventKind::SynRefused.name(), "syn-refused");
        assert_eq!(EventKind::name_of(0), "unknown");
    }

    #[cfg(feature = "clap")]
    #[test]
    fn clap_takes_the_same_names() {
        use clap::ValueEnum as _;
        assert_eq!(
            Direction::from_str("from-port", false),
            Ok(Direction::FromPort)
        );
        let listed: Vec<_> = Then::value_variants().iter().map(|t| t.name()).collect();
        assert_eq!(listed, ["drop", "reset"]);
        assert!(Protocol::from_str("sctp", false).is_err());
    }
}
