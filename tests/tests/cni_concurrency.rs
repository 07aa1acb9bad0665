//! Concurrent CNI operations against one daemon (issue 10: the daemon does not hold its state
//! lock across pod plumbing; an ADD is reserved, plumbed unlocked, then committed or rolled
//! back). Driven through the plugin binary, one thread per runtime call:
//! - 16 parallel ADDs (tap and AF_PACKET mixed, one netns each, the network created on first
//!   use by whichever comes first) all succeed with distinct addresses, and every pod reaches
//!   the gateway and another pod; then 16 parallel DELs leave no interface, port or address;
//! - two parallel ADDs asking for the same static address (built-in IPAM, and a delegated
//!   `static` IPAM, where the conflict is found against the other's reservation): exactly one
//!   wins, the other fails with "address unavailable" and leaves nothing behind.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vswitch_lab::cni::{self, Outcome};
use vswitch_lab::topo;
use vswitch_lab::{require_root, Daemon, Lab};

/// CNI error code for a requested address that is taken (the plugin's `ADDRESS_UNAVAILABLE`).
const ADDRESS_UNAVAILABLE: u64 = 101;
const PODS: usize = 16;

/// A bridge-style config on bridge `bridge` (the daemon's domain, created on first use).
fn conf(d: &Daemon, bridge: &str, subnet: &str, attach: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": bridge,
        "type": "vswitch",
        "bridge": bridge,
        "attach": attach,
        "socket": d.socket.display().to_string(),
        "capabilities": {"ips": true, "mac": true},
        "ipam": {"type": "vswitch", "subnet": subnet}
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn ip_of(result: &Value) -> Option<String> {
    Some(
        result["ips"][0]["address"]
            .as_str()?
            .split('/')
            .next()?
            .to_string(),
    )
}

fn has_eth0(lab: &Lab, ns: &str) -> bool {
    lab.link_names(ns)
        .map(|l| l.iter().any(|n| n == "eth0"))
        .unwrap_or(false)
}

fn attach_of(i: usize) -> &'static str {
    if i.is_multiple_of(2) {
        "tap"
    } else {
        "af_packet"
    }
}

#[test]
fn parallel_adds_and_dels_of_many_pods() {
    let test = "parallel_adds_and_dels_of_many_pods";
    if !require_root(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let pods: Vec<String> = (0..PODS)
        .map(|i| lab.netns(&format!("p{i}")).unwrap())
        .collect();
    let confs: Vec<Value> = (0..PODS)
        .map(|i| conf(&d, "br-cc", "192.168.12.0/24", attach_of(i), json!({})))
        .collect();

    let t0 = Instant::now();
    let adds: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let (ns, c) = (&pods[i], &confs[i]);
                s.spawn(move || cni::call("ADD", &format!("cid-{i}"), ns, c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let add_time = t0.elapsed();
    let mut ips = BTreeSet::new();
    for (i, o) in adds.iter().enumerate() {
        assert!(
            o.ok,
            "{test}: ADD {i} ({}): {} {}\n{}",
            attach_of(i),
            o.out,
            o.stderr,
            d.log_tail(40)
        );
        let ip = ip_of(&o.out).unwrap_or_else(|| panic!("{test}: ADD {i}: no IP in {}", o.out));
        assert!(ips.insert(ip.clone()), "{test}: {ip} handed out twice");
    }
    println!("{test}: {PODS} parallel ADDs in {add_time:.2?}");
    let ports = d.ports().unwrap();
    assert_eq!(ports.len(), PODS, "{test}: port list: {ports:?}");
    let allocs = d.ctl_json(&["ipam", "show", "br-cc"]).unwrap();
    assert_eq!(
        allocs.as_array().map(Vec::len),
        Some(PODS),
        "{test}: allocations: {allocs}"
    );

    // Every pod reaches the gateway and the next pod (tap ↔ AF_PACKET).
    let ip_list: Vec<String> = adds.iter().map(|o| ip_of(&o.out).unwrap()).collect();
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let (lab, ns, next) = (&lab, &pods[i], &ip_list[(i + 1) % PODS]);
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for dst in ["192.168.12.1", next.as_str()] {
                        if topo::ping_until(lab, ns, dst, None, Duration::from_secs(8)).is_none() {
                            bad.push(format!("pod {i} ({}) -> {dst}", attach_of(i)));
                        }
                    }
                    bad
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "{test}: unreachable: {failures:?}\n{}",
        d.log_tail(40)
    );

    let t0 = Instant::now();
    let dels: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                let (ns, c) = (&pods[i], &confs[i]);
                s.spawn(move || cni::call("DEL", &format!("cid-{i}"), ns, c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    println!("{test}: {PODS} parallel DELs in {:.2?}", t0.elapsed());
    for (i, o) in dels.iter().enumerate() {
        assert!(o.ok, "{test}: DEL {i}: {} {}", o.out, o.stderr);
        assert!(
            !has_eth0(&lab, &pods[i]),
            "{test}: eth0 left in pod {i} after DEL: {:?}",
            lab.link_names(&pods[i])
        );
    }
    assert!(d.ports().unwrap().is_empty(), "{test}: ports left");
    assert_eq!(
        d.ctl_json(&["ipam", "show", "br-cc"]).unwrap(),
        json!([]),
        "{test}: addresses left"
    );
    // No host veth end left behind either (AF_PACKET pods).
    let host_links = lab.link_names(&node).unwrap();
    assert!(
        !host_links.iter().any(|l| l.starts_with("vsh")),
        "{test}: host veth ends left: {host_links:?}"
    );
}

/// Two ADDs racing for one address: one wins, the loser fails cleanly.
fn same_ip_race(test: &str, bridge: &str, subnet: &str, ip: &str, ipam: Option<Value>) {
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let (qa, qb) = (lab.netns("qa").unwrap(), lab.netns("qb").unwrap());
    let conf_for = |attach: &str, mac: &str| {
        match &ipam {
            // The delegated plugin's config names the address itself.
            Some(i) => {
                let mut c = conf(
                    &d,
                    bridge,
                    subnet,
                    attach,
                    json!({"runtimeConfig": {"mac": mac}}),
                );
                c["ipam"] = i.clone();
                // The reference plugins here speak up to 1.0.0.
                c["cniVersion"] = json!("1.0.0");
                c
            }
            None => conf(
                &d,
                bridge,
                subnet,
                attach,
                json!({"runtimeConfig": {"ips": [format!("{ip}/24")], "mac": mac}}),
            ),
        }
    };
    let ca = conf_for("tap", "02:00:00:00:aa:01");
    let cb = conf_for("af_packet", "02:00:00:00:bb:01");
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| cni::call("ADD", "cid-a", &qa, &ca));
        let b = s.spawn(|| cni::call("ADD", "cid-b", &qb, &cb));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(
        a.ok != b.ok,
        "{test}: exactly one ADD must win: a {} {} / b {} {}\n{}",
        a.out,
        a.stderr,
        b.out,
        b.stderr,
        d.log_tail(30)
    );
    let (win, lose, win_ns, lose_ns, win_cid) = if a.ok {
        (&a, &b, &qa, &qb, "cid-a")
    } else {
        (&b, &a, &qb, &qa, "cid-b")
    };
    println!(
        "{test}: {win_cid} won; loser: {}",
        lose.out["msg"].as_str().unwrap_or_default()
    );
    assert_eq!(
        lose.out["code"].as_u64(),
        Some(ADDRESS_UNAVAILABLE),
        "{test}: loser's error: {}",
        lose.out
    );
    assert_eq!(ip_of(&win.out).as_deref(), Some(ip), "{test}: {}", win.out);
    assert!(has_eth0(&lab, win_ns), "{test}: winner has no eth0");
    assert!(
        !has_eth0(&lab, lose_ns),
        "{test}: loser's netns has an interface: {:?}",
        lab.link_names(lose_ns)
    );
    let ports = d.ports().unwrap();
    assert_eq!(ports.len(), 1, "{test}: ports: {ports:?}");
    assert_eq!(ports[0]["container_id"], win_cid, "{test}: {ports:?}");
    // Built-in IPAM: only the winner holds an address.
    if ipam.is_none() {
        let allocs = d.ctl_json(&["ipam", "show", bridge]).unwrap();
        let holders: Vec<&Value> = allocs
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["container_id"])
            .collect();
        assert_eq!(holders, vec![win_cid], "{test}: allocations: {allocs}");
    }
    let host_links = lab.link_names(&node).unwrap();
    let host_ends = host_links.iter().filter(|l| l.starts_with("vsh")).count();
    let expected = usize::from(win_cid == "cid-b");
    assert_eq!(
        host_ends, expected,
        "{test}: host veth ends: {host_links:?}"
    );
    // The pod that won works.
    let gw = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    assert!(
        topo::ping_until(&lab, win_ns, &gw, None, Duration::from_secs(5)).is_some(),
        "{test}: winner cannot reach the gateway {gw}\n{}",
        d.log_tail(30)
    );
}

#[test]
fn parallel_adds_of_one_static_ip_builtin_ipam() {
    let test = "parallel_adds_of_one_static_ip_builtin_ipam";
    if !require_root(test) {
        return;
    }
    same_ip_race(test, "br-race", "192.168.13.0/24", "192.168.13.77", None);
}

/// A delegated IPAM (the reference `static` plugin) hands both the same address: the daemon
/// finds the conflict against the other ADD's reservation (or its committed port).
#[test]
fn parallel_adds_of_one_static_ip_delegated_ipam() {
    let test = "parallel_adds_of_one_static_ip_delegated_ipam";
    if !require_root(test) {
        return;
    }
    if !std::path::Path::new("/usr/lib/cni/static").exists() {
        eprintln!("{test}: skipped, no /usr/lib/cni/static");
        return;
    }
    let ipam = json!({"type": "static", "addresses": [{"address": "192.168.14.77/24",
                      "gateway": "192.168.14.1"}]});
    same_ip_race(
        test,
        "br-race2",
        "192.168.14.0/24",
        "192.168.14.77",
        Some(ipam),
    );
}
