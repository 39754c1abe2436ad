//! The generated CRDs against a real kube-apiserver (1.20.2, built from Debian's
//! source by `cargo xtask kube-apiserver`): the server accepts them as structural
//! schemas, establishes them, and stores and returns objects of every kind with the
//! original field names. `cargo xtask test` starts the server and sets
//! RAMA_TEST_APISERVER and RAMA_TEST_TOKEN.
use std::process::Command;

use serde_json::{Value, json};

struct Api {
    server: String,
    token: String,
}

impl Api {
    fn from_env() -> Option<Self> {
        Some(Self {
            server: std::env::var("RAMA_TEST_APISERVER").ok()?,
            token: std::env::var("RAMA_TEST_TOKEN").ok()?,
        })
    }

    /// One request; (HTTP status, body as JSON).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .args(["-H", &format!("Authorization: Bearer {}", self.token)])
            .args(["-H", "Content-Type: application/json"]);
        if let Some(body) = body {
            cmd.args(["--data-binary", &body.to_string()]);
        }
        let out = cmd
            .arg(format!("{}{path}", self.server))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (
            code.trim().parse().expect("HTTP status"),
            serde_json::from_str(body).unwrap_or(Value::Null),
        )
    }
}

#[test]
fn crds_are_accepted_and_objects_round_trip() {
    let Some(api) = Api::from_env() else {
        eprintln!(
            "SKIP: no API server (RAMA_TEST_APISERVER/RAMA_TEST_TOKEN unset); `cargo xtask test` starts one"
        );
        return;
    };
    const CRDS: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    for crd in rama_api::crds() {
        let body = serde_json::to_value(&crd).expect("CRD as JSON");
        let name = crd.metadata.name.clone().expect("named");
        let _ = api.call("DELETE", &format!("{CRDS}/{name}"), None);
        // A deleted CRD lingers while its objects are removed.
        let mut created = (0, Value::Null);
        for _ in 0..60 {
            created = api.call("POST", CRDS, Some(&body));
            if created.0 != 409 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        assert_eq!(created.0, 201, "{name} refused: {}", created.1);
        let mut established = false;
        for _ in 0..60 {
            let (_, got) = api.call("GET", &format!("{CRDS}/{name}"), None);
            established = got["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True");
            if established {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        assert!(established, "{name} never became Established");
    }

    let base = "/apis/networking.alibaba.com/v1";
    let objects = [
        (
            format!("{base}/networks"),
            json!({"apiVersion": "networking.alibaba.com/v1", "kind": "Network",
                   "metadata": {"name": "underlay1"},
                   "spec": {"type": "Underlay", "mode": "VLAN", "netID": 100, "nodeSelector": {"rama/underlay": "1"}}}),
        ),
        (
            format!("{base}/subnets"),
            json!({"apiVersion": "networking.alibaba.com/v1", "kind": "Subnet",
                   "metadata": {"name": "vlan100"},
                   "spec": {"network": "underlay1", "range": {"version": "4", "cidr": "10.100.0.0/24",
                            "gateway": "10.100.0.1", "reservedIPs": ["10.100.0.3"], "excludeIPs": ["10.100.0.2"]},
                            "config": {"private": false}}}),
        ),
        (
            format!("{base}/namespaces/default/ipinstances"),
            json!({"apiVersion": "networking.alibaba.com/v1", "kind": "IPInstance",
                   "metadata": {"name": rama_api::instance_name(&"10.100.0.10".parse().expect("ip"))},
                   "spec": {"network": "underlay1", "subnet": "vlan100",
                            "address": {"version": "4", "ip": "10.100.0.10/24", "gateway": "10.100.0.1", "netID": 100},
                            "binding": {"nodeName": "n1", "podName": "web-0", "stateful": {"index": 0}}}}),
        ),
        (
            format!("{base}/nodeinfos"),
            json!({"apiVersion": "networking.alibaba.com/v1", "kind": "NodeInfo",
                   "metadata": {"name": "n1"},
                   "spec": {"vtepInfo": {"ip": "10.0.0.1", "mac": "02:00:00:00:00:01"}}}),
        ),
    ];
    for (path, object) in &objects {
        let (code, body) = api.call("POST", path, Some(object));
        assert_eq!(code, 201, "{path}: {body}");
        let name = object["metadata"]["name"].as_str().expect("name");
        let (code, got) = api.call("GET", &format!("{path}/{name}"), None);
        assert_eq!(code, 200);
        assert_eq!(got["spec"], object["spec"], "{path} changed what it stored");
    }
    // The same IPInstance name twice is refused: this is what makes allocation safe.
    let (code, _) = api.call("POST", &objects[2].0, Some(&objects[2].1));
    assert_eq!(
        code, 409,
        "a second IPInstance for 10.100.0.10 must conflict"
    );
    // The schema refuses what it can express: a netID beyond 24 bits, a bad enum.
    let mut bad = objects[0].1.clone();
    bad["metadata"]["name"] = json!("bad-netid");
    bad["spec"]["netID"] = json!(16_777_216);
    let (code, body) = api.call("POST", &objects[0].0, Some(&bad));
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.netID")),
        "{body}"
    );
    bad["metadata"]["name"] = json!("bad-type");
    bad["spec"]["netID"] = json!(1);
    bad["spec"]["type"] = json!("Wormhole");
    let (code, body) = api.call("POST", &objects[0].0, Some(&bad));
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("spec.type")),
        "{body}"
    );
}
