//! From the resource model (what operators and stores hold) to the IPAM's input, with
//! every unparsable field named.
use std::net::IpAddr;

use rama_api::{IPInstance, Network, NetworkType, Subnet};
use rama_ipam::{Allocation, Binding, Ipam, NetworkSpec, PodKey, SubnetSpec};

use crate::{Result, StoreError};

fn parse_ip(object: &str, field: &'static str, s: &str) -> Result<IpAddr> {
    s.parse().map_err(|_| StoreError::Invalid {
        object: object.to_owned(),
        field,
        detail: format!("{s:?} is not an IP address"),
    })
}

fn subnet_spec(s: &Subnet) -> Result<SubnetSpec> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let object = format!("Subnet {name:?}");
    let r = &s.spec.range;
    let cidr = r.cidr.parse().map_err(|_| StoreError::Invalid {
        object: object.clone(),
        field: "spec.range.cidr",
        detail: format!("{:?} is not a CIDR", r.cidr),
    })?;
    let opt = |field, v: &Option<String>| {
        v.as_deref()
            .map(|s| parse_ip(&object, field, s))
            .transpose()
    };
    let list = |field, v: &[String]| {
        v.iter()
            .map(|s| parse_ip(&object, field, s))
            .collect::<Result<Vec<_>>>()
    };
    Ok(SubnetSpec {
        name,
        network: s.spec.network.clone(),
        cidr: Some(cidr),
        gateway: opt("spec.range.gateway", &r.gateway)?,
        start: opt("spec.range.start", &r.start)?,
        end: opt("spec.range.end", &r.end)?,
        reserved_ips: list("spec.range.reservedIPs", &r.reserved_ips)?,
        excluded_ips: list("spec.range.excludeIPs", &r.exclude_ips)?,
        private: s
            .spec
            .config
            .as_ref()
            .and_then(|c| c.private)
            .unwrap_or(false),
    })
}

/// The allocation an IPInstance records.
pub fn allocation_of(i: &IPInstance) -> Result<Allocation> {
    let name = i.metadata.name.clone().unwrap_or_default();
    let object = format!("IPInstance {name:?}");
    let ip_text = i.spec.address.ip.split('/').next().unwrap_or_default();
    let ip = parse_ip(&object, "spec.address.ip", ip_text)?;
    let pod_name = i
        .spec
        .binding
        .pod_name
        .clone()
        .ok_or_else(|| StoreError::Invalid {
            object: object.clone(),
            field: "spec.binding.podName",
            detail: "is missing".into(),
        })?;
    Ok(Allocation {
        ip,
        subnet: i.spec.subnet.clone(),
        network: i.spec.network.clone(),
        pod: PodKey::new(i.metadata.namespace.clone().unwrap_or_default(), pod_name),
        binding: match &i.spec.binding.node_name {
            Some(node) => Binding::Bound { node: node.clone() },
            None => Binding::Retained,
        },
        retain: i.spec.binding.stateful.is_some(),
    })
}

/// Builds the IPAM from the objects, re-entering every allocation and cursor.
pub fn ipam_from(
    networks: &[Network],
    subnets: &[Subnet],
    instances: &[IPInstance],
    cursors: Vec<(String, IpAddr)>,
) -> Result<Ipam> {
    let nets = networks
        .iter()
        .map(|n| NetworkSpec {
            name: n.metadata.name.clone().unwrap_or_default(),
            network_type: match n.spec.network_type {
                NetworkType::Underlay => rama_ipam::NetworkType::Underlay,
                NetworkType::Overlay => rama_ipam::NetworkType::Overlay,
            },
        })
        .collect();
    let specs = subnets
        .iter()
        .map(subnet_spec)
        .collect::<Result<Vec<_>>>()?;
    let mut ipam = Ipam::new(nets, specs)?;
    let allocations = instances
        .iter()
        .map(allocation_of)
        .collect::<Result<Vec<_>>>()?;
    ipam.restore(allocations, cursors)?;
    Ok(ipam)
}
