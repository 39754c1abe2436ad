//! Behaviour of the allocator, case by case, and its invariants under random use.
use std::net::IpAddr;

use proptest::prelude::*;
use rama_ipam::{
    Binding, Family, IpFamilies, Ipam, IpamError, NetworkSpec, NetworkType, PodKey, Request,
    SubnetSpec,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn networks() -> Vec<NetworkSpec> {
    vec![
        NetworkSpec {
            name: "underlay".into(),
            network_type: NetworkType::Underlay,
        },
        NetworkSpec {
            name: "overlay".into(),
            network_type: NetworkType::Overlay,
        },
    ]
}

fn subnet(name: &str, network: &str, cidr: &str) -> SubnetSpec {
    SubnetSpec {
        name: name.into(),
        network: network.into(),
        cidr: Some(cidr.parse().expect("cidr")),
        ..Default::default()
    }
}

fn cluster() -> Ipam {
    let mut u4 = subnet("u4", "underlay", "10.100.0.0/29");
    u4.gateway = Some(ip("10.100.0.1"));
    u4.excluded_ips = vec![ip("10.100.0.2")];
    u4.reserved_ips = vec![ip("10.100.0.3")];
    let mut u6 = subnet("u6", "underlay", "fd00:100::/64");
    u6.gateway = Some(ip("fd00:100::1"));
    let o4 = subnet("o4", "overlay", "10.244.0.0/16");
    let o6 = subnet("o6", "overlay", "fd00:244::/64");
    let mut private = subnet("private", "overlay", "10.245.0.0/24");
    private.private = true;
    Ipam::new(networks(), vec![u4, u6, o4, o6, private]).expect("valid")
}

fn pod(name: &str) -> Request {
    Request {
        pod: Some(PodKey::new("default", name)),
        node: "n1".into(),
        node_networks: vec!["underlay".into()],
        ..Default::default()
    }
}

#[test]
fn allocates_round_robin_skipping_gateway_excluded_and_reserved() {
    let mut ipam = cluster();
    // 10.100.0.0/29: .1 gateway, .2 excluded, .3 reserved, .7 broadcast → .4 .5 .6.
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(ipam.allocate(&pod(&format!("p{i}"))).expect("allocate")[0].ip);
    }
    assert_eq!(got, [ip("10.100.0.4"), ip("10.100.0.5"), ip("10.100.0.6")]);
    let e = ipam.allocate(&pod("p3")).expect_err("exhausted");
    assert!(
        matches!(
            e,
            IpamError::Exhausted {
                family: Family::V4,
                ..
            }
        ),
        "{e}"
    );
    // Released addresses are not reused at once: the cursor goes on (and wraps).
    ipam.release(&PodKey::new("default", "p0"));
    assert_eq!(
        ipam.allocate(&pod("p4")).expect("allocate")[0].ip,
        ip("10.100.0.4")
    );
    let u = ipam.usage("u4").expect("usage");
    assert_eq!(
        (u.total, u.used, u.available),
        (4, 3, 1),
        "reserved counts as available"
    );
    assert_eq!(u.last_allocated, Some(ip("10.100.0.4")));
    ipam.check_invariants().expect("consistent");
}

#[test]
fn reserved_addresses_only_when_asked_for() {
    let mut ipam = cluster();
    let mut req = pod("a");
    req.ips = vec![ip("10.100.0.3")];
    assert_eq!(
        ipam.allocate(&req).expect("specified reserved")[0].ip,
        ip("10.100.0.3")
    );
    let mut req = pod("b");
    req.ips = vec![ip("10.100.0.1")];
    let e = ipam.allocate(&req).expect_err("gateway");
    assert_eq!(
        e.to_string(),
        "10.100.0.1 cannot be allocated in subnet \"u4\": it is the gateway"
    );
    let mut req = pod("c");
    req.ips = vec![ip("10.100.0.3")];
    assert!(matches!(
        ipam.allocate(&req),
        Err(IpamError::AddressInUse { .. })
    ));
}

#[test]
fn dual_stack_comes_from_one_network_and_is_all_or_nothing() {
    let mut ipam = cluster();
    let mut req = pod("d");
    req.families = IpFamilies::DualStack;
    req.network_type = Some(NetworkType::Overlay);
    let got = ipam.allocate(&req).expect("dual");
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0].subnet.as_str(), got[1].subnet.as_str()),
        ("o4", "o6")
    );

    // Underlay v4 is nearly full: fill it, then a dual-stack pod fails without
    // keeping its IPv6 address.
    for i in 0..3 {
        ipam.allocate(&pod(&format!("f{i}"))).expect("fill");
    }
    let before = ipam.usage("u6").expect("usage").used;
    let mut req = pod("e");
    req.families = IpFamilies::DualStack;
    let e = ipam.allocate(&req).expect_err("no v4 left");
    assert!(matches!(e, IpamError::Exhausted { .. }), "{e}");
    assert_eq!(
        ipam.usage("u6").expect("usage").used,
        before,
        "nothing half-allocated"
    );
    ipam.check_invariants().expect("consistent");
}

#[test]
fn private_subnets_only_for_pods_that_name_them() {
    let mut ipam = cluster();
    for i in 0..5 {
        let mut req = pod(&format!("o{i}"));
        req.network_type = Some(NetworkType::Overlay);
        assert_eq!(ipam.allocate(&req).expect("overlay")[0].subnet, "o4");
    }
    let mut req = pod("named");
    req.subnets = vec!["private".into()];
    assert_eq!(ipam.allocate(&req).expect("private")[0].subnet, "private");
}

#[test]
fn underlay_networks_only_on_their_nodes() {
    let mut ipam = cluster();
    let mut req = pod("x");
    req.node = "n9".into();
    req.node_networks = vec![];
    req.network = Some("underlay".into());
    let e = ipam.allocate(&req).expect_err("not on node");
    assert_eq!(
        e.to_string(),
        "network \"underlay\" is not available on node \"n9\""
    );
    req.network = Some("nope".into());
    assert_eq!(
        ipam.allocate(&req).expect_err("unknown").to_string(),
        "network \"nope\" does not exist"
    );
    req.network = None;
    req.subnets = vec!["gone".into()];
    assert_eq!(
        ipam.allocate(&req).expect_err("unknown").to_string(),
        "subnet \"gone\" does not exist"
    );
}

#[test]
fn statefulset_pods_keep_their_address_on_another_node() {
    let mut ipam = cluster();
    let mut req = pod("web-0");
    req.retain = true;
    req.families = IpFamilies::DualStack;
    let first: Vec<IpAddr> = ipam
        .allocate(&req)
        .expect("allocate")
        .iter()
        .map(|a| a.ip)
        .collect();
    assert!(
        ipam.release(&PodKey::new("default", "web-0")).is_empty(),
        "kept, not freed"
    );
    assert!(
        ipam.of_pod(&PodKey::new("default", "web-0"))
            .iter()
            .all(|a| a.binding == Binding::Retained)
    );
    // Others cannot take it meanwhile.
    for i in 0..2 {
        ipam.allocate(&pod(&format!("other{i}"))).expect("others");
    }
    req.node = "n2".into();
    let again = ipam.allocate(&req).expect("recreated");
    assert_eq!(again.iter().map(|a| a.ip).collect::<Vec<_>>(), first);
    assert_eq!(again[0].binding, Binding::Bound { node: "n2".into() });
    // A pod that is not a returning StatefulSet pod cannot be allocated twice.
    assert!(matches!(
        ipam.allocate(&req),
        Err(IpamError::AlreadyAllocated(_))
    ));
    ipam.check_invariants().expect("consistent");
}

#[test]
fn ip_pool_by_ordinal() {
    let mut ipam = cluster();
    let pool = vec![ip("10.244.1.10"), ip("10.244.1.11")];
    let mut req = pod("db-1");
    req.network_type = Some(NetworkType::Overlay);
    req.pool = Some((pool.clone(), 1));
    assert_eq!(ipam.allocate(&req).expect("pool")[0].ip, ip("10.244.1.11"));
    let mut req = pod("db-2");
    req.pool = Some((pool, 2));
    assert_eq!(
        ipam.allocate(&req).expect_err("short").to_string(),
        "ip-pool has 2 entries, none for ordinal 2"
    );
}

#[test]
fn restart_restores_allocations_and_cursor() {
    let mut ipam = cluster();
    let mut req = pod("r");
    req.network_type = Some(NetworkType::Overlay);
    let a = ipam.allocate(&req).expect("allocate");
    let cursor = ipam
        .usage("o4")
        .expect("usage")
        .last_allocated
        .expect("cursor");
    let mut fresh = cluster();
    fresh
        .restore(a.clone(), [("o4".to_string(), cursor)])
        .expect("restore");
    let next = fresh.allocate(&{
        let mut r = pod("s");
        r.network_type = Some(NetworkType::Overlay);
        r
    });
    assert_eq!(
        next.expect("next")[0].ip,
        ip("10.244.0.2"),
        "continues after the cursor"
    );
    // The same allocation twice is refused on restore (duplicate IPInstances).
    assert!(matches!(
        fresh.restore(a, []),
        Err(IpamError::AddressInUse { .. })
    ));
}

#[test]
fn invalid_subnets_are_refused_naming_the_field() {
    let cases: Vec<(SubnetSpec, &str)> = vec![
        (
            SubnetSpec {
                cidr: Some("10.1.0.5/24".parse().expect("cidr")),
                ..subnet("s", "overlay", "10.1.0.0/24")
            },
            "subnet \"s\": range.cidr 10.1.0.5/24 is not canonical (did you mean 10.1.0.0/24?)",
        ),
        (
            SubnetSpec {
                gateway: Some(ip("10.2.0.1")),
                ..subnet("s", "overlay", "10.1.0.0/24")
            },
            "subnet \"s\": range.gateway 10.2.0.1 is outside range.cidr 10.1.0.0/24",
        ),
        (
            SubnetSpec {
                start: Some(ip("10.1.0.50")),
                end: Some(ip("10.1.0.10")),
                ..subnet("s", "overlay", "10.1.0.0/24")
            },
            "subnet \"s\": range.start 10.1.0.50 is after range.end 10.1.0.10",
        ),
        (
            SubnetSpec {
                cidr: None,
                ..subnet("s", "overlay", "10.1.0.0/24")
            },
            "subnet \"s\": range.cidr is missing",
        ),
        (
            subnet("s", "nowhere", "10.1.0.0/24"),
            "subnet \"s\" names network \"nowhere\", which does not exist",
        ),
    ];
    for (spec, expected) in cases {
        let e = Ipam::new(networks(), vec![spec]).expect_err(expected);
        assert_eq!(e.to_string(), expected);
    }
    let e = Ipam::new(
        networks(),
        vec![
            subnet("a", "overlay", "10.1.0.0/16"),
            subnet("b", "underlay", "10.1.2.0/24"),
        ],
    )
    .expect_err("overlap");
    assert_eq!(e.to_string(), "subnets \"a\" and \"b\" overlap");
}

#[test]
fn a_slash_64_works_without_materialising_it() {
    let mut ipam =
        Ipam::new(networks(), vec![subnet("big", "overlay", "fd00:1::/64")]).expect("valid");
    let u = ipam.usage("big").expect("usage");
    assert_eq!(u.total, (1u128 << 64) - 1);
    let mut req = pod("v6");
    req.families = IpFamilies::V6;
    req.network_type = Some(NetworkType::Overlay);
    assert_eq!(ipam.allocate(&req).expect("v6")[0].ip, ip("fd00:1::1"));
}

// Random sequences of allocate / release / free / specified addresses never hand out
// an address twice, never hand out the gateway, an excluded address or a reserved one
// nobody asked for, and the counts always add up.
#[derive(Clone, Debug)]
enum Op {
    Allocate {
        pod: u8,
        dual: bool,
        retain: bool,
        overlay: bool,
    },
    AllocateSpecified {
        pod: u8,
        last_octet: u8,
    },
    Release {
        pod: u8,
    },
    Free {
        last_octet: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(pod, dual, retain, overlay)| Op::Allocate { pod, dual, retain, overlay }),
        1 => (0u8..24, 0u8..8).prop_map(|(pod, last_octet)| Op::AllocateSpecified { pod, last_octet }),
        3 => (0u8..24).prop_map(|pod| Op::Release { pod }),
        1 => (0u8..8).prop_map(|last_octet| Op::Free { last_octet }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn invariants_hold_under_random_use(ops in proptest::collection::vec(op(), 1..80)) {
        let mut ipam = cluster();
        let mut small = subnet("o4", "overlay", "10.244.0.0/28");
        small.gateway = Some(ip("10.244.0.1"));
        let mut ipam_small = Ipam::new(networks(), vec![
            small,
            subnet("o6", "overlay", "fd00:244::/124"),
        ]).expect("valid");
        // Pods that asked for the reserved 10.100.0.3 by address.
        let mut asked_reserved = std::collections::HashSet::new();
        for op in ops {
            if let Op::AllocateSpecified { pod: p, last_octet: 3 } = &op {
                asked_reserved.insert(format!("p{p}"));
            }
            for target in [&mut ipam, &mut ipam_small] {
                let result = match &op {
                    Op::Allocate { pod: p, dual, retain, overlay } => {
                        let mut r = pod(&format!("p{p}"));
                        r.retain = *retain;
                        if *dual { r.families = IpFamilies::DualStack; }
                        if *overlay { r.network_type = Some(NetworkType::Overlay); }
                        target.allocate(&r).map(|_| ())
                    }
                    Op::AllocateSpecified { pod: p, last_octet } => {
                        let mut r = pod(&format!("p{p}"));
                        r.ips = vec![ip(&format!("10.100.0.{last_octet}"))];
                        target.allocate(&r).map(|_| ())
                    }
                    Op::Release { pod: p } => {
                        target.release(&PodKey::new("default", format!("p{p}")));
                        Ok(())
                    }
                    Op::Free { last_octet } => {
                        target.free_address(&ip(&format!("10.100.0.{last_octet}")));
                        Ok(())
                    }
                };
                let _ = result; // refusals are fine; inconsistency is not
                prop_assert!(target.check_invariants().is_ok(), "{:?} after {:?}", target.check_invariants(), op);
                // The reserved address is only ever held by a pod that named it.
                if let Some(a) = target.allocation(&ip("10.100.0.3")) {
                    prop_assert!(asked_reserved.contains(&a.pod.name), "{} got the reserved address", a.pod);
                }
                let mut seen = std::collections::HashSet::new();
                for a in target.allocations() {
                    prop_assert!(seen.insert(a.ip), "{} handed out twice", a.ip);
                }
            }
        }
    }
}
