//! ARP requests and IPv6 neighbour solicitations sent on an underlay VLAN through a
//! packet socket, to resolve a subnet's physical gateway in eBPF mode (where no kernel
//! device terminates the VLAN). The answers are learned by `rama_uplink_in` into
//! RAMA_NEIGH; this module only sends.
use std::net::{IpAddr, Ipv6Addr};

use rama_common::{ETH_P_8021Q, ETH_P_ARP, ETH_P_IPV6};

use crate::{Error, Result, state::MacAddr};

/// Builds an 802.1Q-tagged ARP request for `target` (RFC 826; sender 0.0.0.0 is an
/// RFC 5227 probe, which Linux and routers answer).
pub fn arp_request(src_mac: MacAddr, vlan: u16, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(46);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    f.extend_from_slice(&vlan.to_be_bytes());
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// Builds an 802.1Q-tagged neighbour solicitation for `target` to its solicited-node
/// multicast group (RFC 4861 §7.2.2), from `sender` with our MAC as source option.
pub fn neighbour_solicitation(
    src_mac: MacAddr,
    vlan: u16,
    sender: Ipv6Addr,
    target: Ipv6Addr,
) -> Vec<u8> {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    icmp.extend_from_slice(&[1, 1]);
    icmp.extend_from_slice(&src_mac.0);
    let csum = icmpv6_checksum(&sender, &group, &icmp);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());

    let mut f = Vec::with_capacity(90);
    f.extend_from_slice(&[0x33, 0x33, 0xff, t[13], t[14], t[15]]);
    f.extend_from_slice(&src_mac.0);
    f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    f.extend_from_slice(&vlan.to_be_bytes());
    f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&group.octets());
    f.extend_from_slice(&icmp);
    f
}

/// RFC 4443 §2.3 checksum over the RFC 8200 §8.1 pseudo-header.
pub fn icmpv6_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, msg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |b| u32::from(*b));
            sum += hi | lo;
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&(msg.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(msg);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one probe for `gateway` on `vlan` out of the uplink.
pub fn send(
    ifindex: u32,
    src_mac: MacAddr,
    vlan: u16,
    gateway: IpAddr,
    sender: Option<IpAddr>,
) -> Result<()> {
    let frame = match gateway {
        IpAddr::V4(gw) => {
            let from = match sender {
                Some(IpAddr::V4(a)) => a.octets(),
                _ => [0; 4],
            };
            arp_request(src_mac, vlan, from, gw.octets())
        }
        IpAddr::V6(gw) => {
            let Some(IpAddr::V6(from)) = sender else {
                // An unspecified source may not carry the link-layer option (RFC 4861
                // §4.3), and the answer would be multicast; wait for a local pod.
                return Ok(());
            };
            neighbour_solicitation(src_mac, vlan, from, gw)
        }
    };
    send_frame(ifindex, &frame)
}

fn send_frame(ifindex: u32, frame: &[u8]) -> Result<()> {
    // SAFETY: plain socket(2); the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(Error::io(
            "opening a packet socket",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: an all-zero sockaddr_ll is valid; we fill the fields sendto needs.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and addr outlive the call; lengths are theirs.
    let rc = unsafe {
        libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(Error::io(
            format!("sending a probe on link #{ifindex}"),
            err,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_request_is_tagged_and_well_formed() {
        let f = arp_request(
            MacAddr([2, 0, 0, 0, 0, 1]),
            100,
            [10, 100, 0, 5],
            [10, 100, 0, 1],
        );
        assert_eq!(f.len(), 46);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 100]);
        assert_eq!(&f[16..18], &[0x08, 0x06]);
        assert_eq!(&f[26..32], &[2, 0, 0, 0, 0, 1], "sender MAC");
        assert_eq!(&f[42..46], &[10, 100, 0, 1]);
    }

    #[test]
    fn neighbour_solicitation_checksum_verifies() {
        let sender: Ipv6Addr = "fd00:100::5".parse().expect("ip");
        let target: Ipv6Addr = "fd00:100::1".parse().expect("ip");
        let f = neighbour_solicitation(MacAddr([2, 0, 0, 0, 0, 1]), 100, sender, target);
        assert_eq!(&f[..6], &[0x33, 0x33, 0xff, 0, 0, 1]);
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&f[18 + 24..18 + 40]).expect("16 bytes"));
        assert_eq!(dst, "ff02::1:ff00:1".parse::<Ipv6Addr>().expect("ip"));
        // A correct checksum makes the sum over the whole message come out as zero.
        assert_eq!(icmpv6_checksum(&sender, &dst, &f[58..]), 0);
    }
}
