//! `rama-controller`: cluster-wide IPAM, Network/Subnet status and admission webhooks.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::Parser;
use kube::{Client, config::KubeConfigOptions};
use log::{error, info};
use rama_controller::{
    Settings,
    certs::CertSource,
    leader::LeaseSettings,
    webhook::{Endpoint, Webhook, WebhookSettings},
};
use rama_store::kube_store::KubeStore;

/// Rama's cluster-wide controller: allocates pod addresses (IPInstances) from the
/// Networks and Subnets, keeps their status, labels the nodes of Underlay networks,
/// and serves the validating and mutating admission webhooks over TLS.
///
/// In a cluster it needs no flags: the in-cluster service account, leader election on
/// a Lease in kube-system, the webhook behind the `rama-webhook` Service with its
/// certificate in the `rama-webhook-tls` Secret (created on first start).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Kubeconfig file; default: in-cluster config, then $KUBECONFIG, then ~/.kube/config.
    #[arg(long, env = "RAMA_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// This replica's identity (Lease holder, Events' reporting instance).
    #[arg(long, env = "RAMA_IDENTITY", default_value_t = rama_controller::hostname())]
    identity: String,
    /// Field manager name for server-side apply.
    #[arg(long, env = "RAMA_FIELD_MANAGER", default_value = "rama-controller")]
    field_manager: String,
    /// Elect a leader on a Lease (turn off only with a single replica).
    #[arg(long, env = "RAMA_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace/name of the leader election Lease.
    #[arg(
        long,
        env = "RAMA_LEASE",
        default_value = "kube-system/rama-controller"
    )]
    lease: String,
    /// Pods allocated concurrently.
    #[arg(long, env = "RAMA_CONCURRENCY", default_value_t = 4)]
    concurrency: u16,
    /// Seconds between full resyncs.
    #[arg(long, env = "RAMA_RESYNC_SECONDS", default_value_t = 60)]
    resync_seconds: u64,
    /// Create Rama's CRDs when they are missing (and wait until they are served).
    #[arg(long, env = "RAMA_INSTALL_CRDS")]
    install_crds: bool,
    /// Do not serve the admission webhooks.
    #[arg(long, env = "RAMA_NO_WEBHOOK")]
    no_webhook: bool,
    /// Address the webhook listens on.
    #[arg(long, env = "RAMA_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    webhook_listen: SocketAddr,
    /// How the API server reaches the webhook: `service:NAMESPACE/NAME:PORT`, or
    /// `listen` for https://<--webhook-listen> (a host-network controller).
    #[arg(
        long,
        env = "RAMA_WEBHOOK_ENDPOINT",
        default_value = "service:kube-system/rama-webhook:443"
    )]
    webhook_endpoint: String,
    /// Name of the Validating- and MutatingWebhookConfiguration.
    #[arg(long, env = "RAMA_WEBHOOK_CONFIG", default_value = "rama-webhook")]
    webhook_config: String,
    /// Secret (NAMESPACE/NAME) holding the serving certificate; created when missing.
    #[arg(
        long,
        env = "RAMA_TLS_SECRET",
        default_value = "kube-system/rama-webhook-tls"
    )]
    tls_secret: String,
    /// Serving certificate (PEM) instead of the Secret, e.g. mounted by cert-manager.
    #[arg(long, env = "RAMA_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Key of --tls-cert-file (PEM).
    #[arg(long, env = "RAMA_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// CA the API server should trust (PEM); default: the certificate itself.
    #[arg(long, env = "RAMA_TLS_CA_FILE", requires = "tls_cert_file")]
    tls_ca_file: Option<PathBuf>,
    /// HTTP address for /metrics and /healthz ("none" to turn it off).
    #[arg(long, env = "RAMA_METRICS_ADDR", default_value = "0.0.0.0:9477")]
    metrics_addr: String,
}

fn split_ns_name(what: &str, value: &str) -> anyhow::Result<(String, String)> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok((ns.into(), name.into())),
        _ => bail!("{what}: {value:?} is not NAMESPACE/NAME"),
    }
}

fn endpoint(value: &str) -> anyhow::Result<Endpoint> {
    if value == "listen" {
        return Ok(Endpoint::Listen);
    }
    let Some(service) = value.strip_prefix("service:") else {
        bail!(
            "--webhook-endpoint: {value:?} is neither `listen` nor `service:NAMESPACE/NAME:PORT`"
        );
    };
    let (ns_name, port) = service
        .rsplit_once(':')
        .with_context(|| format!("--webhook-endpoint: {value:?} has no :PORT"))?;
    let (namespace, name) = split_ns_name("--webhook-endpoint", ns_name)?;
    let port = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .with_context(|| format!("--webhook-endpoint: port {port:?} is not 1–65535"))?;
    Ok(Endpoint::Service {
        namespace,
        name,
        port,
    })
}

async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster config, $KUBECONFIG or ~/.kube/config")?,
    };
    Client::try_from(config).context("building the Kubernetes client")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let lease = if cli.leader_elect {
        let (ns, name) = split_ns_name("--lease", &cli.lease)?;
        Some(LeaseSettings::new(&ns, &name, &cli.identity))
    } else {
        None
    };
    let endpoint = endpoint(&cli.webhook_endpoint)?;
    let certs = match (&cli.tls_cert_file, &cli.tls_key_file) {
        (Some(cert), Some(key)) => CertSource::Files {
            cert: cert.clone(),
            key: key.clone(),
            ca: cli.tls_ca_file.clone(),
        },
        _ => {
            let (namespace, name) = split_ns_name("--tls-secret", &cli.tls_secret)?;
            CertSource::Secret { namespace, name }
        }
    };
    let metrics_addr: Option<SocketAddr> =
        match cli.metrics_addr.as_str() {
            "none" => None,
            a => Some(a.parse().with_context(|| {
                format!("--metrics-addr {a:?} is neither HOST:PORT nor \"none\"")
            })?),
        };
    let client = client(cli.kubeconfig.as_ref()).await?;
    let metrics = std::sync::Arc::new(rama_controller::metrics::Metrics::new());
    if let Some(addr) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics-addr {addr}"))?;
        tokio::spawn(rama_controller::metrics::serve(metrics.clone(), listener));
    }
    if cli.install_crds {
        KubeStore::new(client.clone(), cli.field_manager.clone())
            .install_crds()
            .await?;
    }
    let settings = Settings {
        field_manager: cli.field_manager.clone(),
        identity: cli.identity.clone(),
        resync: Duration::from_secs(cli.resync_seconds.max(1)),
        concurrency: cli.concurrency.max(1),
        metrics,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let webhook = if cli.no_webhook {
        None
    } else {
        let w = Webhook::start(
            client.clone(),
            &WebhookSettings {
                listen: cli.webhook_listen,
                endpoint,
                config_name: cli.webhook_config.clone(),
                certs,
                field_manager: cli.field_manager.clone(),
            },
        )
        .await?;
        let mut rx = stop_rx.clone();
        Some(tokio::spawn(w.serve(async move {
            let _ = rx.wait_for(|s| *s).await;
        })))
    };
    let mut rx = stop_rx.clone();
    let result = rama_controller::run(client, settings, lease, async move {
        tokio::select! {
            _ = shutdown_signal() => info!("shutting down"),
            _ = rx.wait_for(|s| *s) => {}
        }
    })
    .await;
    let _ = stop_tx.send(true);
    if let Some(w) = webhook {
        let _ = w.await;
    }
    result.map_err(Into::into)
}
