//! The datapath demo: builds a two-node cluster of network namespaces (switch, router
//! terminating VLANs 100 and 200, an external host), puts underlay and overlay pods on
//! it, applies Rama's datapath with the real agent and tries every path, in eBPF mode
//! and in mixed eBPF + fallback mode. Everything it creates is removed when it ends.
use std::process::ExitCode;

use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    cluster::Cluster,
    matrix::{FULL_PODS, MIXED_PODS, MIXED_SKIP, full_cells, mixed_cells, run_matrix},
};

fn round(
    title: &str,
    modes: &[DatapathMode],
    pods: &[(usize, &str, rama_tests::cluster::PodNet)],
    cells: &[rama_tests::matrix::Cell],
) -> anyhow::Result<usize> {
    println!("\n=== {title} ===");
    let mut c = Cluster::new("demo", modes)?;
    for (node, name, net) in pods {
        let idx = c.add_pod(*node, name, *net)?;
        let p = &c.pods[idx];
        println!(
            "pod {:<3} on n{}  {:<8?} {:<12} {}",
            p.name,
            node + 1,
            p.net,
            p.ipv4,
            p.ipv6
        );
    }
    for (i, out) in c.apply()?.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(out.trim())?;
        println!(
            "n{}: datapath {} ({} endpoints, {} remote)",
            i + 1,
            v["mode"]["active"],
            v["report"]["endpoints"],
            v["report"]["remote_endpoints"]
        );
    }
    let failures = run_matrix(&c, cells);
    println!("\ncounters (eBPF nodes):");
    print!("{}", c.describe());
    Ok(failures.len())
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("rama-demo needs root (network namespaces, BPF)");
        return ExitCode::FAILURE;
    }
    let rounds = [
        round(
            "eBPF datapath on both nodes",
            &[DatapathMode::Ebpf, DatapathMode::Ebpf],
            &FULL_PODS,
            &full_cells(),
        ),
        {
            println!("\n{MIXED_SKIP}");
            round(
                "mixed: n1 eBPF, n2 policy-route fallback",
                &[DatapathMode::Ebpf, DatapathMode::Fallback],
                &MIXED_PODS,
                &mixed_cells(),
            )
        },
    ];
    let mut failed = 0;
    for r in rounds {
        match r {
            Ok(n) => failed += n,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    if failed == 0 {
        println!("\nall paths work");
        ExitCode::SUCCESS
    } else {
        println!("\n{failed} path(s) failed");
        ExitCode::FAILURE
    }
}
