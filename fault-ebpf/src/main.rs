#![no_std]
#![no_main]

mod packet;
mod rules;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use rules::{Hook, Verdict};

/// Ingress, as early as possible: carries the actions that need no socket buffer.
#[xdp]
pub fn faultd_xdp(ctx: XdpContext) -> u32 {
    match try_xdp(&ctx) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

fn try_xdp(ctx: &XdpContext) -> Verdict {
    if !rules::hook_enabled(Hook::Xdp, ctx.ingress_ifindex() as u32) {
        return Verdict::Pass;
    }
    let Some(pkt) = packet::parse(ctx.data(), ctx.data_end()) else {
        return Verdict::Pass;
    };
    rules::decide(&pkt, Hook::Xdp, (ctx.data_end() - ctx.data()) as u64)
}

/// Ingress, after XDP: carries the actions that need the socket buffer.
#[classifier]
pub fn faultd_tc_ingress(ctx: TcContext) -> i32 {
    tc_verdict(try_tc(&ctx, Hook::TcIngress))
}

/// Egress: every action on the way out. On `lo` this sees both directions of a flow.
#[classifier]
pub fn faultd_tc_egress(ctx: TcContext) -> i32 {
    tc_verdict(try_tc(&ctx, Hook::TcEgress))
}

fn try_tc(ctx: &TcContext, hook: Hook) -> Verdict {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if !rules::hook_enabled(hook, ifindex) {
        return Verdict::Pass;
    }
    let Some(pkt) = packet::parse(ctx.data(), ctx.data_end()) else {
        return Verdict::Pass;
    };
    rules::decide(&pkt, hook, ctx.len() as u64)
}

fn tc_verdict(verdict: Verdict) -> i32 {
    match verdict {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
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
