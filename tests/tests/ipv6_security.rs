//! IPv6 first-hop security (the IPv6 side of antispoof.rs): pods in one network, one of them an
//! attacker crafting packets with scapy, victims observed with tcpdump and their own kernel
//! state (`ip -6 neigh/route/addr`).
//!
//! - a: echo requests with another pod's link-local source: none delivered, `spoofed_src_ipv6`.
//! - b: forged neighbour advertisements claiming a neighbour's address: the victim's neighbour
//!   entry keeps the real MAC, its pings reach the real neighbour and never the attacker,
//!   `nd_spoofed_target`.
//! - c: forged router advertisements (plain, behind extension headers, split across fragments),
//!   redirects and DHCPv6 server messages: victims get no rogue prefix or default route,
//!   `rogue_ra` / `ipv6_header_chain` / `rogue_redirect` / `rogue_dhcpv6`; the same RA from a
//!   port marked `--router` does reach them.
//! - d: legitimate ND and `ping6` between link-local addresses work, tap and af_packet; the
//!   switch answers the NS itself (the target pod sees no multicast NS). A pod adding another
//!   pod's address fails DAD (the switch defends it).
//! - e: 50 pods: their DAD/RS/MLD chatter and NS produce (almost) no writes to other ports;
//!   captures show no other pod's MLD reports, RS or DAD probes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vswitch_lab::{require_root, show_lines, Daemon, Lab, Pod};

/// The link-local a kernel derives from `mac` (EUI-64), as `ip` and tcpdump print it.
fn ll(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    let id = [b[0] ^ 2, b[1], b[2], 0xff, 0xfe, b[3], b[4], b[5]];
    let mut o = [0u8; 16];
    o[0] = 0xfe;
    o[1] = 0x80;
    o[8..].copy_from_slice(&id);
    std::net::Ipv6Addr::from(o).to_string()
}

fn fail(d: &Daemon, what: &str, problems: &[String]) -> ! {
    panic!(
        "{what}: {} problem(s):\n{}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n"),
        d.log_tail(60)
    );
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

fn absorbed(d: &Daemon) -> BTreeMap<String, u64> {
    let v = d.ctl_json(&["stats"]).unwrap();
    v["absorbed"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn tx_packets(d: &Daemon) -> BTreeMap<String, u64> {
    let v = d.ctl_json(&["stats"]).unwrap();
    v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_str().unwrap().to_string(),
                p["tx_packets"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Waits until the pod's link-local is configured and past DAD (not tentative).
fn wait_link_local(lab: &Lab, p: &Pod) -> Result<(), String> {
    let want = ll(&p.mac);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    while Instant::now() < deadline {
        last = lab
            .exec_ok(&p.ns, &["ip", "-6", "addr", "show", "dev", &p.ifname])
            .unwrap_or_default();
        if last.contains(&format!("{want}/64")) && !last.contains("tentative") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "{}: link-local {want} not ready in 10 s: {last}",
        p.id
    ))
}

fn ping6(lab: &Lab, from: &Pod, to: &str, count: u32) -> (bool, String) {
    let dst = format!("{to}%{}", from.ifname);
    let c = count.to_string();
    lab.exec_bounded(
        &from.ns,
        count + 5,
        &["ping", "-6", "-n", "-c", &c, "-i", "0.2", "-W", "1", &dst],
    )
}

fn try_add_pod(
    lab: &mut Lab,
    d: &Daemon,
    short: &str,
    mac: &str,
    ip: &str,
    extra: &[&str],
) -> Result<Pod, String> {
    let ns = lab.netns(short).map_err(|e| format!("{e:#}"))?;
    let mut args = vec![
        "port",
        "add",
        "--netns",
        &ns,
        "--network",
        "net",
        "--ifname",
        "eth1",
        "--id",
        short,
        "--mac",
        mac,
        "--ip",
        ip,
    ];
    args.extend_from_slice(extra);
    d.ctl(&args)
        .map_err(|e| format!("port add {short}: {e:#}\n{}", d.log_tail(40)))?;
    Ok(Pod {
        ns,
        network: "net".into(),
        id: short.into(),
        ifname: "eth1".into(),
        mac: mac.into(),
        ip: ip.into(),
    })
}

fn add_pod(lab: &mut Lab, d: &Daemon, short: &str, mac: &str, ip: &str, extra: &[&str]) -> Pod {
    try_add_pod(lab, d, short, mac, ip, extra).unwrap_or_else(|e| panic!("{e}"))
}

/// Lines of a capture that are ICMPv6 neighbour solicitations sent to a solicited-node group
/// (multicast NS: address resolution or DAD), as tcpdump prints them.
fn multicast_ns_for<'a>(lines: &'a [String], target: &str) -> Vec<&'a String> {
    lines
        .iter()
        .filter(|l| l.contains("neighbor solicitation") && l.contains(&format!("who has {target}")))
        .filter(|l| l.contains("> ff02::1:ff"))
        .collect()
}

const ATTACKER_MAC: &str = "02:00:00:00:00:11";
const VICTIM_MAC: &str = "02:00:00:00:00:12";
const NEIGHBOUR_MAC: &str = "02:00:00:00:00:13";
const ROUTER_MAC: &str = "02:00:00:00:00:19";

#[test]
fn link_local_helper() {
    assert_eq!(ll("02:00:00:00:00:11"), "fe80::ff:fe00:11");
    assert_eq!(ll("52:54:00:12:34:56"), "fe80::5054:ff:fe12:3456");
}

/// a, b, c, d for one attach kind (the attacker is always `attach`; the victim and its
/// neighbour are one tap and one af_packet port, so every pair is crossed).
fn first_hop(test: &str, attach: &str, daemon_extra: &str) {
    if !require_root(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let d = lab.node_with_network(attach, daemon_extra).unwrap();
    let p1 = add_pod(&mut lab, &d, "p1", ATTACKER_MAC, "192.168.1.11", &[]);
    let p2 = add_pod(
        &mut lab,
        &d,
        "p2",
        VICTIM_MAC,
        "192.168.1.12",
        &["--attach", "tap"],
    );
    let p3 = add_pod(
        &mut lab,
        &d,
        "p3",
        NEIGHBOUR_MAC,
        "192.168.1.13",
        &["--attach", "af_packet"],
    );
    let mut problems = Vec::new();
    for p in [&p1, &p2, &p3] {
        if let Err(e) = wait_link_local(&lab, p) {
            fail(&d, test, &[e]);
        }
    }
    let (ll1, ll2, ll3) = (ll(&p1.mac), ll(&p2.mac), ll(&p3.mac));

    // --- d. Legitimate ND and ping6 between link-locals, every pair; the switch answers NS. ---
    let cap2 = lab.capture(&p2.ns, "eth1", "icmp6").unwrap();
    let cap3 = lab.capture(&p3.ns, "eth1", "icmp6").unwrap();
    let cap1 = lab.capture(&p1.ns, "eth1", "icmp6").unwrap();
    for (a, b) in [
        (&p1, &p2),
        (&p2, &p3),
        (&p3, &p1),
        (&p2, &p1),
        (&p3, &p2),
        (&p1, &p3),
    ] {
        let (ok, out) = ping6(&lab, a, &ll(&b.mac), 3);
        if !ok {
            problems.push(format!("d: ping6 {} -> {} failed: {out}", a.id, ll(&b.mac)));
        }
    }
    let l2 = lab.finish_capture(cap2).unwrap();
    let l3 = lab.finish_capture(cap3).unwrap();
    let l1 = lab.finish_capture(cap1).unwrap();
    for (lines, who, own) in [(&l1, &p1, &ll1), (&l2, &p2, &ll2), (&l3, &p3, &ll3)] {
        // Multicast NS for the pod's own address would mean the switch flooded instead of
        // answering (DAD is over before the capture starts).
        let ns = multicast_ns_for(lines, own);
        if !ns.is_empty() {
            problems.push(format!(
                "d: {} saw multicast NS for its own address (the switch should answer): {}",
                who.id,
                show_lines(&ns, 10)
            ));
        }
        if !lines.iter().any(|l| l.contains("echo reply")) {
            problems.push(format!(
                "d: {} saw no echo reply: {}",
                who.id,
                show_lines(lines, 30)
            ));
        }
    }
    // The asker did get an NA (from the switch, with the owner's MAC).
    if !l1
        .iter()
        .any(|l| l.contains("neighbor advertisement") && l.contains(&format!("tgt is {ll2}")))
    {
        problems.push(format!(
            "d: {} saw no NA for {ll2}: {}",
            p1.id,
            show_lines(&l1, 30)
        ));
    }

    // --- a. Echo requests with another pod's link-local source. ---
    let before = d.drops().unwrap();
    let cap2 = lab.capture(&p2.ns, "eth1", "icmp6").unwrap();
    lab.scapy(
        &p1.ns,
        &format!(
            "sendp([Ether(src='{m1}', dst='{m2}')/IPv6(src='{ll3}', dst='{ll2}')/ICMPv6EchoRequest(id=0x4242, seq=i) for i in range(100)], iface='eth1')\n",
            m1 = p1.mac,
            m2 = p2.mac
        ),
    )
    .unwrap();
    let _ = d.wait_drops(
        "spoofed_src_ipv6",
        before.get("spoofed_src_ipv6").copied().unwrap_or(0) + 100,
        Duration::from_secs(3),
    );
    let l2 = lab.finish_capture(cap2).unwrap();
    let delivered: Vec<_> = l2
        .iter()
        .filter(|l| l.contains("echo request") && l.contains("id 16962"))
        .collect();
    if !delivered.is_empty() {
        problems.push(format!(
            "a: {} of 100 spoofed echo requests reached {}: {}",
            delivered.len(),
            p2.id,
            show_lines(&delivered, 5)
        ));
    }
    let n = delta(&before, &d.drops().unwrap(), "spoofed_src_ipv6");
    if n < 100 {
        problems.push(format!("a: spoofed_src_ipv6 rose by {n}, expected >= 100"));
    }

    // --- b. Forged NA: the attacker claims the neighbour's address for its own MAC. ---
    let (ok, out) = ping6(&lab, &p2, &ll3, 2);
    if !ok {
        problems.push(format!("b: warm-up ping6 {} -> {ll3} failed: {out}", p2.id));
    }
    let before = d.drops().unwrap();
    let cap1 = lab.capture(&p1.ns, "eth1", "icmp6").unwrap();
    lab.scapy(
        &p1.ns,
        &format!(
            "na = lambda dst, edst, s: Ether(src='{m1}', dst=edst)/IPv6(src='{ll1}', dst=dst)/ICMPv6ND_NA(tgt='{ll3}', R=0, S=s, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{m1}')\n\
             sendp([na('{ll2}', '{m2}', 1), na('ff02::1', '33:33:00:00:00:01', 0)]*5, iface='eth1')\n\
             sendp([Ether(src='{m1}', dst='{m2}')/IPv6(src='{ll1}', dst='{ll2}')/ICMPv6ND_NA(tgt='{ll1}', S=1, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{m3}')]*5, iface='eth1')\n",
            m1 = p1.mac,
            m2 = p2.mac,
            m3 = p3.mac
        ),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = ping6(&lab, &p2, &ll3, 5);
    if !ok {
        problems.push(format!(
            "b: ping6 {} -> {ll3} after the forged NAs failed: {out}",
            p2.id
        ));
    }
    let neigh = lab
        .exec_ok(&p2.ns, &["ip", "-6", "neigh", "show", &ll3, "dev", "eth1"])
        .unwrap_or_default();
    if !neigh.contains(&p3.mac) {
        problems.push(format!(
            "b: {}'s neighbour entry for {ll3} is not {}: {neigh:?}",
            p2.id, p3.mac
        ));
    }
    let l1 = lab.finish_capture(cap1).unwrap();
    let hijacked: Vec<_> = l1
        .iter()
        .filter(|l| l.contains("echo request") && l.contains(&format!("> {ll3}")))
        .collect();
    if !hijacked.is_empty() {
        problems.push(format!(
            "b: the attacker received {} pings meant for {ll3}: {}",
            hijacked.len(),
            show_lines(&hijacked, 5)
        ));
    }
    let after = d.drops().unwrap();
    let (t, l) = (
        delta(&before, &after, "nd_spoofed_target"),
        delta(&before, &after, "nd_spoofed_lladdr"),
    );
    if t < 10 || l < 5 {
        problems.push(format!(
            "b: nd_spoofed_target +{t} (expected >= 10), nd_spoofed_lladdr +{l} (expected >= 5)"
        ));
    }

    // --- c. Rogue RA (plain, behind a destination-options header, and split across fragments
    //        so the first fragment hides the ICMPv6 header), redirect, DHCPv6 advertise. ---
    let before = d.drops().unwrap();
    let cap2 = lab.capture(&p2.ns, "eth1", "").unwrap();
    lab.scapy(
        &p1.ns,
        &format!(
            "base = Ether(src='{m1}', dst='33:33:00:00:00:01')/IPv6(src='{ll1}', dst='ff02::1')\n\
             ra = ICMPv6ND_RA(routerlifetime=1800)/ICMPv6NDOptSrcLLAddr(lladdr='{m1}')/ICMPv6NDOptPrefixInfo(prefix='2001:db8:bad::', prefixlen=64, L=1, A=1, validlifetime=3600, preferredlifetime=3600)\n\
             sendp([base/ra]*5, iface='eth1')\n\
             sendp([base/IPv6ExtHdrDestOpt()/ra]*5, iface='eth1')\n\
             big = IPv6(src='{ll1}', dst='ff02::1')/IPv6ExtHdrFragment()/IPv6ExtHdrDestOpt(options=[PadN(optdata=b'\\x00'*200), PadN(optdata=b'\\x00'*200)])/ra\n\
             for i in range(5):\n\
             \x20   big[IPv6ExtHdrFragment].id = 0x1000 + i\n\
             \x20   for f in fragment6(big, 200):\n\
             \x20       sendp(Ether(src='{m1}', dst='33:33:00:00:00:01')/f, iface='eth1')\n\
             sendp([Ether(src='{m1}', dst='{m2}')/IPv6(src='{ll1}', dst='{ll2}')/ICMPv6ND_Redirect(tgt='{ll1}', dst='2001:db8::1')]*5, iface='eth1')\n\
             sendp([Ether(src='{m1}', dst='{m2}')/IPv6(src='{ll1}', dst='{ll2}')/UDP(sport=547, dport=546)/DHCP6_Advertise(trid=0x4242)]*5, iface='eth1')\n",
            m1 = p1.mac,
            m2 = p2.mac
        ),
    )
    .unwrap();
    // Long enough for SLAAC and a default route to appear had the RA got through.
    std::thread::sleep(Duration::from_secs(3));
    let after = d.drops().unwrap();
    for (k, min) in [
        ("rogue_ra", 10),
        ("ipv6_header_chain", 5),
        ("rogue_redirect", 5),
        ("rogue_dhcpv6", 5),
    ] {
        let n = delta(&before, &after, k);
        if n < min {
            problems.push(format!("c: {k} rose by {n}, expected >= {min}"));
        }
    }
    for v in [&p2, &p3] {
        let routes = lab
            .exec_ok(&v.ns, &["ip", "-6", "route", "show"])
            .unwrap_or_default();
        let addrs = lab
            .exec_ok(&v.ns, &["ip", "-6", "addr", "show"])
            .unwrap_or_default();
        if routes.contains("default") || routes.contains("2001:db8:bad") {
            problems.push(format!("c: {} got a rogue route: {routes}", v.id));
        }
        if addrs.contains("2001:db8:bad") {
            problems.push(format!("c: {} got a rogue address: {addrs}", v.id));
        }
    }
    let l2 = lab.finish_capture(cap2).unwrap();
    let leaked: Vec<_> = l2
        .iter()
        .filter(|l| {
            l.contains("router advertisement") || l.contains("redirect") || l.contains(".547 >")
        })
        .collect();
    if !leaked.is_empty() {
        problems.push(format!(
            "c: {} saw rogue messages: {}",
            p2.id,
            show_lines(&leaked, 10)
        ));
    }
    // The same RA from a port marked router reaches the pods (the guard is not a blanket drop).
    let r = try_add_pod(
        &mut lab,
        &d,
        "rt",
        ROUTER_MAC,
        "192.168.1.19",
        &["--router"],
    )
    .and_then(|r| wait_link_local(&lab, &r).map(|_| r));
    if let Err(e) = &r {
        problems.push(format!("c: router port: {e}"));
    }
    if let Ok(r) = &r {
        let llr = ll(&r.mac);
        let cap3 = lab.capture(&p3.ns, "eth1", "icmp6").unwrap();
        lab.scapy(
            &r.ns,
            &format!(
                "sendp([Ether(src='{mr}', dst='33:33:00:00:00:01')/IPv6(src='{llr}', dst='ff02::1')/ICMPv6ND_RA(routerlifetime=0)/ICMPv6NDOptSrcLLAddr(lladdr='{mr}')]*3, iface='eth1')\n",
                mr = r.mac
            ),
        )
        .unwrap();
        let l3 = lab.finish_capture(cap3).unwrap();
        if !l3
            .iter()
            .any(|l| l.contains("router advertisement") && l.contains(&llr))
        {
            problems.push(format!(
                "c: the router port's RA did not reach {}: {}",
                p3.id,
                show_lines(&l3, 20)
            ));
        }
    }

    // DAD for an address another pod owns: the switch defends it, the prober marks it failed
    // (and the owner never sees the probe).
    let cap2 = lab.capture(&p2.ns, "eth1", "icmp6").unwrap();
    lab.exec_ok(
        &p1.ns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{ll2}/64"),
            "dev",
            "eth1",
        ],
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut addrs = String::new();
    while Instant::now() < deadline {
        addrs = lab
            .exec_ok(&p1.ns, &["ip", "-6", "addr", "show", "dev", "eth1"])
            .unwrap_or_default();
        if addrs.contains("dadfailed") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !addrs.contains("dadfailed") {
        problems.push(format!(
            "dad: {} adding {ll2} (owned by {}) did not fail DAD: {addrs}",
            p1.id, p2.id
        ));
    }
    let _ = lab.exec(
        &p1.ns,
        &[
            "ip",
            "-6",
            "addr",
            "del",
            &format!("{ll2}/64"),
            "dev",
            "eth1",
        ],
    );
    let l2 = lab.finish_capture(cap2).unwrap();
    let probes = multicast_ns_for(&l2, &ll2);
    if !probes.is_empty() {
        problems.push(format!(
            "dad: {} saw the probe for its own address: {}",
            p2.id,
            show_lines(&probes, 5)
        ));
    }

    // Still working afterwards.
    let (ok, out) = ping6(&lab, &p1, &ll2, 2);
    if !ok {
        problems.push(format!("after: ping6 {} -> {ll2} failed: {out}", p1.id));
    }
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
    if !problems.is_empty() {
        fail(&d, &format!("{test} ({attach})"), &problems);
    }
}

#[test]
fn ipv6_first_hop_security_tap() {
    first_hop("ipv6_first_hop_security_tap", "tap", "");
}

#[test]
fn ipv6_first_hop_security_af_packet() {
    first_hop("ipv6_first_hop_security_af_packet", "af_packet", "");
}

/// With two workers each sees only its own ports' MLD reports; the checks and answers, which
/// come from configuration, must hold all the same.
#[test]
fn ipv6_first_hop_security_two_workers() {
    first_hop("ipv6_first_hop_security_two_workers", "tap", "workers = 2");
}

/// e: 50 tap pods in one network. After they attach (DAD, RS, MLD reports from each), 10 idle
/// seconds cost at most a few writes per port, and three observer pods never see another pod's
/// MLD report, router solicitation or DAD probe; an NS for a known address is answered by the
/// switch (the target and a bystander see no multicast NS for it).
#[test]
fn ipv6_chatter_at_scale() {
    if !require_root("ipv6_chatter_at_scale") {
        return;
    }
    const PODS: usize = 50;
    let mut lab = Lab::new().unwrap();
    let d = lab.node_with_network("tap", "").unwrap();
    let mac = |i: usize| format!("02:00:00:00:01:{i:02x}");
    let mut pods = Vec::new();
    let mut caps = Vec::new();
    // Three observers first, capturing while the other 47 attach.
    for i in 0..3 {
        pods.push(add_pod(
            &mut lab,
            &d,
            &format!("q{i}"),
            &mac(i),
            &format!("192.168.1.{}", 10 + i),
            &[],
        ));
    }
    for p in &pods {
        wait_link_local(&lab, p).unwrap();
    }
    for p in &pods {
        caps.push(lab.capture(&p.ns, "eth1", "icmp6").unwrap());
    }
    let absorbed_before = absorbed(&d);
    for i in 3..PODS {
        pods.push(add_pod(
            &mut lab,
            &d,
            &format!("q{i}"),
            &mac(i),
            &format!("192.168.1.{}", 10 + i),
            &[],
        ));
    }
    let mut problems = Vec::new();
    for p in &pods[3..] {
        if let Err(e) = wait_link_local(&lab, p) {
            problems.push(e);
        }
    }
    // 10 idle seconds: pods keep soliciting routers and their MLD reports retransmit.
    let tx0 = tx_packets(&d);
    std::thread::sleep(Duration::from_secs(10));
    let tx1 = tx_packets(&d);
    let writes: BTreeMap<&String, u64> = tx1
        .iter()
        .map(|(k, v)| (k, v.saturating_sub(tx0.get(k).copied().unwrap_or(0))))
        .collect();
    let total: u64 = writes.values().sum();
    let max = writes.values().copied().max().unwrap_or(0);
    eprintln!("e: writes in 10 idle s: total {total}, max per port {max}: {writes:?}");
    if max > 3 {
        problems.push(format!(
            "e: a port got {max} writes in 10 idle seconds (expected <= 3): {writes:?}"
        ));
    }
    let ab = absorbed(&d);
    eprintln!("e: absorbed while attaching + idle: {ab:?} (before {absorbed_before:?})");
    for k in ["mld_report", "router_solicit", "mcast_no_listener"] {
        if delta(&absorbed_before, &ab, k) < (PODS - 3) as u64 {
            problems.push(format!(
                "e: absorbed.{k} rose by {} while {} pods attached, expected at least one each",
                delta(&absorbed_before, &ab, k),
                PODS - 3
            ));
        }
    }
    // NS for a known address: q0 resolves q1's link-local; answered by the switch.
    let (q0, q1) = (&pods[0], &pods[1]);
    let target = ll(&q1.mac);
    let (ok, out) = ping6(&lab, q0, &target, 2);
    if !ok {
        problems.push(format!("e: ping6 q0 -> {target} failed: {out}"));
    }
    let lines: Vec<Vec<String>> = caps
        .into_iter()
        .map(|c| lab.finish_capture(c).unwrap())
        .collect();
    let own_macs: Vec<String> = pods[..3].iter().map(|p| p.mac.clone()).collect();
    for (i, l) in lines.iter().enumerate() {
        let foreign: Vec<_> = l
            .iter()
            .filter(|x| {
                (x.contains("multicast listener report")
                    || x.contains("router solicitation")
                    || (x.contains("neighbor solicitation") && x.contains(":: >")))
                    && !x.contains(&format!(" {} >", own_macs[i]))
            })
            .collect();
        if !foreign.is_empty() {
            problems.push(format!(
                "e: q{i} saw {} MLD reports / RS / DAD probes of other pods: {}",
                foreign.len(),
                show_lines(&foreign, 10)
            ));
        }
        if i != 0 {
            let ns = multicast_ns_for(l, &target);
            if !ns.is_empty() {
                problems.push(format!(
                    "e: q{i} saw the NS for {target} (the switch should answer it): {}",
                    show_lines(&ns, 5)
                ));
            }
        }
    }
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
    if !problems.is_empty() {
        fail(&d, "ipv6_chatter_at_scale", &problems);
    }
}
