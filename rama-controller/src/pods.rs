//! Addresses for pods.
//!
//! Two level-triggered loops share one [`Context`]:
//!
//! - **allocation**, keyed by Pod: a scheduled pod (not host-network, not finished)
//!   without an IPInstance bound to its node gets one per family through the
//!   [`KubeStore`] — which decides on fresh reads and lets the API server's name
//!   uniqueness settle races. Refusals (bad annotations, unknown network or subnet,
//!   a full subnet) become a Warning Event on the pod; nothing is allocated half-way.
//! - **release**, keyed by IPInstance and triggered by pod changes too: an instance
//!   whose pod is gone or finished is released — deleted, or kept (`Retained`) for a
//!   StatefulSet pod, which gets it back under the same name on any node.
//!
//! Caches only ever *start* an action; an address is freed or moved only after the
//! API server confirms (a fresh GET) that its pod is gone or elsewhere.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::DeleteParams,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        reflector::{ObjectRef, Store},
    },
};
use log::{info, warn};
use rama_api::{IPInstance, Network};
use rama_ipam::{IpamError, PodKey};
use rama_store::{StoreError, kube_store::KubeStore};

use crate::{Error, Result, kube_err, request};

/// How long a refused pod waits before it is tried again (the subnet may have room by
/// then); any change to the pod retries at once.
pub const RETRY_REFUSED: Duration = Duration::from_secs(30);

pub struct Context {
    pub client: Client,
    pub store: KubeStore,
    pub recorder: Recorder,
    /// Pods as the release loop sees them (updated before it is triggered).
    pub pods: Store<Pod>,
    pub instances: Store<IPInstance>,
    pub namespaces: Store<Namespace>,
    pub nodes: Store<Node>,
    pub networks: Store<Network>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The pod's node, once scheduled.
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// Succeeded or Failed: the kubelet has torn the sandbox (and its network) down.
pub fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn pod_key(pod: &Pod) -> PodKey {
    PodKey::new(pod.namespace().unwrap_or_default(), pod.name_any())
}

impl Context {
    /// The instances the cache says `pod` holds.
    fn instances_of(&self, pod: &PodKey) -> Vec<Arc<IPInstance>> {
        self.instances.state_filter(|i| {
            i.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                && i.spec.binding.pod_name.as_deref() == Some(pod.name.as_str())
        })
    }

    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Allocate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &pod.object_ref(&())).await {
            warn!("event {reason} on pod {}: {e}", pod_key(pod));
        }
    }

    async fn node(&self, name: &str) -> Result<Option<Node>> {
        if let Some(n) = self.nodes.get(&ObjectRef::new(name)) {
            return Ok(Some((*n).clone()));
        }
        Api::<Node>::all(self.client.clone())
            .get_opt(name)
            .await
            .map_err(kube_err(format!("reading Node {name}")))
    }
}

/// The allocation loop's reconciler.
pub async fn reconcile_pod(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action> {
    let Some(node) = node_of(&pod) else {
        return Ok(Action::await_change());
    };
    if host_network(&pod) {
        return Ok(Action::await_change());
    }
    let key = pod_key(&pod);
    let held = ctx.instances_of(&key);
    if finished(&pod) {
        if held.iter().any(|i| i.spec.binding.node_name.is_some()) {
            let freed = ctx.store.release(&key).await?;
            info!("pod {key} finished: released {freed:?}");
        }
        return Ok(Action::await_change());
    }

    let elsewhere = held.iter().any(|i| {
        i.spec
            .binding
            .node_name
            .as_deref()
            .is_some_and(|n| n != node)
    });
    if elsewhere && moved_confirmed(&ctx, &key, node).await? {
        // Recreated on another node under the same name (a StatefulSet pod) before
        // the release loop saw the old one go: retain (or free) first, then allocate —
        // a retained address comes back to the pod on its new node.
        let freed = ctx.store.release(&key).await?;
        info!("pod {key} moved to {node}: released {freed:?} from its old node");
    } else if held
        .iter()
        .any(|i| i.spec.binding.node_name.as_deref() == Some(node))
    {
        remove_duplicates(&ctx, &held).await?;
        return Ok(Action::await_change());
    }

    let Some(node_obj) = ctx.node(node).await? else {
        ctx.event(
            &pod,
            EventType::Warning,
            "NodeUnknown",
            format!("node {node:?} does not exist; cannot tell which Networks it is on"),
        )
        .await;
        return Ok(Action::requeue(RETRY_REFUSED));
    };
    let namespace = ctx.namespaces.get(&ObjectRef::new(&key.namespace));
    let networks: Vec<Network> = ctx.networks.state().iter().map(|n| (**n).clone()).collect();
    let req = match request::pod_request(
        &pod,
        namespace.as_deref(),
        request::networks_of_node(&networks, &node_obj),
    ) {
        Ok(req) => req,
        Err(e) => {
            ctx.event(&pod, EventType::Warning, "InvalidAnnotation", e.to_string())
                .await;
            return Ok(Action::await_change());
        }
    };
    let started = std::time::Instant::now();
    let allocated = ctx.store.allocate(&req).await;
    let result = match &allocated {
        Ok(_) => "ok",
        Err(StoreError::Ipam(IpamError::Exhausted { .. })) => "exhausted",
        Err(StoreError::Ipam(IpamError::AlreadyAllocated(_))) => "already_allocated",
        Err(StoreError::Ipam(_) | StoreError::Invalid { .. }) => "refused",
        Err(_) => "error",
    };
    ctx.metrics
        .allocation_duration
        .with_label_values(&[if req.retain { "stateful" } else { "normal" }, result])
        .observe(started.elapsed().as_secs_f64());
    match allocated {
        Ok(instances) => {
            let ips: Vec<String> = instances
                .iter()
                .map(|i| format!("{} (subnet {})", i.spec.address.ip, i.spec.subnet))
                .collect();
            info!("pod {key} on {node}: allocated {}", ips.join(", "));
            ctx.event(&pod, EventType::Normal, "IPAllocated", ips.join(", "))
                .await;
            Ok(Action::await_change())
        }
        // The instance cache lags behind an allocation already made.
        Err(StoreError::Ipam(IpamError::AlreadyAllocated(_))) => Ok(Action::await_change()),
        Err(e @ (StoreError::Ipam(_) | StoreError::Invalid { .. })) => {
            warn!("pod {key}: {e}");
            ctx.event(&pod, EventType::Warning, "AllocationFailed", e.to_string())
                .await;
            Ok(Action::requeue(RETRY_REFUSED))
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether the API server (not the cache) has an instance of `pod` bound elsewhere.
async fn moved_confirmed(ctx: &Context, pod: &PodKey, node: &str) -> Result<bool> {
    let api = Api::<IPInstance>::namespaced(ctx.client.clone(), &pod.namespace);
    for cached in ctx.instances_of(pod) {
        let name = cached.name_any();
        let live = api
            .get_opt(&name)
            .await
            .map_err(kube_err(format!("reading IPInstance {name}")))?;
        if let Some(live) = live
            && live.spec.binding.pod_name.as_deref() == Some(pod.name.as_str())
            && live
                .spec
                .binding
                .node_name
                .as_deref()
                .is_some_and(|n| n != node)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One address per family per pod. Two controllers that were both active (no leader
/// election, or a partition) can each bind a different address to one pod; every
/// replica keeps the same one — the oldest, then the lowest name — and deletes the
/// rest.
async fn remove_duplicates(ctx: &Context, held: &[Arc<IPInstance>]) -> Result<()> {
    let mut by_family: BTreeMap<String, Vec<&Arc<IPInstance>>> = BTreeMap::new();
    for i in held.iter().filter(|i| i.spec.binding.node_name.is_some()) {
        let family = serde_json::to_string(&i.spec.address.version).unwrap_or_default();
        by_family.entry(family).or_default().push(i);
    }
    for mut group in by_family.into_values().filter(|g| g.len() > 1) {
        group.sort_by_key(|i| (i.metadata.creation_timestamp.clone(), i.name_any()));
        for extra in &group[1..] {
            let name = extra.name_any();
            let ns = extra.namespace().unwrap_or_default();
            warn!(
                "pod {ns}/{} holds {} addresses of one family: deleting IPInstance {name}",
                extra.spec.binding.pod_name.as_deref().unwrap_or(""),
                group.len()
            );
            match Api::<IPInstance>::namespaced(ctx.client.clone(), &ns)
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_err(format!("deleting IPInstance {name}"))(e)),
            }
        }
    }
    Ok(())
}

/// The release loop's reconciler.
pub async fn reconcile_instance(instance: Arc<IPInstance>, ctx: Arc<Context>) -> Result<Action> {
    let b = &instance.spec.binding;
    let (Some(_), Some(pod_name), Some(ns)) = (
        b.node_name.as_deref(),
        b.pod_name.as_deref(),
        instance.metadata.namespace.as_deref(),
    ) else {
        // Retained, or not a pod's: nothing to release.
        return Ok(Action::await_change());
    };
    if ctx.pods.wait_until_ready().await.is_err() {
        return Err(Error::Stopped("the pod cache"));
    }
    let cached = ctx.pods.get(&ObjectRef::new(pod_name).within(ns));
    if cached.as_deref().is_some_and(|p| !finished(p)) {
        return Ok(Action::await_change());
    }
    // The cache says gone or finished; the API server decides.
    let live = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .get_opt(pod_name)
        .await
        .map_err(kube_err(format!("reading Pod {ns}/{pod_name}")))?;
    if live.as_ref().is_some_and(|p| !finished(p)) {
        return Ok(Action::await_change());
    }
    let key = PodKey::new(ns, pod_name);
    let freed = ctx.store.release(&key).await?;
    if freed.is_empty() {
        info!("pod {key} is gone: retained its addresses for its return");
    } else {
        info!("pod {key} is gone: released {freed:?}");
    }
    Ok(Action::await_change())
}

/// Both loops' error policy: log, try again soon.
pub fn retry<K: Resource<DynamicType = ()>>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    let loop_name = if K::kind(&()) == "Pod" {
        "allocation"
    } else {
        "release"
    };
    ctx.metrics.reconcile_failed(loop_name, err);
    warn!(
        "{} {}: {err}; retrying in 5 s",
        K::kind(&()),
        obj.meta().name.as_deref().unwrap_or("")
    );
    Action::requeue(Duration::from_secs(5))
}
