// Rebuild the eBPF object when bpf-linker changes (e.g. rebuilt against another LLVM),
// as the aya template does: cargo cannot see it as a dependency otherwise.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
