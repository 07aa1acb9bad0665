//! Network isolation: three networks on the same subnet (192.168.1.0/24, gateway .1), each with
//! a pod at the shared IP 192.168.1.205 and a pod with an IP unique to the network. Nothing may
//! cross networks: not unicast to an IP of another network, not the shared IP, not broadcasts or
//! ARP floods. Proven with pings and with tcpdump captures in every pod; every pod has a distinct
//! MAC so each captured frame can be attributed to its sender.
//!
//! The scenario runs with tap ports, with af_packet ports, and mixed: networks of both default
//! kinds in one switch, each with one tap and one af_packet pod (`port add --attach`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vswitch_lab::{frame_sender_ip, frame_src_mac, require_root, show_lines, Daemon, Lab, Pod};

const SUBNET: &str = "192.168.1.0/24";
const GATEWAY: &str = "192.168.1.1";
const SHARED_IP: &str = "192.168.1.205";
const BROADCAST: &str = "192.168.1.255";
const UNKNOWN_IP: &str = "192.168.1.77";
/// UDP port marking frames sent to MACs of other networks.
const MARK_PORT: u16 = 4300;

struct Net {
    name: String,
    attach: String,
    gw_mac: String,
    /// `[pod at SHARED_IP, pod at the network's unique IP]`.
    pods: [Pod; 2],
}

impl Net {
    fn macs(&self) -> BTreeSet<String> {
        self.pods.iter().map(|p| p.mac.clone()).collect()
    }
    fn unique_ip(&self) -> &str {
        &self.pods[1].ip
    }
}

fn fail(d: &Daemon, what: &str, problems: &[String]) -> ! {
    panic!(
        "{what}: {} problem(s):\n{}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n"),
        d.log_tail(60)
    );
}

/// Builds the switch with three networks of the given attach kinds and two pods each.
/// Network 0 comes from the daemon config, networks 1 and 2 from `vswitchctl network add`.
/// With `mixed`, each network's second pod is attached with the other port kind than the
/// network's default (`port add --attach`), so tap and af_packet ports share one L2 domain.
fn setup(lab: &mut Lab, attach: [&str; 3], mixed: bool) -> (Daemon, Vec<Net>) {
    let node = lab.netns("node").unwrap();
    let cfg = format!(
        "workers = 2\n[[network]]\nname = \"neta\"\nsubnet = \"{SUBNET}\"\nattach = \"{}\"\n",
        attach[0]
    );
    let d = lab.daemon(&node, &cfg).unwrap();
    let names = ["neta", "netb", "netc"];
    for i in 1..3 {
        d.ctl(&[
            "network", "add", names[i], "--subnet", SUBNET, "--attach", attach[i],
        ])
        .unwrap_or_else(|e| panic!("network add {}: {e:#}\n{}", names[i], d.log_tail(40)));
    }
    let listed = d.networks().unwrap();
    let mut nets = Vec::new();
    for i in 0..3 {
        let n = listed
            .iter()
            .find(|n| n["name"] == names[i])
            .unwrap_or_else(|| {
                panic!(
                    "network {} missing from `network list`: {listed:?}",
                    names[i]
                )
            });
        assert_eq!(n["attach"], attach[i], "attach kind of {}: {n}", names[i]);
        assert_eq!(n["gateway"], GATEWAY, "gateway of {}: {n}", names[i]);
        let k = i + 1;
        let shared = lab
            .add_pod(
                &d,
                &format!("p{k}s"),
                names[i],
                &format!("02:00:00:00:0{k}:05"),
                SHARED_IP,
            )
            .unwrap();
        let uniq_kind = if mixed {
            other_kind(attach[i])
        } else {
            attach[i]
        };
        let uniq = add_pod_as(
            lab,
            &d,
            &format!("p{k}u"),
            names[i],
            &format!("02:00:00:00:0{k}:10"),
            &format!("192.168.1.1{k}"),
            uniq_kind,
        );
        nets.push(Net {
            name: names[i].to_string(),
            attach: attach[i].to_string(),
            gw_mac: d.gateway_mac(names[i]).unwrap(),
            pods: [shared, uniq],
        });
    }
    let gw_macs: BTreeSet<&str> = nets.iter().map(|n| n.gw_mac.as_str()).collect();
    assert_eq!(
        gw_macs.len(),
        3,
        "gateway MACs of the three networks must differ"
    );

    // The daemon's view of the ports.
    let ports = d.ports().unwrap();
    assert_eq!(ports.len(), 6, "port list: {ports:?}");
    for n in &nets {
        for p in &n.pods {
            let e = ports
                .iter()
                .find(|e| e["id"] == p.id.as_str())
                .unwrap_or_else(|| panic!("port {} missing from port list: {ports:?}", p.id));
            assert_eq!(e["network"], n.name.as_str(), "{e}");
            let want = if mixed && p.id.ends_with('u') {
                other_kind(&n.attach)
            } else {
                n.attach.as_str()
            };
            assert_eq!(e["attach"], want, "{e}");
            assert_eq!(
                e["mac"].as_str().unwrap_or("").to_ascii_lowercase(),
                p.mac,
                "{e}"
            );
            assert_eq!(e["ifname"], "eth1", "{e}");
        }
    }
    for n in &nets {
        for p in &n.pods {
            // Broadcast pings must be answered for the flood to provoke replies.
            lab.sysctl(&p.ns, "net.ipv4.icmp_echo_ignore_broadcasts", "0")
                .unwrap();
            // The pod's interface: right MAC, right address, up.
            let link = lab
                .exec_ok(&p.ns, &["ip", "-o", "link", "show", "eth1"])
                .unwrap();
            assert!(
                link.contains(&p.mac),
                "{}: eth1 has not {}: {link}",
                p.ns,
                p.mac
            );
            let addr = lab.addrs(&p.ns).unwrap();
            assert!(
                addr.contains(&format!("{}/24", p.ip)),
                "{}: eth1 lacks {}/24: {addr}",
                p.ns,
                p.ip
            );
        }
    }
    (d, nets)
}

/// Every pod reaches its peer and the gateway; the unique pod's neighbour entry for the shared
/// IP is its own network's pod.
fn check_connectivity(lab: &Lab, d: &Daemon, nets: &[Net]) {
    let mut problems = Vec::new();
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for n in nets {
            for (i, p) in n.pods.iter().enumerate() {
                let peer = &n.pods[1 - i];
                hs.push(s.spawn(move || {
                    let mut out = Vec::new();
                    for dst in [peer.ip.as_str(), GATEWAY] {
                        if !lab.ping_until(&p.ns, dst, Duration::from_secs(10)) {
                            out.push(format!("{} ({}) cannot ping {dst}", p.id, n.name));
                        }
                    }
                    out
                }));
            }
        }
        for h in hs {
            problems.extend(h.join().unwrap());
        }
    });
    for n in nets {
        let neigh = lab
            .exec_ok(&n.pods[1].ns, &["ip", "neigh", "show", SHARED_IP])
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !neigh.contains(&n.pods[0].mac) {
            problems.push(format!(
                "{}: neighbour entry for {SHARED_IP} is not {} of its own network: {neigh:?}",
                n.pods[1].id, n.pods[0].mac
            ));
        }
    }
    if !problems.is_empty() {
        fail(d, "connectivity inside networks", &problems);
    }
}

/// The traffic of one network during the capture window: negative pings to the other networks'
/// IPs, a ping to the shared IP, broadcast pings and ARP floods from both pods.
fn provoke(lab: &Lab, nets: &[Net], k: usize) -> Vec<String> {
    let n = &nets[k];
    let [shared, uniq] = &n.pods;
    let mut problems = Vec::new();
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        // Unicast to IPs that only exist in other networks: must fail.
        for (j, other) in nets.iter().enumerate() {
            if j == k {
                continue;
            }
            let dst = other.unique_ip().to_string();
            hs.push(s.spawn(move || {
                let (ok, out) = lab.exec_bounded(
                    &uniq.ns,
                    10,
                    &["ping", "-n", "-c", "3", "-i", "0.3", "-W", "1", &dst],
                );
                if ok {
                    vec![format!(
                        "{} ({}) reached {dst}, which only exists in {}:\n{out}",
                        uniq.id, n.name, other.name
                    )]
                } else {
                    vec![]
                }
            }));
        }
        // The shared IP: must reach the own network's pod only.
        hs.push(s.spawn(move || {
            let (ok, out) = lab.exec_bounded(
                &uniq.ns,
                10,
                &["ping", "-n", "-c", "3", "-i", "0.3", "-W", "1", SHARED_IP],
            );
            if ok {
                vec![]
            } else {
                vec![format!(
                    "{} ({}) cannot ping {SHARED_IP} of its own network:\n{out}",
                    uniq.id, n.name
                )]
            }
        }));
        for p in [shared, uniq] {
            // Broadcast ping flood: only the own network's pods (or the gateway) may answer.
            hs.push(s.spawn(move || {
                let (_, out) = lab.exec_bounded(
                    &p.ns,
                    15,
                    &[
                        "ping", "-n", "-b", "-c", "20", "-i", "0.05", "-W", "1", BROADCAST,
                    ],
                );
                let own: Vec<&str> = n.pods.iter().map(|q| q.ip.as_str()).collect();
                let mut foreign = BTreeSet::new();
                for l in out.lines().filter(|l| l.contains("bytes from ")) {
                    let from = l
                        .split("bytes from ")
                        .nth(1)
                        .and_then(|r| r.split(':').next())
                        .unwrap_or("");
                    // The own network's pods (including the sender itself: Linux loops its
                    // broadcasts back) and the gateway may answer; IPs of other networks not.
                    if from != GATEWAY && !own.contains(&from) {
                        foreign.insert(from.to_string());
                    }
                }
                let mut v = Vec::new();
                if !foreign.is_empty() {
                    v.push(format!(
                        "{} ({}) broadcast ping answered by {foreign:?}, not in its network:\n{}",
                        p.id,
                        n.name,
                        vswitch_lab::tail(&out, 6)
                    ));
                }
                v
            }));
            // ARP for an IP nobody has: flooded in the network, nobody may answer.
            hs.push(s.spawn(move || {
                let (ok, out) = lab.exec_bounded(
                    &p.ns,
                    10,
                    &[
                        "arping", "-b", "-c", "5", "-w", "6", "-I", "eth1", UNKNOWN_IP,
                    ],
                );
                if !out.contains("Sent 5 probes") {
                    vec![format!(
                        "{} ({}): arping {UNKNOWN_IP} did not run as expected:\n{out}",
                        p.id, n.name
                    )]
                } else if ok || out.contains("reply from") {
                    vec![format!(
                        "{} ({}) got an ARP answer for {UNKNOWN_IP}, which nobody has:\n{out}",
                        p.id, n.name
                    )]
                } else {
                    vec![]
                }
            }));
        }
        // Unicast to MACs that only exist in other networks (unknown in this network: at most
        // flooded inside it), marked with UDP port 4300; and IPv4 multicast to all hosts.
        let foreign_pods: Vec<&Pod> = nets
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != k)
            .flat_map(|(_, o)| o.pods.iter())
            .collect();
        hs.push(s.spawn(move || {
            let frames: Vec<String> = foreign_pods
                .iter()
                .map(|f| {
                    format!(
                        "Ether(src='{}', dst='{}')/IP(src='{}', dst='{}')/UDP(sport={MARK_PORT}, \
                         dport={MARK_PORT})/Raw(b'x'*32)",
                        uniq.mac, f.mac, uniq.ip, f.ip
                    )
                })
                .collect();
            match lab.scapy(
                &uniq.ns,
                &format!("sendp([{}]*3, iface='eth1')", frames.join(", ")),
            ) {
                Ok(_) => vec![],
                Err(e) => vec![format!("{}: scapy failed: {e:#}", uniq.id)],
            }
        }));
        hs.push(s.spawn(move || {
            let (_, out) = lab.exec_bounded(
                &uniq.ns,
                10,
                &[
                    "ping",
                    "-n",
                    "-c",
                    "5",
                    "-i",
                    "0.2",
                    "-W",
                    "1",
                    "-I",
                    "eth1",
                    "224.0.0.1",
                ],
            );
            if out.contains("bytes from ") || out.contains("transmitted") {
                vec![]
            } else {
                vec![format!("{}: multicast ping did not run:\n{out}", uniq.id)]
            }
        }));
        // ARP for the shared IP from the unique pod: answered with the own network's MAC only.
        hs.push(s.spawn(move || {
            let (ok, out) = lab.exec_bounded(
                &uniq.ns,
                10,
                &[
                    "arping", "-b", "-c", "5", "-w", "6", "-I", "eth1", SHARED_IP,
                ],
            );
            let mut v = Vec::new();
            if !ok {
                v.push(format!(
                    "{} ({}) got no ARP answer for {SHARED_IP}:\n{out}",
                    uniq.id, n.name
                ));
            }
            for l in out.lines().filter(|l| l.contains("reply from")) {
                if !l.to_ascii_lowercase().contains(&shared.mac) {
                    v.push(format!(
                        "{} ({}) ARP answer for {SHARED_IP} is not {} of its network: {l}",
                        uniq.id, n.name, shared.mac
                    ));
                }
            }
            v
        }));
        for h in hs {
            problems.extend(h.join().unwrap());
        }
    });
    problems
}

fn other_kind(k: &str) -> &'static str {
    if k == "tap" {
        "af_packet"
    } else {
        "tap"
    }
}

/// Like `Lab::add_pod`, with an explicit port kind.
fn add_pod_as(
    lab: &mut Lab,
    d: &Daemon,
    short: &str,
    network: &str,
    mac: &str,
    ip: &str,
    kind: &str,
) -> Pod {
    let ns = lab.netns(short).unwrap();
    d.ctl(&[
        "port",
        "add",
        "--netns",
        &ns,
        "--network",
        network,
        "--ifname",
        "eth1",
        "--id",
        short,
        "--mac",
        mac,
        "--ip",
        ip,
        "--attach",
        kind,
    ])
    .unwrap_or_else(|e| panic!("port add {short} ({kind}): {e:#}\n{}", d.log_tail(40)));
    Pod {
        ns,
        network: network.to_string(),
        id: short.to_string(),
        ifname: "eth1".to_string(),
        mac: mac.to_ascii_lowercase(),
        ip: ip.to_string(),
    }
}

fn scenario(test: &str, attach: [&str; 3], mixed: bool) {
    if !require_root(test) {
        return;
    }
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();
    let (d, nets) = setup(&mut lab, attach, mixed);
    check_connectivity(&lab, &d, &nets);
    eprintln!("{test}: setup + connectivity in {:?}", t0.elapsed());

    // Capture in every pod, then let every network flood at the same time; MACs and unique IPs
    // attribute each frame to its network.
    let mut caps = Vec::new();
    for n in &nets {
        for p in &n.pods {
            caps.push(lab.capture(&p.ns, "eth1", "").unwrap());
        }
    }
    let mut problems = Vec::new();
    {
        let lab_ref = &lab;
        let nets_ref = &nets;
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..nets_ref.len())
                .map(|k| s.spawn(move || provoke(lab_ref, nets_ref, k)))
                .collect();
            for h in hs {
                problems.extend(h.join().unwrap());
            }
        });
    }
    let mut captured = Vec::new();
    for c in caps {
        captured.push(lab.finish_capture(c).unwrap());
    }
    eprintln!("{test}: traffic phase done at {:?}", t0.elapsed());

    // Captures: nothing from (or about) another network's pods or gateway.
    let mut i = 0;
    for (k, n) in nets.iter().enumerate() {
        let mut foreign_macs = BTreeSet::new();
        let mut foreign_ips = BTreeSet::new();
        for (j, o) in nets.iter().enumerate() {
            if j != k {
                foreign_macs.extend(o.macs());
                foreign_macs.insert(o.gw_mac.clone());
                foreign_ips.insert(o.unique_ip().to_string());
            }
        }
        for (pi, p) in n.pods.iter().enumerate() {
            let lines = &captured[i];
            i += 1;
            let mut bad = Vec::new();
            for l in lines {
                let low = l.to_ascii_lowercase();
                let src = frame_src_mac(l).unwrap_or("");
                if foreign_macs.contains(src) {
                    bad.push(format!("  [source MAC {src} of another network] {l}"));
                } else if l.contains(&format!(".{MARK_PORT} >")) {
                    // The own network's probes to foreign MACs: their destination is foreign.
                } else if let Some(m) = foreign_macs.iter().find(|m| low.contains(m.as_str())) {
                    bad.push(format!("  [MAC {m} of another network] {l}"));
                } else if let Some(ip) = frame_sender_ip(l).filter(|ip| foreign_ips.contains(ip)) {
                    bad.push(format!("  [sender {ip} of another network] {l}"));
                }
            }
            if !bad.is_empty() {
                problems.push(format!(
                    "capture in {} ({}, {}) saw {} frame(s) of other networks:\n{}\nfull capture {}",
                    p.id,
                    n.name,
                    p.ip,
                    bad.len(),
                    bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
                    show_lines(lines, 40)
                ));
            }
            // Positive control: the capture works and saw the peer's broadcast flood.
            let peer = &n.pods[1 - pi];
            let from_peer = lines
                .iter()
                .filter(|l| frame_src_mac(l) == Some(peer.mac.as_str()))
                .count();
            if from_peer < 10 {
                problems.push(format!(
                    "capture in {} ({}) saw only {from_peer} frames from its peer {} (expected the \
                     broadcast flood): {}",
                    p.id,
                    n.name,
                    peer.mac,
                    show_lines(lines, 40)
                ));
            }
        }
    }

    // FDB: exactly the network's own pods (and optionally its gateway).
    for n in &nets {
        let fdb = d.fdb(&n.name).unwrap();
        eprintln!(
            "{test}: fdb show {}: {}",
            n.name,
            serde_json::to_string(&fdb).unwrap_or_default()
        );
        let macs = d.fdb_macs(&n.name).unwrap();
        let own = n.macs();
        let mut allowed = own.clone();
        allowed.insert(n.gw_mac.clone());
        let missing: Vec<_> = own.difference(&macs).collect();
        let extra: Vec<_> = macs.difference(&allowed).collect();
        if !missing.is_empty() || !extra.is_empty() {
            problems.push(format!(
                "fdb show {}: missing {missing:?}, unexpected {extra:?}; fdb: {fdb:?}",
                n.name
            ));
        }
        for p in &n.pods {
            let e = fdb
                .iter()
                .find(|e| e["mac"].as_str().map(str::to_ascii_lowercase) == Some(p.mac.clone()));
            if let Some(e) = e {
                if e["port"] != p.id.as_str() {
                    problems.push(format!(
                        "fdb show {}: {} should be on port {}: {e}",
                        n.name, p.mac, p.id
                    ));
                }
                // `ips` is optional; when present it is the pod's own IP only.
                if let Some(ips) = e["ips"].as_array() {
                    if ips.len() != 1 || ips[0] != p.ip.as_str() {
                        problems.push(format!(
                            "fdb show {}: {} should list ips [{}]: {e}",
                            n.name, p.mac, p.ip
                        ));
                    }
                }
            }
        }
        if let Some(e) = fdb
            .iter()
            .find(|e| e["mac"].as_str().map(str::to_ascii_lowercase) == Some(n.gw_mac.clone()))
        {
            if e["port"] != "gateway" {
                problems.push(format!(
                    "fdb show {}: gateway MAC should be on port \"gateway\": {e}",
                    n.name
                ));
            }
        }
    }
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
    if !problems.is_empty() {
        fail(&d, &format!("{test} ({attach:?})"), &problems);
    }
    eprintln!("{test}: passed in {:?}", t0.elapsed());
}

#[test]
fn isolation_tap() {
    scenario("isolation_tap", ["tap", "tap", "tap"], false);
}

#[test]
fn isolation_af_packet() {
    scenario(
        "isolation_af_packet",
        ["af_packet", "af_packet", "af_packet"],
        false,
    );
}

#[test]
fn isolation_mixed_tap_and_af_packet() {
    scenario(
        "isolation_mixed_tap_and_af_packet",
        ["tap", "af_packet", "tap"],
        true,
    );
}

#[test]
fn isolation_mixed_af_packet_and_tap() {
    scenario(
        "isolation_mixed_af_packet_and_tap",
        ["af_packet", "tap", "af_packet"],
        true,
    );
}
