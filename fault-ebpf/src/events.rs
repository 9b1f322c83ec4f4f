//! Events for the daemon (first hit on a flow, RST sent, SYN refused or seen), with kernel
//! timestamps, through a ring buffer.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use fault_common::{EVENTS_BYTES, Event};

use crate::packet::Packet;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Events that found the ring full, per CPU (entry 0): the daemon reports them as a gap.
#[map]
static EVENTS_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Best effort: when the daemon falls behind and the buffer is full, the event is lost
/// rather than the packet delayed, and counted in `EVENTS_LOST`. The event is written in place in the ring: built on the
/// stack, each inlined copy would take 64 of the program's 512 bytes of stack.
#[inline(always)]
pub fn emit(kind: u32, fault_id: u64, pkt: &Packet, ktime_ns: u64) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: a per-CPU slot: no other program writes it while this one runs.
            unsafe { *lost += 1 };
        }
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: the reservation is an Event-sized, exclusively owned slot of the ring.
    unsafe {
        (*e).ktime_ns = ktime_ns;
        (*e).fault_id = fault_id;
        (*e).kind = kind;
        (*e).family = pkt.family;
        (*e).protocol = pkt.protocol;
        (*e)._pad = 0;
        (*e).src_port = pkt.src_port;
        (*e).dst_port = pkt.dst_port;
        (*e)._pad2 = 0;
        (*e).src_addr = pkt.src_addr;
        (*e).dst_addr = pkt.dst_addr;
    }
    entry.submit(0);
}
