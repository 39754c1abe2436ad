//! A real kube-apiserver (and etcd) for the controller's tests, and the kubectl of
//! the same release for applying manifests (its built-in kustomize is v2.0.3), built
//! from Debian's `kubernetes` source package (1.20.2, the full upstream tree with
//! vendor/) with Debian's Go, once, into a cache outside the repository.
//!
//! Why these steps (found while proving the build here):
//! - the source comes through a private apt configuration that adds a `deb-src`
//!   line, so the system's apt sources stay as they are;
//! - GOPATH mode with the network off (`GO111MODULE=off GOPROXY=off`): everything is
//!   vendored;
//! - the vendored `modern-go/reflect2` 1.0.1 crashes with Go ≥ 1.18 as soon as a
//!   custom resource is created: Debian's 1.0.2 replaces it;
//! - the API server runs without the ServiceAccount admission plugin: there is no
//!   controller-manager to create tokens.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, run};

pub const VERSION: &str = "1.20.2";
const ETCD_PORT: u16 = 22379;
const API_PORT: u16 = 26443;
pub const TOKEN: &str = "rama-test-admin";

/// Where `up` serves the API.
pub fn server_url() -> String {
    format!("https://127.0.0.1:{API_PORT}")
}

/// Packages the build and the test run need.
pub const PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-modern-go-reflect2-dev",
    "rsync",
    "make",
    "etcd-server",
    "openssl",
    "curl",
];

/// The cache: `$RAMA_CACHE` or /var/tmp/rama-cache (kept across runs, outside the repo).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("RAMA_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/rama-cache"))
}

fn work_dir() -> PathBuf {
    cache_dir().join(format!("kubernetes-{VERSION}"))
}

pub fn binary() -> PathBuf {
    work_dir().join("bin/kube-apiserver")
}

pub fn kubectl() -> PathBuf {
    work_dir().join("bin/kubectl")
}

fn run_dir() -> PathBuf {
    work_dir().join("run")
}

/// The system's Debian mirror, from its deb822 sources.
pub fn debian_mirror() -> Result<String> {
    for entry in std::fs::read_dir("/etc/apt/sources.list.d").context("reading apt sources")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sources") {
            let text = std::fs::read_to_string(&path)?;
            if let Some(uri) = text
                .lines()
                .filter_map(|l| l.strip_prefix("URIs:"))
                .map(str::trim)
                .find(|u| u.ends_with("/debian"))
            {
                return Ok(uri.to_owned());
            }
        }
    }
    bail!("no Debian mirror found in /etc/apt/sources.list.d/*.sources")
}

/// A private apt configuration in `dir` with `source` (a sources.list line) as its only
/// source and no preferences, its lists updated: the options to pass apt-get and
/// apt-cache. The system's apt configuration stays as it is.
pub fn private_apt(dir: &Path, source: &str) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir.join("lists/partial"))?;
    std::fs::create_dir_all(dir.join("archives/partial"))?;
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty)?;
    std::fs::write(dir.join("sources.list"), format!("{source}\n"))?;
    let opts = vec![
        format!(
            "-oDir::Etc::SourceList={}",
            dir.join("sources.list").display()
        ),
        format!("-oDir::Etc::SourceParts={}", empty.display()),
        format!(
            "-oDir::Etc::Preferences={}",
            empty.join("preferences").display()
        ),
        format!("-oDir::Etc::PreferencesParts={}", empty.display()),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.display()),
    ];
    run(Command::new("apt-get").args(&opts).args(["update", "-qq"]))?;
    Ok(opts)
}

/// Downloads Debian's source package `package` (its files, unpacked by no one) into
/// `dir` through a private apt configuration that adds a `deb-src` line.
pub fn apt_source(package: &str, dir: &Path) -> Result<()> {
    let opts = private_apt(
        &cache_dir().join("apt-src"),
        &format!("deb-src {} bookworm main", debian_mirror()?),
    )?;
    std::fs::create_dir_all(dir)?;
    run(Command::new("apt-get").current_dir(dir).args(&opts).args([
        "source",
        "--download-only",
        package,
    ]))
}

/// The kubernetes source archive (`.orig.tar.gz`), downloaded once into the cache.
pub fn source_archive() -> Result<PathBuf> {
    let dir = work_dir().join("archive");
    let find = || {
        std::fs::read_dir(&dir).ok().and_then(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().ends_with(".orig.tar.gz"))
        })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    apt_source("kubernetes", &dir)?;
    find().context("no kubernetes .orig.tar.gz downloaded")
}

/// Builds kube-apiserver and kubectl unless the cache has them; the API server's path.
pub fn build() -> Result<PathBuf> {
    let bin = binary();
    if bin.exists() && kubectl().exists() {
        eprintln!(
            "kube-apiserver, kubectl: cached in {}",
            bin.parent().context("bin dir")?.display()
        );
        return Ok(bin);
    }
    bootstrap::ensure_packages(PACKAGES)?;
    let work = work_dir();
    let tarball = source_archive()?;
    let src = work.join("src");
    // A tree left by an interrupted build is unpacked afresh.
    std::fs::remove_dir_all(&src).ok();
    std::fs::create_dir_all(&src)?;
    run(Command::new("tar")
        .current_dir(&src)
        .arg("xzf")
        .arg(&tarball))?;
    let tree = src.join(format!("kubernetes-{VERSION}"));
    if !tree.exists() {
        bail!(
            "{} missing after unpacking {}",
            tree.display(),
            tarball.display()
        );
    }
    // reflect2 1.0.1 → Debian's 1.0.2 (no tests).
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    std::fs::remove_dir_all(&vendored).ok();
    std::fs::create_dir_all(&vendored)?;
    let debian = Path::new("/usr/share/gocode/src/github.com/modern-go/reflect2");
    for entry in std::fs::read_dir(debian).context("Debian's reflect2 source")? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if (name.ends_with(".go") || name.ends_with(".s")) && !name.ends_with("_test.go") {
            std::fs::copy(&path, vendored.join(&name))?;
        }
    }
    let version_file = work.join("version.env");
    std::fs::write(
        &version_file,
        format!(
            "KUBE_GIT_COMMIT='faecb196815e248d3ecfb03c680a4507229c2a56'\nKUBE_GIT_TREE_STATE='clean'\n\
             KUBE_GIT_VERSION='v{VERSION}'\nKUBE_GIT_MAJOR='1'\nKUBE_GIT_MINOR='20'\n"
        ),
    )?;
    run(Command::new("make")
        .current_dir(&tree)
        .arg("WHAT=cmd/kube-apiserver cmd/kubectl")
        .env("HOME", work.join("home"))
        .env("GOPATH", tree.join(".go"))
        .env("GOCACHE", cache_dir().join("gocache"))
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("GO111MODULE", "off")
        .env("CGO_ENABLED", "0")
        .env("KUBE_GIT_VERSION_FILE", &version_file))?;
    std::fs::create_dir_all(bin.parent().context("bin dir")?)?;
    std::fs::copy(tree.join("_output/bin/kubectl"), kubectl())?;
    // Last: its presence means the build is whole.
    std::fs::copy(tree.join("_output/bin/kube-apiserver"), &bin)?;
    // The tree is 1.5 GB; the binaries are all we keep (and the archive, whose vendor/
    // the CRI test client builds against).
    std::fs::remove_dir_all(&src).ok();
    eprintln!(
        "kube-apiserver, kubectl: built in {}",
        work.join("bin").display()
    );
    Ok(bin)
}

fn pid_file(name: &str) -> PathBuf {
    run_dir().join(format!("{name}.pid"))
}

/// Starts etcd and kube-apiserver on loopback and waits until the API server is
/// ready; prints the kubeconfig path.
pub fn up() -> Result<PathBuf> {
    let bin = build()?;
    down()?;
    let dir = run_dir();
    std::fs::create_dir_all(dir.join("certs"))?;
    let _ = std::fs::remove_dir_all(dir.join("etcd"));
    let sa_key = dir.join("sa.key");
    if !sa_key.exists() {
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048")
            .stderr(Stdio::null()))?;
    }
    std::fs::write(
        dir.join("tokens.csv"),
        format!("{TOKEN},admin,admin-uid,system:masters\n"),
    )?;
    let log = |name: &str| -> Result<std::fs::File> {
        Ok(std::fs::File::create(dir.join(format!("{name}.log")))?)
    };
    let etcd = Command::new("etcd")
        .args(["--name", "rama", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &format!("http://127.0.0.1:{ETCD_PORT}"),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://127.0.0.1:{ETCD_PORT}"),
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{}", ETCD_PORT + 1),
        ])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{}", ETCD_PORT + 1),
        ])
        .args([
            "--initial-cluster",
            &format!("rama=http://127.0.0.1:{}", ETCD_PORT + 1),
        ])
        .stdout(log("etcd")?)
        .stderr(log("etcd")?)
        .spawn()
        .context("starting etcd")?;
    std::fs::write(pid_file("etcd"), etcd.id().to_string())?;
    let api = Command::new(&bin)
        .args(["--etcd-servers", &format!("http://127.0.0.1:{ETCD_PORT}")])
        .args([
            "--bind-address",
            "127.0.0.1",
            "--advertise-address",
            "127.0.0.1",
        ])
        .args(["--secure-port", &API_PORT.to_string()])
        .arg("--cert-dir")
        .arg(dir.join("certs"))
        .arg("--token-auth-file")
        .arg(dir.join("tokens.csv"))
        .args(["--authorization-mode", "RBAC"])
        .args([
            "--service-account-issuer",
            "https://kubernetes.default.svc.cluster.local",
        ])
        .arg("--service-account-key-file")
        .arg(&sa_key)
        .arg("--service-account-signing-key-file")
        .arg(&sa_key)
        .args(["--service-cluster-ip-range", "10.96.0.0/16"])
        .args([
            "--allow-privileged=true",
            "--disable-admission-plugins=ServiceAccount",
        ])
        .stdout(log("apiserver")?)
        .stderr(log("apiserver")?)
        .spawn()
        .context("starting kube-apiserver")?;
    std::fs::write(pid_file("apiserver"), api.id().to_string())?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: rama\n  cluster:\n    server: https://127.0.0.1:{API_PORT}\n    \
             insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {TOKEN}\ncontexts:\n- name: rama\n  \
             context:\n    cluster: rama\n    user: admin\ncurrent-context: rama\n"
        ),
    )?;
    for _ in 0..90 {
        let out = Command::new("curl")
            .args(["-sk", "-H", &format!("Authorization: Bearer {TOKEN}")])
            .arg(format!("https://127.0.0.1:{API_PORT}/readyz"))
            .output()?;
        if out.stdout == b"ok" {
            println!("{}", kubeconfig.display());
            return Ok(kubeconfig);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    down()?;
    bail!(
        "kube-apiserver not ready after 90 s; see {}",
        dir.join("apiserver.log").display()
    )
}

/// Stops what `up` started (by the PIDs it recorded).
pub fn down() -> Result<()> {
    for name in ["apiserver", "etcd"] {
        let file = pid_file(name);
        if let Ok(pid) = std::fs::read_to_string(&file) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: plain kill(2) of a process this command started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                for _ in 0..50 {
                    // SAFETY: signal 0 only checks the process exists.
                    if unsafe { libc::kill(pid, 0) } != 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            std::fs::remove_file(&file).ok();
        }
    }
    Ok(())
}
