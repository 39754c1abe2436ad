//! XDP pre-stage on the uplink: drops what no local pod can want before the kernel
//! allocates an skb, and counts everything else through to TC.
//!
//! - an 802.1Q frame for a VLAN this node serves no subnet on;
//! - VXLAN (UDP 4789) from an address that is not one of the cluster's VTEPs.
//!
//! NICs and veth may strip the tag into metadata before XDP (rx VLAN offload); such
//! frames look untagged here and are checked by `rama_uplink_in` instead.
use aya_ebpf::programs::XdpContext;
use rama_common::{ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IpKey, VXLAN_PORT, counters::Reason};

use crate::{
    maps,
    packet::{ETH_LEN, EthHdr, IPPROTO_UDP, IPV6_LEN, Ipv4Hdr, Ipv6Hdr, UdpHdr, ptr_at},
};

#[inline(always)]
pub fn try_uplink_xdp(ctx: &XdpContext) -> Result<Reason, Reason> {
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: `ptr_at` checked bounds.
    let proto = unsafe { u16::from_be_bytes((*eth).proto_be) };
    match proto {
        ETH_P_8021Q => {
            let tci: *const [u8; 2] = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: `ptr_at` checked bounds.
            let vlan = u16::from_be_bytes(unsafe { *tci }) & 0x0fff;
            if !maps::serves_vlan(vlan) {
                return Err(Reason::DropVlanUnknown);
            }
        }
        ETH_P_IP => {
            let ip: *const Ipv4Hdr = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: `ptr_at` checked bounds.
            let (ihl, proto, src) = unsafe {
                (
                    usize::from((*ip).version_ihl & 0x0f) * 4,
                    (*ip).proto,
                    (*ip).src,
                )
            };
            if proto == IPPROTO_UDP && ihl >= 20 && is_vxlan(ctx, ETH_LEN + ihl)? {
                vtep_check(&IpKey::v4(src))?;
            }
        }
        ETH_P_IPV6 => {
            let ip: *const Ipv6Hdr = ptr_at(ctx, ETH_LEN)?;
            // SAFETY: `ptr_at` checked bounds.
            let (next, src) = unsafe { ((*ip).next_header, (*ip).src) };
            if next == IPPROTO_UDP && is_vxlan(ctx, ETH_LEN + IPV6_LEN)? {
                vtep_check(&IpKey::v6(src))?;
            }
        }
        _ => {}
    }
    Ok(Reason::PassStack)
}

#[inline(always)]
fn is_vxlan(ctx: &XdpContext, udp_offset: usize) -> Result<bool, Reason> {
    // IPv4 options make the offset variable; bound it for the verifier (ihl ≤ 15).
    if udp_offset > ETH_LEN + 60 {
        return Err(Reason::DropMalformed);
    }
    let udp: *const UdpHdr = ptr_at(ctx, udp_offset)?;
    // SAFETY: `ptr_at` checked bounds.
    Ok(u16::from_be_bytes(unsafe { (*udp).dst_port_be }) == VXLAN_PORT)
}

#[inline(always)]
fn vtep_check(src: &IpKey) -> Result<(), Reason> {
    if maps::is_vtep(src) {
        Ok(())
    } else {
        Err(Reason::DropVtepUnknown)
    }
}
