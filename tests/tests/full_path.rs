//! The connectivity matrix through the whole product: `rama-agent run` on every node
//! (standalone mode, one shared state directory), pods created by executing
//! `rama-cni` as a runtime does, addresses chosen by the IPAM, datapath programmed by
//! the agent's sync loop. Every cell over IPv4 and IPv6, from both nodes, in eBPF,
//! fallback and mixed modes. The same runs make the kernel matrix
//! (`cargo xtask kernel-matrix`, through the `rama-matrix` binary in VMs).
use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    cluster::Cluster,
    matrix::{CellResult, failures, full_path, lifecycle},
    require_root,
};

/// On failure shows the counters and both agents' logs.
fn assert_all_passed(c: &Cluster, results: &[CellResult]) {
    let failures = failures(results);
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

#[test]
fn ebpf_full_path_matrix() {
    require_root!();
    let (mut c, results) =
        full_path("fe", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    assert_all_passed(&c, &results);
    // The eBPF fast path did the work (a silent fallback to the stack would not count).
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
    // A crash and restart replaces the TC attachments in place and keeps forwarding;
    // teardown leaves nothing (the kernel matrix runs the same on pre-TCX kernels).
    for check in lifecycle(&mut c, 0) {
        if let Err(e) = check.result {
            panic!("{}: {e}\n{}", check.name, c.agent_log(0));
        }
    }
}

#[test]
fn mixed_full_path_matrix() {
    require_root!();
    let (c, results) =
        full_path("fm", &[DatapathMode::Ebpf, DatapathMode::Fallback]).expect("cluster");
    assert_all_passed(&c, &results);
}

#[test]
fn fallback_full_path_matrix() {
    require_root!();
    let (c, results) =
        full_path("ff", &[DatapathMode::Fallback, DatapathMode::Fallback]).expect("cluster");
    assert_all_passed(&c, &results);
}
