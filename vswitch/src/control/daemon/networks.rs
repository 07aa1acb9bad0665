//! Networks (isolation domains): add, remove, list, and the runtime ones kept in the state dir.

use std::path::Path;

use vswitch_config::{NetworkConfig, NetworkKind};

use super::{err, sys_err, Daemon, Network};
use crate::control::netconf;
use crate::dataplane::pipeline::DomainConf;
use crate::dataplane::worker::Command;
use vswitch_api::{ApiError, Done, ErrorKind, NetworkAdd, NetworkDel, NetworkInfo};

pub(super) const NETWORKS_FILE: &str = "networks.json";

impl Daemon {
    pub(super) fn network_add(&mut self, r: NetworkAdd) -> Result<NetworkInfo, ApiError> {
        let network = r.network;
        network
            .validate("")
            .map_err(|e| err(ErrorKind::InvalidConfig, e.to_string()))?;
        if self.networks.contains_key(&network.name) {
            return Err(err(
                ErrorKind::NetworkExists,
                format!("network {:?} already exists", network.name),
            ));
        }
        let name = network.name.clone();
        self.install_network(network, true)?;
        if let Err(e) = self.persist_networks() {
            self.remove_network(&name);
            return Err(e);
        }
        tracing::info!(network = %name, "network added");
        Ok(self.network_info(&self.networks[&name]))
    }

    pub(super) fn network_del(&mut self, r: NetworkDel) -> Result<Done, ApiError> {
        let name = r.name;
        let n = self.networks.get(&name).ok_or_else(|| {
            err(
                ErrorKind::UnknownNetwork,
                format!("unknown network {name:?}"),
            )
        })?;
        let users = self.network_users(&name);
        if users > 0 {
            return Err(err(
                ErrorKind::NetworkInUse,
                format!("network {name:?} still has {users} port(s)"),
            ));
        }
        let runtime = n.runtime;
        let removed = self.remove_network(&name);
        if runtime {
            if let Err(e) = self.persist_networks() {
                if let Some(n) = removed {
                    let _ = self.install_network(n.conf, true);
                }
                return Err(e);
            }
        }
        tracing::info!(network = %name, "network removed");
        Ok(Done {})
    }

    /// Ports of network `name`, and those being added to it.
    pub(super) fn network_users(&self, name: &str) -> usize {
        self.ports
            .values()
            .map(|p| &p.info)
            .chain(self.reserved.values().map(|r| &r.info))
            .filter(|i| i.network == name)
            .count()
    }

    pub(super) fn network_info(&self, n: &Network) -> NetworkInfo {
        NetworkInfo {
            name: n.conf.name.clone(),
            subnet: n.conf.subnet,
            gateway: n.conf.gateway_ip(),
            gateway_mac: n.conf.gateway_mac(),
            attach: n.conf.attach,
            mtu: n.conf.effective_mtu(self.underlay_mtu),
            ports: self
                .ports
                .values()
                .filter(|p| p.info.network == n.conf.name)
                .count(),
        }
    }

    pub(super) fn network_list(&self) -> Vec<NetworkInfo> {
        self.networks
            .values()
            .map(|n| self.network_info(n))
            .collect()
    }

    pub(super) fn install_network(
        &mut self,
        conf: NetworkConfig,
        runtime: bool,
    ) -> Result<(), ApiError> {
        let idx = self.free_domains.pop_first().unwrap_or_else(|| {
            self.next_domain += 1;
            self.next_domain - 1
        });
        let dc = DomainConf {
            gateway_ip: conf.gateway_ip(),
            gateway_mac: conf.gateway_mac(),
            subnet: conf.subnet,
            kind: conf.kind,
            vni: conf.vni,
            encapsulation: conf.encapsulation,
            mode: conf.mode,
        };
        if conf.spans_nodes() && self.uplink.is_none() {
            return Err(err(
                ErrorKind::InvalidConfig,
                format!(
                    "network {:?} spans nodes but this daemon has no underlay ([node] underlay_ip)",
                    conf.name
                ),
            ));
        }
        let others: Vec<NetworkConfig> = self
            .networks
            .values()
            .map(|n| n.conf.clone())
            .chain([conf.clone()])
            .collect();
        vswitch_config::check_network_set(&others)
            .map_err(|e| err(ErrorKind::InvalidConfig, e.to_string()))?;
        if let Err(e) = self.broadcast(|| Command::AddDomain { idx, conf: dc }) {
            let _ = self.broadcast(|| Command::RemoveDomain { idx });
            self.free_domains.insert(idx);
            return Err(e);
        }
        let name = conf.name.clone();
        if conf.kind == NetworkKind::L3 && conf.spans_nodes() {
            // Directly routed packets for our pods reach this node's kernel too; with
            // ip_forward on (every Kubernetes node) it would route them on out of its default
            // route. A blackhole route per local block stops that, as Calico does for its
            // blocks; vswitch has already taken its copy from the underlay.
            for b in &conf.blocks {
                if let Err(e) = netconf::blackhole(*b, true) {
                    tracing::warn!(network = %name, block = %b, "blackhole route: {e}");
                }
            }
        }
        self.networks
            .insert(name.clone(), Network { conf, idx, runtime });
        self.sync_domain_peers(&name);
        Ok(())
    }

    pub(super) fn remove_network(&mut self, name: &str) -> Option<Network> {
        self.provisional.remove(name);
        let n = self.networks.remove(name)?;
        if n.conf.kind == NetworkKind::L3 && n.conf.spans_nodes() {
            for b in &n.conf.blocks {
                let _ = netconf::blackhole(*b, false);
            }
        }
        let idx = n.idx;
        let _ = self.broadcast(|| Command::RemoveDomain { idx });
        self.free_domains.insert(idx);
        Some(n)
    }

    pub(super) fn persist_networks(&self) -> Result<(), ApiError> {
        let runtime: Vec<&NetworkConfig> = self
            .networks
            .values()
            .filter(|n| n.runtime)
            .map(|n| &n.conf)
            .collect();
        let path = self.cfg.state_dir.join(NETWORKS_FILE);
        let text =
            serde_json::to_string_pretty(&runtime).map_err(|e| sys_err("encode networks", e))?;
        crate::control::store::write_atomic(&path, text.as_bytes())
            .map_err(|e| sys_err(&format!("write {}", path.display()), e))
    }
}

pub(super) fn load_networks(state_dir: &Path) -> anyhow::Result<Vec<NetworkConfig>> {
    use anyhow::Context;
    let path = state_dir.join(NETWORKS_FILE);
    crate::control::store::restrict(&path)
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let nets: Vec<NetworkConfig> =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    for (i, n) in nets.iter().enumerate() {
        n.validate(&format!("{}[{i}].", path.display()))?;
    }
    Ok(nets)
}
