//! One column of the kernel matrix: the connectivity matrix through the whole product
//! (agents, pods added by executing `rama-cni`) in eBPF, fallback and mixed modes on
//! the running kernel. Prints a line per cell and writes the results as JSON for
//! `cargo xtask kernel-matrix`, which runs this binary on the host and inside VMs. In
//! ebpf mode it also checks the agent's lifecycle (restart, teardown) on this kernel.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use rama_agent::dataplane::DatapathMode;
use rama_tests::{
    agents::clean_up_on_signal,
    cluster::Cluster,
    matrix::{CellResult, Check, Outcome, failures, full_path, lifecycle, uplink_filters},
};
use serde_json::{Value, json};

const TAG: &str = "km";

const USAGE: &str = "usage: rama-matrix [--modes ebpf,fallback,mixed] [--out FILE.json]

Runs the connectivity matrix (every path, IPv4 and IPv6) through rama-agent and
rama-cni in each mode on this kernel, in network namespaces it creates and removes;
in ebpf mode also an agent crash and restart (TC attachments replaced in place) and
a teardown (nothing left behind). Needs root. Exits 1 when a cell or check fails,
2 on bad arguments.";

/// A mode of the matrix: the datapath of n1 and n2.
fn datapaths(mode: &str) -> Result<[DatapathMode; 2]> {
    Ok(match mode {
        "ebpf" => [DatapathMode::Ebpf, DatapathMode::Ebpf],
        "fallback" => [DatapathMode::Fallback, DatapathMode::Fallback],
        "mixed" => [DatapathMode::Ebpf, DatapathMode::Fallback],
        other => bail!("unknown mode {other:?}: expected ebpf, fallback or mixed"),
    })
}

struct Args {
    modes: Vec<String>,
    out: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        modes: vec!["ebpf".into(), "fallback".into(), "mixed".into()],
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--modes" => {
                let list = it.next().context("--modes needs a value")?;
                args.modes = list.split(',').map(str::to_owned).collect();
                for m in &args.modes {
                    datapaths(m)?;
                }
            }
            "--out" => args.out = Some(it.next().context("--out needs a value")?.into()),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

/// How node `i` has its TC programs attached: clsact filters over netlink (kernels
/// before 6.6) or TCX links.
fn tc_attach(c: &Cluster, i: usize) -> String {
    match uplink_filters(c, i) {
        Ok(filters) if !filters.is_empty() => "netlink (clsact)".into(),
        Ok(_) if !c.pinned_links(i).is_empty() => "tcx".into(),
        Ok(_) => "none".into(),
        Err(e) => format!("unknown ({e:#})"),
    }
}

fn result_json(r: &CellResult) -> Value {
    let (outcome, detail) = match &r.outcome {
        Outcome::Ok(seen) => ("ok", format!("source seen: {seen}")),
        Outcome::Failed(e) => ("failed", e.clone()),
        Outcome::Skipped(why) => ("skipped", (*why).to_owned()),
    };
    json!({"cell": r.cell, "family": r.family(), "outcome": outcome, "detail": detail})
}

fn check_json(c: &Check) -> Value {
    let (outcome, detail) = match &c.result {
        Ok(seen) => ("ok", seen.clone()),
        Err(e) => ("failed", e.clone()),
    };
    json!({"check": c.name, "outcome": outcome, "detail": detail})
}

/// One mode's results as JSON, and whether everything in it passed.
fn run_mode(mode: &str) -> (Value, bool) {
    let datapaths = datapaths(mode).expect("checked when parsed");
    eprintln!("\n=== {mode}: n1 {}, n2 {} ===", datapaths[0], datapaths[1]);
    let started = std::time::Instant::now();
    match full_path(TAG, &datapaths) {
        Ok((mut c, results)) => {
            let tc = datapaths
                .iter()
                .position(|d| *d == DatapathMode::Ebpf)
                .map(|i| tc_attach(&c, i));
            // The lifecycle once per kernel, on the all-eBPF cluster.
            let checks = if datapaths == [DatapathMode::Ebpf, DatapathMode::Ebpf] {
                lifecycle(&mut c, 0)
            } else {
                Vec::new()
            };
            let failed = !failures(&results).is_empty() || checks.iter().any(|c| c.result.is_err());
            if failed {
                eprintln!(
                    "{}\nn1 agent:\n{}\nn2 agent:\n{}",
                    c.describe(),
                    c.agent_log(0),
                    c.agent_log(1)
                );
            }
            eprintln!("{mode}: {} s", started.elapsed().as_secs());
            let report = json!({
                "mode": mode,
                "seconds": started.elapsed().as_secs(),
                "vlanDevices": c.vlan_devices,
                "tcAttach": tc,
                "cells": results.iter().map(result_json).collect::<Vec<_>>(),
                "checks": checks.iter().map(check_json).collect::<Vec<_>>(),
            });
            (report, !failed)
        }
        Err(e) => {
            eprintln!("FAIL {mode}: the cluster could not be set up: {e:#}");
            let report = json!({"mode": mode, "error": format!("{e:#}"), "cells": []});
            (report, false)
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rama-matrix: {e:#}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("rama-matrix needs root (network namespaces, BPF)");
        return ExitCode::from(2);
    }
    clean_up_on_signal(TAG);
    let kernel = std::process::Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    eprintln!("kernel {kernel}");
    let (runs, passed): (Vec<Value>, Vec<bool>) = args.modes.iter().map(|m| run_mode(m)).unzip();
    let ok = passed.into_iter().all(|p| p);
    let report = json!({"kernel": kernel, "runs": runs});
    if let Some(out) = &args.out {
        let text = serde_json::to_vec_pretty(&report).expect("JSON");
        if let Err(e) = std::fs::write(out, text) {
            eprintln!("rama-matrix: writing {}: {e}", out.display());
            return ExitCode::from(2);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
