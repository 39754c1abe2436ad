//! One execution of the plugin, from environment and stdin to stdout and exit code.
//!
//! | verb | does | agent down |
//! |---|---|---|
//! | ADD | the agent creates the interface, allocates, programs the datapath | error 11 (try again later) |
//! | DEL | the agent removes all of it; idempotent | queued for the agent, success |
//! | CHECK | the agent verifies interface, addresses and datapath entry against `prevResult` | error 11 |
//! | STATUS | ready or error 50 | error 50 |
//! | GC | the agent removes attachments not in `cni.dev/valid-attachments` | error 11 |
//! | VERSION | prints the supported versions | — |
use std::path::Path;

use serde_json::Value;

use crate::{
    CniVersion, Error, Result,
    api::{Attachment, Call, Reply, Request, Response},
    client::{self, CallError},
    config::{self, NetConf},
    env::{Command, Invocation},
    queue, result,
};

/// What the process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    /// 0 on success, 1 with an error object on stdout.
    pub exit: u8,
    /// A line for stderr (runtimes log it), when there is something to say.
    pub note: Option<String>,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Self {
            stdout,
            exit: 0,
            note: None,
        }
    }

    fn error(e: &Error, version: CniVersion) -> Self {
        Self {
            stdout: format!("{}\n", e.to_json(version)),
            exit: 1,
            note: None,
        }
    }
}

/// Runs the plugin: `get` reads the environment, `stdin` is the configuration.
pub fn run(get: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let obj = config::object(stdin).ok();
    let version = config::output_version(obj.as_ref());
    let invocation = match Invocation::from_env(get) {
        Ok(i) => i,
        Err(e) => return Outcome::error(&e, version),
    };
    if invocation.command == Command::Version {
        return version_info(obj.as_ref());
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => return Outcome::error(&e, version),
    };
    match execute(&invocation, &conf) {
        Ok(outcome) => outcome,
        Err(e) => Outcome::error(&e, conf.cni_version),
    }
}

/// VERSION: the input's `cniVersion` (the version of this output) and ours.
fn version_info(obj: Option<&serde_json::Map<String, Value>>) -> Outcome {
    let asked = obj
        .and_then(|o| o.get("cniVersion"))
        .and_then(Value::as_str)
        .unwrap_or(CniVersion::LATEST.as_str())
        .to_owned();
    let body = serde_json::json!({
        "cniVersion": asked,
        "supportedVersions": CniVersion::ALL.map(CniVersion::as_str),
    });
    Outcome::ok(format!("{body}\n"))
}

fn attachment(inv: &Invocation, conf: &NetConf) -> Attachment {
    Attachment {
        network: conf.name.clone(),
        container_id: inv.container_id.clone().unwrap_or_default(),
        ifname: inv.ifname.clone().unwrap_or_default(),
        netns: inv.netns.as_ref().map(|p| p.display().to_string()),
        pod: inv.args.pod.clone(),
        selection: inv.args.selection.clone(),
    }
}

/// How the agent answered a call.
enum Answer {
    Reply(Reply),
    /// The agent refused or failed, with its CNI error.
    Refused(Error),
    /// No answer at all (down, hung, or gone mid-call).
    Silent(CallError),
}

fn ask(conf: &NetConf, call: Call) -> Answer {
    match client::call(&conf.socket, &Request::new(call), conf.agent_timeout) {
        Ok(Response::Ok(reply)) => Answer::Reply(reply),
        Ok(Response::Error(e)) => Answer::Refused(e.into()),
        Err(e) => Answer::Silent(e),
    }
}

fn silent(e: &CallError) -> Error {
    Error::TryAgainLater {
        detail: format!("{e}; is rama-agent running on this node?"),
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::Agent {
        code: crate::code::AGENT_FAILURE,
        msg: "unexpected answer".into(),
        details: format!("the agent answered {reply:?}"),
    }
}

fn execute(inv: &Invocation, conf: &NetConf) -> Result<Outcome> {
    let v = conf.cni_version;
    match inv.command {
        Command::Check if !v.has_check() => {
            return Err(Error::IncompatibleVersion {
                detail: format!("CHECK needs cniVersion 0.4.0 or later; the configuration is {v}"),
            });
        }
        Command::Status | Command::Gc if !v.has_status_and_gc() => {
            return Err(Error::IncompatibleVersion {
                detail: format!(
                    "{} needs cniVersion 1.1.0 or later; the configuration is {v}",
                    inv.command
                ),
            });
        }
        _ => {}
    }
    match inv.command {
        Command::Add => {
            let netns = inv.netns.as_deref().unwrap_or(Path::new(""));
            if !netns.exists() {
                return Err(Error::UnknownContainer {
                    detail: format!("network namespace {} does not exist", netns.display()),
                });
            }
            match ask(
                conf,
                Call::Add {
                    attachment: attachment(inv, conf),
                },
            ) {
                Answer::Reply(Reply::Attached(res)) => {
                    let doc = result::render(v, &res, conf.prev_result.as_ref())?;
                    Ok(Outcome::ok(format!("{doc}\n")))
                }
                Answer::Reply(other) => Err(unexpected(&other)),
                Answer::Refused(e) => Err(e),
                Answer::Silent(e) => Err(silent(&e)),
            }
        }
        Command::Del => {
            let a = attachment(inv, conf);
            match ask(
                conf,
                Call::Del {
                    attachment: a.clone(),
                },
            ) {
                Answer::Reply(Reply::Done) => Ok(Outcome::ok(String::new())),
                Answer::Reply(other) => Err(unexpected(&other)),
                Answer::Refused(e) => Err(e),
                Answer::Silent(e) => {
                    // No answer: the agent finishes this DEL when it is back.
                    let path = queue::enqueue(&conf.queue_dir, &a).map_err(|io| Error::Io {
                        detail: format!(
                            "{e}, and queuing the DEL in {} failed: {io}",
                            conf.queue_dir.display()
                        ),
                    })?;
                    Ok(Outcome {
                        stdout: String::new(),
                        exit: 0,
                        note: Some(format!(
                            "rama-cni: {e}; DEL queued in {} for the agent to complete",
                            path.display()
                        )),
                    })
                }
            }
        }
        Command::Check => {
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| Error::InvalidConfig {
                    detail: "CHECK needs prevResult (the result of the ADD)".into(),
                })?;
            let expected = result::expected(prev, inv.ifname.as_deref().unwrap_or(""))?;
            match ask(
                conf,
                Call::Check {
                    attachment: attachment(inv, conf),
                    expected,
                },
            ) {
                Answer::Reply(Reply::Done) => Ok(Outcome::ok(String::new())),
                Answer::Reply(other) => Err(unexpected(&other)),
                Answer::Refused(e) => Err(e),
                Answer::Silent(e) => Err(silent(&e)),
            }
        }
        Command::Status => match ask(conf, Call::Status) {
            Answer::Reply(Reply::Status(s)) if s.ready => Ok(Outcome::ok(String::new())),
            Answer::Reply(Reply::Status(s)) => Err(Error::NotAvailable {
                detail: s.detail.unwrap_or_else(|| "the agent is not ready".into()),
            }),
            Answer::Reply(other) => Err(unexpected(&other)),
            Answer::Refused(e) => Err(e),
            Answer::Silent(e) => Err(Error::NotAvailable {
                detail: format!("{e}; is rama-agent running on this node?"),
            }),
        },
        Command::Gc => {
            let valid = conf
                .valid_attachments
                .clone()
                .ok_or_else(|| Error::InvalidConfig {
                    detail: "GC needs cni.dev/valid-attachments (the attachments to keep)".into(),
                })?;
            match ask(
                conf,
                Call::Gc {
                    network: conf.name.clone(),
                    valid,
                },
            ) {
                Answer::Reply(Reply::Done) => Ok(Outcome::ok(String::new())),
                Answer::Reply(other) => Err(unexpected(&other)),
                Answer::Refused(e) => Err(e),
                Answer::Silent(e) => Err(silent(&e)),
            }
        }
        Command::Version => Ok(version_info(None)),
    }
}
