//! `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (SPEC.md, "Parameters").
//!
//! | key | meaning |
//! |---|---|
//! | `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, `K8S_POD_UID`, `K8S_POD_INFRA_CONTAINER_ID` | the pod (set by kubelet's runtimes; CONVENTIONS.md) |
//! | `RAMA_NETWORK_TYPE` | `Underlay` or `Overlay` (standalone; the `network-type` annotation) |
//! | `RAMA_NETWORK` | a Network by name (`specified-network`) |
//! | `RAMA_SUBNET` | a Subnet by name; dual stack `v4/v6` or `v4,v6` (`specified-subnet`) |
//! | `RAMA_IP_FAMILY` | `IPv4`, `IPv6` or `DualStack` (`ip-family`) |
//! | `RAMA_IP` | specific addresses, one per family, `,`-separated |
//! | `IgnoreUnknown` | `1`/`true`: other keys are ignored instead of refused |
//!
//! Names end up in the standalone store's file names, so they are held to the
//! Kubernetes name rules (no `/`, no `..`).
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    Result,
    api::{IpFamily, NetworkKind, PodRef, Selection},
    invalid_env, unsupported,
};

/// What `CNI_ARGS` says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniArgs {
    pub pod: Option<PodRef>,
    pub selection: Selection,
}

/// RFC 1123 label (a namespace): lowercase alphanumerics and `-`, at most 63.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain (a pod name): labels joined by `.`, at most 253.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

fn bad(key: &str, value: &str, problem: &str) -> crate::Error {
    invalid_env(format!("CNI_ARGS {key}={value:?}: {problem}"))
}

fn list(value: &str) -> Vec<String> {
    value
        .split([',', '/'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<Self> {
        let mut pairs = Vec::new();
        for part in raw.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(invalid_env(format!(
                    "CNI_ARGS: {part:?} is not KEY=VALUE (pairs are separated by ';')"
                )));
            };
            if pairs.iter().any(|(key, _): &(&str, &str)| *key == k) {
                return Err(invalid_env(format!("CNI_ARGS: {k} is given twice")));
            }
            pairs.push((k, v));
        }
        let ignore_unknown = pairs
            .iter()
            .any(|(k, v)| *k == "IgnoreUnknown" && matches!(*v, "1" | "true" | "True"));

        let mut out = CniArgs::default();
        let (mut namespace, mut name, mut uid) = (None, None, None);
        for (key, value) in pairs {
            match key {
                "IgnoreUnknown" | "K8S_POD_INFRA_CONTAINER_ID" => {}
                "K8S_POD_NAMESPACE" => {
                    if !dns_label(value) {
                        return Err(bad(key, value, "is not a Kubernetes namespace name"));
                    }
                    namespace = Some(value.to_owned());
                }
                "K8S_POD_NAME" => {
                    if !dns_subdomain(value) {
                        return Err(bad(key, value, "is not a Kubernetes pod name"));
                    }
                    name = Some(value.to_owned());
                }
                "K8S_POD_UID" => uid = Some(value.to_owned()).filter(|s| !s.is_empty()),
                "RAMA_NETWORK_TYPE" => {
                    out.selection.network_type = Some(if value.eq_ignore_ascii_case("underlay") {
                        NetworkKind::Underlay
                    } else if value.eq_ignore_ascii_case("overlay") {
                        NetworkKind::Overlay
                    } else {
                        return Err(bad(key, value, "is neither Underlay nor Overlay"));
                    });
                }
                "RAMA_NETWORK" => {
                    if !dns_subdomain(value) {
                        return Err(bad(key, value, "is not a Network name"));
                    }
                    out.selection.network = Some(value.to_owned());
                }
                "RAMA_SUBNET" => {
                    let subnets = list(value);
                    if subnets.is_empty() || subnets.len() > 2 {
                        return Err(bad(key, value, "names one subnet, or two (v4/v6)"));
                    }
                    if let Some(s) = subnets.iter().find(|s| !dns_subdomain(s)) {
                        return Err(bad(key, value, &format!("{s:?} is not a Subnet name")));
                    }
                    out.selection.subnets = subnets;
                }
                "RAMA_IP_FAMILY" => {
                    out.selection.ip_family = Some(if value.eq_ignore_ascii_case("ipv4") {
                        IpFamily::IPv4
                    } else if value.eq_ignore_ascii_case("ipv6") {
                        IpFamily::IPv6
                    } else if value.eq_ignore_ascii_case("dualstack") {
                        IpFamily::DualStack
                    } else {
                        return Err(bad(key, value, "is not IPv4, IPv6 or DualStack"));
                    });
                }
                "RAMA_IP" => {
                    let mut ips = Vec::new();
                    for part in list(value) {
                        let ip: IpAddr = part.parse().map_err(|_| {
                            bad(key, value, &format!("{part:?} is not an IP address"))
                        })?;
                        if ips.iter().any(|o: &IpAddr| o.is_ipv4() == ip.is_ipv4()) {
                            return Err(bad(key, value, "gives two addresses of one family"));
                        }
                        ips.push(ip);
                    }
                    if ips.is_empty() {
                        return Err(bad(key, value, "is empty"));
                    }
                    out.selection.ips = ips;
                }
                other if ignore_unknown => {
                    let _ = other;
                }
                other => {
                    return Err(unsupported(format!(
                        "CNI_ARGS key {other:?} is not one rama knows (set IgnoreUnknown=1 to \
                         ignore it)"
                    )));
                }
            }
        }
        out.pod = match (namespace, name) {
            (Some(namespace), Some(name)) => Some(PodRef {
                namespace,
                name,
                uid,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid_env(
                    "CNI_ARGS has K8S_POD_NAMESPACE but no K8S_POD_NAME",
                ));
            }
            // podman (CNI backend) names the container this way and passes no
            // namespace: such a pod lives in `default`, as bare runtimes' pods do.
            (None, Some(name)) => Some(PodRef {
                namespace: "default".into(),
                name,
                uid,
            }),
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_args_and_rama_keys() {
        let a = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=db-0;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1;FOO=bar;\
             RAMA_NETWORK_TYPE=overlay;RAMA_SUBNET=s4/s6;RAMA_IP_FAMILY=DualStack;\
             RAMA_IP=10.0.0.5,fd00::5",
        )
        .expect("args");
        let pod = a.pod.expect("pod");
        assert_eq!((pod.namespace.as_str(), pod.name.as_str()), ("web", "db-0"));
        assert_eq!(pod.uid.as_deref(), Some("u-1"));
        assert_eq!(a.selection.network_type, Some(NetworkKind::Overlay));
        assert_eq!(a.selection.subnets, ["s4", "s6"]);
        assert_eq!(a.selection.ip_family, Some(IpFamily::DualStack));
        assert_eq!(a.selection.ips.len(), 2);
        assert_eq!(CniArgs::parse("").expect("empty"), CniArgs::default());
    }

    #[test]
    fn podman_names_the_container_without_a_namespace() {
        // What podman 4's CNI backend passes.
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAME=web").expect("args");
        let pod = a.pod.expect("pod");
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("default", "web")
        );
    }

    #[test]
    fn refusals_name_the_key() {
        for (raw, code, needle) in [
            ("FOO=bar", 2, "FOO"),
            ("IgnoreUnknown=0;FOO=bar", 2, "FOO"),
            ("K8S_POD_NAMESPACE=ns", 4, "K8S_POD_NAME"),
            (
                "K8S_POD_NAMESPACE=../etc;K8S_POD_NAME=x",
                4,
                "K8S_POD_NAMESPACE",
            ),
            ("K8S_POD_NAMESPACE=a;K8S_POD_NAME=a/b", 4, "K8S_POD_NAME"),
            ("RAMA_NETWORK_TYPE=vlan", 4, "RAMA_NETWORK_TYPE"),
            ("RAMA_IP_FAMILY=v4", 4, "RAMA_IP_FAMILY"),
            ("RAMA_IP=10.0.0.300", 4, "RAMA_IP"),
            ("RAMA_IP=10.0.0.1,10.0.0.2", 4, "two addresses"),
            ("RAMA_SUBNET=a,b,c", 4, "RAMA_SUBNET"),
            ("RAMA_NETWORK=Bad_Name", 4, "RAMA_NETWORK"),
            ("RAMA_NETWORK=a;RAMA_NETWORK=b", 4, "twice"),
        ] {
            let e = CniArgs::parse(raw).expect_err(raw);
            assert_eq!(e.code(), code, "{raw}: {e}");
            assert!(e.to_string().contains(needle), "{raw}: {e}");
        }
    }
}
