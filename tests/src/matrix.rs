//! The connectivity matrix: which pod talks to which, over which path, and what the
//! receiver must see as the source address.
use std::net::IpAddr;

use anyhow::Result;
use rama_agent::dataplane::DatapathMode;

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

/// The pods of a kernel-matrix run: (node, name, network). n2 has two underlay pods
/// on VLAN 100 and two overlay pods, so every path exists from both nodes.
pub const PODS: [(usize, &str, PodNet); 8] = [
    (0, "ua", PodNet::Vlan100),
    (0, "ub", PodNet::Vlan100),
    (0, "oa", PodNet::Overlay),
    (1, "uc", PodNet::Vlan100),
    (1, "ue", PodNet::Vlan100),
    (1, "ud", PodNet::Vlan200),
    (1, "ob", PodNet::Overlay),
    (1, "oc", PodNet::Overlay),
];

/// Every path of the datapath table from n1, then from n2 (in mixed mode n1 is eBPF
/// and n2 the fallback, so each cross-node path is tried in both directions).
pub fn cells() -> Vec<Cell> {
    let mut cells = full_cells();
    cells.extend([
        cell("n2: same node", "uc", "ue", Source::Pod),
        cell("n2: same node, overlay", "ob", "oc", Source::Pod),
        cell(
            "n2: underlay cross-node, same subnet",
            "uc",
            "ua",
            Source::Pod,
        ),
        cell(
            "n2: underlay cross-node, other VLAN via gateway",
            "ud",
            "ua",
            Source::Pod,
        ),
        cell("n2: overlay cross-node", "ob", "oa", Source::Pod),
        cell("n2: hybrid underlay → overlay", "uc", "oa", Source::Pod),
        cell("n2: hybrid overlay → underlay", "ob", "ua", Source::Pod),
        cell(
            "n2: overlay → external (masqueraded)",
            "ob",
            "ext",
            Source::Node,
        ),
        cell(
            "n2: underlay → external via its gateway",
            "uc",
            "ext",
            Source::Pod,
        ),
    ]);
    cells
}

/// What one matrix run does on a given kernel: the pods it creates, the cells it
/// tries and the cells it cannot (with why).
pub struct Layout {
    pub pods: Vec<(usize, &'static str, PodNet)>,
    pub cells: Vec<Cell>,
    pub skipped: Vec<(Cell, &'static str)>,
}

/// Why a cell is skipped on a kernel without 802.1Q devices.
pub const NO_VLAN_DEVICES: &str = "this kernel has no 802.1Q devices: underlay pods on a \
    fallback node need VLAN sub-interfaces (the kernel-matrix VMs run this cell)";

/// The layout for nodes in `datapaths`: everything, except underlay pods on fallback
/// nodes when the kernel cannot make VLAN sub-interfaces (and the cells they are in).
pub fn layout(datapaths: &[DatapathMode], vlan_devices: bool) -> Layout {
    let pods: Vec<_> = PODS
        .into_iter()
        .filter(|(node, _, net)| {
            vlan_devices || !net.is_underlay() || datapaths[*node] != DatapathMode::Fallback
        })
        .collect();
    let present = |name: &str| name == "ext" || pods.iter().any(|(_, p, _)| *p == name);
    let (cells, skipped): (Vec<_>, Vec<_>) = cells()
        .into_iter()
        .partition(|c| present(c.from) && present(c.to));
    Layout {
        pods,
        cells,
        skipped: skipped.into_iter().map(|c| (c, NO_VLAN_DEVICES)).collect(),
    }
}

/// How one cell went over one address family.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Ping and TCP worked; the source address the receiver saw.
    Ok(IpAddr),
    Failed(String),
    Skipped(&'static str),
}

#[derive(Clone, Debug)]
pub struct CellResult {
    pub cell: &'static str,
    pub v6: bool,
    pub outcome: Outcome,
}

impl CellResult {
    pub fn family(&self) -> &'static str {
        if self.v6 { "IPv6" } else { "IPv4" }
    }
}

/// Runs the layout's cells over IPv4 and IPv6, printing a line per cell and family
/// (skipped cells too, with why).
pub fn run_layout(c: &Cluster, layout: &Layout) -> Vec<CellResult> {
    let mut results = Vec::new();
    for cell in &layout.cells {
        for v6 in [false, true] {
            let outcome = match run_cell(c, cell, v6) {
                Ok(seen) => Outcome::Ok(seen),
                Err(e) => Outcome::Failed(format!("{e:#}")),
            };
            let r = CellResult {
                cell: cell.name,
                v6,
                outcome,
            };
            match &r.outcome {
                Outcome::Ok(seen) => eprintln!(
                    "ok   {:<48} {}  {} → {}  (source seen: {seen})",
                    cell.name,
                    r.family(),
                    cell.from,
                    cell.to
                ),
                Outcome::Failed(e) => eprintln!(
                    "FAIL {:<48} {}  {} → {}: {e}",
                    cell.name,
                    r.family(),
                    cell.from,
                    cell.to
                ),
                Outcome::Skipped(_) => {}
            }
            results.push(r);
        }
    }
    for (cell, why) in &layout.skipped {
        eprintln!("SKIP {:<48} {why}", cell.name);
        for v6 in [false, true] {
            results.push(CellResult {
                cell: cell.name,
                v6,
                outcome: Outcome::Skipped(why),
            });
        }
    }
    results
}

/// The failures among `results`, one line each.
pub fn failures(results: &[CellResult]) -> Vec<String> {
    results
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Failed(e) => Some(format!("{} ({}): {e}", r.cell, r.family())),
            _ => None,
        })
        .collect()
}

/// A matrix run through the whole product: a cluster whose nodes run `datapaths`,
/// `rama-agent run` on each (standalone, one shared state directory), the layout's
/// pods created by executing `rama-cni`, then every cell.
pub fn full_path(tag: &str, datapaths: &[DatapathMode]) -> Result<(Cluster, Vec<CellResult>)> {
    let mut c = Cluster::new(tag, datapaths)?;
    c.write_cluster_state()?;
    for i in 0..datapaths.len() {
        c.start_agent(i, &[])?;
    }
    let layout = layout(datapaths, c.vlan_devices);
    for (node, name, net) in &layout.pods {
        c.add_cni_pod(*node, name, *net)?;
    }
    // The router resolves the pods afresh, so the nodes' ARP/ND responders answer.
    c.gw.ip(&["neigh", "flush", "all"])?;
    let results = run_layout(&c, &layout);
    Ok((c, results))
}

/// Rama's clsact filters on node `i`'s uplink ingress (how TC programs are attached
/// before 6.6; TCX links are not filters), one line each.
pub fn uplink_filters(c: &Cluster, i: usize) -> Result<Vec<String>> {
    let text = c.nodes[i]
        .ns
        .exec("tc", &["filter", "show", "dev", "up0", "ingress"])?;
    Ok(text
        .lines()
        .filter(|l| l.contains("rama_"))
        .map(|l| l.trim().to_owned())
        .collect())
}

/// A check of the agent's lifecycle on one kernel and how it went.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    /// What was seen when it passed, or why it failed.
    pub result: std::result::Result<String, String>,
}

/// The agent's lifecycle on eBPF node `node` of a cluster `full_path` built: a
/// crash and restart replaces the TC attachments in place (one clsact filter per hook
/// before 6.6, not one more per restart; one pinned link per hook with TCX) and the
/// restarted programs forward (the "underlay cross-node, same subnet" and "hybrid
/// underlay → overlay" cells); then `rama-agent teardown` leaves no filter, pin,
/// route, rule, device or nft table behind.
pub fn lifecycle(c: &mut Cluster, node: usize) -> Vec<Check> {
    let restart = (|| -> Result<String> {
        let before = (uplink_filters(c, node)?, c.pinned_links(node));
        c.stop_agent(node, libc::SIGKILL)?;
        c.start_agent(node, &[])?;
        let after = (uplink_filters(c, node)?, c.pinned_links(node));
        if before.0.len() > 1 || after.0.len() != before.0.len() || after.1 != before.1 {
            anyhow::bail!(
                "attachments changed across the restart: clsact filters {:?} → {:?}, \
                 pins {:?} → {:?}",
                before.0,
                after.0,
                before.1,
                after.1
            );
        }
        for cell in cells().iter().filter(|cell| {
            matches!(
                cell.name,
                "underlay cross-node, same subnet" | "hybrid underlay → overlay"
            )
        }) {
            for v6 in [false, true] {
                run_cell(c, cell, v6).map_err(|e| {
                    e.context(format!("{} after the restart (IPv6: {v6})", cell.name))
                })?;
            }
        }
        Ok(format!(
            "{} clsact filter(s), {} pin(s) before and after",
            after.0.len(),
            after.1.len()
        ))
    })();
    let teardown = (|| -> Result<String> {
        // Torn down even when the restart above failed to bring the agent back.
        if c.agents.get(node).is_some_and(Option::is_some) {
            c.stop_agent(node, libc::SIGTERM)?;
        }
        c.teardown_node(node, "ebpf")?;
        let left = (
            uplink_filters(c, node)?,
            c.pinned_links(node),
            c.footprint(node),
        );
        if !left.0.is_empty() || !left.1.is_empty() || !left.2.is_empty() {
            anyhow::bail!(
                "teardown left: clsact filters {:?}, pins {:?}\n{}",
                left.0,
                left.1,
                left.2
            );
        }
        Ok("nothing left".into())
    })();
    let checks = [
        ("agent restart: TC attachments replaced in place", restart),
        ("teardown: nothing left behind", teardown),
    ];
    checks
        .into_iter()
        .map(|(name, r)| {
            let result = r.map_err(|e| format!("{e:#}"));
            match &result {
                Ok(seen) => eprintln!("ok   {name:<48} {seen}"),
                Err(e) => eprintln!("FAIL {name:<48} {e}"),
            }
            Check { name, result }
        })
        .collect()
}
