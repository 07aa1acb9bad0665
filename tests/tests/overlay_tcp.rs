//! SPEC4 TCP across nodes: iperf3 (3 s, both directions) between pods on two nodes of one rack
//! over VXLAN (L2 network), IPIP (L3, mode always) and direct routing (L3, mode never, same
//! underlay subnet). Before the transfer, a ping is captured on the underlay and decoded by
//! tshark to prove the wire format. Each transfer must complete at > 20 Mbit/s, and 16 MiB go
//! each way with the payload verified (SHA-256 at both ends).

use std::time::{Duration, Instant};

use vswitch_lab::topo::{self, Wire, WirePkt};
use vswitch_lab::{require_root, Lab};

const MIN_BPS: f64 = 20e6;

fn scenario(test: &str, network_toml: &str, ips: [&str; 2], want: Wire) {
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.5").unwrap();
    let nodes = [
        topo::node(&mut lab, &rack, "n1", 11).unwrap(),
        topo::node(&mut lab, &rack, "n2", 12).unwrap(),
    ];
    let mut daemons = Vec::new();
    let mut pods = Vec::new();
    for k in 0..2 {
        let (me, peer) = (&nodes[k], &nodes[1 - k]);
        let blocks = if network_toml.contains("kind = \"l3\"") {
            vec![("net", format!("10.244.{}.0/26", 2 - k))]
        } else {
            Vec::new()
        };
        let blocks: Vec<(&str, &str)> = blocks.iter().map(|(n, b)| (*n, b.as_str())).collect();
        let cfg = format!(
            "{}{}{}",
            me.node_toml(None),
            peer.peer_toml(&blocks),
            network_toml.replace("BLOCK", &format!("10.244.{}.0/26", k + 1))
        );
        let d = lab.daemon(&me.ns, &cfg).unwrap();
        pods.push(
            topo::new_pod(
                &mut lab,
                &d,
                &format!("p{}", k + 1),
                "net",
                "eth0",
                &format!("02:00:00:00:05:{:02x}", k + 1),
                ips[k],
            )
            .unwrap(),
        );
        daemons.push(d);
    }
    let all: Vec<&vswitch_lab::Daemon> = daemons.iter().collect();
    let (c, s) = (&pods[0], &pods[1]);
    let mut problems = Vec::new();

    // Wire format of pod traffic between the nodes.
    let cap = lab.capture(&nodes[0].ns, "ul0", "").unwrap();
    if topo::ping_until(&lab, &c.ns, &s.ip, None, Duration::from_secs(6)).is_none()
        || topo::ping_count(&lab, &c.ns, &s.ip, None, 3) < 3
    {
        problems.push(format!("ping {} -> {} failed", c.ip, s.ip));
    }
    topo::stop_capture(&mut lab, &cap);
    let (pkts, text) = topo::decode_wire(&cap.file, &[4789], "icmp")
        .unwrap_or_else(|e| panic!("{test}: tshark: {e:#}"));
    for (src, dst, osrc, odst) in [
        (&c.ip, &s.ip, &nodes[0].ip, &nodes[1].ip),
        (&s.ip, &c.ip, &nodes[1].ip, &nodes[0].ip),
    ] {
        let seen: Vec<&WirePkt> = pkts
            .iter()
            .filter(|p| p.inner == (src.clone(), dst.clone()))
            .collect();
        if seen.is_empty() {
            problems.push(format!("no ICMP {src} -> {dst} on n1's underlay"));
        }
        for p in seen {
            let outer_ok = want == Wire::Plain || p.outer == Some((osrc.clone(), odst.clone()));
            if p.wire != want || !outer_ok {
                problems.push(format!(
                    "ICMP {src} -> {dst}: expected {want:?} (outer {osrc} -> {odst}), got {:?}: {}",
                    p.wire, p.raw
                ));
            }
        }
    }

    if problems.is_empty() {
        topo::iperf_server(&mut lab, s, 5201).unwrap();
        for reverse in [false, true] {
            let dir = if reverse { "n2 -> n1 (-R)" } else { "n1 -> n2" };
            match topo::iperf_client(&lab, &c.ns, &s.ip, 5201, 3, reverse) {
                Ok((bps, bytes)) => {
                    eprintln!("{test}: {dir}: {:.1} Mbit/s, {bytes} bytes", bps / 1e6);
                    if bps <= MIN_BPS {
                        problems.push(format!(
                            "{dir}: receiver saw {:.1} Mbit/s, expected > {:.0}",
                            bps / 1e6,
                            MIN_BPS / 1e6
                        ));
                    }
                }
                Err(e) => problems.push(format!("{dir}: {e}")),
            }
        }
        // The payload itself, both ways: SHA-256 of what was sent against what arrived.
        for (k, (from, to)) in [(c, s), (s, c)].into_iter().enumerate() {
            if let Err(e) = lab.tcp_transfer(&to.ns, &to.ip, &from.ns, 9200 + k as u16, 16 << 20) {
                problems.push(format!("payload {} -> {}: {e:#}", from.ip, to.ip));
            }
        }
    }
    for d in &all {
        if !d.is_alive() {
            problems.push(format!("vswitchd in {} died", d.node_ns));
        }
    }
    eprintln!("{test}: {:?}", t0.elapsed());
    if !problems.is_empty() {
        panic!(
            "{test}: {} problem(s):\n{}\n--- tshark n1 ul0 (frame ip.src ip.dst ip.proto \
             udp.dstport udp.checksum vni) ---\n{}\n{}",
            problems.len(),
            problems.join("\n"),
            topo::head(&text, 30),
            topo::logs(&all)
        );
    }
}

#[test]
fn overlay_tcp_vxlan_l2() {
    scenario(
        "overlay_tcp_vxlan_l2",
        "[[network]]\nname = \"net\"\nkind = \"l2\"\nsubnet = \"192.168.5.0/24\"\nvni = 500\n",
        ["192.168.5.11", "192.168.5.12"],
        Wire::Vxlan {
            port: 4789,
            vni: 500,
        },
    );
}

#[test]
fn overlay_tcp_ipip_l3_always() {
    scenario(
        "overlay_tcp_ipip_l3_always",
        "[[network]]\nname = \"net\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
         blocks = [\"BLOCK\"]\nencapsulation = \"ipip\"\nmode = \"always\"\n",
        ["10.244.1.10", "10.244.2.10"],
        Wire::Ipip,
    );
}

#[test]
fn overlay_tcp_direct_l3_never() {
    scenario(
        "overlay_tcp_direct_l3_never",
        "[[network]]\nname = \"net\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
         blocks = [\"BLOCK\"]\nencapsulation = \"ipip\"\nmode = \"never\"\n",
        ["10.244.1.10", "10.244.2.10"],
        Wire::Plain,
    );
}
