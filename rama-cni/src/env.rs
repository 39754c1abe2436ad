//! The invocation: `CNI_COMMAND` and the parameters the spec passes in the
//! environment (SPEC.md, "Parameters"), checked per verb.
//!
//! | verb | required | optional |
//! |---|---|---|
//! | ADD, CHECK | `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` | `CNI_ARGS`, `CNI_PATH` |
//! | DEL | `CNI_CONTAINERID`, `CNI_IFNAME` | `CNI_NETNS` (may be gone), `CNI_ARGS`, `CNI_PATH` |
//! | STATUS, GC, VERSION | — | `CNI_PATH` |
//!
//! Rama delegates to no other plugin, so `CNI_PATH` is never needed.
use std::{fmt, path::PathBuf};

use crate::{Result, args::CniArgs, invalid_env};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(invalid_env(format!(
                    "CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Whether the verb concerns one attachment (container id + interface).
    pub fn is_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the environment says about this invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Set for ADD, DEL and CHECK.
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
}

/// A container id as the spec allows: an alphanumeric first character, then
/// alphanumerics, `_`, `.` or `-`.
pub fn check_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid_env(format!(
            "CNI_CONTAINERID={id:?}: must start with a letter or digit, then only letters, \
             digits, '_', '.' or '-'"
        )));
    }
    Ok(())
}

/// An interface name as the spec and Linux allow: 1–15 bytes (IFNAMSIZ is 16 with
/// the NUL, include/uapi/linux/if.h), not `.` or `..`, no `/`, `:` or whitespace.
pub fn check_ifname(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > 15 {
        Some(format!(
            "is {} bytes long; Linux interface names have at most 15",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("is not a usable name".to_owned())
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace".to_owned())
    } else {
        None
    };
    match problem {
        Some(p) => Err(invalid_env(format!("CNI_IFNAME={name:?} {p}"))),
        None => Ok(()),
    }
}

impl Invocation {
    /// Reads the invocation through `get` (the process environment in the binary, a
    /// table in tests).
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let command = match get("CNI_COMMAND") {
            Some(c) => Command::parse(&c)?,
            None => return Err(invalid_env("CNI_COMMAND is not set")),
        };
        let required = |var: &str| -> Result<String> {
            match get(var) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(invalid_env(format!("{var} is required for {command}"))),
            }
        };
        let (container_id, netns, ifname) = match command {
            Command::Add | Command::Check => {
                let id = required("CNI_CONTAINERID")?;
                check_container_id(&id)?;
                let netns = PathBuf::from(required("CNI_NETNS")?);
                let ifname = required("CNI_IFNAME")?;
                check_ifname(&ifname)?;
                (Some(id), Some(netns), Some(ifname))
            }
            Command::Del => {
                let id = required("CNI_CONTAINERID")?;
                check_container_id(&id)?;
                let ifname = required("CNI_IFNAME")?;
                check_ifname(&ifname)?;
                let netns = get("CNI_NETNS")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from);
                (Some(id), netns, Some(ifname))
            }
            Command::Status | Command::Gc | Command::Version => (None, None, None),
        };
        let args = if command.is_attachment() {
            CniArgs::parse(get("CNI_ARGS").as_deref().unwrap_or(""))?
        } else {
            CniArgs::default()
        };
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Invocation> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Invocation::from_env(|k| map.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-123_x.y"),
        ("CNI_NETNS", "/run/netns/p"),
        ("CNI_IFNAME", "eth0"),
    ];

    fn with(
        base: &[(&'static str, &'static str)],
        k: &'static str,
        v: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        let mut out: Vec<_> = base.iter().copied().filter(|(key, _)| *key != k).collect();
        out.push((k, v));
        out
    }

    fn without(
        base: &[(&'static str, &'static str)],
        k: &str,
    ) -> Vec<(&'static str, &'static str)> {
        base.iter().copied().filter(|(key, _)| *key != k).collect()
    }

    #[test]
    fn each_verb_takes_what_it_needs() {
        let add = env(ADD).expect("add");
        assert_eq!(add.command, Command::Add);
        assert_eq!(add.ifname.as_deref(), Some("eth0"));
        // DEL without a netns (already gone) is fine.
        let del = env(&without(&with(ADD, "CNI_COMMAND", "DEL"), "CNI_NETNS")).expect("del");
        assert_eq!(del.netns, None);
        for verb in ["STATUS", "GC", "VERSION"] {
            let inv = env(&[("CNI_COMMAND", verb)]).expect(verb);
            assert_eq!(inv.container_id, None);
        }
    }

    #[test]
    fn missing_and_malformed_variables_are_code_4_naming_the_variable() {
        let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
            (without(ADD, "CNI_COMMAND"), "CNI_COMMAND"),
            (with(ADD, "CNI_COMMAND", "ATTACH"), "ATTACH"),
            (without(ADD, "CNI_CONTAINERID"), "CNI_CONTAINERID"),
            (with(ADD, "CNI_CONTAINERID", ""), "CNI_CONTAINERID"),
            (with(ADD, "CNI_CONTAINERID", "-leading"), "CNI_CONTAINERID"),
            (with(ADD, "CNI_CONTAINERID", "has space"), "CNI_CONTAINERID"),
            (without(ADD, "CNI_NETNS"), "CNI_NETNS"),
            (without(ADD, "CNI_IFNAME"), "CNI_IFNAME"),
            (with(ADD, "CNI_IFNAME", "sixteen-bytes-xx"), "15"),
            (with(ADD, "CNI_IFNAME", ".."), "CNI_IFNAME"),
            (with(ADD, "CNI_IFNAME", "eth:0"), "CNI_IFNAME"),
            (with(ADD, "CNI_IFNAME", "eth 0"), "CNI_IFNAME"),
            (with(ADD, "CNI_ARGS", "NOEQUALS"), "CNI_ARGS"),
        ];
        for (vars, needle) in cases {
            let e = env(&vars).expect_err(needle);
            assert_eq!(e.code(), 4, "{needle}: {e}");
            assert!(e.to_string().contains(needle), "{e} names {needle}");
        }
        assert!(check_ifname("fifteen-bytes-x").is_ok());
    }
}
