#![no_std]
#![no_main]
// Atomic read-modify-writes on map values (rules::limit) are written in assembly: see
// rules::fetch_add.
#![feature(asm_experimental_arch)]

mod alter;
mod copies;
mod events;
mod global;
mod log;
mod packet;
mod partition;
mod reset;
mod rules;
mod slice;
mod spread;

use core::ffi::c_void;
use core::mem::{MaybeUninit, offset_of};

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use fault_common::{EVENT_RST_SENT, ROLE_L3, ROLE_LOOPBACK};
use packet::{Frame, FrameSource, Packet};
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
    if passes_untouched(Context::<AT_XDP> {
        ctx: ctx.ctx.cast(),
        role,
    }) {
        return Verdict::Pass;
    }
    let link = xdp_link(role);
    let len = (ctx.data_end() - ctx.data()) as u32;
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let parsed = packet::parse(ctx.data(), ctx.data_end(), link, len, pkt.as_mut_ptr());
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
/// each up to 32, and a separate try_tc frame under the program's own made it 544. For the
/// same reason the pass-through test must spill no more than it does: the program's frame is
/// 128 bytes, and one more 8-byte slot would take the chain past 512.
#[inline(always)]
fn try_tc(ctx: &TcContext, hook: Hook) -> i32 {
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(role) = rules::role_at(hook, ifindex) else {
        return TC_ACT_OK;
    };
    if passes_untouched(Context::<AT_TC> {
        ctx: ctx.skb.skb.cast(),
        role,
    }) {
        return TC_ACT_OK;
    }
    // Read again rather than held through the test (see `Context::frame`).
    // SAFETY: the context pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the context pointer is valid for the program's run.
    let link = tc_link(role, unsafe { (*ctx.skb.skb).protocol });
    let mut pkt = MaybeUninit::<Packet>::uninit();
    let parsed = packet::parse(
        ctx.data(),
        ctx.data_end(),
        link,
        ctx.len(),
        pkt.as_mut_ptr(),
    );
    // A copy a duplicate fault sent has been through the faults already: recognised by the
    // token only it carries (crate::copies). After the pass-through test: copies are of
    // faulted packets, so never pass there, and other packets pay nothing for the check.
    if copies::take_copy(ctx) {
        return TC_ACT_OK;
    }
    if parsed != packet::PARSED {
        log::parse_failed(hook, parsed);
        return TC_ACT_OK;
    }
    // SAFETY: parse wrote every field.
    let pkt = unsafe { pkt.assume_init_ref() };
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
            // To the sender, or to both ends after a limit's cut; the verdict, or an error
            // below zero (see reset::send_rst).
            let sent = reset::send_rst(ctx, pkt, ifindex, way, hook);
            if sent >= 0 {
                events::emit(EVENT_RST_SENT, fault_id, pkt, unsafe { bpf_ktime_get_ns() });
                sent as i32
            } else {
                // The packet is half rewritten or cannot be answered: it must not go on.
                log::reset_failed(hook, fault_id);
                TC_ACT_SHOT
            }
        }
    }
}

/// The pass-through test, first: a plain frame (see packet::peek) whose ports have no fault
/// and which no partition may cut goes on untouched (rules::passes_untouched). In the
/// program itself, not in a function it calls: what it reads is global data, with no helper
/// call (see crate::global), so it keeps its values in registers, adds nothing to the
/// program's stack frame, and the packet pays for no call.
#[inline(always)]
fn passes_untouched<const TC: bool>(context: Context<TC>) -> bool {
    let Frame {
        data,
        data_end,
        link,
    } = context.frame();
    // A match, not a closure: LLVM does not inline a closure it sees called from three
    // programs, and the call would put the peeked fields on the stack.
    match packet::peek(data, data_end, link) {
        Some(peeked) => rules::passes_untouched(&peeked, &context),
        None => false,
    }
}

/// A program's context (`TC`: a `__sk_buff`; else an `xdp_md`) and the interface's role:
/// where the pass-through test reads the frame from, again when it needs the addresses.
#[derive(Copy, Clone)]
struct Context<const TC: bool> {
    ctx: *const c_void,
    role: u32,
}

const AT_TC: bool = true;
const AT_XDP: bool = false;

impl<const TC: bool> FrameSource for Context<TC> {
    /// The frame's bounds and `skb->protocol` are loaded by [`context_field`], not by plain
    /// reads that LLVM would merge with the ones after the pass-through test: merged, their
    /// values would be held through the test for the code after it, and the test's own
    /// values would spill onto the program's stack frame, which lies on the deepest call
    /// chain (see [`try_tc`]).
    #[inline(always)]
    fn frame(&self) -> Frame {
        use aya_ebpf::bindings::{__sk_buff, xdp_md};
        let ctx = self.ctx;
        if TC {
            let protocol = context_field::<{ offset_of!(__sk_buff, protocol) }>(ctx) as u32;
            Frame {
                data: context_field::<{ offset_of!(__sk_buff, data) }>(ctx),
                data_end: context_field::<{ offset_of!(__sk_buff, data_end) }>(ctx),
                link: tc_link(self.role, protocol),
            }
        } else {
            Frame {
                data: context_field::<{ offset_of!(xdp_md, data) }>(ctx),
                data_end: context_field::<{ offset_of!(xdp_md, data_end) }>(ctx),
                link: xdp_link(self.role),
            }
        }
    }
}

/// The 32-bit field at `OFFSET` of the program's context, loaded in an assembly block that
/// LLVM must run where it stands (it may write memory, as far as LLVM knows) and whose
/// result it cannot merge with a plain read of the same field. The load fills the whole
/// register, so the result is used as it is: a 32-bit cast would add shifts, which the
/// verifier refuses on the pointers that `data` and `data_end` are.
#[inline(always)]
fn context_field<const OFFSET: usize>(ctx: *const c_void) -> usize {
    let value: usize;
    // SAFETY: the context pointer is valid for the program's run, and OFFSET is a field's.
    unsafe {
        core::arch::asm!(
            "{value} = *(u32 *)({ctx} + {offset})",
            ctx = in(reg) ctx,
            offset = const OFFSET,
            value = out(reg) value,
            options(nostack),
        );
    }
    value
}

/// How an XDP hook's frames begin (`packet::LINK_*`): generic XDP on a device without a link
/// header starts at the IP header.
#[inline(always)]
fn xdp_link(role: u32) -> u32 {
    if role & ROLE_L3 != 0 {
        packet::LINK_L3_BY_VERSION
    } else {
        packet::LINK_ETHERNET
    }
}

/// How a TC hook's frames begin (`packet::LINK_*`): on a device without a link header the
/// data starts at the IP header, and `skb->protocol` (network order) says which.
#[inline(always)]
fn tc_link(role: u32, skb_protocol: u32) -> u32 {
    if role & ROLE_L3 == 0 {
        return packet::LINK_ETHERNET;
    }
    match u16::from_be(skb_protocol as u16) {
        p @ (packet::ETH_P_IP | packet::ETH_P_IPV6) => p as u32,
        _ => packet::LINK_NOT_IP,
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
