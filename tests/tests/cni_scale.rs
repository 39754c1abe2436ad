//! Many pods at once through the plugin: 100 concurrent ADDs give 100 distinct
//! addresses and 100 working pods, 100 DELs leave nothing; an agent killed during a
//! burst of ADDs, restarted, and a runtime GC leave no leaked address or interface.
use std::{
    collections::HashSet,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    agents::{CniOutput, pod_from_result},
    cluster::{Cluster, PodNet},
    netns::Netns,
    require_root,
    traffic::ping,
};
use serde_json::json;

fn pod_args(name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=burst;K8S_POD_NAME={name};RAMA_NETWORK=overlay;\
         RAMA_IP_FAMILY=DualStack"
    )
}

fn add(c: &Cluster, ns: &Netns, name: &str) -> CniOutput {
    c.cni(
        0,
        "ADD",
        &format!("c-{name}"),
        Some(&ns.path()),
        &pod_args(name),
        &c.cni_conf(0, "1.0.0"),
    )
    .expect("plugin runs")
}

fn two_nodes(tag: &str) -> Cluster {
    let mut c = Cluster::new(tag, &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    c.write_cluster_state().expect("state");
    c.start_agent(0, &[]).expect("agent 1");
    c.start_agent(1, &[]).expect("agent 2");
    c.add_cni_pod(1, "ref", PodNet::Overlay)
        .expect("reference pod");
    c
}

#[test]
fn a_hundred_concurrent_adds_and_dels() {
    require_root!();
    let mut c = two_nodes("sc");
    let empty = c.holdings(0);
    let names: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let netns: Vec<Netns> = names
        .iter()
        .map(|n| Netns::new(&format!("{}-{n}", c.tag)).expect("netns"))
        .collect();
    let started = Instant::now();
    let outs: Vec<CniOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&netns)
            .map(|(n, ns)| {
                let c = &c;
                s.spawn(move || add(c, ns, n))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    eprintln!("100 concurrent ADDs took {:?}", started.elapsed());
    let mut ips = HashSet::new();
    for (name, (out, ns)) in names.iter().zip(outs.iter().zip(netns)) {
        assert!(out.success(), "{name}: {out:?}\n{}", c.agent_log(0));
        let pod =
            pod_from_result(name, 0, PodNet::Overlay, ns, &out.json().expect("json")).expect("pod");
        assert!(ips.insert(pod.ipv4), "{} handed out twice", pod.ipv4);
        c.pods.push(pod);
    }
    assert_eq!(ips.len(), 100, "100 distinct IPv4 addresses");
    let v6: HashSet<_> = c.pods.iter().map(|p| p.ipv6).collect();
    assert_eq!(
        v6.len(),
        101,
        "100 distinct IPv6 addresses (and the reference pod's)"
    );
    let h = c.holdings(0);
    assert_eq!(
        (
            h.interfaces.len(),
            h.records,
            h.allocations.len(),
            h.map_entries
        ),
        (100, 100, 200, Some(100)),
        "{h:?}"
    );
    // Every pod works: it reaches the reference pod on the other node.
    let target = c.pod("ref").ipv4.into();
    for p in c.pods.iter().filter(|p| p.node == 0) {
        ping(&p.ns, target).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }

    let started = Instant::now();
    let dels: Vec<CniOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = c
            .pods
            .iter()
            .filter(|p| p.node == 0)
            .map(|p| {
                let c = &c;
                let (name, path) = (p.name.clone(), p.ns.path());
                s.spawn(move || {
                    c.cni(
                        0,
                        "DEL",
                        &format!("c-{name}"),
                        Some(&path),
                        &pod_args(&name),
                        &c.cni_conf(0, "1.0.0"),
                    )
                    .expect("plugin runs")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    eprintln!("100 concurrent DELs took {:?}", started.elapsed());
    for d in &dels {
        assert!(d.success(), "{d:?}");
    }
    c.pods.retain(|p| p.node != 0);
    assert_eq!(c.holdings(0), empty, "100 DELs leave nothing on the node");
    // The other node forgets them too.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.map_len(1, "RAMA_ENDPOINTS") != 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.map_len(1, "RAMA_ENDPOINTS"),
        2,
        "only ref's two addresses remain"
    );
}

#[test]
fn an_agent_killed_during_a_burst_of_adds_leaks_nothing_after_restart_and_gc() {
    require_root!();
    let mut c = two_nodes("sk");
    let names: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    let netns: Vec<Netns> = names
        .iter()
        .map(|n| Netns::new(&format!("{}-{n}", c.tag)).expect("netns"))
        .collect();
    let done = AtomicUsize::new(0);
    let pid = c.agents[0].as_ref().expect("agent").pid();
    let outs: Vec<CniOutput> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .zip(&netns)
            .map(|(n, ns)| {
                let (c, done) = (&c, &done);
                s.spawn(move || {
                    let out = add(c, ns, n);
                    done.fetch_add(1, Ordering::SeqCst);
                    out
                })
            })
            .collect();
        // Kill the agent while the burst is in flight.
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::SeqCst) < 8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // SAFETY: kill(2) on the agent this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    c.stop_agent(0, libc::SIGKILL).expect("reaped");
    let ok: Vec<usize> = (0..names.len()).filter(|i| outs[*i].success()).collect();
    let failed = names.len() - ok.len();
    eprintln!(
        "{} ADDs succeeded, {failed} failed when the agent was killed",
        ok.len()
    );
    assert!(!ok.is_empty() && failed > 0, "the kill landed mid-burst");
    for i in (0..names.len()).filter(|i| !ok.contains(i)) {
        assert_eq!(
            outs[i].error_code(),
            Some(11),
            "{}: {:?}",
            names[i],
            outs[i]
        );
    }

    // Restart; the runtime then GCs with the sandboxes it knows (the successful ones).
    c.start_agent(0, &[]).expect("agent restarted");
    let mut conf = c.cni_conf(0, "1.1.0");
    conf["cni.dev/valid-attachments"] = json!(
        ok.iter()
            .map(|i| json!({"containerID": format!("c-{}", names[*i]), "ifname": "eth0"}))
            .collect::<Vec<_>>()
    );
    let gc = Cluster::run_cni(
        &[
            ("CNI_COMMAND", "GC".into()),
            ("CNI_PATH", "/opt/cni/bin".into()),
        ],
        conf.to_string().as_bytes(),
    )
    .expect("GC runs");
    assert!(gc.success(), "{gc:?}");
    let h = c.holdings(0);
    assert_eq!(
        (
            h.interfaces.len(),
            h.records,
            h.allocations.len(),
            h.map_entries
        ),
        (ok.len(), ok.len(), 2 * ok.len(), Some(ok.len())),
        "exactly the successful ADDs remain: {h:?}"
    );
    // No address is held twice, and the survivors still work.
    let mut pods = Vec::new();
    for (i, ns) in netns.into_iter().enumerate() {
        if ok.contains(&i) {
            pods.push(
                pod_from_result(
                    &names[i],
                    0,
                    PodNet::Overlay,
                    ns,
                    &outs[i].json().expect("json"),
                )
                .expect("pod"),
            );
        } else {
            let links = ns.ip(&["-o", "link"]).expect("links");
            assert!(
                !links.contains("eth0"),
                "{}: a failed ADD left eth0",
                names[i]
            );
        }
    }
    let v4: HashSet<_> = pods.iter().map(|p| p.ipv4).collect();
    assert_eq!(v4.len(), pods.len());
    let target = c.pod("ref").ipv4.into();
    for p in &pods {
        ping(&p.ns, target).unwrap_or_else(|e| panic!("{}: {e}", p.name));
    }
}
