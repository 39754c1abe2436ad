//! Names of Rama's programs, maps and pins. The kernel keeps 15 characters of a map or
//! program name (BPF_OBJ_NAME_LEN − 1); `rama-agent` tests that the loaded object has
//! every name listed here.

/// TC ingress on the host side of each pod veth: traffic *from* the pod.
pub const PROG_POD_EGRESS: &str = "rama_pod_egress";
/// TC ingress on the uplink: tagged frames for local underlay pods, ARP/ND for them.
pub const PROG_UPLINK_INGRESS: &str = "rama_uplink_in";
/// XDP pre-stage on the uplink: drops frames no local pod can want, before an skb exists.
pub const PROG_UPLINK_XDP: &str = "rama_uplink_xdp";
/// TC ingress on the collect-metadata VXLAN device: decapsulated overlay traffic.
pub const PROG_VXLAN_INGRESS: &str = "rama_vxlan_in";

pub const PROGRAMS: [&str; 4] = [
    PROG_POD_EGRESS,
    PROG_UPLINK_INGRESS,
    PROG_UPLINK_XDP,
    PROG_VXLAN_INGRESS,
];

/// Pod addresses, local and remote, by IP.
pub const MAP_ENDPOINTS: &str = "RAMA_ENDPOINTS";
/// Local pods by host-side veth ifindex.
pub const MAP_EP_BY_IF: &str = "RAMA_EP_BY_IF";
/// Hosts on underlay VLANs (learned from ARP, or written by the agent).
pub const MAP_NEIGH: &str = "RAMA_NEIGH";
/// VLAN ids this node serves (XDP pre-filter): an array indexed by VLAN id.
pub const MAP_VLANS: &str = "RAMA_VLANS";
/// VTEP addresses of the cluster's nodes (XDP pre-filter for VXLAN).
pub const MAP_VTEPS: &str = "RAMA_VTEPS";
/// The node's own configuration, index 0.
pub const MAP_CONFIG: &str = "RAMA_CONFIG";
/// Per-CPU packet/byte counters by program and reason.
pub const MAP_COUNTERS: &str = "RAMA_COUNTERS";

pub const MAPS: [&str; 7] = [
    MAP_ENDPOINTS,
    MAP_EP_BY_IF,
    MAP_NEIGH,
    MAP_VLANS,
    MAP_VTEPS,
    MAP_CONFIG,
    MAP_COUNTERS,
];

/// Where the agent pins maps and links by default; a node's state lives below it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/rama";

const _: () = {
    let mut i = 0;
    while i < PROGRAMS.len() {
        assert!(PROGRAMS[i].len() <= 15);
        i += 1;
    }
    let mut i = 0;
    while i < MAPS.len() {
        assert!(MAPS[i].len() <= 15);
        i += 1;
    }
};
