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

/// An empty TC program built from LLVM IR, returning `ret` (0 = TC_ACT_OK; -1 =
/// TCX_NEXT, which hands the packet to the next program in the chain).
fn empty_tc_object(dir: &std::path::Path, name: &str, ret: i32) -> Result<PathBuf> {
    let ll = dir.join(format!("{name}.ll"));
    let obj = dir.join(format!("{name}.o"));
    std::fs::write(
        &ll,
        format!(
            r#"target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpf"
@_license = global [4 x i8] c"GPL\00", section "license", align 1
@llvm.used = appending global [2 x ptr] [ptr @_license, ptr @{name}], section "llvm.metadata"
define i32 @{name}(ptr %skb) section "classifier" {{
  ret i32 {ret}
}}
"#
        ),
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

struct Case {
    label: &'static str,
    program: &'static str,
    ifindex: u32,
    frame: Vec<u8>,
}

/// Median and mean of the kernel-measured duration per run, for each case, rounds
/// interleaved so drift hits every case alike.
fn measure(
    n: &mut single_node::Node<'_>,
    empty: &mut SchedClassifier,
    cases: &[Case],
    rounds: usize,
    repeat: u32,
) -> Result<Vec<(f64, f64)>> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); cases.len()];
    let mut ctx = [0u8; 44];
    let mut out = vec![0u8; 512];
    for _ in 0..rounds {
        for (i, case) in cases.iter().enumerate() {
            ctx[40..44].copy_from_slice(&case.ifindex.to_ne_bytes());
            let opts = TestRunOptions {
                data_in: Some(&case.frame),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                repeat,
                ..TestRunOptions::new()
            };
            let r = if case.program.is_empty() {
                empty.test_run(opts)?
            } else {
                let p: &mut SchedClassifier =
                    n.dp.ebpf_mut()
                        .program_mut(case.program)
                        .context("program")?
                        .try_into()?;
                p.test_run(opts)?
            };
            samples[i].push(r.duration.as_nanos() as f64);
        }
    }
    Ok(samples
        .iter_mut()
        .map(|s| {
            let mean = s.iter().sum::<f64>() / s.len() as f64;
            (median(s), mean)
        })
        .collect())
}

fn print_costs(title: &str, cases: &[Case], results: &[(f64, f64)]) -> serde_json::Value {
    let base = results[0].0;
    println!("\n{title}");
    println!(
        "{:<34} {:>10} {:>10} {:>11}",
        "case", "median ns", "mean ns", "× empty TC"
    );
    let mut rows = Vec::new();
    for (case, (med, mean)) in cases.iter().zip(results) {
        println!(
            "{:<34} {med:>10.1} {mean:>10.1} {:>11.2}",
            case.label,
            med / base
        );
        rows.push(json!({"case": case.label, "median_ns": med, "mean_ns": mean, "ratio_to_empty": med / base}));
    }
    json!(rows)
}

fn program_costs(rounds: usize) -> Result<serde_json::Value> {
    let scratch = std::env::temp_dir().join(format!("rama-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let empty_obj = empty_tc_object(&scratch, "empty", 0)?;
    let result = single_node::with_node("bp", move |n| -> Result<serde_json::Value> {
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
        let case = |label, program, ifindex, frame| Case {
            label,
            program,
            ifindex,
            frame,
        };
        // An overlay pod to outside the cluster: left to the stack, untouched.
        let to_stack = frames::udp(
            n.p2_host_mac,
            mac(single_node::P2_MAC),
            None,
            v4("10.244.0.10"),
            v4("198.51.100.2"),
            53,
            64,
        );
        let p1_udp = |dst: &str| frames::udp(hm, p1, None, v4("10.100.0.10"), v4(dst), 5000, 64);
        let fresh = vec![
            case("empty TC program", "", n.p1, p1_udp("10.244.0.10")),
            case(
                "pod egress: same node",
                names::PROG_POD_EGRESS,
                n.p1,
                p1_udp("10.244.0.10"),
            ),
            case(
                "pod egress: VLAN (peer node)",
                names::PROG_POD_EGRESS,
                n.p1,
                p1_udp("10.100.0.20"),
            ),
            case(
                "pod egress: VLAN (gateway)",
                names::PROG_POD_EGRESS,
                n.p1,
                p1_udp("10.200.0.5"),
            ),
            case(
                "pod egress: VXLAN",
                names::PROG_POD_EGRESS,
                n.p1,
                p1_udp("10.244.0.20"),
            ),
            case(
                "pod egress: to stack",
                names::PROG_POD_EGRESS,
                n.p2,
                to_stack.clone(),
            ),
            case(
                "pod egress: spoof drop",
                names::PROG_POD_EGRESS,
                n.p1,
                p1_udp("10.100.0.20")
                    .iter()
                    .enumerate()
                    .map(|(i, b)| if i == 29 { 99 } else { *b })
                    .collect(),
            ),
            case(
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
            case(
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
            case(
                "uplink: untagged to stack",
                names::PROG_UPLINK_INGRESS,
                n.uplink,
                frames::udp(up, gw, None, v4("10.0.0.2"), v4("10.0.0.1"), 80, 64),
            ),
        ];
        let fresh_results = measure(n, empty_prog, &fresh, rounds, 1)?;
        let fresh_json = print_costs(
            &format!(
                "Cost per packet, fresh packet per run (BPF_PROG_TEST_RUN repeat 1, {rounds} runs, interleaved)"
            ),
            &fresh,
            &fresh_results,
        );
        // Warm: the same packet 200 times in a row (TTL starts at 255). Only paths
        // that rewrite a packet into one taking the same path again can be repeated:
        // p3 sends to itself, p4 has the VTEP MAC. The VLAN paths cannot (every
        // repetition would push one more tag).
        let p3 = mac(single_node::P3_MAC);
        let p4 = mac(single_node::P4_MAC);
        let to_self = frames::udp(
            p3,
            p3,
            None,
            v4("10.100.0.30"),
            v4("10.100.0.30"),
            5000,
            255,
        );
        let warm = vec![
            case("empty TC program", "", n.p3, to_self.clone()),
            case(
                "pod egress: same node",
                names::PROG_POD_EGRESS,
                n.p3,
                to_self.clone(),
            ),
            case(
                "pod egress: VXLAN",
                names::PROG_POD_EGRESS,
                n.p4,
                frames::udp(
                    mac(single_node::N2_VTEP_MAC),
                    p4,
                    None,
                    v4("10.244.0.40"),
                    v4("10.244.0.20"),
                    5000,
                    255,
                ),
            ),
            case(
                "pod egress: to stack",
                names::PROG_POD_EGRESS,
                n.p2,
                to_stack.clone(),
            ),
            case(
                "pod egress: spoof drop",
                names::PROG_POD_EGRESS,
                n.p3,
                frames::udp(
                    p3,
                    p3,
                    None,
                    v4("10.100.0.99"),
                    v4("10.100.0.30"),
                    5000,
                    255,
                ),
            ),
            case(
                "uplink: untagged to stack",
                names::PROG_UPLINK_INGRESS,
                n.uplink,
                frames::udp(up, gw, None, v4("10.0.0.2"), v4("10.0.0.1"), 80, 64),
            ),
        ];
        let warm_results = measure(n, empty_prog, &warm, (rounds / 20).max(50), 200)?;
        let warm_json = print_costs(
            "Cost per packet, warm (BPF_PROG_TEST_RUN repeat 200, same packet)",
            &warm,
            &warm_results,
        );
        Ok(json!({"fresh": fresh_json, "warm": warm_json}))
    })??;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(result)
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

/// The fallback on this kernel cannot host underlay pods (no 802.1Q devices): apply it
/// with the overlay pods only.
fn apply_fallback_overlay_only(c: &Cluster) -> Result<()> {
    for i in 0..c.nodes.len() {
        let mut state = c.node_state(i);
        let underlay: Vec<String> = c
            .pods
            .iter()
            .filter(|p| p.net.is_underlay())
            .flat_map(|p| [p.ipv4.to_string(), p.ipv6.to_string()])
            .collect();
        let keep = |v: &serde_json::Value, key: &str| {
            !v[key]
                .as_str()
                .is_some_and(|ip| underlay.iter().any(|u| u == ip))
        };
        state["endpoints"] = json!(
            state["endpoints"]
                .as_array()
                .context("endpoints")?
                .iter()
                .filter(|e| keep(e, "ipv4"))
                .cloned()
                .collect::<Vec<_>>()
        );
        state["remoteEndpoints"] = json!(
            state["remoteEndpoints"]
                .as_array()
                .context("remotes")?
                .iter()
                .filter(|e| keep(e, "ip"))
                .cloned()
                .collect::<Vec<_>>()
        );
        c.apply_node(i, &state, DatapathMode::Fallback)?;
    }
    Ok(())
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
        (0, "uz", PodNet::Vlan100),
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
    let mut stats = None;
    let mut gbps: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    let mut rr: Vec<Vec<f64>> = vec![Vec::new(); contenders.len()];
    for rep in 0..reps {
        for (i, (label, mode, from, to)) in contenders.iter().enumerate() {
            match mode {
                None => c.teardown_all()?,
                Some(DatapathMode::Fallback) => apply_fallback_overlay_only(&c)?,
                Some(m) => c.apply_all(*m)?,
            }
            let (src, dst) = (c.pod(from), c.pod(to));
            let g = iperf(&dst.ns, dst.ipv4.into(), &src.ns, secs)?;
            if rep == 0 && *mode == Some(DatapathMode::Ebpf) && i == 1 {
                stats = Some(real_traffic_costs(&c, quick)?);
            }
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
    Ok(json!({"repetitions": reps, "seconds": secs, "rows": rows, "program_stats": stats}))
}

/// Sum of (run time, run count) over every loaded program called `name`.
fn program_stats(name: &str) -> (u128, u64) {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str() == Some(name))
        .fold((0, 0), |(t, n), p| {
            (t + p.run_time().as_nanos(), n + p.run_count())
        })
}

/// Floods `count` UDP datagrams from `src` to `dst_ip`, with a socket at the other
/// end that swallows them (so no ICMP comes back through the measured hook).
fn udp_flood(src: &Netns, dst: &Netns, dst_ip: IpAddr, count: u32) -> Result<()> {
    let addr = SocketAddr::new(dst_ip, 9);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = dst.run_in(move || -> Result<()> {
        let s = std::net::UdpSocket::bind(addr)?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        tx.send(()).ok();
        let mut buf = [0u8; 2048];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = s.recv(&mut buf);
        }
        Ok(())
    })?;
    rx.recv_timeout(Duration::from_secs(5))?;
    let sender = src.run_in(move || -> Result<()> {
        let s = std::net::UdpSocket::bind(SocketAddr::new(
            if dst_ip.is_ipv4() {
                IpAddr::from([0u8; 4])
            } else {
                IpAddr::from([0u16; 8])
            },
            0,
        ))?;
        let payload = [0x5au8; 22];
        for _ in 0..count {
            let _ = s.send_to(&payload, addr);
        }
        Ok(())
    })?;
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sink.join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    sent?
}

/// Average run time of `rama_pod_egress` per path on real packets (kernel BPF stats),
/// next to an empty program chained in front of it on the same veth.
fn real_traffic_costs(c: &Cluster, quick: bool) -> Result<serde_json::Value> {
    let count = if quick { 20_000 } else { 200_000 };
    let scratch = std::env::temp_dir().join(format!("rama-bench-stats-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let obj = empty_tc_object(&scratch, "empty_next", -1)?;
    let previous = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .unwrap_or_else(|_| "0".into());
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let ua = c.pod("ua");
    let host_if = ua.host_if.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    // Keep the empty program attached (first in the TCX chain) from a thread in n1.
    let holder = c.nodes[0].ns.run_in(move || -> Result<()> {
        let mut ebpf = aya::Ebpf::load_file(&obj)?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut("empty_next")
            .context("program")?
            .try_into()?;
        prog.load()?;
        prog.attach_with_options(
            &host_if,
            aya::programs::TcAttachType::Ingress,
            aya::programs::tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::first()),
        )?;
        ready_tx.send(()).ok();
        let _ = done_rx.recv();
        Ok(())
    })?;
    ready_rx.recv_timeout(Duration::from_secs(10))?;
    let paths: [(&str, &Netns, IpAddr); 4] = [
        ("same node", &c.pod("uz").ns, c.pod("uz").ipv4.into()),
        ("VLAN (peer node)", &c.pod("ub").ns, c.pod("ub").ipv4.into()),
        ("VLAN (gateway)", &c.ext, rama_tests::cluster::external_v4()),
        ("VXLAN", &c.pod("ob").ns, c.pod("ob").ipv4.into()),
    ];
    let mut rows = Vec::new();
    println!(
        "\nCost per packet on real traffic (kernel BPF stats, {count} UDP datagrams per path; the empty program runs first on the same hook)"
    );
    println!(
        "{:<22} {:>14} {:>14} {:>11}",
        "path", "rama ns/pkt", "empty ns/pkt", "× empty"
    );
    for (label, dst_ns, dst_ip) in paths {
        let (t0, n0) = program_stats(names::PROG_POD_EGRESS);
        let (e0, m0) = program_stats("empty_next");
        udp_flood(&ua.ns, dst_ns, dst_ip, count)?;
        let (t1, n1) = program_stats(names::PROG_POD_EGRESS);
        let (e1, m1) = program_stats("empty_next");
        let rama = (t1 - t0) as f64 / (n1 - n0).max(1) as f64;
        let empty = (e1 - e0) as f64 / (m1 - m0).max(1) as f64;
        println!(
            "{label:<22} {rama:>14.1} {empty:>14.1} {:>11.2}",
            rama / empty
        );
        rows.push(json!({"path": label, "rama_ns": rama, "empty_ns": empty, "ratio_to_empty": rama / empty, "packets": n1 - n0}));
    }
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", previous.trim())?;
    drop(done_tx);
    holder
        .join()
        .map_err(|_| anyhow::anyhow!("holder panicked"))??;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(json!(rows))
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

fn run() -> Result<()> {
    let args = parse_args()?;
    let rounds = if args.quick { 2_000 } else { 20_000 };
    let programs = program_costs(rounds)?;
    let paths = pod_paths(args.quick)?;
    let date = rama_tests::today();
    let report = json!({"date": date, "quick": args.quick, "machine": machine(), "programs": programs, "pod_to_pod": paths});
    std::fs::create_dir_all(&args.out)?;
    let json_path = args.out.join(format!("datapath-{date}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)?;
    let md_path = args.out.join(format!("datapath-{date}.md"));
    std::fs::write(&md_path, markdown(&report))?;
    println!("\nwrote {} and {}", json_path.display(), md_path.display());
    Ok(())
}

fn cost_table(s: &mut String, title: &str, rows: &serde_json::Value) {
    s.push_str(&format!(
        "\n### {title}\n\n| case | median ns | mean ns | × empty TC |\n|---|---:|---:|---:|\n"
    ));
    for row in rows.as_array().into_iter().flatten() {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} |\n",
            row["case"].as_str().unwrap_or(""),
            row["median_ns"].as_f64().unwrap_or(f64::NAN),
            row["mean_ns"].as_f64().unwrap_or(f64::NAN),
            row["ratio_to_empty"].as_f64().unwrap_or(f64::NAN)
        ));
    }
}

fn markdown(r: &serde_json::Value) -> String {
    let mut s = format!(
        "# Datapath benchmark, {}\n\nMachine: {} CPUs ({}), kernel {}.{} Produced by `cargo xtask bench`.\n\n## Cost per packet\n",
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
    cost_table(
        &mut s,
        "BPF_PROG_TEST_RUN, a fresh 64-byte packet per run (repeat 1)",
        &r["programs"]["fresh"],
    );
    s.push_str("\nEach run includes the syscall's per-run overhead and cold caches, which the empty program pays too.\n");
    cost_table(
        &mut s,
        "BPF_PROG_TEST_RUN, warm (the same packet 200 times)",
        &r["programs"]["warm"],
    );
    s.push_str("\nOnly paths that rewrite a packet into one that takes the same path again can be repeated; the VLAN paths cannot (each repetition would push another tag).\n");
    s.push_str("\n### Real traffic (kernel BPF stats, UDP floods from one pod; an empty program chained first on the same hook)\n\n| path | rama_pod_egress ns | empty ns | × empty |\n|---|---:|---:|---:|\n");
    for row in r["pod_to_pod"]["program_stats"]
        .as_array()
        .into_iter()
        .flatten()
    {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.2} |\n",
            row["path"].as_str().unwrap_or(""),
            row["rama_ns"].as_f64().unwrap_or(f64::NAN),
            row["empty_ns"].as_f64().unwrap_or(f64::NAN),
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
