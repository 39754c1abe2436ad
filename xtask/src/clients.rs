//! The real CNI clients the plugin is tested with, installed once into the cache
//! (`$RAMA_CACHE/cni-clients`, outside the repository):
//!
//! - `cnitool`, from Debian's CNI *source* package (Debian's -dev package leaves the
//!   command out), built offline in GOPATH mode against Debian's Go libraries;
//! - containerd 1.6 with its CRI plugin — the path kubelet takes — and
//!   `rama-cri-client` (`tests/cri-client/main.go`), a small CRI client built against
//!   the cri-api and grpc vendored in Debian's kubernetes source package, plus a
//!   sandbox (pause) image made here as an OCI archive, since no registry is reachable;
//! - podman 4.3 with its CNI backend and runc, running a busybox-static root file
//!   system;
//! - Debian's `bridge`, `host-local` and `loopback` plugins: containerd needs
//!   `loopback`, the CNI bench compares against the other two.
//!
//! Each step is skipped when its output is already there.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, kube, root, run};

const PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-appc-cni-dev",
    "containerd",
    "runc",
    "podman",
    "containernetworking-plugins",
    "busybox-static",
    "gcc",
    "libc6-dev",
];

/// The sandbox image's reference, as the containerd configuration names it.
pub const PAUSE_IMAGE: &str = "docker.io/rama-test/pause:1";

pub fn dir() -> PathBuf {
    kube::cache_dir().join("cni-clients")
}

/// Installs and builds whatever is missing; returns the directory the tests read
/// (`bin/cnitool`, `bin/rama-cri-client`, `pause.tar`, `rootfs/`).
pub fn ensure() -> Result<PathBuf> {
    bootstrap::ensure_packages(PACKAGES)?;
    bootstrap::ensure_packages(kube::PACKAGES)?;
    let dir = dir();
    std::fs::create_dir_all(dir.join("bin"))?;
    cnitool(&dir)?;
    cri_client(&dir)?;
    pause_image(&dir)?;
    busybox_rootfs(&dir)?;
    Ok(dir)
}

fn go(gopath: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new("go");
    cmd.env("GOPATH", gopath)
        .env("GOCACHE", cache)
        .env("GO111MODULE", "off")
        .env("GOPROXY", "off")
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .env("HOME", cache);
    cmd
}

fn cnitool(dir: &Path) -> Result<()> {
    let bin = dir.join("bin/cnitool");
    if bin.exists() {
        return Ok(());
    }
    let src = dir.join("src/cni");
    if src.exists() {
        std::fs::remove_dir_all(&src)?;
    }
    kube::apt_source("golang-github-appc-cni", &src)?;
    let archive = std::fs::read_dir(&src)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".orig.tar.xz"))
        .context("no golang-github-appc-cni .orig.tar.xz downloaded")?;
    run(Command::new("tar")
        .current_dir(&src)
        .arg("xf")
        .arg(&archive))?;
    let tool = std::fs::read_dir(&src)?
        .filter_map(|e| e.ok().map(|e| e.path().join("cnitool")))
        .find(|p| p.is_dir())
        .context("the CNI source has no cnitool/")?;
    // Its imports (libcni, pkg/…) come from Debian's golang-github-appc-cni-dev.
    run(go(Path::new("/usr/share/gocode"), &dir.join("gocache"))
        .current_dir(&tool)
        .args(["build", "-o"])
        .arg(&bin)
        .arg("."))?;
    std::fs::remove_dir_all(&src).ok();
    Ok(())
}

fn cri_client(dir: &Path) -> Result<()> {
    let bin = dir.join("bin/rama-cri-client");
    let source = root().join("tests/cri-client/main.go");
    let fresh = |b: &Path| -> bool {
        let (Ok(b), Ok(s)) = (std::fs::metadata(b), std::fs::metadata(&source)) else {
            return false;
        };
        matches!((b.modified(), s.modified()), (Ok(b), Ok(s)) if b >= s)
    };
    if fresh(&bin) {
        return Ok(());
    }
    // GOPATH mode honours a vendor/ directory for the packages beneath it: the
    // client goes to src/rama/cri-client with the kubernetes vendor/ at src/rama.
    let gopath = dir.join("cri-gopath");
    let project = gopath.join("src/rama");
    if !project.join("vendor/k8s.io/cri-api").exists() {
        let archive = kube::source_archive()?;
        std::fs::create_dir_all(&project)?;
        let top = format!("kubernetes-{}", kube::VERSION);
        run(Command::new("tar")
            .current_dir(&project)
            .arg("xzf")
            .arg(&archive)
            .arg("--strip-components=1")
            .arg(format!("{top}/vendor"))
            // vendor/k8s.io/cri-api is a link into the staging tree.
            .arg(format!("{top}/staging/src/k8s.io/cri-api")))?;
    }
    let client = project.join("cri-client");
    std::fs::create_dir_all(&client)?;
    std::fs::copy(&source, client.join("main.go"))?;
    run(go(&gopath, &dir.join("gocache"))
        .current_dir(&client)
        .args(["build", "-o"])
        .arg(&bin)
        .arg("."))?;
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

/// Moves `file` into the OCI layout's blob store; its descriptor.
fn blob(layout: &Path, file: &Path, media_type: &str) -> Result<serde_json::Value> {
    let digest = sha256(file)?;
    let size = std::fs::metadata(file)?.len();
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::rename(file, blobs.join(&digest))?;
    Ok(serde_json::json!({
        "mediaType": media_type,
        "digest": format!("sha256:{digest}"),
        "size": size,
    }))
}

/// A one-layer OCI image archive (image-layout spec 1.0) holding a static pause
/// binary, for `ctr images import`.
fn pause_image(dir: &Path) -> Result<()> {
    let archive = dir.join("pause.tar");
    if archive.exists() {
        return Ok(());
    }
    let work = dir.join("pause");
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    run(Command::new("gcc")
        .args(["-Os", "-static", "-o"])
        .arg(rootfs.join("pause"))
        .arg(root().join("tests/cri-client/pause.c")))?;
    let layout = work.join("layout");
    std::fs::create_dir_all(&layout)?;
    let layer = work.join("layer.tar");
    run(Command::new("tar")
        .args(["--owner=0", "--group=0", "--numeric-owner", "-C"])
        .arg(&rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let diff_id = format!("sha256:{}", sha256(&layer)?);
    let layer_desc = blob(&layout, &layer, "application/vnd.oci.image.layer.v1.tar")?;
    let config = work.join("config.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": { "Entrypoint": ["/pause"] },
            "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        }))?,
    )?;
    let config_desc = blob(&layout, &config, "application/vnd.oci.image.config.v1+json")?;
    let manifest = work.join("manifest.json");
    std::fs::write(
        &manifest,
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": [layer_desc],
        }))?,
    )?;
    let mut manifest_desc = blob(
        &layout,
        &manifest,
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    manifest_desc["annotations"] = serde_json::json!({
        "io.containerd.image.name": PAUSE_IMAGE,
        "org.opencontainers.image.ref.name": "1",
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [manifest_desc],
        }))?,
    )?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let partial = dir.join("pause.tar.partial");
    run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, &archive)?;
    std::fs::remove_dir_all(&work).ok();
    Ok(())
}

/// A root file system of Debian's busybox-static (ping, nc, ip) for podman `--rootfs`.
fn busybox_rootfs(dir: &Path) -> Result<()> {
    let rootfs = dir.join("rootfs");
    // etc/group is written last: its presence means the rest is there.
    if rootfs.join("etc/group").exists() {
        return Ok(());
    }
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    let out = Command::new(rootfs.join("bin/busybox"))
        .arg("--list")
        .output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = rootfs.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}
