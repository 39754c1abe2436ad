//! Per-CPU counters: one `Counter` per (program, reason) in `RAMA_COUNTERS`.

/// Packets and bytes, summed over CPUs by the agent at read time; never reset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

/// The program that counted.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Program {
    PodEgress = 0,
    UplinkIngress = 1,
    UplinkXdp = 2,
    VxlanIngress = 3,
}

impl Program {
    pub const ALL: [Program; 4] = [
        Program::PodEgress,
        Program::UplinkIngress,
        Program::UplinkXdp,
        Program::VxlanIngress,
    ];

    /// Label value for metrics.
    pub const fn label(self) -> &'static str {
        match self {
            Program::PodEgress => "pod_egress",
            Program::UplinkIngress => "uplink_ingress",
            Program::UplinkXdp => "uplink_xdp",
            Program::VxlanIngress => "vxlan_ingress",
        }
    }
}

/// What a program did with a packet, and why. Values below `DROP_BASE` are forwarding
/// actions; the rest are drop reasons.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Handed to the kernel stack (not ours, or the kernel does it better: ND/ARP for
    /// the pod gateway, masquerade for overlay egress, routing for the node).
    PassStack = 0,
    /// Redirected to a pod veth on this node.
    RedirectLocal = 1,
    /// 802.1Q tag pushed, redirected to the uplink.
    RedirectVlan = 2,
    /// Tunnel key set, redirected to the VXLAN device.
    RedirectVxlan = 3,
    /// Answered an ARP request for a local underlay pod on its VLAN.
    ArpReply = 4,
    /// Answered an IPv6 neighbour solicitation for a local underlay pod on its VLAN.
    NdReply = 5,
    /// The next hop's MAC is not known yet: handed to the stack.
    NeighMiss = 6,
    /// TTL/hop limit would expire: handed to the stack, which sends ICMP.
    TtlExpired = 7,
    /// Source MAC is not the pod's.
    DropSpoofMac = 8,
    /// Source IP is not the pod's.
    DropSpoofIp = 9,
    /// ARP sender is not the pod's IP/MAC.
    DropSpoofArp = 10,
    /// Header truncated or malformed.
    DropMalformed = 11,
    /// Traffic from a veth that is not a known endpoint.
    DropNoEndpoint = 12,
    /// Tagged frame for a VLAN this node does not serve.
    DropVlanUnknown = 13,
    /// VXLAN from an address that is not a cluster VTEP, or an inner source that does
    /// not live behind the sending VTEP.
    DropVtepUnknown = 14,
    /// VXLAN frame with a VNI this node does not serve.
    DropVniMismatch = 15,
    /// A kernel helper failed (redirect, VLAN push, tunnel key).
    DropHelper = 16,
    /// `RAMA_CONFIG` is empty: the agent has not configured this node yet.
    DropNoConfig = 17,
    /// A tagged frame for a pod on another VLAN than the pod's own.
    DropVlanMismatch = 18,
}

/// First drop reason.
pub const DROP_BASE: u32 = Reason::DropSpoofMac as u32;
pub const REASON_COUNT: u32 = 19;
pub const PROGRAM_COUNT: u32 = 4;
/// Entries of `RAMA_COUNTERS`.
pub const COUNTER_SLOTS: u32 = REASON_COUNT * PROGRAM_COUNT;

impl Reason {
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::PassStack,
        Reason::RedirectLocal,
        Reason::RedirectVlan,
        Reason::RedirectVxlan,
        Reason::ArpReply,
        Reason::NdReply,
        Reason::NeighMiss,
        Reason::TtlExpired,
        Reason::DropSpoofMac,
        Reason::DropSpoofIp,
        Reason::DropSpoofArp,
        Reason::DropMalformed,
        Reason::DropNoEndpoint,
        Reason::DropVlanUnknown,
        Reason::DropVtepUnknown,
        Reason::DropVniMismatch,
        Reason::DropHelper,
        Reason::DropNoConfig,
        Reason::DropVlanMismatch,
    ];

    pub const fn is_drop(self) -> bool {
        self as u32 >= DROP_BASE
    }

    /// Label value for metrics and the inspect CLI.
    pub const fn label(self) -> &'static str {
        match self {
            Reason::PassStack => "pass_stack",
            Reason::RedirectLocal => "redirect_local",
            Reason::RedirectVlan => "redirect_vlan",
            Reason::RedirectVxlan => "redirect_vxlan",
            Reason::ArpReply => "arp_reply",
            Reason::NdReply => "nd_reply",
            Reason::NeighMiss => "neigh_miss",
            Reason::TtlExpired => "ttl_expired",
            Reason::DropSpoofMac => "spoofed_mac",
            Reason::DropSpoofIp => "spoofed_ip",
            Reason::DropSpoofArp => "spoofed_arp",
            Reason::DropMalformed => "malformed",
            Reason::DropNoEndpoint => "no_endpoint",
            Reason::DropVlanUnknown => "vlan_unknown",
            Reason::DropVtepUnknown => "vtep_unknown",
            Reason::DropVniMismatch => "vni_mismatch",
            Reason::DropHelper => "helper_failed",
            Reason::DropNoConfig => "no_config",
            Reason::DropVlanMismatch => "vlan_mismatch",
        }
    }
}

/// Index of (program, reason) in `RAMA_COUNTERS`.
#[inline(always)]
pub const fn slot(program: Program, reason: Reason) -> u32 {
    program as u32 * REASON_COUNT + reason as u32
}

const _: () = assert!(Reason::ALL.len() == REASON_COUNT as usize);
const _: () = assert!(Program::ALL.len() == PROGRAM_COUNT as usize);
