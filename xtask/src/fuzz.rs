//! The CNI plugin's parser fuzz targets (`rama-cni/fuzz`, cargo-fuzz with libFuzzer
//! and AddressSanitizer on the nightly toolchain). The corpus is kept in the
//! repository (`rama-cni/fuzz/corpus/<target>`); `grow` adds what a run discovers
//! there, a check run (the test command) reads it and writes only to a scratch dir.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{bootstrap, root, run};

pub const TARGETS: &[&str] = &["netconf", "invocation"];
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz_ok() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION)
        })
        .unwrap_or(false)
}

/// Installs cargo-fuzz (from the crate registry) when it is missing.
pub fn ensure() -> Result<()> {
    bootstrap::ensure_packages(&["g++"])?;
    if !cargo_fuzz_ok() {
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    Ok(())
}

/// Runs every target for `seconds` from the committed corpus. With `grow`, new
/// inputs go into the committed corpus; otherwise into a scratch directory.
pub fn run_all(seconds: u32, grow: bool) -> Result<()> {
    ensure()?;
    let crate_dir = root().join("rama-cni");
    let target_dir = root().join("target/fuzz");
    for target in TARGETS {
        let corpus = crate_dir.join("fuzz/corpus").join(target);
        let scratch: PathBuf = std::env::temp_dir().join(format!("rama-fuzz-{target}"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).context("fuzz scratch directory")?;
        let artifacts = target_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&artifacts)?;
        let mut cmd = Command::new("rustup");
        cmd.args(["run", bootstrap::EBPF_TOOLCHAIN, "cargo", "fuzz", "run"])
            .arg("--target-dir")
            .arg(&target_dir)
            .arg(target);
        // libFuzzer writes new inputs into the first corpus directory it is given.
        if grow {
            cmd.arg(&corpus);
        } else {
            cmd.arg(&scratch).arg(&corpus);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .current_dir(&crate_dir)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        let result = run(&mut cmd);
        let _ = std::fs::remove_dir_all(&scratch);
        result.with_context(|| {
            format!(
                "fuzz target {target} failed; the input that broke it is in {}",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}
