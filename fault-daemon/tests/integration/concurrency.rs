//! 16 clients add, remove, list and clear at once for 30 s; afterwards faultd's list is
//! what the kernel's rule map holds, every id was given once and none was lost, and each
//! fault has a counter slot of its own that counts from zero.

use crate::harness;
use crate::kernel_rules;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use faultd::proto::{self, action::Kind, fault_service_client::FaultServiceClient};
use harness::*;
use tonic::Code;
use tonic::transport::Channel;

const CLIENTS: u64 = 16;
const RUN_FOR: Duration = Duration::from_secs(30);
const MAX_FAULTS: usize = 40;
/// Ports the clients fault: 12 ports × 8 slots is more than MAX_FAULTS, so both limits
/// are hit.
const PORTS: std::ops::Range<u32> = 6000..6012;

/// xorshift64: reproducible from the client's seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What one client saw.
#[derive(Default)]
struct Tally {
    added: Vec<u64>,
    removed: Vec<u64>,
    cleared: u64,
    exhausted: u64,
    not_found: u64,
    ops: u64,
}

fn random_spec(rng: &mut Rng) -> proto::FaultSpec {
    let kind = match rng.below(4) {
        0 => Kind::Drop(proto::Drop {
            probability: Some(0.5),
        }),
        1 => Kind::Loss(proto::Loss { percent: 10.0 }),
        2 => Kind::Corrupt(proto::Corrupt {
            percent: 1.0,
            byte_percent: None,
        }),
        _ => Kind::Duplicate(proto::Duplicate { percent: 1.0 }),
    };
    proto::FaultSpec {
        target: Some(proto::Target {
            port: PORTS.start + rng.below(u64::from(PORTS.end - PORTS.start)) as u32,
            protocol: 1 + rng.below(3) as i32,
            ..Default::default()
        }),
        action: Some(proto::Action { kind: Some(kind) }),
        ttl_ms: None,
        label: format!("churn-{}", rng.below(1000)),
    }
}

async fn connect() -> FaultServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:7447")
        .connect()
        .await
        .expect("connecting to faultd");
    FaultServiceClient::new(channel)
}

async fn churn(seed: u64) -> Tally {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut c = connect().await;
    let mut t = Tally::default();
    let mut mine: Vec<u64> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < RUN_FOR {
        t.ops += 1;
        match rng.below(1000) {
            0..450 => match c
                .add_fault(proto::AddFaultRequest {
                    spec: Some(random_spec(&mut rng)),
                    ..Default::default()
                })
                .await
            {
                Ok(f) => {
                    let id = f.into_inner().id;
                    t.added.push(id);
                    mine.push(id);
                }
                Err(s) if s.code() == Code::ResourceExhausted => t.exhausted += 1,
                Err(s) => panic!("AddFault: {s:?}"),
            },
            450..750 => {
                // Mostly faults it added or saw listed (maybe removed by another since),
                // sometimes a guess.
                let id = if !mine.is_empty() && rng.below(4) != 0 {
                    mine.swap_remove(rng.below(mine.len() as u64) as usize)
                } else {
                    1 + rng.below(t.added.last().copied().unwrap_or(1) + 20)
                };
                match c.remove_fault(proto::RemoveFaultRequest { id }).await {
                    Ok(r) => {
                        assert_eq!(r.into_inner().removed.unwrap().id, id);
                        t.removed.push(id);
                    }
                    Err(s) if s.code() == Code::NotFound => t.not_found += 1,
                    Err(s) => panic!("RemoveFault {id}: {s:?}"),
                }
            }
            750..870 => {
                let faults = c
                    .list_faults(proto::ListFaultsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .faults;
                assert!(faults.len() <= MAX_FAULTS, "{} faults listed", faults.len());
                let ids: BTreeSet<u64> = faults.iter().map(|f| f.id).collect();
                assert_eq!(ids.len(), faults.len(), "an id listed twice");
                mine = ids.into_iter().collect();
            }
            870..997 => {
                let stats = c
                    .get_stats(proto::GetStatsRequest {})
                    .await
                    .unwrap()
                    .into_inner();
                assert!(stats.faults.iter().all(|s| s.counters.is_some()));
            }
            _ => {
                t.cleared += u64::from(
                    c.clear_faults(proto::ClearFaultsRequest::default())
                        .await
                        .unwrap()
                        .into_inner()
                        .removed,
                );
            }
        }
    }
    t
}

/// The IP protocol numbers a target's protocol expands to in the rule map.
fn protocols(p: i32) -> &'static [u8] {
    match proto::Protocol::try_from(p).unwrap() {
        proto::Protocol::Udp => &[17],
        proto::Protocol::Any => &[6, 17],
        _ => &[6],
    }
}

#[test]
fn sixteen_clients_churning_leave_the_list_and_the_kernel_in_agreement() {
    require_root();
    let ns = Netns::new("churn");
    let daemon = Daemon::try_start(&ns, &["lo"], &["--max-faults", &MAX_FAULTS.to_string()])
        .expect("faultd did not start");
    let tallies: Vec<Tally> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..CLIENTS)
            .map(|seed| {
                let ns = &ns;
                s.spawn(move || {
                    ns.run(|| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap()
                            .block_on(churn(seed + 1))
                    })
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let ops: u64 = tallies.iter().map(|t| t.ops).sum();
    let added: Vec<u64> = tallies.iter().flat_map(|t| t.added.clone()).collect();
    let removed: Vec<u64> = tallies.iter().flat_map(|t| t.removed.clone()).collect();
    let cleared: u64 = tallies.iter().map(|t| t.cleared).sum();
    let exhausted: u64 = tallies.iter().map(|t| t.exhausted).sum();
    eprintln!(
        "{ops} operations: {} added, {} removed, {cleared} cleared, {exhausted} refused as \
         exhausted, {} not found",
        added.len(),
        removed.len(),
        tallies.iter().map(|t| t.not_found).sum::<u64>()
    );
    assert!(
        added.len() > 100 && exhausted > 0,
        "too little churn to prove anything"
    );

    let added_set: HashSet<u64> = added.iter().copied().collect();
    assert_eq!(added_set.len(), added.len(), "an id was given twice");
    let removed_set: HashSet<u64> = removed.iter().copied().collect();
    assert_eq!(removed_set.len(), removed.len(), "an id was removed twice");
    assert!(removed_set.is_subset(&added_set));

    let (faults, rules) = ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut c = connect().await;
                let faults = c
                    .list_faults(proto::ListFaultsRequest {})
                    .await
                    .unwrap()
                    .into_inner()
                    .faults;
                (faults, kernel_rules::read(daemon.pid()))
            })
    });
    let listed: BTreeSet<u64> = faults.iter().map(|f| f.id).collect();
    assert!(
        listed.iter().all(|id| added_set.contains(id)),
        "a listed id nobody added"
    );
    assert!(
        listed.iter().all(|id| !removed_set.contains(id)),
        "a removed id is listed"
    );
    assert_eq!(
        added.len() as u64,
        removed.len() as u64 + cleared + listed.len() as u64,
        "added = removed + cleared + still listed: an id was lost"
    );

    // The kernel holds exactly the listed faults, each on its keys, in order of id.
    let mut expected: BTreeMap<(u8, u16), Vec<u64>> = BTreeMap::new();
    for f in &faults {
        let t = f.spec.as_ref().unwrap().target.as_ref().unwrap();
        for &p in protocols(t.protocol) {
            expected.entry((p, t.port as u16)).or_default().push(f.id);
        }
    }
    let in_kernel: BTreeMap<(u8, u16), Vec<u64>> = rules
        .iter()
        .map(|(k, slots)| (*k, slots.iter().map(|s| s.fault_id).collect()))
        .collect();
    assert_eq!(
        in_kernel, expected,
        "the kernel's rules are not faultd's list"
    );
    // One counter slot per fault, shared with no other.
    let mut counter_of: BTreeMap<u64, u32> = BTreeMap::new();
    for slot in rules.values().flatten() {
        let c = *counter_of.entry(slot.fault_id).or_insert(slot.counter);
        assert_eq!(
            c, slot.counter,
            "fault {} has two counter slots",
            slot.fault_id
        );
    }
    let distinct: BTreeSet<u32> = counter_of.values().copied().collect();
    assert_eq!(
        distinct.len(),
        counter_of.len(),
        "two faults share a counter slot"
    );

    // A new fault, on a slot the churn used, counts from zero exactly what it drops.
    ns.faultctl_ok(&["clear"]);
    let id = ns.faultctl_ok(&["drop", "--port", "6500", "--protocol", "udp"]);
    ns.run(|| {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..10 {
            socket.send_to(b"x", "127.0.0.1:6500").unwrap();
        }
    });
    let stats: serde_json::Value =
        serde_json::from_str(&ns.faultctl_ok(&["stats", "--json"])).unwrap();
    let fault = &stats["faults"][0];
    assert_eq!(fault["id"].to_string(), id, "{stats}");
    assert_eq!(fault["counters"]["acted_packets"], 10, "{stats}");
}
