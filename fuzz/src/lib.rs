//! What the `add_fault_request` fuzz target checks, as a library so that the seed test
//! (`tests/seeds.rs`) runs the very same checks on the committed corpus.
//!
//! The path a request takes in faultd, minus the kernel: bytes → `AddFaultRequest` (prost)
//! → `spec_from_proto` → `FaultTable::add` → rule-map entries, written to a recording
//! [`RuleSink`] instead of BPF maps. Nothing may panic; a refusal must name a field of the
//! request; and an accepted fault must compile to entries that decode back to it.

pub mod frames;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use fault_common::{FaultCounters, PortKey, PortRule};
use faultd::api::{fault_to_proto, in_wire_terms, spec_from_proto};
use faultd::faults::{FaultError, FaultSpec, FaultTable, RuleSink, decode_rules};
use faultd::proto::{self, AddFaultRequest};
use prost::Message as _;

/// A TCP port the table protects, as faultd protects its API port.
pub const PROTECTED_PORT: u16 = 7447;

/// What became of an input.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Not a protobuf `AddFaultRequest`.
    NotARequest,
    /// Refused with `INVALID_ARGUMENT`, naming this field.
    Invalid(String),
    /// Valid, but on the protected port.
    Protected,
    /// Installed (twice, so that two slots compose), read back and removed.
    Accepted,
}

/// The rule map as the datapath would hold it.
#[derive(Default)]
pub struct RecordingSink {
    pub rules: HashMap<PortKey, PortRule>,
}

impl RuleSink for RecordingSink {
    fn write_rule(&mut self, key: PortKey, rule: Option<&PortRule>) -> Result<(), FaultError> {
        match rule {
            Some(rule) => self.rules.insert(key, *rule),
            None => self.rules.remove(&key),
        };
        Ok(())
    }
    fn reset_counters(&mut self, _: u32) -> Result<(), FaultError> {
        Ok(())
    }
    fn read_counters(&self, _: u32) -> Result<FaultCounters, FaultError> {
        Ok(FaultCounters::default())
    }
}

/// Top-level fields of a `FaultSpec` (and `spec` itself): where every refusal must point.
const WIRE_FIELDS: &[&str] = &["spec", "target", "action", "ttl_ms", "label"];

/// Runs one input through faultd's path; panics on any broken property.
pub fn check(data: &[u8]) -> Outcome {
    let Ok(request) = AddFaultRequest::decode(data) else {
        return Outcome::NotARequest;
    };
    let converted = request
        .spec
        .ok_or_else(|| FaultError::invalid("spec", "required"))
        .and_then(spec_from_proto);
    let spec = match converted {
        Ok(spec) => spec,
        Err(FaultError::Invalid { field, reason }) => {
            assert_names_a_request_field(&field, &reason);
            return Outcome::Invalid(field);
        }
        Err(e) => panic!("spec_from_proto refused with something other than Invalid: {e:?}"),
    };
    install_and_read_back(&spec)
}

fn assert_names_a_request_field(field: &str, reason: &str) {
    let top = field.split('.').next().unwrap_or_default();
    assert!(
        WIRE_FIELDS.contains(&top) && !reason.is_empty(),
        "refusal names no request field: {field:?}: {reason:?}"
    );
}

fn install_and_read_back(spec: &FaultSpec) -> Outcome {
    let mut table = FaultTable::new(vec![PROTECTED_PORT]);
    let mut sink = RecordingSink::default();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut faults = Vec::new();
    for _ in 0..2 {
        match table.add(spec.clone(), now, &mut sink) {
            Ok(fault) => faults.push(fault),
            Err(FaultError::Refused(_)) if spec.target.port == PROTECTED_PORT => {
                assert!(
                    sink.rules.is_empty() && table.is_empty(),
                    "a refusal changed state"
                );
                return Outcome::Protected;
            }
            // The table's own limits (`--max-ttl`) are checked when it installs: a refusal
            // that names a request field and changes nothing, like spec_from_proto's.
            // The API names the field as the request spells it (`ttl` → `ttl_ms`).
            Err(e @ FaultError::Invalid { .. }) if faults.is_empty() => {
                let FaultError::Invalid { field, reason } = in_wire_terms(e) else {
                    unreachable!("in_wire_terms keeps the kind of error")
                };
                assert_names_a_request_field(&field, &reason);
                assert!(
                    sink.rules.is_empty() && table.is_empty(),
                    "a refusal changed state"
                );
                return Outcome::Invalid(field);
            }
            Err(e) => panic!("a spec spec_from_proto accepted was refused: {e}\n{spec:?}"),
        }
    }
    let decoded = decode_rules(sink.rules.clone())
        .unwrap_or_else(|e| panic!("compiled entries do not decode: {e}\n{spec:?}"));
    assert_eq!(decoded.len(), faults.len(), "{decoded:?}");
    for fault in &faults {
        let back = &decoded[&fault.id];
        assert_eq!(back.counter, fault.counter);
        if let Err(e) = back.check_against(spec) {
            panic!("compiled entries do not decode back to the spec: {e}\n{spec:?}");
        }
        // What the API returns for the fault is accepted again as the same fault.
        let listed = fault_to_proto(fault)
            .spec
            .expect("a listed fault has a spec");
        let again = spec_from_proto(listed.clone())
            .unwrap_or_else(|e| panic!("a listed fault is refused back: {e}\n{listed:?}"));
        if let Err(e) = back.check_against(&again) {
            panic!("a listed fault comes back as another: {e}\n{listed:?}");
        }
        assert_eq!((&again.label, again.ttl), (&spec.label, spec.ttl));
    }
    for fault in &faults {
        table.remove(fault.id, &mut sink).expect("remove");
    }
    assert!(
        sink.rules.is_empty(),
        "entries left after removal: {:?}",
        sink.rules
    );
    Outcome::Accepted
}

/// Valid requests covering every action, both families of peer, TTL and label: the seed
/// corpus (`fuzz/corpus/add_fault_request/`, checked by `tests/seeds.rs`).
pub fn seeds() -> Vec<(&'static str, AddFaultRequest)> {
    use proto::action::Kind;
    let request = |port: u32, protocol: proto::Protocol, kind: Kind| AddFaultRequest {
        spec: Some(proto::FaultSpec {
            target: Some(proto::Target {
                port,
                protocol: protocol as i32,
                direction: proto::Direction::Both as i32,
                peer: String::new(),
                ..Default::default()
            }),
            action: Some(proto::Action { kind: Some(kind) }),
            ttl_ms: None,
            label: String::new(),
        }),
        session_id: 0,
    };
    let (tcp, udp, any) = (
        proto::Protocol::Tcp,
        proto::Protocol::Udp,
        proto::Protocol::Any,
    );
    let then = proto::Then::Drop as i32;
    let mut seeds = vec![
        (
            "drop",
            request(2379, any, Kind::Drop(proto::Drop { probability: None })),
        ),
        (
            "reset",
            request(
                80,
                tcp,
                Kind::Reset(proto::Reset {
                    probability: Some(0.25),
                }),
            ),
        ),
        (
            "refuse",
            request(
                53,
                udp,
                Kind::Refuse(proto::Refuse {
                    mode: proto::RefuseMode::Drop as i32,
                }),
            ),
        ),
        (
            "limit_bytes",
            request(
                443,
                tcp,
                Kind::LimitBytes(proto::LimitBytes { bytes: 4096, then }),
            ),
        ),
        (
            "limit_age",
            request(
                443,
                any,
                Kind::LimitAge(proto::LimitAge {
                    after_ms: 1500,
                    then,
                }),
            ),
        ),
        ("record", request(7835, tcp, Kind::Record(proto::Record {}))),
        (
            "loss",
            request(5000, udp, Kind::Loss(proto::Loss { percent: 12.5 })),
        ),
        (
            "delay",
            request(
                8080,
                tcp,
                Kind::Delay(proto::Delay {
                    latency_us: 100_000,
                    jitter_us: 10_000,
                }),
            ),
        ),
        (
            "rate",
            request(
                9000,
                any,
                Kind::Rate(proto::Rate {
                    bits_per_second: 1_000_000,
                    mode: String::new(),
                }),
            ),
        ),
        (
            "corrupt",
            request(6000, tcp, Kind::Corrupt(proto::Corrupt { percent: 1.0 })),
        ),
        (
            "duplicate",
            request(
                6001,
                udp,
                Kind::Duplicate(proto::Duplicate { percent: 50.0 }),
            ),
        ),
        ("stall", request(6002, tcp, Kind::Stall(proto::Stall {}))),
    ];
    let mut peer_ttl_label = request(2380, tcp, Kind::Drop(proto::Drop { probability: None }));
    let spec = peer_ttl_label.spec.as_mut().unwrap();
    let target = spec.target.as_mut().unwrap();
    target.peer = "fd00:fa17::2/64".into();
    target.direction = proto::Direction::FromPort as i32;
    spec.ttl_ms = Some(30_000);
    spec.label = "partition etcd-2".into();
    seeds.push(("peer_ttl_label", peer_ttl_label));
    let mut v4_peer = request(2381, udp, Kind::Loss(proto::Loss { percent: 100.0 }));
    let target = v4_peer.spec.as_mut().unwrap().target.as_mut().unwrap();
    target.peer = "198.18.7.9/15".into();
    target.direction = proto::Direction::ToPort as i32;
    seeds.push(("v4_peer", v4_peer));
    seeds
}
