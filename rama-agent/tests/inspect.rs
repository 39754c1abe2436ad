//! Golden tests of `rama-agent inspect`'s output on a known node state: two local
//! pods (underlay VLAN 100, overlay), remote pods on another node in the same subnet,
//! another VLAN's subnet and the overlay, a learned gateway. The tables and traces
//! are compared with `tests/golden/`; `RAMA_BLESS=1` rewrites them after a
//! deliberate change (review the diff).
use std::net::IpAddr;

use rama_agent::{
    Error,
    dataplane::ebpf::CounterRow,
    inspect::{self, RawMaps, Snapshot},
};
use rama_common::{Endpoint, IpKey, LocalPod, NeighEntry, NeighKey, NodeConfig, PodSubnet, flags};

const UPLINK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const VTEP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const NODE2_UPLINK: [u8; 6] = [0x02, 0, 0, 0, 1, 0x01];
const NODE2_VTEP: [u8; 6] = [0x02, 0, 0, 0, 1, 0x02];
const GATEWAY_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x64];

fn v4(s: &str) -> IpKey {
    match s.parse::<IpAddr>().expect("address") {
        IpAddr::V4(a) => IpKey::v4(a.octets()),
        IpAddr::V6(a) => IpKey::v6(a.octets()),
    }
}

fn subnet(id: u32, prefix: &str, len: u32, vlan: u16, gateway: Option<[u8; 6]>) -> PodSubnet {
    PodSubnet {
        id,
        flags: if gateway.is_some() {
            flags::GATEWAY_MAC_KNOWN
        } else {
            0
        },
        prefix: v4(prefix).addr,
        prefix_len: len,
        vlan,
        gateway_mac: gateway.unwrap_or([0; 6]),
    }
}

fn local(fabric: u32, ifindex: u32, subnet_id: u32, vlan: u16, last: u8) -> Endpoint {
    Endpoint {
        flags: flags::LOCAL | fabric,
        ifindex,
        subnet_id,
        vlan,
        _pad: [0; 2],
        mac: [0x0a, 0x58, 0, 0, 0, last],
        host_mac: [0xee, 0xee, 0, 0, 0, last],
        vtep_mac: [0; 6],
        node_mac: [0; 6],
        vtep: [0; 16],
    }
}

fn remote(fabric: u32, subnet_id: u32, vlan: u16) -> Endpoint {
    Endpoint {
        flags: fabric,
        ifindex: 0,
        subnet_id,
        vlan,
        _pad: [0; 2],
        mac: [0; 6],
        host_mac: [0; 6],
        vtep_mac: NODE2_VTEP,
        node_mac: NODE2_UPLINK,
        vtep: v4("192.168.0.2").addr,
    }
}

fn known_node() -> Snapshot {
    let vlan100 = subnet(1, "10.100.0.0", 24, 100, Some(GATEWAY_MAC));
    let vlan100_v6 = subnet(4, "fd00:100::", 64, 100, Some(GATEWAY_MAC));
    let overlay = subnet(3, "10.200.0.0", 16, 0, None);
    let raw = RawMaps {
        config: Some(NodeConfig {
            uplink_ifindex: 2,
            vxlan_ifindex: 5,
            vni: 4096,
            flags: 0,
            uplink_mac: UPLINK_MAC,
            vtep_mac: VTEP_MAC,
        }),
        endpoints: vec![
            (v4("10.100.0.10"), local(flags::UNDERLAY, 11, 1, 100, 0x10)),
            (v4("fd00:100::10"), local(flags::UNDERLAY, 11, 4, 100, 0x10)),
            (v4("10.200.0.10"), local(flags::OVERLAY, 12, 3, 0, 0x20)),
            (v4("10.100.0.20"), remote(flags::UNDERLAY, 1, 100)),
            (v4("10.101.0.20"), remote(flags::UNDERLAY, 2, 200)),
            (v4("10.200.1.5"), remote(flags::OVERLAY, 3, 0)),
        ],
        by_ifindex: vec![
            (
                11,
                LocalPod {
                    flags: flags::UNDERLAY | flags::HAS_V4 | flags::HAS_V6,
                    mac: [0x0a, 0x58, 0, 0, 0, 0x10],
                    _pad: [0; 2],
                    ipv4: [10, 100, 0, 10],
                    ipv6: v4("fd00:100::10").addr,
                    subnet_v4: vlan100,
                    subnet_v6: vlan100_v6,
                },
            ),
            (
                12,
                LocalPod {
                    flags: flags::OVERLAY | flags::HAS_V4,
                    mac: [0x0a, 0x58, 0, 0, 0, 0x20],
                    _pad: [0; 2],
                    ipv4: [10, 200, 0, 10],
                    ipv6: [0; 16],
                    subnet_v4: overlay,
                    subnet_v6: PodSubnet::NONE,
                },
            ),
        ],
        neighbours: vec![(
            NeighKey {
                addr: v4("10.100.0.1").addr,
                vlan: 100,
                _pad: [0; 2],
            },
            NeighEntry {
                mac: GATEWAY_MAC,
                _pad: [0; 2],
            },
        )],
        vlans: vec![200, 100],
        vteps: vec![v4("192.168.0.2")],
    };
    let names = |i: u32| match i {
        11 => Some("rama1a2b3c4d5e6".to_owned()),
        12 => Some("rama9f8e7d6c5b4".to_owned()),
        _ => None,
    };
    Snapshot::decode(&raw, names)
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("RAMA_BLESS").is_some() {
        std::fs::write(&path, actual).expect("writing golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (RAMA_BLESS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{name}: output differs from {}",
        path.display()
    );
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[test]
fn endpoints_nodes_and_maps_tables() {
    let s = known_node();
    golden("endpoints.txt", &inspect::endpoints_table(&s));
    golden("nodes.txt", &inspect::nodes_table(&s));
    let counters = vec![
        CounterRow {
            program: "pod_egress",
            reason: "redirect_vlan",
            drop: false,
            packets: 1200,
            bytes: 98_000,
        },
        CounterRow {
            program: "pod_egress",
            reason: "spoofed_ip",
            drop: true,
            packets: 3,
            bytes: 294,
        },
    ];
    let mut maps = String::new();
    for name in rama_common::names::MAPS {
        maps.push_str(&format!("== {name}\n"));
        maps.push_str(&inspect::map_table(&s, &counters, name));
    }
    golden("maps.txt", &maps);
    let json = serde_json::to_string_pretty(&inspect::map_rows(&s, &counters, "RAMA_ENDPOINTS"))
        .expect("json");
    golden("endpoints-map.json", &(json + "\n"));
}

#[test]
fn counters_with_rates() {
    let row = |packets, bytes| CounterRow {
        program: "vxlan_ingress",
        reason: "redirect_local",
        drop: false,
        packets,
        bytes,
    };
    let before = [row(100, 10_000)];
    let after = [row(300, 30_000)];
    let rates = inspect::rates(&before, &after, 2.0);
    assert_eq!(rates[0].packets_per_second, Some(100.0));
    assert_eq!(rates[0].bytes_per_second, Some(10_000.0));
    // A counter that went down belongs to a re-created map: no rate, not a negative one.
    let reset = inspect::rates(&after, &before, 2.0);
    assert_eq!(reset[0].packets_per_second, None);
    golden(
        "counters.txt",
        &inspect::counters_table(&after, Some(&rates)),
    );
}

#[test]
fn traces_follow_the_programs_decisions() {
    let s = known_node();
    let cases = [
        // same node
        ("10.100.0.10", "10.200.0.10", "redirect_local"),
        // underlay, same subnet: straight to the node that hosts it
        ("10.100.0.10", "10.100.0.20", "redirect_vlan"),
        // underlay, another VLAN: through the physical gateway
        ("10.100.0.10", "10.101.0.20", "redirect_vlan"),
        // underlay pod to the outside: its VLAN's gateway
        ("10.100.0.10", "192.0.2.1", "redirect_vlan"),
        // hybrid: underlay to overlay goes over VXLAN with its own address
        ("10.100.0.10", "10.200.1.5", "redirect_vxlan"),
        // overlay to overlay
        ("10.200.0.10", "10.200.1.5", "redirect_vxlan"),
        // overlay pod to the outside: the stack masquerades
        ("10.200.0.10", "192.0.2.1", "pass_stack"),
        // the pod's gateway
        ("10.200.0.10", "169.254.1.1", "pass_stack"),
        // IPv6 beyond the pods this node knows: the gateway, as for IPv4
        ("fd00:100::10", "fd00:100::99", "redirect_vlan"),
        // arriving: underlay on the VLAN, hybrid over VXLAN
        ("10.100.0.20", "10.100.0.10", "redirect_local"),
        ("10.200.1.5", "10.100.0.10", "redirect_local"),
        // not this node's business
        ("10.200.1.5", "10.101.0.20", "none"),
    ];
    let mut text = String::new();
    for (src, dst, reason) in cases {
        let t = inspect::trace(&s, ip(src), ip(dst)).expect("trace");
        assert_eq!(t.verdict.reason, reason, "{src} → {dst}: {t:?}");
        text.push_str(&inspect::trace_text(&t));
    }
    golden("traces.txt", &text);
    let hybrid = inspect::trace(&s, ip("10.200.1.5"), ip("10.100.0.10")).expect("trace");
    assert_eq!(hybrid.verdict.program, "rama_vxlan_in");
    let vlan = inspect::trace(&s, ip("10.100.0.20"), ip("10.100.0.10")).expect("trace");
    assert_eq!(vlan.verdict.program, "rama_uplink_in");
}

#[test]
fn unknown_names_and_addresses_are_lookup_errors() {
    let s = known_node();
    let unknown = inspect::trace(&s, ip("10.9.9.9"), ip("10.100.0.10")).expect_err("unknown src");
    assert!(matches!(unknown, Error::Lookup(_)), "{unknown}");
    assert!(unknown.to_string().contains("10.9.9.9"), "{unknown}");
    let mixed = inspect::trace(&s, ip("10.100.0.10"), ip("fd00::1")).expect_err("families");
    assert!(matches!(mixed, Error::Lookup(_)), "{mixed}");
    let map = inspect::map_name("RAMA_NOPE").expect_err("unknown map");
    assert!(matches!(map, Error::Lookup(_)), "{map}");
    assert!(map.to_string().contains("RAMA_ENDPOINTS"), "{map}");
    assert_eq!(
        inspect::map_name("rama_neigh").expect("case-insensitive"),
        "RAMA_NEIGH"
    );
}
