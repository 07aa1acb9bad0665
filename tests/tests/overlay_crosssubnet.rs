//! SPEC4 L3 network across racks (the CrossSubnet lab): two racks of two nodes (underlays
//! 10.1.5.0/24 and 10.1.8.0/24) joined by a router namespace; one `kind = "l3"` network
//! 10.244.0.0/16 with a /26 block per node and a pod on every node; static `[[peer]]` tables.
//!
//! Every pod pings every other pod (12 ordered pairs). Captures on every node's underlay `ul0`
//! and on both router legs, decoded by tshark, must show each pair's packets in the wire format
//! the (encapsulation, mode) pair calls for:
//! - ipip + cross-subnet: in-rack plain IPv4 between pod addresses, cross-rack IPIP (proto 4,
//!   outer = node addresses, inner = pod addresses);
//! - ipip + always: everything IPIP;
//! - vxlan + always: everything VXLAN to the configured UDP port with the configured VNI
//!   (UDP checksum 0);
//! - vxlan + cross-subnet: in-rack plain, cross-rack VXLAN.
//!
//! The router never carries plain pod traffic (direct routing is only used within a rack).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vswitch_lab::topo::{self, Node, Wire, WirePkt};
use vswitch_lab::{require_root, Daemon, Lab, Pod};

const NET: &str = "pods";
const VNI: u32 = 4242;
/// A non-default VXLAN port, to check the configured one is used.
const VXLAN_PORT: u16 = 4799;

/// Node `i` (1..=4): rack A (10.1.5.0/24) for 1 and 2, rack B (10.1.8.0/24) for 3 and 4.
fn block(i: usize) -> String {
    format!("10.244.{i}.0/26")
}
fn pod_ip(i: usize) -> String {
    format!("10.244.{i}.10")
}

fn network_toml(i: usize, encap: &str, mode: &str) -> String {
    let mut s = format!(
        "[[network]]\nname = \"{NET}\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
         blocks = [\"{}\"]\nencapsulation = \"{encap}\"\nmode = \"{mode}\"\n",
        block(i)
    );
    if encap == "vxlan" {
        s.push_str(&format!("vni = {VNI}\n"));
    }
    s
}

/// The wire format expected between two nodes.
fn expected(encap: &str, mode: &str, same_rack: bool) -> Wire {
    let encapsulated = match mode {
        "always" => true,
        "cross-subnet" => !same_rack,
        "never" => false,
        other => panic!("unknown mode {other}"),
    };
    match (encapsulated, encap) {
        (false, _) => Wire::Plain,
        (true, "ipip") => Wire::Ipip,
        (true, "vxlan") => Wire::Vxlan {
            port: VXLAN_PORT,
            vni: VNI,
        },
        (true, other) => panic!("unknown encapsulation {other}"),
    }
}

fn scenario(test: &str, encap: &str, mode: &str) {
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();

    // Underlay: two racks and a router.
    let mut ra = topo::rack(&mut lab, "ra", "10.1.5").unwrap();
    let mut rb = topo::rack(&mut lab, "rb", "10.1.8").unwrap();
    let rtr = topo::router(&mut lab, "rtr", &mut [&mut ra, &mut rb]).unwrap();
    let nodes: Vec<Node> = vec![
        topo::node(&mut lab, &ra, "n1", 11).unwrap(),
        topo::node(&mut lab, &ra, "n2", 12).unwrap(),
        topo::node(&mut lab, &rb, "n3", 13).unwrap(),
        topo::node(&mut lab, &rb, "n4", 14).unwrap(),
    ];
    let rack_of = |i: usize| if i < 2 { 'A' } else { 'B' };
    // The underlay works: n1 reaches n4 through the router.
    assert!(
        lab.ping(&nodes[0].ns, &nodes[3].ip, 2),
        "underlay: n1 cannot ping n4 via the router"
    );

    // Daemons with static peers.
    let vxlan_port = (encap == "vxlan").then_some(VXLAN_PORT);
    let mut daemons: Vec<Daemon> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut cfg = n.node_toml(vxlan_port);
        for (j, p) in nodes.iter().enumerate() {
            if j != i {
                cfg.push_str(&p.peer_toml(&[(NET, &block(j + 1))]));
            }
        }
        cfg.push_str(&network_toml(i + 1, encap, mode));
        daemons.push(
            lab.daemon(&n.ns, &cfg)
                .unwrap_or_else(|e| panic!("{test}: vswitchd on {}: {e:#}", n.name)),
        );
    }
    let all: Vec<&Daemon> = daemons.iter().collect();

    // `vswitchctl peers`: the other three, static, same_subnet only within the rack.
    let mut problems = Vec::new();
    for (i, d) in daemons.iter().enumerate() {
        let peers = topo::peers(d).unwrap_or_else(|e| panic!("{test}: peers on n{}: {e:#}", i + 1));
        for (j, n) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            match peers.iter().find(|p| p["name"] == n.name.as_str()) {
                None => problems.push(format!("n{}: peer {} missing: {peers:?}", i + 1, n.name)),
                Some(p) => {
                    let same = rack_of(i) == rack_of(j);
                    if p["underlay_ip"] != n.ip.as_str()
                        || p["same_subnet"] != same
                        || p["source"] != "static"
                    {
                        problems.push(format!(
                            "n{}: peer {} should be underlay_ip {}, same_subnet {same}, \
                             source static: {p}",
                            i + 1,
                            n.name,
                            n.ip
                        ));
                    }
                }
            }
        }
    }

    // A pod on every node.
    let mut pods: Vec<Pod> = Vec::new();
    for (i, d) in daemons.iter().enumerate() {
        let k = i + 1;
        pods.push(
            topo::new_pod(
                &mut lab,
                d,
                &format!("p{k}"),
                NET,
                "eth0",
                &format!("02:00:00:f4:00:{k:02x}"),
                &pod_ip(k),
            )
            .unwrap(),
        );
    }

    // Captures: every node's underlay and both router legs.
    let mut caps = Vec::new();
    for n in &nodes {
        caps.push((
            format!("{} ul0", n.name),
            lab.capture(&n.ns, "ul0", "").unwrap(),
        ));
    }
    for leg in ["r0", "r1"] {
        caps.push((format!("router {leg}"), lab.capture(&rtr, leg, "").unwrap()));
    }

    // 12 ordered pairs.
    let mut reached = BTreeMap::new();
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let ok = topo::ping_until(&lab, &a.ns, &b.ip, None, Duration::from_secs(4)).is_some()
                && topo::ping_count(&lab, &a.ns, &b.ip, None, 2) == 2;
            if !ok {
                problems.push(format!(
                    "ping {} ({}) -> {} ({}) failed",
                    a.id, a.ip, b.id, b.ip
                ));
            }
            reached.insert((i, j), ok);
        }
    }

    // Decode the captures.
    let ports: Vec<u16> = vxlan_port.into_iter().collect();
    let mut decoded: Vec<(String, Vec<WirePkt>, String)> = Vec::new();
    for (name, cap) in &caps {
        topo::stop_capture(&mut lab, cap);
        let (pkts, text) = topo::decode_wire(&cap.file, &ports, "icmp")
            .unwrap_or_else(|e| panic!("{test}: tshark on {name}: {e:#}"));
        decoded.push((name.clone(), pkts, text));
    }

    // Every ordered pair: present on the sender's and the receiver's underlay, and every
    // occurrence anywhere in the expected format with the right node addresses.
    for (i, a) in pods.iter().enumerate() {
        for (j, b) in pods.iter().enumerate() {
            if i == j {
                continue;
            }
            let want = expected(encap, mode, rack_of(i) == rack_of(j));
            let (na, nb) = (&nodes[i], &nodes[j]);
            for (cap_name, pkts, _) in &decoded {
                let seen: Vec<&WirePkt> = pkts
                    .iter()
                    .filter(|p| p.inner == (a.ip.clone(), b.ip.clone()) && p.inner_proto == "1")
                    .collect();
                let must_see = cap_name == &format!("{} ul0", na.name)
                    || cap_name == &format!("{} ul0", nb.name);
                if must_see && seen.is_empty() && reached[&(i, j)] {
                    problems.push(format!(
                        "{} -> {}: no ICMP {} -> {} in the {cap_name} capture",
                        a.id, b.id, a.ip, b.ip
                    ));
                }
                // One line per pair and capture: the first wrong packet and a count.
                let mut wrong = Vec::new();
                for p in seen {
                    if p.wire != want {
                        wrong.push(format!(
                            "{} -> {} ({}, rack {} -> {}): expected {want:?}, {cap_name} shows \
                             {:?}: {}",
                            a.id,
                            b.id,
                            if want == Wire::Plain {
                                "direct"
                            } else {
                                "encapsulated"
                            },
                            rack_of(i),
                            rack_of(j),
                            p.wire,
                            p.raw
                        ));
                        continue;
                    }
                    if want != Wire::Plain && p.outer != Some((na.ip.clone(), nb.ip.clone())) {
                        wrong.push(format!(
                            "{} -> {}: outer addresses should be {} -> {}, {cap_name} shows: {}",
                            a.id, b.id, na.ip, nb.ip, p.raw
                        ));
                    }
                    if matches!(want, Wire::Vxlan { .. })
                        && p.udp_checksum.as_deref() != Some("0x0000")
                    {
                        wrong.push(format!(
                            "{} -> {}: VXLAN UDP checksum should be 0 (SPEC4), {cap_name} shows: {}",
                            a.id, b.id, p.raw
                        ));
                    }
                }
                if let Some(first) = wrong.first() {
                    problems.push(format!("{first} ({} wrong packet(s) in all)", wrong.len()));
                }
            }
        }
    }
    // The router only ever carries encapsulated pod traffic, and it does carry cross-rack pairs.
    for (cap_name, pkts, _) in decoded.iter().filter(|c| c.0.starts_with("router")) {
        let plain: Vec<&str> = pkts
            .iter()
            .filter(|p| p.wire == Wire::Plain && p.inner.0.starts_with("10.244."))
            .map(|p| p.raw.as_str())
            .collect();
        if !plain.is_empty() {
            problems.push(format!(
                "{cap_name}: {} plain pod packets crossed the router, e.g. {}",
                plain.len(),
                plain[0]
            ));
        }
        if !pkts.iter().any(|p| p.wire != Wire::Plain) {
            problems.push(format!(
                "{cap_name}: no encapsulated pod traffic crossed the router"
            ));
        }
    }

    for d in &daemons {
        if !d.is_alive() {
            problems.push(format!("vswitchd in {} died", d.node_ns));
        }
    }
    eprintln!("{test}: {:?}", t0.elapsed());
    if !problems.is_empty() {
        let mut captures = String::new();
        for (name, _, text) in &decoded {
            captures.push_str(&format!(
                "--- tshark {name} (frame ip.src ip.dst ip.proto udp.dstport udp.checksum vni) ---\n{}\n",
                topo::head(text, 40)
            ));
        }
        panic!(
            "{test} ({encap}, {mode}): {} problem(s):\n{}\n{captures}{}",
            problems.len(),
            problems.join("\n"),
            topo::logs(&all)
        );
    }
}

#[test]
fn overlay_l3_ipip_cross_subnet() {
    scenario("overlay_l3_ipip_cross_subnet", "ipip", "cross-subnet");
}

#[test]
fn overlay_l3_ipip_always() {
    scenario("overlay_l3_ipip_always", "ipip", "always");
}

#[test]
fn overlay_l3_vxlan_always() {
    scenario("overlay_l3_vxlan_always", "vxlan", "always");
}

#[test]
fn overlay_l3_vxlan_cross_subnet() {
    scenario("overlay_l3_vxlan_cross_subnet", "vxlan", "cross-subnet");
}
