//! A test cluster: the real kube-apiserver `cargo xtask test` starts (RAMA_TEST_KUBECONFIG),
//! Rama's CRDs, Node objects, a namespace per test, and controllers run in-process.
//! Tests that share the API server take turns (a process-wide lock): a controller acts
//! on every pod it sees, so two tests' controllers must not overlap.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        core::v1::{Namespace, Node, Pod, PodSpec},
        events::v1::Event,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use rama_api::{IPInstance, Network, Subnet};
use rama_controller::{Settings, leader::LeaseSettings};
use rama_store::kube_store::KubeStore;
use tokio::{sync::watch, task::JoinHandle};

static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn apply() -> PatchParams {
    PatchParams::apply("rama-test").force()
}

pub fn kubeconfig() -> Option<PathBuf> {
    std::env::var_os("RAMA_TEST_KUBECONFIG").map(PathBuf::from)
}

#[macro_export]
macro_rules! require_apiserver {
    () => {
        if support::kubeconfig().is_none() {
            eprintln!(
                "SKIP: no API server (RAMA_TEST_KUBECONFIG unset); `cargo xtask test` starts one"
            );
            return;
        }
    };
}

pub async fn client() -> Client {
    let path = kubeconfig().expect("checked by require_apiserver!");
    KubeStore::from_kubeconfig(&path, "rama-test")
        .await
        .expect("client")
        .client()
}

/// A controller running in this process.
pub struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<rama_controller::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.task
            .await
            .expect("controller task")
            .expect("controller ran without error");
    }
}

pub fn start_controller(client: &Client, identity: &str, lease: Option<&str>) -> Running {
    let (stop, mut rx) = watch::channel(false);
    let settings = Settings {
        field_manager: "rama-controller".into(),
        identity: identity.into(),
        resync: Duration::from_secs(5),
        concurrency: 4,
        ..Settings::default()
    };
    let lease = lease.map(|name| {
        let mut l = LeaseSettings::new("default", name, identity);
        l.duration = Duration::from_secs(6);
        l.renew = Duration::from_secs(1);
        l
    });
    let client = client.clone();
    let task = tokio::spawn(async move {
        rama_controller::run(client, settings, lease, async move {
            let _ = rx.wait_for(|s| *s).await;
        })
        .await
    });
    Running { stop, task }
}

#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    /// The test's namespace (also the prefix of everything cluster-scoped it makes).
    pub ns: String,
}

/// Polls `check` every 100 ms until it returns Some, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(30);

impl Cluster {
    /// Installs the CRDs, makes the namespace (annotated with
    /// `annotations`: the namespace defaults) and the nodes `<ns>-n1`, `<ns>-n2`.
    pub async fn new(ns: &str, annotations: &[(&str, &str)]) -> Self {
        let _ = env_logger::builder()
            .is_test(true)
            .parse_env(
                env_logger::Env::default()
                    .default_filter_or("warn,rama_controller=info,kube_client=error"),
            )
            .try_init();
        let client = client().await;
        KubeStore::new(client.clone(), "rama-test")
            .install_crds()
            .await
            .expect("CRDs");
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(ns.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        // Applied, not created: a namespace outlives its test (no namespace controller).
        Api::<Namespace>::all(client.clone())
            .patch(ns, &apply(), &Patch::Apply(&namespace))
            .await
            .expect("namespace");
        let c = Self {
            client,
            ns: ns.into(),
        };
        c.node("n1", &[("rama-test-rack", &format!("{ns}-a"))])
            .await;
        c.node("n2", &[("rama-test-rack", &format!("{ns}-b"))])
            .await;
        c
    }

    /// The webhook configurations a test registers (removed by [`Self::cleanup`]).
    pub fn webhook_config(&self) -> String {
        format!("{}-webhook", self.ns)
    }

    pub fn node_name(&self, n: &str) -> String {
        format!("{}-{n}", self.ns)
    }

    pub async fn node(&self, n: &str, labels: &[(&str, &str)]) {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(self.node_name(n)),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Node>::all(self.client.clone())
            .patch(&self.node_name(n), &apply(), &Patch::Apply(&node))
            .await
            .expect("node");
    }

    pub async fn create_network(&self, network: &Network) {
        Api::<Network>::all(self.client.clone())
            .create(&PostParams::default(), network)
            .await
            .expect("network");
    }

    pub async fn create_subnet(&self, subnet: &Subnet) {
        Api::<Subnet>::all(self.client.clone())
            .create(&PostParams::default(), subnet)
            .await
            .expect("subnet");
    }

    pub fn pod(&self, name: &str, node: &str, annotations: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.ns.clone()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| self.node_name(node)),
                containers: vec![k8s_openapi::api::core::v1::Container {
                    name: "app".into(),
                    image: Some("registry.invalid/app:1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod a StatefulSet named after everything before its last dash would own.
    pub fn stateful_pod(&self, name: &str, node: &str, annotations: &[(&str, &str)]) -> Pod {
        let mut pod = self.pod(name, node, annotations);
        pod.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "StatefulSet".into(),
            name: name.rsplit_once('-').map(|(s, _)| s).unwrap_or(name).into(),
            uid: "00000000-0000-0000-0000-000000000001".into(),
            controller: Some(true),
            ..Default::default()
        }]);
        pod
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create_pod(&self, pod: &Pod) -> Pod {
        self.pods()
            .create(&PostParams::default(), pod)
            .await
            .expect("pod")
    }

    /// Deletes a pod at once (no kubelet here to finish a graceful deletion).
    pub async fn delete_pod(&self, name: &str) {
        let _ = self
            .pods()
            .delete(name, &DeleteParams::default().grace_period(0))
            .await;
        eventually(&format!("pod {name} gone"), WAIT, || async {
            self.pods()
                .get_opt(name)
                .await
                .expect("get")
                .is_none()
                .then_some(())
        })
        .await;
    }

    pub async fn instances(&self) -> Vec<IPInstance> {
        Api::<IPInstance>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("IPInstances")
            .items
    }

    /// The pod's bound instances, once there are `count` of them, bound to its node.
    pub async fn wait_ips(&self, pod: &str, count: usize) -> Vec<IPInstance> {
        let node = self
            .pods()
            .get(pod)
            .await
            .expect("pod")
            .spec
            .and_then(|s| s.node_name);
        eventually(
            &format!("{count} address(es) for pod {pod}"),
            WAIT,
            || async {
                let mine: Vec<IPInstance> = self
                    .instances()
                    .await
                    .into_iter()
                    .filter(|i| {
                        i.spec.binding.pod_name.as_deref() == Some(pod)
                            && i.spec.binding.node_name.is_some()
                            && i.spec.binding.node_name == node
                            && i.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
                    })
                    .collect();
                (mine.len() == count).then_some(mine)
            },
        )
        .await
    }

    /// The bare address (no prefix length) of an instance.
    pub fn ip(i: &IPInstance) -> String {
        i.spec
            .address
            .ip
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    /// Events about this incarnation of a pod (events.k8s.io/v1, as the controller
    /// writes them; an earlier pod of the same name has another uid).
    pub async fn events(&self, pod: &str) -> Vec<Event> {
        let uid = self.pods().get(pod).await.expect("pod").metadata.uid;
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("events")
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().is_some_and(|r| r.uid == uid))
            .collect()
    }

    pub async fn wait_event(&self, pod: &str, reason: &str) -> Event {
        eventually(&format!("event {reason} on pod {pod}"), WAIT, || async {
            self.events(pod)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await
    }

    /// Removes what the test made: pods, IPInstances, Subnets and Networks named
    /// after the namespace, its nodes. (The namespace itself stays: there is no
    /// namespace controller to finish deleting it.)
    pub async fn cleanup(&self) {
        // First: a webhook whose server is gone would refuse everything below.
        rama_controller::webhook::unregister(&self.client, &self.webhook_config())
            .await
            .expect("unregister the webhook");
        let pods = self
            .pods()
            .list(&ListParams::default())
            .await
            .expect("pods")
            .items;
        for p in pods {
            let _ = self
                .pods()
                .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                .await;
        }
        let api = Api::<IPInstance>::namespaced(self.client.clone(), &self.ns);
        for i in self.instances().await {
            let _ = api.delete(&i.name_any(), &DeleteParams::default()).await;
        }
        let prefix = format!("{}-", self.ns);
        let subnets = Api::<Subnet>::all(self.client.clone());
        for s in subnets
            .list(&ListParams::default())
            .await
            .expect("subnets")
            .items
        {
            if s.name_any().starts_with(&prefix) {
                let _ = subnets
                    .delete(&s.name_any(), &DeleteParams::default())
                    .await;
            }
        }
        let networks = Api::<Network>::all(self.client.clone());
        for n in networks
            .list(&ListParams::default())
            .await
            .expect("networks")
            .items
        {
            if n.name_any().starts_with(&prefix) {
                let _ = networks
                    .delete(&n.name_any(), &DeleteParams::default())
                    .await;
            }
        }
        let nodes = Api::<Node>::all(self.client.clone());
        for n in ["n1", "n2", "n3"] {
            let _ = nodes
                .delete(&self.node_name(n), &DeleteParams::default())
                .await;
        }
    }
}

/// Runs a test body against a fresh [`Cluster`], in this test's turn, and cleans up
/// even when it panics (its controllers stop when their [`Running`] is dropped).
pub async fn with_cluster<F, Fut>(ns: &str, annotations: &[(&str, &str)], body: F)
where
    F: FnOnce(Cluster) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _turn = TURN.lock().await;
    let cluster = Cluster::new(ns, annotations).await;
    let outcome = tokio::spawn(body(cluster.clone())).await;
    // Let a controller dropped by a panic finish stopping before the cleanup.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.cleanup().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Labels of a node.
pub async fn node_labels(client: &Client, name: &str) -> BTreeMap<String, String> {
    Api::<Node>::all(client.clone())
        .get(name)
        .await
        .expect("node")
        .metadata
        .labels
        .unwrap_or_default()
}
