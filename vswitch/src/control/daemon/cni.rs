//! CNI operations (ADD, DEL, CHECK, GC) on top of networks, ports and IPAM.
//!
//! An attachment is keyed by (CNI network name, container id, ifname), as in the spec: several
//! CNI networks may share one isolation domain (the same `bridge`), and an operation of one never
//! touches another's attachments.

use vswitch_config::{validate_name, Ipv4Net, NetworkConfig, RouteSpec};

use super::ports::{CniOwner, PortPlan};
use super::{err, Daemon, Port};
use crate::control::ipam::{IpamError, Owner};
use crate::control::netconf;
use crate::dataplane::port::PortDev;
use std::collections::HashSet;
use vswitch_api::{
    ApiError, CniAdd, CniAddReply, CniAddr, CniAttachment, CniAttachmentId, CniCheckReply, CniGc,
    CniGcReply, CniIpam, ErrorKind, PortAdd, PortInfo,
};

/// What `cni_begin` made of an ADD.
pub(super) enum CniStep {
    /// A retried ADD of an attachment that exists: its result.
    Done(Box<CniAddReply>),
    /// Reserved: plumb, then `cni_finish`.
    Plumb(Box<(PortPlan, CniCtx)>),
}

/// What a reserved CNI ADD did before plumbing (to answer, or to undo).
pub(super) struct CniCtx {
    id: String,
    addrs: Vec<CniAddr>,
    routes: Vec<RouteSpec>,
    /// The addresses were assigned by this ADD (not by an earlier try of it).
    fresh_alloc: bool,
}

impl Daemon {
    pub(super) fn cni_port_id(container_id: &str, ifname: &str) -> String {
        format!("{container_id}/{ifname}")
    }

    /// The port of attachment (network, container id, ifname), if this network holds it. An
    /// empty `network` (a plugin that does not send it) matches any.
    fn cni_port(&self, network: &str, container_id: &str, ifname: &str) -> Option<&Port> {
        self.ports
            .get(&Self::cni_port_id(container_id, ifname))
            .filter(|p| owned_by(&p.info, network))
    }

    /// CNI ADD in one go (see [`Daemon::cni_begin`]), for callers holding the daemon anyway.
    pub(super) fn cni_add(&mut self, r: CniAdd) -> Result<CniAddReply, ApiError> {
        match self.cni_begin(r.clone())? {
            CniStep::Done(reply) => Ok(*reply),
            CniStep::Plumb(p) => {
                let (plan, ctx) = *p;
                let dev = plan.plumb();
                self.cni_finish(&r, plan, ctx, dev)
            }
        }
    }

    /// CNI ADD, step 1 (under the lock): network on first use, addresses (durably assigned
    /// before any interface exists), then the port's reservation. A failure undoes every step
    /// taken for this request; a retried ADD of an attachment that exists is answered at once.
    pub(super) fn cni_begin(&mut self, r: CniAdd) -> Result<CniStep, ApiError> {
        validate_name(&r.domain)
            .map_err(|m| err(ErrorKind::InvalidConfig, format!("domain: {m}")))?;
        let id = Self::cni_port_id(&r.container_id, &r.ifname);
        // A retried ADD of an attachment that exists returns what it has.
        if let Some(p) = self.ports.get(&id) {
            if p.info.network == r.domain && owned_by(&p.info, &r.network) {
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
                return Ok(CniStep::Done(Box::new(CniAddReply {
                    port: info,
                    addrs,
                    routes,
                })));
            }
            return Err(err(
                ErrorKind::PortExists,
                format!(
                    "attachment {id} exists in network {:?} (domain {:?})",
                    p.info.cni_network.as_deref().unwrap_or_default(),
                    p.info.network
                ),
            ));
        }
        // Checked before IPAM: an assignment for the same attachment would return the
        // in-flight ADD's addresses, and undoing it would release them under that ADD.
        if self.reserved.contains_key(&id) {
            return Err(err(
                ErrorKind::PortExists,
                format!("attachment {id} is already being added"),
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
                let owner = Owner {
                    network: &r.network,
                    container_id: &r.container_id,
                    ifname: &r.ifname,
                    pod: r.pod.as_ref(),
                };
                let assigned = self
                    .ipam
                    .assign(&r.domain, &owner, plan, requested)
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
            CniIpam::Pools { request } => self.pool_cni_assign(&r, request)?,
            CniIpam::Fixed { addrs, routes } => (addrs.clone(), routes.clone(), false),
        };
        let ctx = CniCtx {
            id: id.clone(),
            addrs,
            routes,
            fresh_alloc,
        };
        let Some(first) = ctx.addrs.first().copied() else {
            self.cni_undo(&r, &ctx);
            return Err(err(
                ErrorKind::InvalidConfig,
                "IPAM returned no IPv4 address",
            ));
        };
        if !self.networks.contains_key(&r.domain) {
            let subnet = match Ipv4Net::new(first.ip, first.prefix) {
                Ok(n) => n.trunc(),
                Err(e) => {
                    self.cni_undo(&r, &ctx);
                    return Err(err(
                        ErrorKind::InvalidConfig,
                        format!("prefix /{}: {e}", first.prefix),
                    ));
                }
            };
            let mut conf = NetworkConfig::new(&r.domain, subnet);
            conf.gateway = first.gateway;
            conf.attach = r.attach.unwrap_or_default();
            if let Some(m) = r.mtu {
                conf.mtu = Some(m);
            }
            if let Err(e) = conf.validate("") {
                self.cni_undo(&r, &ctx);
                return Err(err(ErrorKind::InvalidConfig, e.to_string()));
            }
            if let Err(e) = self.install_network(conf, true) {
                self.cni_undo(&r, &ctx);
                return Err(e);
            }
            // Provisional until a port of it is committed (see `cni_undo`).
            self.provisional.insert(r.domain.clone());
            // Persisted now, not at commit: concurrent ADDs may join the network while this
            // one plumbs, and must find it after a restart even if this one fails.
            if let Err(e) = self.persist_networks() {
                self.cni_undo(&r, &ctx);
                return Err(e);
            }
        }
        let req = PortAdd {
            id: Some(id),
            netns: r.netns.clone(),
            network: r.domain.clone(),
            ifname: r.ifname.clone(),
            mac: r.mac,
            ips: ctx.addrs.iter().map(|a| a.ip).collect(),
            routes: ctx.routes.clone(),
            attach: r.attach,
            router: false,
        };
        let owner = CniOwner {
            container_id: r.container_id.clone(),
            network: r.network.clone(),
            pod: r.pod.clone(),
        };
        match self.reserve_port(req, Some(owner)) {
            Ok(plan) => Ok(CniStep::Plumb(Box::new((plan, ctx)))),
            Err(e) => {
                self.cni_undo(&r, &ctx);
                Err(e)
            }
        }
    }

    /// CNI ADD, step 3 (under the lock again): commits the port and answers as a one-step ADD
    /// would, or rolls back everything `cni_begin` did.
    pub(super) fn cni_finish(
        &mut self,
        r: &CniAdd,
        mut plan: PortPlan,
        ctx: CniCtx,
        dev: Result<PortDev, ApiError>,
    ) -> Result<CniAddReply, ApiError> {
        match self.commit_port(&mut plan, dev) {
            Ok(info) => {
                self.port_routes.insert(ctx.id.clone(), ctx.routes.clone());
                Ok(CniAddReply {
                    port: info,
                    addrs: ctx.addrs,
                    routes: ctx.routes,
                })
            }
            Err(e) => {
                if self.ports.contains_key(&ctx.id) {
                    let _ = self.port_del(&ctx.id);
                }
                self.cni_undo(r, &ctx);
                Err(e)
            }
        }
    }

    /// Undoes a failed ADD's IPAM assignment (a fresh one only: a retried ADD keeps what an
    /// earlier one got) and a network created on first use: by this ADD, or by an ADD that
    /// failed while this one was being plumbed into it. It stays while other ports, or ports
    /// being added, use it (persisted already); the last failing ADD into it removes it, and
    /// the first committed port makes it permanent.
    fn cni_undo(&mut self, r: &CniAdd, ctx: &CniCtx) {
        if ctx.fresh_alloc {
            if let CniIpam::Pools { .. } = r.ipam {
                let _ = self.pool_cni_release(&r.domain, &r.container_id, &r.ifname);
            } else {
                let _ = self
                    .ipam
                    .release(&r.domain, &r.network, &r.container_id, &r.ifname);
            }
        }
        if self.provisional.contains(&r.domain) && self.network_users(&r.domain) == 0 {
            self.remove_network(&r.domain);
            if let Err(e) = self.persist_networks() {
                tracing::warn!(network = %r.domain, "undo network on first use: {e}");
            }
        }
    }

    /// CNI DEL: idempotent; keeps going after a failed step and releases the addresses anyway.
    /// Without a record of the attachment (a crash, a lost state file), whatever interface of
    /// that name is in the pod's netns is removed, as the bridge plugin does: it is this
    /// attachment's by the runtime's say, and leaving it would make the next ADD fail.
    pub(super) fn cni_del(&mut self, a: &CniAttachment) -> Result<(), ApiError> {
        let id = Self::cni_port_id(&a.container_id, &a.ifname);
        if self.reserved.contains_key(&id) && !self.ports.contains_key(&id) {
            // Its ADD is plumbing right now; releasing its addresses under it would hand them
            // out twice. The runtime retries a failed DEL.
            return Err(err(
                ErrorKind::Unavailable,
                format!("attachment {id} is being added; retry the DEL"),
            ));
        }
        let mut first_err = None;
        let live = self
            .cni_port(&a.network, &a.container_id, &a.ifname)
            .is_some();
        // A port persisted by an earlier run whose interface was gone at start: DEL forgets it.
        let gone = self.gone.get(&id).is_some_and(|i| owned_by(i, &a.network));
        if live || gone {
            if let Err(e) = self.port_del(&id) {
                first_err = Some(e);
            }
            self.port_routes.remove(&id);
        }
        // A live port's interfaces go with its teardown (after the lock is released); only
        // without one can an interface of that name be an orphan.
        if !live && !self.ports.contains_key(&id) {
            if let Err(e) = self.remove_orphan(a) {
                first_err.get_or_insert(e);
            }
        }
        if a.builtin_ipam {
            if let Err(e) = self
                .ipam
                .release(&a.domain, &a.network, &a.container_id, &a.ifname)
            {
                first_err.get_or_insert(ipam_err(e));
            }
            // Pool IPAM (`vswitch-pools`) is built in too; a no-op without a pool address.
            if let Err(e) = self.pool_cni_release(&a.domain, &a.container_id, &a.ifname) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Removes `ifname` from the attachment's netns when no port holds it (see `cni_del`).
    fn remove_orphan(&self, a: &CniAttachment) -> Result<(), ApiError> {
        if a.netns.is_empty() {
            return Ok(());
        }
        let ns = netconf::netns_path(&a.netns);
        if !ns.exists() {
            return Ok(()); // the pod is gone, and its interfaces with it
        }
        let claimed = self
            .ports
            .values()
            .any(|p| p.netns == ns && p.info.ifname == a.ifname)
            || self
                .reserved
                .values()
                .any(|r| netconf::netns_path(&r.info.netns) == ns && r.info.ifname == a.ifname);
        if claimed {
            return Ok(());
        }
        match netconf::remove_link_in(&ns, &a.ifname) {
            Ok(true) => {
                tracing::warn!(
                    container = %a.container_id, ifname = %a.ifname, netns = %a.netns,
                    "CNI DEL: removed an interface no port record held (left behind by a crash)"
                );
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(err(
                ErrorKind::System,
                format!("remove orphaned interface {} in {}: {e}", a.ifname, a.netns),
            )),
        }
    }

    pub(super) fn cni_check(&self, a: &CniAttachment) -> Result<CniCheckReply, ApiError> {
        let id = Self::cni_port_id(&a.container_id, &a.ifname);
        let p = self
            .cni_port(&a.network, &a.container_id, &a.ifname)
            .filter(|p| p.info.network == a.domain)
            .ok_or_else(|| {
                err(
                    ErrorKind::UnknownPort,
                    format!(
                        "no attachment {id} of network {:?} in domain {:?}",
                        a.network, a.domain
                    ),
                )
            })?;
        let observed = netconf::observe(&p.netns, &p.info.ifname);
        Ok(CniCheckReply {
            port: p.info.clone(),
            observed,
        })
    }

    /// CNI GC of one network: removes its attachments (ports and allocations) that `valid` does
    /// not list. Attachments of other networks of the same domain are never candidates.
    pub(super) fn cni_gc(&mut self, r: &CniGc) -> Result<CniGcReply, ApiError> {
        let mut keep: HashSet<(String, String)> = r
            .valid
            .iter()
            .map(|v| (v.container_id.clone(), v.ifname.clone()))
            .collect();
        // Live ports and those persisted by an earlier run but gone at start alike.
        let stale: Vec<String> = self
            .ports
            .values()
            .map(|p| &p.info)
            .chain(self.gone.values())
            .filter(|i| i.network == r.domain && owned_by(i, &r.network))
            .filter(|i| {
                i.container_id
                    .as_ref()
                    .is_some_and(|c| !keep.contains(&(c.clone(), i.ifname.clone())))
            })
            .map(|i| i.id.clone())
            .collect();
        let mut reply = CniGcReply::default();
        for id in stale {
            if self.port_del(&id).is_ok() {
                self.port_routes.remove(&id);
                reply.removed_ports.push(id);
            }
        }
        // Allocations recorded without a network name are candidates for any network's GC:
        // keep those a port (live, or gone but not yet deleted) still holds. Pool handles are
        // keyed by domain only, so the same widened set protects the other networks of a
        // shared bridge from this network's GC.
        keep.extend(
            self.ports
                .values()
                .map(|p| &p.info)
                .chain(self.gone.values())
                // Being added: their addresses were just assigned.
                .chain(self.reserved.values().map(|r| &r.info))
                .filter(|i| i.network == r.domain)
                .filter_map(|i| Some((i.container_id.clone()?, i.ifname.clone()))),
        );
        let keep_list: Vec<(String, String)> = keep.iter().cloned().collect();
        for h in self.pool_cni_gc(&r.domain, &keep_list) {
            // Handle `<domain>/<container>/<ifname>`, reported like the built-in IPAM's.
            let mut parts = h.splitn(3, '/').skip(1);
            if let (Some(c), Some(i)) = (parts.next(), parts.next()) {
                reply.released.push(CniAttachmentId {
                    container_id: c.to_string(),
                    ifname: i.to_string(),
                });
            }
        }
        let builtin_released = self
            .ipam
            .gc(&r.domain, &r.network, &keep)
            .map_err(ipam_err)?
            .into_iter()
            .map(|(container_id, ifname)| CniAttachmentId {
                container_id,
                ifname,
            });
        reply.released.extend(builtin_released);
        Ok(reply)
    }
}

/// The port belongs to CNI network `network` (an empty name, or a port without one, matches:
/// requests and records from before the network was sent).
fn owned_by(p: &PortInfo, network: &str) -> bool {
    network.is_empty()
        || p.cni_network
            .as_deref()
            .is_none_or(|n| n.is_empty() || n == network)
}

pub(super) fn ipam_err(e: IpamError) -> ApiError {
    let kind = match e {
        IpamError::Store(_) => ErrorKind::System,
        IpamError::Exhausted(_) => ErrorKind::AddressExhausted,
        _ => ErrorKind::AddressConflict,
    };
    err(kind, e.to_string())
}

#[cfg(test)]
mod tests {
    //! The two-phase ADD through the public API (`begin` / `finish`), plumbing replaced by its
    //! outcome: what a failed plumbing rolls back, and what a concurrent ADD sees meanwhile.
    use super::super::Step;
    use super::*;
    use vswitch_api::{NetworkDel, Reply, Request};
    use vswitch_config::cni::{IpamPlan, Range};
    use vswitch_config::DaemonConfig;

    fn add(cid: &str, requested: &[&str]) -> Request {
        let subnet: Ipv4Net = "10.8.0.0/24".parse().unwrap();
        Request::CniAdd(CniAdd {
            container_id: cid.into(),
            ifname: "eth0".into(),
            netns: "/proc/self/ns/net".into(),
            network: "n".into(),
            domain: "dom".into(),
            pod: None,
            attach: None,
            mtu: None,
            mac: None,
            ipam: CniIpam::Builtin {
                plan: IpamPlan {
                    range_sets: vec![vec![Range {
                        subnet,
                        start: "10.8.0.10".parse().unwrap(),
                        end: "10.8.0.20".parse().unwrap(),
                        gateway: "10.8.0.1".parse().unwrap(),
                    }]],
                    routes: Vec::new(),
                },
                requested: requested.iter().map(|i| i.parse().unwrap()).collect(),
            },
        })
    }

    fn error_kind(r: &Reply) -> Option<ErrorKind> {
        match r {
            Reply::Error(e) => Some(e.kind),
            _ => None,
        }
    }

    fn failed() -> Result<PortDev, ApiError> {
        Err(err(ErrorKind::System, "plumbing failed (test)"))
    }

    #[test]
    fn failed_plumbing_rolls_back_addresses_and_the_network_on_first_use() {
        let dir = std::env::temp_dir().join(format!("vswitch-cni2p-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = DaemonConfig {
            state_dir: dir.clone(),
            workers: 1,
            ..Default::default()
        };
        let mut d = Daemon::start(cfg, "test").unwrap();
        let Step::Plumb(a) = d.begin(add("a", &["10.8.0.15"])) else {
            panic!("ADD a not reserved")
        };
        // Meanwhile: the same attachment again, and the same address for another one.
        let Step::Done(again) = d.begin(add("a", &[])) else {
            panic!("second ADD of a reserved")
        };
        assert_eq!(error_kind(&again), Some(ErrorKind::PortExists));
        let Step::Done(same_ip) = d.begin(add("b", &["10.8.0.15"])) else {
            panic!("ADD b with a's address reserved")
        };
        assert_eq!(error_kind(&same_ip), Some(ErrorKind::AddressConflict));
        // Another attachment joins the network a created; the network is in use.
        let Step::Plumb(c) = d.begin(add("c", &[])) else {
            panic!("ADD c not reserved")
        };
        assert_eq!(d.ipam.allocations("dom").len(), 2);
        let del = d.handle(Request::NetworkDel(NetworkDel { name: "dom".into() }));
        assert_eq!(error_kind(&del), Some(ErrorKind::NetworkInUse));

        // a fails: its address goes, the network stays (c is being added to it).
        assert_eq!(error_kind(&d.finish(a, failed())), Some(ErrorKind::System));
        assert_eq!(d.ipam.allocations("dom").len(), 1);
        assert!(d.networks.contains_key("dom"));
        // c fails too: the last ADD into the network a created on first use removes it.
        assert_eq!(error_kind(&d.finish(c, failed())), Some(ErrorKind::System));
        assert!(d.ipam.allocations("dom").is_empty());
        assert!(d.reserved.is_empty() && d.ports.is_empty());
        assert!(!d.networks.contains_key("dom"));

        // Alone, a failed ADD removes the network it created, as it always did.
        let Step::Plumb(e) = d.begin(add("e", &[])) else {
            panic!("ADD e not reserved")
        };
        assert!(d.networks.contains_key("dom"));
        let _ = d.finish(e, failed());
        assert!(!d.networks.contains_key("dom"));
        assert!(d.ipam.allocations("dom").is_empty());
        let saved = std::fs::read_to_string(dir.join(super::super::NETWORKS_FILE)).unwrap();
        assert!(!saved.contains("dom"), "networks.json: {saved}");
        d.shutdown(false);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
