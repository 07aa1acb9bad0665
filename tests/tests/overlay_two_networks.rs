//! SPEC4: two L2 VXLAN networks (VNI 100 = net A, VNI 200 = net B, both 192.168.1.0/24) across
//! two nodes. A pod on node1 has `eth0` on A (192.168.1.10) and `net1` on B (192.168.1.20) —
//! two `port add` into one namespace. Node2 has, in A, 192.168.1.30 and 192.168.1.40, and in
//! B, 192.168.1.30 (the same IP) and 192.168.1.50.
//!
//! Pings over each interface reach only the matching network's peer (the shared IP answers from
//! the right pod, A-only and B-only IPs are unreachable over the other interface, broadcasts
//! stay in their network). The underlay capture (tshark) shows VNI 100 frames carrying only
//! net A's MACs and senders, VNI 200 only net B's, no other VNI, default UDP port 4789; the
//! captures in node2's pods show nothing from the other network.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use vswitch_lab::topo::{self, Node};
use vswitch_lab::{frame_sender_ip, frame_src_mac, require_root, show_lines, Lab, Pod};

const SUBNET: &str = "192.168.1.0/24";
const SHARED: &str = "192.168.1.30";
const BCAST: &str = "192.168.1.255";

struct Net {
    name: &'static str,
    vni: u32,
    /// The node1 pod's interface in this network.
    ifname: &'static str,
    /// The node1 pod's side (same namespace for both networks).
    local: Pod,
    /// Node2: [the pod at SHARED, the pod with the network's unique IP].
    remote: [Pod; 2],
    /// Gateway MACs of the network on node1 and node2.
    gw_macs: BTreeSet<String>,
}

impl Net {
    fn pod_macs(&self) -> BTreeSet<String> {
        let mut s: BTreeSet<String> = self.remote.iter().map(|p| p.mac.clone()).collect();
        s.insert(self.local.mac.clone());
        s
    }
    /// MACs that may never appear in the other network: pods and gateways.
    fn all_macs(&self) -> BTreeSet<String> {
        let mut s = self.pod_macs();
        s.extend(self.gw_macs.iter().cloned());
        s
    }
    /// Sender IPs only this network has.
    fn unique_ips(&self) -> BTreeSet<String> {
        [self.local.ip.clone(), self.remote[1].ip.clone()].into()
    }
}

fn node_cfg(n: &Node, peer: &Node) -> String {
    format!(
        "{}{}\
         [[network]]\nname = \"neta\"\nkind = \"l2\"\nsubnet = \"{SUBNET}\"\nvni = 100\n\
         [[network]]\nname = \"netb\"\nkind = \"l2\"\nsubnet = \"{SUBNET}\"\nvni = 200\n",
        n.node_toml(None),
        peer.peer_toml(&[])
    )
}

#[test]
fn overlay_two_l2_networks_isolated() {
    let test = "overlay_two_l2_networks_isolated";
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.5").unwrap();
    let n1 = topo::node(&mut lab, &rack, "n1", 11).unwrap();
    let n2 = topo::node(&mut lab, &rack, "n2", 12).unwrap();
    let d1 = lab.daemon(&n1.ns, &node_cfg(&n1, &n2)).unwrap();
    let d2 = lab.daemon(&n2.ns, &node_cfg(&n2, &n1)).unwrap();
    let all = [&d1, &d2];

    // Node1: one pod, one interface per network.
    let p1 = lab.netns("p1").unwrap();
    for (k, v) in [
        ("rp_filter", "0"),
        ("arp_ignore", "1"),
        ("arp_announce", "2"),
    ] {
        lab.sysctl(&p1, &format!("net.ipv4.conf.all.{k}"), v)
            .unwrap();
        lab.sysctl(&p1, &format!("net.ipv4.conf.default.{k}"), v)
            .unwrap();
    }
    let a_local = topo::attach_pod(
        &d1,
        &p1,
        "p1a",
        "neta",
        "eth0",
        "02:00:00:0a:00:10",
        "192.168.1.10",
    )
    .unwrap();
    let b_local = topo::attach_pod(
        &d1,
        &p1,
        "p1b",
        "netb",
        "net1",
        "02:00:00:0b:00:20",
        "192.168.1.20",
    )
    .unwrap();
    let mut nets = Vec::new();
    for (name, vni, ifname, local, tag, uniq) in [
        ("neta", 100, "eth0", a_local, "a", "192.168.1.40"),
        ("netb", 200, "net1", b_local, "b", "192.168.1.50"),
    ] {
        let shared = topo::new_pod(
            &mut lab,
            &d2,
            &format!("q{tag}s"),
            name,
            "eth0",
            &format!("02:00:00:0{tag}:00:30"),
            SHARED,
        )
        .unwrap();
        let last = uniq.rsplit('.').next().unwrap();
        let other = topo::new_pod(
            &mut lab,
            &d2,
            &format!("q{tag}u"),
            name,
            "eth0",
            &format!("02:00:00:0{tag}:00:{last}"),
            uniq,
        )
        .unwrap();
        let gw_macs = all.iter().map(|d| d.gateway_mac(name).unwrap()).collect();
        nets.push(Net {
            name,
            vni,
            ifname,
            local,
            remote: [shared, other],
            gw_macs,
        });
    }
    for n in &nets {
        for p in n.remote.iter().chain([&n.local]) {
            lab.sysctl(&p.ns, "net.ipv4.icmp_echo_ignore_broadcasts", "0")
                .unwrap();
        }
    }

    // Captures: node1's underlay and every node2 pod.
    let ul = lab.capture(&n1.ns, "ul0", "").unwrap();
    let mut pod_caps = Vec::new();
    for (ni, n) in nets.iter().enumerate() {
        for p in &n.remote {
            pod_caps.push((ni, p.clone(), lab.capture(&p.ns, "eth0", "").unwrap()));
        }
    }

    let mut problems = Vec::new();
    for (ni, n) in nets.iter().enumerate() {
        let other = &nets[1 - ni];
        let ifn = Some(n.ifname);
        // Reach the shared IP and the network's own unique IP over the matching interface.
        for dst in [SHARED, n.remote[1].ip.as_str()] {
            if topo::ping_until(&lab, &p1, dst, ifn, Duration::from_secs(5)).is_none()
                || topo::ping_count(&lab, &p1, dst, ifn, 3) < 2
            {
                problems.push(format!("{}: ping -I {} {dst} failed", n.name, n.ifname));
            }
        }
        // The other network's unique IP is not reachable over this interface.
        let foreign = &other.remote[1].ip;
        if topo::ping_count(&lab, &p1, foreign, ifn, 3) != 0 {
            problems.push(format!(
                "{}: ping -I {} {foreign} (only in {}) got replies",
                n.name, n.ifname, other.name
            ));
        }
        // Broadcast stays in the network.
        let _ = lab.exec(
            &p1,
            &[
                "timeout", "5", "ping", "-n", "-b", "-c", "2", "-i", "0.3", "-W", "1", "-I",
                n.ifname, BCAST,
            ],
        );
        // The neighbour entry of the shared IP on this interface is this network's pod.
        let neigh = lab
            .exec_ok(&p1, &["ip", "neigh", "show", "dev", n.ifname, SHARED])
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !neigh.contains(&n.remote[0].mac) {
            problems.push(format!(
                "{}: neighbour {SHARED} on {} should be {} ({}), is: {neigh:?}",
                n.name, n.ifname, n.remote[0].mac, n.remote[0].id
            ));
        }
    }

    // Node1's FDB of each network: the remote pods of that network behind peer n2, none of the
    // other network's.
    for (ni, n) in nets.iter().enumerate() {
        let other = &nets[1 - ni];
        match d1.fdb(n.name) {
            Ok(fdb) => {
                let mac_of =
                    |e: &serde_json::Value| e["mac"].as_str().unwrap_or("").to_ascii_lowercase();
                let e = fdb.iter().find(|e| mac_of(e) == n.remote[0].mac);
                if !e.is_some_and(|e| e["port"] == "peer:n2") {
                    problems.push(format!(
                        "node1 fdb show {}: {} ({}) should be on port peer:n2: {fdb:?}",
                        n.name, n.remote[0].mac, n.remote[0].id
                    ));
                }
                let foreign: Vec<&serde_json::Value> = fdb
                    .iter()
                    .filter(|e| other.pod_macs().contains(&mac_of(e)))
                    .collect();
                if !foreign.is_empty() {
                    problems.push(format!(
                        "node1 fdb show {} lists {}'s MACs: {foreign:?}",
                        n.name, other.name
                    ));
                }
            }
            Err(e) => problems.push(format!("node1 fdb show {}: {e:#}", n.name)),
        }
    }

    // Underlay: VXLAN frames per VNI carry only their network's MACs and senders.
    topo::stop_capture(&mut lab, &ul);
    let fields = [
        "vxlan.vni",
        "udp.dstport",
        "eth.src",
        "eth.dst",
        "arp.src.hw_mac",
        "arp.src.proto_ipv4",
        "ip.src",
    ];
    let (rows, text) = topo::tshark_fields(&ul.file, &[], "vxlan", &fields)
        .unwrap_or_else(|e| panic!("{test}: tshark: {e:#}"));
    let mut macs_per_vni: [BTreeSet<String>; 2] = Default::default();
    for r in &rows {
        let vni: u32 = r[0].first().and_then(|v| v.parse().ok()).unwrap_or(0);
        let port = r[1].first().map(String::as_str).unwrap_or("");
        if port != "4789" {
            problems.push(format!(
                "VXLAN to UDP port {port}, expected the default 4789: {r:?}"
            ));
        }
        let Some(ni) = nets.iter().position(|n| n.vni == vni) else {
            problems.push(format!("VXLAN frame with unexpected VNI {vni}: {r:?}"));
            continue;
        };
        let other = &nets[1 - ni];
        // Inner MACs: eth.src/eth.dst after the outer one, and ARP sender MACs.
        let mut macs: Vec<String> = r[2]
            .iter()
            .skip(1)
            .chain(r[3].iter().skip(1))
            .cloned()
            .collect();
        macs.extend(r[4].iter().cloned());
        let foreign_macs: Vec<&String> = macs
            .iter()
            .filter(|m| other.all_macs().contains(*m))
            .collect();
        if !foreign_macs.is_empty() {
            problems.push(format!(
                "VNI {vni} ({}) frame carries {}'s MAC(s) {foreign_macs:?}: {r:?}",
                nets[ni].name, other.name
            ));
        }
        // Inner sender IPs: ARP sender and inner ip.src (after the outer one).
        let senders: Vec<&String> = r[5].iter().chain(r[6].iter().skip(1)).collect();
        if let Some(s) = senders.iter().find(|s| other.unique_ips().contains(**s)) {
            problems.push(format!(
                "VNI {vni} ({}) frame sent by {s}, an address only {} has: {r:?}",
                nets[ni].name, other.name
            ));
        }
        macs_per_vni[ni].extend(macs);
    }
    for (ni, n) in nets.iter().enumerate() {
        for p in [&n.local, &n.remote[0]] {
            if !macs_per_vni[ni].contains(&p.mac) {
                problems.push(format!(
                    "no VNI {} frame on node1's underlay carries {} ({})",
                    n.vni, p.mac, p.id
                ));
            }
        }
    }

    // Node2's pods: nothing from the other network; the shared-IP pods saw their own
    // network's echo requests.
    let mut pod_lines = Vec::new();
    for (ni, p, cap) in pod_caps {
        let lines = lab.finish_capture(cap).unwrap();
        let n = &nets[ni];
        let other = &nets[1 - ni];
        let bad: Vec<&String> = lines
            .iter()
            .filter(|l| {
                frame_src_mac(l).is_some_and(|m| other.all_macs().contains(m))
                    || frame_sender_ip(l).is_some_and(|ip| other.unique_ips().contains(&ip))
            })
            .collect();
        if !bad.is_empty() {
            problems.push(format!(
                "pod {} ({}) saw {} frame(s) from {}: {}",
                p.id,
                n.name,
                bad.len(),
                other.name,
                show_lines(&bad, 10)
            ));
        }
        if p.ip == SHARED {
            let want = format!("{} > {}: ICMP echo request", n.local.ip, SHARED);
            if !lines.iter().any(|l| l.contains(&want)) {
                problems.push(format!("pod {} ({}) never saw `{want}`", p.id, n.name));
            }
        }
        pod_lines.push(format!(
            "--- capture in {} ---\n{}",
            p.id,
            show_lines(&lines, 25)
        ));
    }

    for d in all {
        if !d.is_alive() {
            problems.push(format!("vswitchd in {} died", d.node_ns));
        }
    }
    eprintln!("{test}: {:?}", t0.elapsed());
    if !problems.is_empty() {
        panic!(
            "{test}: {} problem(s):\n{}\n--- tshark node1 ul0 (vni udp.dstport eth.src eth.dst \
             arp.src.hw_mac arp.src.proto_ipv4 ip.src) ---\n{}\n{}\n{}",
            problems.len(),
            problems.join("\n"),
            topo::head(&text, 60),
            pod_lines.join("\n"),
            topo::logs(&all)
        );
    }
}
