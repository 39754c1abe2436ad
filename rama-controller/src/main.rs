//! `rama-controller`: cluster-wide IPAM and status controller.
//!
//! The controller itself (CRDs, IPAM, webhooks, leader election) is built in its own
//! issue; until then this binary only answers `--help` and `--version`.
use clap::Parser;

/// Rama's cluster-wide IPAM and status controller.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() -> std::process::ExitCode {
    let _cli = Cli::parse();
    eprintln!("rama-controller: the controller is not implemented in this build");
    std::process::ExitCode::FAILURE
}
