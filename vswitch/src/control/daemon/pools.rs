//! The daemon's side of IP pool IPAM (`control::pools`): the pool requests, the address of a
//! CNI attachment, and this node's pool blocks as L3 routes (published to the other nodes,
//! blackholed in the kernel like static blocks).

use std::collections::BTreeSet;

use vswitch_config::{Ipv4Net, NetworkKind, RouteSpec};

use super::{err, Daemon};
use crate::control::netconf;
use crate::control::pools::{handle_of, PoolIpam};
use vswitch_api::{
    answer, ApiError, CniAdd, CniAddr, Done, ErrorKind, PoolRequest, Reply, Request,
};

impl Daemon {
    fn pool_ipam(&mut self) -> Result<&mut PoolIpam, ApiError> {
        self.pools
            .as_mut()
            .ok_or_else(|| err(ErrorKind::Unavailable, "IP pool IPAM is not available"))
    }

    /// Handles of this node's live CNI attachments.
    fn pool_live_handles(&self) -> BTreeSet<String> {
        self.ports
            .values()
            .map(|p| &p.info)
            .chain(self.reserved.values().map(|r| &r.info))
            .filter_map(|i| {
                let c = i.container_id.as_ref()?;
                Some(handle_of(&i.network, c, &i.ifname))
            })
            .collect()
    }

    /// Answers the pool requests (the dispatch in `mod.rs` routes them here).
    pub(super) fn handle_pools(&mut self, req: Request) -> Reply {
        let live = self.pool_live_handles();
        let before = self.pools.as_ref().map(|p| p.routes().to_vec());
        let reply = match req {
            Request::PoolApply(r) => answer(r, |r| self.pool_ipam()?.apply(&r.text)),
            Request::PoolGet(r) => answer(r, |_| self.pool_ipam()?.get()),
            Request::PoolDelete(r) => answer(r, |r| self.pool_ipam()?.delete(&r.name, r.force)),
            Request::NodeLabel(r) => answer(r, |r| {
                self.pool_ipam()?
                    .label_node(r.node.as_deref(), &r.set, &r.remove)
            }),
            Request::NamespaceAnnotate(r) => answer(r, |r| {
                self.pool_ipam()?
                    .annotate_namespace(&r.namespace, r.ipv4pools.as_deref())
                    .map(|_| Done {})
            }),
            Request::PoolIpamShow(r) => answer(r, |r| self.pool_ipam()?.show(r.ip)),
            Request::PoolIpamCheck(r) => answer(r, |_| self.pool_ipam()?.check(&live)),
            Request::PoolIpamRelease(r) => answer(r, |r| {
                Ok(vswitch_api::PoolIpamReleaseReply {
                    released: self.pool_ipam()?.release_ips(&r.ips, r.leaked, &live)?,
                })
            }),
            other => answer(vswitch_api::Ping {}, |_| {
                Err(err(
                    ErrorKind::BadRequest,
                    format!("not a pool request: {other:?}"),
                ))
            }),
        };
        self.pool_routes_changed(before);
        reply
    }

    /// CNI ADD with `ipam.type = "vswitch-pools"`: the address from the pools, on the
    /// (configured) network the attachment joins. Returns (addrs, routes, fresh allocation).
    pub(super) fn pool_cni_assign(
        &mut self,
        r: &CniAdd,
        request: &PoolRequest,
    ) -> Result<(Vec<CniAddr>, Vec<RouteSpec>, bool), ApiError> {
        let Some(n) = self.networks.get(&r.domain) else {
            return Err(err(
                ErrorKind::UnknownNetwork,
                format!(
                    "ipam.type vswitch-pools: network {:?} must be configured (its subnet holds the pools)",
                    r.domain
                ),
            ));
        };
        let (subnet, gw) = (n.conf.subnet, n.conf.gateway_ip());
        let handle = handle_of(&r.domain, &r.container_id, &r.ifname);
        let before = self.pools.as_ref().map(|p| p.routes().to_vec());
        let ipam = self.pool_ipam()?;
        let had = ipam.has_handle(&handle)?;
        let got = ipam.assign(&handle, request, subnet, gw)?;
        self.pool_routes_changed(before);
        Ok((
            vec![CniAddr {
                ip: got.ip,
                prefix: subnet.prefix_len(),
                gateway: Some(gw),
            }],
            Vec::new(),
            got.managed && !had,
        ))
    }

    /// Releases an attachment's pool address, if it has one (DEL, failed ADD).
    pub(super) fn pool_cni_release(
        &mut self,
        domain: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), ApiError> {
        let before = self.pools.as_ref().map(|p| p.routes().to_vec());
        let r = match self.pools.as_mut() {
            Some(p) => p
                .release(&handle_of(domain, container_id, ifname))
                .map(|_| ()),
            None => Ok(()),
        };
        self.pool_routes_changed(before);
        r
    }

    /// CNI GC of a domain: this node's pool handles of it that are not valid.
    pub(super) fn pool_cni_gc(&mut self, domain: &str, keep: &[(String, String)]) -> Vec<String> {
        let keep: BTreeSet<String> = keep.iter().map(|(c, i)| handle_of(domain, c, i)).collect();
        let before = self.pools.as_ref().map(|p| p.routes().to_vec());
        let out = match self.pools.as_mut() {
            Some(p) => p.gc(domain, &keep).unwrap_or_else(|e| {
                tracing::warn!(%domain, "pool GC: {e}");
                Vec::new()
            }),
            None => Vec::new(),
        };
        self.pool_routes_changed(before);
        out
    }

    /// This node's pool routes inside `network`'s subnet (published with its static blocks).
    pub(super) fn pool_routes_for(&self, subnet: Ipv4Net) -> Vec<Ipv4Net> {
        self.pools
            .as_ref()
            .map(|p| {
                p.routes()
                    .iter()
                    .filter(|r| subnet.contains(*r))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keeps the kernel's blackhole routes in step with this node's pool blocks, as for static
    /// blocks (see `install_network`).
    pub(super) fn pool_routes_changed(&mut self, before: Option<Vec<Ipv4Net>>) {
        let before: BTreeSet<Ipv4Net> = before.unwrap_or_default().into_iter().collect();
        let after: BTreeSet<Ipv4Net> = self
            .pools
            .as_ref()
            .map(|p| p.routes().iter().copied().collect())
            .unwrap_or_default();
        if before == after {
            return;
        }
        let spans = |r: &Ipv4Net| {
            self.networks.values().any(|n| {
                n.conf.kind == NetworkKind::L3 && n.conf.spans_nodes() && n.conf.subnet.contains(r)
            })
        };
        for r in after.difference(&before).filter(|r| spans(r)) {
            if let Err(e) = netconf::blackhole(*r, true) {
                tracing::warn!(block = %r, "blackhole route: {e}");
            }
        }
        for r in before.difference(&after) {
            let _ = netconf::blackhole(*r, false);
        }
        tracing::info!(routes = ?after, "pool blocks of this node changed");
    }
}
