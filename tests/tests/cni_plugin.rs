//! The CNI plugin driven the way Multus drives a delegate: JSON on stdin with runtimeConfig
//! (capabilities `ips`, `mac`), `CNI_ARGS=IgnoreUnknown=true;K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`,
//! ifname net1. Covers CHECK, STATUS, GC, DEL after the netns is gone, concurrency, a daemon
//! `kill -9` in the middle of a burst of ADDs, and bad inputs (right error code, nothing changed).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vswitch_lab::cni::{self, Outcome, CNI_PATH};
use vswitch_lab::{require_root, run, Daemon, Lab};

/// The delegate config Multus builds from a NAD plus its runtimeConfig.
fn conf(d: &Daemon, version: &str, domain: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": version,
        "name": domain,
        "type": "vswitch",
        "socket": d.socket.display().to_string(),
        "ipam": {"type": "vswitch", "subnet": "192.168.1.0/24", "rangeStart": "192.168.1.100",
                 "rangeEnd": "192.168.1.220", "routes": [{"dst": "10.96.0.0/12"}]}
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn multus_env(cid: &str, netns: &str, ifname: &str, pod: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", ifname.to_string()),
        ("CNI_PATH", CNI_PATH.to_string()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}"),
        ),
    ]
}

/// Starts one ADD per pod namespace in parallel (container ids `PREFIX-i`, ifname eth0), the
/// i-th after `i * stagger_ms` ms.
fn spawn_adds<'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    pods: &'scope [String],
    conf: &'scope Value,
    prefix: &'scope str,
    stagger_ms: u64,
) -> Vec<std::thread::ScopedJoinHandle<'scope, Outcome>> {
    pods.iter()
        .enumerate()
        .map(|(i, p)| {
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(stagger_ms * i as u64));
                cni::call("ADD", &format!("{prefix}-{i}"), p, conf)
            })
        })
        .collect()
}

fn allocations(d: &Daemon, domain: &str) -> Vec<Value> {
    d.ctl_json(&["ipam", "show", domain])
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

#[test]
fn multus_delegate_add_check_status_gc_del() {
    if !require_root("multus_delegate_add_check_status_gc_del") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let (pa, pb) = (lab.netns("pa").unwrap(), lab.netns("pb").unwrap());

    // Pod A: static IP and MAC through runtimeConfig, as Multus passes them.
    let ca = conf(
        &d,
        "1.1.0",
        "tenant-a",
        json!({"runtimeConfig": {"ips": ["192.168.1.205/24"], "mac": "02:00:00:00:02:05"}}),
    );
    let env_a = multus_env("cid-a", &ns_path(&pa), "net1", "pod-a");
    let add_a = cni::plugin("ADD", &env_a, &ca.to_string());
    assert!(
        add_a.ok,
        "ADD a: {} {}\n{}",
        add_a.out,
        add_a.stderr,
        d.log_text()
    );
    assert_eq!(add_a.out["cniVersion"], "1.1.0");
    assert_eq!(add_a.out["interfaces"][0]["name"], "net1");
    assert_eq!(add_a.out["interfaces"][0]["mac"], "02:00:00:00:02:05");
    assert_eq!(add_a.out["ips"][0]["address"], "192.168.1.205/24");
    assert_eq!(add_a.out["ips"][0]["gateway"], "192.168.1.1");
    let link = lab
        .exec_ok(&pa, &["ip", "-br", "link", "show", "net1"])
        .unwrap();
    assert!(link.contains("02:00:00:00:02:05"), "{link}");

    // Pod B: dynamic IP from the range, result in an old spec version.
    let cb = conf(&d, "0.3.1", "tenant-a", json!({}));
    let env_b = multus_env("cid-b", &ns_path(&pb), "net1", "pod-b");
    let add_b = cni::plugin("ADD", &env_b, &cb.to_string());
    assert!(add_b.ok, "ADD b: {} {}", add_b.out, add_b.stderr);
    assert_eq!(
        add_b.out["ips"][0]["version"], "4",
        "0.3.1 results carry version: {}",
        add_b.out
    );
    let ip_b = add_b.out["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        ip_b.starts_with("192.168.1.1") || ip_b.starts_with("192.168.1.2"),
        "{ip_b} in 100..220"
    );
    assert!(
        lab.ping_until(&pa, &ip_b, Duration::from_secs(5)),
        "pod a -> pod b over net1"
    );
    assert!(lab.ping(&pb, "192.168.1.1", 1), "pod b -> gateway");

    // CHECK passes against prevResult, and fails once the pod's state drifts.
    let mut chk = ca.clone();
    chk["prevResult"] = add_a.out.clone();
    let c1 = cni::plugin("CHECK", &env_a, &chk.to_string());
    assert!(c1.ok, "CHECK: {} {}", c1.out, c1.stderr);
    lab.exec_ok(
        &pa,
        &["ip", "addr", "del", "192.168.1.205/24", "dev", "net1"],
    )
    .unwrap();
    let c2 = cni::plugin("CHECK", &env_a, &chk.to_string());
    assert!(!c2.ok);
    assert_eq!(c2.out["code"], 103, "{}", c2.out);

    // STATUS: fine while the daemon runs.
    let st = cni::plugin("STATUS", &[], &ca.to_string());
    assert!(st.ok, "STATUS: {} {}", st.out, st.stderr);

    // GC with only pod A valid removes pod B's interface and releases its address.
    let mut gc = ca.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "cid-a", "ifname": "net1"}]);
    let g = cni::plugin("GC", &[("CNI_PATH", CNI_PATH.to_string())], &gc.to_string());
    assert!(g.ok, "GC: {} {}", g.out, g.stderr);
    assert!(
        lab.exec(&pb, &["ip", "link", "show", "net1"])
            .unwrap()
            .status
            .code()
            != Some(0)
    );
    let allocs = allocations(&d, "tenant-a");
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    assert_eq!(allocs[0]["container_id"], "cid-a");

    // DEL after the pod's netns is gone: succeeds, releases the IP; repeating it succeeds too.
    run(Command::new("ip").args(["netns", "del", &pa])).unwrap();
    for _ in 0..2 {
        let del = cni::plugin("DEL", &env_a, &ca.to_string());
        assert!(del.ok, "DEL: {} {}", del.out, del.stderr);
    }
    assert!(allocations(&d, "tenant-a").is_empty());
    // DEL with no prevResult, for an attachment the daemon never saw.
    let del = cni::plugin(
        "DEL",
        &multus_env("never", "", "net1", "x"),
        &cb.to_string(),
    );
    assert!(del.ok, "DEL unknown: {} {}", del.out, del.stderr);
    // The static IP is free again.
    let pc = lab.netns("pc").unwrap();
    let again = cni::plugin(
        "ADD",
        &multus_env("cid-c", &ns_path(&pc), "net1", "pod-c"),
        &ca.to_string(),
    );
    assert!(
        again.ok,
        "re-ADD of released static IP: {} {}",
        again.out, again.stderr
    );

    // STATUS reports 50 once the daemon is gone.
    lab.stop(d.pid());
    let st = cni::plugin("STATUS", &[], &ca.to_string());
    assert!(!st.ok);
    assert_eq!(st.out["code"], 50, "{}", st.out);
}

#[test]
fn bad_inputs_get_the_right_code_and_change_nothing() {
    if !require_root("bad_inputs_get_the_right_code_and_change_nothing") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let p1 = lab.netns("p1").unwrap();
    let p2 = lab.netns("p2").unwrap();
    let base = conf(&d, "1.0.0", "tenant-b", json!({}));
    let env1 = multus_env("c1", &ns_path(&p1), "net1", "p1");
    let first = cni::plugin(
        "ADD",
        &env1,
        &conf(
            &d,
            "1.0.0",
            "tenant-b",
            json!({"runtimeConfig": {"ips": ["192.168.1.150"]}}),
        )
        .to_string(),
    );
    assert!(first.ok, "{} {}", first.out, first.stderr);
    let ports_before = d.ctl_json(&["port", "list"]).unwrap();
    let allocs_before = allocations(&d, "tenant-b");

    let e = multus_env("c2", &ns_path(&p2), "net1", "p2");
    let static_ip = |ip: &str| {
        conf(
            &d,
            "1.0.0",
            "tenant-b",
            json!({"runtimeConfig": {"ips": [ip]}}),
        )
        .to_string()
    };
    let mut unknown_ipam = base.clone();
    unknown_ipam["ipam"] = json!({"type": "no-such-ipam"});
    let mut bad_version = base.clone();
    bad_version["cniVersion"] = json!("0.9.9");
    let no_netns: Vec<(&str, String)> = e
        .iter()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .cloned()
        .collect();
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, u64);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            e.clone(),
            "{\"cniVersion\": ".to_string(),
            6,
        ),
        ("unknown cniVersion", e.clone(), bad_version.to_string(), 1),
        ("missing CNI_NETNS", no_netns, base.to_string(), 4),
        ("IP out of range", e.clone(), static_ip("192.168.1.50"), 101),
        (
            "IP outside the subnet",
            e.clone(),
            static_ip("10.1.2.3"),
            101,
        ),
        ("taken IP", e.clone(), static_ip("192.168.1.150"), 101),
        ("gateway IP", e.clone(), static_ip("192.168.1.1"), 101),
        ("unknown ipam type", e.clone(), unknown_ipam.to_string(), 7),
    ];
    for (what, env, stdin, code) in cases {
        let o = cni::plugin("ADD", &env, &stdin);
        assert!(!o.ok, "{what}: expected failure, got {}", o.out);
        assert_eq!(o.out["code"].as_u64(), Some(code), "{what}: {}", o.out);
        assert!(
            o.out["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {}",
            o.out
        );
        assert_eq!(
            d.ctl_json(&["port", "list"]).unwrap(),
            ports_before,
            "{what} changed ports"
        );
        assert_eq!(
            allocations(&d, "tenant-b"),
            allocs_before,
            "{what} changed IPAM"
        );
        let link = lab.exec(&p2, &["ip", "link", "show", "net1"]).unwrap();
        assert!(
            !link.status.success(),
            "{what} left an interface in the pod"
        );
    }
}

#[test]
fn twenty_concurrent_adds_then_dels() {
    if !require_root("twenty_concurrent_adds_then_dels") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let pods: Vec<String> = (0..20)
        .map(|i| lab.netns(&format!("c{i}")).unwrap())
        .collect();
    let c = conf(&d, "1.0.0", "burst", json!({}));
    let outs: Vec<Outcome> = std::thread::scope(|s| {
        let hs = spawn_adds(s, &pods, &c, "burst", 0);
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut ips = BTreeSet::new();
    for o in &outs {
        assert!(o.ok, "ADD failed: {} {}", o.out, o.stderr);
        ips.insert(o.out["ips"][0]["address"].as_str().unwrap().to_string());
    }
    assert_eq!(ips.len(), 20, "20 distinct IPs: {ips:?}");
    assert_eq!(allocations(&d, "burst").len(), 20);
    for (i, p) in pods.iter().enumerate() {
        let o = cni::call("DEL", &format!("burst-{i}"), p, &c);
        assert!(o.ok, "DEL: {} {}", o.out, o.stderr);
    }
    assert!(
        allocations(&d, "burst").is_empty(),
        "store empty after DEL of all"
    );
    assert_eq!(d.ctl_json(&["port", "list"]).unwrap(), json!([]));
}

#[test]
fn kill_9_during_add_burst_leaves_no_duplicate_and_no_leak_after_gc() {
    if !require_root("kill_9_during_add_burst_leaves_no_duplicate_and_no_leak_after_gc") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let pods: Vec<String> = (0..20)
        .map(|i| lab.netns(&format!("k{i}")).unwrap())
        .collect();
    let c = conf(&d, "1.1.0", "crash", json!({}));
    let pid = d.pid();
    let outs: Vec<Outcome> = std::thread::scope(|s| {
        let hs = spawn_adds(s, &pods, &c, "crash", 15);
        // Kill the daemon once a few ADDs have gone through.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let done = std::fs::read_to_string(d.state_dir.join("ipam.json"))
                .map(|t| t.matches("\"container_id\"").count())
                .unwrap_or(0);
            if done >= 4 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        run(Command::new("kill").args(["-9", &pid.to_string()])).unwrap();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let succeeded: Vec<usize> = outs
        .iter()
        .enumerate()
        .filter(|(_, o)| o.ok)
        .map(|(i, _)| i)
        .collect();
    let failed = outs.len() - succeeded.len();
    assert!(failed > 0, "the kill should have interrupted the burst");
    for (i, o) in outs.iter().enumerate().filter(|(_, o)| !o.ok) {
        assert_eq!(
            o.out["code"], 11,
            "ADD {i} failed with {} (expected try-again)",
            o.out
        );
    }
    // Restart on the same state and inspect the durable allocations.
    lab.stop(pid);
    // Same node namespace, so the lab hands it the same state dir and socket.
    let d2 = lab.daemon(&node, "").unwrap();
    assert_eq!(d2.state_dir, d.state_dir);
    let allocs = allocations(&d2, "crash");
    let ips: Vec<String> = allocs
        .iter()
        .map(|a| a["ips"][0].as_str().unwrap().to_string())
        .collect();
    let distinct: BTreeSet<_> = ips.iter().collect();
    assert_eq!(
        distinct.len(),
        ips.len(),
        "duplicate IP after crash: {ips:?}"
    );
    for i in &succeeded {
        assert!(
            allocs
                .iter()
                .any(|a| a["container_id"] == format!("crash-{i}")),
            "successful ADD {i} lost its IP"
        );
    }
    // GC with the attachments the runtime knows (the successful ADDs) leaves exactly those.
    let mut gc = c.clone();
    gc["socket"] = json!(d2.socket.display().to_string());
    gc["cni.dev/valid-attachments"] = json!(succeeded
        .iter()
        .map(|i| json!({"containerID": format!("crash-{i}"), "ifname": "eth0"}))
        .collect::<Vec<_>>());
    let g = cni::plugin("GC", &[("CNI_PATH", CNI_PATH.to_string())], &gc.to_string());
    assert!(g.ok, "GC: {} {}", g.out, g.stderr);
    let after = allocations(&d2, "crash");
    assert_eq!(
        after.len(),
        succeeded.len(),
        "leaked IPs after GC: {after:?}"
    );
}

#[test]
fn delegated_host_local_ipam() {
    if !require_root("delegated_host_local_ipam") {
        return;
    }
    if !std::path::Path::new("/usr/lib/cni/host-local").exists() {
        panic!("/usr/lib/cni/host-local missing: install containernetworking-plugins (tests/install-deps.sh)");
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let (p1, p2) = (lab.netns("h1").unwrap(), lab.netns("h2").unwrap());
    let data_dir = lab.dir.join("host-local");
    let c = json!({
        "cniVersion": "1.0.0", "name": "hl", "type": "vswitch", "bridge": "br-hl",
        "socket": d.socket.display().to_string(),
        "ipam": {"type": "host-local", "dataDir": data_dir.display().to_string(),
                 "ranges": [[{"subnet": "10.44.0.0/24", "rangeStart": "10.44.0.10", "rangeEnd": "10.44.0.20"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let a = cni::plugin(
        "ADD",
        &multus_env("h1", &ns_path(&p1), "eth0", "h1"),
        &c.to_string(),
    );
    assert!(a.ok, "{} {}", a.out, a.stderr);
    let b = cni::plugin(
        "ADD",
        &multus_env("h2", &ns_path(&p2), "eth0", "h2"),
        &c.to_string(),
    );
    assert!(b.ok, "{} {}", b.out, b.stderr);
    let ip_b = b.out["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(ip_b.starts_with("10.44.0."), "{}", b.out);
    assert!(lab.ping_until(&p1, &ip_b, Duration::from_secs(5)));
    let nets = d.ctl_json(&["network", "list"]).unwrap();
    assert!(
        nets.as_array()
            .unwrap()
            .iter()
            .any(|n| n["name"] == "br-hl" && n["subnet"] == "10.44.0.0/24"),
        "{nets}"
    );
    let del = cni::plugin(
        "DEL",
        &multus_env("h2", &ns_path(&p2), "eth0", "h2"),
        &c.to_string(),
    );
    assert!(del.ok, "{} {}", del.out, del.stderr);
    // host-local released the address: its reservation file is gone.
    let reserved = std::fs::read_dir(data_dir.join("hl"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name() == ip_b.as_str());
    assert!(!reserved, "host-local still holds {ip_b}");
}
