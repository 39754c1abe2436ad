//! The attachments this node's agent has made: one record per (container id,
//! interface), the CNI spec's key for plugin state (SPEC.md, "Lifecycle & Ordering").
//!
//! A record is written **before** anything is created for an ADD, in phase
//! `pending`, and turned `ready` when the interface, the addresses and the datapath
//! entry are all in place. An agent that dies in between finds the pending record on
//! start and undoes what it names (interface, allocation), so a crash mid-ADD leaks
//! nothing; the runtime saw the ADD fail and will retry or DEL.
//!
//! Records live in `<data-dir>/endpoints/<containerID>@<ifname>.json`, written
//! atomically (temporary file, fsync, rename, fsync of the directory).
use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use rama_cni::api::{AttachResult, AttachmentKey, PodRef};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, state::MacAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Phase {
    /// ADD in progress (or interrupted): nothing may be assumed to exist yet.
    Pending,
    /// Plumbed and in the datapath.
    Ready,
}

/// One attachment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EndpointRecord {
    /// The CNI network configuration's name.
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The pod (namespace/name): the IPAM's owner of the addresses.
    pub pod: PodRef,
    pub phase: Phase,
    /// Host side of the veth.
    pub host_interface: String,
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Whether this agent allocated the addresses (standalone) and so must release
    /// them; in Kubernetes the controller allocates and releases.
    pub allocated_here: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_mac: Option<MacAddr>,
    /// What ADD returned, returned again for a repeated ADD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<AttachResult>,
}

impl EndpointRecord {
    pub fn key(&self) -> AttachmentKey {
        AttachmentKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The records of one node, in a directory.
#[derive(Clone, Debug)]
pub struct EndpointStore {
    dir: PathBuf,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn file_name(key: &AttachmentKey) -> String {
    // Container ids and interface names never contain '@' or '/' (checked by the
    // plugin against the spec's rules, and again here).
    format!("{}@{}.json", key.container_id, key.ifname)
}

fn check_key(key: &AttachmentKey) -> Result<()> {
    let bad = |s: &str| s.is_empty() || s.contains(['/', '@', '\0']) || s == "." || s == "..";
    if bad(&key.container_id) || bad(&key.ifname) {
        return Err(Error::InvalidRequest(format!(
            "attachment {:?}/{:?} is not a valid container id and interface name",
            key.container_id, key.ifname
        )));
    }
    Ok(())
}

impl EndpointStore {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        // Temporaries left by a write that died before its rename. Only here, when
        // the agent starts: later, one may be a concurrent write in flight.
        for entry in std::fs::read_dir(&dir)
            .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &AttachmentKey) -> PathBuf {
        self.dir.join(file_name(key))
    }

    pub fn get(&self, key: &AttachmentKey) -> Result<Option<EndpointRecord>> {
        check_key(key)?;
        let path = self.path(key);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::StateFile {
                    path,
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Writes a record atomically.
    pub fn put(&self, record: &EndpointRecord) -> Result<()> {
        let key = record.key();
        check_key(&key)?;
        let path = self.path(&key);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let body = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::io("encoding a record", std::io::Error::other(e)))?;
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing {}", path.display()), e)
        })
    }

    /// Removes a record; absent is fine.
    pub fn remove(&self, key: &AttachmentKey) -> Result<()> {
        check_key(key)?;
        let path = self.path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| Error::io(format!("syncing {}", self.dir.display()), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("removing {}", path.display()), e)),
        }
    }

    /// Every record, and every file that is not one (named, for the operator; such a
    /// file is left as it is).
    pub fn list(&self) -> Result<(BTreeMap<AttachmentKey, EndpointRecord>, Vec<Error>)> {
        let mut records = BTreeMap::new();
        let mut bad = Vec::new();
        let rd = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(format!("listing {}", self.dir.display()), e))?;
        for entry in rd.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<EndpointRecord>(&b).map_err(|e| e.to_string())
                }) {
                Ok(r) if file_name(&r.key()) == name => {
                    records.insert(r.key(), r);
                }
                Ok(_) => bad.push(Error::StateFile {
                    path,
                    detail: "its container id and interface do not match its name".into(),
                }),
                Err(detail) => bad.push(Error::StateFile { path, detail }),
            }
        }
        Ok((records, bad))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> EndpointRecord {
        EndpointRecord {
            network: "rama".into(),
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: Some("/run/netns/x".into()),
            pod: PodRef {
                namespace: "default".into(),
                name: id.into(),
                uid: None,
            },
            phase: Phase::Pending,
            host_interface: "rama0123456789a".into(),
            mtu: 1500,
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
            ipv6: None,
            allocated_here: true,
            pod_mac: None,
            result: None,
        }
    }

    #[test]
    fn records_round_trip_and_bad_files_are_named_not_deleted() {
        let dir = std::env::temp_dir().join(format!("rama-ep-test-{}", std::process::id()));
        let store = EndpointStore::open(&dir).expect("open");
        let mut r = record("c1");
        store.put(&r).expect("put");
        r.phase = Phase::Ready;
        store.put(&r).expect("replace");
        assert_eq!(store.get(&r.key()).expect("get"), Some(r.clone()));
        std::fs::write(dir.join("junk.json"), b"{").expect("junk");
        let (all, bad) = store.list().expect("list");
        assert_eq!(all.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(bad[0].to_string().contains("junk.json"), "{}", bad[0]);
        assert!(dir.join("junk.json").exists());
        store.remove(&r.key()).expect("remove");
        store.remove(&r.key()).expect("remove again");
        assert_eq!(store.get(&r.key()).expect("get"), None);
        let evil = AttachmentKey {
            container_id: "../x".into(),
            ifname: "eth0".into(),
        };
        assert!(store.get(&evil).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
