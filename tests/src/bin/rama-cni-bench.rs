//! CNI ADD and DEL latency through `cnitool` (libcni, what runtimes embed): Rama
//! against Debian's `bridge` + `host-local` plugins, in one run, pod by pod
//! interleaved (Rama's ADD for pod i, then the bridge's), on one node namespace with
//! the agent running. Each sample is the wall time of one `cnitool` execution, so
//! both sides pay the same process start-up. Prints a table and writes JSON and
//! Markdown; never asserts.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use rama_agent::dataplane::DatapathMode;
use rama_tests::{cluster::Cluster, cni_binary, netns::Netns};
use serde_json::json;

struct Args {
    pods: usize,
    out: PathBuf,
    clients: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        pods: 100,
        out: PathBuf::from("bench/results"),
        clients: std::env::var_os("RAMA_TEST_CNI_CLIENTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/rama-cache/cni-clients")),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--pods" => {
                args.pods = it
                    .next()
                    .context("--pods needs a number")?
                    .parse()
                    .context("--pods needs a number")?
            }
            "--out" => args.out = it.next().context("--out needs a directory")?.into(),
            "--clients" => args.clients = it.next().context("--clients needs a directory")?.into(),
            "--help" | "-h" => {
                println!(
                    "rama-cni-bench [--pods N] [--out DIR] [--clients DIR]\n\n\
                     CNI ADD/DEL latency (p50/p99) through cnitool: Rama against bridge + \
                     host-local (root).\n--clients: where `cargo xtask cni-clients` installed \
                     cnitool (default $RAMA_TEST_CNI_CLIENTS or /var/tmp/rama-cache/cni-clients)."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.pods == 0 {
        bail!("--pods must be at least 1");
    }
    Ok(args)
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Side {
    name: &'static str,
    add: Vec<f64>,
    del: Vec<f64>,
}

fn summary(samples: &[f64]) -> serde_json::Value {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    json!({
        "p50_ms": percentile(&s, 50.0),
        "p99_ms": percentile(&s, 99.0),
        "max_ms": s.last().copied().unwrap_or(0.0),
        "samples": s.len(),
    })
}

/// One `cnitool` call in the node's namespace; its wall time in milliseconds.
fn cnitool(
    node: &Netns,
    tool: &Path,
    env: &[(&str, String)],
    verb: &str,
    network: &str,
    pod: &Netns,
) -> Result<f64> {
    let started = Instant::now();
    let out = Command::new("nsenter")
        .arg(format!("--net={}", node.path()))
        .arg(tool)
        .args([verb, network, &pod.path()])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "cnitool {verb} {network} {}: {}{}",
            pod.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let tool = args.clients.join("bin/cnitool");
    if !tool.exists() {
        bail!(
            "{} is missing: run `cargo xtask cni-clients` first",
            tool.display()
        );
    }
    let bridge_dir = Path::new("/usr/lib/cni");
    for p in ["bridge", "host-local"] {
        if !bridge_dir.join(p).exists() {
            bail!("{p} is missing from /usr/lib/cni (Debian's containernetworking-plugins)");
        }
    }
    let mut c = Cluster::new("cb", &[DatapathMode::Ebpf])?;
    c.write_cluster_state()?;
    c.start_agent(0, &[])?;
    let bin = c.scratch.join("cni-bin");
    let conf = c.scratch.join("net.d");
    std::fs::create_dir_all(&bin)?;
    std::fs::create_dir_all(&conf)?;
    std::os::unix::fs::symlink(cni_binary(), bin.join("rama-cni"))?;
    for p in ["bridge", "host-local"] {
        std::os::unix::fs::symlink(bridge_dir.join(p), bin.join(p))?;
    }
    std::fs::write(
        conf.join("10-rama.conflist"),
        serde_json::to_vec(&json!({
            "cniVersion": "1.0.0",
            "name": "rama",
            "plugins": [{
                "type": "rama-cni",
                "socket": c.socket_of(0),
                "queueDir": c.queue_dir_of(0),
            }],
        }))?,
    )?;
    std::fs::write(
        conf.join("20-bridge.conflist"),
        serde_json::to_vec(&json!({
            "cniVersion": "1.0.0",
            "name": "bridge",
            "plugins": [{
                "type": "bridge",
                "bridge": "cnibench0",
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.88.0.0/16" }]],
                    "dataDir": c.scratch.join("host-local"),
                },
            }],
        }))?,
    )?;
    let env = |pod: &str| {
        vec![
            ("CNI_PATH", bin.display().to_string()),
            ("NETCONFPATH", conf.display().to_string()),
            (
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod}"),
            ),
            // libcni's result cache, kept inside the scratch directory.
            (
                "CNI_CACHE_DIR",
                c.scratch.join("cni-cache").display().to_string(),
            ),
        ]
    };
    let mut sides = [
        Side {
            name: "rama (eBPF, overlay)",
            add: vec![],
            del: vec![],
        },
        Side {
            name: "bridge + host-local",
            add: vec![],
            del: vec![],
        },
    ];
    // The namespaces are made before timing starts: a runtime creates them too.
    let mut pods: Vec<[Netns; 2]> = Vec::new();
    for i in 0..args.pods {
        pods.push([
            Netns::new(&format!("{}-r{i}", c.tag))?,
            Netns::new(&format!("{}-b{i}", c.tag))?,
        ]);
    }
    // Rama's pods go on the overlay (no VLAN neighbour to learn), like the bridge's.
    let rama_env = |pod: &str| {
        let mut e = env(pod);
        e[2].1.push_str(";RAMA_NETWORK=overlay");
        e
    };
    let node = &c.nodes[0].ns;
    println!("CNI latency through cnitool, {} pods per plugin", args.pods);
    for (i, pair) in pods.iter().enumerate() {
        let pod = format!("p{i}");
        sides[0].add.push(cnitool(
            node,
            &tool,
            &rama_env(&pod),
            "add",
            "rama",
            &pair[0],
        )?);
        sides[1]
            .add
            .push(cnitool(node, &tool, &env(&pod), "add", "bridge", &pair[1])?);
    }
    for (i, pair) in pods.iter().enumerate() {
        let pod = format!("p{i}");
        sides[0].del.push(cnitool(
            node,
            &tool,
            &rama_env(&pod),
            "del",
            "rama",
            &pair[0],
        )?);
        sides[1]
            .del
            .push(cnitool(node, &tool, &env(&pod), "del", "bridge", &pair[1])?);
    }
    let left = c.holdings(0);
    if !left.interfaces.is_empty() || left.records != 0 || !left.allocations.is_empty() {
        bail!("Rama's DELs left something: {left:?}");
    }
    let mut rows = Vec::new();
    println!(
        "\n{:<22} {:>10} {:>10} {:>10} {:>10}",
        "plugin", "ADD p50", "ADD p99", "DEL p50", "DEL p99"
    );
    for s in &sides {
        let (a, d) = (summary(&s.add), summary(&s.del));
        println!(
            "{:<22} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.1}ms",
            s.name,
            a["p50_ms"].as_f64().unwrap_or(0.0),
            a["p99_ms"].as_f64().unwrap_or(0.0),
            d["p50_ms"].as_f64().unwrap_or(0.0),
            d["p99_ms"].as_f64().unwrap_or(0.0)
        );
        rows.push(json!({ "plugin": s.name, "add": a, "del": d }));
    }
    let ratio = |verb: &str, p: &str| {
        rows[0][verb][p].as_f64().unwrap_or(0.0) / rows[1][verb][p].as_f64().unwrap_or(1.0)
    };
    let ratios = json!({
        "add_p50": ratio("add", "p50_ms"),
        "add_p99": ratio("add", "p99_ms"),
        "del_p50": ratio("del", "p50_ms"),
        "del_p99": ratio("del", "p99_ms"),
    });
    println!(
        "\nrama / bridge: ADD p50 {:.2}×, p99 {:.2}×; DEL p50 {:.2}×, p99 {:.2}×",
        ratios["add_p50"].as_f64().unwrap_or(0.0),
        ratios["add_p99"].as_f64().unwrap_or(0.0),
        ratios["del_p50"].as_f64().unwrap_or(0.0),
        ratios["del_p99"].as_f64().unwrap_or(0.0)
    );
    let date = rama_tests::today();
    let report = json!({
        "date": date,
        "pods": args.pods,
        "client": "cnitool (libcni 1.1.2), one process per call, in the node namespace",
        "results": rows,
        "rama_over_bridge": ratios,
    });
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join(format!("cni-{date}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")?;
    let mut md = format!(
        "# CNI ADD/DEL latency, {date}\n\n{} pods per plugin through cnitool, interleaved \
         pod by pod, one node namespace, the Rama agent running (eBPF). Wall time of each \
         cnitool execution.\n\n| plugin | ADD p50 | ADD p99 | DEL p50 | DEL p99 |\n|---|---|---|---|---|\n",
        args.pods
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |\n",
            r["plugin"].as_str().unwrap_or(""),
            r["add"]["p50_ms"].as_f64().unwrap_or(0.0),
            r["add"]["p99_ms"].as_f64().unwrap_or(0.0),
            r["del"]["p50_ms"].as_f64().unwrap_or(0.0),
            r["del"]["p99_ms"].as_f64().unwrap_or(0.0)
        ));
    }
    let md_path = args.out.join(format!("cni-{date}.md"));
    std::fs::write(&md_path, md)?;
    println!("wrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("rama-cni-bench needs root (network namespaces, BPF)");
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rama-cni-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
