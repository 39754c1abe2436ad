//! Both backends are idempotent, converge from any starting point (including each
//! other's), remove what the state no longer wants, and keep forwarding after the
//! agent process is gone (the pinned maps and links outlive it).
use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    cluster::{Cluster, PodNet},
    require_root,
    traffic::ping,
};

#[test]
fn apply_is_idempotent_and_collects_garbage() {
    require_root!();
    let mut c = Cluster::new("gi", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    for (node, name, net) in [
        (0, "ua", PodNet::Vlan100),
        (0, "oa", PodNet::Overlay),
        (1, "ub", PodNet::Vlan100),
        (1, "ob", PodNet::Overlay),
    ] {
        c.add_pod(node, name, net).expect("pod");
    }
    c.apply().expect("first apply");
    let footprint = c.footprint(0);
    let links = c.pinned_links(0);
    // Uplink TC, VXLAN, two pods (no XDP: the uplink is a veth and the policy is auto).
    assert_eq!(links.len(), 4, "{links:?}");
    // Two local and two remote pods, two addresses each.
    assert_eq!(c.map_len(0, "RAMA_ENDPOINTS"), 8);
    assert_eq!(c.map_len(0, "RAMA_EP_BY_IF"), 2);

    // The agent process has exited; forwarding goes on from the pinned state.
    ping(&c.pod("ua").ns, c.pod("ub").ipv4.into()).expect("underlay after agent exit");

    c.apply().expect("second apply");
    assert_eq!(c.footprint(0), footprint, "a second apply changes nothing");
    assert_eq!(c.pinned_links(0), links);
    assert_eq!(c.map_len(0, "RAMA_ENDPOINTS"), 8);
    ping(&c.pod("oa").ns, c.pod("ob").ipv6.into()).expect("overlay after re-apply");

    // Pod oa goes away: its routes, map entries and link go on n1, its remote entry on n2.
    let oa = c.pod("oa");
    let (oa_v4, oa_if) = (oa.ipv4.to_string(), oa.host_if.clone());
    let mut s0 = c.node_state(0);
    s0["endpoints"] = serde_json::Value::Array(
        s0["endpoints"]
            .as_array()
            .expect("array")
            .iter()
            .filter(|e| e["name"] != "oa")
            .cloned()
            .collect(),
    );
    let mut s1 = c.node_state(1);
    s1["remoteEndpoints"] = serde_json::Value::Array(
        s1["remoteEndpoints"]
            .as_array()
            .expect("array")
            .iter()
            .filter(|e| {
                !e["ip"]
                    .as_str()
                    .is_some_and(|ip| ip == oa_v4 || ip == oa.ipv6.to_string())
            })
            .cloned()
            .collect(),
    );
    c.apply_node(0, &s0, DatapathMode::Ebpf).expect("apply n1");
    c.apply_node(1, &s1, DatapathMode::Ebpf).expect("apply n2");
    assert!(
        !c.footprint(0).contains(&oa_v4),
        "route of the removed pod left:\n{}",
        c.footprint(0)
    );
    assert_eq!(c.map_len(0, "RAMA_ENDPOINTS"), 6);
    assert_eq!(c.map_len(0, "RAMA_EP_BY_IF"), 1);
    assert_eq!(c.map_len(1, "RAMA_ENDPOINTS"), 6);
    let oa_index = c.nodes[0]
        .ns
        .ip(&["-o", "link", "show", &oa_if])
        .expect("link");
    let oa_index = oa_index.split(':').next().expect("index").trim().to_owned();
    assert!(
        !c.pinned_links(0)
            .iter()
            .any(|l| l.ends_with(&format!("@{oa_index}"))),
        "the removed pod's link is still pinned: {:?}",
        c.pinned_links(0)
    );
    ping(&c.pod("ua").ns, c.pod("ub").ipv6.into()).expect("others unaffected");
}

#[test]
fn map_capacity_changes_take_effect_and_keep_forwarding() {
    require_root!();
    let mut c = Cluster::new("gr", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    c.add_pod(0, "ua", PodNet::Vlan100).expect("pod");
    c.add_pod(1, "ub", PodNet::Vlan100).expect("pod");
    c.apply().expect("apply");
    let default = c.map_capacity(0, "RAMA_ENDPOINTS");
    assert_eq!(default, 1024 * 2 + 65536);
    c.extra_args = vec!["--max-remote-endpoints".into(), "128".into()];
    c.apply().expect("apply with a smaller map");
    assert_eq!(c.map_capacity(0, "RAMA_ENDPOINTS"), 1024 * 2 + 128);
    assert_eq!(
        c.map_len(0, "RAMA_ENDPOINTS"),
        4,
        "refilled after re-creation"
    );
    ping(&c.pod("ua").ns, c.pod("ub").ipv4.into()).expect("forwarding after the resize");
    ping(&c.pod("ub").ns, c.pod("ua").ipv6.into()).expect("both ways");
}

#[test]
fn backends_converge_from_each_others_state_and_tear_down_cleanly() {
    require_root!();
    let mut c = Cluster::new("gs", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    c.add_pod(0, "oa", PodNet::Overlay).expect("pod");
    c.add_pod(1, "ob", PodNet::Overlay).expect("pod");
    c.add_pod(1, "oc", PodNet::Overlay).expect("pod");
    for mode in [
        DatapathMode::Ebpf,
        DatapathMode::Fallback,
        DatapathMode::Ebpf,
        DatapathMode::Fallback,
    ] {
        c.apply_node(1, &c.node_state(1), mode).expect("switch n2");
        c.apply_node(0, &c.node_state(0), DatapathMode::Ebpf)
            .expect("apply n1");
        for (from, to) in [("oa", "ob"), ("ob", "oa"), ("ob", "oc")] {
            ping(&c.pod(from).ns, c.pod(to).ipv4.into())
                .unwrap_or_else(|e| panic!("{from} → {to} with n2 in {mode}: {e:#}"));
            ping(&c.pod(from).ns, c.pod(to).ipv6.into())
                .unwrap_or_else(|e| panic!("{from} → {to} (IPv6) with n2 in {mode}: {e:#}"));
        }
    }
    // Teardown removes every object Rama owns, from either backend's state.
    for (i, mode) in [(0, "ebpf"), (1, "fallback")] {
        c.teardown_node(i, mode).expect("teardown");
        let left = c.footprint(i);
        assert!(
            left.is_empty(),
            "teardown of {} left:\n{left}",
            c.nodes[i].name
        );
    }
    assert!(c.pinned_links(0).is_empty());
}

#[test]
fn fallback_forgets_departed_nodes_and_pods() {
    require_root!();
    let mut c =
        Cluster::new("gf", &[DatapathMode::Fallback, DatapathMode::Fallback]).expect("cluster");
    c.add_pod(0, "oa", PodNet::Overlay).expect("pod");
    c.add_pod(1, "ob", PodNet::Overlay).expect("pod");
    c.apply().expect("apply");
    ping(&c.pod("oa").ns, c.pod("ob").ipv4.into()).expect("overlay");
    let n2 = &c.nodes[1].ns;
    let fdb = n2
        .exec("bridge", &["fdb", "show", "dev", "rama.vxlan"])
        .expect("fdb");
    assert!(fdb.contains(&c.nodes[0].vtep_mac()), "{fdb}");
    let neigh = n2
        .ip(&["neigh", "show", "dev", "rama.vxlan"])
        .expect("neigh");
    assert!(neigh.contains(&c.pod("oa").ipv4.to_string()), "{neigh}");

    // Node n1 leaves: n2's state no longer names it or its pods.
    let mut state = c.node_state(1);
    state["remoteNodes"] = serde_json::json!([]);
    state["remoteEndpoints"] = serde_json::json!([]);
    c.apply_node(1, &state, DatapathMode::Fallback)
        .expect("apply");
    let fdb = n2
        .exec("bridge", &["fdb", "show", "dev", "rama.vxlan"])
        .expect("fdb");
    assert!(
        !fdb.contains(&c.nodes[0].vtep_mac()),
        "stale FDB entry: {fdb}"
    );
    let neigh = n2
        .ip(&["neigh", "show", "dev", "rama.vxlan"])
        .expect("neigh");
    assert!(
        !neigh.contains(&c.pod("oa").ipv4.to_string()),
        "stale neighbour: {neigh}"
    );
}
