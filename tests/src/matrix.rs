//! The connectivity matrix: which pod talks to which, over which path, and what the
//! receiver must see as the source address.
use std::net::IpAddr;

use anyhow::Result;

use crate::{
    cluster::{Cluster, external_v4, external_v6},
    netns::Netns,
    traffic::{ping, tcp_exchange},
};

/// What the receiver must see as the source address.
#[derive(Clone, Copy, Debug)]
pub enum Source {
    /// The sending pod's own address (no NAT, the Kubernetes network model).
    Pod,
    /// The sending node's address (masqueraded overlay egress).
    Node,
}

#[derive(Clone, Debug)]
pub struct Cell {
    pub name: &'static str,
    pub from: &'static str,
    /// A pod name, or "ext" for the external host.
    pub to: &'static str,
    pub source: Source,
}

pub const fn cell(
    name: &'static str,
    from: &'static str,
    to: &'static str,
    source: Source,
) -> Cell {
    Cell {
        name,
        from,
        to,
        source,
    }
}

/// Ping, then a TCP exchange whose server checks the source address it saw.
pub fn run_cell(c: &Cluster, cell: &Cell, v6: bool) -> Result<IpAddr> {
    let from = c.pod(cell.from);
    let (dst_ns, dst_ip): (&Netns, IpAddr) = if cell.to == "ext" {
        (&c.ext, if v6 { external_v6() } else { external_v4() })
    } else {
        let p = c.pod(cell.to);
        (&p.ns, if v6 { p.ipv6.into() } else { p.ipv4.into() })
    };
    let expected: IpAddr = match (cell.source, v6) {
        (Source::Pod, false) => from.ipv4.into(),
        (Source::Pod, true) => from.ipv6.into(),
        (Source::Node, false) => c.nodes[from.node].ipv4(),
        (Source::Node, true) => c.nodes[from.node].ipv6(),
    };
    ping(&from.ns, dst_ip)?;
    let seen = tcp_exchange(dst_ns, dst_ip, &from.ns)?;
    anyhow::ensure!(
        seen == expected,
        "receiver saw source {seen}, expected {expected}"
    );
    Ok(seen)
}

/// Runs every cell over IPv4 and IPv6, printing a line per cell; the failures.
pub fn run_matrix(c: &Cluster, cells: &[Cell]) -> Vec<String> {
    let mut failures = Vec::new();
    for cell in cells {
        for v6 in [false, true] {
            let family = if v6 { "IPv6" } else { "IPv4" };
            match run_cell(c, cell, v6) {
                Ok(seen) => eprintln!(
                    "ok   {:<46} {family}  {} → {}  (source seen: {seen})",
                    cell.name, cell.from, cell.to
                ),
                Err(e) => {
                    eprintln!(
                        "FAIL {:<46} {family}  {} → {}: {e:#}",
                        cell.name, cell.from, cell.to
                    );
                    failures.push(format!("{} ({family}): {e:#}", cell.name));
                }
            }
        }
    }
    failures
}

use crate::cluster::PodNet;

/// Pods of the all-eBPF (or all-fallback with 802.1Q) layout: (node, name, network).
pub const FULL_PODS: [(usize, &str, PodNet); 6] = [
    (0, "ua", PodNet::Vlan100),
    (0, "ub", PodNet::Vlan100),
    (0, "oa", PodNet::Overlay),
    (1, "uc", PodNet::Vlan100),
    (1, "ud", PodNet::Vlan200),
    (1, "ob", PodNet::Overlay),
];

/// Every path of the datapath table, on the `FULL_PODS` layout.
pub fn full_cells() -> Vec<Cell> {
    vec![
        cell("same node", "ua", "ub", Source::Pod),
        cell("underlay cross-node, same subnet", "ua", "uc", Source::Pod),
        cell(
            "underlay cross-node, other VLAN via gateway",
            "ua",
            "ud",
            Source::Pod,
        ),
        cell("overlay cross-node", "oa", "ob", Source::Pod),
        cell("hybrid underlay → overlay", "ua", "ob", Source::Pod),
        cell("hybrid overlay → underlay", "oa", "uc", Source::Pod),
        cell(
            "overlay → external (masqueraded)",
            "oa",
            "ext",
            Source::Node,
        ),
        cell(
            "underlay → external via its gateway",
            "ua",
            "ext",
            Source::Pod,
        ),
    ]
}

/// Pods of the mixed layout on a kernel without 802.1Q: node 1 in eBPF mode with
/// underlay and overlay pods, node 2 in fallback mode with overlay pods only.
pub const MIXED_PODS: [(usize, &str, PodNet); 4] = [
    (0, "ua", PodNet::Vlan100),
    (0, "oa", PodNet::Overlay),
    (1, "oc", PodNet::Overlay),
    (1, "od", PodNet::Overlay),
];

pub fn mixed_cells() -> Vec<Cell> {
    vec![
        cell("same node (fallback)", "oc", "od", Source::Pod),
        cell("overlay eBPF → fallback", "oa", "oc", Source::Pod),
        cell("overlay fallback → eBPF", "oc", "oa", Source::Pod),
        cell(
            "hybrid underlay (eBPF) → overlay (fallback)",
            "ua",
            "oc",
            Source::Pod,
        ),
        cell(
            "hybrid overlay (fallback) → underlay (eBPF)",
            "od",
            "ua",
            Source::Pod,
        ),
        cell(
            "overlay → external from the fallback node",
            "oc",
            "ext",
            Source::Node,
        ),
        cell(
            "underlay → external from the eBPF node",
            "ua",
            "ext",
            Source::Pod,
        ),
    ]
}

/// Why the mixed layout has no underlay pod on the fallback node here.
pub const MIXED_SKIP: &str = "SKIP (this kernel has no 802.1Q devices): underlay pods on the \
    fallback node need VLAN sub-interfaces; the kernel-matrix VMs run those cells";
