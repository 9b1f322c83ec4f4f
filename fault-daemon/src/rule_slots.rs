//! The programs' rules, written so that a packet never reads another port's rule (issue #9,
//! defect 8).
//!
//! Two maps (see `RULE_INDEX` and `RULE_SLOTS` in fault-ebpf/src/rules.rs): an array with
//! one entry per (protocol, port) naming the slot that holds the port's rule, and a hash of
//! slots. The protocol, for one writer (faultd holds the maps alone):
//! 1. a new rule goes into a slot no packet can reach: a number never used, or one whose
//!    rule left the index at least one RCU grace period ago;
//! 2. its number is published in the index with one aligned 32-bit store through a shared
//!    mapping of the array: a packet reads the old number or the new one. (A map update
//!    through the syscall copies bytes one by one on some CPUs — `rep movsb`, and qemu's —
//!    and a packet could read a number made of both);
//! 3. the replaced slot is retired, not touched: packets that read its number before the
//!    store still read it. Retired slots are deleted, and their numbers reused, in batches,
//!    after waiting for an RCU grace period ([`GracePeriod`]): the programs (XDP, TC,
//!    BPF_PROG_TEST_RUN) run inside RCU read-side sections, so once one has passed since a
//!    number left the index, no packet holds it any more.

use std::collections::HashMap as StdHashMap;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use aya::maps::{ArrayOfMaps, HashMap, Map, MapData, MapError};
use fault_common::{PortKey, PortRule, RULE_INDEX_ENTRIES, rule_index};

use crate::faults::FaultError;

/// Retired slots waited out together: one grace period (a few milliseconds) per this many
/// replaced or removed rules, at most, and this many stale rules kept in the kernel.
const RETIRED_MIN: usize = 64;
const RETIRED_MAX: usize = 4096;

/// The rule slots one faultd may use: every key of `max_faults` faults (two per fault, a
/// fault on `any` taking a TCP and a UDP key; at most one per (protocol, port)), plus the
/// retired slots waiting for a grace period.
pub fn slot_capacity(max_faults: u32) -> u32 {
    let keys = keys_for(max_faults);
    keys + retired_batch(keys) as u32
}

fn keys_for(max_faults: u32) -> u32 {
    max_faults.saturating_mul(2).min(RULE_INDEX_ENTRIES)
}

fn retired_batch(keys: u32) -> usize {
    (keys as usize / 16).clamp(RETIRED_MIN, RETIRED_MAX)
}

fn datapath_error(what: &str, e: impl std::fmt::Display) -> FaultError {
    FaultError::Datapath(format!("{what}: {e}"))
}

pub struct RuleSlots {
    index: IndexMapping,
    slots: HashMap<MapData, u32, PortRule>,
    /// The slot each key's rule is in, as published in the index.
    in_force: StdHashMap<PortKey, u32>,
    /// Numbers free for a new rule: never used (`next` and above) or waited out.
    free: Vec<u32>,
    next: u32,
    capacity: u32,
    /// Slots whose rule has left the index, still readable by packets that took it before.
    retired: Vec<u32>,
    retired_batch: usize,
    grace: GracePeriod,
}

impl RuleSlots {
    /// Takes over the programs' `RULE_INDEX` and `RULE_SLOTS` maps, the latter loaded with
    /// [`slot_capacity`]`(max_faults)` entries.
    pub fn new(index: Map, slots: Map, max_faults: u32) -> anyhow::Result<Self> {
        let index = IndexMapping::new(index)?;
        let slots = HashMap::try_from(slots)?;
        Ok(Self {
            index,
            slots,
            in_force: StdHashMap::new(),
            free: Vec::new(),
            next: 1,
            capacity: slot_capacity(max_faults),
            retired: Vec::new(),
            retired_batch: retired_batch(keys_for(max_faults)),
            grace: GracePeriod::new()?,
        })
    }

    /// Installs `rule` for `key` (replacing its rule, if any) or, with `None`, removes it.
    /// On an error nothing a packet can see has changed.
    pub fn write(&mut self, key: PortKey, rule: Option<&PortRule>) -> Result<(), FaultError> {
        let Some(entry) = rule_index(key.protocol, key.port) else {
            return Err(FaultError::Datapath(format!(
                "rule for IP protocol {}: only TCP and UDP have rules",
                key.protocol
            )));
        };
        let old = match rule {
            Some(rule) => {
                let slot = self.take_slot()?;
                if let Err(e) = self.slots.insert(slot, rule, 0) {
                    self.free.push(slot);
                    return Err(datapath_error("rule slots", e));
                }
                self.index.publish(entry, slot);
                self.in_force.insert(key, slot)
            }
            None => {
                let old = self.in_force.remove(&key);
                if old.is_some() {
                    self.index.publish(entry, 0);
                }
                old
            }
        };
        if let Some(old) = old {
            self.retired.push(old);
            // Waited out in batches, and at once when the last rule goes, so that no stale
            // rule stays in the kernel when faultd holds no faults.
            if self.retired.len() >= self.retired_batch || self.in_force.is_empty() {
                // Not the write's failure: the new rule is in force. The slots stay retired
                // and are tried again with the next batch.
                if let Err(e) = self.recycle() {
                    tracing::warn!(error = %e, "could not reclaim replaced rule slots");
                }
            }
        }
        Ok(())
    }

    /// Returns once every program run that began before the call has ended (one RCU grace
    /// period): for what else packets may hold of a removed rule (counter slots, flows).
    pub fn wait_for_readers(&mut self) -> Result<(), FaultError> {
        self.grace.wait()
    }

    /// A slot number no packet can reach.
    fn take_slot(&mut self) -> Result<u32, FaultError> {
        if let Some(slot) = self.free.pop() {
            return Ok(slot);
        }
        if self.next <= self.capacity {
            self.next += 1;
            return Ok(self.next - 1);
        }
        self.recycle()?;
        self.free.pop().ok_or_else(|| {
            FaultError::Datapath(format!(
                "all {} rule slots are in use (more keys than --max-faults allows?)",
                self.capacity
            ))
        })
    }

    /// Waits for a grace period, then deletes the retired slots and frees their numbers.
    fn recycle(&mut self) -> Result<(), FaultError> {
        if self.retired.is_empty() {
            return Ok(());
        }
        self.grace.wait()?;
        while let Some(slot) = self.retired.pop() {
            match self.slots.remove(&slot) {
                Ok(()) | Err(MapError::KeyNotFound) => self.free.push(slot),
                Err(e) => {
                    self.retired.push(slot);
                    return Err(datapath_error("rule slots", e));
                }
            }
        }
        Ok(())
    }
}

/// `RULE_INDEX`, mapped into faultd's memory: the array's values, 8 bytes apart (the kernel
/// rounds an array's value size up to 8).
struct IndexMapping {
    base: NonNull<u8>,
    len: usize,
    /// Keeps the map alive (the mapping would too).
    _map: MapData,
}

// SAFETY: the mapping is shared memory owned by this value; faultd writes it from one
// thread at a time (`&mut`), and the programs only read it.
unsafe impl Send for IndexMapping {}

const INDEX_STRIDE: usize = 8;

impl IndexMapping {
    fn new(map: Map) -> anyhow::Result<Self> {
        let Map::Array(map) = map else {
            anyhow::bail!("RULE_INDEX is not an array");
        };
        let len = RULE_INDEX_ENTRIES as usize * INDEX_STRIDE;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: a shared mapping of the array's values (BPF_F_MMAPABLE), `len` bytes:
        // exactly its entries, a whole number of pages.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            anyhow::bail!(
                "mapping RULE_INDEX into memory: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(Self {
            base: NonNull::new(base.cast()).expect("mmap never returns null on success"),
            len,
            _map: map,
        })
    }

    /// Makes `slot` the rule of index entry `entry`: one aligned 32-bit store, ordered
    /// after the writes that filled the slot (Release; on x86 a plain store).
    fn publish(&mut self, entry: u32, slot: u32) {
        assert!(
            entry < RULE_INDEX_ENTRIES,
            "rule_index gives entries in range"
        );
        // SAFETY: inside the mapping, 8-byte aligned (page-aligned base, stride 8).
        let word = unsafe {
            &*self
                .base
                .as_ptr()
                .add(entry as usize * INDEX_STRIDE)
                .cast::<AtomicU32>()
        };
        word.store(slot, Ordering::Release);
    }
}

impl Drop for IndexMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in new(), not used after this.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

/// A way to wait for an RCU grace period from user space: updating an element of an
/// `ARRAY_OF_MAPS` makes the kernel call `synchronize_rcu()` before the syscall returns
/// (kernel/bpf/syscall.c, `maybe_wait_bpf_programs`: "wait for any running BPF programs to
/// complete so that userspace, when we return to it, knows that all programs that could be
/// running use the new map value"). It has done so since 4.19 (commit 1ae80cf31938), on
/// 6.1 and 6.18 alike (newer kernels only on a successful update, or expedited), and the
/// kernel's own selftests use it for this (`kern_sync_rcu`). Since 5.0 RCU's flavours are
/// one: the wait covers softirq and preempt-disabled readers, as XDP and TC are.
struct GracePeriod {
    outer: ArrayOfMaps<MapData, MapData>,
    inner: MapData,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

impl GracePeriod {
    fn new() -> anyhow::Result<Self> {
        // aya creates maps of maps only from an object file: both by hand, tiny.
        let inner = create_map(BPF_MAP_TYPE_ARRAY, 0)?;
        let outer = create_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner.as_raw_fd() as u32)?;
        let outer = ArrayOfMaps::try_from(Map::from_map_data(MapData::from_fd(outer)?)?)?;
        Ok(Self {
            outer,
            inner: MapData::from_fd(inner)?,
        })
    }

    /// Returns once every program run that began before the call has ended.
    fn wait(&mut self) -> Result<(), FaultError> {
        self.outer
            .set(0, &self.inner, 0)
            .map_err(|e| datapath_error("waiting for an RCU grace period", e))
    }
}

/// A one-entry map of `map_type` with 4-byte keys and values (BPF_MAP_CREATE).
fn create_map(map_type: u32, inner_map_fd: u32) -> anyhow::Result<OwnedFd> {
    // bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags,
    // inner_map_fd; the rest zero.
    let mut attr = [0u32; 32];
    attr[..6].copy_from_slice(&[map_type, 4, 4, 1, 0, inner_map_fd]);
    // SAFETY: the bpf syscall with a zeroed attribute block of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if fd < 0 {
        anyhow::bail!(
            "creating the maps that wait for RCU grace periods: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cover_every_key_and_a_batch_of_retired_ones() {
        assert_eq!(slot_capacity(100), 200 + 64);
        assert_eq!(slot_capacity(1024), 2048 + 128);
        // Keys are at most one per (protocol, port).
        assert_eq!(slot_capacity(131_072), RULE_INDEX_ENTRIES + 4096);
    }
}
