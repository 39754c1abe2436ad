//! The Kubernetes store: the objects live in the API server, and creating an
//! IPInstance (named after its address) *is* the allocation — the API server's name
//! uniqueness makes a double allocation impossible even when two controllers race:
//! the loser gets 409 Conflict, drops what it created in that attempt, re-reads and
//! tries again. Subnet status is written with server-side apply under a named field
//! manager.
use std::net::IpAddr;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use rama_api::{IPInstance, IPInstanceStatus, Network, Subnet, instance_name};
use rama_ipam::{Binding, Ipam, PodKey, Request};

use crate::{Result, StoreError, instance_in, ipam_from, phase, subnet_status};

/// How often an allocation is retried after losing a race.
const ATTEMPTS: u32 = 8;

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Kube { what, source }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

pub struct KubeStore {
    client: Client,
    field_manager: String,
    /// Allocations through this store take turns. Each reads the state, picks the
    /// next free addresses and creates them: two at once in one process would pick
    /// the same ones and lose to each other (409) until they give up — the
    /// controller's concurrent reconciles did, at a fifth of the serial rate. Other
    /// processes (another replica) are still settled by the API server's 409.
    allocating: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl KubeStore {
    pub fn new(client: Client, field_manager: impl Into<String>) -> Self {
        Self {
            client,
            field_manager: field_manager.into(),
            allocating: Default::default(),
        }
    }

    /// The client the store talks through.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Creates Rama's CRDs where missing and waits until the API server serves them.
    pub async fn install_crds(&self) -> Result<()> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in rama_api::crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(e) if is_conflict(&e) => {}
                Err(e) => return Err(kube_err(format!("creating CRD {name}"))(e)),
            }
            let mut established = false;
            for _ in 0..120 {
                let got = crds
                    .get(&name)
                    .await
                    .map_err(kube_err(format!("reading CRD {name}")))?;
                established = got
                    .status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
            if !established {
                return Err(StoreError::Invalid {
                    object: format!("CRD {name}"),
                    field: "status.conditions",
                    detail: "not Established after 30 s".into(),
                });
            }
        }
        Ok(())
    }

    /// A store talking to the cluster a kubeconfig file names.
    pub async fn from_kubeconfig(path: &std::path::Path, field_manager: &str) -> Result<Self> {
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| StoreError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| StoreError::Parse {
                    path: path.to_owned(),
                    detail: e.to_string(),
                })?;
        let client = Client::try_from(config).map_err(kube_err("building the client"))?;
        Ok(Self::new(client, field_manager))
    }

    /// The whole state, as an IPAM, plus the IPInstances it came from.
    async fn load(&self) -> Result<(Ipam, Vec<Subnet>, Vec<IPInstance>)> {
        let lp = ListParams::default();
        let networks = Api::<Network>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(kube_err("listing Networks"))?
            .items;
        let subnets = Api::<Subnet>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(kube_err("listing Subnets"))?
            .items;
        let instances = Api::<IPInstance>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(kube_err("listing IPInstances"))?
            .items;
        let cursors = subnets
            .iter()
            .filter_map(|s| {
                let ip = s
                    .status
                    .as_ref()?
                    .last_allocated_ip
                    .as_ref()?
                    .parse()
                    .ok()?;
                Some((s.metadata.name.clone()?, ip))
            })
            .collect();
        let ipam = ipam_from(&networks, &subnets, &instances, cursors)?;
        Ok((ipam, subnets, instances))
    }

    fn instances(&self, namespace: &str) -> Api<IPInstance> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Allocates for a pod, retrying when another writer took a chosen address.
    pub async fn allocate(&self, req: &Request) -> Result<Vec<IPInstance>> {
        let _turn = self.allocating.lock().await;
        for _ in 0..ATTEMPTS {
            let (mut ipam, subnets, existing) = self.load().await?;
            let allocations = ipam.allocate(req)?;
            let mut done: Vec<IPInstance> = Vec::new();
            let mut created: Vec<(String, String)> = Vec::new();
            let mut lost_race = false;
            for a in &allocations {
                let instance = instance_in(&subnets, a, req)?;
                let name = instance_name(&a.ip);
                let api = self.instances(&a.pod.namespace);
                let was_retained = existing.iter().any(|i| {
                    i.metadata.name.as_deref() == Some(name.as_str())
                        && i.metadata.namespace.as_deref() == Some(a.pod.namespace.as_str())
                });
                if was_retained {
                    // A StatefulSet pod coming back: re-bind the kept instance.
                    let patch = serde_json::json!({"spec": {"binding": instance.spec.binding}});
                    let updated = api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .map_err(kube_err(format!("re-binding IPInstance {name}")))?;
                    self.set_phase(&api, &name, &a.binding).await?;
                    done.push(updated);
                    continue;
                }
                match api.create(&PostParams::default(), &instance).await {
                    Ok(obj) => {
                        created.push((a.pod.namespace.clone(), name.clone()));
                        self.set_phase(&api, &name, &a.binding).await?;
                        done.push(obj);
                    }
                    Err(e) if is_conflict(&e) => {
                        lost_race = true;
                        break;
                    }
                    Err(e) => return Err(kube_err(format!("creating IPInstance {name}"))(e)),
                }
            }
            if lost_race {
                // All or nothing: undo this attempt's creations, then re-read.
                for (ns, name) in created {
                    match self
                        .instances(&ns)
                        .delete(&name, &DeleteParams::default())
                        .await
                    {
                        Ok(_) => {}
                        Err(e) if is_not_found(&e) => {}
                        Err(e) => {
                            return Err(kube_err(format!("rolling back IPInstance {name}"))(e));
                        }
                    }
                }
                continue;
            }
            self.write_status(
                &ipam,
                &allocations
                    .iter()
                    .map(|a| a.subnet.clone())
                    .collect::<Vec<_>>(),
            )
            .await?;
            return Ok(done);
        }
        Err(StoreError::TooManyConflicts(ATTEMPTS))
    }

    async fn set_phase(&self, api: &Api<IPInstance>, name: &str, binding: &Binding) -> Result<()> {
        let status = serde_json::json!({
            "apiVersion": "networking.alibaba.com/v1",
            "kind": "IPInstance",
            "status": IPInstanceStatus { phase: Some(phase(binding).into()) },
        });
        api.patch_status(
            name,
            &PatchParams::apply(&self.field_manager).force(),
            &Patch::Apply(&status),
        )
        .await
        .map_err(kube_err(format!("status of IPInstance {name}")))?;
        Ok(())
    }

    /// Releases a pod's addresses: deleted, or kept (Retained) for a StatefulSet pod.
    pub async fn release(&self, pod: &PodKey) -> Result<Vec<IpAddr>> {
        let (mut ipam, _, _) = self.load().await?;
        let held: Vec<_> = ipam.of_pod(pod).into_iter().cloned().collect();
        let freed = ipam.release(pod);
        let api = self.instances(&pod.namespace);
        for a in &held {
            let name = instance_name(&a.ip);
            if freed.contains(&a.ip) {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(kube_err(format!("deleting IPInstance {name}"))(e)),
                }
            } else {
                let patch = serde_json::json!({"spec": {"binding": {"nodeName": null}}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(kube_err(format!("retaining IPInstance {name}")))?;
                self.set_phase(&api, &name, &Binding::Retained).await?;
            }
        }
        let subnets: Vec<String> = held.iter().map(|a| a.subnet.clone()).collect();
        self.write_status(&ipam, &subnets).await?;
        Ok(freed)
    }

    /// Subnet status through server-side apply: counts and the round-robin cursor.
    async fn write_status(&self, ipam: &Ipam, subnets: &[String]) -> Result<()> {
        let api = Api::<Subnet>::all(self.client.clone());
        let mut seen = std::collections::HashSet::new();
        for name in subnets.iter().filter(|n| seen.insert(n.as_str())) {
            let Some(status) = subnet_status(ipam, name) else {
                continue;
            };
            let body = serde_json::json!({
                "apiVersion": "networking.alibaba.com/v1",
                "kind": "Subnet",
                "status": status,
            });
            api.patch_status(
                name,
                &PatchParams::apply(&self.field_manager).force(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(kube_err(format!("status of Subnet {name}")))?;
        }
        Ok(())
    }
}
