//! The cluster builder: switch, router, external host, N nodes and their pods.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use anyhow::{Context as _, Result, bail};
use rama_agent::dataplane::{DatapathMode, ebpf::CounterRow};
use serde_json::json;

use crate::{agent_binary, netns::Netns, vlan_fixture};

/// The networks of the test cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNet {
    /// Underlay VLAN 100: 10.100.0.0/24, fd00:100::/64, gateway .1 / ::1.
    Vlan100,
    /// Underlay VLAN 200: 10.200.0.0/24, fd00:200::/64.
    Vlan200,
    /// The VXLAN overlay (VNI 4096): 10.244.0.0/24, fd00:244::/64.
    Overlay,
    /// Not Rama's: 10.50.0.0/24, fd00:50::/64, for the no-CNI baseline (the harness
    /// leaves these pods out of every node state; the bench routes them by hand).
    Plain,
}

impl PodNet {
    fn octet(self) -> u8 {
        match self {
            PodNet::Vlan100 => 100,
            PodNet::Vlan200 => 200,
            PodNet::Overlay => 244,
            PodNet::Plain => 50,
        }
    }

    pub fn is_underlay(self) -> bool {
        matches!(self, PodNet::Vlan100 | PodNet::Vlan200)
    }
}

pub const OVERLAY_VNI: u32 = 4096;
pub const VLANS: [u16; 2] = [100, 200];

/// The external host's addresses.
pub fn external_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2))
}
pub fn external_v6() -> IpAddr {
    IpAddr::V6("fd00:e::2".parse().expect("literal"))
}

pub struct Node {
    pub name: String,
    pub index: u8,
    pub ns: Netns,
    pub datapath: DatapathMode,
    pub pin_dir: PathBuf,
}

impl Node {
    pub fn ipv4(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, self.index))
    }
    pub fn ipv6(&self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            0,
            u16::from(self.index),
        ))
    }
    pub fn uplink_mac(&self) -> String {
        format!("02:00:0a:00:00:{:02x}", self.index)
    }
    pub fn vtep_mac(&self) -> String {
        format!("02:00:0b:00:00:{:02x}", self.index)
    }
}

pub struct Pod {
    pub name: String,
    pub node: usize,
    pub net: PodNet,
    pub ns: Netns,
    pub host_if: String,
    pub mac: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// A whole test cluster; everything is removed on drop.
pub struct Cluster {
    pub tag: String,
    /// The agent's `--xdp` policy (`auto` by default; tests set `on` to run the XDP
    /// pre-filter on real packets over veth uplinks).
    pub xdp: &'static str,
    /// More `rama-agent apply` arguments (capacities…).
    pub extra_args: Vec<String>,
    /// Where `rama-agent run` serves health and metrics inside its node (loopback by
    /// default; a test that scrapes from elsewhere binds the node's address).
    pub metrics_addr: std::net::SocketAddr,
    pub pods: Vec<Pod>,
    pub nodes: Vec<Node>,
    pub ext: Netns,
    pub gw: Netns,
    pub sw: Netns,
    /// Agents started with [`Cluster::start_agent`], by node (see `agents.rs`).
    pub agents: Vec<Option<crate::agents::AgentProcess>>,
    pub scratch: PathBuf,
    /// Whether this kernel has 802.1Q devices: then the router terminates the VLANs on
    /// sub-interfaces of one trunk port and the switch filters VLANs, as in a real
    /// network; otherwise a tc fixture stands in (see the crate docs).
    pub vlan_devices: bool,
    pin_root: PathBuf,
}

impl Cluster {
    /// Builds the fabric and one node per entry of `datapaths` (the harness takes N).
    pub fn new(tag: &str, datapaths: &[DatapathMode]) -> Result<Self> {
        let tag = format!("{tag}{}", std::process::id() % 100_000);
        let scratch = std::env::temp_dir().join(format!("rama-test-{tag}"));
        std::fs::create_dir_all(&scratch)?;
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/rama-test-{tag}"));
        let sw = Netns::new(&format!("{tag}-sw"))?;
        let gw = Netns::new(&format!("{tag}-gw"))?;
        let ext = Netns::new(&format!("{tag}-ext"))?;
        let mut cluster = Cluster {
            tag,
            xdp: "auto",
            extra_args: Vec::new(),
            metrics_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9476)),
            pods: Vec::new(),
            nodes: Vec::new(),
            ext,
            gw,
            sw,
            agents: Vec::new(),
            scratch,
            vlan_devices: false,
            pin_root,
        };
        cluster.vlan_devices = has_vlan_devices(&cluster.sw);
        cluster.build_fabric()?;
        for (i, datapath) in datapaths.iter().enumerate() {
            cluster.add_node(i as u8 + 1, *datapath)?;
        }
        Ok(cluster)
    }

    fn build_fabric(&mut self) -> Result<()> {
        let (sw, gw, ext) = (&self.sw, &self.gw, &self.ext);
        sw.ip(&[
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        sw.ip(&["link", "set", "br0", "up"])?;
        for ns in [gw, ext] {
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        }
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        gw.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        if self.vlan_devices {
            self.build_vlan_trunk()?;
        } else {
            self.build_vlan_ports()?;
        }
        gw.ip(&[
            "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
        ])?;
        gw.ip(&["link", "set", "ext0", "up"])?;
        gw.ip(&["addr", "add", "198.51.100.1/24", "dev", "ext0"])?;
        gw.ip(&["addr", "add", "fd00:e::1/64", "dev", "ext0", "nodad"])?;
        ext.ip(&["link", "set", "eth0", "up"])?;
        ext.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"])?;
        ext.ip(&["addr", "add", "fd00:e::2/64", "dev", "eth0", "nodad"])?;
        ext.ip(&["route", "add", "default", "via", "198.51.100.1"])?;
        ext.ip(&["-6", "route", "add", "default", "via", "fd00:e::1"])?;
        Ok(())
    }

    /// Without 802.1Q devices: one router port per VLAN and one untagged, each VLAN
    /// port made an access port by the tc fixture.
    fn build_vlan_ports(&self) -> Result<()> {
        let (sw, gw) = (&self.sw, &self.gw);
        let mut ports: Vec<(String, Option<u16>)> =
            VLANS.iter().map(|v| (format!("v{v}"), Some(*v))).collect();
        ports.push(("native".into(), None));
        for (port, vlan) in &ports {
            let peer = format!("gw-{port}");
            gw.ip(&[
                "link", "add", port, "type", "veth", "peer", "name", &peer, "netns", &sw.name,
            ])?;
            sw.ip(&["link", "set", &peer, "master", "br0", "up"])?;
            gw.ip(&["link", "set", port, "up"])?;
            match vlan {
                Some(v) => {
                    gw_vlan_addresses(gw, port, *v)?;
                    vlan_fixture::attach(gw, port, *v, &self.scratch)?;
                }
                None => gw_native_addresses(gw, port)?,
            }
        }
        Ok(())
    }

    /// With 802.1Q devices, as a real network is built: the switch is a
    /// VLAN-filtering bridge, the router's one trunk port carries the node network
    /// untagged and each VLAN tagged, terminated on a kernel 802.1Q sub-interface.
    fn build_vlan_trunk(&self) -> Result<()> {
        let (sw, gw) = (&self.sw, &self.gw);
        sw.ip(&[
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "vlan_filtering",
            "1",
        ])?;
        gw.ip(&[
            "link", "add", "trunk", "type", "veth", "peer", "name", "gw-trunk", "netns", &sw.name,
        ])?;
        sw.ip(&["link", "set", "gw-trunk", "master", "br0", "up"])?;
        trunk_port(sw, "gw-trunk")?;
        gw.ip(&["link", "set", "trunk", "up"])?;
        gw_native_addresses(gw, "trunk")?;
        for v in VLANS {
            let sub = format!("trunk.{v}");
            gw.ip(&[
                "link",
                "add",
                "link",
                "trunk",
                "name",
                &sub,
                "type",
                "vlan",
                "id",
                &v.to_string(),
            ])?;
            gw.ip(&["link", "set", &sub, "up"])?;
            gw_vlan_addresses(gw, &sub, v)?;
        }
        Ok(())
    }

    fn add_node(&mut self, index: u8, datapath: DatapathMode) -> Result<()> {
        let name = format!("n{index}");
        let ns = Netns::new(&format!("{}-{name}", self.tag))?;
        let node = Node {
            pin_dir: self.pin_root.join(&name),
            name,
            index,
            ns,
            datapath,
        };
        let ns = &node.ns;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        let peer = format!("sw-{}", node.name);
        ns.ip(&[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.sw.name,
        ])?;
        self.sw.ip(&["link", "set", &peer, "master", "br0", "up"])?;
        if self.vlan_devices {
            trunk_port(&self.sw, &peer)?;
        }
        ns.ip(&["link", "set", "up0", "address", &node.uplink_mac(), "up"])?;
        ns.ip(&["addr", "add", &format!("{}/24", node.ipv4()), "dev", "up0"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", node.ipv6()),
            "dev",
            "up0",
            "nodad",
        ])?;
        ns.ip(&["route", "add", "default", "via", "10.0.0.254"])?;
        ns.ip(&["-6", "route", "add", "default", "via", "fd00::254"])?;
        self.nodes.push(node);
        Ok(())
    }

    /// Creates a pod on node `node` (0-based) on `net`, plumbed as the CNI plugin will
    /// do it: a veth, /32 and /128 addresses, default routes via the link-local gateway.
    pub fn add_pod(&mut self, node: usize, name: &str, net: PodNet) -> Result<usize> {
        let k = self.pods.iter().filter(|p| p.net == net).count() as u8 + 10;
        let idx = self.pods.len();
        let ns = Netns::new(&format!("{}-{name}", self.tag))?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        let host_if = format!("rama{idx:03}");
        let mac = format!("02:aa:00:00:{:02x}:{k:02x}", net.octet());
        let ipv4 = Ipv4Addr::new(10, net.octet(), 0, k);
        let ipv6 = Ipv6Addr::new(
            0xfd00,
            u16::from_str_radix(&net.octet().to_string(), 16)?,
            0,
            0,
            0,
            0,
            0,
            u16::from_str_radix(&k.to_string(), 16)?,
        );
        let node_ns = &self.nodes[node].ns;
        node_ns.ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ])?;
        let mtu = if net == PodNet::Overlay {
            "1450"
        } else {
            "1500"
        };
        ns.ip(&["link", "set", "eth0", "address", &mac, "mtu", mtu, "up"])?;
        ns.ip(&["addr", "add", &format!("{ipv4}/32"), "dev", "eth0"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{ipv6}/128"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&[
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        ns.ip(&[
            "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
        ])?;
        node_ns.ip(&["link", "set", &host_if, "up"])?;
        self.pods.push(Pod {
            name: name.to_owned(),
            node,
            net,
            ns,
            host_if,
            mac,
            ipv4,
            ipv6,
        });
        Ok(idx)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The desired state of node `i`, as the agent loop will compute it.
    pub fn node_state(&self, i: usize) -> serde_json::Value {
        let node = &self.nodes[i];
        let mut subnets = Vec::new();
        for v in VLANS {
            subnets.push(
                json!({"name": format!("vlan{v}-v4"), "cidr": format!("10.{v}.0.0/24"),
                "fabric": {"type": "underlay", "vlan": v}, "gateway": format!("10.{v}.0.1")}),
            );
            subnets.push(
                json!({"name": format!("vlan{v}-v6"), "cidr": format!("fd00:{v}::/64"),
                "fabric": {"type": "underlay", "vlan": v}, "gateway": format!("fd00:{v}::1")}),
            );
        }
        subnets.push(json!({"name": "overlay-v4", "cidr": "10.244.0.0/24",
            "fabric": {"type": "overlay", "vni": OVERLAY_VNI}}));
        subnets.push(json!({"name": "overlay-v6", "cidr": "fd00:244::/64",
            "fabric": {"type": "overlay", "vni": OVERLAY_VNI}}));
        let endpoints: Vec<_> = self
            .pods
            .iter()
            .filter(|p| p.node == i && p.net != PodNet::Plain)
            .map(|p| {
                json!({"name": p.name, "hostInterface": p.host_if, "mac": p.mac,
                "ipv4": p.ipv4, "ipv6": p.ipv6})
            })
            .collect();
        let remote_nodes: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.index != node.index)
            .map(|n| {
                json!({"name": n.name, "vtepIp": n.ipv4(), "vtepMac": n.vtep_mac(),
                "uplinkMac": n.uplink_mac()})
            })
            .collect();
        let mut remote_endpoints = Vec::new();
        for p in self
            .pods
            .iter()
            .filter(|p| p.node != i && p.net != PodNet::Plain)
        {
            let owner = &self.nodes[p.node].name;
            remote_endpoints.push(json!({"ip": p.ipv4, "node": owner}));
            remote_endpoints.push(json!({"ip": p.ipv6, "node": owner}));
        }
        json!({
            "node": {"name": node.name, "uplink": "up0", "vtepIp": node.ipv4(), "vtepMac": node.vtep_mac()},
            "subnets": subnets,
            "endpoints": endpoints,
            "remoteNodes": remote_nodes,
            "remoteEndpoints": remote_endpoints,
        })
    }

    /// Runs `rama-agent apply` in every node with its state; returns each output.
    pub fn apply(&self) -> Result<Vec<String>> {
        let mut outputs = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            outputs.push(self.apply_node(i, &self.node_state(i), node.datapath)?);
        }
        Ok(outputs)
    }

    /// Applies `state` on node `i` with the given datapath; the agent's stdout.
    pub fn apply_node(
        &self,
        i: usize,
        state: &serde_json::Value,
        datapath: DatapathMode,
    ) -> Result<String> {
        let node = &self.nodes[i];
        let path = self.scratch.join(format!("{}.json", node.name));
        std::fs::write(&path, serde_json::to_vec_pretty(state)?)?;
        let datapath = datapath.to_string();
        let mut args = vec![
            "apply",
            "--state",
            path.to_str().context("path")?,
            "--datapath",
            &datapath,
            "--pin-dir",
            node.pin_dir.to_str().context("path")?,
            "--xdp",
            self.xdp,
        ];
        args.extend(self.extra_args.iter().map(String::as_str));
        let out = node
            .ns
            .exec_output(agent_binary().to_str().context("agent path")?, &args)?;
        if !out.status.success() {
            bail!(
                "rama-agent apply on {} failed: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The eBPF counters of node `i`.
    pub fn counters(&self, i: usize) -> Result<Vec<CounterRow>> {
        Ok(rama_agent::dataplane::ebpf::read_counters(
            &self.nodes[i].pin_dir,
        )?)
    }

    /// Packets counted for (program, reason) on node `i`.
    pub fn count(&self, i: usize, program: &str, reason: &str) -> u64 {
        self.counters(i)
            .map(|rows| {
                rows.iter()
                    .filter(|r| r.program == program && r.reason == reason)
                    .map(|r| r.packets)
                    .sum()
            })
            .unwrap_or(0)
    }

    /// A short dump of the fabric for failure messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for node in &self.nodes {
            let _ = writeln!(s, "== {} ({})", node.name, node.datapath);
            if let Ok(rows) = self.counters(node.index as usize - 1) {
                for r in rows.iter().filter(|r| r.packets > 0) {
                    let _ = writeln!(s, "  {}/{}: {}", r.program, r.reason, r.packets);
                }
            }
        }
        s
    }
}

/// Whether the kernel can make 802.1Q devices (tried on a throw-away veth in `ns`).
fn has_vlan_devices(ns: &Netns) -> bool {
    let made = ns
        .ip(&[
            "link", "add", "probe0", "type", "veth", "peer", "name", "probe1",
        ])
        .is_ok();
    let vlan = made
        && ns
            .ip(&[
                "link", "add", "link", "probe0", "name", "probe0.7", "type", "vlan", "id", "7",
            ])
            .is_ok();
    if made {
        let _ = ns.ip(&["link", "del", "probe0"]);
    }
    vlan
}

/// A switch port that carries the node network untagged (the default PVID 1) and
/// every VLAN of the test network tagged.
fn trunk_port(sw: &Netns, port: &str) -> Result<()> {
    for v in VLANS {
        sw.exec(
            "bridge",
            &["vlan", "add", "dev", port, "vid", &v.to_string()],
        )?;
    }
    Ok(())
}

fn gw_vlan_addresses(gw: &Netns, dev: &str, vlan: u16) -> Result<()> {
    gw.ip(&["addr", "add", &format!("10.{vlan}.0.1/24"), "dev", dev])?;
    gw.ip(&[
        "addr",
        "add",
        &format!("fd00:{vlan}::1/64"),
        "dev",
        dev,
        "nodad",
    ])?;
    Ok(())
}

fn gw_native_addresses(gw: &Netns, dev: &str) -> Result<()> {
    gw.ip(&["addr", "add", "10.0.0.254/24", "dev", dev])?;
    gw.ip(&["addr", "add", "fd00::254/64", "dev", dev, "nodad"])?;
    Ok(())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents stop first (they hold sockets and pins), then pods and nodes (their
        // fields drop after this), then the pins.
        self.agents.clear();
        self.pods.clear();
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.pin_root);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

impl Cluster {
    /// `max_entries` of one of node `i`'s pinned maps.
    pub fn map_capacity(&self, i: usize, map: &str) -> u32 {
        let path = rama_agent::dataplane::ebpf::versioned_pin_dir(&self.nodes[i].pin_dir)
            .join("maps")
            .join(map);
        aya::maps::MapData::from_pin(&path)
            .expect("pinned map")
            .info()
            .expect("map info")
            .max_entries()
    }

    /// Number of entries in one of node `i`'s pinned maps: RAMA_ENDPOINTS (pod
    /// addresses, local and remote) or RAMA_EP_BY_IF (local pods).
    pub fn map_len(&self, i: usize, map: &str) -> usize {
        use rama_common::{Endpoint, IpKey, LocalPod};
        let path = rama_agent::dataplane::ebpf::versioned_pin_dir(&self.nodes[i].pin_dir)
            .join("maps")
            .join(map);
        let data = aya::maps::MapData::from_pin(&path).expect("pinned map");
        let map_obj = aya::maps::Map::from_map_data(data).expect("map");
        match map {
            "RAMA_ENDPOINTS" => aya::maps::HashMap::<_, IpKey, Endpoint>::try_from(map_obj)
                .expect("typed")
                .keys()
                .count(),
            "RAMA_EP_BY_IF" => aya::maps::HashMap::<_, u32, LocalPod>::try_from(map_obj)
                .expect("typed")
                .keys()
                .count(),
            other => panic!("map_len does not know {other}"),
        }
    }

    /// The VLANs node `i`'s RAMA_VLANS marks as served.
    pub fn served_vlans(&self, i: usize) -> Vec<u16> {
        let data = aya::maps::MapData::from_pin(self.vlans_pin(i)).expect("pinned map");
        let map = aya::maps::Map::from_map_data(data).expect("map");
        let vlans = aya::maps::Array::<_, u32>::try_from(map).expect("typed");
        (0..4096u16)
            .filter(|v| vlans.get(&u32::from(*v), 0).ok() == Some(1))
            .collect()
    }

    /// Writes RAMA_VLANS[`vlan`] of node `i` behind the agent's back.
    pub fn set_served_vlan(&self, i: usize, vlan: u16, value: u32) {
        let data = aya::maps::MapData::from_pin(self.vlans_pin(i)).expect("pinned map");
        let map = aya::maps::Map::from_map_data(data).expect("map");
        let mut vlans = aya::maps::Array::<_, u32>::try_from(map).expect("typed");
        vlans
            .set(u32::from(vlan), value, 0)
            .expect("write RAMA_VLANS");
    }

    fn vlans_pin(&self, i: usize) -> PathBuf {
        rama_agent::dataplane::ebpf::versioned_pin_dir(&self.nodes[i].pin_dir)
            .join("maps")
            .join(rama_common::names::MAP_VLANS)
    }

    /// The pinned attachments of node `i` (`PROGRAM@IFINDEX`).
    pub fn pinned_links(&self, i: usize) -> Vec<String> {
        let dir = rama_agent::dataplane::ebpf::versioned_pin_dir(&self.nodes[i].pin_dir);
        // Links (TCX, XDP), and the programs that stand for netlink TC filters on
        // kernels without TCX: the same names either way.
        let mut names: Vec<String> = ["links", "filters"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(dir.join(sub)).ok())
            .flat_map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
            })
            .collect();
        names.sort();
        names
    }

    /// Rama's routes, rules, devices and nft table on node `i`, as text.
    pub fn footprint(&self, i: usize) -> String {
        let ns = &self.nodes[i].ns;
        let mut out = String::new();
        for args in [
            vec!["rule", "show"],
            vec!["-6", "rule", "show"],
            vec!["route", "show", "table", "all", "proto", "82"],
            vec!["-6", "route", "show", "table", "all", "proto", "82"],
            vec!["-d", "link", "show", "rama.vxlan"],
        ] {
            if let Ok(text) = ns.ip(&args) {
                for line in text.lines().filter(|l| {
                    l.contains("proto 82") || l.contains("rama.vxlan") || l.contains("vxlan ")
                }) {
                    out.push_str(line.trim());
                    out.push('\n');
                }
            }
        }
        if let Ok(rules) = ns.exec("nft", &["list", "table", "inet", "rama"]) {
            out.push_str(&rules);
        }
        out
    }
}

impl Cluster {
    /// Applies every node's state with `mode` (overriding each node's own).
    pub fn apply_all(&self, mode: DatapathMode) -> Result<()> {
        for i in 0..self.nodes.len() {
            self.apply_node(i, &self.node_state(i), mode)?;
        }
        Ok(())
    }

    /// Runs `rama-agent teardown` on every node.
    pub fn teardown_all(&self) -> Result<()> {
        for i in 0..self.nodes.len() {
            for mode in ["ebpf", "fallback"] {
                self.teardown_node(i, mode)?;
            }
        }
        Ok(())
    }

    /// Runs `rama-agent teardown --datapath MODE` on node `i`.
    pub fn teardown_node(&self, i: usize, mode: &str) -> Result<()> {
        let node = &self.nodes[i];
        let out = node.ns.exec_output(
            agent_binary().to_str().context("agent path")?,
            &[
                "teardown",
                "--datapath",
                mode,
                "--pin-dir",
                node.pin_dir.to_str().context("path")?,
            ],
        )?;
        if !out.status.success() {
            bail!(
                "teardown on {} failed: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}
