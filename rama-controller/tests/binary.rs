//! The `rama-controller` binary as an operator runs it: flags, bad input refused with
//! the flag named, and against the real API server a run that allocates, serves the
//! webhook and, on SIGTERM, stops cleanly and gives its Lease up.
mod support;

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use rama_api::{Network, NetworkSpec, annotations as ann};
use support::{WAIT, eventually, with_cluster};

const BIN: &str = env!("CARGO_BIN_EXE_rama-controller");
const METRICS: &str = "127.0.0.1:19477";

/// The controller's /metrics, or "" while it is not serving.
async fn scrape_metrics() -> String {
    tokio::task::spawn_blocking(|| {
        use std::io::{Read as _, Write as _};
        let mut conn = std::net::TcpStream::connect(METRICS).ok()?;
        conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: c\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        Some(text)
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// The controller process this test started; killed if the test fails before it ends.
struct Controller(std::process::Child);

impl Drop for Controller {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn refused(args: &[&str], needle: &str) {
    let out = Command::new(BIN)
        .args(args)
        .env("RAMA_KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("run rama-controller");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} must fail");
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr names {needle:?}: {stderr}"
    );
}

#[test]
fn help_documents_the_flags_and_bad_flags_are_named() {
    let out = Command::new(BIN).arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kubeconfig",
        "--leader-elect",
        "--lease",
        "--webhook-endpoint",
        "--tls-secret",
        "--tls-cert-file",
        "--install-crds",
        "RAMA_LEASE",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
    refused(&["--lease", "no-slash"], "--lease");
    refused(&["--webhook-endpoint", "http://x"], "--webhook-endpoint");
    refused(
        &["--webhook-endpoint", "service:kube-system/rama:0"],
        "port",
    );
    refused(&["--tls-secret", "nonamespace"], "--tls-secret");
    refused(&["--tls-cert-file", "/x"], "--tls-key-file");
    refused(&["--metrics-addr", "localhost"], "--metrics-addr");
    refused(&[], "/nonexistent/kubeconfig");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_allocates_and_stops_on_sigterm_giving_the_lease_up() {
    require_apiserver!();
    let ns = "ctl-binary";
    with_cluster(
        ns,
        &[(ann::SPECIFIED_NETWORK, "ctl-binary-overlay")],
        |c| async move {
            let net = Network::new("ctl-binary-overlay", NetworkSpec::overlay(7300));
            c.create_network(&net).await;
            c.create_subnet(&rama_api::Subnet::new(
                "ctl-binary-v4",
                rama_api::SubnetSpec::new(
                    "ctl-binary-overlay",
                    rama_api::AddressRange::new(rama_api::IpVersion::V4, "10.236.0.0/24"),
                ),
            ))
            .await;
            let kubeconfig = support::kubeconfig().expect("kubeconfig");
            let mut child = Controller(
                Command::new(BIN)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "--identity",
                        "binary-test",
                        "--lease",
                        "default/rama-test-binary",
                        "--webhook-endpoint",
                        "listen",
                        "--webhook-listen",
                        "127.0.0.1:0",
                        "--webhook-config",
                        &c.webhook_config(),
                        "--tls-secret",
                        &format!("{ns}/rama-webhook-tls"),
                        "--resync-seconds",
                        "5",
                        "--metrics-addr",
                        METRICS,
                    ])
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start rama-controller"),
            );
            let pid = child.0.id();
            c.create_pod(&c.pod("one", "n1", &[])).await;
            let got = c.wait_ips("one", 1).await;
            assert!(support::Cluster::ip(&got[0]).starts_with("10.236.0."));

            // Its metrics: leader, the allocation timed, the subnet's counts.
            let text = eventually("the subnet's counts in the metrics", WAIT, || async {
                let text = scrape_metrics().await;
                text.contains(
                    r#"rama_subnet_ips{family="ipv4",network="ctl-binary-overlay",state="used",subnet="ctl-binary-v4"} 1"#,
                )
                .then_some(text)
            })
            .await;
            for line in [
                "rama_controller_leader 1",
                r#"rama_ip_allocation_duration_seconds_count{kind="normal",result="ok"} 1"#,
                r#"rama_subnet_ips{family="ipv4",network="ctl-binary-overlay",state="total",subnet="ctl-binary-v4"} 254"#,
                r#"rama_network_ips{family="ipv4",network="ctl-binary-overlay",state="used"} 1"#,
            ] {
                assert!(text.contains(line), "missing {line}:\n{text}");
            }

            // The webhook it serves is live: an invalid Network is refused.
            let bad = Network::new("ctl-binary-bad", NetworkSpec::overlay(0));
            let err = Api::<Network>::all(c.client.clone())
                .create(&Default::default(), &bad)
                .await
                .expect_err("refused by the binary's webhook");
            assert!(err.to_string().contains("spec.netID"), "{err}");

            let leases = Api::<Lease>::namespaced(c.client.clone(), "default");
            let held = leases.get("rama-test-binary").await.expect("lease");
            assert_eq!(
                held.spec.and_then(|s| s.holder_identity).as_deref(),
                Some("binary-test")
            );
            // SIGTERM: graceful stop, exit 0, Lease given up.
            // SAFETY: kill(2) on the child this test started.
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
            let status = eventually("rama-controller exits", WAIT, || {
                let s = child.0.try_wait().expect("wait");
                async move { s }
            })
            .await;
            assert!(status.success(), "exit status {status:?}");
            let released = leases.get("rama-test-binary").await.expect("lease");
            assert_eq!(released.spec.and_then(|s| s.holder_identity), None);
            let _ = leases.delete("rama-test-binary", &Default::default()).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        },
    )
    .await;
}
