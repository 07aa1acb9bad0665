//! The daemon's side of observability: names for trace records, the full stats snapshot (what
//! `vswitchctl stats` and the metrics endpoint show), synthetic traces.

use std::sync::Arc;

use vswitch_api::{
    ApiError, ErrorKind, FdbCounts, FdbSource, Inject, InjectReply, NetworkStats, PeerStats,
    StatsReply,
};
use vswitch_config::NetworkKind;

use super::{Daemon, PeerSource};
use crate::observe::hub::TraceHub;
use crate::observe::render::NameTable;

impl Daemon {
    /// The daemon's trace hub (the control server starts sessions on it).
    pub fn trace_hub(&self) -> Arc<TraceHub> {
        self.trace.clone()
    }

    /// Names of the dataplane's indices right now.
    pub fn trace_names(&self) -> NameTable {
        let mut t = NameTable::default();
        for n in self.networks.values() {
            t.networks.insert(n.idx, n.conf.name.clone());
        }
        for p in self.ports.values() {
            if let Some(n) = self.networks.get(&p.info.network) {
                t.ports.insert(p.idx, (p.info.id.clone(), n.idx));
            }
        }
        for p in self.peers.values() {
            t.peers.insert(p.idx, p.spec.name.clone());
        }
        t
    }

    /// Fills in everything beyond the port and drop counters.
    pub(super) fn stats_more(&self, mut s: StatsReply) -> StatsReply {
        s.version = env!("CARGO_PKG_VERSION").into();
        s.start_time_secs = self
            .started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        s.uptime_secs = self.started.elapsed().map_or(0.0, |d| d.as_secs_f64());
        for (name, n) in &self.networks {
            let mut fdb = FdbCounts::default();
            for e in self.fdb_show(name).unwrap_or_default() {
                match e.source {
                    FdbSource::Local => fdb.local += 1,
                    FdbSource::Learned => fdb.learned += 1,
                    FdbSource::Etcd => fdb.remote += 1,
                }
            }
            let hosts = 1u64 << (32 - u32::from(n.conf.subnet.prefix_len()));
            s.networks.push(NetworkStats {
                name: name.clone(),
                kind: match n.conf.kind {
                    NetworkKind::L2 => "l2",
                    NetworkKind::L3 => "l3",
                }
                .into(),
                ports: self
                    .ports
                    .values()
                    .filter(|p| &p.info.network == name)
                    .count() as u64,
                fdb,
                remote_endpoints: self
                    .remote_endpoints
                    .keys()
                    .filter(|(net, _)| net == name)
                    .count() as u64,
                ipam_used: self.ipam.used(name).len() as u64,
                // Every host address but the gateway.
                ipam_size: hosts.saturating_sub(3),
            });
        }
        for (name, p) in &self.peers {
            s.peers.push(PeerStats {
                name: name.clone(),
                underlay_ip: Some(p.spec.underlay_ip),
                source: match p.source {
                    PeerSource::Static => "static",
                    PeerSource::Etcd => "etcd",
                }
                .into(),
                up: true,
                endpoints: self
                    .remote_endpoints
                    .values()
                    .filter(|(_, peer)| peer == name)
                    .count() as u64,
            });
        }
        s.trace = self.trace.stats();
        s
    }

    /// The full snapshot (for the metrics endpoint).
    pub fn stats_snapshot(&self) -> StatsReply {
        self.stats()
    }

    /// A synthetic trace runs on the port's worker with `Recorder::dry_run()`.
    pub(super) fn inject(&self, _r: &Inject) -> Result<InjectReply, ApiError> {
        Err(ApiError::new(
            ErrorKind::Unavailable,
            "this dataplane cannot run synthetic traces yet (it needs the traced pipeline)",
        ))
    }
}
