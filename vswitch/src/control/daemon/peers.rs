//! The underlay, other nodes (static or from the datastore) and their endpoints.

use std::sync::Arc;

use std::net::Ipv4Addr;
use vswitch_config::{Ipv4Net, MacAddr, NetworkKind};

use super::{err, Daemon, LocalEndpoint, Peer, PeerSource, PeerSpec};
use crate::control::device;
use crate::dataplane::pipeline::{PeerConf, PeerIdx, UnderlayConf};
use crate::dataplane::worker::Command;
use crate::sys::inet;
use vswitch_api::{ApiError, ErrorKind, PeerInfo};

impl Daemon {
    /// Opens the underlay sockets when this node has an underlay address.
    pub(super) fn start_uplink(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        let Some(local_ip) = self.node.underlay_ip else {
            return Ok(());
        };
        let mtu = match &self.node.underlay_interface {
            Some(i) => Some(
                inet::interface_mtu(i)
                    .with_context(|| format!("read MTU of underlay interface {i}"))?,
            ),
            None => None,
        };
        let up = Arc::new(device::open_uplink(
            local_ip,
            self.node.vxlan_port,
            self.node.underlay_interface.as_deref(),
            self.workers.len(),
        )?);
        if !up.udp_gso {
            tracing::warn!(
                "the kernel lacks UDP_SEGMENT: VXLAN superframes leave one datagram at a time"
            );
        }
        self.underlay_mtu = mtu;
        let underlay = UnderlayConf {
            mtu: mtu.unwrap_or(vswitch_config::DEFAULT_MTU),
        };
        for w in &self.workers {
            w.call(Command::SetUplink {
                uplink: up.clone(),
                underlay,
                poll: w.id == 0,
            })
            .context("attach underlay to worker")?;
        }
        tracing::info!(%local_ip, vxlan_port = self.node.vxlan_port, underlay_mtu = ?mtu, "underlay ready");
        self.uplink = Some(up);
        Ok(())
    }

    /// Adds or updates a peer (static config or datastore) and refreshes every domain's tables.
    pub fn upsert_peer(&mut self, spec: PeerSpec, source: PeerSource) -> Result<(), ApiError> {
        if self.uplink.is_none() {
            return Err(err(
                ErrorKind::InvalidConfig,
                format!(
                    "peer {:?}: this node has no underlay ([node] underlay_ip)",
                    spec.name
                ),
            ));
        }
        if Some(spec.underlay_ip) == self.node.underlay_ip {
            return Ok(()); // ourselves
        }
        if let Some(p) = self.peers.get(&spec.name) {
            if p.spec == spec {
                return Ok(());
            }
        }
        let idx = match self.peers.get(&spec.name) {
            Some(p) => p.idx,
            None => self.free_peers.pop_first().unwrap_or_else(|| {
                self.next_peer += 1;
                self.next_peer - 1
            }),
        };
        let same_subnet = self
            .node
            .underlay_subnet
            .is_some_and(|n| n.contains(&spec.underlay_ip));
        let conf = PeerConf {
            underlay_ip: spec.underlay_ip,
            same_subnet,
        };
        self.broadcast(|| Command::SetPeer { idx, conf })?;
        tracing::info!(peer = %spec.name, ip = %spec.underlay_ip, ?source, same_subnet, "peer up");
        let mac = self.peers.get(&spec.name).and_then(|p| p.mac);
        self.peers.insert(
            spec.name.clone(),
            Peer {
                spec,
                idx,
                source,
                mac,
            },
        );
        self.sync_all_domain_peers();
        Ok(())
    }

    /// Resolves the underlay MACs of peers on this node's segment and hands changes to the
    /// workers (direct routing sends whole frames to them). Called periodically.
    pub fn refresh_peer_macs(&mut self) {
        let (Some(local), Some(subnet)) = (self.node.underlay_ip, self.node.underlay_subnet) else {
            return;
        };
        if self.node.underlay_interface.is_none() {
            return;
        }
        let mut changed = Vec::new();
        for p in self.peers.values_mut() {
            if !subnet.contains(&p.spec.underlay_ip) {
                continue;
            }
            let mac = device::neighbour_mac(p.spec.underlay_ip);
            if mac.is_none() {
                device::probe_neighbour(local, p.spec.underlay_ip);
            }
            if mac != p.mac {
                p.mac = mac;
                changed.push((p.idx, mac));
            }
        }
        for (idx, mac) in changed {
            let _ = self.broadcast(|| Command::SetPeerMac { idx, mac });
        }
    }

    /// Removes a peer (its lease expired, or it left the config).
    pub fn remove_peer(&mut self, name: &str) {
        let Some(p) = self.peers.remove(name) else {
            return;
        };
        let idx = p.idx;
        let _ = self.broadcast(|| Command::RemovePeer { idx });
        self.free_peers.insert(idx);
        self.remote_endpoints.retain(|_, (_, node)| node != name);
        tracing::info!(peer = %name, "peer down");
        self.sync_all_domain_peers();
    }

    pub fn peer_names(&self, source: PeerSource) -> Vec<String> {
        self.peers
            .values()
            .filter(|p| p.source == source)
            .map(|p| p.spec.name.clone())
            .collect()
    }

    pub(super) fn sync_all_domain_peers(&mut self) {
        let names: Vec<String> = self.networks.keys().cloned().collect();
        for n in names {
            self.sync_domain_peers(&n);
        }
    }

    /// Pushes a domain's flood list (L2 with VNI: every peer) and routes (L3: peers' blocks).
    pub(super) fn sync_domain_peers(&mut self, network: &str) {
        let Some(n) = self.networks.get(network) else {
            return;
        };
        if !n.conf.spans_nodes() {
            return;
        }
        let domain = n.idx;
        let peers: Vec<PeerIdx> = match n.conf.kind {
            NetworkKind::L2 => self.peers.values().map(|p| p.idx).collect(),
            NetworkKind::L3 => Vec::new(),
        };
        let routes: Vec<(Ipv4Net, PeerIdx)> = self
            .peers
            .values()
            .flat_map(|p| {
                p.spec
                    .blocks
                    .get(network)
                    .into_iter()
                    .flatten()
                    .map(move |b| (*b, p.idx))
            })
            .collect();
        let _ = self.broadcast(|| Command::SetDomainPeers {
            domain,
            peers: peers.clone(),
            routes: routes.clone(),
        });
    }

    /// An endpoint published by another node (cluster mode).
    pub fn upsert_remote_endpoint(
        &mut self,
        network: &str,
        mac: MacAddr,
        ip: Option<Ipv4Addr>,
        node: &str,
    ) {
        let (Some(n), Some(p)) = (self.networks.get(network), self.peers.get(node)) else {
            return;
        };
        if n.conf.kind != NetworkKind::L2 || n.conf.vni.is_none() {
            return;
        }
        let key = (network.to_string(), mac);
        if self.remote_endpoints.get(&key) == Some(&(ip, node.to_string())) {
            return;
        }
        let (domain, peer) = (n.idx, p.idx);
        let _ = self.broadcast(|| Command::AddRemoteEndpoint {
            domain,
            mac,
            ip,
            peer,
        });
        self.remote_endpoints.insert(key, (ip, node.to_string()));
    }

    pub fn remove_remote_endpoint(&mut self, network: &str, mac: MacAddr) {
        let Some((ip, _)) = self.remote_endpoints.remove(&(network.to_string(), mac)) else {
            return;
        };
        let Some(n) = self.networks.get(network) else {
            return;
        };
        let domain = n.idx;
        let _ = self.broadcast(|| Command::RemoveRemoteEndpoint { domain, mac, ip });
    }

    /// Remote endpoints currently known, for reconciliation: (network, mac, node).
    pub fn remote_endpoint_keys(&self) -> Vec<(String, MacAddr, String)> {
        self.remote_endpoints
            .iter()
            .map(|((n, m), (_, node))| (n.clone(), *m, node.clone()))
            .collect()
    }

    /// What this node publishes in cluster mode: its identity and blocks, and its local L2
    /// endpoints of networks that span nodes.
    pub fn local_publication(&self) -> (Option<PeerSpec>, Vec<LocalEndpoint>) {
        let me = self.node.underlay_ip.map(|ip| PeerSpec {
            name: self.node_name(),
            underlay_ip: ip,
            blocks: self
                .networks
                .values()
                .filter(|n| n.conf.kind == NetworkKind::L3)
                .map(|n| {
                    // Static blocks plus this node's pool blocks and borrowed addresses.
                    let mut b = n.conf.blocks.clone();
                    b.extend(self.pool_routes_for(n.conf.subnet));
                    (n.conf.name.clone(), b)
                })
                .filter(|(_, b)| !b.is_empty())
                .collect(),
        });
        let eps = self
            .ports
            .values()
            .filter(|p| {
                self.networks
                    .get(&p.info.network)
                    .is_some_and(|n| n.conf.kind == NetworkKind::L2 && n.conf.vni.is_some())
            })
            .map(|p| (p.info.network.clone(), p.info.mac, p.info.ips.clone()))
            .collect();
        (me, eps)
    }

    pub fn node_name(&self) -> String {
        self.node.name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "node".into())
        })
    }

    pub(super) fn peer_list(&self) -> Vec<PeerInfo> {
        self.peers
            .values()
            .map(|p| PeerInfo {
                name: p.spec.name.clone(),
                underlay_ip: p.spec.underlay_ip,
                same_subnet: self
                    .node
                    .underlay_subnet
                    .is_some_and(|n| n.contains(&p.spec.underlay_ip)),
                source: match p.source {
                    PeerSource::Static => "static".into(),
                    PeerSource::Etcd => "etcd".into(),
                },
                blocks: p.spec.blocks.clone(),
                endpoints: self
                    .remote_endpoints
                    .values()
                    .filter(|(_, n)| *n == p.spec.name)
                    .count(),
            })
            .collect()
    }
}
