//! `cargo xtask`: the project's build, test and bench entry points.
//!
//! Every command that needs tools first runs the bootstrap, which installs what is
//! missing (Debian packages, bpf-linker built against Debian's LLVM 22, rust-src for
//! the nightly that builds the eBPF programs) and does nothing when all is there.
mod bootstrap;
mod clients;
mod fuzz;
mod kmatrix;
mod kube;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Rama's build, test and bench tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the prerequisites that are missing (idempotent; needs root to install).
    Bootstrap,
    /// Build the eBPF object and print its path (for bpftool, llvm-objdump…).
    BuildEbpf {
        /// Build with the release profile (the agent always embeds a release build).
        #[arg(long, default_value_t = true)]
        release: bool,
    },
    /// Lint both toolchains and run every test, privileged ones included (as root).
    Test,
    /// The demo: two nodes in network namespaces running rama-agent, pods added through
    /// rama-cni, every path tried.
    Demo,
    /// Install the real CNI clients the tests drive (cnitool, containerd CRI, podman);
    /// prints their directory.
    CniClients,
    /// Fuzz the CNI plugin's parsers (configuration, environment) from the committed
    /// corpus; `--grow` keeps what the run discovers in the corpus.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Add new inputs to rama-cni/fuzz/corpus (otherwise they are discarded).
        #[arg(long)]
        grow: bool,
    },
    /// Write the CRD YAML (deploy/crds/rama.yaml) from rama-api's types.
    GenCrds,
    /// A real kube-apiserver for tests: `build` (once, cached), `up`, `down`.
    KubeApiserver {
        #[arg(value_parser = ["build", "up", "down"])]
        action: String,
    },
    /// Run a command inside a QEMU VM booted on a stock Debian kernel (`setup` fetches
    /// the kernels once into the cache).
    Vm {
        #[command(subcommand)]
        action: VmAction,
    },
    /// The kernel matrix: every path in eBPF, fallback and mixed modes through the
    /// whole product, on the host's kernel and in VMs on stock Debian kernels; prints
    /// a table (a row per path, a column per kernel and mode) and writes JSON.
    KernelMatrix {
        /// Comma-separated: host, and the VM kernels (6.1, 6.12).
        #[arg(long, default_value_t = kmatrix::default_kernels())]
        kernels: String,
        /// Comma-separated modes (ebpf, fallback, mixed); all by default.
        #[arg(long)]
        modes: Option<String>,
        /// Where each kernel's log and JSON and the combined kernel-matrix.json go.
        #[arg(long, default_value = "target/kernel-matrix")]
        out: PathBuf,
        /// Seconds before a VM is stopped (a failure).
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
    },
    /// Benchmarks: datapath (per-program cost, pod-to-pod throughput/latency) and IPAM.
    Bench {
        /// Fewer repetitions (for a quick look; committed results use the default).
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON and Markdown results.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum VmAction {
    /// Install QEMU and busybox, fetch and unpack the Debian kernels (once, cached).
    Setup,
    /// Boot a kernel, run COMMAND in the current directory, power off; exits with
    /// COMMAND's exit code.
    Run {
        /// The kernel: 6.1 (bookworm) or 6.12 (bookworm-backports).
        #[arg(long, default_value = "6.12")]
        kernel: String,
        /// Guest memory (QEMU syntax).
        #[arg(long, default_value = "2G")]
        memory: String,
        /// Guest CPUs.
        #[arg(long, default_value_t = 2)]
        cpus: u32,
        /// Seconds before the VM is stopped (a failure).
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// A host directory mounted read-write at the same path inside (for results).
        #[arg(long)]
        share: Option<PathBuf>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Runs a command (in the workspace root unless it names a directory), echoing it;
/// fails when it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    if cmd.get_current_dir().is_none() {
        cmd.current_dir(root());
    }
    eprintln!("+ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// The nightly cargo invocation that builds or lints the eBPF crate, with the flags
/// aya-build uses (BTF, the target arch cfg).
fn ebpf_cargo(subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", bootstrap::EBPF_TOOLCHAIN, "cargo", subcommand])
        .args([
            "--package",
            "rama-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        );
    cmd
}

fn build_ebpf(release: bool) -> Result<PathBuf> {
    let mut cmd = ebpf_cargo("build");
    cmd.args(["--bin", "rama"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let profile = if release { "release" } else { "debug" };
    let obj = root()
        .join("target/bpfel-unknown-none")
        .join(profile)
        .join("rama");
    if !obj.exists() {
        bail!("built, but {} is missing", obj.display());
    }
    Ok(obj)
}

fn test() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The eBPF crate is linted on its own, for its own target, as aya does.
    run(ebpf_cargo("clippy").args(["--", "-D", "warnings"]))?;
    // The plugin's parsers under libFuzzer, briefly, from the committed corpus.
    fuzz::run_all(20, false)?;
    // The privileged tests execute the agent binary.
    run(cargo().args(["build", "--bins"]))?;
    let mut test = cargo();
    test.arg("test");
    if std::env::var_os("CI").is_some() {
        test.arg("--no-fail-fast");
    }
    // Show what passing tests printed too: a skipped cell or test says why, and the
    // matrix lists each path it proved.
    test.args(["--", "--show-output"]);
    // The plugin's tests drive real CNI clients (installed once, cached).
    test.env("RAMA_TEST_CNI_CLIENTS", clients::ensure()?)
        .env("RAMA_TEST_PAUSE_IMAGE", clients::PAUSE_IMAGE);
    // The API tests run against a real kube-apiserver (built once, cached).
    let kubeconfig = kube::up()?;
    test.env("RAMA_TEST_APISERVER", kube::server_url())
        .env("RAMA_TEST_TOKEN", kube::TOKEN)
        .env("RAMA_TEST_KUBECONFIG", kubeconfig)
        .env("RAMA_TEST_KUBECTL", kube::kubectl());
    // The VM kernels, for the runner's own tests and the kernel matrix.
    vm::setup()?;
    let result = run(&mut test);
    kube::down()?;
    // The kernel matrix: every path in every mode on the host's kernel and on the
    // Debian kernels in VMs (about 4 minutes; the VMs run side by side).
    let matrix = kmatrix::run(&kmatrix::Options {
        kernels: kmatrix::default_kernels()
            .split(',')
            .map(str::to_owned)
            .collect(),
        modes: None,
        out: root().join("target/kernel-matrix"),
        timeout: 1800,
    });
    result.and(matrix)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Bootstrap => bootstrap::ensure(),
        Task::BuildEbpf { release } => {
            bootstrap::ensure()?;
            let obj = build_ebpf(release)?;
            println!("{}", obj.display());
            eprintln!(
                "inspect it with: bpftool prog dump xlated / llvm-objdump -S {}",
                obj.display()
            );
            Ok(())
        }
        Task::Test => {
            bootstrap::ensure()?;
            test()
        }
        Task::Demo => {
            bootstrap::ensure()?;
            run(cargo().args(["build", "--release", "--bins"]))?;
            run(&mut Command::new(root().join("target/release/rama-demo")))
        }
        Task::Fuzz { seconds, grow } => {
            bootstrap::ensure()?;
            fuzz::run_all(seconds, grow)
        }
        Task::CniClients => {
            println!("{}", clients::ensure()?.display());
            Ok(())
        }
        Task::GenCrds => {
            let path = root().join("deploy/crds/rama.yaml");
            std::fs::create_dir_all(path.parent().context("deploy dir")?)?;
            std::fs::write(&path, rama_api::crds_yaml()?)?;
            println!("{}", path.display());
            Ok(())
        }
        Task::KubeApiserver { action } => match action.as_str() {
            "build" => kube::build().map(|p| println!("{}", p.display())),
            "up" => kube::up().map(|_| ()),
            _ => kube::down(),
        },
        Task::Vm { action } => match action {
            VmAction::Setup => vm::setup(),
            VmAction::Run {
                kernel,
                memory,
                cpus,
                timeout,
                share,
                command,
            } => {
                vm::setup()?;
                let opts = vm::Options {
                    kernel,
                    memory,
                    cpus,
                    timeout: std::time::Duration::from_secs(timeout),
                    share,
                    log: None,
                };
                let code = vm::run_in_vm(&opts, &command)?;
                std::process::exit(code)
            }
        },
        Task::KernelMatrix {
            kernels,
            modes,
            out,
            timeout,
        } => {
            bootstrap::ensure()?;
            run(cargo().args(["build", "--bins"]))?;
            kmatrix::run(&kmatrix::Options {
                kernels: kernels.split(',').map(str::to_owned).collect(),
                modes,
                out: root().join(out),
                timeout,
            })
        }
        Task::Bench { quick, out } => {
            bootstrap::ensure()?;
            run(cargo().args(["build", "--release", "--bins"]))?;
            let out = if out.is_absolute() {
                out
            } else {
                root().join(out)
            };
            let mut cmd = Command::new(root().join("target/release/rama-bench"));
            cmd.arg("--out").arg(&out);
            if quick {
                cmd.arg("--quick");
            }
            run(&mut cmd)?;
            // CNI ADD/DEL latency through cnitool, against bridge + host-local.
            let clients = clients::ensure()?;
            run(Command::new(root().join("target/release/rama-cni-bench"))
                .arg("--out")
                .arg(&out)
                .arg("--clients")
                .arg(&clients))?;
            run(cargo()
                .args(["bench", "-p", "rama-ipam"])
                .env("RAMA_BENCH_OUT", &out))?;
            // The Kubernetes store against a real API server (built once, cached).
            let kubeconfig = kube::up()?;
            let result = run(cargo()
                .args(["bench", "-p", "rama-store", "-p", "rama-controller"])
                .env("RAMA_BENCH_OUT", &out)
                .env("RAMA_TEST_KUBECONFIG", kubeconfig));
            kube::down()?;
            result
        }
    }
}
