//! Netlink events that can make the kernel differ from the desired state without the
//! cluster changing: the uplink or the VXLAN device going away, coming back or
//! changing, the uplink's addresses changing, a pod's veth vanishing. Each yields a
//! reason to resync; at most one a second, since the agent's own writes cause events
//! too and every sync is idempotent anyway.
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use netlink_packet_route::{
    RouteNetlinkMessage,
    address::AddressMessage,
    link::{LinkAttribute, LinkMessage},
};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::{
    constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK},
    sys::{AsyncSocket as _, SocketAddr},
};
use tokio::sync::mpsc;

use crate::defaults;

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Whether a link event concerns Rama: `new` is false for a deletion.
fn concerns(uplink: &str, msg: &LinkMessage, new: bool) -> Option<String> {
    let name = link_name(msg)?;
    if name == uplink || name == defaults::VXLAN_DEVICE {
        let what = if new { "changed" } else { "removed" };
        return Some(format!("link {name} {what}"));
    }
    // A pod's veth appearing is an ADD, which syncs by itself; vanishing is not.
    (!new && name.starts_with("rama")).then(|| format!("link {name} removed"))
}

/// Starts watching; the receiver yields reasons to resync (and never ends if netlink
/// events cannot be had, which is logged).
pub fn watch(uplink: &str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(4);
    let uplink = uplink.to_owned();
    tokio::spawn(async move {
        let (mut conn, handle, mut messages) = match rtnetlink::new_connection() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("netlink events unavailable (periodic resync only): {e}");
                return;
            }
        };
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        if let Err(e) = conn
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, groups))
        {
            log::warn!("netlink events unavailable (periodic resync only): {e}");
            return;
        }
        tokio::spawn(conn);
        let uplink_index = {
            let mut req = handle.link().get().match_name(uplink.clone()).execute();
            match req.next().await {
                Some(Ok(l)) => l.header.index,
                _ => 0,
            }
        };
        // Coalesced: the first event of a quiet period syncs at once, the rest of a
        // burst once, a second after the previous sync (never dropped).
        let mut pending: Option<String> = None;
        let mut last = Instant::now() - Duration::from_secs(1);
        loop {
            let due = last + Duration::from_secs(1);
            tokio::select! {
                msg = messages.next() => {
                    let Some((msg, _)) = msg else { return };
                    let NetlinkPayload::InnerMessage(inner) = msg.payload else {
                        continue;
                    };
                    let reason = match &inner {
                        RouteNetlinkMessage::NewLink(l) => concerns(&uplink, l, true),
                        RouteNetlinkMessage::DelLink(l) => concerns(&uplink, l, false),
                        RouteNetlinkMessage::NewAddress(AddressMessage { header, .. })
                        | RouteNetlinkMessage::DelAddress(AddressMessage { header, .. })
                            if header.index == uplink_index =>
                        {
                            Some(format!("addresses of {uplink} changed"))
                        }
                        _ => None,
                    };
                    if reason.is_some() {
                        pending = reason;
                    }
                }
                _ = tokio::time::sleep_until(due.into()), if pending.is_some() => {}
            }
            if Instant::now() >= due
                && let Some(reason) = pending.take()
            {
                last = Instant::now();
                if tx.send(reason).await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}
