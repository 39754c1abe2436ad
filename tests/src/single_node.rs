//! One node in its own namespace with the eBPF datapath loaded in-process: the
//! fixture for BPF_PROG_TEST_RUN tests and per-program benchmarks. Programs run in a
//! thread that has entered the namespace, so the ifindexes in crafted contexts resolve.
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use rama_agent::{
    dataplane::{DatapathMode, Dataplane, DataplaneConfig, ebpf::EbpfDataplane},
    state::NodeState,
};
use serde_json::json;

use crate::{frames::Mac, netns::Netns};

pub const UPLINK_MAC: &str = "02:00:0a:00:00:01";
pub const VTEP_MAC: &str = "02:00:0b:00:00:01";
pub const N2_UPLINK_MAC: &str = "02:00:0a:00:00:02";
pub const N2_VTEP_MAC: &str = "02:00:0b:00:00:02";
pub const GW100_MAC: &str = "02:00:0c:00:00:64";
pub const P1_MAC: &str = "02:aa:00:00:64:0a";
pub const P2_MAC: &str = "02:aa:00:00:f4:0a";
/// Bench pod p3 has the same MAC as its host veth, so a packet it sends to itself is
/// rewritten into an identical one: the same-node path can be repeated in place.
pub const P3_MAC: &str = "02:aa:00:00:64:1e";
/// Bench pod p4's MAC is the node's VTEP MAC, so its VXLAN path repeats in place.
pub const P4_MAC: &str = VTEP_MAC;

/// What a test body gets: the loaded datapath and the node's interfaces.
pub struct Node<'a> {
    pub dp: &'a mut EbpfDataplane,
    pub uplink: u32,
    pub p1: u32,
    pub p1_host_mac: Mac,
    pub p2: u32,
    pub p2_host_mac: Mac,
    /// Bench pods (see `P3_MAC`, `P4_MAC`).
    pub p3: u32,
    pub p4: u32,
    pub pin_root: PathBuf,
}

/// The node state: pod p1 on VLAN 100 (underlay), p2 on the overlay, a remote node n2
/// with one pod on each, gateway MACs pinned so no probe is needed.
pub fn state() -> serde_json::Value {
    json!({
        "node": {"name": "n1", "uplink": "up0", "vtepIp": "10.0.0.1", "vtepMac": VTEP_MAC},
        "subnets": [
            {"name": "u100", "cidr": "10.100.0.0/24", "fabric": {"type": "underlay", "vlan": 100}, "gateway": "10.100.0.1", "gatewayMac": GW100_MAC},
            {"name": "u100-6", "cidr": "fd00:100::/64", "fabric": {"type": "underlay", "vlan": 100}, "gateway": "fd00:100::1", "gatewayMac": GW100_MAC},
            {"name": "u200", "cidr": "10.200.0.0/24", "fabric": {"type": "underlay", "vlan": 200}, "gateway": "10.200.0.1", "gatewayMac": "02:00:0c:00:00:c8"},
            {"name": "ov", "cidr": "10.244.0.0/24", "fabric": {"type": "overlay", "vni": 4096}},
            {"name": "ov-6", "cidr": "fd00:244::/64", "fabric": {"type": "overlay", "vni": 4096}}
        ],
        "endpoints": [
            {"name": "p1", "hostInterface": "rama1", "mac": P1_MAC, "ipv4": "10.100.0.10", "ipv6": "fd00:100::10"},
            {"name": "p2", "hostInterface": "rama2", "mac": P2_MAC, "ipv4": "10.244.0.10", "ipv6": "fd00:244::10"},
            {"name": "p3", "hostInterface": "rama3", "mac": P3_MAC, "ipv4": "10.100.0.30"},
            {"name": "p4", "hostInterface": "rama4", "mac": P4_MAC, "ipv4": "10.244.0.40"}
        ],
        "remoteNodes": [{"name": "n2", "vtepIp": "10.0.0.2", "vtepMac": N2_VTEP_MAC, "uplinkMac": N2_UPLINK_MAC}],
        "remoteEndpoints": [
            {"ip": "10.100.0.20", "node": "n2"}, {"ip": "fd00:100::20", "node": "n2"},
            {"ip": "10.244.0.20", "node": "n2"}, {"ip": "fd00:244::20", "node": "n2"}
        ]
    })
}

/// Builds the namespace, loads and applies the datapath, runs `body` inside it.
pub fn with_node<T: Send + 'static>(
    tag: &str,
    body: impl FnOnce(&mut Node<'_>) -> T + Send + 'static,
) -> Result<T> {
    let name = format!("{tag}{}", std::process::id() % 100_000);
    let ns = Netns::new(&name)?;
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])?;
    ns.ip(&["link", "set", "up0", "address", UPLINK_MAC, "up"])?;
    ns.ip(&["link", "set", "up0p", "up"])?;
    ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "up0"])?;
    for (host, pod, mac) in [
        ("rama1", "p1", P1_MAC),
        ("rama2", "p2", P2_MAC),
        ("rama3", "p3", P3_MAC),
        ("rama4", "p4", P4_MAC),
    ] {
        ns.ip(&["link", "add", host, "type", "veth", "peer", "name", pod])?;
        ns.ip(&["link", "set", pod, "address", mac, "up"])?;
    }
    ns.ip(&["link", "set", "rama3", "address", P3_MAC])?;
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/rama-test-{name}"));
    let pins = pin_root.clone();
    let handle = ns.run_in(move || -> Result<T> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let config = DataplaneConfig {
            mode: DatapathMode::Ebpf,
            pin_dir: pins.clone(),
            ..Default::default()
        };
        let mut dp = EbpfDataplane::new(&config)?;
        let valid = serde_json::from_value::<NodeState>(state())?.validate()?;
        rt.block_on(dp.apply(&valid))?;
        let links = rt.block_on(async {
            let nl = rama_agent::net::Netlink::connect()?;
            let mut out = Vec::new();
            for name in ["up0", "rama1", "rama2", "rama3", "rama4"] {
                out.push(nl.require_link(name).await?);
            }
            Ok::<_, rama_agent::Error>(out)
        })?;
        let mut node = Node {
            dp: &mut dp,
            uplink: links[0].index,
            p1: links[1].index,
            p1_host_mac: links[1].mac.0,
            p2: links[2].index,
            p2_host_mac: links[2].mac.0,
            p3: links[3].index,
            p4: links[4].index,
            pin_root: pins,
        };
        Ok(body(&mut node))
    })?;
    let result = handle.join();
    let _ = std::fs::remove_dir_all(&pin_root);
    drop(ns);
    match result {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The result of one BPF_PROG_TEST_RUN.
pub struct Run {
    pub retval: u32,
    pub data: Vec<u8>,
}

/// `struct __sk_buff` up to and including `ifindex` (offset 40): the kernel lets a
/// test set the device the skb arrived on (net/bpf/test_run.c).
fn skb_ctx(ifindex: u32) -> [u8; 44] {
    let mut ctx = [0u8; 44];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

impl Node<'_> {
    /// Runs a TC program on `frame` as if it arrived on `ifindex`.
    pub fn run_tc(&mut self, program: &str, ifindex: u32, frame: &[u8]) -> Result<Run> {
        self.run_tc_repeat(program, ifindex, frame, 1)
            .map(|(run, _)| run)
    }

    /// Runs it `repeat` times; also returns the kernel-measured time per run.
    pub fn run_tc_repeat(
        &mut self,
        program: &str,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Run, std::time::Duration)> {
        let prog: &mut SchedClassifier = self
            .dp
            .ebpf_mut()
            .program_mut(program)
            .context("no such program")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 64];
        let ctx = skb_ctx(ifindex);
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        };
        let result = prog.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok((
            Run {
                retval: result.return_value,
                data: out,
            },
            result.duration,
        ))
    }

    pub fn run_xdp(&mut self, frame: &[u8]) -> Result<Run> {
        let prog: &mut Xdp = self
            .dp
            .ebpf_mut()
            .program_mut(rama_common::names::PROG_UPLINK_XDP)
            .context("no XDP program")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 64];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        };
        let result = prog.test_run(opts)?;
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            retval: result.return_value,
            data: out,
        })
    }

    /// Packets counted so far for (program, reason).
    pub fn count(&self, program: &str, reason: &str) -> u64 {
        rama_agent::dataplane::ebpf::read_counters(&self.pin_root)
            .expect("counters")
            .iter()
            .filter(|r| r.program == program && r.reason == reason)
            .map(|r| r.packets)
            .sum()
    }
}
