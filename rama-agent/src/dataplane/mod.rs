//! The `Dataplane` trait and its backends.
//!
//! The agent computes one desired [`NodeState`](crate::state::NodeState) and hands it
//! to a backend chosen by configuration (`auto|ebpf|fallback`; never by `cfg!(test)`):
//!
//! - [`ebpf::EbpfDataplane`]: TC/XDP programs and pinned maps (the fast path);
//! - [`fallback::FallbackDataplane`]: the original Rama design, policy rules and
//!   per-subnet route tables, VLAN sub-interfaces, a VXLAN device with FDB/neighbour
//!   entries, proxy ARP/NDP and masquerade;
//! - [`fake::FakeDataplane`]: records what it was asked to do, for unit tests.
//!
//! Both real backends share the host plumbing in [`host`] (pod veth gateway addresses,
//! local pod routes, masquerade), are idempotent, converge from any starting point and
//! only remove objects marked as Rama's.

pub mod ebpf;
pub mod fake;
pub mod fallback;
pub mod host;

use std::{
    fmt,
    path::PathBuf,
    str::FromStr,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    Result,
    state::{LocalEndpoint, ValidState},
};

/// Which datapath the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DatapathMode {
    /// eBPF when the kernel supports it, else the fallback (logged and reported).
    #[default]
    Auto,
    /// eBPF or fail loudly.
    Ebpf,
    /// Policy routing only.
    Fallback,
}

impl FromStr for DatapathMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "ebpf" => Ok(Self::Ebpf),
            "fallback" => Ok(Self::Fallback),
            other => Err(format!(
                "unknown datapath {other:?}: expected auto, ebpf or fallback"
            )),
        }
    }
}

impl fmt::Display for DatapathMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Ebpf => "ebpf",
            Self::Fallback => "fallback",
        })
    }
}

/// Whether to attach the XDP pre-filter to the uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpPolicy {
    /// In native (driver) mode on a NIC whose driver has it; never on a veth, where an
    /// XDP program makes the kernel turn off GSO on the peer (drivers/net/veth.c,
    /// veth_fix_features) and costs far more than the filter saves.
    #[default]
    Auto,
    /// Always, in whatever mode the kernel picks (tests use it on veth uplinks).
    On,
    /// Never: the TC programs do the same checks after the skb exists.
    Off,
}

impl FromStr for XdpPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown XDP policy {other:?}: expected auto, on or off"
            )),
        }
    }
}

/// What a backend reports after an apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub endpoints: usize,
    pub remote_endpoints: usize,
    pub subnets: usize,
    /// Things that are not errors but an operator should see (e.g. a gateway MAC not
    /// resolved yet: traffic to it goes through the stack until it is).
    pub notes: Vec<String>,
}

/// A rendering of the desired node state into the kernel.
#[allow(async_fn_in_trait)]
pub trait Dataplane {
    /// `ebpf`, `fallback` or `fake`.
    fn kind(&self) -> &'static str;
    /// Converges the kernel on `state`. Idempotent.
    async fn apply(&mut self, state: &ValidState) -> Result<ApplyReport>;
    /// Removes everything this backend created, collecting every error and carrying on.
    async fn teardown(&mut self) -> Result<()>;
    /// Whether `ep` is programmed as the last apply asked (CNI CHECK): an
    /// [`Error::CheckFailed`](crate::Error::CheckFailed) saying what is missing if not.
    async fn check_endpoint(&mut self, ep: &LocalEndpoint) -> Result<()>;
    /// Readies a new pod's host interface before its endpoint is in a state (eBPF:
    /// attaches the pod program, which waits for an RCU grace period in the kernel —
    /// `synchronize_rcu` in tcx attach, 10–25 ms here — so ADD runs it while the
    /// addresses are allocated), and keeps it through applies until
    /// [`Dataplane::forget_interface`].
    async fn prepare_interface(&mut self, _ifname: &str) -> Result<()> {
        Ok(())
    }
    /// The interface is in the state now (or gone): applies decide about it.
    fn forget_interface(&mut self, _ifname: &str) {}
}

/// Settings of the datapath backends.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    pub mode: DatapathMode,
    /// Where the eBPF backend pins maps and links for this node.
    pub pin_dir: PathBuf,
    pub capacity: ebpf::Capacity,
    pub xdp: XdpPolicy,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            mode: DatapathMode::Auto,
            pin_dir: PathBuf::from(rama_common::names::PIN_ROOT),
            capacity: ebpf::Capacity::default(),
            xdp: XdpPolicy::Auto,
        }
    }
}

/// The backend in use and why: the status the agent logs and exports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModeStatus {
    pub requested: DatapathMode,
    /// `ebpf` or `fallback`.
    pub active: &'static str,
    /// Why `auto` fell back, when it did.
    pub fallback_reason: Option<String>,
}

/// The factory: one of the backends, chosen by [`DataplaneConfig::mode`].
pub enum Backend {
    Ebpf(Box<ebpf::EbpfDataplane>),
    Fallback(fallback::FallbackDataplane),
    Fake(fake::FakeDataplane),
}

impl Backend {
    /// Builds the configured backend. `auto` tries eBPF and, when the kernel cannot
    /// run it, falls back with a log line and the reason in the returned status;
    /// `ebpf` fails loudly instead.
    pub fn new(config: &DataplaneConfig) -> Result<(Self, ModeStatus)> {
        let status = |active, reason| ModeStatus {
            requested: config.mode,
            active,
            fallback_reason: reason,
        };
        match config.mode {
            DatapathMode::Fallback => Ok((
                Backend::Fallback(fallback::FallbackDataplane::new(&config.pin_dir)?),
                status("fallback", None),
            )),
            DatapathMode::Ebpf => Ok((
                Backend::Ebpf(Box::new(ebpf::EbpfDataplane::new(config)?)),
                status("ebpf", None),
            )),
            DatapathMode::Auto => match ebpf::EbpfDataplane::new(config) {
                Ok(dp) => Ok((Backend::Ebpf(Box::new(dp)), status("ebpf", None))),
                Err(e) => {
                    log::warn!("eBPF datapath unavailable, using the policy-route fallback: {e}");
                    Ok((
                        Backend::Fallback(fallback::FallbackDataplane::new(&config.pin_dir)?),
                        status("fallback", Some(e.to_string())),
                    ))
                }
            },
        }
    }
}

impl Dataplane for Backend {
    fn kind(&self) -> &'static str {
        match self {
            Backend::Ebpf(b) => b.kind(),
            Backend::Fallback(b) => b.kind(),
            Backend::Fake(b) => b.kind(),
        }
    }

    async fn apply(&mut self, state: &ValidState) -> Result<ApplyReport> {
        match self {
            Backend::Ebpf(b) => b.apply(state).await,
            Backend::Fallback(b) => b.apply(state).await,
            Backend::Fake(b) => b.apply(state).await,
        }
    }

    async fn teardown(&mut self) -> Result<()> {
        match self {
            Backend::Ebpf(b) => b.teardown().await,
            Backend::Fallback(b) => b.teardown().await,
            Backend::Fake(b) => b.teardown().await,
        }
    }

    async fn check_endpoint(&mut self, ep: &LocalEndpoint) -> Result<()> {
        match self {
            Backend::Ebpf(b) => b.check_endpoint(ep).await,
            Backend::Fallback(b) => b.check_endpoint(ep).await,
            Backend::Fake(b) => b.check_endpoint(ep).await,
        }
    }

    async fn prepare_interface(&mut self, ifname: &str) -> Result<()> {
        match self {
            Backend::Ebpf(b) => b.prepare_interface(ifname).await,
            Backend::Fallback(b) => b.prepare_interface(ifname).await,
            Backend::Fake(b) => b.prepare_interface(ifname).await,
        }
    }

    fn forget_interface(&mut self, ifname: &str) {
        match self {
            Backend::Ebpf(b) => b.forget_interface(ifname),
            Backend::Fallback(b) => b.forget_interface(ifname),
            Backend::Fake(b) => b.forget_interface(ifname),
        }
    }
}

/// What a backend last wrote that is costly to write again or to read back (the
/// nft ruleset: a process start, ~20 ms; RAMA_VLANS: 4096 reads, ~5 ms), so that a
/// sync changing nothing there skips it, or writes only the difference. Trusted for
/// [`FULL_WRITE_EVERY`] after the last full write; after that the next sync writes in
/// full again, so what someone else changed is put right at the next periodic resync
/// (level-triggered, like everything else).
#[derive(Debug)]
pub struct Written<T> {
    last: Option<T>,
    full_at: Option<Instant>,
}

/// Shorter than the agent's default resync period (30 s).
pub const FULL_WRITE_EVERY: Duration = Duration::from_secs(10);

impl<T> Default for Written<T> {
    fn default() -> Self {
        Self {
            last: None,
            full_at: None,
        }
    }
}

impl<T> Written<T> {
    /// The value last written, while it may be trusted. It is taken: a write that
    /// fails before [`Written::put`] is redone in full.
    pub fn take(&mut self) -> Option<T> {
        let last = self.last.take();
        last.filter(|_| {
            self.full_at
                .is_some_and(|at| at.elapsed() < FULL_WRITE_EVERY)
        })
    }

    /// Records what is now written; `full` when it was written whole rather than
    /// from the value [`Written::take`] gave.
    pub fn put(&mut self, value: T, full: bool) {
        if full {
            self.full_at = Some(Instant::now());
        }
        self.last = Some(value);
    }

    /// Forgets everything (after a teardown removed what was written).
    pub fn forget(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod written_tests {
    use super::Written;

    #[test]
    fn trusted_after_a_full_write_until_taken_or_forgotten() {
        let mut w = Written::default();
        assert_eq!(w.take(), None::<u32>, "nothing written yet: write in full");
        w.put(7, false);
        assert_eq!(w.take(), None, "never written in full: not trusted");
        w.put(7, true);
        assert_eq!(w.take(), Some(7));
        assert_eq!(
            w.take(),
            None,
            "taken: a write that fails is redone in full"
        );
        w.put(8, false);
        assert_eq!(
            w.take(),
            Some(8),
            "a partial write keeps the full write's time"
        );
        w.put(8, true);
        w.forget();
        assert_eq!(w.take(), None);
    }
}
