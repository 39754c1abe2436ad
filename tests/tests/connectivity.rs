//! The connectivity matrix on real packets: a two-node cluster of network namespaces,
//! pods plumbed like the CNI plugin does, the datapath applied by the real
//! `rama-agent` binary, traffic by ping and TCP. Every cell runs over IPv4 and IPv6.
use std::net::IpAddr;

use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    cluster::{Cluster, PodNet, external_v4, external_v6},
    require_root,
    traffic::{ping, tcp_exchange},
};

/// What the receiver must see as the source address.
#[derive(Clone, Copy)]
enum Source {
    /// The sending pod's own address (no NAT, the Kubernetes network model).
    Pod,
    /// The sending node's address (masqueraded overlay egress).
    Node,
}

struct Cell {
    name: &'static str,
    from: &'static str,
    /// A pod name, or "ext" for the external host.
    to: &'static str,
    source: Source,
}

fn run_cell(c: &Cluster, cell: &Cell, v6: bool) -> anyhow::Result<()> {
    let from = c.pod(cell.from);
    let (dst_ns, dst_ip): (&rama_tests::netns::Netns, IpAddr) = if cell.to == "ext" {
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
    Ok(())
}

fn run_matrix(c: &Cluster, cells: &[Cell]) -> Vec<String> {
    let mut failures = Vec::new();
    for cell in cells {
        for v6 in [false, true] {
            let family = if v6 { "IPv6" } else { "IPv4" };
            match run_cell(c, cell, v6) {
                Ok(()) => eprintln!("ok   {} ({family}): {} → {}", cell.name, cell.from, cell.to),
                Err(e) => {
                    eprintln!(
                        "FAIL {} ({family}): {} → {}: {e:#}",
                        cell.name, cell.from, cell.to
                    );
                    failures.push(format!("{} ({family}): {e:#}", cell.name));
                }
            }
        }
    }
    failures
}

#[test]
fn ebpf_mode_matrix() {
    require_root!();
    let mut c = Cluster::new("ce", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    for (node, name, net) in [
        (0, "ua", PodNet::Vlan100),
        (0, "ub", PodNet::Vlan100),
        (0, "oa", PodNet::Overlay),
        (1, "uc", PodNet::Vlan100),
        (1, "ud", PodNet::Vlan200),
        (1, "ob", PodNet::Overlay),
    ] {
        c.add_pod(node, name, net).expect("pod");
    }
    for out in c.apply().expect("apply") {
        assert!(
            out.contains("\"active\":\"ebpf\""),
            "not in eBPF mode: {out}"
        );
        assert!(
            !out.contains("not resolved"),
            "gateway MAC unresolved: {out}"
        );
    }
    // Make the router resolve the pods afresh, so the nodes' ARP/ND responders answer.
    c.gw.ip(&["neigh", "flush", "all"])
        .expect("flush router neighbours");
    let cells = [
        Cell {
            name: "same node",
            from: "ua",
            to: "ub",
            source: Source::Pod,
        },
        Cell {
            name: "underlay cross-node, same subnet",
            from: "ua",
            to: "uc",
            source: Source::Pod,
        },
        Cell {
            name: "underlay cross-node, other VLAN via gateway",
            from: "ua",
            to: "ud",
            source: Source::Pod,
        },
        Cell {
            name: "overlay cross-node",
            from: "oa",
            to: "ob",
            source: Source::Pod,
        },
        Cell {
            name: "hybrid underlay → overlay",
            from: "ua",
            to: "ob",
            source: Source::Pod,
        },
        Cell {
            name: "hybrid overlay → underlay",
            from: "oa",
            to: "uc",
            source: Source::Pod,
        },
        Cell {
            name: "overlay → external (masqueraded)",
            from: "oa",
            to: "ext",
            source: Source::Node,
        },
        Cell {
            name: "underlay → external via its gateway",
            from: "ua",
            to: "ext",
            source: Source::Pod,
        },
    ];
    let failures = run_matrix(&c, &cells);
    assert!(
        failures.is_empty(),
        "{} cell(s) failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.describe()
    );

    // The eBPF fast path did the work (a silent fallback to the stack would not count).
    for (node, program, reason) in [
        (0, "pod_egress", "redirect_local"),
        (0, "pod_egress", "redirect_vlan"),
        (0, "pod_egress", "redirect_vxlan"),
        (1, "uplink_ingress", "redirect_local"),
        (1, "uplink_ingress", "arp_reply"),
        (1, "uplink_ingress", "nd_reply"),
        (1, "vxlan_ingress", "redirect_local"),
        (1, "pod_egress", "redirect_vxlan"),
    ] {
        assert!(
            c.count(node, program, reason) > 0,
            "node {} counted no {program}/{reason}\n{}",
            node + 1,
            c.describe()
        );
    }
    for node in 0..2 {
        let drops: Vec<_> = c
            .counters(node)
            .expect("counters")
            .into_iter()
            .filter(|r| (r.drop || r.reason == "neigh_miss") && r.packets > 0)
            .collect();
        assert!(
            drops.is_empty(),
            "node {} dropped (or missed a neighbour for) legitimate traffic: {drops:?}",
            node + 1
        );
    }
}

#[test]
fn mixed_mode_matrix() {
    require_root!();
    let mut c = Cluster::new("cm", &[DatapathMode::Ebpf, DatapathMode::Fallback]).expect("cluster");
    for (node, name, net) in [
        (0, "ua", PodNet::Vlan100),
        (0, "oa", PodNet::Overlay),
        (1, "oc", PodNet::Overlay),
        (1, "od", PodNet::Overlay),
    ] {
        c.add_pod(node, name, net).expect("pod");
    }
    let outs = c.apply().expect("apply");
    assert!(outs[0].contains("\"active\":\"ebpf\""), "{}", outs[0]);
    assert!(outs[1].contains("\"active\":\"fallback\""), "{}", outs[1]);
    eprintln!(
        "SKIP (this kernel has no 802.1Q devices): underlay pods on the fallback node; \
         the kernel-matrix VMs run those cells"
    );
    let cells = [
        Cell {
            name: "same node (fallback)",
            from: "oc",
            to: "od",
            source: Source::Pod,
        },
        Cell {
            name: "overlay eBPF → fallback",
            from: "oa",
            to: "oc",
            source: Source::Pod,
        },
        Cell {
            name: "overlay fallback → eBPF",
            from: "oc",
            to: "oa",
            source: Source::Pod,
        },
        Cell {
            name: "hybrid underlay (eBPF) → overlay (fallback)",
            from: "ua",
            to: "oc",
            source: Source::Pod,
        },
        Cell {
            name: "hybrid overlay (fallback) → underlay (eBPF)",
            from: "od",
            to: "ua",
            source: Source::Pod,
        },
        Cell {
            name: "overlay → external from the fallback node",
            from: "oc",
            to: "ext",
            source: Source::Node,
        },
        Cell {
            name: "underlay → external from the eBPF node",
            from: "ua",
            to: "ext",
            source: Source::Pod,
        },
    ];
    let failures = run_matrix(&c, &cells);
    assert!(
        failures.is_empty(),
        "{} cell(s) failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.describe()
    );
    for (program, reason) in [
        ("pod_egress", "redirect_vxlan"),
        ("vxlan_ingress", "redirect_local"),
    ] {
        assert!(
            c.count(0, program, reason) > 0,
            "eBPF node counted no {program}/{reason}\n{}",
            c.describe()
        );
    }
}
