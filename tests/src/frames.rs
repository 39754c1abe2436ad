//! Crafted Ethernet frames for BPF_PROG_TEST_RUN.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub type Mac = [u8; 6];

pub fn mac(s: &str) -> Mac {
    let mut m = [0u8; 6];
    for (i, part) in s.split(':').enumerate() {
        m[i] = u8::from_str_radix(part, 16).expect("hex MAC");
    }
    m
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in data.chunks(2) {
        sum += (u32::from(pair[0]) << 8) | u32::from(*pair.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: Mac, src: Mac, vlan: Option<u16>, proto: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&0x8100u16.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&proto.to_be_bytes());
    f
}

/// A UDP datagram (64-byte-ish frame) from `src` to `dst`, v4 or v6, with `ttl`.
pub fn udp(
    dst_mac: Mac,
    src_mac: Mac,
    vlan: Option<u16>,
    src: IpAddr,
    dst: IpAddr,
    dport: u16,
    ttl: u8,
) -> Vec<u8> {
    let payload = [0xabu8; 18];
    let udp_len = 8 + payload.len() as u16;
    let mut udp = Vec::new();
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(&payload);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut f = eth(dst_mac, src_mac, vlan, 0x0800);
            f.extend_from_slice(&ipv4_header(s, d, 17, ttl, udp.len()));
            f.extend_from_slice(&udp);
            f
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut f = eth(dst_mac, src_mac, vlan, 0x86dd);
            f.extend_from_slice(&ipv6_header(s, d, 17, ttl, udp.len()));
            f.extend_from_slice(&udp);
            f
        }
        _ => panic!("mixed families"),
    }
}

pub fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, payload: usize) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&((20 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, ttl, proto, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

pub fn ipv6_header(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hops: u8, payload: usize) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload as u16).to_be_bytes());
    h.push(next);
    h.push(hops);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    h
}

/// An ARP request (op 1) or reply (op 2).
pub fn arp(
    dst_mac: Mac,
    src_mac: Mac,
    vlan: Option<u16>,
    op: u16,
    sha: Mac,
    spa: Ipv4Addr,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut f = eth(dst_mac, src_mac, vlan, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sha);
    f.extend_from_slice(&spa.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&tpa.octets());
    f
}

/// The ICMPv6 checksum over the pseudo-header (RFC 8200 §8.1).
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 58]);
    pseudo.extend_from_slice(msg);
    checksum(&pseudo)
}

/// A neighbour solicitation for `target` with a source link-layer option.
pub fn neighbour_solicitation(
    src_mac: Mac,
    vlan: Option<u16>,
    src: Ipv6Addr,
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
    let mut msg = vec![135, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&t);
    msg.extend_from_slice(&[1, 1]);
    msg.extend_from_slice(&src_mac);
    let c = icmpv6_checksum(src, group, &msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = eth(
        [0x33, 0x33, 0xff, t[13], t[14], t[15]],
        src_mac,
        vlan,
        0x86dd,
    );
    f.extend_from_slice(&ipv6_header(src, group, 58, 255, msg.len()));
    f.extend_from_slice(&msg);
    f
}
