//! Network status, first Subnet status, and node labels.
//!
//! Reconciled per Network, on changes to it, its Subnets and any Node, and on every
//! resync (the address counts move with every allocation):
//!
//! - Subnets that have no status yet get their counts (later ones are written by the
//!   store with every allocation, together with the round-robin cursor).
//! - Network status: the nodes on it (every node for Overlay, the selected ones for
//!   Underlay), its subnets, and the address counts per family.
//! - Nodes of an Underlay network carry [`UNDERLAY_NETWORK_LABEL`] = its name, so
//!   workloads (and the mutating webhook) can select them; the label goes away when
//!   the node leaves the network or the network is deleted.
use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        reflector::{ObjectRef, Store},
    },
};
use log::info;
use rama_api::{IPInstance, IpVersion, Network, NetworkStatus, NetworkType, Statistics, Subnet};
use rama_store::{api_int, ipam_from, subnet_status};

use crate::{Result, UNDERLAY_NETWORK_LABEL, kube_err, request::selects};

pub struct Context {
    pub client: Client,
    pub field_manager: String,
    pub networks: Store<Network>,
    pub subnets: Store<Subnet>,
    pub nodes: Store<Node>,
    pub instances: Store<IPInstance>,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

fn on_network(network: &Network, node: &Node) -> bool {
    match network.spec.network_type {
        NetworkType::Overlay => true,
        NetworkType::Underlay => {
            let empty = BTreeMap::new();
            selects(
                &network.spec.node_selector,
                node.metadata.labels.as_ref().unwrap_or(&empty),
            )
        }
    }
}

fn add(into: &mut Option<Statistics>, s: &rama_api::SubnetStatus) {
    let t = into.get_or_insert_with(Statistics::default);
    let sum = |a: u64, b: u64| api_int(u128::from(a) + u128::from(b));
    t.total = sum(t.total, s.total);
    t.used = sum(t.used, s.used);
    t.available = sum(t.available, s.available);
}

pub async fn reconcile_network(network: Arc<Network>, ctx: Arc<Context>) -> Result<Action> {
    let name = network.name_any();
    let mut subnets: Vec<Subnet> = ctx
        .subnets
        .state()
        .iter()
        .filter(|s| s.spec.network == name)
        .map(|s| (**s).clone())
        .collect();
    subnets.sort_by_key(|s| s.name_any());

    let subnet_api = Api::<Subnet>::all(ctx.client.clone());
    let apply = PatchParams::apply(&ctx.field_manager).force();
    for subnet in subnets.iter_mut().filter(|s| s.status.is_none()) {
        let sname = subnet.name_any();
        let instances: Vec<IPInstance> = ctx
            .instances
            .state()
            .iter()
            .filter(|i| i.spec.subnet == sname)
            .map(|i| (**i).clone())
            .collect();
        // A subnet the IPAM refuses has no counts; the webhook names what is wrong.
        let Ok(ipam) = ipam_from(
            std::slice::from_ref(&network),
            std::slice::from_ref(subnet),
            &instances,
            Default::default(),
        ) else {
            continue;
        };
        let Some(status) = subnet_status(&ipam, &sname) else {
            continue;
        };
        let body = serde_json::json!({
            "apiVersion": "networking.alibaba.com/v1",
            "kind": "Subnet",
            "status": status,
        });
        subnet_api
            .patch_status(&sname, &apply, &Patch::Apply(&body))
            .await
            .map_err(kube_err(format!("status of Subnet {sname}")))?;
        subnet.status = Some(status);
    }

    let nodes = ctx.nodes.state();
    let mut node_list: Vec<String> = nodes
        .iter()
        .filter(|n| on_network(&network, n))
        .map(|n| n.name_any())
        .collect();
    node_list.sort();
    let mut status = NetworkStatus {
        node_list,
        subnet_list: subnets.iter().map(|s| s.name_any()).collect(),
        statistics: None,
        ipv6_statistics: None,
    };
    for s in &subnets {
        let Some(st) = &s.status else { continue };
        match s.spec.range.version {
            IpVersion::V4 => add(&mut status.statistics, st),
            IpVersion::V6 => add(&mut status.ipv6_statistics, st),
        }
    }
    if network.status.as_ref() != Some(&status) {
        let body = serde_json::json!({
            "apiVersion": "networking.alibaba.com/v1",
            "kind": "Network",
            "status": status,
        });
        Api::<Network>::all(ctx.client.clone())
            .patch_status(&name, &apply, &Patch::Apply(&body))
            .await
            .map_err(kube_err(format!("status of Network {name}")))?;
    }

    label_nodes(&ctx, &nodes).await?;
    // Every Subnet's counts, this Network's as just written.
    let cached = ctx.subnets.state();
    ctx.metrics.set_subnets(
        subnets.iter().chain(
            cached
                .iter()
                .map(|s| &**s)
                .filter(|s| s.spec.network != name),
        ),
    );
    Ok(Action::await_change())
}

/// Puts [`UNDERLAY_NETWORK_LABEL`] on the nodes of each Underlay network and takes it
/// off nodes whose network no longer selects them (or no longer exists). A node two
/// Underlay networks select keeps the label it has.
async fn label_nodes(ctx: &Context, nodes: &[Arc<Node>]) -> Result<()> {
    let networks = ctx.networks.state();
    let node_api = Api::<Node>::all(ctx.client.clone());
    for node in nodes {
        let current = node.labels().get(UNDERLAY_NETWORK_LABEL).cloned();
        let current_holds = current.as_deref().is_some_and(|c| {
            ctx.networks.get(&ObjectRef::new(c)).is_some_and(|n| {
                n.spec.network_type == NetworkType::Underlay && on_network(&n, node)
            })
        });
        if current_holds {
            continue;
        }
        let wanted = networks
            .iter()
            .filter(|n| n.spec.network_type == NetworkType::Underlay && on_network(n, node))
            .map(|n| n.name_any())
            .min();
        if wanted == current {
            continue;
        }
        let node_name = node.name_any();
        info!("node {node_name}: label {UNDERLAY_NETWORK_LABEL}={wanted:?} (was {current:?})");
        let patch = serde_json::json!({"metadata": {"labels": {UNDERLAY_NETWORK_LABEL: wanted}}});
        node_api
            .patch(&node_name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(kube_err(format!("labelling Node {node_name}")))?;
    }
    Ok(())
}
