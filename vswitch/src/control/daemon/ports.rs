//! Ports: validate a request, create and configure the pod interface, install it in the workers.

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::Arc;

use vswitch_config::{
    is_host_of, validate_ifname, validate_name, MacAddr, NetworkConfig, NetworkKind, RouteSpec,
};

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

    pub(super) fn port_add(
        &mut self,
        r: PortAdd,
        cni: Option<CniOwner>,
    ) -> Result<PortInfo, ApiError> {
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
        let conf = net.conf.clone();
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
        let attach = r.attach.unwrap_or(conf.attach);
        let host = match attach {
            vswitch_config::AttachKind::Tap => r.ifname.clone(),
            vswitch_config::AttachKind::AfPacket => self.next_link_name("vsh"),
        };
        let info = PortInfo {
            id: id.clone(),
            network: r.network.clone(),
            netns: r.netns.clone(),
            ifname: r.ifname.clone(),
            host_ifname: host.clone(),
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
        // The port's record goes to disk (fsync'd) while the interface is being plumbed: a
        // record whose interface never came to be is reconciled as gone at the next start.
        let persisted = self.spawn_persist(&info, r.router, &r.routes, conf.offloads);
        let undo_record = |me: &Self, persisted: std::thread::JoinHandle<Result<(), ApiError>>| {
            let _ = persisted.join();
            if let Err(e) = me.persist_ports() {
                tracing::warn!(port = %info.id, "{e}");
            }
        };
        // Create the device and configure the pod side; on failure undo and report.
        let io = match attach {
            vswitch_config::AttachKind::Tap => {
                let tmp = self.next_link_name("vst");
                // Created inside the pod's namespace: no device move needed afterwards.
                let tap = device::open_tap(&ns, &tmp, conf.offloads)
                    .map_err(|e| {
                        err(
                            ErrorKind::NetnsNotFound,
                            format!("enter netns {:?}: {e}", r.netns),
                        )
                    })
                    .and_then(|t| t.map_err(|e| sys_err("create tap", e)));
                let configured = tap.and_then(|tap| {
                    match netconf::configure_in(&ns, &pod_if(&tmp, &r, mac, &conf, mtu)) {
                        Ok(()) => Ok(tap),
                        // Closing the fd removes the (not yet persistent) tap wherever it is.
                        Err(e) => Err(pod_if_err(&r, e)),
                    }
                });
                match configured {
                    Ok(t) => t,
                    Err(e) => {
                        undo_record(self, persisted);
                        return Err(e);
                    }
                }
            }
            vswitch_config::AttachKind::AfPacket => {
                let peer = self.next_link_name("vsp");
                let opened = netconf::create_host_veth(&host, &peer, mtu, &ns)
                    .map_err(|e| sys_err("create veth", e))
                    .and_then(|_| {
                        netconf::configure_in(&ns, &pod_if(&peer, &r, mac, &conf, mtu)).map_err(
                            |e| {
                                netconf::delete_link(&host);
                                pod_if_err(&r, e)
                            },
                        )
                    })
                    .and_then(|_| {
                        device::open_packet(&host).map_err(|e| {
                            netconf::delete_link(&host);
                            sys_err("open AF_PACKET socket", e)
                        })
                    });
                match opened {
                    Ok(s) => s,
                    Err(e) => {
                        undo_record(self, persisted);
                        return Err(e);
                    }
                }
            }
        };
        // Joined before anything else writes the file (only one writer at a time).
        let written = persisted
            .join()
            .unwrap_or_else(|_| Err(sys_err("write ports", "writer thread panicked")));
        if let Err(e) = written {
            drop(io);
            if attach == vswitch_config::AttachKind::AfPacket {
                netconf::delete_link(&host);
            }
            let _ = self.persist_ports();
            return Err(e);
        }
        // On failure install_port removes the port again, record included.
        let info = self.install_port(info, io, r.router, r.routes.clone())?;
        tracing::info!(port = %id, network = %r.network, %attach, %mac, ips = ?r.ips, "port added");
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
            let _ = w.call(Command::Announce { idx });
        }
        Ok(info)
    }

    pub(super) fn least_loaded_worker(&self) -> usize {
        (0..self.workers.len())
            .min_by_key(|w| self.ports.values().filter(|p| p.info.worker == *w).count())
            .unwrap_or(0)
    }

    pub(super) fn port_del(&mut self, id: &str) -> Result<(), ApiError> {
        if self.gone.remove(id).is_some() && !self.ports.contains_key(id) {
            tracing::info!(port = %id, "gone port forgotten");
            return self.persist_ports();
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
        if let Err(e) = self.persist_ports() {
            tracing::warn!(port = %id, "{e}");
        }
        res
    }
}

pub(super) fn pod_if_err(r: &PortAdd, e: netconf::NetconfError) -> ApiError {
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
