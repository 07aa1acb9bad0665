//! The daemon's state: networks (domains), ports and workers, and every API operation on them.
//!
//! Each operation validates everything before it touches anything, and undoes what it did if a
//! later step fails, so a failed request leaves no interface, table entry or file behind.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use vswitch_config::{
    is_host_of, validate_ifname, validate_name, DaemonConfig, Ipv4Net, MacAddr, NetworkConfig,
    NetworkKind, NodeConfig, RouteSpec,
};

use super::device;
use super::ipam::{Ipam, IpamError};
use super::netconf::{self, PodIfConfig};
use crate::dataplane::fdb::{EntryKind, PortIdx};
use crate::dataplane::pipeline::{
    Dest, DomainConf, DomainIdx, PeerConf, PeerIdx, PortConf, UnderlayConf,
};
use crate::dataplane::port::PortDev;
use crate::dataplane::underlay::Uplink;
use crate::dataplane::worker::{Command, WorkerHandle};
use crate::dataplane::PortCounters;
use crate::sys::inet;
use vswitch_api::{
    answer, ApiError, CniAdd, CniAddReply, CniAddr, CniAttachment, CniAttachmentId, CniCheckReply,
    CniGcReply, CniIpam, Done, ErrorKind, FdbEntryInfo, FdbEntryKind, FdbSource, IpamAllocation,
    NetworkAdd, NetworkDel, NetworkInfo, PeerInfo, PingReply, PortAdd, PortInfo, PortStats, Reply,
    Request, StatsReply,
};

mod observe;

const NETWORKS_FILE: &str = "networks.json";

struct Network {
    conf: NetworkConfig,
    idx: DomainIdx,
    /// Added through the API (persisted in the state dir) rather than the config file.
    runtime: bool,
}

struct Port {
    info: PortInfo,
    idx: PortIdx,
    netns: PathBuf,
    /// One set per worker (each worker counts what it handled).
    counters: Vec<Arc<PortCounters>>,
    /// AF_PACKET: frames the kernel dropped in front of the socket so far.
    kernel_drops: std::sync::atomic::AtomicU64,
    /// Keeps the device open; dropping the last reference closes it (a tap then disappears).
    dev: Option<PortDev>,
}

pub struct Daemon {
    cfg: DaemonConfig,
    networks: BTreeMap<String, Network>,
    ports: BTreeMap<String, Port>,
    workers: Vec<WorkerHandle>,
    free_domains: BTreeSet<DomainIdx>,
    next_domain: DomainIdx,
    free_ports: BTreeSet<PortIdx>,
    next_port: PortIdx,
    link_counter: u32,
    ipam: Ipam,
    /// Routes installed for CNI attachments (returned again on a retried ADD).
    port_routes: BTreeMap<String, Vec<RouteSpec>>,
    /// MTU of the underlay interface (pod MTU defaults derive from it).
    underlay_mtu: Option<u16>,
    uplink: Option<Arc<Uplink>>,
    node: NodeConfig,
    peers: BTreeMap<String, Peer>,
    free_peers: BTreeSet<PeerIdx>,
    next_peer: PeerIdx,
    /// Endpoints of other nodes from the datastore: (network, mac) → (ip, peer name).
    remote_endpoints: BTreeMap<(String, MacAddr), (Option<Ipv4Addr>, String)>,
    /// Trace and capture sessions (see `observe`).
    trace: Arc<crate::observe::hub::TraceHub>,
    started: std::time::SystemTime,
}

/// Where a peer's record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSource {
    Static,
    Etcd,
}

/// Another node, as configured statically or published in the datastore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    pub name: String,
    pub underlay_ip: Ipv4Addr,
    /// L3 pod blocks it serves, by network.
    #[serde(default)]
    pub blocks: BTreeMap<String, Vec<Ipv4Net>>,
}

/// A local endpoint published in cluster mode: (network, MAC, IPs).
pub type LocalEndpoint = (String, MacAddr, Vec<Ipv4Addr>);

struct Peer {
    spec: PeerSpec,
    idx: PeerIdx,
    source: PeerSource,
    /// Its underlay MAC, for peers on our segment (direct routing through AF_PACKET).
    mac: Option<MacAddr>,
}

fn err(kind: ErrorKind, msg: impl Into<String>) -> ApiError {
    ApiError::new(kind, msg)
}

fn sys_err(what: &str, e: impl std::fmt::Display) -> ApiError {
    err(ErrorKind::System, format!("{what}: {e}"))
}

fn random_mac() -> MacAddr {
    let mut b = [0u8; 6];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        return MacAddr::local_from_seed(t ^ u64::from(std::process::id()));
    }
    b[0] = (b[0] & 0xfe) | 0x02;
    MacAddr(b)
}

impl Daemon {
    /// Starts the workers and loads networks from the config and the state dir.
    pub fn start(cfg: DaemonConfig) -> anyhow::Result<Daemon> {
        use anyhow::Context;
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("create state_dir {}", cfg.state_dir.display()))?;
        let trace = crate::observe::hub::TraceHub::new();
        let workers = device::spawn_workers(&cfg, &trace).context("start workers")?;
        tracing::info!(
            workers = workers.len(),
            io = workers.first().map_or("none", |w| w.io.name()),
            "dataplane workers started"
        );
        if workers.len() > 1 {
            // Each worker sees only its own ports' MLD reports: reported groups are flooded.
            for w in &workers {
                w.call(Command::SetMldSnooping(false))
                    .context("configure worker")?;
            }
        }
        let mut d = Daemon {
            cfg: cfg.clone(),
            networks: BTreeMap::new(),
            ports: BTreeMap::new(),
            workers,
            free_domains: BTreeSet::new(),
            next_domain: 0,
            free_ports: BTreeSet::new(),
            next_port: 0,
            link_counter: 0,
            ipam: Ipam::open(&cfg.state_dir).map_err(|e| anyhow::anyhow!("{e}"))?,
            port_routes: BTreeMap::new(),
            underlay_mtu: None,
            uplink: None,
            node: cfg.node.clone().unwrap_or_default(),
            peers: BTreeMap::new(),
            free_peers: BTreeSet::new(),
            next_peer: 0,
            remote_endpoints: BTreeMap::new(),
            trace,
            started: std::time::SystemTime::now(),
        };
        d.start_uplink()?;
        for p in &cfg.peers {
            let spec = PeerSpec {
                name: p.name.clone(),
                underlay_ip: p.underlay_ip,
                blocks: p.blocks.clone(),
            };
            d.upsert_peer(spec, PeerSource::Static)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for n in cfg.networks {
            d.install_network(n, false)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for n in load_networks(&cfg.state_dir)? {
            if d.networks.contains_key(&n.name) {
                tracing::warn!(network = %n.name, "network in {NETWORKS_FILE} is also in the config file; using the config file's");
                continue;
            }
            d.install_network(n, true)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(d)
    }

    /// Removes every port (so no veth is left behind) and stops the workers.
    pub fn shutdown(&mut self) {
        let ids: Vec<String> = self.ports.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.port_del(&id) {
                tracing::warn!(port = %id, "removing port at shutdown: {e}");
            }
        }
        for w in std::mem::take(&mut self.workers) {
            w.shutdown();
        }
    }

    /// Answers one request; the reply's type is the request's (`vswitch_api::Call`).
    pub fn handle(&mut self, req: Request) -> Reply {
        match req {
            Request::Ping(r) => answer(r, |_| {
                Ok(PingReply {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    workers: self.workers.len(),
                    io: self
                        .workers
                        .first()
                        .map_or("none", |w| w.io.name())
                        .to_string(),
                })
            }),
            Request::NetworkList(r) => answer(r, |_| Ok(self.network_list())),
            Request::NetworkAdd(r) => answer(r, |r| self.network_add(r)),
            Request::NetworkDel(r) => answer(r, |r| self.network_del(r)),
            Request::PortAdd(r) => answer(r, |r| self.port_add(r, None)),
            Request::PortDel(r) => answer(r, |r| self.port_del(&r.id).map(|_| Done {})),
            Request::PortList(r) => answer(r, |_| {
                Ok(self.ports.values().map(|p| p.info.clone()).collect())
            }),
            Request::FdbShow(r) => answer(r, |r| self.fdb_show(&r.network)),
            Request::Stats(r) => answer(r, |_| Ok(self.stats())),
            Request::Trace(r) => answer(r, |_| {
                Err(err(
                    ErrorKind::BadRequest,
                    "trace streams on its own connection (the control server serves it)",
                ))
            }),
            Request::Inject(r) => answer(r, |r| self.inject(&r)),
            Request::CniAdd(r) => answer(r, |r| self.cni_add(r)),
            Request::CniDel(r) => answer(r, |r| self.cni_del(&r.0).map(|_| Done {})),
            Request::CniCheck(r) => answer(r, |r| self.cni_check(&r.0)),
            Request::CniGc(r) => answer(r, |r| self.cni_gc(&r.domain, &r.valid)),
            Request::PeerList(r) => answer(r, |_| Ok(self.peer_list())),
            Request::IpamShow(r) => answer(r, |r| {
                Ok(self
                    .ipam
                    .attachments(&r.domain)
                    .into_iter()
                    .map(|(container_id, ifname, ips)| IpamAllocation {
                        container_id,
                        ifname,
                        ips,
                    })
                    .collect())
            }),
        }
    }

    fn network_add(&mut self, r: NetworkAdd) -> Result<NetworkInfo, ApiError> {
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

    fn network_del(&mut self, r: NetworkDel) -> Result<Done, ApiError> {
        let name = r.name;
        let n = self.networks.get(&name).ok_or_else(|| {
            err(
                ErrorKind::UnknownNetwork,
                format!("unknown network {name:?}"),
            )
        })?;
        let users = self
            .ports
            .values()
            .filter(|p| p.info.network == name)
            .count();
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

    fn network_info(&self, n: &Network) -> NetworkInfo {
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

    fn network_list(&self) -> Vec<NetworkInfo> {
        self.networks
            .values()
            .map(|n| self.network_info(n))
            .collect()
    }

    fn broadcast(&self, make: impl Fn() -> Command) -> Result<(), ApiError> {
        for w in &self.workers {
            w.call(make()).map_err(|e| sys_err("update worker", e))?;
        }
        Ok(())
    }

    fn install_network(&mut self, conf: NetworkConfig, runtime: bool) -> Result<(), ApiError> {
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
                if let Err(e) = netconf::ip(&["route", "replace", "blackhole", &b.to_string()]) {
                    tracing::warn!(network = %name, block = %b, "blackhole route: {e}");
                }
            }
        }
        self.networks
            .insert(name.clone(), Network { conf, idx, runtime });
        self.sync_domain_peers(&name);
        Ok(())
    }

    fn remove_network(&mut self, name: &str) -> Option<Network> {
        let n = self.networks.remove(name)?;
        if n.conf.kind == NetworkKind::L3 && n.conf.spans_nodes() {
            for b in &n.conf.blocks {
                let _ = netconf::ip(&["route", "del", "blackhole", &b.to_string()]);
            }
        }
        let idx = n.idx;
        let _ = self.broadcast(|| Command::RemoveDomain { idx });
        self.free_domains.insert(idx);
        Some(n)
    }

    fn persist_networks(&self) -> Result<(), ApiError> {
        let runtime: Vec<&NetworkConfig> = self
            .networks
            .values()
            .filter(|n| n.runtime)
            .map(|n| &n.conf)
            .collect();
        let path = self.cfg.state_dir.join(NETWORKS_FILE);
        let tmp = path.with_extension("json.tmp");
        let text =
            serde_json::to_string_pretty(&runtime).map_err(|e| sys_err("encode networks", e))?;
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| sys_err(&format!("write {}", path.display()), e))
    }

    fn next_link_name(&mut self, kind: &str) -> String {
        self.link_counter = self.link_counter.wrapping_add(1);
        format!(
            "{kind}{:04x}{:06x}",
            std::process::id() & 0xffff,
            self.link_counter & 0xff_ffff
        )
    }

    fn validate_port(&self, r: &PortAdd, id: &str) -> Result<MacAddr, ApiError> {
        let bad = |m: String| err(ErrorKind::BadRequest, m);
        validate_ifname(&r.ifname).map_err(|m| bad(format!("ifname: {m}")))?;
        validate_name(&r.network).map_err(|m| bad(format!("network: {m}")))?;
        if r.netns.is_empty() {
            return Err(bad("netns: must not be empty".into()));
        }
        if self.ports.contains_key(id) {
            return Err(err(
                ErrorKind::PortExists,
                format!("port {id:?} already exists"),
            ));
        }
        let net = self.networks.get(&r.network).ok_or_else(|| {
            err(
                ErrorKind::UnknownNetwork,
                format!("unknown network {:?}", r.network),
            )
        })?;
        let subnet = net.conf.subnet;
        let gw = net.conf.gateway_ip();
        let peers: Vec<&Port> = self
            .ports
            .values()
            .filter(|p| p.info.network == r.network)
            .collect();
        let mut seen = BTreeSet::new();
        for ip in &r.ips {
            if !is_host_of(subnet, *ip) {
                return Err(err(
                    ErrorKind::AddressConflict,
                    format!(
                        "ip {ip} is not a host address in subnet {subnet} of network {:?}",
                        r.network
                    ),
                ));
            }
            if *ip == gw {
                return Err(err(
                    ErrorKind::AddressConflict,
                    format!("ip {ip} is the gateway of network {:?}", r.network),
                ));
            }
            let blocks = &net.conf.blocks;
            if net.conf.kind == NetworkKind::L3
                && !blocks.is_empty()
                && !blocks.iter().any(|b| b.contains(ip))
            {
                return Err(err(
                    ErrorKind::AddressConflict,
                    format!(
                        "ip {ip} is outside this node's blocks {blocks:?} of L3 network {:?}",
                        r.network
                    ),
                ));
            }
            if !seen.insert(*ip) {
                return Err(err(
                    ErrorKind::AddressConflict,
                    format!("ip {ip} is requested twice"),
                ));
            }
            if let Some(p) = peers.iter().find(|p| p.info.ips.contains(ip)) {
                return Err(err(
                    ErrorKind::AddressConflict,
                    format!(
                        "ip {ip} is already used by port {:?} in network {:?}",
                        p.info.id, r.network
                    ),
                ));
            }
        }
        for rt in &r.routes {
            if let Some(via) = rt.via {
                if !is_host_of(subnet, via) {
                    return Err(bad(format!(
                        "route {}: next hop {via} is not in subnet {subnet}",
                        rt.dst
                    )));
                }
            }
        }
        let mac = match r.mac {
            Some(m) => {
                if !m.is_valid_unicast() {
                    return Err(bad(format!("mac: {m} is not a unicast address")));
                }
                if m == net.conf.gateway_mac() || peers.iter().any(|p| p.info.mac == m) {
                    return Err(err(
                        ErrorKind::AddressConflict,
                        format!("mac {m} is already used in network {:?}", r.network),
                    ));
                }
                m
            }
            None => loop {
                let m = random_mac();
                if m != net.conf.gateway_mac() && !peers.iter().any(|p| p.info.mac == m) {
                    break m;
                }
            },
        };
        let ns = netconf::netns_path(&r.netns);
        if !ns.exists() {
            return Err(err(
                ErrorKind::NetnsNotFound,
                format!(
                    "netns {:?} not found ({} does not exist)",
                    r.netns,
                    ns.display()
                ),
            ));
        }
        Ok(mac)
    }

    fn port_add(&mut self, r: PortAdd, container_id: Option<String>) -> Result<PortInfo, ApiError> {
        let id =
            r.id.clone()
                .unwrap_or_else(|| format!("{}:{}", r.netns, r.ifname));
        if id.is_empty() || id.len() > 255 || id.contains(char::is_whitespace) {
            return Err(err(
                ErrorKind::BadRequest,
                format!("id: {id:?} must be 1 to 255 characters without spaces"),
            ));
        }
        let mac = self.validate_port(&r, &id)?;
        let net = &self.networks[&r.network];
        let (conf, domain) = (net.conf.clone(), net.idx);
        let mtu = conf.effective_mtu(self.underlay_mtu);
        let ns = netconf::netns_path(&r.netns);

        fn pod_if<'a>(
            tmp: &'a str,
            r: &'a PortAdd,
            mac: MacAddr,
            conf: &'a NetworkConfig,
            mtu: u16,
        ) -> PodIfConfig<'a> {
            PodIfConfig {
                tmp_name: tmp,
                ifname: &r.ifname,
                mac,
                mtu,
                subnet: conf.subnet,
                ips: &r.ips,
                gateway: conf.gateway_ip(),
                routes: &r.routes,
            }
        }
        // Create the device and configure the pod side; on failure undo and report.
        let attach = r.attach.unwrap_or(conf.attach);
        let (io, host_ifname) = match attach {
            vswitch_config::AttachKind::Tap => {
                let tmp = self.next_link_name("vst");
                // Created inside the pod's namespace: no device move needed afterwards.
                let tap = device::open_tap(&ns, &tmp, conf.offloads)
                    .map_err(|e| {
                        err(
                            ErrorKind::NetnsNotFound,
                            format!("enter netns {:?}: {e}", r.netns),
                        )
                    })?
                    .map_err(|e| sys_err("create tap", e))?;
                if let Err(e) = netconf::configure_in(&ns, &pod_if(&tmp, &r, mac, &conf, mtu)) {
                    drop(tap); // closing the fd removes the tap wherever it is
                    return Err(pod_if_err(&r, e));
                }
                (tap, r.ifname.clone())
            }
            vswitch_config::AttachKind::AfPacket => {
                let host = self.next_link_name("vsh");
                let peer = self.next_link_name("vsp");
                netconf::create_host_veth(&host, &peer, mtu, &ns)
                    .map_err(|e| sys_err("create veth", e))?;
                let opened = netconf::configure_in(&ns, &pod_if(&peer, &r, mac, &conf, mtu))
                    .map_err(|e| pod_if_err(&r, e))
                    .and_then(|_| {
                        device::open_packet(&host).map_err(|e| sys_err("open AF_PACKET socket", e))
                    });
                match opened {
                    Ok(s) => (s, host),
                    Err(e) => {
                        netconf::delete_link(&host);
                        return Err(e);
                    }
                }
            }
        };
        let dev = io;
        let idx = self.free_ports.pop_first().unwrap_or_else(|| {
            self.next_port += 1;
            self.next_port - 1
        });
        let owner = self.least_loaded_worker();
        let counters: Vec<Arc<PortCounters>> = self
            .workers
            .iter()
            .map(|_| Arc::new(PortCounters::default()))
            .collect();
        let pconf = PortConf {
            domain,
            mac,
            ips: r.ips.clone(),
            ips6: Vec::new(),
            router: r.router,
            max_frame: usize::from(mtu) + crate::packet::ethernet::HEADER_LEN,
        };
        let mut installed = Ok(());
        for w in &self.workers {
            installed = w.call(Command::AddPort {
                idx,
                conf: pconf.clone(),
                dev: dev.clone(),
                counters: counters[w.id].clone(),
                poll: w.id == owner,
            });
            if installed.is_err() {
                break;
            }
        }
        let info = PortInfo {
            id: id.clone(),
            network: r.network.clone(),
            netns: r.netns.clone(),
            ifname: r.ifname.clone(),
            host_ifname,
            attach,
            mac,
            ips: r.ips.clone(),
            mtu,
            worker: owner,
            container_id,
        };
        let port = Port {
            info: info.clone(),
            idx,
            netns: ns,
            counters,
            kernel_drops: Default::default(),
            dev: Some(dev),
        };
        if let Err(e) = installed {
            self.ports.insert(id.clone(), port);
            let _ = self.port_del(&id);
            return Err(sys_err("install port", e));
        }
        if let Some(w) = self.workers.get(owner) {
            let _ = w.call(Command::Announce { idx });
        }
        tracing::info!(port = %id, network = %r.network, %attach, %mac, ips = ?r.ips, "port added");
        self.ports.insert(id, port);
        Ok(info)
    }

    fn least_loaded_worker(&self) -> usize {
        (0..self.workers.len())
            .min_by_key(|w| self.ports.values().filter(|p| p.info.worker == *w).count())
            .unwrap_or(0)
    }

    fn port_del(&mut self, id: &str) -> Result<(), ApiError> {
        let mut p = self
            .ports
            .remove(id)
            .ok_or_else(|| err(ErrorKind::UnknownPort, format!("unknown port {id:?}")))?;
        let idx = p.idx;
        // Workers first (they drop their references), then the device.
        let res = self.broadcast(|| Command::RemovePort { idx });
        drop(p.dev.take());
        match p.info.attach {
            vswitch_config::AttachKind::Tap => {}
            vswitch_config::AttachKind::AfPacket => {
                netconf::delete_link(&p.info.host_ifname);
                netconf::delete_link_in(&p.netns, &p.info.ifname);
            }
        }
        self.free_ports.insert(idx);
        tracing::info!(port = %id, "port removed");
        res
    }

    fn cni_port_id(container_id: &str, ifname: &str) -> String {
        format!("{container_id}/{ifname}")
    }

    /// CNI ADD: network on first use, addresses (durably assigned before any interface exists),
    /// then the port. A failure undoes every step taken for this request.
    fn cni_add(&mut self, r: CniAdd) -> Result<CniAddReply, ApiError> {
        validate_name(&r.domain)
            .map_err(|m| err(ErrorKind::InvalidConfig, format!("domain: {m}")))?;
        let id = Self::cni_port_id(&r.container_id, &r.ifname);
        // A retried ADD of an attachment that exists returns what it has.
        if let Some(p) = self.ports.get(&id) {
            if p.info.network == r.domain {
                let info = p.info.clone();
                let subnet = self.networks[&r.domain].conf.subnet;
                let gw = self.networks[&r.domain].conf.gateway_ip();
                let addrs = info
                    .ips
                    .iter()
                    .map(|ip| CniAddr {
                        ip: *ip,
                        prefix: subnet.prefix_len(),
                        gateway: Some(gw),
                    })
                    .collect();
                let routes = self.port_routes.get(&id).cloned().unwrap_or_default();
                return Ok(CniAddReply {
                    port: info,
                    addrs,
                    routes,
                });
            }
            return Err(err(
                ErrorKind::PortExists,
                format!("attachment {id} exists in network {:?}", p.info.network),
            ));
        }
        // Addresses first (durable), then the network they imply.
        let (addrs, routes, fresh_alloc) = match &r.ipam {
            CniIpam::Builtin { plan, requested } => {
                let had = self
                    .ipam
                    .attachments(&r.domain)
                    .iter()
                    .any(|(c, i, _)| *c == r.container_id && *i == r.ifname);
                let assigned = self
                    .ipam
                    .assign(&r.domain, &r.container_id, &r.ifname, plan, requested)
                    .map_err(ipam_err)?;
                let addrs: Vec<CniAddr> = assigned
                    .iter()
                    .map(|a| CniAddr {
                        ip: a.ip,
                        prefix: a.range.subnet.prefix_len(),
                        gateway: Some(a.range.gateway),
                    })
                    .collect();
                let gw = addrs.first().and_then(|a| a.gateway);
                let routes: Vec<RouteSpec> = plan
                    .routes
                    .iter()
                    .map(|(dst, via)| RouteSpec {
                        dst: *dst,
                        via: via.or(gw),
                    })
                    .collect();
                (addrs, routes, !had)
            }
            CniIpam::Fixed { addrs, routes } => (addrs.clone(), routes.clone(), false),
        };
        let undo_alloc = |me: &mut Self| {
            if fresh_alloc {
                let _ = me.ipam.release(&r.domain, &r.container_id, &r.ifname);
            }
        };
        let Some(first) = addrs.first().copied() else {
            undo_alloc(self);
            return Err(err(
                ErrorKind::InvalidConfig,
                "IPAM returned no IPv4 address",
            ));
        };
        let mut created_network = false;
        if !self.networks.contains_key(&r.domain) {
            let subnet = Ipv4Net::new(first.ip, first.prefix)
                .map(|n| n.trunc())
                .map_err(|e| {
                    err(
                        ErrorKind::InvalidConfig,
                        format!("prefix /{}: {e}", first.prefix),
                    )
                })?;
            let mut conf = NetworkConfig::new(&r.domain, subnet);
            conf.gateway = first.gateway;
            conf.attach = r.attach.unwrap_or_default();
            if let Some(m) = r.mtu {
                conf.mtu = Some(m);
            }
            if let Err(e) = conf.validate("") {
                undo_alloc(self);
                return Err(err(ErrorKind::InvalidConfig, e.to_string()));
            }
            if let Err(e) = self.install_network(conf, true) {
                undo_alloc(self);
                return Err(e);
            }
            created_network = true;
        }
        let req = PortAdd {
            id: Some(id.clone()),
            netns: r.netns.clone(),
            network: r.domain.clone(),
            ifname: r.ifname.clone(),
            mac: r.mac,
            ips: addrs.iter().map(|a| a.ip).collect(),
            routes: routes.clone(),
            attach: r.attach,
            router: false,
        };
        let added = self
            .port_add(req, Some(r.container_id.clone()))
            .and_then(|info| {
                if created_network {
                    self.persist_networks()?;
                }
                Ok(info)
            });
        match added {
            Ok(info) => {
                self.port_routes.insert(id, routes.clone());
                Ok(CniAddReply {
                    port: info,
                    addrs,
                    routes,
                })
            }
            Err(e) => {
                if self.ports.contains_key(&id) {
                    let _ = self.port_del(&id);
                }
                undo_alloc(self);
                if created_network {
                    self.remove_network(&r.domain);
                }
                Err(e)
            }
        }
    }

    /// CNI DEL: idempotent; keeps going after a failed step and releases the addresses anyway.
    fn cni_del(&mut self, a: &CniAttachment) -> Result<(), ApiError> {
        let id = Self::cni_port_id(&a.container_id, &a.ifname);
        let mut first_err = None;
        if self.ports.contains_key(&id) {
            if let Err(e) = self.port_del(&id) {
                first_err = Some(e);
            }
        }
        self.port_routes.remove(&id);
        if a.builtin_ipam {
            if let Err(e) = self.ipam.release(&a.domain, &a.container_id, &a.ifname) {
                first_err.get_or_insert(ipam_err(e));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn cni_check(&self, a: &CniAttachment) -> Result<CniCheckReply, ApiError> {
        let id = Self::cni_port_id(&a.container_id, &a.ifname);
        let p = self
            .ports
            .get(&id)
            .filter(|p| p.info.network == a.domain)
            .ok_or_else(|| {
                err(
                    ErrorKind::UnknownPort,
                    format!("no attachment {id} in network {:?}", a.domain),
                )
            })?;
        let observed = netconf::observe(&p.netns, &p.info.ifname);
        Ok(CniCheckReply {
            port: p.info.clone(),
            observed,
        })
    }

    fn cni_gc(&mut self, domain: &str, valid: &[CniAttachmentId]) -> Result<CniGcReply, ApiError> {
        let keep: std::collections::HashSet<(String, String)> = valid
            .iter()
            .map(|v| (v.container_id.clone(), v.ifname.clone()))
            .collect();
        let stale: Vec<String> = self
            .ports
            .values()
            .filter(|p| p.info.network == domain)
            .filter(|p| {
                p.info
                    .container_id
                    .as_ref()
                    .is_some_and(|c| !keep.contains(&(c.clone(), p.info.ifname.clone())))
            })
            .map(|p| p.info.id.clone())
            .collect();
        let mut reply = CniGcReply::default();
        for id in stale {
            if self.port_del(&id).is_ok() {
                self.port_routes.remove(&id);
                reply.removed_ports.push(id);
            }
        }
        reply.released = self
            .ipam
            .gc(domain, &keep)
            .map_err(ipam_err)?
            .into_iter()
            .map(|(container_id, ifname)| CniAttachmentId {
                container_id,
                ifname,
            })
            .collect();
        Ok(reply)
    }

    /// Opens the underlay sockets when this node has an underlay address.
    fn start_uplink(&mut self) -> anyhow::Result<()> {
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

    fn sync_all_domain_peers(&mut self) {
        let names: Vec<String> = self.networks.keys().cloned().collect();
        for n in names {
            self.sync_domain_peers(&n);
        }
    }

    /// Pushes a domain's flood list (L2 with VNI: every peer) and routes (L3: peers' blocks).
    fn sync_domain_peers(&mut self, network: &str) {
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
                .filter(|n| n.conf.kind == NetworkKind::L3 && !n.conf.blocks.is_empty())
                .map(|n| (n.conf.name.clone(), n.conf.blocks.clone()))
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

    fn peer_list(&self) -> Vec<PeerInfo> {
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

    fn fdb_show(&self, network: &str) -> Result<Vec<FdbEntryInfo>, ApiError> {
        let n = self.networks.get(network).ok_or_else(|| {
            err(
                ErrorKind::UnknownNetwork,
                format!("unknown network {network:?}"),
            )
        })?;
        let by_idx: BTreeMap<PortIdx, &Port> = self.ports.values().map(|p| (p.idx, p)).collect();
        let peer_by_idx: BTreeMap<PeerIdx, &Peer> =
            self.peers.values().map(|p| (p.idx, p)).collect();
        let mut rows: BTreeMap<MacAddr, FdbEntryInfo> = BTreeMap::new();
        rows.insert(
            n.conf.gateway_mac(),
            FdbEntryInfo {
                mac: n.conf.gateway_mac(),
                port: "gateway".into(),
                kind: FdbEntryKind::Static,
                ips: vec![n.conf.gateway_ip()],
                age_secs: None,
                source: FdbSource::Local,
            },
        );
        for w in &self.workers {
            let (tx, rx) = std::sync::mpsc::channel();
            w.call(Command::DumpFdb {
                domain: n.idx,
                reply: tx,
            })
            .map_err(|e| sys_err("read FDB", e))?;
            for r in rx.try_iter().flatten() {
                let (kind, age) = match r.kind {
                    EntryKind::Static => (FdbEntryKind::Static, None),
                    EntryKind::Learned => (FdbEntryKind::Learned, Some(r.age_secs)),
                };
                let row = match r.dest {
                    Dest::Port(i) => {
                        let Some(port) = by_idx.get(&i) else { continue };
                        FdbEntryInfo {
                            mac: r.mac,
                            port: port.info.id.clone(),
                            kind,
                            ips: if kind == FdbEntryKind::Static {
                                port.info.ips.clone()
                            } else {
                                Vec::new()
                            },
                            age_secs: age,
                            source: if kind == FdbEntryKind::Static {
                                FdbSource::Local
                            } else {
                                FdbSource::Learned
                            },
                        }
                    }
                    Dest::Peer(i) => {
                        let Some(peer) = peer_by_idx.get(&i) else {
                            continue;
                        };
                        let ip = self
                            .remote_endpoints
                            .get(&(network.to_string(), r.mac))
                            .and_then(|(ip, _)| *ip);
                        FdbEntryInfo {
                            mac: r.mac,
                            port: format!("peer:{}", peer.spec.name),
                            kind,
                            ips: ip.into_iter().collect(),
                            age_secs: age,
                            source: if kind == FdbEntryKind::Static {
                                FdbSource::Etcd
                            } else {
                                FdbSource::Learned
                            },
                        }
                    }
                };
                rows.entry(r.mac)
                    .and_modify(|e| {
                        if let (Some(a), Some(b)) = (e.age_secs, row.age_secs) {
                            e.age_secs = Some(a.min(b));
                        }
                    })
                    .or_insert(row);
            }
        }
        Ok(rows.into_values().collect())
    }

    fn stats(&self) -> StatsReply {
        let ports = self
            .ports
            .values()
            .map(|p| {
                let sum = |f: fn(&PortCounters) -> &std::sync::atomic::AtomicU64| {
                    p.counters
                        .iter()
                        .map(|c| f(c).load(Ordering::Relaxed))
                        .sum::<u64>()
                };
                PortStats {
                    id: p.info.id.clone(),
                    network: p.info.network.clone(),
                    rx_packets: sum(|c| &c.rx_packets),
                    rx_bytes: sum(|c| &c.rx_bytes),
                    tx_packets: sum(|c| &c.tx_packets),
                    tx_bytes: sum(|c| &c.tx_bytes),
                    rx_dropped: sum(|c| &c.rx_dropped),
                    tx_errors: sum(|c| &c.tx_errors),
                }
            })
            .collect();
        let mut drops: BTreeMap<String, u64> = crate::dataplane::DropReason::ALL
            .iter()
            .map(|r| {
                let n = self.workers.iter().map(|w| w.drops.get(*r)).sum();
                (r.name().to_string(), n)
            })
            .collect();
        for (k, v) in self.kernel_drops() {
            drops.insert(k.to_string(), v);
        }
        let mut absorbed: BTreeMap<String, u64> = BTreeMap::new();
        for w in &self.workers {
            for (a, n) in w.drops.absorbed() {
                *absorbed.entry(a.name().to_string()).or_default() += n;
            }
        }
        self.stats_more(StatsReply {
            ports,
            drops,
            absorbed,
            ..Default::default()
        })
    }

    /// Losses in the kernel around us, by where they happen: in front of us, pod taps' queues
    /// and veths' backlogs towards us (the pod sent faster than we read), AF_PACKET sockets' and
    /// the underlay sockets' receive buffers; behind us, pods' receive backlogs (we delivered
    /// faster than the pod's stack took it).
    fn kernel_drops(&self) -> Vec<(&'static str, u64)> {
        let mut tap = 0;
        let mut veth = 0;
        let mut pod_rx = 0;
        for p in self.ports.values() {
            let (rx, tx) = netconf::pod_drops(&p.netns, &p.info.ifname).unwrap_or((0, 0));
            pod_rx += rx;
            match &p.dev {
                Some(PortDev::Tap(_)) => tap += tx,
                Some(PortDev::Packet(s)) => {
                    // The veth's backlog towards us was full: counted as the pod end's transmit
                    // drops or the host end's receive drops, depending on the kernel.
                    veth += tx;
                    veth += std::fs::read_to_string(format!(
                        "/sys/class/net/{}/statistics/rx_dropped",
                        p.info.host_ifname
                    ))
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                    // PACKET_STATISTICS resets on read: keep the running total per port.
                    p.kernel_drops
                        .fetch_add(s.take_drops().unwrap_or(0), Ordering::Relaxed);
                }
                _ => {}
            }
        }
        let packet_total: u64 = self
            .ports
            .values()
            .map(|p| p.kernel_drops.load(Ordering::Relaxed))
            .sum();
        let underlay = self.uplink.as_ref().map_or(0, |u| {
            u.vxlan_rx
                .iter()
                .map(|s| s.drops().unwrap_or(0))
                .sum::<u64>()
                + u.ipip_rx.drops().unwrap_or(0)
        });
        vec![
            ("kernel_tap_queue_full", tap),
            ("kernel_veth_backlog_full", veth),
            ("kernel_pod_rx_dropped", pod_rx),
            ("kernel_af_packet_rcvbuf_full", packet_total),
            ("kernel_underlay_rcvbuf_full", underlay),
        ]
    }
}

fn load_networks(state_dir: &Path) -> anyhow::Result<Vec<NetworkConfig>> {
    use anyhow::Context;
    let path = state_dir.join(NETWORKS_FILE);
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

fn ipam_err(e: IpamError) -> ApiError {
    let kind = match e {
        IpamError::Store(_) => ErrorKind::System,
        IpamError::Exhausted(_) => ErrorKind::AddressExhausted,
        _ => ErrorKind::AddressConflict,
    };
    err(kind, e.to_string())
}

fn pod_if_err(r: &PortAdd, e: netconf::NetconfError) -> ApiError {
    if e.is_exists() {
        return err(
            ErrorKind::PortExists,
            format!(
                "interface {:?} already exists in netns {:?}",
                r.ifname, r.netns
            ),
        );
    }
    sys_err("configure pod interface", e)
}
