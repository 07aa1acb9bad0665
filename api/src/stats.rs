//! One snapshot of every number the daemon exports: `vswitchctl stats` prints it, the metrics
//! endpoint renders it (vswitchd's `observe::metrics`), so both always show the same numbers.
//!
//! Serialised as the `stats` reply: the first two fields are the reply as it was before, the
//! others default when absent, so old and new clients and daemons understand each other.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Counters of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub id: String,
    pub network: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames received on this port and dropped (any reason).
    pub rx_dropped: u64,
    /// Frames that could not be written to this port (ring full, device gone).
    pub tx_errors: u64,
}

/// FDB entries of a network by where they came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbCounts {
    /// This node's ports (and the gateway).
    pub local: u64,
    /// Learned from traffic.
    pub learned: u64,
    /// Other nodes' endpoints from the datastore or static config.
    pub remote: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkStats {
    pub name: String,
    /// `l2` or `l3`.
    pub kind: String,
    pub ports: u64,
    pub fdb: FdbCounts,
    /// Endpoints of this network on other nodes, known from the datastore.
    pub remote_endpoints: u64,
    /// Addresses the built-in IPAM handed out, and how many it can hand out.
    pub ipam_used: u64,
    pub ipam_size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    pub name: String,
    pub underlay_ip: Option<Ipv4Addr>,
    /// `static` or `etcd`.
    pub source: String,
    /// Known and reachable in the tables (a peer whose lease expired is removed, not down).
    pub up: bool,
    pub endpoints: u64,
}

/// Upper bounds (packets) of the batch-size histogram buckets; the last bucket is `+Inf`.
pub const BATCH_BUCKETS: [u32; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStats {
    pub id: u16,
    pub ports: u64,
    /// Batches handled (a wake-up with work).
    pub batches: u64,
    /// Packets in those batches.
    pub packets: u64,
    /// Time spent handling batches, in nanoseconds.
    pub busy_ns: u64,
    /// Batches per size bucket (`BATCH_BUCKETS`, then one for larger), not cumulative; empty
    /// when the worker does not count them.
    #[serde(default)]
    pub batch_sizes: Vec<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStats {
    /// Trace and capture sessions running.
    pub sessions: u64,
    /// Records dropped because a reader was too slow, over the daemon's lifetime.
    pub records_lost: u64,
}

/// The reply to `stats`: everything, at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    pub ports: Vec<PortStats>,
    /// Drops by reason, over the daemon's lifetime (every reason listed, zero or not).
    pub drops: BTreeMap<String, u64>,
    /// Frames the switch consumed as the protocol's peer (MLD reports, router solicitations,
    /// multicast nobody else listens to): not drops.
    #[serde(default)]
    pub absorbed: BTreeMap<String, u64>,
    #[serde(default)]
    pub version: String,
    /// Unix time the daemon started, and seconds since.
    #[serde(default)]
    pub start_time_secs: f64,
    #[serde(default)]
    pub uptime_secs: f64,
    #[serde(default)]
    pub networks: Vec<NetworkStats>,
    #[serde(default)]
    pub peers: Vec<PeerStats>,
    #[serde(default)]
    pub workers: Vec<WorkerStats>,
    #[serde(default)]
    pub trace: TraceStats,
}

impl WorkerStats {
    /// Share of the daemon's lifetime this worker spent handling batches.
    pub fn busy_ratio(&self, uptime_secs: f64) -> f64 {
        if uptime_secs <= 0.0 {
            return 0.0;
        }
        (self.busy_ns as f64 / 1e9 / uptime_secs).clamp(0.0, 1.0)
    }

    pub fn mean_batch(&self) -> f64 {
        if self.batches == 0 {
            0.0
        } else {
            self.packets as f64 / self.batches as f64
        }
    }
}
