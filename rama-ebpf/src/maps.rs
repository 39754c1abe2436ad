//! The maps. Each is pinned by name under the agent's pin directory so forwarding state
//! survives an agent restart; `max_entries` here are defaults the agent overrides at
//! load time (EbpfLoader::set_max_entries).
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, lpm_trie::Key},
};
use rama_common::{
    Endpoint, IpKey, NeighEntry, NeighKey, NodeConfig, RemoteEndpoint, SubnetInfo,
    counters::{COUNTER_SLOTS, Counter, Program, Reason, slot},
};

#[map]
pub static RAMA_ENDPOINTS: HashMap<IpKey, Endpoint> = HashMap::pinned(2048, 0);

#[map]
pub static RAMA_EP_BY_IF: HashMap<u32, Endpoint> = HashMap::pinned(1024, 0);

#[map]
pub static RAMA_REMOTES: HashMap<IpKey, RemoteEndpoint> = HashMap::pinned(65536, 0);

#[map]
pub static RAMA_SUBNETS: LpmTrie<[u8; 16], SubnetInfo> = LpmTrie::pinned(1024, 0);

#[map]
pub static RAMA_NEIGH: LruHashMap<NeighKey, NeighEntry> = LruHashMap::pinned(4096, 0);

#[map]
pub static RAMA_VLANS: HashMap<u16, u32> = HashMap::pinned(4096, 0);

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

#[inline(always)]
pub fn config() -> Result<NodeConfig, Reason> {
    RAMA_CONFIG
        .get(0)
        .copied()
        .filter(|c| c.uplink_ifindex != 0)
        .ok_or(Reason::DropNoConfig)
}

#[inline(always)]
pub fn local_endpoint(addr: &IpKey) -> Option<Endpoint> {
    // SAFETY: entries are replaced whole by the agent; a torn read of one entry can at
    // worst misdirect one packet during an update, as with any hash map datapath.
    unsafe { RAMA_ENDPOINTS.get(addr).copied() }
}

#[inline(always)]
pub fn remote_endpoint(addr: &IpKey) -> Option<RemoteEndpoint> {
    // SAFETY: as for `local_endpoint`.
    unsafe { RAMA_REMOTES.get(addr).copied() }
}

#[inline(always)]
pub fn endpoint_by_ifindex(ifindex: u32) -> Option<Endpoint> {
    // SAFETY: as for `local_endpoint`.
    unsafe { RAMA_EP_BY_IF.get(ifindex).copied() }
}

#[inline(always)]
pub fn subnet_of(addr: &IpKey) -> Option<SubnetInfo> {
    RAMA_SUBNETS.get(Key::new(128, addr.addr)).copied()
}

#[inline(always)]
pub fn neighbour(addr: &IpKey, vlan: u16) -> Option<NeighEntry> {
    let key = NeighKey {
        addr: addr.addr,
        vlan,
        _pad: [0; 2],
    };
    // SAFETY: as for `local_endpoint`.
    unsafe { RAMA_NEIGH.get(key).copied() }
}

#[inline(always)]
pub fn learn_neighbour(addr: &IpKey, vlan: u16, mac: [u8; 6]) {
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
    RAMA_VLANS.get_ptr(vlan).is_some()
}

#[inline(always)]
pub fn is_vtep(addr: &IpKey) -> bool {
    RAMA_VTEPS.get_ptr(addr).is_some()
}
