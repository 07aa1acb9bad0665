//! CNI semantics as the spec (1.1) and the reference plugins have them, driven through the plugin
//! binary the way runtimes call it:
//! - an attachment is (network name, container id, ifname): two networks sharing a `bridge`
//!   share an isolation domain, yet a GC of one never removes the other's pods;
//! - `vlan` gives each (bridge, vlan) its own domain: configs differing only in `vlan` do not
//!   reach each other (ping fails, a capture sees nothing cross);
//! - DEL removes whatever it finds of an attachment, an interface left behind without a record
//!   included, so DEL then ADD always recovers (also after a `kill -9` of vswitchd), and DEL
//!   forgets a port whose pod went away while the daemon was down;
//! - `isDefaultGateway` gives the pod a default route via the gateway;
//! - `K8S_POD_NAMESPACE`/`K8S_POD_NAME` are shown by `ipam show` and `port list`;
//! - state files are mode 0600.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vswitch_lab::cni::{self, CNI_PATH};
use vswitch_lab::{frame_src_mac, require_root, run, show_lines, Daemon, Lab};

/// The environment a kubelet runtime (through Multus) gives a delegate.
fn env(cid: &str, netns: &str, ifname: &str, pod: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", netns.to_string()),
        ("CNI_IFNAME", ifname.to_string()),
        ("CNI_PATH", CNI_PATH.to_string()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=true;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={pod}"),
        ),
    ]
}

/// A bridge-plugin style config: network `name` on bridge `bridge`, plus `extra` keys.
fn conf(d: &Daemon, name: &str, bridge: &str, extra: Value) -> Value {
    let mut c = json!({
        "cniVersion": "1.1.0",
        "name": name,
        "type": "vswitch",
        "bridge": bridge,
        "socket": d.socket.display().to_string(),
        "ipam": {"type": "vswitch", "subnet": "192.168.7.0/24"}
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn ns_path(ns: &str) -> String {
    format!("/run/netns/{ns}")
}

fn add_ok(d: &Daemon, cmd_env: &[(&str, String)], c: &Value) -> Value {
    let o = cni::plugin("ADD", cmd_env, &c.to_string());
    assert!(
        o.ok,
        "ADD {}: {} {}\n{}",
        c["name"],
        o.out,
        o.stderr,
        d.log_tail(40)
    );
    o.out
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

fn has_link(lab: &Lab, ns: &str, ifname: &str) -> bool {
    lab.exec(ns, &["ip", "link", "show", ifname])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn gc_of_one_network_never_removes_another_networks_pods_on_a_shared_bridge() {
    if !require_root("gc_of_one_network_never_removes_another_networks_pods_on_a_shared_bridge") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let (pa, pa2, pb) = (
        lab.netns("pa").unwrap(),
        lab.netns("pa2").unwrap(),
        lab.netns("pb").unwrap(),
    );
    // Two NADs on one bridge: one isolation domain, one address space.
    let ca = conf(&d, "net-a", "br-shared", json!({}));
    let cb = conf(&d, "net-b", "br-shared", json!({}));
    let ea = env("cid-a", &ns_path(&pa), "net1", "a");
    let ea2 = env("cid-a2", &ns_path(&pa2), "net1", "a2");
    let eb = env("cid-b", &ns_path(&pb), "net1", "b");
    add_ok(&d, &ea, &ca);
    add_ok(&d, &ea2, &ca);
    let rb = add_ok(&d, &eb, &cb);
    let ip_b = ip_of(&rb);
    assert!(
        lab.ping_until(&pa, &ip_b, Duration::from_secs(5)),
        "same bridge, same segment: a reaches b"
    );

    // GC for net-a, whose valid attachments are only its own (a): a2 goes, b stays.
    let mut gc = ca.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "cid-a", "ifname": "net1"}]);
    let g = cni::plugin("GC", &[("CNI_PATH", CNI_PATH.to_string())], &gc.to_string());
    assert!(g.ok, "GC: {} {}", g.out, g.stderr);
    assert!(
        !has_link(&lab, &pa2, "net1"),
        "a2 is stale in net-a: removed"
    );
    assert!(
        has_link(&lab, &pb, "net1"),
        "GC of net-a removed net-b's pod"
    );
    assert!(has_link(&lab, &pa, "net1"));
    let allocs = d.ctl_json(&["ipam", "show", "br-shared"]).unwrap();
    let owners: Vec<&str> = allocs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["container_id"].as_str())
        .collect();
    assert!(
        owners.contains(&"cid-b"),
        "net-b's address released: {allocs}"
    );
    assert!(!owners.contains(&"cid-a2"), "{allocs}");
    assert!(
        lab.ping_until(&pa, &ip_b, Duration::from_secs(3)),
        "b still works after net-a's GC"
    );

    // An empty valid list for net-a: its last pod goes, net-b's still stays.
    let mut gc = ca.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(cni::plugin("GC", &[("CNI_PATH", CNI_PATH.to_string())], &gc.to_string()).ok);
    assert!(!has_link(&lab, &pa, "net1"));
    assert!(has_link(&lab, &pb, "net1"));
    // DEL and CHECK through the wrong network name do not touch b either.
    let del = cni::plugin("DEL", &eb, &ca.to_string());
    assert!(del.ok, "{} {}", del.out, del.stderr);
    assert!(
        has_link(&lab, &pb, "net1"),
        "DEL via net-a removed net-b's pod"
    );
    let mut chk = ca.clone();
    chk["prevResult"] = rb.clone();
    assert!(
        !cni::plugin("CHECK", &eb, &chk.to_string()).ok,
        "CHECK via net-a must not find b"
    );
    let mut chk = cb.clone();
    chk["prevResult"] = rb;
    let c = cni::plugin("CHECK", &eb, &chk.to_string());
    assert!(c.ok, "CHECK b via net-b: {} {}", c.out, c.stderr);
}

#[test]
fn configs_differing_only_in_vlan_do_not_reach_each_other() {
    if !require_root("configs_differing_only_in_vlan_do_not_reach_each_other") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let (p10, p10b, p20) = (
        lab.netns("v10").unwrap(),
        lab.netns("v10b").unwrap(),
        lab.netns("v20").unwrap(),
    );
    let static_ip = |ip: &str, mac: &str| json!({"runtimeConfig": {"ips": [ip], "mac": mac}});
    let with = |vlan: u16, extra: Value| {
        let mut c = conf(&d, &format!("vlan{vlan}"), "br-trunk", extra);
        c["vlan"] = json!(vlan);
        c["capabilities"] = json!({"ips": true, "mac": true});
        c
    };
    add_ok(
        &d,
        &env("c10", &ns_path(&p10), "net1", "p10"),
        &with(10, static_ip("192.168.7.10", "02:00:00:00:10:0a")),
    );
    add_ok(
        &d,
        &env("c10b", &ns_path(&p10b), "net1", "p10b"),
        &with(10, static_ip("192.168.7.11", "02:00:00:00:10:0b")),
    );
    add_ok(
        &d,
        &env("c20", &ns_path(&p20), "net1", "p20"),
        &with(20, static_ip("192.168.7.20", "02:00:00:00:20:14")),
    );
    // Positive control: the same VLAN works.
    assert!(
        lab.ping_until(&p10, "192.168.7.11", Duration::from_secs(5)),
        "vlan 10 to vlan 10"
    );
    // Across VLANs: nothing, not even ARP, reaches the other pod.
    let cap = lab.capture(&p20, "net1", "").unwrap();
    assert!(
        !lab.ping(&p10, "192.168.7.20", 3),
        "vlan 10 reached vlan 20"
    );
    // A broadcast too.
    let _ = lab.exec(&p10, &["ping", "-b", "-c", "2", "-W", "1", "192.168.7.255"]);
    let frames = lab.finish_capture(cap).unwrap();
    let leaked: Vec<&String> = frames
        .iter()
        .filter(|l| {
            frame_src_mac(l).is_some_and(|m| m == "02:00:00:00:10:0a" || m == "02:00:00:00:10:0b")
                || l.contains("192.168.7.10")
                || l.contains("192.168.7.11")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "{} frame(s) from vlan 10 seen in vlan 20:\n{}",
        leaked.len(),
        show_lines(&leaked, 10)
    );

    let nets = d.ctl_json(&["network", "list"]).unwrap();
    let names: Vec<&str> = nets
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(
        names.contains(&"br-trunk.vlan10") && names.contains(&"br-trunk.vlan20"),
        "one domain per (bridge, vlan): {names:?}"
    );

    // A trunk is not silently accepted.
    let mut trunk = conf(&d, "trunk", "br-trunk", json!({"vlanTrunk": [{"id": 10}]}));
    trunk["cniVersion"] = json!("1.1.0");
    let pt = lab.netns("pt").unwrap();
    let o = cni::plugin(
        "ADD",
        &env("ct", &ns_path(&pt), "net1", "pt"),
        &trunk.to_string(),
    );
    assert!(!o.ok);
    assert_eq!(o.out["code"], 7, "{}", o.out);
    assert!(
        o.out["msg"].as_str().unwrap_or("").contains("vlanTrunk"),
        "{}",
        o.out
    );
}

#[test]
fn del_then_add_recovers_after_an_orphaned_interface() {
    if !require_root("del_then_add_recovers_after_an_orphaned_interface") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let mut d = lab.daemon(&node, "").unwrap();
    let (pt, pp, po) = (
        lab.netns("tap").unwrap(),
        lab.netns("afp").unwrap(),
        lab.netns("orph").unwrap(),
    );
    let ct = conf(&d, "rec-tap", "br-rec", json!({"attach": "tap"}));
    let cp = conf(&d, "rec-afp", "br-rec", json!({"attach": "af_packet"}));
    let et = env("c-tap", &ns_path(&pt), "eth0", "tap");
    let ep = env("c-afp", &ns_path(&pp), "eth0", "afp");
    add_ok(&d, &et, &ct);
    add_ok(&d, &ep, &cp);

    // 1. An interface no record knows of (made by hand: a veth, the shape an af_packet pod
    //    leaves behind) blocks ADD until DEL removes it.
    let eo = env("c-orph", &ns_path(&po), "eth0", "orph");
    lab.exec_ok(
        &po,
        &[
            "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
        ],
    )
    .unwrap();
    let blocked = cni::plugin("ADD", &eo, &ct.to_string());
    assert!(!blocked.ok, "ADD over an existing eth0 must fail");
    let del = cni::plugin("DEL", &eo, &ct.to_string());
    assert!(del.ok, "DEL: {} {}", del.out, del.stderr);
    assert!(!has_link(&lab, &po, "eth0"), "DEL left the orphaned eth0");
    assert!(
        !has_link(&lab, &po, "eth0peer"),
        "its veth peer went with it"
    );
    let r = add_ok(&d, &eo, &ct);
    assert!(lab.ping_until(&po, "192.168.7.1", Duration::from_secs(5)));
    assert!(!ip_of(&r).is_empty());

    // 2. kill -9 of vswitchd, restart on the same state, then the runtime's recovery: DEL+ADD
    //    of every pod (tap and af_packet) must bring them back.
    run(Command::new("kill").args(["-9", &d.pid().to_string()])).unwrap();
    lab.stop(d.pid());
    d = lab.daemon(&node, "").unwrap();
    for (e, c, ns) in [(&et, &ct, &pt), (&ep, &cp, &pp), (&eo, &ct, &po)] {
        let del = cni::plugin("DEL", e, &c.to_string());
        assert!(del.ok, "DEL after crash: {} {}", del.out, del.stderr);
        assert!(
            !has_link(&lab, ns, "eth0"),
            "DEL after crash left eth0 in {ns}"
        );
        add_ok(&d, e, c);
        assert!(
            lab.ping_until(ns, "192.168.7.1", Duration::from_secs(5)),
            "pod {ns} back after DEL+ADD"
        );
    }
    let ports = d.ctl_json(&["port", "list"]).unwrap();
    assert_eq!(ports.as_array().unwrap().len(), 3, "{ports}");
}

#[test]
fn is_default_gateway_gives_a_default_route_and_pod_names_are_shown() {
    if !require_root("is_default_gateway_gives_a_default_route_and_pod_names_are_shown") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let (pg, pn) = (lab.netns("gw").unwrap(), lab.netns("nogw").unwrap());
    let c = conf(
        &d,
        "dgw",
        "br-dgw",
        json!({"isGateway": true, "isDefaultGateway": true}),
    );
    let r = add_ok(&d, &env("c-gw", &ns_path(&pg), "eth0", "web-0"), &c);
    let routes = lab
        .exec_ok(&pg, &["ip", "-4", "route", "show", "default"])
        .unwrap();
    assert!(
        routes.contains("default via 192.168.7.1 dev eth0"),
        "no default route via the gateway: {routes:?}"
    );
    assert!(
        r["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rt| rt["dst"] == "0.0.0.0/0"),
        "the result names the default route: {r}"
    );
    // Without the key, no default route (the bridge plugin's default).
    let c2 = conf(&d, "nodgw", "br-nodgw", json!({}));
    add_ok(&d, &env("c-nogw", &ns_path(&pn), "eth0", "web-1"), &c2);
    let routes = lab
        .exec_ok(&pn, &["ip", "-4", "route", "show", "default"])
        .unwrap();
    assert!(routes.trim().is_empty(), "{routes:?}");

    // K8S_POD_NAMESPACE / K8S_POD_NAME: recorded and shown.
    let allocs = d.ctl_json(&["ipam", "show", "br-dgw"]).unwrap();
    assert_eq!(
        allocs[0]["pod"],
        json!({"namespace": "shop", "name": "web-0"}),
        "{allocs}"
    );
    assert_eq!(allocs[0]["network"], "dgw");
    let text = d.ctl(&["ipam", "show", "br-dgw"]).unwrap();
    assert!(text.contains("shop/web-0"), "{text}");
    let ports = d.ctl_json(&["port", "list"]).unwrap();
    let port = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["container_id"] == "c-gw")
        .unwrap_or_else(|| panic!("{ports}"));
    assert_eq!(port["pod"], json!({"namespace": "shop", "name": "web-0"}));
    assert_eq!(port["cni_network"], "dgw");
    let text = d.ctl(&["port", "list"]).unwrap();
    assert!(
        text.contains("shop/web-0") && text.contains("shop/web-1"),
        "{text}"
    );
}

#[test]
fn state_files_are_the_owners_only() {
    if !require_root("state_files_are_the_owners_only") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let p = lab.netns("p").unwrap();
    // A runtime-created network (networks.json) and an allocation (ipam.json).
    add_ok(
        &d,
        &env("c-m", &ns_path(&p), "eth0", "m"),
        &conf(&d, "modes", "br-modes", json!({})),
    );
    for f in ["ipam.json", "networks.json"] {
        let p = d.state_dir.join(f);
        let mode = std::fs::metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f} has mode {mode:o}");
    }
}

#[test]
fn del_forgets_a_port_whose_pod_went_away_while_the_daemon_was_down() {
    if !require_root("del_forgets_a_port_whose_pod_went_away_while_the_daemon_was_down") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let (pk, pg) = (lab.netns("keep").unwrap(), lab.netns("gone").unwrap());
    let c = conf(&d, "down", "br-down", json!({"attach": "af_packet"}));
    let (ek, eg) = (
        env("c-keep", &ns_path(&pk), "eth0", "keep"),
        env("c-gone", &ns_path(&pg), "eth0", "gone"),
    );
    add_ok(&d, &ek, &c);
    add_ok(&d, &eg, &c);
    run(Command::new("kill").args(["-9", &d.pid().to_string()])).unwrap();
    lab.stop(d.pid());
    // The pod's interface goes while nobody watches.
    lab.exec_ok(&pg, &["ip", "link", "del", "eth0"]).unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let state = |d: &Daemon, cid: &str| -> Option<String> {
        let ports = d.ctl_json(&["port", "list"]).unwrap();
        ports
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["container_id"] == cid)
            .map(|p| p["state"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(state(&d, "c-gone").as_deref(), Some("gone"));
    // GC of another network on the same bridge leaves it alone; DEL of its own forgets it.
    let mut gc = conf(&d, "other", "br-down", json!({}));
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(cni::plugin("GC", &[("CNI_PATH", CNI_PATH.to_string())], &gc.to_string()).ok);
    assert!(
        state(&d, "c-gone").is_some(),
        "another network's GC took it"
    );
    let del = cni::plugin("DEL", &eg, &c.to_string());
    assert!(del.ok, "{} {}", del.out, del.stderr);
    assert_eq!(state(&d, "c-gone"), None, "DEL left the gone port listed");
    let allocs = d.ctl_json(&["ipam", "show", "br-down"]).unwrap();
    let owners: Vec<&str> = allocs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["container_id"].as_str())
        .collect();
    assert_eq!(owners, vec!["c-keep"], "{allocs}");
    // ADD again brings the pod back.
    add_ok(&d, &eg, &c);
    assert!(lab.ping_until(&pg, "192.168.7.1", Duration::from_secs(5)));
    assert!(lab.ping_until(&pk, "192.168.7.1", Duration::from_secs(5)));
}
