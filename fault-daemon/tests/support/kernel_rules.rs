//! The rules as the kernel holds them: found through the faultd process's own file
//! descriptors (/proc/PID/fdinfo gives each BPF map fd's id), opened by id and read with
//! the shared `fault-common` layout. Nothing here asks faultd.

#![allow(dead_code)]

use std::collections::BTreeMap;

use aya::maps::{HashMap, Map, MapData, MapInfo};
use fault_common::{PROTO_TCP, PROTO_UDP, PortRule, RULE_INDEX_ENTRIES};

/// One slot of a rule as the programs read it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    pub fault_id: u64,
    pub counter: u32,
    pub action: u8,
}

/// (IP protocol, port) → the slots in force, in order.
pub type Rules = BTreeMap<(u8, u16), Vec<Slot>>;

/// Ids of the BPF maps process `pid` holds open.
fn map_ids(pid: i32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse().ok())
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    ids
}

/// The rules of faultd process `pid` as the programs find them: each port's entry in the
/// `RULE_INDEX` array names a slot of the `RULE_SLOTS` hash (0: no rule).
pub fn read(pid: i32) -> Rules {
    let ids = map_ids(pid);
    let open = |name: &str| {
        let id = ids
            .iter()
            .copied()
            .find(|id| {
                MapInfo::from_id(*id)
                    .ok()
                    .is_some_and(|info| info.name_as_str() == Some(name))
            })
            .unwrap_or_else(|| panic!("faultd (pid {pid}) holds no map named {name}"));
        MapData::from_id(id).unwrap_or_else(|e| panic!("opening {name} by id: {e}"))
    };
    let index = read_index(&open("RULE_INDEX"));
    let slots: HashMap<MapData, u32, PortRule> =
        HashMap::try_from(Map::HashMap(open("RULE_SLOTS")))
            .expect("RULE_SLOTS is a hash map of PortRule");
    let mut rules = Rules::new();
    for (entry, slot) in index.into_iter().enumerate() {
        if slot == 0 {
            continue;
        }
        let rule = slots
            .get(&slot, 0)
            .expect("a slot RULE_INDEX names is in RULE_SLOTS");
        let (protocol, port) = if entry < 65_536 {
            (PROTO_TCP, entry as u16)
        } else {
            (PROTO_UDP, (entry - 65_536) as u16)
        };
        let slots = rule.slots[..(rule.len as usize).min(rule.slots.len())]
            .iter()
            .map(|s| Slot {
                fault_id: s.fault_id,
                counter: s.counter,
                action: s.action,
            })
            .collect();
        rules.insert((protocol, port), slots);
    }
    rules
}

/// RULE_INDEX's entries, read through a read-only mapping of the array (it is mmapable for
/// faultd's writes): one copy, where 131 072 lookups by syscall took a noticeable while.
fn read_index(map: &MapData) -> Vec<u32> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    const STRIDE: usize = 8; // the kernel's value size, rounded up to 8
    let len = RULE_INDEX_ENTRIES as usize * STRIDE;
    // SAFETY: a read-only shared mapping of the array's values, exactly its size.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    assert_ne!(
        base,
        libc::MAP_FAILED,
        "mapping RULE_INDEX: {}",
        std::io::Error::last_os_error()
    );
    let entries = (0..RULE_INDEX_ENTRIES as usize)
        // SAFETY: inside the mapping, aligned.
        .map(|i| unsafe {
            std::ptr::read_volatile(base.cast::<u8>().add(i * STRIDE).cast::<u32>())
        })
        .collect();
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(base, len) };
    entries
}
