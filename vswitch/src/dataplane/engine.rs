//! One worker's forwarding: a received frame goes through the pipeline ([`Switch`]), then to
//! its egresses — local ports or peers — where it is queued as it is when the egress takes its
//! offloads, or segmented/checksummed in software for the one egress that cannot. No syscalls
//! here: queues are handed to a [`TxIo`] backend, so this is what the allocation-counting test
//! drives with fake ports.
//!
//! Frames from the underlay are coalesced first: consecutive TCP segments of one flow become
//! one superframe (the receive side of what the sender's TSO did), so the pod's stack and the
//! pipeline see one packet per 64 KiB.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::counters::{DropCounters, DropReason};
use super::fdb::PortIdx;
use super::overlay::{self, Overlay};
use super::pipeline::{DomainIdx, PeerIdx, Switch, Verdict, Wire};
use super::pool::{BufIdx, BufferPool, Desc, TxItem, HEADROOM};
use super::port::{Port, TxIo};
use super::trace::{Off, OffloadInfo, Recorder, Rx, Stage, Trace, WireKind};
use super::underlay::{Sock, UnderlayTx, HDR_SLOT};
use crate::observe::hub::{SessionMask, WorkerTrace};
use crate::packet::gro::{Run, TcpSeg};
use crate::packet::gso::{self, Layout, Plan, Verified};
use crate::packet::offload::{Csum, Gso, Offload, VNET_HDR_LEN};
use crate::packet::{encap, ethernet, ipv4};

/// Most segments in one `UDP_SEGMENT` send (the kernel's UDP_MAX_SEGMENTS is 64 on older
/// kernels, 128 today).
const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one send.
const MAX_UDP_PAYLOAD: usize = 65507;

/// Where a coalesced run came from, so it is delivered the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// VXLAN from `peer` (UDP source port `sport`) into an L2 (or L3) domain.
    Vxlan {
        domain: DomainIdx,
        peer: PeerIdx,
        sport: u16,
    },
    /// IPIP (outer source `src`) or direct routing (`src` none) into an L3 domain.
    Routed {
        domain: DomainIdx,
        src: Option<Ipv4Addr>,
    },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    origin: Origin,
    /// The head frame; grows as payloads are appended behind it.
    desc: Desc,
    run: Run,
    /// The head segment's checksum is still partial (a run of one leaves that way).
    partial: bool,
}

pub struct Engine {
    pub id: u16,
    pub switch: Switch,
    pub pool: BufferPool,
    pub ports: Vec<Option<Port>>,
    pub overlay: Overlay,
    pub uplink: Option<UnderlayTx>,
    pub drops: Arc<DropCounters>,
    /// Seconds since the worker started (FDB clock).
    pub now: u64,
    dirty: Vec<PortIdx>,
    flood: Vec<PortIdx>,
    peer_scratch: Vec<PeerIdx>,
    pending: Option<Pending>,
    /// Underlay MACs of peers on our L2 segment (direct routing through AF_PACKET).
    peer_macs: Vec<Option<vswitch_config::MacAddr>>,
    /// Segment headers written for an egress without offloads.
    seg_hdr: [u8; gso::MAX_HDR],
    /// Trace and capture sessions (none in unit tests); `trace_on` is refreshed once per turn.
    pub trace: Option<WorkerTrace>,
    trace_on: bool,
}

impl Engine {
    pub fn new(id: u16, switch: Switch, pool: BufferPool, drops: Arc<DropCounters>) -> Engine {
        Engine {
            id,
            switch,
            pool,
            ports: Vec::new(),
            overlay: Overlay::default(),
            uplink: None,
            drops,
            now: 0,
            dirty: Vec::with_capacity(256),
            flood: Vec::with_capacity(256),
            peer_scratch: Vec::with_capacity(64),
            pending: None,
            peer_macs: Vec::new(),
            seg_hdr: [0; gso::MAX_HDR],
            trace: None,
            trace_on: false,
        }
    }

    pub fn add_port(&mut self, idx: PortIdx, port: Port) {
        let i = idx as usize;
        if self.ports.len() <= i {
            self.ports.resize_with(i + 1, || None);
        }
        self.ports[i] = Some(port);
    }

    /// Removes a port; frames still queued for it are released.
    pub fn remove_port(&mut self, idx: PortIdx) -> Option<Port> {
        let mut p = self.ports.get_mut(idx as usize)?.take()?;
        for it in p.txq.drain(..) {
            self.pool.release(it.desc.buf);
        }
        self.dirty.retain(|d| *d != idx);
        Some(p)
    }

    /// The underlay MAC of `peer` (resolved by the control plane), or none.
    pub fn set_peer_mac(&mut self, peer: PeerIdx, mac: Option<vswitch_config::MacAddr>) {
        let i = peer as usize;
        if self.peer_macs.len() <= i {
            self.peer_macs.resize(i + 1, None);
        }
        self.peer_macs[i] = mac;
    }

    pub fn port(&self, idx: PortIdx) -> Option<&Port> {
        self.ports.get(idx as usize)?.as_ref()
    }

    /// Once per worker turn: whether a trace session runs (one relaxed load when none does).
    #[inline]
    pub fn begin_batch(&mut self) {
        self.trace_on = match &mut self.trace {
            Some(t) => t.begin_batch(),
            None => false,
        };
    }

    /// The sessions a frame may match (empty unless a session runs).
    #[inline]
    fn trace_mask(&self, rx: Rx, domain: Option<DomainIdx>, d: Desc) -> SessionMask {
        match (&self.trace, self.trace_on) {
            (Some(t), true) => t.wants(rx, domain, self.pool.frame(d)),
            _ => SessionMask::default(),
        }
    }

    /// The egress a verdict leads to, as trace stages (the pipeline recorded the rest).
    fn egress_stages(
        &self,
        r: &mut Recorder,
        in_port: Option<PortIdx>,
        domain: Option<DomainIdx>,
        v: Verdict,
        (frame, off): (&[u8], Offload),
    ) {
        let peers_of =
            |p: Option<PortIdx>| p.map_or(0, |p| self.switch.flood_peers(p).0.len() as u16);
        let segmented = |why: &'static str| Stage::Segment {
            segments: segments_of(frame, &off),
            gso_size: off.gso_size,
            why,
        };
        match v {
            Verdict::Forward(p) => {
                if off.is_gso() && self.port(p).is_some_and(|port| !port.caps.accepts(&off)) {
                    r.stage(|| segmented("egress port without offloads"));
                }
                r.stage(|| Stage::TxPort(p))
            }
            Verdict::Reply | Verdict::ReplyResized(_) => {
                if let Some(p) = in_port {
                    r.stage(|| Stage::TxPort(p));
                }
            }
            Verdict::Flood { peers } => {
                let ports = match in_port {
                    Some(p) => self.switch.flood_targets(p).count(),
                    None => domain.map_or(0, |d| self.switch.domain_ports(d).len()),
                } as u16;
                let peers = if peers { peers_of(in_port) } else { 0 };
                r.stage(|| Stage::Flood { ports, peers });
            }
            Verdict::Multicast { to, peers } => {
                let ports = in_port.map_or(0, |p| self.switch.mcast_targets(p, to).count()) as u16;
                let peers = if peers { peers_of(in_port) } else { 0 };
                r.stage(|| Stage::Flood { ports, peers });
            }
            Verdict::Tunnel { peer, wire } => {
                let outer_dst = self.switch.peer(peer).map(|c| c.underlay_ip);
                let outer_src = self.uplink.as_ref().map(|u| u.up.local_ip);
                if let (Some(outer_src), Some(outer_dst)) = (outer_src, outer_dst) {
                    let (kind, vni) = match wire {
                        Wire::Vxlan { vni } => (WireKind::Vxlan, Some(vni)),
                        Wire::Ipip => (WireKind::Ipip, None),
                        Wire::Direct => (WireKind::Direct, None),
                    };
                    let udp_src = match wire {
                        Wire::Vxlan { .. } => self.uplink.as_ref().and_then(|u| {
                            let ports = &u.up.vxlan_ports;
                            let i = overlay::vxlan_socket(encap::flow_hash(frame), ports.len());
                            ports.get(i).copied()
                        }),
                        _ => None,
                    };
                    if off.is_gso() {
                        let direct_whole = wire == Wire::Direct
                            && self
                                .peer_macs
                                .get(peer as usize)
                                .copied()
                                .flatten()
                                .is_some();
                        let why = match wire {
                            Wire::Vxlan { .. } => "UDP_SEGMENT train of equal VXLAN datagrams",
                            Wire::Ipip => "IPIP: one raw packet per segment",
                            Wire::Direct if direct_whole => {
                                "whole to the peer's MAC (the NIC or kernel segments)"
                            }
                            Wire::Direct => "direct via the raw socket: one packet per segment",
                        };
                        r.stage(|| segmented(why));
                    }
                    r.stage(|| Stage::Encap {
                        peer,
                        wire: kind,
                        outer_src,
                        outer_dst,
                        vni,
                        udp_src,
                    });
                }
            }
            Verdict::Drop(_) | Verdict::Absorb(_) => {}
        }
    }

    /// `rx_port_at` for a frame a trace session may want: the same pipeline with a recorder.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn rx_port_traced(
        &mut self,
        io: &mut dyn TxIo,
        p: PortIdx,
        d: Desc,
        off: Offload,
        vlan: bool,
        dom: Option<DomainIdx>,
        mask: SessionMask,
    ) {
        let Some(mut rec) = self
            .trace
            .as_ref()
            .map(|t| t.record(mask, Rx::Port(p), dom, self.pool.frame(d)))
        else {
            return;
        };
        let mut r = Recorder::default();
        let (worker, offload) = (self.id, offload_info(&off));
        r.stage(|| Stage::RxPort {
            port: p,
            worker,
            offload,
        });
        let now = self.now;
        let v = self
            .switch
            .ingress(p, self.pool.frame_mut(d), &off, vlan, now, &mut r);
        if let Verdict::Drop(_) = v {
            if let Some(Some(port)) = self.ports.get(p as usize) {
                port.counters.rx_drop();
            }
        }
        self.egress_stages(&mut r, Some(p), dom, v, (self.pool.frame(d), off));
        self.apply(io, Some(p), dom, d, off, v);
        rec.stages = r.stages;
        if let Some(t) = &self.trace {
            t.emit(mask, rec);
        }
    }

    /// Runs a frame as received on `p` through the live tables without sending it or changing
    /// anything (synthetic trace): the stages it would go through.
    pub fn dry_run(&mut self, p: PortIdx, frame: &mut [u8]) -> crate::observe::hub::Record {
        let dom = self.switch.port(p).map(|c| c.domain);
        let mut rec = crate::observe::hub::Record::new(self.id, Rx::Port(p), dom, frame, 0);
        rec.dry_run = true;
        let mut r = Recorder::dry_run();
        let worker = self.id;
        r.stage(|| Stage::RxPort {
            port: p,
            worker,
            offload: OffloadInfo::default(),
        });
        let now = self.now;
        let v = self
            .switch
            .ingress(p, frame, &Offload::NONE, false, now, &mut r);
        self.egress_stages(&mut r, Some(p), dom, v, (&*frame, Offload::NONE));
        rec.stages = r.stages;
        rec
    }

    // ---- receive ------------------------------------------------------------------------

    /// A frame read from local port `p`: buffer `buf` holds the virtio-net header at
    /// `HEADROOM - VNET_HDR_LEN` and the frame behind it; `len` counts both. Takes the buffer.
    pub fn rx_port(&mut self, io: &mut dyn TxIo, p: PortIdx, buf: BufIdx, len: usize) {
        self.rx_port_at(io, p, buf, HEADROOM - VNET_HDR_LEN, len, false);
    }

    /// As [`Engine::rx_port`] with the header at `at`; `vlan`: the kernel stripped a VLAN tag.
    pub fn rx_port_at(
        &mut self,
        io: &mut dyn TxIo,
        p: PortIdx,
        buf: BufIdx,
        at: usize,
        len: usize,
        vlan: bool,
    ) {
        let Some(port) = self.ports.get(p as usize).and_then(Option::as_ref) else {
            self.pool.release(buf);
            return;
        };
        if len <= VNET_HDR_LEN {
            port.counters.rx_drop();
            self.drops.inc(DropReason::FrameTooShort);
            self.pool.release(buf);
            return;
        }
        let flen = len - VNET_HDR_LEN;
        port.counters.rx(flen);
        let off = match Offload::parse(&self.pool.buf(buf)[at..at + VNET_HDR_LEN], flen) {
            Ok(o) => o,
            Err(_) => {
                port.counters.rx_drop();
                self.drops.inc(DropReason::BadOffload);
                self.pool.release(buf);
                return;
            }
        };
        let d = Desc::at(buf, at + VNET_HDR_LEN, flen);
        if self.trace_on {
            let dom = self.switch.port(p).map(|c| c.domain);
            let mask = self.trace_mask(Rx::Port(p), dom, d);
            if mask.any() {
                self.rx_port_traced(io, p, d, off, vlan, dom, mask);
                self.pool.release(buf);
                return;
            }
        }
        let now = self.now;
        let v = self
            .switch
            .ingress(p, self.pool.frame_mut(d), &off, vlan, now, &mut Off);
        if let Verdict::Drop(_) = v {
            if let Some(Some(port)) = self.ports.get(p as usize) {
                port.counters.rx_drop();
            }
        }
        let dom = self.switch.port(p).map(|c| c.domain);
        self.apply(io, Some(p), dom, d, off, v);
        self.pool.release(buf);
    }

    /// VXLAN datagrams received into `buf` at `at` (`len` bytes; with `gro_size`, several
    /// datagrams of that size back to back) from `src`. Takes the buffer.
    pub fn rx_vxlan(
        &mut self,
        io: &mut dyn TxIo,
        buf: BufIdx,
        at: usize,
        len: usize,
        (src, sport): (Ipv4Addr, u16),
        gro_size: u16,
    ) {
        // A kernel peer on a veth underlay hands its GSO packets over whole (one datagram, one
        // inner superframe), and `UDP_GRO` then reports the inner segment size, which is no
        // stride: such a datagram is one step. An inner UDP superframe goes on as one with that
        // datagram size, never merged or split (its datagram boundaries are the application's).
        let whole = whole_inner_packet(&self.pool.buf(buf)[at..at + len]);
        let udp_superframe = whole
            .filter(|l| gro_size > 0 && !l.is_tcp())
            .map(|l| Offload {
                gso: Gso::Udp,
                gso_size: gro_size,
                ..partial_at(l)
            });
        let step = if gro_size == 0 || whole.is_some() {
            len
        } else {
            usize::from(gro_size)
        };
        let mut off = 0;
        while off < len {
            let dlen = step.min(len - off);
            let start = at + off;
            off += dlen;
            let payload = &self.pool.buf(buf)[start..start + dlen];
            let (peer, domain) = match self.overlay.demux_vxlan(src, payload) {
                Ok(x) => x,
                Err(r) => {
                    self.drops.inc(r);
                    continue;
                }
            };
            let inner = Desc::at(
                buf,
                start + encap::VXLAN_HDR_LEN,
                dlen - encap::VXLAN_HDR_LEN,
            );
            let origin = Origin::Vxlan {
                domain,
                peer,
                sport,
            };
            match udp_superframe {
                Some(o) => {
                    self.gro_flush(io);
                    self.deliver(io, origin, inner, o);
                }
                None => self.gro_push(io, origin, inner),
            }
        }
        self.gro_flush(io);
        self.pool.release(buf);
    }

    /// An IPIP packet (outer IPv4 header at `at`) from `src`. The caller left at least an
    /// Ethernet header of room in front of `at + outer header`. Takes the buffer.
    pub fn rx_ipip(
        &mut self,
        io: &mut dyn TxIo,
        buf: BufIdx,
        at: usize,
        len: usize,
        src: Ipv4Addr,
    ) {
        let pkt = &self.pool.buf(buf)[at..at + len];
        match self.overlay.demux_ipip(src, pkt) {
            Ok((_, hl, inner)) => self.rx_routed(io, buf, at + hl, inner, Some(src)),
            Err(r) => self.drops.inc(r),
        }
        self.pool.release(buf);
    }

    /// A directly routed frame from the underlay interface (virtio-net header at `at`, `len`
    /// bytes with it). Takes the buffer.
    pub fn rx_direct(&mut self, io: &mut dyn TxIo, buf: BufIdx, at: usize, len: usize) {
        if len < VNET_HDR_LEN + ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN {
            self.drops.inc(DropReason::MalformedTunnel);
            self.pool.release(buf);
            return;
        }
        let flen = len - VNET_HDR_LEN;
        let hdr = &self.pool.buf(buf)[at..at + VNET_HDR_LEN];
        let off = Offload::parse(hdr, flen).unwrap_or(Offload::NONE);
        let ip_at = at + VNET_HDR_LEN + ethernet::HEADER_LEN;
        if off.is_gso() {
            // Already a superframe (the sender's TSO crossed the underlay whole).
            self.deliver_routed(io, buf, ip_at, flen - ethernet::HEADER_LEN, off);
        } else {
            self.rx_routed(io, buf, ip_at, flen - ethernet::HEADER_LEN, None);
        }
        self.pool.release(buf);
        self.gro_flush(io);
    }

    /// An IPv4 packet at `ip_at` (`ip_len` bytes) for an L3 domain, with room for an Ethernet
    /// header in front: into the coalescer.
    fn rx_routed(
        &mut self,
        io: &mut dyn TxIo,
        buf: BufIdx,
        ip_at: usize,
        ip_len: usize,
        src: Option<Ipv4Addr>,
    ) {
        let Some(dst) = ipv4_dst(&self.pool.buf(buf)[ip_at..ip_at + ip_len]) else {
            self.drops.inc(DropReason::MalformedTunnel);
            return;
        };
        let Some(domain) = self.switch.l3_domain_for(dst) else {
            self.drops.inc(DropReason::NoRoute);
            return;
        };
        let mut d = Desc::at(
            buf,
            ip_at - ethernet::HEADER_LEN,
            ip_len + ethernet::HEADER_LEN,
        );
        let copied = !self.pool.mem().writable(buf);
        if copied {
            match self.pool.copy(d) {
                Some(c) => d = c,
                None => {
                    self.drops.inc(DropReason::BufferPoolEmpty);
                    return;
                }
            }
        }
        // A placeholder Ethernet header (the pipeline writes the real one) so the coalescer
        // compares equal headers for one flow.
        let f = self.pool.frame_mut(d);
        f[..12].fill(0);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        self.gro_push(io, Origin::Routed { domain, src }, d);
        if copied {
            self.pool.release(d.buf);
        }
    }

    fn deliver_routed(
        &mut self,
        io: &mut dyn TxIo,
        buf: BufIdx,
        ip_at: usize,
        ip_len: usize,
        off: Offload,
    ) {
        let Some(dst) = ipv4_dst(&self.pool.buf(buf)[ip_at..ip_at + ip_len]) else {
            self.drops.inc(DropReason::MalformedTunnel);
            return;
        };
        let Some(domain) = self.switch.l3_domain_for(dst) else {
            self.drops.inc(DropReason::NoRoute);
            return;
        };
        let d = Desc::at(
            buf,
            ip_at - ethernet::HEADER_LEN,
            ip_len + ethernet::HEADER_LEN,
        );
        self.deliver(io, Origin::Routed { domain, src: None }, d, off);
    }

    // ---- receive coalescing -------------------------------------------------------------

    /// Adds an inner frame (a reference is borrowed from the caller, which keeps the buffer
    /// until after [`Engine::gro_flush`]) to the current run, or starts one, or delivers it.
    fn gro_push(&mut self, io: &mut dyn TxIo, origin: Origin, d: Desc) {
        let seg = TcpSeg::of(self.pool.frame(d));
        if let Some(seg) = seg {
            // Every merged segment's checksum is verified: the superframe goes on partial. A
            // segment a sender left partial (a kernel peer on a veth underlay, or a vswitch
            // peer) is merged as it is: the superframe's checksum is partial anyway.
            let partial = match gso::verify(self.pool.frame(d), &seg.lay) {
                Verified::Good => false,
                Verified::Partial if self.pool.mem().writable(d.buf) => true,
                Verified::Partial => {
                    // Cannot rewrite it now: the egress completes it.
                    self.gro_flush(io);
                    let l = seg.lay;
                    let off = partial_at(l);
                    self.deliver(io, origin, d, off);
                    return;
                }
                Verified::Bad => {
                    // Not ours to judge: the pod's stack drops it and counts it.
                    self.gro_flush(io);
                    self.deliver(io, origin, d, Offload::NONE);
                    return;
                }
            };
            if let Some(p) = self.pending {
                let at = (p.desc.off + p.desc.len) as usize;
                let fits = p.origin == origin
                    && at + seg.payload_len <= self.pool.buf(p.desc.buf).len()
                    && p.run
                        .accepts(self.pool.frame(p.desc), self.pool.frame(d), &seg)
                    && self.pool.mem().writable(p.desc.buf);
                if fits {
                    let src = d.off as usize + seg.lay.payload..(d.off + d.len) as usize;
                    self.pool.append(d.buf, src, p.desc.buf, at);
                    let mut p = p;
                    p.run.push(self.pool.frame(d), &seg);
                    p.desc.len += seg.payload_len as u32;
                    self.pending = Some(p);
                    return;
                }
                self.gro_flush(io);
            }
            let run = Run::start(self.pool.frame(d), seg);
            // The run outlives the caller's hold on the buffer.
            self.pool.retain(d.buf);
            self.pending = Some(Pending {
                origin,
                desc: d,
                run,
                partial,
            });
            return;
        }
        self.gro_flush(io);
        // Not TCP data: a partial checksum (kernel VXLAN/IPIP peer with offloads on a veth
        // underlay) is completed here, since the pod will verify it.
        let mut off = Offload::NONE;
        if let Some(lay) = Layout::of(self.pool.frame(d)) {
            if gso::verify(self.pool.frame(d), &lay) == Verified::Partial {
                if self.pool.mem().writable(d.buf) {
                    gso::complete_partial(
                        self.pool.frame_mut(d),
                        lay.l4,
                        lay.csum_field() - lay.l4,
                    );
                } else {
                    off = partial_at(lay);
                }
            }
        }
        self.deliver(io, origin, d, off);
    }

    /// Delivers the run being coalesced, if any.
    pub fn gro_flush(&mut self, io: &mut dyn TxIo) {
        let Some(p) = self.pending.take() else { return };
        let off = if self.pool.mem().writable(p.desc.buf) {
            let lay = p.run.head.lay;
            let outer = overlay::overhead(matches!(p.origin, Origin::Vxlan { .. }));
            let path = usize::from(self.switch.underlay_mtu().unwrap_or(1500));
            let max_payload = path.saturating_sub(outer + lay.payload - lay.l3);
            match p.run.finish(self.pool.frame_mut(p.desc), max_payload) {
                // A run of one whose checksum the sender left partial: its egress completes
                // it if it cannot take it partial.
                o if p.partial && !o.is_gso() => partial_at(p.run.head.lay),
                o => o,
            }
        } else {
            // Only a run of one can be here (appending needs the buffer writable too).
            Offload::NONE
        };
        self.deliver(io, p.origin, p.desc, off);
        self.pool.release(p.desc.buf);
    }

    /// Runs a frame from the underlay through the pipeline and on to its egress.
    fn deliver(&mut self, io: &mut dyn TxIo, origin: Origin, d: Desc, off: Offload) {
        if self.trace_on {
            let (domain, peer) = match origin {
                Origin::Vxlan { domain, peer, .. } => (domain, Some(peer)),
                Origin::Routed { domain, src } => {
                    (domain, src.and_then(|s| self.switch.peer_by_ip(s)))
                }
            };
            let rx = Rx::Underlay {
                peer,
                marked: false,
            };
            let mask = self.trace_mask(rx, Some(domain), d);
            if mask.any() {
                self.deliver_traced(io, origin, d, off, rx, mask);
                return;
            }
        }
        let now = self.now;
        let (v, dom) = match origin {
            Origin::Vxlan { domain, peer, .. } => (
                self.switch
                    .tunnel_ingress(domain, peer, self.pool.frame_mut(d), now, &mut Off),
                domain,
            ),
            Origin::Routed { domain, .. } => (
                self.switch
                    .routed_ingress(domain, self.pool.frame_mut(d), &mut Off),
                domain,
            ),
        };
        self.apply(io, None, Some(dom), d, off, v);
    }

    /// `deliver` for a frame a trace session may want.
    #[cold]
    #[inline(never)]
    fn deliver_traced(
        &mut self,
        io: &mut dyn TxIo,
        origin: Origin,
        d: Desc,
        off: Offload,
        rx: Rx,
        mask: SessionMask,
    ) {
        let dom = match origin {
            Origin::Vxlan { domain, .. } | Origin::Routed { domain, .. } => domain,
        };
        let Some(mut rec) = self
            .trace
            .as_ref()
            .map(|t| t.record(mask, rx, Some(dom), self.pool.frame(d)))
        else {
            return;
        };
        let mut r = Recorder::default();
        let local = self
            .uplink
            .as_ref()
            .map_or(Ipv4Addr::UNSPECIFIED, |u| u.up.local_ip);
        let worker = self.id;
        let (wire, outer_src, vni, peer, udp_src) = match origin {
            Origin::Vxlan {
                domain,
                peer,
                sport,
            } => (
                WireKind::Vxlan,
                self.switch
                    .peer(peer)
                    .map_or(Ipv4Addr::UNSPECIFIED, |c| c.underlay_ip),
                self.switch.domain_conf(domain).and_then(|c| c.vni),
                Some(peer),
                Some(sport),
            ),
            Origin::Routed { src: Some(s), .. } => {
                (WireKind::Ipip, s, None, self.switch.peer_by_ip(s), None)
            }
            Origin::Routed { src: None, .. } => {
                (WireKind::Direct, Ipv4Addr::UNSPECIFIED, None, None, None)
            }
        };
        r.stage(|| Stage::RxUnderlay {
            wire,
            worker,
            outer_src,
            outer_dst: local,
            vni,
            udp_src,
            peer,
        });
        if off.is_gso() {
            let segments = segments_of(self.pool.frame(d), &off);
            r.stage(|| Stage::Coalesce { segments });
        }
        let now = self.now;
        let v = match origin {
            Origin::Vxlan { domain, peer, .. } => {
                self.switch
                    .tunnel_ingress(domain, peer, self.pool.frame_mut(d), now, &mut r)
            }
            Origin::Routed { domain, .. } => {
                self.switch
                    .routed_ingress(domain, self.pool.frame_mut(d), &mut r)
            }
        };
        self.egress_stages(&mut r, None, Some(dom), v, (self.pool.frame(d), off));
        self.apply(io, None, Some(dom), d, off, v);
        rec.stages = r.stages;
        if let Some(t) = &self.trace {
            t.emit(mask, rec);
        }
    }

    // ---- egress -------------------------------------------------------------------------

    /// Carries out a verdict for frame `d` (the caller keeps its reference).
    fn apply(
        &mut self,
        io: &mut dyn TxIo,
        in_port: Option<PortIdx>,
        domain: Option<DomainIdx>,
        d: Desc,
        off: Offload,
        v: Verdict,
    ) {
        match v {
            Verdict::Drop(r) => self.drops.inc(r),
            Verdict::Forward(p) => self.egress(io, p, d, off),
            Verdict::Reply => {
                if let Some(p) = in_port {
                    self.egress(io, p, d, Offload::NONE);
                }
            }
            Verdict::ReplyResized(n) => {
                if let Some(p) = in_port {
                    let r = Desc { len: n as u32, ..d };
                    self.egress(io, p, r, Offload::NONE);
                }
            }
            Verdict::Flood { peers } => {
                let mut targets = std::mem::take(&mut self.flood);
                targets.clear();
                match in_port {
                    Some(p) => targets.extend(self.switch.flood_targets(p)),
                    None => {
                        if let Some(dom) = domain {
                            targets.extend_from_slice(self.switch.domain_ports(dom));
                        }
                    }
                }
                let mut off = off;
                // A partial checksum that one target cannot take is completed once for all.
                if matches!(off.csum, Csum::Partial { .. }) && !off.is_gso() {
                    let needs = targets
                        .iter()
                        .any(|t| self.port(*t).is_some_and(|p| !p.caps.csum))
                        || peers;
                    if needs {
                        if let Csum::Partial { start, offset } = off.csum {
                            if self.pool.exclusive(d.buf) {
                                gso::complete_partial(
                                    self.pool.frame_mut(d),
                                    usize::from(start),
                                    usize::from(offset),
                                );
                                off.csum = Csum::Complete;
                            }
                        }
                    }
                }
                for &t in &targets {
                    self.egress(io, t, d, off);
                }
                self.flood = targets;
                if peers {
                    if let Some(p) = in_port {
                        self.flood_to_peers(io, p, d, off);
                    }
                }
            }
            Verdict::Tunnel { peer, wire } => self.tunnel(io, peer, wire, d, off),
            Verdict::Absorb(a) => self.drops.absorb(a),
            Verdict::Multicast { to, peers } => {
                let Some(p) = in_port else { return };
                let mut targets = std::mem::take(&mut self.flood);
                targets.clear();
                targets.extend(self.switch.mcast_targets(p, to));
                for &t in &targets {
                    self.egress(io, t, d, off);
                }
                self.flood = targets;
                if peers {
                    self.flood_to_peers(io, p, d, off);
                }
            }
        }
    }

    /// Queues frame `d` for local port `p`: as is if the port takes its offloads, else cut into
    /// segments (superframe) or with its checksum completed.
    fn egress(&mut self, io: &mut dyn TxIo, p: PortIdx, d: Desc, off: Offload) {
        let Some(Some(port)) = self.ports.get(p as usize) else {
            self.drops.inc(DropReason::PortGone);
            return;
        };
        let caps = port.caps;
        if caps.accepts(&off) {
            self.pool.retain(d.buf);
            self.queue(io, p, TxItem { desc: d, off });
            return;
        }
        if off.is_gso() {
            self.segment_to_port(io, p, d, off, caps.csum);
            return;
        }
        // A partial checksum for a port without checksum offload.
        let Csum::Partial { start, offset } = off.csum else {
            self.pool.retain(d.buf);
            self.queue(io, p, TxItem { desc: d, off });
            return;
        };
        let target = if self.pool.exclusive(d.buf) {
            self.pool.retain(d.buf);
            d
        } else {
            match self.pool.copy(d) {
                Some(c) => c,
                None => {
                    self.drops.inc(DropReason::BufferPoolEmpty);
                    return;
                }
            }
        };
        gso::complete_partial(
            self.pool.frame_mut(target),
            usize::from(start),
            usize::from(offset),
        );
        let off = Offload {
            csum: Csum::Complete,
            ..Offload::NONE
        };
        self.queue(io, p, TxItem { desc: target, off });
    }

    fn segment_to_port(
        &mut self,
        io: &mut dyn TxIo,
        p: PortIdx,
        d: Desc,
        off: Offload,
        partial_ok: bool,
    ) {
        let plan = match Plan::new(self.pool.frame(d), &off) {
            Ok(plan) => plan,
            Err(_) => {
                self.drops.inc(DropReason::Unsegmentable);
                return;
            }
        };
        for k in 0..plan.count {
            let Some(b) = self.pool.alloc() else {
                self.drops.inc(DropReason::BufferPoolEmpty);
                return;
            };
            let hl = plan.hdr_len();
            let csum = match plan.write_header(self.pool.frame(d), k, &mut self.seg_hdr, partial_ok)
            {
                Ok(c) => c,
                Err(_) => {
                    self.pool.release(b);
                    self.drops.inc(DropReason::Unsegmentable);
                    return;
                }
            };
            let pl = plan.payload(k);
            let plen = pl.len();
            self.pool.buf_mut(b)[HEADROOM..HEADROOM + hl].copy_from_slice(&self.seg_hdr[..hl]);
            let src = d.off as usize + pl.start..d.off as usize + pl.end;
            self.pool.append(d.buf, src, b, HEADROOM + hl);
            let item = TxItem {
                desc: Desc::at(b, HEADROOM, hl + plen),
                off: Offload {
                    csum,
                    ..Offload::NONE
                },
            };
            self.queue(io, p, item);
        }
    }

    fn queue(&mut self, io: &mut dyn TxIo, p: PortIdx, item: TxItem) {
        let Some(Some(port)) = self.ports.get_mut(p as usize) else {
            self.pool.release(item.desc.buf);
            self.drops.inc(DropReason::PortGone);
            return;
        };
        let was_empty = port.txq.is_empty();
        let full = port.queue(item);
        if was_empty {
            self.dirty.push(p);
        }
        if full {
            io.send_port(&mut self.pool, p, port, &self.drops);
        }
    }

    /// Head-end replication of a flooded frame to every peer of the ingress port's domain.
    fn flood_to_peers(&mut self, io: &mut dyn TxIo, in_port: PortIdx, d: Desc, off: Offload) {
        let mut peers = std::mem::take(&mut self.peer_scratch);
        peers.clear();
        let (list, vni) = self.switch.flood_peers(in_port);
        peers.extend_from_slice(list);
        for &peer in &peers {
            self.tunnel(io, peer, Wire::Vxlan { vni }, d, off);
        }
        self.peer_scratch = peers;
    }

    /// Sends frame `d` to `peer`: VXLAN through a UDP socket (a superframe as one `UDP_SEGMENT`
    /// train), IPIP and direct through the raw socket, one packet per segment, all batched.
    fn tunnel(&mut self, io: &mut dyn TxIo, peer: PeerIdx, wire: Wire, d: Desc, off: Offload) {
        let Some(pc) = self.switch.peer(peer).copied() else {
            self.drops.inc(DropReason::NoRoute);
            return;
        };
        let Some(mtu) = self.switch.underlay_mtu() else {
            self.drops.inc(DropReason::NoRoute);
            return;
        };
        if self.uplink.is_none() {
            self.drops.inc(DropReason::NoRoute);
            return;
        }
        if wire == Wire::Direct {
            let mac = self.peer_macs.get(peer as usize).copied().flatten();
            let local = self.uplink.as_ref().and_then(|u| {
                u.up.direct_rx.as_ref()?;
                u.up.local_mac
            });
            if let (Some(mac), Some(local)) = (mac, local) {
                self.direct_frame(io, d, off, mac, local, mtu);
                return;
            }
        }
        let mut off = off;
        // Inner checksums leave complete: the underlay has no idea of them.
        if let (false, Csum::Partial { start, offset }) = (off.is_gso(), off.csum) {
            let target = if self.pool.exclusive(d.buf) {
                d
            } else {
                match self.pool.copy(d) {
                    Some(c) => {
                        // The copy is ours alone; it is released once queued (held below).
                        self.tunnel_complete(io, pc.underlay_ip, wire, c, start, offset, mtu);
                        self.pool.release(c.buf);
                        return;
                    }
                    None => {
                        self.drops.inc(DropReason::BufferPoolEmpty);
                        return;
                    }
                }
            };
            gso::complete_partial(
                self.pool.frame_mut(target),
                usize::from(start),
                usize::from(offset),
            );
            off.csum = Csum::Complete;
        }
        if off.is_gso() {
            self.tunnel_segments(io, pc.underlay_ip, wire, d, off, mtu);
        } else {
            self.tunnel_one(io, pc.underlay_ip, wire, d);
        }
    }

    /// A directly routed frame to a peer on our segment: the whole frame (superframe included)
    /// through the underlay's AF_PACKET socket with its virtio-net header, addressed to the
    /// peer's MAC; the kernel segments only if the NIC cannot carry it.
    fn direct_frame(
        &mut self,
        io: &mut dyn TxIo,
        d: Desc,
        mut off: Offload,
        peer_mac: vswitch_config::MacAddr,
        local_mac: vswitch_config::MacAddr,
        mtu: u16,
    ) {
        let d = if self.pool.exclusive(d.buf) {
            self.pool.retain(d.buf);
            d
        } else {
            match self.pool.copy(d) {
                Some(c) => c,
                None => {
                    self.drops.inc(DropReason::BufferPoolEmpty);
                    return;
                }
            }
        };
        let f = self.pool.frame_mut(d);
        f[0..6].copy_from_slice(&peer_mac.0);
        f[6..12].copy_from_slice(&local_mac.0);
        if off.is_gso() {
            if let Some(l) = Layout::of(f) {
                let fits = overlay::segment_payload(off.gso_size, l.payload, 0, mtu);
                off.gso_size = fits as u16;
            }
        }
        let Some(up) = self.uplink.as_mut() else {
            self.pool.release(d.buf);
            return;
        };
        up.frames.push(TxItem { desc: d, off });
        if up.frames.len() >= crate::sys::packet::BATCH {
            self.flush_underlay(io);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tunnel_complete(
        &mut self,
        io: &mut dyn TxIo,
        dst: Ipv4Addr,
        wire: Wire,
        c: Desc,
        start: u16,
        offset: u16,
        _mtu: u16,
    ) {
        gso::complete_partial(
            self.pool.frame_mut(c),
            usize::from(start),
            usize::from(offset),
        );
        self.tunnel_one(io, dst, wire, c);
    }

    /// One complete frame to a peer.
    fn tunnel_one(&mut self, io: &mut dyn TxIo, dst: Ipv4Addr, wire: Wire, d: Desc) {
        self.ensure_underlay_room(io, 2, 1);
        let local_ip;
        let sock;
        {
            let Some(up) = self.uplink.as_ref() else {
                return;
            };
            local_ip = up.up.local_ip;
            let n = up.up.vxlan_tx.len();
            sock = match wire {
                Wire::Vxlan { .. } => Sock::Vxlan(overlay::vxlan_socket(
                    encap::flow_hash(self.pool.frame(d)),
                    n,
                ) as u8),
                _ => Sock::Raw,
            };
        }
        let frame_tos = self.pool.frame(d).get(ethernet::HEADER_LEN + 1).copied();
        let Some(up) = self.uplink.as_mut() else {
            return;
        };
        up.begin(dst, sock, 0);
        let eth = ethernet::HEADER_LEN;
        match wire {
            Wire::Vxlan { vni } => {
                up.hdr_slot()[..8].copy_from_slice(&overlay::vxlan_header(vni));
                up.push_hdr(8);
                up.push_buf(d.buf, d.off as usize, d.len as usize);
            }
            Wire::Ipip => {
                let inner = d.len as usize - eth;
                let h = overlay::ipip_header(local_ip, dst, frame_tos.unwrap_or(0), inner);
                up.hdr_slot()[..20].copy_from_slice(&h);
                up.push_hdr(20);
                up.push_buf(d.buf, d.off as usize + eth, inner);
            }
            Wire::Direct => {
                up.push_buf(d.buf, d.off as usize + eth, d.len as usize - eth);
            }
        }
        self.pool.retain(d.buf);
        up.hold(d.buf);
        if !up.has_room(2, 1) {
            self.flush_underlay(io);
        }
    }

    /// A superframe to a peer, cut into segments that fit the underlay: VXLAN as `UDP_SEGMENT`
    /// trains (headers in slots, payload chunks from the superframe), IPIP/direct one raw packet
    /// per segment.
    fn tunnel_segments(
        &mut self,
        io: &mut dyn TxIo,
        dst: Ipv4Addr,
        wire: Wire,
        d: Desc,
        off: Offload,
        mtu: u16,
    ) {
        let vxlan = matches!(wire, Wire::Vxlan { .. });
        let outer = match wire {
            Wire::Vxlan { .. } => overlay::overhead(true),
            Wire::Ipip => overlay::overhead(false),
            Wire::Direct => 0,
        };
        let hdr_len = match Layout::of(self.pool.frame(d)) {
            Some(l) => l.payload,
            None => {
                self.drops.inc(DropReason::Unsegmentable);
                return;
            }
        };
        let mss = overlay::segment_payload(off.gso_size, hdr_len, outer, mtu);
        let seg_off = Offload {
            gso_size: mss as u16,
            ..off
        };
        let plan = match Plan::new(self.pool.frame(d), &seg_off) {
            Ok(p) => p,
            Err(_) => {
                self.drops.inc(DropReason::Unsegmentable);
                return;
            }
        };
        let (local_ip, n_socks, gso_ok) = match self.uplink.as_ref() {
            Some(u) => (u.up.local_ip, u.up.vxlan_tx.len(), u.up.udp_gso),
            None => return,
        };
        let eth = ethernet::HEADER_LEN;
        let tos = self.pool.frame(d).get(eth + 1).copied().unwrap_or(0);
        let sock = if vxlan {
            Sock::Vxlan(overlay::vxlan_socket(encap::flow_hash(self.pool.frame(d)), n_socks) as u8)
        } else {
            Sock::Raw
        };
        let vni = match wire {
            Wire::Vxlan { vni } => vni,
            _ => 0,
        };
        let dgram = encap::VXLAN_HDR_LEN + hdr_len + mss;
        let per_msg = if vxlan && gso_ok {
            (MAX_UDP_PAYLOAD / dgram).clamp(1, MAX_GSO_SEGMENTS)
        } else {
            1
        };
        let mut k = 0;
        while k < plan.count {
            let take = per_msg.min(plan.count - k);
            self.ensure_underlay_room(io, 2 * take, take);
            let frame_off = d.off as usize;
            let Some(up) = self.uplink.as_mut() else {
                return;
            };
            up.begin(dst, sock, if take > 1 { dgram as u16 } else { 0 });
            for s in k..k + take {
                let slot = up.hdr_slot();
                let used = match wire {
                    Wire::Vxlan { vni: _ } => {
                        slot[..8].copy_from_slice(&overlay::vxlan_header(vni));
                        let Ok(_) = plan.write_header(
                            &self.pool.buf(d.buf)[frame_off..frame_off + d.len as usize],
                            s,
                            &mut slot[8..8 + gso::MAX_HDR],
                            false,
                        ) else {
                            break;
                        };
                        8 + hdr_len
                    }
                    Wire::Ipip | Wire::Direct => {
                        let base = if wire == Wire::Ipip { 20 } else { 0 };
                        let mut tmp = [0u8; gso::MAX_HDR];
                        let Ok(_) = plan.write_header(
                            &self.pool.buf(d.buf)[frame_off..frame_off + d.len as usize],
                            s,
                            &mut tmp,
                            false,
                        ) else {
                            break;
                        };
                        let ip_hdrs = hdr_len - eth;
                        slot[base..base + ip_hdrs].copy_from_slice(&tmp[eth..hdr_len]);
                        if wire == Wire::Ipip {
                            let inner = ip_hdrs + plan.payload(s).len();
                            slot[..20]
                                .copy_from_slice(&overlay::ipip_header(local_ip, dst, tos, inner));
                        }
                        base + ip_hdrs
                    }
                };
                debug_assert!(used <= HDR_SLOT);
                up.push_hdr(used);
                let pl = plan.payload(s);
                up.push_buf(d.buf, frame_off + pl.start, pl.len());
                if !vxlan || !gso_ok {
                    // One datagram per segment: the next segment is its own message.
                    if s + 1 < k + take {
                        up.begin(dst, sock, 0);
                    }
                }
            }
            self.pool.retain(d.buf);
            up.hold(d.buf);
            k += take;
            if !up.has_room(2 * per_msg, per_msg) {
                self.flush_underlay(io);
            }
        }
    }

    fn ensure_underlay_room(&mut self, io: &mut dyn TxIo, pieces: usize, hdrs: usize) {
        if self
            .uplink
            .as_ref()
            .is_some_and(|u| !u.has_room(pieces, hdrs))
        {
            self.flush_underlay(io);
        }
    }

    fn flush_underlay(&mut self, io: &mut dyn TxIo) {
        if let Some(up) = self.uplink.as_mut() {
            if !up.is_empty() {
                io.send_underlay(&mut self.pool, up, &self.drops);
            }
        }
    }

    /// Sends everything queued in this batch.
    pub fn flush(&mut self, io: &mut dyn TxIo) {
        self.gro_flush(io);
        let mut dirty = std::mem::take(&mut self.dirty);
        for &p in &dirty {
            if let Some(Some(port)) = self.ports.get_mut(p as usize) {
                if !port.txq.is_empty() {
                    io.send_port(&mut self.pool, p, port, &self.drops);
                }
            }
        }
        dirty.clear();
        self.dirty = dirty;
        self.flush_underlay(io);
    }
}

/// How many segments a superframe holds (1 for anything else).
fn segments_of(frame: &[u8], off: &Offload) -> u16 {
    match (off.is_gso(), Layout::of(frame)) {
        (true, Some(l)) if off.gso_size > 0 => {
            (frame.len().saturating_sub(l.payload)).div_ceil(usize::from(off.gso_size)) as u16
        }
        _ => 1,
    }
}

/// Offload metadata as a trace shows it.
fn offload_info(o: &Offload) -> OffloadInfo {
    OffloadInfo {
        gso_type: u8::from(o.is_gso()),
        gso_size: o.gso_size,
        csum_partial: matches!(o.csum, Csum::Partial { .. }),
    }
}

/// Offload metadata of a frame whose L4 checksum is known to be partial.
/// The layout of the inner frame of VXLAN datagram `dgram` when the datagram holds exactly one
/// inner IP packet (its IP length accounts for every byte), as opposed to the first of a
/// `UDP_GRO` train.
fn whole_inner_packet(dgram: &[u8]) -> Option<Layout> {
    let inner = dgram.get(encap::VXLAN_HDR_LEN..)?;
    let lay = Layout::of(inner)?;
    let l3 = lay.l3;
    let ip_len = if lay.v6 {
        usize::from(crate::packet::be16(inner, l3 + 4..l3 + 6)) + 40
    } else {
        usize::from(crate::packet::be16(inner, l3 + 2..l3 + 4))
    };
    (l3 + ip_len == inner.len()).then_some(lay)
}

fn partial_at(l: Layout) -> Offload {
    Offload {
        csum: Csum::Partial {
            start: l.l4 as u16,
            offset: (l.csum_field() - l.l4) as u16,
        },
        ..Offload::NONE
    }
}

fn ipv4_dst(b: &[u8]) -> Option<Ipv4Addr> {
    let ip = crate::packet::Ipv4Packet::new_checked(b).ok()?;
    Some(ip.dst())
}
