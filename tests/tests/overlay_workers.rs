//! An L2 VXLAN network across three nodes whose daemons run two dataplane workers each, with
//! static peers (flood and learn). Node1's two pods sit on different workers; the underlay is
//! read by both workers (one socket each). Once MACs are learned, unicast between node1's pods
//! and node2's pod must go to node2 only: a capture on the bystander node3 must see none of it.
//! (Before learned state reached every worker, the worker that did not read the underlay
//! flooded every unicast to every peer, forever.) A TCP transfer with a verified payload runs
//! over the same path.

use std::time::Duration;

use vswitch_lab::topo::{self, decode_wire, Wire};
use vswitch_lab::{require_root, Lab};

fn cfg(n: &topo::Node, peers: &[&topo::Node]) -> String {
    let mut s = format!("workers = 2\n{}", n.node_toml(None));
    for p in peers {
        s.push_str(&p.peer_toml(&[]));
    }
    s.push_str("[[network]]\nname = \"w\"\nkind = \"l2\"\nsubnet = \"10.77.0.0/24\"\nvni = 300\n");
    s
}

#[test]
fn two_workers_learn_remote_macs_and_stop_flooding() {
    let test = "two_workers_learn_remote_macs_and_stop_flooding";
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.5").unwrap();
    let n1 = topo::node(&mut lab, &rack, "n1", 11).unwrap();
    let n2 = topo::node(&mut lab, &rack, "n2", 12).unwrap();
    let n3 = topo::node(&mut lab, &rack, "n3", 13).unwrap();
    let d1 = lab.daemon(&n1.ns, &cfg(&n1, &[&n2, &n3])).unwrap();
    let d2 = lab.daemon(&n2.ns, &cfg(&n2, &[&n1, &n3])).unwrap();
    let d3 = lab.daemon(&n3.ns, &cfg(&n3, &[&n1, &n2])).unwrap();
    let logs = || topo::logs(&[&d1, &d2, &d3]);
    let a = topo::new_pod(
        &mut lab,
        &d1,
        "pa",
        "w",
        "eth0",
        "02:00:00:77:00:0a",
        "10.77.0.10",
    )
    .unwrap();
    let b = topo::new_pod(
        &mut lab,
        &d1,
        "pb",
        "w",
        "eth0",
        "02:00:00:77:00:0b",
        "10.77.0.11",
    )
    .unwrap();
    let c = topo::new_pod(
        &mut lab,
        &d2,
        "pc",
        "w",
        "eth0",
        "02:00:00:77:00:0c",
        "10.77.0.20",
    )
    .unwrap();
    let _d = topo::new_pod(
        &mut lab,
        &d3,
        "pd",
        "w",
        "eth0",
        "02:00:00:77:00:0d",
        "10.77.0.30",
    )
    .unwrap();
    // The two node1 pods are served by different workers.
    let workers: Vec<u64> = d1
        .ports()
        .unwrap()
        .iter()
        .map(|p| p["worker"].as_u64().unwrap_or(99))
        .collect();
    assert!(
        workers.contains(&0) && workers.contains(&1),
        "node1's pods should be spread over both workers: {workers:?}"
    );
    // Learning: both directions once (ARP floods, replies teach everyone).
    for p in [&a, &b] {
        assert!(
            topo::ping_until(&lab, &p.ns, &c.ip, None, Duration::from_secs(5)).is_some(),
            "{} -> {}\n{}",
            p.id,
            c.ip,
            logs()
        );
        assert!(topo::ping_until(&lab, &c.ns, &p.ip, None, Duration::from_secs(5)).is_some());
    }
    let cap = lab.capture(&n3.ns, "ul0", "udp port 4789").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for p in [&a, &b] {
        assert_eq!(
            topo::ping_count(&lab, &p.ns, &c.ip, None, 20),
            20,
            "{}",
            logs()
        );
    }
    topo::stop_capture(&mut lab, &cap);
    let (pkts, text) = decode_wire(&cap.file, &[4789], "icmp").unwrap();
    let leaked: Vec<_> = pkts
        .iter()
        .filter(|p| matches!(p.wire, Wire::Vxlan { .. }))
        .filter(|p| p.inner.0 == c.ip || p.inner.1 == c.ip)
        .collect();
    assert!(
        leaked.is_empty(),
        "{} unicast frame(s) between node1 and node2 pods were flooded to node3:\n{}",
        leaked.len(),
        topo::head(&text, 20)
    );
    // Data over the same path, payload verified.
    for (k, p) in [&a, &b].into_iter().enumerate() {
        lab.tcp_transfer(&c.ns, &c.ip, &p.ns, 9100 + k as u16, 16 << 20)
            .unwrap_or_else(|e| panic!("{} -> {}: {e:#}\n{}", p.id, c.id, logs()));
    }
}
