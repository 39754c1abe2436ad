//! Well-known names and numbers, in one place. Everything Rama creates in the kernel is
//! marked with one of these so garbage collection only ever touches Rama's own objects.

/// Routes Rama installs carry this `rtm_protocol` (unassigned in iproute2's rt_protos).
pub const ROUTE_PROTOCOL: u8 = 0x52; // 'R'

/// Policy rules Rama installs live in [`RULE_PRIORITY_MIN`, `RULE_PRIORITY_MAX`].
pub const RULE_PRIORITY_MIN: u32 = 19000;
pub const RULE_PRIORITY_MAX: u32 = 19999;
/// `lookup TABLE_LOCAL` for everyone: local pods win over every subnet policy.
pub const RULE_PRIORITY_LOCAL: u32 = 19000;
/// `from <underlay subnet> lookup TABLE_HYBRID`: underlay pods reach overlay pods
/// through the overlay (the hybrid identity).
pub const RULE_PRIORITY_HYBRID: u32 = 19100;
/// `from <overlay subnet> lookup TABLE_OVERLAY`.
pub const RULE_PRIORITY_OVERLAY: u32 = 19200;
/// `from <underlay subnet> lookup TABLE_UNDERLAY_BASE + i`.
pub const RULE_PRIORITY_UNDERLAY: u32 = 19300;

/// Local pods' /32 and /128 routes via their veth.
pub const TABLE_LOCAL: u32 = 39999;
/// Overlay subnets and remote underlay pods, via the VXLAN device (for overlay pods).
pub const TABLE_OVERLAY: u32 = 40000;
/// Overlay subnets via the VXLAN device (for underlay pods).
pub const TABLE_HYBRID: u32 = 40001;
/// First per-underlay-subnet table; subnet `i` (in subnet-id order) uses base + id.
pub const TABLE_UNDERLAY_BASE: u32 = 41000;

/// The VXLAN device Rama owns on every node with overlay pods.
pub const VXLAN_DEVICE: &str = "rama.vxlan";

/// nftables table (family `inet`) Rama owns for masquerade.
pub const NFT_TABLE: &str = "rama";

/// Default capacities of the eBPF maps (overridable at load time).
pub const MAX_LOCAL_ENDPOINTS: u32 = 1024;
pub const MAX_REMOTE_ENDPOINTS: u32 = 65536;
/// Subnets a node can hold (each underlay subnet may get a route table).
pub const MAX_SUBNETS: u32 = 1024;
pub const MAX_NEIGHBOURS: u32 = 4096;
pub const MAX_NODES: u32 = 4096;
