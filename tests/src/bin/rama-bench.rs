//! Datapath benchmarks. Prints tables and writes JSON and Markdown; never asserts.
//!
//! 1. Cost per packet of each program decision (BPF_PROG_TEST_RUN), next to an empty
//!    TC program in the same run, cases interleaved round by round. Each run gets a
//!    fresh packet (repeat = 1): the programs rewrite packets (TTL, VLAN push), so a
//!    repeated run would measure a different path after the first iteration.
//! 2. Cross-node pod-to-pod TCP throughput (iperf3) and request/response rate for plain
//!    routed veths with no CNI (the limit), Rama eBPF underlay and overlay, and Rama
//!    fallback overlay, interleaved per repetition, client and server pinned to CPU 0.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use rama_agent::dataplane::DatapathMode;
use rama_common::names;
use rama_tests::{
    cluster::{Cluster, PodNet},
    frames::{self, mac},
    netns::Netns,
    single_node::{self, GW100_MAC, P1_MAC, UPLINK_MAC},
    vlan_fixture::LLC,
};
use serde_json::json;

struct Args {
    quick: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("bench/results"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = it.next().context("--out needs a directory")?.into(),
            "--help" | "-h" => {
                println!(
                    "rama-bench [--quick] [--out DIR]\n\nDatapath benchmarks (root): per-program cost and pod-to-pod throughput/latency."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// An empty TC program (`return TC_ACT_OK`) built from LLVM IR: the baseline.
fn empty_tc_object(dir: &std::path::Path) -> Result<PathBuf> {
    let ll = dir.join("empty.ll");
    let obj = dir.join("empty.o");
    std::fs::write(
        &ll,
        r#"target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpf"
@_license = global [4 x i8] c"GPL\00", section "license", align 1
@llvm.used = appending global [2 x ptr] [ptr @_license, ptr @empty], section "llvm.metadata"
define i32 @empty(ptr %skb) section "classifier" {
  ret i32 0
}
"#,
    )?;
    let status = Command::new(LLC)
        .args(["-march=bpf", "-filetype=obj", "-o"])
        .arg(&obj)
        .arg(&ll)
        .status()?;
    if !status.success() {
        bail!("llc failed");
    }
    Ok(obj)
}

fn program_costs(rounds: usize) -> Result<serde_json::Value> {
    let scratch = std::env::temp_dir().join(format!("rama-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let empty_obj = empty_tc_object(&scratch)?;
    let result = single_node::with_node("bp", move |n| -> Result<Vec<(String, f64, f64)>> {
        let mut empty = aya::Ebpf::load_file(&empty_obj)?;
        let empty_prog: &mut SchedClassifier = empty
            .program_mut("empty")
            .context("empty program")?
            .try_into()?;
        empty_prog.load()?;
        let hm = n.p1_host_mac;
        let v4 = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let p1 = mac(P1_MAC);
        let gw = mac(GW100_MAC);
        let up = mac(UPLINK_MAC);
        // (label, program, ifindex, frame)
        let cases: Vec<(&str, &str, u32, Vec<u8>)> = vec![
            (
                "empty TC program",
                "",
                n.p1,
                frames::udp(hm, p1, None, v4("10.100.0.10"), v4("10.244.0.10"), 5000, 64),
            ),
            (
                "pod egress: same node",
                names::PROG_POD_EGRESS,
                n.p1,
                frames::udp(hm, p1, None, v4("10.100.0.10"), v4("10.244.0.10"), 5000, 64),
            ),
            (
                "pod egress: VLAN (peer node)",
                names::PROG_POD_EGRESS,
                n.p1,
                frames::udp(hm, p1, None, v4("10.100.0.10"), v4("10.100.0.20"), 5000, 64),
            ),
            (
                "pod egress: VLAN (gateway)",
                names::PROG_POD_EGRESS,
                n.p1,
                frames::udp(hm, p1, None, v4("10.100.0.10"), v4("10.200.0.5"), 5000, 64),
            ),
            (
                "pod egress: VXLAN",
                names::PROG_POD_EGRESS,
                n.p1,
                frames::udp(hm, p1, None, v4("10.100.0.10"), v4("10.244.0.20"), 5000, 64),
            ),
            (
                "pod egress: to stack",
                names::PROG_POD_EGRESS,
                n.p2,
                frames::udp(
                    n.p2_host_mac,
                    mac(single_node::P2_MAC),
                    None,
                    v4("10.244.0.10"),
                    v4("198.51.100.2"),
                    53,
                    64,
                ),
            ),
            (
                "pod egress: spoof drop",
                names::PROG_POD_EGRESS,
                n.p1,
                frames::udp(hm, p1, None, v4("10.100.0.99"), v4("10.100.0.20"), 5000, 64),
            ),
            (
                "uplink: VLAN deliver",
                names::PROG_UPLINK_INGRESS,
                n.uplink,
                frames::udp(
                    up,
                    gw,
                    Some(100),
                    v4("10.100.0.1"),
                    v4("10.100.0.10"),
                    80,
                    64,
                ),
            ),
            (
                "uplink: ARP reply",
                names::PROG_UPLINK_INGRESS,
                n.uplink,
                frames::arp(
                    [0xff; 6],
                    gw,
                    Some(100),
                    1,
                    gw,
                    "10.100.0.1".parse().expect("ip"),
                    "10.100.0.10".parse().expect("ip"),
                ),
            ),
            (
                "uplink: untagged to stack",
                names::PROG_UPLINK_INGRESS,
                n.uplink,
                frames::udp(up, gw, None, v4("10.0.0.2"), v4("10.0.0.1"), 80, 64),
            ),
        ];
        let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); cases.len()];
        let mut ctx = [0u8; 44];
        let mut out = vec![0u8; 256];
        for _ in 0..rounds {
            for (i, (_, prog, ifindex, frame)) in cases.iter().enumerate() {
                ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
                let opts = TestRunOptions {
                    data_in: Some(frame),
                    data_out: Some(&mut out),
                    ctx_in: Some(&ctx),
                    repeat: 1,
                    ..TestRunOptions::new()
                };
                let r = if prog.is_empty() {
                    empty_prog.test_run(opts)?
                } else {
                    let p: &mut SchedClassifier =
                        n.dp.ebpf_mut()
                            .program_mut(prog)
                            .context("program")?
                            .try_into()?;
                    p.test_run(opts)?
                };
                samples[i].push(r.duration.as_nanos() as f64);
            }
        }
        Ok(cases
            .iter()
            .zip(samples.iter_mut())
            .map(|((label, ..), s)| {
                let mean = s.iter().sum::<f64>() / s.len() as f64;
                (label.to_string(), median(s), mean)
            })
            .collect())
    })??;
    let _ = std::fs::remove_dir_all(&scratch);
    let base = result[0].1;
    println!(
        "\nCost per packet (BPF_PROG_TEST_RUN, 64-byte UDP frames, {rounds} runs each, repeat 1, interleaved)"
    );
    println!(
        "{:<32} {:>12} {:>10} {:>12}",
        "case", "median ns", "mean ns", "× empty TC"
    );
    let mut rows = Vec::new();
    for (label, med, mean) in &result {
        println!("{label:<32} {med:>12.1} {mean:>10.1} {:>12.2}", med / base);
        rows.push(
            json!({"case": label, "median_ns": med, "mean_ns": mean, "ratio_to_empty": med / base}),
        );
    }
    Ok(json!(rows))
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with bit 0 set, applied to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// 1-byte request/response over one TCP connection for `secs`: transactions/s.
fn tcp_rr(server: &Netns, server_ip: IpAddr, client: &Netns, secs: f64) -> Result<f64> {
    let addr = SocketAddr::new(server_ip, 12865);
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = server.run_in(move || -> Result<()> {
        pin_to_cpu0();
        let l = TcpListener::bind(addr)?;
        tx.send(()).ok();
        let (mut c, _) = l.accept()?;
        c.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while c.read_exact(&mut b).is_ok() {
            c.write_all(&b)?;
        }
        Ok(())
    })?;
    rx.recv_timeout(Duration::from_secs(5))?;
    let cli = client.run_in(move || -> Result<f64> {
        pin_to_cpu0();
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        c.set_nodelay(true)?;
        let mut b = [1u8; 1];
        // Warm up (neighbour resolution, first packets through the stack).
        for _ in 0..100 {
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
        }
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed().as_secs_f64() < secs {
            c.write_all(&b)?;
            c.read_exact(&mut b)?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })?;
    let rate = cli
        .join()
        .map_err(|_| anyhow::anyhow!("client panicked"))??;
    srv.join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    Ok(rate)
}

/// iperf3 single stream for `secs`, both ends on CPU 0: Gbit/s received.
fn iperf(server: &Netns, server_ip: IpAddr, client: &Netns, secs: u32) -> Result<f64> {
    let ip = server_ip.to_string();
    let mut srv = Command::new("nsenter")
        .arg(format!("--net={}", server.path()))
        .args([
            "taskset", "-c", "0", "iperf3", "-s", "-1", "-B", &ip, "-p", "5201",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let out = client.exec_output(
        "taskset",
        &[
            "-c",
            "0",
            "iperf3",
            "-c",
            &ip,
            "-p",
            "5201",
            "-t",
            &secs.to_string(),
            "-J",
        ],
    );
    let _ = srv.wait();
    let out = out?;
    if !out.status.success() {
        let _ = srv.kill();
        bail!("iperf3 failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON")?;
    Ok(bps / 1e9)
}

fn route_plain_pods(c: &Cluster) -> Result<()> {
    for (i, node) in c.nodes.iter().enumerate() {
        node.ns.sysctl("net.ipv4.ip_forward", "1")?;
        for p in c.pods.iter().filter(|p| p.net == PodNet::Plain) {
            if p.node == i {
                node.ns
                    .ip(&["addr", "replace", "169.254.1.1/32", "dev", &p.host_if])?;
                node.ns.ip(&[
                    "route",
                    "replace",
                    &format!("{}/32", p.ipv4),
                    "dev",
                    &p.host_if,
                ])?;
            } else {
                let via = c.nodes[p.node].ipv4().to_string();
                node.ns
                    .ip(&["route", "replace", &format!("{}/32", p.ipv4), "via", &via])?;
            }
        }
    }
    Ok(())
}

fn pod_paths(quick: bool) -> Result<serde_json::Value> {
    let reps = if quick { 1 } else { 3 };
    let secs = if quick { 2 } else { 5 };
    let mut c = Cluster::new("bn", &[DatapathMode::Ebpf, DatapathMode::Ebpf])?;
    for (node, name, net) in [
        (0, "ra", PodNet::Plain),
        (1, "rb", PodNet::Plain),
        (0, "ua", PodNet::Vlan100),
        (1, "ub", PodNet::Vlan100),
        (0, "oa", PodNet::Overlay),
        (1, "ob", PodNet::Overlay),
    ] {
        c.add_pod(node, name, net)?;
    }
    route_plain_pods(&c)?;
    // (label, mode or None for no CNI, client pod, server pod)
    let contenders: [(&str, Option<DatapathMode>, &str, &str); 4] = [
        ("routed veth, no CNI (limit)", None, "ra", "rb"),
        (
            "Rama eBPF underlay (VLAN)",
            Some(DatapathMode::Ebpf),
            "ua",
            "ub",
        ),
        (
            "Rama eBPF overlay (VXLAN)",
            Some(DatapathMode::Ebpf),
            "oa",
            "ob",
        ),
        (
            "Rama fallback overlay (VXLAN)",
            Some(DatapathMode::Fallback),
            "oa",
            "ob",
        ),
    ];
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut rr: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for rep in 0..reps {
        for (i, (label, mode, from, to)) in contenders.iter().enumerate() {
            match mode {
                None => c.teardown_all()?,
                Some(m) => c.apply_all(*m)?,
            }
            let (src, dst) = (c.pod(from), c.pod(to));
            let g = iperf(&dst.ns, dst.ipv4.into(), &src.ns, secs)?;
            let t = tcp_rr(&dst.ns, dst.ipv4.into(), &src.ns, f64::from(secs))?;
            eprintln!("rep {}: {label}: {g:.2} Gbit/s, {t:.0} TCP_RR/s", rep + 1);
            gbps[i].push(g);
            rr[i].push(t);
        }
    }
    c.teardown_all()?;
    println!(
        "\nCross-node pod → pod, IPv4, one TCP stream, client and server on CPU 0, median of {reps} × {secs} s"
    );
    println!(
        "{:<32} {:>10} {:>8} {:>12} {:>8}   (min–max)",
        "contender", "Gbit/s", "× limit", "TCP_RR/s", "× limit"
    );
    let base_g = median(&mut gbps[0].clone());
    let base_r = median(&mut rr[0].clone());
    let mut rows = Vec::new();
    for (i, (label, ..)) in contenders.iter().enumerate() {
        let g = median(&mut gbps[i].clone());
        let r = median(&mut rr[i].clone());
        let (gmin, gmax) = min_max(&gbps[i]);
        let (rmin, rmax) = min_max(&rr[i]);
        println!(
            "{label:<32} {g:>10.2} {:>8.2} {r:>12.0} {:>8.2}   ({gmin:.2}–{gmax:.2} Gbit/s, {rmin:.0}–{rmax:.0}/s)",
            g / base_g,
            r / base_r
        );
        rows.push(json!({"contender": label, "gbps_median": g, "gbps_runs": gbps[i], "tcp_rr_median": r, "tcp_rr_runs": rr[i],
            "gbps_ratio_to_limit": g / base_g, "tcp_rr_ratio_to_limit": r / base_r}));
    }
    println!("Rama fallback underlay: not measurable on this kernel (no 802.1Q devices).");
    Ok(json!({"repetitions": reps, "seconds": secs, "rows": rows}))
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
            (a.min(*x), b.max(*x))
        })
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": kernel.trim(),
    })
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown-date".into())
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let rounds = if args.quick { 2_000 } else { 20_000 };
    let programs = program_costs(rounds)?;
    let paths = pod_paths(args.quick)?;
    let date = today();
    let report = json!({"date": date, "quick": args.quick, "machine": machine(), "programs": programs, "pod_to_pod": paths});
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join(format!("datapath-{date}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let md_path = args.out.join(format!("datapath-{date}.md"));
    std::fs::write(&md_path, markdown(&report))?;
    println!("\nwrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

fn markdown(r: &serde_json::Value) -> String {
    let mut s = format!(
        "# Datapath benchmark, {}\n\nMachine: {} CPUs ({}), kernel {}.{}\n\n## Cost per packet (BPF_PROG_TEST_RUN)\n\n| case | median ns | mean ns | × empty TC |\n|---|---:|---:|---:|\n",
        r["date"].as_str().unwrap_or(""),
        r["machine"]["cpus"],
        r["machine"]["cpu_model"].as_str().unwrap_or(""),
        r["machine"]["kernel"].as_str().unwrap_or(""),
        if r["quick"].as_bool() == Some(true) {
            " Quick run (fewer repetitions)."
        } else {
            ""
        }
    );
    for row in r["programs"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} |\n",
            row["case"].as_str().unwrap_or(""),
            row["median_ns"].as_f64().unwrap_or(f64::NAN),
            row["mean_ns"].as_f64().unwrap_or(f64::NAN),
            row["ratio_to_empty"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    s.push_str(&format!(
        "\n## Cross-node pod → pod (IPv4, one TCP stream, both ends on CPU 0, median of {} × {} s)\n\n| contender | Gbit/s | × limit | TCP_RR/s | × limit | Gbit/s runs | TCP_RR runs |\n|---|---:|---:|---:|---:|---|---|\n",
        r["pod_to_pod"]["repetitions"], r["pod_to_pod"]["seconds"]
    ));
    for row in r["pod_to_pod"]["rows"].as_array().into_iter().flatten() {
        let runs = |k: &str| {
            row[k]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| format!("{:.2}", v.as_f64().unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.2} | {} | {} |\n",
            row["contender"].as_str().unwrap_or(""),
            row["gbps_median"].as_f64().unwrap_or(f64::NAN),
            row["gbps_ratio_to_limit"].as_f64().unwrap_or(f64::NAN),
            row["tcp_rr_median"].as_f64().unwrap_or(f64::NAN),
            row["tcp_rr_ratio_to_limit"].as_f64().unwrap_or(f64::NAN),
            runs("gbps_runs"),
            runs("tcp_rr_runs"),
        ));
    }
    s.push_str("\nRama fallback underlay is not measurable on this kernel (no 802.1Q devices).\n");
    s
}

fn main() -> ExitCode {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("rama-bench needs root (network namespaces, BPF)");
        return ExitCode::FAILURE;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rama-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
