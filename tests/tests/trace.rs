//! Issue 11 acceptance: packet trace, synthetic trace, pcapng capture and metrics on a two-node,
//! two-network lab.
//!
//! Nodes n1 and n2 share rack 10.1.7.0/24. Network `blue` is L2 over VXLAN (VNI 700,
//! 192.168.7.0/24), network `red` is L3 with IPIP (10.244.0.0/16, n1's block 10.244.1.0/26,
//! n2's 10.244.2.0/26). Pods: a1, a2 (blue) and r1 (red) on n1; b1 (blue) and r2 (red) on n2.
//!
//! For each case a live `vswitchctl trace --json` runs while the pod sends the packet, and the
//! trace must name the right stages and verdict: same-network unicast (a1 → a2), ARP for the
//! gateway answered by the switch, a cross-network attempt (a1 → red through blue's gateway:
//! `not_for_gateway`), a spoofed source (`spoofed_src_ip`), an L3 routed packet (r1 → r2: route,
//! IPIP to n2; on n2: from the underlay, routed, delivered) and a VXLAN packet (a1 → b1: encap to
//! n2 with outer headers; n2's trace shows the same outer headers, decapsulation and delivery).
//! `trace --inject` of the same packets gives the same verdicts and changes no counter. A capture
//! of a1's ping is read by tshark (count, interfaces, comments), a drops capture streams through
//! `tshark -r -`, and the metrics endpoint passes `promtool check metrics` with counters that match
//! the packets sent.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use vswitch_lab::topo::{self, Node};
use vswitch_lab::{bin, require_root, Daemon, Lab, Pod};

const METRICS_PORT: u16 = 19_311;

fn node_cfg(me: &Node, peer: &Node, block: &str, peer_block: &str, metrics: bool) -> String {
    let metrics = if metrics {
        format!("metrics_listen = \"{METRICS_PORT}\"\n")
    } else {
        String::new()
    };
    format!(
        "{metrics}{}{}\
         [[network]]\nname = \"blue\"\nkind = \"l2\"\nsubnet = \"192.168.7.0/24\"\nvni = 700\n\
         [[network]]\nname = \"red\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
         blocks = [\"{block}\"]\nencapsulation = \"ipip\"\nmode = \"always\"\n",
        me.node_toml(None),
        peer.peer_toml(&[("red", peer_block)]),
    )
}

/// A `vswitchctl trace --json` running in the background.
struct LiveTrace {
    child: Child,
    what: String,
}

impl LiveTrace {
    /// Starts a trace and waits until the daemon confirmed the session.
    fn start(d: &Daemon, args: &[&str]) -> Result<LiveTrace> {
        let mut child = Command::new(bin("vswitchctl"))
            .arg("--socket")
            .arg(&d.socket)
            .arg("--json")
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn vswitchctl trace")?;
        // Drain stderr (the end-of-trace summary) so the CLI never blocks on it.
        let mut err = child.stderr.take().context("stderr")?;
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = err.read_to_end(&mut sink);
        });
        // The session starts within a few ms of the request: give the CLI time to connect.
        std::thread::sleep(Duration::from_millis(500));
        Ok(LiveTrace {
            child,
            what: args.join(" "),
        })
    }

    /// Waits for the trace to end (its --count or --timeout) and returns its events.
    fn events(mut self) -> Result<Vec<Value>> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("trace {} did not end", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = self.child.stdout.take().context("stdout")?;
        BufReader::new(out)
            .lines()
            .map(|l| Ok(serde_json::from_str(&l?)?))
            .collect()
    }
}

fn stage_names(ev: &Value) -> Vec<String> {
    ev["stages"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["stage"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn stage<'a>(ev: &'a Value, name: &str) -> Option<&'a Value> {
    ev["stages"].as_array()?.iter().find(|s| s["stage"] == name)
}

fn verdict(ev: &Value) -> String {
    ev["verdict"].as_str().unwrap_or("").to_string()
}

/// The verdict without the UDP source port (it depends on the inner flow: a synthetic echo has
/// another ICMP id than the live one).
fn verdict_sans_sport(ev: &Value) -> String {
    let v = verdict(ev);
    v.split(" sport ").next().unwrap_or("").to_string()
}

/// Runs `trace --inject DESC` and returns its one event.
fn inject(d: &Daemon, desc: &str) -> Result<Value> {
    let out = d.ctl(&["--json", "trace", "--inject", desc])?;
    let line = out.lines().next().context("inject printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// Sends one crafted frame from `pod` with scapy.
fn send_frame(lab: &Lab, pod: &Pod, scapy_pkt: &str, count: u32) -> Result<()> {
    lab.scapy(
        &pod.ns,
        &format!(
            "sendp({scapy_pkt}, iface={:?}, count={count}, inter=0.05)",
            pod.ifname
        ),
    )?;
    Ok(())
}

struct Case {
    name: &'static str,
    /// Trace arguments on n1 (and the packet that is sent meanwhile).
    args: Vec<String>,
    /// The synthetic description of the same packet.
    inject: String,
    stages: &'static [&'static str],
    verdict_prefix: String,
}

#[test]
fn trace_capture_metrics_two_nodes_two_networks() {
    let test = "trace_capture_metrics_two_nodes_two_networks";
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.7").unwrap();
    let n1 = topo::node(&mut lab, &rack, "n1", 11).unwrap();
    let n2 = topo::node(&mut lab, &rack, "n2", 12).unwrap();
    let d1 = lab
        .daemon(
            &n1.ns,
            &node_cfg(&n1, &n2, "10.244.1.0/26", "10.244.2.0/26", true),
        )
        .unwrap();
    let d2 = lab
        .daemon(
            &n2.ns,
            &node_cfg(&n2, &n1, "10.244.2.0/26", "10.244.1.0/26", false),
        )
        .unwrap();
    let all = [&d1, &d2];
    let pod = |lab: &mut Lab, d: &Daemon, id: &str, net: &str, mac: &str, ip: &str| {
        topo::new_pod(lab, d, id, net, "eth0", mac, ip).unwrap()
    };
    let a1 = pod(
        &mut lab,
        &d1,
        "a1",
        "blue",
        "02:00:00:07:00:11",
        "192.168.7.11",
    );
    let a2 = pod(
        &mut lab,
        &d1,
        "a2",
        "blue",
        "02:00:00:07:00:12",
        "192.168.7.12",
    );
    let r1 = pod(
        &mut lab,
        &d1,
        "r1",
        "red",
        "02:00:00:07:01:10",
        "10.244.1.10",
    );
    let b1 = pod(
        &mut lab,
        &d2,
        "b1",
        "blue",
        "02:00:00:07:00:21",
        "192.168.7.21",
    );
    let r2 = pod(
        &mut lab,
        &d2,
        "r2",
        "red",
        "02:00:00:07:02:10",
        "10.244.2.10",
    );
    let gw = d1.gateway_mac("blue").unwrap();
    let mut problems: Vec<String> = Vec::new();

    // Warm up: every path works (neighbours resolved, VXLAN MACs learned both ways).
    for (p, dst) in [(&a1, &a2.ip), (&a1, &b1.ip), (&r1, &r2.ip)] {
        if topo::ping_until(&lab, &p.ns, dst, None, Duration::from_secs(8)).is_none() {
            problems.push(format!("warm-up ping {} -> {dst} failed", p.id));
        }
    }

    let spoofed = format!(
        "Ether(src={:?}, dst={:?})/IP(src='192.168.7.99', dst={:?})/ICMP()",
        a1.mac, a2.mac, a2.ip
    );
    let cross = format!(
        "Ether(src={:?}, dst={gw:?})/IP(src={:?}, dst={:?})/ICMP()",
        a1.mac, a1.ip, r1.ip
    );
    let cases = vec![
        Case {
            name: "same-network unicast",
            args: vec![format!("in_port=a1 and icmp and ip_dst={}", a2.ip)],
            inject: format!("in_port=a1,ip_dst={},icmp", a2.ip),
            stages: &["rx_port", "domain", "parsed", "guard", "lookup", "tx_port"],
            verdict_prefix: "tx a2".into(),
        },
        Case {
            name: "ARP answered by the switch",
            args: vec!["in_port=a1 and arp and ip_dst=192.168.7.1".into()],
            inject: "in_port=a1,arp,ip_dst=192.168.7.1".into(),
            stages: &["rx_port", "guard", "answered"],
            verdict_prefix: format!("answer arp reply: 192.168.7.1 is-at {gw}"),
        },
        Case {
            name: "cross-network attempt",
            args: vec![format!("in_port=a1 and ip_dst={}", r1.ip)],
            inject: format!("in_port=a1,eth_dst={gw},ip_dst={},icmp", r1.ip),
            stages: &["rx_port", "drop"],
            verdict_prefix: "drop not_for_gateway".into(),
        },
        Case {
            name: "spoofed source",
            args: vec!["in_port=a1 and ip_src=192.168.7.99".into()],
            inject: format!("in_port=a1,ip_src=192.168.7.99,ip_dst={},icmp", a2.ip),
            stages: &["rx_port", "guard", "drop"],
            verdict_prefix: "drop spoofed_src_ip".into(),
        },
        Case {
            name: "L3 routed packet",
            args: vec![format!("in_port=r1 and icmp and ip_dst={}", r2.ip)],
            inject: format!("in_port=r1,ip_dst={},icmp", r2.ip),
            stages: &["rx_port", "route", "encap"],
            verdict_prefix: format!("encap ipip to n2 {} > {}", n1.ip, n2.ip),
        },
        Case {
            name: "VXLAN to a peer",
            args: vec![format!("in_port=a1 and icmp and ip_dst={}", b1.ip)],
            // b1's MAC was learned by flooding, without its IP: the description names it.
            inject: format!("in_port=a1,eth_dst={},ip_dst={},icmp", b1.mac, b1.ip),
            stages: &["rx_port", "lookup", "encap"],
            verdict_prefix: format!("encap vxlan to n2 {} > {} vni 700", n1.ip, n2.ip),
        },
    ];

    let mut spoofed_sent = 0u64;
    for c in &cases {
        let args: Vec<&str> = vec!["--match", &c.args[0], "--count", "1", "--timeout", "10"];
        let far = c.name.starts_with("L3") || c.name.starts_with("VXLAN");
        // The far half: n2 traces what arrives from n1 for the same destination.
        let far_trace = if far {
            let dst = if c.name.starts_with("L3") {
                &r2.ip
            } else {
                &b1.ip
            };
            Some(
                LiveTrace::start(
                    &d2,
                    &[
                        "--match",
                        &format!("underlay and icmp and ip_dst={dst}"),
                        "--count",
                        "1",
                        "--timeout",
                        "10",
                    ],
                )
                .unwrap(),
            )
        } else {
            None
        };
        let live = LiveTrace::start(&d1, &args).unwrap();
        let sent = match c.name {
            "same-network unicast" => topo::ping_count(&lab, &a1.ns, &a2.ip, None, 1) == 1,
            "ARP answered by the switch" => lab
                .exec(
                    &a1.ns,
                    &["arping", "-c", "1", "-w", "2", "-I", "eth0", "192.168.7.1"],
                )
                .is_ok_and(|o| o.status.success()),
            "cross-network attempt" => send_frame(&lab, &a1, &cross, 1).is_ok(),
            "spoofed source" => {
                spoofed_sent += 1;
                send_frame(&lab, &a1, &spoofed, 1).is_ok()
            }
            "L3 routed packet" => topo::ping_count(&lab, &r1.ns, &r2.ip, None, 1) == 1,
            _ => topo::ping_count(&lab, &a1.ns, &b1.ip, None, 1) == 1,
        };
        if !sent {
            problems.push(format!("{}: sending the packet failed", c.name));
        }
        let evs = match live.events() {
            Ok(e) => e,
            Err(e) => {
                problems.push(format!("{}: {e:#}", c.name));
                continue;
            }
        };
        let Some(ev) = evs.first() else {
            problems.push(format!("{}: the live trace on n1 recorded nothing", c.name));
            continue;
        };
        let names = stage_names(ev);
        for s in c.stages {
            if !names.iter().any(|n| n == s) {
                problems.push(format!("{}: no `{s}` stage in {names:?}: {ev}", c.name));
            }
        }
        if !verdict(ev).starts_with(&c.verdict_prefix) {
            problems.push(format!(
                "{}: verdict {:?}, expected {:?}…",
                c.name,
                verdict(ev),
                c.verdict_prefix
            ));
        }
        // Synthetic: the same verdict, the same stages, and no counter moved.
        let before = d1.port_stats(if c.name.starts_with("L3") { "r1" } else { "a1" });
        match inject(&d1, &c.inject) {
            Ok(syn) => {
                if verdict_sans_sport(&syn) != verdict_sans_sport(ev) {
                    problems.push(format!(
                        "{}: synthetic verdict {:?} differs from live {:?}",
                        c.name,
                        verdict(&syn),
                        verdict(ev)
                    ));
                }
                if stage_names(&syn) != names {
                    problems.push(format!(
                        "{}: synthetic stages {:?} differ from live {names:?}",
                        c.name,
                        stage_names(&syn)
                    ));
                }
                if syn["dry_run"] != true {
                    problems.push(format!("{}: synthetic event not marked dry_run", c.name));
                }
            }
            Err(e) => problems.push(format!("{}: inject: {e:#}", c.name)),
        }
        // Nineteen more: had injects counted, rx would grow by at least 20. The pod's own
        // IPv6 chatter (MLD, RS) may add a frame or two meanwhile.
        for _ in 0..19 {
            let _ = inject(&d1, &c.inject);
        }
        let after = d1.port_stats(if c.name.starts_with("L3") { "r1" } else { "a1" });
        if let (Ok(b), Ok(a)) = (&before, &after) {
            let grew =
                a["rx_packets"].as_u64().unwrap_or(0) - b["rx_packets"].as_u64().unwrap_or(0);
            if grew >= 20 {
                problems.push(format!("{}: inject moved rx counters: {b} -> {a}", c.name));
            }
        }
        // Across nodes: n2's half shows the same outer headers, then delivery.
        if let Some(t) = far_trace {
            let enc = stage(ev, "encap").cloned().unwrap_or(Value::Null);
            match t.events() {
                Ok(evs) => match evs.first() {
                    Some(fev) => {
                        let rx = stage(fev, "rx_underlay").cloned().unwrap_or(Value::Null);
                        for k in ["wire", "outer_src", "outer_dst", "vni", "udp_src"] {
                            if rx[k] != enc[k] {
                                problems.push(format!(
                                    "{}: n2 received with {k} {} but n1 sent with {}",
                                    c.name, rx[k], enc[k]
                                ));
                            }
                        }
                        let want = if c.name.starts_with("L3") {
                            "tx r2"
                        } else {
                            "tx b1"
                        };
                        if verdict(fev) != want {
                            problems.push(format!(
                                "{}: n2 verdict {:?}, expected {want:?}: {fev}",
                                c.name,
                                verdict(fev)
                            ));
                        }
                    }
                    None => problems.push(format!("{}: n2's trace recorded nothing", c.name)),
                },
                Err(e) => problems.push(format!("{}: n2 trace: {e:#}", c.name)),
            }
        }
    }

    // Capture: a1 pings a2 three times; the capture of port a1 holds the three requests (in on
    // a1, "tx a2") and the three replies (in on a2, "tx a1").
    let file = lab.dir.join("a1.pcapng");
    let f = file.display().to_string();
    let mut cap = Command::new(bin("vswitchctl"))
        .arg("--socket")
        .arg(&d1.socket)
        .args([
            "capture",
            "--port",
            "a1",
            "--match",
            "icmp",
            "-w",
            &f,
            "--count",
            "6",
            "--timeout",
            "15",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let got = topo::ping_count(&lab, &a1.ns, &a2.ip, None, 3);
    let status = cap.wait().unwrap();
    if got != 3 || !status.success() {
        problems.push(format!("capture: ping {got}/3, capture exit {status}"));
    }
    match Command::new("tshark")
        .args([
            "-n",
            "-r",
            &f,
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.comment",
            "-e",
            "icmp.type",
        ])
        .output()
    {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let rows: Vec<&str> = text.lines().collect();
            let req = rows.iter().filter(|r| **r == "a1|tx a2|8").count();
            let rep = rows.iter().filter(|r| **r == "a2|tx a1|0").count();
            if rows.len() != 6 || req != 3 || rep != 3 {
                problems.push(format!("capture: tshark read {} packets (want 3 requests on a1 with `tx a2`, 3 replies on a2 with `tx a1`):\n{text}", rows.len()));
            }
        }
        Ok(o) => problems.push(format!(
            "tshark -r {f}: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => problems.push(format!("tshark: {e}")),
    }

    // Drops capture streamed to tshark through a pipe.
    let mut drops = Command::new(bin("vswitchctl"))
        .arg("--socket")
        .arg(&d1.socket)
        .args([
            "capture",
            "--drops",
            "--match",
            "in_port=a1",
            "-w",
            "-",
            "--count",
            "4",
            "--timeout",
            "15",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tshark = Command::new("tshark")
        .args(["-n", "-r", "-", "-T", "fields", "-e", "frame.comment"])
        .stdin(drops.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    if send_frame(&lab, &a1, &spoofed, 4).is_err() {
        problems.push("drops capture: sending failed".into());
    }
    spoofed_sent += 4;
    let _ = drops.wait();
    let out = tshark.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let n = text.lines().filter(|l| *l == "drop spoofed_src_ip").count();
    if n != 4 || text.lines().count() != 4 {
        problems.push(format!(
            "drops capture through `tshark -r -`: {n} of 4 `drop spoofed_src_ip`:\n{text}{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }

    // Metrics: promtool accepts them, and they count what was sent.
    let script = format!(
        "import urllib.request\nprint(urllib.request.urlopen('http://127.0.0.1:{METRICS_PORT}/metrics', timeout=5).read().decode(), end='')"
    );
    let script_file = lab.dir.join("scrape.py");
    std::fs::write(&script_file, script).unwrap();
    let sf = script_file.display().to_string();
    match lab.exec_ok(&n1.ns, &["/usr/bin/python3", &sf]) {
        Ok(text) => {
            let mut p = Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut p.stdin.take().unwrap(), text.as_bytes()).unwrap();
            let o = p.wait_with_output().unwrap();
            if !o.status.success() || !o.stdout.is_empty() || !o.stderr.is_empty() {
                problems.push(format!(
                    "promtool check metrics: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            let value = |name: &str| -> Option<f64> {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            };
            let spoof = value("vswitch_drops_total{reason=\"spoofed_src_ip\"}");
            if spoof != Some(spoofed_sent as f64) {
                problems.push(format!(
                    "metrics: spoofed_src_ip drops {spoof:?}, sent {spoofed_sent}"
                ));
            }
            // a2 received at least the 3 captured pings and the case pings from a1.
            let stats = d1.port_stats("a2").ok();
            let rx_metric = value("vswitch_port_tx_packets_total{port=\"a2\",network=\"blue\"}");
            let rx_stats = stats.as_ref().and_then(|s| s["tx_packets"].as_f64());
            if rx_metric.is_none() || rx_metric < Some(4.0) || rx_metric > rx_stats {
                problems.push(format!(
                    "metrics: a2 tx_packets {rx_metric:?} (stats say {rx_stats:?}), expected ≥ 4"
                ));
            }
        }
        Err(e) => problems.push(format!("scrape metrics: {e:#}")),
    }

    for d in all {
        if !d.is_alive() {
            problems.push(format!("vswitchd in {} died", d.node_ns));
        }
    }
    eprintln!("{test}: {:?}", t0.elapsed());
    if !problems.is_empty() {
        panic!(
            "{test}: {} problem(s):\n{}\n{}",
            problems.len(),
            problems.join("\n"),
            topo::logs(&all)
        );
    }
}
