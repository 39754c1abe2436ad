//! The connectivity matrix on real packets: a two-node cluster of network namespaces,
//! pods plumbed like the CNI plugin does, the datapath applied by the real
//! `rama-agent` binary, traffic by ping and TCP. Every cell runs over IPv4 and IPv6.
use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    cluster::Cluster,
    matrix::{FULL_PODS, MIXED_PODS, MIXED_SKIP, full_cells, mixed_cells, run_matrix},
    require_root,
};

#[test]
fn ebpf_mode_matrix() {
    require_root!();
    let mut c = Cluster::new("ce", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    // The XDP pre-filter is off by default on veth uplinks; run it here on real packets.
    c.xdp = "on";
    for (node, name, net) in FULL_PODS {
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
    let failures = run_matrix(&c, &full_cells());
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
        (1, "uplink_xdp", "pass_stack"),
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
    for (node, name, net) in MIXED_PODS {
        c.add_pod(node, name, net).expect("pod");
    }
    let outs = c.apply().expect("apply");
    assert!(outs[0].contains("\"active\":\"ebpf\""), "{}", outs[0]);
    assert!(outs[1].contains("\"active\":\"fallback\""), "{}", outs[1]);
    eprintln!("{MIXED_SKIP}");
    let failures = run_matrix(&c, &mixed_cells());
    assert!(
        failures.is_empty(),
        "{} cell(s) failed:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        c.describe()
    );
    // Default XDP policy: not attached to a veth uplink, and the apply says so.
    assert!(
        outs[0].contains("XDP pre-filter not attached"),
        "{}",
        outs[0]
    );
    assert_eq!(c.count(0, "uplink_xdp", "pass_stack"), 0);
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

#[test]
fn fallback_mode_overlay() {
    require_root!();
    let mut c =
        Cluster::new("cf", &[DatapathMode::Fallback, DatapathMode::Fallback]).expect("cluster");
    for (node, name, net) in MIXED_PODS
        .iter()
        .filter(|p| p.2 == rama_tests::cluster::PodNet::Overlay)
    {
        c.add_pod(*node, name, *net).expect("pod");
    }
    for out in c.apply().expect("apply") {
        assert!(out.contains("\"active\":\"fallback\""), "{out}");
    }
    eprintln!("{MIXED_SKIP}");
    let cells: Vec<_> = mixed_cells()
        .into_iter()
        .filter(|c| c.from != "ua" && c.to != "ua")
        .collect();
    let failures = run_matrix(&c, &cells);
    assert!(
        failures.is_empty(),
        "{} cell(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
