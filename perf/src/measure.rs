//! The traffic measurements between pod A (client) and pod B (server) of a built system:
//! iperf3 TCP with 1 and 4 streams (receiver's count), 64-byte UDP from `vswitch-perf-udp`
//! counted at the receiving pod's interface, and ping RTT percentiles from per-reply times.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::cpu::{self, CpuUse};
use crate::procs::{check_interrupt, in_netns, run_bounded, sleep_checked, tail};
use crate::systems::Pair;

const IPERF_PORT: &str = "5201";
/// UDP payload giving a 64-byte Ethernet frame (14 + 20 + 8 + 18 = 60, + 4 FCS).
pub const UDP_PAYLOAD: u32 = 18;

#[derive(Debug, Clone, Serialize)]
pub struct TcpResult {
    pub streams: u32,
    /// Receiver-side throughput.
    pub gbps: f64,
    pub bytes: u64,
    pub retransmits: Option<u64>,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct UdpResult {
    pub payload_bytes: u32,
    pub sent_packets: u64,
    pub sent_pps: f64,
    /// rx_packets delta of the server pod's interface (what the switch delivered).
    pub nic_rx_packets: u64,
    pub nic_rx_pps: f64,
    /// tx_dropped delta of the client pod's interface (a full tap queue drops here).
    pub client_tx_dropped: Option<u64>,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct PingResult {
    pub transmitted: u64,
    pub received: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub avg_us: f64,
    pub max_us: f64,
}

/// A running `iperf3 -s -1` in the server pod.
struct Server {
    pid: u32,
}

fn start_server(p: &mut Pair, tag: &str) -> Result<Server> {
    let log = std::fs::File::create(p.lab.dir.join(format!("{tag}-server.log")))
        .context("create iperf3 server log")?;
    let pid = p.lab.spawn(
        in_netns(&p.server_ns, &["iperf3", "-s", "-1", "-p", IPERF_PORT])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log)),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        check_interrupt()?;
        let f = run_bounded(
            &mut in_netns(
                &p.server_ns,
                &["ss", "-Hlnt", "sport", "=", &format!(":{IPERF_PORT}")],
            ),
            Duration::from_secs(5),
            &p.lab.dir,
            "ss",
        )?;
        if f.status.success() && !f.stdout.trim().is_empty() {
            return Ok(Server { pid });
        }
        if Instant::now() > deadline {
            p.lab.stop(pid);
            bail!("iperf3 server in {} did not listen within 5 s", p.server_ns);
        }
        sleep_checked(Duration::from_millis(50))?;
    }
}

fn stop_server(p: &mut Pair, s: Server) {
    // `-1` makes it exit after the test; give it a moment, then stop it by PID.
    let deadline = Instant::now() + Duration::from_secs(2);
    while crate::procs::alive(s.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    p.lab.stop(s.pid);
}

/// iperf3 TCP, `streams` parallel streams, `secs` seconds.
pub fn tcp(p: &mut Pair, secs: f64, streams: u32) -> Result<TcpResult> {
    let server = start_server(p, "tcp")?;
    let t = format!("{secs}");
    let n = streams.to_string();
    let args = [
        "iperf3",
        "-c",
        &p.server_ip,
        "-p",
        IPERF_PORT,
        "-t",
        &t,
        "-P",
        &n,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    let s0 = cpu::snap(&p.switch_pids);
    let res = run_bounded(
        &mut in_netns(&p.client_ns, &args),
        Duration::from_secs_f64(secs + 20.0),
        &p.lab.dir,
        "tcp",
    );
    let s1 = cpu::snap(&p.switch_pids);
    stop_server(p, server);
    let f = res?;
    let v: Value = serde_json::from_str(&f.stdout).with_context(|| {
        format!(
            "iperf3 client ({}) printed no JSON: {}",
            f.describe(),
            tail(&f.stdout, 400)
        )
    })?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    if !f.status.success() {
        bail!("iperf3 failed: {}", f.describe());
    }
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(TcpResult {
        streams,
        gbps: bps / 1e9,
        bytes: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        cpu: cpu::delta(&s0, &s1),
    })
}

/// A counter of `/sys/class/net/IF/statistics/` read inside `ns`.
pub fn if_counter(p: &Pair, ns: &str, ifname: &str, counter: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{ifname}/statistics/{counter}");
    let f = run_bounded(
        &mut in_netns(ns, &["cat", &path]),
        Duration::from_secs(10),
        &p.lab.dir,
        "counter",
    )?;
    f.stdout
        .trim()
        .parse()
        .with_context(|| format!("read {path} in {ns}: {}", f.describe()))
}

fn delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

/// 64-byte UDP from `vswitch-perf-udp` in pod A for `secs` seconds, counted at pod B's NIC.
pub fn udp(p: &mut Pair, secs: f64) -> Result<UdpResult> {
    let sender = vswitch_lab::bin_dir().join("vswitch-perf-udp");
    let sender = sender.to_string_lossy().to_string();
    let drop0 = if_counter(p, &p.client_ns, &p.client_if, "tx_dropped").ok();
    let n0 = if_counter(p, &p.server_ns, &p.server_if, "rx_packets")?;
    let s0 = cpu::snap(&p.switch_pids);
    let (t, len) = (format!("{secs}"), UDP_PAYLOAD.to_string());
    let res = run_bounded(
        &mut in_netns(
            &p.client_ns,
            &[
                &sender,
                "--dst",
                &p.server_ip,
                "--port",
                "9",
                "--secs",
                &t,
                "--payload",
                &len,
            ],
        ),
        Duration::from_secs_f64(secs + 20.0),
        &p.lab.dir,
        "udp",
    );
    // Packets still queued in the switch arrive within a few ms; count them too.
    sleep_checked(Duration::from_millis(100))?;
    let s1 = cpu::snap(&p.switch_pids);
    let n1 = if_counter(p, &p.server_ns, &p.server_if, "rx_packets")?;
    let drop1 = if_counter(p, &p.client_ns, &p.client_if, "tx_dropped").ok();
    let f = res?;
    if !f.status.success() {
        bail!("vswitch-perf-udp failed: {}", f.describe());
    }
    let v: Value = serde_json::from_str(f.stdout.trim())
        .with_context(|| format!("vswitch-perf-udp printed no JSON: {}", tail(&f.stdout, 300)))?;
    let sent = v["sent"].as_u64().context("no 'sent' in sender output")?;
    let sent_secs = v["secs"].as_f64().filter(|s| *s > 0.0).unwrap_or(secs);
    let nic = n1.saturating_sub(n0);
    Ok(UdpResult {
        payload_bytes: UDP_PAYLOAD,
        sent_packets: sent,
        sent_pps: sent as f64 / sent_secs,
        nic_rx_packets: nic,
        nic_rx_pps: nic as f64 / sent_secs,
        client_tx_dropped: delta(drop0, drop1),
        cpu: cpu::delta(&s0, &s1),
    })
}

/// `ping -c COUNT -i 0.01` on the idle path; percentiles from the per-reply times.
pub fn ping(p: &Pair, count: u32) -> Result<PingResult> {
    let c = count.to_string();
    let f = run_bounded(
        &mut in_netns(
            &p.client_ns,
            &[
                "ping",
                "-n",
                "-c",
                &c,
                "-i",
                "0.01",
                "-W",
                "2",
                &p.server_ip,
            ],
        ),
        Duration::from_secs(30 + u64::from(count) / 20),
        &p.lab.dir,
        "ping",
    )?;
    parse_ping(&f.stdout)
        .with_context(|| format!("ping: {} {}", f.describe(), tail(&f.stdout, 300)))
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn parse_ping(out: &str) -> Result<PingResult> {
    let mut times = Vec::new();
    let mut tx = None;
    for line in out.lines() {
        if let Some(t) = line.split("time=").nth(1) {
            if let Some(ms) = t
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                times.push(ms * 1000.0);
            }
        } else if line.contains("packets transmitted") {
            tx = line.split_whitespace().next().and_then(|v| v.parse().ok());
        }
    }
    if times.is_empty() {
        bail!("no ping replies");
    }
    times.sort_by(f64::total_cmp);
    Ok(PingResult {
        transmitted: tx.unwrap_or(times.len() as u64),
        received: times.len() as u64,
        p50_us: percentile(&times, 0.5),
        p99_us: percentile(&times, 0.99),
        avg_us: times.iter().sum::<f64>() / times.len() as f64,
        max_us: times[times.len() - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ping_replies() {
        let out = "PING 10.251.0.3 (10.251.0.3) 56(84) bytes of data.\n\
                   64 bytes from 10.251.0.3: icmp_seq=1 ttl=64 time=0.041 ms\n\
                   64 bytes from 10.251.0.3: icmp_seq=2 ttl=64 time=0.050 ms\n\
                   64 bytes from 10.251.0.3: icmp_seq=3 ttl=64 time=1.20 ms\n\n\
                   --- 10.251.0.3 ping statistics ---\n\
                   4 packets transmitted, 3 received, 25% packet loss, time 30ms\n";
        let p = parse_ping(out).unwrap();
        assert_eq!((p.transmitted, p.received), (4, 3));
        assert!((p.p50_us - 50.0).abs() < 1e-6);
        assert!((p.p99_us - 1200.0).abs() < 1e-6);
    }

    #[test]
    fn all_lost_is_an_error() {
        let out = "--- x ping statistics ---\n200 packets transmitted, 0 received, 100% packet loss, time 4000ms\n";
        assert!(parse_ping(out).is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 0.9), 90.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
