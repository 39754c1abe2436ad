//! What the datapath thinks, decoded from the pinned maps the programs read
//! (`rama-agent inspect …`): local endpoints, remote nodes, any map, counters with
//! rates, and `trace`, which walks the same decisions as the programs
//! (`rama-ebpf/src/pod.rs`, `forward.rs`, `uplink.rs`, `vxlan.rs`) for a packet
//! between two addresses.
//!
//! Everything here is pure except [`Snapshot::read`] and [`read_map`]: a snapshot
//! can be built from known map contents, which is how the golden tests pin the
//! output down.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use rama_common::{
    Endpoint, GATEWAY_V4, GATEWAY_V6, IpKey, LocalPod, NeighEntry, NeighKey, NodeConfig, PodSubnet,
    flags, names,
};
use serde::Serialize;

use crate::{
    Error, Result,
    dataplane::ebpf::{CounterRow, pinned_map, versioned_pin_dir},
    state::MacAddr,
};

/// An address as the maps store it (IPv4 mapped into IPv6).
pub fn key_ip(key: &IpKey) -> IpAddr {
    let v6 = Ipv6Addr::from(key.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if key.is_v4() => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

fn mac(bytes: [u8; 6]) -> MacAddr {
    MacAddr(bytes)
}

fn fabric(flags_: u32) -> &'static str {
    if flags_ & flags::UNDERLAY != 0 {
        "underlay"
    } else if flags_ & flags::OVERLAY != 0 {
        "overlay"
    } else {
        "none"
    }
}

/// This node, from `RAMA_CONFIG`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeView {
    pub uplink_ifindex: u32,
    pub vxlan_ifindex: u32,
    /// The overlay's VNI (0: no overlay).
    pub vni: u32,
    pub uplink_mac: MacAddr,
    pub vtep_mac: MacAddr,
}

impl From<&NodeConfig> for NodeView {
    fn from(c: &NodeConfig) -> Self {
        Self {
            uplink_ifindex: c.uplink_ifindex,
            vxlan_ifindex: c.vxlan_ifindex,
            vni: c.vni,
            uplink_mac: mac(c.uplink_mac),
            vtep_mac: mac(c.vtep_mac),
        }
    }
}

/// A pod address, local or remote, from `RAMA_ENDPOINTS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointView {
    pub ip: IpAddr,
    pub local: bool,
    pub fabric: &'static str,
    pub subnet_id: u32,
    /// The subnet's VLAN (underlay).
    pub vlan: Option<u16>,
    pub mac: Option<MacAddr>,
    /// Local: the host side of the pod's veth.
    pub ifindex: Option<u32>,
    pub host_mac: Option<MacAddr>,
    /// Remote: the node's VTEP, its MAC, and its uplink's MAC (underlay next hop).
    pub vtep: Option<IpAddr>,
    pub vtep_mac: Option<MacAddr>,
    pub node_mac: Option<MacAddr>,
}

impl EndpointView {
    fn new(key: &IpKey, e: &Endpoint) -> Self {
        let local = e.flags & flags::LOCAL != 0;
        let vtep = if e.flags & flags::VTEP_V6 != 0 {
            IpAddr::V6(Ipv6Addr::from(e.vtep))
        } else {
            key_ip(&IpKey { addr: e.vtep })
        };
        Self {
            ip: key_ip(key),
            local,
            fabric: fabric(e.flags),
            subnet_id: e.subnet_id,
            vlan: (e.flags & flags::UNDERLAY != 0).then_some(e.vlan),
            mac: local.then(|| mac(e.mac)),
            ifindex: local.then_some(e.ifindex),
            host_mac: local.then(|| mac(e.host_mac)),
            vtep: (!local).then_some(vtep),
            vtep_mac: (!local).then(|| mac(e.vtep_mac)),
            node_mac: (!local).then(|| mac(e.node_mac)),
        }
    }
}

/// A local pod's subnet as its `RAMA_EP_BY_IF` entry carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubnetView {
    pub id: u32,
    pub cidr: String,
    pub vlan: Option<u16>,
    /// The physical gateway's MAC, once resolved (underlay).
    pub gateway_mac: Option<MacAddr>,
}

fn subnet_view(s: &PodSubnet, pod_flags: u32) -> SubnetView {
    let prefix = key_ip(&IpKey { addr: s.prefix });
    SubnetView {
        id: s.id,
        cidr: format!("{prefix}/{}", s.prefix_len),
        vlan: (pod_flags & flags::UNDERLAY != 0).then_some(s.vlan),
        gateway_mac: (s.flags & flags::GATEWAY_MAC_KNOWN != 0).then(|| mac(s.gateway_mac)),
    }
}

/// A local pod by its host-side veth, from `RAMA_EP_BY_IF`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalPodView {
    pub ifindex: u32,
    /// The host-side interface's name, when this process can see it.
    pub interface: Option<String>,
    pub mac: MacAddr,
    pub fabric: &'static str,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub subnet_v4: Option<SubnetView>,
    pub subnet_v6: Option<SubnetView>,
}

impl LocalPodView {
    fn new(ifindex: u32, p: &LocalPod, interface: Option<String>) -> Self {
        let v4 = p.flags & flags::HAS_V4 != 0;
        let v6 = p.flags & flags::HAS_V6 != 0;
        Self {
            ifindex,
            interface,
            mac: mac(p.mac),
            fabric: fabric(p.flags),
            ipv4: v4.then(|| Ipv4Addr::from(p.ipv4)),
            ipv6: v6.then(|| Ipv6Addr::from(p.ipv6)),
            subnet_v4: v4.then(|| subnet_view(&p.subnet_v4, p.flags)),
            subnet_v6: v6.then(|| subnet_view(&p.subnet_v6, p.flags)),
        }
    }
}

/// A host on an underlay VLAN learned from ARP/ND, from `RAMA_NEIGH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NeighbourView {
    pub ip: IpAddr,
    pub vlan: u16,
    pub mac: MacAddr,
}

/// A remote node as this node's maps know it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RemoteNodeView {
    pub vtep: IpAddr,
    pub vtep_mac: MacAddr,
    pub uplink_mac: MacAddr,
    /// Pod addresses this node reaches through it.
    pub endpoints: usize,
    /// In `RAMA_VTEPS`: the XDP pre-filter lets its VXLAN in.
    pub allowed: bool,
}

/// The decoded contents of a node's maps (counters apart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub node: Option<NodeView>,
    pub endpoints: Vec<EndpointView>,
    pub local_pods: Vec<LocalPodView>,
    pub neighbours: Vec<NeighbourView>,
    /// VLANs the uplink accepts frames on.
    pub vlans: Vec<u16>,
    /// VTEPs the uplink accepts VXLAN from.
    pub vteps: Vec<IpAddr>,
}

/// Raw map contents, as read from the pins (or made up by a test).
#[derive(Clone, Debug, Default)]
pub struct RawMaps {
    pub config: Option<NodeConfig>,
    pub endpoints: Vec<(IpKey, Endpoint)>,
    pub by_ifindex: Vec<(u32, LocalPod)>,
    pub neighbours: Vec<(NeighKey, NeighEntry)>,
    pub vlans: Vec<u16>,
    pub vteps: Vec<IpKey>,
}

impl Snapshot {
    /// Decodes raw map contents; `interface` names a host ifindex where it can.
    pub fn decode(raw: &RawMaps, interface: impl Fn(u32) -> Option<String>) -> Self {
        let mut endpoints: Vec<_> = raw
            .endpoints
            .iter()
            .map(|(k, v)| EndpointView::new(k, v))
            .collect();
        endpoints.sort_by_key(|e| (!e.local, e.ip));
        let mut local_pods: Vec<_> = raw
            .by_ifindex
            .iter()
            .map(|(i, p)| LocalPodView::new(*i, p, interface(*i)))
            .collect();
        local_pods.sort_by_key(|p| p.ifindex);
        let mut neighbours: Vec<_> = raw
            .neighbours
            .iter()
            .map(|(k, v)| NeighbourView {
                ip: key_ip(&IpKey { addr: k.addr }),
                vlan: k.vlan,
                mac: mac(v.mac),
            })
            .collect();
        neighbours.sort_by_key(|n| (n.vlan, n.ip));
        let mut vlans = raw.vlans.clone();
        vlans.sort_unstable();
        let mut vteps: Vec<_> = raw.vteps.iter().map(key_ip).collect();
        vteps.sort_unstable();
        Self {
            node: raw.config.as_ref().map(NodeView::from),
            endpoints,
            local_pods,
            neighbours,
            vlans,
            vteps,
        }
    }

    /// Reads a node's pinned maps (the agent need not run).
    pub fn read(pin_root: &Path) -> Result<Self> {
        let raw = RawMaps {
            config: read_config(pin_root)?,
            endpoints: read_hash(pin_root, names::MAP_ENDPOINTS)?,
            by_ifindex: read_hash(pin_root, names::MAP_EP_BY_IF)?,
            neighbours: read_hash(pin_root, names::MAP_NEIGH)?,
            vlans: read_vlans(pin_root)?,
            vteps: read_hash::<IpKey, u32>(pin_root, names::MAP_VTEPS)?
                .into_iter()
                .map(|(k, _)| k)
                .collect(),
        };
        Ok(Self::decode(&raw, interface_name))
    }

    /// The remote nodes behind the remote endpoints, by VTEP.
    pub fn remote_nodes(&self) -> Vec<RemoteNodeView> {
        let mut nodes: BTreeMap<IpAddr, RemoteNodeView> = BTreeMap::new();
        for e in self.endpoints.iter().filter(|e| !e.local) {
            let (Some(vtep), Some(vtep_mac), Some(uplink_mac)) = (e.vtep, e.vtep_mac, e.node_mac)
            else {
                continue;
            };
            nodes
                .entry(vtep)
                .or_insert_with(|| RemoteNodeView {
                    vtep,
                    vtep_mac,
                    uplink_mac,
                    endpoints: 0,
                    allowed: self.vteps.contains(&vtep),
                })
                .endpoints += 1;
        }
        // A VTEP allowed in with no pods behind it yet is still a node.
        for vtep in &self.vteps {
            nodes.entry(*vtep).or_insert_with(|| RemoteNodeView {
                vtep: *vtep,
                vtep_mac: MacAddr([0; 6]),
                uplink_mac: MacAddr([0; 6]),
                endpoints: 0,
                allowed: true,
            });
        }
        nodes.into_values().collect()
    }

    fn endpoint(&self, ip: IpAddr) -> Option<&EndpointView> {
        self.endpoints.iter().find(|e| e.ip == ip)
    }

    fn local_pod(&self, ifindex: u32) -> Option<&LocalPodView> {
        self.local_pods.iter().find(|p| p.ifindex == ifindex)
    }
}

/// The host interface with `ifindex` in this network namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn open_pinned(pin_root: &Path, name: &'static str) -> Result<Map> {
    Map::from_map_data(pinned_map(pin_root, name)?).map_err(|e| Error::ebpf(name, e))
}

fn read_hash<K: aya::Pod, V: aya::Pod>(pin_root: &Path, name: &'static str) -> Result<Vec<(K, V)>> {
    let map = open_pinned(pin_root, name)?;
    let hash: BpfHashMap<MapData, K, V> = match map {
        Map::HashMap(_) | Map::LruHashMap(_) => {
            BpfHashMap::try_from(map).map_err(|e| Error::ebpf(name, e))?
        }
        other => {
            return Err(Error::ebpf(
                name,
                std::io::Error::other(format!("not a hash map: {other:?}")),
            ));
        }
    };
    // An entry deleted while we walk ends the walk with an error; what was read
    // until then is what the map held (the programs see the same kind of view).
    Ok(hash.iter().map_while(|r| r.ok()).collect())
}

fn read_config(pin_root: &Path) -> Result<Option<NodeConfig>> {
    let map = open_pinned(pin_root, names::MAP_CONFIG)?;
    let array: Array<MapData, NodeConfig> =
        Array::try_from(map).map_err(|e| Error::ebpf(names::MAP_CONFIG, e))?;
    let config = array
        .get(&0, 0)
        .map_err(|e| Error::ebpf("reading RAMA_CONFIG", e))?;
    // An all-zero entry is a map no agent has filled yet.
    Ok((config.uplink_ifindex != 0).then_some(config))
}

fn read_vlans(pin_root: &Path) -> Result<Vec<u16>> {
    let map = open_pinned(pin_root, names::MAP_VLANS)?;
    let array: Array<MapData, u32> =
        Array::try_from(map).map_err(|e| Error::ebpf(names::MAP_VLANS, e))?;
    let mut vlans = Vec::new();
    for (i, v) in array.iter().enumerate() {
        if v.map_err(|e| Error::ebpf("reading RAMA_VLANS", e))? != 0 {
            vlans.push(u16::try_from(i).unwrap_or(u16::MAX));
        }
    }
    Ok(vlans)
}

/// The name `inspect maps` was given, checked.
pub fn map_name(name: &str) -> Result<&'static str> {
    names::MAPS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| {
            Error::Lookup(format!(
                "no map named {name:?}; Rama's maps are {}",
                names::MAPS.join(", ")
            ))
        })
}

/// One map's decoded contents as JSON rows (counters: per program and reason).
pub fn map_rows(snapshot: &Snapshot, counters: &[CounterRow], map: &str) -> serde_json::Value {
    let rows = match map {
        names::MAP_ENDPOINTS => serde_json::to_value(&snapshot.endpoints),
        names::MAP_EP_BY_IF => serde_json::to_value(&snapshot.local_pods),
        names::MAP_NEIGH => serde_json::to_value(&snapshot.neighbours),
        names::MAP_VLANS => serde_json::to_value(&snapshot.vlans),
        names::MAP_VTEPS => serde_json::to_value(&snapshot.vteps),
        names::MAP_CONFIG => serde_json::to_value(&snapshot.node),
        _ => serde_json::to_value(counters),
    };
    rows.unwrap_or(serde_json::Value::Null)
}

// ---- trace ---------------------------------------------------------------------

/// One check or decision on the way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// The program (or the kernel) that acts.
    pub at: &'static str,
    pub what: String,
}

/// Where a packet ends, with the counter it increments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub program: &'static str,
    /// The counter's reason label (`rama-agent inspect counters`).
    pub reason: &'static str,
    pub action: &'static str,
    pub detail: String,
}

/// What the datapath would do with a packet from `src` to `dst`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Trace {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub steps: Vec<Step>,
    pub verdict: Verdict,
}

const POD_EGRESS: &str = names::PROG_POD_EGRESS;
const UPLINK_IN: &str = names::PROG_UPLINK_INGRESS;
const VXLAN_IN: &str = names::PROG_VXLAN_INGRESS;

fn verdict(program: &'static str, reason: &'static str, detail: String) -> Verdict {
    Verdict {
        program,
        reason,
        action: crate::metrics::action(reason, reason_is_drop(reason)),
        detail,
    }
}

fn reason_is_drop(label: &str) -> bool {
    rama_common::counters::Reason::ALL
        .iter()
        .any(|r| r.label() == label && r.is_drop())
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets() == GATEWAY_V4 || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.octets() == GATEWAY_V6 || v6.is_unicast_link_local() || v6.is_multicast()
        }
    }
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    cidr.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&ip))
}

/// Follows a packet from `src` to `dst` through this node's maps, deciding as the
/// programs decide. `src` must be a pod this node knows; `dst` may be anything.
pub fn trace(s: &Snapshot, src: IpAddr, dst: IpAddr) -> Result<Trace> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(Error::Lookup(format!(
            "{src} and {dst} are of different IP families; a packet has one"
        )));
    }
    let Some(from) = s.endpoint(src) else {
        return Err(Error::Lookup(format!(
            "{src} is not a pod address this node knows (not in {}); trace from a pod on \
             this node or one it has a route to",
            names::MAP_ENDPOINTS
        )));
    };
    let mut steps = Vec::new();
    let verdict = if from.local {
        trace_from_local(s, from, dst, &mut steps)?
    } else {
        trace_to_local(s, from, dst, &mut steps)
    };
    Ok(Trace {
        src,
        dst,
        steps,
        verdict,
    })
}

/// A packet a local pod sends: `rama_pod_egress` on its host veth (pod.rs).
fn trace_from_local(
    s: &Snapshot,
    from: &EndpointView,
    dst: IpAddr,
    steps: &mut Vec<Step>,
) -> Result<Verdict> {
    let ifindex = from.ifindex.unwrap_or(0);
    let Some(pod) = s.local_pod(ifindex) else {
        return Ok(verdict(
            POD_EGRESS,
            "no_endpoint",
            format!(
                "{} has no entry for ifindex {ifindex}: the pod's interface is not \
                 (yet) in the datapath",
                names::MAP_EP_BY_IF
            ),
        ));
    };
    let iface = pod.interface.as_deref().unwrap_or("?");
    steps.push(Step {
        at: POD_EGRESS,
        what: format!(
            "TC ingress of {iface} (ifindex {ifindex}): the pod's own MAC {} and source {} \
             pass anti-spoofing",
            pod.mac, from.ip
        ),
    });
    if is_link_local(dst) {
        return Ok(verdict(
            POD_EGRESS,
            "pass_stack",
            format!(
                "{dst} is link-local (the pod's gateway or neighbour discovery): the node's kernel answers"
            ),
        ));
    }
    let subnet = if dst.is_ipv4() {
        pod.subnet_v4.as_ref()
    } else {
        pod.subnet_v6.as_ref()
    };
    let underlay = pod.fabric == "underlay";
    match s.endpoint(dst) {
        Some(to) if to.local => {
            steps.push(Step {
                at: POD_EGRESS,
                what: format!(
                    "{dst} is a pod on this node (ifindex {})",
                    to.ifindex.unwrap_or(0)
                ),
            });
            Ok(deliver_local(to))
        }
        Some(to) => {
            let hosted_by = format!(
                "{dst} is {} pod on the node with VTEP {}",
                if to.fabric == "overlay" {
                    "an overlay"
                } else {
                    "an underlay"
                },
                to.vtep.map(|v| v.to_string()).unwrap_or_default()
            );
            steps.push(Step {
                at: POD_EGRESS,
                what: hosted_by,
            });
            if underlay && to.fabric == "underlay" {
                Ok(to_vlan(s, subnet, dst, Some(to), steps))
            } else {
                steps.push(Step {
                    at: POD_EGRESS,
                    what: "the overlay is involved (sender or receiver): the packet keeps the \
                           sender's own address (hybrid identity)"
                        .into(),
                });
                Ok(to_vxlan(s, to))
            }
        }
        None if underlay => {
            steps.push(Step {
                at: POD_EGRESS,
                what: format!(
                    "{dst} is no pod this node knows: the underlay pod's VLAN carries it"
                ),
            });
            Ok(to_vlan(s, subnet, dst, None, steps))
        }
        None => Ok(verdict(
            POD_EGRESS,
            "pass_stack",
            format!(
                "{dst} is outside the cluster and the sender is an overlay pod: the node's \
                 kernel routes it and masquerades it behind the node's address"
            ),
        )),
    }
}

fn deliver_local(to: &EndpointView) -> Verdict {
    verdict(
        POD_EGRESS,
        "redirect_local",
        format!(
            "TTL decremented, MACs {} → {}, straight into the pod's namespace through \
             ifindex {} (bpf_redirect_peer)",
            to.host_mac.unwrap_or(MacAddr([0; 6])),
            to.mac.unwrap_or(MacAddr([0; 6])),
            to.ifindex.unwrap_or(0)
        ),
    )
}

/// forward.rs `to_vlan`: the node of a pod in the same subnet, an on-link neighbour,
/// else the subnet's gateway.
fn to_vlan(
    s: &Snapshot,
    subnet: Option<&SubnetView>,
    dst: IpAddr,
    remote: Option<&EndpointView>,
    steps: &mut Vec<Step>,
) -> Verdict {
    let Some(subnet) = subnet else {
        return verdict(
            POD_EGRESS,
            "spoofed_ip",
            format!(
                "the pod has no {} address, so it cannot send this packet",
                if dst.is_ipv4() { "IPv4" } else { "IPv6" }
            ),
        );
    };
    let vlan = subnet.vlan.unwrap_or(0);
    let next_hop = match remote {
        Some(r) if r.subnet_id == subnet.id => r
            .node_mac
            .map(|m| (m, "the node that hosts it (same subnet)")),
        _ => {
            let on_link = in_cidr(dst, &subnet.cidr);
            let neighbour = s
                .neighbours
                .iter()
                .find(|n| n.ip == dst && n.vlan == vlan)
                .filter(|_| on_link);
            match (neighbour, subnet.gateway_mac) {
                (Some(n), _) => Some((n.mac, "a neighbour learned on the VLAN")),
                (None, Some(gw)) => Some((gw, "the subnet's physical gateway")),
                (None, None) => None,
            }
        }
    };
    let Some((next_hop, who)) = next_hop else {
        return verdict(
            POD_EGRESS,
            "neigh_miss",
            format!(
                "no next hop yet on VLAN {vlan} (the gateway of {} is not resolved): the \
                 kernel stack takes it",
                subnet.cidr
            ),
        );
    };
    let uplink_mac = s.node.as_ref().map(|n| n.uplink_mac);
    steps.push(Step {
        at: POD_EGRESS,
        what: format!("next hop {next_hop}: {who}"),
    });
    verdict(
        POD_EGRESS,
        "redirect_vlan",
        format!(
            "TTL decremented, MACs {} → {next_hop}, tagged VLAN {vlan}, out of the uplink \
             (ifindex {})",
            uplink_mac.unwrap_or(MacAddr([0; 6])),
            s.node.as_ref().map(|n| n.uplink_ifindex).unwrap_or(0)
        ),
    )
}

/// forward.rs `to_vxlan`.
fn to_vxlan(s: &Snapshot, to: &EndpointView) -> Verdict {
    match &s.node {
        Some(node) if node.vxlan_ifindex != 0 => verdict(
            POD_EGRESS,
            "redirect_vxlan",
            format!(
                "TTL decremented, MACs {} → {}, tunnel key VNI {} to VTEP {}, into the \
                 VXLAN device (ifindex {}); there rama_vxlan_in checks the VNI and that the \
                 inner source lives behind this node",
                node.vtep_mac,
                to.vtep_mac.unwrap_or(MacAddr([0; 6])),
                node.vni,
                to.vtep.map(|v| v.to_string()).unwrap_or_default(),
                node.vxlan_ifindex
            ),
        ),
        _ => verdict(
            POD_EGRESS,
            "pass_stack",
            "this node has no VXLAN device (no overlay Network): the kernel stack takes it".into(),
        ),
    }
}

/// A packet from a remote pod to this node: tagged on the uplink (underlay to
/// underlay) or through the VXLAN device (anything with the overlay).
fn trace_to_local(
    s: &Snapshot,
    from: &EndpointView,
    dst: IpAddr,
    steps: &mut Vec<Step>,
) -> Verdict {
    let Some(to) = s.endpoint(dst).filter(|e| e.local) else {
        return Verdict {
            program: "none",
            reason: "none",
            action: "elsewhere",
            detail: format!(
                "neither {} nor {dst} is a pod on this node: the packet does not pass this \
                 node's datapath; trace it on the node with VTEP {}",
                from.ip,
                from.vtep.map(|v| v.to_string()).unwrap_or_default()
            ),
        };
    };
    if from.fabric == "underlay" && to.fabric == "underlay" {
        let vlan = to.vlan.unwrap_or(0);
        steps.push(Step {
            at: UPLINK_IN,
            what: format!(
                "arrives tagged with VLAN {vlan} on the uplink ({}), from {}'s node or \
                 through the gateway",
                if from.subnet_id == to.subnet_id {
                    "same subnet"
                } else {
                    "another subnet"
                },
                from.ip
            ),
        });
        if !s.vlans.contains(&vlan) {
            return verdict(
                UPLINK_IN,
                "vlan_unknown",
                format!("VLAN {vlan} is not in {}", names::MAP_VLANS),
            );
        }
        steps.push(Step {
            at: UPLINK_IN,
            what: format!("{dst} is a local underlay pod on VLAN {vlan}: tag popped"),
        });
        let mut v = deliver_local(to);
        v.program = UPLINK_IN;
        return v;
    }
    let vni = s.node.as_ref().map(|n| n.vni).unwrap_or(0);
    let vtep = from.vtep.map(|v| v.to_string()).unwrap_or_default();
    steps.push(Step {
        at: VXLAN_IN,
        what: format!(
            "arrives over VXLAN from VTEP {vtep} with VNI {vni}, decapsulated by the VXLAN device"
        ),
    });
    if vni == 0 {
        return verdict(
            VXLAN_IN,
            "vni_mismatch",
            "this node serves no overlay (VNI 0)".into(),
        );
    }
    steps.push(Step {
        at: VXLAN_IN,
        what: format!(
            "inner source {} lives behind VTEP {vtep}: accepted",
            from.ip
        ),
    });
    let mut v = deliver_local(to);
    v.program = VXLAN_IN;
    v
}

// ---- human output --------------------------------------------------------------

/// Left-aligned columns, two spaces apart; `-` for what is absent.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let _ = write!(l, "{cell:<w$}");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn fabric_id(s: &Snapshot, fabric: &str, vlan: Option<u16>) -> String {
    match (fabric, vlan) {
        ("underlay", Some(v)) => format!("vlan {v}"),
        ("overlay", _) => format!("vni {}", s.node.as_ref().map(|n| n.vni).unwrap_or(0)),
        _ => "-".into(),
    }
}

/// `inspect endpoints`: the pods on this node.
pub fn endpoints_table(s: &Snapshot) -> String {
    let rows: Vec<Vec<String>> = s
        .local_pods
        .iter()
        .map(|p| {
            let subnet = p.subnet_v4.as_ref().or(p.subnet_v6.as_ref());
            let subnets = [&p.subnet_v4, &p.subnet_v6]
                .iter()
                .filter_map(|s| s.as_ref().map(|s| s.cidr.clone()))
                .collect::<Vec<_>>()
                .join(",");
            vec![
                p.ifindex.to_string(),
                p.interface.clone().unwrap_or_else(|| "-".into()),
                p.mac.to_string(),
                opt(p.ipv4),
                opt(p.ipv6),
                if subnets.is_empty() {
                    "-".into()
                } else {
                    subnets
                },
                p.fabric.into(),
                fabric_id(s, p.fabric, subnet.and_then(|s| s.vlan)),
            ]
        })
        .collect();
    table(
        &[
            "IFINDEX",
            "INTERFACE",
            "MAC",
            "IPV4",
            "IPV6",
            "SUBNET",
            "FABRIC",
            "VLAN/VNI",
        ],
        &rows,
    )
}

/// `inspect nodes`: the remote VTEPs.
pub fn nodes_table(s: &Snapshot) -> String {
    let rows: Vec<Vec<String>> = s
        .remote_nodes()
        .iter()
        .map(|n| {
            vec![
                n.vtep.to_string(),
                n.vtep_mac.to_string(),
                n.uplink_mac.to_string(),
                n.endpoints.to_string(),
                if n.allowed { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    table(
        &[
            "VTEP",
            "VTEP MAC",
            "UPLINK MAC",
            "POD ADDRESSES",
            "VXLAN ALLOWED",
        ],
        &rows,
    )
}

/// `inspect maps NAME`: one map's entries.
pub fn map_table(s: &Snapshot, counters: &[CounterRow], map: &str) -> String {
    match map {
        names::MAP_ENDPOINTS => {
            let rows: Vec<Vec<String>> = s
                .endpoints
                .iter()
                .map(|e| {
                    vec![
                        e.ip.to_string(),
                        if e.local { "local" } else { "remote" }.into(),
                        e.fabric.into(),
                        e.subnet_id.to_string(),
                        opt(e.vlan),
                        opt(e.mac),
                        opt(e.ifindex),
                        opt(e.vtep),
                        opt(e.vtep_mac),
                        opt(e.node_mac),
                    ]
                })
                .collect();
            table(
                &[
                    "IP", "WHERE", "FABRIC", "SUBNET", "VLAN", "MAC", "IFINDEX", "VTEP",
                    "VTEP MAC", "NODE MAC",
                ],
                &rows,
            )
        }
        names::MAP_EP_BY_IF => endpoints_table(s),
        names::MAP_NEIGH => {
            let rows: Vec<Vec<String>> = s
                .neighbours
                .iter()
                .map(|n| vec![n.ip.to_string(), n.vlan.to_string(), n.mac.to_string()])
                .collect();
            table(&["IP", "VLAN", "MAC"], &rows)
        }
        names::MAP_VLANS => {
            let rows: Vec<Vec<String>> = s.vlans.iter().map(|v| vec![v.to_string()]).collect();
            table(&["VLAN"], &rows)
        }
        names::MAP_VTEPS => {
            let rows: Vec<Vec<String>> = s.vteps.iter().map(|v| vec![v.to_string()]).collect();
            table(&["VTEP"], &rows)
        }
        names::MAP_CONFIG => match &s.node {
            Some(n) => table(
                &[
                    "UPLINK IFINDEX",
                    "UPLINK MAC",
                    "VXLAN IFINDEX",
                    "VTEP MAC",
                    "VNI",
                ],
                &[vec![
                    n.uplink_ifindex.to_string(),
                    n.uplink_mac.to_string(),
                    n.vxlan_ifindex.to_string(),
                    n.vtep_mac.to_string(),
                    n.vni.to_string(),
                ]],
            ),
            None => "RAMA_CONFIG is empty: no agent has configured this node yet\n".into(),
        },
        _ => counters_table(counters, None),
    }
}

/// A counter with its rate over an interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CounterRate {
    #[serde(flatten)]
    pub counter: CounterRow,
    pub action: &'static str,
    pub packets_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
}

/// Rates between two reads `seconds` apart (a counter that went down was reset:
/// its map re-created, so no rate).
pub fn rates(before: &[CounterRow], after: &[CounterRow], seconds: f64) -> Vec<CounterRate> {
    after
        .iter()
        .map(|a| {
            let b = before
                .iter()
                .find(|b| b.program == a.program && b.reason == a.reason);
            let rate = |now: u64, then: Option<u64>| match then {
                Some(then) if now >= then && seconds > 0.0 => Some((now - then) as f64 / seconds),
                _ => None,
            };
            CounterRate {
                counter: a.clone(),
                action: crate::metrics::action(a.reason, a.drop),
                packets_per_second: rate(a.packets, b.map(|b| b.packets)),
                bytes_per_second: rate(a.bytes, b.map(|b| b.bytes)),
            }
        })
        .collect()
}

/// `inspect counters`: the counters that ever counted, with their rates.
pub fn counters_table(counters: &[CounterRow], rates: Option<&[CounterRate]>) -> String {
    let rate_of = |c: &CounterRow| {
        rates
            .and_then(|r| {
                r.iter()
                    .find(|r| r.counter.program == c.program && r.counter.reason == c.reason)
            })
            .and_then(|r| r.packets_per_second)
            .map(|p| format!("{p:.1}"))
            .unwrap_or_else(|| "-".into())
    };
    let rows: Vec<Vec<String>> = counters
        .iter()
        .filter(|c| c.packets > 0)
        .map(|c| {
            vec![
                c.program.into(),
                c.reason.into(),
                crate::metrics::action(c.reason, c.drop).into(),
                c.packets.to_string(),
                c.bytes.to_string(),
                rate_of(c),
            ]
        })
        .collect();
    table(
        &[
            "PROGRAM",
            "REASON",
            "ACTION",
            "PACKETS",
            "BYTES",
            "PACKETS/S",
        ],
        &rows,
    )
}

/// `inspect trace`: the steps, then the verdict.
pub fn trace_text(t: &Trace) -> String {
    let mut out = format!("{} → {}\n", t.src, t.dst);
    for (i, step) in t.steps.iter().enumerate() {
        let _ = writeln!(out, "  {}. [{}] {}", i + 1, step.at, step.what);
    }
    let v = &t.verdict;
    let _ = if v.program == "none" {
        writeln!(out, "  => {}: {}", v.action, v.detail)
    } else {
        writeln!(
            out,
            "  => {} ({} counts {}): {}",
            v.action, v.program, v.reason, v.detail
        )
    };
    out
}

// ---- mode ----------------------------------------------------------------------

/// The datapath mode as the agent reports it, or as the node shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModeReport {
    /// Where it comes from: `agent` (its /status) or `node` (pins on this node).
    pub source: &'static str,
    pub node: Option<String>,
    pub active: Option<String>,
    pub requested: Option<String>,
    pub fallback_reason: Option<String>,
    pub ready: Option<bool>,
    /// Why the agent's answer is missing, or what it says is wrong.
    pub detail: Option<String>,
}

/// GET `path` from the agent's HTTP endpoint (plain HTTP/1.0, loopback).
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let timeout = std::time::Duration::from_secs(2);
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("{addr:?} is not HOST:PORT: {e}")))?;
    let mut stream = std::net::TcpStream::connect_timeout(&sock, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "answered {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_owned())
}

/// Asks the agent at `agent` (its --metrics-addr) for its mode; without an answer,
/// reports what the node's pins show.
pub fn mode(agent: &str, pin_root: &Path) -> ModeReport {
    let answer = http_get(agent, "/status").and_then(|body| {
        serde_json::from_str::<serde_json::Value>(&body).map_err(std::io::Error::other)
    });
    match answer {
        Ok(v) => {
            let text = |p: &str| v.pointer(p).and_then(|x| x.as_str()).map(str::to_owned);
            ModeReport {
                source: "agent",
                node: text("/node"),
                active: text("/mode/active"),
                requested: text("/mode/requested"),
                fallback_reason: text("/mode/fallback_reason"),
                ready: v.get("ready").and_then(|r| r.as_bool()),
                detail: None,
            }
        }
        Err(e) => {
            let pinned = versioned_pin_dir(pin_root)
                .join("maps")
                .join(names::MAP_CONFIG)
                .exists();
            ModeReport {
                source: "node",
                node: None,
                active: pinned.then(|| "ebpf".into()),
                requested: None,
                fallback_reason: None,
                ready: None,
                detail: Some(format!(
                    "the agent at {agent} did not answer ({e}); {}",
                    if pinned {
                        format!("eBPF maps are pinned under {}", pin_root.display())
                    } else {
                        format!(
                            "no eBPF maps are pinned under {}: the fallback, or no agent yet",
                            pin_root.display()
                        )
                    }
                )),
            }
        }
    }
}

pub fn mode_text(m: &ModeReport) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            let _ = writeln!(out, "{k:<16}{v}");
        }
    };
    line("node", m.node.clone());
    line(
        "datapath",
        Some(m.active.clone().unwrap_or_else(|| "unknown".into())),
    );
    line("requested", m.requested.clone());
    line("fallback reason", m.fallback_reason.clone());
    line("ready", m.ready.map(|r| r.to_string()));
    line("from", Some(m.source.into()));
    line("note", m.detail.clone());
    out
}
