//! The demo: Rama as a person runs it on one machine. A two-node cluster of network
//! namespaces (a switch, a router terminating VLANs 100 and 200, an external host),
//! Networks and Subnets written as YAML into a standalone state directory (one VLAN
//! underlay per VLAN, one VXLAN overlay), `rama-agent run` on each node, pods created
//! by executing `rama-cni` exactly as a container runtime does — then every path
//! tried with ping and TCP, over IPv4 and IPv6, in eBPF mode and in mixed eBPF +
//! fallback mode. Everything it creates is removed when it ends, also on Ctrl-C.
use std::{process::ExitCode, time::Instant};

use rama_agent::dataplane::DatapathMode;
use rama_cni::api::{Call, Reply, Request, Response};
use rama_tests::{
    agents::clean_up_on_signal,
    cluster::{Cluster, PodNet},
    matrix::{Cell, FULL_PODS, MIXED_PODS, MIXED_SKIP, full_cells, mixed_cells, run_matrix},
};

const TAG: &str = "demo";

fn network(net: PodNet) -> &'static str {
    match net {
        PodNet::Vlan100 => "vlan100 (VLAN 100)",
        PodNet::Vlan200 => "vlan200 (VLAN 200)",
        PodNet::Overlay => "overlay (VNI 4096)",
        PodNet::Plain => "-",
    }
}

fn round(
    title: &str,
    modes: &[DatapathMode],
    pods: &[(usize, &str, PodNet)],
    cells: &[Cell],
) -> anyhow::Result<(usize, usize)> {
    println!("\n=== {title} ===");
    let mut c = Cluster::new(TAG, modes)?;
    c.write_cluster_state()?;
    println!(
        "state directory {} (Networks vlan100, vlan200, overlay; six Subnets)",
        c.state_dir().display()
    );
    for i in 0..modes.len() {
        c.start_agent(i, &[])?;
        let datapath = match rama_cni::client::call(
            &c.socket_of(i),
            &Request::new(Call::Status),
            std::time::Duration::from_secs(5),
        ) {
            Ok(Response::Ok(Reply::Status(s))) => s.datapath,
            other => format!("unknown ({other:?})"),
        };
        println!(
            "agent on {}: datapath {datapath}, socket {}",
            c.nodes[i].name,
            c.socket_of(i).display()
        );
    }
    for (node, name, net) in pods {
        let started = Instant::now();
        let idx = c.add_cni_pod(*node, name, *net)?;
        let p = &c.pods[idx];
        println!(
            "rama-cni ADD {:<3} on n{}  {:<19} {:<12} {:<14} ({} ms)",
            p.name,
            node + 1,
            network(*net),
            p.ipv4,
            p.ipv6,
            started.elapsed().as_millis()
        );
    }
    c.gw.ip(&["neigh", "flush", "all"])?;
    println!();
    let failures = run_matrix(&c, cells);
    println!("\ndatapath counters (eBPF nodes, packets):");
    print!("{}", c.describe());
    Ok((failures.len(), cells.len() * 2))
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("rama-demo needs root (network namespaces, BPF)");
        return ExitCode::FAILURE;
    }
    clean_up_on_signal(TAG);
    let started = Instant::now();
    println!(
        "Rama demo: two nodes, rama-agent in standalone mode on each, pods created by \
         executing rama-cni as a runtime does."
    );
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
    let (mut failed, mut total) = (0, 0);
    for r in rounds {
        match r {
            Ok((f, t)) => {
                failed += f;
                total += t;
            }
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    let took = started.elapsed().as_secs_f64();
    if failed == 0 {
        println!("\nall {total} paths work ({took:.1} s); everything the demo created is removed");
        ExitCode::SUCCESS
    } else {
        println!("\n{failed} of {total} path(s) failed ({took:.1} s)");
        ExitCode::FAILURE
    }
}
