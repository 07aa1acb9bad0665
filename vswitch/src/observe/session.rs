//! One trace or capture session served on a control connection: start it from a
//! [`TraceRequest`], then pump its records to the client as [`TraceLine`]s until the count, the
//! timeout, or the client going away ends it. Runs on the connection's own thread; a slow
//! client only fills its session's queue (records lost and counted), never a worker.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hub::{EndReason, Next, SessionHandle, SessionKind, SessionSpec, TraceHub, MAX_SNAPLEN};
use super::matcher::Matcher;
use super::render::{event, NameTable};
use vswitch_api::trace::{Trace as TraceRequest, TraceEnd, TraceKind, TraceLine, TraceStarted};

/// How often an idle session checks that its client is still there.
const IDLE_CHECK: Duration = Duration::from_millis(200);
/// Longest a session may run (an hour): a forgotten `--follow` does not trace forever.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);

/// Starts the session a request asks for. The error is for the client (filter errors carry the
/// expression and a caret).
pub fn start(
    hub: &Arc<TraceHub>,
    req: &TraceRequest,
    names: &NameTable,
) -> Result<(SessionHandle, TraceStarted), String> {
    let matcher = Matcher::new(&req.filter, names).map_err(|e| e.render(&req.filter))?;
    let snaplen = if req.snaplen == 0 {
        MAX_SNAPLEN
    } else {
        req.snaplen.min(MAX_SNAPLEN)
    };
    let kind = match req.kind {
        TraceKind::Trace => SessionKind::Trace,
        TraceKind::Capture => SessionKind::Capture { snaplen },
        TraceKind::Drops => SessionKind::Drops { snaplen },
    };
    let mut spec = SessionSpec::new(matcher, kind);
    spec.limit = req.count;
    let timeout = req
        .timeout_ms
        .map_or(MAX_DURATION, Duration::from_millis)
        .min(MAX_DURATION);
    spec.deadline = Some(Instant::now() + timeout);
    let handle = hub.add(spec).map_err(|e| e.to_string())?;
    let mut interfaces: Vec<String> = names.ports.values().map(|(n, _)| n.clone()).collect();
    interfaces.push("underlay".into());
    let started = TraceStarted {
        filter: handle.filter().to_string(),
        interfaces,
    };
    Ok((handle, started))
}

/// Streams the session's records until it ends; returns (and sends) how it ended.
/// `names` gives the daemon's current names (called again when a record mentions an index the
/// table does not know, at most once a second); `alive` says whether the client is still there.
pub fn pump(
    handle: SessionHandle,
    mut names: impl FnMut() -> NameTable,
    mut send: impl FnMut(&TraceLine) -> std::io::Result<()>,
    alive: impl Fn() -> bool,
) -> TraceEnd {
    let mut table = names();
    let mut refreshed = Instant::now();
    let reason = loop {
        match handle.next(IDLE_CHECK) {
            Next::Record(r) => {
                if !table.knows(&r) && refreshed.elapsed() >= Duration::from_secs(1) {
                    table = names();
                    refreshed = Instant::now();
                }
                let ev = event(&r, &table, handle.snaplen());
                if send(&TraceLine::Event(ev)).is_err() {
                    break "client";
                }
            }
            Next::Idle => {
                if !alive() {
                    break "client";
                }
            }
            Next::Done(EndReason::Limit) => break "count",
            Next::Done(EndReason::Deadline) => break "timeout",
        }
    };
    let s = handle.stats();
    let end = TraceEnd {
        reason: reason.into(),
        matched: s.matched,
        delivered: s.delivered,
        lost: s.lost,
    };
    drop(handle);
    if reason != "client" {
        let _ = send(&TraceLine::End(end.clone()));
    }
    end
}

/// Whether the client at the other end of a control connection is still there. The client
/// sends nothing after its request, so any byte or the end of the stream means it is done.
pub fn client_alive(s: &UnixStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let alive = matches!((&*s).read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    // Writes must block again: a slow client fills the session queue, not the socket.
    s.set_nonblocking(false).is_ok() && alive
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::trace::{Rx, Stage};
    use crate::dataplane::DropReason;
    use std::io::{BufRead, BufReader, Write};

    fn names() -> NameTable {
        NameTable {
            ports: [(0, ("pod-a".into(), 0)), (1, ("pod-b".into(), 0))].into(),
            networks: [(0, "blue".into())].into(),
            peers: Default::default(),
        }
    }

    #[test]
    fn bad_filters_are_reported_with_a_caret() {
        let hub = TraceHub::new();
        let req = TraceRequest {
            filter: "port=pod-z".into(),
            ..Default::default()
        };
        let e = start(&hub, &req, &names()).unwrap_err();
        assert!(e.contains("no port `pod-z`") && e.ends_with('^'), "{e}");
        assert_eq!(hub.active(), 0);
    }

    /// A worker thread emits; the session streams over a real unix socket to a client that
    /// reads lines; the count ends it.
    #[test]
    fn streams_until_the_count_over_a_socket() {
        let hub = TraceHub::new();
        let req = TraceRequest {
            filter: "in_port=pod-a".into(),
            kind: TraceKind::Drops,
            snaplen: 20,
            count: Some(3),
            timeout_ms: Some(10_000),
        };
        let (handle, started) = start(&hub, &req, &names()).unwrap();
        assert_eq!(started.interfaces, ["pod-a", "pod-b", "underlay"]);
        let worker = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let mut wt = hub.worker(0);
                for i in 0..50u8 {
                    std::thread::sleep(Duration::from_millis(2));
                    if !wt.begin_batch() {
                        continue;
                    }
                    let f = [i; 60];
                    let m = wt.wants(Rx::Port(u32::from(i % 2)), Some(0), &f);
                    if m.any() {
                        let mut r = wt.record(m, Rx::Port(u32::from(i % 2)), Some(0), &f);
                        r.stages = vec![Stage::Drop(DropReason::Hairpin)];
                        wt.emit(m, r);
                    }
                }
            })
        };
        let (server, client) = UnixStream::pair().unwrap();
        let end = pump(
            handle,
            names,
            |l| {
                let mut v = serde_json::to_vec(l)?;
                v.push(b'\n');
                (&server).write_all(&v)
            },
            || client_alive(&server),
        );
        worker.join().unwrap();
        assert_eq!((end.reason.as_str(), end.delivered), ("count", 3));
        drop(server);
        let lines: Vec<TraceLine> = BufReader::new(client)
            .lines()
            .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        let TraceLine::Event(e) = &lines[0] else {
            panic!()
        };
        assert_eq!((e.verdict.as_str(), e.frame.len()), ("drop hairpin", 40));
        assert!(matches!(&lines[3], TraceLine::End(x) if x.reason == "count"));
        assert_eq!(hub.active(), 0);
    }

    #[test]
    fn a_client_that_goes_away_ends_the_session() {
        let hub = TraceHub::new();
        let (handle, _) = start(&hub, &TraceRequest::default(), &names()).unwrap();
        let (server, client) = UnixStream::pair().unwrap();
        assert!(client_alive(&server));
        drop(client);
        let t0 = Instant::now();
        let end = pump(handle, names, |_| Ok(()), || client_alive(&server));
        assert_eq!(end.reason, "client");
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!(hub.active(), 0);
    }
}
