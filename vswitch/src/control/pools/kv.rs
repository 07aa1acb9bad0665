//! The datastore under pool IPAM: a key/value map with etcd's revision semantics.
//!
//! Every key carries the revision of its last write; [`Kv::txn`] applies its writes only if
//! every listed key is still at the revision the caller read (0 = the key must not exist).
//! All IPAM writes go through it, so two nodes racing for the same block or address cannot
//! both win: the loser re-reads and tries again.
//!
//! [`EtcdKv`] is etcd itself (a mod_revision compare in one etcd transaction); [`EmbeddedKv`]
//! gives one node the same semantics from a file in its state dir (each commit durable before
//! it returns, through [`FileStore`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, Txn, TxnOp};

use crate::control::store::FileStore;

/// Why the datastore could not answer.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("embedded store: {0}")]
    Store(String),
}

/// One key with its value and the revision of its last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub rev: i64,
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, String),
    Delete(String),
}

/// A key/value datastore with compare-and-swap transactions.
pub trait Kv: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError>;
    /// Every key under `prefix`, in key order.
    fn list(&self, prefix: &str) -> Result<Vec<Entry>, KvError>;
    /// Applies `ops` atomically if every `(key, rev)` in `cmps` still holds (rev 0: absent).
    /// `Ok(false)`: another writer came first; nothing was written.
    fn txn(&self, cmps: &[(String, i64)], ops: &[Op]) -> Result<bool, KvError>;
}

struct Embedded {
    data: BTreeMap<String, (String, i64)>,
    rev: i64,
    file: Option<FileStore>,
}

/// One node's datastore: a durable file (or memory only, for tests).
pub struct EmbeddedKv(Mutex<Embedded>);

const REV_KEY: &str = "\u{0}rev";

impl EmbeddedKv {
    /// A store that lives only as long as the process (unit tests).
    pub fn memory() -> EmbeddedKv {
        EmbeddedKv(Mutex::new(Embedded {
            data: BTreeMap::new(),
            rev: 0,
            file: None,
        }))
    }

    /// Opens (or creates) the store in file `path`.
    pub fn open(path: &Path) -> Result<EmbeddedKv, KvError> {
        let file = FileStore::open(path).map_err(|e| KvError::Store(e.to_string()))?;
        let rev = file.get(REV_KEY).and_then(|v| v.as_i64()).unwrap_or(0);
        let data = file
            .scan("")
            .filter(|(k, _)| k.as_str() != REV_KEY)
            .filter_map(|(k, v)| {
                Some((
                    k.clone(),
                    (v.get("v")?.as_str()?.to_string(), v.get("r")?.as_i64()?),
                ))
            })
            .collect();
        Ok(EmbeddedKv(Mutex::new(Embedded {
            data,
            rev,
            file: Some(file),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Embedded> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl Kv for EmbeddedKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        Ok(self.lock().data.get(key).map(|(v, r)| Entry {
            key: key.to_string(),
            value: v.clone(),
            rev: *r,
        }))
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, KvError> {
        let g = self.lock();
        Ok(g.data
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (v, r))| Entry {
                key: k.clone(),
                value: v.clone(),
                rev: *r,
            })
            .collect())
    }

    fn txn(&self, cmps: &[(String, i64)], ops: &[Op]) -> Result<bool, KvError> {
        let mut g = self.lock();
        for (k, want) in cmps {
            let have = g.data.get(k).map_or(0, |(_, r)| *r);
            if have != *want {
                return Ok(false);
            }
        }
        let rev = g.rev + 1;
        if let Some(f) = g.file.as_mut() {
            let mut puts = vec![(REV_KEY.to_string(), serde_json::json!(rev))];
            let mut dels = Vec::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => puts.push((k.clone(), serde_json::json!({"v": v, "r": rev}))),
                    Op::Delete(k) => dels.push(k.clone()),
                }
            }
            // Durable first: the in-memory view never runs ahead of the file.
            f.commit(puts, dels)
                .map_err(|e| KvError::Store(e.to_string()))?;
        }
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    g.data.insert(k.clone(), (v.clone(), rev));
                }
                Op::Delete(k) => {
                    g.data.remove(k);
                }
            }
        }
        g.rev = rev;
        Ok(true)
    }
}

/// etcd, through a private single-threaded runtime (callers are plain threads).
pub struct EtcdKv {
    endpoints: Vec<String>,
    rt: tokio::runtime::Runtime,
    client: Mutex<Option<Client>>,
}

impl EtcdKv {
    /// Prepares a client; the connection is made on first use (and again after a failure), so
    /// a daemon starts while etcd is down.
    pub fn new(endpoints: Vec<String>) -> Result<EtcdKv, KvError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| KvError::Etcd(format!("runtime: {e}")))?;
        Ok(EtcdKv {
            endpoints,
            rt,
            client: Mutex::new(None),
        })
    }

    /// Runs `f` with a connected client; drops the connection on failure.
    fn with<T, F, Fut>(&self, f: F) -> Result<T, KvError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut g = match self.client.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let r = self.rt.block_on(async {
            let c = match g.as_ref() {
                Some(c) => c.clone(),
                None => {
                    let opts = ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(2))
                        .with_timeout(Duration::from_secs(5));
                    let c = Client::connect(&self.endpoints, Some(opts)).await?;
                    *g = Some(c.clone());
                    c
                }
            };
            f(c).await
        });
        if r.is_err() {
            *g = None;
        }
        r.map_err(|e| KvError::Etcd(e.to_string()))
    }
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        rev: kv.mod_revision(),
    }
}

impl Kv for EtcdKv {
    fn get(&self, key: &str) -> Result<Option<Entry>, KvError> {
        let key = key.to_string();
        self.with(|mut c| async move {
            let r = c.get(key, None).await?;
            Ok(r.kvs().first().map(entry))
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<Entry>, KvError> {
        let prefix = prefix.to_string();
        self.with(|mut c| async move {
            let r = c.get(prefix, Some(GetOptions::new().with_prefix())).await?;
            Ok(r.kvs().iter().map(entry).collect())
        })
    }

    fn txn(&self, cmps: &[(String, i64)], ops: &[Op]) -> Result<bool, KvError> {
        let cmps: Vec<Compare> = cmps
            .iter()
            .map(|(k, r)| Compare::mod_revision(k.as_str(), CompareOp::Equal, *r))
            .collect();
        let ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(k.as_str(), v.as_str(), None),
                Op::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        self.with(|mut c| async move {
            let r = c.txn(Txn::new().when(cmps).and_then(ops)).await?;
            Ok(r.succeeded())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_cas_and_persistence() {
        let dir = std::env::temp_dir().join(format!("vswitch-kv-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("kv.json");
        let _ = std::fs::remove_file(&path);
        let kv = EmbeddedKv::open(&path).unwrap();
        assert!(kv
            .txn(&[("a".into(), 0)], &[Op::Put("a".into(), "1".into())])
            .unwrap());
        // A second create of the same key loses.
        assert!(!kv
            .txn(&[("a".into(), 0)], &[Op::Put("a".into(), "2".into())])
            .unwrap());
        let a = kv.get("a").unwrap().unwrap();
        assert_eq!(a.value, "1");
        assert!(kv
            .txn(
                &[("a".into(), a.rev)],
                &[
                    Op::Put("a".into(), "3".into()),
                    Op::Put("b/x".into(), "4".into())
                ]
            )
            .unwrap());
        assert!(!kv
            .txn(&[("a".into(), a.rev)], &[Op::Delete("a".into())])
            .unwrap());
        drop(kv);
        let kv = EmbeddedKv::open(&path).unwrap();
        assert_eq!(kv.get("a").unwrap().unwrap().value, "3");
        assert_eq!(kv.list("b/").unwrap().len(), 1);
        let rev = kv.get("a").unwrap().unwrap().rev;
        assert!(kv
            .txn(&[("a".into(), rev)], &[Op::Delete("a".into())])
            .unwrap());
        assert!(kv.get("a").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
