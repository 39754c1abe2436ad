//! The agent's Prometheus metrics. Names start with `rama_`, carry their unit, and
//! have small, bounded label sets (programs, reasons, verbs — never addresses).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rama_datapath_packets_total`, `rama_datapath_bytes_total` | counter | program, direction, action, reason |
//! | `rama_datapath_info` | gauge (1) | active, requested, fallback_reason |
//! | `rama_agent_ready` | gauge | — |
//! | `rama_cluster_state_refused` | gauge (1 while serving the last good state) | — |
//! | `rama_local_endpoints`, `rama_remote_endpoints`, `rama_subnets` | gauge | — |
//! | `rama_bpf_map_entries`, `rama_bpf_map_capacity_entries` | gauge | map |
//! | `rama_cni_requests_total` | counter | verb, result |
//! | `rama_cni_request_duration_seconds` | histogram | verb |
//! | `rama_dataplane_sync_duration_seconds` | histogram | — |
//! | `rama_dataplane_sync_errors_total` | counter | reason |
//! | `rama_agent_build_info` | gauge (1) | version |
//!
//! Datapath counters are read from the pinned per-CPU map at scrape time and summed
//! over CPUs; the map is never reset, so they are true counters (a map re-created
//! with another layout starts again from zero, which Prometheus' `rate` treats as a
//! counter reset).
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
    proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType},
};

use crate::{Error, Result, agent::Agent, dataplane::ebpf};

/// The metrics the agent updates as it works.
pub struct Metrics {
    registry: Registry,
    pub cni_requests: IntCounterVec,
    pub cni_duration: HistogramVec,
    pub sync_duration: HistogramVec,
    pub sync_errors: IntCounterVec,
}

fn metrics_err(e: prometheus::Error) -> Error {
    Error::io("metrics", std::io::Error::other(e))
}

impl Metrics {
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let cni_requests = IntCounterVec::new(
            Opts::new("rama_cni_requests_total", "CNI requests by verb and result"),
            &["verb", "result"],
        )
        .map_err(metrics_err)?;
        let cni_duration = HistogramVec::new(
            HistogramOpts::new(
                "rama_cni_request_duration_seconds",
                "Time the agent took for a CNI request",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["verb"],
        )
        .map_err(metrics_err)?;
        let sync_duration = HistogramVec::new(
            HistogramOpts::new(
                "rama_dataplane_sync_duration_seconds",
                "Time one convergence of the datapath took",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &[],
        )
        .map_err(metrics_err)?;
        let sync_errors = IntCounterVec::new(
            Opts::new(
                "rama_dataplane_sync_errors_total",
                "Convergences of the datapath that failed, by reason",
            ),
            &["reason"],
        )
        .map_err(metrics_err)?;
        for c in [
            Box::new(cni_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(cni_duration.clone()),
            Box::new(sync_duration.clone()),
            Box::new(sync_errors.clone()),
        ] {
            registry.register(c).map_err(metrics_err)?;
        }
        Ok(Self {
            registry,
            cni_requests,
            cni_duration,
            sync_duration,
            sync_errors,
        })
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn gauge(name: &str, help: &str, rows: Vec<(Vec<(&str, &str)>, f64)>) -> MetricFamily {
    let metrics = rows
        .into_iter()
        .map(|(l, v)| {
            let mut g = Gauge::default();
            g.set_value(v);
            let mut m = Metric::from_label(labels(&l));
            m.set_gauge(g);
            m
        })
        .collect();
    family(name, help, MetricType::GAUGE, metrics)
}

/// What a counted reason means for the packet.
pub fn action(reason: &str, drop: bool) -> &'static str {
    if drop {
        "drop"
    } else if reason.starts_with("redirect_") {
        "forward"
    } else if reason.ends_with("_reply") {
        "reply"
    } else {
        "stack"
    }
}

/// Which way the counting program sees traffic, from the node's point of view.
pub fn direction(program: &str) -> &'static str {
    if program == "pod_egress" {
        "from_pod"
    } else {
        "to_node"
    }
}

/// The datapath counter families, read now.
pub fn datapath_families(pin_dir: &std::path::Path) -> Result<Vec<MetricFamily>> {
    let rows = ebpf::read_counters(pin_dir)?;
    let mut packets = Vec::new();
    let mut bytes = Vec::new();
    for r in &rows {
        let l = labels(&[
            ("program", r.program),
            ("direction", direction(r.program)),
            ("action", action(r.reason, r.drop)),
            ("reason", r.reason),
        ]);
        for (out, value) in [(&mut packets, r.packets), (&mut bytes, r.bytes)] {
            let mut c = Counter::default();
            c.set_value(value as f64);
            let mut m = Metric::from_label(l.clone());
            m.set_counter(c);
            out.push(m);
        }
    }
    Ok(vec![
        family(
            "rama_datapath_packets_total",
            "Packets the eBPF programs handled, by program, direction, action and reason",
            MetricType::COUNTER,
            packets,
        ),
        family(
            "rama_datapath_bytes_total",
            "Bytes the eBPF programs handled, by program, direction, action and reason",
            MetricType::COUNTER,
            bytes,
        ),
    ])
}

/// Occupancy and capacity of the maps that grow with the cluster.
pub fn map_families(pin_dir: &std::path::Path) -> Result<Vec<MetricFamily>> {
    let usage = ebpf::map_usage(pin_dir)?;
    let entries = usage
        .iter()
        .map(|u| (vec![("map", u.map)], u.entries as f64))
        .collect();
    let capacity = usage
        .iter()
        .map(|u| (vec![("map", u.map)], f64::from(u.capacity)))
        .collect();
    Ok(vec![
        gauge("rama_bpf_map_entries", "Entries in an eBPF map", entries),
        gauge(
            "rama_bpf_map_capacity_entries",
            "Capacity of an eBPF map (set at load time)",
            capacity,
        ),
    ])
}

/// The whole scrape.
pub fn render(agent: &Agent) -> Result<String> {
    let status = agent.status();
    let mode = agent.mode();
    let requested = mode.requested.to_string();
    let mut families = agent.metrics().registry.gather();
    // One series per agent: the reason is free text, but never more than one value.
    let reason = mode.fallback_reason.clone().unwrap_or_default();
    families.push(gauge(
        "rama_datapath_info",
        "The datapath in use (1), what was asked for, and why it fell back",
        vec![(
            vec![
                ("active", mode.active),
                ("fallback_reason", &reason),
                ("requested", &requested),
            ],
            1.0,
        )],
    ));
    families.push(gauge(
        "rama_agent_ready",
        "1 when the agent is synced and accepts the cluster state",
        vec![(vec![], f64::from(u8::from(status.ready())))],
    ));
    families.push(gauge(
        "rama_cluster_state_refused",
        "1 while the cluster state is refused and the last good one is served",
        vec![(vec![], f64::from(u8::from(status.cluster_error.is_some())))],
    ));
    for (name, help, v) in [
        (
            "rama_local_endpoints",
            "Pods on this node in the datapath",
            status.endpoints,
        ),
        (
            "rama_remote_endpoints",
            "Pod addresses on other nodes in the datapath",
            status.remote_endpoints,
        ),
        ("rama_subnets", "Subnets in the datapath", status.subnets),
    ] {
        families.push(gauge(name, help, vec![(vec![], v as f64)]));
    }
    families.push(gauge(
        "rama_agent_build_info",
        "The agent's version",
        vec![(vec![("version", env!("CARGO_PKG_VERSION"))], 1.0)],
    ));
    if mode.active == "ebpf" {
        let pin = &agent.config().dataplane.pin_dir;
        families.extend(datapath_families(pin)?);
        families.extend(map_families(pin)?);
    }
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(metrics_err)?;
    String::from_utf8(out).map_err(|e| Error::io("metrics", std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_and_directions_are_a_small_fixed_set() {
        assert_eq!(action("redirect_vlan", false), "forward");
        assert_eq!(action("arp_reply", false), "reply");
        assert_eq!(action("pass_stack", false), "stack");
        assert_eq!(action("neigh_miss", false), "stack");
        assert_eq!(action("spoofed_ip", true), "drop");
        assert_eq!(direction("pod_egress"), "from_pod");
        assert_eq!(direction("vxlan_ingress"), "to_node");
    }

    #[test]
    fn registry_metrics_encode() {
        let m = Metrics::new().expect("metrics");
        m.cni_requests.with_label_values(&["add", "ok"]).inc();
        m.cni_duration.with_label_values(&["add"]).observe(0.004);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .expect("encode");
        let text = String::from_utf8(out).expect("utf8");
        assert!(
            text.contains(r#"rama_cni_requests_total{result="ok",verb="add"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("rama_cni_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
