//! The VLAN-terminating port of the test router on a kernel without 802.1Q devices:
//! two tiny tc programs written in LLVM IR and built with LLVM's `llc` (no Rust, no
//! aya), attached with iproute2's `tc` — nothing shared with Rama's datapath.
//!
//! - ingress: accept only frames tagged with this port's VLAN, and pop the tag;
//! - egress: push the tag.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::netns::{Netns, run};

/// Where Debian's LLVM 22 puts llc (installed by `cargo xtask bootstrap`).
pub const LLC: &str = "/usr/lib/llvm-22/bin/llc";

fn ingress_ir(vlan: u16) -> String {
    // __sk_buff: vlan_present at offset 20, vlan_tci at 24; helper 19 is
    // bpf_skb_vlan_pop (include/uapi/linux/bpf.h).
    format!(
        r#"target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpf"
@_license = global [4 x i8] c"GPL\00", section "license", align 1
@llvm.used = appending global [2 x ptr] [ptr @_license, ptr @vlan_in], section "llvm.metadata"
define i32 @vlan_in(ptr %skb) section "tc" {{
  %pp = getelementptr inbounds i8, ptr %skb, i64 20
  %present = load i32, ptr %pp, align 4
  %tp = getelementptr inbounds i8, ptr %skb, i64 24
  %tci = load i32, ptr %tp, align 4
  %vid = and i32 %tci, 4095
  %has = icmp ne i32 %present, 0
  %ours = icmp eq i32 %vid, {vlan}
  %ok = and i1 %has, %ours
  br i1 %ok, label %pop, label %drop
pop:
  %r = call i64 inttoptr (i64 19 to ptr)(ptr %skb)
  ret i32 0
drop:
  ret i32 2
}}
"#
    )
}

fn egress_ir(vlan: u16) -> String {
    // Helper 18 is bpf_skb_vlan_push(skb, htons(ETH_P_8021Q) = 0x0081, vlan).
    format!(
        r#"target datalayout = "e-m:e-p:64:64-i64:64-i128:128-n32:64-S128"
target triple = "bpf"
@_license = global [4 x i8] c"GPL\00", section "license", align 1
@llvm.used = appending global [2 x ptr] [ptr @_license, ptr @vlan_out], section "llvm.metadata"
define i32 @vlan_out(ptr %skb) section "tc" {{
  %r = call i64 inttoptr (i64 18 to ptr)(ptr %skb, i64 129, i64 {vlan})
  ret i32 0
}}
"#
    )
}

fn build(dir: &Path, name: &str, ir: &str) -> Result<PathBuf> {
    let ll = dir.join(format!("{name}.ll"));
    let obj = dir.join(format!("{name}.o"));
    std::fs::write(&ll, ir).with_context(|| format!("writing {}", ll.display()))?;
    run(
        LLC,
        &[
            "-march=bpf",
            "-filetype=obj",
            "-o",
            obj.to_str().context("path")?,
            ll.to_str().context("path")?,
        ],
    )
    .context("building the VLAN fixture (is llvm-22 installed? run `cargo xtask bootstrap`)")?;
    Ok(obj)
}

/// Makes `dev` in `ns` an access port of `vlan`: frames leave it tagged and only
/// frames tagged with `vlan` come in (untagged).
pub fn attach(ns: &Netns, dev: &str, vlan: u16, scratch: &Path) -> Result<()> {
    let ingress = build(scratch, &format!("vlan{vlan}_in"), &ingress_ir(vlan))?;
    let egress = build(scratch, &format!("vlan{vlan}_out"), &egress_ir(vlan))?;
    ns.exec("tc", &["qdisc", "add", "dev", dev, "clsact"])?;
    for (dir, obj) in [("ingress", &ingress), ("egress", &egress)] {
        ns.exec(
            "tc",
            &[
                "filter",
                "add",
                "dev",
                dev,
                dir,
                "bpf",
                "da",
                "obj",
                obj.to_str().context("path")?,
                "sec",
                "tc",
            ],
        )?;
    }
    Ok(())
}
