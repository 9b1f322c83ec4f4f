//! The rule map as the kernel holds it: found through the faultd process's own file
//! descriptors (/proc/PID/fdinfo gives each BPF map fd's id), opened by id and read with
//! the shared `fault-common` layout. Nothing here asks faultd.

#![allow(dead_code)]

use std::collections::BTreeMap;

use aya::maps::{HashMap, Map, MapData, MapInfo};
use fault_common::{PortKey, PortRule};

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

/// The `RULES` map of faultd process `pid`, read from the kernel.
pub fn read(pid: i32) -> Rules {
    let id = map_ids(pid)
        .into_iter()
        .find(|id| {
            MapInfo::from_id(*id)
                .ok()
                .is_some_and(|info| info.name_as_str() == Some("RULES"))
        })
        .unwrap_or_else(|| panic!("faultd (pid {pid}) holds no map named RULES"));
    let data = MapData::from_id(id).expect("opening RULES by id");
    let map: HashMap<MapData, PortKey, PortRule> =
        HashMap::try_from(Map::HashMap(data)).expect("RULES is a hash map of PortRule");
    let mut rules = Rules::new();
    for entry in map.iter() {
        let (key, rule) = entry.expect("reading RULES");
        let slots = rule.slots[..(rule.len as usize).min(rule.slots.len())]
            .iter()
            .map(|s| Slot {
                fault_id: s.fault_id,
                counter: s.counter,
                action: s.action,
            })
            .collect();
        rules.insert((key.protocol, key.port), slots);
    }
    rules
}
