//! Rama's node agent as a library. The `rama-agent` binary is a thin CLI over this.
//!
//! - [`agent`]: the daemon — the sync loop that keeps the datapath equal to the
//!   desired node state, and the CNI API the plugin calls;
//! - [`cluster`]: where the cluster state comes from (standalone directory or the
//!   Kubernetes API), [`desired`]: what the node should look like given it;
//! - [`endpoints`]: this node's attachments, [`plumbing`]: their veth pairs;
//! - [`dataplane`]: the `Dataplane` trait with its eBPF and policy-route backends,
//!   [`state`]: the node state both render, [`net`]: the kernel plumbing they share;
//! - [`metrics`]: the Prometheus metrics, [`inspect`]: the datapath's maps decoded
//!   and a packet traced through them.

pub mod agent;
pub mod cluster;
pub mod dataplane;
pub mod defaults;
pub mod desired;
pub mod endpoints;
pub mod inspect;
pub mod metrics;
pub mod net;
pub mod plumbing;
pub mod state;

use std::path::PathBuf;

/// Everything that can go wrong in the agent, each naming the object it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid node state: {0}")]
    InvalidState(String),
    #[error("uplink interface {0:?} does not exist")]
    UplinkNotFound(String),
    #[error("interface {0:?} does not exist")]
    InterfaceNotFound(String),
    #[error("map {map} is full: {wanted} entries wanted, capacity {capacity}")]
    MapFull {
        map: &'static str,
        wanted: usize,
        capacity: u32,
    },
    #[error("eBPF datapath unavailable: {0}")]
    EbpfUnavailable(String),
    #[error("eBPF {what}: {source}")]
    Ebpf {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel lacks {feature}: {detail}")]
    KernelFeature {
        feature: &'static str,
        detail: String,
    },
    #[error("nft failed ({status}): {stderr}")]
    Nft { status: String, stderr: String },
    #[error("reading state file {path}: {detail}")]
    StateFile { path: PathBuf, detail: String },
    #[error("teardown left {0} error(s): {1}")]
    Teardown(usize, String),
    #[error("network namespace {path}: {detail}")]
    NetnsNotFound { path: PathBuf, detail: String },
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] rama_store::StoreError),
    #[error("Kubernetes API: {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("kubeconfig{}: {detail}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Kubeconfig {
        path: Option<PathBuf>,
        detail: String,
    },
    #[error("cluster state unavailable: {0}")]
    ClusterUnavailable(String),
    #[error("pod {0} does not exist")]
    PodNotFound(String),
    #[error("no addresses yet: {0}")]
    NotAllocatedYet(String),
    #[error("check failed: {0}")]
    CheckFailed(String),
    #[error("the datapath could not be updated: {0}")]
    Sync(String),
    /// A name or address given to `inspect` that does not exist (exit code 2).
    #[error("{0}")]
    Lookup(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn ebpf(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Ebpf {
            what: what.into(),
            source: Box::new(source),
        }
    }

    /// `Ok` when a teardown collected no errors, else one error listing them all.
    pub(crate) fn collected(errors: Vec<Error>) -> Result<()> {
        if errors.is_empty() {
            return Ok(());
        }
        let msg = errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        Err(Error::Teardown(errors.len(), msg))
    }

    /// A short, bounded label for metrics (`rama_dataplane_sync_errors_total{reason}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidState(_) => "invalid_state",
            Error::UplinkNotFound(_) => "uplink_not_found",
            Error::InterfaceNotFound(_) => "interface_not_found",
            Error::MapFull { .. } => "map_full",
            Error::EbpfUnavailable(_) => "ebpf_unavailable",
            Error::Ebpf { .. } => "ebpf",
            Error::Netlink { .. } => "netlink",
            Error::Io { .. } => "io",
            Error::KernelFeature { .. } => "kernel_feature",
            Error::Nft { .. } => "nft",
            Error::StateFile { .. } => "state_file",
            Error::Teardown(..) => "teardown",
            Error::NetnsNotFound { .. } => "netns_not_found",
            Error::InvalidRequest(_) => "invalid_request",
            Error::Store(_) => "store",
            Error::Kube { .. } => "kube",
            Error::Kubeconfig { .. } => "kubeconfig",
            Error::ClusterUnavailable(_) => "cluster_unavailable",
            Error::PodNotFound(_) => "pod_not_found",
            Error::NotAllocatedYet(_) => "not_allocated_yet",
            Error::CheckFailed(_) => "check_failed",
            Error::Sync(_) => "sync",
            Error::Lookup(_) => "lookup",
        }
    }

    /// The CNI error code the plugin reports for this error (SPEC.md, "Error codes").
    pub fn cni_code(&self) -> u32 {
        use rama_cni::code;
        use rama_ipam::IpamError;
        match self {
            Error::NetnsNotFound { .. } | Error::PodNotFound(_) => code::UNKNOWN_CONTAINER,
            Error::InvalidRequest(_) | Error::InvalidState(_) => code::INVALID_CONFIG,
            // A full subnet may have room again once pods go away.
            Error::Store(rama_store::StoreError::Ipam(IpamError::Exhausted { .. })) => {
                code::TRY_AGAIN_LATER
            }
            Error::Store(rama_store::StoreError::Io { .. }) | Error::Io { .. } => code::IO_FAILURE,
            Error::Store(_) => code::INVALID_CONFIG,
            Error::NotAllocatedYet(_) | Error::ClusterUnavailable(_) => code::TRY_AGAIN_LATER,
            _ => code::AGENT_FAILURE,
        }
    }

    /// The short CNI message for [`Error::cni_code`].
    pub fn cni_msg(&self) -> &'static str {
        match self {
            Error::NetnsNotFound { .. } => "network namespace not found",
            Error::PodNotFound(_) => "pod not found",
            Error::Store(rama_store::StoreError::Ipam(_)) => "no address for the pod",
            Error::Store(_) => "the cluster state cannot be used",
            Error::NotAllocatedYet(_) => "no addresses yet",
            Error::CheckFailed(_) => "check failed",
            Error::InvalidRequest(_) => "invalid request",
            _ => "rama-agent failed",
        }
    }
}
