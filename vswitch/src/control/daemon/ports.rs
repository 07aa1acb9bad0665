//! Ports: validate a request, create and configure the pod interface, install it in the workers.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use vswitch_config::{
    is_host_of, validate_ifname, validate_name, AttachKind, Ipv4Net, MacAddr, NetworkKind,
    RouteSpec,
};

use super::restore::PortRecord;
use super::{err, sys_err, Daemon, Port};
use crate::control::device;
use crate::control::netconf::{self, PodIfConfig};
use crate::dataplane::pipeline::PortConf;
use crate::dataplane::port::PortDev;
use crate::dataplane::worker::Command;
use crate::dataplane::PortCounters;
use vswitch_api::{ApiError, ErrorKind, PortAdd, PortInfo, PortState};

pub(super) fn random_mac() -> MacAddr {
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

/// The CNI attachment a port was created for.
pub(super) struct CniOwner {
    pub container_id: String,
    /// CNI network name (may be empty from an old plugin).
    pub network: String,
    pub pod: Option<vswitch_api::PodRef>,
}

impl Daemon {
    pub(super) fn next_link_name(&mut self, kind: &str) -> String {
        self.link_counter = self.link_counter.wrapping_add(1);
        format!(
            "{kind}{:04x}{:06x}",
            std::process::id() & 0xffff,
            self.link_counter & 0xff_ffff
        )
    }

    pub(super) fn validate_port(&self, r: &PortAdd, id: &str) -> Result<MacAddr, ApiError> {
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
        if self.reserved.contains_key(id) {
            return Err(err(
                ErrorKind::PortExists,
                format!("port {id:?} is already being added"),
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
        // Ports of the network, and those being added to it (plumbed without the lock).
        let peers: Vec<&PortInfo> = self
            .ports
            .values()
            .map(|p: &Port| &p.info)
            .chain(self.reserved.values().map(|r| &r.info))
            .filter(|i| i.network == r.network)
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
                // An address from this node's IP pool blocks (or borrowed) is fine too.
                && !self.pool_routes_for(net.conf.subnet).iter().any(|b| b.contains(ip))
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
            if let Some(p) = peers.iter().find(|p| p.ips.contains(ip)) {
                return Err(err(
                    ErrorKind::AddressConflict,
                    format!(
                        "ip {ip} is already used by port {:?} in network {:?}",
                        p.id, r.network
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
                if m == net.conf.gateway_mac() || peers.iter().any(|p| p.mac == m) {
                    return Err(err(
                        ErrorKind::AddressConflict,
                        format!("mac {m} is already used in network {:?}", r.network),
                    ));
                }
                m
            }
            None => loop {
                let m = random_mac();
                if m != net.conf.gateway_mac() && !peers.iter().any(|p| p.mac == m) {
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

    /// Adds a port in one go (reserve, plumb, commit) for callers that hold the daemon the
    /// whole time anyway; the control server drives the three steps itself, unlocked while
    /// plumbing (`Daemon::begin`).
    pub(super) fn port_add(
        &mut self,
        r: PortAdd,
        cni: Option<CniOwner>,
    ) -> Result<PortInfo, ApiError> {
        let mut plan = self.reserve_port(r, cni)?;
        let dev = plan.plumb();
        self.commit_port(&mut plan, dev)
    }

    /// Step 1 of a port add, under the lock: validates the request, chooses MAC, host link
    /// names and worker, and records the reservation, so a concurrent ADD sees its id, IPs and
    /// MAC as taken (and `network del` its network as in use) while it is being plumbed. Its
    /// record starts going to disk on a thread of its own.
    pub(super) fn reserve_port(
        &mut self,
        r: PortAdd,
        cni: Option<CniOwner>,
    ) -> Result<PortPlan, ApiError> {
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
        let conf = self.networks[&r.network].conf.clone();
        let mtu = conf.effective_mtu(self.underlay_mtu);
        let attach = r.attach.unwrap_or(conf.attach);
        let (host, pod_tmp) = match attach {
            AttachKind::Tap => (r.ifname.clone(), self.next_link_name("vst")),
            AttachKind::AfPacket => (self.next_link_name("vsh"), self.next_link_name("vsp")),
        };
        let info = PortInfo {
            id: id.clone(),
            network: r.network.clone(),
            netns: r.netns.clone(),
            ifname: r.ifname.clone(),
            host_ifname: host,
            state: PortState::Up,
            attach,
            mac,
            ips: r.ips.clone(),
            mtu,
            worker: self.least_loaded_worker(),
            container_id: cni.as_ref().map(|c| c.container_id.clone()),
            cni_network: cni.as_ref().map(|c| c.network.clone()),
            pod: cni.and_then(|c| c.pod),
        };
        self.reserved.insert(
            id,
            PortRecord {
                info: info.clone(),
                router: r.router,
                routes: r.routes.clone(),
                offloads: conf.offloads,
            },
        );
        // The port's record goes to disk (fsync'd) while the interface is being plumbed: a
        // record whose interface never came to be is reconciled as gone at the next start.
        let persisted = std::sync::Mutex::new(Persist::Writing(self.spawn_persist()));
        Ok(PortPlan {
            ns: netconf::netns_path(&r.netns),
            pod_tmp,
            subnet: conf.subnet,
            gateway: conf.gateway_ip(),
            offloads: conf.offloads,
            info,
            routes: r.routes,
            router: r.router,
            persisted,
        })
    }

    /// Step 3 of a port add, under the lock again: the reservation ends, and the plumbed device
    /// is installed; if plumbing failed or installing does, everything the reservation did is
    /// undone (record rewritten, device closed, host veth end deleted).
    pub(super) fn commit_port(
        &mut self,
        plan: &mut PortPlan,
        dev: Result<PortDev, ApiError>,
    ) -> Result<PortInfo, ApiError> {
        let id = plan.info.id.clone();
        self.reserved.remove(&id);
        // Its record is on disk (or a newer snapshot holding it is) before the ADD returns;
        // normally `plumb` waited for that already, outside the lock.
        let written = plan.take_persisted();
        let undo_record = |me: &Self| {
            if let Err(e) = me.persist_ports() {
                tracing::warn!(port = %id, "{e}");
            }
        };
        let dev = match (dev, written) {
            (Ok(dev), Ok(())) => dev,
            (Err(e), _) => {
                // Plumbing cleaned up after itself already.
                undo_record(self);
                return Err(e);
            }
            (Ok(dev), Err(e)) => {
                self.teardown.push(Unplumb {
                    port: id.clone(),
                    dev: Some(dev),
                    host_link: (plan.info.attach == AttachKind::AfPacket)
                        .then(|| plan.info.host_ifname.clone()),
                    pod_link: None,
                });
                undo_record(self);
                return Err(e);
            }
        };
        // On failure install_port removes the port again, record included.
        let info = self.install_port(plan.info.clone(), dev, plan.router, plan.routes.clone())?;
        // A network created on first use stays for good once a port of it is in place.
        self.provisional.remove(&info.network);
        tracing::info!(port = %id, network = %info.network, attach = %info.attach,
            mac = %info.mac, ips = ?info.ips, "port added");
        Ok(info)
    }

    /// Hands an open device to the workers (its owner polls it) and records the port. Taps are
    /// made persistent here, once nothing can fail any more, so a failed ADD still removes its
    /// tap by closing it, and a port that was added outlives the daemon.
    pub(super) fn install_port(
        &mut self,
        mut info: PortInfo,
        dev: PortDev,
        router: bool,
        routes: Vec<RouteSpec>,
    ) -> Result<PortInfo, ApiError> {
        let Some(net) = self.networks.get(&info.network) else {
            return Err(err(
                ErrorKind::UnknownNetwork,
                format!("unknown network {:?}", info.network),
            ));
        };
        let domain = net.idx;
        if info.worker >= self.workers.len() {
            info.worker = self.least_loaded_worker();
        }
        let owner = info.worker;
        let idx = self.free_ports.pop_first().unwrap_or_else(|| {
            self.next_port += 1;
            self.next_port - 1
        });
        let counters: Vec<Arc<PortCounters>> = self
            .workers
            .iter()
            .map(|_| Arc::new(PortCounters::default()))
            .collect();
        let pconf = PortConf {
            domain,
            mac: info.mac,
            ips: info.ips.clone(),
            ips6: Vec::new(),
            router,
            max_frame: usize::from(info.mtu) + crate::packet::ethernet::HEADER_LEN,
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
        let installed =
            installed
                .map_err(|e| sys_err("install port", e))
                .and_then(|_| match &dev {
                    PortDev::Tap(t) => t.set_persist(true).map_err(|e| sys_err("persist tap", e)),
                    _ => Ok(()),
                });
        let id = info.id.clone();
        let port = Port {
            info: info.clone(),
            idx,
            netns: netconf::netns_path(&info.netns),
            counters,
            kernel_drops: Default::default(),
            dev: Some(dev),
            router,
            routes,
        };
        self.ports.insert(id.clone(), port);
        self.gone.remove(&id);
        if let Err(e) = installed {
            let _ = self.port_del(&id);
            return Err(e);
        }
        if let Some(w) = self.workers.get(owner) {
            let _ = w.post(Command::Announce { idx });
        }
        Ok(info)
    }

    pub(super) fn least_loaded_worker(&self) -> usize {
        (0..self.workers.len())
            .min_by_key(|w| {
                self.ports
                    .values()
                    .map(|p| &p.info)
                    .chain(self.reserved.values().map(|r| &r.info))
                    .filter(|i| i.worker == *w)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Removes a port from the state and the workers; its interface goes with the next
    /// [`Daemon::take_teardown`] (the control server runs it after unlocking, before replying).
    pub(super) fn port_del(&mut self, id: &str) -> Result<(), ApiError> {
        if self.gone.remove(id).is_some() && !self.ports.contains_key(id) {
            tracing::info!(port = %id, "gone port forgotten");
            return self.persist_ports();
        }
        if self.reserved.contains_key(id) && !self.ports.contains_key(id) {
            return Err(err(
                ErrorKind::Unavailable,
                format!("port {id:?} is being added; retry"),
            ));
        }
        let mut p = self
            .ports
            .remove(id)
            .ok_or_else(|| err(ErrorKind::UnknownPort, format!("unknown port {id:?}")))?;
        let idx = p.idx;
        // Workers first (they drop their references), then the device.
        let res = self.broadcast(|| Command::RemovePort { idx });
        if let Some(PortDev::Tap(t)) = &p.dev {
            // Closing the last descriptor of a non-persistent tap removes it wherever it is.
            if let Err(e) = t.set_persist(false) {
                tracing::warn!(port = %id, "tap: {e}");
            }
        }
        let (host_link, pod_link) = match p.info.attach {
            AttachKind::Tap => (None, None),
            AttachKind::AfPacket => (
                Some(p.info.host_ifname.clone()),
                Some((p.netns.clone(), p.info.ifname.clone())),
            ),
        };
        self.teardown.push(Unplumb {
            port: id.to_string(),
            dev: p.dev.take(),
            host_link,
            pod_link,
        });
        self.free_ports.insert(idx);
        tracing::info!(port = %id, "port removed");
        if let Err(e) = self.persist_ports() {
            tracing::warn!(port = %id, "{e}");
        }
        res
    }

    /// The interfaces of ports removed since the last call, to delete once the lock is released.
    pub fn take_teardown(&mut self) -> Teardown {
        Teardown(std::mem::take(&mut self.teardown))
    }
}

/// What is left of a removed port: its device (closing a non-persistent tap removes it) and
/// its veth ends.
pub(super) struct Unplumb {
    port: String,
    dev: Option<PortDev>,
    host_link: Option<String>,
    pod_link: Option<(PathBuf, String)>,
}

/// Interface deletions of removed ports, run without the daemon lock: the ports are already out
/// of the state and the workers, their names unique (host ends) or their pod's to reuse only
/// after the DEL's reply.
#[must_use = "run it: the interfaces stay until then"]
#[derive(Default)]
pub struct Teardown(Vec<Unplumb>);

impl Teardown {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn run(self) {
        for u in self.0 {
            drop(u.dev);
            if let Some(h) = &u.host_link {
                netconf::delete_link(h);
            }
            if let Some((ns, ifname)) = &u.pod_link {
                netconf::delete_link_in(ns, ifname);
            }
            tracing::debug!(port = %u.port, "port interfaces removed");
        }
    }
}

/// A reserved port add: everything plumbing needs, nothing of the daemon's (step 2 runs
/// without the lock).
pub struct PortPlan {
    info: PortInfo,
    ns: PathBuf,
    /// The tap's temporary name, or the veth's pod end name (renamed to `ifname` in the pod).
    pod_tmp: String,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    offloads: bool,
    routes: Vec<RouteSpec>,
    router: bool,
    /// The write of `ports.json` with this port's record. Behind a mutex so that `plumb` (which
    /// only borrows the plan) can wait for it outside the daemon lock.
    persisted: std::sync::Mutex<Persist>,
}

/// Where the write of a reserved port's record is.
enum Persist {
    Writing(std::thread::JoinHandle<Result<(), ApiError>>),
    Written(Result<(), ApiError>),
    Taken,
}

impl PortPlan {
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// Step 2 of a port add, without the daemon lock: creates the device and configures the pod
    /// side; on failure removes what it created and reports. Then waits for the port's record
    /// to be on disk (its fsyncs overlapped with the plumbing), so that the commit under the
    /// lock does not wait for them.
    pub fn plumb(&self) -> Result<PortDev, ApiError> {
        // A panic here must still end in `commit_port`, or the reservation would stay.
        let dev = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.plumb_inner()))
            .unwrap_or_else(|_| Err(sys_err("plumb port", "panicked")));
        self.wait_persisted();
        dev
    }

    fn wait_persisted(&self) {
        let mut p = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*p, Persist::Writing(_)) {
            return; // written (or taken by the commit) already
        }
        if let Persist::Writing(h) = std::mem::replace(&mut *p, Persist::Taken) {
            *p = Persist::Written(
                h.join()
                    .unwrap_or_else(|_| Err(sys_err("write ports", "writer thread panicked"))),
            );
        }
    }

    /// The outcome of the record's write (waiting for it if `plumb` did not).
    fn take_persisted(&mut self) -> Result<(), ApiError> {
        self.wait_persisted();
        let p = self.persisted.get_mut().unwrap_or_else(|e| e.into_inner());
        match std::mem::replace(p, Persist::Taken) {
            Persist::Written(r) => r,
            Persist::Writing(_) | Persist::Taken => Ok(()),
        }
    }

    fn plumb_inner(&self) -> Result<PortDev, ApiError> {
        let i = &self.info;
        let pod_if = PodIfConfig {
            tmp_name: &self.pod_tmp,
            ifname: &i.ifname,
            mac: i.mac,
            mtu: i.mtu,
            subnet: self.subnet,
            ips: &i.ips,
            gateway: self.gateway,
            routes: &self.routes,
        };
        let ns = &self.ns;
        match i.attach {
            AttachKind::Tap => {
                // Created inside the pod's namespace: no device move needed afterwards.
                let pod = device::open_tap(ns, &self.pod_tmp, self.offloads).map_err(|e| {
                    err(
                        ErrorKind::NetnsNotFound,
                        format!("enter netns {:?}: {e}", i.netns),
                    )
                })?;
                let tap = pod.dev.map_err(|e| sys_err("create tap", e))?;
                let configured = pod
                    .netlink
                    .map_err(netconf::NetconfError::from)
                    .and_then(|mut nl| netconf::configure(&mut nl, &pod_if));
                match configured {
                    Ok(()) => Ok(tap),
                    // Closing the fd removes the (not yet persistent) tap wherever it is.
                    Err(e) => Err(pod_if_err(&i.ifname, &i.netns, e)),
                }
            }
            AttachKind::AfPacket => {
                let host = &i.host_ifname;
                netconf::create_host_veth(host, &self.pod_tmp, i.mtu, ns)
                    .map_err(|e| sys_err("create veth", e))?;
                // Deleting the host end takes the pod end with it.
                netconf::configure_in(ns, &pod_if).map_err(|e| {
                    netconf::delete_link(host);
                    pod_if_err(&i.ifname, &i.netns, e)
                })?;
                device::open_packet(host).map_err(|e| {
                    netconf::delete_link(host);
                    sys_err("open AF_PACKET socket", e)
                })
            }
        }
    }
}

pub(super) fn pod_if_err(ifname: &str, netns: &str, e: netconf::NetconfError) -> ApiError {
    if e.is_exists() {
        return err(
            ErrorKind::PortExists,
            format!("interface {ifname:?} already exists in netns {netns:?}"),
        );
    }
    sys_err("configure pod interface", e)
}

#[cfg(test)]
mod tests {
    //! The reservation logic, without plumbing: a daemon with one worker and an L2 network,
    //! a port reserved (never plumbed), then committed with a failed plumbing.
    use super::*;
    use vswitch_api::{NetworkAdd, NetworkDel};
    use vswitch_config::{DaemonConfig, NetworkConfig};

    fn daemon(dir: &std::path::Path) -> Daemon {
        let cfg = DaemonConfig {
            state_dir: dir.to_path_buf(),
            workers: 1,
            ..Default::default()
        };
        let mut d = Daemon::start(cfg, "test").expect("start daemon");
        let net = NetworkConfig::new("net", "10.9.0.0/24".parse().unwrap());
        d.network_add(NetworkAdd { network: net }).unwrap();
        d
    }

    fn req(id: &str, ip: &str, mac: &str) -> PortAdd {
        PortAdd {
            id: Some(id.into()),
            // Any existing namespace file: validation checks only that it exists.
            netns: "/proc/self/ns/net".into(),
            network: "net".into(),
            ifname: "eth9".into(),
            mac: Some(mac.parse().unwrap()),
            ips: vec![ip.parse().unwrap()],
            ..Default::default()
        }
    }

    fn ports_json(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join(super::super::restore::PORTS_FILE)).unwrap_or_default()
    }

    #[test]
    fn reservation_is_seen_by_concurrent_requests_and_rolled_back() {
        let dir = std::env::temp_dir().join(format!("vswitch-resv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut d = daemon(&dir);
        let mut plan = d
            .reserve_port(req("a", "10.9.0.5", "02:00:00:00:09:05"), None)
            .unwrap();
        let kind = |r: Result<PortPlan, ApiError>| r.err().map(|e| e.kind);
        // The same id, the same IP, the same MAC: taken while "a" is being plumbed.
        assert_eq!(
            kind(d.reserve_port(req("a", "10.9.0.6", "02:00:00:00:09:06"), None)),
            Some(ErrorKind::PortExists)
        );
        assert_eq!(
            kind(d.reserve_port(req("b", "10.9.0.5", "02:00:00:00:09:06"), None)),
            Some(ErrorKind::AddressConflict)
        );
        assert_eq!(
            kind(d.reserve_port(req("b", "10.9.0.6", "02:00:00:00:09:05"), None)),
            Some(ErrorKind::AddressConflict)
        );
        let del = d.network_del(NetworkDel { name: "net".into() });
        assert_eq!(del.err().map(|e| e.kind), Some(ErrorKind::NetworkInUse));
        assert_eq!(
            d.port_del("a").err().map(|e| e.kind),
            Some(ErrorKind::Unavailable)
        );
        // Not listed while being added.
        assert!(d.ports.is_empty());

        // Plumbing failed: everything the reservation did is undone.
        let failed = d.commit_port(&mut plan, Err(sys_err("create tap", "test")));
        assert_eq!(failed.err().map(|e| e.kind), Some(ErrorKind::System));
        assert!(d.reserved.is_empty() && d.ports.is_empty());
        assert!(
            !ports_json(&dir).contains("\"a\""),
            "record left: {}",
            ports_json(&dir)
        );
        assert!(d.take_teardown().is_empty());
        // The id, IP and MAC are free again, and so is the network.
        let mut again = d
            .reserve_port(req("a", "10.9.0.5", "02:00:00:00:09:05"), None)
            .unwrap();
        // Its record is on disk before the ADD could return.
        let written = again.take_persisted();
        assert!(written.is_ok() && ports_json(&dir).contains("\"a\""));
        let _ = d.commit_port(&mut again, Err(sys_err("create tap", "test")));
        d.network_del(NetworkDel { name: "net".into() }).unwrap();
        d.shutdown(false);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
