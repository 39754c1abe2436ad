//! The eBPF backend: loads Rama's programs, pins maps and links under the node's pin
//! directory, attaches the programs and keeps the maps equal to the desired state.
//!
//! Pinning is what makes agent restarts and upgrades hitless: the maps outlive the
//! process, and links are replaced by attaching the new program first (TCX ordering)
//! and only then releasing the old link. Kernels before 6.6 have no TCX: there the
//! TC programs sit in clsact filters at a fixed priority and handle, whose program is
//! swapped in place, and each filter's program is pinned under `filters/` (named as
//! its link would be) so that stale filters are found and detached like stale links.
use std::{
    collections::{HashMap, HashSet},
    mem::size_of,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
};
use rama_common::{
    ABI_VERSION, Endpoint, IpKey, LocalPod, NeighEntry, NeighKey, NodeConfig, PodSubnet,
    counters::{COUNTER_SLOTS, Counter, Program, REASON_COUNT, Reason},
    flags, names,
};
use serde::Serialize;

use super::{ApplyReport, Dataplane, DataplaneConfig, XdpPolicy, host};
use crate::{
    Error, Result, defaults,
    net::Netlink,
    state::{Fabric, LocalEndpoint, Subnet, ValidState},
};

/// Subdirectories of the pin directory: pinned links (TCX, XDP), and the programs of
/// netlink TC filters on kernels without TCX.
const LINKS: &str = "links";
const FILTERS: &str = "filters";

/// IFLA_IFALIAS of the collect-metadata VXLAN device this backend creates.
const VXLAN_ALIAS: &str = "rama:ebpf";

/// The compiled programs, built by build.rs with aya-build.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rama"));

/// Map capacities, set at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub local_endpoints: u32,
    pub remote_endpoints: u32,
    pub neighbours: u32,
    pub nodes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            local_endpoints: defaults::MAX_LOCAL_ENDPOINTS,
            remote_endpoints: defaults::MAX_REMOTE_ENDPOINTS,
            neighbours: defaults::MAX_NEIGHBOURS,
            nodes: defaults::MAX_NODES,
        }
    }
}

pub fn ip_key(ip: IpAddr) -> IpKey {
    match ip {
        IpAddr::V4(a) => IpKey::v4(a.octets()),
        IpAddr::V6(a) => IpKey::v6(a.octets()),
    }
}

/// The pin directory of this ABI version below `root`.
pub fn versioned_pin_dir(root: &Path) -> PathBuf {
    root.join(format!("v{ABI_VERSION}"))
}

/// The eBPF backend.
pub struct EbpfDataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    capacity: Capacity,
    /// Links this process pinned, by pin file name.
    attached: HashSet<String>,
    /// Pod interfaces readied ahead of their endpoint: name → pinned link name.
    prepared: HashMap<String, String>,
    nl: Option<Netlink>,
    xdp: XdpPolicy,
    host: host::HostWritten,
    /// When the fallback's policy routing was last removed: three full dumps
    /// (routes, rules, links), 4–7 ms at 100 pods, so once per full-write period
    /// rather than every sync.
    fallback_removed: super::Written<()>,
    /// The VLANs RAMA_VLANS marks as served.
    vlans: super::Written<HashSet<u16>>,
    /// Whether the kernel has TCX (6.6): else TC programs go in clsact filters.
    tcx: bool,
}

impl EbpfDataplane {
    /// Loads and verifies the programs, reusing pinned maps under `config.pin_dir`.
    /// Fails with `EbpfUnavailable` when the kernel cannot run them.
    pub fn new(config: &DataplaneConfig) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(Error::EbpfUnavailable(
                "this build has no eBPF object (built with AYA_BUILD_SKIP)".into(),
            ));
        }
        check_bpffs(&config.pin_dir)?;
        let pin_dir = versioned_pin_dir(&config.pin_dir);
        let maps_dir = pin_dir.join("maps");
        std::fs::create_dir_all(&maps_dir)
            .map_err(|e| Error::io(format!("creating pin directory {}", maps_dir.display()), e))?;
        for dir in [LINKS, FILTERS] {
            std::fs::create_dir_all(pin_dir.join(dir))
                .map_err(|e| Error::io(format!("creating {}", pin_dir.display()), e))?;
        }
        let cap = config.capacity;
        let layouts = [
            (
                names::MAP_ENDPOINTS,
                size_of::<IpKey>(),
                size_of::<Endpoint>(),
                cap.local_endpoints * 2 + cap.remote_endpoints,
            ),
            (
                names::MAP_EP_BY_IF,
                size_of::<u32>(),
                size_of::<LocalPod>(),
                cap.local_endpoints,
            ),
            (
                names::MAP_NEIGH,
                size_of::<NeighKey>(),
                size_of::<NeighEntry>(),
                cap.neighbours,
            ),
            (
                names::MAP_VTEPS,
                size_of::<IpKey>(),
                size_of::<u32>(),
                cap.nodes,
            ),
        ];
        for (name, key, value, entries) in layouts {
            unpin_if_different(&maps_dir.join(name), key, value, entries);
        }
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(
                names::MAP_ENDPOINTS,
                cap.local_endpoints * 2 + cap.remote_endpoints,
            )
            .map_max_entries(names::MAP_EP_BY_IF, cap.local_endpoints)
            .map_max_entries(names::MAP_NEIGH, cap.neighbours)
            .map_max_entries(names::MAP_VTEPS, cap.nodes);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| Error::EbpfUnavailable(format!("loading the eBPF object: {e}")))?;
        for name in [
            names::PROG_POD_EGRESS,
            names::PROG_UPLINK_INGRESS,
            names::PROG_VXLAN_INGRESS,
        ] {
            let prog: &mut SchedClassifier = program(&mut ebpf, name)?;
            prog.load()
                .map_err(|e| Error::EbpfUnavailable(format!("verifying {name}: {e}")))?;
        }
        let xdp: &mut Xdp = program(&mut ebpf, names::PROG_UPLINK_XDP)?;
        xdp.load().map_err(|e| {
            Error::EbpfUnavailable(format!("verifying {}: {e}", names::PROG_UPLINK_XDP))
        })?;
        Ok(Self {
            ebpf,
            pin_dir,
            capacity: cap,
            attached: HashSet::new(),
            prepared: HashMap::new(),
            nl: None,
            xdp: config.xdp,
            host: Default::default(),
            fallback_removed: Default::default(),
            vlans: Default::default(),
            tcx: aya::util::KernelVersion::current()
                .map(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
                .unwrap_or(false),
        })
    }

    /// The loaded object, for BPF_PROG_TEST_RUN in tests and benches.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    fn netlink(&mut self) -> Result<Netlink> {
        if let Some(nl) = &self.nl {
            return Ok(nl.clone());
        }
        let nl = Netlink::connect()?;
        self.nl = Some(nl.clone());
        Ok(nl)
    }

    fn check_capacity(&self, state: &ValidState) -> Result<()> {
        let s = &state.state;
        let local_ips: usize = s
            .endpoints
            .iter()
            .map(|e| usize::from(e.ipv4.is_some()) + usize::from(e.ipv6.is_some()))
            .sum();
        let checks: [(&'static str, usize, u32); 4] = [
            (
                names::MAP_EP_BY_IF,
                s.endpoints.len(),
                self.capacity.local_endpoints,
            ),
            (
                names::MAP_ENDPOINTS,
                local_ips,
                self.capacity.local_endpoints * 2,
            ),
            (
                names::MAP_ENDPOINTS,
                local_ips + s.remote_endpoints.len(),
                self.capacity.local_endpoints * 2 + self.capacity.remote_endpoints,
            ),
            (names::MAP_VTEPS, s.remote_nodes.len(), self.capacity.nodes),
        ];
        for (map, wanted, capacity) in checks {
            if wanted > capacity as usize {
                return Err(Error::MapFull {
                    map,
                    wanted,
                    capacity,
                });
            }
        }
        Ok(())
    }

    fn map_mut(&mut self, name: &'static str) -> Result<&mut Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::EbpfUnavailable(format!("the object has no map {name}")))
    }

    /// The gateway MAC of an underlay subnet: pinned by the operator, or learned by
    /// `rama_uplink_in` from the answer to our probe.
    fn gateway_mac(&mut self, subnet: &Subnet) -> Result<Option<[u8; 6]>> {
        if let Some(mac) = subnet.gateway_mac {
            return Ok(Some(mac.0));
        }
        let (Fabric::Underlay { vlan }, Some(gw)) = (subnet.fabric, subnet.gateway) else {
            return Ok(None);
        };
        let neigh: BpfHashMap<_, NeighKey, NeighEntry> =
            BpfHashMap::try_from(self.map_mut(names::MAP_NEIGH)?)
                .map_err(|e| Error::ebpf("opening RAMA_NEIGH", e))?;
        let key = NeighKey {
            addr: ip_key(gw).addr,
            vlan,
            _pad: [0; 2],
        };
        Ok(neigh.get(&key, 0).ok().map(|n| n.mac))
    }

    /// What a local pod's traffic needs to know about its subnet.
    fn pod_subnet(
        &mut self,
        state: &ValidState,
        subnet: &Subnet,
        notes: &mut Vec<String>,
    ) -> Result<PodSubnet> {
        let network = ip_key(subnet.cidr.network());
        let mut out = PodSubnet {
            id: state.subnet_id(subnet),
            prefix: network.addr,
            prefix_len: network.prefix_bits(u32::from(subnet.cidr.prefix_len())),
            ..PodSubnet::NONE
        };
        if let Fabric::Underlay { vlan } = subnet.fabric {
            out.vlan = vlan;
            match self.gateway_mac(subnet)? {
                Some(mac) => {
                    out.gateway_mac = mac;
                    out.flags |= flags::GATEWAY_MAC_KNOWN;
                }
                None => notes.push(format!(
                    "subnet {:?}: gateway {} MAC not resolved yet",
                    subnet.name,
                    subnet.gateway.map(|g| g.to_string()).unwrap_or_default()
                )),
            }
        }
        Ok(out)
    }

    /// Writes every map from the state; stale entries are removed after the new ones
    /// are in, so no lookup that should succeed ever misses during an update. Returns
    /// notes for the operator (gateways not resolved yet).
    fn sync_maps(
        &mut self,
        state: &ValidState,
        links: &host::Links,
        vxlan_ifindex: u32,
    ) -> Result<Vec<String>> {
        let mut notes = Vec::new();
        let s = &state.state;
        let config = NodeConfig {
            uplink_ifindex: links.uplink.index,
            vxlan_ifindex,
            vni: state.overlay_vni.unwrap_or(0),
            flags: 0,
            uplink_mac: links.uplink.mac.0,
            vtep_mac: s.node.vtep_mac.0,
        };
        let mut cfg: Array<_, NodeConfig> = Array::try_from(self.map_mut(names::MAP_CONFIG)?)
            .map_err(|e| Error::ebpf("opening RAMA_CONFIG", e))?;
        cfg.set(0, config, 0)
            .map_err(|e| Error::ebpf("writing RAMA_CONFIG", e))?;

        let fabric_flags = |fabric: Fabric| match fabric {
            Fabric::Underlay { .. } => flags::UNDERLAY,
            Fabric::Overlay { .. } => flags::OVERLAY,
        };
        let vlan_of = |fabric: Fabric| match fabric {
            Fabric::Underlay { vlan } => vlan,
            Fabric::Overlay { .. } => 0,
        };

        // Each subnet with local pods, worked out once (the gateway MAC is a map read).
        let mut pod_subnets: HashMap<String, PodSubnet> = HashMap::new();
        for subnet in s
            .subnets
            .iter()
            .filter(|sub| state.has_local_endpoints(sub))
        {
            let info = self.pod_subnet(state, subnet, &mut notes)?;
            pod_subnets.insert(subnet.name.clone(), info);
        }
        let subnet_of = |ip: IpAddr| {
            state
                .subnet_of(ip)
                .and_then(|sub| pod_subnets.get(&sub.name))
                .copied()
                .unwrap_or(PodSubnet::NONE)
        };

        // Local pods: by host ifindex (with their subnets) and by address.
        let mut endpoints: HashMap<IpKey, Endpoint> = HashMap::new();
        let mut pods: HashMap<u32, LocalPod> = HashMap::new();
        for (ep, link) in s.endpoints.iter().zip(&links.endpoints) {
            let mut pod = LocalPod {
                flags: state.endpoint_fabric(ep).map(fabric_flags).unwrap_or(0),
                mac: ep.mac.0,
                _pad: [0; 2],
                ipv4: [0; 4],
                ipv6: [0; 16],
                subnet_v4: PodSubnet::NONE,
                subnet_v6: PodSubnet::NONE,
            };
            if let Some(a) = ep.ipv4 {
                pod.flags |= flags::HAS_V4;
                pod.ipv4 = a.octets();
                pod.subnet_v4 = subnet_of(a.into());
            }
            if let Some(a) = ep.ipv6 {
                pod.flags |= flags::HAS_V6;
                pod.ipv6 = a.octets();
                pod.subnet_v6 = subnet_of(a.into());
            }
            for ip in host::endpoint_routes(ep).map(|n| n.addr()) {
                let Some(subnet) = state.subnet_of(ip) else {
                    continue;
                };
                endpoints.insert(
                    ip_key(ip),
                    Endpoint {
                        flags: flags::LOCAL | fabric_flags(subnet.fabric),
                        ifindex: link.index,
                        subnet_id: state.subnet_id(subnet),
                        vlan: vlan_of(subnet.fabric),
                        _pad: [0; 2],
                        mac: ep.mac.0,
                        host_mac: link.mac.0,
                        vtep_mac: [0; 6],
                        node_mac: [0; 6],
                        vtep: [0; 16],
                    },
                );
            }
            pods.insert(link.index, pod);
        }
        // Remote pods.
        for r in &s.remote_endpoints {
            let (Some(node), Some(subnet)) = (state.remote_node(&r.node), state.subnet_of(r.ip))
            else {
                continue; // validated: cannot happen
            };
            let mut value = Endpoint {
                flags: fabric_flags(subnet.fabric),
                ifindex: 0,
                subnet_id: state.subnet_id(subnet),
                vlan: vlan_of(subnet.fabric),
                _pad: [0; 2],
                mac: [0; 6],
                host_mac: [0; 6],
                vtep_mac: node.vtep_mac.0,
                node_mac: node.uplink_mac.0,
                vtep: ip_key(node.vtep_ip).addr,
            };
            if node.vtep_ip.is_ipv6() {
                value.flags |= flags::VTEP_V6;
            }
            endpoints.insert(ip_key(r.ip), value);
        }
        sync_hash(
            self.map_mut(names::MAP_ENDPOINTS)?,
            names::MAP_ENDPOINTS,
            &endpoints,
        )?;
        sync_hash(
            self.map_mut(names::MAP_EP_BY_IF)?,
            names::MAP_EP_BY_IF,
            &pods,
        )?;

        let vteps: HashMap<IpKey, u32> = s
            .remote_nodes
            .iter()
            .map(|n| (ip_key(n.vtep_ip), 1))
            .collect();
        sync_hash(self.map_mut(names::MAP_VTEPS)?, names::MAP_VTEPS, &vteps)?;
        let served: HashSet<u16> = s
            .subnets
            .iter()
            .filter_map(|s| match s.fabric {
                Fabric::Underlay { vlan } => Some(vlan),
                Fabric::Overlay { .. } => None,
            })
            .collect();
        // Reading all 4096 entries back costs a syscall each, so a sync writes only
        // the VLANs that changed since the last one, and the whole array when the
        // last full pass is no longer trusted (see `Written`).
        let before = self.vlans.take();
        let mut vlans: Array<_, u32> = Array::try_from(self.map_mut(names::MAP_VLANS)?)
            .map_err(|e| Error::ebpf("opening RAMA_VLANS", e))?;
        let mut write = |vlan: u16, want: u32| {
            vlans
                .set(u32::from(vlan), want, 0)
                .map_err(|e| Error::ebpf("writing RAMA_VLANS", e))
        };
        let full = match &before {
            Some(before) => {
                for &vlan in before.symmetric_difference(&served) {
                    write(vlan, u32::from(served.contains(&vlan)))?;
                }
                false
            }
            None => {
                for vlan in 0..4096u16 {
                    write(vlan, u32::from(served.contains(&vlan)))?;
                }
                true
            }
        };
        self.vlans.put(served, full);
        Ok(notes)
    }

    /// Attaches a TC program to `ifname` ingress and pins the link; a link pinned by an
    /// earlier agent is released only after the new one is in place.
    fn attach_tc(&mut self, prog_name: &'static str, ifname: &str, ifindex: u32) -> Result<()> {
        let pin_name = format!("{prog_name}@{ifindex}");
        if self.attached.contains(&pin_name) {
            return Ok(());
        }
        let pin_path = self.pin_dir.join(LINKS).join(&pin_name);
        let prog: &mut SchedClassifier = program(&mut self.ebpf, prog_name)?;
        let what = || format!("attaching {prog_name} to {ifname}");
        if !self.tcx {
            attach_netlink(prog, prog_name, ifname)?;
            // No link to pin: the filter's program, pinned under the link's name,
            // stands for it (see release_filter).
            let filter_pin = self.pin_dir.join(FILTERS).join(&pin_name);
            let _ = std::fs::remove_file(&filter_pin);
            prog.pin(&filter_pin)
                .map_err(|e| Error::ebpf(format!("pinning {}", filter_pin.display()), e))?;
            self.attached.insert(pin_name);
            return Ok(());
        }
        let id = prog
            .attach_with_options(
                ifname,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(|e| Error::ebpf(what(), e))?;
        let link = prog.take_link(id).map_err(|e| Error::ebpf(what(), e))?;
        let fd_link = FdLink::try_from(link).map_err(|e| Error::ebpf(what(), e))?;
        release_pinned(&pin_path);
        fd_link
            .pin(&pin_path)
            .map_err(|e| Error::ebpf(format!("pinning {}", pin_path.display()), e))?;
        self.attached.insert(pin_name);
        Ok(())
    }

    fn attach_xdp(&mut self, ifname: &str, ifindex: u32, mode: XdpMode) -> Result<()> {
        let prog_name = names::PROG_UPLINK_XDP;
        let pin_name = format!("{prog_name}@{ifindex}");
        if self.attached.contains(&pin_name) {
            return Ok(());
        }
        let pin_path = self.pin_dir.join(LINKS).join(&pin_name);
        // Only one XDP program per device: release the old one first. XDP is only a
        // pre-filter, so the gap lets frames through to TC, it drops none.
        release_pinned(&pin_path);
        let prog: &mut Xdp = program(&mut self.ebpf, prog_name)?;
        let what = || format!("attaching {prog_name} to {ifname}");
        let id = prog
            .attach(ifname, mode)
            .map_err(|e| Error::ebpf(what(), e))?;
        let link = prog.take_link(id).map_err(|e| Error::ebpf(what(), e))?;
        let fd_link = FdLink::try_from(link).map_err(|e| Error::ebpf(what(), e))?;
        fd_link
            .pin(&pin_path)
            .map_err(|e| Error::ebpf(format!("pinning {}", pin_path.display()), e))?;
        self.attached.insert(pin_name);
        Ok(())
    }

    /// Releases pinned links (and netlink filters) of interfaces that are no longer
    /// Rama's to serve.
    fn release_stale_links(&mut self, wanted: &HashSet<String>) {
        for name in release_attachments(&self.pin_dir, |name| !wanted.contains(name)) {
            self.attached.remove(&name);
        }
    }

    async fn ensure_vxlan(&mut self, state: &ValidState, uplink_index: u32) -> Result<u32> {
        let nl = self.netlink()?;
        if state.overlay_vni.is_none() {
            if let Some(link) = nl.link(defaults::VXLAN_DEVICE).await? {
                nl.delete_link(link.index).await?;
            }
            return Ok(0);
        }
        // A collect-metadata ("external") device: one for every VNI and remote VTEP,
        // addressed per packet by bpf_skb_set_tunnel_key.
        let msg = rtnetlink::LinkVxlan::new(defaults::VXLAN_DEVICE, 0)
            .collect_metadata(true)
            .port(rama_common::VXLAN_PORT)
            .learning(false)
            .dev(uplink_index)
            .address(state.state.node.vtep_mac.0.to_vec())
            .build();
        if let Some(existing) = nl.link(defaults::VXLAN_DEVICE).await?
            && existing.alias.as_deref() != Some(VXLAN_ALIAS)
        {
            // Not ours to reuse (the fallback's device has a fixed VNI and VTEP).
            nl.delete_link(existing.index).await?;
        }
        let link = nl
            .ensure_link(defaults::VXLAN_DEVICE, msg, VXLAN_ALIAS)
            .await?;
        if link.mac != state.state.node.vtep_mac {
            nl.set_mac(link.index, state.state.node.vtep_mac).await?;
        }
        Ok(link.index)
    }

    /// Sends ARP/ND probes for underlay gateways whose MAC is unknown and waits briefly
    /// for `rama_uplink_in` to learn the answers into RAMA_NEIGH.
    async fn resolve_gateways(&mut self, state: &ValidState, links: &host::Links) -> Result<bool> {
        let mut probes = Vec::new();
        for subnet in &state.state.subnets {
            let (Fabric::Underlay { vlan }, Some(gw), None) =
                (subnet.fabric, subnet.gateway, subnet.gateway_mac)
            else {
                continue;
            };
            if !state.has_local_endpoints(subnet) {
                continue;
            }
            // Speak as one of our pods in that subnet when there is one.
            let sender = state.state.endpoints.iter().find_map(|e| {
                host::endpoint_routes(e)
                    .map(|n| n.addr())
                    .find(|a| subnet.cidr.contains(a))
            });
            probes.push((vlan, gw, sender));
        }
        if probes.is_empty() {
            return Ok(false);
        }
        let neigh: BpfHashMap<_, NeighKey, NeighEntry> =
            BpfHashMap::try_from(self.map_mut(names::MAP_NEIGH)?)
                .map_err(|e| Error::ebpf("opening RAMA_NEIGH", e))?;
        let known = |vlan: u16, gw: IpAddr| {
            let key = NeighKey {
                addr: ip_key(gw).addr,
                vlan,
                _pad: [0; 2],
            };
            neigh.get(&key, 0).is_ok()
        };
        let missing: Vec<_> = probes
            .into_iter()
            .filter(|(vlan, gw, _)| !known(*vlan, *gw))
            .collect();
        if missing.is_empty() {
            return Ok(false);
        }
        for (vlan, gw, sender) in &missing {
            crate::net::probe::send(links.uplink.index, links.uplink.mac, *vlan, *gw, *sender)?;
        }
        for _ in 0..20 {
            if missing.iter().all(|(vlan, gw, _)| known(*vlan, *gw)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(true)
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| Error::EbpfUnavailable(format!("the object has no program {name}")))?;
    prog.try_into()
        .map_err(|e| Error::ebpf(format!("program {name}"), e))
}

/// Releases every pinned link and map of this node's eBPF datapath (a node switched to
/// the fallback must stop running the programs). Absent pins are fine.
pub fn release_pins(pin_root: &Path) -> Result<()> {
    let dir = versioned_pin_dir(pin_root);
    release_attachments(&dir, |_| true);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}

/// A pinned map is reused as it is (aya does not compare it with the object), so a map
/// pinned with another capacity or layout is unpinned here and created afresh: the
/// programs still attached keep the old one until their links are replaced, and the
/// apply that follows fills the new one.
fn unpin_if_different(path: &Path, key_size: usize, value_size: usize, max_entries: u32) {
    let Ok(map) = MapData::from_pin(path) else {
        return;
    };
    let Ok(info) = map.info() else {
        return;
    };
    let same = info.key_size() as usize == key_size
        && info.value_size() as usize == value_size
        && info.max_entries() == max_entries;
    if !same {
        log::info!(
            "re-creating {} ({} entries of {}+{} bytes, now {max_entries} of {key_size}+{value_size})",
            path.display(),
            info.max_entries(),
            info.key_size(),
            info.value_size()
        );
        if let Err(e) = std::fs::remove_file(path) {
            log::warn!("unpinning {}: {e}", path.display());
        }
    }
}

/// Releases the pinned links and netlink filters under `pin_dir` whose names `stale`
/// picks; their names.
fn release_attachments(pin_dir: &Path, stale: impl Fn(&str) -> bool) -> Vec<String> {
    let mut released = Vec::new();
    for (sub, release) in [
        (LINKS, release_pinned as fn(&Path)),
        (FILTERS, release_filter),
    ] {
        for entry in std::fs::read_dir(pin_dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                release(&entry.path());
                released.push(name);
            }
        }
    }
    released
}

/// Unpins and drops a pinned link (detaching it); absent is fine.
fn release_pinned(path: &Path) {
    if let Ok(link) = PinnedLink::from_pin(path) {
        match link.unpin() {
            Ok(fd_link) => drop(fd_link),
            Err(e) => log::warn!("unpinning {}: {e}", path.display()),
        }
    } else if path.exists() {
        let _ = std::fs::remove_file(path);
    }
}

/// Detaches the netlink filter a program pinned under `filters/PROGRAM@IFINDEX`
/// stands for (kernels before 6.6), then unpins the program; an interface that is
/// gone took its filters with it.
fn release_filter(path: &Path) {
    if let Some((prog_name, ifindex)) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('@'))
        && let Ok(ifindex) = ifindex.parse::<u32>()
        && let Some(ifname) = crate::inspect::interface_name(ifindex)
    {
        // By name: also removes filters an older agent left at other priorities.
        match aya::programs::tc::qdisc_detach_program(&ifname, TcAttachType::Ingress, prog_name) {
            Ok(()) => {}
            Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("detaching {prog_name} from {ifname}: {e}"),
        }
    }
    let _ = std::fs::remove_file(path);
}

/// Where Rama's filter sits in a clsact hook on kernels before 6.6 (no TCX): a fixed
/// priority and handle, so that a restarted or upgraded agent replaces its filter in
/// place (RTM_NEWTFILTER without NLM_F_EXCL swaps the program atomically) instead of
/// stacking a new one in front of the old. Priority 1 runs it before filters others
/// add with the default (auto-assigned) priorities.
const NETLINK_TC_PRIORITY: u16 = 1;
const NETLINK_TC_HANDLE: TcHandle = TcHandle::new(0, 0x5241);

/// Attaches `prog` to `ifname`'s ingress under a clsact qdisc (the pre-TCX way), or
/// replaces the program of Rama's filter already there.
fn attach_netlink(prog: &mut SchedClassifier, prog_name: &str, ifname: &str) -> Result<()> {
    let what = || format!("attaching {prog_name} to {ifname} (netlink, clsact)");
    match aya::programs::tc::qdisc_add_clsact(ifname) {
        Ok(()) | Err(TcError::AlreadyAttached) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::ebpf(format!("adding clsact to {ifname}"), e)),
    }
    let options = NlOptions {
        priority: NETLINK_TC_PRIORITY,
        handle: NETLINK_TC_HANDLE,
        classid: None,
    };
    let id = match prog.attach_with_options(
        ifname,
        TcAttachType::Ingress,
        TcAttachOptions::Netlink(options),
    ) {
        Ok(id) => id,
        Err(ProgramError::TcError(TcError::NetlinkError(e)))
            if e.raw_os_error() == Some(libc::EEXIST) =>
        {
            let existing = SchedClassifierLink::attached(
                ifname,
                TcAttachType::Ingress,
                NETLINK_TC_PRIORITY,
                NETLINK_TC_HANDLE,
                None,
            )
            .map_err(|e| Error::io(what(), e))?;
            prog.attach_to_link(existing)
                .map_err(|e| Error::ebpf(what(), e))?
        }
        Err(e) => return Err(Error::ebpf(what(), e)),
    };
    // The filter stays when this process exits: take the link out of aya's
    // bookkeeping so dropping the program does not detach it.
    let link = prog.take_link(id).map_err(|e| Error::ebpf(what(), e))?;
    std::mem::forget(link);
    Ok(())
}

/// Makes a hash map equal to `wanted`: upsert everything, then delete the rest.
fn sync_hash<K, V>(map: &mut Map, name: &'static str, wanted: &HashMap<K, V>) -> Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash,
    V: aya::Pod,
{
    let mut m: BpfHashMap<_, K, V> =
        BpfHashMap::try_from(map).map_err(|e| Error::ebpf(format!("opening {name}"), e))?;
    for (k, v) in wanted {
        m.insert(k, v, 0)
            .map_err(|e| Error::ebpf(format!("writing {name}"), e))?;
    }
    let stale: Vec<K> = m
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !wanted.contains_key(k))
        .collect();
    for k in stale {
        match m.remove(&k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::ebpf(format!("deleting from {name}"), e)),
        }
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPF_FS: &str = "/sys/fs/bpf";

/// BPF maps can only be pinned on a bpffs mount (statfs magic BPF_FS_MAGIC). When the
/// pins go under /sys/fs/bpf and nothing is mounted there, mount it, as systemd and
/// Cilium do; a DaemonSet mounts the host's /sys/fs/bpf there instead.
fn check_bpffs(pin_root: &Path) -> Result<()> {
    if pin_root.starts_with(BPF_FS) && fs_magic(Path::new(BPF_FS)) != Some(BPF_FS_MAGIC) {
        let src = c"bpf";
        let target = c"/sys/fs/bpf";
        // SAFETY: static NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                target.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            log::warn!(
                "mounting bpffs on {BPF_FS}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    if fs_magic(pin_root) != Some(BPF_FS_MAGIC) {
        return Err(Error::EbpfUnavailable(format!(
            "{} is not on a bpffs mount (mount -t bpf bpf /sys/fs/bpf)",
            pin_root.display()
        )));
    }
    Ok(())
}

/// The statfs magic of the filesystem holding `path` (or its nearest existing parent).
fn fs_magic(path: &Path) -> Option<i64> {
    let mut dir = path.to_path_buf();
    while !dir.exists() {
        if !dir.pop() {
            return None;
        }
    }
    let c_path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statfs writes into the zeroed struct we own.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    (rc == 0).then_some(st.f_type as i64)
}

impl Dataplane for EbpfDataplane {
    fn kind(&self) -> &'static str {
        "ebpf"
    }

    async fn apply(&mut self, state: &ValidState) -> Result<ApplyReport> {
        self.check_capacity(state)?;
        let nl = self.netlink()?;
        let links = host::resolve_links(&nl, state).await?;
        // Taking over from the fallback: its rules would route around the programs.
        let trusted = self.fallback_removed.take().is_some();
        if !trusted {
            let mut errors = Vec::new();
            super::fallback::remove_policy_routing(&nl, &mut errors, false).await;
            if let Some(e) = errors.into_iter().next() {
                return Err(e);
            }
        }
        self.fallback_removed.put((), !trusted);
        host::apply(&nl, state, &links, &mut self.host).await?;
        let vxlan = self.ensure_vxlan(state, links.uplink.index).await?;
        let mut report = ApplyReport {
            endpoints: state.state.endpoints.len(),
            remote_endpoints: state.state.remote_endpoints.len(),
            subnets: state.state.subnets.len(),
            notes: Vec::new(),
        };
        let mut gateway_notes = self.sync_maps(state, &links, vxlan)?;

        let mut wanted = HashSet::new();
        let uplink = links.uplink.clone();
        self.attach_tc(names::PROG_UPLINK_INGRESS, &uplink.name, uplink.index)?;
        wanted.insert(format!("{}@{}", names::PROG_UPLINK_INGRESS, uplink.index));
        match (self.xdp, uplink.kind.as_deref()) {
            (XdpPolicy::Off, _) => {}
            (XdpPolicy::Auto, Some("veth")) => report.notes.push(format!(
                "XDP pre-filter not attached: uplink {} is a veth (XDP there turns off GSO on its peer); \
                 rama_uplink_in does the same checks",
                uplink.name
            )),
            (XdpPolicy::Auto, _) => {
                // Native mode only: generic XDP linearises every skb.
                match self.attach_xdp(&uplink.name, uplink.index, XdpMode::Driver) {
                    Ok(()) => {
                        wanted.insert(format!("{}@{}", names::PROG_UPLINK_XDP, uplink.index));
                    }
                    Err(e) => report.notes.push(format!(
                        "XDP pre-filter not attached ({e}); rama_uplink_in does the same checks"
                    )),
                }
            }
            (XdpPolicy::On, _) => {
                self.attach_xdp(&uplink.name, uplink.index, XdpMode::default())?;
                wanted.insert(format!("{}@{}", names::PROG_UPLINK_XDP, uplink.index));
            }
        }
        if vxlan != 0 {
            self.attach_tc(names::PROG_VXLAN_INGRESS, defaults::VXLAN_DEVICE, vxlan)?;
            wanted.insert(format!("{}@{}", names::PROG_VXLAN_INGRESS, vxlan));
        }
        for link in &links.endpoints {
            self.attach_tc(names::PROG_POD_EGRESS, &link.name, link.index)?;
            wanted.insert(format!("{}@{}", names::PROG_POD_EGRESS, link.index));
        }
        // With rama_uplink_in attached, answers to gateway probes get learned.
        if self.resolve_gateways(state, &links).await? {
            gateway_notes = self.sync_maps(state, &links, vxlan)?;
        }
        report.notes.extend(gateway_notes);
        // Interfaces readied for an ADD in flight are not in the state yet.
        wanted.extend(self.prepared.values().cloned());
        self.release_stale_links(&wanted);
        Ok(report)
    }

    async fn check_endpoint(&mut self, ep: &LocalEndpoint) -> Result<()> {
        let nl = self.netlink()?;
        let fail = |what: String| Err(Error::CheckFailed(what));
        let Some(link) = nl.link(&ep.host_interface).await? else {
            return fail(format!("interface {} is gone", ep.host_interface));
        };
        let pods: BpfHashMap<_, u32, LocalPod> =
            BpfHashMap::try_from(self.map_mut(names::MAP_EP_BY_IF)?)
                .map_err(|e| Error::ebpf("opening RAMA_EP_BY_IF", e))?;
        let Ok(pod) = pods.get(&link.index, 0) else {
            return fail(format!(
                "{} (#{}) has no entry in {}",
                ep.host_interface,
                link.index,
                names::MAP_EP_BY_IF
            ));
        };
        if pod.mac != ep.mac.0 {
            return fail(format!(
                "{} holds MAC {} for {}, not {}",
                names::MAP_EP_BY_IF,
                crate::state::MacAddr(pod.mac),
                ep.host_interface,
                ep.mac
            ));
        }
        if ep
            .ipv4
            .is_some_and(|a| pod.flags & flags::HAS_V4 == 0 || pod.ipv4 != a.octets())
            || ep
                .ipv6
                .is_some_and(|a| pod.flags & flags::HAS_V6 == 0 || pod.ipv6 != a.octets())
        {
            return fail(format!(
                "{} holds other addresses for {}",
                names::MAP_EP_BY_IF,
                ep.host_interface
            ));
        }
        let endpoints: BpfHashMap<_, IpKey, Endpoint> =
            BpfHashMap::try_from(self.map_mut(names::MAP_ENDPOINTS)?)
                .map_err(|e| Error::ebpf("opening RAMA_ENDPOINTS", e))?;
        for ip in host::endpoint_routes(ep).map(|n| n.addr()) {
            match endpoints.get(&ip_key(ip), 0) {
                Ok(e) if e.flags & flags::LOCAL != 0 && e.ifindex == link.index => {}
                _ => {
                    return fail(format!(
                        "{} does not deliver {ip} to {}",
                        names::MAP_ENDPOINTS,
                        ep.host_interface
                    ));
                }
            }
        }
        let pin = format!("{}@{}", names::PROG_POD_EGRESS, link.index);
        if !self.attached.contains(&pin)
            && !self.pin_dir.join(LINKS).join(&pin).exists()
            && !self.pin_dir.join(FILTERS).join(&pin).exists()
        {
            return fail(format!(
                "{} is not attached to {}",
                names::PROG_POD_EGRESS,
                ep.host_interface
            ));
        }
        Ok(())
    }

    async fn prepare_interface(&mut self, ifname: &str) -> Result<()> {
        let link = self.netlink()?.require_link(ifname).await?;
        self.attach_tc(names::PROG_POD_EGRESS, ifname, link.index)?;
        self.prepared.insert(
            ifname.to_owned(),
            format!("{}@{}", names::PROG_POD_EGRESS, link.index),
        );
        Ok(())
    }

    fn forget_interface(&mut self, ifname: &str) {
        self.prepared.remove(ifname);
    }

    async fn teardown(&mut self) -> Result<()> {
        let mut errors = Vec::new();
        self.prepared.clear();
        self.vlans.forget();
        self.release_stale_links(&HashSet::new());
        match self.netlink() {
            Ok(nl) => {
                host::teardown(&nl, &mut errors).await;
                self.host.forget();
                self.fallback_removed.forget();
                match nl.link(defaults::VXLAN_DEVICE).await {
                    Ok(Some(link)) => {
                        if let Err(e) = nl.delete_link(link.index).await {
                            errors.push(e);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => errors.push(e),
                }
            }
            Err(e) => errors.push(e),
        }
        if let Err(e) = std::fs::remove_dir_all(&self.pin_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(Error::io(format!("removing {}", self.pin_dir.display()), e));
        }
        Error::collected(errors)
    }
}

/// How full one of the maps that grow with the cluster is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapUsage {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

/// A node's pinned map `name`, for reading without loading any program (metrics,
/// `inspect`).
pub fn pinned_map(pin_root: &Path, name: &str) -> Result<MapData> {
    let path = versioned_pin_dir(pin_root).join("maps").join(name);
    MapData::from_pin(&path).map_err(|e| {
        Error::ebpf(
            format!(
                "opening {} (is the eBPF datapath running on this node, with --pin-dir {}?)",
                path.display(),
                pin_root.display()
            ),
            e,
        )
    })
}

fn count_entries<K: aya::Pod, V: aya::Pod>(pin_root: &Path, map: &'static str) -> Result<MapUsage> {
    let data = pinned_map(pin_root, map)?;
    let capacity = data
        .info()
        .map_err(|e| Error::ebpf(format!("reading {map}'s info"), e))?
        .max_entries();
    let typed: BpfHashMap<MapData, K, V> = Map::from_map_data(data)
        .map_err(|e| Error::ebpf(map, e))
        .and_then(|m| BpfHashMap::try_from(m).map_err(|e| Error::ebpf(map, e)))?;
    // A key deleted while we iterate ends the walk early with an error entry; what
    // was counted until then is still a consistent lower bound.
    let entries = typed.keys().take_while(|k| k.is_ok()).count();
    Ok(MapUsage {
        map,
        entries,
        capacity,
    })
}

/// Entries and capacity of the pinned maps whose size depends on the cluster (no
/// programs need to be loaded).
pub fn map_usage(pin_root: &Path) -> Result<Vec<MapUsage>> {
    Ok(vec![
        count_entries::<IpKey, Endpoint>(pin_root, names::MAP_ENDPOINTS)?,
        count_entries::<u32, LocalPod>(pin_root, names::MAP_EP_BY_IF)?,
        count_entries::<NeighKey, NeighEntry>(pin_root, names::MAP_NEIGH)?,
        count_entries::<IpKey, u32>(pin_root, names::MAP_VTEPS)?,
    ])
}

/// One counter, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CounterRow {
    pub program: &'static str,
    pub reason: &'static str,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// Reads the pinned counters of a node (no programs need to be loaded).
pub fn read_counters(pin_root: &Path) -> Result<Vec<CounterRow>> {
    let data = pinned_map(pin_root, names::MAP_COUNTERS)?;
    let map = Map::from_map_data(data).map_err(|e| Error::ebpf("RAMA_COUNTERS", e))?;
    let counters: PerCpuArray<_, Counter> =
        PerCpuArray::try_from(map).map_err(|e| Error::ebpf("RAMA_COUNTERS", e))?;
    let mut rows = Vec::new();
    for program in Program::ALL {
        for reason in Reason::ALL {
            let slot = program as u32 * REASON_COUNT + reason as u32;
            debug_assert!(slot < COUNTER_SLOTS);
            let values = counters
                .get(&slot, 0)
                .map_err(|e| Error::ebpf("reading RAMA_COUNTERS", e))?;
            let (packets, bytes) = values
                .iter()
                .fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes));
            rows.push(CounterRow {
                program: program.label(),
                reason: reason.label(),
                drop: reason.is_drop(),
                packets,
                bytes,
            });
        }
    }
    Ok(rows)
}
