//! Address-only partitions (`faultctl partition --between A --and B`): every TCP and UDP
//! packet from an address of one set to an address of the other is cut, whatever its ports.
//!
//! Each partition i owns two bits of a 64-bit word: its `between` side at 2·i, its `and`
//! side at 2·i + 1. The LPM tries map a prefix to the word of the sides holding it, closed
//! by the daemon over containing prefixes (a /32 inside a /24 of another partition carries
//! both words), so the longest match of an address is every side it belongs to. Two trie
//! lookups per packet give the source's and the destination's words; a few bit operations
//! ([`partitions_cutting`]) the partitions that cut the pair.
//!
//! Cost when no partition is installed: the pass-through test reads the gate word beside the
//! faulted ports' summary words (rules::partitions_gated_in), and none of this runs.

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, LpmTrie, lpm_trie::Key},
};
use fault_common::{
    ACTION_RESET, MAX_PARTITION_PREFIXES, MAX_PARTITIONS, PARTITION_FILTER_WORDS, PARTITION_TCP,
    PARTITION_UDP, PEER_V4, PROTO_TCP, PROTO_UDP, PartitionSlot, PartitionState, hooks_for,
    partition_filter_bit, partitions_cutting,
};

use crate::packet::{Frame, FrameSource, Packet};
use crate::rules::{COUNTERS, Seen, Verdict, count};

/// Entry 0: which partitions are in force (see fault_common::PartitionState).
#[map]
static PARTITION_STATE: Array<PartitionState> = Array::with_max_entries(1, 0);

/// Partition i's fault: id, counters, action.
#[map]
static PARTITION_SLOTS: Array<PartitionSlot> = Array::with_max_entries(MAX_PARTITIONS, 0);

/// The address filter: see fault_common::PARTITION_FILTER_WORDS. Global data (see
/// crate::global), as the pass-through test reads it while a partition is in force. The
/// daemon writes it whole, every changed bit in one direction per write (set, or cleared),
/// so a packet reading it meanwhile sees each such bit a moment early or late.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.partfilter")]
static mut PARTITION_FILTER: [u64; PARTITION_FILTER_WORDS as usize] =
    [0; PARTITION_FILTER_WORDS as usize];

/// IPv4 prefix (address in network byte order, as in the packet) → partition word.
#[map]
static PARTITION_V4: LpmTrie<u32, u64> = LpmTrie::with_max_entries(MAX_PARTITION_PREFIXES, 0);

/// IPv6 prefix → partition word.
#[map]
static PARTITION_V6: LpmTrie<[u32; 4], u64> = LpmTrie::with_max_entries(MAX_PARTITION_PREFIXES, 0);

/// What the partitions do with the packet: `Pass` unless one cuts it at this hook.
///
/// Not inlined: its frame (the trie keys) stays off the rule walk's call chain, which 6.1's
/// verifier sums against 512 bytes.
#[inline(never)]
pub fn decide(pkt: &Packet, seen: &Seen) -> Verdict {
    let Some(state) = PARTITION_STATE.get(0) else {
        return Verdict::Pass;
    };
    if state.active == 0 {
        return Verdict::Pass;
    }
    let bit = match pkt.protocol {
        PROTO_TCP => PARTITION_TCP,
        PROTO_UDP => PARTITION_UDP,
        _ => return Verdict::Pass,
    };
    // Both ends must be in some partition; most packets' are not, and cost two array
    // reads here rather than two trie lookups.
    let last = if pkt.family == PEER_V4 { 0 } else { 3 };
    if !filtered(pkt.src_addr[last]) || !filtered(pkt.dst_addr[last]) {
        return Verdict::Pass;
    }
    let (src, dst) = if pkt.family == PEER_V4 {
        (word_v4(pkt.src_addr[0]), word_v4(pkt.dst_addr[0]))
    } else {
        (word_v6(&pkt.src_addr), word_v6(&pkt.dst_addr))
    };
    let cut = partitions_cutting(src, dst, state);
    if cut == 0 {
        return Verdict::Pass;
    }
    let Some(slot) = PARTITION_SLOTS.get(lowest_bit(cut) / 2) else {
        return Verdict::Pass;
    };
    if slot.protocols & bit == 0
        || hooks_for(slot.action, 0, seen.loopback) & (1 << seen.hook as u32) == 0
    {
        return Verdict::Pass;
    }
    let counters = COUNTERS.get_ptr_mut(slot.counter);
    count(counters, seen.len, false);
    // SAFETY: helper with no arguments.
    if slot.threshold != u32::MAX && unsafe { bpf_get_prandom_u32() } > slot.threshold {
        return Verdict::Pass;
    }
    let verdict = if slot.action != ACTION_RESET || pkt.protocol != PROTO_TCP {
        Verdict::Drop
    } else if pkt.is_rst() {
        // Never answer a RST with a RST; it ends the connection anyway.
        return Verdict::Pass;
    } else {
        Verdict::Reset {
            fault_id: slot.fault_id,
        }
    };
    count(counters, seen.len, true);
    verdict
}

/// Whether a partition could cut a packet that [`peek`](crate::packet::peek) read: one in
/// force and both addresses of its frame in the filter (read from `source` again, see
/// [`addresses_filtered`]). `false` lets it pass untouched before the full parse (see
/// rules::passes_untouched); `true` sends it to [`decide`]. Cost when no partition is in
/// force: the gate word, in the cache line of the faulted ports' summary words (see
/// rules::partitions_gated_in). Packets other than TCP and UDP, which partitions leave
/// alone, are not told apart here: between partitioned addresses they take the full way,
/// where the parse lets them pass.
#[inline(always)]
pub fn may_cut(source: &impl FrameSource) -> bool {
    crate::rules::partitions_gated_in() && addresses_filtered(source.frame())
}

/// Whether both addresses of the frame are in the filter, or it is too short for them (it
/// then goes the full way, which drops nothing it cannot read). The frame is peeked again:
/// what the port test read is not held through it, which would take more registers than
/// the programs have to spare (what spilled would grow their stack frames, which lie on the
/// deepest call chain: see main.rs, try_tc).
#[inline(always)]
fn addresses_filtered(frame: Frame) -> bool {
    let Some(peek) = crate::packet::peek(frame.data, frame.data_end, frame.link) else {
        return true;
    };
    peek.address_tails(frame.data, frame.data_end)
        .is_none_or(|(src, dst)| filtered(src) && filtered(dst))
}

/// Whether the address's bit is set in the partition filter.
#[inline(always)]
fn filtered(last_word: u32) -> bool {
    let (word, mask) = partition_filter_bit(last_word);
    crate::global::masked(&raw const PARTITION_FILTER, word) & mask != 0
}

#[inline(always)]
fn word_v4(addr: u32) -> u64 {
    PARTITION_V4.get(Key::new(32, addr)).copied().unwrap_or(0)
}

#[inline(always)]
fn word_v6(addr: &[u32; 4]) -> u64 {
    PARTITION_V6.get(Key::new(128, *addr)).copied().unwrap_or(0)
}

/// Index of the lowest set bit of a non-zero word, by halving: BPF has no instruction for
/// it, and LLVM's table for `trailing_zeros` would be data the programs must not need.
#[inline(always)]
fn lowest_bit(mut w: u64) -> u32 {
    let mut n = 0;
    if w & 0xffff_ffff == 0 {
        w >>= 32;
        n += 32;
    }
    if w & 0xffff == 0 {
        w >>= 16;
        n += 16;
    }
    if w & 0xff == 0 {
        w >>= 8;
        n += 8;
    }
    if w & 0xf == 0 {
        w >>= 4;
        n += 4;
    }
    if w & 0x3 == 0 {
        w >>= 2;
        n += 2;
    }
    if w & 0x1 == 0 {
        n += 1;
    }
    n
}
