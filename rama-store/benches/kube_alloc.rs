//! Allocations per second through the Kubernetes store against a real kube-apiserver
//! (the path the controller takes for every pod): list, decide, create the
//! IPInstance, write the Subnet status. Needs RAMA_TEST_KUBECONFIG (`cargo xtask
//! bench` starts the API server and sets it); prints a table and writes JSON.
use std::time::Instant;

use kube::{Api, api::PostParams};
use rama_api::{AddressRange, IpVersion, Network, NetworkSpec, Subnet, SubnetSpec};
use rama_ipam::{IpFamilies, PodKey, Request};
use rama_store::kube_store::KubeStore;

#[tokio::main(flavor = "current_thread")]
async fn main() {
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
    let network = format!("bench-{tag}");
    let net = Network::new(&network, NetworkSpec::overlay(1));
    Api::<Network>::all(client.clone())
        .create(&PostParams::default(), &net)
        .await
        .expect("network");
    let subnet = Subnet::new(
        &format!("bench-{tag}"),
        SubnetSpec::new(
            network.clone(),
            AddressRange::new(IpVersion::V4, "10.240.0.0/16"),
        ),
    );
    Api::<Subnet>::all(client.clone())
        .create(&PostParams::default(), &subnet)
        .await
        .expect("subnet");
    let n = 200;
    let start = Instant::now();
    for i in 0..n {
        let req = Request {
            pod: Some(PodKey::new("default", format!("bench-{i}"))),
            node: "n1".into(),
            network: Some(network.clone()),
            families: IpFamilies::V4,
            ..Default::default()
        };
        store.allocate(&req).await.expect("allocate");
    }
    let rate = f64::from(n) / start.elapsed().as_secs_f64();
    println!("Kubernetes store against kube-apiserver 1.20.2 on loopback");
    println!(
        "{:<48} {:>10.1}",
        "allocations/s (one writer, 200 pods)", rate
    );
    let date = std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let out_dir = std::env::var("RAMA_BENCH_OUT")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/results").to_owned());
    let _ = std::fs::create_dir_all(&out_dir);
    let path = format!("{out_dir}/kube-store-{date}.json");
    let json = serde_json::json!({"date": date, "allocations_per_second": rate, "pods": n,
        "note": "list + decide + create IPInstance + SSA of the Subnet status per pod; the whole state is re-read each time"});
    std::fs::write(&path, serde_json::to_string_pretty(&json).expect("json")).expect("write");
    println!("wrote {path}");
}
