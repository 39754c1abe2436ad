//! Rama's cluster-wide controller.
//!
//! - [`pods`]: allocates addresses for scheduled pods (an IPInstance per address,
//!   through [`rama_store::kube_store::KubeStore`]) and releases or retains them when
//!   pods go away; warns on the pod with an Event when it cannot.
//! - [`status`]: Network status (nodes, subnets, counts), Subnet status of new
//!   subnets, and the `networking.alibaba.com/underlay-network` node label.
//! - [`leader`]: a `coordination.k8s.io/v1` Lease, so one replica acts at a time.
//! - [`webhook`]: validating and mutating admission over TLS, served by every replica.
//! - [`metrics`]: address counts, allocation latency, reconcile errors, leadership.
//!
//! The validating webhook's rules are [`rama_api::validate`]'s, shared with the
//! standalone agent.
use std::{sync::Arc, time::Duration};

pub mod certs;
pub mod leader;
pub mod metrics;
pub mod pods;
pub mod request;
pub mod status;
pub mod webhook;

/// The label the controller puts on nodes of an Underlay network (value: its name).
pub const UNDERLAY_NETWORK_LABEL: &str = "networking.alibaba.com/underlay-network";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Store(#[from] rama_store::StoreError),
    #[error(transparent)]
    Request(#[from] request::RequestError),
    /// An object the validating webhook refuses: the field and the rule it breaks.
    #[error("{field}: {rule}")]
    Refused { field: String, rule: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("leadership lost: {0}")]
    LeadershipLost(String),
    #[error("{0} stopped")]
    Stopped(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Kube { what, source }
}

impl From<rama_api::validate::Refusal> for Error {
    fn from(r: rama_api::validate::Refusal) -> Self {
        Error::Refused {
            field: r.field,
            rule: r.rule,
        }
    }
}

pub(crate) fn refused(field: impl Into<String>, rule: impl Into<String>) -> Error {
    Error::Refused {
        field: field.into(),
        rule: rule.into(),
    }
}

/// How the controller's loops behave.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Field manager for server-side apply and the Events' reporting controller.
    pub field_manager: String,
    /// This replica's identity (Lease holder, Events' reporting instance).
    pub identity: String,
    /// Full resync period: every object is reconciled again this often.
    pub resync: Duration,
    /// Pods allocated concurrently.
    pub concurrency: u16,
    /// Where the loops count what they do (served by [`metrics::serve`]).
    pub metrics: Arc<metrics::Metrics>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            field_manager: "rama-controller".into(),
            identity: hostname(),
            resync: Duration::from_secs(60),
            concurrency: 4,
            metrics: Arc::default(),
        }
    }
}

/// This host's name (the default identity), or "rama-controller".
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rama-controller".into())
}

mod run;
pub use run::{run, run_loops};
