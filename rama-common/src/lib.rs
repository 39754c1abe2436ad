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

    /// The length in bits, in this 16-byte form, of a `prefix_len`-bit prefix of
    /// this address's family.
    #[inline(always)]
    pub const fn prefix_bits(&self, prefix_len: u32) -> u32 {
        if self.is_v4() {
            prefix_len + 96
        } else {
            prefix_len
        }
    }

    /// Whether this address lies in `prefix`/`bits` (both in the 16-byte form).
    /// Written with two 64-bit halves: BPF has no 128-bit shifts.
    #[inline(always)]
    pub fn in_prefix(&self, prefix: &[u8; 16], bits: u32) -> bool {
        let half = |b: &[u8; 16], i: usize| {
            u64::from_be_bytes([
                b[i],
                b[i + 1],
                b[i + 2],
                b[i + 3],
                b[i + 4],
                b[i + 5],
                b[i + 6],
                b[i + 7],
            ])
        };
        let (ah, al) = (half(&self.addr, 0), half(&self.addr, 8));
        let (ph, pl) = (half(prefix, 0), half(prefix, 8));
        if bits == 0 {
            true
        } else if bits <= 64 {
            (ah & (u64::MAX << (64 - bits))) == ph
        } else if bits <= 128 {
            ah == ph && (al & (u64::MAX << (128 - bits))) == pl
        } else {
            false
        }
    }
}

/// Flags of [`Endpoint::flags`], [`LocalPod::flags`] and [`PodSubnet::flags`].
pub mod flags {
    /// On a VLAN underlay network: forwarded tagged on the uplink.
    pub const UNDERLAY: u32 = 1 << 0;
    /// On the VXLAN overlay network.
    pub const OVERLAY: u32 = 1 << 1;
    /// The pod has an IPv4 address (`LocalPod::ipv4`).
    pub const HAS_V4: u32 = 1 << 2;
    /// The pod has an IPv6 address (`LocalPod::ipv6`).
    pub const HAS_V6: u32 = 1 << 3;
    /// `PodSubnet::gateway_mac` holds a resolved MAC.
    pub const GATEWAY_MAC_KNOWN: u32 = 1 << 4;
    /// `Endpoint::vtep` is an IPv6 address.
    pub const VTEP_V6: u32 = 1 << 5;
    /// The endpoint is a pod on this node (`Endpoint::ifindex`, `mac`, `host_mac`).
    pub const LOCAL: u32 = 1 << 6;
}

/// A pod address, on this node or another. Value of `RAMA_ENDPOINTS`, keyed by the
/// address: one lookup answers "where does this destination live", local or remote.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `LOCAL`, `UNDERLAY`/`OVERLAY`, `VTEP_V6`.
    pub flags: u32,
    /// Local: the host-side veth.
    pub ifindex: u32,
    /// The subnet of this address (ids are the agent's, stable per state).
    pub subnet_id: u32,
    /// Underlay: the subnet's 802.1Q VLAN id.
    pub vlan: u16,
    pub _pad: [u8; 2],
    /// Local: the pod's own MAC (`eth0` inside the pod).
    pub mac: [u8; 6],
    /// Local: the host-side veth's MAC, the pod's gateway MAC.
    pub host_mac: [u8; 6],
    /// Remote: the MAC of the hosting node's VXLAN device (inner destination MAC).
    pub vtep_mac: [u8; 6],
    /// Remote: the hosting node's uplink MAC, where same-VLAN frames for the pod go
    /// (each node answers ARP/ND for its own underlay pods).
    pub node_mac: [u8; 6],
    /// Remote: the hosting node's VTEP address, IPv4-mapped unless `VTEP_V6`.
    pub vtep: [u8; 16],
}

/// The subnet of one of a local pod's addresses, with what its traffic needs on the
/// way out: the VLAN, the gateway MAC, and the prefix (to tell on-link neighbours).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodSubnet {
    pub id: u32,
    /// `GATEWAY_MAC_KNOWN`.
    pub flags: u32,
    /// The network address in `IpKey` form.
    pub prefix: [u8; 16],
    /// Prefix length in bits of the 16-byte form (IPv4 prefixes are +96).
    pub prefix_len: u32,
    pub vlan: u16,
    pub gateway_mac: [u8; 6],
}

impl PodSubnet {
    /// The subnet of an address family a pod does not have.
    pub const NONE: Self = Self {
        id: 0,
        flags: 0,
        prefix: [0; 16],
        prefix_len: 0,
        vlan: 0,
        gateway_mac: [0; 6],
    };
}

/// A pod on this node, by the ifindex of its host-side veth: what it may send as
/// (anti-spoofing) and the subnets its traffic leaves through. Value of `RAMA_EP_BY_IF`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPod {
    /// `UNDERLAY`/`OVERLAY`, `HAS_V4`, `HAS_V6`.
    pub flags: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    pub ipv4: [u8; 4],
    pub ipv6: [u8; 16],
    pub subnet_v4: PodSubnet,
    pub subnet_v6: PodSubnet,
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
const _: () = assert!(core::mem::size_of::<Endpoint>() == 56);
const _: () = assert!(core::mem::size_of::<PodSubnet>() == 36);
const _: () = assert!(core::mem::size_of::<LocalPod>() == 104);
const _: () = assert!(core::mem::size_of::<NeighKey>() == 20);
const _: () = assert!(core::mem::size_of::<NeighEntry>() == 8);
const _: () = assert!(core::mem::size_of::<NodeConfig>() == 28);
const _: () = assert!(core::mem::size_of::<counters::Counter>() == 16);

#[cfg(test)]
mod tests {
    use super::IpKey;

    #[test]
    fn prefixes_match_by_bits() {
        let a = IpKey::v4([10, 100, 0, 10]);
        let net = IpKey::v4([10, 100, 0, 0]);
        assert!(a.in_prefix(&net.addr, a.prefix_bits(24)));
        assert!(!a.in_prefix(&IpKey::v4([10, 101, 0, 0]).addr, a.prefix_bits(24)));
        assert!(a.in_prefix(&a.addr, a.prefix_bits(32)));
        let v6 = IpKey::v6([0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        let net6 = IpKey::v6([0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(v6.in_prefix(&net6.addr, 64));
        assert!(v6.in_prefix(&net6.addr, 120));
        assert!(!v6.in_prefix(&net6.addr, 128));
        assert!(v6.in_prefix(&[0; 16], 0));
        assert!(!v6.in_prefix(&[0; 16], 129));
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), Copy, with every padding byte an explicit field,
    // so any bit pattern is a valid value and no uninitialised byte is ever read.
    unsafe impl aya::Pod for super::IpKey {}
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::PodSubnet {}
    unsafe impl aya::Pod for super::LocalPod {}
    unsafe impl aya::Pod for super::NeighKey {}
    unsafe impl aya::Pod for super::NeighEntry {}
    unsafe impl aya::Pod for super::NodeConfig {}
    unsafe impl aya::Pod for super::counters::Counter {}
}
