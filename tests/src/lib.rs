//! A network-namespace cluster for Rama's privileged tests.
//!
//! Every host is a network namespace the test creates and deletes (also on panic):
//!
//! ```text
//!            ext (external host)
//!             |
//!   gw (router: the VLANs' gateway, the untagged node network, ext)
//!    |
//!   sw (a Linux bridge: the physical switch, carries 802.1Q frames)
//!    |            |
//!   n1 (uplink)  n2 (uplink)  ...  nodes, each running the agent's datapath
//!    |  |          |  |
//!   pods          pods           each pod its own namespace, veth to its node
//! ```
//!
//! How the router terminates the VLANs depends on the kernel. With 802.1Q devices
//! (Debian's kernels, in the kernel-matrix VMs) it is built as a real network is: one
//! trunk port with a kernel VLAN sub-interface per VLAN, and the switch a
//! VLAN-filtering bridge whose node ports are trunks. This build machine's kernel has
//! no 802.1Q devices, so there each VLAN gets a router port of its own carrying a
//! two-line tc program built here from LLVM IR (pop the tag on ingress, push it on
//! egress) — deliberately independent of Rama's programs so one bug cannot hide
//! another. The harness only needs `ip`, `tc`, `bridge`, `nsenter`, `llc` and the
//! agent binary, so it runs unchanged inside a VM that shares the host's root
//! filesystem (`cargo xtask kernel-matrix`).
//!
//! Names are prefixed with a per-test tag and the process id so tests run in parallel
//! and never touch anything they did not create.

use std::time::{Duration, Instant};

pub mod agents;
pub mod cluster;
pub mod frames;
pub mod matrix;
pub mod netns;
pub mod single_node;
pub mod traffic;
pub mod vlan_fixture;

/// Skips (with the reason printed) unless the test runs as root.
#[macro_export]
macro_rules! require_root {
    () => {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIP: {} needs root (network namespaces, BPF)",
                module_path!()
            );
            return;
        }
    };
}

/// Sends `signal` to `child` (a process this harness started, by its PID) and waits
/// up to `timeout` for it to exit; whether it did.
pub fn signal_and_wait(child: &mut std::process::Child, signal: i32, timeout: Duration) -> bool {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return true;
    }
    // SAFETY: kill(2) on a child this harness started.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Polls `check` every 100 ms until it passes; panics with its last complaint once
/// `within` has gone by.
pub fn wait_until(within: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => panic!("after {within:?}: {why}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Stops a child this harness started: SIGTERM, then SIGKILL after `grace`.
pub fn stop_child(child: &mut std::process::Child, grace: Duration) {
    if !signal_and_wait(child, libc::SIGTERM, grace) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// A path that `cargo xtask test` passes in `var` (a cache of real clients, an API
/// server's kubeconfig): None, printing why, when it is not set — and a failure, never
/// a skip, under CI.
pub fn path_from_env(var: &str, test: &str, what: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(var) {
        Some(path) => Some(path.into()),
        None if std::env::var_os("CI").is_some() => {
            panic!("{test}: {var} is not set (cargo xtask test sets it)")
        }
        None => {
            eprintln!("SKIP: {test} needs {what}: {var} is unset; `cargo xtask test` sets it");
            None
        }
    }
}

/// Today's date (YYYY-MM-DD) for the names of bench results.
pub fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown-date".into())
}

/// A binary built by cargo alongside the tests (`cargo xtask test` builds them all).
pub fn binary(name: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // deps/
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --bins`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// The agent binary.
pub fn agent_binary() -> std::path::PathBuf {
    binary("rama-agent")
}

/// The CNI plugin binary.
pub fn cni_binary() -> std::path::PathBuf {
    binary("rama-cni")
}
