//! `vswitchctl trace` and `vswitchctl capture`: arguments, the streaming exchange with the
//! daemon, and the output (stage lists for people, JSON lines for scripts, pcapng files).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use super::filter::Test;
use super::pcapng::{read_frames, CaptureWriter};
use vswitch_api::trace::{
    decode_hex, encode_hex, Inject as InjectRequest, InjectReply, Trace as TraceRequest, TraceEnd,
    TraceEvent, TraceKind, TraceLine, TraceStarted,
};
use vswitch_api::Request;

/// Packets a trace shows unless `--count` or `--follow` says otherwise.
pub const DEFAULT_COUNT: u64 = 10;
/// Seconds a trace runs unless `--timeout` or `--follow` says otherwise.
pub const DEFAULT_TIMEOUT_SECS: f64 = 30.0;

/// Trace packets through the pipeline: live, or synthetic with `--inject*`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Only packets received on or sent to this port (for `--inject-hex`/`--inject-pcap`: the
    /// port they enter on).
    #[arg(long)]
    pub port: Option<String>,
    /// Only packets of this network.
    #[arg(long)]
    pub network: Option<String>,
    /// Match expression, e.g. 'icmp and ip_dst=10.0.0.0/24' (syntax: README, "Trace").
    #[arg(long = "match", value_name = "EXPR")]
    pub filter: Option<String>,
    /// Stop after K packets (default 10 without --follow).
    #[arg(long, short = 'c', value_name = "K")]
    pub count: Option<u64>,
    /// Trace until Ctrl-C (or --count / --timeout).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Stop after S seconds (default 30 without --follow; at most an hour).
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
    /// Run a described packet through the live tables without sending it, e.g.
    /// 'in_port=pod-a,ip_dst=10.0.0.6,icmp' (nothing is learned or counted).
    #[arg(long, value_name = "DESC", conflicts_with_all = ["inject_hex", "inject_pcap"])]
    pub inject: Option<String>,
    /// Like --inject, for a frame given in hex (needs --port).
    #[arg(
        long,
        value_name = "HEX",
        requires = "port",
        conflicts_with = "inject_pcap"
    )]
    pub inject_hex: Option<String>,
    /// Like --inject, for every frame of a pcap/pcapng file (needs --port).
    #[arg(long, value_name = "FILE", requires = "port")]
    pub inject_pcap: Option<PathBuf>,
}

/// Write packets to a pcapng file, with each one's verdict as its comment.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(false).args(["port", "network", "drops"])))]
pub struct CaptureArgs {
    /// Packets received on or sent to this port.
    #[arg(long)]
    pub port: Option<String>,
    /// Packets of this network.
    #[arg(long)]
    pub network: Option<String>,
    /// Packets the switch dropped (anywhere, or narrowed by --match).
    #[arg(long)]
    pub drops: bool,
    /// Only packets matching this expression too.
    #[arg(long = "match", value_name = "EXPR")]
    pub filter: Option<String>,
    /// pcapng file to write, `-` for stdout (`… -w - | tshark -r -`).
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    pub write: PathBuf,
    /// Stop after K packets (default: until Ctrl-C or --timeout).
    #[arg(long, short = 'c', value_name = "K")]
    pub count: Option<u64>,
    /// Stop after S seconds (at most an hour).
    #[arg(long, value_name = "S")]
    pub timeout: Option<f64>,
    /// Bytes of each packet kept.
    #[arg(long, default_value_t = 65535)]
    pub snaplen: u32,
}

/// The match expression the daemon gets: `port=P and network=N and (EXPR)`.
pub fn compose_filter(port: Option<&str>, network: Option<&str>, expr: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(p) = port {
        parts.push(Test::Port(p.to_string()).to_string());
    }
    if let Some(n) = network {
        parts.push(Test::Network(n.to_string()).to_string());
    }
    if let Some(e) = expr.filter(|e| !e.trim().is_empty()) {
        parts.push(if parts.is_empty() {
            e.to_string()
        } else {
            format!("({e})")
        });
    }
    parts.join(" and ")
}

fn timeout_ms(secs: Option<f64>) -> anyhow::Result<Option<u64>> {
    match secs {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 => Ok(Some((s * 1000.0).ceil() as u64)),
        Some(s) => bail!("--timeout {s}: must be a positive number of seconds"),
    }
}

/// A request line as the control socket takes it.
fn request_line(req: impl Into<Request>) -> anyhow::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(&req.into())?;
    line.push(b'\n');
    Ok(line)
}

/// The daemon's first reply: `{"ok": …}` or `{"error": {"kind", "message"}}`.
fn first_reply<T: serde::de::DeserializeOwned>(line: &str) -> anyhow::Result<T> {
    let v: serde_json::Value = serde_json::from_str(line).context("bad reply from vswitchd")?;
    if let Some(e) = v.get("error") {
        let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("error");
        bail!("{msg}");
    }
    let ok = v
        .get("ok")
        .cloned()
        .context("bad reply from vswitchd: neither ok nor error")?;
    serde_json::from_value(ok).context("bad reply from vswitchd")
}

fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot connect to vswitchd at {} (is vswitchd running? set --socket)",
            socket.display()
        )
    })
}

/// Ctrl-C ends a session cleanly (the summary is still printed, the file stays valid).
fn interrupted() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

/// What a session hands its caller.
enum Step<'a> {
    Started(&'a TraceStarted),
    Event(TraceEvent),
}

/// Runs a session: sends the request, then hands the start and every event to `on` until the
/// daemon ends it or Ctrl-C. Returns how it ended (`None` when interrupted here).
fn session(
    socket: &Path,
    req: &TraceRequest,
    mut on: impl FnMut(Step<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Option<TraceEnd>> {
    let stop = interrupted();
    let s = connect(socket)?;
    (&s).write_all(&request_line(req.clone())?)?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut r = BufReader::new(&s);
    let mut line = String::new();
    let mut started = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        match r.read_line(&mut line) {
            Ok(0) => bail!("vswitchd closed the connection"),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("control socket"),
        }
        if !line.ends_with('\n') {
            continue;
        }
        if !started {
            on(Step::Started(&first_reply::<TraceStarted>(&line)?))?;
            started = true;
        } else {
            match serde_json::from_str::<TraceLine>(&line)
                .context("bad trace line from vswitchd")?
            {
                TraceLine::Event(e) => on(Step::Event(e))?,
                TraceLine::End(end) => return Ok(Some(end)),
            }
        }
        line.clear();
    }
}

fn summary(what: &str, n: u64, end: Option<&TraceEnd>) -> String {
    match end {
        Some(e) => {
            let mut s = format!("{n} {what} ({} matched", e.matched);
            if e.lost > 0 {
                s += &format!(", {} lost: this reader was too slow", e.lost);
            }
            s + &format!("; ended by {})", e.reason)
        }
        None => format!("{n} {what} (interrupted)"),
    }
}

/// `vswitchctl trace`.
pub fn trace(socket: &Path, json: bool, a: &TraceArgs) -> anyhow::Result<()> {
    if a.inject.is_some() || a.inject_hex.is_some() || a.inject_pcap.is_some() {
        return inject(socket, json, a);
    }
    let req = TraceRequest {
        filter: compose_filter(a.port.as_deref(), a.network.as_deref(), a.filter.as_deref()),
        kind: TraceKind::Trace,
        snaplen: 0,
        count: a.count.or((!a.follow).then_some(DEFAULT_COUNT)),
        timeout_ms: timeout_ms(a.timeout.or((!a.follow).then_some(DEFAULT_TIMEOUT_SECS)))?,
    };
    let mut n = 0u64;
    let out = std::io::stdout();
    let end = session(socket, &req, |step| {
        match step {
            Step::Started(s) if !json => {
                let what = if s.filter == "any" {
                    "every packet"
                } else {
                    &s.filter
                };
                eprintln!("tracing {what} (Ctrl-C to stop)");
            }
            Step::Started(_) => {}
            Step::Event(e) => {
                n += 1;
                let mut o = out.lock();
                if json {
                    serde_json::to_writer(&mut o, &e)?;
                    writeln!(o)?;
                } else {
                    writeln!(o, "{e}")?;
                }
                o.flush()?;
            }
        }
        Ok(())
    })?;
    eprintln!("{}", summary("packets traced", n, end.as_ref()));
    Ok(())
}

fn inject(socket: &Path, json: bool, a: &TraceArgs) -> anyhow::Result<()> {
    let mut req = InjectRequest {
        description: a.inject.clone(),
        frames: Vec::new(),
        port: a.port.clone(),
    };
    if let Some(h) = &a.inject_hex {
        let f = decode_hex(h).context("--inject-hex: not hex bytes")?;
        req.frames.push(encode_hex(&f));
    }
    if let Some(p) = &a.inject_pcap {
        let file = std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?;
        let frames = read_frames(file).with_context(|| format!("read {}", p.display()))?;
        if frames.is_empty() {
            bail!("{}: no packets", p.display());
        }
        req.frames.extend(frames.iter().map(|f| encode_hex(f)));
    }
    let s = connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    (&s).write_all(&request_line(req)?)?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .context("control socket")?;
    let reply: InjectReply = first_reply(&line)?;
    for e in &reply.events {
        if json {
            println!("{}", serde_json::to_string(e)?);
        } else {
            println!("{e}");
        }
    }
    Ok(())
}

/// `vswitchctl capture`.
pub fn capture(socket: &Path, a: &CaptureArgs) -> anyhow::Result<()> {
    let req = TraceRequest {
        filter: compose_filter(a.port.as_deref(), a.network.as_deref(), a.filter.as_deref()),
        kind: if a.drops {
            TraceKind::Drops
        } else {
            TraceKind::Capture
        },
        snaplen: a.snaplen,
        count: a.count,
        timeout_ms: timeout_ms(a.timeout)?,
    };
    let to_stdout = a.write.as_os_str() == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::File::create(&a.write)
                .with_context(|| format!("create {}", a.write.display()))?,
        )
    };
    let mut out = Some(out);
    let mut writer: Option<CaptureWriter<Box<dyn Write>>> = None;
    let mut n = 0u64;
    let end = session(socket, &req, |step| {
        match step {
            Step::Started(s) => {
                let names: Vec<&str> = s.interfaces.iter().map(String::as_str).collect();
                let o = out.take().context("started twice")?;
                writer = Some(CaptureWriter::new(o, a.snaplen, &names)?);
                if !to_stdout {
                    eprintln!(
                        "capturing {} to {} (Ctrl-C to stop)",
                        s.filter,
                        a.write.display()
                    );
                }
            }
            Step::Event(e) => {
                let w = writer.as_mut().context("no capture started")?;
                let frame = e.frame_bytes().unwrap_or_default();
                w.write(e.rx.interface(), e.time_ns, &frame, e.orig_len, &e.verdict)?;
                n += 1;
            }
        }
        Ok(())
    })?;
    eprintln!("{}", summary("packets captured", n, end.as_ref()));
    Ok(())
}

fn table(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut line = |cells: &[&str]| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = w[i]))
            .collect();
        out.push_str(s.join("  ").trim_end());
        out.push('\n');
    };
    line(headers);
    for r in rows {
        line(&r.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// `vswitchctl stats` for people: the same numbers as the metrics endpoint.
pub fn stats_tables(s: &vswitch_api::StatsReply) -> String {
    let mut o = String::new();
    let rows: Vec<Vec<String>> = s
        .ports
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.network.clone(),
                p.rx_packets.to_string(),
                p.rx_bytes.to_string(),
                p.tx_packets.to_string(),
                p.tx_bytes.to_string(),
                p.rx_dropped.to_string(),
                p.tx_errors.to_string(),
            ]
        })
        .collect();
    let h = [
        "PORT",
        "NETWORK",
        "RX PKTS",
        "RX BYTES",
        "TX PKTS",
        "TX BYTES",
        "RX DROPPED",
        "TX ERRORS",
    ];
    table(&mut o, &h, &rows);
    o.push('\n');
    let rows: Vec<Vec<String>> = s
        .drops
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    table(&mut o, &["DROP REASON", "PACKETS"], &rows);
    if !s.absorbed.is_empty() {
        o.push('\n');
        let rows: Vec<Vec<String>> = s
            .absorbed
            .iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect();
        table(&mut o, &["ABSORBED BY THE SWITCH", "PACKETS"], &rows);
    }
    if !s.networks.is_empty() {
        o.push('\n');
        let rows: Vec<Vec<String>> = s
            .networks
            .iter()
            .map(|n| {
                vec![
                    n.name.clone(),
                    n.kind.clone(),
                    n.ports.to_string(),
                    format!("{}/{}/{}", n.fdb.local, n.fdb.learned, n.fdb.remote),
                    n.remote_endpoints.to_string(),
                    format!("{}/{}", n.ipam_used, n.ipam_size),
                ]
            })
            .collect();
        let h = [
            "NETWORK",
            "KIND",
            "PORTS",
            "FDB LOCAL/LEARNED/REMOTE",
            "REMOTE ENDPOINTS",
            "IPAM USED/SIZE",
        ];
        table(&mut o, &h, &rows);
    }
    if !s.peers.is_empty() {
        o.push('\n');
        let rows: Vec<Vec<String>> = s
            .peers
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    p.underlay_ip.map_or("-".into(), |i| i.to_string()),
                    p.source.clone(),
                    if p.up { "up" } else { "down" }.into(),
                    p.endpoints.to_string(),
                ]
            })
            .collect();
        table(
            &mut o,
            &["PEER", "UNDERLAY IP", "SOURCE", "STATE", "ENDPOINTS"],
            &rows,
        );
    }
    if !s.workers.is_empty() {
        o.push('\n');
        let rows: Vec<Vec<String>> = s
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.to_string(),
                    w.ports.to_string(),
                    w.batches.to_string(),
                    w.packets.to_string(),
                    format!("{:.1}", w.mean_batch()),
                    format!("{:.1}%", 100.0 * w.busy_ratio(s.uptime_secs)),
                ]
            })
            .collect();
        table(
            &mut o,
            &[
                "WORKER",
                "PORTS",
                "BATCHES",
                "PACKETS",
                "MEAN BATCH",
                "BUSY",
            ],
            &rows,
        );
    }
    if s.trace.sessions > 0 || s.trace.records_lost > 0 {
        o.push_str(&format!(
            "\ntrace sessions: {}, records lost to slow readers: {}\n",
            s.trace.sessions, s.trace.records_lost
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_show_every_section_with_rows() {
        let t = stats_tables(&crate::observe::metrics::tests::sample());
        for needle in [
            "ns1:eth1", "hairpin", "2/1/3", "1/253", "node-b", "up", "4.8", "0.0%",
        ] {
            assert!(t.contains(needle), "{needle} in\n{t}");
        }
        let t = stats_tables(&Default::default());
        assert!(!t.contains("WORKER") && t.contains("DROP REASON"));
    }

    #[test]
    fn filters_compose_and_quote() {
        assert_eq!(compose_filter(None, None, None), "");
        assert_eq!(
            compose_filter(Some("pod a"), Some("blue"), Some("icmp or arp")),
            "port=\"pod a\" and network=blue and (icmp or arp)"
        );
        assert_eq!(compose_filter(None, None, Some("tcp")), "tcp");
        assert!(
            super::super::filter::parse(&compose_filter(Some("x"), None, Some("a or"))).is_err()
        );
    }

    #[test]
    fn requests_carry_their_op() {
        let l = request_line(TraceRequest::default()).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["op"], "trace");
        assert_eq!(v["kind"], "trace");
        assert!(first_reply::<TraceStarted>(
            r#"{"error":{"kind":"bad_request","message":"no port"}}"#
        )
        .unwrap_err()
        .to_string()
        .contains("no port"));
        assert_eq!(timeout_ms(Some(0.5)).unwrap(), Some(500));
        assert!(timeout_ms(Some(-1.0)).is_err());
    }
}
