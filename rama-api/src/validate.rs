//! The rules Networks and Subnets must follow beyond what the CRD's OpenAPI schema can
//! say. The controller's validating webhook applies them in a cluster; the agent
//! applies the same rules to the YAML files of a standalone state directory. Each
//! refusal names the field and the rule.
//!
//! | object | rule |
//! |---|---|
//! | Network | Underlay: `netID` is a VLAN id 0–4094, `mode` VLAN, a non-empty `nodeSelector` |
//! | Network | Overlay: `netID` is a VNI 1–16777215 (required), `mode` VXLAN |
//! | Network | `type`, `netID` and `mode` never change |
//! | Subnet | `range.cidr` is a canonical CIDR of `range.version` |
//! | Subnet | `gateway`, `start`, `end`, `reservedIPs`, `excludeIPs` lie inside the CIDR; `start` ≤ `end` |
//! | Subnet | its Network exists; an Underlay subnet has a gateway (the switch) |
//! | Subnet | `netID`: a VLAN id 0–4094 on Underlay; equal to the Network's when both are set |
//! | Subnet | overlaps no other Subnet, of any Network |
//! | Subnet | `network`, `netID`, `range` (but the reserved and excluded lists) never change |
//! | delete | no Subnet while IPInstances use it; no Network while it has Subnets or IPInstances |
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{IPInstance, IpVersion, Network, NetworkMode, NetworkType, Subnet};

/// An object that breaks a rule: the field, and the rule in words.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct Refusal {
    pub field: String,
    pub rule: String,
}

pub type Result<T, E = Refusal> = std::result::Result<T, E>;

fn refused(field: impl Into<String>, rule: impl Into<String>) -> Refusal {
    Refusal {
        field: field.into(),
        rule: rule.into(),
    }
}

pub const MAX_VLAN: u32 = 4094;
pub const MAX_VNI: u32 = 16_777_215;

fn name_of<K: kube::Resource>(o: &K) -> &str {
    o.meta().name.as_deref().unwrap_or("")
}

/// A Network being created (`old` None) or updated.
pub fn network(new: &Network, old: Option<&Network>) -> Result<()> {
    let s = &new.spec;
    match s.network_type {
        NetworkType::Underlay => {
            if let Some(id) = s.net_id.filter(|id| *id > MAX_VLAN) {
                return Err(refused(
                    "spec.netID",
                    format!("{id} is not a VLAN id (0–{MAX_VLAN}) as an Underlay network needs"),
                ));
            }
            if s.mode == Some(NetworkMode::VXLAN) {
                return Err(refused(
                    "spec.mode",
                    "an Underlay network is VLAN, not VXLAN",
                ));
            }
            if s.node_selector.is_empty() {
                return Err(refused(
                    "spec.nodeSelector",
                    "an Underlay network must select the nodes wired to its VLAN",
                ));
            }
        }
        NetworkType::Overlay => {
            match s.net_id {
                None => {
                    return Err(refused(
                        "spec.netID",
                        format!("an Overlay network needs its VXLAN VNI (1–{MAX_VNI})"),
                    ));
                }
                Some(id) if !(1..=MAX_VNI).contains(&id) => {
                    return Err(refused(
                        "spec.netID",
                        format!("{id} is not a VXLAN VNI (1–{MAX_VNI})"),
                    ));
                }
                Some(_) => {}
            }
            if s.mode == Some(NetworkMode::VLAN) {
                return Err(refused(
                    "spec.mode",
                    "an Overlay network is VXLAN, not VLAN",
                ));
            }
        }
    }
    if let Some(old) = old {
        let o = &old.spec;
        if o.network_type != s.network_type {
            return Err(refused("spec.type", "is immutable"));
        }
        if o.net_id != s.net_id {
            return Err(refused("spec.netID", "is immutable"));
        }
        if o.mode.is_some() && o.mode != s.mode {
            return Err(refused("spec.mode", "is immutable"));
        }
    }
    Ok(())
}

fn parse_in(field: &str, value: &str, cidr: &IpNet) -> Result<IpAddr> {
    let ip: IpAddr = value
        .parse()
        .map_err(|_| refused(field, format!("{value:?} is not an IP address")))?;
    if !cidr.contains(&ip) {
        return Err(refused(field, format!("{ip} is outside {cidr}")));
    }
    Ok(ip)
}

/// The CIDR of a Subnet, refused unless canonical (`10.0.0.0/24`, not `10.0.0.1/24`).
pub fn canonical_cidr(value: &str) -> Result<IpNet> {
    let net: IpNet = value
        .parse()
        .map_err(|_| refused("spec.range.cidr", format!("{value:?} is not a CIDR")))?;
    let canonical = net.trunc();
    if canonical.to_string() != value {
        return Err(refused(
            "spec.range.cidr",
            format!("{value:?} is not canonical: write {canonical}"),
        ));
    }
    Ok(net)
}

/// A Subnet being created (`old` None) or updated, among the cluster's `networks` and
/// `subnets` (which may include this one's earlier version).
pub fn subnet(
    new: &Subnet,
    old: Option<&Subnet>,
    networks: &[Network],
    subnets: &[Subnet],
) -> Result<()> {
    let name = name_of(new);
    let r = &new.spec.range;
    let cidr = canonical_cidr(&r.cidr)?;
    match (r.version, cidr) {
        (IpVersion::V4, IpNet::V6(_)) => {
            return Err(refused(
                "spec.range.version",
                format!("is 4 but cidr {cidr} is IPv6"),
            ));
        }
        (IpVersion::V6, IpNet::V4(_)) => {
            return Err(refused(
                "spec.range.version",
                format!("is 6 but cidr {cidr} is IPv4"),
            ));
        }
        _ => {}
    }
    let gateway = r
        .gateway
        .as_deref()
        .map(|g| parse_in("spec.range.gateway", g, &cidr))
        .transpose()?;
    let start = r
        .start
        .as_deref()
        .map(|v| parse_in("spec.range.start", v, &cidr))
        .transpose()?;
    let end = r
        .end
        .as_deref()
        .map(|v| parse_in("spec.range.end", v, &cidr))
        .transpose()?;
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        return Err(refused(
            "spec.range.end",
            format!("{end} comes before start {start}"),
        ));
    }
    for ip in &r.reserved_ips {
        parse_in("spec.range.reservedIPs", ip, &cidr)?;
    }
    for ip in &r.exclude_ips {
        parse_in("spec.range.excludeIPs", ip, &cidr)?;
    }

    let network = networks
        .iter()
        .find(|n| name_of(*n) == new.spec.network)
        .ok_or_else(|| {
            refused(
                "spec.network",
                format!("Network {:?} does not exist", new.spec.network),
            )
        })?;
    match network.spec.network_type {
        NetworkType::Underlay => {
            if gateway.is_none() {
                return Err(refused(
                    "spec.range.gateway",
                    "a subnet of an Underlay network needs its gateway (the switch's address)",
                ));
            }
            if let Some(id) = new.spec.net_id.filter(|id| *id > MAX_VLAN) {
                return Err(refused(
                    "spec.netID",
                    format!("{id} is not a VLAN id (0–{MAX_VLAN})"),
                ));
            }
        }
        NetworkType::Overlay => {}
    }
    if let (Some(mine), Some(theirs)) = (new.spec.net_id, network.spec.net_id)
        && mine != theirs
    {
        return Err(refused(
            "spec.netID",
            format!(
                "{mine} differs from Network {:?}'s netID {theirs}",
                new.spec.network
            ),
        ));
    }

    for other in subnets.iter().filter(|s| name_of(*s) != name) {
        let Ok(theirs) = other.spec.range.cidr.parse::<IpNet>() else {
            continue;
        };
        if theirs.contains(&cidr.network()) || cidr.contains(&theirs.network()) {
            return Err(refused(
                "spec.range.cidr",
                format!(
                    "{cidr} overlaps Subnet {:?} ({theirs}) of Network {:?}",
                    name_of(other),
                    other.spec.network
                ),
            ));
        }
    }

    if let Some(old) = old {
        let (o, n) = (&old.spec, &new.spec);
        let immutable: [(&str, bool); 7] = [
            ("spec.network", o.network == n.network),
            ("spec.netID", o.net_id == n.net_id),
            ("spec.range.version", o.range.version == n.range.version),
            ("spec.range.cidr", o.range.cidr == n.range.cidr),
            ("spec.range.gateway", o.range.gateway == n.range.gateway),
            ("spec.range.start", o.range.start == n.range.start),
            ("spec.range.end", o.range.end == n.range.end),
        ];
        if let Some((field, _)) = immutable.iter().find(|(_, same)| !same) {
            return Err(refused(*field, "is immutable"));
        }
    }
    Ok(())
}

fn in_use(instances: &[&IPInstance]) -> String {
    let first = instances
        .first()
        .map(|i| {
            format!(
                "{}/{}",
                i.metadata.namespace.as_deref().unwrap_or(""),
                name_of(*i)
            )
        })
        .unwrap_or_default();
    format!("{} IPInstance(s) in use, e.g. {first}", instances.len())
}

/// A Subnet being deleted: refused while any IPInstance (bound or retained) uses it.
pub fn subnet_delete(name: &str, instances: &[IPInstance]) -> Result<()> {
    let used: Vec<&IPInstance> = instances.iter().filter(|i| i.spec.subnet == name).collect();
    if !used.is_empty() {
        return Err(refused(
            "metadata.name",
            format!("Subnet {name:?} has {}: release them first", in_use(&used)),
        ));
    }
    Ok(())
}

/// A Network being deleted: refused while it has Subnets or IPInstances.
pub fn network_delete(name: &str, subnets: &[Subnet], instances: &[IPInstance]) -> Result<()> {
    let used: Vec<&IPInstance> = instances
        .iter()
        .filter(|i| i.spec.network == name)
        .collect();
    if !used.is_empty() {
        return Err(refused(
            "metadata.name",
            format!("Network {name:?} has {}: release them first", in_use(&used)),
        ));
    }
    if let Some(s) = subnets.iter().find(|s| s.spec.network == name) {
        return Err(refused(
            "metadata.name",
            format!(
                "Network {name:?} still has Subnet {:?}: delete its subnets first",
                name_of(s)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{AddressRange, NetworkSpec, SubnetSpec};

    fn underlay(name: &str, vlan: Option<u32>) -> Network {
        Network::new(
            name,
            NetworkSpec {
                network_type: NetworkType::Underlay,
                mode: Some(NetworkMode::VLAN),
                net_id: vlan,
                node_selector: BTreeMap::from([("rack".into(), "a".into())]),
            },
        )
    }

    fn subnet_of(name: &str, network: &str, cidr: &str, gateway: Option<&str>) -> Subnet {
        let version = if cidr.contains(':') {
            IpVersion::V6
        } else {
            IpVersion::V4
        };
        let mut range = AddressRange::new(version, cidr);
        range.gateway = gateway.map(str::to_owned);
        Subnet::new(name, SubnetSpec::new(network, range))
    }

    fn field(r: Result<()>) -> String {
        match r {
            Err(Refusal { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn networks() {
        assert!(network(&underlay("u", Some(100)), None).is_ok());
        assert!(network(&underlay("u", None), None).is_ok());
        assert_eq!(
            field(network(&underlay("u", Some(4095)), None)),
            "spec.netID"
        );
        let mut no_selector = underlay("u", Some(1));
        no_selector.spec.node_selector.clear();
        assert_eq!(field(network(&no_selector, None)), "spec.nodeSelector");
        let mut vxlan_underlay = underlay("u", Some(1));
        vxlan_underlay.spec.mode = Some(NetworkMode::VXLAN);
        assert_eq!(field(network(&vxlan_underlay, None)), "spec.mode");

        assert!(network(&Network::new("o", NetworkSpec::overlay(4)), None).is_ok());
        for vni in [0, MAX_VNI + 1] {
            let o = Network::new("o", NetworkSpec::overlay(vni));
            assert_eq!(field(network(&o, None)), "spec.netID", "VNI {vni}");
        }
        let mut no_vni = Network::new("o", NetworkSpec::overlay(4));
        no_vni.spec.net_id = None;
        assert_eq!(field(network(&no_vni, None)), "spec.netID");

        let old = underlay("u", Some(100));
        assert_eq!(
            field(network(&underlay("u", Some(101)), Some(&old))),
            "spec.netID"
        );
        let mut reselected = underlay("u", Some(100));
        reselected
            .spec
            .node_selector
            .insert("zone".into(), "b".into());
        assert!(
            network(&reselected, Some(&old)).is_ok(),
            "nodeSelector may change"
        );
    }

    #[test]
    fn subnets() {
        let nets = [
            underlay("u", Some(100)),
            Network::new("o", NetworkSpec::overlay(4)),
        ];
        let ok = subnet_of("s", "u", "10.0.0.0/24", Some("10.0.0.1"));
        assert!(subnet(&ok, None, &nets, &[]).is_ok());
        assert!(subnet(&subnet_of("v6", "o", "fd00::/64", None), None, &nets, &[]).is_ok());

        let cases: &[(Subnet, &str)] = &[
            (
                subnet_of("s", "u", "10.0.0.1/24", Some("10.0.0.1")),
                "spec.range.cidr",
            ),
            (
                subnet_of("s", "u", "fd00:0::/64", Some("fd00::1")),
                "spec.range.cidr",
            ),
            (subnet_of("s", "u", "bogus", None), "spec.range.cidr"),
            (
                subnet_of("s", "u", "10.0.0.0/24", Some("10.0.1.1")),
                "spec.range.gateway",
            ),
            (
                subnet_of("s", "u", "10.0.0.0/24", None),
                "spec.range.gateway",
            ),
            (
                subnet_of("s", "nowhere", "10.0.0.0/24", Some("10.0.0.1")),
                "spec.network",
            ),
        ];
        for (s, want) in cases {
            assert_eq!(
                field(subnet(s, None, &nets, &[])),
                *want,
                "{:?}",
                s.spec.range
            );
        }

        let mut wrong_version = subnet_of("s", "o", "10.0.0.0/24", None);
        wrong_version.spec.range.version = IpVersion::V6;
        assert_eq!(
            field(subnet(&wrong_version, None, &nets, &[])),
            "spec.range.version"
        );
        let mut backwards = ok.clone();
        backwards.spec.range.start = Some("10.0.0.50".into());
        backwards.spec.range.end = Some("10.0.0.10".into());
        assert_eq!(
            field(subnet(&backwards, None, &nets, &[])),
            "spec.range.end"
        );
        let mut start_outside = ok.clone();
        start_outside.spec.range.start = Some("10.9.0.50".into());
        assert_eq!(
            field(subnet(&start_outside, None, &nets, &[])),
            "spec.range.start"
        );
        let mut reserved_outside = ok.clone();
        reserved_outside.spec.range.reserved_ips = vec!["10.9.0.5".into()];
        assert_eq!(
            field(subnet(&reserved_outside, None, &nets, &[])),
            "spec.range.reservedIPs"
        );
        let mut excluded_bad = ok.clone();
        excluded_bad.spec.range.exclude_ips = vec!["ten".into()];
        assert_eq!(
            field(subnet(&excluded_bad, None, &nets, &[])),
            "spec.range.excludeIPs"
        );
        let mut big_vlan = ok.clone();
        big_vlan.spec.net_id = Some(5000);
        assert_eq!(field(subnet(&big_vlan, None, &nets, &[])), "spec.netID");
        let mut other_vlan = ok.clone();
        other_vlan.spec.net_id = Some(200);
        assert_eq!(field(subnet(&other_vlan, None, &nets, &[])), "spec.netID");

        let existing = [subnet_of("big", "o", "10.0.0.0/16", None)];
        assert_eq!(
            field(subnet(&ok, None, &nets, &existing)),
            "spec.range.cidr",
            "inside another subnet"
        );
        let wider = subnet_of("wide", "o", "10.0.0.0/8", None);
        assert_eq!(
            field(subnet(&wider, None, &nets, &existing)),
            "spec.range.cidr",
            "around another subnet"
        );
        assert!(
            subnet(&ok, None, &nets, std::slice::from_ref(&ok)).is_ok(),
            "a subnet does not overlap itself"
        );

        let mut moved = ok.clone();
        moved.spec.range.gateway = Some("10.0.0.254".into());
        assert_eq!(
            field(subnet(&moved, Some(&ok), &nets, &[])),
            "spec.range.gateway"
        );
        let mut more_reserved = ok.clone();
        more_reserved.spec.range.reserved_ips = vec!["10.0.0.9".into()];
        assert!(subnet(&more_reserved, Some(&ok), &nets, &[]).is_ok());
    }

    #[test]
    fn deletes_wait_for_the_addresses() {
        let s = subnet_of("s", "o", "10.0.0.0/24", None);
        let used = IPInstance::new(
            "10-0-0-5",
            crate::IPInstanceSpec {
                network: "o".into(),
                subnet: "s".into(),
                address: crate::InstanceAddress {
                    version: IpVersion::V4,
                    ip: "10.0.0.5/24".into(),
                    gateway: None,
                    net_id: None,
                    mac: None,
                },
                binding: Default::default(),
            },
        );
        assert_eq!(
            field(subnet_delete("s", std::slice::from_ref(&used))),
            "metadata.name"
        );
        assert!(subnet_delete("other", std::slice::from_ref(&used)).is_ok());
        assert_eq!(
            field(network_delete("o", &[], std::slice::from_ref(&used))),
            "metadata.name"
        );
        assert_eq!(
            field(network_delete("o", std::slice::from_ref(&s), &[])),
            "metadata.name"
        );
        assert!(network_delete("o", &[], &[]).is_ok());
    }
}
