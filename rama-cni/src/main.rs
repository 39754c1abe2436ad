//! `rama-cni`: the CNI plugin binary the container runtime executes.
use std::io::{Read as _, Write as _};

const HELP: &str = "\
rama-cni: Rama's CNI plugin (CNI spec 0.3.0 – 1.1.0).

Container runtimes execute it with CNI_COMMAND (ADD, DEL, CHECK, STATUS, GC, VERSION),
CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME and CNI_ARGS in the environment and the network
configuration on stdin; it asks the node's rama-agent over a unix socket and prints
the result (or the spec's error object) on stdout.

Configuration (a plugin of a conflist, or a single .conf):
  {\"cniVersion\": \"1.0.0\", \"name\": \"rama\", \"type\": \"rama-cni\",
   \"socket\": \"/run/rama/cni.sock\",          the agent's socket (default shown)
   \"queueDir\": \"/var/lib/rama/cni-queue\",   DELs queued while the agent is down
   \"agentTimeoutSeconds\": 30}               how long to wait for the agent (1-600)

CNI_ARGS keys (standalone mode; in Kubernetes the pod's annotations say it):
  RAMA_NETWORK_TYPE=Underlay|Overlay  RAMA_NETWORK=<name>  RAMA_SUBNET=<v4>[/<v6>]
  RAMA_IP_FAMILY=IPv4|IPv6|DualStack  RAMA_IP=<ip>[,<ip>]
  K8S_POD_NAMESPACE, K8S_POD_NAME name the pod; IgnoreUnknown=1 ignores other keys.

Options: --help, --version";

fn main() -> std::process::ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("-h" | "--help") => {
            println!("{HELP}");
            return std::process::ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("rama-cni {}", env!("CARGO_PKG_VERSION"));
            return std::process::ExitCode::SUCCESS;
        }
        _ => {}
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => rama_cni::plugin::run(|k| std::env::var(k).ok(), &stdin),
        Err(e) => {
            let err = rama_cni::Error::Io {
                detail: format!("reading the configuration from stdin: {e}"),
            };
            rama_cni::plugin::Outcome {
                stdout: format!("{}\n", err.to_json(rama_cni::CniVersion::LATEST)),
                exit: 1,
                note: None,
            }
        }
    };
    if let Some(note) = &outcome.note {
        eprintln!("{note}");
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::ExitCode::from(outcome.exit)
}
