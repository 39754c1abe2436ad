//! Rama's IP address management, as a pure library: no I/O, no clock. The controller
//! (Kubernetes store) and the standalone store feed it the Networks, Subnets and
//! existing allocations, ask it for addresses, and persist what it decides.
//!
//! Semantics follow the original Rama/Hybridnet model:
//! - a subnet's addresses run from `start` to `end` (default: the whole CIDR less the
//!   network address, and for IPv4 the broadcast address); the gateway and
//!   `excludeIPs` are never handed out; `reservedIPs` only when a pod asks for them;
//! - subnets are shared by every workload unless `private`, in which case only pods
//!   that name them get addresses from them;
//! - addresses are handed out round-robin from after the last one allocated
//!   (`lastAllocatedIP`, which survives restarts), so a released address is not
//!   reused at once;
//! - a StatefulSet pod with `ip-retain` keeps its addresses when it goes away; the pod
//!   of the same name gets them back, on any node of the Network; `ip-pool` pins an
//!   address per ordinal.
mod ranges;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::IpNet;
pub use ranges::RangeSet;
use serde::{Deserialize, Serialize};

/// Everything the IPAM refuses, naming the object and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("subnet {subnet:?}: {field} {detail}")]
    InvalidSubnet {
        subnet: String,
        field: &'static str,
        detail: String,
    },
    #[error("subnet {0:?} is defined twice")]
    DuplicateSubnet(String),
    #[error("subnets {0:?} and {1:?} overlap")]
    OverlappingSubnets(String, String),
    #[error("subnet {subnet:?} names network {network:?}, which does not exist")]
    UnknownNetworkOfSubnet { subnet: String, network: String },
    #[error("network {0:?} does not exist")]
    UnknownNetwork(String),
    #[error("subnet {0:?} does not exist")]
    UnknownSubnet(String),
    #[error("subnet {subnet:?} belongs to network {actual:?}, not {requested:?}")]
    SubnetNotInNetwork {
        subnet: String,
        requested: String,
        actual: String,
    },
    #[error("network {network:?} is not available on node {node:?}")]
    NetworkNotOnNode { network: String, node: String },
    #[error("no {family} subnet with free addresses in {scope}")]
    Exhausted { family: Family, scope: String },
    #[error("{ip} is in no subnet of {scope}")]
    AddressOutsideSubnets { ip: IpAddr, scope: String },
    #[error("{ip} cannot be allocated in subnet {subnet:?}: {reason}")]
    AddressUnavailable {
        ip: IpAddr,
        subnet: String,
        reason: &'static str,
    },
    #[error("{ip} is already allocated to {owner}")]
    AddressInUse { ip: IpAddr, owner: PodKey },
    #[error("ip-pool has {len} entries, none for ordinal {ordinal}")]
    PoolTooShort { len: usize, ordinal: u32 },
    #[error("pod {0} already has addresses")]
    AlreadyAllocated(PodKey),
    #[error("{0}")]
    InvalidRequest(String),
}

pub type Result<T, E = IpamError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

impl Family {
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Which families a pod asks for (`ip-family`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IpFamilies {
    #[default]
    V4,
    V6,
    DualStack,
}

impl IpFamilies {
    fn families(self) -> &'static [Family] {
        match self {
            IpFamilies::V4 => &[Family::V4],
            IpFamilies::V6 => &[Family::V6],
            IpFamilies::DualStack => &[Family::V4, Family::V6],
        }
    }
}

/// Network types (`network-type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkType {
    Underlay,
    Overlay,
}

/// A Network as the IPAM needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    pub name: String,
    pub network_type: NetworkType,
}

/// A Subnet as the IPAM needs it (the CRD's `range` and `config.private`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SubnetSpec {
    pub name: String,
    pub network: String,
    pub cidr: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub start: Option<IpAddr>,
    pub end: Option<IpAddr>,
    pub reserved_ips: Vec<IpAddr>,
    pub excluded_ips: Vec<IpAddr>,
    pub private: bool,
}

/// A pod, by namespace and name (StatefulSet pods keep their name across recreation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Binding {
    /// In use by a running pod on `node`.
    Bound { node: String },
    /// Kept for a StatefulSet pod that went away (`ip-retain`).
    Retained,
}

/// One allocated address (one IPInstance).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: IpAddr,
    pub subnet: String,
    pub network: String,
    pub pod: PodKey,
    pub binding: Binding,
    /// A StatefulSet pod that asked to keep its addresses.
    pub retain: bool,
}

/// What a pod asks for (from its own and its namespace's annotations).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub pod: Option<PodKey>,
    pub node: String,
    /// The Networks the node belongs to (Underlay networks select nodes).
    pub node_networks: Vec<String>,
    pub network_type: Option<NetworkType>,
    pub network: Option<String>,
    /// `specified-subnet`: at most one per family.
    pub subnets: Vec<String>,
    pub families: IpFamilies,
    /// Specified addresses (at most one per family).
    pub ips: Vec<IpAddr>,
    /// StatefulSet pods: keep the addresses across recreation (`ip-retain`).
    pub retain: bool,
    /// `ip-pool` with this pod's StatefulSet ordinal.
    pub pool: Option<(Vec<IpAddr>, u32)>,
}

/// Address counts of a subnet (Subnet status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub total: u128,
    pub used: u128,
    pub available: u128,
    pub last_allocated: Option<IpAddr>,
}

#[derive(Clone, Debug)]
struct Pool {
    spec: SubnetSpec,
    cidr: IpNet,
    family: Family,
    /// Addresses that can be handed out automatically right now.
    free: RangeSet,
    /// Every address of the range that is not gateway/excluded (reserved included).
    total: u128,
    /// Reserved addresses: handed out only when asked for by address.
    reserved: RangeSet,
    cursor: Option<u128>,
}

fn to_int(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn from_int(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl Pool {
    fn new(spec: SubnetSpec) -> Result<Self> {
        let bad = |field: &'static str, detail: String| IpamError::InvalidSubnet {
            subnet: spec.name.clone(),
            field,
            detail,
        };
        let cidr = spec
            .cidr
            .ok_or_else(|| bad("range.cidr", "is missing".into()))?;
        if cidr.trunc() != cidr {
            return Err(bad(
                "range.cidr",
                format!("{cidr} is not canonical (did you mean {}?)", cidr.trunc()),
            ));
        }
        let family = Family::of(&cidr.addr());
        let inside = |field: &'static str, ip: &IpAddr| {
            if cidr.contains(ip) {
                Ok(())
            } else {
                Err(bad(field, format!("{ip} is outside range.cidr {cidr}")))
            }
        };
        if let Some(gw) = &spec.gateway {
            inside("range.gateway", gw)?;
        }
        let net = to_int(&cidr.network());
        let last = to_int(&cidr.broadcast());
        // The network address is never a host; nor is IPv4's broadcast (RFC 919),
        // except in /31 and /32 (RFC 3021).
        let (default_lo, default_hi) = match family {
            Family::V4 if cidr.prefix_len() >= 31 => (net, last),
            Family::V4 => (net + 1, last - 1),
            Family::V6 if cidr.prefix_len() == 128 => (net, last),
            Family::V6 => (net + 1, last),
        };
        let lo = match &spec.start {
            Some(s) => {
                inside("range.start", s)?;
                to_int(s)
            }
            None => default_lo,
        };
        let hi = match &spec.end {
            Some(e) => {
                inside("range.end", e)?;
                to_int(e)
            }
            None => default_hi,
        };
        if lo > hi {
            return Err(bad(
                "range.start",
                format!(
                    "{} is after range.end {}",
                    from_int(family, lo),
                    from_int(family, hi)
                ),
            ));
        }
        let mut free = RangeSet::new();
        free.insert_range(lo, hi);
        if let Some(gw) = &spec.gateway {
            free.remove(to_int(gw));
        }
        for ip in &spec.excluded_ips {
            inside("range.excludeIPs", ip)?;
            free.remove(to_int(ip));
        }
        let mut reserved = RangeSet::new();
        for ip in &spec.reserved_ips {
            inside("range.reservedIPs", ip)?;
            if free.remove(to_int(ip)) {
                reserved.insert(to_int(ip));
            }
        }
        let total = free.len() + reserved.len();
        Ok(Self {
            spec,
            cidr,
            family,
            free,
            total,
            reserved,
            cursor: None,
        })
    }

    /// Takes the next free address after the cursor, wrapping around.
    fn take_next(&mut self) -> Option<IpAddr> {
        let after = self.cursor.map_or(0, |c| c.saturating_add(1));
        let v = self
            .free
            .first_at_or_after(after)
            .or_else(|| self.free.first())?;
        self.free.remove(v);
        self.cursor = Some(v);
        Some(from_int(self.family, v))
    }

    /// Takes a specific address: free, or reserved (asked for by address).
    fn take(&mut self, ip: &IpAddr) -> Result<()> {
        let v = to_int(ip);
        if self.free.remove(v) || self.reserved.remove(v) {
            return Ok(());
        }
        let reason = if self.spec.gateway.as_ref() == Some(ip) {
            "it is the gateway"
        } else if self.spec.excluded_ips.contains(ip) {
            "it is excluded"
        } else {
            "it is outside range.start–range.end"
        };
        Err(IpamError::AddressUnavailable {
            ip: *ip,
            subnet: self.spec.name.clone(),
            reason,
        })
    }

    fn give_back(&mut self, ip: &IpAddr) {
        let v = to_int(ip);
        if self.spec.reserved_ips.contains(ip) {
            self.reserved.insert(v);
        } else {
            self.free.insert(v);
        }
    }
}

/// The allocator for a whole cluster (the controller) or host (standalone store).
#[derive(Clone, Debug, Default)]
pub struct Ipam {
    networks: BTreeMap<String, NetworkSpec>,
    pools: BTreeMap<String, Pool>,
    allocations: HashMap<IpAddr, Allocation>,
    /// Index of `allocations` by pod.
    by_pod: HashMap<PodKey, Vec<IpAddr>>,
    /// Allocated addresses per subnet (status counts).
    used: HashMap<String, u128>,
    /// The network type pods get when they say nothing (Hybridnet: Underlay).
    pub default_network_type: Option<NetworkType>,
}

impl Ipam {
    /// Builds the allocator from Networks and Subnets, checking every subnet.
    pub fn new(networks: Vec<NetworkSpec>, subnets: Vec<SubnetSpec>) -> Result<Self> {
        let networks: BTreeMap<String, NetworkSpec> =
            networks.into_iter().map(|n| (n.name.clone(), n)).collect();
        let mut pools = BTreeMap::new();
        for spec in subnets {
            if !networks.contains_key(&spec.network) {
                return Err(IpamError::UnknownNetworkOfSubnet {
                    subnet: spec.name,
                    network: spec.network,
                });
            }
            let name = spec.name.clone();
            let pool = Pool::new(spec)?;
            if pools.insert(name.clone(), pool).is_some() {
                return Err(IpamError::DuplicateSubnet(name));
            }
        }
        let list: Vec<&Pool> = pools.values().collect();
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                if a.cidr.contains(&b.cidr) || b.cidr.contains(&a.cidr) {
                    return Err(IpamError::OverlappingSubnets(
                        a.spec.name.clone(),
                        b.spec.name.clone(),
                    ));
                }
            }
        }
        Ok(Self {
            networks,
            pools,
            allocations: HashMap::new(),
            by_pod: HashMap::new(),
            used: HashMap::new(),
            default_network_type: Some(NetworkType::Underlay),
        })
    }

    /// Re-enters allocations read back from the store (after a restart), and the
    /// subnets' `lastAllocatedIP` cursors.
    pub fn restore(
        &mut self,
        allocations: impl IntoIterator<Item = Allocation>,
        cursors: impl IntoIterator<Item = (String, IpAddr)>,
    ) -> Result<()> {
        for a in allocations {
            if let Some(existing) = self.allocations.get(&a.ip) {
                return Err(IpamError::AddressInUse {
                    ip: a.ip,
                    owner: existing.pod.clone(),
                });
            }
            let pool = self
                .pools
                .get_mut(&a.subnet)
                .ok_or_else(|| IpamError::UnknownSubnet(a.subnet.clone()))?;
            pool.take(&a.ip)?;
            self.record(a);
        }
        for (subnet, ip) in cursors {
            if let Some(pool) = self.pools.get_mut(&subnet) {
                pool.cursor = Some(to_int(&ip));
            }
        }
        Ok(())
    }

    pub fn allocation(&self, ip: &IpAddr) -> Option<&Allocation> {
        self.allocations.get(ip)
    }

    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// The addresses held for `pod` (bound or retained), IPv4 first.
    pub fn of_pod(&self, pod: &PodKey) -> Vec<&Allocation> {
        let mut v: Vec<&Allocation> = self
            .by_pod
            .get(pod)
            .into_iter()
            .flatten()
            .filter_map(|ip| self.allocations.get(ip))
            .collect();
        v.sort_by_key(|a| (Family::of(&a.ip), a.ip));
        v
    }

    fn record(&mut self, a: Allocation) {
        self.by_pod.entry(a.pod.clone()).or_default().push(a.ip);
        *self.used.entry(a.subnet.clone()).or_default() += 1;
        self.allocations.insert(a.ip, a);
    }

    fn forget(&mut self, ip: &IpAddr) -> Option<Allocation> {
        let a = self.allocations.remove(ip)?;
        if let Some(ips) = self.by_pod.get_mut(&a.pod) {
            ips.retain(|x| x != ip);
            if ips.is_empty() {
                self.by_pod.remove(&a.pod);
            }
        }
        if let Some(n) = self.used.get_mut(&a.subnet) {
            *n -= 1;
        }
        Some(a)
    }

    pub fn usage(&self, subnet: &str) -> Option<Usage> {
        let pool = self.pools.get(subnet)?;
        let used = self.used.get(subnet).copied().unwrap_or(0);
        Some(Usage {
            total: pool.total,
            used,
            available: pool.total - used,
            last_allocated: pool.cursor.map(|c| from_int(pool.family, c)),
        })
    }

    /// Allocates for a pod: one address per requested family, all or nothing.
    pub fn allocate(&mut self, req: &Request) -> Result<Vec<Allocation>> {
        let pod = req
            .pod
            .clone()
            .ok_or_else(|| IpamError::InvalidRequest("the request names no pod".into()))?;
        // A StatefulSet pod coming back gets what was kept for it, on any node of
        // the Network.
        let held: Vec<IpAddr> = self.of_pod(&pod).iter().map(|a| a.ip).collect();
        if !held.is_empty() {
            let retained = held
                .iter()
                .all(|ip| self.allocations[ip].binding == Binding::Retained);
            if !retained {
                return Err(IpamError::AlreadyAllocated(pod));
            }
            for ip in &held {
                let network = self.allocations[ip].network.clone();
                self.check_node(&network, req)?;
            }
            let mut out = Vec::new();
            for ip in held {
                let a = self.allocations.get_mut(&ip).expect("held address");
                a.binding = Binding::Bound {
                    node: req.node.clone(),
                };
                out.push(a.clone());
            }
            return Ok(out);
        }

        let mut wanted_ips: Vec<IpAddr> = req.ips.clone();
        if let Some((pool, ordinal)) = &req.pool {
            let ip = pool
                .get(*ordinal as usize)
                .copied()
                .ok_or(IpamError::PoolTooShort {
                    len: pool.len(),
                    ordinal: *ordinal,
                })?;
            wanted_ips.push(ip);
        }

        // Decide every address first; commit only when all are found.
        let mut picks: Vec<(String, Option<IpAddr>)> = Vec::new();
        for family in req.families.families() {
            if let Some(ip) = wanted_ips.iter().find(|ip| Family::of(ip) == *family) {
                let subnet = self.subnet_for_address(ip, req)?;
                if let Some(owner) = self.allocations.get(ip) {
                    return Err(IpamError::AddressInUse {
                        ip: *ip,
                        owner: owner.pod.clone(),
                    });
                }
                picks.push((subnet, Some(*ip)));
            } else {
                let subnet = self.pick_subnet(*family, req, picks.first().map(|p| p.0.as_str()))?;
                picks.push((subnet, None));
            }
        }
        let mut taken: Vec<(String, IpAddr)> = Vec::new();
        for (subnet, ip) in &picks {
            let pool = self.pools.get_mut(subnet).expect("picked subnet exists");
            let result = match ip {
                Some(ip) => pool.take(ip).map(|()| *ip),
                None => pool.take_next().ok_or_else(|| IpamError::Exhausted {
                    family: pool.family,
                    scope: format!("subnet {subnet:?}"),
                }),
            };
            match result {
                Ok(ip) => taken.push((subnet.clone(), ip)),
                Err(e) => {
                    for (s, ip) in taken {
                        if let Some(p) = self.pools.get_mut(&s) {
                            p.give_back(&ip);
                        }
                    }
                    return Err(e);
                }
            }
        }
        let mut out = Vec::new();
        for (subnet, ip) in taken {
            let network = self.pools[&subnet].spec.network.clone();
            let a = Allocation {
                ip,
                subnet,
                network,
                pod: pod.clone(),
                binding: Binding::Bound {
                    node: req.node.clone(),
                },
                retain: req.retain,
            };
            self.record(a.clone());
            out.push(a);
        }
        Ok(out)
    }

    /// The pod went away: its addresses go back to the pool, or are kept for it when it
    /// asked to retain them. Returns the addresses freed.
    pub fn release(&mut self, pod: &PodKey) -> Vec<IpAddr> {
        let mut freed = Vec::new();
        let ips: Vec<IpAddr> = self.of_pod(pod).iter().map(|a| a.ip).collect();
        for ip in ips {
            let retain = self.allocations[&ip].retain;
            if retain {
                self.allocations.get_mut(&ip).expect("held").binding = Binding::Retained;
            } else {
                self.free_address(&ip);
                freed.push(ip);
            }
        }
        freed
    }

    /// Frees an address whatever holds it (a retained StatefulSet address whose
    /// StatefulSet is gone, or garbage collection).
    pub fn free_address(&mut self, ip: &IpAddr) -> bool {
        let Some(a) = self.forget(ip) else {
            return false;
        };
        if let Some(pool) = self.pools.get_mut(&a.subnet) {
            pool.give_back(ip);
        }
        true
    }

    /// Checks the allocator's own consistency: every allocated address is in its
    /// subnet's range, not the gateway or an excluded address, and in neither free
    /// set; counts add up. The property tests call it after every step; a store can
    /// call it after loading.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        for (ip, a) in &self.allocations {
            let pool = self
                .pools
                .get(&a.subnet)
                .ok_or_else(|| format!("{ip} is in unknown subnet {:?}", a.subnet))?;
            let v = to_int(ip);
            if !pool.cidr.contains(ip) {
                return Err(format!("{ip} is outside {}", pool.cidr));
            }
            if pool.spec.gateway.as_ref() == Some(ip) {
                return Err(format!("the gateway {ip} is allocated"));
            }
            if pool.spec.excluded_ips.contains(ip) {
                return Err(format!("excluded {ip} is allocated"));
            }
            if pool.free.contains(v) || pool.reserved.contains(v) {
                return Err(format!("{ip} is allocated and free at once"));
            }
        }
        for (pod, ips) in &self.by_pod {
            for ip in ips {
                if self.allocations.get(ip).is_none_or(|a| &a.pod != pod) {
                    return Err(format!(
                        "index says {ip} is {pod}'s, the allocation disagrees"
                    ));
                }
            }
        }
        for (name, pool) in &self.pools {
            let used = self
                .allocations
                .values()
                .filter(|a| &a.subnet == name)
                .count() as u128;
            if self.used.get(name).copied().unwrap_or(0) != used {
                return Err(format!(
                    "subnet {name:?}: used counter disagrees ({used} real)"
                ));
            }
            let free = pool.free.len() + pool.reserved.len();
            if used + free != pool.total {
                return Err(format!(
                    "subnet {name:?}: {used} used + {free} free != {} total",
                    pool.total
                ));
            }
        }
        Ok(())
    }

    fn check_node(&self, network: &str, req: &Request) -> Result<()> {
        let spec = self
            .networks
            .get(network)
            .ok_or_else(|| IpamError::UnknownNetwork(network.into()))?;
        // Overlay networks span every node; an Underlay network only its nodes.
        if spec.network_type == NetworkType::Underlay
            && !req.node_networks.iter().any(|n| n == network)
        {
            return Err(IpamError::NetworkNotOnNode {
                network: network.into(),
                node: req.node.clone(),
            });
        }
        Ok(())
    }

    fn subnet_for_address(&self, ip: &IpAddr, req: &Request) -> Result<String> {
        let pool = self
            .pools
            .values()
            .find(|p| p.cidr.contains(ip))
            .ok_or_else(|| IpamError::AddressOutsideSubnets {
                ip: *ip,
                scope: "the cluster".into(),
            })?;
        if let Some(network) = &req.network
            && &pool.spec.network != network
        {
            return Err(IpamError::SubnetNotInNetwork {
                subnet: pool.spec.name.clone(),
                requested: network.clone(),
                actual: pool.spec.network.clone(),
            });
        }
        self.check_node(&pool.spec.network, req)?;
        Ok(pool.spec.name.clone())
    }

    /// The subnet of `family` to allocate from. `same_network_as`: the subnet picked
    /// for the other family of a dual-stack pod, whose Network this one must share.
    fn pick_subnet(
        &self,
        family: Family,
        req: &Request,
        same_network_as: Option<&str>,
    ) -> Result<String> {
        // Named subnets first (private ones only ever this way).
        for name in &req.subnets {
            let pool = self
                .pools
                .get(name)
                .ok_or_else(|| IpamError::UnknownSubnet(name.clone()))?;
            if pool.family != family {
                continue;
            }
            if let Some(network) = &req.network
                && &pool.spec.network != network
            {
                return Err(IpamError::SubnetNotInNetwork {
                    subnet: name.clone(),
                    requested: network.clone(),
                    actual: pool.spec.network.clone(),
                });
            }
            self.check_node(&pool.spec.network, req)?;
            return Ok(name.clone());
        }
        let network = match (same_network_as, &req.network) {
            (Some(subnet), _) => Some(self.pools[subnet].spec.network.clone()),
            (None, Some(n)) => {
                if !self.networks.contains_key(n) {
                    return Err(IpamError::UnknownNetwork(n.clone()));
                }
                self.check_node(n, req)?;
                Some(n.clone())
            }
            (None, None) => None,
        };
        let network_type = req.network_type.or(self.default_network_type);
        let candidates = self.pools.values().filter(|p| {
            p.family == family
                && !p.spec.private
                && !p.free.is_empty()
                && match &network {
                    Some(n) => &p.spec.network == n,
                    None => {
                        let spec = &self.networks[&p.spec.network];
                        network_type.is_none_or(|t| spec.network_type == t)
                            && self.check_node(&p.spec.network, req).is_ok()
                    }
                }
        });
        // Fill subnets in name order, as the original did.
        if let Some(pool) = candidates.into_iter().next() {
            return Ok(pool.spec.name.clone());
        }
        Err(IpamError::Exhausted {
            family,
            scope: match (&network, network_type) {
                (Some(n), _) => format!("network {n:?}"),
                (None, Some(t)) => format!("the {t:?} networks of node {:?}", req.node),
                (None, None) => format!("the networks of node {:?}", req.node),
            },
        })
    }
}
