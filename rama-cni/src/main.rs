//! `rama-cni`: the CNI plugin binary the container runtime executes.
//!
//! The CNI verbs (ADD, DEL, CHECK, VERSION, STATUS, GC) are implemented in their own
//! issue; until then this binary only answers `--help` and `--version` and refuses to
//! pretend it configured anything.
use clap::Parser;

/// Rama's CNI plugin. Container runtimes execute it with CNI_COMMAND and friends in the
/// environment and the network configuration on stdin (CNI spec 1.1).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("rama-cni: the CNI verbs are not implemented in this build");
    std::process::ExitCode::FAILURE
}
