//! The full path: `rama-agent run` in each node namespace (standalone mode, one state
//! directory shared by all), pods created by executing `rama-cni` with the CNI
//! environment and a network configuration on stdin, exactly as a container runtime
//! does.
//!
//! The cluster's Networks and Subnets ([`Cluster::write_cluster_state`]):
//!
//! | Network | fabric | Subnets |
//! |---|---|---|
//! | `vlan100` | Underlay, VLAN 100 | 10.100.0.0/24 (gw .1), fd00:100::/64 (gw ::1) |
//! | `vlan200` | Underlay, VLAN 200 | 10.200.0.0/24, fd00:200::/64 |
//! | `overlay` | Overlay, VNI 4096 | 10.244.0.0/24, fd00:244::/64 |
//!
//! Underlay networks select nodes labelled `rack=r1`; every test node has it.
use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use rama_cni::api::{Call, Reply, Request, Response};
use serde_json::{Value, json};

use crate::{
    agent_binary,
    cluster::{Cluster, OVERLAY_VNI, Pod, PodNet},
    cni_binary,
    netns::Netns,
};

/// The label every test node carries, which the Underlay networks select.
pub const NODE_LABEL: &str = "rack=r1";

/// PIDs of the agents this process started and has not stopped, for
/// [`cleanup_after_signal`].
static RUNNING: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// For a binary (the demo, the kernel matrix) interrupted by Ctrl-C or SIGTERM, when
/// no destructor will run: a thread of its own waits for the signal and removes
/// everything the run's clusters (tagged `tag`) created, then exits with 130. Call it
/// before any other thread exists.
pub fn clean_up_on_signal(tag: &str) {
    let prefix = format!("{tag}{}", std::process::id() % 100_000);
    // SAFETY: signal masks set before any other thread exists, then sigwait(3) on a
    // dedicated thread: the portable way to handle signals synchronously.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(move || {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            eprintln!("\ninterrupted: removing what this run created");
            cleanup_after_signal(&prefix);
            std::process::exit(130);
        });
    }
}

/// After SIGINT/SIGTERM (the demo's Ctrl-C), when no destructor will run: stops the
/// agents this process started (by PID) and removes the network namespaces, pin and
/// scratch directories whose names carry `tag` (a cluster's tag prefix).
pub fn cleanup_after_signal(tag: &str) {
    let pids: Vec<i32> = RUNNING.lock().map(|p| p.clone()).unwrap_or_default();
    for pid in &pids {
        // SAFETY: kill(2) on agents this process started.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    std::thread::sleep(Duration::from_millis(500));
    for pid in &pids {
        // SAFETY: as above; a process already gone ignores it.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(tag) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    for root in ["/sys/fs/bpf".into(), std::env::temp_dir()] {
        let root: PathBuf = root;
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("rama-test-{tag}"))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A running `rama-agent run`; stopped (SIGTERM, then SIGKILL) on drop.
pub struct AgentProcess {
    pub child: Child,
    pub socket: PathBuf,
    pub queue_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub metrics: SocketAddr,
}

impl AgentProcess {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` and waits up to `timeout` for the process to end; true if it did.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> bool {
        crate::signal_and_wait(&mut self.child, signal, timeout)
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if !self.signal_and_wait(libc::SIGTERM, Duration::from_secs(10)) {
            self.signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
        }
        let _ = self.child.wait();
        forget_pid(self.pid());
    }
}

fn forget_pid(pid: i32) {
    if let Ok(mut p) = RUNNING.lock() {
        p.retain(|x| *x != pid);
    }
}

/// What one plugin execution printed.
#[derive(Debug)]
pub struct CniOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The JSON on stdout (a result or an error object).
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(self.stdout.trim())
            .with_context(|| format!("plugin stdout is not JSON: {:?}", self.stdout))
    }

    /// The spec error code, when the plugin failed.
    pub fn error_code(&self) -> Option<u64> {
        self.json().ok()?.get("code")?.as_u64()
    }
}

fn network_of(net: PodNet) -> &'static str {
    match net {
        PodNet::Vlan100 => "vlan100",
        PodNet::Vlan200 => "vlan200",
        PodNet::Overlay => "overlay",
        PodNet::Plain => "none",
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A Network's YAML, as an operator writes it.
pub fn network_yaml(name: &str, kind: &str, net_id: u32) -> String {
    let selector = if kind == "Underlay" {
        let (k, v) = NODE_LABEL.split_once('=').expect("label");
        format!("\n  nodeSelector: {{{k}: {v}}}")
    } else {
        String::new()
    };
    let mode = if kind == "Underlay" { "VLAN" } else { "VXLAN" };
    format!(
        "apiVersion: networking.alibaba.com/v1\nkind: Network\nmetadata:\n  name: {name}\n\
         spec:\n  type: {kind}\n  mode: {mode}\n  netID: {net_id}{selector}\n"
    )
}

/// A Subnet's YAML.
pub fn subnet_yaml(name: &str, network: &str, cidr: &str, gateway: Option<&str>) -> String {
    let version = if cidr.contains(':') { "6" } else { "4" };
    let gw = gateway
        .map(|g| format!("\n    gateway: {g}"))
        .unwrap_or_default();
    format!(
        "apiVersion: networking.alibaba.com/v1\nkind: Subnet\nmetadata:\n  name: {name}\n\
         spec:\n  network: {network}\n  range:\n    version: \"{version}\"\n    cidr: {cidr}{gw}\n"
    )
}

impl Cluster {
    /// The shared standalone state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.scratch.join("state")
    }

    /// Writes the cluster's Networks and Subnets as YAML files.
    pub fn write_cluster_state(&self) -> Result<()> {
        let dir = self.state_dir();
        for v in [100u16, 200] {
            let net = format!("vlan{v}");
            write(
                &dir.join(format!("networks/{net}.yaml")),
                &network_yaml(&net, "Underlay", u32::from(v)),
            )?;
            write(
                &dir.join(format!("subnets/{net}-v4.yaml")),
                &subnet_yaml(
                    &format!("{net}-v4"),
                    &net,
                    &format!("10.{v}.0.0/24"),
                    Some(&format!("10.{v}.0.1")),
                ),
            )?;
            write(
                &dir.join(format!("subnets/{net}-v6.yaml")),
                &subnet_yaml(
                    &format!("{net}-v6"),
                    &net,
                    &format!("fd00:{v}::/64"),
                    Some(&format!("fd00:{v}::1")),
                ),
            )?;
        }
        write(
            &dir.join("networks/overlay.yaml"),
            &network_yaml("overlay", "Overlay", OVERLAY_VNI),
        )?;
        write(
            &dir.join("subnets/overlay-v4.yaml"),
            &subnet_yaml("overlay-v4", "overlay", "10.244.0.0/24", None),
        )?;
        write(
            &dir.join("subnets/overlay-v6.yaml"),
            &subnet_yaml("overlay-v6", "overlay", "fd00:244::/64", None),
        )?;
        Ok(())
    }

    fn agent_dir(&self, i: usize) -> PathBuf {
        self.scratch.join(format!("agent-{}", self.nodes[i].name))
    }

    /// The agent's socket of node `i` (where a conflist for that node points).
    pub fn socket_of(&self, i: usize) -> PathBuf {
        self.agent_dir(i).join("run/cni.sock")
    }

    pub fn queue_dir_of(&self, i: usize) -> PathBuf {
        self.agent_dir(i).join("cni-queue")
    }

    /// Starts `rama-agent run` in node `i` (its datapath mode as the node says), with
    /// `extra` arguments, and waits until it reports ready.
    pub fn start_agent(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let dir = self.agent_dir(i);
        std::fs::create_dir_all(&dir)?;
        let node = &self.nodes[i];
        let log = dir.join("agent.log");
        let metrics = self.metrics_addr;
        let mut args: Vec<String> = vec![
            format!("--net={}", node.ns.path()),
            agent_binary().display().to_string(),
            "run".into(),
            "--node-name".into(),
            node.name.clone(),
            "--uplink".into(),
            "up0".into(),
            "--datapath".into(),
            node.datapath.to_string(),
            "--pin-dir".into(),
            node.pin_dir.display().to_string(),
            "--socket".into(),
            self.socket_of(i).display().to_string(),
            "--cni-queue-dir".into(),
            self.queue_dir_of(i).display().to_string(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--metrics-addr".into(),
            metrics.to_string(),
            "--node-label".into(),
            NODE_LABEL.into(),
            "--xdp".into(),
            self.xdp.into(),
        ];
        // Standalone on the cluster's state directory, unless the caller names a
        // kubeconfig (Kubernetes mode).
        if !extra.contains(&"--kubeconfig") {
            args.push("--state-dir".into());
            args.push(self.state_dir().display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new("nsenter");
        cmd.args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile);
        // SAFETY: prctl(2) and sigprocmask(2) between fork and exec, both
        // async-signal-safe. An agent must not outlive a harness that died without
        // cleaning up (SIGTERM then), and must get SIGTERM: a harness that handles
        // signals on a thread of its own (clean_up_on_signal) has them blocked, and
        // the mask is inherited across exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            cmd.pre_exec(|| {
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting rama-agent")?;
        if let Ok(mut p) = RUNNING.lock() {
            p.push(child.id() as i32);
        }
        while self.agents.len() <= i {
            self.agents.push(None);
        }
        self.agents[i] = Some(AgentProcess {
            child,
            socket: self.socket_of(i),
            queue_dir: self.queue_dir_of(i),
            data_dir: dir.join("data"),
            log,
            metrics,
        });
        self.wait_agent_ready(i, Duration::from_secs(30))
    }

    /// Waits until the agent of node `i` answers STATUS with ready.
    pub fn wait_agent_ready(&mut self, i: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(Some(agent)) = self.agents.get_mut(i)
                && let Ok(Some(status)) = agent.child.try_wait()
            {
                bail!(
                    "rama-agent on {} exited ({status}):\n{}",
                    self.nodes[i].name,
                    agent.log_text()
                );
            }
            match rama_cni::client::call(
                &self.socket_of(i),
                &Request::new(Call::Status),
                Duration::from_secs(5),
            ) {
                Ok(Response::Ok(Reply::Status(s))) if s.ready => return Ok(()),
                Ok(other) => last = format!("{other:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "rama-agent on {} not ready after {timeout:?}: {last}\n{}",
            self.nodes[i].name,
            self.agent_log(i)
        )
    }

    /// The agent's log of node `i`.
    pub fn agent_log(&self, i: usize) -> String {
        self.agents
            .get(i)
            .and_then(|a| a.as_ref())
            .map(|a| a.log_text())
            .unwrap_or_default()
    }

    /// Stops node `i`'s agent with `signal` (SIGTERM: graceful; SIGKILL: a crash).
    pub fn stop_agent(&mut self, i: usize, signal: i32) -> Result<()> {
        let Some(mut agent) = self.agents.get_mut(i).and_then(Option::take) else {
            bail!("node {i} runs no agent");
        };
        if !agent.signal_and_wait(signal, Duration::from_secs(10)) {
            bail!("rama-agent on node {i} did not stop on signal {signal}");
        }
        // The log stays in the scratch directory; nothing to kill in drop.
        forget_pid(agent.pid());
        std::mem::forget(agent);
        Ok(())
    }

    /// Node `i`'s agent metrics (Prometheus text), scraped inside the node namespace.
    pub fn agent_metrics(&self, i: usize) -> Result<String> {
        let addr = self.agents[i]
            .as_ref()
            .context("no agent running on that node")?
            .metrics;
        self.nodes[i].ns.http_get(addr, "/metrics")
    }

    /// The agent's count of CNI requests of `verb` that ended in `result` on node `i`.
    pub fn cni_requests(&self, i: usize, verb: &str, result: &str) -> u64 {
        let want = format!(r#"rama_cni_requests_total{{result="{result}",verb="{verb}"}} "#);
        self.agent_metrics(i)
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(&want).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// The network configuration for node `i`'s plugin.
    pub fn cni_conf(&self, i: usize, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "rama",
            "type": "rama-cni",
            "socket": self.socket_of(i),
            "queueDir": self.queue_dir_of(i),
        })
    }

    /// Executes `rama-cni` with a clean environment, as a runtime does.
    pub fn run_cni(env: &[(&str, String)], stdin: &[u8]) -> Result<CniOutput> {
        let mut child = Command::new(cni_binary())
            .env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running rama-cni")?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin)
            .context("writing the configuration")?;
        let out = child.wait_with_output()?;
        Ok(CniOutput {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// One plugin call for node `i`.
    pub fn cni(
        &self,
        i: usize,
        command: &str,
        container: &str,
        netns: Option<&str>,
        args: &str,
        conf: &Value,
    ) -> Result<CniOutput> {
        let mut env = vec![
            ("CNI_COMMAND", command.to_owned()),
            ("CNI_CONTAINERID", container.to_owned()),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", "/opt/cni/bin".to_owned()),
            ("CNI_ARGS", args.to_owned()),
        ];
        if let Some(ns) = netns {
            env.push(("CNI_NETNS", ns.to_owned()));
        }
        let _ = i;
        Self::run_cni(&env, conf.to_string().as_bytes())
    }

    /// Creates a dual-stack pod on node `i`'s Rama network `net` through the plugin,
    /// as the pod `default/<name>`; its addresses are what the IPAM chose.
    pub fn add_cni_pod(&mut self, i: usize, name: &str, net: PodNet) -> Result<usize> {
        let ns = Netns::new(&format!("{}-{name}", self.tag))?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};RAMA_NETWORK={};\
             RAMA_IP_FAMILY=DualStack",
            network_of(net)
        );
        let out = self.cni(
            i,
            "ADD",
            &format!("c-{name}"),
            Some(&ns.path()),
            &args,
            &self.cni_conf(i, "1.0.0"),
        )?;
        if !out.success() {
            bail!(
                "CNI ADD of {name} on {} failed ({:?}): {}{}\nagent log:\n{}",
                self.nodes[i].name,
                out.code,
                out.stdout,
                out.stderr,
                self.agent_log(i)
            );
        }
        let result = out.json()?;
        let pod = pod_from_result(name, i, net, ns, &result)?;
        self.pods.push(pod);
        Ok(self.pods.len() - 1)
    }

    /// Deletes a pod created by [`Cluster::add_cni_pod`] through the plugin.
    pub fn del_cni_pod(&mut self, name: &str) -> Result<CniOutput> {
        let idx = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?;
        let node = self.pods[idx].node;
        let netns = self.pods[idx].ns.path();
        let out = self.cni(
            node,
            "DEL",
            &format!("c-{name}"),
            Some(&netns),
            &format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
            &self.cni_conf(node, "1.0.0"),
        )?;
        self.pods.remove(idx);
        Ok(out)
    }
}

/// A [`Pod`] from an ADD result (interfaces: host side, then the pod's).
pub fn pod_from_result(
    name: &str,
    node: usize,
    net: PodNet,
    ns: Netns,
    result: &Value,
) -> Result<Pod> {
    let host_if = result["interfaces"][0]["name"]
        .as_str()
        .context("result has no host interface")?
        .to_owned();
    let mac = result["interfaces"][1]["mac"]
        .as_str()
        .context("result has no pod MAC")?
        .to_owned();
    let (mut ipv4, mut ipv6) = (None, None);
    for ip in result["ips"].as_array().context("result has no ips")? {
        let addr: ipnet::IpNet = ip["address"]
            .as_str()
            .context("ips[].address")?
            .parse()
            .context("ips[].address is not a CIDR")?;
        match addr.addr() {
            IpAddr::V4(a) => ipv4 = Some(a),
            IpAddr::V6(a) => ipv6 = Some(a),
        }
    }
    Ok(Pod {
        name: name.to_owned(),
        node,
        net,
        ns,
        host_if,
        mac,
        ipv4: ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
        ipv6: ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED),
    })
}

/// What Rama holds for a node: its pods' interfaces, attachment records, local
/// datapath entries and the addresses allocated to it. Failed requests must leave
/// this unchanged; a node without pods has it all empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holdings {
    pub interfaces: Vec<String>,
    pub records: usize,
    pub local_routes: usize,
    pub map_entries: Option<usize>,
    /// Pinned links of the pod program (eBPF): one per pod interface.
    pub pod_links: Vec<String>,
    pub allocations: Vec<String>,
}

impl Cluster {
    /// Host-side pod interfaces (the agent's `rama` + 11 hex digits) on node `i`.
    pub fn pod_interfaces(&self, i: usize) -> Vec<String> {
        let text = self.nodes[i]
            .ns
            .ip(&["-o", "link", "show"])
            .unwrap_or_default();
        let mut names: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
            .filter(|n| n.len() == 15 && n.starts_with("rama"))
            .collect();
        names.sort();
        names
    }

    /// The IPInstances of the standalone state bound to node `i`, as `ns/name`.
    pub fn allocations(&self, i: usize) -> Vec<String> {
        let node = &self.nodes[i].name;
        let mut out = Vec::new();
        let root = self.state_dir().join("ipinstances");
        for ns in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(f.path()).unwrap_or_default();
                if text.contains(&format!("nodeName: {node}")) {
                    out.push(format!(
                        "{}/{}",
                        ns.file_name().to_string_lossy(),
                        f.file_name().to_string_lossy()
                    ));
                }
            }
        }
        out.sort();
        out
    }

    pub fn holdings(&self, i: usize) -> Holdings {
        let records = self
            .agent_dir(i)
            .join("data/endpoints")
            .read_dir()
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0);
        let local_routes = self.nodes[i]
            .ns
            .ip(&["route", "show", "table", "39999"])
            .unwrap_or_default()
            .lines()
            .count()
            + self.nodes[i]
                .ns
                .ip(&["-6", "route", "show", "table", "39999"])
                .unwrap_or_default()
                .lines()
                .count();
        let map_entries = (self.nodes[i].datapath == rama_agent::dataplane::DatapathMode::Ebpf)
            .then(|| self.map_len(i, "RAMA_EP_BY_IF"));
        Holdings {
            interfaces: self.pod_interfaces(i),
            records,
            local_routes,
            map_entries,
            pod_links: self
                .pinned_links(i)
                .into_iter()
                .filter(|l| l.starts_with(&format!("{}@", rama_common::names::PROG_POD_EGRESS)))
                .collect(),
            allocations: self.allocations(i),
        }
    }
}
