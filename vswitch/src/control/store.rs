//! The durable store behind IPAM: a small key/value map that survives restarts and crashes.
//!
//! The single-node store is one JSON file in the state dir, replaced atomically on every commit
//! (write to a temp file, fsync, rename, fsync the directory), so after a crash the file holds
//! either the old or the new state, never a mix. Callers commit before they act on an allocation,
//! which is what makes "no duplicate IP after a crash mid-ADD" hold.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of every state file: allocations, networks and ports name tenants' pods and addresses,
/// which other local users have no business reading.
pub const STATE_FILE_MODE: u32 = 0o600;

/// Replaces `path` with `bytes` atomically and durably: a temp file beside it (mode 0600, even
/// if a stale temp file with a wider mode is left over), fsynced, renamed over `path`, then the
/// directory fsynced so the rename itself survives a power cut. After a crash the file holds the
/// old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(STATE_FILE_MODE)
        .open(&tmp)?;
    // `mode` only applies to a file this call creates.
    f.set_permissions(std::fs::Permissions::from_mode(STATE_FILE_MODE))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// Why the store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A durable string → JSON map.
pub struct FileStore {
    path: PathBuf,
    data: BTreeMap<String, serde_json::Value>,
}

impl FileStore {
    /// Opens (or creates empty) the store at `path`.
    pub fn open(path: &Path) -> Result<FileStore, StoreError> {
        let data = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(StoreError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        Ok(FileStore {
            path: path.to_path_buf(),
            data,
        })
    }

    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.data.get(key)
    }

    /// Entries whose key starts with `prefix`.
    pub fn scan<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a serde_json::Value)> + 'a {
        self.data
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    /// Applies `puts` and `deletes` in one durable commit; on error the in-memory map is unchanged.
    pub fn commit(
        &mut self,
        puts: Vec<(String, serde_json::Value)>,
        deletes: Vec<String>,
    ) -> Result<(), StoreError> {
        let mut next = self.data.clone();
        for k in &deletes {
            next.remove(k);
        }
        for (k, v) in puts {
            next.insert(k, v);
        }
        self.write(&next)?;
        self.data = next;
        Ok(())
    }

    fn write(&self, data: &BTreeMap<String, serde_json::Value>) -> Result<(), StoreError> {
        let werr = |source| StoreError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(data).map_err(|e| werr(std::io::Error::other(e)))?;
        write_atomic(&self.path, &bytes).map_err(werr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_narrows_a_stale_temp_file() {
        let dir = std::env::temp_dir().join(format!("vswitch-atomic-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.json");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, b"old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
        assert!(!tmp.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn commit_persists_and_scan_filters() {
        let dir = std::env::temp_dir().join(format!("vswitch-store-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        let _ = std::fs::remove_file(&path);
        let mut s = FileStore::open(&path).unwrap();
        s.commit(
            vec![
                ("a/1".into(), serde_json::json!(1)),
                ("b/1".into(), serde_json::json!(2)),
            ],
            vec![],
        )
        .unwrap();
        s.commit(
            vec![("a/2".into(), serde_json::json!(3))],
            vec!["b/1".into()],
        )
        .unwrap();
        let s = FileStore::open(&path).unwrap();
        assert_eq!(s.scan("a/").count(), 2);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, STATE_FILE_MODE, "{mode:o}");
        assert!(s.get("b/1").is_none());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            FileStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
