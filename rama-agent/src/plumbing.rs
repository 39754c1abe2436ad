//! A pod's interface: a veth pair whose host side (`rama…`) stays on the node and
//! whose peer is created directly in the pod's network namespace under the name the
//! runtime asked for (`CNI_IFNAME`), then configured from inside that namespace:
//! the pod's addresses as /32 and /128 ([`configure`]) and — once the datapath knows
//! the pod — the interface up with default routes via the link-local gateway that
//! every host-side veth owns (169.254.1.1 and fe80::1, answered by the node's
//! kernel; see [`crate::dataplane::host`]) ([`start`]).
//!
//! Work inside the pod's namespace runs on a thread of its own that has entered it
//! with setns(2): netlink sockets and /proc/sys/net belong to the namespace of the
//! thread that opens them, so nothing else in the agent changes namespace.
use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use ipnet::IpNet;

use crate::{
    Error, Result,
    dataplane::host::{gateway_v4, gateway_v6},
    net::{Link, Netlink, sysctl},
    state::MacAddr,
};

/// The main routing table (`ip route` without `table`).
const MAIN_TABLE: u32 = 254;

/// The host-side name of an attachment's veth: `rama` and 11 hex digits of a hash of
/// (container id, interface), 15 bytes (IFNAMSIZ − 1). Stable, so a repeated or
/// interrupted ADD finds what an earlier one created.
pub fn host_interface_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a (64 bit): stable across releases and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .bytes()
        .chain(std::iter::once(0))
        .chain(ifname.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("rama{:011x}", h & 0x0fff_ffff_ffff)
}

/// What to create for one attachment.
#[derive(Clone, Debug)]
pub struct PodInterface {
    pub netns: PathBuf,
    pub ifname: String,
    pub host_name: String,
    pub mtu: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// What was created.
#[derive(Clone, Debug)]
pub struct Plumbed {
    pub host: Link,
    pub pod_mac: MacAddr,
}

/// What the pod side looks like now (CHECK).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSide {
    pub mac: MacAddr,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

fn open_netns(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::NetnsNotFound {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Runs `f` on a thread that has entered the network namespace `ns`, with a tokio
/// runtime of its own for netlink.
async fn in_netns<T, F, Fut>(ns: File, path: PathBuf, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    tokio::task::spawn_blocking(move || {
        // SAFETY: setns(2) on this thread only, with a descriptor we hold open.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::NetnsNotFound {
                path,
                detail: format!(
                    "not a network namespace: {}",
                    std::io::Error::last_os_error()
                ),
            });
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting a runtime in the pod's namespace", e))?;
        rt.block_on(f())
    })
    .await
    .map_err(|e| Error::io("the pod-namespace thread", std::io::Error::other(e)))?
}

/// Creates the veth pair, the peer straight in the pod's namespace (moving a device
/// between namespaces afterwards costs an RCU grace period, creating it there does
/// not), both ends down and unaddressed. A host side left by an ADD the agent did
/// not finish (it died) is replaced.
pub async fn create_link(nl: &Netlink, pod: &PodInterface) -> Result<Link> {
    let ns = open_netns(&pod.netns)?;
    if let Some(stale) = nl.link(&pod.host_name).await? {
        nl.delete_link(stale.index).await?;
    }
    nl.create_veth(&pod.host_name, &pod.ifname, ns.as_raw_fd(), pod.mtu)
        .await
        .map_err(|e| match e {
            Error::Netlink { source, .. } if source.to_string().contains("File exists") => {
                Error::InvalidRequest(format!(
                    "the pod's namespace {} already has an interface {:?}",
                    pod.netns.display(),
                    pod.ifname
                ))
            }
            other => other,
        })
}

/// Gives `host` (from [`create_link`]) and its peer `pod`'s MTU, puts the pod's
/// addresses on the pod side (still down) from inside its namespace, and brings the
/// host side up; on failure deletes the pair. [`start`] brings the pod side up once
/// the datapath knows the pod, so its first packets (IPv6 router solicitations,
/// MLD reports) are not dropped as coming from an unknown interface.
pub async fn configure(nl: &Netlink, mut host: Link, pod: &PodInterface) -> Result<Plumbed> {
    let ns = open_netns(&pod.netns)?;
    let (ifname, ipv4, ipv6, mtu) = (pod.ifname.clone(), pod.ipv4, pod.ipv6, pod.mtu);
    let configured = async {
        if host.mtu != mtu {
            nl.set_mtu(host.index, mtu).await?;
            host.mtu = mtu;
        }
        in_netns(ns, pod.netns.clone(), move || async move {
            address_pod_side(&ifname, mtu, ipv4, ipv6).await
        })
        .await
    }
    .await;
    match configured {
        Ok(pod_mac) => {
            nl.set_up(host.index).await?;
            Ok(Plumbed { host, pod_mac })
        }
        Err(e) => {
            // Deleting the host side deletes its peer in the pod too.
            let _ = nl.delete_link(host.index).await;
            Err(e)
        }
    }
}

async fn address_pod_side(
    ifname: &str,
    mtu: u32,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
) -> Result<MacAddr> {
    let nl = Netlink::connect()?;
    let link = nl.require_link(ifname).await?;
    if link.mtu != mtu {
        nl.set_mtu(link.index, mtu).await?;
    }
    if let Some(lo) = nl.link("lo").await? {
        nl.set_up(lo.index).await?;
    }
    if ipv6.is_some() {
        // The default route goes via fe80::1 from the pod's own link-local address;
        // duplicate address detection would hold that address back for a second or
        // more after the interface comes up (RFC 4862 §5.4), and no one else can be
        // on this point-to-point link.
        sysctl(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0")?;
    }
    if let Some(a) = ipv4 {
        nl.ensure_address(link.index, IpAddr::V4(a), 32).await?;
    }
    if let Some(a) = ipv6 {
        nl.ensure_address(link.index, IpAddr::V6(a), 128).await?;
    }
    Ok(link.mac)
}

/// Brings the pod side of `pod` up with its default routes via the link-local
/// gateway (after [`configure`] and the sync that programs the pod).
pub async fn start(pod: &PodInterface) -> Result<()> {
    let ns = open_netns(&pod.netns)?;
    let (ifname, ipv4, ipv6) = (pod.ifname.clone(), pod.ipv4, pod.ipv6);
    in_netns(ns, pod.netns.clone(), move || async move {
        start_pod_side(&ifname, ipv4.is_some(), ipv6.is_some()).await
    })
    .await
}

async fn start_pod_side(ifname: &str, ipv4: bool, ipv6: bool) -> Result<()> {
    let nl = Netlink::connect()?;
    let link = nl.require_link(ifname).await?;
    nl.set_up(link.index).await?;
    if ipv4 {
        nl.replace_route(IpNet::from(gateway_v4()), link.index, None, MAIN_TABLE)
            .await?;
        nl.replace_route(
            "0.0.0.0/0".parse().expect("literal"),
            link.index,
            Some(gateway_v4()),
            MAIN_TABLE,
        )
        .await?;
    }
    if ipv6 {
        nl.replace_route(
            "::/0".parse().expect("literal"),
            link.index,
            Some(gateway_v6()),
            MAIN_TABLE,
        )
        .await?;
    }
    Ok(())
}

/// Reads the pod side of an attachment (CHECK).
pub async fn inspect(netns: &Path, ifname: &str) -> Result<Option<PodSide>> {
    let ns = open_netns(netns)?;
    let ifname = ifname.to_owned();
    in_netns(ns, netns.to_owned(), move || async move {
        let nl = Netlink::connect()?;
        let Some(link) = nl.link(&ifname).await? else {
            return Ok(None);
        };
        let addresses = nl.addresses(link.index).await?;
        Ok(Some(PodSide {
            mac: link.mac,
            mtu: link.mtu,
            addresses,
        }))
    })
    .await
}

/// Removes an attachment's veth pair; absent is fine (the pod's namespace going away
/// takes both ends with it).
pub async fn delete(nl: &Netlink, host_name: &str) -> Result<()> {
    if let Some(link) = nl.link(host_name).await? {
        nl.delete_link(link.index).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_stable_fifteen_bytes_and_differ_per_attachment() {
        let a = host_interface_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("rama"));
        assert_eq!(a, host_interface_name("abc", "eth0"));
        assert_ne!(a, host_interface_name("abc", "eth1"));
        assert_ne!(a, host_interface_name("abd", "eth0"));
        // The separator keeps ("ab", "ceth0") apart from ("abc", "eth0").
        assert_ne!(a, host_interface_name("ab", "ceth0"));
    }
}
