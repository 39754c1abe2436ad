//! The success result, in the spec version of the configuration (SPEC.md, "Section 5:
//! Result Types"). The runtime libraries in use today (libcni 1.1.x) refuse a result
//! labelled with a version they do not know, so the label is always the version the
//! configuration asked for and the shape is that version's:
//!
//! | version | shape |
//! |---|---|
//! | 0.3.0, 0.3.1, 0.4.0 | `ips[].version` ("4"/"6") required |
//! | 1.0.0 | no `ips[].version` |
//! | 1.1.0 | as 1.0.0, plus `interfaces[].mtu` |
//!
//! When Rama is not the first plugin of a chain, the `prevResult` it got is carried
//! forward: its interfaces, addresses, routes and DNS come first, Rama's after.
use serde_json::{Map, Value, json};

use crate::{
    CniVersion, Error, Result,
    api::{AttachResult, Expected},
};

fn decode(detail: impl Into<String>) -> Error {
    Error::Decode {
        detail: detail.into(),
    }
}

fn array<'a>(prev: &'a Value, field: &str) -> Result<&'a [Value]> {
    match prev.get(field) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(decode(format!("prevResult.{field} must be an array"))),
    }
}

/// An `ips[]` entry labelled for `version`.
fn ip_entry(mut entry: Map<String, Value>, version: CniVersion) -> Map<String, Value> {
    if version.ips_carry_version() {
        if !entry.contains_key("version") {
            let v6 = entry
                .get("address")
                .and_then(Value::as_str)
                .is_some_and(|a| a.contains(':'));
            entry.insert("version".into(), json!(if v6 { "6" } else { "4" }));
        }
    } else {
        entry.remove("version");
    }
    entry
}

/// The result document for `version`: `prev`'s entries (if any), then `ours`.
pub fn render(version: CniVersion, ours: &AttachResult, prev: Option<&Value>) -> Result<Value> {
    let mut interfaces: Vec<Value> = Vec::new();
    let mut ips: Vec<Value> = Vec::new();
    let mut routes: Vec<Value> = Vec::new();
    let mut dns = json!({});
    if let Some(prev) = prev {
        interfaces.extend(array(prev, "interfaces")?.iter().cloned());
        for ip in array(prev, "ips")? {
            let Value::Object(entry) = ip else {
                return Err(decode("prevResult.ips entries must be objects"));
            };
            ips.push(Value::Object(ip_entry(entry.clone(), version)));
        }
        routes.extend(array(prev, "routes")?.iter().cloned());
        if let Some(d) = prev.get("dns").filter(|d| d.is_object()) {
            dns = d.clone();
        }
    }
    let offset = interfaces.len();
    for i in &ours.interfaces {
        let mut entry = json!({"name": i.name, "mac": i.mac});
        if let Some(sandbox) = &i.sandbox {
            entry["sandbox"] = json!(sandbox);
        }
        if let (Some(mtu), true) = (i.mtu, version.interfaces_carry_mtu()) {
            entry["mtu"] = json!(mtu);
        }
        interfaces.push(entry);
    }
    for ip in &ours.ips {
        let mut entry = Map::new();
        entry.insert("address".into(), json!(ip.address.to_string()));
        if let Some(gw) = ip.gateway {
            entry.insert("gateway".into(), json!(gw.to_string()));
        }
        entry.insert("interface".into(), json!(ip.interface + offset));
        ips.push(Value::Object(ip_entry(entry, version)));
    }
    for r in &ours.routes {
        let mut entry = json!({"dst": r.dst.to_string()});
        if let Some(gw) = r.gw {
            entry["gw"] = json!(gw.to_string());
        }
        routes.push(entry);
    }
    Ok(json!({
        "cniVersion": version.as_str(),
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    }))
}

/// What CHECK must find, from `prevResult`: the addresses given to the interface
/// `ifname` in the sandbox, and its MAC.
pub fn expected(prev: &Value, ifname: &str) -> Result<Expected> {
    let interfaces = array(prev, "interfaces")?;
    let index = interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").is_some()
    });
    let Some(index) = index else {
        return Err(Error::InvalidConfig {
            detail: format!("prevResult lists no sandbox interface {ifname:?}"),
        });
    };
    let sandbox_mac = interfaces[index]
        .get("mac")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut out = Expected {
        ips: Vec::new(),
        sandbox_mac,
    };
    for ip in array(prev, "ips")? {
        if ip.get("interface").and_then(Value::as_u64) != Some(index as u64) {
            continue;
        }
        let address = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| decode("prevResult.ips[].address must be a string"))?;
        out.ips.push(address.parse().map_err(|_| {
            decode(format!(
                "prevResult.ips[].address {address:?} is not a CIDR"
            ))
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::api::{Interface, IpConfig, Route};

    use super::*;

    fn ours() -> AttachResult {
        AttachResult {
            interfaces: vec![
                Interface {
                    name: "rama1a2b".into(),
                    mac: "02:00:00:00:00:01".into(),
                    sandbox: None,
                    mtu: Some(1450),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:02".into(),
                    sandbox: Some("/run/netns/p".into()),
                    mtu: Some(1450),
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.244.0.5/32".parse().expect("cidr"),
                    gateway: Some("169.254.1.1".parse().expect("ip")),
                    interface: 1,
                },
                IpConfig {
                    address: "fd00::5/128".parse().expect("cidr"),
                    gateway: Some("fe80::1".parse().expect("ip")),
                    interface: 1,
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().expect("cidr"),
                gw: Some("169.254.1.1".parse().expect("ip")),
            }],
        }
    }

    #[test]
    fn each_version_gets_its_shape() {
        let old = render(CniVersion::V0_4_0, &ours(), None).expect("0.4.0");
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let v1 = render(CniVersion::V1_0_0, &ours(), None).expect("1.0.0");
        assert!(v1["ips"][0].get("version").is_none());
        assert!(v1["interfaces"][1].get("mtu").is_none());
        let v11 = render(CniVersion::V1_1_0, &ours(), None).expect("1.1.0");
        assert_eq!(v11["interfaces"][1]["mtu"], 1450);
        assert_eq!(v11["ips"][0]["interface"], 1);
        assert_eq!(v11["routes"][0]["gw"], "169.254.1.1");
    }

    #[test]
    fn a_previous_result_comes_first_and_check_reads_it_back() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0"}],
            "ips": [{"address": "192.0.2.1/24", "interface": 0}],
            "dns": {"nameservers": ["192.0.2.53"]}
        });
        let out = render(CniVersion::V0_3_1, &ours(), Some(&prev)).expect("chained");
        assert_eq!(out["interfaces"].as_array().expect("list").len(), 3);
        assert_eq!(out["ips"][0]["version"], "4");
        assert_eq!(out["ips"][1]["interface"], 2);
        assert_eq!(out["dns"]["nameservers"][0], "192.0.2.53");
        let exp = expected(&out, "eth0").expect("expected");
        assert_eq!(exp.ips.len(), 2);
        assert_eq!(exp.sandbox_mac.as_deref(), Some("02:00:00:00:00:02"));
        assert_eq!(expected(&out, "eth9").expect_err("none").code(), 7);
        let bad = json!({"ips": {}});
        assert_eq!(
            render(CniVersion::V1_0_0, &ours(), Some(&bad))
                .expect_err("bad")
                .code(),
            6
        );
    }
}
