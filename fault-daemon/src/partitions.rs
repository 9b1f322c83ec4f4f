//! Address-only partitions: `faultctl partition --between A --and B [--one-way]` cuts every
//! TCP and UDP packet between two sets of addresses (CIDRs), whatever its ports.
//!
//! A partition is a fault like any other (id, TTL, label, counters, session); it compiles
//! not into per-port rules but into the programs' partition maps (fault-ebpf's
//! `partition.rs`): partition i owns bits 2·i (its `between` side) and 2·i + 1 (its `and`
//! side) of a 64-bit word, and an LPM trie per address family maps each prefix named by any
//! partition to the word of every side that contains it. Because the longest prefix that
//! matches an address is contained in every other prefix that matches it, giving each
//! prefix the bits of all the prefixes that contain it makes one lookup find every side the
//! address is in.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use fault_common::{
    ACTION_DROP, ACTION_RESET, MAX_PARTITION_PREFIXES, MAX_PARTITIONS, PARTITION_FILTER_WORDS,
    PARTITION_TCP, PARTITION_UDP, PartitionSlot, PartitionState, partition_filter_bit,
};

use crate::faults::{Action, Fault, FaultError, Peer, Protocol};

/// Two sets of addresses whose traffic is cut: both ways, or only from `between` to `and`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub between: Vec<Peer>,
    pub and: Vec<Peer>,
    /// Only packets from `between` to `and` are cut.
    pub one_way: bool,
}

impl Partition {
    /// Parses the sides as the wire gives them (addresses or CIDRs); errors name the field.
    pub fn parse(between: &[String], and: &[String], one_way: bool) -> Result<Self, FaultError> {
        let side = |texts: &[String], field: &str| {
            texts
                .iter()
                .map(|t| Peer::parse(t, field))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            between: side(between, "target.between")?,
            and: side(and, "target.and_peers")?,
            one_way,
        })
    }

    /// Both sides named, within the tries' capacity, and apart: an address on both sides
    /// would be cut from itself, which no network does.
    pub fn validate(&self) -> Result<(), FaultError> {
        for (side, field) in [
            (&self.between, "target.between"),
            (&self.and, "target.and_peers"),
        ] {
            if side.is_empty() {
                return Err(FaultError::invalid(
                    field,
                    "required: at least one address or CIDR",
                ));
            }
            if side.len() > MAX_PARTITION_PREFIXES as usize {
                return Err(FaultError::invalid(
                    field,
                    format!(
                        "{} addresses are more than the {MAX_PARTITION_PREFIXES} a partition can name",
                        side.len()
                    ),
                ));
            }
        }
        for b in &self.between {
            if let Some(a) = self.and.iter().find(|a| overlaps(a, b)) {
                return Err(FaultError::invalid(
                    "target.and_peers",
                    format!("{a} overlaps {b} of target.between: the two sides must be apart"),
                ));
            }
        }
        Ok(())
    }

    fn prefixes(&self) -> impl Iterator<Item = (Peer, bool)> + '_ {
        let between = self.between.iter().map(|p| (masked(*p), false));
        between.chain(self.and.iter().map(|p| (masked(*p), true)))
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = |s: &[Peer]| s.iter().map(Peer::to_string).collect::<Vec<_>>().join(",");
        let arrow = if self.one_way { "->" } else { "<->" };
        write!(f, "{} {arrow} {}", side(&self.between), side(&self.and))
    }
}

/// The actions a partition can take: drop (or loss, a share of packets) and reset.
pub fn validate_action(action: &Action) -> Result<(), FaultError> {
    match action {
        Action::Drop { .. } | Action::Loss { .. } | Action::Reset { .. } => Ok(()),
        other => Err(FaultError::invalid(
            "action",
            format!(
                "a partition drops or resets; {} needs a port target",
                other.name()
            ),
        )),
    }
}

/// The peer with the bits beyond its prefix cleared.
fn masked(p: Peer) -> Peer {
    let addr = match p.addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = u32::MAX.checked_shl(32 - p.prefix as u32).unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = u128::MAX.checked_shl(128 - p.prefix as u32).unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    };
    Peer {
        addr,
        prefix: p.prefix,
    }
}

/// Whether `outer` contains `inner` (same family, shorter or equal prefix, same bits).
fn contains(outer: &Peer, inner: &Peer) -> bool {
    outer.addr.is_ipv4() == inner.addr.is_ipv4()
        && outer.prefix <= inner.prefix
        && masked(Peer {
            addr: inner.addr,
            prefix: outer.prefix,
        })
        .addr
            == masked(*outer).addr
}

fn overlaps(a: &Peer, b: &Peer) -> bool {
    contains(a, b) || contains(b, a)
}

/// The partition maps' contents, as the daemon writes them (see `datapath`).
/// The partitions' address filter: see fault_common::PARTITION_FILTER_WORDS.
pub type Filter = [u64; PARTITION_FILTER_WORDS as usize];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPartitions {
    pub state: PartitionState,
    pub slots: [PartitionSlot; MAX_PARTITIONS as usize],
    /// Prefix (masked address, length) → partition word, per family.
    pub v4: BTreeMap<([u8; 4], u8), u64>,
    pub v6: BTreeMap<([u8; 16], u8), u64>,
    /// The address filter.
    pub filter: Box<Filter>,
}

impl Default for CompiledPartitions {
    fn default() -> Self {
        Self {
            state: PartitionState::default(),
            slots: [PartitionSlot::default(); MAX_PARTITIONS as usize],
            v4: BTreeMap::new(),
            v6: BTreeMap::new(),
            filter: Box::new([0; PARTITION_FILTER_WORDS as usize]),
        }
    }
}

/// Sets the filter bits of every address of the prefix: the values its addresses' low 16
/// bits take (all of them once the prefix leaves 16 bits or more free).
fn set_filter(filter: &mut [u64], host_bits: u32, low: u32) {
    if host_bits >= 16 {
        filter.fill(u64::MAX);
        return;
    }
    let base = low & 0xffff & !((1u32 << host_bits) - 1);
    for v in base..base + (1u32 << host_bits) {
        let (word, mask) = partition_filter_bit(v.to_be());
        filter[word as usize] |= mask;
    }
}

/// Which partition fault holds which slot of the programs' partition maps.
#[derive(Default)]
pub struct PartitionTable {
    slots: Vec<Option<(u64, Arc<Partition>)>>,
}

impl PartitionTable {
    /// Gives fault `id` the first free slot (`check_room` said there is one).
    pub fn insert(&mut self, id: u64, partition: Arc<Partition>) {
        self.slots.resize(MAX_PARTITIONS as usize, None);
        if let Some(free) = self.slots.iter_mut().find(|s| s.is_none()) {
            *free = Some((id, partition));
        }
    }

    pub fn remove(&mut self, id: u64) {
        for s in &mut self.slots {
            if s.as_ref().is_some_and(|(i, _)| *i == id) {
                *s = None;
            }
        }
    }

    fn installed(&self) -> impl Iterator<Item = (usize, &(u64, Arc<Partition>))> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
    }

    /// Room for one more partition: a free slot, and room in each family's trie.
    pub fn check_room(&self, new: &Partition) -> Result<(), FaultError> {
        let installed = self.installed().count();
        if installed >= MAX_PARTITIONS as usize {
            return Err(FaultError::Exhausted(format!(
                "target.between: {installed} partitions are installed, the most faultd holds \
                 at once ({MAX_PARTITIONS})"
            )));
        }
        let mut prefixes: Vec<Peer> = self
            .installed()
            .flat_map(|(_, (_, p))| p.prefixes().map(|(p, _)| p))
            .chain(new.prefixes().map(|(p, _)| p))
            .collect();
        prefixes.sort_by_key(|p| (p.addr, p.prefix));
        prefixes.dedup();
        for (v4, family) in [(true, "IPv4"), (false, "IPv6")] {
            let n = prefixes.iter().filter(|p| p.addr.is_ipv4() == v4).count();
            if n > MAX_PARTITION_PREFIXES as usize {
                return Err(FaultError::Exhausted(format!(
                    "target.between: the partitions would name {n} distinct {family} \
                     prefixes, more than the {MAX_PARTITION_PREFIXES} faultd holds"
                )));
            }
        }
        Ok(())
    }

    /// The maps' contents; `fault` finds an installed partition's fault by id.
    pub fn compile<'a>(&self, fault: impl Fn(u64) -> Option<&'a Fault>) -> CompiledPartitions {
        let mut out = CompiledPartitions::default();
        let mut words: BTreeMap<(IpAddr, u8), u64> = BTreeMap::new();
        for (i, (id, partition)) in self.installed() {
            let Some(fault) = fault(*id) else { continue };
            let between_bit = 1u64 << (2 * i);
            out.state.active |= between_bit;
            if !partition.one_way {
                out.state.two_way |= between_bit;
            }
            let (action, threshold, ..) = fault.spec.action.slot();
            out.slots[i] = PartitionSlot {
                fault_id: fault.id,
                counter: fault.counter,
                threshold,
                action: if action == ACTION_RESET {
                    ACTION_RESET
                } else {
                    ACTION_DROP
                },
                protocols: match fault.spec.target.protocol {
                    Protocol::Tcp => PARTITION_TCP,
                    Protocol::Udp => PARTITION_UDP,
                    Protocol::Any => PARTITION_TCP | PARTITION_UDP,
                },
                _pad: [0; 6],
            };
            for (peer, and_side) in partition.prefixes() {
                let bit = between_bit << u32::from(and_side);
                *words.entry((peer.addr, peer.prefix)).or_default() |= bit;
            }
        }
        // Each prefix also carries the sides of every prefix that contains it: the
        // programs' lookup finds the longest match only.
        let own = words.clone();
        for ((addr, prefix), word) in words.iter_mut() {
            let inner = Peer {
                addr: *addr,
                prefix: *prefix,
            };
            for ((oaddr, oprefix), oword) in &own {
                let outer = Peer {
                    addr: *oaddr,
                    prefix: *oprefix,
                };
                if contains(&outer, &inner) {
                    *word |= oword;
                }
            }
        }
        for ((addr, prefix), word) in words {
            match addr {
                IpAddr::V4(a) => {
                    set_filter(&mut *out.filter, 32 - u32::from(prefix), u32::from(a));
                    out.v4.insert((a.octets(), prefix), word);
                }
                IpAddr::V6(a) => {
                    set_filter(
                        &mut *out.filter,
                        128 - u32::from(prefix),
                        u128::from(a) as u32,
                    );
                    out.v6.insert((a.octets(), prefix), word);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(text: &str) -> Peer {
        Peer::parse(text, "x").unwrap()
    }

    fn partition(between: &[&str], and: &[&str]) -> Partition {
        Partition {
            between: between.iter().map(|t| peer(t)).collect(),
            and: and.iter().map(|t| peer(t)).collect(),
            one_way: false,
        }
    }

    #[test]
    fn sides_must_be_named_and_apart() {
        let field = |p: Partition| match p.validate().unwrap_err() {
            FaultError::Invalid { field, .. } => field,
            other => panic!("{other}"),
        };
        assert_eq!(field(partition(&[], &["10.0.0.1"])), "target.between");
        assert_eq!(field(partition(&["10.0.0.1"], &[])), "target.and_peers");
        assert_eq!(
            field(partition(&["10.0.0.0/24"], &["10.0.0.7"])),
            "target.and_peers"
        );
        assert_eq!(
            field(partition(&["fd00::/8"], &["fd00::1"])),
            "target.and_peers"
        );
        // One bit outside the prefix is apart.
        partition(&["10.0.0.0/25"], &["10.0.0.128"])
            .validate()
            .unwrap();
        partition(&["10.0.0.1"], &["fd00::1"]).validate().unwrap();
        assert!(Partition::parse(&["10.0.0.1/33".into()], &["10.0.0.2".into()], false).is_err());
    }

    #[test]
    fn the_filter_holds_every_address_of_each_prefix_and_no_other() {
        let count = |f: &[u64]| f.iter().map(|w| w.count_ones()).sum::<u32>();
        let bit = |f: &[u64], low: u32| {
            let (w, m) = partition_filter_bit(low.to_be());
            f[w as usize] & m != 0
        };
        let mut f = vec![0; PARTITION_FILTER_WORDS as usize];
        set_filter(&mut f, 0, u32::from(std::net::Ipv4Addr::new(127, 0, 0, 2)));
        assert_eq!(count(&f), 1);
        assert!(bit(&f, 2) && !bit(&f, 1) && !bit(&f, 3));
        set_filter(&mut f, 8, u32::from(std::net::Ipv4Addr::new(10, 0, 7, 9)));
        assert_eq!(count(&f), 1 + 256);
        assert!(bit(&f, 0x0700) && bit(&f, 0x07ff) && !bit(&f, 0x0800) && !bit(&f, 0x06ff));
        set_filter(&mut f, 16, 0);
        assert_eq!(count(&f), 65_536);
    }

    #[test]
    fn containment_follows_the_prefix_bits() {
        assert!(contains(&peer("10.0.0.0/24"), &peer("10.0.0.255")));
        assert!(!contains(&peer("10.0.0.0/24"), &peer("10.0.1.0")));
        assert!(contains(&peer("0.0.0.0/0"), &peer("1.2.3.4")));
        assert!(!contains(&peer("0.0.0.0/0"), &peer("::1")));
        assert!(contains(&peer("fd00::/8"), &peer("fdff::1")));
        assert!(!contains(&peer("fd00::/8"), &peer("fe00::1")));
    }
}

/// The programs' partition maps, and what faultd last wrote into them.
pub struct PartitionMaps {
    state: aya::maps::Array<aya::maps::MapData, PartitionState>,
    slots: aya::maps::Array<aya::maps::MapData, PartitionSlot>,
    v4: LpmTrie<aya::maps::MapData, u32, u64>,
    v6: LpmTrie<aya::maps::MapData, [u32; 4], u64>,
    /// The programs' PARTITION_FILTER (global data: see crate::global_array).
    filter: GlobalArray<u64, { PARTITION_FILTER_WORDS as usize }>,
    written: CompiledPartitions,
}

use aya::maps::lpm_trie::{Key, LpmTrie};

use crate::global_array::GlobalArray;

/// The section of the programs' PARTITION_FILTER.
const PARTITION_FILTER_SECTION: &str = ".bss.partfilter";

impl PartitionMaps {
    /// Takes the maps out of the loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow::anyhow!("map {name} is missing from the object"))
        };
        Ok(Self {
            state: aya::maps::Array::try_from(take("PARTITION_STATE")?)?,
            slots: aya::maps::Array::try_from(take("PARTITION_SLOTS")?)?,
            v4: LpmTrie::try_from(take("PARTITION_V4")?)?,
            v6: LpmTrie::try_from(take("PARTITION_V6")?)?,
            filter: GlobalArray::take(ebpf, PARTITION_FILTER_SECTION)?,
            written: CompiledPartitions::default(),
        })
    }

    /// Moves the maps from what was written to `new`, in an order no packet can see half
    /// done: partitions going away stop acting first; slots and prefixes change while
    /// only partitions in both sets act; the new ones start acting last.
    pub fn write(&mut self, new: &CompiledPartitions) -> Result<(), FaultError> {
        let fail = |what: &str, e: aya::maps::MapError| {
            FaultError::Datapath(format!("partition {what}: {e}"))
        };
        let old = self.written.clone();
        let both = PartitionState {
            active: old.state.active & new.state.active,
            two_way: old.state.two_way & new.state.two_way,
        };
        self.state.set(0, both, 0).map_err(|e| fail("state", e))?;
        self.written.state = both;
        // The filter lets through every address of the old and the new prefixes while the
        // tries change, and only the new ones after.
        let mut union = old.filter.clone();
        for (word, new) in union.iter_mut().zip(new.filter.iter()) {
            *word |= new;
        }
        self.write_filter(&union)?;
        for (i, slot) in new.slots.iter().enumerate() {
            if *slot != old.slots[i] {
                self.slots
                    .set(i as u32, slot, 0)
                    .map_err(|e| fail("slots", e))?;
                self.written.slots[i] = *slot;
            }
        }
        for (&(addr, prefix), &word) in &new.v4 {
            if old.v4.get(&(addr, prefix)) != Some(&word) {
                let key = Key::new(prefix.into(), u32::from_ne_bytes(addr));
                self.v4
                    .insert(&key, word, 0)
                    .map_err(|e| fail("IPv4 trie", e))?;
                self.written.v4.insert((addr, prefix), word);
            }
        }
        for (&(addr, prefix), &word) in &new.v6 {
            if old.v6.get(&(addr, prefix)) != Some(&word) {
                self.v6
                    .insert(&v6_key(addr, prefix), word, 0)
                    .map_err(|e| fail("IPv6 trie", e))?;
                self.written.v6.insert((addr, prefix), word);
            }
        }
        for &(addr, prefix) in old.v4.keys().filter(|k| !new.v4.contains_key(k)) {
            let key = Key::new(prefix.into(), u32::from_ne_bytes(addr));
            forget(self.v4.remove(&key)).map_err(|e| fail("IPv4 trie", e))?;
            self.written.v4.remove(&(addr, prefix));
        }
        for &(addr, prefix) in old.v6.keys().filter(|k| !new.v6.contains_key(k)) {
            forget(self.v6.remove(&v6_key(addr, prefix))).map_err(|e| fail("IPv6 trie", e))?;
            self.written.v6.remove(&(addr, prefix));
        }
        self.state
            .set(0, new.state, 0)
            .map_err(|e| fail("state", e))?;
        self.written.state = new.state;
        self.write_filter(&new.filter)?;
        self.written = new.clone();
        Ok(())
    }

    /// Writes the filter, whole. Each write changes its bits in one direction only (the
    /// union of old and new sets bits, the new filter after it clears them), so a packet
    /// reading it meanwhile sees every bit as it was or as it is going to be.
    fn write_filter(&mut self, filter: &Filter) -> Result<(), FaultError> {
        self.filter
            .set_all(filter)
            .map_err(|e| FaultError::Datapath(format!("partition filter: {e}")))?;
        *self.written.filter = *filter;
        Ok(())
    }
}

fn v6_key(addr: [u8; 16], prefix: u8) -> Key<[u32; 4]> {
    let word = |i: usize| {
        u32::from_ne_bytes([
            addr[4 * i],
            addr[4 * i + 1],
            addr[4 * i + 2],
            addr[4 * i + 3],
        ])
    };
    Key::new(prefix.into(), [word(0), word(1), word(2), word(3)])
}

/// A removal of what is already gone is no error.
fn forget(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}
