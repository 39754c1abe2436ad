//! The agent API: what `rama-cni` asks the node agent over its unix socket, and what
//! the agent answers. One request per connection, one JSON document each way,
//! newline-terminated; both sides name the API version so a plugin and an agent of
//! different releases (a rolling upgrade) refuse each other clearly instead of
//! misreading a field.
//!
//! The agent's answer is version-neutral ([`AttachResult`]); the plugin renders it in
//! the spec version the runtime asked for ([`crate::result`]).
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Bumped on any incompatible change of the types below.
pub const API_VERSION: u32 = 1;

/// A pod, as the runtime names it in `CNI_ARGS`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkKind {
    Underlay,
    Overlay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
    DualStack,
}

/// Which network a pod asks for (standalone mode; in Kubernetes the pod's
/// annotations say it and the controller allocates).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_type: Option<NetworkKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_family: Option<IpFamily>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpAddr>,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        *self == Selection::default()
    }
}

/// The key of an attachment, as the spec's GC names them (`containerID`, `ifname`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AttachmentKey {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// One container's interface on Rama's network (ADD, DEL, CHECK).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attachment {
    /// The network configuration's `name` (part of the spec's attachment key).
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// The pod's network namespace; DEL may come after it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    #[serde(default, skip_serializing_if = "Selection::is_empty")]
    pub selection: Selection,
}

impl Attachment {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// What CHECK expects, from `prevResult`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expected {
    pub ips: Vec<IpNet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_mac: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "camelCase", deny_unknown_fields)]
pub enum Call {
    Add {
        attachment: Attachment,
    },
    Del {
        attachment: Attachment,
    },
    Check {
        attachment: Attachment,
        #[serde(default)]
        expected: Expected,
    },
    Status,
    /// Remove every attachment of `network` not in `valid`, and what it holds.
    Gc {
        network: String,
        valid: Vec<AttachmentKey>,
    },
}

impl Call {
    pub fn verb(&self) -> &'static str {
        match self {
            Call::Add { .. } => "add",
            Call::Del { .. } => "del",
            Call::Check { .. } => "check",
            Call::Status => "status",
            Call::Gc { .. } => "gc",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    pub api_version: u32,
    pub call: Call,
}

impl Request {
    pub fn new(call: Call) -> Self {
        Self {
            api_version: API_VERSION,
            call,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for the pod's interface; absent for the host side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpConfig {
    /// The address with the prefix configured on the interface (`10.0.0.5/32`).
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into [`AttachResult::interfaces`].
    pub interface: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// What ADD configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttachResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusReply {
    pub ready: bool,
    /// `ebpf` or `fallback`.
    pub datapath: String,
    /// Why the agent is not ready (or degraded: serving its last good state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Reply {
    Attached(AttachResult),
    Done,
    Status(StatusReply),
}

/// An error with its CNI code; the plugin passes it on as the spec's error object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Response {
    Ok(Reply),
    Error(ApiError),
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        ApiError {
            code: e.code(),
            msg: e.msg(),
            details: e.details(),
        }
    }
}

impl From<ApiError> for crate::Error {
    fn from(e: ApiError) -> Self {
        crate::Error::Agent {
            code: e.code,
            msg: e.msg,
            details: e.details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let req = Request::new(Call::Gc {
            network: "rama".into(),
            valid: vec![AttachmentKey {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            }],
        });
        let text = serde_json::to_string(&req).expect("json");
        assert!(text.contains(r#""verb":"gc""#), "{text}");
        assert!(text.contains(r#""containerID":"c1""#), "{text}");
        assert_eq!(serde_json::from_str::<Request>(&text).expect("back"), req);
        let bad = text.replace("\"network\"", "\"netwrk\"");
        assert!(serde_json::from_str::<Request>(&bad).is_err());
    }
}
