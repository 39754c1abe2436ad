//! The uplink (TC ingress): 802.1Q-tagged frames from the physical network.
//!
//! On TC ingress the kernel has already moved the tag into the skb's metadata
//! (`__netif_receive_skb_core` → `skb_vlan_untag`), so the frame starts with the inner
//! Ethernet header and the VLAN id is `vlan_tci`. Untagged traffic is the node's own
//! (including VXLAN, which the VXLAN device decapsulates) and goes to the stack.
//!
//! This program is also the ARP and IPv6 ND responder for local underlay pods on their
//! VLAN: no kernel device terminates the VLAN in eBPF mode, so nothing else could
//! answer the physical gateway. It answers with the uplink's MAC, as the fallback's
//! proxy ARP/NDP on the VLAN sub-interface does, so both modes look the same on the wire.
use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::generated::{bpf_redirect, bpf_skb_change_tail, bpf_skb_vlan_pop},
    programs::TcContext,
};
use rama_common::{
    ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Endpoint, IpKey, counters::Reason, flags,
};

use crate::{
    Verdict,
    forward::{self, Family},
    maps,
    packet::{
        ARP_REPLY, ARP_REQUEST, ArpHdr, ETH_LEN, EthHdr, IPPROTO_ICMPV6, IPV6_LEN, Ipv4Hdr,
        Ipv6Hdr, ND_NEIGHBOR_ADVERT, ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LLADDR,
        ND_OPT_TARGET_LLADDR, NdMsg, is_v6_unspecified, ptr_at,
    },
};

/// Length of a neighbour advertisement frame with one target link-layer option.
const NA_FRAME_LEN: usize = ETH_LEN + IPV6_LEN + core::mem::size_of::<NdMsg>();
/// An 802.1Q tag in the frame data (IEEE 802.1Q §9.3: TPID + TCI).
const VLAN_TAG_LEN: usize = 4;

#[inline(always)]
pub fn try_uplink_ingress(ctx: &TcContext) -> Result<Verdict, Reason> {
    // SAFETY: reading context fields TC programs may read.
    let (vlan_present, tci, ifindex) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).vlan_present, (*skb).vlan_tci, (*skb).ifindex)
    };
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked bounds.
    let outer = unsafe { u16::from_be_bytes((*eth).proto_be) };
    // The tag is normally in the skb metadata; a frame that still carries it in its
    // data (a device without VLAN offload on the way, or BPF_PROG_TEST_RUN) is handled
    // the same way with the headers 4 bytes further in.
    let (vlan, tag_len) = if vlan_present != 0 {
        ((tci & 0x0fff) as u16, 0)
    } else if outer == ETH_P_8021Q {
        let vlan_tci: *const [u8; 2] = ptr_at(ctx, ETH_LEN)?;
        // SAFETY: `ptr_at` checked bounds.
        (
            u16::from_be_bytes(unsafe { *vlan_tci }) & 0x0fff,
            VLAN_TAG_LEN,
        )
    } else {
        return Ok(Verdict::pass(Reason::PassStack));
    };
    // Frames for a VLAN no subnet here uses: the XDP pre-filter drops them earlier
    // where it runs; here they are dropped (and counted) in any case.
    if !maps::serves_vlan(vlan) {
        return Err(Reason::DropVlanUnknown);
    }
    let proto: *const [u8; 2] = ptr_at(ctx, ETH_LEN - 2 + tag_len)?;
    // SAFETY: `ptr_at` checked bounds.
    let proto = u16::from_be_bytes(unsafe { *proto });
    let l3 = ETH_LEN + tag_len;
    match proto {
        ETH_P_ARP => arp(ctx, vlan, ifindex, l3),
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, l3)?;
            // SAFETY: `ptr_at` checked bounds.
            let dst = IpKey::v4(unsafe { (*ip).dst });
            deliver(ctx, vlan, &dst, Family::V4)
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
            // SAFETY: `ptr_at` checked bounds.
            let (next, dst) = unsafe { ((*ip).next_header, (*ip).dst) };
            if next == IPPROTO_ICMPV6 {
                let nd: *const NdMsg = ptr_at(ctx, l3 + IPV6_LEN)?;
                // SAFETY: `ptr_at` checked bounds.
                let (icmp_type, target, opt_type, opt_mac) =
                    unsafe { ((*nd).icmp_type, (*nd).target, (*nd).opt_type, (*nd).opt_mac) };
                if icmp_type == ND_NEIGHBOR_SOLICIT {
                    return neighbour_solicitation(ctx, vlan, ifindex, l3);
                }
                if icmp_type == ND_NEIGHBOR_ADVERT && opt_type == ND_OPT_TARGET_LLADDR {
                    // Answers to the agent's own solicitations (gateway resolution).
                    maps::learn_neighbour(&IpKey::v6(target), vlan, opt_mac);
                }
            }
            deliver(ctx, vlan, &IpKey::v6(dst), Family::V6)
        }
        _ => Ok(Verdict::pass(Reason::PassStack)),
    }
}

/// The local underlay endpoint that owns `addr` on `vlan`, if any. A pod is only
/// reachable on its own subnet's VLAN; the same IP seen on another VLAN is not ours.
#[inline(always)]
fn local_on_vlan(addr: &IpKey, vlan: u16) -> Result<Option<&'static Endpoint>, Reason> {
    let Some(ep) = maps::local_endpoint(addr) else {
        return Ok(None);
    };
    if ep.flags & flags::UNDERLAY == 0 {
        return Ok(None);
    }
    if ep.vlan == vlan {
        Ok(Some(ep))
    } else {
        Err(Reason::DropVlanMismatch)
    }
}

#[inline(always)]
fn deliver(ctx: &TcContext, vlan: u16, dst: &IpKey, family: Family) -> Result<Verdict, Reason> {
    let Some(ep) = local_on_vlan(dst, vlan)? else {
        return Ok(Verdict::pass(Reason::PassStack));
    };
    // SAFETY: plain helper call; with the tag in metadata this moves no data.
    if unsafe { bpf_skb_vlan_pop(ctx.skb.skb) } != 0 {
        return Err(Reason::DropHelper);
    }
    forward::deliver_local(ctx, ep, family)
}

#[inline(always)]
fn arp(ctx: &TcContext, vlan: u16, ifindex: u32, l3: usize) -> Result<Verdict, Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let arp: *mut ArpHdr = ptr_at(ctx, l3)?;
    // SAFETY: `ptr_at` checked bounds for both headers; all writes stay inside them.
    unsafe {
        let valid = u16::from_be_bytes((*arp).htype_be) == 1
            && u16::from_be_bytes((*arp).ptype_be) == ETH_P_IP
            && (*arp).hlen == 6
            && (*arp).plen == 4;
        if !valid {
            return Err(Reason::DropMalformed);
        }
        let op = u16::from_be_bytes((*arp).op_be);
        let (sha, spa, tpa) = ((*arp).sha, (*arp).spa, (*arp).tpa);
        if spa != [0; 4] {
            // Requests and replies both tell us where the sender lives on this VLAN.
            maps::learn_neighbour(&IpKey::v4(spa), vlan, sha);
        }
        if op != ARP_REQUEST {
            return Ok(Verdict::pass(Reason::PassStack));
        }
        if local_on_vlan(&IpKey::v4(tpa), vlan)?.is_none() {
            return Ok(Verdict::pass(Reason::PassStack));
        }
        let cfg = maps::config()?;
        (*eth).dst = (*eth).src;
        (*eth).src = cfg.uplink_mac;
        (*arp).op_be = ARP_REPLY.to_be_bytes();
        (*arp).tha = sha;
        (*arp).tpa = spa;
        (*arp).sha = cfg.uplink_mac;
        (*arp).spa = tpa;
        // Back out of the uplink; the VLAN tag is still in the skb metadata.
        reply_on(ifindex, Reason::ArpReply)
    }
}

#[inline(always)]
fn reply_on(ifindex: u32, reason: Reason) -> Result<Verdict, Reason> {
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect(ifindex, 0) };
    if ret == i64::from(TC_ACT_REDIRECT) {
        Ok(Verdict {
            reason,
            action: TC_ACT_REDIRECT,
        })
    } else {
        Err(Reason::DropHelper)
    }
}

/// Answers a neighbour solicitation (RFC 4861 §7.2.4) for a local underlay pod with a
/// solicited, override advertisement carrying the uplink's MAC.
#[inline(always)]
fn neighbour_solicitation(
    ctx: &TcContext,
    vlan: u16,
    ifindex: u32,
    l3: usize,
) -> Result<Verdict, Reason> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3)?;
    let nd: *const NdMsg = ptr_at(ctx, l3 + IPV6_LEN)?;
    // SAFETY: `ptr_at` checked bounds.
    let (src, hop_limit, target, opt_type, opt_mac) = unsafe {
        (
            (*ip).src,
            (*ip).hop_limit,
            (*nd).target,
            (*nd).opt_type,
            (*nd).opt_mac,
        )
    };
    // RFC 4861 §7.1.1: a valid NS has hop limit 255. DAD probes (unspecified source)
    // are left alone: the address is ours, and the stack stays silent on the VLAN.
    if hop_limit != 255 || is_v6_unspecified(&src) || opt_type != ND_OPT_SOURCE_LLADDR {
        return Ok(Verdict::pass(Reason::PassStack));
    }
    maps::learn_neighbour(&IpKey::v6(src), vlan, opt_mac);
    if local_on_vlan(&IpKey::v6(target), vlan)?.is_none() {
        return Ok(Verdict::pass(Reason::PassStack));
    }
    let cfg = maps::config()?;
    let frame_len = (NA_FRAME_LEN + l3 - ETH_LEN) as u32;
    if ctx.len() != frame_len {
        // Trailing options or padding: trim to exactly our advertisement.
        // SAFETY: plain helper call; packet pointers are re-derived below.
        if unsafe { bpf_skb_change_tail(ctx.skb.skb, frame_len, 0) } != 0 {
            return Err(Reason::DropHelper);
        }
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3)?;
    let nd: *mut NdMsg = ptr_at(ctx, l3 + IPV6_LEN)?;
    // SAFETY: `ptr_at` checked bounds; all writes stay inside the three headers.
    unsafe {
        (*eth).dst = (*eth).src;
        (*eth).src = cfg.uplink_mac;
        (*ip).payload_len_be = (core::mem::size_of::<NdMsg>() as u16).to_be_bytes();
        (*ip).hop_limit = 255;
        (*ip).dst = src;
        (*ip).src = target;
        (*nd).icmp_type = ND_NEIGHBOR_ADVERT;
        (*nd).code = 0;
        (*nd).check = [0; 2];
        // Solicited + Override (RFC 4861 §4.4).
        (*nd).flags = [0x60, 0, 0, 0];
        (*nd).opt_type = ND_OPT_TARGET_LLADDR;
        (*nd).opt_len = 1;
        (*nd).opt_mac = cfg.uplink_mac;
        (*nd).check = icmpv6_checksum(&target, &src, &*nd);
    }
    reply_on(ifindex, Reason::NdReply)
}

/// The ICMPv6 checksum (RFC 4443 §2.3) of a neighbour message over the RFC 8200 §8.1
/// pseudo-header, computed from copies so the verifier sees fixed-size reads.
#[inline(always)]
fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], msg: &NdMsg) -> [u8; 2] {
    let len = core::mem::size_of::<NdMsg>() as u32;
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 16 {
        sum += u32::from(u16::from_be_bytes([src[i], src[i + 1]]));
        sum += u32::from(u16::from_be_bytes([dst[i], dst[i + 1]]));
        i += 2;
    }
    sum += len + u32::from(IPPROTO_ICMPV6);
    sum += u32::from(u16::from_be_bytes([msg.icmp_type, msg.code]));
    sum += u32::from(u16::from_be_bytes(msg.check));
    sum += u32::from(u16::from_be_bytes([msg.flags[0], msg.flags[1]]));
    sum += u32::from(u16::from_be_bytes([msg.flags[2], msg.flags[3]]));
    let mut i = 0;
    while i < 16 {
        sum += u32::from(u16::from_be_bytes([msg.target[i], msg.target[i + 1]]));
        i += 2;
    }
    sum += u32::from(u16::from_be_bytes([msg.opt_type, msg.opt_len]));
    let mut i = 0;
    while i < 6 {
        sum += u32::from(u16::from_be_bytes([msg.opt_mac[i], msg.opt_mac[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    (!(sum as u16)).to_be_bytes()
}
