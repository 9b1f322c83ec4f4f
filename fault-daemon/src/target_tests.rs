//! Unit tests of the richer targets (issue #14): port ranges, port tuples and address-only
//! partitions, through the fault table and a recording sink.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fault_common::{ACTION_DROP, ACTION_RESET, MAX_PARTITIONS, PROTO_TCP, PROTO_UDP, PortKey};

use crate::faults::tests::{MemorySink, drop_spec};
use crate::faults::{
    Action, Direction, FaultError, FaultSpec, FaultTable, Limits, Peer, Protocol, decode_rules,
};
use crate::partitions::Partition;

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)
}

fn range(first: u16, last: u16, protocol: Protocol) -> FaultSpec {
    let mut s = drop_spec(first, protocol);
    s.target.last_port = Some(last);
    s
}

fn field(e: FaultError) -> String {
    match e {
        FaultError::Invalid { field, .. } => field,
        other => panic!("not an Invalid error: {other}"),
    }
}

fn partition(between: &[&str], and: &[&str], one_way: bool) -> FaultSpec {
    let peers = |s: &[&str]| {
        s.iter()
            .map(|t| Peer::parse(t, "x").unwrap())
            .collect::<Vec<_>>()
    };
    let mut s = drop_spec(80, Protocol::Any);
    s.target.port = 0;
    s.target.partition = Some(Arc::new(Partition {
        between: peers(between),
        and: peers(and),
        one_way,
    }));
    s
}

#[test]
fn a_range_compiles_into_every_port_and_protocol_and_goes_whole() {
    let mut table = FaultTable::default();
    let mut sink = MemorySink::default();
    let f = table
        .add(range(2379, 2381, Protocol::Any), now(), &mut sink)
        .unwrap();
    let keys: BTreeSet<(u8, u16)> = sink.rules.keys().map(|k| (k.protocol, k.port)).collect();
    let want: BTreeSet<(u8, u16)> = [PROTO_TCP, PROTO_UDP]
        .into_iter()
        .flat_map(|p| (2379..=2381).map(move |port| (p, port)))
        .collect();
    assert_eq!(keys, want);
    // Read back from the entries, it is the same range.
    let decoded = decode_rules(sink.rules.clone()).unwrap();
    decoded[&f.id].check_against(&f.spec).unwrap();
    assert_eq!(decoded[&f.id].target.last_port, Some(2381));
    table.remove(f.id, &mut sink).unwrap();
    assert!(sink.rules.is_empty());
}

#[test]
fn a_range_over_a_full_port_is_refused_and_changes_nothing() {
    let mut table = FaultTable::default();
    let mut sink = MemorySink::default();
    for _ in 0..8 {
        table
            .add(drop_spec(2380, Protocol::Tcp), now(), &mut sink)
            .unwrap();
    }
    let before = sink.rules.clone();
    let err = table
        .add(range(2379, 2381, Protocol::Tcp), now(), &mut sink)
        .unwrap_err();
    assert!(
        matches!(&err, FaultError::Exhausted(m) if m.contains("port 2380")),
        "{err}"
    );
    assert_eq!(sink.rules, before);
    assert_eq!(table.len(), 8);
}

#[test]
fn ranges_beyond_the_rule_map_are_refused_naming_the_limit() {
    let limits = Limits {
        max_faults: 10,
        ..Limits::default()
    };
    let mut table = FaultTable::default().with_limits(limits);
    let mut sink = MemorySink::default();
    // 20 keys: exactly the map's capacity (2 × --max-faults).
    table
        .add(range(1000, 1019, Protocol::Tcp), now(), &mut sink)
        .unwrap();
    let err = table
        .add(range(2000, 2000, Protocol::Tcp), now(), &mut sink)
        .unwrap_err();
    assert!(
        matches!(&err, FaultError::Exhausted(m) if m.contains("--max-faults") && m.contains("20")),
        "{err}"
    );
    // A range on ports already keyed takes no new key.
    table
        .add(range(1005, 1006, Protocol::Tcp), now(), &mut sink)
        .unwrap();
    assert_eq!(sink.rules.len(), 20);
}

#[test]
fn a_range_over_the_api_port_is_refused() {
    let mut table = FaultTable::new(vec![7447]);
    let mut sink = MemorySink::default();
    let err = table
        .add(range(7440, 7450, Protocol::Tcp), now(), &mut sink)
        .unwrap_err();
    assert!(
        matches!(&err, FaultError::Refused(m) if m.contains("7447")),
        "{err}"
    );
    assert!(sink.rules.is_empty());
}

#[test]
fn a_tuple_puts_the_remote_port_in_the_slot() {
    let mut table = FaultTable::default();
    let mut sink = MemorySink::default();
    let mut s = drop_spec(2380, Protocol::Tcp);
    s.target.remote_port = Some(43210);
    let f = table.add(s, now(), &mut sink).unwrap();
    let rule = sink.rules[&PortKey::new(PROTO_TCP, 2380)];
    assert_eq!(rule.slots[0].remote_port, 43210);
    assert_eq!(
        sink.rules.len(),
        1,
        "one key: the remote port is matched in the slot"
    );
    decode_rules(sink.rules.clone()).unwrap()[&f.id]
        .check_against(&f.spec)
        .unwrap();
}

#[test]
fn bad_targets_name_their_field() {
    let mut s = range(2381, 2379, Protocol::Tcp);
    assert_eq!(field(s.validate().unwrap_err()), "target.port_end");
    s = drop_spec(80, Protocol::Tcp);
    s.target.remote_port = Some(0);
    assert_eq!(field(s.validate().unwrap_err()), "target.remote_port");
    let mut p = partition(&["10.0.0.1"], &["10.0.0.2"], false);
    p.target.port = 80;
    assert_eq!(field(p.validate().unwrap_err()), "target.port");
    let mut p = partition(&["10.0.0.1"], &["10.0.0.2"], false);
    p.target.remote_port = Some(5);
    assert_eq!(field(p.validate().unwrap_err()), "target.remote_port");
    let mut p = partition(&["10.0.0.1"], &["10.0.0.2"], false);
    p.target.direction = Direction::ToPort;
    assert_eq!(field(p.validate().unwrap_err()), "target.direction");
    let mut p = partition(&["10.0.0.1"], &["10.0.0.2"], false);
    p.action = Action::Stall;
    assert_eq!(field(p.validate().unwrap_err()), "action");
    let p = partition(&["10.0.0.0/8"], &["10.1.2.3"], false);
    assert_eq!(field(p.validate().unwrap_err()), "target.and_peers");
    // Reset on any protocol is fine for a partition: TCP is reset, the rest dropped.
    let mut p = partition(&["10.0.0.1"], &["10.0.0.2"], false);
    p.action = Action::Reset { probability: 1.0 };
    p.validate().unwrap();
}

/// Partition 0 between {10.0.0.0/24} and {10.0.1.5}; partition 1 one-way from {10.0.0.7}
/// to {fd00::/8}. The /32 inside partition 0's /24 carries both partitions' bits.
#[test]
fn partitions_compile_into_closed_prefix_words() {
    let mut table = FaultTable::default();
    let mut sink = MemorySink::default();
    let a = table
        .add(
            partition(&["10.0.0.0/24"], &["10.0.1.5"], false),
            now(),
            &mut sink,
        )
        .unwrap();
    let mut reset = partition(&["10.0.0.7"], &["fd00::/8"], true);
    reset.action = Action::Reset { probability: 1.0 };
    reset.target.protocol = Protocol::Tcp;
    let b = table.add(reset, now(), &mut sink).unwrap();
    let p = &sink.partitions;
    assert!(sink.rules.is_empty(), "no port rules");
    assert_eq!(p.state.active, 0b0101);
    assert_eq!(p.state.two_way, 0b0001);
    assert_eq!(p.slots[0].fault_id, a.id);
    assert_eq!(p.slots[0].action, ACTION_DROP);
    assert_eq!(p.slots[0].protocols, 3);
    assert_eq!(p.slots[1].fault_id, b.id);
    assert_eq!(p.slots[1].action, ACTION_RESET);
    assert_eq!(p.slots[1].protocols, 1);
    assert_eq!(p.v4[&([10, 0, 0, 0], 24)], 0b0001);
    assert_eq!(p.v4[&([10, 0, 1, 5], 32)], 0b0010);
    assert_eq!(p.v4[&([10, 0, 0, 7], 32)], 0b0101, "inside the /24: both");
    assert_eq!(p.v6.len(), 1);
    assert_eq!(p.v6.values().next(), Some(&0b1000));
    // Removing one leaves the other, in the same slot.
    table.remove(a.id, &mut sink).unwrap();
    let p = &sink.partitions;
    assert_eq!(p.state.active, 0b0100);
    assert_eq!(p.v4.len(), 1);
    assert_eq!(p.v4[&([10, 0, 0, 7], 32)], 0b0100);
    table.clear(&mut sink).unwrap();
    assert_eq!(sink.partitions.state.active, 0);
    assert!(sink.partitions.v4.is_empty() && sink.partitions.v6.is_empty());
}

#[test]
fn partitions_past_the_limit_are_refused_and_change_nothing() {
    let mut table = FaultTable::default();
    let mut sink = MemorySink::default();
    for i in 0..MAX_PARTITIONS {
        let a = format!("10.{i}.0.1");
        let b = format!("10.{i}.0.2");
        table
            .add(partition(&[&a], &[&b], false), now(), &mut sink)
            .unwrap();
    }
    let before = sink.partitions.clone();
    let err = table
        .add(
            partition(&["10.200.0.1"], &["10.200.0.2"], false),
            now(),
            &mut sink,
        )
        .unwrap_err();
    assert!(
        matches!(&err, FaultError::Exhausted(m) if m.contains("32 partitions")),
        "{err}"
    );
    assert_eq!(sink.partitions, before);
}

#[test]
fn a_failed_partition_write_leaves_the_table_as_it_was() {
    let mut table = FaultTable::default();
    let mut sink = MemorySink {
        fail_writes: true,
        ..Default::default()
    };
    assert!(
        table
            .add(
                partition(&["10.0.0.1"], &["10.0.0.2"], false),
                now(),
                &mut sink
            )
            .is_err()
    );
    assert!(table.is_empty());
    sink.fail_writes = false;
    let f = table
        .add(
            partition(&["10.0.0.1"], &["10.0.0.2"], false),
            now(),
            &mut sink,
        )
        .unwrap();
    assert_eq!(sink.partitions.slots[0].fault_id, f.id, "slot 0 was freed");
}

mod wire {
    use crate::api::spec_from_proto;
    use crate::faults::FaultError;
    use faultd_api::proto;

    fn drop_request(target: proto::Target) -> proto::FaultSpec {
        proto::FaultSpec {
            target: Some(target),
            action: Some(proto::Action {
                kind: Some(proto::action::Kind::Drop(proto::Drop { probability: None })),
            }),
            ttl_ms: None,
            label: "".into(),
        }
    }

    fn field_of(target: proto::Target) -> String {
        match spec_from_proto(drop_request(target)).unwrap_err() {
            FaultError::Invalid { field, .. } => field,
            other => panic!("not an Invalid error: {other}"),
        }
    }

    fn port(port: u32) -> proto::Target {
        proto::Target {
            port,
            ..Default::default()
        }
    }

    fn partition(between: &[&str], and: &[&str]) -> proto::Target {
        proto::Target {
            between: between.iter().map(|s| s.to_string()).collect(),
            and_peers: and.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    /// Each bad value is refused naming the request's field.
    #[test]
    fn bad_richer_targets_name_the_wire_field() {
        let t = |f: fn(&mut proto::Target)| {
            let mut t = port(2379);
            f(&mut t);
            field_of(t)
        };
        assert_eq!(t(|t| t.port_end = 70_000), "target.port_end");
        assert_eq!(t(|t| t.port_end = 2378), "target.port_end");
        assert_eq!(t(|t| t.remote_port = 65_536), "target.remote_port");
        assert_eq!(t(|t| t.one_way = true), "target.one_way");
        assert_eq!(
            field_of(partition(&["banana"], &["10.0.0.1"])),
            "target.between"
        );
        assert_eq!(field_of(partition(&["10.0.0.1"], &[])), "target.and_peers");
        assert_eq!(field_of(partition(&[], &["10.0.0.1"])), "target.between");
        assert_eq!(
            field_of(partition(&["10.0.0.1"], &["10.0.0.1/33"])),
            "target.and_peers"
        );
        let mut p = partition(&["10.0.0.1"], &["10.0.0.2"]);
        p.port = 80;
        assert_eq!(field_of(p), "target.port");
        let mut p = partition(&["10.0.0.1"], &["10.0.0.2"]);
        p.peer = "10.0.0.3".into();
        assert_eq!(field_of(p), "target.peer");
    }

    /// Good ones decode into the domain's target; an unspecified protocol is `any` for a
    /// partition (it cuts whatever flows), `tcp` for a port.
    #[test]
    fn richer_targets_decode_and_come_back_the_same() {
        let mut t = port(2379);
        t.port_end = 2381;
        t.remote_port = 43210;
        let spec = spec_from_proto(drop_request(t)).unwrap();
        assert_eq!(spec.target.ports(), 2379..=2381);
        assert_eq!(spec.target.remote_port, Some(43210));
        let mut p = partition(&["127.0.0.2", "fd00::/8"], &["127.0.0.3"]);
        p.one_way = true;
        let spec = spec_from_proto(drop_request(p)).unwrap();
        assert_eq!(spec.target.protocol, crate::faults::Protocol::Any);
        let partition = spec.target.partition.as_ref().unwrap();
        assert!(partition.one_way);
        assert_eq!(partition.between.len(), 2);
        let fault = crate::faults::Fault {
            id: 1,
            spec: spec.clone(),
            created: std::time::SystemTime::UNIX_EPOCH,
            expires: None,
            counter: 0,
            owner: Default::default(),
            session: None,
        };
        let back = crate::api::fault_to_proto(&fault).spec.unwrap();
        assert_eq!(spec_from_proto(back).unwrap(), spec);
    }
}
