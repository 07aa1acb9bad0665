//! Multi-node topologies for the `overlay_*` tests (SPEC4): racks, nodes, a router between
//! racks, etcd, pods attached with `vswitchctl port add`, iperf3, and tshark decoding of
//! underlay captures.
//!
//! - A rack is a namespace holding a Linux bridge `br0` (test topology only; the product uses no
//!   kernel bridge). Everything attached to a rack gets a veth whose rack end is a `br0` port.
//! - A node is a namespace with an underlay veth `ul0` (`<rack prefix>.<host>/24`) in a rack and,
//!   when the rack has a router, a default route via `<rack prefix>.1`. `ip_forward` stays 0.
//! - The router is a namespace with one leg (`.1`) per rack and `ip_forward=1`.
//!
//! Every namespace goes through [`Lab::netns`], every kernel device is created inside a lab
//! namespace (removed with it), every process through [`Lab::spawn`] (killed by PID on drop).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{run, run_ok, Capture, Daemon, Lab, Pod};

/// Serialises the tests of one test binary that take this lock: timing assertions (2 s
/// reachability, throughput) must not compete with another lab for the two CPUs.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rack: a namespace with bridge `br0`, for the /24 `<prefix>.0/24`.
#[derive(Debug, Clone)]
pub struct Rack {
    pub ns: String,
    /// First three octets, e.g. `10.1.5`.
    pub prefix: String,
    /// True once a router leg (`<prefix>.1`) is attached.
    pub routed: bool,
}

impl Rack {
    pub fn subnet(&self) -> String {
        format!("{}.0/24", self.prefix)
    }
    pub fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }
}

/// A node namespace with its underlay address (`ul0`).
#[derive(Debug, Clone)]
pub struct Node {
    /// Short name, also the node name in the daemon config (`n1`).
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub subnet: String,
}

/// Creates rack `short` for `<prefix>.0/24`.
pub fn rack(lab: &mut Lab, short: &str, prefix: &str) -> Result<Rack> {
    let ns = lab.netns(short)?;
    run_ok(Command::new("ip").args(["-n", &ns, "link", "add", "br0", "type", "bridge"]))?;
    run_ok(Command::new("ip").args(["-n", &ns, "link", "set", "br0", "up"]))?;
    Ok(Rack {
        ns,
        prefix: prefix.to_string(),
        routed: false,
    })
}

/// Plugs namespace `ns` into `rack`: veth `ifname` in `ns` with `ip/24`, its peer `port` a
/// `br0` port in the rack namespace.
pub fn plug(rack: &Rack, port: &str, ns: &str, ifname: &str, ip: &str) -> Result<()> {
    run_ok(Command::new("ip").args([
        "-n", &rack.ns, "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
    ]))?;
    run_ok(Command::new("ip").args(["-n", &rack.ns, "link", "set", port, "master", "br0", "up"]))?;
    run_ok(Command::new("ip").args(["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", ifname]))?;
    run_ok(Command::new("ip").args(["-n", ns, "link", "set", ifname, "up"]))?;
    Ok(())
}

/// Creates node `name` in `rack` at `<prefix>.<host>` (underlay `ul0`). Attach the router first
/// (see [`router`]) for the node to get its default route.
pub fn node(lab: &mut Lab, rack: &Rack, name: &str, host: u8) -> Result<Node> {
    let ns = lab.netns(name)?;
    let ip = rack.ip(host);
    plug(rack, name, &ns, "ul0", &ip)?;
    if rack.routed {
        run_ok(Command::new("ip").args([
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &rack.ip(1),
        ]))?;
    }
    Ok(Node {
        name: name.to_string(),
        ns,
        ip,
        subnet: rack.subnet(),
    })
}

/// Creates the router namespace `short` with a leg `r<i>` at `.1` in each rack, ip_forward=1.
pub fn router(lab: &mut Lab, short: &str, racks: &mut [&mut Rack]) -> Result<String> {
    let ns = lab.netns(short)?;
    for (i, r) in racks.iter_mut().enumerate() {
        plug(r, "rtr", &ns, &format!("r{i}"), &r.ip(1))?;
        r.routed = true;
    }
    lab.sysctl(&ns, "net.ipv4.ip_forward", "1")?;
    Ok(ns)
}

impl Node {
    /// The `[node]` table of this node's daemon config.
    pub fn node_toml(&self, vxlan_port: Option<u16>) -> String {
        let mut s = format!(
            "[node]\nname = {:?}\nunderlay_interface = \"ul0\"\nunderlay_ip = {:?}\n\
             underlay_subnet = {:?}\n",
            self.name, self.ip, self.subnet
        );
        if let Some(p) = vxlan_port {
            s.push_str(&format!("vxlan_port = {p}\n"));
        }
        s
    }

    /// A `[[peer]]` table describing this node to the others; `blocks`: (network, CIDR).
    pub fn peer_toml(&self, blocks: &[(&str, &str)]) -> String {
        let mut s = format!(
            "[[peer]]\nname = {:?}\nunderlay_ip = {:?}\n",
            self.name, self.ip
        );
        if !blocks.is_empty() {
            let mut nets: Vec<&str> = Vec::new();
            for b in blocks {
                if !nets.contains(&b.0) {
                    nets.push(b.0);
                }
            }
            let parts: Vec<String> = nets
                .iter()
                .map(|n| {
                    let cidrs: Vec<String> = blocks
                        .iter()
                        .filter(|b| b.0 == *n)
                        .map(|b| format!("{:?}", b.1))
                        .collect();
                    format!("{n:?} = [{}]", cidrs.join(", "))
                })
                .collect();
            s.push_str(&format!("blocks = {{ {} }}\n", parts.join(", ")));
        }
        s
    }
}

/// Attaches an existing namespace `ns` to `network` of daemon `d` (`port add --id ID --ifname
/// IF --mac MAC --ip IP`).
#[allow(clippy::too_many_arguments)]
pub fn attach_pod(
    d: &Daemon,
    ns: &str,
    id: &str,
    network: &str,
    ifname: &str,
    mac: &str,
    ip: &str,
) -> Result<Pod> {
    d.port_add(ns, network, ifname, id, Some(mac), &[ip])
        .with_context(|| {
            format!(
                "port add {id} ({network}, {ip}) in {}; daemon log:\n{}",
                d.node_ns,
                d.log_tail(40)
            )
        })?;
    Ok(Pod {
        ns: ns.to_string(),
        network: network.to_string(),
        id: id.to_string(),
        ifname: ifname.to_string(),
        mac: mac.to_ascii_lowercase(),
        ip: ip.to_string(),
    })
}

/// Creates pod namespace `short` and attaches it (port id `short`).
pub fn new_pod(
    lab: &mut Lab,
    d: &Daemon,
    short: &str,
    network: &str,
    ifname: &str,
    mac: &str,
    ip: &str,
) -> Result<Pod> {
    let ns = lab.netns(short)?;
    attach_pod(d, &ns, short, network, ifname, mac, ip)
}

/// The tails of all daemons' logs, for failure messages.
pub fn logs(daemons: &[&Daemon]) -> String {
    let mut s = String::new();
    for d in daemons {
        s.push_str(&format!(
            "--- vswitchd in {} (pid {}, alive {}) log tail ---\n{}\n",
            d.node_ns,
            d.pid(),
            d.is_alive(),
            d.log_tail(40)
        ));
    }
    s
}

/// One `ping -c 1 -W WAIT` from `ns` (optionally `-I iface`); true on a reply.
pub fn ping_once(lab: &Lab, ns: &str, dst: &str, iface: Option<&str>, wait: &str) -> bool {
    let mut args = vec!["timeout", "5", "ping", "-n", "-q", "-c", "1", "-W", wait];
    if let Some(i) = iface {
        args.push("-I");
        args.push(i);
    }
    args.push(dst);
    lab.exec(ns, &args)
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Pings (`-W 0.3`) until the first reply; the time it took, or None after `timeout`.
pub fn ping_until(
    lab: &Lab,
    ns: &str,
    dst: &str,
    iface: Option<&str>,
    timeout: Duration,
) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if ping_once(lab, ns, dst, iface, "0.3") {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// `ping -c COUNT -i 0.2 -W 1` (optionally `-I iface`); the number of replies (0 on failure).
pub fn ping_count(lab: &Lab, ns: &str, dst: &str, iface: Option<&str>, count: u32) -> u32 {
    let c = count.to_string();
    let mut args = vec![
        "timeout", "30", "ping", "-n", "-c", &c, "-i", "0.2", "-W", "1",
    ];
    if let Some(i) = iface {
        args.push("-I");
        args.push(i);
    }
    args.push(dst);
    let out = match lab.exec(ns, &args) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(_) => return 0,
    };
    parse_ping_received(&out).unwrap_or(0)
}

/// The `N received` of ping's summary line.
pub fn parse_ping_received(out: &str) -> Option<u32> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    let part = line.split(',').find(|p| p.contains("received"))?;
    part.split_whitespace().next()?.parse().ok()
}

/// The `N packets transmitted` of ping's summary line.
pub fn parse_ping_transmitted(out: &str) -> Option<u32> {
    let line = out.lines().find(|l| l.contains("packets transmitted"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Stops a capture (after a short grace period for the last packets) without decoding it.
pub fn stop_capture(lab: &mut Lab, cap: &Capture) {
    std::thread::sleep(Duration::from_millis(300));
    lab.stop(cap.pid);
}

/// `tshark -n -r FILE [-d udp.port==P,vxlan]... [-Y FILTER] -T fields -e F...`: one row per
/// packet, one entry per field, each the list of the field's occurrences (outer first).
/// Also returns the raw text for failure messages.
pub fn tshark_fields(
    file: &Path,
    vxlan_ports: &[u16],
    filter: &str,
    fields: &[&str],
) -> Result<(Vec<Vec<Vec<String>>>, String)> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-n").arg("-r").arg(file);
    for p in vxlan_ports {
        cmd.arg("-d").arg(format!("udp.port=={p},vxlan"));
    }
    if !filter.is_empty() {
        cmd.arg("-Y").arg(filter);
    }
    cmd.args(["-T", "fields", "-E", "separator=/t", "-E", "occurrence=a"]);
    cmd.args(["-E", "aggregator=,"]);
    for f in fields {
        cmd.arg("-e").arg(f);
    }
    let out = run(&mut cmd)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut cols: Vec<Vec<String>> = l
                .split('\t')
                .map(|c| {
                    c.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .collect();
            cols.resize(fields.len(), Vec::new());
            cols
        })
        .collect();
    Ok((rows, text))
}

/// How a pod packet travels on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wire {
    /// Plain IPv4 between pod addresses (direct routing).
    Plain,
    /// IP-in-IP (protocol 4) between node addresses.
    Ipip,
    /// VXLAN to UDP port `port` with VNI `vni`.
    Vxlan { port: u16, vni: u32 },
    /// Anything else (e.g. an ICMP error quoting a packet).
    Other,
}

/// A decoded underlay packet carrying a pod packet.
#[derive(Debug, Clone)]
pub struct WirePkt {
    pub wire: Wire,
    /// Node addresses of an encapsulated packet.
    pub outer: Option<(String, String)>,
    /// Pod addresses.
    pub inner: (String, String),
    /// IP protocol of the pod packet.
    pub inner_proto: String,
    /// Outer UDP checksum of a VXLAN packet, as tshark prints it (`0x0000`).
    pub udp_checksum: Option<String>,
    /// The tshark row, for failure messages.
    pub raw: String,
}

/// Decodes the IPv4 packets of an underlay capture matching `filter` (a tshark display filter
/// such as `icmp`, which also matches encapsulated ICMP) into [`WirePkt`]s; returns them and
/// tshark's text.
pub fn decode_wire(
    file: &Path,
    vxlan_ports: &[u16],
    filter: &str,
) -> Result<(Vec<WirePkt>, String)> {
    let fields = [
        "frame.number",
        "ip.src",
        "ip.dst",
        "ip.proto",
        "udp.dstport",
        "udp.checksum",
        "vxlan.vni",
    ];
    let (rows, text) = tshark_fields(file, vxlan_ports, filter, &fields)?;
    let mut pkts = Vec::new();
    for r in rows {
        let raw = r.iter().map(|c| c.join(",")).collect::<Vec<_>>().join("  ");
        let (src, dst, proto, dport, csum, vni) = (&r[1], &r[2], &r[3], &r[4], &r[5], &r[6]);
        if src.is_empty() || src.len() != dst.len() || src.len() != proto.len() {
            continue;
        }
        let last = src.len() - 1;
        let inner = (src[last].clone(), dst[last].clone());
        let inner_proto = proto[last].clone();
        let outer = Some((src[0].clone(), dst[0].clone()));
        let (wire, outer) = match (src.len(), proto[0].as_str(), vni.first()) {
            (1, _, None) => (Wire::Plain, None),
            (2, "4", None) => (Wire::Ipip, outer),
            (2, "17", Some(v)) => (
                Wire::Vxlan {
                    port: dport.first().and_then(|p| p.parse().ok()).unwrap_or(0),
                    vni: v.parse().unwrap_or(u32::MAX),
                },
                outer,
            ),
            _ => (Wire::Other, outer),
        };
        let udp_checksum = match wire {
            Wire::Vxlan { .. } => csum.first().cloned(),
            _ => None,
        };
        pkts.push(WirePkt {
            wire,
            outer,
            inner,
            inner_proto,
            udp_checksum,
            raw,
        });
    }
    Ok((pkts, text))
}

/// Up to `max` lines of `text` for a failure message.
pub fn head(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut s = lines[..lines.len().min(max)].join("\n");
    if lines.len() > max {
        s.push_str(&format!("\n... ({} lines in all)", lines.len()));
    }
    s
}

/// A process that must not outlive the test (killed by PID on drop), for commands the test
/// waits for itself (the lab only kills its processes at the end).
pub struct Bounded {
    child: Child,
}

impl Bounded {
    /// Starts `ip netns exec NS timeout SECS CMD...` with stdout+stderr into `log`.
    pub fn start(ns: &str, secs: u32, cmd: &[&str], log: &Path) -> Result<Bounded> {
        let f = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "timeout", &secs.to_string()])
            .args(cmd)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawn {cmd:?} in {ns}"))?;
        Ok(Bounded { child })
    }

    /// Waits until it exits, at most `timeout`; true if it exited.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Bounded {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A single-member etcd (Debian's etcd-server, /usr/bin/etcd) in its own namespace.
pub struct Etcd {
    pub ns: String,
    pub ip: String,
    pub pid: u32,
    pub log: std::path::PathBuf,
}

impl Etcd {
    /// `http://IP:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:2379", self.ip)
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Sends `sig` (e.g. `STOP`, `CONT`) to etcd.
    pub fn signal(&self, sig: &str) -> Result<()> {
        run_ok(Command::new("kill").args([&format!("-{sig}"), &self.pid.to_string()]))?;
        Ok(())
    }
}

/// Starts etcd in namespace `short`, plugged into `rack` at `.host`, data dir in the lab dir;
/// waits until it serves clients.
pub fn etcd(lab: &mut Lab, rack: &Rack, short: &str, host: u8) -> Result<Etcd> {
    let etcd_bin = Path::new("/usr/bin/etcd");
    if !etcd_bin.exists() {
        bail!("/usr/bin/etcd missing: install Debian's etcd-server (tests/install-deps.sh)");
    }
    let ns = lab.netns(short)?;
    let ip = rack.ip(host);
    plug(rack, short, &ns, "eth0", &ip)?;
    let data = lab.dir.join(format!("etcd-{short}"));
    let log = lab.dir.join(format!("etcd-{short}.log"));
    let client = format!("http://{ip}:2379");
    let peer = "http://127.0.0.1:2380";
    let logf = std::fs::File::create(&log)?;
    let pid = lab.spawn(
        Command::new("ip")
            .args(["netns", "exec", &ns])
            .arg(etcd_bin)
            .args(["--name", "e0", "--data-dir"])
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("e0={peer}")])
            .args(["--initial-cluster-state", "new"])
            .stdout(logf.try_clone()?)
            .stderr(logf),
    )?;
    let e = Etcd { ns, ip, pid, log };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if e.log_text().contains("ready to serve client requests") {
            return Ok(e);
        }
        if Instant::now() > deadline {
            bail!("etcd did not become ready in 15 s; log:\n{}", e.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An iperf3 server in `p` on `port` (killed with the lab), once it listens.
pub fn iperf_server(lab: &mut Lab, p: &Pod, port: u16) -> Result<()> {
    let port_s = port.to_string();
    let log = lab.dir.join(format!("iperf3-server-{}-{port}.log", p.id));
    let logf = std::fs::File::create(&log)?;
    lab.spawn(
        Command::new("ip")
            .args([
                "netns", "exec", &p.ns, "iperf3", "-s", "-B", &p.ip, "-p", &port_s,
            ])
            .stdout(logf.try_clone()?)
            .stderr(logf),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab
            .exec_ok(&p.ns, &["ss", "-Hltn", &format!("sport = :{port}")])
            .unwrap_or_default();
        if out.contains(&format!(":{port}")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "iperf3 server in {} did not listen on {port}: {}",
                p.ns,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `iperf3 -c SERVER -t SECS -J` from `client_ns` (reverse: the server sends); the receiver's
/// bits/s and bytes, or the failure with iperf3's output.
pub fn iperf_client(
    lab: &Lab,
    client_ns: &str,
    server_ip: &str,
    port: u16,
    secs: u32,
    reverse: bool,
) -> std::result::Result<(f64, u64), String> {
    let port_s = port.to_string();
    let secs_s = secs.to_string();
    let mut args = vec![
        "iperf3",
        "-c",
        server_ip,
        "-p",
        &port_s,
        "-t",
        &secs_s,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if reverse {
        args.push("-R");
    }
    let (ok, out) = lab.exec_bounded(client_ns, secs + 20, &args);
    let start = out.find('{').unwrap_or(0);
    let mut it = serde_json::Deserializer::from_str(&out[start..]).into_iter::<serde_json::Value>();
    let v = match it.next() {
        Some(Ok(v)) => v,
        _ => {
            return Err(format!(
                "iperf3 {args:?} (exit ok={ok}) printed no JSON:\n{}",
                head(&out, 40)
            ))
        }
    };
    if let Some(e) = v.get("error") {
        return Err(format!("iperf3 {args:?} failed: {e}"));
    }
    let recv = &v["end"]["sum_received"];
    match (recv["bits_per_second"].as_f64(), recv["bytes"].as_u64()) {
        (Some(bps), Some(bytes)) if ok => Ok((bps, bytes)),
        _ => Err(format!(
            "iperf3 {args:?} (exit ok={ok}) has no end.sum_received: {}",
            &out[..out.len().min(3000)]
        )),
    }
}

/// `vswitchctl --json peers` as JSON objects.
pub fn peers(d: &Daemon) -> Result<Vec<serde_json::Value>> {
    match d.ctl_json(&["peers"])? {
        serde_json::Value::Array(a) => Ok(a),
        other => bail!("peers: expected a JSON array, got {other}"),
    }
}

/// The peer names in `vswitchctl peers` (sorted).
pub fn peer_names(d: &Daemon) -> Result<Vec<String>> {
    let mut v: Vec<String> = peers(d)?
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_toml_groups_blocks() {
        let n = Node {
            name: "n2".into(),
            ns: "x".into(),
            ip: "10.1.5.12".into(),
            subnet: "10.1.5.0/24".into(),
        };
        assert_eq!(
            n.peer_toml(&[("pods", "10.244.2.0/26"), ("pods", "10.244.3.0/26")]),
            "[[peer]]\nname = \"n2\"\nunderlay_ip = \"10.1.5.12\"\n\
             blocks = { \"pods\" = [\"10.244.2.0/26\", \"10.244.3.0/26\"] }\n"
        );
        assert_eq!(
            n.peer_toml(&[]),
            "[[peer]]\nname = \"n2\"\nunderlay_ip = \"10.1.5.12\"\n"
        );
    }

    #[test]
    fn parses_ping_summary() {
        let out =
            "PING 10.0.0.1 (10.0.0.1) 56(84) bytes of data.\n\n--- 10.0.0.1 ping statistics ---\n\
                   75 packets transmitted, 71 received, 5.33333% packet loss, time 14800ms\n";
        assert_eq!(parse_ping_transmitted(out), Some(75));
        assert_eq!(parse_ping_received(out), Some(71));
        let none = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2030ms\n";
        assert_eq!(parse_ping_received(none), Some(0));
    }
}
