//! Events for the daemon (first hit on a flow, RST sent, SYN refused or seen), with kernel
//! timestamps, through a ring buffer.

use aya_ebpf::{macros::map, maps::RingBuf};
use fault_common::{EVENTS_BYTES, Event};

use crate::packet::Packet;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Best effort: when the daemon falls behind and the buffer is full, the event is lost
/// rather than the packet delayed.
#[inline(always)]
pub fn emit(kind: u32, fault_id: u64, pkt: &Packet, ktime_ns: u64) {
    let event = Event {
        ktime_ns,
        fault_id,
        kind,
        family: pkt.family,
        protocol: pkt.protocol,
        src_port: pkt.src_port,
        dst_port: pkt.dst_port,
        src_addr: pkt.src_addr,
        dst_addr: pkt.dst_addr,
        ..Default::default()
    };
    let _ = EVENTS.output::<Event>(&event, 0);
}
