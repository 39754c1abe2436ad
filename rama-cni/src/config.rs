//! The network configuration on stdin (SPEC.md, "Section 1: Network configuration
//! format"), read field by field so a refusal names the field and what is wrong with
//! it.
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0",
//!   "name": "rama",
//!   "type": "rama-cni",
//!   "socket": "/run/rama/cni.sock",
//!   "queueDir": "/var/lib/rama/cni-queue",
//!   "agentTimeoutSeconds": 30
//! }
//! ```
//!
//! Fields the runtime adds are accepted: `args`, `capabilities`, `runtimeConfig`,
//! `dns`, `prevResult`, `cniVersions`, and for GC `cni.dev/valid-attachments` (and
//! `cni.dev/attachments`, the name an earlier libcni used). Anything else is error 2,
//! naming the field — including `ipam`, since Rama allocates addresses itself.
use std::{path::PathBuf, time::Duration};

use serde_json::{Map, Value};

use crate::{CniVersion, Error, Result, api::AttachmentKey, defaults, invalid_config, unsupported};

/// The plugin's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    pub socket: PathBuf,
    pub queue_dir: PathBuf,
    pub agent_timeout: Duration,
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still knows.
    pub valid_attachments: Option<Vec<AttachmentKey>>,
}

const RUNTIME_FIELDS: [&str; 8] = [
    "args",
    "capabilities",
    "runtimeConfig",
    "dns",
    "prevResult",
    "cniVersions",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];
const OWN_FIELDS: [&str; 6] = [
    "cniVersion",
    "name",
    "type",
    "socket",
    "queueDir",
    "agentTimeoutSeconds",
];

fn decode(detail: impl Into<String>) -> Error {
    Error::Decode {
        detail: detail.into(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>> {
    match obj.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(decode(format!(
            "field {field:?} must be a string, got {}",
            kind(other)
        ))),
    }
}

/// Parses stdin as a JSON object (error 6 when it is not).
pub fn object(stdin: &[u8]) -> Result<Map<String, Value>> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(decode(
            "stdin is empty: the network configuration (JSON) is expected there",
        ));
    }
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(decode(format!(
            "the network configuration must be a JSON object, got {}",
            kind(&other)
        ))),
        Err(e) => Err(decode(format!(
            "the network configuration is not JSON: {e}"
        ))),
    }
}

/// The version the output is labelled with: the configuration's `cniVersion` when it
/// can be read at all, else the newest (the spec leaves this case open).
pub fn output_version(obj: Option<&Map<String, Value>>) -> CniVersion {
    obj.and_then(|o| o.get("cniVersion"))
        .and_then(Value::as_str)
        .and_then(|s| CniVersion::parse(s).ok())
        .unwrap_or(CniVersion::LATEST)
}

/// The configuration's version: `cniVersion`, or with only `cniVersions` (1.1) the
/// newest both sides support.
pub fn version_of(obj: &Map<String, Value>) -> Result<CniVersion> {
    if let Some(v) = string(obj, "cniVersion")? {
        return CniVersion::parse(v);
    }
    match obj.get("cniVersions") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|s| CniVersion::parse(s).ok())
            .max()
            .ok_or_else(|| Error::IncompatibleVersion {
                detail: format!(
                    "none of cniVersions {} is supported; rama supports {}",
                    Value::Array(list.clone()),
                    CniVersion::ALL.map(CniVersion::as_str).join(", ")
                ),
            }),
        Some(other) => Err(decode(format!(
            "field \"cniVersions\" must be an array of strings, got {}",
            kind(other)
        ))),
        None => Err(invalid_config("field \"cniVersion\" is missing")),
    }
}

/// A network name as the spec allows: alphanumeric first, then alphanumerics, `_`,
/// `.`, `-`.
fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        return Err(invalid_config(format!(
            "field \"name\" {name:?}: must start with a letter or digit, then only letters, \
             digits, '_', '.' or '-'"
        )));
    }
    Ok(())
}

fn attachments(value: &Value, field: &str) -> Result<Vec<AttachmentKey>> {
    serde_json::from_value(value.clone()).map_err(|e| {
        decode(format!(
            "field {field:?} must be a list of {{\"containerID\", \"ifname\"}}: {e}"
        ))
    })
}

impl NetConf {
    /// Reads and checks the whole configuration.
    pub fn parse(stdin: &[u8]) -> Result<Self> {
        let obj = object(stdin)?;
        Self::from_object(&obj)
    }

    pub fn from_object(obj: &Map<String, Value>) -> Result<Self> {
        if obj.contains_key("ipam") {
            return Err(unsupported(
                "field \"ipam\": rama allocates addresses itself (from its Subnets); remove \
                 the ipam section",
            ));
        }
        if let Some(field) = obj
            .keys()
            .find(|k| !RUNTIME_FIELDS.contains(&k.as_str()) && !OWN_FIELDS.contains(&k.as_str()))
        {
            return Err(unsupported(format!(
                "field {field:?} is not a rama-cni setting (known: {})",
                OWN_FIELDS.join(", ")
            )));
        }
        let cni_version = version_of(obj)?;
        let name =
            string(obj, "name")?.ok_or_else(|| invalid_config("field \"name\" is missing"))?;
        check_name(name)?;
        match string(obj, "type")? {
            Some(t) if t == defaults::PLUGIN_TYPE => {}
            Some(t) => {
                return Err(invalid_config(format!(
                    "field \"type\" is {t:?}, but this plugin is {:?}",
                    defaults::PLUGIN_TYPE
                )));
            }
            None => return Err(invalid_config("field \"type\" is missing")),
        }
        let path = |field: &str, default: &str| -> Result<PathBuf> {
            match string(obj, field)? {
                Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
                Some(p) => Err(invalid_config(format!(
                    "field {field:?} {p:?} must be an absolute path"
                ))),
                None => Ok(PathBuf::from(default)),
            }
        };
        let socket = path("socket", defaults::SOCKET)?;
        let queue_dir = path("queueDir", defaults::QUEUE_DIR)?;
        let agent_timeout = match obj.get("agentTimeoutSeconds") {
            None => Duration::from_secs(defaults::AGENT_TIMEOUT_SECONDS),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(s @ 1..=600) => Duration::from_secs(s),
                _ => {
                    return Err(invalid_config(format!(
                        "field \"agentTimeoutSeconds\" is {n}; it must be 1–600"
                    )));
                }
            },
            Some(other) => {
                return Err(decode(format!(
                    "field \"agentTimeoutSeconds\" must be a number, got {}",
                    kind(other)
                )));
            }
        };
        let prev_result = match obj.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(other) => {
                return Err(decode(format!(
                    "field \"prevResult\" must be an object, got {}",
                    kind(other)
                )));
            }
        };
        let valid_attachments = match (
            obj.get("cni.dev/valid-attachments"),
            obj.get("cni.dev/attachments"),
        ) {
            (Some(v), _) => Some(attachments(v, "cni.dev/valid-attachments")?),
            (None, Some(v)) => Some(attachments(v, "cni.dev/attachments")?),
            (None, None) => None,
        };
        Ok(NetConf {
            cni_version,
            name: name.to_owned(),
            socket,
            queue_dir,
            agent_timeout,
            prev_result,
            valid_attachments,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<NetConf> {
        NetConf::parse(json.as_bytes())
    }

    #[test]
    fn a_minimal_config_takes_the_defaults() {
        let c = parse(r#"{"cniVersion":"1.0.0","name":"rama","type":"rama-cni"}"#).expect("ok");
        assert_eq!(c.cni_version, CniVersion::V1_0_0);
        assert_eq!(c.socket, PathBuf::from(defaults::SOCKET));
        assert_eq!(c.agent_timeout, Duration::from_secs(30));
        let c = parse(
            r#"{"cniVersions":["0.4.0","1.1.0","9.9.9"],"name":"n","type":"rama-cni",
               "socket":"/x/s","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}],
               "runtimeConfig":{},"args":{},"capabilities":{},"dns":{}}"#,
        )
        .expect("ok");
        assert_eq!(c.cni_version, CniVersion::V1_1_0);
        assert_eq!(c.valid_attachments.expect("gc list").len(), 1);
    }

    #[test]
    fn refusals_have_the_spec_code_and_name_the_field() {
        for (json, code, needle) in [
            ("", 6, "empty"),
            ("{not json", 6, "not JSON"),
            ("[1]", 6, "JSON object"),
            (r#"{"name":"r","type":"rama-cni"}"#, 7, "cniVersion"),
            (
                r#"{"cniVersion":"0.2.0","name":"r","type":"rama-cni"}"#,
                1,
                "0.2.0",
            ),
            (
                r#"{"cniVersion":1,"name":"r","type":"rama-cni"}"#,
                6,
                "cniVersion",
            ),
            (r#"{"cniVersion":"1.0.0","type":"rama-cni"}"#, 7, "name"),
            (
                r#"{"cniVersion":"1.0.0","name":"-x","type":"rama-cni"}"#,
                7,
                "name",
            ),
            (r#"{"cniVersion":"1.0.0","name":"r"}"#, 7, "type"),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"bridge"}"#,
                7,
                "bridge",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"rama-cni","bogus":1}"#,
                2,
                "bogus",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"rama-cni","ipam":{}}"#,
                2,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"rama-cni","socket":7}"#,
                6,
                "socket",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"rama-cni","socket":"rel"}"#,
                7,
                "absolute",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"rama-cni","agentTimeoutSeconds":0}"#,
                7,
                "1–600",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"rama-cni","agentTimeoutSeconds":"5"}"#,
                6,
                "agentTimeoutSeconds",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"r","type":"rama-cni","prevResult":[]}"#,
                6,
                "prevResult",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"r","type":"rama-cni","cni.dev/valid-attachments":[{"id":1}]}"#,
                6,
                "valid-attachments",
            ),
            (
                r#"{"cniVersions":["0.1.0"],"name":"r","type":"rama-cni"}"#,
                1,
                "cniVersions",
            ),
        ] {
            let e = parse(json).expect_err(json);
            assert_eq!(e.code(), code, "{json}: {e}");
            assert!(e.to_string().contains(needle), "{json}: {e}");
        }
    }
}
