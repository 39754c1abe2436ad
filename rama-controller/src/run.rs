//! Wiring: the caches, the three loops, leader election around them.
use std::{sync::Arc, time::Duration};

use futures::{FutureExt, Stream, StreamExt, future::BoxFuture, future::Shared};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::{
    Api, Client, Resource,
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use log::{debug, info, warn};
use rama_api::{IPInstance, Network, Subnet};
use rama_store::kube_store::KubeStore;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::{
    Error, Result, Settings,
    leader::{Elector, LeaseSettings},
    pods, status,
};

type Stop = Shared<BoxFuture<'static, ()>>;

fn stop_future(rx: &watch::Receiver<bool>) -> Stop {
    let mut rx = rx.clone();
    async move {
        let _ = rx.wait_for(|stop| *stop).await;
    }
    .boxed()
    .shared()
}

/// A cache of every `K`, kept until `stop`.
fn reflect<K>(api: Api<K>, stop: Stop) -> (Store<K>, BoxFuture<'static, ()>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let task = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .take_until(stop)
    .for_each(|event| async move {
        if let Err(e) = event {
            warn!("watching {}: {e}", K::kind(&()));
        }
    })
    .boxed();
    (reader, task)
}

fn ticks(period: Duration) -> impl Stream<Item = ()> + Send + 'static {
    futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}

/// What a controller's stream yields per reconcile.
type Reconciled<K, E> =
    std::result::Result<(ObjectRef<K>, Action), controller::Error<E, watcher::Error>>;

/// Logs what the loop's stream reports, but the reconciler's own failures (the error
/// policy logged those already).
fn log_result<K: Resource, E: std::fmt::Display>(
    loop_name: &'static str,
) -> impl FnMut(Reconciled<K, E>) -> futures::future::Ready<()> {
    move |r| {
        match r {
            Ok(_) | Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => warn!("{loop_name}: {e}"),
        }
        futures::future::ready(())
    }
}

/// The controller's loops (allocation, release, status) until `stop` turns true.
/// Runs only on the leader; [`run`] takes care of that.
pub async fn run_loops(client: Client, settings: &Settings, stop: watch::Receiver<bool>) {
    let stopped = stop_future(&stop);
    let (namespaces, namespaces_task) =
        reflect(Api::<Namespace>::all(client.clone()), stopped.clone());
    let (nodes, nodes_task) = reflect(Api::<Node>::all(client.clone()), stopped.clone());
    let (networks, networks_task) = reflect(Api::<Network>::all(client.clone()), stopped.clone());
    let (subnets, subnets_task) = reflect(Api::<Subnet>::all(client.clone()), stopped.clone());

    // Only scheduled pods ever hold addresses.
    let scheduled = watcher::Config::default().fields("spec.nodeName!=");
    let (pods_cache, pods_writer) = reflector::store::<Pod>();
    // The release loop's pod events come from this reflector, which updates its cache
    // before passing an event on: a deleted pod is gone from the cache by the time
    // its instances are reconciled.
    let pod_events = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), scheduled.clone()).default_backoff(),
    )
    .touched_objects();
    let release = Controller::new(
        Api::<IPInstance>::all(client.clone()),
        watcher::Config::default(),
    );
    let instances = release.store();
    let of_pod = instances.clone();
    let release = release.watches_stream(pod_events, move |pod: Pod| {
        let ns = pod.metadata.namespace.clone();
        let name = pod.metadata.name.clone();
        of_pod
            .state_filter(|i| i.metadata.namespace == ns && i.spec.binding.pod_name == name)
            .into_iter()
            .map(|i| ObjectRef::from_obj(&*i))
            .collect::<Vec<_>>()
    });

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: settings.field_manager.clone(),
            instance: Some(settings.identity.clone()),
        },
    );
    let pod_ctx = Arc::new(pods::Context {
        client: client.clone(),
        store: KubeStore::new(client.clone(), settings.field_manager.clone()),
        recorder,
        pods: pods_cache,
        instances: instances.clone(),
        namespaces,
        nodes: nodes.clone(),
        networks: networks.clone(),
        metrics: settings.metrics.clone(),
    });

    // A pod reconciled before the namespace, node and network caches have their first
    // full list would be judged without its namespace's annotations or its node's
    // networks (refused, retried seconds later): the loops that decide on pods start
    // once those caches are filled — or at shutdown, when there is nothing to decide.
    let caches_ready = {
        let (namespaces, nodes, networks, subnets) = (
            pod_ctx.namespaces.clone(),
            nodes.clone(),
            networks.clone(),
            subnets.clone(),
        );
        let stopped = stopped.clone();
        async move {
            let filled = async {
                let _ = namespaces.wait_until_ready().await;
                let _ = nodes.wait_until_ready().await;
                let _ = networks.wait_until_ready().await;
                let _ = subnets.wait_until_ready().await;
                debug!("caches filled: namespaces, nodes, networks, subnets");
            };
            tokio::select! {
                () = filled => {}
                () = stopped => {}
            }
        }
        .shared()
    };

    let allocation = Controller::new(Api::<Pod>::all(client.clone()), scheduled)
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .reconcile_all_on(ticks(settings.resync))
        .graceful_shutdown_on(stopped.clone())
        .run(pods::reconcile_pod, pods::retry, pod_ctx.clone())
        .for_each(log_result("allocation"));
    let allocation = caches_ready.clone().then(|()| allocation);
    let release = release
        .with_config(controller::Config::default().concurrency(settings.concurrency))
        .reconcile_all_on(ticks(settings.resync))
        .graceful_shutdown_on(stopped.clone())
        .run(pods::reconcile_instance, pods::retry, pod_ctx)
        .for_each(log_result("release"));
    let release = caches_ready.then(|()| release);

    let status = Controller::new(
        Api::<Network>::all(client.clone()),
        watcher::Config::default(),
    );
    let all_networks = status.store();
    let status_ctx = Arc::new(status::Context {
        client: client.clone(),
        field_manager: settings.field_manager.clone(),
        networks: status.store(),
        subnets,
        nodes,
        instances,
        metrics: settings.metrics.clone(),
    });
    let status = status
        .watches(
            Api::<Subnet>::all(client.clone()),
            watcher::Config::default(),
            |s: Subnet| Some(ObjectRef::new(&s.spec.network)),
        )
        .watches(
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            move |_: Node| {
                all_networks
                    .state()
                    .iter()
                    .map(|n| ObjectRef::from_obj(&**n))
                    .collect::<Vec<_>>()
            },
        )
        .reconcile_all_on(ticks(settings.resync))
        .graceful_shutdown_on(stopped.clone())
        .run(status::reconcile_network, status_retry, status_ctx)
        .for_each(log_result("status"));

    // Each loop says when it has stopped: a shutdown that hangs names the culprit.
    let done = |name: &'static str| {
        move |()| {
            debug!("{name} stopped");
            futures::future::ready(())
        }
    };
    futures::join!(
        allocation.then(done("allocation loop")),
        release.then(done("release loop")),
        status.then(done("status loop")),
        namespaces_task.then(done("namespace reflector")),
        nodes_task.then(done("node reflector")),
        networks_task.then(done("network reflector")),
        subnets_task.then(done("subnet reflector"))
    );
}

fn status_retry(network: Arc<Network>, err: &Error, ctx: Arc<status::Context>) -> Action {
    ctx.metrics.reconcile_failed("status", err);
    warn!(
        "status of Network {}: {err}; retrying in 5 s",
        network.metadata.name.as_deref().unwrap_or("")
    );
    Action::requeue(Duration::from_secs(5))
}

/// The controller: waits to be leader (when `lease` is given), runs the loops while it
/// is, and stops them when `shutdown` completes — then gives the Lease up so another
/// replica takes over at once. Returns an error when leadership is lost (the process
/// should exit and start over, as client-go controllers do).
pub async fn run(
    client: Client,
    settings: Settings,
    lease: Option<LeaseSettings>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    let mut elector = lease.map(|l| Elector::new(client.clone(), l));
    if let Some(elector) = elector.as_mut() {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = elector.acquire() => r?,
        }
        info!("{} is the leader", settings.identity);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    settings.metrics.leader.set(1);
    let loops = run_loops(client, &settings, stop_rx);
    tokio::pin!(loops);
    let hold = async {
        match elector.as_mut() {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    let lost = tokio::select! {
        _ = &mut loops => None,
        _ = &mut shutdown => None,
        lost = hold => Some(lost),
    };
    let _ = stop_tx.send(true);
    loops.await;
    settings.metrics.leader.set(0);
    settings.metrics.clear_subnets();
    if let Some(lost) = lost {
        return Err(lost);
    }
    if let Some(elector) = elector.as_mut()
        && let Err(e) = elector.release().await
    {
        warn!("giving the Lease up: {e}");
    }
    Ok(())
}
