//! Host plumbing both backends share: the host side of each pod veth (the pods'
//! link-local gateway), local pod routes, and masquerade for overlay egress.
//!
//! The pods' gateway (169.254.1.1 and fe80::1) is an address of every host-side veth,
//! so the node's kernel answers the pod's ARP/ND for it in both modes: the veth is an
//! untagged link the host owns, the kernel's neighbour code already does this right,
//! and keeping it out of eBPF keeps the programs small. (On the uplink, where the VLAN
//! is not terminated by any kernel device in eBPF mode, the eBPF program answers.)
use std::{
    collections::{HashMap, HashSet},
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::{Command, Stdio},
};

use ipnet::IpNet;
use rama_common::{GATEWAY_V4, GATEWAY_V6};

use super::Written;
use crate::{
    Error, Result, defaults,
    net::{Link, Netlink, RuleSpec, route_destination, sysctl},
    state::{Fabric, LocalEndpoint, ValidState},
};

/// The kernel links a state names, looked up before anything is written so a missing
/// interface fails the apply with nothing changed.
pub struct Links {
    pub uplink: Link,
    /// In `state.endpoints` order.
    pub endpoints: Vec<Link>,
}

/// One dump of the node's links rather than a query per pod: a sync's cost should
/// not grow by a netlink round trip per pod.
pub async fn resolve_links(nl: &Netlink, state: &ValidState) -> Result<Links> {
    let mut by_name: HashMap<String, Link> = nl
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name.clone(), l))
        .collect();
    let uplink_name = &state.state.node.uplink;
    let uplink = by_name
        .get(uplink_name)
        .cloned()
        .ok_or_else(|| Error::UplinkNotFound(uplink_name.clone()))?;
    let mut endpoints = Vec::with_capacity(state.state.endpoints.len());
    for ep in &state.state.endpoints {
        let link = by_name.remove(&ep.host_interface).ok_or_else(|| {
            Error::InterfaceNotFound(format!("{} (endpoint {:?})", ep.host_interface, ep.name))
        })?;
        endpoints.push(link);
    }
    Ok(Links { uplink, endpoints })
}

/// The host side of a pod as the last apply left it: the veth up with the gateway
/// addresses, and the pod's routes in the local table.
type EndpointHost = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// What the shared host plumbing last wrote (see [`Written`]): the masquerade
/// ruleset, and each pod's host side by ifindex, so a sync writes only the pods that
/// are new or changed — four netlink round trips per pod and sync otherwise, about
/// 10 ms a sync at 100 pods — and everything again every [`super::FULL_WRITE_EVERY`].
#[derive(Debug, Default)]
pub struct HostWritten {
    masquerade: Written<String>,
    endpoints: Written<HashMap<u32, EndpointHost>>,
}

impl HostWritten {
    /// After a teardown removed what was written.
    pub fn forget(&mut self) {
        self.masquerade.forget();
        self.endpoints.forget();
    }
}

pub fn gateway_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(GATEWAY_V4))
}

pub fn gateway_v6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(GATEWAY_V6))
}

/// Host addresses of one pod endpoint as /32 and /128 routes.
pub fn endpoint_routes(ep: &LocalEndpoint) -> impl Iterator<Item = IpNet> + '_ {
    ep.ipv4
        .map(|a| IpNet::from(IpAddr::V4(a)))
        .into_iter()
        .chain(ep.ipv6.map(|a| IpNet::from(IpAddr::V6(a))))
}

/// Hands the masquerade ruleset to nft unless it is what nft was last given (and
/// that is still trusted, see [`Written`]).
fn apply_masquerade(state: &ValidState, written: &mut Written<String>) -> Result<()> {
    let ruleset = masquerade_ruleset(state);
    if written.take().as_ref() == Some(&ruleset) {
        written.put(ruleset, false);
        return Ok(());
    }
    run_nft(&ruleset)?;
    written.put(ruleset, true);
    Ok(())
}

/// Converges the shared host plumbing on `state`.
pub async fn apply(
    nl: &Netlink,
    state: &ValidState,
    links: &Links,
    written: &mut HostWritten,
) -> Result<()> {
    // A node forwards for its pods (RFC 1812 router behaviour, both families).
    sysctl("net/ipv4/ip_forward", "1")?;
    sysctl("net/ipv6/conf/all/forwarding", "1")?;

    // Taken now: a sync that fails half-way writes everything again next time.
    let before = written.endpoints.take();
    let full = before.is_none();
    let mut now = HashMap::with_capacity(links.endpoints.len());
    let mut wanted = HashSet::new();
    for (ep, link) in state.state.endpoints.iter().zip(&links.endpoints) {
        let host: EndpointHost = (ep.ipv4, ep.ipv6);
        let done = before
            .as_ref()
            .is_some_and(|b| b.get(&link.index) == Some(&host));
        if !done {
            nl.set_up(link.index).await?;
            nl.ensure_address(link.index, gateway_v4(), 32).await?;
            if ep.ipv6.is_some() {
                nl.ensure_address(link.index, gateway_v6(), 64).await?;
            }
        }
        for dst in endpoint_routes(ep) {
            if !done {
                nl.replace_route(dst, link.index, None, defaults::TABLE_LOCAL)
                    .await?;
            }
            wanted.insert(dst);
        }
        now.insert(link.index, host);
    }
    nl.ensure_rules(&local_rules()).await?;
    for route in nl.rama_routes(defaults::TABLE_LOCAL).await? {
        if !route_destination(&route).is_some_and(|d| wanted.contains(&d)) {
            nl.delete_route(route).await?;
        }
    }
    written.endpoints.put(now, full);
    apply_masquerade(state, &mut written.masquerade)
}

/// `lookup TABLE_LOCAL` first, for both families: local pods win over every policy.
pub fn local_rules() -> [RuleSpec; 2] {
    [false, true].map(|v6| RuleSpec {
        v6,
        priority: defaults::RULE_PRIORITY_LOCAL,
        src: None,
        table: defaults::TABLE_LOCAL,
    })
}

/// Removes the shared host plumbing, collecting errors.
pub async fn teardown(nl: &Netlink, errors: &mut Vec<Error>) {
    match nl.rama_rules().await {
        Ok(rules) => {
            for rule in rules {
                if let Err(e) = nl.delete_rule(rule).await {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    match nl.rama_routes(defaults::TABLE_LOCAL).await {
        Ok(routes) => {
            for r in routes {
                if let Err(e) = nl.delete_route(r).await {
                    errors.push(e);
                }
            }
        }
        Err(e) => errors.push(e),
    }
    if let Err(e) = run_nft(&format!(
        "table inet {t}\ndelete table inet {t}\n",
        t = defaults::NFT_TABLE
    )) {
        errors.push(e);
    }
}

/// The nftables ruleset that masquerades overlay pods leaving the cluster. Traffic
/// between cluster subnets is never NATed (the Kubernetes network model).
pub fn masquerade_ruleset(state: &ValidState) -> String {
    let table = defaults::NFT_TABLE;
    let mut out = format!("table inet {table}\ndelete table inet {table}\n");
    let overlay: Vec<IpNet> = state
        .state
        .subnets
        .iter()
        .filter(|s| matches!(s.fabric, Fabric::Overlay { .. }))
        .map(|s| s.cidr)
        .collect();
    if overlay.is_empty() {
        return out;
    }
    let cluster: Vec<IpNet> = state.state.subnets.iter().map(|s| s.cidr).collect();
    let set = |name: &str, ty: &str, nets: &[IpNet], v6: bool| {
        let elems: Vec<String> = nets
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == v6)
            .map(|n| n.to_string())
            .collect();
        if elems.is_empty() {
            format!("  set {name} {{ type {ty}; flags interval; }}\n")
        } else {
            format!(
                "  set {name} {{ type {ty}; flags interval; elements = {{ {} }}; }}\n",
                elems.join(", ")
            )
        }
    };
    out.push_str(&format!("table inet {table} {{\n"));
    out.push_str(&set("overlay4", "ipv4_addr", &overlay, false));
    out.push_str(&set("overlay6", "ipv6_addr", &overlay, true));
    out.push_str(&set("cluster4", "ipv4_addr", &cluster, false));
    out.push_str(&set("cluster6", "ipv6_addr", &cluster, true));
    out.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         ip saddr @overlay4 ip daddr != @cluster4 masquerade\n    \
         ip6 saddr @overlay6 ip6 daddr != @cluster6 masquerade\n  }\n}\n",
    );
    out
}

/// Applies a ruleset in one nft transaction (all or nothing).
fn run_nft(ruleset: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("running nft (is the nftables package installed?)", e))?;
    child
        .stdin
        .take()
        .ok_or_else(|| Error::io("nft stdin", std::io::Error::other("no stdin")))?
        .write_all(ruleset.as_bytes())
        .map_err(|e| Error::io("writing to nft", e))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for nft", e))?;
    if !out.status.success() {
        return Err(Error::Nft {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeState;

    #[test]
    fn masquerade_covers_overlay_sources_only_leaving_the_cluster() {
        let state: NodeState = serde_json::from_value(serde_json::json!({
            "node": {"name": "n1", "uplink": "up0", "vtepIp": "10.0.0.1", "vtepMac": "02:00:00:00:00:01"},
            "subnets": [
                {"name": "u", "cidr": "10.100.0.0/24", "fabric": {"type": "underlay", "vlan": 100}, "gateway": "10.100.0.1"},
                {"name": "o", "cidr": "10.244.0.0/24", "fabric": {"type": "overlay", "vni": 7}},
                {"name": "o6", "cidr": "fd00:244::/64", "fabric": {"type": "overlay", "vni": 7}}
            ]
        }))
        .expect("state");
        let rules = masquerade_ruleset(&state.validate().expect("valid"));
        assert!(rules.contains(
            "set overlay4 { type ipv4_addr; flags interval; elements = { 10.244.0.0/24 }; }"
        ));
        assert!(rules.contains("elements = { 10.100.0.0/24, 10.244.0.0/24 }"));
        assert!(rules.contains(
            "set overlay6 { type ipv6_addr; flags interval; elements = { fd00:244::/64 }; }"
        ));
        assert!(rules.contains("ip saddr @overlay4 ip daddr != @cluster4 masquerade"));
        // Recreated atomically: the delete is in the same transaction.
        assert!(rules.starts_with("table inet rama\ndelete table inet rama\n"));
    }
}
