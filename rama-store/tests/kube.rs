//! The Kubernetes store against a real kube-apiserver (started by `cargo xtask test`,
//! which sets RAMA_TEST_KUBECONFIG): allocation creates IPInstances, two stores
//! racing on one subnet never duplicate an address, StatefulSet addresses are kept.
use std::{collections::HashSet, path::PathBuf};

use kube::{
    Api,
    api::{ListParams, PostParams},
};
use rama_api::{AddressRange, IPInstance, IpVersion, Network, NetworkSpec, Subnet, SubnetSpec};
use rama_ipam::{IpFamilies, PodKey, Request};
use rama_store::kube_store::KubeStore;

fn kubeconfig() -> Option<PathBuf> {
    std::env::var_os("RAMA_TEST_KUBECONFIG").map(PathBuf::from)
}

/// Installs the CRDs where missing and creates a Network with one /24 Subnet; returns
/// the store and the namespace the test uses (unique per test).
async fn setup(tag: &str, cidr: &str) -> (KubeStore, kube::Client, String) {
    let path = kubeconfig().expect("checked by the caller");
    let store = KubeStore::from_kubeconfig(&path, "rama-test")
        .await
        .expect("store");
    store.install_crds().await.expect("CRDs");
    let client = store.client();
    let network = format!("overlay-{tag}");
    let mut net = Network::new(&network, NetworkSpec::overlay(4096));
    net.metadata.name = Some(network.clone());
    Api::<Network>::all(client.clone())
        .create(&PostParams::default(), &net)
        .await
        .expect("network");
    let subnet = Subnet::new(
        &format!("subnet-{tag}"),
        SubnetSpec::new(network.clone(), AddressRange::new(IpVersion::V4, cidr)),
    );
    Api::<Subnet>::all(client.clone())
        .create(&PostParams::default(), &subnet)
        .await
        .expect("subnet");
    (store, client, network)
}

fn request(network: &str, namespace: &str, pod: &str, node: &str) -> Request {
    Request {
        pod: Some(PodKey::new(namespace, pod)),
        node: node.into(),
        network: Some(network.into()),
        families: IpFamilies::V4,
        ..Default::default()
    }
}

macro_rules! require_apiserver {
    () => {
        if kubeconfig().is_none() {
            eprintln!(
                "SKIP: no API server (RAMA_TEST_KUBECONFIG unset); `cargo xtask test` starts one"
            );
            return;
        }
    };
}

#[tokio::test]
async fn two_stores_racing_never_duplicate() {
    require_apiserver!();
    let (store_a, client, network) = setup("race", "10.251.0.0/24").await;
    let path = kubeconfig().expect("kubeconfig");
    let store_b = KubeStore::from_kubeconfig(&path, "rama-test-b")
        .await
        .expect("store b");
    let (a, b) = tokio::join!(
        async {
            for i in 0..15 {
                store_a
                    .allocate(&request(&network, "default", &format!("race-a-{i}"), "n1"))
                    .await
                    .expect("a allocates");
            }
        },
        async {
            for i in 0..15 {
                store_b
                    .allocate(&request(&network, "default", &format!("race-b-{i}"), "n2"))
                    .await
                    .expect("b allocates");
            }
        }
    );
    let _ = (a, b);
    let instances = Api::<IPInstance>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    let ours: Vec<_> = instances
        .iter()
        .filter(|i| i.spec.network == network)
        .collect();
    assert_eq!(ours.len(), 30);
    let ips: HashSet<&str> = ours.iter().map(|i| i.spec.address.ip.as_str()).collect();
    assert_eq!(ips.len(), 30, "an address was handed out twice");
}

#[tokio::test]
async fn statefulset_pod_keeps_its_address_on_another_node() {
    require_apiserver!();
    let (store, client, network) = setup("sts", "10.252.0.0/24").await;
    let mut req = request(&network, "default", "sts-web-0", "n1");
    req.retain = true;
    let first = store.allocate(&req).await.expect("allocate");
    let ip = first[0].spec.address.ip.clone();
    assert!(
        store
            .release(&PodKey::new("default", "sts-web-0"))
            .await
            .expect("release")
            .is_empty()
    );
    let kept = Api::<IPInstance>::namespaced(client.clone(), "default")
        .get(first[0].metadata.name.as_deref().expect("name"))
        .await
        .expect("kept");
    assert_eq!(kept.spec.binding.node_name, None);
    assert_eq!(
        kept.status.and_then(|s| s.phase).as_deref(),
        Some("Retained")
    );
    let other = store
        .allocate(&request(&network, "default", "other", "n1"))
        .await
        .expect("other");
    assert_ne!(other[0].spec.address.ip, ip);
    req.node = "n2".into();
    let again = store.allocate(&req).await.expect("recreated");
    assert_eq!(again[0].spec.address.ip, ip);
    assert_eq!(again[0].spec.binding.node_name.as_deref(), Some("n2"));
    let subnet = Api::<Subnet>::all(client)
        .get("subnet-sts")
        .await
        .expect("subnet");
    let status = subnet.status.expect("status written by server-side apply");
    assert_eq!(status.used, 2);
}
