//! The kernel/user-space boundary of Rama's eBPF datapath.
//!
//! Everything in here is read by the eBPF programs (`rama-ebpf`) *and* written by the
//! agent, so each type is `#[repr(C)]`, `Copy`, with explicit padding, no `bool`, byte
//! order stated in the field name where it is not plain bytes, and a compile-time size
//! check. Changing a layout changes the pinned maps' ABI: bump [`ABI_VERSION`].
#![no_std]

pub mod counters;
pub mod names;

/// Bumped whenever a map key/value layout changes, so an agent never reuses pinned maps
/// written by an incompatible build (the pin directory carries the version).
pub const ABI_VERSION: u32 = 1;

/// VXLAN's IANA port (RFC 7348 §5).
pub const VXLAN_PORT: u16 = 4789;
/// 802.1Q TPID (IEEE 802.1Q §9.5).
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ) service tag TPID.
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;

/// The IPv4 link-local address pods use as their default gateway. The host side of
/// every pod veth owns it, so the pod's ARP for it is answered by the node's kernel.
pub const GATEWAY_V4: [u8; 4] = [169, 254, 1, 1];
/// The IPv6 link-local gateway, owned by the host side of every pod veth.
pub const GATEWAY_V6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// An IP address as a map key. IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`,
/// RFC 4291 §2.5.5.2) so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpKey {
    pub addr: [u8; 16],
}

impl IpKey {
    #[inline(always)]
    pub const fn v4(octets: [u8; 4]) -> Self {
        Self {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2],
                octets[3],
            ],
        }
    }

    #[inline(always)]
    pub const fn v6(octets: [u8; 16]) -> Self {
        Self { addr: octets }
    }

    #[inline(always)]
    pub const fn is_v4(&self) -> bool {
        let a = &self.addr;
        a[0] == 0
            && a[1] == 0
            && a[2] == 0
            && a[3] == 0
            && a[4] == 0
            && a[5] == 0
            && a[6] == 0
            && a[7] == 0
            && a[8] == 0
            && a[9] == 0
            && a[10] == 0xff
            && a[11] == 0xff
    }

    /// The LPM prefix length of `prefix_len` bits of this family's address.
    #[inline(always)]
    pub const fn lpm_bits(&self, prefix_len: u32) -> u32 {
        if self.is_v4() {
            prefix_len + 96
        } else {
            prefix_len
        }
    }
}

/// Endpoint flags (`Endpoint::flags`, `RemoteEndpoint::flags`, `SubnetInfo::flags`).
pub mod flags {
    /// On a VLAN underlay network: forwarded tagged on the uplink.
    pub const UNDERLAY: u32 = 1 << 0;
    /// On the VXLAN overlay network.
    pub const OVERLAY: u32 = 1 << 1;
    /// The endpoint has an IPv4 address (`Endpoint::ipv4`).
    pub const HAS_V4: u32 = 1 << 2;
    /// The endpoint has an IPv6 address (`Endpoint::ipv6`).
    pub const HAS_V6: u32 = 1 << 3;
    /// `SubnetInfo::gateway_mac` holds a resolved MAC.
    pub const GATEWAY_MAC_KNOWN: u32 = 1 << 4;
    /// `RemoteEndpoint::vtep` is an IPv6 address.
    pub const VTEP_V6: u32 = 1 << 5;
}

/// A pod on this node. Value of `RAMA_ENDPOINTS` (by pod IP) and `RAMA_EP_BY_IF` (by
/// the host-side veth's ifindex, for anti-spoofing).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host-side veth.
    pub ifindex: u32,
    pub flags: u32,
    /// The pod's own MAC (`eth0` inside the pod).
    pub mac: [u8; 6],
    /// The host-side veth's MAC: the pod's gateway MAC.
    pub host_mac: [u8; 6],
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
}

/// A pod on another node. Value of `RAMA_REMOTES`, keyed by the pod's IP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteEndpoint {
    /// The node's VTEP address, IPv4-mapped unless `VTEP_V6`.
    pub vtep: [u8; 16],
    /// The MAC of the node's VXLAN device (inner destination MAC).
    pub vtep_mac: [u8; 6],
    /// The node's uplink MAC: where same-VLAN frames for this pod go, since each node
    /// answers ARP/ND for its own underlay pods.
    pub node_mac: [u8; 6],
    /// Subnet id (`SubnetInfo::id`), to tell a same-subnet peer from a routed one.
    pub subnet_id: u32,
    pub flags: u32,
    pub vlan: u16,
    pub _pad: [u8; 2],
}

/// A cluster subnet. Value of the `RAMA_SUBNETS` LPM trie keyed by prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubnetInfo {
    pub id: u32,
    pub flags: u32,
    /// VNI for overlay subnets.
    pub vni: u32,
    /// 802.1Q VLAN id for underlay subnets (0 = untagged).
    pub vlan: u16,
    /// The physical gateway's MAC on that VLAN, valid with `GATEWAY_MAC_KNOWN`.
    pub gateway_mac: [u8; 6],
}

/// Key of `RAMA_NEIGH`: a host on an underlay VLAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NeighKey {
    pub addr: [u8; 16],
    pub vlan: u16,
    pub _pad: [u8; 2],
}

/// Value of `RAMA_NEIGH`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The node itself; the only entry of `RAMA_CONFIG` (index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub uplink_ifindex: u32,
    /// The collect-metadata VXLAN device (0 = no overlay on this node).
    pub vxlan_ifindex: u32,
    /// The overlay network's VNI (one overlay network per cluster, as in Hybridnet).
    pub vni: u32,
    pub flags: u32,
    pub uplink_mac: [u8; 6],
    /// MAC of this node's VXLAN device: the inner source MAC of frames we encapsulate.
    pub vtep_mac: [u8; 6],
}

// Sizes are part of the ABI with the eBPF object; check them at compile time.
const _: () = assert!(core::mem::size_of::<IpKey>() == 16);
const _: () = assert!(core::mem::size_of::<Endpoint>() == 40);
const _: () = assert!(core::mem::size_of::<RemoteEndpoint>() == 40);
const _: () = assert!(core::mem::size_of::<SubnetInfo>() == 20);
const _: () = assert!(core::mem::size_of::<NeighKey>() == 20);
const _: () = assert!(core::mem::size_of::<NeighEntry>() == 8);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 28);
const _: () = assert!(core::mem::size_of::<counters::Counter>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, with every padding byte an explicit field,
    // so any bit pattern is a valid value and no uninitialised byte is ever read.
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::RemoteEndpoint {}
    unsafe impl aya::Pod for super::SubnetInfo {}
    unsafe impl aya::Pod for super::NeighKey {}
    unsafe impl aya::Pod for super::NeighEntry {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::counters::Counter {}
}
