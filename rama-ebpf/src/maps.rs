//! The maps. Each is pinned by name under the agent's pin directory so forwarding state
//! survives an agent restart; `max_entries` here are defaults the agent overrides at
//! load time (EbpfLoader::set_max_entries).
//!
//! The hot path makes at most two hash lookups per packet: the sending pod by ifindex
//! (`RAMA_EP_BY_IF`, which also carries its subnets) and the destination by address
//! (`RAMA_ENDPOINTS`, local and remote pods in one map).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use rama_common::{
    Endpoint, IpKey, LocalPod, NeighEntry, NeighKey, NodeConfig,
    counters::{COUNTER_SLOTS, Counter, Program, Reason, slot},
    flags,
};

#[map]
pub static RAMA_ENDPOINTS: HashMap<IpKey, Endpoint> = HashMap::pinned(67584, 0);

#[map]
pub static RAMA_EP_BY_IF: HashMap<u32, LocalPod> = HashMap::pinned(1024, 0);

#[map]
pub static RAMA_NEIGH: LruHashMap<NeighKey, NeighEntry> = LruHashMap::pinned(4096, 0);

/// Indexed by VLAN id (0–4095); non-zero when this node serves the VLAN. An array so
/// the XDP pre-filter's lookup is inlined by the JIT.
#[map]
pub static RAMA_VLANS: Array<u32> = Array::pinned(4096, 0);

#[map]
pub static RAMA_VTEPS: HashMap<IpKey, u32> = HashMap::pinned(4096, 0);

#[map]
pub static RAMA_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map]
pub static RAMA_COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

#[inline(always)]
pub fn count(program: Program, reason: Reason, bytes: u32) {
    if let Some(counter) = RAMA_COUNTERS.get_ptr_mut(slot(program, reason)) {
        // SAFETY: a per-CPU slot is only ever touched by this CPU, with preemption off.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += u64::from(bytes);
        }
    }
}

// Lookups hand out references into map memory rather than copies: the programs read
// only a few fields of each value, and copying 56–104 bytes per packet showed up in the
// per-packet cost.

#[inline(always)]
pub fn config() -> Result<&'static NodeConfig, Reason> {
    RAMA_CONFIG
        .get(0)
        .filter(|c| c.uplink_ifindex != 0)
        .ok_or(Reason::DropNoConfig)
}

/// The pod that owns `addr`, on this node or another.
#[inline(always)]
pub fn endpoint(addr: &IpKey) -> Option<&'static Endpoint> {
    // SAFETY: entries are replaced whole by the agent; a torn read of one entry can at
    // worst misdirect one packet during an update, as with any hash map datapath.
    unsafe { RAMA_ENDPOINTS.get(addr) }
}

/// The pod on this node that owns `addr`.
#[inline(always)]
pub fn local_endpoint(addr: &IpKey) -> Option<&'static Endpoint> {
    endpoint(addr).filter(|e| e.flags & flags::LOCAL != 0)
}

#[inline(always)]
pub fn pod_by_ifindex(ifindex: u32) -> Option<&'static LocalPod> {
    // SAFETY: as for `endpoint`.
    unsafe { RAMA_EP_BY_IF.get(ifindex) }
}

#[inline(always)]
pub fn neighbour(addr: &IpKey, vlan: u16) -> Option<NeighEntry> {
    let key = NeighKey {
        addr: addr.addr,
        vlan,
        _pad: [0; 2],
    };
    // SAFETY: as for `endpoint`.
    unsafe { RAMA_NEIGH.get(key).copied() }
}

/// Records where `addr` lives on `vlan`. Only written when it changed: an LRU insert
/// costs far more than a lookup, and ARP/ND repeats itself.
#[inline(always)]
pub fn learn_neighbour(addr: &IpKey, vlan: u16, mac: [u8; 6]) {
    if neighbour(addr, vlan).is_some_and(|n| n.mac == mac) {
        return;
    }
    let key = NeighKey {
        addr: addr.addr,
        vlan,
        _pad: [0; 2],
    };
    let entry = NeighEntry { mac, _pad: [0; 2] };
    // A full LRU evicts the oldest entry; failure to learn only costs a trip through
    // the gateway, so the result is deliberately ignored.
    let _ = RAMA_NEIGH.insert(key, entry, 0);
}

#[inline(always)]
pub fn serves_vlan(vlan: u16) -> bool {
    RAMA_VLANS.get(u32::from(vlan)).is_some_and(|v| *v != 0)
}

#[inline(always)]
pub fn is_vtep(addr: &IpKey) -> bool {
    RAMA_VTEPS.get_ptr(addr).is_some()
}
