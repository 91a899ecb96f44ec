//! The attachment journal: one small JSON file per container under
//! `<state>/cni/attachments/<id>.json`, written atomically **before** ADD so that DEL can always
//! run from the journal alone (task dead, agent crashed mid-ADD, ...).
//!
//! Entries are replaced atomically (temp + rename) but not fsynced: everything they describe
//! (netns, veth, task) dies with the host, so only an agent crash must be survived — and the
//! page cache survives that. After a host crash a lost or torn entry is harmless: reconcile
//! releases IPAM reservations by owner id and treats an unreadable entry as a pending one.

use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CniError;
use crate::fsutil;

/// Where an attachment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachState {
    /// Intent recorded; ADD may or may not have run (crash window).
    Adding,
    /// ADD succeeded; `ip` and `result` are set.
    Added,
}

/// One container's network attachment, as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    /// The pinned netns (bind mount) the container's spec must name.
    pub netns_path: PathBuf,
    pub ifname: String,
    pub ip: Option<IpAddr>,
    /// Unix seconds.
    pub created_at: i64,
    pub state: AttachState,
    /// The chain's final CNI result (passed as `prevResult` on DEL, like libcni's cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// The journal directory.
#[derive(Debug, Clone)]
pub(crate) struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    pub(crate) fn write(&self, a: &Attachment) -> Result<(), CniError> {
        let path = self.path(&a.container_id);
        let data = serde_json::to_vec_pretty(a).map_err(|source| CniError::Journal {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &data, fsutil::Durability::ProcessCrash)
    }

    pub(crate) fn read(&self, id: &str) -> Result<Option<Attachment>, CniError> {
        let path = self.path(id);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CniError::io("read", path, e)),
        };
        serde_json::from_slice(&data)
            .map(Some)
            .map_err(|source| CniError::Journal { path, source })
    }

    pub(crate) fn exists(&self, id: &str) -> bool {
        self.path(id).exists()
    }

    pub(crate) fn remove(&self, id: &str) -> Result<bool, CniError> {
        fsutil::remove_if_exists(&self.path(id))
    }

    /// Ids of every entry (file names ending in `.json`, temp files skipped).
    pub(crate) fn ids(&self) -> Result<Vec<String>, CniError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CniError::io("list", &self.dir, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CniError::io("list", &self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".json")
                && !id.starts_with('.')
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Every readable entry; entries removed concurrently or unreadable are skipped.
    pub(crate) fn all(&self) -> Result<Vec<Attachment>, CniError> {
        let mut out = Vec::new();
        for id in self.ids()? {
            match self.read(&id) {
                Ok(Some(a)) => out.push(a),
                Ok(None) => {}
                Err(e @ CniError::Journal { .. }) => {
                    tracing::warn!(container_id = %id, error = %e, "skipping unreadable cni journal entry");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::new(dir.path().join("attachments"));
        assert!(j.all().expect("empty ok").is_empty());
        let a = Attachment {
            container_id: "w-1".into(),
            netns_path: "/state/cni/netns/w-1".into(),
            ifname: "eth0".into(),
            ip: None,
            created_at: 42,
            state: AttachState::Adding,
            result: None,
        };
        j.write(&a).expect("write");
        let b = Attachment {
            ip: Some("10.0.0.2".parse().expect("ip")),
            state: AttachState::Added,
            ..a.clone()
        };
        j.write(&b).expect("overwrite");
        assert_eq!(j.read("w-1").expect("read"), Some(b.clone()));
        assert_eq!(j.all().expect("all"), vec![b]);
        assert!(j.remove("w-1").expect("remove"));
        assert!(!j.remove("w-1").expect("remove twice"));
        assert_eq!(j.read("w-1").expect("read"), None);

        fs::write(j.dir().join("torn.json"), b"{\"container_id\": ").expect("torn");
        assert!(matches!(j.read("torn"), Err(CniError::Journal { .. })));
        assert!(j.all().expect("torn entries skipped").is_empty());
        assert_eq!(j.ids().expect("ids"), vec!["torn".to_string()]);
    }
}
