//! Rule lookup: which compiled faults act on a packet at this hook, and how.

use core::arch::asm;
use core::ffi::c_void;
use core::mem::MaybeUninit;
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_loop},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use fault_common::{
    ACTION_CORRUPT, ACTION_DELAY, ACTION_DROP, ACTION_DUPLICATE, ACTION_LIMIT_AGE,
    ACTION_LIMIT_BYTES, ACTION_RATE, ACTION_RECORD, ACTION_REFUSE_DROP, ACTION_REFUSE_RST,
    ACTION_RESET, ACTION_SLICE, ACTION_STALL, CORRUPT_DENSITY, DELAY_HORIZON_NS, DIR_FROM_PORT,
    DIR_TO_PORT, EVENT_FIRST_HIT, EVENT_FLOW_CUT, EVENT_FLOW_UNTRACKED, EVENT_SYN,
    EVENT_SYN_REFUSED, FAULTED_PORT_WORDS, FaultCounters, FaultSlot, FlowKey, FlowState,
    LOW_IFINDEXES, MAX_FAULTS, MAX_FAULTS_PER_PORT, MAX_FLOWS, MAX_PORT_RULES,
    PARTITIONS_GATE_WORD, PEER_ANY, PROTO_TCP, PROTO_UDP, PortBits, PortRule, RATE_PACE,
    ROLE_EGRESS, ROLE_INGRESS, RULE_INDEX_ENTRIES, THEN_RESET, faulted_port_bits, hooks_for,
};

use crate::events;
use crate::global;
use crate::log;
use crate::packet::{FrameSource, Packet, Peek, TCP_RST, TCP_SYN};

const NS_PER_SEC: u64 = 1_000_000_000;

/// (protocol, port) → the number of the slot in `RULE_SLOTS` that holds its rule, 0 for
/// none (see fault_common::RULE_INDEX_ENTRIES). Read with one 32-bit load; written by the
/// daemon with one aligned 32-bit store through a shared mapping, hence `BPF_F_MMAPABLE`.
#[map]
static RULE_INDEX: Array<u32> = Array::with_max_entries(RULE_INDEX_ENTRIES, BPF_F_MMAPABLE);

/// Slot number → a rule (the faults on one port). Read safety for packets racing rule
/// updates (issue #9, defect 8) comes from how the daemon uses the two maps: a slot's value
/// is written once, before its number is published in RULE_INDEX, and never rewritten;
/// a replaced or removed rule's slot is deleted (and its number reused) only after an RCU
/// grace period has passed since its number left RULE_INDEX. These programs run inside an
/// RCU read-side section (XDP, TC, BPF_PROG_TEST_RUN), so a packet that read the old number
/// finishes with the old rule intact: it sees its port's old rule or its new one, never
/// another port's. A hash keyed by slot number replaced a hash keyed by port, whose
/// elements the kernel recycled at once on update, preallocated or not (bpf_mem_alloc),
/// under readers still holding them. Not preallocated: memory for the rules that exist.
#[map]
static RULE_SLOTS: HashMap<u32, PortRule> =
    HashMap::with_max_entries(MAX_PORT_RULES, BPF_F_NO_PREALLOC);

/// One bit per (protocol, port) with a rule in RULE_INDEX, the summary words and the
/// partitions' gate: see fault_common::FAULTED_PORT_WORDS. Global data (see crate::global):
/// the pass-through test reads it with no helper call. The daemon writes it whole, one word
/// changed at a time: a packet may see that word's bits each old or new, which for the one
/// bit being changed means set a moment early or late.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.faultports")]
static mut FAULTED_PORTS: [u64; FAULTED_PORT_WORDS as usize] = [0; FAULTED_PORT_WORDS as usize];

/// The fine words of FAULTED_PORTS, below the summaries: what a port's word index is masked
/// to (see crate::global::masked).
const FINE_WORDS: usize = 2 * 65_536 / 64;

#[map]
pub(crate) static COUNTERS: PerCpuArray<FaultCounters> =
    PerCpuArray::with_max_entries(MAX_FAULTS, 0);

/// ifindex → ROLE_* bits, for ifindexes below LOW_IFINDEXES; 0 (no role): left alone.
/// Global data, like FAULTED_PORTS and for the same reason: every packet reads it first.
/// Written whole by the daemon; the role bits all lie in one byte of each word, so a reader
/// sees a role as it was or as it is.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".bss.ifaces")]
static mut IFACES: [u32; LOW_IFINDEXES as usize] = [0; LOW_IFINDEXES as usize];

/// The same for higher ifindexes; interfaces not listed are left alone.
#[map]
static IFACES_HIGH: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Per-(fault, flow) state of the limits (limit-bytes, limit-age): first packet time,
/// bytes, whether the limit cut it. A plain hash, never LRU: the kernel evicts LRU entries
/// on its own, and a cut flow whose state is forgotten would come back to life. Entries go
/// when their fault goes (the daemon deletes them) or when a SYN starts the 4-tuple afresh.
/// When it is full a new flow is not tracked: it passes, counted in `FLOWS_FULL`.
/// Not preallocated: memory for the flows tracked only; sized from `--max-flows`.
#[map]
static FLOWS: HashMap<FlowKey, FlowState> = HashMap::with_max_entries(MAX_FLOWS, BPF_F_NO_PREALLOC);

/// Flows already reported (FIRST_HIT) by the actions that keep no state (drop, reset): LRU,
/// as forgetting one only means its first hit is reported again. Value: first packet time.
#[map]
static SEEN: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Packets of flows a limit could not track because `FLOWS` was full, per CPU (entry 0).
#[map]
static FLOWS_FULL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Per-fault rate state, indexed like the counters: the theoretical arrival time (GCRA) of
/// the fault's next packet, in bpf_ktime_get_ns() time. Shared by all CPUs: two CPUs racing
/// on it can let one packet through early, which only blurs the rate by a packet.
#[map]
static BUCKETS: Array<u64> = Array::with_max_entries(MAX_FAULTS, 0);

/// Scratch space for each hook's [`Effects`]. They live in a map rather than on the stack:
/// the verifier tracks every constant written to the stack, and the combinations of flags
/// that eight slots can set would multiply the states it has to walk past its limit.
/// Per CPU and per hook, as a program is not interrupted by itself on one CPU (the copy a
/// duplicate sends re-enters the egress program, but leaves before touching its effects).
#[map]
static EFFECTS: PerCpuArray<Effects> = PerCpuArray::with_max_entries(3, 0);

/// Changes to a packet that goes on, gathered while its faults are walked and carried out by
/// the TC program afterwards (the XDP hook carries none of these actions).
#[derive(Default)]
#[repr(C)]
pub struct Effects {
    /// Added to the packet's departure time (`delay`).
    pub delay_ns: u64,
    /// The packet leaves no earlier than this (`rate` pacing); 0 for no bound.
    pub not_before_ns: u64,
    /// Corrupt's per-byte density (`CORRUPT_DENSITY`), the slot's `param`.
    pub corrupt_density: u64,
    /// The smallest slice's bytes; 0 for none.
    pub slice_bytes: u32,
    /// 0, [`CORRUPT_ONE_BYTE`] or [`CORRUPT_BYTES`].
    pub corrupt: u8,
    pub stall: u8,
    pub duplicate: u8,
    /// A limit cut the flow with `--then reset`: the RST goes to both ends, not only to the
    /// packet's sender ([`Effects::take_cut`]). A flag beside the verdict, not a verdict of
    /// its own: one more value returned up the rule walk multiplied the verifier's paths
    /// through the XDP program past its million instructions.
    pub cut: u8,
}

/// How a corrupt fault changes the packet (`Effects::corrupt`): one byte, or each byte with
/// the density's probability.
pub const CORRUPT_ONE_BYTE: u8 = 1;
pub const CORRUPT_BYTES: u8 = 2;

impl Effects {
    /// This hook's effects, as [`decide`] left them for the packet it passed.
    #[inline(always)]
    pub fn current(hook: Hook) -> Option<&'static Effects> {
        // SAFETY: a per-CPU map value, valid for the program's run; see EFFECTS.
        EFFECTS.get_ptr(hook as u32).map(|fx| unsafe { &*fx })
    }

    /// Whether the Reset verdict this hook just had is a limit's cut (the RST then goes to
    /// both ends); clears the flag, so that no later packet of this CPU and hook sees it.
    #[inline(always)]
    pub fn take_cut(hook: Hook) -> bool {
        let Some(fx) = Self::current_mut(hook) else {
            return false;
        };
        let cut = fx.cut != 0;
        fx.cut = 0;
        cut
    }

    /// This hook's effects, to add to.
    #[inline(always)]
    fn current_mut(hook: Hook) -> Option<&'static mut Effects> {
        // SAFETY: a per-CPU map value, valid for the program's run; see EFFECTS.
        EFFECTS
            .get_ptr_mut(hook as u32)
            .map(|fx| unsafe { &mut *fx })
    }

    /// This hook's effects, cleared for a new packet.
    #[inline(always)]
    fn fresh(hook: Hook) -> Option<&'static mut Effects> {
        let fx = EFFECTS.get_ptr_mut(hook as u32)?;
        // SAFETY: a per-CPU map value, valid for the program's run; see EFFECTS.
        // Volatile, field by field: LLVM turns plain zeroing into a call to memset, a
        // byte loop that the verifier walks anew at every call site.
        unsafe {
            write_volatile(&raw mut (*fx).delay_ns, 0);
            write_volatile(&raw mut (*fx).not_before_ns, 0);
            write_volatile(&raw mut (*fx).corrupt_density, 0);
            write_volatile(&raw mut (*fx).slice_bytes, 0);
            write_volatile(&raw mut (*fx).corrupt, 0);
            write_volatile(&raw mut (*fx).stall, 0);
            write_volatile(&raw mut (*fx).duplicate, 0);
            write_volatile(&raw mut (*fx).cut, 0);
            Some(&mut *fx)
        }
    }
}

/// Where a program runs. Each action is carried out at exactly one hook per direction of
/// travel, so a packet is never acted on (or counted) twice.
#[derive(Copy, Clone, PartialEq, Eq)]
#[repr(u32)]
pub enum Hook {
    Xdp = 0,
    TcIngress = 1,
    TcEgress = 2,
}

impl Hook {
    fn role(self) -> u32 {
        match self {
            Hook::Xdp | Hook::TcIngress => ROLE_INGRESS,
            Hook::TcEgress => ROLE_EGRESS,
        }
    }

    /// This hook's bit among [`hooks_for`]'s.
    #[inline(always)]
    fn bit(self) -> u8 {
        1 << self as u32
    }

    /// Whether this hook carries out the slot's action (the table is `hooks_for`, shared
    /// with `faultctl doctor`).
    #[inline(always)]
    fn carries(self, slot: &FaultSlot, loopback: bool) -> bool {
        hooks_for(slot.action, slot.then, loopback) & self.bit() != 0
    }
}

/// What the hook does with the packet.
#[derive(Copy, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Pass, with the changes gathered in this hook's [`Effects`] (which may be none).
    PassChanged,
    Drop,
    /// Drop it and answer its sender with a RST (TC hooks only).
    Reset {
        fault_id: u64,
    },
}

/// The interface's `ROLE_*` bits when this hook acts on its traffic at all.
#[inline(always)]
pub fn role_at(hook: Hook, ifindex: u32) -> Option<u32> {
    let role = if ifindex < LOW_IFINDEXES {
        global::element(&raw const IFACES, ifindex)
    } else {
        // SAFETY: the value is a plain u32 the daemon writes whole.
        *unsafe { IFACES_HIGH.get(&ifindex) }?
    };
    (role & hook.role() != 0).then_some(role)
}

/// Looks up the faults on the packet's destination port, then on its source port, and
/// applies them. A packet on ports without faults costs two reads of the faulted-ports
/// bitmap; one on a faulted port at most two hash lookups, whatever the number of faults.
///
/// Not inlined: a BPF call gets a stack frame of its own, which its siblings (forging a
/// RST, altering a packet) reuse; inlined together they overflow the 512-byte stack.
#[inline(never)]
pub fn decide(pkt: &Packet, seen: &Seen) -> Verdict {
    // The pass-through path: two array reads, no hash lookup, no scratch work.
    if !ports_faulted(pkt.protocol, pkt.dst_port, pkt.src_port) {
        return Verdict::Pass;
    }
    let (hook, loopback, len) = (seen.hook, seen.loopback, seen.len);
    let mut touched = false;
    // Both ports the same (NTP's 123 ↔ 123, mDNS, IKE): one rule, walked once, each slot
    // taking the packet as going to the port or from it, whichever its direction covers.
    let same = pkt.src_port == pkt.dst_port;
    if let Some(rule) = rule_for(pkt.protocol, pkt.dst_port) {
        let Some(fx) = Effects::fresh(hook) else {
            return Verdict::Pass;
        };
        touched = true;
        let verdict = apply(rule, pkt, Side::ToPort, same, hook, loopback, len, fx);
        if verdict != Verdict::Pass {
            return verdict;
        }
    }
    if same {
        return if touched {
            Verdict::PassChanged
        } else {
            Verdict::Pass
        };
    }
    if let Some(rule) = rule_for(pkt.protocol, pkt.src_port) {
        // Cleared only if the destination port's faults have not started on it.
        let fx = if touched {
            Effects::current_mut(hook)
        } else {
            Effects::fresh(hook)
        };
        let Some(fx) = fx else {
            return Verdict::Pass;
        };
        touched = true;
        let verdict = apply(rule, pkt, Side::FromPort, false, hook, loopback, len, fx);
        if verdict != Verdict::Pass {
            return verdict;
        }
    }
    if !touched {
        return Verdict::Pass;
    }
    Verdict::PassChanged
}

/// The rule in force for (protocol, port), as RULE_INDEX names it (see RULE_SLOTS for why
/// it stays intact while the program reads it). Only for TCP and UDP, which
/// [`ports_faulted`] let through.
///
/// Not inlined: the verifier then walks its branches (index, no rule, no slot) once per
/// call site and comes back with only a pointer or null, as from the one hash lookup it
/// replaced; inlined, they multiplied the paths of the TC programs past the verifier's
/// million instructions.
#[inline(never)]
fn rule_for(protocol: u8, port: u16) -> Option<&'static PortRule> {
    // rule_index without its branch: UDP (17) is the one of the two with bit 4 set.
    let at = port as u32 | (protocol as u32 & 0x10) << 12;
    let entry = RULE_INDEX.get_ptr(at)?;
    // SAFETY: a map value, valid for the program's run. Volatile: one 32-bit load, as the
    // daemon's store is one 32-bit store.
    let slot = unsafe { read_volatile(entry) };
    if slot == 0 {
        return None;
    }
    // SAFETY: a map value, valid for the program's run and never rewritten (RULE_SLOTS).
    unsafe { RULE_SLOTS.get(&slot) }
}

/// Whether a packet [`peek`](crate::packet::peek) could read passes with no fault's work
/// at all: the pass-through path, taken before the full parse, the copy checks and any
/// scratch work. `false` sends the packet down the full path, which decides again.
///
/// The one place for every cheap "could any fault want this packet?" test: the faulted
/// ports bitmap, then the partitions' address filter (only read when a partition is in
/// force, from the frame `source` gives again: see partition::may_cut). What this reads is
/// global data (see crate::global), so the programs test it inline with nothing spilled.
#[inline(always)]
pub fn passes_untouched(peek: &Peek, source: &impl FrameSource) -> bool {
    !ports_faulted(peek.protocol, peek.dst_port, peek.src_port)
        && !crate::partition::may_cut(source)
}

/// Whether an address partition may be in force: the gate word beside the summary words
/// (see fault_common::PARTITIONS_GATE_WORD), in the cache line the port test just read.
#[inline(always)]
pub(crate) fn partitions_gated_in() -> bool {
    global::element(&raw const FAULTED_PORTS, PARTITIONS_GATE_WORD) != 0
}

/// Whether the packet's protocol has a rule on either of its ports: their bits in
/// FAULTED_PORTS, which the daemon sets before it writes a rule and clears after it removes
/// it. The summary word first: on a port far from any fault, one read that is in cache.
#[inline(always)]
fn ports_faulted(protocol: u8, dst_port: u16, src_port: u16) -> bool {
    let (Some(dst), Some(src)) = (
        faulted_port_bits(protocol, dst_port),
        faulted_port_bits(protocol, src_port),
    ) else {
        return false;
    };
    let summary = global::element(&raw const FAULTED_PORTS, dst.summary_word);
    // The fine words are the array's first FINE_WORDS: the mask keeps a word among them.
    let fine =
        |word: u32| global::masked((&raw const FAULTED_PORTS).cast::<[u64; FINE_WORDS]>(), word);
    let set = |bits: PortBits| summary & bits.summary_mask != 0 && fine(bits.word) & bits.mask != 0;
    set(dst) || set(src)
}

/// What one slot did with a packet it matched.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Outcome {
    /// Nothing this time (a probability said no, or the slot only watches).
    Untouched,
    /// Changed or held the packet, which goes on to the next slot.
    Altered,
    /// The packet's fate is sealed; later slots do not see it.
    Final(Verdict),
}

impl From<Verdict> for Outcome {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Pass | Verdict::PassChanged => Outcome::Untouched,
            v => Outcome::Final(v),
        }
    }
}

/// Which end of the packet is the faulted port.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Side {
    ToPort,
    FromPort,
}

impl Side {
    fn bit(self) -> u8 {
        match self {
            Side::ToPort => DIR_TO_PORT,
            Side::FromPort => DIR_FROM_PORT,
        }
    }

    /// The address at the other end from the port.
    fn peer(self, pkt: &Packet) -> &[u32; 4] {
        match self {
            Side::ToPort => &pkt.src_addr,
            Side::FromPort => &pkt.dst_addr,
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn apply(
    rule: &PortRule,
    pkt: &Packet,
    side: Side,
    same_ports: bool,
    hook: Hook,
    loopback: bool,
    len: u64,
    fx: &mut Effects,
) -> Verdict {
    let mut walk = Walk {
        rule,
        pkt,
        fx,
        at: Where {
            side,
            same_ports,
            hook,
            len,
            loopback,
        },
        result: SLOT_ON,
        fault_id: 0,
    };
    // bpf_loop: the verifier checks the callback once, not once per slot, which keeps the
    // programs' verification (and faultd's start-up) short, even on slow machines.
    // SAFETY: the callback has the signature bpf_loop expects and `walk` outlives the call.
    unsafe {
        bpf_loop(
            MAX_FAULTS_PER_PORT as u32,
            walk_slot as *mut c_void,
            &mut walk as *mut Walk as *mut c_void,
            0,
        );
    }
    match walk.result {
        SLOT_DROP => Verdict::Drop,
        SLOT_RESET => Verdict::Reset {
            fault_id: walk.fault_id,
        },
        _ => Verdict::Pass,
    }
}

/// The state of a walk over one rule's slots, shared with [`walk_slot`].
struct Walk<'a> {
    rule: &'a PortRule,
    pkt: &'a Packet,
    fx: &'a mut Effects,
    at: Where,
    result: u32,
    fault_id: u64,
}

/// One step of the walk: slot `i`. Returns 1 to stop (no more slots, or the packet's fate
/// is sealed), 0 to go on.
extern "C" fn walk_slot(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `apply` gave it.
    let walk = unsafe { &mut *(ctx as *mut Walk) };
    let i = i as usize;
    if i >= MAX_FAULTS_PER_PORT || i as u32 >= walk.rule.len {
        return 1;
    }
    let slot = &walk.rule.slots[i];
    let result = apply_slot(slot, walk.pkt, &walk.at, walk.fx);
    if result == SLOT_ON {
        return 0;
    }
    walk.result = result;
    walk.fault_id = slot.fault_id;
    1
}

/// Where and how big a packet is being looked at: one argument, as a BPF call takes at
/// most five.
pub struct Seen {
    pub hook: Hook,
    /// The interface is a loopback (`ROLE_LOOPBACK`).
    pub loopback: bool,
    /// The packet's length as the hook sees it.
    pub len: u64,
}

/// [`Seen`], and which end of the packet is the faulted port.
struct Where {
    side: Side,
    /// Both ports are the faulted port: the packet goes to the port and comes from it.
    /// `side` is then `ToPort`, and [`mismatch`] also takes it as from the port.
    same_ports: bool,
    hook: Hook,
    len: u64,
    loopback: bool,
}

/// Results of [`apply_slot`]: the packet goes on to the next slot, or its fate is sealed.
const SLOT_ON: u32 = 0;
const SLOT_DROP: u32 = 1;
const SLOT_RESET: u32 = 2;

/// One slot's whole work on a packet: match, count, act ([`match_and_act`]), and say so in
/// the kernel-side log (one map read when it is off, and only on a faulted port).
///
/// Two calls of its own, not inlined: 6.1's verifier sums the frames along a call chain,
/// each rounded up to 32 bytes, against 512 bytes, and the TC program (try_tc inlined,
/// 128) → decide (128) → walk_slot (32) already takes 288 of them. With the work inlined
/// here, a log call below it would add a frame; as siblings under this small frame the
/// deepest chain is 288 + 32 + 192 (match_and_act's 168 bytes) = 512, the whole budget:
/// code that grows match_and_act's frame past 192, or decide's past 128, breaks 6.1.
/// They are also why the log is not called from
/// walk_slot: there the verifier takes every number this can return into the log call,
/// once per bpf_loop iteration it walks, past its million instructions; here each path of
/// match_and_act reaches it with its own constant.
#[inline(never)]
fn apply_slot(slot: &FaultSlot, pkt: &Packet, at: &Where, fx: &mut Effects) -> u32 {
    let outcome = match_and_act(slot, pkt, at, fx);
    log::verdict(slot, pkt, at.hook, outcome);
    outcome & 0xff
}

/// The slot's result (`SLOT_*` of this module) in the low byte, and what it did for the
/// log (`log::SLOT_*`) above it. Not inlined (see [`apply_slot`]); one number back, as a
/// BPF call returns one register. The verifier walks a call's paths and comes back to the
/// caller with only the returned number differing, so paths do not multiply across slots.
#[inline(never)]
fn match_and_act(slot: &FaultSlot, pkt: &Packet, at: &Where, fx: &mut Effects) -> u32 {
    let mismatch = mismatch(slot, pkt, at);
    if mismatch != MATCHED {
        return SLOT_ON | mismatch << 8;
    }
    let counters = COUNTERS.get_ptr_mut(slot.counter);
    count(counters, at.len, false);
    match act(slot, pkt, at, fx) {
        Outcome::Untouched => SLOT_ON | log::SLOT_UNTOUCHED << 8,
        Outcome::Altered => {
            count(counters, at.len, true);
            SLOT_ON | log::SLOT_ALTERED << 8
        }
        Outcome::Final(verdict) => {
            count(counters, at.len, true);
            match verdict {
                Verdict::Drop => SLOT_DROP | log::SLOT_DROPPED << 8,
                Verdict::Reset { .. } => SLOT_RESET | log::SLOT_RESET << 8,
                Verdict::Pass | Verdict::PassChanged => SLOT_ON | log::SLOT_UNTOUCHED << 8,
            }
        }
    }
}

/// [`mismatch`] found nothing against the packet.
const MATCHED: u32 = 0;

/// Whether the slot acts on this packet here: [`MATCHED`], or why not (`log::SLOT_SKIPPED_*`).
#[inline(always)]
fn mismatch(slot: &FaultSlot, pkt: &Packet, at: &Where) -> u32 {
    // The directions the packet travels in relative to the port: one, or both when both
    // its ports are the faulted port. The slot covers it going to the port if its peer is
    // the source, coming from it if its peer is the destination. Bits, not branches on
    // `same_ports`: the verifier's paths stay as many as with one side.
    let travels = if at.same_ports {
        DIR_TO_PORT | DIR_FROM_PORT
    } else {
        at.side.bit()
    };
    let covers = slot.directions & travels;
    let direction = covers != 0;
    let peer = (covers & DIR_TO_PORT != 0 && peer_matches(slot, pkt, Side::ToPort))
        || (covers & DIR_FROM_PORT != 0 && peer_matches(slot, pkt, Side::FromPort));
    if !direction {
        return log::SLOT_SKIPPED_DIRECTION;
    }
    if !at.hook.carries(slot, at.loopback) {
        return log::SLOT_SKIPPED_HOOK;
    }
    if !peer {
        return log::SLOT_SKIPPED_PEER;
    }
    let kind = match slot.action {
        // Connection attempts: SYNs to the port (for UDP, any datagram to it).
        ACTION_REFUSE_RST | ACTION_RECORD => pkt.is_syn() && at.side == Side::ToPort,
        ACTION_REFUSE_DROP => {
            at.side == Side::ToPort && (pkt.is_syn() || pkt.protocol == PROTO_UDP)
        }
        // Never answer a RST with a RST.
        ACTION_RESET => !pkt.is_rst(),
        // Connections still open and close under a stall; only data is held back.
        ACTION_STALL => pkt.protocol == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_RST) == 0,
        ACTION_CORRUPT => pkt.payload_len > 0,
        // RSTs end the flow: nothing to slice in them.
        ACTION_SLICE => pkt.protocol == PROTO_TCP && !pkt.is_rst(),
        _ => true,
    };
    if kind {
        MATCHED
    } else {
        log::SLOT_SKIPPED_KIND
    }
}

/// The slot's decision for a packet it matches.
#[inline(always)]
fn act(slot: &FaultSlot, pkt: &Packet, at: &Where, fx: &mut Effects) -> Outcome {
    let (side, len) = (at.side, at.len);
    let now = unsafe { bpf_ktime_get_ns() };
    match slot.action {
        ACTION_DELAY => {
            fx.delay_ns += delay(slot);
            Outcome::Altered
        }
        ACTION_RATE => rate(slot, len, now, at.hook == Hook::TcEgress, fx),
        ACTION_CORRUPT if chance(slot.threshold) => {
            if slot.then == CORRUPT_DENSITY {
                fx.corrupt = CORRUPT_BYTES;
                fx.corrupt_density = slot.param;
            } else if fx.corrupt == 0 {
                fx.corrupt = CORRUPT_ONE_BYTE;
            }
            Outcome::Altered
        }
        ACTION_SLICE => slice(slot, pkt, now, at.hook == Hook::TcEgress, fx),
        ACTION_DUPLICATE if chance(slot.threshold) => {
            fx.duplicate = 1;
            Outcome::Altered
        }
        ACTION_STALL => {
            fx.stall = 1;
            Outcome::Altered
        }
        ACTION_LIMIT_BYTES | ACTION_LIMIT_AGE => {
            let verdict = limit(slot, pkt, side, now);
            // A limit's Reset is a cut: both ends get a RST (see Effects::cut).
            if let Verdict::Reset { .. } = verdict {
                fx.cut = 1;
            }
            verdict.into()
        }
        _ => decide_fate(slot, pkt, side, now).into(),
    }
}

/// A slice: the smallest of the slices on the packet wins; on the way out, data segments
/// are spaced `param` ns apart (per fault, as a paced rate: the same bucket, GCRA with a
/// cost of `param` per segment and no burst).
#[inline(always)]
fn slice(slot: &FaultSlot, pkt: &Packet, now: u64, egress: bool, fx: &mut Effects) -> Outcome {
    if fx.slice_bytes == 0 || slot.aux < fx.slice_bytes {
        fx.slice_bytes = slot.aux;
    }
    if slot.param == 0 || !egress || pkt.payload_len == 0 {
        return Outcome::Altered;
    }
    let Some(tat) = BUCKETS.get_ptr_mut(slot.counter) else {
        return Outcome::Altered;
    };
    // SAFETY: the pointer came from the map; see BUCKETS for the race.
    let due = unsafe { (*tat).max(now) };
    if due - now > DELAY_HORIZON_NS {
        // fq would drop it anyway; better that it counts as the slice's drop.
        return Outcome::Final(Verdict::Drop);
    }
    unsafe { *tat = due + slot.param };
    fx.not_before_ns = fx.not_before_ns.max(due);
    Outcome::Altered
}

/// The slot's latency, with its jitter drawn uniformly from [-jitter, +jitter].
#[inline(always)]
fn delay(slot: &FaultSlot) -> u64 {
    if slot.aux == 0 {
        return slot.param;
    }
    let span_us = 2 * slot.aux as u64 + 1;
    // SAFETY: helper with no arguments. Multiply-shift maps the u32 onto [0, span) without
    // a division.
    let draw_us = (unsafe { bpf_get_prandom_u32() } as u64 * span_us) >> 32;
    (slot.param + draw_us * 1000).saturating_sub(slot.aux as u64 * 1000)
}

/// Holds the fault's traffic to `param` bytes per second (GCRA). Policing drops a packet
/// that comes more than the burst ahead of its time; pacing gives it a departure time.
#[inline(always)]
fn rate(slot: &FaultSlot, len: u64, now: u64, egress: bool, fx: &mut Effects) -> Outcome {
    let Some(tat) = BUCKETS.get_ptr_mut(slot.counter) else {
        return Outcome::Untouched;
    };
    let bytes_per_sec = slot.param.max(1);
    let cost = len * NS_PER_SEC / bytes_per_sec;
    // SAFETY: the pointer came from the map; see BUCKETS for the race.
    let due = unsafe { (*tat).max(now) };
    if slot.then == RATE_PACE && egress {
        if due - now > DELAY_HORIZON_NS {
            // fq would drop it anyway; better that it counts as the rate's drop.
            return Outcome::Final(Verdict::Drop);
        }
        unsafe { *tat = due + cost };
        if due > now {
            fx.not_before_ns = fx.not_before_ns.max(due);
            return Outcome::Altered;
        }
        return Outcome::Untouched;
    }
    let burst = slot.aux as u64 * NS_PER_SEC / bytes_per_sec;
    if due - now > burst {
        return Outcome::Final(Verdict::Drop);
    }
    unsafe { *tat = due + cost };
    Outcome::Untouched
}

/// Drop, reset, refuse, record and limits: what becomes of the packet.
#[inline(always)]
fn decide_fate(slot: &FaultSlot, pkt: &Packet, side: Side, now: u64) -> Verdict {
    match slot.action {
        ACTION_DROP => {
            first_hit(slot, pkt, side, now);
            if chance(slot.threshold) {
                Verdict::Drop
            } else {
                Verdict::Pass
            }
        }
        ACTION_RESET => {
            first_hit(slot, pkt, side, now);
            if chance(slot.threshold) {
                Verdict::Reset {
                    fault_id: slot.fault_id,
                }
            } else {
                Verdict::Pass
            }
        }
        ACTION_REFUSE_RST => {
            events::emit(EVENT_SYN_REFUSED, slot.fault_id, pkt, now);
            Verdict::Reset {
                fault_id: slot.fault_id,
            }
        }
        ACTION_REFUSE_DROP => {
            if pkt.is_syn() {
                events::emit(EVENT_SYN_REFUSED, slot.fault_id, pkt, now);
            }
            Verdict::Drop
        }
        ACTION_RECORD => {
            events::emit(EVENT_SYN, slot.fault_id, pkt, now);
            Verdict::Pass
        }
        _ => Verdict::Pass,
    }
}

/// Tracks the flow and cuts it once it is past the slot's limit; a cut flow stays cut. A
/// flow the table has no room for is not tracked, and passes (see [`flow_state`]).
///
/// Bytes are added atomically (RX and TX of one flow run on different CPUs): each packet
/// gets its own running total, so exactly the packets whose total is within the limit pass,
/// whatever the CPUs. Both tests are monotonic (bytes only grow, age only grows), so the
/// verdict needs no flag; `cut` is claimed by compare-and-swap so that one packet, on one
/// CPU, announces FLOW_CUT.
#[inline(always)]
fn limit(slot: &FaultSlot, pkt: &Packet, side: Side, now: u64) -> Verdict {
    let Some(state) = flow_state(slot, pkt, side, now) else {
        return Verdict::Pass;
    };
    // SAFETY: the pointer came from the map and stays valid for the program's run (RCU);
    // its fields are 8-byte aligned, as the atomics need. 64-bit operands: the target's
    // minimum atomic width (32-bit ones would need ALU32).
    let over = unsafe {
        let payload = pkt.payload_len as u64;
        let over = match slot.action {
            ACTION_LIMIT_BYTES => {
                fetch_add(&raw mut (*state).bytes, payload) + payload > slot.param
            }
            _ => now.saturating_sub((*state).first_ns) > slot.param,
        };
        if over && compare_and_swap(&raw mut (*state).cut, 0, 1) == 0 {
            events::emit(EVENT_FLOW_CUT, slot.fault_id, pkt, now);
        }
        over
    };
    match (over, slot.then) {
        (false, _) => Verdict::Pass,
        // RSTs are what kill the flow: among them, the ones this fault forged, which meet
        // the programs again (the receiver's at once, sent on; the sender's on a veth's
        // other hook on its way back). A Reset here goes to both ends (see act).
        (true, THEN_RESET) if is_rst_now(pkt) => Verdict::Pass,
        (true, THEN_RESET) => Verdict::Reset {
            fault_id: slot.fault_id,
        },
        (true, _) => Verdict::Drop,
    }
}

/// Adds `v` to `*p` atomically; returns the value before (BPF_ATOMIC | BPF_ADD | BPF_FETCH,
/// kernel 5.12+).
///
/// Assembly, because neither way through the compiler works: the BPF target's core has no
/// `AtomicU64::fetch_add` ("atomic-cas": false), and LLVM, asked for the intrinsic, emits
/// the fetching form only for `-mcpu=v3`, while rustc hands bpf-linker `--cpu generic`
/// (v1: "Invalid usage of the XADD return value") and aya-build sets the RUSTFLAGS that
/// could change it.
///
/// # Safety
/// `p` points to a u64, 8-byte aligned, in a map value.
#[inline(always)]
unsafe fn fetch_add(p: *mut u64, v: u64) -> u64 {
    let mut val = v;
    // SAFETY: the caller's; the instruction touches `*p` only.
    unsafe {
        asm!(
            "{val} = atomic_fetch_add((u64 *)({p} + 0), {val})",
            p = in(reg) p,
            val = inout(reg) val,
            options(nostack),
        );
    }
    val
}

/// Stores `new` in `*p` if it holds `old`, atomically; returns what `*p` held (BPF_ATOMIC |
/// BPF_CMPXCHG, kernel 5.12+; r0 in and out, as the instruction wants). See [`fetch_add`].
///
/// # Safety
/// As for [`fetch_add`].
#[inline(always)]
unsafe fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> u64 {
    let mut r0 = old;
    // SAFETY: the caller's; the instruction touches `*p` only.
    unsafe {
        asm!(
            "r0 = cmpxchg_64({p} + 0, r0, {new})",
            p = in(reg) p,
            new = in(reg) new,
            inout("r0") r0,
            options(nostack),
        );
    }
    r0
}

const EEXIST: i32 = 17;

/// The limit's state for the packet's flow, started (and reported) when the flow is new.
/// A SYN without ACK starts a new connection: its 4-tuple's state starts afresh, neither
/// cut nor old (fixed client ports, port reuse under churn). `None` when the table is full:
/// counted in `FLOWS_FULL` and announced (throttled to powers of two per CPU).
#[inline(always)]
fn flow_state(slot: &FaultSlot, pkt: &Packet, side: Side, now: u64) -> Option<*mut FlowState> {
    let key = flow_key(slot, pkt, side);
    let syn = pkt.is_syn();
    if !syn && let Some(state) = FLOWS.get_ptr_mut(&key) {
        return Some(state);
    }
    let mut fresh = MaybeUninit::<FlowState>::uninit();
    let p = fresh.as_mut_ptr();
    // SAFETY: every field is written before the value is read; volatile for the reason
    // given in Effects::fresh. Inserted through the pointer: a copy of known zeros would
    // become a memset again.
    let fresh = unsafe {
        write_volatile(&raw mut (*p).first_ns, now);
        write_volatile(&raw mut (*p).bytes, 0);
        write_volatile(&raw mut (*p).cut, 0);
        &*p
    };
    // A SYN replaces the state whole (the old element is freed after an RCU grace period);
    // otherwise only a CPU that finds no state starts it, so two CPUs racing on a new flow
    // share one state and report it once.
    let flags = if syn { BPF_ANY } else { BPF_NOEXIST } as u64;
    match FLOWS.insert(&key, fresh, flags) {
        Ok(()) => events::emit(EVENT_FIRST_HIT, slot.fault_id, pkt, now),
        Err(e) if e == -EEXIST => {}
        Err(_) => {
            untracked(slot, pkt, now);
            return None;
        }
    }
    FLOWS.get_ptr_mut(&key)
}

/// [`Packet::is_rst`], with the flags read afresh. Volatile: a plain read is merged with
/// the one [`flow_state`] makes before its map calls, and the value, kept across them,
/// spills to the stack: 8 bytes that took match_and_act's frame past a 32-byte step and
/// the deepest call chain past 512 bytes on 6.1's verifier (see [`apply_slot`]).
#[inline(always)]
fn is_rst_now(pkt: &Packet) -> bool {
    // SAFETY: a field of a live reference.
    let flags = unsafe { core::ptr::read_volatile(&pkt.tcp_flags) };
    flags & TCP_RST != 0
}

/// A flow the limits cannot track: counted, and announced on the 1st, 2nd, 4th, 8th…
/// such packet of each CPU, so that a full table cannot flood the event ring.
#[inline(always)]
fn untracked(slot: &FaultSlot, pkt: &Packet, now: u64) {
    let Some(full) = FLOWS_FULL.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot: no other program writes it while this one runs.
    let n = unsafe {
        *full += 1;
        *full
    };
    if n & (n - 1) == 0 {
        events::emit(EVENT_FLOW_UNTRACKED, slot.fault_id, pkt, now);
    }
}

/// Reports the packet's flow (FIRST_HIT) the first time the slot acts on it, for actions
/// that keep no other state. Racing CPUs insert once (BPF_NOEXIST), so report once.
#[inline(always)]
fn first_hit(slot: &FaultSlot, pkt: &Packet, side: Side, now: u64) {
    let key = flow_key(slot, pkt, side);
    // SAFETY: a plain u64 value, only tested for presence.
    if unsafe { SEEN.get(&key) }.is_some() {
        return;
    }
    if SEEN.insert(&key, now, BPF_NOEXIST as u64).is_ok() {
        events::emit(EVENT_FIRST_HIT, slot.fault_id, pkt, now);
    }
}

#[inline(always)]
fn flow_key(slot: &FaultSlot, pkt: &Packet, side: Side) -> FlowKey {
    // With both ports the faulted port, both directions of the flow would take either
    // side: the lower address is the local one, so that they share one state.
    let to_port = if pkt.src_port == pkt.dst_port {
        addr_below(&pkt.dst_addr, &pkt.src_addr)
    } else {
        side == Side::ToPort
    };
    let (port, remote_port, local_addr, remote_addr) = if to_port {
        (pkt.dst_port, pkt.src_port, pkt.dst_addr, pkt.src_addr)
    } else {
        (pkt.src_port, pkt.dst_port, pkt.src_addr, pkt.dst_addr)
    };
    FlowKey {
        fault_id: slot.fault_id,
        family: pkt.family,
        protocol: pkt.protocol,
        port,
        remote_port,
        _pad: 0,
        local_addr,
        remote_addr,
    }
}

/// `a < b`, word by word (an order, not the numeric one: any fixed order will do).
#[inline(always)]
fn addr_below(a: &[u32; 4], b: &[u32; 4]) -> bool {
    if a[0] != b[0] {
        return a[0] < b[0];
    }
    if a[1] != b[1] {
        return a[1] < b[1];
    }
    if a[2] != b[2] {
        return a[2] < b[2];
    }
    a[3] < b[3]
}

/// Whether the packet's other end (from the faulted port, on `side`) is the slot's peer:
/// its address in the peer's network, and its port the tuple's remote port, if any (with
/// both ports the same, the other end's port is the faulted port).
#[inline(always)]
fn peer_matches(slot: &FaultSlot, pkt: &Packet, side: Side) -> bool {
    let remote_port = match side {
        Side::ToPort => pkt.src_port,
        Side::FromPort => pkt.dst_port,
    };
    if slot.remote_port != 0 && slot.remote_port != remote_port {
        return false;
    }
    if slot.peer_family == PEER_ANY {
        return true;
    }
    let peer = side.peer(pkt);
    slot.peer_family == pkt.family
        && peer[0] & slot.peer_mask[0] == slot.peer_addr[0]
        && peer[1] & slot.peer_mask[1] == slot.peer_addr[1]
        && peer[2] & slot.peer_mask[2] == slot.peer_addr[2]
        && peer[3] & slot.peer_mask[3] == slot.peer_addr[3]
}

#[inline(always)]
fn chance(threshold: u32) -> bool {
    // SAFETY: helper with no arguments.
    threshold == u32::MAX || unsafe { bpf_get_prandom_u32() } <= threshold
}

/// Adds a packet to a fault's counters (its per-CPU slot): as matched, or as acted on.
#[inline(always)]
pub(crate) fn count(counters: Option<*mut FaultCounters>, len: u64, acted: bool) {
    let Some(c) = counters else { return };
    // SAFETY: per-CPU slot, so no other CPU writes it; the pointer came from the map.
    unsafe {
        if acted {
            (*c).acted_packets += 1;
            (*c).acted_bytes += len;
        } else {
            (*c).matched_packets += 1;
            (*c).matched_bytes += len;
        }
    }
}
