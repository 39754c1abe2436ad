//! Observability with real tools: a real Prometheus server (Debian's) scrapes the
//! agents of a namespace cluster, traffic and spoofed packets show up in its query
//! API by program and reason; every dashboard and alert expression is evaluated by
//! that server; the alert rules pass `promtool`; `rama-agent inspect` answers from a
//! live node; scrapes during map replacement answer or fail cleanly.
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    agent_binary,
    cluster::{Cluster, PodNet},
    frames,
    netns::{Netns, http_get},
    require_root,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

fn monitoring() -> PathBuf {
    repo().join("deploy/monitoring")
}

/// The Prometheus tools come with the test command's prerequisites; missing, they
/// are a broken set-up, not a reason to skip.
fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask bootstrap` installs Debian's prometheus package",
        path.display()
    );
    path
}

#[test]
fn alert_rules_pass_promtool_and_fire_on_their_series() {
    let promtool = tool("promtool");
    for args in [
        ["check", "rules", "alerts.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(monitoring())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Prometheus server in a namespace, stopped (by PID) on drop.
struct Prometheus<'a> {
    child: Child,
    ns: &'a Netns,
    addr: SocketAddr,
    log: PathBuf,
}

impl<'a> Prometheus<'a> {
    fn start(ns: &'a Netns, dir: &Path, targets: &[SocketAddr]) -> Self {
        let addr: SocketAddr = "127.0.0.1:19090".parse().expect("addr");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  \
                 - job_name: rama-agent\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let log = dir.join("prometheus.log");
        let logfile = std::fs::File::create(&log).expect("log");
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", ns.path()))
            .arg(tool("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone().expect("log"))
            .stderr(logfile);
        // SAFETY: prctl(2) between fork and exec: Prometheus dies with the test.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start prometheus");
        Self {
            child,
            ns,
            addr,
            log,
        }
    }

    /// GET `path_and_query` from the server's HTTP API, inside its namespace.
    fn get(&self, path_and_query: &str) -> Result<Value, String> {
        let text = self
            .ns
            .http_get(self.addr, path_and_query)
            .map_err(|e| e.to_string())?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(body).map_err(|e| format!("{e}: {text}"))
    }

    /// Runs an instant query; the result vector, or the server's error.
    fn query(&self, promql: &str) -> Result<Vec<Value>, String> {
        let v = self.get(&format!("/api/v1/query?query={}", percent_encode(promql)))?;
        if v["status"] != "success" {
            return Err(format!("{promql}: {v}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The sum of an instant query's values (0 when it has none).
    fn value(&self, promql: &str) -> f64 {
        self.query(promql)
            .unwrap_or_default()
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `promql` is at least `want`; the last value seen.
    fn wait_at_least(&self, promql: &str, want: f64, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.value(promql);
            if v >= want || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        rama_tests::stop_child(&mut self.child, Duration::from_secs(5));
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sends raw Ethernet frames out of `ifname` inside `ns` (a packet socket).
fn send_frames(ns: &Netns, ifname: &str, frames: Vec<Vec<u8>>) {
    let ifname = std::ffi::CString::new(ifname).expect("name");
    ns.run_in(move || {
        // SAFETY: plain socket calls on a socket this closure owns; the address
        // structure is zeroed and filled as packet(7) describes.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_ifindex = libc::if_nametoindex(ifname.as_ptr()) as i32;
            sll.sll_halen = 6;
            for f in &frames {
                let sent = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(
                    sent,
                    f.len() as isize,
                    "{}",
                    std::io::Error::last_os_error()
                );
            }
            libc::close(fd);
        }
    })
    .expect("enter pod namespace")
    .join()
    .expect("send frames");
}

fn counter(instance: &str, program: &str, reason: &str) -> String {
    format!(
        r#"sum(rama_datapath_packets_total{{instance="{instance}",program="{program}",reason="{reason}"}})"#
    )
}

/// Every expression of the dashboard and the alert rules, as Prometheus would run it.
fn shipped_expressions() -> Vec<(String, String)> {
    let mut exprs = Vec::new();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            exprs.push((
                format!("dashboard panel {:?}", panel["title"]),
                expr.replace("$__rate_interval", "1m")
                    .replace("$instance", ".*"),
            ));
        }
    }
    let rules = std::fs::read_to_string(monitoring().join("alerts.yaml")).expect("alerts");
    // Each rule's expr is one line or a `|` block; promtool checked the YAML itself.
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            let mut expr = expr.trim().to_owned();
            if expr == "|" {
                expr.clear();
                while let Some(next) = lines.peek() {
                    if next.trim_start().starts_with("for:")
                        || next.trim_start().starts_with("labels:")
                    {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push(' ');
                    lines.next();
                }
            }
            exprs.push(("alert rule".into(), expr));
        }
    }
    exprs
}

#[test]
fn prometheus_sees_forwards_and_spoofed_drops_and_inspect_agrees() {
    require_root!();
    let mut c = Cluster::new("ob", &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    c.metrics_addr = "0.0.0.0:9476".parse().expect("addr");
    c.write_cluster_state().expect("state");
    c.start_agent(0, &[]).expect("agent n1");
    c.start_agent(1, &[]).expect("agent n2");
    c.add_cni_pod(0, "a", PodNet::Vlan100).expect("pod a");
    c.add_cni_pod(1, "b", PodNet::Vlan100).expect("pod b");
    c.add_cni_pod(1, "o", PodNet::Overlay).expect("pod o");
    let targets: Vec<SocketAddr> = c
        .nodes
        .iter()
        .map(|n| SocketAddr::new(n.ipv4(), 9476))
        .collect();
    let (n1, n2) = (targets[0].to_string(), targets[1].to_string());
    let prom = Prometheus::start(&c.ext, &c.scratch, &targets);
    let up = prom.wait_at_least(r#"sum(up{job="rama-agent"})"#, 2.0, Duration::from_secs(60));
    assert_eq!(up, 2.0, "both agents scraped\n{}", prom.log_text());
    // Both agents answered a scrape with datapath counters in it.
    let rows = prom.wait_at_least(
        r#"count(rama_datapath_packets_total{program="pod_egress"})"#,
        2.0,
        Duration::from_secs(10),
    );
    assert!(rows >= 2.0, "no datapath counters scraped");

    let (a, b) = (c.pod("a"), c.pod("b"));
    let vlan_out = counter(&n1, "pod_egress", "redirect_vlan");
    let vlan_in = counter(&n2, "uplink_ingress", "redirect_local");
    // Settle neighbour resolution first, so every counted ping is forwarded.
    rama_tests::traffic::ping(&a.ns, IpAddr::V4(b.ipv4)).expect("a → b");
    std::thread::sleep(Duration::from_secs(2));
    let (out_before, in_before) = (prom.value(&vlan_out), prom.value(&vlan_in));
    const PINGS: f64 = 50.0;
    let out =
        a.ns.exec_output(
            "ping",
            &[
                "-c",
                "50",
                "-i",
                "0.02",
                "-W",
                "1",
                "-q",
                &b.ipv4.to_string(),
            ],
        )
        .expect("ping");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out_after = prom.wait_at_least(&vlan_out, out_before + PINGS, Duration::from_secs(15));
    let in_after = prom.wait_at_least(&vlan_in, in_before + PINGS, Duration::from_secs(15));
    assert!(
        out_after - out_before >= PINGS,
        "n1 pod_egress/redirect_vlan rose by {} for {PINGS} echo requests",
        out_after - out_before
    );
    assert!(
        in_after - in_before >= PINGS,
        "n2 uplink_ingress/redirect_local rose by {} for {PINGS} echo requests",
        in_after - in_before
    );

    // Pod a sends as an address that is not its own: dropped, counted as spoofing.
    const SPOOFED: usize = 7;
    let spoofed = format!(
        r#"sum(rama_datapath_packets_total{{instance="{n1}",program="pod_egress",action="drop",reason="spoofed_ip"}})"#
    );
    let before = prom.value(&spoofed);
    // `ip -br link`: NAME STATE MAC …
    let brief = c.nodes[0]
        .ns
        .ip(&["-br", "link", "show", "dev", &a.host_if])
        .expect("host veth");
    let host_mac = brief.split_whitespace().nth(2).expect("host veth MAC");
    let frame = frames::udp(
        frames::mac(host_mac),
        frames::mac(&a.mac),
        None,
        "10.100.0.250".parse().expect("forged"),
        IpAddr::V4(b.ipv4),
        9,
        64,
    );
    send_frames(&a.ns, "eth0", vec![frame; SPOOFED]);
    let after = prom.wait_at_least(&spoofed, before + SPOOFED as f64, Duration::from_secs(15));
    assert!(
        after - before >= SPOOFED as f64,
        "spoofed_ip drops rose by {} for {SPOOFED} forged packets",
        after - before
    );

    // Every shipped expression is valid PromQL over these metrics.
    for (what, expr) in shipped_expressions() {
        if let Err(e) = prom.query(&expr) {
            panic!("{what}: Prometheus refuses {expr}: {e}");
        }
    }
    // The per-node series the dashboard plots exist.
    for metric in [
        "rama_datapath_info",
        "rama_agent_ready",
        "rama_local_endpoints",
        "rama_bpf_map_entries",
        "rama_cni_request_duration_seconds_bucket",
        "rama_dataplane_sync_duration_seconds_bucket",
        "rama_agent_build_info",
    ] {
        assert!(
            prom.value(&format!("count({metric}{{instance=\"{n1}\"}})")) > 0.0,
            "{metric} not scraped from {n1}"
        );
    }

    // `rama-agent inspect` on node 1 sees what Prometheus saw.
    let inspect = |args: &[&str]| {
        let pin = c.nodes[0].pin_dir.display().to_string();
        let mut all = vec!["inspect", "--pin-dir", &pin];
        all.extend_from_slice(args);
        let bin = agent_binary().display().to_string();
        let mut full = vec![bin.as_str()];
        full.extend(all);
        c.nodes[0]
            .ns
            .exec_output(full[0], &full[1..])
            .expect("inspect")
    };
    let json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = inspect(&all);
        assert!(
            out.status.success(),
            "inspect {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("inspect JSON")
    };
    let endpoints = json(&["endpoints"]);
    let mine = endpoints
        .as_array()
        .expect("list")
        .iter()
        .find(|e| e["ipv4"] == a.ipv4.to_string())
        .unwrap_or_else(|| panic!("pod a not in {endpoints}"));
    assert_eq!(mine["mac"], a.mac);
    assert_eq!(mine["interface"], a.host_if);
    assert_eq!(mine["subnet_v4"]["vlan"], 100);
    let nodes = json(&["nodes"]);
    assert!(
        nodes
            .as_array()
            .expect("list")
            .iter()
            .any(|n| n["vtep"] == c.nodes[1].ipv4().to_string() && n["allowed"] == true),
        "{nodes}"
    );
    let trace = json(&["trace", &a.ipv4.to_string(), &b.ipv4.to_string()]);
    assert_eq!(trace["verdict"]["reason"], "redirect_vlan", "{trace}");
    let hybrid = json(&["trace", &a.ipv4.to_string(), &c.pod("o").ipv4.to_string()]);
    assert_eq!(hybrid["verdict"]["reason"], "redirect_vxlan", "{hybrid}");
    let mode = json(&["mode", "--agent", "127.0.0.1:9476"]);
    assert_eq!(mode["active"], "ebpf", "{mode}");
    assert_eq!(mode["source"], "agent", "{mode}");
    let counters = json(&["counters", "--interval", "0.2"]);
    let spoof_row = counters
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["program"] == "pod_egress" && r["reason"] == "spoofed_ip")
        .expect("spoofed_ip row");
    assert!(spoof_row["packets"].as_u64().unwrap_or(0) >= SPOOFED as u64);
    let table = inspect(&["maps"]);
    assert!(String::from_utf8_lossy(&table.stdout).contains("RAMA_ENDPOINTS"));
    // Names that do not exist: a message that says so, exit code 2.
    for (args, needle) in [
        (vec!["maps", "RAMA_NOPE"], "no map named"),
        (vec!["trace", "10.9.9.9", "10.100.0.1"], "10.9.9.9"),
        (vec!["trace", "not-an-ip", "10.100.0.1"], "invalid"),
    ] {
        let out = inspect(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "inspect {args:?}: {err}");
        assert!(err.contains(needle), "inspect {args:?}: {err}");
    }
}

#[test]
fn scrapes_while_maps_are_replaced_answer_or_fail_cleanly() {
    require_root!();
    let mut c = Cluster::new("or", &[DatapathMode::Ebpf]).expect("cluster");
    c.write_cluster_state().expect("state");
    c.start_agent(0, &[]).expect("agent");
    c.add_cni_pod(0, "a", PodNet::Overlay).expect("pod");
    // What a restarting agent does to a map whose capacity changed: unpin it, pin a
    // new one in its place. The running agent's scrapes read the pins meanwhile.
    let pin = c.nodes[0]
        .pin_dir
        .join(format!("v{}/maps/RAMA_NEIGH", rama_common::ABI_VERSION));
    assert!(pin.exists(), "{} not pinned", pin.display());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = {
        let stop = stop.clone();
        let addr = c.metrics_addr;
        c.nodes[0]
            .ns
            .run_in(move || {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    answers.push(http_get(addr, "/metrics").map_err(|e| e.to_string()));
                }
                answers
            })
            .expect("scraper")
    };
    for round in 0..30u32 {
        let _ = std::fs::remove_file(&pin);
        let out = Command::new("bpftool")
            .args(["map", "create"])
            .arg(&pin)
            .args(["type", "lru_hash", "key", "20", "value", "8"])
            .args(["entries", &(512 + round).to_string(), "name", "RAMA_NEIGH"])
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool map create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = scraper.join().expect("scraper thread");
    assert!(answers.len() >= 10, "only {} scrapes", answers.len());
    let (mut ok, mut failed) = (0, 0);
    for a in &answers {
        let text = a.as_ref().unwrap_or_else(|e| {
            panic!("a scrape got no HTTP answer (the agent must answer or say why): {e}")
        });
        let status = text.lines().next().unwrap_or("");
        if status.contains(" 200 ") {
            assert!(
                text.contains("rama_bpf_map_capacity_entries{map=\"RAMA_NEIGH\"}"),
                "a 200 scrape without the map's capacity:\n{text}"
            );
            ok += 1;
        } else {
            assert!(status.contains(" 500 "), "unexpected answer: {status}");
            failed += 1;
        }
    }
    eprintln!("{ok} scrapes answered, {failed} failed cleanly while RAMA_NEIGH was replaced");
    assert!(ok > 0, "no scrape answered");
    assert!(
        c.agents[0]
            .as_mut()
            .expect("agent")
            .child
            .try_wait()
            .expect("wait")
            .is_none(),
        "the agent died:\n{}",
        c.agent_log(0)
    );
}
