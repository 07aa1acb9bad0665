//! Ports across daemon restarts. Every port is written to `ports.json` in the state dir (mode
//! 0600, fsynced file and directory) before its ADD returns; pod interfaces outlive the daemon
//! (persistent taps stay in the pod, veths are kernel objects anyway). At start the daemon
//! reconciles that file with what exists: a port whose interface is alive is re-attached (a tap
//! reopened by name inside the pod's namespace, an AF_PACKET socket opened again on the host
//! veth end) with its MAC, addresses and routes as they were; a port whose namespace or
//! interface is gone is not forwarded for, shown as `gone` in `port list` and logged, and its
//! leftovers (a host veth end) are removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vswitch_api::{ApiError, PortInfo, PortState};
use vswitch_config::{AttachKind, RouteSpec};

use super::{sys_err, Daemon};
use crate::control::store::write_atomic;
use crate::control::{device, netconf};
use crate::dataplane::port::PortDev;
use crate::dataplane::worker::Command;

pub(super) const PORTS_FILE: &str = "ports.json";

/// What a port needs to be re-attached exactly as it was (also what a reservation holds while
/// its interface is being plumbed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PortRecord {
    pub(super) info: PortInfo,
    #[serde(default)]
    pub(super) router: bool,
    #[serde(default)]
    pub(super) routes: Vec<RouteSpec>,
    /// Tap offloads as opened (the network's `offloads`).
    #[serde(default = "yes")]
    pub(super) offloads: bool,
}

/// `ports.json` and its one writer at a time. Several ADDs plumb at once, each with its record
/// being written on a thread of its own, so writes can finish out of order: each snapshot gets
/// a generation (taken under the daemon lock, with the snapshot), and a snapshot older than
/// the one already on disk is not written (the newer one holds every port of the older that
/// still exists or is still being added). The file then always ends at the latest state.
pub(super) struct PortsFile {
    path: PathBuf,
    next: AtomicU64,
    written: Mutex<u64>,
}

impl PortsFile {
    pub(super) fn new(path: PathBuf) -> PortsFile {
        PortsFile {
            path,
            next: AtomicU64::new(1),
            written: Mutex::new(0),
        }
    }

    /// The generation of a snapshot taken now (call under the daemon lock, with the snapshot).
    fn generation(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn write(&self, generation: u64, records: &[PortRecord]) -> Result<(), ApiError> {
        let mut last = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *last > generation {
            return Ok(());
        }
        write_records(&self.path, records)?;
        *last = generation;
        Ok(())
    }
}

fn yes() -> bool {
    true
}

/// How long a tap may stay attached to the previous daemon after it died (its io_uring holds the
/// tap's file until the kernel's deferred ring teardown has run).
const TAP_BUSY_WAIT: Duration = Duration::from_secs(3);

fn reopen_tap(ns: &Path, ifname: &str, offloads: bool) -> Result<PortDev, String> {
    let deadline = Instant::now() + TAP_BUSY_WAIT;
    loop {
        match device::reopen_tap(ns, ifname, offloads) {
            Ok(Ok(d)) => return Ok(d),
            Ok(Err(e)) if e.is_busy() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(Err(e)) => return Err(format!("tap: {e}")),
            Err(e) => return Err(format!("enter netns: {e}")),
        }
    }
}

fn write_records(path: &Path, records: &[PortRecord]) -> Result<(), ApiError> {
    let text = serde_json::to_vec_pretty(records).map_err(|e| sys_err("encode ports", e))?;
    write_atomic(path, &text).map_err(|e| sys_err(&format!("write {}", path.display()), e))
}

impl Daemon {
    /// Writes every live port (and the gone ones still shown) to the state dir, durably.
    pub(super) fn persist_ports(&self) -> Result<(), ApiError> {
        if self.restoring {
            return Ok(());
        }
        let generation = self.ports_file.generation();
        self.ports_file.write(generation, &self.records())
    }

    /// Like [`Daemon::persist_ports`] (reservations included: call it once the port being added
    /// is reserved), on a thread of its own so the fsyncs overlap with plumbing; join it before
    /// the ADD returns.
    pub(super) fn spawn_persist(&self) -> std::thread::JoinHandle<Result<(), ApiError>> {
        let records = self.records();
        let file = Arc::clone(&self.ports_file);
        let generation = file.generation();
        std::thread::spawn(move || file.write(generation, &records))
    }

    fn records(&self) -> Vec<PortRecord> {
        self.ports
            .values()
            .map(|p| PortRecord {
                info: PortInfo {
                    state: PortState::Up,
                    ..p.info.clone()
                },
                router: p.router,
                routes: p.routes.clone(),
                offloads: self
                    .networks
                    .get(&p.info.network)
                    .is_none_or(|n| n.conf.offloads),
            })
            .chain(self.gone.values().map(|g| PortRecord {
                info: g.clone(),
                router: false,
                routes: Vec::new(),
                offloads: true,
            }))
            // Ports being plumbed: on disk before their ADD returns (a record whose interface
            // never came to be is reconciled as gone at the next start).
            .chain(self.reserved.values().cloned())
            .collect()
    }

    /// Re-attaches the persisted ports whose interfaces are alive; records the others as gone.
    pub(super) fn restore_ports(&mut self) -> anyhow::Result<()> {
        use anyhow::Context;
        let path = self.cfg.state_dir.join(PORTS_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let records: Vec<PortRecord> =
            serde_json::from_slice(&text).with_context(|| format!("parse {}", path.display()))?;
        let (mut restored, mut gone) = (0, 0);
        self.restoring = true;
        for rec in records {
            let id = rec.info.id.clone();
            if rec.info.state == PortState::Gone {
                self.gone.insert(id, rec.info);
                gone += 1;
                continue;
            }
            let mut info = rec.info.clone();
            match self.reattach(rec) {
                Ok(_) => {
                    tracing::info!(port = %id, network = %info.network, attach = %info.attach,
                        netns = %info.netns, "port restored: interface alive, re-attached");
                    restored += 1;
                }
                Err(why) => {
                    tracing::warn!(port = %id, network = %info.network, netns = %info.netns,
                        "port gone: {why}; not forwarded for, addresses kept until DEL");
                    info.state = PortState::Gone;
                    self.gone.insert(id, info);
                    gone += 1;
                }
            }
        }
        self.restoring = false;
        // Ports that failed to install after reopening were removed: their links go now.
        self.take_teardown().run();
        self.persist_ports().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Each port announced itself as it came back, before the ports after it existed: once
        // more now, so every pod (whose neighbour entries a tap's carrier loss flushed) learns
        // every local neighbour at once instead of at its next ARP retransmit.
        for p in self.ports.values() {
            if let Some(w) = self.workers.get(p.info.worker) {
                let _ = w.call(Command::Announce { idx: p.idx });
            }
        }
        if restored + gone > 0 {
            tracing::info!(
                restored,
                gone,
                "ports reconciled with the interfaces that exist"
            );
        }
        Ok(())
    }

    /// Opens a persisted port's device again and installs it; on failure, why it is gone.
    fn reattach(&mut self, rec: PortRecord) -> Result<PortInfo, String> {
        let info = rec.info;
        if !self.networks.contains_key(&info.network) {
            return Err(format!("network {:?} no longer exists", info.network));
        }
        let ns = netconf::netns_path(&info.netns);
        if !ns.exists() {
            if info.attach == AttachKind::AfPacket {
                netconf::delete_link(&info.host_ifname);
            }
            return Err(format!("netns {} is gone", ns.display()));
        }
        let dev = match info.attach {
            AttachKind::Tap => reopen_tap(&ns, &info.ifname, rec.offloads)?,
            AttachKind::AfPacket => {
                if !device::exists_in(&ns, &info.ifname) {
                    netconf::delete_link(&info.host_ifname);
                    return Err(format!("no {} in the pod", info.ifname));
                }
                device::open_packet(&info.host_ifname)
                    .map_err(|e| format!("host end {}: {e}", info.host_ifname))?
            }
        };
        let info = PortInfo {
            state: PortState::Restored,
            ..info
        };
        let id = info.id.clone();
        let routes = rec.routes.clone();
        let out = self
            .install_port(info, dev, rec.router, rec.routes)
            .map_err(|e| e.to_string())?;
        if out.container_id.is_some() {
            self.port_routes.insert(id, routes);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots written out of order (their threads finish in any order): an older one never
    /// replaces a newer one on disk.
    #[test]
    fn older_snapshot_never_overwrites_a_newer_one() {
        let dir = std::env::temp_dir().join(format!("vswitch-portsfile-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let f = PortsFile::new(dir.join(PORTS_FILE));
        let rec = |id: &str| -> PortRecord {
            let text = format!(
                r#"{{"info": {{"id": "{id}", "network": "n", "netns": "p", "ifname": "e",
                "host_ifname": "e", "attach": "tap", "mac": "02:00:00:00:00:01", "ips": [],
                "mtu": 1500, "worker": 0}}}}"#
            );
            serde_json::from_str(&text).unwrap()
        };
        let (g1, g2) = (f.generation(), f.generation());
        f.write(g2, &[rec("a"), rec("b")]).unwrap();
        f.write(g1, &[rec("a")]).unwrap();
        let on_disk: Vec<PortRecord> =
            serde_json::from_slice(&std::fs::read(dir.join(PORTS_FILE)).unwrap()).unwrap();
        assert_eq!(on_disk.len(), 2);
        let g3 = f.generation();
        f.write(g3, &[]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(PORTS_FILE)).unwrap(), "[]");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A record with only the port's info (as a minimal or older writer leaves it) reads back
    /// with the defaults a re-attach needs: not a router, no routes, offloads on, state `up`.
    #[test]
    fn minimal_record_gets_defaults() {
        let text = r#"[{"info": {"id": "c1/eth0", "network": "net", "netns": "/run/netns/p",
            "ifname": "eth0", "host_ifname": "eth0", "attach": "tap",
            "mac": "02:00:00:00:00:01", "ips": ["10.0.0.2"], "mtu": 1500, "worker": 0}}]"#;
        let recs: Vec<PortRecord> = serde_json::from_str(text).unwrap();
        assert_eq!(recs.len(), 1);
        let r = &recs[0];
        assert!(!r.router && r.routes.is_empty() && r.offloads);
        assert_eq!(r.info.state, PortState::Up);
        assert_eq!(r.info.container_id, None);
    }

    #[test]
    fn gone_state_round_trips() {
        let text = r#"{"info": {"id": "x", "network": "net", "netns": "p", "ifname": "eth1",
            "host_ifname": "vsh1", "attach": "af_packet", "state": "gone",
            "mac": "02:00:00:00:00:02", "ips": [], "mtu": 1400, "worker": 1}}"#;
        let r: PortRecord = serde_json::from_str(text).unwrap();
        assert_eq!(r.info.state, PortState::Gone);
        let back: PortRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.info, r.info);
        assert_eq!(PortState::Restored.to_string(), "restored");
    }
}
