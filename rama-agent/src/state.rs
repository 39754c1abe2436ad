//! The desired state of one node: what the agent computes from the cluster state and
//! hands to a [`Dataplane`](crate::dataplane::Dataplane). Both backends render exactly
//! this, so an eBPF node and a fallback node built from the same state interoperate.
//!
//! [`NodeState::validate`] checks everything before any backend touches the kernel, so
//! bad input is refused whole and nothing is half-applied.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Highest 802.1Q VLAN id (IEEE 802.1Q §9.6: 4095 is reserved).
pub const VLAN_MAX: u16 = 4094;
/// VXLAN VNIs are 24 bits (RFC 7348 §5); 0 is rejected as "no VNI".
pub const VNI_MAX: u32 = (1 << 24) - 1;

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| format!("MAC address {s:?} has fewer than 6 octets"))?;
            if part.len() != 2 {
                return Err(format!(
                    "MAC address {s:?}: octet {part:?} is not two hex digits"
                ));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| format!("MAC address {s:?}: octet {part:?} is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC address {s:?} has more than 6 octets"));
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The desired state of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeState {
    pub node: LocalNode,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub endpoints: Vec<LocalEndpoint>,
    #[serde(default)]
    pub remote_nodes: Vec<RemoteNode>,
    #[serde(default)]
    pub remote_endpoints: Vec<RemoteEndpoint>,
}

/// This node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalNode {
    pub name: String,
    /// The NIC that carries VLAN-tagged underlay traffic and the VXLAN underlay.
    pub uplink: String,
    /// The node address VXLAN packets are sent from (NodeInfo's VTEP IP).
    pub vtep_ip: IpAddr,
    /// The MAC of this node's VXLAN device (NodeInfo's VTEP MAC): remote nodes address
    /// overlay frames for our pods to it.
    pub vtep_mac: MacAddr,
}

/// Which fabric a subnet lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum Fabric {
    /// A VLAN of the physical network; the gateway is the physical router.
    Underlay { vlan: u16 },
    /// The VXLAN overlay.
    Overlay { vni: u32 },
}

/// A subnet pods get addresses from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subnet {
    pub name: String,
    pub cidr: IpNet,
    pub fabric: Fabric,
    /// The physical gateway on the VLAN (required for underlay subnets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The gateway's MAC when the operator pins it; otherwise the agent resolves it
    /// with ARP/ND on the VLAN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_mac: Option<MacAddr>,
}

/// A pod on this node, already plumbed (veth created, addresses set).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalEndpoint {
    /// A stable name (namespace/pod or the container id).
    pub name: String,
    /// Host side of the pod's veth.
    pub host_interface: String,
    /// The pod's MAC (its `eth0`).
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

/// Another node of the cluster (from its NodeInfo).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteNode {
    pub name: String,
    pub vtep_ip: IpAddr,
    pub vtep_mac: MacAddr,
    /// The node's uplink MAC, which answers ARP/ND for its underlay pods.
    pub uplink_mac: MacAddr,
}

/// A pod on another node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteEndpoint {
    pub ip: IpAddr,
    pub node: String,
}

/// A [`NodeState`] that passed validation, with the lookups both backends need.
#[derive(Clone, Debug)]
pub struct ValidState {
    pub state: NodeState,
    /// Subnet id (1-based, stable: ordered by name) by subnet name.
    pub subnet_ids: BTreeMap<String, u32>,
    /// The overlay VNI, when the state has overlay subnets.
    pub overlay_vni: Option<u32>,
}

impl NodeState {
    /// Parses a state document (JSON), naming the file on error.
    pub fn from_json(path: &std::path::Path, text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::StateFile {
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Checks the whole state; the first problem found is reported naming its object.
    pub fn validate(self) -> Result<ValidState> {
        let bad = |msg: String| Err(Error::InvalidState(msg));
        check_ifname("node.uplink", &self.node.uplink)?;

        let mut names = HashSet::new();
        let mut overlay_vni = None;
        for s in &self.subnets {
            if !names.insert(s.name.as_str()) {
                return bad(format!("subnet {:?} is listed twice", s.name));
            }
            if s.cidr.trunc() != s.cidr {
                return bad(format!(
                    "subnet {:?}: CIDR {} is not canonical (did you mean {}?)",
                    s.name,
                    s.cidr,
                    s.cidr.trunc()
                ));
            }
            match s.fabric {
                Fabric::Underlay { vlan } => {
                    if vlan > VLAN_MAX {
                        return bad(format!(
                            "subnet {:?}: VLAN id {vlan} is outside 0–{VLAN_MAX}",
                            s.name
                        ));
                    }
                    if s.gateway.is_none() {
                        return bad(format!("underlay subnet {:?} needs a gateway", s.name));
                    }
                }
                Fabric::Overlay { vni } => {
                    if vni == 0 || vni > VNI_MAX {
                        return bad(format!(
                            "subnet {:?}: VNI {vni} is outside 1–{VNI_MAX}",
                            s.name
                        ));
                    }
                    match overlay_vni {
                        Some(v) if v != vni => {
                            return bad(format!(
                                "subnet {:?}: VNI {vni} differs from the overlay network's VNI {v} \
                                 (Rama has one overlay network)",
                                s.name
                            ));
                        }
                        _ => overlay_vni = Some(vni),
                    }
                }
            }
            if let Some(gw) = s.gateway
                && !s.cidr.contains(&gw)
            {
                return bad(format!(
                    "subnet {:?}: gateway {gw} is outside {}",
                    s.name, s.cidr
                ));
            }
        }
        for (i, a) in self.subnets.iter().enumerate() {
            for b in &self.subnets[i + 1..] {
                if a.cidr.contains(&b.cidr) || b.cidr.contains(&a.cidr) {
                    return bad(format!(
                        "subnets {:?} ({}) and {:?} ({}) overlap",
                        a.name, a.cidr, b.name, b.cidr
                    ));
                }
            }
        }
        let mut sorted: Vec<&str> = self.subnets.iter().map(|s| s.name.as_str()).collect();
        sorted.sort_unstable();
        let subnet_ids: BTreeMap<String, u32> = sorted
            .iter()
            .zip(1u32..)
            .map(|(n, id)| ((*n).to_owned(), id))
            .collect();

        let valid = ValidState {
            state: self,
            subnet_ids,
            overlay_vni,
        };
        valid.check_endpoints()?;
        Ok(valid)
    }
}

fn check_ifname(what: &str, name: &str) -> Result<()> {
    // IFNAMSIZ is 16 including the NUL (include/uapi/linux/if.h).
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) || name == "." {
        return Err(Error::InvalidState(format!(
            "{what}: {name:?} is not a valid interface name"
        )));
    }
    Ok(())
}

impl ValidState {
    /// The subnet that contains `ip`.
    pub fn subnet_of(&self, ip: IpAddr) -> Option<&Subnet> {
        self.state.subnets.iter().find(|s| s.cidr.contains(&ip))
    }

    pub fn subnet_id(&self, subnet: &Subnet) -> u32 {
        self.subnet_ids
            .get(&subnet.name)
            .copied()
            .unwrap_or_default()
    }

    /// The fabric an endpoint is on (all its addresses share one; validated).
    pub fn endpoint_fabric(&self, ep: &LocalEndpoint) -> Option<Fabric> {
        let ip = ep.ipv4.map(IpAddr::V4).or(ep.ipv6.map(IpAddr::V6))?;
        self.subnet_of(ip).map(|s| s.fabric)
    }

    /// Whether any local endpoint has an address in `subnet`.
    pub fn has_local_endpoints(&self, subnet: &Subnet) -> bool {
        self.state.endpoints.iter().any(|ep| {
            ep.ipv4
                .is_some_and(|a| subnet.cidr.contains(&IpAddr::V4(a)))
                || ep
                    .ipv6
                    .is_some_and(|a| subnet.cidr.contains(&IpAddr::V6(a)))
        })
    }

    pub fn remote_node(&self, name: &str) -> Option<&RemoteNode> {
        self.state.remote_nodes.iter().find(|n| n.name == name)
    }

    fn check_endpoints(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidState(msg));
        let mut names = HashSet::new();
        let mut ifaces = HashSet::new();
        let mut ips: HashMap<IpAddr, &str> = HashMap::new();
        for ep in &self.state.endpoints {
            if !names.insert(ep.name.as_str()) {
                return bad(format!("endpoint {:?} is listed twice", ep.name));
            }
            check_ifname(&format!("endpoint {:?}", ep.name), &ep.host_interface)?;
            if !ifaces.insert(ep.host_interface.as_str()) {
                return bad(format!(
                    "endpoint {:?}: interface {:?} already belongs to another endpoint",
                    ep.name, ep.host_interface
                ));
            }
            let addrs: Vec<IpAddr> = ep
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(ep.ipv6.map(IpAddr::V6))
                .collect();
            if addrs.is_empty() {
                return bad(format!("endpoint {:?} has no address", ep.name));
            }
            let mut fabric = None;
            for ip in addrs {
                if let Some(other) = ips.insert(ip, &ep.name) {
                    return bad(format!(
                        "endpoint {:?}: {ip} is already used by endpoint {other:?}",
                        ep.name
                    ));
                }
                let Some(subnet) = self.subnet_of(ip) else {
                    return bad(format!("endpoint {:?}: {ip} is in no subnet", ep.name));
                };
                let kind = std::mem::discriminant(&subnet.fabric);
                match fabric {
                    Some(k) if k != kind => {
                        return bad(format!(
                            "endpoint {:?}: its addresses are on different fabrics",
                            ep.name
                        ));
                    }
                    _ => fabric = Some(kind),
                }
            }
        }
        let mut nodes = HashSet::new();
        for n in &self.state.remote_nodes {
            if !nodes.insert(n.name.as_str()) || n.name == self.state.node.name {
                return bad(format!("remote node {:?} is listed twice", n.name));
            }
        }
        for r in &self.state.remote_endpoints {
            if !nodes.contains(r.node.as_str()) {
                return bad(format!(
                    "remote endpoint {}: node {:?} is not a known remote node",
                    r.ip, r.node
                ));
            }
            if self.subnet_of(r.ip).is_none() {
                return bad(format!("remote endpoint {}: address is in no subnet", r.ip));
            }
            if let Some(local) = ips.insert(r.ip, &r.node) {
                return bad(format!(
                    "remote endpoint {} on node {:?} clashes with {local:?}",
                    r.ip, r.node
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> NodeState {
        serde_json::from_value(serde_json::json!({
            "node": {"name": "n1", "uplink": "up0", "vtepIp": "10.0.0.1", "vtepMac": "02:00:00:00:00:01"},
            "subnets": [
                {"name": "vlan100", "cidr": "10.100.0.0/24", "fabric": {"type": "underlay", "vlan": 100}, "gateway": "10.100.0.1"},
                {"name": "overlay", "cidr": "10.244.0.0/24", "fabric": {"type": "overlay", "vni": 7}}
            ],
            "endpoints": [
                {"name": "a", "hostInterface": "rama1", "mac": "02:aa:00:00:00:01", "ipv4": "10.100.0.10"}
            ],
            "remoteNodes": [
                {"name": "n2", "vtepIp": "10.0.0.2", "vtepMac": "02:00:00:00:00:02", "uplinkMac": "02:00:00:00:01:02"}
            ],
            "remoteEndpoints": [{"ip": "10.244.0.20", "node": "n2"}]
        }))
        .expect("test state parses")
    }

    fn err(state: NodeState) -> String {
        state
            .validate()
            .expect_err("state must be refused")
            .to_string()
    }

    #[test]
    fn valid_state_gets_stable_subnet_ids() {
        let v = base().validate().expect("valid");
        assert_eq!(v.subnet_ids["overlay"], 1);
        assert_eq!(v.subnet_ids["vlan100"], 2);
        assert_eq!(v.overlay_vni, Some(7));
    }

    #[test]
    fn vlan_outside_range_is_refused() {
        let mut s = base();
        s.subnets[0].fabric = Fabric::Underlay { vlan: 4095 };
        assert!(err(s).contains("VLAN id 4095 is outside 0–4094"));
    }

    #[test]
    fn vni_outside_range_is_refused() {
        for vni in [0, 1 << 24] {
            let mut s = base();
            s.subnets[1].fabric = Fabric::Overlay { vni };
            let e = err(s);
            assert!(
                e.contains(&format!("VNI {vni} is outside 1–16777215")),
                "{e}"
            );
        }
    }

    #[test]
    fn overlapping_subnets_are_refused() {
        let mut s = base();
        s.subnets[1].cidr = "10.100.0.128/25".parse().expect("cidr");
        let e = err(s);
        assert!(e.contains("\"vlan100\"") && e.contains("overlap"), "{e}");
    }

    #[test]
    fn non_canonical_cidr_is_refused() {
        let mut s = base();
        s.subnets[1].cidr = "10.244.0.5/24".parse().expect("cidr");
        assert!(err(s).contains("did you mean 10.244.0.0/24"));
    }

    #[test]
    fn endpoint_outside_subnets_and_duplicates_are_refused() {
        let mut s = base();
        s.endpoints[0].ipv4 = Some("192.0.2.1".parse().expect("ip"));
        assert!(err(s).contains("192.0.2.1 is in no subnet"));

        let mut s = base();
        let mut dup = s.endpoints[0].clone();
        dup.name = "b".into();
        dup.host_interface = "rama2".into();
        s.endpoints.push(dup);
        assert!(err(s).contains("already used by endpoint \"a\""));
    }

    #[test]
    fn remote_endpoint_on_unknown_node_is_refused() {
        let mut s = base();
        s.remote_endpoints[0].node = "ghost".into();
        assert!(err(s).contains("node \"ghost\" is not a known remote node"));
    }

    #[test]
    fn bad_interface_names_and_gateways_are_refused() {
        let mut s = base();
        s.node.uplink = "this-name-is-too-long".into();
        assert!(err(s).contains("is not a valid interface name"));

        let mut s = base();
        s.subnets[0].gateway = Some("10.1.0.1".parse().expect("ip"));
        assert!(err(s).contains("gateway 10.1.0.1 is outside 10.100.0.0/24"));
    }

    #[test]
    fn mac_addresses_parse_strictly() {
        assert_eq!(
            "02:aa:00:00:00:0f".parse::<MacAddr>().expect("mac").0,
            [2, 0xaa, 0, 0, 0, 0xf]
        );
        assert!("02:aa:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:aa:00:00:00:00:01".parse::<MacAddr>().is_err());
        assert!("02:aa:00:00:00:zz".parse::<MacAddr>().is_err());
    }
}
