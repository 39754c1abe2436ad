//! Builds the eBPF object with the nightly toolchain (aya-build) and leaves it in
//! OUT_DIR for `include_bytes_aligned!`. Set AYA_BUILD_SKIP=1 to skip (clippy of the
//! user-space crates without a BPF toolchain); the agent then refuses eBPF mode.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The toolchain the eBPF crate is built with. Only `nightly` can be had on these
/// machines (rustup cannot download a dated one); `cargo xtask bootstrap` checks its
/// version.
const EBPF_TOOLCHAIN: &str = "nightly";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=RAMA_EBPF_TOOLCHAIN");
    let toolchain = std::env::var("RAMA_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_TOOLCHAIN.into());
    let metadata = cargo_metadata()?;
    let root = metadata
        .join("rama-ebpf")
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 workspace path"))?
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "rama-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("building the eBPF programs (run `cargo xtask bootstrap` to install the toolchain)")
}

fn cargo_metadata() -> anyhow::Result<std::path::PathBuf> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    Ok(std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("rama-agent has no parent directory"))?
        .to_path_buf())
}
