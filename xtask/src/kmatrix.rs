//! The kernel matrix: the connectivity matrix through the whole product (`rama-matrix`:
//! agents, pods added by executing `rama-cni`, every path over IPv4 and IPv6, in
//! eBPF, fallback and mixed modes) on the host's kernel and inside VMs on the stock
//! Debian kernels of [`vm::KERNELS`]. One table: a row per path, a column per kernel
//! and mode.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{root, vm};

/// What to run.
pub struct Options {
    /// "host" and names of [`vm::KERNELS`].
    pub kernels: Vec<String>,
    /// Passed to rama-matrix (`ebpf,fallback,mixed`).
    pub modes: Option<String>,
    /// Where each kernel's log and JSON go, and the combined report.
    pub out: PathBuf,
    /// Seconds before a VM is stopped (a failure).
    pub timeout: u64,
}

/// The modes rama-matrix knows.
const MODES: [&str; 3] = ["ebpf", "fallback", "mixed"];

/// The kernels the matrix runs by default.
pub fn default_kernels() -> String {
    let mut all = vec!["host"];
    all.extend(vm::KERNELS.iter().map(|(name, _)| *name));
    all.join(",")
}

/// One kernel's run: where its results went and how it ended.
struct Run {
    kernel: String,
    log: PathBuf,
    json: PathBuf,
    elapsed: Duration,
    /// rama-matrix's exit code, or why the VM gave none.
    ended: std::result::Result<i32, String>,
}

/// Runs the matrix on every kernel (the host first, then the VMs side by side: each
/// emulated VM keeps one host core busy), prints the table and writes
/// `kernel-matrix.json`; fails when a cell failed or a kernel gave no results.
pub fn run(opts: &Options) -> Result<()> {
    // Checked here, before any VM boots, rather than by rama-matrix in each of them.
    for k in &opts.kernels {
        if k != "host" && !vm::KERNELS.iter().any(|(name, _)| name == k) {
            let known = vm::KERNELS.map(|k| k.0).join(", ");
            bail!("unknown kernel {k:?}: expected host or one of {known}");
        }
    }
    for mode in opts.modes.iter().flat_map(|m| m.split(',')) {
        if !MODES.contains(&mode) {
            bail!(
                "unknown mode {mode:?}: expected one of {}",
                MODES.join(", ")
            );
        }
    }
    if opts.kernels.iter().any(|k| k != "host") {
        vm::setup()?;
    }
    let matrix = root().join("target/debug/rama-matrix");
    if !matrix.exists() {
        bail!(
            "{} is missing (cargo build --bins builds it)",
            matrix.display()
        );
    }
    fs::create_dir_all(&opts.out)?;
    let out = fs::canonicalize(&opts.out)?;
    let command = |json: &Path| {
        let mut c = vec![matrix.to_string_lossy().into_owned()];
        if let Some(m) = &opts.modes {
            c.extend(["--modes".to_owned(), m.clone()]);
        }
        c.extend(["--out".to_owned(), json.to_string_lossy().into_owned()]);
        c
    };
    let mut runs = Vec::new();
    if opts.kernels.iter().any(|k| k == "host") {
        let (log, json) = (out.join("host.log"), out.join("host.json"));
        fs::remove_file(&json).ok();
        eprintln!("kernel-matrix: host kernel, log {}", log.display());
        let started = Instant::now();
        let argv = command(&json);
        let file = fs::File::create(&log)?;
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(root())
            .stdout(file.try_clone()?)
            .stderr(file)
            .status()
            .context("starting rama-matrix")?;
        runs.push(Run {
            kernel: "host".into(),
            log,
            json,
            elapsed: started.elapsed(),
            ended: status.code().ok_or_else(|| format!("rama-matrix {status}")),
        });
    }
    let vms: Vec<&String> = opts.kernels.iter().filter(|k| *k != "host").collect();
    let vm_runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = vms
            .iter()
            .map(|kernel| {
                let (log, json) = (
                    out.join(format!("{kernel}.log")),
                    out.join(format!("{kernel}.json")),
                );
                fs::remove_file(&json).ok();
                eprintln!(
                    "kernel-matrix: Debian {kernel} in a VM, log {}",
                    log.display()
                );
                let argv = command(&json);
                let out = out.clone();
                s.spawn(move || {
                    let started = Instant::now();
                    let ended = vm::run_in_vm(
                        &vm::Options {
                            kernel: (*kernel).clone(),
                            memory: "2G".into(),
                            cpus: 2,
                            timeout: Duration::from_secs(opts.timeout),
                            share: Some(out),
                            log: Some(log.clone()),
                        },
                        &argv,
                    )
                    .map_err(|e| format!("{e:#}"));
                    Run {
                        kernel: (*kernel).clone(),
                        log,
                        json,
                        elapsed: started.elapsed(),
                        ended,
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("VM runner thread"))
            .collect()
    });
    runs.extend(vm_runs);
    report(&runs, &out)
}

/// The family slot of a lifecycle check's outcome in a [`Column`].
const CHECK: &str = "check";

/// A column of the table: one kernel in one mode.
struct Column {
    title: String,
    /// (cell, family) → outcome.
    outcomes: BTreeMap<(String, String), String>,
}

fn report(runs: &[Run], out: &Path) -> Result<()> {
    let mut problems = Vec::new();
    let mut columns = Vec::new();
    let mut order: Vec<String> = Vec::new();
    let mut checks: Vec<String> = Vec::new();
    let mut summary = String::new();
    let mut combined = Vec::new();
    for run in runs {
        let problems_before = problems.len();
        let result = match &run.ended {
            Err(why) => Err(why.clone()),
            Ok(_) => fs::read(&run.json)
                .map_err(|e| format!("no results in {}: {e}", run.json.display()))
                .and_then(|b| {
                    serde_json::from_slice::<Value>(&b)
                        .map_err(|e| format!("{}: {e}", run.json.display()))
                }),
        };
        let report = match result {
            Ok(r) => r,
            Err(why) => {
                problems.push(format!(
                    "{}: {why} (log: {})",
                    run.kernel,
                    run.log.display()
                ));
                continue;
            }
        };
        let release = report["kernel"].as_str().unwrap_or("?").to_owned();
        for mode in report["runs"].as_array().into_iter().flatten() {
            let name = mode["mode"].as_str().unwrap_or("?");
            let mut col = Column {
                title: format!("{} {name}", run.kernel),
                outcomes: BTreeMap::new(),
            };
            if let Some(e) = mode["error"].as_str() {
                problems.push(format!(
                    "{} {name}: could not set up: {e} (log: {})",
                    run.kernel,
                    run.log.display()
                ));
            }
            let (mut ok, mut failed, mut skipped) = (0, 0, 0);
            for cell in mode["cells"].as_array().into_iter().flatten() {
                let key = (
                    cell["cell"].as_str().unwrap_or("?").to_owned(),
                    cell["family"].as_str().unwrap_or("?").to_owned(),
                );
                let outcome = cell["outcome"].as_str().unwrap_or("?").to_owned();
                match outcome.as_str() {
                    "ok" => ok += 1,
                    "skipped" => skipped += 1,
                    _ => {
                        failed += 1;
                        problems.push(format!(
                            "{} {name}: {} ({}): {} (log: {})",
                            run.kernel,
                            key.0,
                            key.1,
                            cell["detail"].as_str().unwrap_or(""),
                            run.log.display()
                        ));
                    }
                }
                if !order.contains(&key.0) {
                    order.push(key.0.clone());
                }
                col.outcomes.insert(key, outcome);
            }
            // Lifecycle checks are one row each, outside the two families.
            for check in mode["checks"].as_array().into_iter().flatten() {
                let name = check["check"].as_str().unwrap_or("?").to_owned();
                let outcome = check["outcome"].as_str().unwrap_or("?").to_owned();
                if outcome == "ok" {
                    ok += 1;
                } else {
                    failed += 1;
                    problems.push(format!(
                        "{}: {name}: {} (log: {})",
                        col.title,
                        check["detail"].as_str().unwrap_or(""),
                        run.log.display()
                    ));
                }
                if !checks.contains(&name) {
                    checks.push(name.clone());
                }
                col.outcomes.insert((name, CHECK.to_owned()), outcome);
            }
            let devices = match mode["vlanDevices"].as_bool() {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            };
            writeln!(
                summary,
                "{:<6} {:<24} {:<9} ok {ok:>3}  failed {failed:>2}  skipped {skipped:>2}  \
                 802.1Q devices: {devices:<3}  TC attach: {}",
                run.kernel,
                release,
                name,
                mode["tcAttach"].as_str().unwrap_or("-"),
            )?;
            columns.push(col);
        }
        if run.ended != Ok(0) && problems.len() == problems_before {
            problems.push(format!(
                "{}: rama-matrix exited with {:?} (log: {})",
                run.kernel,
                run.ended,
                run.log.display()
            ));
        }
        combined.push(serde_json::json!({
            "kernel": run.kernel,
            "release": release,
            "seconds": run.elapsed.as_secs(),
            "runs": report["runs"],
        }));
    }
    order.extend(checks);
    print!("{}", table(&order, &columns));
    println!("\n{summary}");
    for run in runs {
        println!("{:<6} took {} s", run.kernel, run.elapsed.as_secs());
    }
    let path = out.join("kernel-matrix.json");
    fs::write(
        &path,
        serde_json::to_vec_pretty(&serde_json::json!({ "kernels": combined }))?,
    )?;
    println!("results: {}", path.display());
    if !problems.is_empty() {
        bail!("the kernel matrix failed:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

/// A row per path (then per lifecycle check), a column per kernel and mode: `ok` when
/// IPv4 and IPv6 worked, `FAIL4`/`FAIL6`/`FAIL` for the family that did not, `skip`
/// (why is in the log), `-` when the column did not run it.
fn table(order: &[String], columns: &[Column]) -> String {
    let width = order.iter().map(|c| c.len()).max().unwrap_or(4).max(4);
    let mut out = String::new();
    let _ = write!(out, "{:<width$}", "path");
    for c in columns {
        let _ = write!(out, "  {:>w$}", c.title, w = c.title.len().max(5));
    }
    out.push('\n');
    for cell in order {
        let _ = write!(out, "{cell:<width$}");
        for c in columns {
            let get = |family: &str| {
                c.outcomes
                    .get(&(cell.clone(), family.to_owned()))
                    .map(String::as_str)
            };
            if let Some(outcome) = get(CHECK) {
                let mark = if outcome == "ok" { "ok" } else { "FAIL" };
                let _ = write!(out, "  {mark:>w$}", w = c.title.len().max(5));
                continue;
            }
            let mark = match (get("IPv4"), get("IPv6")) {
                (Some("ok"), Some("ok")) => "ok",
                (Some("skipped"), Some("skipped")) => "skip",
                (None, None) => "-",
                (Some("ok"), _) => "FAIL6",
                (_, Some("ok")) => "FAIL4",
                _ => "FAIL",
            };
            let _ = write!(out, "  {mark:>w$}", w = c.title.len().max(5));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_kernel_is_refused_before_anything_runs() {
        let e = run(&Options {
            kernels: vec!["host".into(), "5.10".into()],
            modes: None,
            out: std::env::temp_dir().join("rama-kmatrix-unused"),
            timeout: 1,
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(r#"unknown kernel "5.10""#), "{msg}");
        assert!(msg.contains("6.1, 6.12"), "{msg}");
    }

    #[test]
    fn an_unknown_mode_is_refused_before_anything_runs() {
        let e = run(&Options {
            kernels: vec!["6.1".into()],
            modes: Some("ebpf,turbo".into()),
            out: std::env::temp_dir().join("rama-kmatrix-unused"),
            timeout: 1,
        })
        .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains(r#"unknown mode "turbo""#), "{msg}");
        assert!(msg.contains("ebpf, fallback, mixed"), "{msg}");
    }

    #[test]
    fn failed_cells_failed_checks_and_a_vm_without_results_fail_the_matrix() {
        let dir = std::env::temp_dir().join(format!("rama-kmatrix-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("scratch dir");
        let cell = |cell: &str, family: &str, outcome: &str| serde_json::json!({"cell": cell, "family": family, "outcome": outcome, "detail": "why"});
        let host = serde_json::json!({"kernel": "6.18.0", "runs": [{
            "mode": "ebpf", "vlanDevices": false, "tcAttach": "tcx",
            "cells": [
                cell("overlay cross-node", "IPv4", "ok"),
                cell("overlay cross-node", "IPv6", "failed"),
                cell("same node", "IPv4", "skipped"),
                cell("same node", "IPv6", "skipped"),
            ],
            "checks": [{"check": "teardown: nothing left behind", "outcome": "failed",
                        "detail": "a pin"}],
        }]});
        fs::write(dir.join("host.json"), host.to_string()).expect("write");
        let runs = [
            Run {
                kernel: "host".into(),
                log: dir.join("host.log"),
                json: dir.join("host.json"),
                elapsed: Duration::from_secs(1),
                ended: Ok(1),
            },
            Run {
                kernel: "6.1".into(),
                log: dir.join("6.1.log"),
                json: dir.join("6.1.json"),
                elapsed: Duration::from_secs(1),
                ended: Err("the VM on kernel 6.1 timed out".into()),
            },
        ];
        let e = report(&runs, &dir).unwrap_err();
        let combined = fs::read_to_string(dir.join("kernel-matrix.json")).unwrap_or_default();
        fs::remove_dir_all(&dir).ok();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("host ebpf: overlay cross-node (IPv6): why"),
            "{msg}"
        );
        assert!(
            msg.contains("host ebpf: teardown: nothing left behind: a pin"),
            "{msg}"
        );
        assert!(msg.contains("6.1: the VM on kernel 6.1 timed out"), "{msg}");
        assert!(combined.contains("6.18.0"), "{combined}");
    }

    #[test]
    fn the_table_marks_the_family_that_failed() {
        let mut outcomes = BTreeMap::new();
        for (cell, family, outcome) in [
            ("a", "IPv4", "ok"),
            ("a", "IPv6", "failed"),
            ("b", "IPv4", "skipped"),
            ("b", "IPv6", "skipped"),
            ("c", "IPv4", "failed"),
            ("c", "IPv6", "ok"),
            ("d", CHECK, "ok"),
        ] {
            outcomes.insert((cell.to_owned(), family.to_owned()), outcome.to_owned());
        }
        let col = Column {
            title: "6.1 ebpf".into(),
            outcomes,
        };
        let order: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let text = table(&order, &[col]);
        let marks: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().last().unwrap_or(""))
            .collect();
        assert_eq!(marks, ["FAIL6", "skip", "FAIL4", "ok", "-"], "{text}");
    }
}
