//! The control socket: a unix stream socket (mode 0600), one JSON request per line.
//! Each connection gets a thread; requests are applied one at a time under the state lock,
//! except the slow part of a port add (plumbing the pod interface) and of a port removal
//! (deleting its links), which run unlocked (see [`apply`]).
//! A `trace` request turns its connection into a stream of trace records (without holding the
//! lock while it waits for them) until the session ends.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] connections are served at once (a connection beyond
//! that gets an `unavailable` error and is closed, so a flood of clients costs no threads), and
//! each request line must arrive whole within [`REQUEST_TIMEOUT`] of the server starting to wait
//! for it, however slowly its bytes trickle in (a slow sender cannot keep a thread forever).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::daemon::{Daemon, Step};
use vswitch_api::{ApiError, ErrorKind, Reply, Request};

/// Largest request line accepted (a port add is well under 4 KiB).
const MAX_REQUEST: usize = 1 << 20;

/// Connections served at once (each holds a thread while it lasts). Clients make one
/// connection per call, so this is the number of concurrent callers, trace sessions included.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a connection has to deliver one whole request line, counted from the end of the
/// previous reply (or the accept): our clients write a request at once, so this only ever
/// ends idle or deliberately slow connections.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts live connections; a slot is given back when its guard drops (thread end or panic).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(live: &Arc<AtomicUsize>) -> Option<Slot> {
        live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(live.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Binds the control socket: creates its directory, refuses to steal a live daemon's socket,
/// replaces a stale one, and restricts it to the owner.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "another vswitchd is already listening on {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// Serves connections until the listener fails.
pub fn serve(listener: UnixListener, state: Arc<Mutex<Daemon>>) {
    let live = Arc::new(AtomicUsize::new(0));
    let mut refused: u64 = 0;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let Some(slot) = Slot::take(&live) else {
                    refused += 1;
                    // Rate-limited: a flood would otherwise flood the log too.
                    if refused.is_power_of_two() {
                        tracing::warn!(
                            refused,
                            max = MAX_CONNECTIONS,
                            "control socket: too many connections, refusing"
                        );
                    }
                    refuse(stream);
                    continue;
                };
                let state = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("vswitch-ctl-conn".into())
                    .spawn(move || {
                        let _slot = slot;
                        handle_conn(stream, &state)
                    });
                if let Err(e) = spawned {
                    tracing::error!("control connection thread: {e}");
                }
            }
            Err(e) => {
                tracing::error!("accept on control socket: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Answers a connection over the cap with `unavailable` (the CNI plugin retries) and closes it,
/// without a thread and without waiting on the client.
fn refuse(stream: UnixStream) {
    let _ = stream.set_nonblocking(true);
    let reply = Reply::Error(ApiError::new(
        ErrorKind::Unavailable,
        format!("vswitchd is busy: {MAX_CONNECTIONS} control connections open, retry"),
    ));
    let _ = send_line(&stream, &reply);
}

/// Why no request line came.
#[derive(Debug, PartialEq, Eq)]
enum LineEnd {
    /// The client closed the connection between requests.
    Closed,
    /// No whole line within the deadline.
    TimedOut,
    /// Longer than [`MAX_REQUEST`].
    TooLong,
    Io,
}

/// Reads one request line (without its newline), keeping bytes after it in `buf` for the next
/// call. The deadline bounds the whole line, not each read.
fn read_line(
    stream: &mut impl ReadTimeout,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<String, LineEnd> {
    let mut scanned = 0;
    loop {
        if let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=scanned + pos).collect();
            return Ok(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
        }
        scanned = buf.len();
        if buf.len() > MAX_REQUEST {
            return Err(LineEnd::TooLong);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LineEnd::TimedOut);
        }
        stream.set_timeout(left).map_err(|_| LineEnd::Io)?;
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return Err(LineEnd::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LineEnd::TimedOut)
            }
            Err(_) => return Err(LineEnd::Io),
        }
    }
}

/// A reader whose per-read timeout can be set (a unix stream; a fake in tests).
trait ReadTimeout: Read {
    fn set_timeout(&mut self, t: Duration) -> std::io::Result<()>;
}

impl ReadTimeout for UnixStream {
    fn set_timeout(&mut self, t: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(t))
    }
}

fn handle_conn(stream: UnixStream, state: &Mutex<Daemon>) {
    let mut reader = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut writer = stream;
    // A client that stops reading cannot pin the thread in a write either.
    let _ = writer.set_write_timeout(Some(REQUEST_TIMEOUT));
    let mut buf = Vec::new();
    loop {
        let line = match read_line(&mut reader, &mut buf, Instant::now() + REQUEST_TIMEOUT) {
            Ok(l) => l,
            Err(LineEnd::TimedOut) => {
                tracing::debug!("control connection idle for {REQUEST_TIMEOUT:?}, closing");
                return;
            }
            Err(LineEnd::TooLong) => {
                let _ = send_line(
                    &writer,
                    &Reply::Error(ApiError::new(
                        ErrorKind::BadRequest,
                        format!("request longer than {MAX_REQUEST} bytes"),
                    )),
                );
                return;
            }
            Err(LineEnd::Closed | LineEnd::Io) => return,
        };
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Trace(req)) => {
                stream_trace(&writer, state, &req);
                return;
            }
            Ok(req) => {
                tracing::debug!(?req, "request");
                apply(state, req)
            }
            Err(e) => Reply::Error(ApiError::new(
                ErrorKind::BadRequest,
                format!("cannot decode request: {e}"),
            )),
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_else(|_| {
            b"{\"error\":{\"kind\":\"system\",\"message\":\"encode\"}}".to_vec()
        });
        out.push(b'\n');
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

/// Applies one request. A port add is reserved under the lock, plumbed (netlink in the pod's
/// namespace, the slow part) without it, and committed or rolled back under it again, so ADDs
/// of different pods plumb in parallel. Interfaces of removed ports are deleted after the lock
/// is released too, before the reply (a DEL's reply still means they are gone).
fn apply(state: &Mutex<Daemon>, req: Request) -> Reply {
    let (step, teardown) = {
        let mut d = lock(state);
        let step = d.begin(req);
        (step, d.take_teardown())
    };
    teardown.run();
    match step {
        Step::Done(reply) => reply,
        Step::Plumb(pending) => {
            tracing::debug!(port = %pending.port_id(), "plumbing without the state lock");
            let dev = pending.plumb();
            let (reply, teardown) = {
                let mut d = lock(state);
                let reply = d.finish(pending, dev);
                (reply, d.take_teardown())
            };
            teardown.run();
            reply
        }
    }
}

fn lock(state: &Mutex<Daemon>) -> std::sync::MutexGuard<'_, Daemon> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn send_line(mut w: &UnixStream, v: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v)?;
    out.push(b'\n');
    w.write_all(&out)
}

/// Serves a trace session on this connection: the start reply, then one line per record, then
/// the end line. The state lock is only taken to start and to refresh names.
fn stream_trace(conn: &UnixStream, state: &Mutex<Daemon>, req: &vswitch_api::Trace) {
    use crate::observe::session;
    let started = {
        let d = lock(state);
        session::start(&d.trace_hub(), req, &d.trace_names())
    };
    let handle = match started {
        Ok((handle, started)) => {
            let reply = vswitch_api::answer(req.clone(), |_| Ok(started));
            if send_line(conn, &reply).is_err() {
                return;
            }
            handle
        }
        Err(msg) => {
            let _ = send_line(
                conn,
                &Reply::Error(ApiError::new(ErrorKind::BadRequest, msg)),
            );
            return;
        }
    };
    let _ = conn.set_read_timeout(None);
    let end = session::pump(
        handle,
        || lock(state).trace_names(),
        |l| send_line(conn, l),
        || session::client_alive(conn),
    );
    tracing::debug!(reason = %end.reason, matched = end.matched, lost = end.lost, "trace session ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers its chunks one read at a time, then reports a timeout.
    struct Trickle(Vec<Vec<u8>>);

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let c = self.0.remove(0);
            out[..c.len()].copy_from_slice(&c);
            Ok(c.len())
        }
    }

    impl ReadTimeout for Trickle {
        fn set_timeout(&mut self, _: Duration) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_split_and_pipelined_bytes_kept() {
        let mut s = Trickle(vec![b"{\"op\":".to_vec(), b"\"ping\"}\n{\"op\"".to_vec()]);
        let mut buf = Vec::new();
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            read_line(&mut s, &mut buf, far).unwrap(),
            r#"{"op":"ping"}"#
        );
        assert_eq!(buf, br#"{"op""#);
        assert_eq!(read_line(&mut s, &mut buf, far), Err(LineEnd::TimedOut));
    }

    #[test]
    fn deadline_bounds_the_whole_line() {
        // Bytes keep coming, but the deadline is already over: no more reads.
        let mut s = Trickle(vec![b"x".to_vec(); 100]);
        let mut buf = Vec::new();
        let past = Instant::now();
        assert_eq!(read_line(&mut s, &mut buf, past), Err(LineEnd::TimedOut));
        let mut big = Trickle(vec![vec![b'a'; 4096]; MAX_REQUEST / 4096 + 2]);
        let far = Instant::now() + Duration::from_secs(5);
        assert_eq!(
            read_line(&mut big, &mut Vec::new(), far),
            Err(LineEnd::TooLong)
        );
    }

    #[test]
    fn slots_are_bounded_and_returned() {
        let live = Arc::new(AtomicUsize::new(0));
        let held: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map(|_| Slot::take(&live).unwrap())
            .collect();
        assert!(Slot::take(&live).is_none());
        drop(held);
        assert_eq!(live.load(Ordering::Acquire), 0);
        assert!(Slot::take(&live).is_some());
    }
}
