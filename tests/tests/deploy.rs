//! The manifests in `deploy/` against the real kube-apiserver, with the kubectl of the
//! same release (`cargo xtask test` builds both from Debian's source, starts the
//! server and sets RAMA_TEST_KUBECTL and RAMA_TEST_KUBECONFIG): each passes
//! `kubectl apply --dry-run=server`, so the server itself — schema, defaulting,
//! validation — judges them, and a broken one is refused naming what is wrong.
use std::{path::PathBuf, process::Output};

use rama_tests::path_from_env;

struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn from_env(test: &str) -> Option<Self> {
        Some(Self {
            bin: path_from_env("RAMA_TEST_KUBECTL", test, "kubectl")?,
            kubeconfig: path_from_env("RAMA_TEST_KUBECONFIG", test, "an API server")?,
        })
    }

    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(&self.bin)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .expect("kubectl runs")
    }
}

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn the_crds_pass_a_server_side_dry_run() {
    let Some(kubectl) = Kubectl::from_env("the_crds_pass_a_server_side_dry_run") else {
        return;
    };
    let file = deploy("crds/rama.yaml");
    let text = std::fs::read_to_string(&file).expect("deploy/crds/rama.yaml");
    let crds = text.matches("kind: CustomResourceDefinition").count();
    assert!(crds >= 4, "only {crds} CRDs in {}", file.display());
    let out = kubectl.run(&[
        "apply",
        "--dry-run=server",
        "-f",
        file.to_str().expect("path"),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted = stdout
        .lines()
        .filter(|l| {
            l.starts_with("customresourcedefinition.apiextensions.k8s.io/")
                && l.ends_with("(server dry run)")
        })
        .count();
    assert_eq!(accepted, crds, "{stdout}");
}

#[test]
fn a_broken_manifest_is_refused_naming_the_field() {
    let Some(kubectl) = Kubectl::from_env("a_broken_manifest_is_refused_naming_the_field") else {
        return;
    };
    // The committed CRDs with one field the server must refuse: a dry run that could
    // not fail would prove nothing about the manifests it passes.
    let text = std::fs::read_to_string(deploy("crds/rama.yaml")).expect("CRDs");
    let broken = text.replacen("scope: Cluster", "scope: Galactic", 1);
    assert_ne!(broken, text, "no cluster-scoped CRD to break");
    let file = std::env::temp_dir().join(format!("rama-broken-crd-{}.yaml", std::process::id()));
    std::fs::write(&file, broken).expect("write");
    let out = kubectl.run(&[
        "apply",
        "--dry-run=server",
        "-f",
        file.to_str().expect("path"),
    ]);
    std::fs::remove_file(&file).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a Galactic scope was accepted");
    assert!(stderr.contains("spec.scope"), "{stderr}");
}
