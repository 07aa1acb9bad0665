//! The control socket: a unix stream socket (mode 0600), one JSON request per line.
//! Each connection gets a thread; requests are applied one at a time under the state lock.
//! A `trace` request turns its connection into a stream of trace records (without holding the
//! lock while it waits for them) until the session ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};

use super::daemon::Daemon;
use vswitch_api::{ApiError, ErrorKind, Reply, Request};

/// Largest request line accepted (a port add is well under 4 KiB).
const MAX_REQUEST: u64 = 1 << 20;

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
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let state = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("vswitch-ctl-conn".into())
                    .spawn(move || handle_conn(stream, &state));
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

fn handle_conn(stream: UnixStream, state: &Mutex<Daemon>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = match stream.try_clone() {
        Ok(s) => BufReader::new(s.take(MAX_REQUEST)),
        Err(_) => return,
    };
    let mut writer = stream;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        reader.get_mut().set_limit(MAX_REQUEST);
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Trace(req)) => {
                stream_trace(&writer, state, &req);
                return;
            }
            Ok(req) => {
                tracing::debug!(?req, "request");
                let mut d = match state.lock() {
                    Ok(d) => d,
                    Err(p) => p.into_inner(),
                };
                d.handle(req)
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
