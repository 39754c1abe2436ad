//! Forwarding decisions shared by the programs: deliver to a local pod, send tagged on
//! the uplink, or encapsulate to a remote VTEP. Each rewrites the Ethernet header as a
//! router would and decrements the TTL/hop limit (RFC 1812 §5.3.1, RFC 8200 §3), so a
//! packet forwarded by eBPF looks exactly like one the fallback's kernel routing made.
use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_tunnel_key},
    helpers::generated::{
        bpf_redirect, bpf_redirect_peer, bpf_skb_set_tunnel_key, bpf_skb_vlan_push,
    },
    programs::TcContext,
};
use rama_common::{ETH_P_8021Q, Endpoint, IpKey, NodeConfig, PodSubnet, counters::Reason, flags};

use crate::{
    Verdict, maps,
    packet::{ETH_LEN, EthHdr, Ipv4Hdr, Ipv6Hdr, csum_replace2, ptr_at},
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Size of `bpf_tunnel_key` up to (not including) `tunnel_label`: the layout every
/// kernel since 4.x accepts (net/core/filter.c, bpf_skb_set_tunnel_key's size check).
pub const TUNNEL_KEY_SIZE: u32 = 28;

/// Decrements the TTL/hop limit in place. `false` when the packet must not be
/// forwarded (it would expire): the caller hands it to the stack, which sends the ICMP
/// time-exceeded a router owes the sender.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext, family: Family) -> Result<bool, Reason> {
    match family {
        Family::V4 => {
            let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: `ptr_at` checked the whole header is inside the packet.
            unsafe {
                let ttl = (*ip).ttl;
                if ttl <= 1 {
                    return Ok(false);
                }
                let proto = (*ip).proto;
                (*ip).check = csum_replace2((*ip).check, [ttl, proto], [ttl - 1, proto]);
                (*ip).ttl = ttl - 1;
            }
        }
        Family::V6 => {
            let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: as above.
            unsafe {
                let hops = (*ip).hop_limit;
                if hops <= 1 {
                    return Ok(false);
                }
                (*ip).hop_limit = hops - 1;
            }
        }
    }
    Ok(true)
}

#[inline(always)]
fn set_macs(ctx: &TcContext, src: [u8; 6], dst: [u8; 6]) -> Result<(), Reason> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked bounds.
    unsafe {
        (*eth).src = src;
        (*eth).dst = dst;
    }
    Ok(())
}

/// Delivers to a pod on this node, straight into its namespace (bpf_redirect_peer,
/// kernel 5.10+, only valid from TC ingress: every Rama TC hook is an ingress hook).
#[inline(always)]
pub fn deliver_local(ctx: &TcContext, ep: &Endpoint, family: Family) -> Result<Verdict, Reason> {
    if !decrement_ttl(ctx, family)? {
        return Ok(Verdict::pass(Reason::TtlExpired));
    }
    set_macs(ctx, ep.host_mac, ep.mac)?;
    // SAFETY: plain helper call.
    let ret = unsafe { bpf_redirect_peer(ep.ifindex, 0) };
    redirected(ret, Reason::RedirectLocal)
}

#[inline(always)]
fn redirected(ret: i64, reason: Reason) -> Result<Verdict, Reason> {
    if ret == i64::from(TC_ACT_REDIRECT) {
        Ok(Verdict {
            reason,
            action: TC_ACT_REDIRECT,
        })
    } else {
        Err(Reason::DropHelper)
    }
}

/// Sends an underlay pod's packet on its subnet's VLAN: to the node that hosts the
/// destination pod when it is in the same subnet, to a learned neighbour in that
/// subnet, else to the subnet's physical gateway.
#[inline(always)]
pub fn to_vlan(
    ctx: &TcContext,
    cfg: &NodeConfig,
    subnet: &PodSubnet,
    dst: &IpKey,
    remote: Option<&Endpoint>,
    family: Family,
) -> Result<Verdict, Reason> {
    let next_hop = match remote {
        Some(remote) if remote.subnet_id == subnet.id => Some(remote.node_mac),
        _ => {
            let on_link = dst.in_prefix(&subnet.prefix, subnet.prefix_len);
            match maps::neighbour(dst, subnet.vlan) {
                Some(neigh) if on_link => Some(neigh.mac),
                _ if subnet.flags & flags::GATEWAY_MAC_KNOWN != 0 => Some(subnet.gateway_mac),
                _ => None,
            }
        }
    };
    let Some(next_hop) = next_hop else {
        return Ok(Verdict::pass(Reason::NeighMiss));
    };
    if !decrement_ttl(ctx, family)? {
        return Ok(Verdict::pass(Reason::TtlExpired));
    }
    set_macs(ctx, cfg.uplink_mac, next_hop)?;
    // SAFETY: plain helper calls on this program's skb.
    unsafe {
        if bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), subnet.vlan) != 0 {
            return Err(Reason::DropHelper);
        }
        redirected(bpf_redirect(cfg.uplink_ifindex, 0), Reason::RedirectVlan)
    }
}

/// Encapsulates towards the node that hosts `remote`: the tunnel key names the remote
/// VTEP and the overlay VNI, and the collect-metadata VXLAN device does the rest.
#[inline(always)]
pub fn to_vxlan(
    ctx: &TcContext,
    cfg: &NodeConfig,
    remote: &Endpoint,
    family: Family,
) -> Result<Verdict, Reason> {
    if cfg.vxlan_ifindex == 0 {
        return Ok(Verdict::pass(Reason::PassStack));
    }
    if !decrement_ttl(ctx, family)? {
        return Ok(Verdict::pass(Reason::TtlExpired));
    }
    set_macs(ctx, cfg.vtep_mac, remote.vtep_mac)?;
    // SAFETY: an all-zero bpf_tunnel_key is valid.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = cfg.vni;
    key.tunnel_ttl = 64;
    let mut tunnel_flags = 0u64;
    if remote.flags & flags::VTEP_V6 != 0 {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            let b = &remote.vtep[i * 4..i * 4 + 4];
            // The helper copies the IPv6 address bytes as they are (network order).
            words[i] = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            i += 1;
        }
        key.__bindgen_anon_1.remote_ipv6 = words;
        tunnel_flags |= u64::from(aya_ebpf::bindings::BPF_F_TUNINFO_IPV6);
    } else {
        // RFC 7348 §5: the outer UDP checksum SHOULD be zero over IPv4 (the inner
        // frame has its own); the fallback's VXLAN device is set up the same way.
        // Over IPv6 a checksum is required (RFC 8200 §8.1), so it stays on there.
        tunnel_flags |= u64::from(aya_ebpf::bindings::BPF_F_ZERO_CSUM_TX);
        // The helper takes the IPv4 address in host order and converts it itself.
        let v = &remote.vtep;
        key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes([v[12], v[13], v[14], v[15]]);
    }
    // SAFETY: the key lives on the stack for the duration of the call.
    unsafe {
        if bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            &mut key as *mut _,
            TUNNEL_KEY_SIZE,
            tunnel_flags,
        ) != 0
        {
            return Err(Reason::DropHelper);
        }
        redirected(bpf_redirect(cfg.vxlan_ifindex, 0), Reason::RedirectVxlan)
    }
}
