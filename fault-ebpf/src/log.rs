//! Kernel-side logging (aya-log): why a packet was skipped or what a fault did with it,
//! forwarded by faultd into its own log under the target `faultd::ebpf`.
//!
//! Off by default, and then nearly free: nothing here runs for a TCP or UDP packet on a port
//! without faults. The level is read only on slow paths (a frame the parser gives up on, a
//! packet on a faulted port), from a map rather than a load-time global, so that faultd can
//! change it while the programs run (`faultctl ebpf-log`).
//!
//! Verifier constraints met here:
//! - Records carry numbers only, in one format string per kind (see fault_common's
//!   `LOG_*`); faultd puts them into words. aya-log copies a record into the ring buffer
//!   byte by byte; a `&str` argument chosen by a `match` (action, hook, outcome names) gives
//!   each choice its own length and so its own path through that copy, and their product
//!   ran past the verifier's million instructions.
//! - Few arguments (the verdict's small fields are packed into one u32): aya-log builds
//!   its record's fields on the stack, and on 6.1 every frame along a call chain counts,
//!   rounded up to 32 bytes, against 512; see rules::apply_slot for the chain down to
//!   [`verdict`] (384 bytes with this 64-byte frame).
//! - Every function is `#[inline(never)]`, so that its frame and code are not part of the
//!   parser's or of the fault walk's.

use aya_ebpf::{macros::map, maps::Array};
use aya_log_ebpf::macro_support::Level;
use aya_log_ebpf::{debug, log, warn};
use fault_common::FaultSlot;

use crate::packet::Packet;
use crate::rules::Hook;

pub use fault_common::{
    LOG_SLOT_ALTERED as SLOT_ALTERED, LOG_SLOT_DROPPED as SLOT_DROPPED,
    LOG_SLOT_RESET as SLOT_RESET, LOG_SLOT_SKIPPED_DIRECTION as SLOT_SKIPPED_DIRECTION,
    LOG_SLOT_SKIPPED_HOOK as SLOT_SKIPPED_HOOK, LOG_SLOT_SKIPPED_KIND as SLOT_SKIPPED_KIND,
    LOG_SLOT_SKIPPED_PEER as SLOT_SKIPPED_PEER, LOG_SLOT_UNTOUCHED as SLOT_UNTOUCHED,
};

/// The level faultd asks for: 0 for off, else aya-log's numbers (1 error, 2 warn, 3 info,
/// 4 debug, 5 trace). One entry, written whole by faultd.
#[map]
static LOG_LEVEL: Array<u32> = Array::with_max_entries(1, 0);

const LEVEL_WARN: u32 = 2;
const LEVEL_INFO: u32 = 3;
const LEVEL_DEBUG: u32 = 4;

#[inline(always)]
fn enabled(level: u32) -> bool {
    LOG_LEVEL.get(0).is_some_and(|l| *l >= level)
}

/// Why the parser gave up on a frame (`why` as [`crate::packet::parse`] returns it).
#[inline(never)]
pub fn parse_failed(hook: Hook, why: u32) {
    if !enabled(LEVEL_DEBUG) {
        return;
    }
    debug!(&(), target: "faultd::ebpf", "parse {} {}", hook as u32, why);
}

/// A fault's verdict on a packet on its port: `outcome >> 8` is one of the `SLOT_*` values
/// (the low byte is rules' own result). Acting (drop, reset, alter) is `info`, matching
/// without acting or not matching `debug`.
#[inline(never)]
pub fn verdict(slot: &FaultSlot, pkt: &Packet, hook: Hook, outcome: u32) {
    let what = outcome >> 8;
    let (level, at_level) = if what >= SLOT_ALTERED {
        (LEVEL_INFO, Level::Info)
    } else {
        (LEVEL_DEBUG, Level::Debug)
    };
    if !enabled(level) {
        return;
    }
    let packed =
        (hook as u32) << 24 | (slot.action as u32) << 16 | (what & 0xff) << 8 | pkt.protocol as u32;
    log!(
        &(),
        target: "faultd::ebpf",
        at_level,
        "verdict {} {} {} {}",
        packed,
        slot.fault_id,
        pkt.src_port,
        pkt.dst_port
    );
}

/// A RST could not be forged for a packet that had to be answered; it is dropped instead.
#[inline(never)]
pub fn reset_failed(hook: Hook, fault_id: u64) {
    if !enabled(LEVEL_WARN) {
        return;
    }
    warn!(&(), target: "faultd::ebpf", "rst-failed {} {}", hook as u32, fault_id);
}
