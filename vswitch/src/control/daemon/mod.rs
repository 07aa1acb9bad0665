//! The daemon's state: networks (domains), ports and workers, and every API operation on them.
//!
//! Each operation validates everything before it touches anything, and undoes what it did if a
//! later step fails, so a failed request leaves no interface, table entry or file behind.
//!
//! One file per job: this one holds the state and the request dispatch; `networks` the domains,
//! `ports` pod interfaces, `cni` the CNI operations over both, `peers` the underlay and other
//! nodes, `views` the FDB and stats read-outs, `observe` trace and inject.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use vswitch_config::{DaemonConfig, Ipv4Net, MacAddr, NetworkConfig, NodeConfig, RouteSpec};

use super::device;
use super::ipam::Ipam;
use crate::dataplane::fdb::PortIdx;
use crate::dataplane::pipeline::{DomainIdx, PeerIdx};
use crate::dataplane::port::PortDev;
use crate::dataplane::underlay::Uplink;
use crate::dataplane::worker::{Command, WorkerHandle};
use crate::dataplane::PortCounters;
use vswitch_api::{answer, ApiError, Done, ErrorKind, PingReply, PortInfo, Reply, Request};

mod cni;
mod networks;
mod observe;
mod peers;
mod pools;
mod ports;
mod restore;
mod views;

use networks::{load_networks, NETWORKS_FILE};

/// What [`Daemon::begin`] made of a request.
pub enum Step {
    /// Answered.
    Done(Reply),
    /// A port add, reserved: plumb it without the lock, then [`Daemon::finish`] it.
    Plumb(Box<Pending>),
}

/// A reserved port add waiting for its plumbing.
#[must_use = "finish it, or the reservation stays"]
pub struct Pending {
    plan: ports::PortPlan,
    kind: PendingKind,
}

enum PendingKind {
    Port(vswitch_api::PortAdd),
    Cni(Box<(vswitch_api::CniAdd, cni::CniCtx)>),
}

impl Pending {
    /// Step 2: creates and configures the pod interface (netlink in the pod's namespace),
    /// touching nothing of the daemon's.
    pub fn plumb(&self) -> Result<PortDev, ApiError> {
        self.plan.plumb()
    }

    /// The id of the port being added.
    pub fn port_id(&self) -> &str {
        self.plan.id()
    }
}

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
    /// Keeps the device open. Pod taps are persistent: closing them (the daemon stops or dies)
    /// leaves them in the pod; `port_del` clears that first.
    dev: Option<PortDev>,
    /// May send with addresses other than its own (a router pod).
    router: bool,
    /// Routes configured in the pod (persisted with the port, returned by a retried CNI ADD).
    routes: Vec<RouteSpec>,
}

pub struct Daemon {
    cfg: DaemonConfig,
    networks: BTreeMap<String, Network>,
    ports: BTreeMap<String, Port>,
    /// Persisted ports whose interface was gone at start (shown by `port list` until removed).
    gone: BTreeMap<String, PortInfo>,
    /// Ports being added, by id: reserved under the lock, plumbed without it, then committed
    /// (or rolled back). Their id, IPs and MAC are taken, their network in use.
    reserved: BTreeMap<String, restore::PortRecord>,
    /// Networks created on first use by a CNI ADD into which no port has been committed yet:
    /// the last failing ADD into one removes it (it exists only for those ADDs).
    provisional: BTreeSet<String>,
    /// Interfaces of removed ports, deleted once the lock is released (`take_teardown`).
    teardown: Vec<ports::Unplumb>,
    /// `ports.json`, written by one writer at a time, newest snapshot last.
    ports_file: Arc<restore::PortsFile>,
    /// Set while `restore_ports` runs: `ports.json` is rewritten once at its end, never with a
    /// partial list.
    restoring: bool,
    workers: Vec<WorkerHandle>,
    free_domains: BTreeSet<DomainIdx>,
    next_domain: DomainIdx,
    free_ports: BTreeSet<PortIdx>,
    next_port: PortIdx,
    link_counter: u32,
    ipam: Ipam,
    /// IP pool IPAM (Calico style; etcd in cluster mode, else embedded).
    pools: Option<super::pools::PoolIpam>,
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
    /// The binary's build id (shown by `status`; given by the binary so that a new id relinks
    /// only the binary).
    build: String,
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

impl Daemon {
    /// Starts the workers and loads networks from the config and the state dir. `build` is the
    /// binary's build id, answered to `ping` (`vswitchctl status`).
    pub fn start(cfg: DaemonConfig, build: &str) -> anyhow::Result<Daemon> {
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
            gone: BTreeMap::new(),
            reserved: BTreeMap::new(),
            provisional: BTreeSet::new(),
            teardown: Vec::new(),
            ports_file: Arc::new(restore::PortsFile::new(
                cfg.state_dir.join(restore::PORTS_FILE),
            )),
            restoring: false,
            workers,
            free_domains: BTreeSet::new(),
            next_domain: 0,
            free_ports: BTreeSet::new(),
            next_port: 0,
            link_counter: 0,
            ipam: Ipam::open(&cfg.state_dir).map_err(|e| anyhow::anyhow!("{e}"))?,
            pools: None,
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
            build: build.to_string(),
        };
        d.start_uplink()?;
        d.pools = Some(super::pools::PoolIpam::open(&cfg, d.node_name())?);
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
        // Pool blocks this node already holds (a restart): blackholed like static blocks.
        d.pool_routes_changed(Some(Vec::new()));
        // Networks and peers first, so every restored port lands in complete tables.
        d.restore_ports()?;
        Ok(d)
    }

    /// Stops the workers. Pods keep their interfaces (persistent taps, veths) and the state dir
    /// keeps their ports, so the next start re-attaches them: a restart or upgrade is "stop
    /// old, start new". With `cleanup`, every port is removed first (the pre-restart
    /// behaviour: no interface left behind).
    pub fn shutdown(&mut self, cleanup: bool) {
        if cleanup {
            let ids: Vec<String> = self.ports.keys().cloned().collect();
            for id in ids {
                if let Err(e) = self.port_del(&id) {
                    tracing::warn!(port = %id, "removing port at shutdown: {e}");
                }
            }
        } else {
            tracing::info!(
                ports = self.ports.len(),
                "pods keep their interfaces; the next start re-attaches them"
            );
        }
        self.take_teardown().run();
        for w in std::mem::take(&mut self.workers) {
            w.shutdown();
        }
        // Close every device after the workers let go of theirs (taps stay, being persistent).
        for p in self.ports.values_mut() {
            drop(p.dev.take());
        }
    }

    /// Answers one request at once, port adds included (plumbed while `self` is held) and
    /// removed ports' interfaces deleted before it returns. The control server uses
    /// [`Daemon::begin`] instead, to plumb without the lock.
    pub fn handle(&mut self, req: Request) -> Reply {
        let reply = match self.begin(req) {
            Step::Done(reply) => reply,
            Step::Plumb(p) => {
                let dev = p.plumb();
                self.finish(p, dev)
            }
        };
        self.take_teardown().run();
        reply
    }

    /// Step 1 of a request: a port add (`PortAdd`, `CniAdd`) is reserved and returned to be
    /// plumbed without the lock ([`Pending::plumb`]) and then [`Daemon::finish`]ed; anything
    /// else is answered at once. Either way, run [`Daemon::take_teardown`] after unlocking.
    pub fn begin(&mut self, req: Request) -> Step {
        match req {
            Request::PortAdd(r) => match self.reserve_port(r.clone(), None) {
                Ok(plan) => Step::Plumb(Box::new(Pending {
                    plan,
                    kind: PendingKind::Port(r),
                })),
                Err(e) => Step::Done(answer(r, |_| Err(e))),
            },
            Request::CniAdd(r) => match self.cni_begin(r.clone()) {
                Ok(cni::CniStep::Done(reply)) => Step::Done(answer(r, |_| Ok(*reply))),
                Ok(cni::CniStep::Plumb(p)) => {
                    let (plan, ctx) = *p;
                    Step::Plumb(Box::new(Pending {
                        plan,
                        kind: PendingKind::Cni(Box::new((r, ctx))),
                    }))
                }
                Err(e) => Step::Done(answer(r, |_| Err(e))),
            },
            other => Step::Done(self.dispatch(other)),
        }
    }

    /// Step 3 of a port add: commits the plumbed device (or rolls the reservation back if
    /// plumbing failed or committing does) and answers.
    pub fn finish(&mut self, p: Box<Pending>, dev: Result<PortDev, ApiError>) -> Reply {
        let Pending { mut plan, kind } = *p;
        match kind {
            PendingKind::Port(r) => answer(r, |_| self.commit_port(&mut plan, dev)),
            PendingKind::Cni(c) => {
                let (r, ctx) = *c;
                answer(r, |r| self.cni_finish(&r, plan, ctx, dev))
            }
        }
    }

    /// Every request but the port adds, answered under the lock.
    fn dispatch(&mut self, req: Request) -> Reply {
        match req {
            Request::Ping(r) => answer(r, |_| {
                Ok(PingReply {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    build: self.build.clone(),
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
            Request::CniAdd(r) => answer(r, |r| self.cni_add(r)),
            Request::PortDel(r) => answer(r, |r| self.port_del(&r.id).map(|_| Done {})),
            Request::PortList(r) => answer(r, |_| {
                Ok(self
                    .ports
                    .values()
                    .map(|p| p.info.clone())
                    .chain(self.gone.values().cloned())
                    .collect())
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
            Request::CniDel(r) => answer(r, |r| self.cni_del(&r.0).map(|_| Done {})),
            Request::CniCheck(r) => answer(r, |r| self.cni_check(&r.0)),
            Request::CniGc(r) => answer(r, |r| self.cni_gc(&r)),
            Request::PeerList(r) => answer(r, |_| Ok(self.peer_list())),
            r @ (Request::PoolApply(_)
            | Request::PoolGet(_)
            | Request::PoolDelete(_)
            | Request::NodeLabel(_)
            | Request::NamespaceAnnotate(_)
            | Request::PoolIpamShow(_)
            | Request::PoolIpamCheck(_)
            | Request::PoolIpamRelease(_)) => self.handle_pools(r),
            Request::IpamShow(r) => answer(r, |r| Ok(self.ipam.allocations(&r.domain))),
        }
    }

    fn broadcast(&self, make: impl Fn() -> Command) -> Result<(), ApiError> {
        for w in &self.workers {
            w.call(make()).map_err(|e| sys_err("update worker", e))?;
        }
        Ok(())
    }
}
