//! Controller allocations per second against a real kube-apiserver: pods created
//! first, then a controller started; timed until every pod has a Bound IPInstance.
//! Two rounds per allocation concurrency (A B B A), each in its own namespace and
//! from the same state, compared as a ratio within this run. Needs
//! RAMA_TEST_KUBECONFIG (`cargo xtask bench` starts the API server and sets it);
//! prints a table and writes JSON.
use std::time::{Duration, Instant};

use k8s_openapi::{
    api::core::v1::{Container, Namespace, Node, Pod, PodSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use rama_api::{
    AddressRange, IPInstance, IpVersion, Network, NetworkSpec, Subnet, SubnetSpec,
    annotations as ann,
};
use rama_controller::Settings;
use rama_store::kube_store::KubeStore;

const PODS: usize = 150;

async fn round(client: &Client, network: &str, tag: &str, concurrency: u16) -> f64 {
    let ns = format!("bench-ctl-{tag}");
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(ns.clone()),
            annotations: Some([(ann::SPECIFIED_NETWORK.to_owned(), network.to_owned())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for i in 0..PODS {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some(format!("p{i}")),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("bench-node".into()),
                containers: vec![Container {
                    name: "app".into(),
                    image: Some("registry.invalid/app:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod");
    }
    let (stop, mut rx) = tokio::sync::watch::channel(false);
    let settings = Settings {
        identity: format!("bench-{tag}"),
        concurrency,
        ..Settings::default()
    };
    let start = Instant::now();
    let ctl = tokio::spawn(rama_controller::run(
        client.clone(),
        settings,
        None,
        async move {
            let _ = rx.wait_for(|s| *s).await;
        },
    ));
    let instances = Api::<IPInstance>::namespaced(client.clone(), &ns);
    loop {
        let bound = instances
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .filter(|i| i.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
            .count();
        if bound >= PODS {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "stalled at {bound}/{PODS}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = PODS as f64 / start.elapsed().as_secs_f64();
    let _ = stop.send(true);
    ctl.await.expect("task").expect("controller");
    // Every allocation lists the IPInstances: the next round starts from the same
    // state as this one, or it would pay for this round's 150 as well.
    let gone = kube::api::DeleteParams::default().grace_period(0);
    let all = ListParams::default();
    pods.delete_collection(&gone, &all)
        .await
        .expect("delete pods");
    instances
        .delete_collection(&gone, &all)
        .await
        .expect("delete IPInstances");
    while !instances.list(&all).await.expect("list").items.is_empty()
        || !pods.list(&all).await.expect("list").items.is_empty()
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rate
}

#[tokio::main]
async fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let Some(path) = std::env::var_os("RAMA_TEST_KUBECONFIG").map(std::path::PathBuf::from) else {
        eprintln!("SKIP: RAMA_TEST_KUBECONFIG unset; `cargo xtask bench` starts an API server");
        return;
    };
    let store = KubeStore::from_kubeconfig(&path, "rama-bench")
        .await
        .expect("store");
    store.install_crds().await.expect("CRDs");
    let client = store.client();
    let tag = std::process::id();
    let node = Node {
        metadata: ObjectMeta {
            name: Some("bench-node".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let _ = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await;
    let network = format!("bench-ctl-{tag}");
    Api::<Network>::all(client.clone())
        .create(
            &PostParams::default(),
            &Network::new(&network, NetworkSpec::overlay(2)),
        )
        .await
        .expect("network");
    Api::<Subnet>::all(client.clone())
        .create(
            &PostParams::default(),
            &Subnet::new(
                &network,
                SubnetSpec::new(
                    network.clone(),
                    AddressRange::new(IpVersion::V4, "10.200.0.0/16"),
                ),
            ),
        )
        .await
        .expect("subnet");

    // A B B A: drift over the run (the API server's own state, the machine) hits
    // both alike; each kind's rate is the mean of its two rounds.
    let mut rates = [Vec::new(), Vec::new()];
    for (i, concurrency) in [1u16, 4, 4, 1].into_iter().enumerate() {
        let rate = round(&client, &network, &format!("{tag}-r{i}"), concurrency).await;
        rates[usize::from(concurrency == 4)].push(rate);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (serial, parallel) = (mean(&rates[0]), mean(&rates[1]));
    println!("Controller against kube-apiserver 1.20.2 on loopback ({PODS} pods per round)");
    println!("{:<44} {:>10}", "round", "allocs/s");
    println!("{:<44} {:>10.1}", "concurrency 1", serial);
    println!("{:<44} {:>10.1}", "concurrency 4", parallel);
    println!("{:<44} {:>10.2}", "ratio 4 : 1", parallel / serial);
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let out_dir = std::env::var("RAMA_BENCH_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results").to_owned());
    let _ = std::fs::create_dir_all(&out_dir);
    let path = format!("{out_dir}/controller-{date}.json");
    let json = serde_json::json!({
        "date": date,
        "pods_per_round": PODS,
        "allocations_per_second": {"concurrency_1": serial, "concurrency_4": parallel},
        "rounds": {"concurrency_1": rates[0], "concurrency_4": rates[1]},
        "ratio_4_to_1": parallel / serial,
        "note": "pods exist before the controller starts; timed from start until every pod has a Bound IPInstance (watch, list+decide+create, status SSA, Event)",
    });
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write");
    println!("wrote {path}");
}
