//! The agent in Kubernetes mode against the real kube-apiserver (`cargo xtask test`
//! starts one and sets RAMA_TEST_KUBECONFIG): two nodes, `rama-controller` running,
//! Networks and Subnets created through the API, pods created as the scheduler
//! leaves them (spec.nodeName set). Each agent publishes its NodeInfo, waits in ADD
//! for the controller's IPInstances, and learns the other node's pods from the API:
//! the two overlay pods reach each other over VXLAN, and the pod on the remote node
//! disappears from the other agent's map once it is deleted.
//!
//! The API server listens on the host's loopback; each node namespace gets a
//! forwarder from its own 127.0.0.1 to it, so the kubeconfig works unchanged there.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, ResourceExt as _,
    api::{DeleteParams, ListParams, PostParams},
};
use rama_agent::dataplane::DatapathMode;
use rama_api::{IPInstance, Network, NodeInfo, Subnet, annotations as ann};
use rama_tests::{
    agents::pod_from_result,
    binary,
    cluster::{Cluster, PodNet},
    netns::Netns,
    require_root,
    traffic::{ping, tcp_exchange},
};
use serde_json::json;

const API_PORT: u16 = 26443;

fn kubeconfig() -> Option<PathBuf> {
    rama_tests::path_from_env(
        "RAMA_TEST_KUBECONFIG",
        "agents_in_kubernetes_mode_connect_pods_across_nodes",
        "an API server",
    )
}

/// Forwards 127.0.0.1:`port` inside `ns` to 127.0.0.1:`port` of the host, until
/// dropped. A socket keeps the namespace it was made in, so the listener is made on a
/// thread inside `ns` and the outgoing connections here.
struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Forwarder {
    fn start(ns: &Netns, port: u16) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener: TcpListener = ns
            .run_in(move || TcpListener::bind(addr))
            .expect("enter the node namespace")
            .join()
            .expect("bind thread")
            .expect("bind the forwarder in the node namespace");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inside, _)) => {
                        let Ok(outside) = TcpStream::connect(addr) else {
                            continue;
                        };
                        let _ = inside.set_nonblocking(false);
                        pipe(
                            inside.try_clone().expect("clone"),
                            outside.try_clone().expect("clone"),
                        );
                        pipe(outside, inside);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Forwarder {
            stop,
            thread: Some(thread),
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `rama-controller`, started by this test; stopped by PID on drop.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        rama_tests::stop_child(&mut self.0, Duration::from_secs(10));
    }
}

/// What this test created in the API, deleted at the end even when it fails.
struct ApiObjects {
    client: Client,
    rt: tokio::runtime::Handle,
    ns: String,
    prefix: String,
}

impl Drop for ApiObjects {
    fn drop(&mut self) {
        let (client, ns, prefix) = (self.client.clone(), self.ns.clone(), self.prefix.clone());
        // Every step on its own: one that fails (say, a namespace never made) must
        // not keep the others from running.
        self.rt.block_on(async move {
            let now = DeleteParams::default().grace_period(0);
            let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
            if let Ok(list) = pods.list(&ListParams::default()).await {
                for p in list.items {
                    let _ = pods.delete(&p.name_any(), &now).await;
                }
            }
            let ips: Api<IPInstance> = Api::namespaced(client.clone(), &ns);
            if let Ok(list) = ips.list(&ListParams::default()).await {
                for i in list.items {
                    let _ = ips.delete(&i.name_any(), &DeleteParams::default()).await;
                }
            }
            let _ = Api::<Subnet>::all(client.clone())
                .delete(&format!("{prefix}-v4"), &DeleteParams::default())
                .await;
            let _ = Api::<Network>::all(client.clone())
                .delete(&format!("{prefix}-overlay"), &DeleteParams::default())
                .await;
            let infos: Api<NodeInfo> = Api::all(client.clone());
            let nodes: Api<Node> = Api::all(client.clone());
            for n in ["n1", "n2"] {
                let _ = infos.delete(n, &DeleteParams::default()).await;
                let _ = nodes.delete(n, &DeleteParams::default()).await;
            }
        });
    }
}

async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn pod_object(ns: &str, name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": { (ann::NETWORK_TYPE): "Overlay" },
        },
        "spec": {
            "nodeName": node,
            "containers": [{ "name": "app", "image": "registry.invalid/app:1" }],
        },
    }))
    .expect("pod object")
}

#[test]
fn agents_in_kubernetes_mode_connect_pods_across_nodes() {
    require_root!();
    let Some(kubeconfig) = kubeconfig() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // The client's connection pool needs the runtime around when it is made.
    let _entered = rt.enter();
    let config = rt
        .block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await
        })
        .expect("kubeconfig");
    let client = Client::try_from(config).expect("client");
    let prefix = format!("ak{}", std::process::id() % 100_000);
    let ns = prefix.clone();

    let controller = Controller(
        Command::new(binary("rama-controller"))
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--install-crds", "--no-webhook", "--leader-elect", "false"])
            .args(["--identity", &prefix, "--resync-seconds", "5"])
            .args(["--metrics-addr", "none"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rama-controller"),
    );
    let _objects = ApiObjects {
        client: client.clone(),
        rt: rt.handle().clone(),
        ns: ns.clone(),
        prefix: prefix.clone(),
    };
    rt.block_on(async {
        // The controller installs the CRDs; wait for them to be served.
        eventually("the CRDs to be served", || async {
            let lp = ListParams::default();
            let served = Api::<Network>::all(client.clone()).list(&lp).await.is_ok()
                && Api::<Subnet>::all(client.clone()).list(&lp).await.is_ok()
                && Api::<IPInstance>::all(client.clone())
                    .list(&lp)
                    .await
                    .is_ok()
                && Api::<NodeInfo>::all(client.clone()).list(&lp).await.is_ok();
            served.then_some(())
        })
        .await;
        let pp = PostParams::default();
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        let _ = Api::<Namespace>::all(client.clone())
            .create(&pp, &namespace)
            .await;
        for n in ["n1", "n2"] {
            let node: Node = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
            let _ = Api::<Node>::all(client.clone()).create(&pp, &node).await;
        }
        let network: Network = serde_json::from_value(json!({
            "apiVersion": "networking.alibaba.com/v1", "kind": "Network",
            "metadata": {"name": format!("{prefix}-overlay")},
            "spec": {"type": "Overlay", "netID": 4096},
        }))
        .unwrap();
        Api::<Network>::all(client.clone())
            .create(&pp, &network)
            .await
            .expect("Network");
        let subnet: Subnet = serde_json::from_value(json!({
            "apiVersion": "networking.alibaba.com/v1", "kind": "Subnet",
            "metadata": {"name": format!("{prefix}-v4")},
            "spec": {"network": format!("{prefix}-overlay"),
                     "range": {"version": "4", "cidr": "10.247.0.0/24"}},
        }))
        .unwrap();
        Api::<Subnet>::all(client.clone())
            .create(&pp, &subnet)
            .await
            .expect("Subnet");
    });

    let mut c = Cluster::new("ak", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    let _forwarders: Vec<Forwarder> = c
        .nodes
        .iter()
        .map(|n| Forwarder::start(&n.ns, API_PORT))
        .collect();
    let kc = kubeconfig.display().to_string();
    for i in 0..2 {
        c.start_agent(i, &["--kubeconfig", &kc])
            .unwrap_or_else(|e| panic!("agent n{}: {e:#}\n{}", i + 1, c.agent_log(i)));
    }
    // Each agent published its NodeInfo (VTEP address and MAC, uplink MAC).
    rt.block_on(async {
        for n in ["n1", "n2"] {
            let info = eventually(&format!("NodeInfo {n}"), || async {
                Api::<NodeInfo>::all(client.clone())
                    .get_opt(n)
                    .await
                    .ok()
                    .flatten()
            })
            .await;
            println!("NodeInfo {n}: {:?}", info.spec);
        }
    });

    // Pods as the scheduler leaves them; the controller allocates, ADD waits for it.
    for (node, name) in [(0usize, "web"), (1, "db")] {
        rt.block_on(async {
            Api::<Pod>::namespaced(client.clone(), &ns)
                .create(
                    &PostParams::default(),
                    &pod_object(&ns, name, &c.nodes[node].name),
                )
                .await
                .expect("Pod");
        });
        let pod_ns = Netns::new(&format!("{}-{name}", c.tag)).expect("netns");
        let started = Instant::now();
        let out = c
            .cni(
                node,
                "ADD",
                &format!("c-{name}"),
                Some(&pod_ns.path()),
                &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"),
                &c.cni_conf(node, "1.0.0"),
            )
            .expect("plugin");
        assert!(out.success(), "ADD {name}: {out:?}\n{}", c.agent_log(node));
        let pod = pod_from_result(name, node, PodNet::Overlay, pod_ns, &out.json().unwrap())
            .expect("pod");
        assert!(
            pod.ipv4.to_string().starts_with("10.247.0."),
            "{name} got {} (not from the API's Subnet)",
            pod.ipv4
        );
        println!(
            "ADD {ns}/{name} on {}: {} in {} ms (allocated by rama-controller)",
            c.nodes[node].name,
            pod.ipv4,
            started.elapsed().as_millis()
        );
        c.pods.push(pod);
    }
    // The agents learned each other's pods from the API: VXLAN both ways.
    let (web, db) = (c.pod("web"), c.pod("db"));
    ping(&web.ns, db.ipv4.into()).expect("web → db over the overlay");
    ping(&db.ns, web.ipv4.into()).expect("db → web over the overlay");
    let seen = tcp_exchange(&db.ns, db.ipv4.into(), &web.ns).expect("TCP web → db");
    assert_eq!(
        seen,
        std::net::IpAddr::from(web.ipv4),
        "no NAT between pods"
    );
    println!(
        "ok   web {} on n1 ↔ db {} on n2 (ping, TCP)",
        web.ipv4, db.ipv4
    );

    // db deleted (CNI DEL, then the Pod; the controller releases its address):
    // n1 drops it from its datapath.
    let before = c.map_len(0, "RAMA_ENDPOINTS");
    let del = c.del_cni_pod("db").expect("plugin");
    assert!(del.success(), "DEL db: {del:?}");
    rt.block_on(async {
        Api::<Pod>::namespaced(client.clone(), &ns)
            .delete("db", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete Pod");
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.map_len(0, "RAMA_ENDPOINTS") >= before {
        assert!(
            Instant::now() < deadline,
            "n1 still has db's address in RAMA_ENDPOINTS\n{}",
            c.agent_log(0)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(controller);
}
