//! A network-namespace cluster for Rama's privileged tests.
//!
//! Every host is a network namespace the test creates and deletes (also on panic):
//!
//! ```text
//!            ext (external host)
//!             |
//!   gw (router: one port per VLAN + the untagged node network + ext)
//!    | v100  | v200  | native
//!   sw (a plain Linux bridge: the physical switch, forwards 802.1Q frames)
//!    |            |
//!   n1 (uplink)  n2 (uplink)  ...  nodes, each running the agent's datapath
//!    |  |          |  |
//!   pods          pods           each pod its own namespace, veth to its node
//! ```
//!
//! The router terminates each VLAN on its own port. The host kernel here has no 802.1Q
//! devices, so each VLAN port carries a two-line tc program built here from LLVM IR
//! (pop the tag on ingress, push it on egress) — deliberately independent of Rama's
//! programs so one bug cannot hide another. The harness only needs `ip`, `tc`,
//! `nsenter`, `llc` and the agent binary, so it runs unchanged inside a VM that shares
//! the host's root filesystem (the kernel matrix).
//!
//! Names are prefixed with a per-test tag and the process id so tests run in parallel
//! and never touch anything they did not create.

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
