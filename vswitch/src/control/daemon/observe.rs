//! The daemon's side of observability: names for trace records, the full stats snapshot (what
//! `vswitchctl stats` and the metrics endpoint show), synthetic traces.

use std::sync::Arc;

use vswitch_api::{
    ApiError, ErrorKind, FdbCounts, FdbSource, Inject, InjectReply, NetworkStats, PeerStats,
    StatsReply,
};
use vswitch_config::NetworkKind;

use std::net::IpAddr;

use vswitch_config::MacAddr;

use super::{Daemon, PeerSource};
use crate::dataplane::fdb::PortIdx;
use crate::dataplane::worker::Command;
use crate::observe::hub::{Record, TraceHub};
use crate::observe::inject::{DryRun, InjectDefaults};
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
        for w in &self.workers {
            let st = &w.stats;
            let load =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            s.workers.push(vswitch_api::WorkerStats {
                id: w.id as u16,
                ports: self
                    .ports
                    .values()
                    .filter(|p| p.info.worker == w.id)
                    .count() as u64,
                batches: load(&st.busy_turns),
                packets: load(&st.rx_frames),
                busy_ns: load(&st.busy_ns),
                batch_sizes: Vec::new(),
            });
        }
        s.trace = self.trace.stats();
        s
    }

    /// The full snapshot (for the metrics endpoint).
    pub fn stats_snapshot(&self) -> StatsReply {
        self.stats()
    }

    /// A synthetic trace: built or decoded frames, each run on the port's worker with
    /// `Recorder::dry_run()` (nothing sent, learned or counted).
    pub(super) fn inject(&self, r: &Inject) -> Result<InjectReply, ApiError> {
        crate::observe::inject::serve(r, self).map_err(|m| ApiError::new(ErrorKind::BadRequest, m))
    }
}

impl DryRun for Daemon {
    fn port(&self, id: &str) -> Option<(PortIdx, InjectDefaults)> {
        let p = self.ports.get(id)?;
        let n = self.networks.get(&p.info.network)?;
        let mut neighbours: Vec<(IpAddr, MacAddr)> = Vec::new();
        for q in self
            .ports
            .values()
            .filter(|q| q.info.network == p.info.network)
        {
            neighbours.extend(q.info.ips.iter().map(|ip| (IpAddr::V4(*ip), q.info.mac)));
        }
        for ((net, mac), (ip, _)) in &self.remote_endpoints {
            if net == &p.info.network {
                if let Some(ip) = ip {
                    neighbours.push((IpAddr::V4(*ip), *mac));
                }
            }
        }
        // An L3 network routes everything through the gateway.
        if n.conf.kind == NetworkKind::L3 {
            neighbours.clear();
        }
        Some((
            p.idx,
            InjectDefaults {
                port_mac: p.info.mac,
                port_ipv4: p.info.ips.first().copied(),
                gateway_mac: n.conf.gateway_mac(),
                neighbours,
            },
        ))
    }

    fn run(&self, port: PortIdx, frame: Vec<u8>) -> Result<Record, String> {
        let p = self
            .ports
            .values()
            .find(|p| p.idx == port)
            .ok_or("the port went away")?;
        let w = self
            .workers
            .get(p.info.worker)
            .ok_or("the port's worker is gone")?;
        let (tx, rx) = std::sync::mpsc::channel();
        w.call(Command::DryRun {
            port,
            frame,
            reply: tx,
        })
        .map_err(|e| e.to_string())?;
        rx.try_recv()
            .map_err(|_| "the worker gave no record".to_string())
    }

    fn names(&self) -> NameTable {
        self.trace_names()
    }
}
