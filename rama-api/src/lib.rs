//! Rama's resource model, kept as the original Rama/Hybridnet defined it so its users
//! can move over: group `networking.alibaba.com`, version `v1`.
//!
//! | kind | scope | what |
//! |---|---|---|
//! | Network | cluster | an L2 domain (Underlay: a VLAN and the nodes on it) or the overlay |
//! | Subnet | cluster | an address range of a Network |
//! | IPInstance | namespaced | one allocated address, named after it (creating it *is* the allocation) |
//! | NodeInfo | cluster | a node's VTEP (VXLAN) address and MAC |
//!
//! The schemas carry what OpenAPI v3 can say (enums, ranges, patterns); the rules that
//! need more (canonical CIDRs, overlaps, the VLAN/VNI range by network type,
//! immutability) are the validating webhook's.
use std::collections::BTreeMap;

use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod validate;

pub const GROUP: &str = "networking.alibaba.com";

/// Pod and namespace annotations.
pub mod annotations {
    pub const NETWORK_TYPE: &str = "networking.alibaba.com/network-type";
    pub const SPECIFIED_NETWORK: &str = "networking.alibaba.com/specified-network";
    pub const SPECIFIED_SUBNET: &str = "networking.alibaba.com/specified-subnet";
    pub const IP_FAMILY: &str = "networking.alibaba.com/ip-family";
    pub const IP_RETAIN: &str = "networking.alibaba.com/ip-retain";
    pub const IP_POOL: &str = "networking.alibaba.com/ip-pool";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NetworkType {
    Underlay,
    Overlay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum NetworkMode {
    VLAN,
    VXLAN,
}

/// A Network: an underlay L2 domain shared by a set of nodes, or the overlay.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.alibaba.com",
    version = "v1",
    kind = "Network",
    status = "NetworkStatus",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"NetID","type":"integer","jsonPath":".spec.netID"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.statistics.used"}"#,
    printcolumn = r#"{"name":"Total","type":"integer","jsonPath":".status.statistics.total"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    #[serde(rename = "type")]
    pub network_type: NetworkType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_mode_schema")]
    pub mode: Option<NetworkMode>,
    /// VLAN id (Underlay, 0–4094) or VNI (Overlay, 1–16777215).
    #[serde(rename = "netID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16_777_215))]
    pub net_id: Option<u32>,
    /// Underlay: the nodes that share this L2 domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
}

/// The schema of an optional enum without `null` among its values: kube-apiserver
/// 1.20 refuses a CRD whose schema lists `null` in an `enum` (its v1 → internal
/// conversion then fails its own "identical per-version schemas" check). The field
/// stays optional by not being required.
fn optional_mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "enum": ["VLAN", "VXLAN"]})
}

/// Address counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Statistics {
    pub total: u64,
    pub used: u64,
    pub available: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_list: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_list: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<Statistics>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_statistics: Option<Statistics>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum IpVersion {
    #[serde(rename = "4")]
    V4,
    #[serde(rename = "6")]
    V6,
}

/// The addresses of a Subnet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddressRange {
    pub version: IpVersion,
    pub cidr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    /// Handed out only to pods that ask for them by address.
    #[serde(rename = "reservedIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub reserved_ips: Vec<String>,
    /// Never handed out.
    #[serde(rename = "excludeIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_ips: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetConfig {
    /// Only pods that name this subnet get addresses from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
    /// Masquerade traffic from this subnet leaving the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_nat_outgoing: Option<bool>,
}

/// A Subnet: an address range of a Network.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.alibaba.com",
    version = "v1",
    kind = "Subnet",
    status = "SubnetStatus",
    printcolumn = r#"{"name":"Network","type":"string","jsonPath":".spec.network"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.range.cidr"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used"}"#,
    printcolumn = r#"{"name":"Available","type":"integer","jsonPath":".status.available"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct SubnetSpec {
    pub network: String,
    /// Overrides the Network's netID for this subnet.
    #[serde(rename = "netID", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16_777_215))]
    pub net_id: Option<u32>,
    pub range: AddressRange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<SubnetConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubnetStatus {
    pub total: u64,
    pub used: u64,
    pub available: u64,
    #[serde(
        rename = "lastAllocatedIP",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub last_allocated_ip: Option<String>,
}

/// The address an IPInstance holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceAddress {
    pub version: IpVersion,
    /// The address with the subnet's prefix length (`10.0.0.5/24`).
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(rename = "netID", default, skip_serializing_if = "Option::is_none")]
    pub net_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReferredObject {
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatefulBinding {
    /// The pod's ordinal in its StatefulSet.
    pub index: u32,
}

/// Who an IPInstance belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceBinding {
    /// Empty while the address is retained for a StatefulSet pod that went away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(rename = "podUID", default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referred_object: Option<ReferredObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful: Option<StatefulBinding>,
}

/// One allocated address. Named after the address (see [`instance_name`]): the API
/// server's name uniqueness makes a double allocation impossible.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.alibaba.com",
    version = "v1",
    kind = "IPInstance",
    namespaced,
    status = "IPInstanceStatus",
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.address.ip"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.binding.nodeName"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.binding.podName"}"#,
    printcolumn = r#"{"name":"Subnet","type":"string","jsonPath":".spec.subnet"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPInstanceSpec {
    pub network: String,
    pub subnet: String,
    pub address: InstanceAddress,
    pub binding: InstanceBinding,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPInstanceStatus {
    /// `Bound` or `Retained`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VtepInfo {
    pub ip: String,
    pub mac: String,
    #[serde(rename = "localIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub local_ips: Vec<String>,
}

/// A node's VXLAN tunnel endpoint, published by its agent.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "networking.alibaba.com",
    version = "v1",
    kind = "NodeInfo",
    printcolumn = r#"{"name":"VTEP","type":"string","jsonPath":".spec.vtepInfo.ip"}"#,
    printcolumn = r#"{"name":"MAC","type":"string","jsonPath":".spec.vtepInfo.mac"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfoSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_info: Option<VtepInfo>,
    /// The node's uplink: other nodes send underlay frames for this node's pods
    /// straight to its MAC (Rama's addition; absent in Hybridnet's NodeInfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<UplinkInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UplinkInfo {
    pub name: String,
    pub mac: String,
}

impl NetworkSpec {
    /// An Overlay network with VNI `vni`.
    pub fn overlay(vni: u32) -> Self {
        Self {
            network_type: NetworkType::Overlay,
            mode: Some(NetworkMode::VXLAN),
            net_id: Some(vni),
            node_selector: BTreeMap::new(),
        }
    }
}

impl AddressRange {
    /// The whole of `cidr`, nothing reserved or excluded.
    pub fn new(version: IpVersion, cidr: impl Into<String>) -> Self {
        Self {
            version,
            cidr: cidr.into(),
            gateway: None,
            start: None,
            end: None,
            reserved_ips: Vec::new(),
            exclude_ips: Vec::new(),
        }
    }
}

impl SubnetSpec {
    pub fn new(network: impl Into<String>, range: AddressRange) -> Self {
        Self {
            network: network.into(),
            net_id: None,
            range,
            config: None,
        }
    }
}

/// The DNS-safe name of an IPInstance for `ip`: dots and colons become dashes
/// (`10.0.0.5` → `10-0-0-5`, `fd00::5` → `fd00--5`), as the original did.
pub fn instance_name(ip: &std::net::IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The CRDs, in the order they are applied.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    vec![
        Network::crd(),
        Subnet::crd(),
        IPInstance::crd(),
        NodeInfo::crd(),
    ]
}

/// All CRDs as one YAML stream (what `deploy/crds/rama.yaml` holds).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out =
        String::from("# Generated by `cargo xtask gen-crds` from rama-api; do not edit by hand.\n");
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_dns_safe() {
        assert_eq!(instance_name(&"10.0.0.5".parse().expect("ip")), "10-0-0-5");
        assert_eq!(instance_name(&"fd00::5".parse().expect("ip")), "fd00--5");
    }

    #[test]
    fn committed_crds_are_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds/rama.yaml");
        let committed = std::fs::read_to_string(path).expect("deploy/crds/rama.yaml exists");
        let generated = crds_yaml().expect("serialises");
        assert!(
            committed == generated,
            "deploy/crds/rama.yaml is stale: run `cargo xtask gen-crds`"
        );
    }

    #[test]
    fn no_schema_lists_null_in_an_enum() {
        fn walk(v: &serde_json::Value, path: &str) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(values) = map.get("enum").and_then(|e| e.as_array()) {
                        assert!(
                            !values.iter().any(|x| x.is_null()),
                            "null in enum at {path}"
                        );
                    }
                    for (k, child) in map {
                        walk(child, &format!("{path}.{k}"));
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|c| walk(c, path)),
                _ => {}
            }
        }
        for crd in crds() {
            walk(
                &serde_json::to_value(&crd).expect("json"),
                &crd.metadata.name.unwrap_or_default(),
            );
        }
    }

    #[test]
    fn objects_round_trip_in_the_original_field_names() {
        let yaml = r#"
apiVersion: networking.alibaba.com/v1
kind: Subnet
metadata: {name: vlan100}
spec:
  network: underlay
  netID: 100
  range: {version: "4", cidr: 10.100.0.0/24, gateway: 10.100.0.1, reservedIPs: [10.100.0.3], excludeIPs: [10.100.0.2]}
  config: {private: true, autoNatOutgoing: false}
"#;
        let subnet: Subnet = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(subnet.spec.net_id, Some(100));
        assert_eq!(subnet.spec.range.version, IpVersion::V4);
        assert_eq!(subnet.spec.range.exclude_ips, ["10.100.0.2"]);
        let back = serde_yaml::to_string(&subnet).expect("serialises");
        assert!(
            back.contains("netID: 100")
                && back.contains("reservedIPs:")
                && back.contains("excludeIPs:"),
            "{back}"
        );
    }
}
