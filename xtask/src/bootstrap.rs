//! Installs the prerequisites that are missing; does nothing when everything is there.
//! Not root: prints the exact commands to run instead, and fails.
use std::process::Command;

use anyhow::{Result, bail};

use crate::run;

/// The toolchain that builds the eBPF crate (the agent's build.rs uses the same).
/// rustup cannot download a dated nightly on these machines, so the pin is the
/// installed `nightly`; its version is printed so a build log shows which one.
pub const EBPF_TOOLCHAIN: &str = "nightly";

/// Debian packages: LLVM 22 for bpf-linker (it must match the nightly's LLVM) and llc
/// (the test router's VLAN fixture); iproute2/nftables/iputils/iperf3 for the agent's
/// masquerade, the test harness and the benches; bpftool for inspecting; prometheus
/// (server and promtool) for the observability tests.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "nftables",
    "iputils-ping",
    "iperf3",
    "bpftool",
    "util-linux",
    "prometheus",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn has_rust_src() -> bool {
    Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with("rust-src"))
        })
        .unwrap_or(false)
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

/// Installs `packages` that are missing (root), or names the command (not root).
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages; as root, run:\n  apt-get update && apt-get install -y {}",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))
}

pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    let mut todo: Vec<String> = Vec::new();
    if !missing.is_empty() {
        todo.push("apt-get update".into());
        todo.push(format!(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y {}",
            missing.join(" ")
        ));
    }
    let rust_src = has_rust_src();
    let linker = bpf_linker_ok();
    if !todo.is_empty() && !is_root() {
        bail!(
            "missing prerequisites; as root, run:\n  {}\nthen run this command again",
            todo.join("\n  ")
        );
    }
    if !missing.is_empty() {
        eprintln!("bootstrap: installing {}", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq"])
            .args(&missing))?;
    }
    if !rust_src {
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))?;
    }
    if !linker {
        // bpf-linker links through LLVM; it must be the LLVM of the nightly (22), and
        // /usr/bin/llvm-config is Debian's default 14, so point it at 22 explicitly.
        run(Command::new("cargo")
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features", "llvm-22"]))?;
    }
    let nightly = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--version"])
        .output()?;
    if !nightly.status.success() {
        bail!(
            "the {EBPF_TOOLCHAIN} toolchain is not installed (rustup toolchain install {EBPF_TOOLCHAIN})"
        );
    }
    eprintln!(
        "bootstrap: ready (eBPF toolchain: {})",
        String::from_utf8_lossy(&nightly.stdout).trim()
    );
    Ok(())
}
