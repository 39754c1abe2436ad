//! Rama's node agent as a library: the desired node state, the `Dataplane` trait with
//! its eBPF and policy-route backends, and the kernel plumbing both share. The
//! `rama-agent` binary is a thin CLI over this.

pub mod dataplane;
pub mod defaults;
pub mod net;
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
        }
    }
}
