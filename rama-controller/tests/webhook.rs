//! The admission webhooks, called by the real kube-apiserver over TLS on loopback:
//! every invalid Network and Subnet case is refused with the field and the rule,
//! deletes wait for the addresses, and Underlay pods get their network's nodes.
mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use rama_api::{
    AddressRange, IPInstance, IPInstanceSpec, InstanceAddress, IpVersion, Network, NetworkMode,
    NetworkSpec, NetworkType, Subnet, SubnetSpec, annotations as ann,
};
use rama_controller::{
    UNDERLAY_NETWORK_LABEL,
    certs::CertSource,
    webhook::{Endpoint, Webhook, WebhookSettings},
};
use support::{Cluster, with_cluster};
use tokio::sync::watch;

/// Starts the webhook on an ephemeral loopback port; it serves until the returned
/// sender is dropped.
async fn start_webhook(c: &Cluster) -> watch::Sender<bool> {
    let settings = WebhookSettings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        endpoint: Endpoint::Listen,
        config_name: c.webhook_config(),
        certs: CertSource::Secret {
            namespace: c.ns.clone(),
            name: "rama-webhook-tls".into(),
        },
        field_manager: "rama-controller".into(),
    };
    let webhook = Webhook::start(c.client.clone(), &settings)
        .await
        .expect("webhook starts");
    let (tx, mut rx) = watch::channel(false);
    tokio::spawn(webhook.serve(async move {
        let _ = rx.wait_for(|s| *s).await;
    }));
    tx
}

fn underlay(name: &str, vlan: Option<u32>, selector: &[(&str, &str)]) -> Network {
    Network::new(
        name,
        NetworkSpec {
            network_type: NetworkType::Underlay,
            mode: Some(NetworkMode::VLAN),
            net_id: vlan,
            node_selector: selector
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        },
    )
}

fn subnet(name: &str, network: &str, cidr: &str, gateway: Option<&str>) -> Subnet {
    let version = if cidr.contains(':') {
        IpVersion::V6
    } else {
        IpVersion::V4
    };
    let mut range = AddressRange::new(version, cidr);
    range.gateway = gateway.map(str::to_owned);
    Subnet::new(name, SubnetSpec::new(network, range))
}

/// The API server's refusal message, which must name `field`.
fn refused<T: std::fmt::Debug>(result: kube::Result<T>, field: &str, what: &str) -> String {
    match result {
        Err(kube::Error::Api(s)) => {
            assert!(
                s.message.contains(field),
                "{what}: the refusal names {field}: {}",
                s.message
            );
            assert!(
                s.message.contains("denied the request"),
                "{what}: refused by the webhook, not the schema: {}",
                s.message
            );
            s.message
        }
        other => panic!("{what}: expected a refusal naming {field}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_networks_and_subnets_are_refused_with_the_field_and_rule() {
    require_apiserver!();
    let ns = "wh-validate";
    with_cluster(ns, &[], |c| async move {
        let _webhook = start_webhook(&c).await;
        let networks = Api::<Network>::all(c.client.clone());
        let subnets = Api::<Subnet>::all(c.client.clone());
        let pp = PostParams::default();
        let rack = [("rack", "wh-a")];
        let n = |s: &str| format!("{ns}-{s}");

        let cases: Vec<(Network, &str, &str)> = vec![
            (
                underlay(&n("vlan"), Some(4095), &rack),
                "spec.netID",
                "VLAN id 4095",
            ),
            (
                underlay(&n("nosel"), Some(10), &[]),
                "spec.nodeSelector",
                "no nodeSelector",
            ),
            (
                Network::new(&n("vni0"), NetworkSpec::overlay(0)),
                "spec.netID",
                "VNI 0",
            ),
            (
                {
                    let mut o = Network::new(&n("mode"), NetworkSpec::overlay(9));
                    o.spec.mode = Some(NetworkMode::VLAN);
                    o
                },
                "spec.mode",
                "Overlay in VLAN mode",
            ),
        ];
        for (net, field, what) in cases {
            let msg = refused(networks.create(&pp, &net).await, field, what);
            println!("refused ({what}): {msg}");
        }

        let under = underlay(&n("under"), Some(100), &rack);
        networks.create(&pp, &under).await.expect("valid underlay");
        let over = Network::new(&n("over"), NetworkSpec::overlay(7100));
        networks.create(&pp, &over).await.expect("valid overlay");
        let mut renumbered = networks.get(&n("under")).await.expect("get");
        renumbered.spec.net_id = Some(101);
        refused(
            networks.replace(&n("under"), &pp, &renumbered).await,
            "spec.netID",
            "netID changed",
        );

        let un = n("under");
        let on = n("over");
        let subnet_cases: Vec<(Subnet, &str, &str)> = vec![
            (
                subnet(&n("s1"), &un, "10.240.0.1/24", Some("10.240.0.254")),
                "spec.range.cidr",
                "not canonical",
            ),
            (
                subnet(&n("s1"), &un, "10.240.0.0/24", Some("10.241.0.1")),
                "spec.range.gateway",
                "gateway outside",
            ),
            (
                subnet(&n("s1"), &un, "10.240.0.0/24", None),
                "spec.range.gateway",
                "Underlay subnet without gateway",
            ),
            (
                {
                    let mut s = subnet(&n("s1"), &un, "10.240.0.0/24", Some("10.240.0.1"));
                    s.spec.range.start = Some("10.240.1.10".into());
                    s
                },
                "spec.range.start",
                "start outside",
            ),
            (
                {
                    let mut s = subnet(&n("s1"), &un, "10.240.0.0/24", Some("10.240.0.1"));
                    s.spec.range.start = Some("10.240.0.100".into());
                    s.spec.range.end = Some("10.240.0.10".into());
                    s
                },
                "spec.range.end",
                "end before start",
            ),
            (
                {
                    let mut s = subnet(&n("s1"), &on, "10.240.0.0/24", None);
                    s.spec.range.version = IpVersion::V6;
                    s
                },
                "spec.range.version",
                "version against the CIDR",
            ),
            (
                subnet(&n("s1"), "no-such-network", "10.240.0.0/24", None),
                "spec.network",
                "unknown network",
            ),
            (
                {
                    let mut s = subnet(&n("s1"), &un, "10.240.0.0/24", Some("10.240.0.1"));
                    s.spec.net_id = Some(200);
                    s
                },
                "spec.netID",
                "VLAN differing from the network's",
            ),
        ];
        for (s, field, what) in subnet_cases {
            let msg = refused(subnets.create(&pp, &s).await, field, what);
            println!("refused ({what}): {msg}");
        }

        let good = subnet(&n("s1"), &un, "10.240.0.0/24", Some("10.240.0.1"));
        subnets.create(&pp, &good).await.expect("valid subnet");
        let msg = refused(
            subnets
                .create(&pp, &subnet(&n("s2"), &on, "10.240.0.0/16", None))
                .await,
            "spec.range.cidr",
            "overlap across networks",
        );
        assert!(
            msg.contains(&n("s1")),
            "names the subnet it overlaps: {msg}"
        );
        let mut moved = subnets.get(&n("s1")).await.expect("get");
        moved.spec.range.gateway = Some("10.240.0.254".into());
        refused(
            subnets.replace(&n("s1"), &pp, &moved).await,
            "spec.range.gateway",
            "gateway changed",
        );
        // What may change does.
        subnets
            .patch(
                &n("s1"),
                &PatchParams::default(),
                &Patch::Merge(
                    serde_json::json!({"spec": {"range": {"excludeIPs": ["10.240.0.9"]}}}),
                ),
            )
            .await
            .expect("excluded addresses may change");

        // Deletes wait for the addresses.
        let instances = Api::<IPInstance>::namespaced(c.client.clone(), &c.ns);
        let used = IPInstance::new(
            "10-240-0-5",
            IPInstanceSpec {
                network: un.clone(),
                subnet: n("s1"),
                address: InstanceAddress {
                    version: IpVersion::V4,
                    ip: "10.240.0.5/24".into(),
                    gateway: Some("10.240.0.1".into()),
                    net_id: Some(100),
                    mac: None,
                },
                binding: Default::default(),
            },
        );
        instances.create(&pp, &used).await.expect("instance");
        let dp = DeleteParams::default();
        let msg = refused(
            subnets.delete(&n("s1"), &dp).await,
            "metadata.name",
            "subnet in use",
        );
        assert!(msg.contains("10-240-0-5"), "names an instance: {msg}");
        refused(
            networks.delete(&un, &dp).await,
            "metadata.name",
            "network in use",
        );
        instances.delete("10-240-0-5", &dp).await.expect("release");
        refused(
            networks.delete(&un, &dp).await,
            "metadata.name",
            "network with subnets",
        );
        subnets
            .delete(&n("s1"), &dp)
            .await
            .expect("unused subnet deletes");
        networks
            .delete(&un, &dp)
            .await
            .expect("empty network deletes");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underlay_pods_get_their_networks_nodes() {
    require_apiserver!();
    let ns = "wh-mutate";
    with_cluster(ns, &[], |c| async move {
        let _webhook = start_webhook(&c).await;
        let pp = PostParams::default();
        let net = underlay(&format!("{ns}-under"), Some(300), &[("rack", "wh-m")]);
        Api::<Network>::all(c.client.clone())
            .create(&pp, &net)
            .await
            .expect("network");
        let s = subnet(
            &format!("{ns}-s"),
            &format!("{ns}-under"),
            "10.242.0.0/24",
            Some("10.242.0.1"),
        );
        Api::<Subnet>::all(c.client.clone())
            .create(&pp, &s)
            .await
            .expect("subnet");
        let over = Network::new(&format!("{ns}-over"), NetworkSpec::overlay(7200));
        Api::<Network>::all(c.client.clone())
            .create(&pp, &over)
            .await
            .expect("overlay");

        let selector = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_selector.clone())
                .unwrap_or_default()
        };
        let by_network = c
            .create_pod(&c.pod(
                "by-network",
                "",
                &[(ann::SPECIFIED_NETWORK, &format!("{ns}-under"))],
            ))
            .await;
        assert_eq!(
            selector(&by_network),
            BTreeMap::from([("rack".to_string(), "wh-m".to_string())])
        );
        let by_subnet = c
            .create_pod(&c.pod(
                "by-subnet",
                "",
                &[(ann::SPECIFIED_SUBNET, &format!("{ns}-s"))],
            ))
            .await;
        assert_eq!(
            selector(&by_subnet).get("rack").map(String::as_str),
            Some("wh-m")
        );

        let by_type = c
            .create_pod(&c.pod("by-type", "", &[(ann::NETWORK_TYPE, "Underlay")]))
            .await;
        let terms = by_type
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.clone())
            .expect("a required node affinity");
        assert!(
            terms.iter().all(|t| t
                .match_expressions
                .iter()
                .flatten()
                .any(|e| e.key == UNDERLAY_NETWORK_LABEL && e.operator == "Exists")),
            "{terms:?}"
        );

        let overlay_pod = c
            .create_pod(&c.pod(
                "overlay",
                "",
                &[(ann::SPECIFIED_NETWORK, &format!("{ns}-over"))],
            ))
            .await;
        assert!(
            selector(&overlay_pod).is_empty(),
            "overlay pods run anywhere"
        );

        let mut contrary = c.pod(
            "contrary",
            "",
            &[(ann::SPECIFIED_NETWORK, &format!("{ns}-under"))],
        );
        contrary.spec.as_mut().expect("spec").node_selector =
            Some(BTreeMap::from([("rack".into(), "elsewhere".into())]));
        let msg = match c.pods().create(&pp, &contrary).await {
            Err(kube::Error::Api(s)) => s.message,
            other => panic!("a contradicting nodeSelector is refused, got {other:?}"),
        };
        assert!(
            msg.contains("spec.nodeSelector") && msg.contains("rack=elsewhere"),
            "{msg}"
        );

        // A network that does not exist yet is no reason to refuse the pod (manifests
        // arrive in any order); the controller's Event says what is missing.
        let nowhere = c
            .create_pod(&c.pod("nowhere", "", &[(ann::SPECIFIED_NETWORK, "no-such-net")]))
            .await;
        assert!(selector(&nowhere).is_empty());
    })
    .await;
}
