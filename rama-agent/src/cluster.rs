//! Where the agent reads the cluster from: the standalone state directory (the
//! embedded default) or the Kubernetes API. Both give the same [`Snapshot`] of
//! Networks, Subnets, IPInstances and NodeInfos; the agent computes the node's
//! desired state from it and never reacts to "what changed" (level-triggered).
//!
//! **Standalone**: the directory is polled for changes (names, sizes and mtimes)
//! rather than watched with inotify, because the kernel-matrix VMs share the host's
//! filesystem over 9p, where inotify never sees the host's writes.
//!
//! **Kubernetes**: reflectors (watch + cache) on the four kinds; any event wakes the
//! agent.
pub mod kube;

use std::{
    collections::{BTreeMap, hash_map::DefaultHasher},
    hash::{Hash as _, Hasher as _},
    path::{Path, PathBuf},
    time::Duration,
};

use rama_api::{IPInstance, Network, NodeInfo, Subnet, validate};
use rama_ipam::{PodKey, Request};
use rama_store::StandaloneStore;

use crate::{Error, Result};

/// The cluster objects the agent works from.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub networks: Vec<Network>,
    pub subnets: Vec<Subnet>,
    pub instances: Vec<IPInstance>,
    pub node_infos: Vec<NodeInfo>,
}

fn name_of<K: ::kube::Resource>(o: &K) -> &str {
    o.meta().name.as_deref().unwrap_or("")
}

impl Snapshot {
    /// Every Network and Subnet against the rules the validating webhook applies;
    /// one line per refused object, naming it (`where_is` says where it lives: a file
    /// in standalone mode, the object in Kubernetes).
    pub fn problems(&self, where_is: impl Fn(&str, &str) -> String) -> Vec<String> {
        let mut out = Vec::new();
        for n in &self.networks {
            if let Err(r) = validate::network(n, None) {
                out.push(format!("{}: {r}", where_is("networks", name_of(n))));
            }
        }
        for s in &self.subnets {
            if let Err(r) = validate::subnet(s, None, &self.networks, &self.subnets) {
                out.push(format!("{}: {r}", where_is("subnets", name_of(s))));
            }
        }
        out
    }
}

/// The standalone state directory.
pub struct Standalone {
    store: StandaloneStore,
    dir: PathBuf,
    poll: Duration,
}

/// A fingerprint of the files that make up the state (not status or locks).
fn fingerprint(dir: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let mut stack: Vec<PathBuf> = ["networks", "subnets", "ipinstances", "nodeinfos"]
        .iter()
        .map(|k| dir.join(k))
        .collect();
    let mut files = BTreeMap::new();
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or_default();
                files.insert(path, (meta.len(), mtime));
            }
        }
    }
    files.hash(&mut h);
    h.finish()
}

impl Standalone {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            store: StandaloneStore::open(dir)?,
            dir: dir.to_owned(),
            poll: Duration::from_millis(500),
        })
    }

    pub fn store(&self) -> &StandaloneStore {
        &self.store
    }

    /// Where an object of `kind` lives, for messages.
    pub fn path_of(&self, kind: &str, name: &str) -> String {
        self.dir
            .join(kind)
            .join(format!("{name}.yaml"))
            .display()
            .to_string()
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<Snapshot> {
            Ok(Snapshot {
                networks: store.networks()?,
                subnets: store.subnets()?,
                instances: store.ip_instances()?,
                node_infos: store.node_infos()?,
            })
        })
        .await
        .map_err(|e| Error::io("reading the state directory", std::io::Error::other(e)))?
    }

    /// Resolves once the directory's content differs from `since` (a fingerprint);
    /// returns the new fingerprint.
    async fn changed(&self, since: u64) -> u64 {
        loop {
            tokio::time::sleep(self.poll).await;
            let dir = self.dir.clone();
            let now = tokio::task::spawn_blocking(move || fingerprint(&dir))
                .await
                .unwrap_or(since);
            if now != since {
                return now;
            }
        }
    }
}

/// The agent's source of cluster state.
pub enum Source {
    Standalone(Standalone),
    Kube(Box<kube::KubeSource>),
}

/// What a source says after a change: a token to wait for the next one.
pub struct Watermark(u64);

impl Source {
    pub fn mode(&self) -> &'static str {
        match self {
            Source::Standalone(_) => "standalone",
            Source::Kube(_) => "kubernetes",
        }
    }

    pub async fn snapshot(&self) -> Result<Snapshot> {
        match self {
            Source::Standalone(s) => s.snapshot().await,
            Source::Kube(k) => k.snapshot().await,
        }
    }

    /// A checked snapshot: the snapshot, or every problem found in it.
    pub async fn checked_snapshot(&self) -> std::result::Result<Snapshot, String> {
        let snap = self.snapshot().await.map_err(|e| e.to_string())?;
        let problems = match self {
            Source::Standalone(s) => snap.problems(|kind, name| s.path_of(kind, name)),
            Source::Kube(_) => snap.problems(|kind, name| {
                let kind = match kind {
                    "networks" => "Network",
                    _ => "Subnet",
                };
                format!("{kind} {name:?}")
            }),
        };
        if problems.is_empty() {
            Ok(snap)
        } else {
            Err(problems.join("; "))
        }
    }

    pub fn watermark(&self) -> Watermark {
        match self {
            Source::Standalone(s) => Watermark(fingerprint(&s.dir)),
            Source::Kube(k) => Watermark(k.generation()),
        }
    }

    /// Resolves when the cluster state may have changed since `mark`.
    pub async fn changed(&self, mark: &mut Watermark) {
        match self {
            Source::Standalone(s) => mark.0 = s.changed(mark.0).await,
            Source::Kube(k) => mark.0 = k.changed(mark.0).await,
        }
    }

    /// Publishes this node's NodeInfo (replacing the earlier one).
    pub async fn publish_node_info(&self, info: &NodeInfo) -> Result<()> {
        match self {
            Source::Standalone(s) => {
                let current = s.store.node_infos()?;
                if current.iter().any(|n| {
                    n.metadata.name == info.metadata.name
                        && n.spec == info.spec
                        && n.metadata.labels == info.metadata.labels
                }) {
                    return Ok(());
                }
                let store = s.store.clone();
                let info = info.clone();
                tokio::task::spawn_blocking(move || store.put("nodeinfos", &info))
                    .await
                    .map_err(|e| Error::io("writing the NodeInfo", std::io::Error::other(e)))??;
                Ok(())
            }
            Source::Kube(k) => k.publish_node_info(info).await,
        }
    }

    /// Allocates addresses (standalone only: in Kubernetes the controller does).
    pub async fn allocate(&self, req: Request) -> Result<Vec<IPInstance>> {
        match self {
            Source::Standalone(s) => {
                let store = s.store.clone();
                tokio::task::spawn_blocking(move || store.allocate(&req))
                    .await
                    .map_err(|e| Error::io("allocating", std::io::Error::other(e)))?
                    .map_err(Error::from)
            }
            Source::Kube(_) => Err(Error::InvalidRequest(
                "in Kubernetes mode the controller allocates addresses".into(),
            )),
        }
    }

    /// Releases a pod's addresses (standalone only).
    pub async fn release(&self, pod: PodKey) -> Result<Vec<std::net::IpAddr>> {
        match self {
            Source::Standalone(s) => {
                let store = s.store.clone();
                tokio::task::spawn_blocking(move || store.release(&pod))
                    .await
                    .map_err(|e| Error::io("releasing", std::io::Error::other(e)))?
                    .map_err(Error::from)
            }
            Source::Kube(_) => Ok(Vec::new()),
        }
    }
}
