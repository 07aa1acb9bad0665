//! Trace and capture sessions, shared between the control plane and the workers.
//!
//! The daemon has one [`TraceHub`]. A client's `trace`/`capture` request adds a session (filter,
//! kind, limit, deadline) and reads its records through the [`SessionHandle`]; dropping the handle
//! ends the session. Each worker holds a [`WorkerTrace`]:
//!
//! ```text
//! if wt.begin_batch() {                        // one relaxed load when nothing is traced
//!     for each packet:
//!         let m = wt.wants(rx, domain, frame); // which sessions may match (no allocation)
//!         if m.any() {
//!             let mut rec = wt.record(m, rx, domain, frame); // timestamp, headers, capture bytes
//!             let mut r = Recorder::default();
//!             … run the pipeline with &mut r …
//!             rec.stages = r.stages;
//!             wt.emit(m, rec);                 // never blocks: full queue → dropped, counted
//!         } else { … run with Off … }
//! }
//! ```
//!
//! A worker refreshes its copy of the session list only when the hub's generation changed, so an
//! idle hub costs one relaxed atomic load per batch and no shared cache line is written.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;

use super::matcher::{Matcher, Packet};
use crate::dataplane::trace::{DomainIdx, Rx, Stage, Summary};

/// Most sessions at once (a [`SessionMask`] has one bit per session).
pub const MAX_SESSIONS: usize = 64;
/// Default records buffered per session before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 4096;
/// Largest snap length a capture may ask for (a GSO superframe whole).
pub const MAX_SNAPLEN: u32 = 65_535 + 14;

/// What a session collects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// The stage list of each matching packet.
    Trace,
    /// The stages and the first `snaplen` bytes of each matching packet, as received.
    Capture { snaplen: u32 },
    /// Like `Capture`, for matching packets the pipeline dropped only.
    Drops { snaplen: u32 },
}

impl SessionKind {
    fn snaplen(self) -> u32 {
        match self {
            SessionKind::Trace => 0,
            SessionKind::Capture { snaplen } | SessionKind::Drops { snaplen } => {
                snaplen.min(MAX_SNAPLEN)
            }
        }
    }
}

/// A session as the control plane asks for it.
#[derive(Debug, Clone)]
pub struct SessionSpec {
    pub matcher: Matcher,
    pub kind: SessionKind,
    /// Stop after this many records.
    pub limit: Option<u64>,
    /// Stop at this time.
    pub deadline: Option<Instant>,
    /// Records buffered for a slow reader.
    pub queue: usize,
}

impl SessionSpec {
    pub fn new(matcher: Matcher, kind: SessionKind) -> SessionSpec {
        SessionSpec {
            matcher,
            kind,
            limit: None,
            deadline: None,
            queue: DEFAULT_QUEUE,
        }
    }
}

/// One traced packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub worker: u16,
    /// Nanoseconds since the Unix epoch (CLOCK_REALTIME), taken at receive.
    pub time_ns: u64,
    pub rx: Rx,
    /// The domain as the worker knew it at receive (`None` before demultiplexing).
    pub domain: Option<DomainIdx>,
    /// Headers as received.
    pub headers: Summary,
    pub stages: Vec<Stage>,
    /// The first bytes of the frame as received (captures only; empty otherwise).
    pub frame: Vec<u8>,
    /// Length of the whole frame.
    pub orig_len: u32,
    /// A synthetic packet (`trace --inject`) run without changing any table.
    pub dry_run: bool,
}

impl Record {
    /// A record of a frame received now, keeping `snaplen` bytes of it.
    pub fn new(
        worker: u16,
        rx: Rx,
        domain: Option<DomainIdx>,
        frame: &[u8],
        snaplen: usize,
    ) -> Record {
        Record {
            worker,
            time_ns: now_ns(),
            rx,
            domain,
            headers: Summary::from_frame(frame),
            stages: Vec::new(),
            frame: frame[..frame.len().min(snaplen)].to_vec(),
            orig_len: u32::try_from(frame.len()).unwrap_or(u32::MAX),
            dry_run: false,
        }
    }

    /// The drop reason, if the pipeline dropped the packet.
    pub fn dropped(&self) -> Option<crate::dataplane::DropReason> {
        self.stages.iter().find_map(|s| match s {
            Stage::Drop(r) => Some(*r),
            _ => None,
        })
    }

    fn packet(&self) -> Packet<'_> {
        Packet {
            rx: self.rx,
            domain: self.domain,
            headers: &self.headers,
            stages: Some(&self.stages),
        }
    }
}

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, as pcapng wants).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Which of a worker's sessions a packet may match (bit `i` = the worker's session `i`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionMask(u64);

impl SessionMask {
    #[inline]
    pub fn any(self) -> bool {
        self.0 != 0
    }
    fn bits(self) -> impl Iterator<Item = usize> {
        (0..MAX_SESSIONS).filter(move |i| self.0 & (1 << i) != 0)
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// It delivered its `limit` records.
    Limit,
    Deadline,
}

/// What [`SessionHandle::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Record(Arc<Record>),
    /// Nothing arrived within the wait.
    Idle,
    Done(EndReason),
}

/// Counters of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionStats {
    /// Packets that matched the filter.
    pub matched: u64,
    /// Records handed to the reader.
    pub delivered: u64,
    /// Records dropped because the reader was too slow (queue full).
    pub lost: u64,
}

#[derive(Debug)]
struct Session {
    id: u64,
    matcher: Matcher,
    kind: SessionKind,
    limit: Option<u64>,
    deadline: Option<Instant>,
    queue: ArrayQueue<Arc<Record>>,
    matched: AtomicU64,
    queued: AtomicU64,
    lost: AtomicU64,
    delivered: AtomicU64,
    /// Set once the session needs nothing more (limit reached or deadline passed).
    done: AtomicBool,
    /// The reader is parked waiting for records.
    sleeping: AtomicBool,
    reader: OnceLock<std::thread::Thread>,
}

impl Session {
    fn wants_more(&self) -> bool {
        !self.done.load(Ordering::Relaxed)
    }

    fn offer(&self, rec: &Arc<Record>) {
        if !self.wants_more() {
            return;
        }
        let p = rec.packet();
        if !self.matcher.matches(&p) {
            return;
        }
        if matches!(self.kind, SessionKind::Drops { .. }) && rec.dropped().is_none() {
            return;
        }
        self.matched.fetch_add(1, Ordering::Relaxed);
        if self
            .limit
            .is_some_and(|l| self.queued.load(Ordering::Relaxed) >= l)
        {
            self.done.store(true, Ordering::Relaxed);
            return;
        }
        if self.queue.push(rec.clone()).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        // Pairs with the reader's fence in `next`: either it sees the record or we see it asleep.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::Relaxed) {
            if let Some(t) = self.reader.get() {
                t.unpark();
            }
        }
    }
}

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    sessions: Vec<Arc<Session>>,
    /// What workers copy: the current list.
    snapshot: Arc<[Arc<Session>]>,
}

/// Every trace and capture session of the daemon.
#[derive(Debug, Default)]
pub struct TraceHub {
    /// Bumped on every change of the session list; workers compare it once per batch.
    generation: AtomicU64,
    registry: Mutex<Registry>,
    /// Records lost by sessions that ended.
    lost_before: AtomicU64,
}

/// Why a session could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("too many trace/capture sessions at once (at most {MAX_SESSIONS})")]
    TooManySessions,
}

impl TraceHub {
    pub fn new() -> Arc<TraceHub> {
        Arc::new(TraceHub::default())
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The handle a worker uses.
    pub fn worker(self: &Arc<Self>, worker: u16) -> WorkerTrace {
        WorkerTrace {
            hub: self.clone(),
            worker,
            generation: u64::MAX,
            sessions: Arc::from(Vec::new()),
            needs_headers: false,
        }
    }

    /// Starts a session.
    pub fn add(self: &Arc<Self>, spec: SessionSpec) -> Result<SessionHandle, HubError> {
        let mut r = self.registry();
        if r.sessions.len() >= MAX_SESSIONS {
            return Err(HubError::TooManySessions);
        }
        r.next_id += 1;
        let s = Arc::new(Session {
            id: r.next_id,
            matcher: spec.matcher,
            kind: spec.kind,
            limit: spec.limit,
            deadline: spec.deadline,
            queue: ArrayQueue::new(spec.queue.max(1)),
            matched: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            done: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            reader: OnceLock::new(),
        });
        r.sessions.push(s.clone());
        self.publish(&mut r);
        Ok(SessionHandle {
            hub: self.clone(),
            session: s,
        })
    }

    fn remove(&self, id: u64) {
        let mut r = self.registry();
        if let Some(s) = r.sessions.iter().find(|s| s.id == id) {
            self.lost_before
                .fetch_add(s.lost.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        r.sessions.retain(|s| s.id != id);
        self.publish(&mut r);
    }

    fn publish(&self, r: &mut Registry) {
        r.snapshot = Arc::from(r.sessions.clone());
        // Release: a worker that sees the new generation then locks the registry and finds
        // the new list (the lock orders it anyway; this keeps the counter honest on its own).
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Sessions running now.
    pub fn active(&self) -> usize {
        self.registry().sessions.len()
    }

    /// Sessions running, and records lost to slow readers over the daemon's lifetime.
    pub fn stats(&self) -> vswitch_api::TraceStats {
        let r = self.registry();
        let live: u64 = r
            .sessions
            .iter()
            .map(|s| s.lost.load(Ordering::Relaxed))
            .sum();
        vswitch_api::TraceStats {
            sessions: r.sessions.len() as u64,
            records_lost: self.lost_before.load(Ordering::Relaxed) + live,
        }
    }
}

/// A worker's view of the hub.
#[derive(Debug)]
pub struct WorkerTrace {
    hub: Arc<TraceHub>,
    worker: u16,
    generation: u64,
    sessions: Arc<[Arc<Session>]>,
    needs_headers: bool,
}

impl WorkerTrace {
    /// Call once per batch: whether any session is running (then call [`Self::wants`] per packet).
    /// Costs one relaxed atomic load unless the session list changed.
    #[inline]
    pub fn begin_batch(&mut self) -> bool {
        let g = self.hub.generation.load(Ordering::Relaxed);
        if g != self.generation {
            self.refresh(g);
        }
        !self.sessions.is_empty()
    }

    #[cold]
    #[inline(never)]
    fn refresh(&mut self, g: u64) {
        let r = self.hub.registry();
        self.sessions = r.snapshot.clone();
        self.generation = g;
        self.needs_headers = self.sessions.iter().any(|s| s.matcher.needs_headers());
    }

    /// The sessions this packet may match, from what is known before the pipeline runs.
    /// `domain`: the ingress port's domain, or the VNI's for the underlay (`None` if unknown).
    pub fn wants(&self, rx: Rx, domain: Option<DomainIdx>, frame: &[u8]) -> SessionMask {
        let headers = if self.needs_headers {
            Summary::from_frame(frame)
        } else {
            Summary::default()
        };
        let p = Packet {
            rx,
            domain,
            headers: &headers,
            stages: None,
        };
        let mut m = 0u64;
        for (i, s) in self.sessions.iter().enumerate() {
            if s.wants_more() && s.matcher.may_match(&p) {
                m |= 1 << i;
            }
        }
        SessionMask(m)
    }

    /// Bytes of the frame the sessions in `mask` capture.
    pub fn snaplen(&self, mask: SessionMask) -> usize {
        mask.bits()
            .filter_map(|i| self.sessions.get(i))
            .map(|s| s.kind.snaplen() as usize)
            .max()
            .unwrap_or(0)
    }

    /// Starts the record of a packet `wants` selected: call before the pipeline rewrites it.
    pub fn record(
        &self,
        mask: SessionMask,
        rx: Rx,
        domain: Option<DomainIdx>,
        frame: &[u8],
    ) -> Record {
        Record::new(self.worker, rx, domain, frame, self.snaplen(mask))
    }

    /// Hands a finished record to the sessions in `mask` whose filter it matches. Never blocks:
    /// a full session queue drops the record and counts it.
    pub fn emit(&self, mask: SessionMask, record: Record) {
        let rec = Arc::new(record);
        for i in mask.bits() {
            if let Some(s) = self.sessions.get(i) {
                s.offer(&rec);
            }
        }
    }
}

/// The control plane's end of a session; dropping it ends the session.
#[derive(Debug)]
pub struct SessionHandle {
    hub: Arc<TraceHub>,
    session: Arc<Session>,
}

impl SessionHandle {
    /// The next record, waiting at most `wait`.
    pub fn next(&self, wait: Duration) -> Next {
        let s = &self.session;
        let until = Instant::now() + wait;
        let mine = s.reader.get_or_init(std::thread::current).id() == std::thread::current().id();
        loop {
            if let Some(l) = s.limit {
                if s.delivered.load(Ordering::Relaxed) >= l {
                    s.done.store(true, Ordering::Relaxed);
                    return Next::Done(EndReason::Limit);
                }
            }
            if let Some(r) = s.queue.pop() {
                s.delivered.fetch_add(1, Ordering::Relaxed);
                return Next::Record(r);
            }
            let now = Instant::now();
            if s.deadline.is_some_and(|d| now >= d) {
                s.done.store(true, Ordering::Relaxed);
                return Next::Done(EndReason::Deadline);
            }
            if now >= until {
                return Next::Idle;
            }
            let mut nap = until - now;
            if let Some(d) = s.deadline {
                nap = nap.min(d - now);
            }
            if !mine {
                // Another thread registered as the reader: poll.
                nap = nap.min(Duration::from_millis(10));
            }
            s.sleeping.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !s.queue.is_empty() {
                s.sleeping.store(false, Ordering::Relaxed);
                continue;
            }
            std::thread::park_timeout(nap);
            s.sleeping.store(false, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> SessionStats {
        let s = &self.session;
        SessionStats {
            matched: s.matched.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            lost: s.lost.load(Ordering::Relaxed),
        }
    }

    /// Bytes of each frame this session keeps. A record's `frame` may hold more when another
    /// session captured the same packet with a larger snap length: writers cut it.
    pub fn snaplen(&self) -> usize {
        self.session.kind.snaplen() as usize
    }

    pub fn kind(&self) -> SessionKind {
        self.session.kind
    }

    pub fn filter(&self) -> &str {
        self.session.matcher.text()
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.session.done.store(true, Ordering::Relaxed);
        self.hub.remove(self.session.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::fdb::PortIdx;
    use crate::dataplane::trace::{DomainIdx, PeerIdx};
    use crate::dataplane::DropReason;
    use crate::observe::matcher::Names;

    struct Ports;
    impl Names for Ports {
        fn port(&self, id: &str) -> Option<(PortIdx, DomainIdx)> {
            let n: u32 = id.strip_prefix('p')?.parse().ok()?;
            Some((n, n % 2))
        }
        fn network(&self, name: &str) -> Option<DomainIdx> {
            name.strip_prefix('n')?.parse().ok()
        }
        fn peer(&self, _: &str) -> Option<PeerIdx> {
            None
        }
    }

    fn spec(src: &str, kind: SessionKind) -> SessionSpec {
        SessionSpec::new(Matcher::new(src, &Ports).unwrap(), kind)
    }

    fn frame(n: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend([
            0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, n,
        ]);
        f
    }

    /// What a worker does for one packet; `drop` makes the pipeline drop it.
    fn run(wt: &WorkerTrace, port: PortIdx, f: &[u8], drop: bool) -> bool {
        let rx = Rx::Port(port);
        let m = wt.wants(rx, Some(port % 2), f);
        if !m.any() {
            return false;
        }
        let mut rec = wt.record(m, rx, Some(port % 2), f);
        rec.stages = if drop {
            vec![Stage::Drop(DropReason::Hairpin)]
        } else {
            vec![Stage::TxPort(port + 2)]
        };
        wt.emit(m, rec);
        true
    }

    #[test]
    fn idle_hub_is_one_load_and_sessions_come_and_go() {
        let hub = TraceHub::new();
        let mut wt = hub.worker(0);
        assert!(!wt.begin_batch());
        let a = hub.add(spec("in_port=p1", SessionKind::Trace)).unwrap();
        assert!(wt.begin_batch());
        assert!(!run(&wt, 3, &frame(1), false), "other port: not recorded");
        assert!(run(&wt, 1, &frame(1), false));
        let Next::Record(r) = a.next(Duration::ZERO) else {
            panic!()
        };
        assert_eq!(
            (r.rx, r.worker, r.frame.len(), r.orig_len),
            (Rx::Port(1), 0, 0, 34)
        );
        assert!(r.time_ns > 1_600_000_000_000_000_000);
        assert_eq!(a.next(Duration::from_millis(5)), Next::Idle);
        drop(a);
        assert_eq!(hub.active(), 0);
        assert!(!wt.begin_batch());
    }

    #[test]
    fn capture_snaplen_drops_kind_and_out_port() {
        let hub = TraceHub::new();
        let mut wt = hub.worker(3);
        let cap = hub
            .add(spec("port=p3", SessionKind::Capture { snaplen: 20 }))
            .unwrap();
        let drops = hub
            .add(spec("", SessionKind::Drops { snaplen: 1 << 30 }))
            .unwrap();
        assert!(wt.begin_batch());
        // Received on p1, delivered to p3 (out_port): captured; not dropped: not in `drops`.
        run(&wt, 1, &frame(7), false);
        run(&wt, 1, &frame(8), true);
        let Next::Record(r) = cap.next(Duration::ZERO) else {
            panic!()
        };
        // The record is shared with the drops session, which keeps more: writers cut.
        assert_eq!((cap.snaplen(), &r.frame[..]), (20, &frame(7)[..]));
        assert_eq!(
            cap.next(Duration::ZERO),
            Next::Idle,
            "the drop went nowhere near p3"
        );
        let Next::Record(r) = drops.next(Duration::ZERO) else {
            panic!()
        };
        assert_eq!(
            (r.dropped(), r.frame.len()),
            (Some(DropReason::Hairpin), 34)
        );
        assert_eq!(drops.next(Duration::ZERO), Next::Idle);
        assert_eq!(
            drops.stats(),
            SessionStats {
                matched: 1,
                delivered: 1,
                lost: 0
            }
        );
    }

    #[test]
    fn limits_deadlines_and_full_queues() {
        let hub = TraceHub::new();
        let mut wt = hub.worker(0);
        let mut s = spec("", SessionKind::Trace);
        s.limit = Some(3);
        let limited = hub.add(s).unwrap();
        let mut s = spec("", SessionKind::Trace);
        s.queue = 2;
        let slow = hub.add(s).unwrap();
        let mut s = spec("", SessionKind::Trace);
        s.deadline = Some(Instant::now() + Duration::from_millis(30));
        let timed = hub.add(s).unwrap();
        wt.begin_batch();
        for i in 0..10 {
            run(&wt, 1, &frame(i), false);
        }
        let mut got = 0;
        while let Next::Record(_) = limited.next(Duration::ZERO) {
            got += 1;
        }
        assert_eq!(got, 3);
        assert_eq!(limited.next(Duration::ZERO), Next::Done(EndReason::Limit));
        // After the limit the session stops asking for packets.
        assert_eq!(wt.wants(Rx::Port(1), Some(1), &frame(1)).0 & 1, 0);
        assert_eq!(
            slow.stats(),
            SessionStats {
                matched: 10,
                delivered: 0,
                lost: 8
            }
        );
        assert_eq!(hub.stats().records_lost, 8);
        drop(slow);
        assert_eq!((hub.stats().sessions, hub.stats().records_lost), (2, 8));
        let t0 = Instant::now();
        let mut n = 0;
        loop {
            match timed.next(Duration::from_secs(5)) {
                Next::Record(_) => n += 1,
                Next::Done(EndReason::Deadline) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(n, 10);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn too_many_sessions() {
        let hub = TraceHub::new();
        let v: Vec<_> = (0..MAX_SESSIONS)
            .map(|_| hub.add(spec("", SessionKind::Trace)).unwrap())
            .collect();
        assert_eq!(
            hub.add(spec("", SessionKind::Trace)).unwrap_err(),
            HubError::TooManySessions
        );
        drop(v);
        assert!(hub.add(spec("", SessionKind::Trace)).is_ok());
    }

    /// Two workers emit while two clients read (one slow), sessions are added and removed:
    /// nobody blocks, every record is delivered or counted lost.
    #[test]
    fn workers_and_readers_in_threads() {
        let hub = TraceHub::new();
        let stop = Arc::new(AtomicBool::new(false));
        let fast = hub.add(spec("network=n1", SessionKind::Trace)).unwrap();
        let mut s = spec("", SessionKind::Capture { snaplen: 64 });
        s.queue = 16;
        let slow = hub.add(s).unwrap();
        let workers: Vec<_> = (0..2u16)
            .map(|w| {
                let (hub, stop) = (hub.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut wt = hub.worker(w);
                    let mut sent = 0u64;
                    for batch in 0..2000u32 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if wt.begin_batch() {
                            for i in 0..8u32 {
                                // Odd ports are in domain 1 (network n1).
                                let port = (batch + i) % 4;
                                if run(&wt, port, &frame(i as u8), false) && port % 2 == 1 {
                                    sent += 1;
                                }
                            }
                        }
                    }
                    sent
                })
            })
            .collect();
        // A third client comes and goes while the workers run.
        for _ in 0..50 {
            let h = hub.add(spec("tcp", SessionKind::Trace)).unwrap();
            drop(h);
        }
        let reader = std::thread::spawn(move || {
            let mut n = 0u64;
            while let Next::Record(r) = fast.next(Duration::from_millis(200)) {
                assert_eq!(r.domain, Some(1));
                n += 1;
            }
            (n, fast.stats())
        });
        let sent: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        stop.store(true, Ordering::Relaxed);
        let (n, st) = reader.join().unwrap();
        assert_eq!(st.matched, sent);
        assert_eq!(n + st.lost, sent);
        let ss = slow.stats();
        assert!(ss.lost > 0, "{ss:?}");
        let mut drained = 0;
        while let Next::Record(_) = slow.next(Duration::ZERO) {
            drained += 1;
        }
        assert_eq!(drained, 16);
        assert_eq!(ss.matched, drained + ss.lost);
    }
}
