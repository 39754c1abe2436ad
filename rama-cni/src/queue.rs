//! DELs the agent could not take. The spec wants DEL to succeed whenever it can
//! (SPEC.md, "DEL": "plugins should generally complete a DEL action without error even
//! if some resources are missing"), and a runtime whose DEL fails keeps retrying and
//! holds the pod's sandbox; so when the agent is down the plugin records the DEL here
//! and succeeds, and the agent completes every queued DEL when it starts (and on each
//! resync). A DEL is idempotent, so completing one twice is harmless.
//!
//! One file per attachment, `<containerID>@<ifname>.json`, written to a temporary
//! file, fsynced and renamed, in a directory only root can read.
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::api::{API_VERSION, Attachment};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueuedDel {
    pub api_version: u32,
    pub attachment: Attachment,
}

fn file_name(a: &Attachment) -> String {
    // Neither a container id nor an interface name may contain '@' or '/'.
    format!("{}@{}.json", a.container_id, a.ifname)
}

/// Records a DEL for the agent; returns the file written.
pub fn enqueue(dir: &Path, attachment: &Attachment) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let entry = QueuedDel {
        api_version: API_VERSION,
        attachment: attachment.clone(),
    };
    let body = serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?;
    let path = dir.join(file_name(attachment));
    let tmp = dir.join(format!(".tmp-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&body)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Every queued DEL, oldest name first, with the files that could not be read (the
/// agent reports those and leaves them for an operator).
pub fn entries(dir: &Path) -> std::io::Result<Vec<(PathBuf, Result<QueuedDel, String>)>> {
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    for path in paths {
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<QueuedDel>(&b).map_err(|e| e.to_string()));
        out.push((path, parsed));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Selection;

    #[test]
    fn queued_dels_round_trip() {
        let dir = std::env::temp_dir().join(format!("rama-queue-test-{}", std::process::id()));
        let a = Attachment {
            network: "rama".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: None,
            pod: None,
            selection: Selection::default(),
        };
        let path = enqueue(&dir, &a).expect("enqueue");
        assert!(path.ends_with("c1@eth0.json"));
        // Queuing the same DEL twice keeps one entry.
        enqueue(&dir, &a).expect("again");
        std::fs::write(dir.join("junk.json"), b"{").expect("junk");
        let got = entries(&dir).expect("entries");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1.as_ref().expect("parsed").attachment, a);
        assert!(got[1].1.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
