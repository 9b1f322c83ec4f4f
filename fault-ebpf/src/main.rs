#![no_std]
#![no_main]
// Atomic read-modify-writes on map values (rules::limit) are written in assembly: see
// rules::fetch_add.
#![feature(asm_experimental_arch)]

mod alter;
mod copies;
mod events;
mod log;
mod packet;
mod partition;
mod reset;
mod rules;
mod slice;
mod spread;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use fault_common::{EVENT_RST_SENT, ROLE_L3, ROLE_LOOPBACK};
use packet::Packet;
use rules::{Hook, Verdict};

/// Ingress, as early as possible: carries the actions that need no socket buffer.
#[xdp]
pub fn faultd_xdp(ctx: XdpContext) -> u32 {
    match try_xdp(&ctx) {
        Verdict::Pass | Verdict::PassChanged => xdp_action::XDP_PASS,
        Verdict::Drop | Verdict::Reset { .. } => xdp_action::XDP_DROP,
    }
}

/// XDP never receives `Reset`: the rules give RST actions to the TC hooks.
fn try_xdp(ctx: &XdpContext) -> Verdict {
    // On a loopback TC acts on everything (see rules::Hook::carries).
    let role = match rules::role_at(Hook::Xdp, ctx.ingress_ifindex() as u32) {
        Some(role) if role & ROLE_LOOPBACK == 0 => role,
        _ => return Verdict::Pass,
    };
    // Generic XDP on a device without a link header starts at the IP header.
    let link = if role & ROLE_L3 != 0 {
        packet::LINK_L3_BY_VERSION
    } else {
        packet::LINK_ETHERNET
    };
    let len = (ctx.data_end() - ctx.data()) as u32;
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let parsed = packet::parse(ctx.data(), ctx.data_end(), link, len, pkt.as_mut_ptr());
    // The pass-through path ended inside parse (see packet::UNFAULTED).
    if parsed == packet::UNFAULTED {
        return Verdict::Pass;
    }
    if parsed != packet::PARSED {
        log::parse_failed(Hook::Xdp, parsed);
        return Verdict::Pass;
    }
    // SAFETY: parse wrote every field.
    let pkt = unsafe { pkt.assume_init_ref() };
    let seen = rules::Seen {
        hook: Hook::Xdp,
        loopback: false,
        len: (ctx.data_end() - ctx.data()) as u64,
    };
    decide(pkt, &seen)
}

/// Ingress, after XDP: carries the actions that need the socket buffer.
#[classifier]
pub fn faultd_tc_ingress(ctx: TcContext) -> i32 {
    try_tc(&ctx, Hook::TcIngress)
}

/// Egress: every action on the way out. On `lo` this sees both directions of a flow.
#[classifier]
pub fn faultd_tc_egress(ctx: TcContext) -> i32 {
    try_tc(&ctx, Hook::TcEgress)
}

/// Inlined into each program: 6.1's verifier sums the frames along the deepest call chain
/// (program → decide → walk_slot → apply_slot → match_and_act) against 512 bytes, rounding
/// each up to 32, and a separate try_tc frame under the program's own made it 544.
#[inline(always)]
fn try_tc(ctx: &TcContext, hook: Hook) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(role) = rules::role_at(hook, ifindex) else {
        return TC_ACT_OK;
    };
    // On a device without a link header the data starts at the IP header, and
    // skb->protocol (network order) says which.
    let link = if role & ROLE_L3 != 0 {
        // SAFETY: the context pointer is valid for the program's run.
        match u16::from_be(unsafe { (*ctx.skb.skb).protocol } as u16) {
            p @ (packet::ETH_P_IP | packet::ETH_P_IPV6) => p as u32,
            _ => packet::LINK_NOT_IP,
        }
    } else {
        packet::LINK_ETHERNET
    };
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let parsed = packet::parse(
        ctx.data(),
        ctx.data_end(),
        link,
        ctx.len(),
        pkt.as_mut_ptr(),
    );
    // The pass-through path ended inside parse (see packet::UNFAULTED).
    if parsed == packet::UNFAULTED {
        return TC_ACT_OK;
    }
    // A copy a duplicate fault is sending out has been through the faults already. After
    // the pass-through test: copies are of faulted packets, so never pass there.
    if hook == Hook::TcEgress && copies::is_egress_copy() {
        return TC_ACT_OK;
    }
    if parsed != packet::PARSED {
        log::parse_failed(hook, parsed);
        return TC_ACT_OK;
    }
    // SAFETY: parse wrote every field.
    let pkt = unsafe { pkt.assume_init_ref() };
    // A copy a duplicate fault sent in, back from the receive backlog.
    if hook == Hook::TcIngress && copies::take_ingress_copy(ctx, pkt) {
        return TC_ACT_OK;
    }
    let seen = rules::Seen {
        hook,
        loopback: role & ROLE_LOOPBACK != 0,
        len: ctx.len() as u64,
    };
    match decide(pkt, &seen) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::PassChanged => {
            if let Some(fx) = rules::Effects::current(hook) {
                alter::apply(ctx, pkt, fx, hook, ifindex);
            }
            TC_ACT_OK
        }
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Reset { fault_id } => {
            let way = match hook {
                Hook::TcEgress if role & ROLE_LOOPBACK != 0 => reset::Way::Onward,
                Hook::TcEgress => reset::Way::BackIn,
                _ => reset::Way::BackOut,
            };
            match reset::send_rst(ctx, pkt, ifindex, way) {
                Ok(action) => {
                    events::emit(EVENT_RST_SENT, fault_id, pkt, unsafe { bpf_ktime_get_ns() });
                    action
                }
                // The packet is half rewritten or cannot be answered: it must not go on.
                Err(_) => {
                    log::reset_failed(hook, fault_id);
                    TC_ACT_SHOT
                }
            }
        }
    }
}

/// The partitions first (address pairs, any port: they cut before any port's faults see
/// the packet), then the faults on the packet's ports.
#[inline(always)]
fn decide(pkt: &Packet, seen: &rules::Seen) -> Verdict {
    match partition::decide(pkt, seen) {
        Verdict::Pass => rules::decide(pkt, seen),
        cut => cut,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
