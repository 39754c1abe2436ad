//! The controller's Prometheus metrics, served with `/healthz` on `--metrics-addr`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rama_subnet_ips` | gauge | network, subnet, family, state (total/used/available) |
//! | `rama_network_ips` | gauge | network, family, state |
//! | `rama_ip_allocation_duration_seconds` | histogram | kind (normal/stateful), result |
//! | `rama_controller_reconcile_errors_total` | counter | loop, reason |
//! | `rama_controller_leader` | gauge (1 on the replica whose loops run) | — |
//! | `rama_controller_build_info` | gauge (1) | version |
//!
//! Address counts come from the Subnets' status (which the store writes with every
//! allocation) as the leader's cache holds them; a replica that is not the leader
//! exports none, so `sum` over replicas is the cluster's number.
use std::{collections::BTreeMap, convert::Infallible, sync::Mutex};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
    proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType},
};
use rama_api::{IpVersion, Subnet};
use tokio::net::TcpListener;

/// One Subnet's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
struct SubnetIps {
    network: String,
    family: &'static str,
    total: u64,
    used: u64,
    available: u64,
}

pub struct Metrics {
    registry: Registry,
    pub allocation_duration: HistogramVec,
    pub reconcile_errors: IntCounterVec,
    pub leader: IntGauge,
    subnets: Mutex<BTreeMap<String, SubnetIps>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // The metric definitions are constants: a failure here is a programming error.
        let allocation_duration = HistogramVec::new(
            HistogramOpts::new(
                "rama_ip_allocation_duration_seconds",
                "Time to allocate a pod's addresses through the API server, by kind \
                 (normal, stateful) and result",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind", "result"],
        )
        .expect("allocation histogram");
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "rama_controller_reconcile_errors_total",
                "Reconciles that failed and are retried, by loop and reason",
            ),
            &["loop", "reason"],
        )
        .expect("reconcile error counter");
        let leader = IntGauge::new(
            "rama_controller_leader",
            "1 while this replica is the leader and its loops run",
        )
        .expect("leader gauge");
        for c in [
            Box::new(allocation_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Self {
            registry,
            allocation_duration,
            reconcile_errors,
            leader,
            subnets: Mutex::new(BTreeMap::new()),
        }
    }

    /// Replaces the address counts with those of `subnets` (a Subnet without status
    /// yet has none).
    pub fn set_subnets<'a>(&self, subnets: impl IntoIterator<Item = &'a Subnet>) {
        let rows = subnets
            .into_iter()
            .filter_map(|s| {
                let st = s.status.as_ref()?;
                Some((
                    s.metadata.name.clone()?,
                    SubnetIps {
                        network: s.spec.network.clone(),
                        family: match s.spec.range.version {
                            IpVersion::V4 => "ipv4",
                            IpVersion::V6 => "ipv6",
                        },
                        total: st.total,
                        used: st.used,
                        available: st.available,
                    },
                ))
            })
            .collect();
        *self.subnets.lock().expect("metrics lock") = rows;
    }

    /// Counts a failed reconcile of `loop_name` (an error policy calls it).
    pub fn reconcile_failed(&self, loop_name: &str, err: &crate::Error) {
        self.reconcile_errors
            .with_label_values(&[loop_name, reason(err)])
            .inc();
    }

    /// Forgets the address counts (this replica stopped leading).
    pub fn clear_subnets(&self) {
        self.subnets.lock().expect("metrics lock").clear();
    }

    /// The whole scrape in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        let subnets = self.subnets.lock().expect("metrics lock").clone();
        let mut per_subnet = Vec::new();
        let mut per_network: BTreeMap<(String, &'static str), [u64; 3]> = BTreeMap::new();
        for (name, s) in &subnets {
            let values = [s.total, s.used, s.available];
            for (state, v) in ["total", "used", "available"].iter().zip(values) {
                per_subnet.push(gauge(
                    &[
                        ("network", &s.network),
                        ("subnet", name),
                        ("family", s.family),
                        ("state", state),
                    ],
                    v as f64,
                ));
            }
            let sum = per_network
                .entry((s.network.clone(), s.family))
                .or_default();
            for (acc, v) in sum.iter_mut().zip(values) {
                *acc = acc.saturating_add(v);
            }
        }
        let per_network = per_network
            .iter()
            .flat_map(|((network, family), values)| {
                ["total", "used", "available"]
                    .iter()
                    .zip(values)
                    .map(move |(state, v)| {
                        gauge(
                            &[("network", network), ("family", family), ("state", state)],
                            *v as f64,
                        )
                    })
            })
            .collect();
        families.push(family(
            "rama_subnet_ips",
            "Addresses of a Subnet: total, used and available",
            per_subnet,
        ));
        families.push(family(
            "rama_network_ips",
            "Addresses of a Network per family: total, used and available",
            per_network,
        ));
        families.push(family(
            "rama_controller_build_info",
            "The controller's version",
            vec![gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
        ));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        // Encoding well-formed families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// A gauge sample; labels sorted by name, as the registry's own samples are.
fn gauge(labels: &[(&str, &str)], value: f64) -> Metric {
    let mut labels = labels.to_vec();
    labels.sort_unstable();
    let pairs = labels
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect::<Vec<_>>();
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(pairs);
    m.set_gauge(g);
    m
}

fn family(name: &str, help: &str, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(MetricType::GAUGE);
    f.set_metric(metrics);
    f
}

/// A short label for an error (`rama_controller_reconcile_errors_total{reason}`).
fn reason(e: &crate::Error) -> &'static str {
    use crate::Error;
    match e {
        Error::Kube { source, .. } => match source {
            kube::Error::Api(s) if s.code == 409 => "conflict",
            kube::Error::Api(s) if s.code == 404 => "not_found",
            kube::Error::Api(_) => "api",
            _ => "transport",
        },
        Error::Store(_) => "store",
        Error::Request(_) => "request",
        Error::Refused { .. } => "refused",
        Error::Tls(_) => "tls",
        Error::Io { .. } => "io",
        Error::LeadershipLost(_) => "leadership_lost",
        Error::Stopped(_) => "stopped",
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(metrics: std::sync::Arc<Metrics>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                log::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, kind, body) = match req.uri().path() {
                        "/metrics" => (
                            StatusCode::OK,
                            "text/plain; version=0.0.4; charset=utf-8",
                            metrics.render(),
                        ),
                        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
                        _ => (StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(status)
                            .header("content-type", kind)
                            .body(Full::new(Bytes::from(body)))
                            .expect("static response parts"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rama_api::{AddressRange, IpVersion, SubnetSpec, SubnetStatus};

    fn subnet(name: &str, network: &str, cidr: &str, used: u64) -> Subnet {
        let mut s = Subnet::new(
            name,
            SubnetSpec::new(network, AddressRange::new(IpVersion::V4, cidr)),
        );
        s.status = Some(SubnetStatus {
            total: 254,
            used,
            available: 254 - used,
            ..Default::default()
        });
        s
    }

    #[test]
    fn subnet_and_network_counts_render_with_bounded_labels() {
        let m = Metrics::new();
        m.set_subnets(&[
            subnet("a", "net1", "10.0.0.0/24", 10),
            subnet("b", "net1", "10.0.1.0/24", 20),
        ]);
        m.allocation_duration
            .with_label_values(&["normal", "ok"])
            .observe(0.02);
        m.reconcile_errors
            .with_label_values(&["allocation", "conflict"])
            .inc();
        m.reconcile_failed("status", &crate::Error::Stopped("the pod cache"));
        m.leader.set(1);
        let text = m.render();
        for line in [
            r#"rama_subnet_ips{family="ipv4",network="net1",state="used",subnet="b"} 20"#,
            r#"rama_network_ips{family="ipv4",network="net1",state="used"} 30"#,
            r#"rama_network_ips{family="ipv4",network="net1",state="available"} 478"#,
            r#"rama_controller_reconcile_errors_total{loop="allocation",reason="conflict"} 1"#,
            r#"rama_controller_reconcile_errors_total{loop="status",reason="stopped"} 1"#,
            "rama_controller_leader 1",
            r#"rama_ip_allocation_duration_seconds_count{kind="normal",result="ok"} 1"#,
        ] {
            assert!(text.contains(line), "missing {line}\n{text}");
        }
        m.clear_subnets();
        assert!(!m.render().contains("rama_subnet_ips{"));
    }
}
