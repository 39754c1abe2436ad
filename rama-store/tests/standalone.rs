//! The standalone store: files as the source of truth, atomic writes under a lock,
//! several processes on one directory.
use std::{collections::HashSet, net::IpAddr, path::PathBuf};

use rama_api::{AddressRange, IpVersion, Network, NetworkSpec, Subnet, SubnetSpec};
use rama_ipam::{IpFamilies, PodKey, Request};
use rama_store::{StandaloneStore, StoreError};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rama-store-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn seeded(dir: &std::path::Path) -> StandaloneStore {
    let store = StandaloneStore::open(dir).expect("open");
    let network = Network::new("overlay", NetworkSpec::overlay(4096));
    store.put("networks", &network).expect("network");
    let subnet = Subnet::new(
        "overlay-v4",
        SubnetSpec::new("overlay", AddressRange::new(IpVersion::V4, "10.244.0.0/16")),
    );
    store.put("subnets", &subnet).expect("subnet");
    store
}

fn request(pod: &str, node: &str) -> Request {
    Request {
        pod: Some(PodKey::new("default", pod)),
        node: node.into(),
        network_type: Some(rama_ipam::NetworkType::Overlay),
        families: IpFamilies::V4,
        ..Default::default()
    }
}

fn instance_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir.join("ipinstances/default")) {
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn allocation_writes_an_instance_and_the_subnet_status() {
    let tmp = TempDir::new("alloc");
    let store = seeded(&tmp.0);
    let got = store.allocate(&request("web", "n1")).expect("allocate");
    assert_eq!(got[0].spec.address.ip, "10.244.0.1/16");
    let file = tmp.0.join("ipinstances/default/10-244-0-1.yaml");
    let text = std::fs::read_to_string(&file).expect("instance file");
    assert!(
        text.contains("nodeName: n1") && text.contains("podName: web"),
        "{text}"
    );
    let status = store
        .subnet_status("overlay-v4")
        .expect("read")
        .expect("status");
    assert_eq!(
        (status.used, status.last_allocated_ip.as_deref()),
        (1, Some("10.244.0.1"))
    );
    // A second store (another agent) sees it and continues after the cursor.
    let other = StandaloneStore::open(&tmp.0).expect("open");
    assert_eq!(
        other.allocate(&request("db", "n2")).expect("allocate")[0]
            .spec
            .address
            .ip,
        "10.244.0.2/16"
    );
    assert_eq!(
        other
            .release(&PodKey::new("default", "web"))
            .expect("release"),
        ["10.244.0.1".parse::<IpAddr>().expect("ip")]
    );
    assert!(!file.exists());
    assert_eq!(
        store
            .subnet_status("overlay-v4")
            .expect("read")
            .expect("status")
            .used,
        1
    );
}

#[test]
fn statefulset_addresses_survive_release_and_reopen() {
    let tmp = TempDir::new("sts");
    let store = seeded(&tmp.0);
    let mut req = request("web-0", "n1");
    req.retain = true;
    let ip = store.allocate(&req).expect("allocate")[0]
        .spec
        .address
        .ip
        .clone();
    assert!(
        store
            .release(&PodKey::new("default", "web-0"))
            .expect("release")
            .is_empty()
    );
    let text =
        std::fs::read_to_string(tmp.0.join("ipinstances/default/10-244-0-1.yaml")).expect("kept");
    assert!(
        text.contains("phase: Retained") && !text.contains("nodeName"),
        "{text}"
    );
    drop(store);
    let reopened = StandaloneStore::open(&tmp.0).expect("open");
    // Someone else cannot get it meanwhile; the pod of the same name does, on n2.
    assert_eq!(
        reopened.allocate(&request("other", "n1")).expect("other")[0]
            .spec
            .address
            .ip,
        "10.244.0.2/16"
    );
    req.node = "n2".into();
    let again = reopened.allocate(&req).expect("recreated");
    assert_eq!(again[0].spec.address.ip, ip);
    assert_eq!(again[0].spec.binding.node_name.as_deref(), Some("n2"));
}

#[test]
fn bad_files_are_refused_naming_file_and_field() {
    let tmp = TempDir::new("bad");
    let store = seeded(&tmp.0);
    std::fs::write(
        tmp.0.join("subnets/broken.yaml"),
        "apiVersion: networking.alibaba.com/v1\nkind: Subnet\nmetadata: {name: broken}\nspec: {network: overlay, range: {version: \"4\", cidr: 10.300.0.0/24}}\n",
    )
    .expect("write");
    let e = store.allocate(&request("a", "n1")).expect_err("bad cidr");
    assert_eq!(
        e.to_string(),
        "Subnet \"broken\": spec.range.cidr: \"10.300.0.0/24\" is not a CIDR"
    );
    std::fs::write(tmp.0.join("subnets/broken.yaml"), "spec: [not, a, subnet").expect("write");
    let e = store.allocate(&request("a", "n1")).expect_err("bad yaml");
    assert!(
        matches!(e, StoreError::Parse { .. }) && e.to_string().contains("subnets/broken.yaml"),
        "{e}"
    );
    assert!(
        instance_files(&tmp.0).is_empty(),
        "nothing allocated half-way"
    );
}

#[test]
fn a_crash_between_temp_write_and_rename_loses_nothing() {
    let tmp = TempDir::new("crash");
    let store = seeded(&tmp.0);
    store.allocate(&request("a", "n1")).expect("allocate");
    // What a writer that died after writing its temporaries, before renaming, leaves:
    // a complete new instance and a truncated status, both under temporary names.
    let inst_dir = tmp.0.join("ipinstances/default");
    std::fs::copy(
        inst_dir.join("10-244-0-1.yaml"),
        inst_dir.join(".tmp-99999-0"),
    )
    .expect("copy");
    std::fs::write(tmp.0.join("status/subnets/.tmp-99999-1"), "total: 6").expect("write");
    // Every committed object is intact and the next writer carries on.
    let got = store
        .allocate(&request("b", "n1"))
        .expect("allocate after crash");
    assert_eq!(got[0].spec.address.ip, "10.244.0.2/16");
    assert_eq!(instance_files(&tmp.0).len(), 2);
    assert!(
        !inst_dir.join(".tmp-99999-0").exists(),
        "leftover temporaries are removed"
    );
    assert_eq!(
        store
            .subnet_status("overlay-v4")
            .expect("read")
            .expect("status")
            .used,
        2
    );
}

/// Run by `concurrent_processes_never_duplicate` in child processes.
#[test]
#[ignore = "a child of concurrent_processes_never_duplicate, run with RAMA_STORE_CHILD set"]
fn child_allocates() {
    let Ok(spec) = std::env::var("RAMA_STORE_CHILD") else {
        panic!("run by concurrent_processes_never_duplicate only");
    };
    let (dir, tag) = spec.split_once(',').expect("dir,tag");
    let store = StandaloneStore::open(dir).expect("open");
    for i in 0..60 {
        store
            .allocate(&request(&format!("{tag}-{i}"), tag))
            .expect("allocate");
        if i % 3 == 0 {
            store
                .release(&PodKey::new("default", format!("{tag}-{i}")))
                .expect("release");
        }
    }
}

#[test]
fn concurrent_processes_never_duplicate() {
    let tmp = TempDir::new("race");
    seeded(&tmp.0);
    let exe = std::env::current_exe().expect("test binary");
    let children: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|tag| {
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", "child_allocates", "--quiet"])
                .env("RAMA_STORE_CHILD", format!("{},{tag}", tmp.0.display()))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    for mut child in children {
        assert!(child.wait().expect("wait").success(), "a child failed");
    }
    let store = StandaloneStore::open(&tmp.0).expect("open");
    let instances = store.ip_instances().expect("list");
    assert_eq!(
        instances.len(),
        3 * 40,
        "60 allocated, 20 released, per process"
    );
    let ips: HashSet<&str> = instances
        .iter()
        .map(|i| i.spec.address.ip.as_str())
        .collect();
    assert_eq!(
        ips.len(),
        instances.len(),
        "an address was handed out twice"
    );
    let status = store
        .subnet_status("overlay-v4")
        .expect("read")
        .expect("status");
    assert_eq!(status.used, 120);
}
