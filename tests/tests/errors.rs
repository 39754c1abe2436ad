//! Bad input and unusable kernels: each refused with an error naming the object,
//! with nothing applied (checked by listing what Rama would have created).
use rama_agent::{
    Error,
    dataplane::{
        DatapathMode, Dataplane, DataplaneConfig,
        ebpf::{Capacity, EbpfDataplane},
    },
    state::NodeState,
};
use rama_tests::{
    agent_binary,
    netns::{DirGuard, Netns},
    require_root, single_node,
};

/// A namespace with an uplink and one pod veth, nothing of Rama's in it.
fn bare_node(tag: &str) -> Netns {
    let ns = Netns::new(&format!("{tag}{}", std::process::id() % 100_000)).expect("netns");
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
        .expect("uplink");
    ns.ip(&["link", "set", "up0", "up"]).expect("up");
    for (host, pod) in [
        ("rama1", "p1"),
        ("rama2", "p2"),
        ("rama3", "p3"),
        ("rama4", "p4"),
    ] {
        ns.ip(&["link", "add", host, "type", "veth", "peer", "name", pod])
            .expect("veth");
    }
    ns
}

/// Everything Rama creates in a namespace, as text; empty when it has created nothing.
fn rama_footprint(ns: &Netns) -> String {
    let mut out = String::new();
    for args in [
        vec!["rule", "show"],
        vec!["-6", "rule", "show"],
        vec!["route", "show", "table", "all", "proto", "82"],
        vec!["-6", "route", "show", "table", "all", "proto", "82"],
    ] {
        let text = ns.ip(&args).expect("ip");
        for line in text
            .lines()
            .filter(|l| l.contains("proto 82") || l.contains("lookup 39999"))
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    if ns.ip(&["link", "show", "rama.vxlan"]).is_ok() {
        out.push_str("link rama.vxlan\n");
    }
    if let Ok(rules) = ns.exec("nft", &["list", "table", "inet", "rama"]) {
        out.push_str(&rules);
    }
    for dev in ["rama1", "rama2", "rama3", "rama4"] {
        let addrs = ns.ip(&["addr", "show", "dev", dev]).expect("addr");
        if addrs.contains("169.254.1.1") {
            out.push_str(&format!("gateway address on {dev}\n"));
        }
    }
    out
}

fn apply_cli(
    ns: &Netns,
    state: &serde_json::Value,
    datapath: &str,
    pin_dir: &str,
) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("{}-state.json", ns.name));
    std::fs::write(&path, serde_json::to_vec(state).expect("json")).expect("write state");
    let out = ns
        .exec_output(
            agent_binary().to_str().expect("path"),
            &[
                "apply",
                "--state",
                path.to_str().expect("path"),
                "--datapath",
                datapath,
                "--pin-dir",
                pin_dir,
            ],
        )
        .expect("run agent");
    let _ = std::fs::remove_file(&path);
    out
}

fn pin_dir(ns: &Netns) -> String {
    format!("/sys/fs/bpf/rama-test-{}", ns.name)
}

#[test]
fn bad_states_are_refused_whole_by_the_agent() {
    require_root!();
    let ns = bare_node("eb");
    let pins = pin_dir(&ns);
    let _cleanup = DirGuard(pins.clone().into());
    let mut cases: Vec<(&str, serde_json::Value, &str)> = Vec::new();
    let mut s = single_node::state();
    s["node"]["uplink"] = "nope0".into();
    cases.push((
        "nonexistent uplink",
        s,
        "uplink interface \"nope0\" does not exist",
    ));
    let mut s = single_node::state();
    s["subnets"][0]["fabric"]["vlan"] = 4095.into();
    cases.push(("VLAN id 4095", s, "VLAN id 4095 is outside 0–4094"));
    let mut s = single_node::state();
    s["subnets"][3]["fabric"]["vni"] = 16_777_216u32.into();
    s["subnets"][4]["fabric"]["vni"] = 16_777_216u32.into();
    cases.push(("VNI 2^24", s, "VNI 16777216 is outside 1–16777215"));
    let mut s = single_node::state();
    s["subnets"][2]["cidr"] = "10.100.0.128/25".into();
    s["subnets"][2]["gateway"] = "10.100.0.129".into();
    cases.push(("overlapping subnets", s, "overlap"));
    let mut s = single_node::state();
    s["endpoints"][1]["hostInterface"] = "rama9".into();
    cases.push((
        "missing pod interface",
        s,
        "interface \"rama9 (endpoint \\\"p2\\\")\" does not exist",
    ));
    let mut s = single_node::state();
    s["subnets"][0]["color"] = "blue".into();
    cases.push(("unknown field", s, "unknown field `color`"));
    for datapath in ["ebpf", "fallback"] {
        for (what, state, expected) in &cases {
            let out = apply_cli(&ns, state, datapath, &pins);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{what} ({datapath}) was accepted");
            assert!(stderr.contains(expected), "{what} ({datapath}): {stderr}");
            let left = rama_footprint(&ns);
            assert!(
                left.is_empty(),
                "{what} ({datapath}) left state behind:\n{left}"
            );
        }
    }
}

#[test]
fn fallback_refuses_underlay_pods_without_8021q_before_writing_anything() {
    require_root!();
    let ns = bare_node("eq");
    if ns
        .ip(&[
            "link", "add", "link", "up0", "name", "probe.7", "type", "vlan", "id", "7",
        ])
        .is_ok()
    {
        let _ = ns.ip(&["link", "del", "probe.7"]);
        eprintln!("SKIP: this kernel has 802.1Q devices; the VLAN path is tested for real instead");
        return;
    }
    let _cleanup = DirGuard(pin_dir(&ns).into());
    let out = apply_cli(&ns, &single_node::state(), "fallback", &pin_dir(&ns));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("kernel lacks 802.1Q VLAN devices") && stderr.contains("\"u100\""),
        "{stderr}"
    );
    let left = rama_footprint(&ns);
    assert!(left.is_empty(), "left state behind:\n{left}");
}

#[test]
fn ebpf_load_failure_falls_back_in_auto_and_fails_in_ebpf() {
    require_root!();
    let ns = bare_node("el");
    // Pins outside any bpffs mount: the eBPF backend cannot run.
    let not_bpffs = std::env::temp_dir().join(format!("rama-not-bpffs-{}", ns.name));
    let not_bpffs = not_bpffs.to_str().expect("path");
    let mut state = single_node::state();
    // Overlay pods only, so the fallback can serve this node on any kernel.
    state["endpoints"] = serde_json::json!([
        {"name": "p2", "hostInterface": "rama2", "mac": single_node::P2_MAC, "ipv4": "10.244.0.10"}
    ]);

    let out = apply_cli(&ns, &state, "ebpf", not_bpffs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ebpf mode must fail loudly");
    assert!(
        stderr.contains("eBPF datapath unavailable") && stderr.contains("not on a bpffs mount"),
        "{stderr}"
    );
    assert!(rama_footprint(&ns).is_empty());

    let out = apply_cli(&ns, &state, "auto", not_bpffs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    assert_eq!(report["mode"]["active"], "fallback");
    assert_eq!(report["mode"]["requested"], "auto");
    assert!(
        report["mode"]["fallback_reason"]
            .as_str()
            .is_some_and(|r| r.contains("bpffs")),
        "{report}"
    );
    assert!(
        stderr.contains("using the policy-route fallback"),
        "the fallback is logged: {stderr}"
    );
    assert!(
        ns.ip(&["route", "show", "table", "39999"])
            .expect("ip")
            .contains("10.244.0.10")
    );
}

#[test]
fn a_full_map_is_refused_before_anything_is_written() {
    require_root!();
    let ns = bare_node("em");
    let pins = std::path::PathBuf::from(pin_dir(&ns));
    let _cleanup = DirGuard(pins.clone());
    let pins2 = pins.clone();
    let result = ns
        .run_in(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("rt");
            let config = DataplaneConfig {
                mode: DatapathMode::Ebpf,
                pin_dir: pins2,
                capacity: Capacity {
                    local_endpoints: 1,
                    ..Default::default()
                },
                ..Default::default()
            };
            let mut dp = EbpfDataplane::new(&config).expect("load");
            let state = serde_json::from_value::<NodeState>(single_node::state())
                .expect("state")
                .validate()
                .expect("valid");
            rt.block_on(dp.apply(&state))
        })
        .expect("thread")
        .join()
        .expect("join");
    match result {
        Err(Error::MapFull {
            map,
            wanted,
            capacity,
        }) => {
            assert_eq!((map, wanted, capacity), ("RAMA_EP_BY_IF", 4, 1));
        }
        other => panic!("expected MapFull, got {other:?}"),
    }
    assert!(rama_footprint(&ns).is_empty());
}
