//! Dataplane worker threads: plain threads (no async on the fast path), each with its own buffer
//! pool, tables ([`Switch`]) and I/O backend. The control thread changes tables only through
//! [`Command`]s that a worker applies between batches, so workers never take a lock and never
//! block on the control plane.
//!
//! Each port is received from by exactly one worker; any worker may send to any port (tap and
//! packet-socket writes are safe from several threads, and every flow enters through one port,
//! so it stays on one worker and in order). What one worker learns into its FDB reaches the
//! others through lock-free single-producer/single-consumer rings, applied between batches.
//!
//! Two backends drive the same [`Engine`]: io_uring (multishot tap reads into a provided-buffer
//! ring, batched tap writes, multishot poll for every other descriptor, one `io_uring_enter` per
//! turn) and epoll with `read`/`writev`/`recvmmsg`/`sendmmsg`, used when io_uring is missing or
//! blocked (container runtimes' seccomp profiles often block it) or when configured.
//!
//! Polling is adaptive: after a turn that moved packets the worker keeps polling without
//! sleeping for a short while (the next packet of a busy flow is usually microseconds away),
//! then blocks until an event or the housekeeping timeout.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::counters::{bump, DropCounters, DropReason, PortCounters};
use super::engine::Engine;
use super::fdb::PortIdx;
use super::pipeline::{
    DomainConf, DomainIdx, FdbRow, LearnEvent, PeerConf, PeerIdx, PortConf, Switch, UnderlayConf,
};
use super::pool::{BufIdx, BufferPool, HEADROOM};
use super::port::{Port, PortDev, TxIo};
use super::underlay::{UnderlayTx, Uplink};
use crate::packet::offload::{Offload, VNET_HDR_LEN};
use crate::packet::{encap, ipv4};
use crate::sys::inet;
use crate::sys::poll::{Epoll, Event, EventFd};
use crate::sys::uring::{self, Completion, Uring};

/// Frames read from one tap before moving on (fairness between ports, bounded latency).
pub const RX_BATCH: usize = 64;
/// Buffers per worker: enough for the provided ring, a batch in flight and queued floods.
const POOL_BUFFERS: usize = 2048;
/// Buffers lent to the kernel for multishot reads (io_uring).
const RING_BUFFERS: u16 = 512;
/// Concurrent io_uring writes per worker.
const WRITE_SLOTS: usize = 1024;
const MAX_LEARNED_PER_DOMAIN: usize = 8192;
/// Learn events buffered between two workers.
const LEARN_RING: usize = 4096;
const CONTROL_TOKEN: u64 = u64::MAX >> 8;
const VXLAN_TOKEN: u64 = CONTROL_TOKEN - 1;
const IPIP_TOKEN: u64 = CONTROL_TOKEN - 2;
const DIRECT_TOKEN: u64 = CONTROL_TOKEN - 3;
/// Housekeeping (FDB aging) period when idle.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Which I/O backend a worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring if the kernel (and seccomp) allow it, else epoll.
    Auto,
    Uring,
    Epoll,
}

impl IoMode {
    pub fn name(self) -> &'static str {
        match self {
            IoMode::Auto => "auto",
            IoMode::Uring => "io_uring",
            IoMode::Epoll => "epoll",
        }
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The daemon's trace sessions (none: this worker never traces).
    pub trace: Option<Arc<crate::observe::hub::TraceHub>>,
    pub aging_secs: u64,
    pub io: IoMode,
    /// Keep polling this long after a busy turn before sleeping (0: never spin).
    pub busy_poll: Duration,
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
        dev: PortDev,
        /// This worker's counters for the port.
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
    /// Run a frame as received on `port` through the tables without sending it or changing
    /// anything (synthetic trace) and send back its record.
    DryRun {
        port: PortIdx,
        frame: Vec<u8>,
        reply: mpsc::Sender<crate::observe::hub::Record>,
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
        ip: Option<std::net::Ipv4Addr>,
        peer: PeerIdx,
    },
    RemoveRemoteEndpoint {
        domain: DomainIdx,
        mac: vswitch_config::MacAddr,
        ip: Option<std::net::Ipv4Addr>,
    },
    /// Flood a gratuitous ARP for each IP of a new port (L2 domains), so that neighbours that
    /// cached an old owner of a reused IP learn the new MAC at once.
    Announce {
        idx: PortIdx,
    },
    /// The underlay MAC of a peer on this node's segment (for direct routing), once resolved.
    SetPeerMac {
        idx: PeerIdx,
        mac: Option<vswitch_config::MacAddr>,
    },
    /// Whether MLD reports steer IPv6 multicast: off with several workers, each of which sees
    /// only its own ports' reports (until learned state is shared between workers).
    SetMldSnooping(bool),
    Shutdown,
}

/// Numbers about a worker's loop, for `vswitchctl stats` and the metrics.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Loop turns that moved at least one packet.
    pub busy_turns: AtomicU64,
    /// Frames and underlay datagrams received.
    pub rx_frames: AtomicU64,
    /// Nanoseconds spent processing (not waiting).
    pub busy_ns: AtomicU64,
    /// Learn events lost because another worker's ring was full.
    pub learn_dropped: AtomicU64,
}

/// The control thread's handle on a worker.
pub struct WorkerHandle {
    pub id: usize,
    pub drops: Arc<DropCounters>,
    pub stats: Arc<WorkerStats>,
    /// The backend the worker actually runs.
    pub io: IoMode,
    tx: mpsc::Sender<(Command, mpsc::Sender<()>)>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Applies `cmd` on the worker and waits until it has (bounded wait: a wedged worker must not
    /// hang the control plane forever).
    pub fn call(&self, cmd: Command) -> io::Result<()> {
        self.send(cmd)?
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| io::Error::other(format!("worker {} did not answer in 5 s", self.id)))
    }

    /// Like [`WorkerHandle::call`] without waiting for the worker to have carried it out: for
    /// commands whose effect nothing waits on (a new port's gratuitous ARP).
    pub fn post(&self, cmd: Command) -> io::Result<()> {
        self.send(cmd).map(drop)
    }

    /// Queues `cmd` and wakes the worker; the receiver gets the worker's acknowledgement.
    fn send(&self, cmd: Command) -> io::Result<mpsc::Receiver<()>> {
        let (ack_tx, ack_rx) = mpsc::channel();
        self.tx
            .send((cmd, ack_tx))
            .map_err(|_| io::Error::other(format!("worker {} has stopped", self.id)))?;
        self.wake.notify();
        Ok(ack_rx)
    }

    pub fn shutdown(mut self) {
        let _ = self.call(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The learn rings between `n` workers: `rings[i]` gives worker `i` its producers towards every
/// other worker and its consumers from them.
pub type LearnRings = (
    Vec<rtrb::Producer<LearnEvent>>,
    Vec<rtrb::Consumer<LearnEvent>>,
);

pub fn learn_rings(n: usize) -> Vec<LearnRings> {
    let mut out: Vec<LearnRings> = (0..n).map(|_| (Vec::new(), Vec::new())).collect();
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let (p, c) = rtrb::RingBuffer::new(LEARN_RING);
                out[i].0.push(p);
                out[j].1.push(c);
            }
        }
    }
    out
}

/// Starts worker `id`. Picks the backend first (io_uring probed, else epoll), so the handle
/// says which one runs.
pub fn spawn(id: usize, cfg: WorkerConfig, rings: LearnRings) -> io::Result<WorkerHandle> {
    let wake = Arc::new(EventFd::new()?);
    let (tx, rx) = mpsc::channel();
    let drops = Arc::new(DropCounters::default());
    let stats = Arc::new(WorkerStats::default());
    let mode = match cfg.io {
        IoMode::Epoll => IoMode::Epoll,
        IoMode::Uring => {
            uring::supported()?;
            IoMode::Uring
        }
        IoMode::Auto => match uring::supported() {
            Ok(()) => IoMode::Uring,
            Err(e) => {
                if id == 0 {
                    tracing::info!("io_uring unavailable ({e}); using epoll");
                }
                IoMode::Epoll
            }
        },
    };
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<IoMode>>();
    let (wake2, drops2, stats2) = (wake.clone(), drops.clone(), stats.clone());
    let thread = std::thread::Builder::new()
        .name(format!("vswitch-worker-{id}"))
        .spawn(move || {
            let built = Worker::new(id, cfg, mode, wake2, rx, drops2, stats2, rings);
            match built {
                Ok(mut w) => {
                    let _ = ready_tx.send(Ok(w.mode()));
                    w.run();
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
    let io = ready_rx
        .recv()
        .map_err(|_| io::Error::other("worker thread died while starting"))??;
    Ok(WorkerHandle {
        id,
        drops,
        stats,
        io,
        tx,
        wake,
        thread: Some(thread),
    })
}

enum Backend {
    Uring(Box<Uring>),
    Epoll(Epoll),
}

/// Completed-but-unprocessed io_uring events, drained before processing (no allocation: the
/// vector keeps its capacity).
type Events = Vec<Completion>;

struct Worker {
    id: usize,
    engine: Engine,
    backend: Backend,
    wake: Arc<EventFd>,
    commands: mpsc::Receiver<(Command, mpsc::Sender<()>)>,
    stats: Arc<WorkerStats>,
    learn_tx: Vec<rtrb::Producer<LearnEvent>>,
    learn_rx: Vec<rtrb::Consumer<LearnEvent>>,
    started: Instant,
    busy_poll: Duration,
    /// This worker receives from the underlay.
    uplink_polled: bool,
    events: Events,
    /// Packet-socket/underlay descriptors that became readable (io_uring poll completions).
    ready: Vec<u64>,
    /// Descriptors whose last read stopped at the turn's budget, not at an empty queue.
    undrained: Vec<u64>,
}

/// What one read of a descriptor did: frames received, and whether more may be queued (the
/// read stopped at its budget or for lack of buffers rather than at an empty queue).
#[derive(Clone, Copy)]
struct Rx {
    frames: usize,
    more: bool,
}

impl Rx {
    const DRAINED: Rx = Rx {
        frames: 0,
        more: false,
    };
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: usize,
        cfg: WorkerConfig,
        mode: IoMode,
        wake: Arc<EventFd>,
        commands: mpsc::Receiver<(Command, mpsc::Sender<()>)>,
        drops: Arc<DropCounters>,
        stats: Arc<WorkerStats>,
        rings: LearnRings,
    ) -> io::Result<Worker> {
        let pool = BufferPool::new(POOL_BUFFERS)?;
        let switch = Switch::new(cfg.aging_secs, MAX_LEARNED_PER_DOMAIN);
        let mut engine = Engine::new(id as u16, switch, pool, drops);
        engine.trace = cfg.trace.as_ref().map(|h| h.worker(id as u16));
        let backend = match mode {
            IoMode::Uring => {
                let mut ring = Uring::new(
                    engine.pool.mem(),
                    RING_BUFFERS,
                    HEADROOM - VNET_HDR_LEN,
                    WRITE_SLOTS,
                )?;
                ring.poll_multishot(wake.raw(), CONTROL_TOKEN)?;
                top_up(&mut ring, &mut engine.pool);
                // The ring hands its buffers to the kernel in turn, so all of them (the lowest
                // indices: the pool is a LIFO) are touched within the first few hundred packets.
                engine
                    .pool
                    .mem()
                    .prefault_in_background(usize::from(RING_BUFFERS) + RX_BATCH);
                Backend::Uring(Box::new(ring))
            }
            _ => {
                let ep = Epoll::new()?;
                ep.add(wake.raw(), CONTROL_TOKEN)?;
                Backend::Epoll(ep)
            }
        };
        Ok(Worker {
            id,
            engine,
            backend,
            wake,
            commands,
            stats,
            learn_tx: rings.0,
            learn_rx: rings.1,
            started: Instant::now(),
            busy_poll: cfg.busy_poll,
            uplink_polled: false,
            events: Vec::with_capacity(8192),
            ready: Vec::with_capacity(256),
            undrained: Vec::with_capacity(256),
        })
    }

    fn mode(&self) -> IoMode {
        match self.backend {
            Backend::Uring(_) => IoMode::Uring,
            Backend::Epoll(_) => IoMode::Epoll,
        }
    }

    fn run(&mut self) {
        tracing::debug!(worker = self.id, io = self.mode().name(), "worker started");
        let mut last_expire = 0;
        let mut busy_until: Option<Instant> = None;
        let mut epoll_events = [Event::EMPTY; 64];
        loop {
            // One clock read per idle turn: while spinning, reading the clock is most of a turn.
            let t0 = Instant::now();
            let spin = busy_until.is_some_and(|t| t0 < t);
            let timeout = if spin { Duration::ZERO } else { IDLE_WAIT };
            let (moved, control) = match self.turn(timeout, &mut epoll_events) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(worker = self.id, "worker I/O: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    (0, false)
                }
            };
            if moved > 0 {
                let t1 = Instant::now();
                busy_until = Some(t1 + self.busy_poll);
                bump(&self.stats.busy_turns, 1);
                bump(&self.stats.rx_frames, moved as u64);
                bump(&self.stats.busy_ns, (t1 - t0).as_nanos() as u64);
            } else if spin {
                // A polite spin: a thread runnable on this core (the pods' own senders and
                // receivers, on a small node) runs first; alone, the yield returns at once.
                std::thread::yield_now();
            } else {
                busy_until = None;
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
            let now = t0.saturating_duration_since(self.started).as_secs();
            self.engine.now = now;
            if now > last_expire {
                last_expire = now;
                self.engine.switch.expire(now);
            }
        }
    }

    /// One loop turn: wait (up to `timeout`), receive, switch, send. Returns the number of
    /// frames received and whether the control eventfd fired.
    fn turn(&mut self, timeout: Duration, ev: &mut [Event]) -> io::Result<(usize, bool)> {
        self.engine.begin_batch();
        self.apply_learned();
        let mut moved = 0;
        let mut control = false;
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.append(&mut self.undrained);
        let timeout = if ready.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        match &mut self.backend {
            Backend::Epoll(ep) => {
                let n = ep.wait(ev, Some(timeout))?;
                ready.extend(ev[..n].iter().map(Event::token));
            }
            Backend::Uring(ring) => {
                ring.submit_and_wait(Some(timeout))?;
                let mut events = std::mem::take(&mut self.events);
                events.clear();
                ring.drain(self.engine.pool.mem_mut(), |c| events.push(c));
                for c in &events {
                    match *c {
                        Completion::Rx { token, buf, len } => {
                            moved += 1;
                            self.engine
                                .rx_port(&mut UringTx(ring), token as PortIdx, buf, len);
                        }
                        Completion::TxDone { token, buf, res } => {
                            self.engine.pool.release(buf);
                            if res < 0 {
                                self.engine.drops.inc(DropReason::TxFailed);
                                if let Some(p) = self.engine.port(token as PortIdx) {
                                    p.counters.tx_error(1);
                                }
                            }
                        }
                        Completion::Ready { token } => ready.push(token),
                        Completion::RxStopped { .. } | Completion::PollStopped { .. } => {}
                    }
                }
                for c in &events {
                    match *c {
                        Completion::RxStopped { token, err } => self.rearm_read(token, err),
                        Completion::PollStopped { token } => self.rearm_poll(token),
                        _ => {}
                    }
                }
                self.events = events;
            }
        }
        let uring = matches!(self.backend, Backend::Uring(_));
        for &token in &ready {
            let rx = match token {
                CONTROL_TOKEN => {
                    control = true;
                    Rx::DRAINED
                }
                VXLAN_TOKEN => self.rx_vxlan(),
                IPIP_TOKEN => self.rx_ipip(),
                DIRECT_TOKEN => self.rx_direct(),
                t => self.rx_port_ready(t as PortIdx),
            };
            moved += rx.frames;
            // A multishot poll fires on new arrivals only: a descriptor left with frames queued
            // would wait for the next one (forever, after the last frame of a burst). Read it
            // again next turn instead. Epoll is level-triggered and reports it by itself.
            if rx.more && uring && !self.undrained.contains(&token) {
                self.undrained.push(token);
            }
        }
        self.ready = ready;
        self.flush();
        self.share_learned();
        if let Backend::Uring(ring) = &mut self.backend {
            top_up(ring, &mut self.engine.pool);
        }
        Ok((moved, control))
    }

    fn flush(&mut self) {
        match &mut self.backend {
            Backend::Uring(ring) => self.engine.flush(&mut UringTx(ring)),
            Backend::Epoll(_) => self.engine.flush(&mut SyncTx),
        }
    }

    fn rearm_read(&mut self, token: u64, err: i32) {
        let Backend::Uring(ring) = &mut self.backend else {
            return;
        };
        let Some(p) = self.engine.port(token as PortIdx) else {
            return; // removed (cancelled)
        };
        if err == libc::ECANCELED || !p.polled {
            return;
        }
        if let PortDev::Tap(t) = &p.dev {
            if err != 0 && err != libc::ENOBUFS {
                tracing::debug!(
                    worker = self.id,
                    port = token,
                    "tap read ended: errno {err}"
                );
            }
            if let Err(e) = ring.read_multishot(t.raw_fd(), token) {
                tracing::error!(worker = self.id, port = token, "re-arm tap read: {e}");
            }
        }
    }

    fn rearm_poll(&mut self, token: u64) {
        let Backend::Uring(ring) = &mut self.backend else {
            return;
        };
        let fd = match token {
            CONTROL_TOKEN => Some(self.wake.raw()),
            VXLAN_TOKEN | IPIP_TOKEN | DIRECT_TOKEN => {
                let up = self.engine.uplink.as_ref().map(|u| u.up.clone());
                up.and_then(|u| match token {
                    VXLAN_TOKEN => u.vxlan_rx.get(self.id).map(|s| s.raw_fd()),
                    IPIP_TOKEN => Some(u.ipip_rx.raw_fd()),
                    _ => u.direct_rx.as_ref().map(|d| d.raw_fd()),
                })
            }
            t => self
                .engine
                .port(t as PortIdx)
                .filter(|p| p.polled)
                .and_then(|p| p.dev.rx_fd()),
        };
        if let Some(fd) = fd {
            let _ = ring.poll_multishot(fd, token);
        }
    }

    /// A readable port in readiness mode (epoll: any port; io_uring: packet sockets).
    fn rx_port_ready(&mut self, p: PortIdx) -> Rx {
        let Some(port) = self.engine.port(p) else {
            return Rx::DRAINED;
        };
        match port.dev.clone() {
            PortDev::Tap(tap) => {
                let mut n = 0;
                for _ in 0..RX_BATCH {
                    let Some(b) = self.engine.pool.alloc() else {
                        self.engine.drops.inc(DropReason::BufferPoolEmpty);
                        break;
                    };
                    let buf = self.engine.pool.buf_mut(b);
                    match tap.read(&mut buf[HEADROOM - VNET_HDR_LEN..]) {
                        Ok(len) => {
                            n += 1;
                            self.with_tx(|e, tx| e.rx_port(tx, p, b, len));
                        }
                        Err(e) => {
                            self.engine.pool.release(b);
                            if e.kind() != io::ErrorKind::WouldBlock {
                                tracing::debug!(port = p, "tap read: {e}");
                            }
                            return Rx {
                                frames: n,
                                more: false,
                            };
                        }
                    }
                }
                Rx {
                    frames: n,
                    more: true,
                }
            }
            PortDev::Packet(sock) => {
                let mut total = 0;
                for _ in 0..4 {
                    let mut bufs = [0 as BufIdx; crate::sys::packet::BATCH];
                    let k = alloc_many(&mut self.engine.pool, &mut bufs);
                    if k == 0 {
                        self.engine.drops.inc(DropReason::BufferPoolEmpty);
                        break;
                    }
                    let mut out = [(0usize, false); crate::sys::packet::BATCH];
                    let got = self.engine.pool.mem_mut().with_slices_mut(
                        &bufs[..k],
                        HEADROOM - VNET_HDR_LEN,
                        |s| sock.recv_batch(s, &mut out),
                    );
                    let got = got.unwrap_or(0);
                    for (i, b) in bufs[..k].iter().enumerate() {
                        if i < got {
                            let (len, vlan) = out[i];
                            self.with_tx(|e, tx| {
                                e.rx_port_at(tx, p, *b, HEADROOM - VNET_HDR_LEN, len, vlan)
                            });
                        } else {
                            self.engine.pool.release(*b);
                        }
                    }
                    total += got;
                    if got < k {
                        return Rx {
                            frames: total,
                            more: false,
                        };
                    }
                }
                // The budget ran out (or the pool did) with frames possibly still queued.
                Rx {
                    frames: total,
                    more: true,
                }
            }
            PortDev::Fake { .. } => Rx::DRAINED,
        }
    }

    fn with_tx(&mut self, f: impl FnOnce(&mut Engine, &mut dyn TxIo)) {
        match &mut self.backend {
            Backend::Uring(ring) => f(&mut self.engine, &mut UringTx(ring)),
            Backend::Epoll(_) => f(&mut self.engine, &mut SyncTx),
        }
    }

    /// The receive loop of the underlay sockets: up to four batches of pool buffers, filled
    /// at offset `at` by `recv` (one `recvmmsg`), each received one handed to `each` with what
    /// `recv` reported of it, then `batch_done` (which flushes receive coalescing).
    fn rx_underlay<R: Copy + Default, const B: usize>(
        &mut self,
        at: usize,
        mut recv: impl FnMut(&mut [std::io::IoSliceMut<'_>], &mut [R; B]) -> io::Result<usize>,
        mut each: impl FnMut(&mut Engine, &mut dyn TxIo, BufIdx, R),
        mut batch_done: impl FnMut(&mut Engine, &mut dyn TxIo),
    ) -> Rx {
        let mut total = 0;
        for _ in 0..4 {
            let mut bufs = [0 as BufIdx; B];
            let k = alloc_many(&mut self.engine.pool, &mut bufs);
            if k == 0 {
                self.engine.drops.inc(DropReason::BufferPoolEmpty);
                break;
            }
            let mut out = [R::default(); B];
            let got = self
                .engine
                .pool
                .mem_mut()
                .with_slices_mut(&bufs[..k], at, |s| recv(s, &mut out))
                .unwrap_or(0);
            for (i, b) in bufs[..k].iter().enumerate() {
                if i < got {
                    let r = out[i];
                    self.with_tx(|e, tx| each(e, tx, *b, r));
                } else {
                    self.engine.pool.release(*b);
                }
            }
            self.with_tx(&mut batch_done);
            total += got;
            if got < k {
                return Rx {
                    frames: total,
                    more: false,
                };
            }
        }
        // The budget ran out (or the pool did) with frames possibly still queued.
        Rx {
            frames: total,
            more: true,
        }
    }

    fn rx_vxlan(&mut self) -> Rx {
        let Some(up) = self.engine.uplink.as_ref().map(|u| u.up.clone()) else {
            return Rx::DRAINED;
        };
        let Some(sock) = up.vxlan_rx.get(self.id) else {
            return Rx::DRAINED;
        };
        // The 8-byte VXLAN header lands just before HEADROOM, so the inner frame starts there.
        let at = HEADROOM - encap::VXLAN_HDR_LEN;
        self.rx_underlay::<inet::Received, { inet::BATCH }>(
            at,
            |s, out| sock.recv_batch(s, out),
            |e, tx, b, r| e.rx_vxlan(tx, b, at, r.len, (r.src, r.port), r.gro_size),
            |_, _| {},
        )
    }

    fn rx_ipip(&mut self) -> Rx {
        let Some(up) = self.engine.uplink.as_ref().map(|u| u.up.clone()) else {
            return Rx::DRAINED;
        };
        // Outer IPv4 header (20 bytes without options) lands before HEADROOM; the inner packet
        // at HEADROOM, with room for the Ethernet header in front of it.
        let at = HEADROOM - ipv4::MIN_HEADER_LEN;
        self.rx_underlay::<inet::Received, { inet::BATCH }>(
            at,
            |s, out| up.ipip_rx.recv_batch(s, out),
            |e, tx, b, r| e.rx_ipip(tx, b, at, r.len, r.src),
            |e, tx| e.gro_flush(tx),
        )
    }

    fn rx_direct(&mut self) -> Rx {
        let Some(up) = self.engine.uplink.as_ref().map(|u| u.up.clone()) else {
            return Rx::DRAINED;
        };
        let Some(sock) = up.direct_rx.as_ref() else {
            return Rx::DRAINED;
        };
        let at = HEADROOM - VNET_HDR_LEN;
        self.rx_underlay::<(usize, bool), { crate::sys::packet::BATCH }>(
            at,
            |s, out| sock.recv_batch(s, out),
            |e, tx, b, (len, _)| e.rx_direct(tx, b, at, len),
            |_, _| {},
        )
    }

    fn apply_learned(&mut self) {
        let now = self.engine.now;
        for c in &mut self.learn_rx {
            while let Ok(ev) = c.pop() {
                self.engine.switch.learn_from_worker(&ev, now);
            }
        }
    }

    fn share_learned(&mut self) {
        if self.learn_tx.is_empty() {
            let _ = self.engine.switch.take_learned().count();
            return;
        }
        let mut lost = 0;
        let learn_tx = &mut self.learn_tx;
        for ev in self.engine.switch.take_learned() {
            for p in learn_tx.iter_mut() {
                if p.push(ev).is_err() {
                    lost += 1;
                }
            }
        }
        if lost > 0 {
            bump(&self.stats.learn_dropped, lost);
        }
    }

    fn register(&mut self, fd: RawFd, token: u64, tap: bool) {
        let r = match &mut self.backend {
            Backend::Epoll(ep) => ep.add(fd, token),
            Backend::Uring(ring) => {
                let r = if tap {
                    ring.read_multishot(fd, token)
                } else {
                    ring.poll_multishot(fd, token)
                };
                r.and_then(|_| ring.submit_and_wait(None))
            }
        };
        if let Err(e) = r {
            tracing::error!(worker = self.id, token, "register descriptor: {e}");
        }
    }

    fn unregister(&mut self, fd: RawFd) {
        let r = match &mut self.backend {
            Backend::Epoll(ep) => ep.del(fd),
            Backend::Uring(ring) => ring.cancel_fd(fd).and_then(|_| ring.submit_and_wait(None)),
        };
        if let Err(e) = r {
            tracing::debug!(worker = self.id, "unregister descriptor: {e}");
        }
    }

    fn apply(&mut self, cmd: Command) {
        let e = &mut self.engine;
        match cmd {
            Command::AddDomain { idx, conf } => {
                if let Some(vni) = conf.vni {
                    e.overlay.set_vni(vni, idx);
                }
                e.switch.add_domain(idx, conf);
            }
            Command::RemoveDomain { idx } => {
                e.overlay.remove_domain(idx);
                e.switch.remove_domain(idx);
            }
            Command::SetUplink {
                uplink,
                underlay,
                poll,
            } => {
                e.switch.set_underlay(Some(underlay));
                e.uplink = Some(UnderlayTx::new(uplink.clone()));
                if let Some(s) = uplink.vxlan_rx.get(self.id) {
                    self.register(s.raw_fd(), VXLAN_TOKEN, false);
                }
                if poll {
                    self.uplink_polled = true;
                    self.register(uplink.ipip_rx.raw_fd(), IPIP_TOKEN, false);
                    if let Some(d) = &uplink.direct_rx {
                        self.register(d.raw_fd(), DIRECT_TOKEN, false);
                    }
                }
            }
            Command::SetPeer { idx, conf } => {
                e.overlay.set_peer(conf.underlay_ip, idx);
                e.switch.set_peer(idx, conf);
            }
            Command::RemovePeer { idx } => {
                e.set_peer_mac(idx, None);
                e.overlay.remove_peer(idx);
                e.switch.remove_peer(idx);
            }
            Command::SetDomainPeers {
                domain,
                peers,
                routes,
            } => e.switch.set_domain_peers(domain, peers, routes),
            Command::AddRemoteEndpoint {
                domain,
                mac,
                ip,
                peer,
            } => e.switch.add_remote_endpoint(domain, mac, ip, peer),
            Command::Announce { idx } => self.announce(idx),
            Command::RemoveRemoteEndpoint { domain, mac, ip } => {
                e.switch.remove_remote_endpoint(domain, mac, ip)
            }
            Command::AddPort {
                idx,
                conf,
                dev,
                counters,
                poll,
            } => {
                e.switch.add_port(idx, conf);
                let fd = dev.rx_fd();
                let tap = matches!(dev, PortDev::Tap(_));
                e.add_port(idx, Port::new(dev, counters, poll));
                if poll {
                    if let Some(fd) = fd {
                        self.register(fd, u64::from(idx), tap);
                    }
                }
            }
            Command::RemovePort { idx } => {
                e.switch.remove_port(idx);
                let fd = e.port(idx).filter(|p| p.polled).and_then(|p| p.dev.rx_fd());
                if let Some(fd) = fd {
                    self.unregister(fd);
                }
                self.engine.remove_port(idx);
            }
            Command::DumpFdb { domain, reply } => {
                let _ = reply.send(e.switch.fdb_rows(domain, e.now));
            }
            Command::DryRun {
                port,
                mut frame,
                reply,
            } => {
                let _ = reply.send(e.dry_run(port, &mut frame));
            }
            Command::SetMldSnooping(on) => e.switch.set_mld_snooping(on),
            Command::SetPeerMac { idx, mac } => e.set_peer_mac(idx, mac),
            Command::Shutdown => {}
        }
    }

    /// Sends a gratuitous ARP for each IP of port `idx` to the rest of its domain.
    fn announce(&mut self, idx: PortIdx) {
        let Some(conf) = self.engine.switch.port(idx).cloned() else {
            return;
        };
        let Some(dc) = self.engine.switch.domain_conf(conf.domain).copied() else {
            return;
        };
        if dc.kind != vswitch_config::NetworkKind::L2 {
            return;
        }
        for ip in &conf.ips {
            let Some(b) = self.engine.pool.alloc() else {
                return;
            };
            let buf = self.engine.pool.buf_mut(b);
            let f = &mut buf[HEADROOM..HEADROOM + 42];
            f[..6].copy_from_slice(&vswitch_config::MacAddr::BROADCAST.0);
            f[6..12].copy_from_slice(&conf.mac.0);
            f[12..14].copy_from_slice(&[0x08, 0x06]);
            crate::packet::arp::emit(
                &mut f[14..42],
                crate::packet::arp::OP_REQUEST,
                conf.mac,
                *ip,
                vswitch_config::MacAddr::ZERO,
                *ip,
            );
            let hdr = Offload::NONE.emit(0);
            buf[HEADROOM - VNET_HDR_LEN..HEADROOM].copy_from_slice(&hdr);
            // Through the pipeline as if the port had sent it: flooded in its domain only.
            self.with_tx(|e, tx| e.rx_port(tx, idx, b, VNET_HDR_LEN + 42));
        }
        self.flush();
    }
}

/// Fills `bufs` with fresh buffers; returns how many it got.
fn alloc_many(pool: &mut BufferPool, bufs: &mut [BufIdx]) -> usize {
    let mut k = 0;
    while k < bufs.len() {
        match pool.alloc() {
            Some(b) => {
                bufs[k] = b;
                k += 1;
            }
            None => break,
        }
    }
    k
}

/// Keeps the provided-buffer ring full, leaving buffers for processing.
fn top_up(ring: &mut Uring, pool: &mut BufferPool) {
    let reserve = pool.capacity() / 4;
    while ring.lent_count() < usize::from(RING_BUFFERS) && pool.available() > reserve {
        let Some(b) = pool.alloc() else { break };
        if !ring.provide(pool.mem_mut(), b) {
            pool.release(b);
            break;
        }
    }
}

/// Synchronous sends: `writev` per tap frame, `sendmmsg` per packet-socket batch (epoll
/// backend, and the io_uring backend for packet sockets and the underlay).
pub struct SyncTx;

impl TxIo for SyncTx {
    fn send_port(
        &mut self,
        pool: &mut BufferPool,
        _idx: PortIdx,
        port: &mut Port,
        drops: &DropCounters,
    ) {
        send_sync(pool, port, drops);
    }

    fn send_underlay(&mut self, pool: &mut BufferPool, up: &mut UnderlayTx, drops: &DropCounters) {
        up.send_all(pool, drops);
    }
}

fn send_sync(pool: &mut BufferPool, port: &mut Port, drops: &DropCounters) {
    match &port.dev {
        PortDev::Tap(tap) => {
            for it in &port.txq {
                let hdr = it.off.emit(0);
                match tap.write(&hdr, pool.frame(it.desc)) {
                    Ok(_) => port.counters.tx(it.desc.len as usize),
                    Err(_) => {
                        port.counters.tx_error(1);
                        drops.inc(DropReason::TxFailed);
                    }
                }
            }
        }
        PortDev::Packet(sock) => {
            let n = port.txq.len();
            let mut start = 0;
            while start < n {
                let end = (start + crate::sys::packet::BATCH).min(n);
                let mut hdrs = [[0u8; VNET_HDR_LEN]; crate::sys::packet::BATCH];
                for (h, it) in hdrs.iter_mut().zip(&port.txq[start..end]) {
                    *h = it.off.emit(0);
                }
                let mut frames: [(&[u8; VNET_HDR_LEN], &[u8]); crate::sys::packet::BATCH] =
                    [(&[0u8; VNET_HDR_LEN], &[]); crate::sys::packet::BATCH];
                for (i, it) in port.txq[start..end].iter().enumerate() {
                    frames[i] = (&hdrs[i], pool.frame(it.desc));
                }
                let want = end - start;
                let mut sent = 0;
                while sent < want {
                    match sock.send_batch(&frames[sent..want]) {
                        Ok(0) => break,
                        Ok(k) => sent += k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                for it in &port.txq[start..start + sent] {
                    port.counters.tx(it.desc.len as usize);
                }
                let failed = (want - sent) as u64;
                if failed > 0 {
                    port.counters.tx_error(failed);
                    for _ in 0..failed {
                        drops.inc(DropReason::TxFailed);
                    }
                }
                start = end;
            }
        }
        PortDev::Fake { wire, .. } => {
            for it in &port.txq {
                port.counters.tx(it.desc.len as usize);
                if wire.count_only {
                    bump(&wire.count, 1);
                } else if let Ok(mut f) = wire.frames.lock() {
                    f.push((it.off, pool.frame(it.desc).to_vec()));
                }
            }
        }
    }
    for it in port.txq.drain(..) {
        pool.release(it.desc.buf);
    }
}

/// io_uring sends for taps (writes complete asynchronously; the buffer is released on their
/// completion), synchronous for the rest.
struct UringTx<'a>(&'a mut Uring);

impl TxIo for UringTx<'_> {
    fn send_port(
        &mut self,
        pool: &mut BufferPool,
        idx: PortIdx,
        port: &mut Port,
        drops: &DropCounters,
    ) {
        let PortDev::Tap(tap) = &port.dev else {
            send_sync(pool, port, drops);
            return;
        };
        let fd = tap.raw_fd();
        for it in port.txq.drain(..) {
            let hdr = it.off.emit(0);
            let d = it.desc;
            match self.0.writev(
                pool.mem_mut(),
                fd,
                &hdr,
                d.buf,
                d.off as usize,
                d.len as usize,
                u64::from(idx),
            ) {
                Ok(()) => port.counters.tx(d.len as usize),
                Err(_) => {
                    // No write slot free: write synchronously instead.
                    match tap.write(&hdr, pool.frame(d)) {
                        Ok(_) => port.counters.tx(d.len as usize),
                        Err(_) => {
                            port.counters.tx_error(1);
                            drops.inc(DropReason::TxFailed);
                        }
                    }
                    pool.release(d.buf);
                }
            }
        }
    }

    fn send_underlay(&mut self, pool: &mut BufferPool, up: &mut UnderlayTx, drops: &DropCounters) {
        up.send_all(pool, drops);
    }
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("id", &self.id).finish()
    }
}
