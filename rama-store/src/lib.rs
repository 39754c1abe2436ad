//! Where Rama keeps its objects.
//!
//! The **standalone store** is a directory of the same objects as the Kubernetes API
//! holds, as YAML, shared by every agent on a host (the embedded default, no cluster):
//!
//! ```text
//! <dir>/networks/<name>.yaml         Network      (written by the operator)
//! <dir>/subnets/<name>.yaml          Subnet       (written by the operator)
//! <dir>/ipinstances/<ns>/<name>.yaml IPInstance   (written by the store: one per address)
//! <dir>/nodeinfos/<name>.yaml        NodeInfo     (written by each agent)
//! <dir>/status/subnets/<name>.yaml   Subnet status (lastAllocatedIP, counts)
//! <dir>/.lock                        flock(2): shared to read, exclusive to change
//! ```
//!
//! Every write goes to a temporary file in the same directory, is fsynced and renamed
//! over the target (or, for a new IPInstance, linked to its name, which fails if the
//! name exists: creating the file *is* the allocation, as creating the object is in
//! Kubernetes). A crash leaves either the old file or the new one, plus a temporary
//! file the next writer removes.
mod convert;
pub mod kube_store;

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

pub use convert::{allocation_of, ipam_from};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rama_api::{
    IPInstance, IPInstanceSpec, IPInstanceStatus, InstanceAddress, InstanceBinding, IpVersion,
    Network, NodeInfo, StatefulBinding, Subnet, SubnetStatus, instance_name,
};
use rama_ipam::{Binding, PodKey, Request};
use serde::{Serialize, de::DeserializeOwned};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("{object}: {field}: {detail}")]
    Invalid {
        object: String,
        field: &'static str,
        detail: String,
    },
    #[error(transparent)]
    Ipam(#[from] rama_ipam::IpamError),
    #[error("IPInstance {0} already exists: another writer allocated that address")]
    Conflict(String),
    #[error("Kubernetes API: {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("gave up after {0} attempts: other writers kept taking the addresses chosen")]
    TooManyConflicts(u32),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

const KINDS: [&str; 5] = [
    "networks",
    "subnets",
    "ipinstances",
    "nodeinfos",
    "status/subnets",
];
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// The standalone store in a directory.
#[derive(Clone, Debug)]
pub struct StandaloneStore {
    dir: PathBuf,
}

/// The lock: released when dropped (closing the descriptor releases the flock).
struct Lock(#[allow(dead_code)] File);

impl StandaloneStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        for kind in KINDS {
            let d = dir.join(kind);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(Self { dir })
    }

    fn lock(&self, exclusive: bool) -> Result<Lock> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock(2) on a descriptor we own; it blocks until granted.
        if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
            return Err(io(&path)(std::io::Error::last_os_error()));
        }
        Ok(Lock(file))
    }

    /// Every object of one kind (files whose names start with a dot are temporaries).
    fn list<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut dirs = vec![self.dir.join(kind)];
        while let Some(dir) = dirs.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .map_err(io(&dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for path in entries {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.starts_with('.') {
                    continue;
                }
                if path.is_dir() {
                    dirs.push(path);
                } else if name.ends_with(".yaml") {
                    out.push(read(&path)?);
                }
            }
        }
        Ok(out)
    }

    pub fn networks(&self) -> Result<Vec<Network>> {
        let _lock = self.lock(false)?;
        self.list("networks")
    }

    pub fn subnets(&self) -> Result<Vec<Subnet>> {
        let _lock = self.lock(false)?;
        self.list("subnets")
    }

    pub fn ip_instances(&self) -> Result<Vec<IPInstance>> {
        let _lock = self.lock(false)?;
        self.list("ipinstances")
    }

    pub fn node_infos(&self) -> Result<Vec<NodeInfo>> {
        let _lock = self.lock(false)?;
        self.list("nodeinfos")
    }

    pub fn subnet_status(&self, subnet: &str) -> Result<Option<SubnetStatus>> {
        let _lock = self.lock(false)?;
        let path = self
            .dir
            .join("status/subnets")
            .join(format!("{subnet}.yaml"));
        if !path.exists() {
            return Ok(None);
        }
        read(&path).map(Some)
    }

    /// Writes an object an operator would (Network, Subnet) or an agent publishes
    /// (NodeInfo), replacing any earlier version atomically.
    pub fn put<T: Serialize + kube::Resource>(&self, kind: &str, object: &T) -> Result<()> {
        let name = object
            .meta()
            .name
            .clone()
            .ok_or_else(|| StoreError::Invalid {
                object: kind.to_owned(),
                field: "metadata.name",
                detail: "is missing".into(),
            })?;
        let _lock = self.lock(true)?;
        write_atomic(&self.dir.join(kind).join(format!("{name}.yaml")), object)
    }

    /// Allocates for a pod: reads the whole state, decides with the IPAM, and writes
    /// one IPInstance per address (each created exclusively) and the subnets' status,
    /// all under the exclusive lock. Nothing is written when the IPAM refuses.
    pub fn allocate(&self, req: &Request) -> Result<Vec<IPInstance>> {
        let _lock = self.lock(true)?;
        self.clean_temporaries()?;
        let mut ipam = self.load_ipam()?;
        let allocations = ipam.allocate(req)?;
        let subnets: Vec<Subnet> = self.list("subnets")?;
        let mut out = Vec::new();
        for a in &allocations {
            let instance = instance_in(&subnets, a, req)?;
            let path = self.instance_path(&a.pod.namespace, &a.ip);
            let fresh = req.pod.as_ref().is_some_and(|p| &a.pod == p) && !path.exists();
            if fresh {
                create_exclusive(&path, &instance)?;
            } else {
                write_atomic(&path, &instance)?;
            }
            out.push(instance);
        }
        self.write_status(&ipam, &subnets)?;
        Ok(out)
    }

    /// Releases a pod's addresses: deleted, or kept as Retained for a StatefulSet pod.
    pub fn release(&self, pod: &PodKey) -> Result<Vec<IpAddr>> {
        let _lock = self.lock(true)?;
        self.clean_temporaries()?;
        let mut ipam = self.load_ipam()?;
        let held: Vec<_> = ipam.of_pod(pod).into_iter().cloned().collect();
        let freed = ipam.release(pod);
        let subnets: Vec<Subnet> = self.list("subnets")?;
        for a in held {
            let path = self.instance_path(&pod.namespace, &a.ip);
            if freed.contains(&a.ip) {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                }
            } else if let Some(now) = ipam.allocation(&a.ip) {
                let mut instance: IPInstance = read(&path)?;
                instance.spec.binding.node_name = None;
                instance.status = Some(IPInstanceStatus {
                    phase: Some(phase(&now.binding).into()),
                });
                write_atomic(&path, &instance)?;
            }
        }
        self.write_status(&ipam, &subnets)?;
        Ok(freed)
    }

    /// The IPAM as the files say it is. Call with the lock held.
    fn load_ipam(&self) -> Result<rama_ipam::Ipam> {
        let networks: Vec<Network> = self.list("networks")?;
        let subnets: Vec<Subnet> = self.list("subnets")?;
        let instances: Vec<IPInstance> = self.list("ipinstances")?;
        let mut cursors = Vec::new();
        for s in &subnets {
            let name = s.metadata.name.clone().unwrap_or_default();
            let path = self.dir.join("status/subnets").join(format!("{name}.yaml"));
            if path.exists() {
                let status: SubnetStatus = read(&path)?;
                if let Some(ip) = status.last_allocated_ip.and_then(|s| s.parse().ok()) {
                    cursors.push((name, ip));
                }
            }
        }
        ipam_from(&networks, &subnets, &instances, cursors)
    }

    /// Writes each subnet's status that differs from its file (an allocation changes
    /// one or two; rewriting the others would cost two fsyncs each for nothing, and
    /// a missing or stale file is still repaired).
    fn write_status(&self, ipam: &rama_ipam::Ipam, subnets: &[Subnet]) -> Result<()> {
        for s in subnets {
            let name = s.metadata.name.clone().unwrap_or_default();
            if let Some(status) = subnet_status(ipam, &name) {
                let path = self.dir.join("status/subnets").join(format!("{name}.yaml"));
                let current = std::fs::read_to_string(&path).ok();
                let wanted = serde_yaml::to_string(&status).ok();
                if current.is_some() && current == wanted {
                    continue;
                }
                write_atomic(&path, &status)?;
            }
        }
        Ok(())
    }

    fn instance_path(&self, namespace: &str, ip: &IpAddr) -> PathBuf {
        self.dir
            .join("ipinstances")
            .join(namespace)
            .join(format!("{}.yaml", instance_name(ip)))
    }

    /// Temporaries are only ever written under the exclusive lock, so any found while
    /// holding it were left by a writer that died before its rename.
    fn clean_temporaries(&self) -> Result<()> {
        let mut dirs = vec![self.dir.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if path.is_dir() {
                    dirs.push(path);
                } else if name.starts_with(".tmp-") {
                    std::fs::remove_file(&path).map_err(io(&path))?;
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn phase(binding: &Binding) -> &'static str {
    match binding {
        Binding::Bound { .. } => "Bound",
        Binding::Retained => "Retained",
    }
}

/// A count as the Kubernetes API can hold it: its integers are int64, and a larger
/// JSON number (a /64's 2^64 addresses) is read as a float and refused. Saturates.
pub fn api_int(n: u128) -> u64 {
    n.min(i64::MAX as u128) as u64
}

/// The Subnet status the IPAM's counts make (total/used/available, the cursor).
pub fn subnet_status(ipam: &rama_ipam::Ipam, subnet: &str) -> Option<SubnetStatus> {
    let u = ipam.usage(subnet)?;
    Some(SubnetStatus {
        total: api_int(u.total),
        used: api_int(u.used),
        available: api_int(u.available),
        last_allocated_ip: u.last_allocated.map(|ip| ip.to_string()),
    })
}

/// The IPInstance recording allocation `a`, from its Subnet among `subnets`.
pub(crate) fn instance_in(
    subnets: &[Subnet],
    a: &rama_ipam::Allocation,
    req: &Request,
) -> Result<IPInstance> {
    let subnet = subnets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(a.subnet.as_str()))
        .ok_or_else(|| rama_ipam::IpamError::UnknownSubnet(a.subnet.clone()))?;
    Ok(instance_for(a, subnet, req))
}

fn instance_for(a: &rama_ipam::Allocation, subnet: &Subnet, req: &Request) -> IPInstance {
    let prefix = subnet
        .spec
        .range
        .cidr
        .parse::<ipnet::IpNet>()
        .map(|n| n.prefix_len())
        .unwrap_or(if a.ip.is_ipv4() { 32 } else { 128 });
    let spec = IPInstanceSpec {
        network: a.network.clone(),
        subnet: a.subnet.clone(),
        address: InstanceAddress {
            version: if a.ip.is_ipv4() {
                IpVersion::V4
            } else {
                IpVersion::V6
            },
            ip: format!("{}/{prefix}", a.ip),
            gateway: subnet.spec.range.gateway.clone(),
            net_id: subnet.spec.net_id,
            mac: None,
        },
        binding: InstanceBinding {
            node_name: match &a.binding {
                Binding::Bound { node } => Some(node.clone()),
                Binding::Retained => None,
            },
            pod_name: Some(a.pod.name.clone()),
            pod_uid: None,
            referred_object: None,
            stateful: a.retain.then(|| StatefulBinding {
                index: req.pool.as_ref().map_or(0, |(_, o)| *o),
            }),
        },
    };
    let mut instance = IPInstance::new(&instance_name(&a.ip), spec);
    instance.metadata = ObjectMeta {
        name: Some(instance_name(&a.ip)),
        namespace: Some(a.pod.namespace.clone()),
        ..Default::default()
    };
    instance.status = Some(IPInstanceStatus {
        phase: Some(phase(&a.binding).into()),
    });
    instance
}

fn read<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    serde_yaml::from_str(&text).map_err(|e| StoreError::Parse {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

/// Serialises `object` into a synced temporary file next to `path`.
fn write_temp<T: Serialize>(path: &Path, object: &T) -> Result<PathBuf> {
    let dir = path
        .parent()
        .ok_or_else(|| io(path)(std::io::Error::other("no parent")))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let text = serde_yaml::to_string(object).map_err(|e| StoreError::Parse {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(text.as_bytes()).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    Ok(tmp)
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

/// Replaces `path` with `object` atomically (write-temp, fsync, rename, fsync dir).
fn write_atomic<T: Serialize>(path: &Path, object: &T) -> Result<()> {
    let tmp = write_temp(path, object)?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(path)
}

/// Creates `path` with `object` only if it does not exist: link(2) of the synced
/// temporary fails with EEXIST otherwise.
fn create_exclusive<T: Serialize>(path: &Path, object: &T) -> Result<()> {
    let tmp = write_temp(path, object)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => sync_dir(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StoreError::Conflict(
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
        )),
        Err(e) => Err(io(path)(e)),
    }
}
