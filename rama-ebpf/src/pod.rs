//! Traffic from a pod (TC ingress on the host side of its veth).
//!
//! Order of business: anti-spoofing (the packet must carry the pod's own MAC and IP),
//! then the forwarding decision (DESIGN.md, "Datapath"):
//! local pod → redirect; remote pod → VLAN (underlay↔underlay) or VXLAN (anything
//! involving the overlay: the hybrid identity); otherwise underlay pods go to their
//! VLAN's gateway and overlay pods to the kernel stack (masquerade).
use aya_ebpf::programs::TcContext;
use rama_common::{
    ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, GATEWAY_V4, IpKey, LocalPod,
    PodSubnet, counters::Reason, flags,
};

use crate::{
    Verdict,
    forward::{self, Family},
    maps,
    packet::{
        ArpHdr, ETH_LEN, EthHdr, Ipv4Hdr, Ipv6Hdr, is_v6_link_local, is_v6_multicast,
        is_v6_unspecified, ptr_at,
    },
};

#[inline(always)]
pub fn try_pod_egress(ctx: &TcContext) -> Result<Verdict, Reason> {
    // SAFETY: reading the context fields the verifier lets TC programs read.
    let (ifindex, vlan_present) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).vlan_present) };
    let ep = maps::pod_by_ifindex(ifindex).ok_or(Reason::DropNoEndpoint)?;
    // A pod has no business sending 802.1Q frames: the kernel has already moved any
    // tag it sent into the skb metadata, and forwarding it would let the pod pick a VLAN.
    if vlan_present != 0 {
        return Err(Reason::DropVlanMismatch);
    }
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked bounds.
    let (src_mac, proto) = unsafe { ((*eth).src, u16::from_be_bytes((*eth).proto_be)) };
    if src_mac != ep.mac {
        return Err(Reason::DropSpoofMac);
    }
    match proto {
        ETH_P_ARP => check_arp(ctx, ep),
        ETH_P_IP => forward_ipv4(ctx, ep),
        ETH_P_IPV6 => forward_ipv6(ctx, ep),
        // A tag still in the data (no VLAN offload on the way): just as forged.
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::DropVlanMismatch),
        // Nothing else is routed; the kernel drops what it has no handler for.
        _ => Ok(Verdict::pass(Reason::PassStack)),
    }
}

/// ARP from a pod is only ever for its link-local gateway, which the host-side veth
/// owns, so the kernel answers it. We only make sure the pod speaks for itself
/// (RFC 5227 probes use sender IP 0.0.0.0).
#[inline(always)]
fn check_arp(ctx: &TcContext, ep: &LocalPod) -> Result<Verdict, Reason> {
    let arp: *const ArpHdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: `ptr_at` checked bounds.
    let (sha, spa) = unsafe { ((*arp).sha, (*arp).spa) };
    let ip_ok = (ep.flags & flags::HAS_V4 != 0 && spa == ep.ipv4) || spa == [0; 4];
    if sha != ep.mac || !ip_ok {
        return Err(Reason::DropSpoofArp);
    }
    Ok(Verdict::pass(Reason::PassStack))
}

#[inline(always)]
fn forward_ipv4(ctx: &TcContext, ep: &LocalPod) -> Result<Verdict, Reason> {
    let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: `ptr_at` checked bounds.
    let (src, dst) = unsafe { ((*ip).src, (*ip).dst) };
    if ep.flags & flags::HAS_V4 == 0 || src != ep.ipv4 {
        return Err(Reason::DropSpoofIp);
    }
    // The gateway itself and other link-local destinations belong to the host.
    if dst == GATEWAY_V4 || (dst[0] == 169 && dst[1] == 254) {
        return Ok(Verdict::pass(Reason::PassStack));
    }
    forward(ctx, ep, &ep.subnet_v4, &IpKey::v4(dst), Family::V4)
}

#[inline(always)]
fn forward_ipv6(ctx: &TcContext, ep: &LocalPod) -> Result<Verdict, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
    // SAFETY: `ptr_at` checked bounds.
    let (src, dst) = unsafe { ((*ip).src, (*ip).dst) };
    // Neighbour discovery with the gateway (fe80::1) and DAD use link-local or
    // unspecified sources; the kernel handles those on the veth and never routes them.
    if is_v6_link_local(&src) || is_v6_unspecified(&src) {
        if is_v6_link_local(&dst) || is_v6_multicast(&dst) {
            return Ok(Verdict::pass(Reason::PassStack));
        }
        return Err(Reason::DropSpoofIp);
    }
    if ep.flags & flags::HAS_V6 == 0 || src != ep.ipv6 {
        return Err(Reason::DropSpoofIp);
    }
    if is_v6_link_local(&dst) || is_v6_multicast(&dst) {
        return Ok(Verdict::pass(Reason::PassStack));
    }
    forward(ctx, ep, &ep.subnet_v6, &IpKey::v6(dst), Family::V6)
}

#[inline(always)]
fn forward(
    ctx: &TcContext,
    pod: &LocalPod,
    subnet: &PodSubnet,
    dst: &IpKey,
    family: Family,
) -> Result<Verdict, Reason> {
    let underlay = pod.flags & flags::UNDERLAY != 0;
    match maps::endpoint(dst) {
        Some(peer) if peer.flags & flags::LOCAL != 0 => forward::deliver_local(ctx, peer, family),
        Some(remote) => {
            let cfg = maps::config()?;
            if underlay && remote.flags & flags::UNDERLAY != 0 {
                forward::to_vlan(ctx, cfg, subnet, dst, Some(remote), family)
            } else {
                // Overlay sender, or overlay receiver: the overlay carries it, with
                // the sender's own IP (the hybrid identity).
                forward::to_vxlan(ctx, cfg, remote, family)
            }
        }
        None if underlay => {
            let cfg = maps::config()?;
            forward::to_vlan(ctx, cfg, subnet, dst, None, family)
        }
        // Overlay pod to outside the cluster: the stack routes and masquerades it.
        None => Ok(Verdict::pass(Reason::PassStack)),
    }
}
