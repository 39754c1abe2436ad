//! The CNI plugin against the spec, executed as a runtime executes it, with a real
//! agent behind it: every verb, version negotiation, idempotency, every refusal with
//! its spec code (and nothing left behind), DEL while the agent is down.
use std::time::Duration;

use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    agents::{CniOutput, subnet_yaml},
    cluster::{Cluster, PodNet},
    netns::Netns,
    require_root,
    traffic::ping,
};
use serde_json::{Value, json};

const ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
                    RAMA_NETWORK=overlay;RAMA_IP_FAMILY=DualStack";

fn one_node(tag: &str) -> Cluster {
    let mut c = Cluster::new(tag, &[DatapathMode::Ebpf]).expect("cluster");
    c.write_cluster_state().expect("state");
    c.start_agent(0, &[]).expect("agent");
    c
}

/// The environment of one call, with `set` overriding and `unset` removing variables.
fn env(
    command: &str,
    container: &str,
    netns: &str,
    args: &str,
    set: &[(&'static str, &str)],
    unset: &[&str],
) -> Vec<(&'static str, String)> {
    let mut e: Vec<(&'static str, String)> = vec![
        ("CNI_COMMAND", command.into()),
        ("CNI_CONTAINERID", container.into()),
        ("CNI_NETNS", netns.into()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
        ("CNI_ARGS", args.into()),
    ];
    e.retain(|(k, _)| !unset.contains(k) && !set.iter().any(|(s, _)| s == k));
    e.extend(set.iter().map(|(k, v)| (*k, (*v).to_owned())));
    e
}

fn run(env: &[(&'static str, String)], conf: &str) -> CniOutput {
    Cluster::run_cni(env, conf.as_bytes()).expect("plugin runs")
}

/// What to run, what it is fed, the code expected and a word the message must have.
type Case<'a> = (&'a str, Vec<(&'static str, String)>, String, u64, &'a str);

fn expect_error(out: &CniOutput, code: u64, needle: &str, what: &str) {
    assert!(!out.success(), "{what}: must fail, got {out:?}");
    let j = out.json().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(j["code"], code, "{what}: {j}");
    let text = format!("{} {}", j["msg"], j["details"]);
    assert!(text.contains(needle), "{what}: {text:?} names {needle:?}");
    assert!(
        j["cniVersion"].is_string(),
        "{what}: error has cniVersion: {j}"
    );
}

#[test]
fn verbs_versions_and_idempotency() {
    require_root!();
    let c = one_node("cv");
    let pod = Netns::new(&format!("{}-p1", c.tag)).expect("netns");
    let conf = |v: &str| c.cni_conf(0, v).to_string();

    // VERSION: our versions, labelled as asked.
    let out = run(
        &env("VERSION", "", "", "", &[], &[]),
        r#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(out.success(), "{out:?}");
    let v = out.json().expect("json");
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );

    // ADD in 1.0.0: a 1.0.0 result (libcni 1.1 refuses 1.1.0 for a 1.0.0 config).
    let add = env("ADD", "c1", &pod.path(), ARGS, &[], &[]);
    let out = run(&add, &conf("1.0.0"));
    assert!(out.success(), "{out:?}\n{}", c.agent_log(0));
    let result = out.json().expect("result");
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], pod.path());
    assert!(result["ips"][0].get("version").is_none(), "{result}");
    assert!(result["interfaces"][1].get("mtu").is_none(), "{result}");
    let ips: Vec<&str> = result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|i| i["address"].as_str().expect("address"))
        .collect();
    assert!(
        ips[0].starts_with("10.244.0.") && ips[0].ends_with("/32"),
        "{ips:?}"
    );
    assert!(
        ips[1].starts_with("fd00:244::") && ips[1].ends_with("/128"),
        "{ips:?}"
    );
    // The pod side really is as the result says, with the overlay MTU.
    let link = pod.ip(&["-d", "addr", "show", "eth0"]).expect("eth0");
    assert!(link.contains("mtu 1450"), "{link}");
    assert!(link.contains(ips[0]) && link.contains(ips[1]), "{link}");
    let routes = pod.ip(&["route"]).expect("routes");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );

    // ADD again: the same answer, nothing new.
    let before = c.holdings(0);
    let again = run(&add, &conf("1.0.0"));
    assert_eq!(again.stdout, out.stdout, "a repeated ADD answers the same");
    assert_eq!(c.holdings(0), before, "a repeated ADD creates nothing");

    // CHECK against prevResult: fine; in 0.3.1 CHECK does not exist.
    let mut with_prev: Value = c.cni_conf(0, "1.0.0");
    with_prev["prevResult"] = result.clone();
    let check = env("CHECK", "c1", &pod.path(), ARGS, &[], &[]);
    let out = run(&check, &with_prev.to_string());
    assert!(out.success() && out.stdout.is_empty(), "{out:?}");
    with_prev["cniVersion"] = "0.3.1".into();
    expect_error(
        &run(&check, &with_prev.to_string()),
        1,
        "0.4.0",
        "CHECK in 0.3.1",
    );
    with_prev["cniVersion"] = "1.0.0".into();
    expect_error(
        &run(&check, &conf("1.0.0")),
        7,
        "prevResult",
        "CHECK without prevResult",
    );
    // Break the pod's addressing behind the agent's back: CHECK says what is wrong.
    pod.ip(&["addr", "del", ips[0], "dev", "eth0"])
        .expect("addr del");
    let out = run(&check, &with_prev.to_string());
    expect_error(&out, 100, "lacks", "CHECK of a broken pod");

    // Other versions get their shapes.
    let p2 = Netns::new(&format!("{}-p2", c.tag)).expect("netns");
    let args2 = ARGS.replace("K8S_POD_NAME=web", "K8S_POD_NAME=web2");
    let out = run(
        &env("ADD", "c2", &p2.path(), &args2, &[], &[]),
        &conf("0.4.0"),
    );
    let r2 = out.json().expect("json");
    assert_eq!(r2["cniVersion"], "0.4.0", "{out:?}");
    assert_eq!(r2["ips"][0]["version"], "4");
    assert_eq!(r2["ips"][1]["version"], "6");
    let p3 = Netns::new(&format!("{}-p3", c.tag)).expect("netns");
    let args3 = ARGS.replace("K8S_POD_NAME=web", "K8S_POD_NAME=web3");
    let out = run(
        &env("ADD", "c3", &p3.path(), &args3, &[], &[]),
        &conf("1.1.0"),
    );
    let r3 = out.json().expect("json");
    assert_eq!(r3["interfaces"][1]["mtu"], 1450, "{out:?}");

    // STATUS: 1.1.0 only.
    let status = env(
        "STATUS",
        "",
        "",
        "",
        &[],
        &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    );
    let out = run(&status, &conf("1.1.0"));
    assert!(out.success() && out.stdout.is_empty(), "{out:?}");
    expect_error(&run(&status, &conf("1.0.0")), 1, "1.1.0", "STATUS in 1.0.0");

    // GC keeps the listed attachments, removes the rest with their addresses.
    assert_eq!(c.holdings(0).interfaces.len(), 3);
    let mut gc_conf = c.cni_conf(0, "1.1.0");
    gc_conf["cni.dev/valid-attachments"] = json!([{"containerID": "c3", "ifname": "eth0"}]);
    let gc = env(
        "GC",
        "",
        "",
        "",
        &[],
        &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    );
    let out = run(&gc, &gc_conf.to_string());
    assert!(out.success(), "{out:?}");
    let h = c.holdings(0);
    assert_eq!(h.interfaces.len(), 1, "{h:?}");
    assert_eq!(h.records, 1, "{h:?}");
    assert_eq!(h.allocations.len(), 2, "web3's two addresses stay: {h:?}");
    assert_eq!(h.map_entries, Some(1), "{h:?}");
    expect_error(
        &run(&gc, &conf("1.1.0")),
        7,
        "valid-attachments",
        "GC without a list",
    );
    expect_error(&run(&gc, &conf("1.0.0")), 1, "1.1.0", "GC in 1.0.0");

    // DEL: idempotent, also without a netns (it is gone).
    let del = env("DEL", "c3", &p3.path(), &args3, &[], &[]);
    let out = run(&del, &conf("1.1.0"));
    assert!(out.success() && out.stdout.is_empty(), "{out:?}");
    assert!(run(&del, &conf("1.1.0")).success(), "DEL twice");
    drop(p3);
    let out = run(
        &env("DEL", "c3", "", &args3, &[], &["CNI_NETNS"]),
        &conf("1.1.0"),
    );
    assert!(out.success(), "{out:?}");
    let h = c.holdings(0);
    assert_eq!(
        (
            h.interfaces.len(),
            h.records,
            h.local_routes,
            h.allocations.len()
        ),
        (0, 0, 0, 0),
        "{h:?}"
    );
    assert_eq!(h.map_entries, Some(0));
}

#[test]
fn bad_input_gets_the_spec_code_and_leaves_nothing() {
    require_root!();
    let c = one_node("cb");
    // A subnet with room for one address, to fill.
    let dir = c.state_dir();
    std::fs::write(
        dir.join("networks/tiny.yaml"),
        rama_tests::agents::network_yaml("tiny", "Overlay", 4096),
    )
    .expect("network");
    std::fs::write(
        dir.join("subnets/tiny-v4.yaml"),
        subnet_yaml("tiny-v4", "tiny", "10.99.0.0/30", Some("10.99.0.1")),
    )
    .expect("subnet");
    let pod = Netns::new(&format!("{}-p", c.tag)).expect("netns");
    let good = c.cni_conf(0, "1.0.0").to_string();
    let path = pod.path();
    let add = |args: &str| env("ADD", "bad1", &path, args, &[], &[]);
    let base = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=bad";
    let empty = c.holdings(0);

    let with = |k: &str, v: Value| {
        let mut j = c.cni_conf(0, "1.0.0");
        j[k] = v;
        j.to_string()
    };
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            add(base),
            "{\"cniVersion\": ".into(),
            6,
            "not JSON",
        ),
        ("not an object", add(base), "[]".into(), 6, "JSON object"),
        ("empty stdin", add(base), String::new(), 6, "empty"),
        (
            "missing name",
            add(base),
            r#"{"cniVersion":"1.0.0","type":"rama-cni"}"#.into(),
            7,
            "name",
        ),
        (
            "missing cniVersion",
            add(base),
            r#"{"name":"rama","type":"rama-cni"}"#.into(),
            7,
            "cniVersion",
        ),
        (
            "unknown field",
            add(base),
            with("colour", json!("blue")),
            2,
            "colour",
        ),
        (
            "an ipam section",
            add(base),
            with("ipam", json!({"type": "host-local"})),
            2,
            "ipam",
        ),
        (
            "wrong type",
            add(base),
            with("socket", json!(42)),
            6,
            "socket",
        ),
        (
            "another plugin's config",
            add(base),
            with("type", json!("bridge")),
            7,
            "bridge",
        ),
        (
            "unsupported cniVersion",
            add(base),
            with("cniVersion", json!("0.2.0")),
            1,
            "0.2.0",
        ),
        (
            "future cniVersion",
            add(base),
            with("cniVersion", json!("2.0.0")),
            1,
            "2.0.0",
        ),
        (
            "missing CNI_COMMAND",
            env("", "bad1", &path, base, &[], &["CNI_COMMAND"]),
            good.clone(),
            4,
            "CNI_COMMAND",
        ),
        (
            "unknown CNI_COMMAND",
            env("ATTACH", "bad1", &path, base, &[], &[]),
            good.clone(),
            4,
            "ATTACH",
        ),
        (
            "missing CNI_CONTAINERID",
            env("ADD", "", &path, base, &[], &["CNI_CONTAINERID"]),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            "missing CNI_NETNS",
            env("ADD", "bad1", "", base, &[], &["CNI_NETNS"]),
            good.clone(),
            4,
            "CNI_NETNS",
        ),
        (
            "nonexistent netns",
            env("ADD", "bad1", "/run/netns/rama-no-such-ns", base, &[], &[]),
            good.clone(),
            3,
            "does not exist",
        ),
        (
            "interface name over 15 bytes",
            env(
                "ADD",
                "bad1",
                &path,
                base,
                &[("CNI_IFNAME", "eth0123456789abc")],
                &[],
            ),
            good.clone(),
            4,
            "15",
        ),
        (
            "unknown CNI_ARGS key",
            add(&format!("{base};COLOUR=blue")),
            good.clone(),
            2,
            "COLOUR",
        ),
        (
            "malformed CNI_ARGS",
            add("K8S_POD_NAMESPACE"),
            good.clone(),
            4,
            "KEY=VALUE",
        ),
        (
            "a subnet that does not exist",
            add(&format!("{base};RAMA_SUBNET=nope")),
            good.clone(),
            7,
            "nope",
        ),
        (
            "a network that does not exist",
            add(&format!("{base};RAMA_NETWORK=nowhere")),
            good.clone(),
            7,
            "nowhere",
        ),
        (
            "an address outside every subnet",
            add(&format!("{base};RAMA_IP=192.0.2.7")),
            good.clone(),
            7,
            "192.0.2.7",
        ),
    ];
    for (what, e, conf, code, needle) in &cases {
        let out = run(e, conf);
        expect_error(&out, *code, needle, what);
        assert_eq!(c.holdings(0), empty, "{what} left something behind");
    }

    // A full subnet: the one address goes, the next pod is told to try again later.
    let tiny = format!("{base};RAMA_SUBNET=tiny-v4");
    let first = run(&env("ADD", "fill1", &path, &tiny, &[], &[]), &good);
    assert!(first.success(), "{first:?}\n{}", c.agent_log(0));
    let filled = c.holdings(0);
    let p2 = Netns::new(&format!("{}-p2", c.tag)).expect("netns");
    let out = run(
        &env(
            "ADD",
            "fill2",
            &p2.path(),
            &tiny.replace("NAME=bad", "NAME=bad2"),
            &[],
            &[],
        ),
        &good,
    );
    expect_error(
        &out,
        11,
        "no IPv4 subnet with free addresses",
        "full subnet",
    );
    assert_eq!(c.holdings(0), filled, "the refused pod got nothing");
    // The interface name the refused ADD would have used does not exist either.
    let names = p2.ip(&["-o", "link"]).expect("links");
    assert!(!names.contains("eth0"), "{names}");
    let out = run(&env("DEL", "fill1", &path, &tiny, &[], &[]), &good);
    assert!(out.success(), "{out:?}");
    assert_eq!(c.holdings(0), empty);
}

#[test]
fn del_succeeds_while_the_agent_is_down_and_completes_when_it_is_back() {
    require_root!();
    let mut c = one_node("cq");
    c.add_cni_pod(0, "q1", PodNet::Overlay).expect("pod");
    let held = c.holdings(0);
    assert_eq!(held.interfaces.len(), 1);

    c.stop_agent(0, libc::SIGKILL).expect("kill the agent");
    // STATUS says not available; DEL still succeeds, queued.
    let conf = c.cni_conf(0, "1.1.0").to_string();
    let status = env(
        "STATUS",
        "",
        "",
        "",
        &[],
        &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    );
    expect_error(
        &run(&status, &conf),
        50,
        "not reachable",
        "STATUS with the agent down",
    );
    let add = env("ADD", "q2", &c.pod("q1").ns.path(), ARGS, &[], &[]);
    expect_error(
        &run(&add, &conf),
        11,
        "rama-agent running",
        "ADD with the agent down",
    );
    let out = c.del_cni_pod("q1").expect("del");
    assert!(out.success(), "{out:?}");
    assert!(out.stderr.contains("queued"), "{out:?}");
    let queued: Vec<_> = std::fs::read_dir(c.queue_dir_of(0))
        .expect("queue dir")
        .flatten()
        .collect();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        c.holdings(0).allocations,
        held.allocations,
        "nothing done yet"
    );

    // The agent completes it on start.
    c.start_agent(0, &[]).expect("agent back");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while c.holdings(0).records > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = c.holdings(0);
    assert_eq!(
        (h.interfaces.len(), h.records, h.allocations.len()),
        (0, 0, 0),
        "{h:?}"
    );
    assert_eq!(
        std::fs::read_dir(c.queue_dir_of(0)).expect("queue").count(),
        0,
        "the queue is empty"
    );
    assert!(
        c.agent_log(0).contains("completed the queued DEL"),
        "{}",
        c.agent_log(0)
    );
}

#[test]
fn a_broken_state_file_is_named_and_the_last_good_state_served() {
    require_root!();
    let mut c = Cluster::new("cs", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    c.write_cluster_state().expect("state");
    c.start_agent(0, &[]).expect("agent 1");
    c.start_agent(1, &[]).expect("agent 2");
    c.add_cni_pod(0, "a", PodNet::Overlay).expect("pod a");
    c.add_cni_pod(1, "b", PodNet::Overlay).expect("pod b");
    ping(&c.pod("a").ns, c.pod("b").ipv4.into()).expect("overlay works");

    // An operator breaks a Subnet file: YAML that does not parse.
    let path = c.state_dir().join("subnets/overlay-v6.yaml");
    let good = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, "spec: [unclosed\n").expect("break");
    let conf = c.cni_conf(0, "1.1.0").to_string();
    let status = env(
        "STATUS",
        "",
        "",
        "",
        &[],
        &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = run(&status, &conf);
    while out.success() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        out = run(&status, &conf);
    }
    expect_error(&out, 50, "overlay-v6.yaml", "STATUS with a broken file");
    assert!(
        c.agent_log(0).contains("overlay-v6.yaml"),
        "the log names the file"
    );
    // Forwarding goes on from the last good state, and the file is left as it is.
    ping(&c.pod("a").ns, c.pod("b").ipv6.into()).expect("still forwarding");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "spec: [unclosed\n"
    );

    // An object that parses but breaks a rule: named with its field.
    std::fs::write(&path, good.replace("fd00:244::/64", "fd00:244::1/64")).expect("invalid");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = run(&status, &conf);
    while !out.stdout.contains("spec.range.cidr") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        out = run(&status, &conf);
    }
    expect_error(&out, 50, "spec.range.cidr", "STATUS with an invalid Subnet");
    ping(&c.pod("b").ns, c.pod("a").ipv6.into()).expect("still forwarding");

    // Fixed: ready again.
    std::fs::write(&path, good).expect("fix");
    c.wait_agent_ready(0, Duration::from_secs(10))
        .expect("ready again");
}
