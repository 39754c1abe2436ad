//! The collect-metadata VXLAN device (TC ingress): decapsulated overlay frames.
//!
//! The tunnel metadata tells which VTEP sent the frame and with which VNI. A frame is
//! delivered only when its inner source is a pod the cluster state places behind that
//! very VTEP, so a host that can reach UDP 4789 cannot inject traffic as any pod.
use aya_ebpf::{
    bindings::{BPF_F_TUNINFO_IPV6, bpf_tunnel_key},
    helpers::generated::bpf_skb_get_tunnel_key,
    programs::TcContext,
};
use rama_common::{ETH_P_IP, ETH_P_IPV6, IpKey, counters::Reason, flags};

use crate::{
    Verdict,
    forward::{self, Family, TUNNEL_KEY_SIZE},
    maps,
    packet::{ETH_LEN, EthHdr, Ipv4Hdr, Ipv6Hdr, ptr_at},
};

#[inline(always)]
pub fn try_vxlan_ingress(ctx: &TcContext) -> Result<Verdict, Reason> {
    let cfg = maps::config()?;
    let (vni, vtep) = tunnel_source(ctx)?;
    if vni != cfg.vni {
        return Err(Reason::DropVniMismatch);
    }
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked bounds.
    let proto = unsafe { u16::from_be_bytes((*eth).proto_be) };
    let (src, dst, family) = match proto {
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: `ptr_at` checked bounds.
            let (s, d) = unsafe { ((*ip).src, (*ip).dst) };
            (IpKey::v4(s), IpKey::v4(d), Family::V4)
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: `ptr_at` checked bounds.
            let (s, d) = unsafe { ((*ip).src, (*ip).dst) };
            (IpKey::v6(s), IpKey::v6(d), Family::V6)
        }
        // ARP inside the overlay only comes from peers without static neighbours;
        // the kernel device handles (and drops) it.
        _ => return Ok(Verdict::pass(Reason::PassStack)),
    };
    match maps::endpoint(&src) {
        Some(remote) if remote.flags & flags::LOCAL == 0 && remote.vtep == vtep.addr => {}
        _ => return Err(Reason::DropVtepUnknown),
    }
    match maps::local_endpoint(&dst) {
        Some(ep) => forward::deliver_local(ctx, ep, family),
        None => Ok(Verdict::pass(Reason::PassStack)),
    }
}

/// VNI and sending VTEP from the tunnel metadata, IPv4 or IPv6 underlay.
#[inline(always)]
fn tunnel_source(ctx: &TcContext) -> Result<(u32, IpKey), Reason> {
    // SAFETY: an all-zero bpf_tunnel_key is valid; it lives on the stack for the call.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: as above.
    let v4 = unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, TUNNEL_KEY_SIZE, 0) };
    if v4 == 0 {
        // SAFETY: the helper filled the IPv4 member.
        let addr = unsafe { key.__bindgen_anon_1.remote_ipv4 };
        return Ok((key.tunnel_id, IpKey::v4(addr.to_be_bytes())));
    }
    // SAFETY: as above.
    let v6 = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key,
            TUNNEL_KEY_SIZE,
            u64::from(BPF_F_TUNINFO_IPV6),
        )
    };
    if v6 != 0 {
        return Err(Reason::DropMalformed);
    }
    // SAFETY: the helper filled the IPv6 member, bytes in network order.
    let words = unsafe { key.__bindgen_anon_1.remote_ipv6 };
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    Ok((key.tunnel_id, IpKey::v6(addr)))
}
