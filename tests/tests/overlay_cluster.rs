//! SPEC4 cluster mode: a real etcd (Debian's etcd-server) in its own namespace on the rack
//! 10.1.5.0/24; nodes with `[cluster] etcd_endpoints`, `lease_ttl_secs = 3` and no static
//! peers, an L2 VXLAN network (VNI 300) and an L3 IPIP network (10.244.0.0/16, a /26 block per
//! node); on every node a pod in each network.
//!
//! - all pods reach each other; each node lists the others in `vswitchctl peers` (source etcd);
//! - a node started later is reachable within 2 s of its pod being added;
//! - a node whose daemon is killed with SIGKILL leaves the others' `peers` once its lease
//!   expires (bounded at 10 s), and the remaining pods still reach each other;
//! - etcd stopped (SIGSTOP) for 10 s does not interrupt existing pod traffic
//!   (`ping -i 0.2` across the outage loses < 10 %), and membership is intact afterwards.

use std::time::{Duration, Instant};

use vswitch_lab::topo::{self, Etcd, Node, Rack};
use vswitch_lab::{require_root, Daemon, Lab, Pod};

const L2: &str = "l2net";
const L3: &str = "pods";

struct Member {
    node: Node,
    d: Daemon,
    /// [L2 pod, L3 pod].
    pods: [Pod; 2],
}

struct Cluster {
    lab: Lab,
    rack: Rack,
    etcd: Etcd,
    members: Vec<Member>,
}

impl Cluster {
    fn daemons(&self) -> Vec<&Daemon> {
        self.members.iter().map(|m| &m.d).collect()
    }
    fn diag(&self) -> String {
        format!(
            "{}--- etcd log tail ---\n{}",
            topo::logs(&self.daemons()),
            vswitch_lab::tail(&self.etcd.log_text(), 20)
        )
    }
}

fn node_cfg(n: &Node, k: u8, etcd: &Etcd) -> String {
    format!(
        "{}[cluster]\netcd_endpoints = [\"{}\"]\nlease_ttl_secs = 3\n\
         [[network]]\nname = \"{L2}\"\nkind = \"l2\"\nsubnet = \"192.168.3.0/24\"\nvni = 300\n\
         [[network]]\nname = \"{L3}\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
         blocks = [\"10.244.{k}.0/26\"]\nencapsulation = \"ipip\"\nmode = \"always\"\n",
        n.node_toml(None),
        etcd.endpoint()
    )
}

/// Starts node `n<k>` (underlay 10.1.5.1<k>) with its daemon and its two pods.
fn add_member(c: &mut Cluster, k: u8) -> Member {
    let node = topo::node(&mut c.lab, &c.rack, &format!("n{k}"), 10 + k).unwrap();
    let d = c
        .lab
        .daemon(&node.ns, &node_cfg(&node, k, &c.etcd))
        .unwrap_or_else(|e| panic!("vswitchd on n{k}: {e:#}\n{}", c.diag()));
    let pods = add_pods(c, &d, k);
    Member { node, d, pods }
}

fn add_pods(c: &mut Cluster, d: &Daemon, k: u8) -> [Pod; 2] {
    let a = topo::new_pod(
        &mut c.lab,
        d,
        &format!("a{k}"),
        L2,
        "eth0",
        &format!("02:00:00:03:00:{k:02x}"),
        &format!("192.168.3.{}", 10 + k),
    )
    .unwrap();
    let b = topo::new_pod(
        &mut c.lab,
        d,
        &format!("b{k}"),
        L3,
        "eth0",
        &format!("02:00:00:f4:00:{k:02x}"),
        &format!("10.244.{k}.10"),
    )
    .unwrap();
    for p in [&a, &b] {
        // ARP retries every 100 ms instead of 1 s, so reachability times measure the switch.
        c.lab
            .sysctl(&p.ns, "net.ipv4.neigh.eth0.retrans_time_ms", "100")
            .unwrap();
    }
    [a, b]
}

/// etcd and nodes n1..=n<count> with their pods.
fn cluster(count: u8) -> Cluster {
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.5").unwrap();
    let etcd = topo::etcd(&mut lab, &rack, "etcd", 2).unwrap();
    let mut c = Cluster {
        lab,
        rack,
        etcd,
        members: Vec::new(),
    };
    for k in 1..=count {
        let m = add_member(&mut c, k);
        c.members.push(m);
    }
    c
}

/// Waits until every daemon lists exactly the other members as peers; problems otherwise.
fn wait_membership(c: &Cluster, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut problems = Vec::new();
        for m in &c.members {
            let mut want: Vec<String> = c
                .members
                .iter()
                .filter(|o| o.node.name != m.node.name)
                .map(|o| o.node.name.clone())
                .collect();
            want.sort();
            match topo::peers(&m.d) {
                Ok(peers) => {
                    let mut names: Vec<String> = peers
                        .iter()
                        .filter_map(|p| p["name"].as_str().map(str::to_string))
                        .collect();
                    names.sort();
                    if names != want {
                        problems.push(format!(
                            "{}: peers {names:?}, expected {want:?}: {peers:?}",
                            m.node.name
                        ));
                    }
                    for p in &peers {
                        if p["source"] != "etcd" {
                            problems.push(format!("{}: peer not from etcd: {p}", m.node.name));
                        }
                        let o = c.members.iter().find(|o| p["name"] == o.node.name.as_str());
                        if let Some(o) = o {
                            if p["underlay_ip"] != o.node.ip.as_str() {
                                problems.push(format!(
                                    "{}: peer {} underlay_ip should be {}: {p}",
                                    m.node.name, o.node.name, o.node.ip
                                ));
                            }
                            // The peer's L3 block, published through etcd.
                            let block = format!("10.244.{}.0/26", &o.node.name[1..]);
                            let has_block = p["blocks"][L3]
                                .as_array()
                                .is_some_and(|a| a.iter().any(|b| b == block.as_str()));
                            if !has_block {
                                problems.push(format!(
                                    "{}: peer {} should serve {L3} block {block}: {p}",
                                    m.node.name, o.node.name
                                ));
                            }
                        }
                    }
                }
                Err(e) => problems.push(format!("{}: peers: {e:#}", m.node.name)),
            }
        }
        if problems.is_empty() || Instant::now() > deadline {
            return problems;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every pod pings every other pod of its network; problems otherwise.
fn all_pairs(c: &Cluster, members: &[&Member]) -> Vec<String> {
    let mut problems = Vec::new();
    for net in 0..2 {
        for a in members {
            for b in members {
                if a.node.name == b.node.name {
                    continue;
                }
                let (pa, pb) = (&a.pods[net], &b.pods[net]);
                let ok = topo::ping_until(&c.lab, &pa.ns, &pb.ip, None, Duration::from_secs(3))
                    .is_some()
                    && topo::ping_count(&c.lab, &pa.ns, &pb.ip, None, 2) == 2;
                if !ok {
                    problems.push(format!(
                        "{}: {} ({}) on {} -> {} ({}) on {} failed",
                        pa.network, pa.id, pa.ip, a.node.name, pb.id, pb.ip, b.node.name
                    ));
                }
            }
        }
    }
    problems
}

fn check(test: &str, c: &Cluster, t0: Instant, problems: Vec<String>) {
    eprintln!("{test}: {:?}", t0.elapsed());
    for m in &c.members {
        if !m.d.is_alive() {
            panic!("{test}: vswitchd on {} died\n{}", m.node.name, c.diag());
        }
    }
    if !problems.is_empty() {
        panic!(
            "{test}: {} problem(s):\n{}\n{}",
            problems.len(),
            problems.join("\n"),
            c.diag()
        );
    }
}

#[test]
fn overlay_cluster_membership_and_late_node() {
    let test = "overlay_cluster_membership_and_late_node";
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let mut c = cluster(3);
    let mut problems = wait_membership(&c, Duration::from_secs(8));
    let ms: Vec<&Member> = c.members.iter().collect();
    problems.extend(all_pairs(&c, &ms));
    if !problems.is_empty() {
        check(test, &c, t0, problems);
        return;
    }

    // A fourth node joins; its pods must be reachable within 2 s of being added.
    let node = topo::node(&mut c.lab, &c.rack, "n4", 14).unwrap();
    let d = c
        .lab
        .daemon(&node.ns, &node_cfg(&node, 4, &c.etcd))
        .unwrap_or_else(|e| panic!("vswitchd on n4: {e:#}\n{}", c.diag()));
    let mut pods = Vec::new();
    for (net, name, mac, ip) in [
        (L2, "a4", "02:00:00:03:00:04", "192.168.3.14"),
        (L3, "b4", "02:00:00:f4:00:04", "10.244.4.10"),
    ] {
        let ns = c.lab.netns(name).unwrap();
        let p = topo::attach_pod(&d, &ns, name, net, "eth0", mac, ip).unwrap();
        let added = Instant::now();
        let net_i = usize::from(net == L3);
        // From n1's pod of the network to the new pod, and back.
        let from = &c.members[0].pods[net_i];
        let there = topo::ping_until(&c.lab, &from.ns, &p.ip, None, Duration::from_secs(5))
            .map(|_| added.elapsed());
        let back = topo::ping_until(&c.lab, &p.ns, &from.ip, None, Duration::from_secs(5))
            .map(|_| added.elapsed());
        eprintln!(
            "{test}: {net}: new pod {} reachable from {} after {there:?}, reaches it after {back:?}",
            p.id, from.id
        );
        match there {
            Some(t) if t < Duration::from_secs(2) => {}
            other => problems.push(format!(
                "{net}: pod {} ({}) on the new node n4 reachable from {} after {other:?} \
                 (None = not within 5 s), expected < 2 s",
                p.id, p.ip, from.id
            )),
        }
        if back.is_none() {
            problems.push(format!("{net}: new pod {} cannot reach {}", p.id, from.id));
        }
        pods.push(p);
    }
    let pods: [Pod; 2] = pods.try_into().unwrap();
    c.members.push(Member { node, d, pods });
    problems.extend(wait_membership(&c, Duration::from_secs(5)));
    let ms: Vec<&Member> = c.members.iter().collect();
    problems.extend(all_pairs(&c, &ms));
    check(test, &c, t0, problems);
}

#[test]
fn overlay_cluster_dead_node_leaves_after_lease() {
    let test = "overlay_cluster_dead_node_leaves_after_lease";
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let mut c = cluster(3);
    let mut problems = wait_membership(&c, Duration::from_secs(8));
    if !problems.is_empty() {
        check(test, &c, t0, problems);
        return;
    }
    // SIGKILL: no chance to deregister; only the lease (3 s) removes it.
    let victim = c.members.pop().unwrap();
    vswitch_lab::run_ok(
        std::process::Command::new("kill").args(["-9", &victim.d.pid().to_string()]),
    )
    .unwrap();
    let killed = Instant::now();
    let mut gone_after = Vec::new();
    let deadline = killed + Duration::from_secs(10);
    let mut pending: Vec<&Member> = c.members.iter().collect();
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|m| match topo::peer_names(&m.d) {
            Ok(names) if !names.contains(&victim.node.name) => {
                gone_after.push((m.node.name.clone(), killed.elapsed()));
                false
            }
            _ => true,
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{test}: {} left the peers of {gone_after:?}",
        victim.node.name
    );
    for m in pending {
        problems.push(format!(
            "{}: {} still in `peers` 10 s after SIGKILL (lease_ttl_secs = 3): {:?}",
            m.node.name,
            victim.node.name,
            topo::peers(&m.d).ok()
        ));
    }
    // The survivors still reach each other.
    let ms: Vec<&Member> = c.members.iter().collect();
    problems.extend(all_pairs(&c, &ms));
    check(test, &c, t0, problems);
    drop(victim);
}

#[test]
fn overlay_cluster_survives_etcd_outage() {
    let test = "overlay_cluster_survives_etcd_outage";
    if !require_root(test) {
        return;
    }
    let _serial = topo::serial();
    let t0 = Instant::now();
    let c = cluster(3);
    let mut problems = wait_membership(&c, Duration::from_secs(8));
    let ms: Vec<&Member> = c.members.iter().collect();
    problems.extend(all_pairs(&c, &ms[..2]));
    if !problems.is_empty() {
        check(test, &c, t0, problems);
        return;
    }
    // Long pings n1 -> n2 in both networks across a 10 s etcd outage.
    let mut pingers = Vec::new();
    for net in 0..2 {
        let (a, b) = (&c.members[0].pods[net], &c.members[1].pods[net]);
        let log = c.lab.dir.join(format!("outage-ping-{net}.log"));
        let p = topo::Bounded::start(
            &a.ns,
            40,
            &["ping", "-n", "-c", "80", "-i", "0.2", "-W", "1", &b.ip],
            &log,
        )
        .unwrap();
        pingers.push((a.clone(), b.clone(), p, log));
    }
    std::thread::sleep(Duration::from_secs(2));
    c.etcd.signal("STOP").unwrap();
    std::thread::sleep(Duration::from_secs(10));
    c.etcd.signal("CONT").unwrap();
    for (a, b, mut p, log) in pingers {
        let done = p.wait(Duration::from_secs(20));
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        let sent = topo::parse_ping_transmitted(&out).unwrap_or(0);
        let got = topo::parse_ping_received(&out).unwrap_or(0);
        eprintln!(
            "{test}: {}: {} -> {}: {got}/{sent} replies",
            a.network, a.id, b.id
        );
        if !done || sent < 70 || (got as f64) < sent as f64 * 0.9 {
            problems.push(format!(
                "{}: ping {} -> {} across the etcd outage: {got}/{sent} replies (finished {done}), \
                 expected >= 90 %:\n{}",
                a.network,
                a.id,
                b.id,
                vswitch_lab::tail(&out, 6)
            ));
        }
    }
    // Membership is intact (or restored) once etcd is back.
    problems.extend(wait_membership(&c, Duration::from_secs(8)));
    problems.extend(all_pairs(&c, &ms));
    check(test, &c, t0, problems);
}
