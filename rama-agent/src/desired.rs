//! From the cluster (a [`Snapshot`]) and this node's attachments to the node's
//! desired [`NodeState`] — pure, so it is tested without a kernel.
//!
//! - **Subnets**: every Subnet of the cluster, on its Network's fabric: Underlay on
//!   VLAN `netID` (the Subnet's own `netID` overriding the Network's), Overlay on
//!   VXLAN VNI `netID`. All of them, not only the local pods' ones: the datapath must
//!   know that an address belongs to an overlay subnet to send an underlay pod's
//!   packet there through the overlay (the hybrid identity).
//! - **Endpoints**: the ready attachments whose host interface exists.
//! - **Remote nodes**: every other node that published a NodeInfo with a VTEP and an
//!   uplink. A node whose NodeInfo is gone is dropped, and with it its pods.
//! - **Remote endpoints**: every address bound to a remote node (overlay pods and
//!   underlay pods alike: both can be reached through the overlay).
use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use rama_api::{IPInstance, NetworkType, NodeInfo};

use crate::{
    cluster::Snapshot,
    endpoints::{EndpointRecord, Phase},
    state::{
        Fabric, LocalEndpoint, LocalNode, MacAddr, NodeState, RemoteEndpoint, RemoteNode, Subnet,
    },
};

/// This node as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisNode {
    pub name: String,
    pub uplink: String,
    pub uplink_mac: MacAddr,
    pub vtep_ip: IpAddr,
    pub vtep_mac: MacAddr,
}

/// The MAC of a node's VXLAN device, derived from its VTEP address (locally
/// administered `02:52:` + the address's last four bytes): stable across restarts
/// without storing it, and distinct per node since VTEP addresses are.
pub fn vtep_mac_for(ip: IpAddr) -> MacAddr {
    let tail = match ip {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(a) => {
            let o = a.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    MacAddr([0x02, 0x52, tail[0], tail[1], tail[2], tail[3]])
}

fn name_of<K: kube::Resource>(o: &K) -> String {
    o.meta().name.clone().unwrap_or_default()
}

/// The address of an IPInstance (`10.0.0.5/24` → `10.0.0.5`).
pub fn instance_ip(i: &IPInstance) -> Option<IpAddr> {
    i.spec.address.ip.split('/').next()?.parse().ok()
}

fn subnets(snap: &Snapshot, notes: &mut Vec<String>) -> Vec<Subnet> {
    let mut out = Vec::new();
    for s in &snap.subnets {
        let name = name_of(s);
        let Some(network) = snap
            .networks
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(s.spec.network.as_str()))
        else {
            notes.push(format!(
                "Subnet {name:?}: Network {:?} does not exist",
                s.spec.network
            ));
            continue;
        };
        let Ok(cidr) = s.spec.range.cidr.parse::<IpNet>() else {
            notes.push(format!(
                "Subnet {name:?}: {:?} is not a CIDR",
                s.spec.range.cidr
            ));
            continue;
        };
        let net_id = s.spec.net_id.or(network.spec.net_id);
        let fabric = match network.spec.network_type {
            NetworkType::Underlay => Fabric::Underlay {
                vlan: net_id.unwrap_or(0) as u16,
            },
            NetworkType::Overlay => Fabric::Overlay {
                vni: net_id.unwrap_or(0),
            },
        };
        out.push(Subnet {
            name,
            cidr,
            fabric,
            gateway: s.spec.range.gateway.as_deref().and_then(|g| g.parse().ok()),
            gateway_mac: None,
        });
    }
    out
}

fn remote_node(info: &NodeInfo) -> Result<RemoteNode, String> {
    let name = name_of(info);
    let vtep = info
        .spec
        .vtep_info
        .as_ref()
        .ok_or_else(|| format!("NodeInfo {name:?} has no vtepInfo"))?;
    let uplink = info
        .spec
        .uplink
        .as_ref()
        .ok_or_else(|| format!("NodeInfo {name:?} has no uplink"))?;
    Ok(RemoteNode {
        vtep_ip: vtep.ip.parse().map_err(|_| {
            format!(
                "NodeInfo {name:?}: vtepInfo.ip {:?} is not an address",
                vtep.ip
            )
        })?,
        vtep_mac: vtep
            .mac
            .parse()
            .map_err(|e| format!("NodeInfo {name:?}: vtepInfo.mac: {e}"))?,
        uplink_mac: uplink
            .mac
            .parse()
            .map_err(|e| format!("NodeInfo {name:?}: uplink.mac: {e}"))?,
        name,
    })
}

/// The node's desired state, and notes on what was left out and why.
pub fn node_state(
    node: &ThisNode,
    snap: &Snapshot,
    records: &[EndpointRecord],
    interfaces: &HashSet<String>,
) -> (NodeState, Vec<String>) {
    let mut notes = Vec::new();
    let subnets = subnets(snap, &mut notes);
    let in_subnet = |ip: IpAddr| subnets.iter().any(|s| s.cidr.contains(&ip));

    let mut local_ips = HashSet::new();
    let mut endpoints = Vec::new();
    for r in records.iter().filter(|r| r.phase == Phase::Ready) {
        if !interfaces.contains(&r.host_interface) {
            notes.push(format!(
                "attachment {}/{}: interface {} is gone (its pod's namespace was removed \
                 without a DEL); left out until DEL or GC",
                r.container_id, r.ifname, r.host_interface
            ));
            continue;
        }
        let (Some(mac), ips) = (r.pod_mac, [r.ipv4.map(IpAddr::V4), r.ipv6.map(IpAddr::V6)]) else {
            continue;
        };
        let ips: Vec<IpAddr> = ips.into_iter().flatten().collect();
        if let Some(ip) = ips.iter().find(|ip| !in_subnet(**ip)) {
            notes.push(format!(
                "attachment {}/{}: {ip} is in no subnet (was its Subnet deleted?)",
                r.container_id, r.ifname
            ));
            continue;
        }
        if ips.iter().any(|ip| local_ips.contains(ip)) {
            notes.push(format!(
                "attachment {}/{}: an address of it is used by another attachment",
                r.container_id, r.ifname
            ));
            continue;
        }
        local_ips.extend(ips.iter().copied());
        endpoints.push(LocalEndpoint {
            name: format!("{}/{}", r.pod.namespace, r.pod.name),
            host_interface: r.host_interface.clone(),
            mac,
            ipv4: r.ipv4,
            ipv6: r.ipv6,
        });
    }
    // Two attachments of one pod (cannot happen: ADD retires the older) would collide
    // on the endpoint name; keep the first.
    let mut seen = BTreeSet::new();
    endpoints.retain(|e| seen.insert(e.name.clone()));

    let mut remote_nodes = Vec::new();
    for info in &snap.node_infos {
        if info.metadata.name.as_deref() == Some(node.name.as_str()) {
            continue;
        }
        match remote_node(info) {
            Ok(n) if n.vtep_ip == node.vtep_ip => notes.push(format!(
                "NodeInfo {:?} claims this node's VTEP address {}; ignored",
                n.name, n.vtep_ip
            )),
            Ok(n) => remote_nodes.push(n),
            Err(e) => notes.push(e),
        }
    }
    remote_nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let known: HashSet<&str> = remote_nodes.iter().map(|n| n.name.as_str()).collect();

    let mut remote_endpoints = Vec::new();
    let mut remote_ips = HashSet::new();
    for i in &snap.instances {
        let Some(owner) = i.spec.binding.node_name.as_deref() else {
            continue; // retained for a StatefulSet pod that is gone
        };
        if owner == node.name || !known.contains(owner) {
            continue;
        }
        let Some(ip) = instance_ip(i) else { continue };
        if !in_subnet(ip) || local_ips.contains(&ip) || !remote_ips.insert(ip) {
            continue;
        }
        remote_endpoints.push(RemoteEndpoint {
            ip,
            node: owner.to_owned(),
        });
    }
    remote_endpoints.sort_by_key(|r| r.ip);

    let state = NodeState {
        node: LocalNode {
            name: node.name.clone(),
            uplink: node.uplink.clone(),
            vtep_ip: node.vtep_ip,
            vtep_mac: node.vtep_mac,
        },
        subnets,
        endpoints,
        remote_nodes,
        remote_endpoints,
    };
    (state, notes)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rama_api::{
        AddressRange, IPInstanceSpec, InstanceAddress, InstanceBinding, IpVersion, Network,
        NetworkSpec, NodeInfoSpec, Subnet as ApiSubnet, SubnetSpec, UplinkInfo, VtepInfo,
    };
    use rama_cni::api::PodRef;

    use super::*;

    fn this() -> ThisNode {
        ThisNode {
            name: "n1".into(),
            uplink: "up0".into(),
            uplink_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            vtep_ip: "10.0.0.1".parse().expect("ip"),
            vtep_mac: vtep_mac_for("10.0.0.1".parse().expect("ip")),
        }
    }

    fn info(name: &str, ip: &str) -> NodeInfo {
        let mut n = NodeInfo::new(
            name,
            NodeInfoSpec {
                vtep_info: Some(VtepInfo {
                    ip: ip.into(),
                    mac: vtep_mac_for(ip.parse().expect("ip")).to_string(),
                    local_ips: vec![],
                }),
                uplink: Some(UplinkInfo {
                    name: "up0".into(),
                    mac: "02:00:00:00:00:02".into(),
                }),
            },
        );
        n.metadata.name = Some(name.into());
        n
    }

    fn instance(ip: &str, node: Option<&str>, subnet: &str) -> IPInstance {
        IPInstance::new(
            &ip.replace(['.', ':'], "-"),
            IPInstanceSpec {
                network: "net".into(),
                subnet: subnet.into(),
                address: InstanceAddress {
                    version: if ip.contains(':') {
                        IpVersion::V6
                    } else {
                        IpVersion::V4
                    },
                    ip: format!("{ip}/24"),
                    gateway: None,
                    net_id: None,
                    mac: None,
                },
                binding: InstanceBinding {
                    node_name: node.map(str::to_owned),
                    pod_name: Some("p".into()),
                    ..Default::default()
                },
            },
        )
    }

    fn snapshot() -> Snapshot {
        let mut vlan = NetworkSpec::overlay(1);
        vlan.network_type = NetworkType::Underlay;
        vlan.mode = None;
        vlan.net_id = Some(100);
        let mut gw = AddressRange::new(IpVersion::V4, "10.100.0.0/24");
        gw.gateway = Some("10.100.0.1".into());
        let mut gw5 = AddressRange::new(IpVersion::V4, "10.101.0.0/24");
        gw5.gateway = Some("10.101.0.1".into());
        let mut own_vlan = SubnetSpec::new("vlan", gw5);
        own_vlan.net_id = Some(101);
        Snapshot {
            networks: vec![
                Network::new("vlan", vlan),
                Network::new("overlay", NetworkSpec::overlay(4096)),
            ],
            subnets: vec![
                ApiSubnet::new("u4", SubnetSpec::new("vlan", gw)),
                ApiSubnet::new("u5", own_vlan),
                ApiSubnet::new(
                    "o4",
                    SubnetSpec::new("overlay", AddressRange::new(IpVersion::V4, "10.244.0.0/24")),
                ),
                ApiSubnet::new(
                    "orphan",
                    SubnetSpec::new("gone", AddressRange::new(IpVersion::V4, "10.9.0.0/24")),
                ),
            ],
            instances: vec![
                instance("10.244.0.9", Some("n2"), "o4"),
                instance("10.100.0.9", Some("n2"), "u4"),
                instance("10.244.0.8", Some("n3"), "o4"), // n3 published no NodeInfo
                instance("10.244.0.7", None, "o4"),       // retained
                instance("10.244.0.5", Some("n1"), "o4"), // ours
            ],
            node_infos: vec![info("n1", "10.0.0.1"), info("n2", "10.0.0.2")],
        }
    }

    fn record(id: &str, host: &str, ip: Ipv4Addr, phase: Phase) -> EndpointRecord {
        EndpointRecord {
            network: "rama".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: None,
            pod: PodRef {
                namespace: "default".into(),
                name: id.into(),
                uid: None,
            },
            phase,
            host_interface: host.into(),
            mtu: 1450,
            ipv4: Some(ip),
            ipv6: None::<Ipv6Addr>,
            allocated_here: true,
            pod_mac: Some(MacAddr([2, 0xaa, 0, 0, 0, 5])),
            result: None,
        }
    }

    #[test]
    fn the_cluster_becomes_the_node_state() {
        let records = vec![
            record("a", "ramaa", Ipv4Addr::new(10, 244, 0, 5), Phase::Ready),
            record("b", "ramab", Ipv4Addr::new(10, 244, 0, 6), Phase::Pending),
            record("c", "ramac", Ipv4Addr::new(10, 244, 0, 4), Phase::Ready),
        ];
        let ifaces: HashSet<String> = ["ramaa".to_owned(), "ramab".to_owned()].into();
        let (state, notes) = node_state(&this(), &snapshot(), &records, &ifaces);
        let fabric = |n: &str| state.subnets.iter().find(|s| s.name == n).map(|s| s.fabric);
        assert_eq!(fabric("u4"), Some(Fabric::Underlay { vlan: 100 }));
        assert_eq!(
            fabric("u5"),
            Some(Fabric::Underlay { vlan: 101 }),
            "Subnet netID wins"
        );
        assert_eq!(fabric("o4"), Some(Fabric::Overlay { vni: 4096 }));
        assert_eq!(fabric("orphan"), None);
        assert!(
            notes.iter().any(|n| n.contains("\"gone\" does not exist")),
            "{notes:?}"
        );
        // Pending and vanished attachments are left out.
        assert_eq!(state.endpoints.len(), 1);
        assert_eq!(state.endpoints[0].host_interface, "ramaa");
        assert!(
            notes.iter().any(|n| n.contains("ramac is gone")),
            "{notes:?}"
        );
        // Remote: n2 only (n3 has no NodeInfo), both its addresses, nothing retained.
        assert_eq!(state.remote_nodes.len(), 1);
        assert_eq!(
            state.remote_nodes[0].uplink_mac,
            MacAddr([2, 0, 0, 0, 0, 2])
        );
        let remote: Vec<String> = state
            .remote_endpoints
            .iter()
            .map(|r| r.ip.to_string())
            .collect();
        assert_eq!(remote, ["10.100.0.9", "10.244.0.9"]);
        state.validate().expect("the result is a valid node state");
    }

    #[test]
    fn vtep_macs_are_local_and_per_address() {
        let a = vtep_mac_for("10.0.0.1".parse().expect("ip"));
        assert_eq!(a.to_string(), "02:52:0a:00:00:01");
        assert_ne!(a, vtep_mac_for("10.0.0.2".parse().expect("ip")));
        assert_eq!(
            vtep_mac_for("fd00::1:2".parse().expect("ip")).to_string(),
            "02:52:00:01:00:02"
        );
    }
}
