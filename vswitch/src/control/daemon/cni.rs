//! CNI operations (ADD, DEL, CHECK, GC) on top of networks, ports and IPAM.

use vswitch_config::{validate_name, Ipv4Net, NetworkConfig, RouteSpec};

use super::{err, Daemon};
use crate::control::ipam::IpamError;
use crate::control::netconf;
use vswitch_api::{
    ApiError, CniAdd, CniAddReply, CniAddr, CniAttachment, CniAttachmentId, CniCheckReply,
    CniGcReply, CniIpam, ErrorKind, PortAdd,
};

impl Daemon {
    pub(super) fn cni_port_id(container_id: &str, ifname: &str) -> String {
        format!("{container_id}/{ifname}")
    }

    /// CNI ADD: network on first use, addresses (durably assigned before any interface exists),
    /// then the port. A failure undoes every step taken for this request.
    pub(super) fn cni_add(&mut self, r: CniAdd) -> Result<CniAddReply, ApiError> {
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
            CniIpam::Pools { request } => self.pool_cni_assign(&r, request)?,
            CniIpam::Fixed { addrs, routes } => (addrs.clone(), routes.clone(), false),
        };
        let undo_alloc = |me: &mut Self| {
            if fresh_alloc {
                if let CniIpam::Pools { .. } = r.ipam {
                    let _ = me.pool_cni_release(&r.domain, &r.container_id, &r.ifname);
                } else {
                    let _ = me.ipam.release(&r.domain, &r.container_id, &r.ifname);
                }
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
    pub(super) fn cni_del(&mut self, a: &CniAttachment) -> Result<(), ApiError> {
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
            // Pool IPAM (`vswitch-pools`) is built in too; a no-op without a pool address.
            if let Err(e) = self.pool_cni_release(&a.domain, &a.container_id, &a.ifname) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub(super) fn cni_check(&self, a: &CniAttachment) -> Result<CniCheckReply, ApiError> {
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

    pub(super) fn cni_gc(
        &mut self,
        domain: &str,
        valid: &[CniAttachmentId],
    ) -> Result<CniGcReply, ApiError> {
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
        let keep_list: Vec<(String, String)> = keep.iter().cloned().collect();
        for h in self.pool_cni_gc(domain, &keep_list) {
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
            .gc(domain, &keep)
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

pub(super) fn ipam_err(e: IpamError) -> ApiError {
    let kind = match e {
        IpamError::Store(_) => ErrorKind::System,
        IpamError::Exhausted(_) => ErrorKind::AddressExhausted,
        _ => ErrorKind::AddressConflict,
    };
    err(kind, e.to_string())
}
