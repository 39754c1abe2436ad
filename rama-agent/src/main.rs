//! `rama-agent`: Rama's per-node agent.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use rama_agent::{
    agent::{Agent, AgentConfig},
    cluster::{Source, Standalone, kube::KubeSource},
    dataplane::{Backend, DatapathMode, Dataplane, DataplaneConfig, XdpPolicy, ebpf},
    defaults,
    state::NodeState,
};

/// Rama's node agent: keeps the node's datapath (eBPF, or the policy-route fallback)
/// equal to the cluster's desired state and serves the CNI plugin.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Datapath settings shared by `run` and `apply`.
#[derive(Args, Clone)]
struct DatapathArgs {
    /// auto (eBPF when the kernel supports it), ebpf, or fallback.
    #[arg(long, env = "RAMA_DATAPATH", default_value = "auto")]
    datapath: DatapathMode,
    /// Where the eBPF datapath pins its maps and links.
    #[arg(long, env = "RAMA_PIN_DIR", default_value = rama_common::names::PIN_ROOT)]
    pin_dir: PathBuf,
    /// The uplink's XDP pre-filter: auto (native mode, never on a veth), on, off.
    #[arg(long, env = "RAMA_XDP", default_value = "auto")]
    xdp: XdpPolicy,
    /// Capacity of the eBPF maps for pods on this node (each may have two addresses).
    #[arg(long, env = "RAMA_MAX_LOCAL_ENDPOINTS", default_value_t = defaults::MAX_LOCAL_ENDPOINTS)]
    max_local_endpoints: u32,
    /// Capacity of the eBPF maps for pod addresses on other nodes.
    #[arg(long, env = "RAMA_MAX_REMOTE_ENDPOINTS", default_value_t = defaults::MAX_REMOTE_ENDPOINTS)]
    max_remote_endpoints: u32,
}

impl DatapathArgs {
    fn config(&self) -> DataplaneConfig {
        DataplaneConfig {
            mode: self.datapath,
            pin_dir: self.pin_dir.clone(),
            xdp: self.xdp,
            capacity: ebpf::Capacity {
                local_endpoints: self.max_local_endpoints,
                remote_endpoints: self.max_remote_endpoints,
                ..Default::default()
            },
        }
    }
}

/// `KEY=VALUE`.
fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// The `run` contract (documented in the README).
#[derive(Args)]
struct RunArgs {
    /// This node's name (a DaemonSet passes spec.nodeName).
    #[arg(long, env = "RAMA_NODE_NAME")]
    node_name: String,
    /// Standalone mode: the directory of Networks, Subnets, IPInstances and
    /// NodeInfos as YAML, shared by every agent on the host. Without it the agent
    /// uses the Kubernetes API (--kubeconfig, else in-cluster, else $KUBECONFIG).
    #[arg(long, env = "RAMA_STATE_DIR", conflicts_with = "kubeconfig")]
    state_dir: Option<PathBuf>,
    /// Kubeconfig file for the Kubernetes API.
    #[arg(long, env = "RAMA_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The NIC that carries the VLANs and the VXLAN underlay.
    #[arg(long, env = "RAMA_UPLINK")]
    uplink: String,
    /// The VTEP address (default: the uplink's first global IPv4, else IPv6, address).
    #[arg(long, env = "RAMA_VTEP_IP")]
    vtep_ip: Option<IpAddr>,
    /// A label of this node, KEY=VALUE, repeatable (standalone: what Underlay
    /// Networks' nodeSelectors match; published on the NodeInfo).
    #[arg(long = "node-label", env = "RAMA_NODE_LABELS", value_delimiter = ',', value_parser = label)]
    node_labels: Vec<(String, String)>,
    /// The CNI socket (the conflist's "socket").
    #[arg(long, env = "RAMA_SOCKET", default_value = rama_cni::defaults::SOCKET)]
    socket: PathBuf,
    /// Where DELs wait while the agent is down (the conflist's "queueDir").
    #[arg(long, env = "RAMA_CNI_QUEUE_DIR", default_value = rama_cni::defaults::QUEUE_DIR)]
    cni_queue_dir: PathBuf,
    /// This node's attachment records.
    #[arg(long, env = "RAMA_DATA_DIR", default_value = "/var/lib/rama/agent")]
    data_dir: PathBuf,
    /// HTTP address for /healthz, /readyz and /metrics ("none" to turn it off).
    #[arg(long, env = "RAMA_METRICS_ADDR", default_value = "127.0.0.1:9476")]
    metrics_addr: String,
    /// Seconds between full resyncs (NodeInfo, queued DELs, the whole datapath).
    #[arg(long, env = "RAMA_RESYNC_SECONDS", default_value_t = 30)]
    resync_seconds: u64,
    /// Kubernetes: seconds ADD waits for the controller's allocation.
    #[arg(long, env = "RAMA_ALLOCATION_TIMEOUT_SECONDS", default_value_t = 20)]
    allocation_timeout_seconds: u64,
    #[command(flatten)]
    datapath: DatapathArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: watch the cluster (a standalone state directory, or the
    /// Kubernetes API), keep this node's datapath converged, serve the CNI plugin on
    /// a unix socket and health/metrics over HTTP. Stops on SIGTERM or Ctrl-C,
    /// leaving forwarding in place.
    Run(Box<RunArgs>),
    /// Apply a desired node state (JSON) once and exit, without a cluster (for
    /// debugging the datapath). eBPF maps and links are pinned, so forwarding stays
    /// in place after the process exits.
    Apply {
        /// The node state document.
        #[arg(long)]
        state: PathBuf,
        #[command(flatten)]
        datapath: DatapathArgs,
    },
    /// Remove everything Rama created on this node (routes, rules, devices, pins).
    Teardown {
        #[arg(long, env = "RAMA_DATAPATH", default_value = "auto")]
        datapath: DatapathMode,
        #[arg(long, env = "RAMA_PIN_DIR", default_value = rama_common::names::PIN_ROOT)]
        pin_dir: PathBuf,
    },
    /// What the datapath thinks, decoded from its pinned maps: endpoints, nodes,
    /// maps, counters, mode, and trace SRC DST (what the programs would do with a
    /// packet). Tables by default, `-o json` for scripts; an unknown map or address
    /// exits with 2.
    Inspect {
        #[command(subcommand)]
        what: Inspect,
        /// Where the node's eBPF datapath pinned its maps (the agent's --pin-dir).
        #[arg(long, env = "RAMA_PIN_DIR", default_value = rama_common::names::PIN_ROOT, global = true)]
        pin_dir: PathBuf,
        /// Output: table or json.
        #[arg(short, long, default_value = "table", global = true)]
        output: Output,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Inspect {
    /// The pods on this node: host interface, MAC, addresses, subnet, VLAN or VNI.
    Endpoints,
    /// The remote nodes (VTEPs) this node forwards to, and how many pod addresses
    /// each holds.
    Nodes,
    /// One map's entries decoded (RAMA_ENDPOINTS, RAMA_EP_BY_IF, RAMA_NEIGH,
    /// RAMA_VLANS, RAMA_VTEPS, RAMA_CONFIG, RAMA_COUNTERS), or without a name the
    /// maps that grow with the cluster, with their entries and capacity.
    Maps { name: Option<String> },
    /// Packets and bytes per program and reason, with rates over --interval.
    Counters {
        /// Seconds between the two reads the rates come from (0: no rates).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// The datapath the agent runs (eBPF or fallback) and why, from its status
    /// endpoint; what is on the node when the agent cannot be reached.
    Mode {
        /// The agent's --metrics-addr.
        #[arg(long, env = "RAMA_METRICS_ADDR", default_value = "127.0.0.1:9476")]
        agent: String,
    },
    /// What the datapath would do with a packet from SRC (a pod this node knows)
    /// to DST, decided from the same maps the programs read.
    Trace { src: IpAddr, dst: IpAddr },
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            log::warn!("no SIGTERM handler ({e}); stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // Multi-threaded: CNI requests (many pods at once) run beside the sync loop.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rama-agent: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rama-agent: {e:#}");
            // Like clap's usage errors: the caller named something that is not there.
            if matches!(e.downcast_ref(), Some(rama_agent::Error::Lookup(_))) {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let RunArgs {
                node_name,
                state_dir,
                kubeconfig,
                uplink,
                vtep_ip,
                node_labels,
                socket,
                cni_queue_dir,
                data_dir,
                metrics_addr,
                resync_seconds,
                allocation_timeout_seconds,
                datapath,
            } = *args;
            let metrics_addr: Option<SocketAddr> = match metrics_addr.as_str() {
                "none" => None,
                a => Some(a.parse().with_context(|| {
                    format!("--metrics-addr {a:?} is neither HOST:PORT nor \"none\"")
                })?),
            };
            if resync_seconds == 0 {
                bail!("--resync-seconds must be at least 1");
            }
            let source = match &state_dir {
                Some(dir) => Source::Standalone(Standalone::open(dir)?),
                None => {
                    let client = rama_agent::cluster::kube::client(kubeconfig.as_deref()).await?;
                    Source::Kube(Box::new(
                        KubeSource::start(client, "rama-agent", Duration::from_secs(30)).await?,
                    ))
                }
            };
            let config = AgentConfig {
                node_name,
                uplink,
                vtep_ip,
                node_labels: node_labels.into_iter().collect::<BTreeMap<_, _>>(),
                data_dir,
                queue_dir: cni_queue_dir,
                socket,
                dataplane: datapath.config(),
                resync: Duration::from_secs(resync_seconds),
                allocation_timeout: Duration::from_secs(allocation_timeout_seconds),
            };
            let agent = Agent::new(config, source).await?;
            if let Some(addr) = metrics_addr {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("--metrics-addr {addr}"))?;
                tokio::spawn(rama_agent::agent::http::serve(agent.clone(), listener));
            }
            agent.run(shutdown_signal()).await?;
            Ok(())
        }
        Command::Apply { state, datapath } => {
            let text = std::fs::read_to_string(&state)
                .with_context(|| format!("reading {}", state.display()))?;
            let valid = NodeState::from_json(&state, &text)?.validate()?;
            let config = datapath.config();
            let (mut backend, status) = Backend::new(&config)?;
            log::info!(
                "datapath {} (requested {}){}",
                status.active,
                status.requested,
                status
                    .fallback_reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
            let report = backend.apply(&valid).await?;
            for note in &report.notes {
                log::warn!("{note}");
            }
            println!("{}", serde_json::json!({"mode": status, "report": report}));
            Ok(())
        }
        Command::Teardown { datapath, pin_dir } => {
            let config = DataplaneConfig {
                mode: datapath,
                pin_dir,
                ..Default::default()
            };
            let (mut backend, _) = Backend::new(&config)?;
            backend.teardown().await?;
            Ok(())
        }
        Command::Inspect {
            what,
            pin_dir,
            output,
        } => inspect(what, &pin_dir, output).await,
    }
}

fn print(
    output: Output,
    table: impl FnOnce() -> String,
    json: serde_json::Value,
) -> anyhow::Result<()> {
    match output {
        Output::Table => print!("{}", table()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
    }
    Ok(())
}

async fn inspect(what: Inspect, pin_dir: &std::path::Path, output: Output) -> anyhow::Result<()> {
    use rama_agent::inspect::{self as i, Snapshot};
    match what {
        Inspect::Endpoints => {
            let s = Snapshot::read(pin_dir)?;
            print(
                output,
                || i::endpoints_table(&s),
                serde_json::to_value(&s.local_pods)?,
            )
        }
        Inspect::Nodes => {
            let s = Snapshot::read(pin_dir)?;
            print(
                output,
                || i::nodes_table(&s),
                serde_json::to_value(s.remote_nodes())?,
            )
        }
        Inspect::Maps { name: None } => {
            let usage = ebpf::map_usage(pin_dir)?;
            let rows: Vec<Vec<String>> = usage
                .iter()
                .map(|u| vec![u.map.into(), u.entries.to_string(), u.capacity.to_string()])
                .collect();
            print(
                output,
                || i::table(&["MAP", "ENTRIES", "CAPACITY"], &rows),
                serde_json::to_value(&usage)?,
            )
        }
        Inspect::Maps { name: Some(name) } => {
            let map = i::map_name(&name)?;
            let s = Snapshot::read(pin_dir)?;
            let counters = ebpf::read_counters(pin_dir)?;
            print(
                output,
                || i::map_table(&s, &counters, map),
                i::map_rows(&s, &counters, map),
            )
        }
        Inspect::Counters { interval } => {
            if !(interval.is_finite() && interval >= 0.0) {
                return Err(rama_agent::Error::Lookup(format!(
                    "--interval {interval} is not a number of seconds"
                ))
                .into());
            }
            let before = ebpf::read_counters(pin_dir)?;
            let (after, rates) = if interval > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(interval)).await;
                let after = ebpf::read_counters(pin_dir)?;
                let rates = i::rates(&before, &after, interval);
                (after, Some(rates))
            } else {
                (before, None)
            };
            let json = match &rates {
                Some(r) => serde_json::to_value(r)?,
                None => serde_json::to_value(&after)?,
            };
            print(output, || i::counters_table(&after, rates.as_deref()), json)
        }
        Inspect::Mode { agent } => {
            let mode = i::mode(&agent, pin_dir);
            print(output, || i::mode_text(&mode), serde_json::to_value(&mode)?)
        }
        Inspect::Trace { src, dst } => {
            let s = Snapshot::read(pin_dir)?;
            let t = i::trace(&s, src, dst)?;
            print(output, || i::trace_text(&t), serde_json::to_value(&t)?)
        }
    }
}
