//! Anti-spoofing: a port may only send frames with its own MAC and ARP/IPv4 with its own IPs.
//! A pod that changes its MAC, forges frames with another MAC (also its peer's), sends from an
//! IP it was not given, or poisons ARP gets nothing through: the peer's capture shows none of it,
//! the drop counters say why, and once the pod behaves again its traffic flows.

use std::collections::BTreeMap;
use std::time::Duration;

use vswitch_lab::{
    frame_sender_ip, frame_src_mac, mentions_ip, require_root, show_lines, Daemon, Lab, Pod,
};

const GATEWAY: &str = "192.168.1.1";
const FORGED_MAC: &str = "02:00:00:00:00:66";
const FORGED_MAC2: &str = "02:00:00:00:00:77";
const FORGED_IP: &str = "192.168.1.99";
/// Target of forged ARP requests; nobody else ever asks for it.
const MARKER_IP: &str = "192.168.1.123";

fn fail(d: &Daemon, what: &str, problems: &[String]) -> ! {
    panic!(
        "{what}: {} problem(s):\n{}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n"),
        d.log_tail(60)
    );
}

fn get(m: &BTreeMap<String, u64>, k: &str) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

/// `ip link set IF address MAC`; interfaces that refuse a live change are taken down first.
fn set_mac(lab: &Lab, p: &Pod, mac: &str) {
    let live = lab.exec(&p.ns, &["ip", "link", "set", &p.ifname, "address", mac]);
    if live.map(|o| o.status.success()).unwrap_or(false) {
        return;
    }
    lab.exec_ok(&p.ns, &["ip", "link", "set", &p.ifname, "down"])
        .unwrap();
    lab.exec_ok(&p.ns, &["ip", "link", "set", &p.ifname, "address", mac])
        .unwrap();
    lab.exec_ok(&p.ns, &["ip", "link", "set", &p.ifname, "up"])
        .unwrap();
}

fn ping_fails(lab: &Lab, p: &Pod, extra: &[&str], dst: &str) -> Option<String> {
    let mut args = vec!["ping", "-n", "-c", "3", "-i", "0.3", "-W", "1"];
    args.extend_from_slice(extra);
    args.push(dst);
    let (ok, out) = lab.exec_bounded(&p.ns, 10, &args);
    ok.then(|| format!("{} {args:?} got replies:\n{out}", p.id))
}

fn scenario(test: &str, attach: &str) {
    if !require_root(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let d = lab.node_with_network(attach, "").unwrap();
    let p1 = lab
        .add_pod(&d, "p1", "net", "02:00:00:00:00:11", "192.168.1.11")
        .unwrap();
    let p2 = lab
        .add_pod(&d, "p2", "net", "02:00:00:00:00:12", "192.168.1.12")
        .unwrap();
    for (a, b) in [(&p1, &p2), (&p2, &p1)] {
        assert!(
            lab.ping_until(&a.ns, &b.ip, Duration::from_secs(10)),
            "{} cannot ping {} before any spoofing; log:\n{}",
            a.id,
            b.ip,
            d.log_tail(60)
        );
    }
    let mut problems = Vec::new();

    // --- 1. Forged source MAC: the pod changes its MAC, and scapy forges frames. ---
    let before = d.drops().unwrap();
    let p1_rx_dropped_before = d.port_stats(&p1.id).unwrap()["rx_dropped"]
        .as_u64()
        .unwrap_or(0);
    let cap = lab.capture(&p2.ns, "eth1", "").unwrap();
    set_mac(&lab, &p1, FORGED_MAC);
    lab.exec_ok(&p1.ns, &["ip", "neigh", "flush", "dev", "eth1"])
        .unwrap();
    for dst in [p2.ip.as_str(), GATEWAY] {
        problems.extend(ping_fails(&lab, &p1, &[], dst).map(|m| format!("with forged MAC: {m}")));
    }
    set_mac(&lab, &p1, &p1.mac);
    // Forged with scapy from the pod's real interface MAC: another MAC, and the peer's MAC.
    // UDP ports 4242/4243 mark these frames in the peer's capture.
    lab.scapy(
        &p1.ns,
        &format!(
            "sendp([Ether(src='{FORGED_MAC2}', dst='{m2}')/IP(src='{ip1}', dst='{ip2}')/UDP(sport=4242, dport=4242)/Raw(b'x'*32)]*5, iface='eth1')\n\
             sendp([Ether(src='{m2}', dst='{m2}')/IP(src='{ip1}', dst='{ip2}')/UDP(sport=4243, dport=4243)/Raw(b'x'*32)]*5, iface='eth1')\n\
             sendp([Ether(src='{m2}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{m2}', psrc='{ip2}', pdst='{MARKER_IP}')]*5, iface='eth1')\n",
            m2 = p2.mac,
            ip1 = p1.ip,
            ip2 = p2.ip
        ),
    )
    .unwrap();
    let after = d.drops().unwrap();
    let dm = delta(&before, &after, "spoofed_src_mac");
    // 10 frames from scapy with another MAC + at least one ARP/ping frame from the changed MAC.
    let after = if dm < 16 {
        d.wait_drops(
            "spoofed_src_mac",
            get(&before, "spoofed_src_mac") + 16,
            Duration::from_secs(3),
        )
        .unwrap();
        d.drops().unwrap()
    } else {
        after
    };
    let dm = delta(&before, &after, "spoofed_src_mac");
    if dm < 16 {
        problems.push(format!(
            "drops.spoofed_src_mac increased by {dm}, expected >= 16 (changed MAC pings + 15 forged \
             frames); drops before {before:?} after {after:?}"
        ));
    }
    // The peer's MAC must still be on the peer's port (learning must not move it).
    let fdb = d.fdb("net").unwrap();
    for e in &fdb {
        let mac = e["mac"].as_str().unwrap_or("").to_ascii_lowercase();
        if (mac == FORGED_MAC || mac == FORGED_MAC2)
            || (mac == p2.mac && e["port"] != p2.id.as_str())
        {
            problems.push(format!("fdb after MAC spoofing has {e}; fdb: {fdb:?}"));
        }
    }
    // After restoring the MAC, traffic works again.
    for (a, b) in [(&p1, &p2), (&p2, &p1)] {
        if !lab.ping_until(&a.ns, &b.ip, Duration::from_secs(10)) {
            problems.push(format!(
                "{} cannot ping {} after restoring its MAC",
                a.id, b.ip
            ));
        }
    }
    let lines = lab.finish_capture(cap).unwrap();
    let leaked: Vec<&String> = lines
        .iter()
        .filter(|l| {
            let low = l.to_ascii_lowercase();
            low.contains(FORGED_MAC)
                || low.contains(FORGED_MAC2)
                || l.contains(".4242 >")
                || l.contains(".4243 >")
                || mentions_ip(l, MARKER_IP)
        })
        .collect();
    if !leaked.is_empty() {
        problems.push(format!(
            "capture in {} saw frames with forged MACs: {}\nfull capture {}",
            p2.id,
            show_lines(&leaked, 20),
            show_lines(&lines, 60)
        ));
    }
    if !lines
        .iter()
        .any(|l| frame_src_mac(l) == Some(p1.mac.as_str()))
    {
        problems.push(format!(
            "capture in {} has no frame from {} after the MAC was restored: {}",
            p2.id,
            p1.mac,
            show_lines(&lines, 60)
        ));
    }
    let p1_rx_dropped = d.port_stats(&p1.id).unwrap()["rx_dropped"]
        .as_u64()
        .unwrap_or(0);
    if p1_rx_dropped <= p1_rx_dropped_before {
        problems.push(format!(
            "stats of port {}: rx_dropped did not increase ({p1_rx_dropped_before} -> {p1_rx_dropped})",
            p1.id
        ));
    }

    // --- 2. Forged source IP: a secondary address the switch does not know. ---
    lab.exec_ok(
        &p1.ns,
        &[
            "ip",
            "addr",
            "add",
            &format!("{FORGED_IP}/24"),
            "dev",
            "eth1",
        ],
    )
    .unwrap();
    let cap = lab.capture(&p2.ns, "eth1", "").unwrap();
    let before = d.drops().unwrap();
    // The neighbour entry for the peer is fresh, so these go out as IPv4 from FORGED_IP.
    problems.extend(
        ping_fails(&lab, &p1, &["-I", FORGED_IP], &p2.ip)
            .map(|m| format!("from forged IP (neighbour cached): {m}")),
    );
    let mid = d.drops().unwrap();
    let di = delta(&before, &mid, "spoofed_src_ip");
    if di < 3 {
        problems.push(format!(
            "drops.spoofed_src_ip increased by {di} after 3 pings from {FORGED_IP}, expected >= 3; \
             before {before:?} after {mid:?}"
        ));
    }
    // Without a neighbour entry the kernel ARPs with the forged sender IP.
    lab.exec_ok(&p1.ns, &["ip", "neigh", "flush", "dev", "eth1"])
        .unwrap();
    problems.extend(
        ping_fails(&lab, &p1, &["-I", FORGED_IP], &p2.ip)
            .map(|m| format!("from forged IP (neighbour flushed): {m}")),
    );
    // Forged with scapy: ARP poisoning (claiming the peer's IP, and the forged IP) and IPv4 from
    // the peer's IP, all with the pod's real MAC. UDP port 4244 marks the IPv4 frames.
    lab.scapy(
        &p1.ns,
        &format!(
            "sendp([Ether(src='{m1}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=2, hwsrc='{m1}', psrc='{ip2}', hwdst='ff:ff:ff:ff:ff:ff', pdst='{ip2}')]*5, iface='eth1')\n\
             sendp([Ether(src='{m1}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{m1}', psrc='{FORGED_IP}', pdst='{ip2}')]*5, iface='eth1')\n\
             sendp([Ether(src='{m1}', dst='{m2}')/IP(src='{ip2}', dst='{ip2}')/UDP(sport=4244, dport=4244)/Raw(b'x'*32)]*5, iface='eth1')\n\
             sendp([Ether(src='{m1}', dst='{m2}')/IP(src='{FORGED_IP}', dst='{ip2}')/UDP(sport=4244, dport=4244)/Raw(b'x'*32)]*5, iface='eth1')\n",
            m1 = p1.mac,
            m2 = p2.mac,
            ip2 = p2.ip
        ),
    )
    .unwrap();
    let _ = d.wait_drops(
        "spoofed_arp",
        get(&before, "spoofed_arp") + 11,
        Duration::from_secs(3),
    );
    let after = d.drops().unwrap();
    let da = delta(&before, &after, "spoofed_arp");
    if da < 11 {
        problems.push(format!(
            "drops.spoofed_arp increased by {da}, expected >= 11 (kernel ARP with sender {FORGED_IP} \
             + 10 forged ARP frames); before {before:?} after {after:?}"
        ));
    }
    let di = delta(&mid, &after, "spoofed_src_ip");
    if di < 10 {
        problems.push(format!(
            "drops.spoofed_src_ip increased by {di} for 10 forged IPv4 frames, expected >= 10; \
             before {mid:?} after {after:?}"
        ));
    }
    lab.exec_ok(
        &p1.ns,
        &[
            "ip",
            "addr",
            "del",
            &format!("{FORGED_IP}/24"),
            "dev",
            "eth1",
        ],
    )
    .unwrap();
    for (a, b) in [(&p1, &p2), (&p2, &p1)] {
        if !lab.ping_until(&a.ns, &b.ip, Duration::from_secs(10)) {
            problems.push(format!(
                "{} cannot ping {} after removing the forged IP",
                a.id, b.ip
            ));
        }
    }
    let lines = lab.finish_capture(cap).unwrap();
    let leaked: Vec<&String> = lines
        .iter()
        .filter(|l| {
            // (The pod's kernel may legitimately ask "who-has FORGED_IP tell <own IP>" once the
            // address is gone; only frames *from* the forged IP count.)
            frame_sender_ip(l).as_deref() == Some(FORGED_IP)
                || l.contains(".4244 >")
                || (frame_src_mac(l) == Some(p1.mac.as_str())
                    && frame_sender_ip(l).as_deref() == Some(p2.ip.as_str()))
        })
        .collect();
    if !leaked.is_empty() {
        problems.push(format!(
            "capture in {} saw forged-IP / ARP-poisoning frames: {}\nfull capture {}",
            p2.id,
            show_lines(&leaked, 20),
            show_lines(&lines, 60)
        ));
    }
    // The peer's neighbour table must not have been poisoned either.
    let neigh = lab
        .exec_ok(&p2.ns, &["ip", "neigh", "show", "dev", "eth1"])
        .unwrap_or_default();
    if mentions_ip(&neigh, FORGED_IP) {
        problems.push(format!(
            "{} learned a neighbour for the forged IP: {neigh}",
            p2.id
        ));
    }
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
    if !problems.is_empty() {
        fail(&d, &format!("{test} ({attach})"), &problems);
    }
}

#[test]
fn antispoof_tap() {
    scenario("antispoof_tap", "tap");
}

#[test]
fn antispoof_af_packet() {
    scenario("antispoof_af_packet", "af_packet");
}
