//! The CNI API: a unix socket only root can use (the socket is 0600 in a 0700
//! directory, and the peer's credentials are checked too), one request per
//! connection ([`rama_cni::api`]).
//!
//! | verb | what the agent does |
//! |---|---|
//! | ADD | record (pending) → veth pair, its host side readied in the datapath (eBPF: the pod program attached) while the addresses come (standalone: allocate; Kubernetes: wait for the controller's IPInstances) → addresses in the pod → record (ready) → sync → pod interface up with its routes → check |
//! | DEL | veth, addresses (if allocated here), record; idempotent |
//! | CHECK | record, veth, pod side (MAC, addresses), datapath entry |
//! | STATUS | ready unless unsynced or serving a refused cluster state |
//! | GC | every attachment of the network not in the valid list, stray veths, and (standalone) addresses of pods with no attachment here |
//!
//! A failed ADD undoes everything it did, so nothing is left half-way.
use std::{
    collections::HashSet,
    net::IpAddr,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::Path,
    sync::Arc,
    time::Duration,
};

use ipnet::IpNet;
use rama_api::IPInstance;
use rama_cni::api::{
    API_VERSION, ApiError, AttachResult, Attachment, AttachmentKey, Call, Expected, Interface,
    IpConfig, IpFamily, NetworkKind, PodRef, Reply, Request, Response, Route, StatusReply,
};
use rama_ipam::{IpFamilies, IpamError, NetworkType, PodKey};
use rama_store::StoreError;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
    sync::watch,
};

use super::{Agent, stopped};
use crate::{
    Error, Result,
    cluster::Source,
    dataplane::{
        Dataplane,
        host::{gateway_v4, gateway_v6},
    },
    desired::instance_ip,
    endpoints::{EndpointRecord, Phase},
    plumbing::{self, PodInterface},
    state::{LocalEndpoint, MacAddr},
};

/// Most a request may be.
const MAX_REQUEST: usize = 1 << 20;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// VXLAN over IPv4 adds 50 bytes (outer Ethernet 14, IPv4 20, UDP 8, VXLAN 8;
/// RFC 7348 §5), over IPv6 70.
const VXLAN_OVERHEAD_V4: u32 = 50;
const VXLAN_OVERHEAD_V6: u32 = 70;
/// A new veth's MTU until the pod's is known (set before the pod side comes up).
const UNCONFIGURED_MTU: u32 = 1500;

/// Binds the socket: its directory 0700, the socket 0600, a stale one replaced.
pub fn listen(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing stale {}", path.display()), e)),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    Ok(listener)
}

/// Serves until `stop` turns true; requests in flight finish.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener, mut stop: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    tasks.spawn(async move { agent.handle_connection(stream).await });
                }
                Err(e) => {
                    log::warn!("CNI socket: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    while tasks.join_next().await.is_some() {}
}

fn api_error(e: &Error) -> ApiError {
    ApiError {
        code: e.cni_code(),
        msg: e.cni_msg().into(),
        details: e.to_string(),
    }
}

fn ip_families(f: Option<IpFamily>) -> IpFamilies {
    match f {
        None | Some(IpFamily::IPv4) => IpFamilies::V4,
        Some(IpFamily::IPv6) => IpFamilies::V6,
        Some(IpFamily::DualStack) => IpFamilies::DualStack,
    }
}

/// The pod an attachment belongs to: as the runtime names it, or (a bare runtime
/// such as cnitool) the container itself in namespace `default`.
fn pod_of(a: &Attachment) -> PodRef {
    a.pod.clone().unwrap_or_else(|| PodRef {
        namespace: "default".into(),
        name: a.container_id.clone(),
        uid: None,
    })
}

impl Agent {
    async fn handle_connection(self: Arc<Self>, mut stream: UnixStream) {
        // Defence in depth: the socket's mode already keeps others out.
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == 0 => {}
            Ok(cred) => {
                log::warn!("CNI socket: refused a caller with uid {}", cred.uid());
                let _ = self
                    .respond(
                        &mut stream,
                        Response::Error(ApiError {
                            code: rama_cni::code::AGENT_FAILURE,
                            msg: "permission denied".into(),
                            details: "only root may use the agent's CNI socket".into(),
                        }),
                    )
                    .await;
                return;
            }
            Err(e) => {
                log::warn!("CNI socket: peer credentials: {e}");
                return;
            }
        }
        let mut body = Vec::new();
        let read = tokio::time::timeout(READ_TIMEOUT, async {
            let mut chunk = [0u8; 8192];
            loop {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                body.extend_from_slice(&chunk[..n]);
                if body.contains(&b'\n') || body.len() > MAX_REQUEST {
                    return Ok(());
                }
            }
        })
        .await;
        let response = match read {
            Err(_) => return log::warn!("CNI socket: a client sent nothing for {READ_TIMEOUT:?}"),
            Ok(Err(e)) => return log::warn!("CNI socket: reading a request: {e}"),
            Ok(Ok(())) if body.len() > MAX_REQUEST => Response::Error(ApiError {
                code: rama_cni::code::DECODE,
                msg: "request too large".into(),
                details: format!("requests are at most {MAX_REQUEST} bytes"),
            }),
            Ok(Ok(())) => self.answer(&body).await,
        };
        if let Err(e) = self.respond(&mut stream, response).await {
            log::warn!("CNI socket: answering: {e}");
        }
    }

    async fn respond(&self, stream: &mut UnixStream, response: Response) -> std::io::Result<()> {
        let mut out = serde_json::to_vec(&response).map_err(std::io::Error::other)?;
        out.push(b'\n');
        stream.write_all(&out).await?;
        stream.shutdown().await
    }

    /// Decodes and runs one request.
    pub async fn answer(self: &Arc<Self>, body: &[u8]) -> Response {
        let request: Request = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                // Tell a plugin of another release apart from garbage.
                let version = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("apiVersion").and_then(|v| v.as_u64()));
                let details = match version {
                    Some(v) if v != u64::from(API_VERSION) => format!(
                        "the plugin speaks agent API v{v}, this agent v{API_VERSION}: install \
                         the rama-cni binary of this agent's release"
                    ),
                    _ => format!("the request is not an agent API v{API_VERSION} request: {e}"),
                };
                return Response::Error(ApiError {
                    code: rama_cni::code::DECODE,
                    msg: "undecodable request".into(),
                    details,
                });
            }
        };
        let verb = request.call.verb();
        let started = std::time::Instant::now();
        let result = self.call(request.call).await;
        self.metrics
            .cni_duration
            .with_label_values(&[verb])
            .observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        self.metrics
            .cni_requests
            .with_label_values(&[verb, outcome])
            .inc();
        match &result {
            Ok(_) => log::debug!("{verb}: done in {:?}", started.elapsed()),
            Err(e) => log::warn!("{verb}: {e}"),
        }
        match result {
            Ok(reply) => Response::Ok(reply),
            Err(e) => Response::Error(api_error(&e)),
        }
    }

    pub async fn call(self: &Arc<Self>, call: Call) -> Result<Reply> {
        match call {
            Call::Add { attachment } => self.add(&attachment).await.map(Reply::Attached),
            Call::Del { attachment } => self.del(&attachment).await.map(|()| Reply::Done),
            Call::Check {
                attachment,
                expected,
            } => self
                .check(&attachment, &expected)
                .await
                .map(|()| Reply::Done),
            Call::Status => {
                let s = self.status();
                Ok(Reply::Status(StatusReply {
                    ready: s.ready(),
                    datapath: self.mode.active.to_owned(),
                    detail: s.detail(),
                }))
            }
            Call::Gc { network, valid } => self.gc(&network, &valid).await.map(|()| Reply::Done),
        }
    }

    // ---- ADD -------------------------------------------------------------------

    async fn add(self: &Arc<Self>, a: &Attachment) -> Result<AttachResult> {
        let _shared = self.gc_lock.read().await;
        let pod = pod_of(a);
        let _pod = self.lock_pod(&pod.namespace, &pod.name).await;
        let netns = a
            .netns
            .clone()
            .ok_or_else(|| Error::InvalidRequest("ADD needs the pod's network namespace".into()))?;
        let key = a.key();
        if let Some(existing) = self.endpoints.get(&key)? {
            if let (Phase::Ready, Some(result)) = (existing.phase, &existing.result)
                && existing.netns.as_deref() == Some(netns.as_str())
                && self.nl.link(&existing.host_interface).await?.is_some()
            {
                // ADD again for the same container: the same answer, nothing new.
                return Ok(result.clone());
            }
            self.undo(&existing).await?;
        }
        // A pod recreated on this node under the same name (a StatefulSet pod, or a
        // sandbox restarted) retires its older attachment: the addresses stay the
        // pod's, the old interface goes.
        let (records, _) = self.endpoints.list()?;
        for old in records.values().filter(|r| {
            r.pod.namespace == pod.namespace
                && r.pod.name == pod.name
                && r.ifname == a.ifname
                && r.key() != key
        }) {
            log::info!(
                "pod {}/{}: container {} replaces {}",
                pod.namespace,
                pod.name,
                a.container_id,
                old.container_id
            );
            plumbing::delete(&self.nl, &old.host_interface).await?;
            self.endpoints.remove(&old.key())?;
        }
        let mut record = EndpointRecord {
            network: a.network.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            netns: Some(netns),
            pod,
            phase: Phase::Pending,
            host_interface: plumbing::host_interface_name(&a.container_id, &a.ifname),
            mtu: 0,
            ipv4: None,
            ipv6: None,
            allocated_here: false,
            pod_mac: None,
            result: None,
        };
        self.endpoints.put(&record)?;
        match self.add_steps(a, &mut record).await {
            Ok(result) => Ok(result),
            Err(e) => {
                if let Err(undo) = self.undo(&record).await {
                    log::error!(
                        "undoing the failed ADD of {}/{}: {undo} (left pending; retried at \
                         the next start or GC)",
                        a.container_id,
                        a.ifname
                    );
                }
                // The sync that would have shown the endpoint must not linger either.
                let _ = tokio::time::timeout(Duration::from_secs(5), self.sync()).await;
                Err(e)
            }
        }
    }

    async fn add_steps(
        self: &Arc<Self>,
        a: &Attachment,
        record: &mut EndpointRecord,
    ) -> Result<AttachResult> {
        // The veth pair first, so that readying its host side in the datapath (eBPF:
        // the pod program's attach, which waits for an RCU grace period in the
        // kernel) runs while the addresses are allocated, not after. Until the sync
        // puts the pod in the maps, the program drops whatever the pod sends.
        let mut pod = PodInterface {
            netns: record.netns.clone().unwrap_or_default().into(),
            ifname: record.ifname.clone(),
            host_name: record.host_interface.clone(),
            mtu: UNCONFIGURED_MTU,
            ipv4: None,
            ipv6: None,
        };
        let host = plumbing::create_link(&self.nl, &pod).await?;
        // A task of its own: the attach blocks its thread for the whole wait.
        let prepare = {
            let (agent, name) = (Arc::clone(self), host.name.clone());
            tokio::spawn(async move { agent.backend.lock().await.prepare_interface(&name).await })
        };
        let addressed = self.address(a, record).await;
        let prepared = prepare.await.unwrap_or_else(|e| {
            Err(Error::io(
                format!("readying {}", host.name),
                std::io::Error::other(e),
            ))
        });
        let result = match (prepared, addressed) {
            (Ok(()), Ok(())) => {
                pod.mtu = record.mtu;
                pod.ipv4 = record.ipv4;
                pod.ipv6 = record.ipv6;
                self.configure_and_sync(record, host.clone(), &pod).await
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        // Now in the state (or failed and undone): the applies decide about it.
        self.backend.lock().await.forget_interface(&host.name);
        result
    }

    /// The pod's addresses and MTU into its record (written before anything uses
    /// them, so a crash from here on releases them at the next start).
    async fn address(&self, a: &Attachment, record: &mut EndpointRecord) -> Result<()> {
        let instances = self.addresses_for(a, record).await?;
        for i in &instances {
            match instance_ip(i) {
                Some(IpAddr::V4(v4)) => record.ipv4 = Some(v4),
                Some(IpAddr::V6(v6)) => record.ipv6 = Some(v6),
                None => {
                    return Err(Error::InvalidRequest(format!(
                        "IPInstance {:?} has no usable address ({:?})",
                        i.metadata.name, i.spec.address.ip
                    )));
                }
            }
        }
        record.mtu = self.mtu_for(&instances).await?;
        self.endpoints.put(record)
    }

    /// Addresses in the pod, the record ready, the sync that programs the pod, then
    /// the pod's interface up with its routes, and the check.
    async fn configure_and_sync(
        &self,
        record: &mut EndpointRecord,
        host: crate::net::Link,
        pod: &PodInterface,
    ) -> Result<AttachResult> {
        let plumbed = plumbing::configure(&self.nl, host, pod).await?;
        record.pod_mac = Some(plumbed.pod_mac);
        let result = attach_result(record, plumbed.host.mac, plumbed.pod_mac);
        record.result = Some(result.clone());
        record.phase = Phase::Ready;
        self.endpoints.put(record)?;

        self.sync().await.map_err(Error::Sync)?;
        plumbing::start(pod).await?;
        let endpoint = local_endpoint(record, plumbed.pod_mac);
        self.backend.lock().await.check_endpoint(&endpoint).await?;
        Ok(result)
    }

    /// The attachment's addresses: allocated here (standalone) or by the controller.
    async fn addresses_for(
        &self,
        a: &Attachment,
        record: &mut EndpointRecord,
    ) -> Result<Vec<IPInstance>> {
        let pod = &record.pod;
        match &self.source {
            Source::Standalone(s) => {
                let key = PodKey::new(&pod.namespace, &pod.name);
                let req = self.standalone_request(a, &key)?;
                // Recorded before the store is touched: an agent that dies from here
                // on releases on restart what it may have allocated.
                record.allocated_here = true;
                self.endpoints.put(record)?;
                match self.source.allocate(req).await {
                    Ok(instances) => Ok(instances),
                    Err(Error::Store(StoreError::Ipam(IpamError::AlreadyAllocated(_)))) => {
                        // The pod already holds addresses: its earlier attachment on
                        // this node, retired above. Elsewhere is another pod's.
                        let store = s.store().clone();
                        let all = tokio::task::spawn_blocking(move || store.ip_instances())
                            .await
                            .map_err(|e| {
                                Error::io("reading IPInstances", std::io::Error::other(e))
                            })??;
                        let (here, elsewhere): (Vec<_>, Vec<_>) = all
                            .into_iter()
                            .filter(|i| {
                                i.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                                    && i.spec.binding.pod_name.as_deref() == Some(pod.name.as_str())
                                    && i.spec.binding.node_name.is_some()
                            })
                            .partition(|i| {
                                i.spec.binding.node_name.as_deref() == Some(self.node.name.as_str())
                            });
                        if let Some(other) = elsewhere.first() {
                            record.allocated_here = false;
                            return Err(Error::InvalidRequest(format!(
                                "pod {}/{} already holds {} on node {}: DEL it there first",
                                pod.namespace,
                                pod.name,
                                other.spec.address.ip,
                                other.spec.binding.node_name.as_deref().unwrap_or("")
                            )));
                        }
                        Ok(here)
                    }
                    Err(e) => {
                        record.allocated_here = false;
                        Err(e)
                    }
                }
            }
            Source::Kube(k) => {
                if !a.selection.is_empty() {
                    return Err(Error::InvalidRequest(
                        "RAMA_* CNI_ARGS choose networks in standalone mode; in Kubernetes \
                         the pod's networking.alibaba.com/* annotations do"
                            .into(),
                    ));
                }
                let want = k.families_of(pod).await?;
                k.wait_for_instances(pod, &self.node.name, want, self.config.allocation_timeout)
                    .await
            }
        }
    }

    /// The IPAM request of a standalone pod, from its CNI_ARGS selection.
    fn standalone_request(&self, a: &Attachment, pod: &PodKey) -> Result<rama_ipam::Request> {
        let Source::Standalone(s) = &self.source else {
            return Err(Error::InvalidRequest("not in standalone mode".into()));
        };
        let networks = s.store().networks()?;
        let node_networks = networks
            .iter()
            .filter(|n| match n.spec.network_type {
                rama_api::NetworkType::Overlay => true,
                rama_api::NetworkType::Underlay => n
                    .spec
                    .node_selector
                    .iter()
                    .all(|(k, v)| self.config.node_labels.get(k) == Some(v)),
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        let sel = &a.selection;
        Ok(rama_ipam::Request {
            pod: Some(pod.clone()),
            node: self.node.name.clone(),
            node_networks,
            network_type: sel.network_type.map(|t| match t {
                NetworkKind::Underlay => NetworkType::Underlay,
                NetworkKind::Overlay => NetworkType::Overlay,
            }),
            network: sel.network.clone(),
            subnets: sel.subnets.clone(),
            families: match (sel.ip_family, sel.ips.as_slice()) {
                // Addresses alone say the families.
                (None, [a, b]) if a.is_ipv4() != b.is_ipv4() => IpFamilies::DualStack,
                (None, [a]) if a.is_ipv6() => IpFamilies::V6,
                (f, _) => ip_families(f),
            },
            ips: sel.ips.clone(),
            retain: false,
            pool: None,
        })
    }

    /// Overlay pods get the uplink's MTU less the VXLAN overhead; underlay pods the
    /// uplink's (read without RTNL: this runs while the pod program is attached).
    async fn mtu_for(&self, instances: &[IPInstance]) -> Result<u32> {
        let uplink_mtu = crate::net::link_mtu(&self.node.uplink).map_err(|e| match e {
            Error::InterfaceNotFound(name) => Error::UplinkNotFound(name),
            other => other,
        })?;
        let snapshot = self.last_good.lock().expect("snapshot lock").clone();
        let overlay = instances.iter().any(|i| {
            snapshot.as_ref().is_some_and(|s| {
                s.networks.iter().any(|n| {
                    n.metadata.name.as_deref() == Some(i.spec.network.as_str())
                        && n.spec.network_type == rama_api::NetworkType::Overlay
                })
            })
        }) || self.overlay_in_store(instances)?;
        let overhead = if self.node.vtep_ip.is_ipv4() {
            VXLAN_OVERHEAD_V4
        } else {
            VXLAN_OVERHEAD_V6
        };
        Ok(if overlay {
            uplink_mtu.saturating_sub(overhead)
        } else {
            uplink_mtu
        })
    }

    /// Whether an instance's Network is an overlay, from the store (a Network just
    /// created may not be in the last snapshot yet).
    fn overlay_in_store(&self, instances: &[IPInstance]) -> Result<bool> {
        let Source::Standalone(s) = &self.source else {
            return Ok(false);
        };
        let networks = s.store().networks()?;
        Ok(instances.iter().any(|i| {
            networks.iter().any(|n| {
                n.metadata.name.as_deref() == Some(i.spec.network.as_str())
                    && n.spec.network_type == rama_api::NetworkType::Overlay
            })
        }))
    }

    /// Removes what a record names: interface, addresses (when allocated here and no
    /// other attachment of the pod holds them), the record. Each step tolerates
    /// "already gone".
    pub(super) async fn undo(&self, r: &EndpointRecord) -> Result<()> {
        plumbing::delete(&self.nl, &r.host_interface).await?;
        if r.allocated_here {
            let (records, _) = self.endpoints.list()?;
            let shared = records.values().any(|o| {
                o.key() != r.key() && o.pod.namespace == r.pod.namespace && o.pod.name == r.pod.name
            });
            if !shared {
                self.source
                    .release(PodKey::new(&r.pod.namespace, &r.pod.name))
                    .await?;
            }
        }
        self.endpoints.remove(&r.key())
    }

    // ---- DEL -------------------------------------------------------------------

    async fn del(&self, a: &Attachment) -> Result<()> {
        let _shared = self.gc_lock.read().await;
        let key = a.key();
        let Some(record) = self.endpoints.get(&key)? else {
            return Ok(()); // never added, or deleted already
        };
        let _pod = self.lock_pod(&record.pod.namespace, &record.pod.name).await;
        self.undo(&record).await?;
        // The datapath forgets the endpoint with the next sync; wait a little for it,
        // but a slow or failing sync must not fail the DEL (the loop retries).
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), self.sync()).await {
            log::warn!(
                "DEL {}/{}: sync after removal failed: {e}",
                a.container_id,
                a.ifname
            );
        }
        Ok(())
    }

    // ---- CHECK -----------------------------------------------------------------

    async fn check(&self, a: &Attachment, expected: &Expected) -> Result<()> {
        let key = a.key();
        let record = match self.endpoints.get(&key)? {
            Some(r) if r.phase == Phase::Ready => r,
            _ => {
                return Err(Error::CheckFailed(format!(
                    "no attachment {}/{} on this node",
                    a.container_id, a.ifname
                )));
            }
        };
        let host = self.nl.link(&record.host_interface).await?.ok_or_else(|| {
            Error::CheckFailed(format!("interface {} is gone", record.host_interface))
        })?;
        let netns = a
            .netns
            .as_deref()
            .or(record.netns.as_deref())
            .unwrap_or_default();
        let pod_side = plumbing::inspect(Path::new(netns), &a.ifname)
            .await?
            .ok_or_else(|| {
                Error::CheckFailed(format!("{} has no interface {}", netns, a.ifname))
            })?;
        let pod_mac = record.pod_mac.unwrap_or_default();
        if pod_side.mac != pod_mac {
            return Err(Error::CheckFailed(format!(
                "{} has MAC {}, the ADD gave it {pod_mac}",
                a.ifname, pod_side.mac
            )));
        }
        if let Some(mac) = &expected.sandbox_mac
            && mac.parse::<MacAddr>().ok() != Some(pod_mac)
        {
            return Err(Error::CheckFailed(format!(
                "prevResult says {} has MAC {mac}, it has {pod_mac}",
                a.ifname
            )));
        }
        let ours: Vec<IpNet> = [
            record.ipv4.map(|a| IpNet::from(IpAddr::V4(a))),
            record.ipv6.map(|a| IpNet::from(IpAddr::V6(a))),
        ]
        .into_iter()
        .flatten()
        .collect();
        for want in expected.ips.iter().chain(&ours) {
            if !pod_side
                .addresses
                .iter()
                .any(|have| have.addr() == want.addr())
            {
                return Err(Error::CheckFailed(format!(
                    "{} in {netns} lacks {want}",
                    a.ifname
                )));
            }
        }
        if host.mtu != record.mtu || pod_side.mtu != record.mtu {
            return Err(Error::CheckFailed(format!(
                "MTU is {} (host) / {} (pod), the ADD set {}",
                host.mtu, pod_side.mtu, record.mtu
            )));
        }
        let endpoint = local_endpoint(&record, pod_mac);
        self.backend.lock().await.check_endpoint(&endpoint).await
    }

    // ---- GC --------------------------------------------------------------------

    async fn gc(&self, network: &str, valid: &[AttachmentKey]) -> Result<()> {
        let _exclusive = self.gc_lock.write().await;
        let valid: HashSet<&AttachmentKey> = valid.iter().collect();
        let (records, _) = self.endpoints.list()?;
        let mut errors = Vec::new();
        let mut removed = 0;
        for r in records
            .values()
            .filter(|r| r.network == network && !valid.contains(&r.key()))
        {
            match self.undo(r).await {
                Ok(()) => removed += 1,
                Err(e) => errors.push(e),
            }
        }
        // Host-side veths of attachments nobody has a record of (an ADD that died
        // before its first write).
        let (records, _) = self.endpoints.list()?;
        let ours: HashSet<&str> = records
            .values()
            .map(|r| r.host_interface.as_str())
            .collect();
        for link in self.nl.links().await? {
            let generated = link.name.len() == 15
                && link.name.starts_with("rama")
                && link.name[4..].chars().all(|c| c.is_ascii_hexdigit())
                && link.kind.as_deref() == Some("veth");
            if generated && !ours.contains(link.name.as_str()) {
                log::info!("GC: removing stray interface {}", link.name);
                if let Err(e) = self.nl.delete_link(link.index).await {
                    errors.push(e);
                }
            }
        }
        // Standalone: addresses bound to this node whose pod has no attachment here.
        if let Source::Standalone(s) = &self.source {
            let pods: HashSet<(&str, &str)> = records
                .values()
                .map(|r| (r.pod.namespace.as_str(), r.pod.name.as_str()))
                .collect();
            let store = s.store().clone();
            let instances = tokio::task::spawn_blocking(move || store.ip_instances())
                .await
                .map_err(|e| Error::io("reading IPInstances", std::io::Error::other(e)))??;
            let mut leaked = HashSet::new();
            for i in &instances {
                let (Some(node), Some(pod), Some(ns)) = (
                    i.spec.binding.node_name.as_deref(),
                    i.spec.binding.pod_name.as_deref(),
                    i.metadata.namespace.as_deref(),
                ) else {
                    continue;
                };
                if node == self.node.name && !pods.contains(&(ns, pod)) {
                    leaked.insert(PodKey::new(ns, pod));
                }
            }
            for pod in leaked {
                log::info!("GC: releasing the addresses of {pod}, which has no attachment here");
                if let Err(e) = self.source.release(pod).await {
                    errors.push(e);
                }
            }
        }
        if removed > 0 {
            log::info!("GC: removed {removed} attachment(s) not in the runtime's list");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.sync()).await;
        Error::collected(errors)
    }

    // ---- queued DELs -------------------------------------------------------------

    /// Completes the DELs the plugin queued while the agent was down.
    pub async fn process_queue(&self) {
        let entries = match rama_cni::queue::entries(&self.config.queue_dir) {
            Ok(e) => e,
            Err(e) => {
                log::warn!(
                    "reading the DEL queue {}: {e}",
                    self.config.queue_dir.display()
                );
                return;
            }
        };
        for (path, entry) in entries {
            match entry {
                Ok(q) => match self.del(&q.attachment).await {
                    Ok(()) => {
                        log::info!(
                            "completed the queued DEL of {}/{}",
                            q.attachment.container_id,
                            q.attachment.ifname
                        );
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => log::warn!("queued DEL {}: {e} (retried later)", path.display()),
                },
                Err(e) => log::warn!(
                    "queued DEL {} is unreadable (left for an operator): {e}",
                    path.display()
                ),
            }
        }
    }
}

fn local_endpoint(r: &EndpointRecord, mac: MacAddr) -> LocalEndpoint {
    LocalEndpoint {
        name: format!("{}/{}", r.pod.namespace, r.pod.name),
        host_interface: r.host_interface.clone(),
        mac,
        ipv4: r.ipv4,
        ipv6: r.ipv6,
    }
}

fn attach_result(r: &EndpointRecord, host_mac: MacAddr, pod_mac: MacAddr) -> AttachResult {
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    if let Some(a) = r.ipv4 {
        ips.push(IpConfig {
            address: IpNet::from(IpAddr::V4(a)),
            gateway: Some(gateway_v4()),
            interface: 1,
        });
        routes.push(Route {
            dst: "0.0.0.0/0".parse().expect("literal"),
            gw: Some(gateway_v4()),
        });
    }
    if let Some(a) = r.ipv6 {
        ips.push(IpConfig {
            address: IpNet::from(IpAddr::V6(a)),
            gateway: Some(gateway_v6()),
            interface: 1,
        });
        routes.push(Route {
            dst: "::/0".parse().expect("literal"),
            gw: Some(gateway_v6()),
        });
    }
    AttachResult {
        interfaces: vec![
            Interface {
                name: r.host_interface.clone(),
                mac: host_mac.to_string(),
                sandbox: None,
                mtu: Some(r.mtu),
            },
            Interface {
                name: r.ifname.clone(),
                mac: pod_mac.to_string(),
                sandbox: r.netns.clone(),
                mtu: Some(r.mtu),
            },
        ],
        ips,
        routes,
    }
}
