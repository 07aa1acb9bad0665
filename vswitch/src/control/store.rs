//! The durable store behind IPAM: a small key/value map that survives restarts and crashes.
//!
//! The single-node store is one JSON file in the state dir, replaced atomically on every commit
//! (write to a temp file, fsync, rename, fsync the directory), so after a crash the file holds
//! either the old or the new state, never a mix. Callers commit before they act on an allocation,
//! which is what makes "no duplicate IP after a crash mid-ADD" hold.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

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
        let tmp = self.path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(data).map_err(|e| werr(std::io::Error::other(e)))?;
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(werr)?;
        f.write_all(&bytes).map_err(werr)?;
        f.sync_all().map_err(werr)?;
        std::fs::rename(&tmp, &self.path).map_err(werr)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(werr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(s.get("b/1").is_none());
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            FileStore::open(&path),
            Err(StoreError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
