//! The node agent daemon.
//!
//! One **sync loop** owns the convergence: it reads the cluster (a checked
//! [`Snapshot`]), this node's attachments and the interfaces that exist, computes the
//! desired node state ([`desired::node_state`]) and hands it to the datapath backend.
//! It runs at start, whenever the cluster changes, when the CNI handlers ask (and
//! wait for it), when links or uplink addresses change (netlink events), and every
//! `resync` period. It is level-triggered: every run converges from whatever the
//! kernel looks like, and a failed run is simply retried by the next.
//!
//! A cluster state that fails the validation rules (a malformed or invalid file in
//! the standalone directory) is not applied: the loop keeps serving the last good
//! one, logs what is wrong with which file, and reports it in the status (STATUS,
//! `/readyz`), deleting nothing.
//!
//! The **CNI API** ([`cni`]) runs the verbs; the loop and the handlers share the
//! backend behind a lock.
pub mod cni;
pub mod http;
mod links;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rama_api::{NodeInfo, NodeInfoSpec, UplinkInfo, VtepInfo};
use serde::Serialize;
use tokio::sync::{Mutex, Notify, RwLock, watch};

use crate::{
    Error, Result,
    cluster::{Snapshot, Source},
    dataplane::{Backend, Dataplane, DataplaneConfig, ModeStatus},
    desired::{self, ThisNode},
    endpoints::{EndpointStore, Phase},
    metrics::Metrics,
    net::Netlink,
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_name: String,
    pub uplink: String,
    /// The VTEP address; default: the uplink's first global IPv4 address (else IPv6).
    pub vtep_ip: Option<IpAddr>,
    /// Labels of this node (standalone: what Underlay networks' nodeSelectors match).
    pub node_labels: BTreeMap<String, String>,
    /// Attachment records live in `<data_dir>/endpoints`.
    pub data_dir: PathBuf,
    /// DELs the plugin queued while the agent was down.
    pub queue_dir: PathBuf,
    pub socket: PathBuf,
    pub dataplane: DataplaneConfig,
    pub resync: Duration,
    /// Kubernetes: how long ADD waits for the controller's allocation.
    pub allocation_timeout: Duration,
}

/// What the agent reports about itself (STATUS, `/readyz`, the log).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The first sync has succeeded.
    pub synced: bool,
    pub last_sync_error: Option<String>,
    /// The cluster state is refused; the last good one is served.
    pub cluster_error: Option<String>,
    pub endpoints: usize,
    pub remote_endpoints: usize,
    pub subnets: usize,
    pub notes: Vec<String>,
    pub syncs: u64,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.synced && self.last_sync_error.is_none() && self.cluster_error.is_none()
    }

    /// Why not ready, or what is degraded.
    pub fn detail(&self) -> Option<String> {
        if !self.synced {
            return Some(match &self.last_sync_error {
                Some(e) => format!("not synced yet: {e}"),
                None => "not synced yet".into(),
            });
        }
        match (&self.cluster_error, &self.last_sync_error) {
            (Some(c), _) => Some(format!("serving the last good cluster state: {c}")),
            (None, Some(e)) => Some(format!("the last sync failed: {e}")),
            (None, None) => None,
        }
    }
}

/// One lock per pod (namespace, name), created on first use.
type PodLocks = HashMap<(String, String), Arc<Mutex<()>>>;

/// The result of one sync, with the request generation it covers.
#[derive(Clone, Debug)]
struct Applied {
    generation: u64,
    result: std::result::Result<(), String>,
}

pub struct Agent {
    config: AgentConfig,
    node: ThisNode,
    source: Source,
    endpoints: EndpointStore,
    backend: Mutex<Backend>,
    mode: ModeStatus,
    status: std::sync::Mutex<Status>,
    requested: AtomicU64,
    wake: Notify,
    applied: watch::Sender<Applied>,
    /// GC takes it exclusively; ADD and DEL share it.
    gc_lock: RwLock<()>,
    pod_locks: std::sync::Mutex<PodLocks>,
    nl: Netlink,
    last_good: std::sync::Mutex<Option<Snapshot>>,
    metrics: Metrics,
}

/// Resolves once `stop` turns true (or its sender is gone).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, not held across the caller's awaits.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// The uplink's address to use as VTEP: the first global IPv4, else global IPv6.
fn pick_vtep(addrs: &[ipnet::IpNet]) -> Option<IpAddr> {
    let global = |ip: &IpAddr| match ip {
        IpAddr::V4(a) => !a.is_link_local() && !a.is_loopback(),
        IpAddr::V6(a) => !a.is_unicast_link_local() && !a.is_loopback(),
    };
    let ips: Vec<IpAddr> = addrs.iter().map(|n| n.addr()).filter(global).collect();
    ips.iter().find(|ip| ip.is_ipv4()).or(ips.first()).copied()
}

impl Agent {
    /// Connects to the kernel and the cluster and builds the backend; nothing is
    /// changed yet.
    pub async fn new(config: AgentConfig, source: Source) -> Result<Arc<Self>> {
        let nl = Netlink::connect()?;
        let uplink = nl
            .link(&config.uplink)
            .await?
            .ok_or_else(|| Error::UplinkNotFound(config.uplink.clone()))?;
        let vtep_ip = match config.vtep_ip {
            Some(ip) => ip,
            None => pick_vtep(&nl.addresses(uplink.index).await?).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "uplink {} has no global address to use as VTEP; give --vtep-ip",
                    uplink.name
                ))
            })?,
        };
        let node = ThisNode {
            name: config.node_name.clone(),
            uplink: uplink.name.clone(),
            uplink_mac: uplink.mac,
            vtep_ip,
            vtep_mac: desired::vtep_mac_for(vtep_ip),
        };
        let (backend, mode) = Backend::new(&config.dataplane)?;
        log::info!(
            "node {} ({} mode): uplink {} {}, VTEP {} {}, datapath {}{}",
            node.name,
            source.mode(),
            node.uplink,
            node.uplink_mac,
            node.vtep_ip,
            node.vtep_mac,
            mode.active,
            mode.fallback_reason
                .as_deref()
                .map(|r| format!(" (fallback: {r})"))
                .unwrap_or_default()
        );
        let endpoints = EndpointStore::open(config.data_dir.join("endpoints"))?;
        let (applied, _) = watch::channel(Applied {
            generation: 0,
            result: Err("not synced yet".into()),
        });
        Ok(Arc::new(Self {
            config,
            node,
            source,
            endpoints,
            backend: Mutex::new(backend),
            mode,
            status: std::sync::Mutex::new(Status::default()),
            requested: AtomicU64::new(0),
            wake: Notify::new(),
            applied,
            gc_lock: RwLock::new(()),
            pod_locks: std::sync::Mutex::new(HashMap::new()),
            nl,
            last_good: std::sync::Mutex::new(None),
            metrics: Metrics::new()?,
        }))
    }

    pub fn mode(&self) -> &ModeStatus {
        &self.mode
    }

    pub fn node(&self) -> &ThisNode {
        &self.node
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn status(&self) -> Status {
        self.status.lock().expect("status lock").clone()
    }

    /// This node's NodeInfo.
    fn node_info(&self) -> NodeInfo {
        let mut info = NodeInfo::new(
            &self.node.name,
            NodeInfoSpec {
                vtep_info: Some(VtepInfo {
                    ip: self.node.vtep_ip.to_string(),
                    mac: self.node.vtep_mac.to_string(),
                    local_ips: Vec::new(),
                }),
                uplink: Some(UplinkInfo {
                    name: self.node.uplink.clone(),
                    mac: self.node.uplink_mac.to_string(),
                }),
            },
        );
        if !self.config.node_labels.is_empty() {
            info.metadata.labels = Some(self.config.node_labels.clone());
        }
        info
    }

    /// Asks the loop for a sync that starts after this call and waits for it.
    pub async fn sync(&self) -> std::result::Result<(), String> {
        let generation = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut rx = self.applied.subscribe();
        self.wake.notify_one();
        let done = rx
            .wait_for(|a| a.generation >= generation)
            .await
            .map(|a| a.result.clone());
        done.unwrap_or_else(|_| Err("the agent is stopping".into()))
    }

    /// One convergence: cluster + attachments → node state → backend.
    async fn reconcile(&self) -> Result<()> {
        let checked = self.source.checked_snapshot().await;
        let snap = {
            let mut last = self.last_good.lock().expect("snapshot lock");
            let mut status = self.status.lock().expect("status lock");
            match checked {
                Ok(s) => {
                    if status.cluster_error.take().is_some() {
                        log::info!("cluster state accepted again");
                    }
                    *last = Some(s);
                }
                Err(e) => {
                    if status.cluster_error.as_deref() != Some(e.as_str()) {
                        log::error!(
                            "cluster state refused, serving the last good one (nothing is \
                             deleted): {e}"
                        );
                    }
                    status.cluster_error = Some(e);
                }
            }
            last.clone().unwrap_or_default()
        };
        let (records, bad) = self.endpoints.list()?;
        let records: Vec<_> = records.into_values().collect();
        let interfaces: HashSet<String> =
            self.nl.links().await?.into_iter().map(|l| l.name).collect();
        let (state, mut notes) = desired::node_state(&self.node, &snap, &records, &interfaces);
        notes.extend(
            bad.iter()
                .map(|e| format!("unreadable attachment record: {e}")),
        );
        let valid = state.validate()?;
        let report = self.backend.lock().await.apply(&valid).await?;
        notes.extend(report.notes.iter().cloned());
        let mut status = self.status.lock().expect("status lock");
        for n in notes.iter().filter(|n| !status.notes.contains(n)) {
            log::warn!("{n}");
        }
        status.notes = notes;
        status.endpoints = report.endpoints;
        status.remote_endpoints = report.remote_endpoints;
        status.subnets = report.subnets;
        Ok(())
    }

    async fn sync_once(&self) {
        let generation = self.requested.load(Ordering::SeqCst);
        let started = Instant::now();
        let result = self.reconcile().await;
        self.metrics
            .sync_duration
            .with_label_values(&[] as &[&str])
            .observe(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            self.metrics
                .sync_errors
                .with_label_values(&[e.metric_label()])
                .inc();
        }
        let result = result.map_err(|e| e.to_string());
        {
            let mut status = self.status.lock().expect("status lock");
            status.syncs += 1;
            match &result {
                Ok(()) => {
                    if !status.synced {
                        log::info!(
                            "synced: {} endpoint(s), {} remote, {} subnet(s) in {:?}",
                            status.endpoints,
                            status.remote_endpoints,
                            status.subnets,
                            started.elapsed()
                        );
                    }
                    status.synced = true;
                    status.last_sync_error = None;
                }
                Err(e) => {
                    if status.last_sync_error.as_deref() != Some(e.as_str()) {
                        log::error!("sync failed: {e}");
                    }
                    status.last_sync_error = Some(e.clone());
                }
            }
        }
        self.applied.send_replace(Applied { generation, result });
    }

    /// Publishes the NodeInfo, logging (not failing) when it cannot.
    async fn publish(&self) {
        if let Err(e) = self.source.publish_node_info(&self.node_info()).await {
            log::warn!("publishing NodeInfo {}: {e}", self.node.name);
        }
    }

    /// The sync loop, until `stop` turns true.
    pub async fn run_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut mark = self.source.watermark();
        let mut link_events = links::watch(&self.node.uplink);
        let mut next_housekeeping = Instant::now() + self.config.resync;
        loop {
            self.sync_once().await;
            if Instant::now() >= next_housekeeping {
                next_housekeeping = Instant::now() + self.config.resync;
                self.publish().await;
                self.process_queue().await;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.source.changed(&mut mark) => {}
                _ = tokio::time::sleep_until(next_housekeeping.into()) => {}
                Some(why) = link_events.recv() => log::debug!("resync: {why}"),
                _ = stopped(&mut stop) => break,
            }
            // No delay here: requests that arrive while a sync runs are all served by
            // the next one (the generation counter), which batches a burst of ADDs.
        }
    }

    /// Undoes ADDs an earlier agent did not finish (pending records).
    pub async fn recover(&self) {
        let records = match self.endpoints.list() {
            Ok((r, bad)) => {
                for e in bad {
                    log::warn!("unreadable attachment record (left in place): {e}");
                }
                r
            }
            Err(e) => {
                log::error!("listing attachment records: {e}");
                return;
            }
        };
        for r in records.values().filter(|r| r.phase == Phase::Pending) {
            log::info!(
                "undoing the unfinished ADD of {}/{} (pod {}/{})",
                r.container_id,
                r.ifname,
                r.pod.namespace,
                r.pod.name
            );
            if let Err(e) = self.undo(r).await {
                log::error!("undoing {}/{}: {e}", r.container_id, r.ifname);
            }
        }
    }

    /// Starts everything and runs until `shutdown` completes: recovery, the first
    /// sync, NodeInfo, the queued DELs, the CNI socket, the loop. On shutdown the
    /// datapath stays as it is (pinned maps and links keep forwarding).
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        let listener = cni::listen(&self.config.socket)?;
        self.recover().await;
        self.publish().await;
        self.sync_once().await;
        self.process_queue().await;
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(cni::serve(self.clone(), listener, stop_rx.clone()));
        let sync_loop = tokio::spawn(self.clone().run_loop(stop_rx));
        shutdown.await;
        log::info!("stopping; the datapath stays in place");
        let _ = stop_tx.send(true);
        let _ = server.await;
        let _ = sync_loop.await;
        let _ = std::fs::remove_file(&self.config.socket);
        Ok(())
    }

    /// Serialises ADD and DEL of one pod.
    async fn lock_pod(&self, namespace: &str, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.pod_locks.lock().expect("pod locks");
            // Forget locks nobody holds, so the map does not grow with every pod ever.
            locks.retain(|_, l| Arc::strong_count(l) > 1);
            locks
                .entry((namespace.to_owned(), name.to_owned()))
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vtep_is_the_first_global_ipv4() {
        let nets: Vec<ipnet::IpNet> = ["fe80::1/64", "fd00::1/64", "10.0.0.1/24"]
            .iter()
            .map(|s| s.parse().expect("net"))
            .collect();
        assert_eq!(pick_vtep(&nets), Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(pick_vtep(&nets[..2]), Some("fd00::1".parse().expect("ip")));
        assert_eq!(pick_vtep(&nets[..1]), None);
    }

    #[test]
    fn status_says_why_it_is_not_ready() {
        let mut s = Status::default();
        assert!(!s.ready());
        assert_eq!(s.detail().as_deref(), Some("not synced yet"));
        s.synced = true;
        assert!(s.ready() && s.detail().is_none());
        s.cluster_error = Some("subnets/x.yaml: spec.range.cidr: bad".into());
        assert!(!s.ready());
        assert!(s.detail().expect("detail").contains("x.yaml"));
    }
}
