//! The metrics endpoint: a tiny HTTP/1.1 server on its own thread that answers `GET /metrics`
//! with [`super::metrics::render`] of a fresh snapshot, and nothing else. At most
//! [`MAX_CONNECTIONS`] are served at once (more get `503` straight away); each has a short read
//! timeout, so slow clients cannot pile up threads. Std's `TcpListener` is enough for a scrape
//! every few seconds; an async HTTP stack would be most of the daemon's code for this one job.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vswitch_api::StatsReply as Stats;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Largest request head read.
const MAX_HEAD: usize = 8192;
const TIMEOUT: Duration = Duration::from_secs(5);

/// A running endpoint; dropping it stops the server.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `addr` and serves on a thread named `vswitch-metrics`. `snapshot` is called once
    /// per scrape.
    pub fn start(
        addr: SocketAddr,
        snapshot: impl Fn() -> Stats + Send + Sync + 'static,
    ) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let snapshot: Arc<dyn Fn() -> Stats + Send + Sync> = Arc::new(snapshot);
        let thread = {
            let (stop, active) = (stop.clone(), active.clone());
            std::thread::Builder::new()
                .name("vswitch-metrics".into())
                .spawn(move || serve(listener, &stop, &active, snapshot))?
        };
        Ok(MetricsServer {
            addr,
            stop,
            active,
            thread: Some(thread),
        })
    }

    /// Connections being served now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept call.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(
    listener: TcpListener,
    stop: &AtomicBool,
    active: &Arc<AtomicUsize>,
    snapshot: Arc<dyn Fn() -> Stats + Send + Sync>,
) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut stream) = conn else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let _ = stream.set_write_timeout(Some(TIMEOUT));
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::AcqRel);
            let _ = respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                b"busy\n",
            );
            continue;
        }
        let (active2, snapshot) = (active.clone(), snapshot.clone());
        let spawned = std::thread::Builder::new()
            .name("vswitch-metrics-conn".into())
            .spawn(move || {
                let _ = handle(stream, &*snapshot);
                active2.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("metrics connection thread: {e}");
        }
    }
}

fn respond(s: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    s.flush()?;
    // Closing with unread request bytes would reset the connection and could lose the reply:
    // end our side, then discard what the client still sends (bounded).
    s.shutdown(std::net::Shutdown::Write)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sink = [0u8; 4096];
    for _ in 0..64 {
        match s.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    Ok(())
}

fn handle(mut s: TcpStream, snapshot: &(dyn Fn() -> Stats + Send + Sync)) -> io::Result<()> {
    s.set_read_timeout(Some(TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut s,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = super::metrics::render(&snapshot());
            let body = if method == "HEAD" { "" } else { body.as_str() };
            respond(
                &mut s,
                "200 OK",
                super::metrics::CONTENT_TYPE,
                body.as_bytes(),
            )
        }
        ("GET", "/") => respond(
            &mut s,
            "200 OK",
            "text/plain; charset=utf-8",
            b"vswitchd metrics: GET /metrics\n",
        ),
        ("GET" | "HEAD", _) => respond(&mut s, "404 Not Found", "text/plain", b"not found\n"),
        _ => respond(
            &mut s,
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_fresh_per_scrape_and_nothing_else() {
        let scrapes = Arc::new(AtomicU64::new(0));
        let n = scrapes.clone();
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), move || {
            let mut s = crate::observe::metrics::tests::sample();
            s.ports[0].rx_packets = n.fetch_add(1, Ordering::Relaxed) + 100;
            s
        })
        .unwrap();
        let a = server.local_addr();
        let r = get(a, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains(
            r#"vswitch_port_rx_packets_total{port="ns1:eth1",network="blue \"x\""} 100"#
        ));
        let r = get(a, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(r.contains("} 101\n"), "a new snapshot per scrape");
        assert!(get(a, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(a, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let big = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(get(a, &big).starts_with("HTTP/1.1 431"));
        // Slow clients that send nothing hold at most MAX_CONNECTIONS; the next is told 503.
        let settle = |n: usize| {
            let t0 = std::time::Instant::now();
            while server.active() != n {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{} != {n}",
                    server.active()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        settle(0);
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| TcpStream::connect(a).unwrap())
            .collect();
        settle(MAX_CONNECTIONS);
        let r = get(a, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        drop(idle);
        let t0 = std::time::Instant::now();
        loop {
            if get(a, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "slots never freed");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(server);
        assert!(TcpStream::connect(a).is_err(), "stopped");
    }
}
