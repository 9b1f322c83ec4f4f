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

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_loop},
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
    // Every partition that cuts the pair is tried, lowest number first, until one acts
    // (issue #23, defect 2): one for another protocol, one whose action another hook
    // carries, or one whose probability said no leaves the packet to the next.
    let mut walk = Walk {
        pkt,
        seen,
        cut,
        protocol: bit,
        acted: ACTED_NONE,
        fault_id: 0,
    };
    // bpf_loop: the verifier checks the callback once, not once per partition (a bounded
    // loop would be walked, or unrolled, 32 times).
    // SAFETY: the callback has the signature bpf_loop expects and `walk` outlives the call.
    unsafe {
        bpf_loop(
            MAX_PARTITIONS,
            try_partition as *mut c_void,
            &mut walk as *mut Walk as *mut c_void,
            0,
        );
    }
    match walk.acted {
        ACTED_DROP => Verdict::Drop,
        ACTED_RESET => Verdict::Reset {
            fault_id: walk.fault_id,
        },
        _ => Verdict::Pass,
    }
}

/// What the walk found ([`Walk::acted`]). Plain numbers, not a [`Verdict`] held in the walk:
/// LLVM stores an enum's payload word even for the variants without one, from a register
/// it never set, and the verifier refuses to read that register ("!read_ok").
const ACTED_NONE: u32 = 0;
const ACTED_DROP: u32 = 1;
const ACTED_RESET: u32 = 2;

/// The partitions cutting a packet's pair that are still to be tried, shared with
/// [`try_partition`].
struct Walk<'a> {
    pkt: &'a Packet,
    seen: &'a Seen,
    /// Two bits per partition, as `partitions_cutting` gives them; cleared as tried.
    cut: u64,
    /// The packet's PARTITION_TCP or PARTITION_UDP.
    protocol: u8,
    /// `ACTED_*`, and the partition's fault for a reset.
    acted: u32,
    fault_id: u64,
}

/// One step: the lowest-numbered partition left. Returns 1 to stop (none left, or it
/// acted), 0 to try the next.
extern "C" fn try_partition(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `decide` gave it.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    if walk.cut == 0 {
        return 1;
    }
    let (i, bits) = lowest_partition(walk.cut);
    walk.cut &= !bits;
    match act(i, walk.pkt, walk.seen, walk.protocol) {
        Verdict::Drop => walk.acted = ACTED_DROP,
        Verdict::Reset { fault_id } => {
            walk.acted = ACTED_RESET;
            walk.fault_id = fault_id;
        }
        Verdict::Pass | Verdict::PassChanged => return 0,
    }
    1
}

/// What partition `i` does with a packet between its sides: `Pass` if it does not act
/// (another protocol, another hook, its probability said no, a RST under reset).
#[inline(always)]
fn act(i: u32, pkt: &Packet, seen: &Seen, protocol: u8) -> Verdict {
    let Some(slot) = PARTITION_SLOTS.get(i) else {
        return Verdict::Pass;
    };
    if slot.protocols & protocol == 0
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

/// The lowest-numbered partition among the `cut` bits (non-zero), and its two bits.
///
/// Without branches: the verifier walks the callback again for each state it reaches at
/// its start, and a search by halving gave each of its 64 outcomes a `cut` of its own, so
/// the states never met and the walk passed the verifier's million instructions. Without a
/// table too (what LLVM makes of `trailing_zeros` here): the programs must need no data.
/// The one bit `first` is at an even position 2·i ≤ 62, so `first & MASK` is below 2^63 and
/// its negation has the top bit set exactly when it is not zero: that bit is bit k of 2·i
/// for the mask of the positions with bit k set.
#[inline(always)]
fn lowest_partition(cut: u64) -> (u32, u64) {
    const EVEN: u64 = 0x5555_5555_5555_5555;
    let low = cut & cut.wrapping_neg();
    let first = (low | low >> 1) & EVEN;
    let bit = |mask: u64| (first & mask).wrapping_neg() >> 63;
    let i = bit(0xcccc_cccc_cccc_cccc)
        | bit(0xf0f0_f0f0_f0f0_f0f0) << 1
        | bit(0xff00_ff00_ff00_ff00) << 2
        | bit(0xffff_0000_ffff_0000) << 3
        | bit(0xffff_ffff_0000_0000) << 4;
    (i as u32, first * 3)
}
