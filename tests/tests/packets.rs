//! Every datapath decision on crafted frames, run in the kernel with
//! BPF_PROG_TEST_RUN: verdict, rewritten headers and the counter it lands in.
//!
//! The 802.1Q tag pushed by `rama_pod_egress` and the VXLAN tunnel key live in skb
//! metadata that BPF_PROG_TEST_RUN does not return; the connectivity matrix proves
//! those on real packets (the router's VLAN ports accept only correctly tagged frames,
//! and the remote VXLAN ingress checks the sending VTEP and VNI).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rama_common::names;
use rama_tests::{
    frames::{self, checksum, icmpv6_checksum, mac},
    require_root,
    single_node::{
        GW100_MAC, N2_UPLINK_MAC, N2_VTEP_MAC, P1_MAC, P2_MAC, UPLINK_MAC, VTEP_MAC, with_node,
    },
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().expect("v4"))
}
fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("v6"))
}

/// A frame from pod p1 (its own MAC, to its gateway's MAC) from `src` to `dst`.
fn from_p1(host_mac: [u8; 6], src: IpAddr, dst: IpAddr, ttl: u8) -> Vec<u8> {
    frames::udp(host_mac, mac(P1_MAC), None, src, dst, 5000, ttl)
}

fn dst_mac(f: &[u8]) -> [u8; 6] {
    f[0..6].try_into().expect("6")
}
fn src_mac(f: &[u8]) -> [u8; 6] {
    f[6..12].try_into().expect("6")
}

#[test]
fn pod_egress_forwarding_decisions() {
    require_root!();
    with_node("pk", |n| {
        let (p1, hm) = (n.p1, n.p1_host_mac);
        for (src, dst_local, dst_vlan_peer, dst_routed, dst_overlay) in [
            (
                v4("10.100.0.10"),
                v4("10.244.0.10"),
                v4("10.100.0.20"),
                v4("10.200.0.5"),
                v4("10.244.0.20"),
            ),
            (
                v6("fd00:100::10"),
                v6("fd00:244::10"),
                v6("fd00:100::20"),
                v6("2001:db8::5"),
                v6("fd00:244::20"),
            ),
        ] {
            // Same node: straight to the peer pod, MACs of its veth pair, TTL − 1.
            let before = n.count("pod_egress", "redirect_local");
            let out = n
                .run_tc(names::PROG_POD_EGRESS, p1, &from_p1(hm, src, dst_local, 64))
                .expect("run");
            assert_eq!(out.retval, TC_ACT_REDIRECT, "{src} → {dst_local}");
            assert_eq!(dst_mac(&out.data), mac(P2_MAC));
            assert_eq!(src_mac(&out.data), n.p2_host_mac);
            if src.is_ipv4() {
                assert_eq!(out.data[14 + 8], 63, "TTL decremented");
                assert_eq!(
                    checksum(&out.data[14..34]),
                    0,
                    "IPv4 header checksum still valid"
                );
            } else {
                assert_eq!(out.data[14 + 7], 63, "hop limit decremented");
            }
            assert_eq!(n.count("pod_egress", "redirect_local"), before + 1);

            // Underlay peer in the same subnet on another node: to that node's uplink.
            let before = n.count("pod_egress", "redirect_vlan");
            let out = n
                .run_tc(
                    names::PROG_POD_EGRESS,
                    p1,
                    &from_p1(hm, src, dst_vlan_peer, 64),
                )
                .expect("run");
            assert_eq!(out.retval, TC_ACT_REDIRECT);
            assert_eq!(dst_mac(&out.data), mac(N2_UPLINK_MAC));
            assert_eq!(src_mac(&out.data), mac(UPLINK_MAC));
            // Anything else an underlay pod sends goes to its VLAN's physical gateway.
            let out = n
                .run_tc(
                    names::PROG_POD_EGRESS,
                    p1,
                    &from_p1(hm, src, dst_routed, 64),
                )
                .expect("run");
            assert_eq!(out.retval, TC_ACT_REDIRECT);
            assert_eq!(dst_mac(&out.data), mac(GW100_MAC));
            assert_eq!(n.count("pod_egress", "redirect_vlan"), before + 2);

            // Underlay → remote overlay pod: through the overlay (hybrid identity),
            // inner MACs from VTEP to VTEP, the pod's own source address kept.
            let before = n.count("pod_egress", "redirect_vxlan");
            let frame = from_p1(hm, src, dst_overlay, 64);
            let out = n.run_tc(names::PROG_POD_EGRESS, p1, &frame).expect("run");
            assert_eq!(out.retval, TC_ACT_REDIRECT);
            assert_eq!(dst_mac(&out.data), mac(N2_VTEP_MAC));
            assert_eq!(src_mac(&out.data), mac(VTEP_MAC));
            let src_off = if src.is_ipv4() { 14 + 12 } else { 14 + 8 };
            assert_eq!(
                &out.data[src_off..src_off + 4],
                &frame[src_off..src_off + 4]
            );
            assert_eq!(n.count("pod_egress", "redirect_vxlan"), before + 1);

            // A packet that would expire is left to the stack (ICMP time exceeded).
            let before = n.count("pod_egress", "ttl_expired");
            let out = n
                .run_tc(names::PROG_POD_EGRESS, p1, &from_p1(hm, src, dst_local, 1))
                .expect("run");
            assert_eq!(out.retval, TC_ACT_OK);
            assert_eq!(n.count("pod_egress", "ttl_expired"), before + 1);
        }

        // Overlay pod to outside the cluster: the stack routes and masquerades it.
        let before = n.count("pod_egress", "pass_stack");
        let frame = frames::udp(
            n.p2_host_mac,
            mac(P2_MAC),
            None,
            v4("10.244.0.10"),
            v4("198.51.100.2"),
            53,
            64,
        );
        let out = n.run_tc(names::PROG_POD_EGRESS, n.p2, &frame).expect("run");
        assert_eq!(out.retval, TC_ACT_OK);
        assert_eq!(out.data, frame, "left untouched for the stack");
        assert_eq!(n.count("pod_egress", "pass_stack"), before + 1);
    })
    .expect("node");
}

#[test]
fn pod_egress_drops_spoofed_traffic() {
    require_root!();
    with_node("ps", |n| {
        let (p1, hm) = (n.p1, n.p1_host_mac);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "another pod's IPv4",
                from_p1(hm, v4("10.100.0.99"), v4("10.100.0.20"), 64),
                "spoofed_ip",
            ),
            (
                "another pod's IPv6",
                from_p1(hm, v6("fd00:100::99"), v6("fd00:100::20"), 64),
                "spoofed_ip",
            ),
            (
                "link-local source to a routed destination",
                from_p1(hm, v6("fe80::1234"), v6("fd00:100::20"), 64),
                "spoofed_ip",
            ),
            (
                "another MAC",
                frames::udp(
                    hm,
                    mac("02:66:66:66:66:66"),
                    None,
                    v4("10.100.0.10"),
                    v4("10.100.0.20"),
                    1,
                    64,
                ),
                "spoofed_mac",
            ),
            (
                "an ARP reply claiming another pod's IP",
                frames::arp(
                    hm,
                    mac(P1_MAC),
                    None,
                    2,
                    mac(P1_MAC),
                    "10.100.0.20".parse().expect("ip"),
                    "169.254.1.1".parse().expect("ip"),
                ),
                "spoofed_arp",
            ),
            (
                "an ARP with another sender MAC",
                frames::arp(
                    hm,
                    mac(P1_MAC),
                    None,
                    1,
                    mac("02:66:66:66:66:66"),
                    "10.100.0.10".parse().expect("ip"),
                    "169.254.1.1".parse().expect("ip"),
                ),
                "spoofed_arp",
            ),
            (
                "a forged 802.1Q tag",
                frames::udp(
                    hm,
                    mac(P1_MAC),
                    Some(200),
                    v4("10.100.0.10"),
                    v4("10.200.0.5"),
                    1,
                    64,
                ),
                "vlan_mismatch",
            ),
        ];
        for (what, frame, reason) in cases {
            let before = n.count("pod_egress", reason);
            let out = n.run_tc(names::PROG_POD_EGRESS, p1, &frame).expect("run");
            assert_eq!(out.retval, TC_ACT_SHOT, "{what} must be dropped");
            assert_eq!(
                n.count("pod_egress", reason),
                before + 1,
                "{what} counted as {reason}"
            );
        }
        // The pod's own ARP for its gateway goes to the kernel, which answers it.
        let arp = frames::arp(
            [0xff; 6],
            mac(P1_MAC),
            None,
            1,
            mac(P1_MAC),
            "10.100.0.10".parse().expect("ip"),
            "169.254.1.1".parse().expect("ip"),
        );
        assert_eq!(
            n.run_tc(names::PROG_POD_EGRESS, p1, &arp)
                .expect("run")
                .retval,
            TC_ACT_OK
        );
        // Traffic from a veth that is no endpoint (here: the uplink) is dropped.
        let before = n.count("pod_egress", "no_endpoint");
        let out = n
            .run_tc(
                names::PROG_POD_EGRESS,
                n.uplink,
                &from_p1(hm, v4("10.100.0.10"), v4("10.100.0.20"), 64),
            )
            .expect("run");
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(n.count("pod_egress", "no_endpoint"), before + 1);
    })
    .expect("node");
}

#[test]
fn uplink_answers_arp_and_nd_for_local_underlay_pods() {
    require_root!();
    with_node("pu", |n| {
        let gw_mac = mac(GW100_MAC);
        // ARP request from the gateway on VLAN 100 for pod p1.
        let req = frames::arp(
            [0xff; 6],
            gw_mac,
            Some(100),
            1,
            gw_mac,
            "10.100.0.1".parse().expect("ip"),
            "10.100.0.10".parse().expect("ip"),
        );
        let before = n.count("uplink_ingress", "arp_reply");
        let out = n
            .run_tc(names::PROG_UPLINK_INGRESS, n.uplink, &req)
            .expect("run");
        assert_eq!(
            out.retval, TC_ACT_REDIRECT,
            "the reply goes back out of the uplink"
        );
        let f = &out.data;
        assert_eq!(dst_mac(f), gw_mac);
        assert_eq!(src_mac(f), mac(UPLINK_MAC));
        assert_eq!(
            &f[12..16],
            &[0x81, 0x00, 0x00, 100],
            "still tagged for VLAN 100"
        );
        let arp = &f[18..];
        assert_eq!(&arp[6..8], &[0, 2], "an ARP reply");
        assert_eq!(
            &arp[8..14],
            &mac(UPLINK_MAC),
            "answered with the uplink's MAC"
        );
        assert_eq!(&arp[14..18], &[10, 100, 0, 10]);
        assert_eq!(&arp[18..24], &gw_mac);
        assert_eq!(&arp[24..28], &[10, 100, 0, 1]);
        assert_eq!(n.count("uplink_ingress", "arp_reply"), before + 1);

        // The same question on the wrong VLAN is not ours to answer.
        let wrong = frames::arp(
            [0xff; 6],
            gw_mac,
            Some(200),
            1,
            gw_mac,
            "10.100.0.1".parse().expect("ip"),
            "10.100.0.10".parse().expect("ip"),
        );
        let before = n.count("uplink_ingress", "vlan_mismatch");
        assert_eq!(
            n.run_tc(names::PROG_UPLINK_INGRESS, n.uplink, &wrong)
                .expect("run")
                .retval,
            TC_ACT_SHOT
        );
        assert_eq!(n.count("uplink_ingress", "vlan_mismatch"), before + 1);

        // A neighbour solicitation for p1's IPv6 address.
        let gw6: Ipv6Addr = "fd00:100::1".parse().expect("ip");
        let target: Ipv6Addr = "fd00:100::10".parse().expect("ip");
        let ns = frames::neighbour_solicitation(gw_mac, Some(100), gw6, target);
        let before = n.count("uplink_ingress", "nd_reply");
        let out = n
            .run_tc(names::PROG_UPLINK_INGRESS, n.uplink, &ns)
            .expect("run");
        assert_eq!(out.retval, TC_ACT_REDIRECT);
        let f = &out.data;
        assert_eq!(f.len(), 18 + 40 + 32);
        assert_eq!(dst_mac(f), gw_mac);
        assert_eq!(&f[12..16], &[0x81, 0x00, 0x00, 100]);
        let ip = &f[18..58];
        let (src, dst) = (
            Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16")),
            Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16")),
        );
        assert_eq!((src, dst), (target, gw6));
        assert_eq!(ip[7], 255, "hop limit 255 (RFC 4861 §7.1.2)");
        let msg = &f[58..];
        assert_eq!(msg[0], 136, "a neighbour advertisement");
        assert_eq!(msg[4], 0x60, "solicited + override");
        assert_eq!(&msg[8..24], &target.octets());
        assert_eq!(&msg[24..26], &[2, 1], "target link-layer option");
        assert_eq!(&msg[26..32], &mac(UPLINK_MAC));
        assert_eq!(
            icmpv6_checksum(src, dst, msg),
            0,
            "ICMPv6 checksum verifies"
        );
        assert_eq!(n.count("uplink_ingress", "nd_reply"), before + 1);

        // Tagged IP for p1: the tag comes off and the frame goes into the pod.
        for (src, dst) in [
            (v4("10.100.0.1"), v4("10.100.0.10")),
            (v6("fd00:100::1"), v6("fd00:100::10")),
        ] {
            let frame = frames::udp(mac(UPLINK_MAC), gw_mac, Some(100), src, dst, 80, 64);
            let before = n.count("uplink_ingress", "redirect_local");
            let out = n
                .run_tc(names::PROG_UPLINK_INGRESS, n.uplink, &frame)
                .expect("run");
            assert_eq!(out.retval, TC_ACT_REDIRECT);
            assert_eq!(out.data.len(), frame.len() - 4, "802.1Q tag removed");
            assert_eq!(dst_mac(&out.data), mac(P1_MAC));
            assert_eq!(src_mac(&out.data), n.p1_host_mac);
            assert_eq!(n.count("uplink_ingress", "redirect_local"), before + 1);
        }

        // Untagged traffic is the node's own.
        let frame = frames::udp(
            mac(UPLINK_MAC),
            gw_mac,
            None,
            v4("10.0.0.2"),
            v4("10.0.0.1"),
            80,
            64,
        );
        assert_eq!(
            n.run_tc(names::PROG_UPLINK_INGRESS, n.uplink, &frame)
                .expect("run")
                .retval,
            TC_ACT_OK
        );
    })
    .expect("node");
}

#[test]
fn uplink_xdp_prefilters_vlans_and_vteps() {
    require_root!();
    with_node("px", |n| {
        let gw = mac(GW100_MAC);
        let up = mac(UPLINK_MAC);
        let cases = [
            (
                "VLAN 300 is served by no subnet here",
                frames::udp(up, gw, Some(300), v4("10.3.0.1"), v4("10.3.0.2"), 80, 64),
                XDP_DROP,
                "vlan_unknown",
            ),
            (
                "VLAN 100 is ours",
                frames::udp(
                    up,
                    gw,
                    Some(100),
                    v4("10.100.0.1"),
                    v4("10.100.0.10"),
                    80,
                    64,
                ),
                XDP_PASS,
                "pass_stack",
            ),
            (
                "VXLAN from a host that is no VTEP",
                frames::udp(up, gw, None, v4("10.0.0.99"), v4("10.0.0.1"), 4789, 64),
                XDP_DROP,
                "vtep_unknown",
            ),
            (
                "VXLAN from node n2",
                frames::udp(up, gw, None, v4("10.0.0.2"), v4("10.0.0.1"), 4789, 64),
                XDP_PASS,
                "pass_stack",
            ),
            (
                "VXLAN over IPv6 from a stranger",
                frames::udp(up, gw, None, v6("fd00::99"), v6("fd00::1"), 4789, 64),
                XDP_DROP,
                "vtep_unknown",
            ),
        ];
        for (what, frame, verdict, reason) in cases {
            let before = n.count("uplink_xdp", reason);
            assert_eq!(n.run_xdp(&frame).expect("run").retval, verdict, "{what}");
            assert_eq!(
                n.count("uplink_xdp", reason),
                before + 1,
                "{what}: counted as {reason}"
            );
        }
        // A frame cut short inside its IP header is malformed.
        let mut short = frames::udp(up, gw, None, v4("10.0.0.2"), v4("10.0.0.1"), 4789, 64);
        short.truncate(20);
        let before = n.count("uplink_xdp", "malformed");
        assert_eq!(n.run_xdp(&short).expect("run").retval, XDP_DROP);
        assert_eq!(n.count("uplink_xdp", "malformed"), before + 1);
    })
    .expect("node");
}

#[test]
fn vxlan_ingress_refuses_frames_without_tunnel_metadata() {
    require_root!();
    with_node("pv", |n| {
        // Only the VXLAN device hands the program tunnel metadata; anything else (a
        // forged decapsulated frame) has none and is dropped.
        let frame = frames::udp(
            mac(VTEP_MAC),
            mac(N2_VTEP_MAC),
            None,
            v4("10.244.0.20"),
            v4("10.244.0.10"),
            80,
            64,
        );
        let before = n.count("vxlan_ingress", "malformed");
        let out = n
            .run_tc(names::PROG_VXLAN_INGRESS, n.uplink, &frame)
            .expect("run");
        assert_eq!(out.retval, TC_ACT_SHOT);
        assert_eq!(n.count("vxlan_ingress", "malformed"), before + 1);
    })
    .expect("node");
}
