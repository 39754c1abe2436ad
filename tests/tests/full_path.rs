//! The connectivity matrix through the whole product: `rama-agent run` on every node
//! (standalone mode, one shared state directory), pods created by executing
//! `rama-cni` as a runtime does, addresses chosen by the IPAM, datapath programmed by
//! the agent's sync loop. Every cell over IPv4 and IPv6.
use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    cluster::Cluster,
    matrix::{Cell, FULL_PODS, MIXED_PODS, MIXED_SKIP, full_cells, mixed_cells, run_matrix},
    require_root,
};

/// Runs the cells; on failure shows the counters and both agents' logs.
fn assert_matrix(c: &Cluster, cells: &[Cell]) {
    let failures = run_matrix(c, cells);
    assert!(
        failures.is_empty(),
        "{} cell(s) failed:\n{}\n{}\nn1:\n{}\nn2:\n{}",
        failures.len(),
        failures.join("\n"),
        c.describe(),
        c.agent_log(0),
        c.agent_log(1)
    );
}

fn cluster(
    tag: &str,
    modes: &[DatapathMode],
    pods: &[(usize, &str, rama_tests::cluster::PodNet)],
) -> Cluster {
    let mut c = Cluster::new(tag, modes).expect("cluster");
    c.write_cluster_state().expect("state");
    for i in 0..modes.len() {
        c.start_agent(i, &[]).expect("agent");
    }
    for (node, name, net) in pods {
        c.add_cni_pod(*node, name, *net).expect("pod");
    }
    c
}

#[test]
fn ebpf_full_path_matrix() {
    require_root!();
    let c = cluster("fe", &[DatapathMode::Ebpf, DatapathMode::Ebpf], &FULL_PODS);
    c.gw.ip(&["neigh", "flush", "all"])
        .expect("flush router neighbours");
    assert_matrix(&c, &full_cells());
    for (node, program, reason) in [
        (0, "pod_egress", "redirect_local"),
        (0, "pod_egress", "redirect_vlan"),
        (0, "pod_egress", "redirect_vxlan"),
        (1, "uplink_ingress", "redirect_local"),
        (1, "vxlan_ingress", "redirect_local"),
    ] {
        assert!(
            c.count(node, program, reason) > 0,
            "node {} counted no {program}/{reason}\n{}",
            node + 1,
            c.describe()
        );
    }
    // A pod's interface comes up only once the datapath knows the pod: nothing it
    // sent (router solicitations, MLD reports) was dropped as from an unknown one.
    for node in 0..2 {
        assert_eq!(
            c.count(node, "pod_egress", "no_endpoint"),
            0,
            "node {}: packets from pods not yet in the datapath\n{}",
            node + 1,
            c.describe()
        );
    }
}

#[test]
fn mixed_full_path_matrix() {
    require_root!();
    let c = cluster(
        "fm",
        &[DatapathMode::Ebpf, DatapathMode::Fallback],
        &MIXED_PODS,
    );
    eprintln!("{MIXED_SKIP}");
    assert_matrix(&c, &mixed_cells());
}
