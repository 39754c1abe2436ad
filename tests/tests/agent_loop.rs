//! The agent's control loop on real packets: hitless restart (pinned maps keep
//! forwarding while it is gone), a Subnet added while running is usable at once, a
//! node whose NodeInfo disappears is dropped by the others, and fallback-only nodes.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    agents::subnet_yaml,
    cluster::{Cluster, PodNet},
    matrix::{MIXED_PODS, MIXED_SKIP, mixed_cells, run_matrix},
    require_root,
    traffic::ping,
};

fn cluster(tag: &str, modes: &[DatapathMode]) -> Cluster {
    let mut c = Cluster::new(tag, modes).expect("cluster");
    c.write_cluster_state().expect("state");
    for i in 0..modes.len() {
        c.start_agent(i, &[]).expect("agent");
    }
    c
}

/// Packets received of `count` pings at 100 per second.
fn ping_flood(c: &Cluster, from: &str, to: std::net::IpAddr, count: u32) -> std::process::Child {
    Command::new("nsenter")
        .arg(format!("--net={}", c.pod(from).ns.path()))
        .args([
            "ping",
            "-q",
            "-i",
            "0.01",
            "-W",
            "1",
            "-c",
            &count.to_string(),
        ])
        .arg(to.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ping")
}

fn received(out: &std::process::Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let nums: Vec<u32> = line
        .split(',')
        .filter_map(|p| p.split_whitespace().next()?.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn restarting_the_agent_drops_no_packet_and_no_flow() {
    require_root!();
    let mut c = cluster("lr", &[DatapathMode::Ebpf, DatapathMode::Ebpf]);
    for (node, name, net) in [
        (0, "ua", PodNet::Vlan100),
        (0, "oa", PodNet::Overlay),
        (1, "uc", PodNet::Vlan100),
        (1, "ob", PodNet::Overlay),
    ] {
        c.add_cni_pod(node, name, net).expect("pod");
    }
    ping(&c.pod("ua").ns, c.pod("uc").ipv4.into()).expect("warm up underlay");
    ping(&c.pod("ua").ns, c.pod("ob").ipv4.into()).expect("warm up hybrid");

    // A TCP flow (iperf3, 8 s) and 100 pps pings on the underlay, overlay and hybrid
    // paths, across a kill -9 and a restart of both agents.
    let server = Command::new("nsenter")
        .arg(format!("--net={}", c.pod("ob").ns.path()))
        .args(["iperf3", "-s", "-1", "-p", "5201"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server");
    std::thread::sleep(Duration::from_millis(300));
    let client = Command::new("nsenter")
        .arg(format!("--net={}", c.pod("oa").ns.path()))
        .args(["iperf3", "-c"])
        .arg(c.pod("ob").ipv4.to_string())
        .args(["-p", "5201", "-t", "8", "-b", "50M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("iperf3 client");
    let pings = [
        ping_flood(&c, "ua", c.pod("uc").ipv4.into(), 600),
        ping_flood(&c, "oa", c.pod("ob").ipv6.into(), 600),
        ping_flood(&c, "ua", c.pod("ob").ipv4.into(), 600),
    ];
    std::thread::sleep(Duration::from_millis(1500));
    let started = Instant::now();
    c.stop_agent(0, libc::SIGKILL).expect("kill n1");
    c.stop_agent(1, libc::SIGKILL).expect("kill n2");
    std::thread::sleep(Duration::from_millis(500));
    c.start_agent(0, &[]).expect("restart n1");
    c.start_agent(1, &[]).expect("restart n2");
    eprintln!("both agents killed and back in {:?}", started.elapsed());
    for p in pings {
        let out = p.wait_with_output().expect("ping");
        let (sent, got) = received(&out);
        eprintln!("ping across the restart: {got}/{sent}");
        assert_eq!(got, sent, "lost {} of {sent} packets", sent - got);
    }
    let out = client.wait_with_output().expect("iperf3 client");
    let mut server = server;
    let _ = server.wait();
    assert!(
        out.status.success(),
        "the TCP flow broke across the restart: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Both agents restarted into the pinned state and still answer for their pods.
    c.wait_agent_ready(0, Duration::from_secs(5))
        .expect("n1 ready");
    assert!(c.agent_log(0).contains("synced"), "{}", c.agent_log(0));
}

#[test]
fn a_subnet_added_while_running_is_usable_at_once() {
    require_root!();
    let mut c = cluster("ls", &[DatapathMode::Ebpf, DatapathMode::Ebpf]);
    c.add_cni_pod(0, "old", PodNet::Overlay).expect("pod");
    std::fs::write(
        c.state_dir().join("subnets/overlay-b.yaml"),
        subnet_yaml("overlay-b", "overlay", "10.245.0.0/24", None),
    )
    .expect("new subnet");
    for (node, name) in [(0usize, "na"), (1, "nb")] {
        let ns = rama_tests::netns::Netns::new(&format!("{}-{name}", c.tag)).expect("netns");
        let out = c
            .cni(
                node,
                "ADD",
                &format!("c-{name}"),
                Some(&ns.path()),
                &format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};RAMA_SUBNET=overlay-b"),
                &c.cni_conf(node, "1.0.0"),
            )
            .expect("plugin");
        assert!(out.success(), "{out:?}\n{}", c.agent_log(node));
        let pod = rama_tests::agents::pod_from_result(
            name,
            node,
            PodNet::Overlay,
            ns,
            &out.json().expect("json"),
        )
        .expect("pod");
        assert!(
            pod.ipv4.to_string().starts_with("10.245.0."),
            "{}",
            pod.ipv4
        );
        c.pods.push(pod);
    }
    ping(&c.pod("na").ns, c.pod("nb").ipv4.into()).expect("new subnet across nodes");
    ping(&c.pod("nb").ns, c.pod("old").ipv4.into()).expect("new subnet to the old one");
}

#[test]
fn a_node_whose_nodeinfo_disappears_is_dropped_by_the_others() {
    require_root!();
    let mut c = cluster("ln", &[DatapathMode::Ebpf, DatapathMode::Ebpf]);
    c.add_cni_pod(0, "a", PodNet::Overlay).expect("pod");
    c.add_cni_pod(1, "b", PodNet::Overlay).expect("pod");
    ping(&c.pod("a").ns, c.pod("b").ipv4.into()).expect("overlay");
    assert_eq!(c.map_len(0, "RAMA_ENDPOINTS"), 4, "a's two and b's two");

    // Node 2 is lost: its agent gone, its NodeInfo removed.
    c.stop_agent(1, libc::SIGKILL).expect("lose n2");
    std::fs::remove_file(c.state_dir().join("nodeinfos/n2.yaml")).expect("remove NodeInfo");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.map_len(0, "RAMA_ENDPOINTS") != 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.map_len(0, "RAMA_ENDPOINTS"),
        2,
        "b's entries are gone from n1"
    );
    // Traffic to the lost node's pod now fails fast instead of being tunnelled.
    let out = c
        .pod("a")
        .ns
        .exec_output(
            "ping",
            &["-c", "1", "-W", "1", &c.pod("b").ipv4.to_string()],
        )
        .expect("ping");
    assert!(!out.status.success(), "a lost node's pod must not answer");
}

#[test]
fn fallback_nodes_through_the_full_path() {
    require_root!();
    let mut c = cluster("lf", &[DatapathMode::Fallback, DatapathMode::Fallback]);
    let overlay: Vec<_> = MIXED_PODS
        .iter()
        .filter(|p| p.2 == PodNet::Overlay)
        .collect();
    for (node, name, net) in &overlay {
        c.add_cni_pod(*node, name, *net).expect("pod");
    }
    eprintln!("{MIXED_SKIP}");
    let cells: Vec<_> = mixed_cells()
        .into_iter()
        .filter(|cell| cell.from != "ua" && cell.to != "ua")
        .collect();
    let failures = run_matrix(&c, &cells);
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        c.agent_log(1)
    );
    // The metrics say which datapath runs, and carry no eBPF counters.
    let metrics = c.agent_metrics(1).expect("metrics");
    assert!(
        metrics.contains(
            r#"rama_datapath_info{active="fallback",fallback_reason="",requested="fallback"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("rama_datapath_packets_total{"),
        "{metrics}"
    );
    // CHECK finds the fallback's route for the pod, and misses it once removed.
    let p = c.pod("oc");
    let conf = |prev: &serde_json::Value| {
        let mut j = c.cni_conf(1, "1.0.0");
        j["prevResult"] = prev.clone();
        j
    };
    let prev = serde_json::json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": p.host_if}, {"name": "eth0", "mac": p.mac, "sandbox": p.ns.path()}],
        "ips": [{"address": format!("{}/32", p.ipv4), "interface": 1}]
    });
    let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=oc";
    let out = c
        .cni(1, "CHECK", "c-oc", Some(&p.ns.path()), args, &conf(&prev))
        .expect("check");
    assert!(out.success(), "{out:?}");
    c.nodes[1]
        .ns
        .ip(&["route", "del", &format!("{}/32", p.ipv4), "table", "39999"])
        .expect("remove the pod's route");
    let out = c
        .cni(1, "CHECK", "c-oc", Some(&p.ns.path()), args, &conf(&prev))
        .expect("check");
    assert_eq!(out.error_code(), Some(100), "{out:?}");
    assert!(out.stdout.contains("table 39999"), "{out:?}");
}

#[test]
fn a_pod_gets_the_static_addresses_it_asks_for() {
    require_root!();
    let mut c = cluster("si", &[DatapathMode::Ebpf, DatapathMode::Ebpf]);
    c.add_cni_pod(1, "peer", PodNet::Vlan100).expect("peer pod");
    let ns = rama_tests::netns::Netns::new(&format!("{}-st", c.tag)).expect("netns");
    let args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=st;RAMA_NETWORK=vlan100;\
                RAMA_IP=10.100.0.77,fd00:100::77";
    let out = c
        .cni(
            0,
            "ADD",
            "c-st",
            Some(&ns.path()),
            args,
            &c.cni_conf(0, "1.0.0"),
        )
        .expect("plugin");
    assert!(out.success(), "{out:?}\n{}", c.agent_log(0));
    let pod =
        rama_tests::agents::pod_from_result("st", 0, PodNet::Vlan100, ns, &out.json().unwrap())
            .expect("pod");
    assert_eq!(pod.ipv4.to_string(), "10.100.0.77");
    assert_eq!(pod.ipv6.to_string(), "fd00:100::77");
    c.pods.push(pod);
    ping(&c.pod("st").ns, c.pod("peer").ipv4.into()).expect("static IPv4 across nodes");
    ping(&c.pod("st").ns, c.pod("peer").ipv6.into()).expect("static IPv6 across nodes");
    // Another pod asking for the same address is refused, naming it.
    let other = rama_tests::netns::Netns::new(&format!("{}-s2", c.tag)).expect("netns");
    let clash = c
        .cni(
            1,
            "ADD",
            "c-s2",
            Some(&other.path()),
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=s2;RAMA_NETWORK=vlan100;RAMA_IP=10.100.0.77",
            &c.cni_conf(1, "1.0.0"),
        )
        .expect("plugin");
    assert!(!clash.success(), "a second pod got 10.100.0.77: {clash:?}");
    assert!(
        clash.stdout.contains("10.100.0.77"),
        "the refusal does not name the address: {clash:?}"
    );
}

#[test]
fn a_missing_uplink_is_named_and_nothing_starts() {
    require_root!();
    let c = Cluster::new("mu", &[DatapathMode::Ebpf]).expect("cluster");
    c.write_cluster_state().expect("state");
    let dir = c.scratch.join("mu-agent");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", c.nodes[0].ns.path()))
        .arg(rama_tests::agent_binary())
        .args(["run", "--node-name", "n1", "--uplink", "nosuch0"])
        .arg("--state-dir")
        .arg(c.state_dir())
        .arg("--socket")
        .arg(dir.join("cni.sock"))
        .arg("--cni-queue-dir")
        .arg(dir.join("queue"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--metrics-addr", "none"])
        .stdin(Stdio::null())
        .output()
        .expect("agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("uplink interface \"nosuch0\" does not exist"),
        "{stderr}"
    );
    assert!(!dir.join("cni.sock").exists(), "a socket was left behind");
}

#[test]
fn the_served_vlans_follow_the_subnets_and_tampering_is_repaired() {
    require_root!();
    let mut c = Cluster::new("sv", &[DatapathMode::Ebpf]).expect("cluster");
    c.write_cluster_state().expect("state");
    c.start_agent(0, &[]).expect("agent");
    let started = Instant::now();
    c.add_cni_pod(0, "t", PodNet::Overlay).expect("pod");
    let wait_for = |want: &[u16], within: Duration, what: &str| {
        rama_tests::wait_until(within, || {
            let served = c.served_vlans(0);
            if served == want {
                return Ok(());
            }
            Err(format!(
                "{what}: RAMA_VLANS serves {served:?}, not {want:?}\n{}",
                c.agent_log(0)
            ))
        })
    };
    wait_for(&[100, 200], Duration::from_secs(5), "at start");
    // A VLAN added while running is served within a sync or two: written on its own,
    // well before the next full pass over the array (10 s after the first).
    std::fs::write(
        c.state_dir().join("networks/vlan300.yaml"),
        rama_tests::agents::network_yaml("vlan300", "Underlay", 300),
    )
    .expect("network");
    std::fs::write(
        c.state_dir().join("subnets/vlan300-v4.yaml"),
        subnet_yaml("vlan300-v4", "vlan300", "10.30.0.0/24", Some("10.30.0.1")),
    )
    .expect("subnet");
    wait_for(
        &[100, 200, 300],
        Duration::from_secs(3),
        "after adding VLAN 300",
    );
    std::fs::remove_file(c.state_dir().join("subnets/vlan300-v4.yaml")).expect("rm");
    std::fs::remove_file(c.state_dir().join("networks/vlan300.yaml")).expect("rm");
    wait_for(
        &[100, 200],
        Duration::from_secs(3),
        "after removing VLAN 300",
    );
    // Entries changed behind the agent's back are put right by the first sync after
    // the full pass is due (any change triggers one; so does the periodic resync):
    // the served VLANs, a pod's host side (its route, the gateway address), and
    // policy routing of the fallback's kind (protocol 82: Rama's), which the eBPF
    // datapath removes.
    c.set_served_vlan(0, 100, 0);
    c.set_served_vlan(0, 42, 1);
    let (pod_ip, host_if) = (c.pod("t").ipv4.to_string(), c.pod("t").host_if.clone());
    let node = &c.nodes[0].ns;
    node.ip(&["route", "del", &format!("{pod_ip}/32"), "table", "39999"])
        .expect("remove the pod's route");
    node.ip(&["addr", "del", "169.254.1.1/32", "dev", &host_if])
        .expect("remove the gateway address");
    node.ip(&[
        "rule",
        "add",
        "from",
        "10.99.0.0/24",
        "lookup",
        "40000",
        "priority",
        "19100",
        "proto",
        "82",
    ])
    .expect("a fallback-style rule");
    std::thread::sleep(Duration::from_secs(11).saturating_sub(started.elapsed()));
    std::fs::write(
        c.state_dir().join("subnets/overlay-c.yaml"),
        subnet_yaml("overlay-c", "overlay", "10.246.0.0/24", None),
    )
    .expect("subnet");
    wait_for(&[100, 200], Duration::from_secs(5), "after tampering");
    rama_tests::wait_until(Duration::from_secs(5), || {
        let route = node
            .ip(&["route", "show", "table", "39999"])
            .unwrap_or_default();
        let addrs = node
            .ip(&["addr", "show", "dev", &host_if])
            .unwrap_or_default();
        let rules = node.ip(&["rule", "show"]).unwrap_or_default();
        if route.contains(&pod_ip)
            && addrs.contains("169.254.1.1")
            && !rules.contains("10.99.0.0/24")
        {
            return Ok(());
        }
        Err(format!(
            "host state not repaired:\n{route}\n{addrs}\n{rules}\n{}",
            c.agent_log(0)
        ))
    });
}
