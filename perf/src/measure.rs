//! The three measurements, done the same way as the peer measurements of this machine
//! (shared/bench/peers.sh): iperf3 TCP 1 stream, iperf3 UDP with 18 B payload (a 64 B
//! Ethernet frame) counted at the receiving pod's interface, and `ping -c 200 -i 0.01`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use crate::cpu::{self, CpuUse};
use crate::procs::{check_interrupt, in_netns, run_bounded, sleep_checked, tail};
use crate::topology::{Topology, SERVER_IP};

const IPERF_PORT: &str = "5201";
/// UDP payload giving a 64-byte Ethernet frame (14 + 20 + 8 + 18 = 60, + 4 FCS).
pub const UDP_PAYLOAD: u32 = 18;

#[derive(Debug, Clone, Serialize)]
pub struct TcpResult {
    /// Receiver-side throughput.
    pub gbps: f64,
    pub retransmits: Option<u64>,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct UdpResult {
    pub payload_bytes: u32,
    /// Packets the iperf3 client sent.
    pub sent_packets: u64,
    pub sent_pps: f64,
    /// rx_packets delta of the server pod's interface (what the switch delivered).
    pub nic_rx_packets: u64,
    /// nic_rx_packets / duration.
    pub nic_rx_pps: f64,
    /// Packets the iperf3 server process got (sent - lost) per second.
    pub app_rx_pps: Option<f64>,
    pub app_lost_percent: Option<f64>,
    /// Where the packets went: tx_dropped delta of the client pod's interface (a tap whose
    /// reader falls behind drops here), and the vswitchd port counters (rx of the client's
    /// port, tx of the server's port) over the test.
    pub client_tx_dropped: Option<u64>,
    pub switch_rx_from_client: Option<u64>,
    pub switch_tx_to_server: Option<u64>,
    pub cpu: CpuUse,
}

#[derive(Debug, Clone, Serialize)]
pub struct PingResult {
    pub transmitted: u64,
    pub received: u64,
    pub loss_percent: f64,
    pub min_us: f64,
    pub avg_us: f64,
    pub max_us: f64,
    pub mdev_us: f64,
}

/// A running `iperf3 -s -1` in the server pod.
struct Server {
    pid: u32,
}

fn start_server(topo: &mut Topology, tag: &str) -> Result<Server> {
    let log = std::fs::File::create(topo.lab.dir.join(format!("{tag}-server.log")))
        .context("create iperf3 server log")?;
    let pid = topo.lab.spawn(
        in_netns(&topo.server_ns, &["iperf3", "-s", "-1", "-p", IPERF_PORT])
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log)),
    )?;
    // Wait until it listens (bounded).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        check_interrupt()?;
        let f = run_bounded(
            &mut in_netns(
                &topo.server_ns,
                &["ss", "-Hlnt", "sport", "=", &format!(":{IPERF_PORT}")],
            ),
            Duration::from_secs(5),
            &topo.lab.dir,
            "ss",
        )?;
        if f.status.success() && !f.stdout.trim().is_empty() {
            return Ok(Server { pid });
        }
        if Instant::now() > deadline {
            topo.lab.stop(pid);
            bail!(
                "iperf3 server in {} did not listen within 5 s",
                topo.server_ns
            );
        }
        sleep_checked(Duration::from_millis(50))?;
    }
}

fn stop_server(topo: &mut Topology, s: Server) {
    // `-1` makes it exit after the test; give it a moment, then the lab stops it anyway.
    let deadline = Instant::now() + Duration::from_secs(2);
    while crate::procs::alive(s.pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    topo.lab.stop(s.pid);
}

/// Runs the iperf3 client in the client pod and returns its parsed JSON.
fn iperf_client(topo: &Topology, secs: u64, extra: &[&str], tag: &str) -> Result<Value> {
    let t = secs.to_string();
    let mut args = vec![
        "iperf3",
        "-c",
        SERVER_IP,
        "-p",
        IPERF_PORT,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    args.extend_from_slice(extra);
    let f = run_bounded(
        &mut in_netns(&topo.client_ns, &args),
        Duration::from_secs(secs + 20),
        &topo.lab.dir,
        tag,
    )?;
    let v: Value = serde_json::from_str(&f.stdout).with_context(|| {
        format!(
            "iperf3 client ({}) printed no JSON: {}",
            f.describe(),
            tail(&f.stdout, 400)
        )
    })?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3 {tag}: {e}");
    }
    if !f.status.success() {
        bail!("iperf3 {tag} failed: {}", f.describe());
    }
    Ok(v)
}

/// TCP, one stream, `secs` seconds.
pub fn tcp(topo: &mut Topology, secs: u64) -> Result<TcpResult> {
    let server = start_server(topo, "tcp")?;
    let s0 = cpu::snap(topo.switch_pid());
    let res = iperf_client(topo, secs, &[], "tcp");
    let s1 = cpu::snap(topo.switch_pid());
    stop_server(topo, server);
    let v = res?;
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 JSON without end.sum_received.bits_per_second")?;
    Ok(TcpResult {
        gbps: bps / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
        cpu: cpu::delta(&s0, &s1),
    })
}

/// A counter of `/sys/class/net/IF/statistics/` read inside `ns`.
fn if_counter(topo: &Topology, ns: &str, ifname: &str, counter: &str) -> Result<u64> {
    let path = format!("/sys/class/net/{ifname}/statistics/{counter}");
    let f = run_bounded(
        &mut in_netns(ns, &["cat", &path]),
        Duration::from_secs(10),
        &topo.lab.dir,
        "counter",
    )?;
    f.stdout
        .trim()
        .parse()
        .with_context(|| format!("read {path} in {ns}: {}", f.describe()))
}

fn rx_packets(topo: &Topology) -> Result<u64> {
    if_counter(topo, &topo.server_ns, &topo.server_if, "rx_packets")
}

/// (rx_packets of the client's port, tx_packets of the server's port) in vswitchd.
fn switch_port_counters(topo: &Topology) -> Option<(u64, u64)> {
    let stats = topo.daemon.as_ref()?.ctl_json(&["stats"]).ok()?;
    let ports = stats["ports"].as_array()?;
    let find = |ifname: &str, key: &str| {
        ports
            .iter()
            .find(|p| {
                p["id"]
                    .as_str()
                    .is_some_and(|id| id.ends_with(&format!(":{ifname}")))
            })
            .and_then(|p| p[key].as_u64())
    };
    Some((
        find(&topo.client_if, "rx_packets")?,
        find(&topo.server_if, "tx_packets")?,
    ))
}

fn delta(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    Some(b?.saturating_sub(a?))
}

/// UDP with 18 B payload (64 B frames), `iperf3 -u -b 0`, `secs` seconds.
pub fn udp(topo: &mut Topology, secs: u64) -> Result<UdpResult> {
    let server = start_server(topo, "udp")?;
    let len = UDP_PAYLOAD.to_string();
    let drop0 = if_counter(topo, &topo.client_ns, &topo.client_if, "tx_dropped").ok();
    let sw0 = switch_port_counters(topo);
    let n0 = rx_packets(topo);
    let s0 = cpu::snap(topo.switch_pid());
    let res = iperf_client(topo, secs, &["-u", "-l", &len, "-b", "0"], "udp");
    let s1 = cpu::snap(topo.switch_pid());
    let n1 = rx_packets(topo);
    let sw1 = switch_port_counters(topo);
    let drop1 = if_counter(topo, &topo.client_ns, &topo.client_if, "tx_dropped").ok();
    stop_server(topo, server);
    let v = res?;
    let (n0, n1) = (n0?, n1?);
    let end = &v["end"];
    let sent = &end["sum_sent"];
    let sent_packets = sent["packets"]
        .as_u64()
        .or_else(|| end["sum"]["packets"].as_u64())
        .context("iperf3 JSON without end.sum_sent.packets")?;
    let sent_secs = sent["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .unwrap_or(secs as f64);
    let recv = &end["sum_received"];
    let app_rx_pps = match (
        recv["packets"].as_u64(),
        recv["lost_packets"].as_u64(),
        recv["seconds"].as_f64(),
    ) {
        (Some(p), Some(l), Some(s)) if s > 0.0 => Some(p.saturating_sub(l) as f64 / s),
        _ => None,
    };
    let nic = n1.saturating_sub(n0);
    Ok(UdpResult {
        payload_bytes: UDP_PAYLOAD,
        sent_packets,
        sent_pps: sent_packets as f64 / sent_secs,
        nic_rx_packets: nic,
        nic_rx_pps: nic as f64 / secs as f64,
        app_rx_pps,
        app_lost_percent: recv["lost_percent"].as_f64(),
        client_tx_dropped: delta(drop0, drop1),
        switch_rx_from_client: delta(sw0.map(|x| x.0), sw1.map(|x| x.0)),
        switch_tx_to_server: delta(sw0.map(|x| x.1), sw1.map(|x| x.1)),
        cpu: cpu::delta(&s0, &s1),
    })
}

/// `ping -c COUNT -i 0.01` on the idle path.
pub fn ping(topo: &Topology, count: u32) -> Result<PingResult> {
    let c = count.to_string();
    let f = run_bounded(
        &mut in_netns(
            &topo.client_ns,
            &[
                "ping", "-n", "-q", "-c", &c, "-i", "0.01", "-W", "2", SERVER_IP,
            ],
        ),
        Duration::from_secs(30 + u64::from(count) / 20),
        &topo.lab.dir,
        "ping",
    )?;
    parse_ping(&f.stdout)
        .with_context(|| format!("ping: {} {}", f.describe(), tail(&f.stdout, 300)))
}

fn parse_ping(out: &str) -> Result<PingResult> {
    let mut tx_rx = None;
    let mut loss = None;
    let mut rtt = None;
    for line in out.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u64> = line
                .split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse().ok())
                .collect();
            if nums.len() >= 2 {
                tx_rx = Some((nums[0], nums[1]));
            }
            loss = line
                .split(',')
                .find(|p| p.contains("packet loss"))
                .and_then(|p| p.trim().split('%').next()?.parse::<f64>().ok());
        } else if let Some(rest) = line
            .strip_prefix("rtt ")
            .or_else(|| line.strip_prefix("round-trip "))
        {
            let vals = rest.split('=').nth(1).unwrap_or("").trim();
            let v: Vec<f64> = vals
                .split_whitespace()
                .next()
                .unwrap_or("")
                .split('/')
                .filter_map(|x| x.parse().ok())
                .collect();
            if v.len() == 4 {
                rtt = Some((v[0], v[1], v[2], v[3]));
            }
        }
    }
    let (tx, rx) = tx_rx.context("no 'packets transmitted' line")?;
    let (min, avg, max, mdev) = rtt.context("no rtt line (all pings lost?)")?;
    Ok(PingResult {
        transmitted: tx,
        received: rx,
        loss_percent: loss.unwrap_or(0.0),
        min_us: min * 1000.0,
        avg_us: avg * 1000.0,
        max_us: max * 1000.0,
        mdev_us: mdev * 1000.0,
    })
}

/// Non-zero drop counters and per-port counters of vswitchd after the tests.
pub fn vswitch_stats(topo: &Topology) -> Option<Value> {
    topo.daemon.as_ref()?.ctl_json(&["stats"]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_ping_summary() {
        let out = "PING 10.251.0.3 (10.251.0.3) 56(84) bytes of data.\n\n--- 10.251.0.3 ping statistics ---\n200 packets transmitted, 199 received, 0.5% packet loss, time 2398ms\nrtt min/avg/max/mdev = 0.041/0.072/0.205/0.019 ms\n";
        let p = parse_ping(out).unwrap();
        assert_eq!((p.transmitted, p.received), (200, 199));
        assert!((p.loss_percent - 0.5).abs() < 1e-9);
        assert!((p.avg_us - 72.0).abs() < 1e-6);
        assert!((p.max_us - 205.0).abs() < 1e-6);
    }

    #[test]
    fn all_lost_is_an_error() {
        let out = "--- x ping statistics ---\n200 packets transmitted, 0 received, 100% packet loss, time 4000ms\n";
        assert!(parse_ping(out).is_err());
    }
}
