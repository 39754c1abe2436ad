//! Kernel plumbing over rtnetlink shared by both backends: links, addresses, routes,
//! rules, neighbours and sysctls. Writes are idempotent (`replace`, or "exists" taken
//! as success); deletes take "not found" as success (netavark's habit).
pub mod probe;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use netlink_packet_route::{
    AddressFamily,
    link::{LinkAttribute, LinkMessage},
    neighbour::{NeighbourFlags, NeighbourState},
    route::{RouteAttribute, RouteMessage, RouteProtocol, RouteScope},
    rule::{RuleAttribute, RuleMessage},
};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use crate::{Error, Result, defaults, state::MacAddr};

/// A network interface as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: MacAddr,
    pub mtu: u32,
    /// IFLA_IFALIAS: Rama marks the devices it creates with it.
    pub alias: Option<String>,
    /// IFLA_INFO_KIND (`veth`, `vxlan`, `vlan`…); `None` for physical NICs.
    pub kind: Option<String>,
}

/// Which neighbour-table entries [`Netlink::neighbour_entries`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighbourKind {
    Ip,
    Proxy,
    Fdb,
}

/// What a neighbour-table entry is for: an IP, or (FDB) a MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NeighbourKey {
    Ip(IpAddr),
    Mac(MacAddr),
}

/// A connection to rtnetlink in the calling thread's network namespace.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

const ENOENT: i32 = libc::ENOENT;
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;
const ENODEV: i32 = libc::ENODEV;

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn ok_if(
    result: std::result::Result<(), rtnetlink::Error>,
    codes: &[i32],
) -> std::result::Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno(&e).is_some_and(|c| codes.contains(&c)) => Ok(()),
        other => other,
    }
}

fn rama_protocol() -> RouteProtocol {
    RouteProtocol::Other(defaults::ROUTE_PROTOCOL)
}

impl Netlink {
    /// Opens a connection; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening rtnetlink socket", e))?;
        tokio::spawn(conn);
        Ok(Self { handle })
    }

    fn link_from(msg: LinkMessage) -> Link {
        let mut link = Link {
            index: msg.header.index,
            name: String::new(),
            mac: MacAddr::default(),
            mtu: 0,
            alias: None,
            kind: None,
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) if a.len() == 6 => {
                    link.mac.0.copy_from_slice(&a);
                }
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::IfAlias(a) => link.alias = Some(a),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let netlink_packet_route::link::LinkInfo::Kind(kind) = info {
                            link.kind = Some(kind.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        link
    }

    /// The link called `name`, or `None` when there is none.
    pub async fn link(&self, name: &str) -> Result<Option<Link>> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match req.try_next().await {
            Ok(msg) => Ok(msg.map(Self::link_from)),
            Err(e) if matches!(errno(&e), Some(ENODEV) | Some(ENOENT)) => Ok(None),
            Err(e) => Err(Error::netlink(format!("looking up link {name:?}"), e)),
        }
    }

    /// Every link of the namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let mut out = Vec::new();
        let mut stream = self.handle.link().get().execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing links", e))?
        {
            out.push(Self::link_from(msg));
        }
        Ok(out)
    }

    /// The link called `name`; an error naming it when it does not exist.
    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link(name)
            .await?
            .ok_or_else(|| Error::InterfaceNotFound(name.to_owned()))
    }

    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting link #{index} up"), e))
    }

    pub async fn set_mac(&self, index: u32, mac: MacAddr) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.0.to_vec())
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting MAC of link #{index}"), e))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        ok_if(
            self.handle.link().del(index).execute().await,
            &[ENODEV, ENOENT],
        )
        .map_err(|e| Error::netlink(format!("deleting link #{index}"), e))
    }

    /// Creates a link from `msg` unless one called `name` exists; returns it, up and
    /// marked with `alias` (the kernel ignores IFLA_IFALIAS on creation, so it is set
    /// afterwards).
    pub async fn ensure_link(&self, name: &str, msg: LinkMessage, alias: &str) -> Result<Link> {
        if self.link(name).await?.is_none() {
            ok_if(self.handle.link().add(msg).execute().await, &[EEXIST])
                .map_err(|e| Error::netlink(format!("creating link {name:?}"), e))?;
        }
        let mut link = self.require_link(name).await?;
        if link.alias.as_deref() != Some(alias) {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(link.index).alias(alias).build())
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("marking link {name:?}"), e))?;
            link.alias = Some(alias.to_owned());
        }
        self.set_up(link.index).await?;
        Ok(link)
    }

    /// Creates a veth pair: `host` here, its peer `peer` directly in the network
    /// namespace `netns_fd` (as `ip link add HOST type veth peer name PEER netns NS`
    /// does), both with `mtu`. Creating the peer in place means no interface with a
    /// temporary name is ever left behind in this namespace.
    pub async fn create_veth(
        &self,
        host: &str,
        peer: &str,
        netns_fd: std::os::fd::RawFd,
        mtu: u32,
    ) -> Result<Link> {
        use netlink_packet_route::link::{InfoData, InfoVeth};
        let peer_msg = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_owned())
            .mtu(mtu)
            .setns_by_fd(netns_fd)
            .build();
        let msg = rtnetlink::LinkVeth::new(host, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("creating veth {host} (peer {peer})"), e))?;
        self.require_link(host).await
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting MTU of link #{index}"), e))
    }

    /// The addresses of a link (both families).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        use netlink_packet_route::address::AddressAttribute;
        let mut out = Vec::new();
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink(format!("listing addresses of link #{index}"), e))?
        {
            let prefix = msg.header.prefix_len;
            if let Some(ip) = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            }) && let Ok(net) = IpNet::new(ip, prefix)
            {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Adds `addr` to a link; an address already there is success.
    pub async fn ensure_address(&self, index: u32, addr: IpAddr, prefix: u8) -> Result<()> {
        let mut req = self.handle.address().add(index, addr, prefix);
        if addr.is_ipv6() {
            // No duplicate address detection: the same link-local gateway address is
            // owned by every pod veth on purpose, one per link.
            req.message_mut().attributes.push(
                netlink_packet_route::address::AddressAttribute::Flags(
                    netlink_packet_route::address::AddressFlags::Nodad,
                ),
            );
        }
        ok_if(req.execute().await, &[EEXIST])
            .map_err(|e| Error::netlink(format!("adding {addr}/{prefix} to link #{index}"), e))
    }

    /// Adds or replaces a Rama route: `dst` out of `oif` (or `via`), in `table`.
    pub async fn replace_route(
        &self,
        dst: IpNet,
        oif: u32,
        via: Option<IpAddr>,
        table: u32,
    ) -> Result<()> {
        let msg = route_message(dst, Some(oif), via, table);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("route {dst} in table {table}"), e))
    }

    /// Rama's routes in `table` (both families), as destination prefixes.
    pub async fn rama_routes(&self, table: u32) -> Result<Vec<RouteMessage>> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let filter = match version {
                IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new()
                    .table_id(table)
                    .build(),
                IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new()
                    .table_id(table)
                    .build(),
            };
            let mut stream = self.handle.route().get(filter).execute();
            while let Some(route) = stream
                .try_next()
                .await
                .map_err(|e| Error::netlink(format!("listing routes of table {table}"), e))?
            {
                if route.header.protocol == rama_protocol() && route_table(&route) == table {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// Every Rama route in every table, with its table.
    pub async fn rama_routes_all(&self) -> Result<Vec<(u32, RouteMessage)>> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            // RT_TABLE_UNSPEC (0) dumps all tables.
            let filter = match version {
                IpVersion::V4 => RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build(),
                IpVersion::V6 => RouteMessageBuilder::<Ipv6Addr>::new().table_id(0).build(),
            };
            let mut stream = self.handle.route().get(filter).execute();
            while let Some(route) = stream
                .try_next()
                .await
                .map_err(|e| Error::netlink("listing routes", e))?
            {
                if route.header.protocol == rama_protocol() {
                    out.push((route_table(&route), route));
                }
            }
        }
        Ok(out)
    }

    pub async fn delete_route(&self, route: RouteMessage) -> Result<()> {
        ok_if(
            self.handle.route().del(route).execute().await,
            &[ESRCH, ENOENT],
        )
        .map_err(|e| Error::netlink("deleting a Rama route", e))
    }

    /// Rama's policy rules (priority range and protocol mark).
    pub async fn rama_rules(&self) -> Result<Vec<RuleMessage>> {
        let mut out = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let mut stream = self.handle.rule().get(version).execute();
            while let Some(rule) = stream
                .try_next()
                .await
                .map_err(|e| Error::netlink("listing policy rules", e))?
            {
                let prio = rule.attributes.iter().find_map(|a| match a {
                    RuleAttribute::Priority(p) => Some(*p),
                    _ => None,
                });
                let ours = rule
                    .attributes
                    .iter()
                    .any(|a| matches!(a, RuleAttribute::Protocol(p) if *p == rama_protocol()));
                if ours
                    && prio.is_some_and(|p| {
                        (defaults::RULE_PRIORITY_MIN..=defaults::RULE_PRIORITY_MAX).contains(&p)
                    })
                {
                    out.push(rule);
                }
            }
        }
        Ok(out)
    }

    /// Adds each Rama rule that is not there yet (the rules are listed once).
    pub async fn ensure_rules(&self, rules: &[RuleSpec]) -> Result<()> {
        let present = self.rama_rules().await?;
        for spec in rules {
            if !present.iter().any(|r| spec.matches(r)) {
                self.add_rule(spec).await?;
            }
        }
        Ok(())
    }

    async fn add_rule(&self, spec: &RuleSpec) -> Result<()> {
        let RuleSpec {
            v6,
            priority,
            src,
            table,
        } = *spec;
        let req = self
            .handle
            .rule()
            .add()
            .priority(priority)
            .table_id(table)
            .action(netlink_packet_route::rule::RuleAction::ToTable);
        let what = format!("rule {priority}: from {src:?} lookup {table}");
        let result = if v6 {
            let mut req = req.v6();
            if let Some(IpNet::V6(net)) = src {
                req = req.source_prefix(net.network(), net.prefix_len());
            }
            req.message_mut()
                .attributes
                .push(RuleAttribute::Protocol(rama_protocol()));
            req.execute().await
        } else {
            let mut req = req.v4();
            if let Some(IpNet::V4(net)) = src {
                req = req.source_prefix(net.network(), net.prefix_len());
            }
            req.message_mut()
                .attributes
                .push(RuleAttribute::Protocol(rama_protocol()));
            req.execute().await
        };
        ok_if(result, &[EEXIST]).map_err(|e| Error::netlink(what, e))
    }

    pub async fn delete_rule(&self, rule: RuleMessage) -> Result<()> {
        ok_if(
            self.handle.rule().del(rule).execute().await,
            &[ENOENT, ESRCH],
        )
        .map_err(|e| Error::netlink("deleting a Rama rule", e))
    }

    /// A permanent neighbour entry `ip → mac` on a link.
    pub async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("neighbour {ip} on link #{index}"), e))
    }

    /// A proxy NDP entry for `ip` on a link (`ip -6 neigh add proxy`).
    pub async fn replace_proxy_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .flags(NeighbourFlags::Proxy)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("proxy neighbour {ip} on link #{index}"), e))
    }

    /// A VXLAN FDB entry: frames for `mac` go to the VTEP `dst`.
    pub async fn replace_fdb(&self, index: u32, mac: MacAddr, dst: IpAddr) -> Result<()> {
        let mut req = self
            .handle
            .neighbours()
            .add_bridge(index, &mac.0)
            .state(NeighbourState::Permanent)
            .flags(NeighbourFlags::Own)
            .replace();
        req.message_mut().attributes.push(
            netlink_packet_route::neighbour::NeighbourAttribute::Destination(match dst {
                IpAddr::V4(a) => netlink_packet_route::neighbour::NeighbourAddress::Inet(a),
                IpAddr::V6(a) => netlink_packet_route::neighbour::NeighbourAddress::Inet6(a),
            }),
        );
        req.execute()
            .await
            .map_err(|e| Error::netlink(format!("FDB {mac} → {dst} on link #{index}"), e))
    }

    /// Neighbour-table entries of one kind on a link: permanent IP neighbours, proxy
    /// entries (`ip neigh show proxy`) or VXLAN FDB entries that point at a VTEP.
    pub async fn neighbour_entries(
        &self,
        index: u32,
        kind: NeighbourKind,
    ) -> Result<
        Vec<(
            NeighbourKey,
            netlink_packet_route::neighbour::NeighbourMessage,
        )>,
    > {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        let mut req = self.handle.neighbours().get();
        match kind {
            NeighbourKind::Ip => {}
            NeighbourKind::Proxy => req = req.proxies(),
            NeighbourKind::Fdb => req = req.set_address_family(AddressFamily::Bridge),
        }
        let mut out = Vec::new();
        let mut stream = req.execute();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing neighbours", e))?
        {
            if msg.header.ifindex != index {
                continue;
            }
            let ip = msg.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
                // In AF_BRIDGE (FDB) messages the parser cannot tell the address family
                // from the header and leaves the bytes raw.
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
                    4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                    _ => None,
                },
                _ => None,
            });
            let mac = msg.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(m);
                    Some(MacAddr(mac))
                }
                _ => None,
            });
            let key = match kind {
                NeighbourKind::Ip if msg.header.state == NeighbourState::Permanent => {
                    ip.map(NeighbourKey::Ip)
                }
                NeighbourKind::Ip => None,
                NeighbourKind::Proxy if msg.header.flags.contains(NeighbourFlags::Proxy) => {
                    ip.map(NeighbourKey::Ip)
                }
                NeighbourKind::Proxy => None,
                // Only entries with a remote VTEP are Rama's (a device's own
                // multicast/default entries have none).
                NeighbourKind::Fdb if ip.is_some() => mac.map(NeighbourKey::Mac),
                NeighbourKind::Fdb => None,
            };
            if let Some(key) = key {
                out.push((key, msg));
            }
        }
        Ok(out)
    }

    pub async fn delete_neighbour(
        &self,
        msg: netlink_packet_route::neighbour::NeighbourMessage,
    ) -> Result<()> {
        ok_if(
            self.handle.neighbours().del(msg).execute().await,
            &[ENOENT, ESRCH],
        )
        .map_err(|e| Error::netlink("deleting a neighbour", e))
    }
}

fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// A Rama policy rule: `[from src] lookup table` at `priority`, for one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleSpec {
    pub v6: bool,
    pub priority: u32,
    pub src: Option<IpNet>,
    pub table: u32,
}

impl RuleSpec {
    /// Whether the kernel's `rule` is this one.
    pub fn matches(&self, rule: &RuleMessage) -> bool {
        let family = if self.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        if rule.header.family != family {
            return false;
        }
        let mut prio = None;
        let mut tbl = u32::from(rule.header.table);
        let mut source = None;
        for a in &rule.attributes {
            match a {
                RuleAttribute::Priority(p) => prio = Some(*p),
                RuleAttribute::Table(t) => tbl = *t,
                RuleAttribute::Source(s) => source = Some(*s),
                _ => {}
            }
        }
        let src_ok = match self.src {
            None => source.is_none() && rule.header.src_len == 0,
            Some(net) => source == Some(net.network()) && rule.header.src_len == net.prefix_len(),
        };
        prio == Some(self.priority) && tbl == self.table && src_ok
    }
}

/// Builds a Rama route message (protocol-marked, link scope unless via a gateway).
pub fn route_message(
    dst: IpNet,
    oif: Option<u32>,
    via: Option<IpAddr>,
    table: u32,
) -> RouteMessage {
    let scope = if via.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    match dst {
        IpNet::V4(net) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .table_id(table)
                .protocol(rama_protocol())
                .scope(scope);
            if let Some(oif) = oif {
                b = b.output_interface(oif);
            }
            if let Some(IpAddr::V4(gw)) = via {
                b = b.gateway(gw);
            }
            b.build()
        }
        IpNet::V6(net) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .table_id(table)
                .protocol(rama_protocol())
                .scope(scope);
            if let Some(oif) = oif {
                b = b.output_interface(oif);
            }
            if let Some(IpAddr::V6(gw)) = via {
                b = b.gateway(gw);
            }
            b.build()
        }
    }
}

/// The destination prefix of a route message.
pub fn route_destination(route: &RouteMessage) -> Option<IpNet> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet(a)) => {
            IpNet::new(IpAddr::V4(*a), route.header.destination_prefix_length).ok()
        }
        RouteAttribute::Destination(netlink_packet_route::route::RouteAddress::Inet6(a)) => {
            IpNet::new(IpAddr::V6(*a), route.header.destination_prefix_length).ok()
        }
        _ => None,
    })
}

/// A link's MTU by name, in this thread's network namespace, without RTNL: the
/// SIOCGIFMTU ioctl is answered under RCU (net/core/dev_ioctl.c,
/// `dev_ifsioc_locked`), while a netlink query waits for whatever holds RTNL — a TC
/// program being attached, for one, holds it through an RCU grace period.
pub fn link_mtu(name: &str) -> Result<u32> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid, empty request.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= req.ifr_name.len() {
        return Err(Error::InterfaceNotFound(name.to_owned()));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a datagram socket we close below; `req` is a valid, NUL-terminated
    // ifreq that SIOCGIFMTU fills (netdevice(7)).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(Error::io(
                "socket for SIOCGIFMTU",
                std::io::Error::last_os_error(),
            ));
        }
        let rc = libc::ioctl(fd, libc::SIOCGIFMTU, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(match err.raw_os_error() {
                Some(libc::ENODEV) => Error::InterfaceNotFound(name.to_owned()),
                _ => Error::io(format!("reading the MTU of {name}"), err),
            });
        }
        Ok(u32::try_from(req.ifr_ifru.ifru_mtu).unwrap_or(0))
    }
}

/// Writes a sysctl under /proc/sys (e.g. `net/ipv4/ip_forward`) if it differs.
pub fn sysctl(path: &str, value: &str) -> Result<()> {
    let full = format!("/proc/sys/{path}");
    if std::fs::read_to_string(&full).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(&full, value).map_err(|e| Error::io(format!("writing sysctl {path}"), e))
}
