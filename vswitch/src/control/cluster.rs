//! Cluster mode: membership, endpoints and blocks in etcd.
//!
//! Each node registers `<prefix>/nodes/<name>` (underlay IP and L3 blocks) and its L2 endpoints
//! `<prefix>/endpoints/<node>/<network>/<mac>` under a lease it keeps alive, and watches the
//! prefix; every change is applied to the dataplane as it arrives (a watch event, not a poll).
//! A node that dies stops renewing its lease; etcd deletes its keys when the lease expires and
//! every other node removes it — after a grace period of one lease TTL, so that an etcd restart
//! (which can expire and re-create leases) never flaps the dataplane.
//!
//! If etcd is unreachable the dataplane keeps forwarding with what it knows; this thread retries
//! every second and, once connected, publishes again and reconciles from a full read.
//!
//! Runs on its own thread with a single-threaded tokio runtime: async stays off the fast path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};
use vswitch_config::{ClusterConfig, MacAddr};

use super::daemon::{Daemon, PeerSource, PeerSpec};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EndpointRecord {
    ips: Vec<Ipv4Addr>,
}

fn lock(d: &Mutex<Daemon>) -> MutexGuard<'_, Daemon> {
    match d.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Starts the cluster thread.
pub fn spawn(cfg: ClusterConfig, daemon: Arc<Mutex<Daemon>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vswitch-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cluster runtime: {e}");
                    return;
                }
            };
            rt.block_on(run(cfg, daemon));
        })?;
    Ok(())
}

/// What the node last learned from etcd (key → value), and when etcd peers went missing.
struct View {
    kvs: BTreeMap<String, Vec<u8>>,
    /// Peers whose node key disappeared, with the time it did: removed after the grace period.
    missing_since: BTreeMap<String, Instant>,
}

async fn run(cfg: ClusterConfig, daemon: Arc<Mutex<Daemon>>) {
    let me = lock(&daemon).node_name();
    let mut view = View {
        kvs: BTreeMap::new(),
        missing_since: BTreeMap::new(),
    };
    let mut last_lease = None;
    let mut health = EtcdHealth::default();
    loop {
        if let Err(e) = session(&cfg, &daemon, &me, &mut view, &mut last_lease, &mut health).await {
            match health.failed() {
                Some(Change::Lost) => {
                    tracing::warn!(endpoints = ?cfg.etcd_endpoints, "etcd lost: {e}; the dataplane keeps its tables, retrying every second")
                }
                Some(Change::Unreachable) => {
                    tracing::warn!(endpoints = ?cfg.etcd_endpoints, "etcd unreachable: {e}; retrying every second")
                }
                _ => tracing::debug!("etcd still unreachable: {e}"),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// etcd connectivity, so that each change is logged once (not every retry).
#[derive(Debug, Default)]
struct EtcdHealth {
    up: bool,
    ever: bool,
    failing: bool,
    down_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Connected,
    Regained,
    Lost,
    Unreachable,
}

impl EtcdHealth {
    fn connected(&mut self) -> Change {
        let c = if self.ever {
            Change::Regained
        } else {
            Change::Connected
        };
        (self.up, self.ever, self.failing) = (true, true, false);
        c
    }

    /// A session failed: the change to log, if any.
    fn failed(&mut self) -> Option<Change> {
        let c = if self.up {
            Some(Change::Lost)
        } else if !self.ever && !self.failing {
            Some(Change::Unreachable)
        } else {
            None
        };
        if self.up || self.down_since.is_none() {
            self.down_since = Some(Instant::now());
        }
        (self.up, self.failing) = (false, true);
        c
    }

    /// Logs a successful registration.
    fn log_registered(&mut self, lease: i64) {
        match self.connected() {
            Change::Regained => tracing::info!(
                lease,
                down_secs = self.down_since.take().map_or(0, |t| t.elapsed().as_secs()),
                "etcd regained, registered again"
            ),
            _ => tracing::info!(lease, "registered in etcd"),
        }
    }
}

fn key_nodes(cfg: &ClusterConfig) -> String {
    format!("{}/nodes/", cfg.prefix.trim_end_matches('/'))
}

fn key_endpoints(cfg: &ClusterConfig) -> String {
    format!("{}/endpoints/", cfg.prefix.trim_end_matches('/'))
}

/// The keys and values this node should have in etcd right now.
fn desired(cfg: &ClusterConfig, daemon: &Mutex<Daemon>, me: &str) -> BTreeMap<String, String> {
    let (node, eps) = lock(daemon).local_publication();
    let mut out = BTreeMap::new();
    if let Some(spec) = node {
        if let Ok(v) = serde_json::to_string(&spec) {
            out.insert(format!("{}{me}", key_nodes(cfg)), v);
        }
    }
    for (network, mac, ips) in eps {
        if let Ok(v) = serde_json::to_string(&EndpointRecord { ips }) {
            out.insert(format!("{}{me}/{network}/{mac}", key_endpoints(cfg)), v);
        }
    }
    out
}

async fn session(
    cfg: &ClusterConfig,
    daemon: &Arc<Mutex<Daemon>>,
    me: &str,
    view: &mut View,
    last_lease: &mut Option<i64>,
    health: &mut EtcdHealth,
) -> Result<(), etcd_client::Error> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
    let mut client = Client::connect(&cfg.etcd_endpoints, Some(opts)).await?;
    if let Some(old) = last_lease.take() {
        let _ = client.lease_revoke(old).await; // our keys under a lease we no longer renew
    }
    let ttl = cfg.lease_ttl_secs as i64;
    let lease = client.lease_grant(ttl, None).await?.id();
    *last_lease = Some(lease);
    let (mut keeper, mut keepalive) = client.lease_keep_alive(lease).await?;
    health.log_registered(lease);

    let mut published: BTreeMap<String, String> = BTreeMap::new();
    publish(&mut client, cfg, daemon, me, lease, &mut published).await?;

    let prefix = cfg.prefix.trim_end_matches('/').to_string() + "/";
    let all = client
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await?;
    let rev = all.header().map_or(0, |h| h.revision());
    view.kvs = all
        .kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect();
    reconcile(cfg, daemon, me, view);

    let mut watch = client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1),
            ),
        )
        .await?;
    let mut ka_tick = tokio::time::interval(Duration::from_millis(
        (cfg.lease_ttl_secs * 1000 / 3).max(500),
    ));
    let mut pub_tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            _ = ka_tick.tick() => keeper.keep_alive().await?,
            m = keepalive.message() => match m? {
                Some(r) if r.ttl() <= 0 => return Err(etcd_client::Error::LeaseKeepAliveError("lease expired".into())),
                Some(_) => {}
                None => return Err(etcd_client::Error::LeaseKeepAliveError("keep-alive stream closed".into())),
            },
            _ = pub_tick.tick() => {
                publish(&mut client, cfg, daemon, me, lease, &mut published).await?;
                // Grace periods run out on time even when nothing else happens.
                reconcile(cfg, daemon, me, view);
            }
            m = watch.message() => {
                let Some(resp) = m? else {
                    return Err(etcd_client::Error::WatchError("watch stream closed".into()));
                };
                if resp.canceled() {
                    return Err(etcd_client::Error::WatchError("watch canceled".into()));
                }
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    match ev.event_type() {
                        EventType::Put => { view.kvs.insert(key, kv.value().to_vec()); }
                        EventType::Delete => { view.kvs.remove(&key); }
                    }
                }
                reconcile(cfg, daemon, me, view);
            }
        }
    }
}

/// Puts what changed in our publication, deletes what went away.
async fn publish(
    client: &mut Client,
    cfg: &ClusterConfig,
    daemon: &Mutex<Daemon>,
    me: &str,
    lease: i64,
    published: &mut BTreeMap<String, String>,
) -> Result<(), etcd_client::Error> {
    let want = desired(cfg, daemon, me);
    for (k, v) in &want {
        if published.get(k) != Some(v) {
            client
                .put(
                    k.clone(),
                    v.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )
                .await?;
            published.insert(k.clone(), v.clone());
        }
    }
    let gone: Vec<String> = published
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for k in gone {
        client.delete(k.clone(), None).await?;
        published.remove(&k);
    }
    Ok(())
}

/// Makes the dataplane match the view: etcd peers and remote endpoints added, updated, removed.
fn reconcile(cfg: &ClusterConfig, daemon: &Mutex<Daemon>, me: &str, view: &mut View) {
    let nodes_prefix = key_nodes(cfg);
    let eps_prefix = key_endpoints(cfg);
    let mut nodes: BTreeMap<String, PeerSpec> = BTreeMap::new();
    let mut eps: BTreeSet<(String, MacAddr, Option<Ipv4Addr>, String)> = BTreeSet::new();
    for (k, v) in &view.kvs {
        if let Some(name) = k.strip_prefix(&nodes_prefix) {
            if name == me {
                continue;
            }
            match serde_json::from_slice::<PeerSpec>(v) {
                Ok(spec) if spec.name == name => {
                    nodes.insert(name.to_string(), spec);
                }
                _ => tracing::warn!(key = %k, "ignoring malformed node record"),
            }
        } else if let Some(rest) = k.strip_prefix(&eps_prefix) {
            let parts: Vec<&str> = rest.splitn(3, '/').collect();
            let [node, network, mac] = parts[..] else {
                continue;
            };
            if node == me {
                continue;
            }
            let (Ok(mac), Ok(rec)) = (
                mac.parse::<MacAddr>(),
                serde_json::from_slice::<EndpointRecord>(v),
            ) else {
                tracing::warn!(key = %k, "ignoring malformed endpoint record");
                continue;
            };
            eps.insert((
                network.to_string(),
                mac,
                rec.ips.first().copied(),
                node.to_string(),
            ));
        }
    }
    let grace = Duration::from_secs(cfg.lease_ttl_secs);
    let now = Instant::now();
    let mut d = lock(daemon);
    for (name, spec) in &nodes {
        view.missing_since.remove(name);
        if let Err(e) = d.upsert_peer(spec.clone(), PeerSource::Etcd) {
            tracing::warn!(peer = %name, "{e}");
        }
    }
    for name in d.peer_names(PeerSource::Etcd) {
        if nodes.contains_key(&name) {
            continue;
        }
        let since = *view.missing_since.entry(name.clone()).or_insert(now);
        if now.duration_since(since) >= grace {
            view.missing_since.remove(&name);
            d.remove_peer(&name);
        }
    }
    let present: BTreeSet<(String, MacAddr)> =
        eps.iter().map(|(n, m, _, _)| (n.clone(), *m)).collect();
    for (network, mac, node) in d.remote_endpoint_keys() {
        // Keep a missing node's endpoints through its grace period too.
        if !present.contains(&(network.clone(), mac)) && !view.missing_since.contains_key(&node) {
            d.remove_remote_endpoint(&network, mac);
        }
    }
    for (network, mac, ip, node) in eps {
        d.upsert_remote_endpoint(&network, mac, ip, &node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_changes_are_reported_once_each() {
        let mut h = EtcdHealth::default();
        // Down from the start: said once, then quiet while retrying.
        assert_eq!(h.failed(), Some(Change::Unreachable));
        assert_eq!(h.failed(), None);
        assert_eq!(h.connected(), Change::Connected);
        assert_eq!(h.failed(), Some(Change::Lost));
        assert_eq!(h.failed(), None);
        assert_eq!(h.failed(), None);
        assert!(h.down_since.is_some());
        assert_eq!(h.connected(), Change::Regained);
        assert_eq!(h.failed(), Some(Change::Lost));
    }
}
