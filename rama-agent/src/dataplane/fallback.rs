//! The policy-route fallback: the original Rama (Hybridnet) datapath, for kernels
//! without the eBPF features Rama needs or when the operator forces it.
//!
//! | what | how |
//! |---|---|
//! | local pods | /32, /128 via the veth in `TABLE_LOCAL`, rule `lookup TABLE_LOCAL` first |
//! | underlay subnet S on VLAN v | VLAN sub-interface of the uplink with proxy ARP/NDP; table `TABLE_UNDERLAY_BASE+id(S)`: `S dev vlan`, `default via gw`; rule `from S` |
//! | overlay | a VXLAN device (VNI, local VTEP) with a permanent neighbour per remote pod (IP → remote VTEP MAC) and an FDB entry per remote node (VTEP MAC → VTEP IP) |
//! | hybrid | rule `from S lookup TABLE_HYBRID` (overlay subnets via VXLAN) before S's own table; `TABLE_OVERLAY` also routes remote underlay pods via VXLAN for overlay senders |
//! | overlay egress | masquerade (shared with the eBPF backend) |
//!
//! On the wire this is indistinguishable from the eBPF backend: the same VLAN tags,
//! the same MACs answering ARP/ND for underlay pods (the uplink's, inherited by the
//! VLAN sub-interface), the same VXLAN VNI and inner MACs.
use std::{collections::HashSet, net::IpAddr};

use ipnet::IpNet;

use super::{ApplyReport, Dataplane, host};
use crate::{
    Error, Result, defaults,
    net::{Link, NeighbourKey, NeighbourKind, Netlink, RuleSpec, route_destination, sysctl},
    state::{Fabric, LocalEndpoint, ValidState},
};

/// IFLA_IFALIAS of the devices this backend creates.
const ALIAS: &str = "rama:fallback";

pub struct FallbackDataplane {
    nl: Option<Netlink>,
    /// The eBPF backend's pins for this node: released on apply, so a node switched
    /// from eBPF to fallback stops running the programs.
    ebpf_pin_dir: std::path::PathBuf,
    host: host::HostWritten,
}

impl FallbackDataplane {
    pub fn new(ebpf_pin_dir: &std::path::Path) -> Result<Self> {
        Ok(Self {
            nl: None,
            ebpf_pin_dir: ebpf_pin_dir.to_owned(),
            host: Default::default(),
        })
    }

    fn netlink(&mut self) -> Result<Netlink> {
        if let Some(nl) = &self.nl {
            return Ok(nl.clone());
        }
        let nl = Netlink::connect()?;
        self.nl = Some(nl.clone());
        Ok(nl)
    }
}

/// The VLAN sub-interface name: `uplink.vlan` like ifupdown, unless that overflows
/// IFNAMSIZ.
pub fn vlan_device(uplink: &str, vlan: u16) -> String {
    let name = format!("{uplink}.{vlan}");
    if name.len() <= 15 {
        name
    } else {
        format!("rama.v{vlan}")
    }
}

async fn ensure_vlan(nl: &Netlink, uplink: &Link, vlan: u16, subnet: &str) -> Result<Link> {
    let name = vlan_device(&uplink.name, vlan);
    let msg = rtnetlink::LinkVlan::new(&name, uplink.index, vlan)
        .up()
        .build();
    match nl.ensure_link(&name, msg, ALIAS).await {
        Err(Error::Netlink { source, .. })
            if matches!(&source, rtnetlink::Error::NetlinkError(m)
                if m.code.is_some_and(|c| -c.get() == libc::EOPNOTSUPP)) =>
        {
            Err(Error::KernelFeature {
                feature: "802.1Q VLAN devices",
                detail: format!(
                    "underlay subnet {subnet:?} needs {name} on VLAN {vlan}; this kernel has no 8021q"
                ),
            })
        }
        other => other,
    }
}

async fn ensure_vxlan(nl: &Netlink, state: &ValidState, uplink: &Link, vni: u32) -> Result<Link> {
    // A device from the eBPF backend (collect-metadata) cannot be reused.
    if let Some(existing) = nl.link(defaults::VXLAN_DEVICE).await?
        && existing.alias.as_deref() != Some(ALIAS)
    {
        nl.delete_link(existing.index).await?;
    }
    let mut msg = rtnetlink::LinkVxlan::new(defaults::VXLAN_DEVICE, vni)
        .port(rama_common::VXLAN_PORT)
        .learning(false)
        // Zero outer UDP checksum over IPv4 (RFC 7348 §5), as the eBPF backend sends.
        .udp_csum(false)
        .dev(uplink.index)
        .address(state.state.node.vtep_mac.0.to_vec());
    msg = match state.state.node.vtep_ip {
        IpAddr::V4(a) => msg.local(a),
        IpAddr::V6(a) => msg.local6(a),
    };
    let link = nl
        .ensure_link(defaults::VXLAN_DEVICE, msg.build(), ALIAS)
        .await?;
    if link.mac != state.state.node.vtep_mac {
        nl.set_mac(link.index, state.state.node.vtep_mac).await?;
    }
    Ok(link)
}

impl Dataplane for FallbackDataplane {
    fn kind(&self) -> &'static str {
        "fallback"
    }

    async fn apply(&mut self, state: &ValidState) -> Result<ApplyReport> {
        let nl = self.netlink()?;
        let links = host::resolve_links(&nl, state).await?;
        let s = &state.state;
        // Whatever the eBPF backend left here (programs attached through pinned links)
        // would keep forwarding from stale maps: release it first.
        super::ebpf::release_pins(&self.ebpf_pin_dir)?;

        // Which underlay subnets have local pods: only those need a VLAN device here.
        let mut local_subnets = HashSet::new();
        for ep in &s.endpoints {
            for net in host::endpoint_routes(ep) {
                if let Some(sub) = state.subnet_of(net.addr()) {
                    local_subnets.insert(sub.name.clone());
                }
            }
        }
        // Create the devices first: a kernel without 8021q fails here, before any
        // route or rule was written.
        let mut vlan_links = Vec::new();
        for subnet in &s.subnets {
            if let Fabric::Underlay { vlan } = subnet.fabric
                && local_subnets.contains(&subnet.name)
            {
                let link = ensure_vlan(&nl, &links.uplink, vlan, &subnet.name).await?;
                vlan_links.push((subnet, link));
            }
        }
        host::apply(&nl, state, &links, &mut self.host).await?;

        let mut wanted_routes: HashSet<(u32, IpNet)> = HashSet::new();
        let mut wanted_rules: HashSet<RuleSpec> = host::local_rules().into_iter().collect();

        // Underlay: one table per subnet with local pods.
        for (subnet, link) in &vlan_links {
            sysctl(&format!("net/ipv4/conf/{}/proxy_arp", link.name), "1")?;
            sysctl(&format!("net/ipv6/conf/{}/proxy_ndp", link.name), "1")?;
            let table = defaults::TABLE_UNDERLAY_BASE + state.subnet_id(subnet);
            nl.replace_route(subnet.cidr, link.index, None, table)
                .await?;
            wanted_routes.insert((table, subnet.cidr));
            let default = match subnet.cidr {
                IpNet::V4(_) => IpNet::V4(ipnet::Ipv4Net::default()),
                IpNet::V6(_) => IpNet::V6(ipnet::Ipv6Net::default()),
            };
            nl.replace_route(default, link.index, subnet.gateway, table)
                .await?;
            wanted_routes.insert((table, default));
            let v6 = subnet.cidr.addr().is_ipv6();
            wanted_rules.insert(RuleSpec {
                v6,
                priority: defaults::RULE_PRIORITY_HYBRID,
                src: Some(subnet.cidr),
                table: defaults::TABLE_HYBRID,
            });
            wanted_rules.insert(RuleSpec {
                v6,
                priority: defaults::RULE_PRIORITY_UNDERLAY,
                src: Some(subnet.cidr),
                table,
            });
            // Proxy NDP for our pods on this VLAN, and none for pods that left: a stale
            // entry would answer for an address that now lives on another node.
            let mut wanted_proxies = HashSet::new();
            for ep in &s.endpoints {
                if let Some(IpAddr::V6(a)) = host::endpoint_routes(ep)
                    .map(|n| n.addr())
                    .find(|a| a.is_ipv6() && subnet.cidr.contains(a))
                {
                    nl.replace_proxy_neighbour(link.index, IpAddr::V6(a))
                        .await?;
                    wanted_proxies.insert(NeighbourKey::Ip(IpAddr::V6(a)));
                }
            }
            for (key, msg) in nl
                .neighbour_entries(link.index, NeighbourKind::Proxy)
                .await?
            {
                if !wanted_proxies.contains(&key) {
                    nl.delete_neighbour(msg).await?;
                }
            }
        }

        // Overlay and hybrid.
        if let Some(vni) = state.overlay_vni {
            let vx = ensure_vxlan(&nl, state, &links.uplink, vni).await?;
            for subnet in &s.subnets {
                if let Fabric::Overlay { .. } = subnet.fabric {
                    for table in [defaults::TABLE_OVERLAY, defaults::TABLE_HYBRID] {
                        nl.replace_route(subnet.cidr, vx.index, None, table).await?;
                        wanted_routes.insert((table, subnet.cidr));
                    }
                    let v6 = subnet.cidr.addr().is_ipv6();
                    wanted_rules.insert(RuleSpec {
                        v6,
                        priority: defaults::RULE_PRIORITY_OVERLAY,
                        src: Some(subnet.cidr),
                        table: defaults::TABLE_OVERLAY,
                    });
                }
            }
            let mut wanted_neigh = HashSet::new();
            let mut wanted_fdb = HashSet::new();
            for node in &s.remote_nodes {
                nl.replace_fdb(vx.index, node.vtep_mac, node.vtep_ip)
                    .await?;
                wanted_fdb.insert(NeighbourKey::Mac(node.vtep_mac));
            }
            for (key, msg) in nl.neighbour_entries(vx.index, NeighbourKind::Fdb).await? {
                if !wanted_fdb.contains(&key) {
                    nl.delete_neighbour(msg).await?;
                }
            }
            for r in &s.remote_endpoints {
                let (Some(node), Some(subnet)) =
                    (state.remote_node(&r.node), state.subnet_of(r.ip))
                else {
                    continue;
                };
                nl.replace_neighbour(vx.index, r.ip, node.vtep_mac).await?;
                wanted_neigh.insert(NeighbourKey::Ip(r.ip));
                if let Fabric::Underlay { .. } = subnet.fabric {
                    // Overlay pods reach remote underlay pods through the overlay.
                    let host = IpNet::from(r.ip);
                    nl.replace_route(host, vx.index, None, defaults::TABLE_OVERLAY)
                        .await?;
                    wanted_routes.insert((defaults::TABLE_OVERLAY, host));
                }
            }
            for (key, msg) in nl.neighbour_entries(vx.index, NeighbourKind::Ip).await? {
                if !wanted_neigh.contains(&key) {
                    nl.delete_neighbour(msg).await?;
                }
            }
        } else if let Some(existing) = nl.link(defaults::VXLAN_DEVICE).await? {
            nl.delete_link(existing.index).await?;
        }
        let wanted_list: Vec<RuleSpec> = wanted_rules.iter().copied().collect();
        nl.ensure_rules(&wanted_list).await?;

        // Garbage: Rama's routes and rules that the state no longer wants.
        let mut tables = vec![defaults::TABLE_OVERLAY, defaults::TABLE_HYBRID];
        tables.extend(
            (1..=state.subnet_ids.len() as u32 + 16).map(|i| defaults::TABLE_UNDERLAY_BASE + i),
        );
        for table in tables {
            for route in nl.rama_routes(table).await? {
                if !route_destination(&route).is_some_and(|d| wanted_routes.contains(&(table, d))) {
                    nl.delete_route(route).await?;
                }
            }
        }
        for rule in nl.rama_rules().await? {
            if !wanted_rules.iter().any(|spec| spec.matches(&rule)) {
                nl.delete_rule(rule).await?;
            }
        }
        let vlan_names: HashSet<String> = vlan_links.iter().map(|(_, l)| l.name.clone()).collect();
        remove_stale_vlans(&nl, &vlan_names).await?;

        Ok(ApplyReport {
            endpoints: s.endpoints.len(),
            remote_endpoints: s.remote_endpoints.len(),
            subnets: s.subnets.len(),
            notes: Vec::new(),
        })
    }

    async fn check_endpoint(&mut self, ep: &LocalEndpoint) -> Result<()> {
        let nl = self.netlink()?;
        let link = nl.link(&ep.host_interface).await?.ok_or_else(|| {
            Error::CheckFailed(format!("interface {} is gone", ep.host_interface))
        })?;
        let routes = nl.rama_routes(defaults::TABLE_LOCAL).await?;
        for dst in host::endpoint_routes(ep) {
            let found = routes.iter().any(|r| {
                route_destination(r) == Some(dst)
                    && r.attributes.iter().any(|a| {
                        matches!(a, netlink_packet_route::route::RouteAttribute::Oif(i) if *i == link.index)
                    })
            });
            if !found {
                return Err(Error::CheckFailed(format!(
                    "no route {dst} via {} in table {}",
                    ep.host_interface,
                    defaults::TABLE_LOCAL
                )));
            }
        }
        Ok(())
    }

    async fn teardown(&mut self) -> Result<()> {
        let nl = self.netlink()?;
        let mut errors = Vec::new();
        host::teardown(&nl, &mut errors).await;
        self.host.forget();
        remove_policy_routing(&nl, &mut errors, true).await;
        if let Err(e) = super::ebpf::release_pins(&self.ebpf_pin_dir) {
            errors.push(e);
        }
        Error::collected(errors)
    }
}

/// Removes this backend's objects: the per-subnet, overlay and hybrid tables, its
/// policy rules (the local-pod rule too when `all`), its VXLAN and VLAN devices.
/// Used by teardown and by the eBPF backend when it takes over a node.
pub async fn remove_policy_routing(nl: &Netlink, errors: &mut Vec<Error>, all: bool) {
    let mut tables = vec![defaults::TABLE_OVERLAY, defaults::TABLE_HYBRID];
    tables.extend((1..=defaults::MAX_SUBNETS).map(|i| defaults::TABLE_UNDERLAY_BASE + i));
    // Listing each table would be 1000 dumps; one dump per family finds the used ones.
    match nl.rama_routes_all().await {
        Ok(routes) => {
            for (table, r) in routes {
                if tables.contains(&table)
                    && let Err(e) = nl.delete_route(r).await
                {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    match nl.rama_rules().await {
        Ok(rules) => {
            for r in rules {
                let local = host::local_rules().iter().any(|spec| spec.matches(&r));
                if (all || !local)
                    && let Err(e) = nl.delete_rule(r).await
                {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    match nl.links().await {
        Ok(links) => {
            for l in links
                .into_iter()
                .filter(|l| l.alias.as_deref() == Some(ALIAS))
            {
                if let Err(e) = nl.delete_link(l.index).await {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
}

/// Deletes VLAN sub-interfaces this backend created for subnets that no longer have
/// local pods (only devices carrying our alias).
async fn remove_stale_vlans(nl: &Netlink, keep: &HashSet<String>) -> Result<()> {
    for link in nl.links().await? {
        if link.alias.as_deref() == Some(ALIAS)
            && link.name != defaults::VXLAN_DEVICE
            && !keep.contains(&link.name)
        {
            nl.delete_link(link.index).await?;
        }
    }
    Ok(())
}
