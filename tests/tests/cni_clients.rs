//! Rama driven by real CNI clients, each confined to a scratch directory and the
//! test's network namespaces: `cnitool` (libcni, the reference client), containerd's
//! CRI plugin — the path kubelet takes: RunPodSandbox → ADD, StopPodSandbox and
//! RemovePodSandbox → a DEL each — and podman with its CNI backend running a busybox
//! root file system. Each pod must reach pods on the other node (underlay on the same
//! VLAN, and an overlay pod through the hybrid path) by ping and TCP, and leave
//! nothing behind once its client deleted it.
//!
//! The clients are installed by `cargo xtask cni-clients` (which `cargo xtask test`
//! runs) into a cache outside the repository, named by RAMA_TEST_CNI_CLIENTS.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    agents::Holdings,
    cluster::{Cluster, PodNet},
    cni_binary,
    netns::Netns,
    require_root,
    traffic::{ping, tcp_exchange},
};
use serde_json::{Value, json};

/// The installed clients (`cargo xtask cni-clients`), or None with the reason.
fn clients(test: &str) -> Option<PathBuf> {
    rama_tests::path_from_env("RAMA_TEST_CNI_CLIENTS", test, "the real CNI clients")
}

/// Two eBPF nodes with their agents, and the pods the client's pod must reach on
/// node 2: `peer` on the default network (the first Underlay, vlan100, IPv4 — what a
/// pod gets that names none) and `overlay` on the overlay.
fn cluster(tag: &str) -> Cluster {
    let mut c = Cluster::new(tag, &[DatapathMode::Ebpf, DatapathMode::Ebpf]).expect("cluster");
    c.write_cluster_state().expect("state");
    c.start_agent(0, &[]).expect("agent n1");
    c.start_agent(1, &[]).expect("agent n2");
    c.add_cni_pod(1, "peer", PodNet::Vlan100).expect("peer pod");
    c.add_cni_pod(1, "overlay", PodNet::Overlay)
        .expect("overlay pod");
    c
}

/// The pod in `ns` (address `ip`) reaches both pods on node 2 with ping and TCP, and
/// they see its own address.
fn reaches_node2(c: &Cluster, ns: &Netns, ip: &str, client: &str) {
    let ip: std::net::IpAddr = ip.parse().expect("pod address");
    for target in ["peer", "overlay"] {
        let p = c.pod(target);
        ping(ns, p.ipv4.into()).unwrap_or_else(|e| panic!("{client} pod → {target}: {e:#}"));
        let seen = tcp_exchange(&p.ns, p.ipv4.into(), ns)
            .unwrap_or_else(|e| panic!("{client} pod → {target} TCP: {e:#}"));
        assert_eq!(seen, ip, "{client} pod → {target}: the receiver saw {seen}");
        println!("ok   {client} pod {ip} on n1 → {target} {} on n2", p.ipv4);
    }
}

/// A netns created by a runtime: usable for traffic, deleted by its runtime only.
fn runtime_netns(path: &str) -> std::mem::ManuallyDrop<Netns> {
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::mem::ManuallyDrop::new(Netns { name })
}

/// A directory holding the plugin as `rama-cni` (plus `extra` of Debian's plugins)
/// and a conflist for node `i`, as a runtime's `bin_dir` and `conf_dir`.
fn plugin_dirs(c: &Cluster, i: usize, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let bin = c.scratch.join(format!("{name}/cni-bin"));
    let conf = c.scratch.join(format!("{name}/net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let link = bin.join("rama-cni");
    if !link.exists() {
        std::os::unix::fs::symlink(cni_binary(), &link).unwrap();
    }
    for p in extra {
        let link = bin.join(p);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), &link).unwrap();
        }
    }
    let mut plugin = c.cni_conf(i, "1.0.0");
    plugin
        .as_object_mut()
        .map(|o| (o.remove("cniVersion"), o.remove("name")));
    std::fs::write(
        conf.join("10-rama.conflist"),
        serde_json::to_vec_pretty(&json!({
            "cniVersion": "1.0.0",
            "name": "rama",
            "plugins": [plugin],
        }))
        .unwrap(),
    )
    .unwrap();
    (bin, conf)
}

fn nothing_left(c: &Cluster, before: &Holdings, what: &str) {
    let after = c.holdings(0);
    assert_eq!(&after, before, "{what} left something on n1");
}

fn output_text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).trim(),
        String::from_utf8_lossy(&o.stderr).trim()
    )
}

/// Runs `program` inside node `i`'s network namespace, as the node's runtime would.
fn on_node(c: &Cluster, i: usize, program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", c.nodes[i].ns.path()))
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("nsenter")
}

#[test]
fn cnitool_add_check_del() {
    require_root!();
    let Some(dir) = clients("cnitool_add_check_del") else {
        return;
    };
    let c = cluster("ct");
    let before = c.holdings(0);
    let (bin, conf) = plugin_dirs(&c, 0, "cnitool", &[]);
    let pod = Netns::new(&format!("{}-tool", c.tag)).unwrap();
    let cnitool = dir.join("bin/cnitool");
    let (bin_s, conf_s) = (bin.display().to_string(), conf.display().to_string());
    let env = [
        ("CNI_PATH", bin_s.as_str()),
        ("NETCONFPATH", conf_s.as_str()),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=tool",
        ),
    ];
    let add = on_node(&c, 0, &cnitool, &["add", "rama", &pod.path()], &env);
    assert!(add.status.success(), "cnitool add: {}", output_text(&add));
    let result: Value = serde_json::from_slice(&add.stdout).expect("cnitool printed a result");
    assert_eq!(
        result["cniVersion"], "1.0.0",
        "answered in the config's version"
    );
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .expect("an address")
        .to_owned();
    println!("cnitool add: {ip} ({})", result["interfaces"][1]["name"]);
    reaches_node2(&c, &pod, &ip, "cnitool");
    // libcni keeps the result in its cache and hands it to CHECK as prevResult.
    let check = on_node(&c, 0, &cnitool, &["check", "rama", &pod.path()], &env);
    assert!(
        check.status.success(),
        "cnitool check: {}",
        output_text(&check)
    );
    let del = on_node(&c, 0, &cnitool, &["del", "rama", &pod.path()], &env);
    assert!(del.status.success(), "cnitool del: {}", output_text(&del));
    nothing_left(&c, &before, "cnitool del");
    // A second DEL (runtimes repeat them) succeeds and changes nothing.
    let again = on_node(&c, 0, &cnitool, &["del", "rama", &pod.path()], &env);
    assert!(
        again.status.success(),
        "second cnitool del: {}",
        output_text(&again)
    );
    nothing_left(&c, &before, "a second cnitool del");
}

/// containerd, started by this test in node 1's network namespace; the sandboxes it
/// still holds are removed and it is stopped (by PID) on drop.
struct Containerd {
    child: std::process::Child,
    socket: PathBuf,
    client: PathBuf,
    sandboxes: Vec<String>,
    log: PathBuf,
}

impl Containerd {
    fn start(c: &Cluster, dir: &Path) -> Result<Self> {
        let (bin, conf) = plugin_dirs(c, 0, "containerd", &["loopback"]);
        let root = c.scratch.join("containerd");
        let socket = root.join("containerd.sock");
        let config = root.join("config.toml");
        // CRI plugin settings (containerd 1.6, config version 2): a sandbox image
        // imported below (no registry here), the native snapshotter (no overlay
        // mounts needed), and restrict_oom_score_adj because this machine denies
        // CAP_SYS_RESOURCE to lower a score.
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#,
                root = root.display(),
                sock = socket.display(),
                image = std::env::var("RAMA_TEST_PAUSE_IMAGE")
                    .unwrap_or_else(|_| "docker.io/rama-test/pause:1".into()),
                bin = bin.display(),
                conf = conf.display(),
            ),
        )?;
        let log = root.join("containerd.log");
        let logfile = std::fs::File::create(&log)?;
        let child = Command::new("nsenter")
            .arg(format!("--net={}", c.nodes[0].ns.path()))
            .arg("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            .spawn()
            .context("starting containerd")?;
        let mut me = Containerd {
            child,
            socket,
            client: dir.join("bin/rama-cri-client"),
            sandboxes: Vec::new(),
            log,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !me.socket.exists() {
            if std::time::Instant::now() > deadline {
                bail!("containerd did not listen within 30 s:\n{}", me.log_text());
            }
            if let Some(status) = me.child.try_wait()? {
                bail!("containerd exited ({status}):\n{}", me.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let import = Command::new("ctr")
            .arg("--address")
            .arg(&me.socket)
            .args([
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "native",
            ])
            .arg(dir.join("pause.tar"))
            .output()?;
        if !import.status.success() {
            bail!("ctr images import: {}", output_text(&import));
        }
        Ok(me)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cri(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.client)
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "rama-cri-client {args:?}: {}\ncontainerd log (tail):\n{}",
                output_text(&out),
                tail(&self.log_text(), 30)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.sandboxes) {
            let _ = self.cri(&["stop", &id]);
            let _ = self.cri(&["remove", &id]);
        }
        rama_tests::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

#[test]
fn containerd_cri_sandbox() {
    require_root!();
    let Some(dir) = clients("containerd_cri_sandbox") else {
        return;
    };
    let c = cluster("cr");
    let before = c.holdings(0);
    let mut ctrd = Containerd::start(&c, &dir).expect("containerd");
    let out = ctrd
        .cri(&["run", "web", "default", "uid-web"])
        .expect("RunPodSandbox");
    let sandbox: Value = serde_json::from_str(out.trim()).expect("client output");
    let id = sandbox["id"].as_str().expect("sandbox id").to_owned();
    ctrd.sandboxes.push(id.clone());
    let ip = sandbox["ip"].as_str().expect("pod IP").to_owned();
    let netns = sandbox["netns"].as_str().expect("netns").to_owned();
    println!(
        "RunPodSandbox: {} in {} ms, pod IP {ip} (what kubelet reports), netns {netns}",
        &id[..12],
        sandbox["ms"]
    );
    assert!(!ip.is_empty(), "the runtime reported no pod IP");
    let ns = runtime_netns(&netns);
    reaches_node2(&c, &ns, &ip, "containerd CRI");
    assert_eq!(c.holdings(0).records, before.records + 1);
    assert_eq!(c.cni_requests(0, "add", "ok"), 1, "one ADD per sandbox");
    // StopPodSandbox tears the network down (the first DEL) …
    ctrd.cri(&["stop", &id]).expect("StopPodSandbox");
    nothing_left(&c, &before, "StopPodSandbox");
    let dels = c.cni_requests(0, "del", "ok");
    assert!(dels >= 1, "StopPodSandbox ran no DEL");
    // … RemovePodSandbox repeats the DEL, on a sandbox whose netns is gone.
    ctrd.cri(&["remove", &id]).expect("RemovePodSandbox");
    ctrd.sandboxes.clear();
    nothing_left(&c, &before, "RemovePodSandbox");
    println!(
        "CNI DELs seen by the agent: {dels} after StopPodSandbox, {} after RemovePodSandbox",
        c.cni_requests(0, "del", "ok")
    );
}

/// podman confined to the test's scratch directory (its own storage, run and
/// configuration directories), run in node 1's network namespace.
struct Podman {
    dir: PathBuf,
    node_ns: String,
    containers: Vec<String>,
}

impl Podman {
    fn new(c: &Cluster) -> Self {
        let (bin, conf) = plugin_dirs(c, 0, "podman", &[]);
        let dir = c.scratch.join("podman");
        // runc rather than crun (crun refuses this machine's cgroup setup), file
        // events, lowered ulimits (no CAP_SYS_RESOURCE to raise them), the CNI backend
        // with the plugin's directories.
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                r#"[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{dir}/run/events.log"
runtime = "runc"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{conf}"
default_network = "rama"
"#,
                dir = dir.display(),
                bin = bin.display(),
                conf = conf.display()
            ),
        )
        .unwrap();
        Podman {
            dir,
            node_ns: c.nodes[0].ns.path(),
            containers: Vec::new(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let d = |s: &str| self.dir.join(s).display().to_string();
        // nsenter --net, not `ip netns exec`: that remounts /sys and hides the
        // cgroup hierarchy podman needs.
        Command::new("nsenter")
            .arg(format!("--net={}", self.node_ns))
            .arg("podman")
            .args(["--root", &d("storage"), "--runroot", &d("run")])
            .args(["--tmpdir", &d("tmp"), "--storage-driver", "vfs"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for id in std::mem::take(&mut self.containers) {
            let _ = self.run(&["rm", "-f", "-t", "0", &id]);
        }
    }
}

#[test]
fn podman_container() {
    require_root!();
    let Some(dir) = clients("podman_container") else {
        return;
    };
    let c = cluster("pm");
    let before = c.holdings(0);
    let mut podman = Podman::new(&c);
    let rootfs = dir.join("rootfs").display().to_string();
    let run = podman.run(&[
        "run",
        "-d",
        "--name",
        "web",
        "--network",
        "rama",
        "--rootfs",
        &rootfs,
        "/bin/sleep",
        "300",
    ]);
    assert!(run.status.success(), "podman run: {}", output_text(&run));
    let id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    podman.containers.push(id.clone());
    let inspect = podman.run(&[
        "inspect",
        "--format",
        "{{.NetworkSettings.SandboxKey}} {{(index .NetworkSettings.Networks \"rama\").IPAddress}}",
        &id,
    ]);
    assert!(
        inspect.status.success(),
        "podman inspect: {}",
        output_text(&inspect)
    );
    let text = String::from_utf8_lossy(&inspect.stdout);
    let mut fields = text.split_whitespace();
    let (netns, ip) = (
        fields.next().expect("sandbox key").to_owned(),
        fields.next().expect("container IP").to_owned(),
    );
    println!("podman run: container {} IP {ip}, netns {netns}", &id[..12]);
    // From inside the container, with its own busybox: the pod on node 2 answers.
    let peer = c.pod("peer").ipv4.to_string();
    let exec = podman.run(&["exec", &id, "/bin/ping", "-c", "2", "-W", "2", &peer]);
    assert!(
        exec.status.success(),
        "ping from inside the container: {}",
        output_text(&exec)
    );
    let ns = runtime_netns(&netns);
    reaches_node2(&c, &ns, &ip, "podman");
    let rm = podman.run(&["rm", "-f", "-t", "0", &id]);
    assert!(rm.status.success(), "podman rm: {}", output_text(&rm));
    podman.containers.clear();
    nothing_left(&c, &before, "podman rm");
}
