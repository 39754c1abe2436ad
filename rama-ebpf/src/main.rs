//! Rama's eBPF datapath. Each entry point is a thin wrapper over a `try_*` function
//! that returns what to do with the packet and why; the wrapper counts the outcome in
//! `RAMA_COUNTERS` and returns the kernel action.
//!
//! The hooks (DESIGN.md, "Datapath"):
//! - `rama_pod_egress`: TC ingress on each pod veth's host side (traffic from a pod);
//! - `rama_uplink_in`: TC ingress on the uplink (802.1Q-tagged traffic for local pods);
//! - `rama_uplink_xdp`: XDP on the uplink, a pre-filter that runs before an skb exists;
//! - `rama_vxlan_in`: TC ingress on the collect-metadata VXLAN device.
#![no_std]
#![no_main]

mod forward;
mod maps;
mod packet;
mod pod;
mod uplink;
mod vxlan;
mod xdp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use rama_common::counters::{Program, Reason};

/// What a program decided: the reason it is counted under and the kernel action.
#[derive(Clone, Copy)]
pub struct Verdict {
    pub reason: Reason,
    pub action: i32,
}

impl Verdict {
    #[inline(always)]
    pub const fn pass(reason: Reason) -> Self {
        Self {
            reason,
            action: TC_ACT_OK,
        }
    }
}

#[inline(always)]
fn finish_tc(program: Program, ctx: &TcContext, result: Result<Verdict, Reason>) -> i32 {
    let verdict = match result {
        Ok(verdict) => verdict,
        Err(reason) => Verdict {
            reason,
            action: TC_ACT_SHOT,
        },
    };
    maps::count(program, verdict.reason, ctx.len());
    verdict.action
}

#[classifier]
pub fn rama_pod_egress(ctx: TcContext) -> i32 {
    finish_tc(Program::PodEgress, &ctx, pod::try_pod_egress(&ctx))
}

#[classifier]
pub fn rama_uplink_in(ctx: TcContext) -> i32 {
    finish_tc(
        Program::UplinkIngress,
        &ctx,
        uplink::try_uplink_ingress(&ctx),
    )
}

#[classifier]
pub fn rama_vxlan_in(ctx: TcContext) -> i32 {
    finish_tc(Program::VxlanIngress, &ctx, vxlan::try_vxlan_ingress(&ctx))
}

#[xdp]
pub fn rama_uplink_xdp(ctx: XdpContext) -> u32 {
    let (reason, action) = match xdp::try_uplink_xdp(&ctx) {
        Ok(reason) => (reason, xdp_action::XDP_PASS),
        Err(reason) => (reason, xdp_action::XDP_DROP),
    };
    maps::count(
        Program::UplinkXdp,
        reason,
        (ctx.data_end() - ctx.data()) as u32,
    );
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
