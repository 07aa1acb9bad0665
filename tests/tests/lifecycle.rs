//! Port lifecycle and CLI errors: `port del` removes the pod's interface and its FDB entries,
//! re-adding the same port works; failing requests exit 1 with the right error kind and change
//! nothing (port list, pod and node namespaces); the same IP (and MAC) in two networks is fine.

use std::time::{Duration, Instant};

use vswitch_lab::{frame_src_mac, require_root, show_lines, Daemon, Lab, Pod};

fn net_cfg(name: &str, attach: &str) -> String {
    format!("[[network]]\nname = \"{name}\"\nsubnet = \"192.168.1.0/24\"\nattach = \"{attach}\"\n")
}

fn port_ids(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .ports()
        .unwrap()
        .iter()
        .filter_map(|p| p["id"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// Waits until `cond` holds or `timeout` passes; returns the last result.
fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn del_and_readd(test: &str, attach: &str) {
    if !require_root(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, &net_cfg("net", attach)).unwrap();
    let p1 = lab
        .add_pod(&d, "p1", "net", "02:00:00:00:00:31", "192.168.1.31")
        .unwrap();
    let p2 = lab
        .add_pod(&d, "p2", "net", "02:00:00:00:00:32", "192.168.1.32")
        .unwrap();
    let ping = |a: &Pod, b: &Pod| lab.ping_until(&a.ns, &b.ip, Duration::from_secs(10));
    assert!(ping(&p1, &p2), "initial ping; log:\n{}", d.log_tail(60));
    assert!(ping(&p2, &p1), "initial ping; log:\n{}", d.log_tail(60));
    assert!(
        d.fdb_macs("net").unwrap().contains(&p1.mac),
        "fdb lacks {} before port del: {:?}",
        p1.mac,
        d.fdb("net").unwrap()
    );
    let ports = d.ports().unwrap();
    let e = ports
        .iter()
        .find(|e| e["id"] == p1.id.as_str())
        .unwrap_or_else(|| panic!("no {} in port list {ports:?}", p1.id));
    assert_eq!(e["attach"], attach, "{e}");
    let host_if = e["host_ifname"].as_str().unwrap_or("").to_string();
    if attach == "af_packet" {
        let links = lab.link_names(&node).unwrap();
        assert!(
            links.contains(&host_if),
            "host end {host_if:?} of {} not in the node netns: {links:?}",
            p1.id
        );
    }

    // Delete.
    d.ctl(&["port", "del", &p1.id])
        .unwrap_or_else(|e| panic!("port del: {e:#}\n{}", d.log_tail(60)));
    let gone = eventually(Duration::from_secs(5), || {
        lab.exec(&p1.ns, &["ip", "link", "show", "eth1"])
            .map(|o| !o.status.success())
            .unwrap_or(false)
    });
    assert!(
        gone,
        "eth1 still exists in {} after port del: {:?}\nlog:\n{}",
        p1.ns,
        lab.link_names(&p1.ns),
        d.log_tail(60)
    );
    assert!(
        !port_ids(&d).contains(&p1.id),
        "port list still has {}: {:?}",
        p1.id,
        d.ports()
    );
    let fdb = d.fdb_macs("net").unwrap();
    assert!(
        !fdb.contains(&p1.mac),
        "fdb still has {} after port del: {:?}",
        p1.mac,
        d.fdb("net").unwrap()
    );
    if attach == "af_packet" {
        let ok = eventually(Duration::from_secs(5), || {
            !lab.link_names(&node).unwrap_or_default().contains(&host_if)
        });
        assert!(
            ok,
            "host veth end {host_if} still in the node netns after port del: {:?}",
            lab.link_names(&node)
        );
    }
    let (ok, out) = lab.exec_bounded(
        &p2.ns,
        10,
        &["ping", "-n", "-c", "2", "-i", "0.3", "-W", "1", &p1.ip],
    );
    assert!(!ok, "{} still reaches deleted {}:\n{out}", p2.id, p1.ip);
    // Deleting again: unknown_port.
    let o = d.ctl_output(&["port", "del", &p1.id]).unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "second port del: {err}");
    assert!(
        err.starts_with("vswitchctl: unknown_port:"),
        "second port del stderr: {err}"
    );

    // Re-add the same port: traffic flows again.
    d.port_add(&p1.ns, "net", "eth1", &p1.id, Some(&p1.mac), &[&p1.ip])
        .unwrap_or_else(|e| panic!("re-adding {}: {e:#}\n{}", p1.id, d.log_tail(60)));
    assert!(
        ping(&p1, &p2),
        "{} cannot ping {} after re-adding; log:\n{}",
        p1.id,
        p2.ip,
        d.log_tail(60)
    );
    assert!(
        ping(&p2, &p1),
        "{} cannot ping {} after re-adding; log:\n{}",
        p2.id,
        p1.ip,
        d.log_tail(60)
    );
    assert!(
        d.fdb_macs("net").unwrap().contains(&p1.mac),
        "fdb lacks {} after re-adding: {:?}",
        p1.mac,
        d.fdb("net").unwrap()
    );
    assert_eq!(port_ids(&d), vec![p1.id.clone(), p2.id.clone()]);
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
}

#[test]
fn port_del_and_readd_tap() {
    del_and_readd("port_del_and_readd_tap", "tap");
}

#[test]
fn port_del_and_readd_af_packet() {
    del_and_readd("port_del_and_readd_af_packet", "af_packet");
}

/// What a failed request must leave untouched.
#[derive(Debug, PartialEq)]
struct Snapshot {
    ports: Vec<serde_json::Value>,
    networks: Vec<serde_json::Value>,
    pod_links: Vec<String>,
    pod_addrs: String,
    node_links: Vec<String>,
    p1_links: Vec<String>,
    p1_addrs: String,
}

impl Snapshot {
    /// The fields that differ, before and after.
    fn diff(&self, after: &Snapshot) -> String {
        let mut v = Vec::new();
        macro_rules! field {
            ($f:ident) => {
                if self.$f != after.$f {
                    v.push(format!(
                        "  {}: before {:?}\n  {}: after  {:?}",
                        stringify!($f),
                        self.$f,
                        stringify!($f),
                        after.$f
                    ));
                }
            };
        }
        field!(ports);
        field!(networks);
        field!(pod_links);
        field!(pod_addrs);
        field!(node_links);
        field!(p1_links);
        field!(p1_addrs);
        v.join("\n")
    }
}

/// IPv4 addresses in `ns` (IPv6 link-local addresses change state by themselves: DAD).
fn ipv4_addrs(ns: &str) -> String {
    vswitch_lab::run_ok(
        std::process::Command::new("ip").args(["-n", ns, "-4", "-o", "addr", "show"]),
    )
    .unwrap_or_else(|e| format!("{e:#}"))
}

fn cli_errors(test: &str, attach: &str) {
    if !require_root(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, &net_cfg("net", attach)).unwrap();
    let p1 = lab
        .add_pod(&d, "p1", "net", "02:00:00:00:00:41", "192.168.1.41")
        .unwrap();
    let pod = lab.netns("p2").unwrap();
    let missing_ns = lab.name("nosuchns");
    let snap = |lab: &Lab| {
        let mut networks = d.networks().unwrap();
        networks.sort_by_key(|n| n["name"].to_string());
        Snapshot {
            ports: d.ports().unwrap(),
            networks,
            pod_links: lab.link_names(&pod).unwrap(),
            pod_addrs: ipv4_addrs(&pod),
            node_links: lab.link_names(&node).unwrap(),
            p1_links: lab.link_names(&p1.ns).unwrap(),
            p1_addrs: ipv4_addrs(&p1.ns),
        }
    };
    let base = snap(&lab);
    let add = |ns: &str, net: &str, id: &str, ip: &str| -> Vec<String> {
        [
            "port",
            "add",
            "--netns",
            ns,
            "--network",
            net,
            "--ifname",
            "eth1",
            "--id",
            id,
            "--mac",
            "02:00:00:00:00:42",
            "--ip",
            ip,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "unknown network",
            add(&pod, "nosuch", "p2", "192.168.1.42"),
            "unknown_network",
        ),
        (
            "IP outside the subnet",
            add(&pod, "net", "p2", "192.168.2.42"),
            "address_conflict",
        ),
        (
            "IP already used in the network",
            add(&pod, "net", "p2", &p1.ip),
            "address_conflict",
        ),
        (
            "IP equal to the gateway",
            add(&pod, "net", "p2", "192.168.1.1"),
            "address_conflict",
        ),
        (
            "missing netns",
            add(&missing_ns, "net", "p2", "192.168.1.42"),
            "netns_not_found",
        ),
        (
            "port id already used",
            add(&pod, "net", &p1.id, "192.168.1.42"),
            "port_exists",
        ),
        (
            "network del while it has ports",
            vec!["network".into(), "del".into(), "net".into()],
            "network_in_use",
        ),
        (
            "network add with an existing name",
            ["network", "add", "net", "--subnet", "10.9.0.0/24"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            "network_exists",
        ),
        (
            "port del of an unknown port",
            vec!["port".into(), "del".into(), "nosuch".into()],
            "unknown_port",
        ),
        (
            "fdb show of an unknown network",
            vec!["fdb".into(), "show".into(), "nosuch".into()],
            "unknown_network",
        ),
        (
            "network del of an unknown network",
            vec!["network".into(), "del".into(), "nosuch".into()],
            "unknown_network",
        ),
        // The spec names no kind for these; they must fail cleanly all the same ("*": any kind).
        (
            "interface name already present in the pod (another port's eth1)",
            add(&p1.ns, "net", "p2", "192.168.1.42"),
            "*",
        ),
        (
            "network address of the subnet as pod IP",
            add(&pod, "net", "p2", "192.168.1.0"),
            "*",
        ),
        (
            "broadcast address of the subnet as pod IP",
            add(&pod, "net", "p2", "192.168.1.255"),
            "*",
        ),
        (
            "interface name longer than 15 bytes",
            [
                "port",
                "add",
                "--netns",
                &pod,
                "--network",
                "net",
                "--ifname",
                "a-very-long-ifname",
                "--id",
                "p2",
                "--ip",
                "192.168.1.42",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            "*",
        ),
    ];
    const KINDS: &[&str] = &[
        "bad_request",
        "invalid_config",
        "unknown_network",
        "network_exists",
        "network_in_use",
        "unknown_port",
        "port_exists",
        "address_conflict",
        "netns_not_found",
        "system",
    ];
    let mut problems = Vec::new();
    for (what, args, kind) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = d.ctl_output(&a).unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        if o.status.code() != Some(1) {
            problems.push(format!(
                "{what}: `vswitchctl {}` exited {:?}, expected 1; stdout {:?} stderr {err:?}",
                a.join(" "),
                o.status.code(),
                String::from_utf8_lossy(&o.stdout)
            ));
        }
        let want = format!("vswitchctl: {kind}:");
        let kind_ok = if *kind == "*" {
            KINDS
                .iter()
                .any(|k| err.starts_with(&format!("vswitchctl: {k}:")))
        } else {
            err.starts_with(&want)
        };
        if !kind_ok {
            problems.push(format!(
                "{what}: stderr should start with {want:?}, got {err:?}"
            ));
        }
        let now = snap(&lab);
        if now != base {
            problems.push(format!(
                "{what}: state changed by a failed request:\n{}",
                base.diff(&now)
            ));
        }
    }
    // `--json` errors keep the same exit status and stderr format.
    let o = d.ctl_output(&["--json", "port", "del", "nosuch"]).unwrap();
    if o.status.code() != Some(1)
        || !String::from_utf8_lossy(&o.stderr).starts_with("vswitchctl: unknown_port:")
    {
        problems.push(format!(
            "--json port del nosuch: exit {:?}, stderr {:?}",
            o.status.code(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    // After all that the state still works: a valid add in the same pod succeeds and pings.
    match d.port_add(
        &pod,
        "net",
        "eth1",
        "p2",
        Some("02:00:00:00:00:42"),
        &["192.168.1.42"],
    ) {
        Ok(_) => {
            if !lab.ping_until(&pod, &p1.ip, Duration::from_secs(10)) {
                problems.push(format!(
                    "{pod} cannot ping {} after the failed requests",
                    p1.ip
                ));
            }
        }
        Err(e) => problems.push(format!("valid port add after the failures: {e:#}")),
    }
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
    assert!(
        problems.is_empty(),
        "{test}: {} problem(s):\n{}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n"),
        d.log_tail(60)
    );
}

#[test]
fn cli_errors_change_nothing_tap() {
    cli_errors("cli_errors_change_nothing_tap", "tap");
}

#[test]
fn cli_errors_change_nothing_af_packet() {
    cli_errors("cli_errors_change_nothing_af_packet", "af_packet");
}

/// The same IP in two networks is accepted; `same_mac` also reuses the MAC.
fn same_address(test: &str, same_mac: bool) {
    if !require_root(test) {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let cfg = format!("{}{}", net_cfg("neta", "tap"), net_cfg("netb", "af_packet"));
    let d = lab.daemon(&node, &cfg).unwrap();
    let mac_b = if same_mac {
        "02:00:00:00:00:51"
    } else {
        "02:00:00:00:00:52"
    };
    let a1 = lab
        .add_pod(&d, "a1", "neta", "02:00:00:00:00:51", "192.168.1.51")
        .unwrap();
    let b1 = lab
        .add_pod(&d, "b1", "netb", mac_b, "192.168.1.51")
        .unwrap_or_else(|e| panic!("same IP in another network refused: {e:#}"));
    let a2 = lab
        .add_pod(&d, "a2", "neta", "02:00:00:00:00:61", "192.168.1.61")
        .unwrap();
    let b2 = lab
        .add_pod(&d, "b2", "netb", "02:00:00:00:00:62", "192.168.1.61")
        .unwrap();
    let ports = d.ports().unwrap();
    assert_eq!(ports.len(), 4, "{ports:?}");
    let mut problems = Vec::new();
    for (x, y) in [(&a1, &a2), (&a2, &a1), (&b1, &b2), (&b2, &b1)] {
        for dst in [y.ip.as_str(), "192.168.1.1"] {
            if !lab.ping_until(&x.ns, dst, Duration::from_secs(10)) {
                problems.push(format!("{} ({}) cannot ping {dst}", x.id, x.network));
            }
        }
        let neigh = lab
            .exec_ok(&x.ns, &["ip", "neigh", "show", &y.ip])
            .unwrap_or_default();
        if !neigh.to_ascii_lowercase().contains(&y.mac) {
            problems.push(format!(
                "{}: neighbour for {} is not its own network's {}: {neigh}",
                x.id, y.ip, y.mac
            ));
        }
    }
    // a1 and b1 share the IP (and maybe the MAC): a2's traffic to it reaches a1 only.
    let cap_a = lab.capture(&a1.ns, "eth1", "").unwrap();
    let cap_b = lab.capture(&b1.ns, "eth1", "").unwrap();
    let (ok, out) = lab.exec_bounded(
        &a2.ns,
        10,
        &["ping", "-n", "-c", "5", "-i", "0.2", "-W", "1", &a1.ip],
    );
    if !ok {
        problems.push(format!("{} cannot ping {}:\n{out}", a2.id, a1.ip));
    }
    let lines_a = lab.finish_capture(cap_a).unwrap();
    let lines_b = lab.finish_capture(cap_b).unwrap();
    let from_a2 = |lines: &[String]| {
        lines
            .iter()
            .filter(|l| frame_src_mac(l) == Some(a2.mac.as_str()))
            .count()
    };
    if from_a2(&lines_b) > 0 {
        problems.push(format!(
            "{} (netb) received frames from {} (neta): {}",
            b1.id,
            a2.id,
            show_lines(&lines_b, 30)
        ));
    }
    if from_a2(&lines_a) < 5 {
        problems.push(format!(
            "{} (neta) saw fewer than 5 frames from {}: {}",
            a1.id,
            a2.id,
            show_lines(&lines_a, 30)
        ));
    }
    for (n, own) in [("neta", [&a1, &a2]), ("netb", [&b1, &b2])] {
        let fdb = d.fdb(n).unwrap();
        for p in own {
            let e = fdb
                .iter()
                .find(|e| e["mac"].as_str().map(str::to_ascii_lowercase) == Some(p.mac.clone()));
            match e {
                Some(e) if e["port"] == p.id.as_str() => {}
                other => problems.push(format!(
                    "fdb show {n}: {} should be on port {}, found {other:?}; fdb {fdb:?}",
                    p.mac, p.id
                )),
            }
        }
    }
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
    assert!(
        problems.is_empty(),
        "{test}: {} problem(s):\n{}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n"),
        d.log_tail(60)
    );
}

#[test]
fn same_ip_in_two_networks_is_accepted() {
    same_address("same_ip_in_two_networks_is_accepted", false);
}

#[test]
fn same_ip_and_mac_in_two_networks_is_accepted() {
    same_address("same_ip_and_mac_in_two_networks_is_accepted", true);
}
