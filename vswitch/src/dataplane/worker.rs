//! Dataplane worker threads: plain threads (no async on the fast path), each with its own epoll,
//! buffer pool and copy of the switching tables. The control thread changes tables only through
//! [`Command`]s that a worker applies between batches, so workers never take a lock and never
//! block on the control plane.
//!
//! Each port is polled for rx by exactly one worker; any worker may transmit to any port (tap
//! writes and AF_PACKET sends are safe from several threads).

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::counters::{DropCounters, DropReason, PortCounters};
use super::fdb::PortIdx;
use super::pipeline::{
    DomainConf, DomainIdx, FdbRow, PeerConf, PeerIdx, PortConf, Switch, UnderlayConf, Verdict, Wire,
};
use super::pool::{BufferPool, Desc, HEADROOM, MAX_FRAME};
use crate::packet::{encap, ethernet, ipv4, EtherType, EthernetFrame, Ipv4Packet};
use crate::sys::inet::{self, InetSocket};
use crate::sys::packet::PacketSocket;
use crate::sys::poll::{Epoll, Event, EventFd};
use crate::sys::tap::{Tap, VNET_HDR_LEN};

/// Frames read from one port before moving on (fairness between ports, bounded latency).
pub const RX_BATCH: usize = 64;
/// Frames queued for one AF_PACKET port before a `sendmmsg`.
pub const TX_BATCH: usize = 64;
/// Ring blocks taken from one AF_PACKET port per poll.
const RX_BLOCKS: usize = 4;
const POOL_BUFFERS: usize = 1024;
const MAX_LEARNED_PER_DOMAIN: usize = 8192;
const CONTROL_TOKEN: u64 = u64::MAX;
const VXLAN_TOKEN: u64 = u64::MAX - 1;
const IPIP_TOKEN: u64 = u64::MAX - 2;
const DIRECT_TOKEN: u64 = u64::MAX - 3;

/// The node's underlay sockets: one raw socket sends everything we build (VXLAN, IPIP, direct);
/// VXLAN arrives on a UDP socket, IPIP on a raw protocol-4 socket, directly routed pod packets
/// through an AF_PACKET ring on the underlay interface.
#[derive(Debug)]
pub struct Uplink {
    pub local_ip: Ipv4Addr,
    pub vxlan_port: u16,
    pub tx: InetSocket,
    pub vxlan_rx: InetSocket,
    pub ipip_rx: InetSocket,
    pub direct_rx: Option<PacketSocket>,
}

/// The device behind a port.
#[derive(Debug)]
pub enum PortIo {
    Tap(Tap),
    AfPacket(PacketSocket),
}

impl PortIo {
    fn raw_fd(&self) -> i32 {
        match self {
            PortIo::Tap(t) => t.raw_fd(),
            PortIo::AfPacket(s) => s.raw_fd(),
        }
    }
}

/// A change to a worker's tables.
pub enum Command {
    AddDomain {
        idx: DomainIdx,
        conf: DomainConf,
    },
    RemoveDomain {
        idx: DomainIdx,
    },
    AddPort {
        idx: PortIdx,
        conf: PortConf,
        io: Arc<PortIo>,
        counters: Arc<PortCounters>,
        /// This worker owns the port's rx.
        poll: bool,
    },
    RemovePort {
        idx: PortIdx,
    },
    DumpFdb {
        domain: DomainIdx,
        reply: mpsc::Sender<Vec<FdbRow>>,
    },
    /// Attach the underlay (`poll`: this worker receives from it).
    SetUplink {
        uplink: Arc<Uplink>,
        underlay: UnderlayConf,
        poll: bool,
    },
    SetPeer {
        idx: PeerIdx,
        conf: PeerConf,
    },
    RemovePeer {
        idx: PeerIdx,
    },
    SetDomainPeers {
        domain: DomainIdx,
        peers: Vec<PeerIdx>,
        routes: Vec<(vswitch_config::Ipv4Net, PeerIdx)>,
    },
    AddRemoteEndpoint {
        domain: DomainIdx,
        mac: vswitch_config::MacAddr,
        ip: Option<Ipv4Addr>,
        peer: PeerIdx,
    },
    RemoveRemoteEndpoint {
        domain: DomainIdx,
        mac: vswitch_config::MacAddr,
        ip: Option<Ipv4Addr>,
    },
    /// Flood a gratuitous ARP for each IP of a new port (L2 domains), so that neighbours that
    /// cached an old owner of a reused IP learn the new MAC at once.
    Announce {
        idx: PortIdx,
    },
    /// Whether MLD reports steer IPv6 multicast: off with several workers, each of which sees
    /// only its own ports' reports (until learned state is shared between workers).
    SetMldSnooping(bool),
    Shutdown,
}

/// The control thread's handle on a worker.
pub struct WorkerHandle {
    pub id: usize,
    tx: mpsc::Sender<(Command, mpsc::Sender<()>)>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Applies `cmd` on the worker and waits until it has (bounded wait: a wedged worker must not
    /// hang the control plane forever).
    pub fn call(&self, cmd: Command) -> io::Result<()> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.tx
            .send((cmd, ack_tx))
            .map_err(|_| io::Error::other(format!("worker {} has stopped", self.id)))?;
        self.wake.notify();
        ack_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other(format!("worker {} did not answer in 5 s", self.id)))
    }

    pub fn shutdown(mut self) {
        let _ = self.call(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts worker `id`.
pub fn spawn(id: usize, aging_secs: u64, drops: Arc<DropCounters>) -> io::Result<WorkerHandle> {
    let epoll = Epoll::new()?;
    let wake = Arc::new(EventFd::new()?);
    epoll.add(wake.raw(), CONTROL_TOKEN)?;
    let (tx, rx) = mpsc::channel();
    let wake2 = wake.clone();
    let thread = std::thread::Builder::new()
        .name(format!("vswitch-worker-{id}"))
        .spawn(move || {
            let mut w = Worker {
                id,
                epoll,
                wake: wake2,
                commands: rx,
                switch: Switch::new(aging_secs, MAX_LEARNED_PER_DOMAIN),
                pool: BufferPool::new(POOL_BUFFERS),
                ports: Vec::new(),
                drops,
                flood_scratch: Vec::with_capacity(64),
                started: Instant::now(),
                now: 0,
                uplink: None,
                uplink_tx: Vec::with_capacity(inet::BATCH),
                peer_by_ip: HashMap::new(),
                vni_domains: HashMap::new(),
                direct_next_block: 0,
                peer_scratch: Vec::with_capacity(16),
            };
            w.run();
        })?;
    Ok(WorkerHandle {
        id,
        tx,
        wake,
        thread: Some(thread),
    })
}

struct WorkerPort {
    io: Arc<PortIo>,
    counters: Arc<PortCounters>,
    polled: bool,
    /// Next TPACKET_V3 block to read (AF_PACKET ports polled here).
    next_block: usize,
    /// Frames waiting for one `sendmmsg` (AF_PACKET ports).
    pending: Vec<Desc>,
}

struct Worker {
    id: usize,
    epoll: Epoll,
    wake: Arc<EventFd>,
    commands: mpsc::Receiver<(Command, mpsc::Sender<()>)>,
    switch: Switch,
    pool: BufferPool,
    ports: Vec<Option<WorkerPort>>,
    drops: Arc<DropCounters>,
    flood_scratch: Vec<PortIdx>,
    started: Instant,
    now: u64,
    uplink: Option<Arc<Uplink>>,
    /// Encapsulated or routed packets waiting for one `sendmmsg` (outer packet, peer IP).
    uplink_tx: Vec<(Desc, Ipv4Addr)>,
    peer_by_ip: HashMap<Ipv4Addr, PeerIdx>,
    vni_domains: HashMap<u32, DomainIdx>,
    direct_next_block: usize,
    peer_scratch: Vec<Ipv4Addr>,
}

impl Worker {
    fn run(&mut self) {
        let mut events = [Event::EMPTY; 64];
        let mut last_expire = 0;
        tracing::debug!(worker = self.id, "worker started");
        loop {
            let n = match self
                .epoll
                .wait(&mut events, Some(Duration::from_millis(500)))
            {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(worker = self.id, "epoll_wait: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    0
                }
            };
            self.now = self.started.elapsed().as_secs();
            let mut control = false;
            for ev in &events[..n] {
                match ev.token() {
                    CONTROL_TOKEN => control = true,
                    VXLAN_TOKEN => self.rx_vxlan(),
                    IPIP_TOKEN => self.rx_ipip(),
                    DIRECT_TOKEN => self.rx_direct(),
                    t => self.rx_port(t as PortIdx),
                }
            }
            if control {
                self.wake.drain();
                while let Ok((cmd, ack)) = self.commands.try_recv() {
                    let stop = matches!(cmd, Command::Shutdown);
                    self.apply(cmd);
                    let _ = ack.send(());
                    if stop {
                        tracing::debug!(worker = self.id, "worker stopped");
                        return;
                    }
                }
            }
            if self.now > last_expire {
                last_expire = self.now;
                self.switch.expire(self.now);
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::AddDomain { idx, conf } => {
                if let Some(vni) = conf.vni {
                    self.vni_domains.insert(vni, idx);
                }
                self.switch.add_domain(idx, conf);
            }
            Command::RemoveDomain { idx } => {
                self.vni_domains.retain(|_, d| *d != idx);
                self.switch.remove_domain(idx);
            }
            Command::SetUplink {
                uplink,
                underlay,
                poll,
            } => {
                if poll {
                    let socks = [
                        (uplink.vxlan_rx.raw_fd(), VXLAN_TOKEN),
                        (uplink.ipip_rx.raw_fd(), IPIP_TOKEN),
                    ];
                    for (fd, token) in socks {
                        if let Err(e) = self.epoll.add(fd, token) {
                            tracing::error!(worker = self.id, "epoll add uplink: {e}");
                        }
                    }
                    if let Some(d) = &uplink.direct_rx {
                        if let Err(e) = self.epoll.add(d.raw_fd(), DIRECT_TOKEN) {
                            tracing::error!(worker = self.id, "epoll add underlay ring: {e}");
                        }
                    }
                }
                self.switch.set_underlay(Some(underlay));
                self.uplink = Some(uplink);
            }
            Command::SetPeer { idx, conf } => {
                self.peer_by_ip.retain(|_, p| *p != idx);
                self.peer_by_ip.insert(conf.underlay_ip, idx);
                self.switch.set_peer(idx, conf);
            }
            Command::RemovePeer { idx } => {
                self.peer_by_ip.retain(|_, p| *p != idx);
                self.switch.remove_peer(idx);
            }
            Command::SetDomainPeers {
                domain,
                peers,
                routes,
            } => self.switch.set_domain_peers(domain, peers, routes),
            Command::AddRemoteEndpoint {
                domain,
                mac,
                ip,
                peer,
            } => self.switch.add_remote_endpoint(domain, mac, ip, peer),
            Command::Announce { idx } => self.announce(idx),
            Command::RemoveRemoteEndpoint { domain, mac, ip } => {
                self.switch.remove_remote_endpoint(domain, mac, ip)
            }
            Command::AddPort {
                idx,
                conf,
                io,
                counters,
                poll,
            } => {
                if poll {
                    if let Err(e) = self.epoll.add(io.raw_fd(), u64::from(idx)) {
                        tracing::error!(worker = self.id, port = idx, "epoll add: {e}");
                    }
                }
                self.switch.add_port(idx, conf);
                let i = idx as usize;
                if self.ports.len() <= i {
                    self.ports.resize_with(i + 1, || None);
                }
                self.ports[i] = Some(WorkerPort {
                    io,
                    counters,
                    polled: poll,
                    next_block: 0,
                    pending: Vec::with_capacity(TX_BATCH),
                });
            }
            Command::RemovePort { idx } => {
                self.switch.remove_port(idx);
                if let Some(p) = self.ports.get_mut(idx as usize).and_then(Option::take) {
                    if p.polled {
                        let _ = self.epoll.del(p.io.raw_fd());
                    }
                    for d in p.pending {
                        self.pool.release(d.buf);
                    }
                }
            }
            Command::DumpFdb { domain, reply } => {
                let _ = reply.send(self.switch.fdb_rows(domain, self.now));
            }
            Command::SetMldSnooping(on) => self.switch.set_mld_snooping(on),
            Command::Shutdown => {}
        }
    }

    /// Reads one batch from port `idx`, switches every frame, then flushes queued tx.
    fn rx_port(&mut self, idx: PortIdx) {
        let Some(Some(port)) = self.ports.get(idx as usize) else {
            return;
        };
        let io = port.io.clone();
        match &*io {
            PortIo::Tap(tap) => {
                for _ in 0..RX_BATCH {
                    let Some(b) = self.pool.alloc() else {
                        self.drops.inc(DropReason::BufferPoolEmpty);
                        break;
                    };
                    let buf = self.pool.buf_mut(b);
                    match tap.read(&mut buf[HEADROOM - VNET_HDR_LEN..]) {
                        Ok(n) if n > VNET_HDR_LEN => {
                            let d = Desc {
                                buf: b,
                                off: HEADROOM as u32,
                                len: (n - VNET_HDR_LEN) as u32,
                            };
                            self.switch_frame(idx, d, false);
                        }
                        Ok(_) => {
                            self.pool.release(b);
                            self.count_rx_drop(idx, DropReason::FrameTooShort);
                        }
                        Err(e) => {
                            self.pool.release(b);
                            if e.kind() != io::ErrorKind::WouldBlock {
                                tracing::debug!(port = idx, "tap read: {e}");
                            }
                            break;
                        }
                    }
                }
            }
            PortIo::AfPacket(sock) => {
                let mut next = port.next_block;
                sock.rx_blocks(&mut next, RX_BLOCKS, |frame, vlan| {
                    if frame.len() > MAX_FRAME {
                        self.count_rx_drop(idx, DropReason::FrameTooLong);
                        return;
                    }
                    let Some(b) = self.pool.alloc() else {
                        self.drops.inc(DropReason::BufferPoolEmpty);
                        return;
                    };
                    self.pool.buf_mut(b)[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
                    let d = Desc {
                        buf: b,
                        off: HEADROOM as u32,
                        len: frame.len() as u32,
                    };
                    self.switch_frame(idx, d, vlan);
                });
                if let Some(Some(p)) = self.ports.get_mut(idx as usize) {
                    p.next_block = next;
                }
            }
        }
        self.flush_all();
    }

    fn count_rx_drop(&mut self, idx: PortIdx, r: DropReason) {
        self.drops.inc(r);
        if let Some(Some(p)) = self.ports.get(idx as usize) {
            p.counters
                .rx_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn switch_frame(&mut self, in_port: PortIdx, d: Desc, vlan: bool) {
        if let Some(Some(p)) = self.ports.get(in_port as usize) {
            p.counters.rx(d.len as usize);
        }
        let range = d.off as usize..(d.off + d.len) as usize;
        let verdict = self.switch.process(
            in_port,
            &mut self.pool.buf_mut(d.buf)[range],
            vlan,
            self.now,
        );
        self.apply_verdict(Some(in_port), None, d, verdict);
        self.pool.release(d.buf);
    }

    fn announce(&mut self, idx: PortIdx) {
        let Some(conf) = self.switch.port(idx).cloned() else {
            return;
        };
        if self
            .switch
            .domain_conf(conf.domain)
            .is_none_or(|d| d.kind != vswitch_config::NetworkKind::L2)
        {
            return;
        }
        let peers = !self.switch.flood_peers(idx).0.is_empty();
        for ip in &conf.ips {
            let Some(b) = self.pool.alloc() else {
                self.drops.inc(DropReason::BufferPoolEmpty);
                return;
            };
            let f = &mut self.pool.buf_mut(b)[HEADROOM..HEADROOM + 60];
            f.fill(0);
            let mut eth = EthernetFrame::new_unchecked(&mut *f);
            eth.set_dst(vswitch_config::MacAddr::BROADCAST);
            eth.set_src(conf.mac);
            eth.set_ethertype(EtherType::Arp);
            crate::packet::arp::emit(
                &mut f[ethernet::HEADER_LEN..],
                crate::packet::arp::OP_REQUEST,
                conf.mac,
                *ip,
                vswitch_config::MacAddr::ZERO,
                *ip,
            );
            let d = Desc {
                buf: b,
                off: HEADROOM as u32,
                len: 60,
            };
            self.apply_verdict(Some(idx), None, d, Verdict::Flood { peers });
            self.pool.release(b);
        }
        self.flush_all();
    }

    /// Carries out a verdict for frame `d`, which came from local port `in_port` or, for frames
    /// from the underlay, belongs to `tunnel_domain`.
    fn apply_verdict(
        &mut self,
        in_port: Option<PortIdx>,
        tunnel_domain: Option<DomainIdx>,
        d: Desc,
        verdict: Verdict,
    ) {
        match verdict {
            Verdict::Drop(r) => match in_port {
                Some(p) => self.count_rx_drop(p, r),
                None => self.drops.inc(r),
            },
            Verdict::Forward(p) => self.tx(p, d),
            Verdict::Reply => {
                if let Some(p) = in_port {
                    self.tx(p, d);
                }
            }
            Verdict::ReplyResized(n) => {
                if let Some(p) = in_port {
                    self.tx(p, Desc { len: n as u32, ..d });
                }
            }
            Verdict::Flood { peers } => {
                let mut targets = std::mem::take(&mut self.flood_scratch);
                targets.clear();
                match (in_port, tunnel_domain) {
                    (Some(p), _) => targets.extend(self.switch.flood_targets(p)),
                    (None, Some(dom)) => targets.extend_from_slice(self.switch.domain_ports(dom)),
                    (None, None) => {}
                }
                for p in &targets {
                    self.tx(*p, d);
                }
                if peers {
                    if let Some(p) = in_port {
                        self.flood_to_peers(p, d);
                    }
                }
                self.flood_scratch = targets;
            }
            Verdict::Tunnel { peer, wire } => self.tunnel(peer, wire, d),
            Verdict::Absorb(a) => self.drops.absorb(a),
            Verdict::Multicast { to, peers } => {
                let Some(p) = in_port else { return };
                let mut targets = std::mem::take(&mut self.flood_scratch);
                targets.clear();
                targets.extend(self.switch.mcast_targets(p, to));
                for t in &targets {
                    self.tx(*t, d);
                }
                if peers {
                    self.flood_to_peers(p, d);
                }
                self.flood_scratch = targets;
            }
        }
    }

    /// Head-end replication of a flooded frame to every peer of the ingress port's domain. The
    /// outer headers of each copy are written into the same headroom one after the other, so
    /// each copy is sent before the next is built.
    fn flood_to_peers(&mut self, in_port: PortIdx, d: Desc) {
        let Some(up) = self.uplink.clone() else {
            return;
        };
        let (peers, vni) = self.switch.flood_peers(in_port);
        let mut targets = std::mem::take(&mut self.peer_scratch);
        targets.clear();
        targets.extend(
            peers
                .iter()
                .filter_map(|p| self.switch.peer(*p).map(|c| c.underlay_ip)),
        );
        let sport = encap::vxlan_src_port(encap::flow_hash(self.pool.frame(d)));
        for &dst in &targets {
            let buf = self.pool.buf_mut(d.buf);
            let start = encap::push_vxlan(
                buf,
                d.off as usize,
                d.len as usize,
                up.local_ip,
                dst,
                sport,
                up.vxlan_port,
                vni,
            );
            let pkt = &buf[start..(d.off + d.len) as usize];
            if up
                .tx
                .send_batch(&[(IoSlice::new(pkt), dst)])
                .map_or(true, |n| n == 0)
            {
                self.drops.inc(DropReason::TxFailed);
            }
        }
        self.peer_scratch = targets;
    }

    /// Encapsulates (or, for direct routing, strips the Ethernet header of) frame `d` for `peer`
    /// and queues it for the underlay.
    fn tunnel(&mut self, peer: PeerIdx, wire: Wire, d: Desc) {
        // Copies, not an Arc clone: no atomic refcount traffic per packet.
        let up = self.uplink.as_ref().map(|u| (u.local_ip, u.vxlan_port));
        let (Some((local_ip, vxlan_port)), Some(pc)) = (up, self.switch.peer(peer).copied()) else {
            self.drops.inc(DropReason::NoRoute);
            return;
        };
        let (off, len) = (d.off as usize, d.len as usize);
        let eth = ethernet::HEADER_LEN;
        let out = match wire {
            Wire::Vxlan { vni } => {
                let sport = encap::vxlan_src_port(encap::flow_hash(self.pool.frame(d)));
                let buf = self.pool.buf_mut(d.buf);
                let start = encap::push_vxlan(
                    buf,
                    off,
                    len,
                    local_ip,
                    pc.underlay_ip,
                    sport,
                    vxlan_port,
                    vni,
                );
                Desc {
                    buf: d.buf,
                    off: start as u32,
                    len: (off + len - start) as u32,
                }
            }
            Wire::Ipip => {
                let buf = self.pool.buf_mut(d.buf);
                let tos = buf.get(off + eth + 1).copied().unwrap_or(0);
                let start =
                    encap::push_ipip(buf, off + eth, len - eth, local_ip, pc.underlay_ip, tos);
                Desc {
                    buf: d.buf,
                    off: start as u32,
                    len: (off + len - start) as u32,
                }
            }
            Wire::Direct => Desc {
                buf: d.buf,
                off: (off + eth) as u32,
                len: (len - eth) as u32,
            },
        };
        self.pool.retain(d.buf);
        self.uplink_tx.push((out, pc.underlay_ip));
        if self.uplink_tx.len() >= inet::BATCH {
            self.flush_uplink();
        }
    }

    fn flush_uplink(&mut self) {
        if self.uplink_tx.is_empty() {
            return;
        }
        let Some(up) = self.uplink.clone() else {
            for (d, _) in self.uplink_tx.drain(..) {
                self.pool.release(d.buf);
            }
            return;
        };
        let n = self.uplink_tx.len().min(inet::BATCH);
        let mut msgs = [(IoSlice::new(&[]), Ipv4Addr::UNSPECIFIED); inet::BATCH];
        for (m, (d, ip)) in msgs.iter_mut().zip(&self.uplink_tx) {
            *m = (IoSlice::new(self.pool.frame(*d)), *ip);
        }
        let mut sent = 0;
        while sent < n {
            match up.tx.send_batch(&msgs[sent..n]) {
                Ok(0) => break,
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!("underlay send: {e}");
                    // Skip the packet the kernel refused (e.g. EMSGSIZE, no route) and go on.
                    self.drops.inc(DropReason::TxFailed);
                    sent += 1;
                }
            }
        }
        for (d, _) in self.uplink_tx.drain(..) {
            self.pool.release(d.buf);
        }
    }

    /// Receives a batch from `sock` into fresh pool buffers at `off`; calls `f(self, desc, src)`
    /// for each datagram.
    fn rx_datagrams(
        &mut self,
        which: u64,
        off: usize,
        mut f: impl FnMut(&mut Self, Desc, Ipv4Addr),
    ) {
        let Some(up) = self.uplink.clone() else {
            return;
        };
        let sock = if which == VXLAN_TOKEN {
            &up.vxlan_rx
        } else {
            &up.ipip_rx
        };
        for _ in 0..4 {
            let mut bufs = [0 as super::pool::BufIdx; inet::BATCH];
            let mut k = 0;
            while k < inet::BATCH {
                match self.pool.alloc() {
                    Some(b) => {
                        bufs[k] = b;
                        k += 1;
                    }
                    None => break,
                }
            }
            if k == 0 {
                self.drops.inc(DropReason::BufferPoolEmpty);
                return;
            }
            let mut out = [(0usize, Ipv4Addr::UNSPECIFIED); inet::BATCH];
            let mut ranges = [(0usize, 0usize); inet::BATCH];
            for (r, b) in ranges.iter_mut().zip(&bufs[..k]) {
                *r = (
                    *b as usize * super::pool::BUF_SIZE + off,
                    super::pool::BUF_SIZE - off,
                );
            }
            let got = sock.recv_into(self.pool.all_mut(), &ranges[..k], &mut out);
            let got = got.unwrap_or_default();
            for (i, b) in bufs[..k].iter().enumerate() {
                if i >= got {
                    self.pool.release(*b);
                }
            }
            for (i, (len, src)) in out[..got].iter().enumerate() {
                f(
                    self,
                    Desc {
                        buf: bufs[i],
                        off: off as u32,
                        len: *len as u32,
                    },
                    *src,
                );
            }
            self.flush_all();
            if got < k {
                return;
            }
        }
    }

    fn rx_vxlan(&mut self) {
        // The 8-byte VXLAN header lands just before HEADROOM, so the inner frame starts there.
        self.rx_datagrams(VXLAN_TOKEN, HEADROOM - encap::VXLAN_HDR_LEN, |w, d, src| {
            let payload = w.pool.frame(d);
            let vni = match encap::parse_vxlan(payload) {
                Ok(v) => v,
                Err(_) => {
                    w.drops.inc(DropReason::MalformedTunnel);
                    w.pool.release(d.buf);
                    return;
                }
            };
            let Some(&peer) = w.peer_by_ip.get(&src) else {
                w.drops.inc(DropReason::UnknownPeer);
                w.pool.release(d.buf);
                return;
            };
            let Some(&dom) = w.vni_domains.get(&vni) else {
                w.drops.inc(DropReason::UnknownVni);
                w.pool.release(d.buf);
                return;
            };
            let inner = Desc {
                buf: d.buf,
                off: HEADROOM as u32,
                len: d.len - encap::VXLAN_HDR_LEN as u32,
            };
            let now = w.now;
            let range = inner.off as usize..(inner.off + inner.len) as usize;
            let verdict =
                w.switch
                    .process_tunnel(dom, peer, &mut w.pool.buf_mut(d.buf)[range], now);
            w.apply_verdict(None, Some(dom), inner, verdict);
            w.pool.release(d.buf);
        });
    }

    fn rx_ipip(&mut self) {
        // Outer IPv4 header (20 bytes without options) lands before HEADROOM; the inner packet at
        // HEADROOM, with room for the Ethernet header we write in front of it.
        self.rx_datagrams(IPIP_TOKEN, HEADROOM - ipv4::MIN_HEADER_LEN, |w, d, src| {
            let (hl, total) = match encap::outer_ipv4(w.pool.frame(d)) {
                Ok((_, hl, total)) => (hl, total),
                Err(_) => {
                    w.drops.inc(DropReason::MalformedTunnel);
                    w.pool.release(d.buf);
                    return;
                }
            };
            if !w.peer_by_ip.contains_key(&src) {
                w.drops.inc(DropReason::UnknownPeer);
                w.pool.release(d.buf);
                return;
            }
            let inner_off = d.off as usize + hl;
            let inner_len = total.min(d.len as usize).saturating_sub(hl);
            w.deliver_routed(Desc {
                buf: d.buf,
                off: (inner_off - ethernet::HEADER_LEN) as u32,
                len: (inner_len + ethernet::HEADER_LEN) as u32,
            });
            w.pool.release(d.buf);
        });
    }

    /// Directly routed pod packets arriving on the underlay interface.
    fn rx_direct(&mut self) {
        let Some(up) = self.uplink.clone() else {
            return;
        };
        let Some(ring) = &up.direct_rx else { return };
        let mut next = self.direct_next_block;
        ring.rx_blocks(&mut next, RX_BLOCKS, |frame, _vlan| {
            let Ok(eth) = EthernetFrame::new_checked(frame) else {
                return;
            };
            if eth.ethertype() != EtherType::Ipv4 {
                return;
            }
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return;
            };
            // Only packets for our L3 networks' pods; everything else on the wire is not ours.
            if self.switch.l3_domain_for(ip.dst()).is_none() || ip.dst() == up.local_ip {
                return;
            }
            if frame.len() > MAX_FRAME {
                return;
            }
            let Some(b) = self.pool.alloc() else {
                self.drops.inc(DropReason::BufferPoolEmpty);
                return;
            };
            self.pool.buf_mut(b)[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
            self.deliver_routed(Desc {
                buf: b,
                off: HEADROOM as u32,
                len: frame.len() as u32,
            });
            self.pool.release(b);
        });
        self.direct_next_block = next;
        self.flush_all();
    }

    /// Delivers an IPv4 packet from another node (Ethernet header space at `d.off`) to its pod.
    fn deliver_routed(&mut self, d: Desc) {
        let dst = match Ipv4Packet::new_checked(&self.pool.frame(d)[ethernet::HEADER_LEN..]) {
            Ok(ip) => ip.dst(),
            Err(_) => {
                self.drops.inc(DropReason::MalformedTunnel);
                return;
            }
        };
        let Some(dom) = self.switch.l3_domain_for(dst) else {
            self.drops.inc(DropReason::NoRoute);
            return;
        };
        let range = d.off as usize..(d.off + d.len) as usize;
        let verdict = self
            .switch
            .process_routed_in(dom, &mut self.pool.buf_mut(d.buf)[range]);
        self.apply_verdict(None, Some(dom), d, verdict);
    }

    /// Sends (tap) or queues (AF_PACKET) frame `d` to port `p`. The caller keeps its own
    /// reference to the buffer; a queued frame takes another.
    fn tx(&mut self, p: PortIdx, d: Desc) {
        let Some(Some(port)) = self.ports.get_mut(p as usize) else {
            self.drops.inc(DropReason::PortGone);
            return;
        };
        match &*port.io {
            PortIo::Tap(tap) => {
                let off = d.off as usize;
                let buf = self.pool.buf_mut(d.buf);
                // A zero virtio-net header: no checksum offload or GSO requested.
                buf[off - VNET_HDR_LEN..off].fill(0);
                match tap.write(&buf[off - VNET_HDR_LEN..off + d.len as usize]) {
                    Ok(_) => port.counters.tx(d.len as usize),
                    Err(_) => {
                        port.counters
                            .tx_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        self.drops.inc(DropReason::TxFailed);
                    }
                }
            }
            PortIo::AfPacket(_) => {
                self.pool.retain(d.buf);
                port.pending.push(d);
                if port.pending.len() >= TX_BATCH {
                    self.flush(p);
                }
            }
        }
    }

    fn flush_all(&mut self) {
        self.flush_uplink();
        for p in 0..self.ports.len() {
            if matches!(&self.ports[p], Some(wp) if !wp.pending.is_empty()) {
                self.flush(p as PortIdx);
            }
        }
    }

    fn flush(&mut self, p: PortIdx) {
        let Some(Some(port)) = self.ports.get_mut(p as usize) else {
            return;
        };
        let PortIo::AfPacket(sock) = &*port.io else {
            return;
        };
        let mut slices = [IoSlice::new(&[]); TX_BATCH];
        let n = port.pending.len().min(TX_BATCH);
        for (s, d) in slices.iter_mut().zip(&port.pending[..n]) {
            *s = IoSlice::new(self.pool.frame(*d));
        }
        let mut sent = 0;
        while sent < n {
            match sock.send_batch(&slices[sent..n]) {
                Ok(0) => break,
                Ok(k) => sent += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        for d in &port.pending[..sent] {
            port.counters.tx(d.len as usize);
        }
        let failed = (n - sent) as u64;
        if failed > 0 {
            port.counters
                .tx_errors
                .fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
            for _ in 0..failed {
                self.drops.inc(DropReason::TxFailed);
            }
        }
        for d in port.pending.drain(..) {
            self.pool.release(d.buf);
        }
    }
}
