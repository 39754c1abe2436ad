//! From a pod, its namespace and its node to an IPAM [`Request`], following the
//! original Rama/Hybridnet annotations:
//!
//! | annotation (`networking.alibaba.com/…`) | on | meaning |
//! |---|---|---|
//! | `network-type` | pod, namespace | `Underlay` or `Overlay` |
//! | `specified-network` | pod, namespace | a Network by name |
//! | `specified-subnet` | pod, namespace | a Subnet by name; dual stack: `v4subnet/v6subnet` (or comma-separated) |
//! | `ip-family` | pod | `IPv4` (default), `IPv6`, `DualStack` |
//! | `ip-retain` | pod | `true`/`false`: keep a StatefulSet pod's addresses when it goes away (default `true` for StatefulSet pods) |
//! | `ip-pool` | pod | addresses by StatefulSet ordinal: `ip,ip,…`, dual stack `v4/v6,v4/v6,…` |
//!
//! Pod annotations win over the namespace's. Every refusal names the annotation.
use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use rama_api::{Network, NetworkType as ApiNetworkType, annotations as ann};
use rama_ipam::{IpFamilies, NetworkType, PodKey, Request};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("annotation {annotation}: {value:?} {problem}")]
    Annotation {
        annotation: &'static str,
        value: String,
        problem: String,
    },
    #[error("pod has no {0}")]
    Missing(&'static str),
}

fn bad(annotation: &'static str, value: &str, problem: impl Into<String>) -> RequestError {
    RequestError::Annotation {
        annotation,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

/// The StatefulSet ordinal of a pod owned by a StatefulSet (`web-3` → 3).
pub fn statefulset_ordinal(pod: &Pod) -> Option<u32> {
    let owned = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "StatefulSet" && o.controller == Some(true));
    if !owned {
        return None;
    }
    pod.metadata
        .name
        .as_deref()?
        .rsplit_once('-')?
        .1
        .parse()
        .ok()
}

/// Whether `selector` selects a node with `labels` (every pair must match).
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The Networks a node belongs to: every Overlay network, and the Underlay networks
/// whose `nodeSelector` selects the node.
pub fn networks_of_node(networks: &[Network], node: &Node) -> Vec<String> {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    networks
        .iter()
        .filter(|n| match n.spec.network_type {
            ApiNetworkType::Overlay => true,
            ApiNetworkType::Underlay => selects(&n.spec.node_selector, labels),
        })
        .filter_map(|n| n.metadata.name.clone())
        .collect()
}

fn split(value: &str) -> Vec<&str> {
    value
        .split([',', '/'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Builds the request for a scheduled pod.
pub fn pod_request(
    pod: &Pod,
    namespace: Option<&Namespace>,
    node_networks: Vec<String>,
) -> Result<Request, RequestError> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or(RequestError::Missing("name"))?;
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or(RequestError::Missing("node (it is not scheduled yet)"))?;
    let empty = BTreeMap::new();
    let pod_ann = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let ns_ann = namespace
        .and_then(|n| n.metadata.annotations.as_ref())
        .unwrap_or(&empty);
    let get = |key: &str| {
        pod_ann
            .get(key)
            .or_else(|| ns_ann.get(key))
            .map(String::as_str)
    };

    let network_type = match get(ann::NETWORK_TYPE) {
        None => None,
        Some(v) if v.eq_ignore_ascii_case("underlay") => Some(NetworkType::Underlay),
        Some(v) if v.eq_ignore_ascii_case("overlay") => Some(NetworkType::Overlay),
        Some(v) => return Err(bad(ann::NETWORK_TYPE, v, "is neither Underlay nor Overlay")),
    };
    let families = match pod_ann.get(ann::IP_FAMILY).map(String::as_str) {
        None => IpFamilies::V4,
        Some(v) if v.eq_ignore_ascii_case("ipv4") => IpFamilies::V4,
        Some(v) if v.eq_ignore_ascii_case("ipv6") => IpFamilies::V6,
        Some(v) if v.eq_ignore_ascii_case("dualstack") => IpFamilies::DualStack,
        Some(v) => return Err(bad(ann::IP_FAMILY, v, "is not IPv4, IPv6 or DualStack")),
    };
    let subnets: Vec<String> = get(ann::SPECIFIED_SUBNET)
        .map(|v| split(v).into_iter().map(str::to_owned).collect())
        .unwrap_or_default();
    let ordinal = statefulset_ordinal(pod);
    let retain = match pod_ann.get(ann::IP_RETAIN).map(String::as_str) {
        None => ordinal.is_some(),
        Some("true") => true,
        Some("false") => false,
        Some(v) => return Err(bad(ann::IP_RETAIN, v, "is not true or false")),
    };
    if retain && ordinal.is_none() {
        return Err(bad(
            ann::IP_RETAIN,
            "true",
            "applies to StatefulSet pods only (this pod has no StatefulSet owner)",
        ));
    }
    let mut ips = Vec::new();
    if let Some(pool) = pod_ann.get(ann::IP_POOL) {
        let Some(ordinal) = ordinal else {
            return Err(bad(ann::IP_POOL, pool, "applies to StatefulSet pods only"));
        };
        let entries: Vec<&str> = pool
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let entry = entries.get(ordinal as usize).ok_or_else(|| {
            bad(
                ann::IP_POOL,
                pool,
                format!("has {} entries, none for ordinal {ordinal}", entries.len()),
            )
        })?;
        for part in entry.split('/') {
            let ip: IpAddr = part.trim().parse().map_err(|_| {
                bad(
                    ann::IP_POOL,
                    pool,
                    format!("entry {part:?} is not an IP address"),
                )
            })?;
            ips.push(ip);
        }
    }
    Ok(Request {
        pod: Some(PodKey::new(ns, name)),
        node,
        node_networks,
        network_type,
        network: get(ann::SPECIFIED_NETWORK).map(str::to_owned),
        subnets,
        families,
        ips,
        retain,
        pool: None,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::PodSpec,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    };

    use super::*;

    fn pod(name: &str, annotations: &[(&str, &str)], statefulset: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                owner_references: statefulset.then(|| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "StatefulSet".into(),
                        name: "web".into(),
                        uid: "u".into(),
                        controller: Some(true),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn namespace(annotations: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("apps".into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn pod_annotations_win_over_the_namespace() {
        let p = pod(
            "a",
            &[
                (ann::NETWORK_TYPE, "Overlay"),
                (ann::IP_FAMILY, "DualStack"),
            ],
            false,
        );
        let ns = namespace(&[
            (ann::NETWORK_TYPE, "Underlay"),
            (ann::SPECIFIED_SUBNET, "v4net/v6net"),
        ]);
        let r = pod_request(&p, Some(&ns), vec![]).expect("request");
        assert_eq!(r.network_type, Some(NetworkType::Overlay));
        assert_eq!(r.families, IpFamilies::DualStack);
        assert_eq!(r.subnets, ["v4net", "v6net"], "namespace default applies");
        assert_eq!(r.pod, Some(PodKey::new("apps", "a")));
        assert!(!r.retain);
    }

    #[test]
    fn statefulset_pods_retain_by_default_and_take_their_pool_entry() {
        let p = pod(
            "web-1",
            &[(ann::IP_POOL, "10.0.0.10, 10.0.0.11/fd00::11")],
            true,
        );
        let r = pod_request(&p, None, vec![]).expect("request");
        assert!(r.retain);
        assert_eq!(
            r.ips,
            [
                "10.0.0.11".parse::<IpAddr>().expect("ip"),
                "fd00::11".parse().expect("ip")
            ]
        );
        let p = pod("web-1", &[(ann::IP_RETAIN, "false")], true);
        assert!(!pod_request(&p, None, vec![]).expect("request").retain);
    }

    #[test]
    fn bad_annotations_are_refused_by_name() {
        let cases = [
            (
                pod("a", &[(ann::NETWORK_TYPE, "Mesh")], false),
                "annotation networking.alibaba.com/network-type: \"Mesh\" is neither Underlay nor Overlay",
            ),
            (
                pod("a", &[(ann::IP_FAMILY, "v4")], false),
                "annotation networking.alibaba.com/ip-family: \"v4\" is not IPv4, IPv6 or DualStack",
            ),
            (
                pod("a", &[(ann::IP_RETAIN, "yes")], true),
                "annotation networking.alibaba.com/ip-retain: \"yes\" is not true or false",
            ),
            (
                pod("a", &[(ann::IP_RETAIN, "true")], false),
                "annotation networking.alibaba.com/ip-retain: \"true\" applies to StatefulSet pods only (this pod has no StatefulSet owner)",
            ),
            (
                pod("web-2", &[(ann::IP_POOL, "10.0.0.1,10.0.0.2")], true),
                "annotation networking.alibaba.com/ip-pool: \"10.0.0.1,10.0.0.2\" has 2 entries, none for ordinal 2",
            ),
            (
                pod("web-0", &[(ann::IP_POOL, "10.0.0.x")], true),
                "annotation networking.alibaba.com/ip-pool: \"10.0.0.x\" entry \"10.0.0.x\" is not an IP address",
            ),
        ];
        for (p, expected) in cases {
            assert_eq!(
                pod_request(&p, None, vec![])
                    .expect_err(expected)
                    .to_string(),
                expected
            );
        }
        let mut unscheduled = pod("a", &[], false);
        unscheduled.spec = None;
        assert_eq!(
            pod_request(&unscheduled, None, vec![])
                .expect_err("no node")
                .to_string(),
            "pod has no node (it is not scheduled yet)"
        );
    }

    #[test]
    fn underlay_networks_belong_to_the_nodes_they_select() {
        let mut underlay = Network::new(
            "vlan100",
            rama_api::NetworkSpec {
                network_type: ApiNetworkType::Underlay,
                mode: None,
                net_id: Some(100),
                node_selector: [("rack".to_string(), "r1".to_string())].into(),
            },
        );
        underlay.metadata.name = Some("vlan100".into());
        let overlay = Network::new("overlay", rama_api::NetworkSpec::overlay(4096));
        let node = |rack: &str| Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some([("rack".to_string(), rack.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let nets = [underlay, overlay];
        assert_eq!(networks_of_node(&nets, &node("r1")), ["vlan100", "overlay"]);
        assert_eq!(networks_of_node(&nets, &node("r2")), ["overlay"]);
    }
}
