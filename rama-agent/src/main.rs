//! `rama-agent`: Rama's per-node agent.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use rama_agent::{
    dataplane::{Backend, DatapathMode, Dataplane, DataplaneConfig, XdpPolicy, ebpf},
    defaults,
    state::NodeState,
};

/// Rama's node agent: renders the node's desired network state into the kernel, with
/// the eBPF datapath or the policy-route fallback.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply a desired node state (JSON) once and exit. eBPF maps and links are pinned,
    /// so forwarding stays in place after the process exits.
    Apply {
        /// The node state document.
        #[arg(long)]
        state: PathBuf,
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
    },
    /// Remove everything Rama created on this node (routes, rules, devices, pins).
    Teardown {
        #[arg(long, env = "RAMA_DATAPATH", default_value = "auto")]
        datapath: DatapathMode,
        #[arg(long, env = "RAMA_PIN_DIR", default_value = rama_common::names::PIN_ROOT)]
        pin_dir: PathBuf,
    },
    /// Print the eBPF datapath counters (packets/bytes by program and reason) as JSON.
    Counters {
        #[arg(long, env = "RAMA_PIN_DIR", default_value = rama_common::names::PIN_ROOT)]
        pin_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
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
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Apply {
            state,
            datapath,
            pin_dir,
            xdp,
            max_local_endpoints,
            max_remote_endpoints,
        } => {
            let text = std::fs::read_to_string(&state)
                .with_context(|| format!("reading {}", state.display()))?;
            let valid = NodeState::from_json(&state, &text)?.validate()?;
            let config = DataplaneConfig {
                mode: datapath,
                pin_dir,
                xdp,
                capacity: ebpf::Capacity {
                    local_endpoints: max_local_endpoints,
                    remote_endpoints: max_remote_endpoints,
                    ..Default::default()
                },
            };
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
        Command::Counters { pin_dir } => {
            let rows = ebpf::read_counters(&pin_dir)?;
            println!("{}", serde_json::to_string_pretty(&rows)?);
            Ok(())
        }
    }
}
