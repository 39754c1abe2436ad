//! The Kubernetes API as the agent's source: reflectors on Networks, Subnets,
//! IPInstances and NodeInfos, this node's NodeInfo published by server-side apply.
//!
//! In Kubernetes the controller allocates (it sees the pod scheduled, before the
//! kubelet asks for a sandbox); the agent's ADD waits for the pod's IPInstances bound
//! to this node, as the original Hybridnet daemon did. How many to wait for comes
//! from the pod's `ip-family` annotation.
use std::{sync::Arc, time::Duration};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use rama_api::{IPInstance, Network, NodeInfo, Subnet, annotations as ann};
use rama_cni::api::PodRef;
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};

use super::Snapshot;
use crate::{Error, Result};

pub struct KubeSource {
    client: Client,
    field_manager: String,
    networks: Store<Network>,
    subnets: Store<Subnet>,
    instances: Store<IPInstance>,
    node_infos: Store<NodeInfo>,
    events: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

fn reflect<K>(api: Api<K>, events: Arc<watch::Sender<u64>>) -> (Store<K>, JoinHandle<()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => events.send_modify(|g| *g += 1),
                Err(e) => log::warn!("watching {}: {e}", K::kind(&())),
            }
        }
    });
    (reader, task)
}

/// A client from a kubeconfig file, or the in-cluster service account / $KUBECONFIG.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig {
                path: Some(path.to_owned()),
                detail: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| Error::Kubeconfig {
                    path: Some(path.to_owned()),
                    detail: e.to_string(),
                })?
        }
        None => kube::Config::infer().await.map_err(|e| Error::Kubeconfig {
            path: None,
            detail: format!("no in-cluster config, $KUBECONFIG or ~/.kube/config: {e}"),
        })?,
    };
    Client::try_from(config).map_err(kube_err("building the client"))
}

impl KubeSource {
    /// Starts the reflectors and waits (up to `timeout`) for their first lists.
    pub async fn start(client: Client, field_manager: &str, timeout: Duration) -> Result<Self> {
        let (tx, events) = watch::channel(0u64);
        let tx = Arc::new(tx);
        let (networks, t1) = reflect(Api::<Network>::all(client.clone()), tx.clone());
        let (subnets, t2) = reflect(Api::<Subnet>::all(client.clone()), tx.clone());
        let (instances, t3) = reflect(Api::<IPInstance>::all(client.clone()), tx.clone());
        let (node_infos, t4) = reflect(Api::<NodeInfo>::all(client.clone()), tx);
        let source = Self {
            client,
            field_manager: field_manager.to_owned(),
            networks,
            subnets,
            instances,
            node_infos,
            events,
            tasks: vec![t1, t2, t3, t4],
        };
        let ready = async {
            source.networks.wait_until_ready().await.ok();
            source.subnets.wait_until_ready().await.ok();
            source.instances.wait_until_ready().await.ok();
            source.node_infos.wait_until_ready().await.ok();
        };
        tokio::time::timeout(timeout, ready).await.map_err(|_| {
            Error::ClusterUnavailable(format!(
                "the API server did not list Networks, Subnets, IPInstances and NodeInfos \
                 within {timeout:?} (are the CRDs installed, and may this agent list them?)"
            ))
        })?;
        Ok(source)
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub(super) async fn snapshot(&self) -> Result<Snapshot> {
        fn own<K: Clone>(v: Vec<Arc<K>>) -> Vec<K> {
            v.into_iter().map(|a| (*a).clone()).collect()
        }
        Ok(Snapshot {
            networks: own(self.networks.state()),
            subnets: own(self.subnets.state()),
            instances: own(self.instances.state()),
            node_infos: own(self.node_infos.state()),
        })
    }

    pub(super) fn generation(&self) -> u64 {
        *self.events.borrow()
    }

    pub(super) async fn changed(&self, since: u64) -> u64 {
        let mut rx = self.events.clone();
        // The guard `wait_for` returns must not live across an await.
        let seen = rx.wait_for(|g| *g != since).await.map(|g| *g);
        match seen {
            Ok(g) => g,
            Err(_) => std::future::pending().await,
        }
    }

    pub(super) async fn publish_node_info(&self, info: &NodeInfo) -> Result<()> {
        let name = info.metadata.name.clone().unwrap_or_default();
        let mut body = serde_json::to_value(info)
            .map_err(|e| Error::io("encoding NodeInfo", std::io::Error::other(e)))?;
        body["apiVersion"] = "networking.alibaba.com/v1".into();
        body["kind"] = "NodeInfo".into();
        Api::<NodeInfo>::all(self.client.clone())
            .patch(
                &name,
                &PatchParams::apply(&self.field_manager).force(),
                &Patch::Apply(body),
            )
            .await
            .map_err(kube_err(format!("publishing NodeInfo {name}")))?;
        Ok(())
    }

    /// How many addresses the pod gets (1, or 2 for `ip-family: DualStack`).
    pub async fn families_of(&self, pod: &PodRef) -> Result<usize> {
        let live = Api::<Pod>::namespaced(self.client.clone(), &pod.namespace)
            .get_opt(&pod.name)
            .await
            .map_err(kube_err(format!(
                "reading Pod {}/{}",
                pod.namespace, pod.name
            )))?
            .ok_or_else(|| Error::PodNotFound(format!("{}/{}", pod.namespace, pod.name)))?;
        let dual = live
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ann::IP_FAMILY))
            .is_some_and(|v| v.eq_ignore_ascii_case("dualstack"));
        Ok(if dual { 2 } else { 1 })
    }

    /// The pod's IPInstances bound to `node`, once there are `want` of them.
    pub async fn wait_for_instances(
        &self,
        pod: &PodRef,
        node: &str,
        want: usize,
        timeout: Duration,
    ) -> Result<Vec<IPInstance>> {
        let mut rx = self.events.clone();
        let found = || {
            self.instances.state_filter(|i| {
                i.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                    && i.spec.binding.pod_name.as_deref() == Some(pod.name.as_str())
                    && i.spec.binding.node_name.as_deref() == Some(node)
            })
        };
        let wait = async {
            loop {
                let got = found();
                if got.len() >= want {
                    return got.into_iter().map(|i| (*i).clone()).collect::<Vec<_>>();
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            Error::NotAllocatedYet(format!(
                "pod {}/{} has {} of {want} IPInstance(s) bound to node {node} after {timeout:?}; \
                 is rama-controller running, and do the pod's annotations name a usable \
                 network? (see the pod's Events)",
                pod.namespace,
                pod.name,
                found().len()
            ))
        })
    }
}
