//! Calico-style IP pools through the CNI plugin (`ipam.type = "vswitch-pools"`), nodes as
//! namespaces, on a real etcd (Debian's etcd-server) and on one node's embedded store.
//!
//! The five applications of pools, on an L3 network (10.244.0.0/16, IPIP cross-subnet):
//! - pools chosen by node label: `rack0` (nodeSelector `rack == "0"`) and `rack1`; with etcd,
//!   n0 (config label rack=0) in rack 10.1.5.0/24 and n1 (`vswitchctl node label rack=1`) in
//!   rack 10.1.8.0/24 behind a router; each node's pod gets its rack's pool and the two pods
//!   reach each other over the L3 network (block routes learned from etcd);
//! - a pool per workload, chosen by the pod annotation `cni.projectcalico.org/ipv4pools`
//!   (Multus `cni-args`);
//! - a static IP (`cni.projectcalico.org/ipAddrs`) from a pool; taken twice or outside every
//!   pool: refused;
//! - a pool per namespace (`vswitchctl namespace annotate team-b ipv4pools=ns-pool`, set on one
//!   node, used on the other);
//! - disable a pool (nothing new from it, existing address kept), delete refused while in use
//!   (holder listed), allowed once released.
//!
//! Plus: `kill -9` of a daemon in the middle of a burst of ADDs, then `ipam check` /
//! `ipam release --leaked`: no inconsistency, every address a restored attachment's or released;
//! and borrowing through the plugin when a node's /29 is full (refused with strictAffinity).

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use vswitch_lab::cni::{self, Outcome, CNI_PATH};
use vswitch_lab::topo::{self, Etcd, Node};
use vswitch_lab::{require_root, Daemon, Lab};

const NET: &str = "pods";

const POOLS: &str = r#"
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack0
spec:
  cidr: 10.244.0.0/24
  blockSize: 29
  ipipMode: CrossSubnet
  natOutgoing: true
  nodeSelector: rack == "0"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: rack1
spec:
  cidr: 10.244.1.0/24
  blockSize: 29
  ipipMode: CrossSubnet
  nodeSelector: rack == "1"
---
apiVersion: crd.projectcalico.org/v1
kind: IPPool
metadata:
  name: workload-a
spec:
  cidr: 10.244.10.0/24
  nodeSelector: "!all()"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: ns-pool
spec:
  cidr: 10.244.20.0/24
  nodeSelector: "!all()"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: static
spec:
  cidr: 10.244.30.0/24
  nodeSelector: "!all()"
"#;

fn conf(d: &Daemon, cni_args: Value) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "vswitch",
        "socket": d.socket.display().to_string(),
        "ipam": {"type": "vswitch-pools"},
        "args": {"cni": cni_args},
    })
}

fn env(cid: &str, netns: &str, k8s_ns: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_CONTAINERID", cid.to_string()),
        ("CNI_NETNS", format!("/run/netns/{netns}")),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", CNI_PATH.to_string()),
        (
            "CNI_ARGS",
            format!("IgnoreUnknown=true;K8S_POD_NAMESPACE={k8s_ns};K8S_POD_NAME={cid}"),
        ),
    ]
}

/// CNI ADD of a new pod namespace `short` (container id = short) on `d`.
fn add(lab: &mut Lab, d: &Daemon, short: &str, k8s_ns: &str, cni_args: Value) -> (String, Outcome) {
    let ns = lab.netns(short).unwrap();
    let o = cni::plugin(
        "ADD",
        &env(short, &ns, k8s_ns),
        &conf(d, cni_args).to_string(),
    );
    (ns, o)
}

fn del(d: &Daemon, short: &str, ns: &str) {
    let o = cni::plugin(
        "DEL",
        &env(short, ns, "default"),
        &conf(d, json!({})).to_string(),
    );
    assert!(o.ok, "DEL {short}: {} {}", o.out, o.stderr);
}

fn in_net(ip: &str, prefix3: &str) -> bool {
    ip.starts_with(&format!("{prefix3}."))
}

fn net_toml() -> String {
    format!(
        "[[network]]\nname = \"{NET}\"\nkind = \"l3\"\nsubnet = \"10.244.0.0/16\"\n\
         encapsulation = \"ipip\"\nmode = \"cross-subnet\"\n"
    )
}

fn node_cfg(n: &Node, labels: &str, etcd: Option<&Etcd>) -> String {
    let mut s = n.node_toml(None);
    s.push_str(labels);
    if let Some(e) = etcd {
        s.push_str(&format!(
            "[cluster]\netcd_endpoints = [\"{}\"]\nlease_ttl_secs = 3\n",
            e.endpoint()
        ));
    }
    s + &net_toml()
}

fn ctl_fails(d: &Daemon, args: &[&str]) -> String {
    let o = d.ctl_output(args).unwrap();
    assert!(!o.status.success(), "vswitchctl {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The pool scenarios on `d0` (label rack=0) and, with a second node, `d1` (rack=1).
/// Returns the address of pod a0 (still attached on d0).
fn scenarios(lab: &mut Lab, d0: &Daemon, d1: Option<&Daemon>) -> String {
    let diag = |d: &Daemon| vswitch_lab::tail(&d.log_text(), 30);
    let file = lab.dir.join("pools.yaml");
    std::fs::write(&file, POOLS).unwrap();
    let applied = d0.ctl(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(
        applied.contains("ippool/rack0 created") && applied.contains("ippool/static created"),
        "{applied}"
    );
    let wide = d0.ctl(&["get", "ippool", "-o", "wide"]).unwrap();
    assert!(
        wide.contains("10.244.0.0/24") && wide.contains("rack == \"0\""),
        "{wide}"
    );
    let yaml = d0.ctl(&["get", "ippool", "rack0", "-o", "yaml"]).unwrap();
    assert!(
        yaml.contains("apiVersion: projectcalico.org/v3") && yaml.contains("blockSize: 29"),
        "{yaml}"
    );
    // Validation: an overlapping pool is refused, naming the field; nothing changes.
    let bad = lab.dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: big}\nspec: {cidr: 10.244.0.0/20}\n",
    )
    .unwrap();
    let e = ctl_fails(d0, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(e.contains("spec.cidr") && e.contains("overlaps"), "{e}");
    std::fs::write(
        &bad,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: sel}\nspec: {cidr: 10.244.40.0/24, nodeSelector: 'rack = \"1\"'}\n",
    )
    .unwrap();
    let e = ctl_fails(d0, &["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        e.contains("spec.nodeSelector") && e.contains("position 5"),
        "{e}"
    );
    let pools = d0.ctl_json(&["get", "ippool"]).unwrap();
    assert_eq!(pools.as_array().map(Vec::len), Some(5), "{pools}");

    // 1. Pools by node label.
    let (a0_ns, a0) = add(lab, d0, "a0", "default", json!({}));
    assert!(a0.ok, "ADD a0: {} {}\n{}", a0.out, a0.stderr, diag(d0));
    assert!(
        in_net(&a0.ip(), "10.244.0"),
        "a0 got {} (rack0 pool expected)",
        a0.ip()
    );
    if let Some(d1) = d1 {
        let labels = d1.ctl(&["node", "label", "rack=1"]).unwrap();
        assert!(labels.contains("rack=1"), "{labels}");
        let (a1_ns, a1) = add(lab, d1, "a1", "default", json!({}));
        assert!(a1.ok, "ADD a1: {} {}\n{}", a1.out, a1.stderr, diag(d1));
        assert!(
            in_net(&a1.ip(), "10.244.1"),
            "a1 got {} (rack1 pool expected)",
            a1.ip()
        );
        // Each node learns the other's block from etcd: the pods reach each other.
        assert!(
            lab.ping_until(&a0_ns, &a1.ip(), Duration::from_secs(15)),
            "a0 -> a1 ({}) over the L3 network\n{}\n{}\npeers n0: {}",
            a1.ip(),
            diag(d0),
            diag(d1),
            d0.ctl(&["peers"]).unwrap_or_default()
        );
        assert!(
            lab.ping_until(&a1_ns, &a0.ip(), Duration::from_secs(5)),
            "a1 -> a0"
        );
        let peers = d0.ctl(&["peers"]).unwrap();
        assert!(
            peers.contains("pods:10.244.1."),
            "n0 learns n1's pool block: {peers}"
        );
    }

    // 2. A pool per workload, by pod annotation.
    let (w_ns, w) = add(
        lab,
        d0,
        "w",
        "default",
        json!({"cni.projectcalico.org/ipv4pools": "[\"workload-a\"]"}),
    );
    assert!(w.ok, "ADD w: {} {}", w.out, w.stderr);
    assert!(in_net(&w.ip(), "10.244.10"), "w got {}", w.ip());

    // 3. A static IP from a pool.
    let (_s_ns, s) = add(
        lab,
        d0,
        "s",
        "default",
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.244.30.7\"]"}),
    );
    assert!(s.ok, "ADD s: {} {}", s.out, s.stderr);
    assert_eq!(s.ip(), "10.244.30.7");
    let (_s2_ns, s2) = add(
        lab,
        d1.unwrap_or(d0),
        "s2",
        "default",
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.244.30.7\"]"}),
    );
    assert!(!s2.ok, "the same static IP twice: {}", s2.out);
    assert_eq!(s2.out["code"], 101, "{}", s2.out);
    let (_s3_ns, s3) = add(
        lab,
        d0,
        "s3",
        "default",
        json!({"cni.projectcalico.org/ipAddrs": "[\"10.244.99.1\"]"}),
    );
    assert!(!s3.ok);
    assert!(
        s3.out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("enabled IP pool"),
        "{}",
        s3.out
    );

    // 4. A pool per namespace (annotated through one node, used on the other).
    d0.ctl(&["namespace", "annotate", "team-b", "ipv4pools=ns-pool"])
        .unwrap();
    let (_n_ns, n) = add(lab, d1.unwrap_or(d0), "n", "team-b", json!({}));
    assert!(n.ok, "ADD n: {} {}", n.out, n.stderr);
    assert!(in_net(&n.ip(), "10.244.20"), "n got {}", n.ip());

    // 5. Disable, then delete.
    std::fs::write(
        &file,
        "apiVersion: crd.projectcalico.org/v1\nkind: IPPool\nmetadata: {name: workload-a}\n\
         spec: {cidr: 10.244.10.0/24, nodeSelector: \"!all()\", disabled: true}\n",
    )
    .unwrap();
    let r = d0.ctl(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    assert!(r.contains("ippool/workload-a configured"), "{r}");
    let (_w2_ns, w2) = add(
        lab,
        d0,
        "w2",
        "default",
        json!({"cni.projectcalico.org/ipv4pools": "[\"workload-a\"]"}),
    );
    assert!(!w2.ok, "a disabled pool hands out nothing: {}", w2.out);
    assert!(
        w2.out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("disabled"),
        "{}",
        w2.out
    );
    let held = d0.ctl(&["ipam", "show", "--ip", &w.ip()]).unwrap();
    assert!(
        held.contains("is in use") && held.contains("pods/w/eth0"),
        "{held}"
    );
    let e = ctl_fails(d0, &["delete", "ippool", "workload-a"]);
    assert!(
        e.contains("pool_in_use") && e.contains("pods/w/eth0"),
        "{e}"
    );
    del(d0, "w", &w_ns);
    let r = d0.ctl(&["delete", "ippool", "workload-a"]).unwrap();
    assert!(r.contains("deleted"), "{r}");
    let names: Vec<String> = d0
        .ctl_json(&["get", "ippool"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(!names.contains(&"workload-a".to_string()), "{names:?}");

    // Observability: blocks with their affinity; nothing leaked.
    let show = d0.ctl(&["ipam", "show", "--show-blocks"]).unwrap();
    assert!(show.contains("| Block") && show.contains("| n0"), "{show}");
    let chk = d0.ctl_json(&["ipam", "check"]).unwrap();
    assert_eq!(chk["leaked"].as_array().map(Vec::len), Some(0), "{chk}");
    assert_eq!(chk["problems"].as_array().map(Vec::len), Some(0), "{chk}");
    a0.ip()
}

#[test]
fn pools_on_etcd_two_racks() {
    if !require_root("pools_on_etcd_two_racks") {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let mut ra = topo::rack(&mut lab, "ra", "10.1.5").unwrap();
    let mut rb = topo::rack(&mut lab, "rb", "10.1.8").unwrap();
    let _rtr = topo::router(&mut lab, "rtr", &mut [&mut ra, &mut rb]).unwrap();
    let etcd = topo::etcd(&mut lab, &ra, "etcd", 100).unwrap();
    // etcd answers the node behind the router too.
    vswitch_lab::run_ok(Command::new("ip").args([
        "-n",
        &etcd.ns,
        "route",
        "add",
        "default",
        "via",
        &ra.ip(1),
    ]))
    .unwrap();
    let n0 = topo::node(&mut lab, &ra, "n0", 11).unwrap();
    let n1 = topo::node(&mut lab, &rb, "n1", 21).unwrap();
    let d0 = lab
        .daemon(
            &n0.ns,
            &node_cfg(&n0, "labels = { rack = \"0\" }\n", Some(&etcd)),
        )
        .unwrap();
    let d1 = lab.daemon(&n1.ns, &node_cfg(&n1, "", Some(&etcd))).unwrap();
    let _ = scenarios(&mut lab, &d0, Some(&d1));
}

#[test]
fn pools_on_the_embedded_store() {
    if !require_root("pools_on_the_embedded_store") {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let ra = topo::rack(&mut lab, "ra", "10.1.5").unwrap();
    let n0 = topo::node(&mut lab, &ra, "n0", 11).unwrap();
    let d0 = lab
        .daemon(&n0.ns, &node_cfg(&n0, "labels = { rack = \"0\" }\n", None))
        .unwrap();
    let a0_ip = scenarios(&mut lab, &d0, None);
    // The embedded store is durable: a restarted daemon still has the pools and allocations.
    let before = d0.ctl_json(&["ipam", "show"]).unwrap();
    lab.stop(d0.pid());
    let d0 = lab
        .daemon(&n0.ns, &node_cfg(&n0, "labels = { rack = \"0\" }\n", None))
        .unwrap();
    let after = d0.ctl_json(&["ipam", "show"]).unwrap();
    assert_eq!(before["pools"], after["pools"]);
    // CNI GC keeps the valid attachment's address and releases every other one of the network.
    let mut gc = conf(&d0, json!({}));
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a0", "ifname": "eth0"}]);
    let o = cni::plugin("GC", &[("CNI_PATH", CNI_PATH.to_string())], &gc.to_string());
    assert!(o.ok, "GC: {} {}", o.out, o.stderr);
    let chk = d0.ctl_json(&["ipam", "check"]).unwrap();
    assert_eq!(chk["addresses"], 1, "only a0's address is left: {chk}");
    let a0 = d0
        .ctl(&["ipam", "show", "--ip", &a0_ip])
        .unwrap_or_default();
    assert!(a0.contains("pods/a0/eth0"), "{a0}");
}

#[test]
fn kill_9_during_allocation_leaks_nothing_after_check() {
    if !require_root("kill_9_during_allocation_leaks_nothing_after_check") {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let ra = topo::rack(&mut lab, "ra", "10.1.5").unwrap();
    let etcd = topo::etcd(&mut lab, &ra, "etcd", 100).unwrap();
    let n0 = topo::node(&mut lab, &ra, "n0", 11).unwrap();
    let cfg = node_cfg(&n0, "labels = { rack = \"0\" }\n", Some(&etcd));
    let d0 = lab.daemon(&n0.ns, &cfg).unwrap();
    let file = lab.dir.join("pools.yaml");
    std::fs::write(&file, POOLS).unwrap();
    d0.ctl(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    let pods: Vec<String> = (0..16)
        .map(|i| lab.netns(&format!("k{i}")).unwrap())
        .collect();
    let c = conf(&d0, json!({}));
    let pid = d0.pid();
    let outcomes: Vec<Outcome> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let c = &c;
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(20 * i as u64));
                    cni::plugin("ADD", &env(&format!("k{i}"), ns, "default"), &c.to_string())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    lab.stop(pid);
    let done = outcomes.iter().filter(|o| o.ok).count();
    assert!(
        done < pods.len(),
        "the kill came too late to interrupt anything"
    );
    let d0 = lab.daemon(&n0.ns, &cfg).unwrap();
    let chk = d0.ctl_json(&["ipam", "check"]).unwrap();
    assert_eq!(
        chk["problems"].as_array().map(Vec::len),
        Some(0),
        "half-written records: {chk}"
    );
    // Ports whose ADD completed are restored at start; every other allocation (ADDs cut short
    // between the address commit and the port, or ports recorded but gone) is reported leaked,
    // and released.
    let ports = d0.ctl_json(&["port", "list"]).unwrap();
    let live = ports
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["network"] == NET && p["state"] != "gone")
        .count();
    let leaked = chk["leaked"].as_array().map_or(0, Vec::len);
    assert_eq!(
        chk["addresses"].as_u64().unwrap() as usize,
        live + leaked,
        "every address is either a live attachment's or leaked: {chk}\nports: {ports}"
    );
    let rel = d0.ctl_json(&["ipam", "release", "--leaked"]).unwrap();
    assert_eq!(
        rel["released"].as_array().map(Vec::len),
        Some(leaked),
        "{rel}"
    );
    let chk = d0.ctl_json(&["ipam", "check"]).unwrap();
    assert_eq!(chk["addresses"].as_u64(), Some(live as u64), "{chk}");
    assert_eq!(chk["leaked"].as_array().map(Vec::len), Some(0), "{chk}");
    // The runtime's DELs (also for the ADDs that failed) give back the rest.
    for (i, ns) in pods.iter().enumerate() {
        del(&d0, &format!("k{i}"), ns);
    }
    let show = d0.ctl_json(&["ipam", "show"]).unwrap();
    let in_use: u64 = show["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["in_use"].as_u64().unwrap())
        .sum();
    assert_eq!(in_use, 0, "{show}");
    eprintln!(
        "kill -9 during {} ADDs: {done} had succeeded, {live} restored, {leaked} leaked and released",
        pods.len()
    );
}

/// A /28 pool of two /29 blocks and `maxBlocksPerHost: 1`: n1 claims one block, n0 fills the
/// other; n0's next pod borrows from n1's block, and the pods still reach each other (n0
/// publishes the borrowed address as a /32, which wins over n1's block). With strictAffinity
/// the next ADD is refused (address exhausted).
#[test]
fn borrowing_through_cni_when_the_29_is_full() {
    if !require_root("borrowing_through_cni_when_the_29_is_full") {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let ra = topo::rack(&mut lab, "ra", "10.1.5").unwrap();
    let etcd = topo::etcd(&mut lab, &ra, "etcd", 100).unwrap();
    let n0 = topo::node(&mut lab, &ra, "n0", 11).unwrap();
    let n1 = topo::node(&mut lab, &ra, "n1", 12).unwrap();
    let d0 = lab.daemon(&n0.ns, &node_cfg(&n0, "", Some(&etcd))).unwrap();
    let d1 = lab.daemon(&n1.ns, &node_cfg(&n1, "", Some(&etcd))).unwrap();
    let file = lab.dir.join("small.yaml");
    let cfg = |strict: bool| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: small}}\n\
             spec: {{cidr: 10.244.50.0/28, blockSize: 29}}\n---\n\
             apiVersion: projectcalico.org/v3\nkind: IPAMConfiguration\nmetadata: {{name: default}}\n\
             spec: {{strictAffinity: {strict}, maxBlocksPerHost: 1}}\n"
        )
    };
    std::fs::write(&file, cfg(false)).unwrap();
    d0.ctl(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    let (p1_ns, p1) = add(&mut lab, &d1, "p1", "default", json!({}));
    assert!(p1.ok, "{} {}", p1.out, p1.stderr);
    let mut n0_pods = Vec::new();
    for i in 0..7 {
        let (ns, o) = add(&mut lab, &d0, &format!("q{i}"), "default", json!({}));
        assert!(o.ok, "q{i}: {} {}", o.out, o.stderr);
        n0_pods.push((ns, o.ip()));
    }
    let same_block = |a: &str, b: &str| {
        let last = |s: &str| s.rsplit('.').next().unwrap().parse::<u8>().unwrap() / 8;
        last(a) == last(b)
    };
    assert!(n0_pods.iter().all(|(_, ip)| !same_block(ip, &p1.ip())));
    // n0's block is full and it may hold no second one: borrow from n1's.
    let (b_ns, b) = add(&mut lab, &d0, "borrower", "default", json!({}));
    assert!(
        b.ok,
        "borrow: {} {}\n{}",
        b.out,
        b.stderr,
        vswitch_lab::tail(&d0.log_text(), 20)
    );
    assert!(
        same_block(&b.ip(), &p1.ip()),
        "{} should come from n1's block (p1 {})",
        b.ip(),
        p1.ip()
    );
    let show = d0.ctl_json(&["ipam", "show"]).unwrap();
    let borrowed: u64 = show["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["borrowed"].as_u64().unwrap())
        .sum();
    assert_eq!(borrowed, 1, "{show}");
    // The borrowed address is reachable from the block's owner and from n0's own pods.
    assert!(
        lab.ping_until(&p1_ns, &b.ip(), Duration::from_secs(15)),
        "p1 -> borrowed {}\npeers n1: {}",
        b.ip(),
        d1.ctl(&["peers"]).unwrap_or_default()
    );
    assert!(
        lab.ping_until(&b_ns, &p1.ip(), Duration::from_secs(5)),
        "borrowed -> p1"
    );
    assert!(
        lab.ping_until(&n0_pods[0].0, &p1.ip(), Duration::from_secs(5)),
        "q0 -> p1"
    );
    // strictAffinity: no more borrowing.
    std::fs::write(&file, cfg(true)).unwrap();
    d0.ctl(&["apply", "-f", file.to_str().unwrap()]).unwrap();
    let (_x_ns, x) = add(&mut lab, &d0, "strict", "default", json!({}));
    assert!(!x.ok, "strictAffinity must refuse borrowing: {}", x.out);
    assert_eq!(x.out["code"], 102, "{}", x.out);
    assert!(
        x.out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("strictAffinity"),
        "{}",
        x.out
    );
}
