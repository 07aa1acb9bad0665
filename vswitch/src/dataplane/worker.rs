//! Dataplane worker threads: plain threads (no async on the fast path), each with its own epoll,
//! buffer pool and copy of the switching tables. The control thread changes tables only through
//! [`Command`]s that a worker applies between batches, so workers never take a lock and never
//! block on the control plane.
//!
//! Each port is polled for rx by exactly one worker; any worker may transmit to any port (tap
//! writes and AF_PACKET sends are safe from several threads).

use std::io::{self, IoSlice};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::counters::{DropCounters, DropReason, PortCounters};
use super::fdb::PortIdx;
use super::pipeline::{DomainConf, DomainIdx, FdbRow, PortConf, Switch, Verdict};
use super::pool::{BufferPool, Desc, HEADROOM, MAX_FRAME};
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
            Command::AddDomain { idx, conf } => self.switch.add_domain(idx, conf),
            Command::RemoveDomain { idx } => self.switch.remove_domain(idx),
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
        match verdict {
            Verdict::Drop(r) => self.count_rx_drop(in_port, r),
            Verdict::Forward(p) => self.tx(p, d),
            Verdict::Reply => self.tx(in_port, d),
            Verdict::Flood => {
                let mut targets = std::mem::take(&mut self.flood_scratch);
                targets.clear();
                targets.extend(self.switch.flood_targets(in_port));
                for p in &targets {
                    self.tx(*p, d);
                }
                self.flood_scratch = targets;
            }
        }
        self.pool.release(d.buf);
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
