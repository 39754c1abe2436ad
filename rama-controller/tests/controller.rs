//! The controller against a real kube-apiserver (`cargo xtask test` starts one and sets
//! RAMA_TEST_KUBECONFIG): allocation for v4, v6 and dual-stack pods, specified and
//! private subnets, namespace defaults, StatefulSet addresses kept across nodes,
//! `ip-pool`, exhaustion, release, Network status and node labels, two controllers
//! racing, leader election.
mod support;

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use rama_api::{
    AddressRange, IpVersion, Network, NetworkMode, NetworkSpec, NetworkType, Subnet, SubnetConfig,
    SubnetSpec, annotations as ann,
};
use rama_controller::UNDERLAY_NETWORK_LABEL;
use support::{Cluster, WAIT, eventually, start_controller, with_cluster};

fn overlay(c: &Cluster, vni: u32) -> Network {
    Network::new(&format!("{}-overlay", c.ns), NetworkSpec::overlay(vni))
}

fn underlay(c: &Cluster) -> Network {
    Network::new(
        &format!("{}-underlay", c.ns),
        NetworkSpec {
            network_type: NetworkType::Underlay,
            mode: Some(NetworkMode::VLAN),
            net_id: Some(100),
            node_selector: BTreeMap::from([("rama-test-rack".into(), format!("{}-a", c.ns))]),
        },
    )
}

fn subnet(c: &Cluster, name: &str, network: &Network, cidr: &str) -> Subnet {
    let version = if cidr.contains(':') {
        IpVersion::V6
    } else {
        IpVersion::V4
    };
    let mut range = AddressRange::new(version, cidr);
    if network.spec.network_type == NetworkType::Underlay {
        range.gateway = Some(
            cidr.replace(".0/", ".1/")
                .split('/')
                .next()
                .unwrap_or("")
                .into(),
        );
    }
    Subnet::new(
        &format!("{}-{name}", c.ns),
        SubnetSpec::new(network.metadata.name.clone().unwrap_or_default(), range),
    )
}

fn in_cidr(ip: &str, cidr: &str) -> bool {
    let net: ipnet::IpNet = cidr.parse().expect("cidr");
    net.contains(&ip.parse::<std::net::IpAddr>().expect("ip"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocates_v4_v6_and_dual_stack_and_keeps_status() {
    require_apiserver!();
    let ns = "ctl-families";
    with_cluster(
        ns,
        &[(ann::SPECIFIED_NETWORK, "ctl-families-overlay")],
        |c| async move {
            let net = overlay(&c, 7001);
            c.create_network(&net).await;
            c.create_subnet(&subnet(&c, "v4", &net, "10.230.0.0/24"))
                .await;
            c.create_subnet(&subnet(&c, "v6", &net, "fd00:230::/64"))
                .await;
            let ctl = start_controller(&c.client, "families", None);

            c.create_pod(&c.pod("plain", "n1", &[])).await;
            c.create_pod(&c.pod("six", "n1", &[(ann::IP_FAMILY, "IPv6")]))
                .await;
            c.create_pod(&c.pod("dual", "n2", &[(ann::IP_FAMILY, "DualStack")]))
                .await;
            let mut host = c.pod("host", "n1", &[]);
            host.spec.as_mut().expect("spec").host_network = Some(true);
            c.create_pod(&host).await;
            c.create_pod(&c.pod("unscheduled", "", &[])).await;

            let plain = c.wait_ips("plain", 1).await;
            assert!(
                in_cidr(&Cluster::ip(&plain[0]), "10.230.0.0/24"),
                "{plain:?}"
            );
            let six = c.wait_ips("six", 1).await;
            assert!(in_cidr(&Cluster::ip(&six[0]), "fd00:230::/64"), "{six:?}");
            let dual = c.wait_ips("dual", 2).await;
            let versions: HashSet<String> = dual
                .iter()
                .map(|i| format!("{:?}", i.spec.address.version))
                .collect();
            assert_eq!(versions.len(), 2, "one address per family: {dual:?}");
            for i in plain.iter().chain(&six).chain(&dual) {
                assert_eq!(
                    i.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Bound")
                );
                assert_eq!(
                    i.spec.network,
                    net.metadata.name.clone().unwrap_or_default()
                );
            }
            let event = c.wait_event("plain", "IPAllocated").await;
            assert!(
                event
                    .note
                    .as_deref()
                    .unwrap_or("")
                    .contains(&Cluster::ip(&plain[0])),
                "the event names the address: {event:?}"
            );

            // Host-network and unscheduled pods get nothing.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let holders: HashSet<String> = c
                .instances()
                .await
                .iter()
                .filter_map(|i| i.spec.binding.pod_name.clone())
                .collect();
            assert_eq!(
                holders,
                HashSet::from(["plain".into(), "six".into(), "dual".into()])
            );

            // Subnet and Network status follow.
            let subnets = Api::<Subnet>::all(c.client.clone());
            let v4 = eventually("subnet v4 status", WAIT, || async {
                let s = subnets.get("ctl-families-v4").await.expect("subnet");
                s.status.filter(|st| st.used == 2)
            })
            .await;
            assert_eq!(
                v4.total, 254,
                "a /24 without network and broadcast addresses"
            );
            assert_eq!(v4.available, 252);
            let networks = Api::<Network>::all(c.client.clone());
            let status = eventually("network status", WAIT, || async {
                let n = networks.get("ctl-families-overlay").await.expect("network");
                n.status.filter(|s| {
                    s.statistics.as_ref().is_some_and(|st| st.used == 2)
                        && s.ipv6_statistics.as_ref().is_some_and(|st| st.used == 2)
                })
            })
            .await;
            assert_eq!(
                status.subnet_list,
                ["ctl-families-v4".to_string(), "ctl-families-v6".to_string()]
            );
            for node in ["n1", "n2"] {
                assert!(
                    status.node_list.contains(&c.node_name(node)),
                    "overlay spans every node"
                );
            }
            ctl.stop().await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specified_private_subnets_namespace_defaults_and_node_labels() {
    require_apiserver!();
    let ns = "ctl-subnets";
    with_cluster(ns, &[(ann::SPECIFIED_NETWORK, "ctl-subnets-underlay")], |c| async move {
        let net = underlay(&c);
        c.create_network(&net).await;
        c.create_subnet(&subnet(&c, "shared", &net, "10.231.0.0/24")).await;
        let mut private = subnet(&c, "private", &net, "10.231.1.0/24");
        private.spec.config = Some(SubnetConfig {
            private: Some(true),
            auto_nat_outgoing: None,
        });
        c.create_subnet(&private).await;
        let ctl = start_controller(&c.client, "subnets", None);

        // n1 carries the network's rack label, n2 does not.
        let n1 = c.node_name("n1");
        let labels = eventually("underlay node label", WAIT, || async {
            let l = support::node_labels(&c.client, &n1).await;
            l.contains_key(UNDERLAY_NETWORK_LABEL).then_some(l)
        })
        .await;
        assert_eq!(labels[UNDERLAY_NETWORK_LABEL], "ctl-subnets-underlay");
        assert!(
            !support::node_labels(&c.client, &c.node_name("n2"))
                .await
                .contains_key(UNDERLAY_NETWORK_LABEL)
        );

        for i in 0..3 {
            c.create_pod(&c.pod(&format!("shared-{i}"), "n1", &[])).await;
        }
        c.create_pod(&c.pod(
            "named",
            "n1",
            &[(ann::SPECIFIED_SUBNET, "ctl-subnets-private")],
        ))
        .await;
        for i in 0..3 {
            let got = c.wait_ips(&format!("shared-{i}"), 1).await;
            assert_eq!(got[0].spec.subnet, "ctl-subnets-shared", "private subnets only when named");
            assert_eq!(got[0].spec.address.net_id, None);
            assert_eq!(got[0].spec.address.gateway.as_deref(), Some("10.231.0.1"));
        }
        let named = c.wait_ips("named", 1).await;
        assert_eq!(named[0].spec.subnet, "ctl-subnets-private");

        // A pod on a node outside the Underlay network is refused, with an Event.
        c.create_pod(&c.pod("offside", "n2", &[])).await;
        let event = c.wait_event("offside", "AllocationFailed").await;
        let note = event.note.unwrap_or_default();
        assert!(note.contains("not available on node"), "{note}");

        // The node leaves the network: the label goes.
        Api::<k8s_openapi::api::core::v1::Node>::all(c.client.clone())
            .patch(
                &n1,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"labels": {"rama-test-rack": "elsewhere"}}})),
            )
            .await
            .expect("relabel");
        eventually("label removed", WAIT, || async {
            (!support::node_labels(&c.client, &n1)
                .await
                .contains_key(UNDERLAY_NETWORK_LABEL))
            .then_some(())
        })
        .await;
        ctl.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_keep_their_address_across_nodes_and_take_their_pool_entry() {
    require_apiserver!();
    let ns = "ctl-sts";
    with_cluster(
        ns,
        &[(ann::SPECIFIED_NETWORK, "ctl-sts-overlay")],
        |c| async move {
            let net = overlay(&c, 7002);
            c.create_network(&net).await;
            c.create_subnet(&subnet(&c, "v4", &net, "10.232.0.0/24"))
                .await;
            let ctl = start_controller(&c.client, "sts", None);

            c.create_pod(&c.stateful_pod("web-0", "n1", &[])).await;
            let first = c.wait_ips("web-0", 1).await;
            let ip = Cluster::ip(&first[0]);
            c.delete_pod("web-0").await;
            let name = first[0].metadata.name.clone().expect("name");
            let instances = Api::<rama_api::IPInstance>::namespaced(c.client.clone(), &c.ns);
            let kept = eventually("address retained", WAIT, || async {
                let i = instances.get(&name).await.expect("kept, not deleted");
                (i.spec.binding.node_name.is_none()).then_some(i)
            })
            .await;
            assert_eq!(
                kept.status.and_then(|s| s.phase).as_deref(),
                Some("Retained")
            );

            // Someone else allocates meanwhile: the retained address is not theirs.
            c.create_pod(&c.pod("other", "n1", &[])).await;
            let other = c.wait_ips("other", 1).await;
            assert_ne!(Cluster::ip(&other[0]), ip);

            c.create_pod(&c.stateful_pod("web-0", "n2", &[])).await;
            let again = c.wait_ips("web-0", 1).await;
            assert_eq!(Cluster::ip(&again[0]), ip, "same address on the new node");
            assert_eq!(again[0].spec.binding.node_name, Some(c.node_name("n2")));

            // Recreated on another node before the release was seen: still the same address.
            c.delete_pod("web-0").await;
            c.create_pod(&c.stateful_pod("web-0", "n1", &[])).await;
            let third = c.wait_ips("web-0", 1).await;
            assert_eq!(Cluster::ip(&third[0]), ip);

            // ip-pool: the entry of the pod's ordinal.
            let pool = [(ann::IP_POOL, "10.232.0.200,10.232.0.201")];
            c.create_pod(&c.stateful_pod("db-1", "n2", &pool)).await;
            let db = c.wait_ips("db-1", 1).await;
            assert_eq!(Cluster::ip(&db[0]), "10.232.0.201");
            // Opting out of retention: the address is freed with the pod.
            c.create_pod(&c.stateful_pod("tmp-0", "n2", &[(ann::IP_RETAIN, "false")]))
                .await;
            let tmp = c.wait_ips("tmp-0", 1).await;
            let tmp_name = tmp[0].metadata.name.clone().expect("name");
            c.delete_pod("tmp-0").await;
            eventually("address freed", WAIT, || async {
                instances
                    .get_opt(&tmp_name)
                    .await
                    .expect("get")
                    .is_none()
                    .then_some(())
            })
            .await;
            ctl.stop().await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_events_and_nothing_is_allocated_half_way() {
    require_apiserver!();
    let ns = "ctl-full";
    with_cluster(
        ns,
        &[(ann::SPECIFIED_NETWORK, "ctl-full-overlay")],
        |c| async move {
            let net = overlay(&c, 7003);
            c.create_network(&net).await;
            // Two usable IPv4 addresses; IPv6 has room.
            c.create_subnet(&subnet(&c, "v4", &net, "10.233.0.0/30"))
                .await;
            c.create_subnet(&subnet(&c, "v6", &net, "fd00:233::/120"))
                .await;
            let ctl = start_controller(&c.client, "full", None);

            c.create_pod(&c.pod("a", "n1", &[])).await;
            c.create_pod(&c.pod("b", "n1", &[])).await;
            c.wait_ips("a", 1).await;
            c.wait_ips("b", 1).await;

            c.create_pod(&c.pod("dual", "n1", &[(ann::IP_FAMILY, "DualStack")]))
                .await;
            let event = c.wait_event("dual", "AllocationFailed").await;
            let note = event.note.unwrap_or_default();
            assert!(
                note.contains("no IPv4 subnet with free addresses"),
                "{note}"
            );
            assert!(
                !c.instances()
                    .await
                    .iter()
                    .any(|i| i.spec.binding.pod_name.as_deref() == Some("dual")),
                "no IPv6 address taken for a pod whose IPv4 allocation failed"
            );

            c.create_pod(&c.pod("lost", "n1", &[(ann::SPECIFIED_NETWORK, "no-such-network")]))
                .await;
            let note = c
                .wait_event("lost", "AllocationFailed")
                .await
                .note
                .unwrap_or_default();
            assert!(
                note.contains("no-such-network") && note.contains("does not exist"),
                "{note}"
            );
            c.create_pod(&c.pod("typo", "n1", &[(ann::SPECIFIED_SUBNET, "no-such-subnet")]))
                .await;
            let note = c
                .wait_event("typo", "AllocationFailed")
                .await
                .note
                .unwrap_or_default();
            assert!(note.contains("no-such-subnet"), "{note}");
            c.create_pod(&c.pod("bad", "n1", &[(ann::IP_FAMILY, "IPv5")]))
                .await;
            let note = c
                .wait_event("bad", "InvalidAnnotation")
                .await
                .note
                .unwrap_or_default();
            assert!(
                note.contains(ann::IP_FAMILY) && note.contains("IPv5"),
                "{note}"
            );

            // Room again: the waiting pod gets its addresses on the retry.
            c.delete_pod("a").await;
            let dual = c.wait_ips("dual", 2).await;
            assert_eq!(dual.len(), 2);

            // A finished pod gives its address back.
            let b = c
                .instances()
                .await
                .into_iter()
                .find(|i| i.spec.binding.pod_name.as_deref() == Some("b"))
                .expect("b's");
            c.pods()
                .patch_status(
                    "b",
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"status": {"phase": "Succeeded"}})),
                )
                .await
                .expect("finish b");
            let instances = Api::<rama_api::IPInstance>::namespaced(c.client.clone(), &c.ns);
            let b_name = b.metadata.name.clone().expect("name");
            eventually("finished pod's address freed", WAIT, || async {
                instances
                    .get_opt(&b_name)
                    .await
                    .expect("get")
                    .is_none()
                    .then_some(())
            })
            .await;
            ctl.stop().await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_racing_never_duplicate_an_address() {
    require_apiserver!();
    let ns = "ctl-race";
    with_cluster(
        ns,
        &[(ann::SPECIFIED_NETWORK, "ctl-race-overlay")],
        |c| async move {
            let net = overlay(&c, 7004);
            c.create_network(&net).await;
            c.create_subnet(&subnet(&c, "v4", &net, "10.234.0.0/24"))
                .await;
            // No leader election: both act on every pod at once.
            let a = start_controller(&c.client, "race-a", None);
            let b = start_controller(&c.client, "race-b", None);
            const PODS: usize = 30;
            for i in 0..PODS {
                c.create_pod(&c.pod(&format!("p{i}"), if i % 2 == 0 { "n1" } else { "n2" }, &[]))
                    .await;
            }
            let all = eventually(
                "every pod with exactly one address",
                Duration::from_secs(60),
                || async {
                    let instances = c.instances().await;
                    let per_pod: HashSet<&str> = instances
                        .iter()
                        .filter_map(|i| i.spec.binding.pod_name.as_deref())
                        .collect();
                    (per_pod.len() == PODS && instances.len() == PODS).then_some(instances)
                },
            )
            .await;
            let ips: HashSet<String> = all.iter().map(Cluster::ip).collect();
            assert_eq!(ips.len(), PODS, "an address was handed out twice");
            a.stop().await;
            b.stop().await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_and_a_quick_handover() {
    require_apiserver!();
    let ns = "ctl-leader";
    with_cluster(
        ns,
        &[(ann::SPECIFIED_NETWORK, "ctl-leader-overlay")],
        |c| async move {
            let net = overlay(&c, 7005);
            c.create_network(&net).await;
            c.create_subnet(&subnet(&c, "v4", &net, "10.235.0.0/24"))
                .await;
            let lease_name = "rama-test-leader";
            let first = start_controller(&c.client, "leader-1", Some(lease_name));
            let leases = Api::<Lease>::namespaced(c.client.clone(), "default");
            eventually("leader-1 holds the Lease", WAIT, || async {
                let l = leases.get_opt(lease_name).await.expect("lease")?;
                (l.spec?.holder_identity.as_deref() == Some("leader-1")).then_some(())
            })
            .await;
            let second = start_controller(&c.client, "leader-2", Some(lease_name));
            c.create_pod(&c.pod("one", "n1", &[])).await;
            c.wait_ips("one", 1).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let held = leases
                .get(lease_name)
                .await
                .expect("lease")
                .spec
                .expect("spec");
            assert_eq!(
                held.holder_identity.as_deref(),
                Some("leader-1"),
                "the standby waits"
            );

            // The leader shuts down gracefully and gives the Lease up: the standby takes
            // over well before the Lease would have expired.
            first.stop().await;
            let handed = std::time::Instant::now();
            eventually("leader-2 takes over", WAIT, || async {
                let l = leases.get_opt(lease_name).await.expect("lease")?;
                (l.spec?.holder_identity.as_deref() == Some("leader-2")).then_some(())
            })
            .await;
            println!("handover took {:?}", handed.elapsed());
            c.create_pod(&c.pod("two", "n1", &[])).await;
            c.wait_ips("two", 1).await;
            let held = leases
                .get(lease_name)
                .await
                .expect("lease")
                .spec
                .expect("spec");
            assert_eq!(held.lease_transitions, Some(1));
            second.stop().await;
            let _ = leases.delete(lease_name, &Default::default()).await;
        },
    )
    .await;
}
