//! Restarting vswitchd does not take pods' networking away (issue 10, part 1).
//!
//! Node n1 runs a tap pod and an AF_PACKET pod (both added through the CNI plugin with the
//! built-in IPAM); node n2, a VXLAN peer on the same rack, runs a third pod. Three ping flows
//! (`ping -D -i 0.05`, one per pod: tap → af_packet on n1, af_packet → n2, n2 → tap) and an
//! iperf3 stream (tap pod → n2 pod) run while n1's daemon is killed (`kill -9`, a crash) or
//! stopped (SIGTERM, the first half of an upgrade) and started again on the same config and
//! state dir, or stopped with SIGTERM and replaced by another build of vswitchd (an upgrade:
//! `vswitchd-upgrade`, built by `tests/run.sh` with another `VSWITCH_BUILD_ID`). Then:
//! - every flow answers again within 1 s of the daemon being ready (the gap is printed);
//! - the TCP stream opened before the stop completes;
//! - `port list` shows every pod as `restored`, and `ipam show` is unchanged;
//! - CNI DEL then ADD of both pods works (the interface goes away, comes back, and pings).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use vswitch_lab::cni;
use vswitch_lab::topo::{self};
use vswitch_lab::{require_root, Daemon, Lab};

const NET_TOML: &str =
    "[[network]]\nname = \"net\"\nkind = \"l2\"\nsubnet = \"192.168.7.0/24\"\nvni = 700\n";
/// The n2 pod (static address, `port add`).
const REMOTE_IP: &str = "192.168.7.50";

fn conf(d: &Daemon, attach: &str) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "net",
        "type": "vswitch",
        "socket": d.socket.display().to_string(),
        "attach": attach,
        "ipam": {"type": "vswitch", "subnet": "192.168.7.0/24", "rangeStart": "192.168.7.100",
                 "rangeEnd": "192.168.7.200"}
    })
}

/// ADD through the plugin; the pod's IP.
fn add(d: &Daemon, cid: &str, ns: &str, attach: &str) -> String {
    let o = cni::call("ADD", cid, ns, &conf(d, attach));
    assert!(
        o.ok,
        "ADD {cid}: {} {}\n{}",
        o.out,
        o.stderr,
        d.log_tail(30)
    );
    let out = o.out;
    out["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("ADD {cid}: no address in {out}"))
        .to_string()
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Timestamps (`ping -D`) of the replies in a ping log.
fn reply_times(log: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect()
}

fn ipam(d: &Daemon) -> Value {
    d.ctl_json(&["ipam", "show", "net"]).unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Term,
    /// SIGTERM, then start `vswitchd-upgrade` (another build) instead of `vswitchd`.
    Upgrade,
}

/// The second vswitchd build of the upgrade test, next to `vswitchd`.
fn upgrade_binary(test: &str) -> std::path::PathBuf {
    let p = vswitch_lab::bin_dir().join("vswitchd-upgrade");
    assert!(
        p.exists(),
        "{test}: {} not found. It is a second build of vswitchd with another build id; \
         `bash tests/run.sh` makes it, or by hand (same target dir): \
         VSWITCH_BUILD_ID=upgrade-test cargo build --bin vswitchd && \
         cp target/debug/vswitchd target/debug/vswitchd-upgrade && cargo build --bin vswitchd",
        p.display()
    );
    p
}

fn scenario(test: &str, how: Stop) {
    if !require_root(test) {
        return;
    }
    let upgrade = (how == Stop::Upgrade).then(|| upgrade_binary(test));
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let rack = topo::rack(&mut lab, "rk", "10.1.7").unwrap();
    let n1 = topo::node(&mut lab, &rack, "n1", 11).unwrap();
    let n2 = topo::node(&mut lab, &rack, "n2", 12).unwrap();
    let cfg1 = format!("{}{}{NET_TOML}", n1.node_toml(None), n2.peer_toml(&[]));
    let cfg2 = format!("{}{}{NET_TOML}", n2.node_toml(None), n1.peer_toml(&[]));
    let d1 = lab.daemon(&n1.ns, &cfg1).unwrap();
    let d2 = lab.daemon(&n2.ns, &cfg2).unwrap();
    let build_before = d1.build_id().unwrap();
    assert!(!build_before.is_empty(), "{test}: status shows no build id");
    let pt = lab.netns("pt").unwrap();
    let pa = lab.netns("pa").unwrap();
    let tap_ip = add(&d1, "cid-tap", &pt, "tap");
    let afp_ip = add(&d1, "cid-afp", &pa, "af_packet");
    let pr = topo::new_pod(
        &mut lab,
        &d2,
        "pr",
        "net",
        "eth0",
        "02:00:00:00:07:50",
        REMOTE_IP,
    )
    .unwrap()
    .ns;
    let flows = [
        ("tap->afp", pt.clone(), afp_ip.clone()),
        ("afp->n2", pa.clone(), REMOTE_IP.to_string()),
        ("n2->tap", pr.clone(), tap_ip.clone()),
    ];
    for (name, ns, dst) in &flows {
        assert!(
            topo::ping_until(&lab, ns, dst, None, Duration::from_secs(8)).is_some(),
            "{test}: {name} never worked before the restart\n{}",
            topo::logs(&[&d1, &d2])
        );
    }
    let ipam_before = ipam(&d1);
    let links_before = (lab.link_names(&pt).unwrap(), lab.link_names(&pa).unwrap());

    // Traffic running across the stop: three ping flows and one TCP stream.
    let mut pings = Vec::new();
    for (name, ns, dst) in &flows {
        let log = lab.dir.join(format!("ping-{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let pid = lab
            .spawn(
                Command::new("ip")
                    .args([
                        "netns", "exec", ns, "ping", "-D", "-n", "-i", "0.05", "-W", "1",
                    ])
                    .args(["-w", "40", dst])
                    .stdout(f)
                    .stderr(Stdio::null()),
            )
            .unwrap();
        pings.push((*name, pid, log));
    }
    lab.spawn(
        Command::new("ip")
            .args(["netns", "exec", &pr, "iperf3", "-s", "-1", "-p", "5207"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (pt2, rip) = (pt.clone(), REMOTE_IP.to_string());
    let iperf = std::thread::spawn(move || {
        Command::new("ip")
            .args([
                "netns", "exec", &pt2, "timeout", "60", "iperf3", "-c", &rip, "-p",
            ])
            .args(["5207", "-t", "14", "-b", "20M", "-i", "0"])
            .output()
    });
    std::thread::sleep(Duration::from_secs(2));

    match how {
        Stop::Kill => lab.kill(d1.pid()),
        Stop::Term | Stop::Upgrade => lab.stop(d1.pid()),
    }
    // The daemon is gone (reaped): nothing is forwarded on n1 from here until the restart.
    let t_stop = now();
    // Pods keep their interfaces while no daemon runs.
    let links_down = (lab.link_names(&pt).unwrap(), lab.link_names(&pa).unwrap());
    assert_eq!(
        links_down,
        links_before,
        "{test}: pod interfaces changed with the daemon stopped\n{}",
        d1.log_tail(20)
    );
    std::thread::sleep(Duration::from_millis(700));
    let t0 = Instant::now();
    let d1 = match &upgrade {
        Some(new) => lab.daemon_with(new, &n1.ns, &cfg1).unwrap(),
        None => lab.daemon(&n1.ns, &cfg1).unwrap(),
    };
    let t_ready = now();
    let build_after = d1.build_id().unwrap();
    if upgrade.is_some() {
        assert!(
            build_after.starts_with("upgrade-") && build_after != build_before,
            "{test}: after the upgrade status shows build {build_after:?} (before: \
             {build_before:?}); vswitchd-upgrade must be built with VSWITCH_BUILD_ID=upgrade-…"
        );
        assert!(
            !build_before.starts_with("upgrade-"),
            "{test}: the daemon before the upgrade is already build {build_before:?}: \
             rebuild vswitchd without VSWITCH_BUILD_ID"
        );
        println!("{test}: upgraded from build {build_before} to {build_after}");
    } else {
        assert_eq!(
            build_after, build_before,
            "{test}: same binary, same build id"
        );
    }
    println!(
        "{test}: daemon down {:.2} s, ready {:.0} ms after start",
        t_ready - t_stop,
        t0.elapsed().as_secs_f64() * 1e3
    );

    // Every flow answers again within 1 s of ready.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut gaps = Vec::new();
    for (name, _, log) in &pings {
        let gap = loop {
            if let Some(t) = reply_times(log).into_iter().find(|t| *t > t_stop) {
                break Some(t - t_ready);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        gaps.push((*name, gap));
    }
    println!("{test}: first reply after ready, per flow: {gaps:?} (s; negative = before ready)");
    for (name, gap) in &gaps {
        match gap {
            Some(g) => assert!(
                *g < 1.0,
                "{test}: {name} resumed {g:.2} s after ready (> 1 s)\n{}",
                d1.log_tail(30)
            ),
            None => panic!(
                "{test}: {name} never resumed after the restart; ping log tail:\n{}\n{}",
                pings
                    .iter()
                    .find(|p| p.0 == *name)
                    .map(|p| vswitch_lab::tail(
                        &std::fs::read_to_string(&p.2).unwrap_or_default(),
                        8
                    ))
                    .unwrap_or_default(),
                topo::logs(&[&d1, &d2])
            ),
        }
    }

    // The TCP stream opened before the stop completes.
    let out = iperf.join().unwrap().unwrap();
    assert!(
        out.status.success(),
        "{test}: iperf3 stream across the restart failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every pod listed, restored; addresses unchanged.
    let ports = d1.ports().unwrap();
    assert_eq!(ports.len(), 2, "{test}: port list after restart: {ports:?}");
    for p in &ports {
        assert_eq!(p["state"], "restored", "{test}: {p}");
    }
    assert_eq!(
        ipam(&d1),
        ipam_before,
        "{test}: IPAM changed by the restart"
    );
    assert!(
        d1.log_text().contains("port restored"),
        "{test}: no reconciliation in the log"
    );
    for (_, pid, _) in &pings {
        lab.stop(*pid);
    }

    // DEL then ADD (a runtime's recovery) works on restored pods of both kinds.
    for (cid, ns, attach) in [("cid-tap", &pt, "tap"), ("cid-afp", &pa, "af_packet")] {
        let o = cni::call("DEL", cid, ns, &conf(&d1, attach));
        assert!(o.ok, "{test}: DEL {cid}: {} {}", o.out, o.stderr);
        let links = lab.link_names(ns).unwrap();
        assert!(
            !links.iter().any(|l| l == "eth0"),
            "{test}: eth0 left in {ns} after DEL: {links:?}"
        );
        let ip = add(&d1, cid, ns, attach);
        assert!(
            topo::ping_until(&lab, ns, REMOTE_IP, None, Duration::from_secs(5)).is_some(),
            "{test}: {cid} ({ip}) unreachable after DEL+ADD\n{}",
            d1.log_tail(30)
        );
    }
}

#[test]
fn kill_9_keeps_pods_networking() {
    scenario("kill_9_keeps_pods_networking", Stop::Kill);
}

#[test]
fn sigterm_and_start_again_keeps_pods_networking() {
    scenario("sigterm_and_start_again_keeps_pods_networking", Stop::Term);
}

/// An upgrade: SIGTERM the old daemon, start another build on the same config and state dir.
#[test]
fn sigterm_and_upgrade_to_a_new_build_keeps_pods_networking() {
    scenario(
        "sigterm_and_upgrade_to_a_new_build_keeps_pods_networking",
        Stop::Upgrade,
    );
}

/// A port whose pod went away while the daemon was down is reported gone, not re-created, and
/// `port del` forgets it.
#[test]
fn pod_gone_while_down_is_reported() {
    if !require_root("pod_gone_while_down_is_reported") {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let toml = "[[network]]\nname = \"net\"\nsubnet = \"192.168.8.0/24\"\n";
    let d = lab.daemon(&node, toml).unwrap();
    let keep = lab.netns("keep").unwrap();
    let lost = lab.netns("lost").unwrap();
    d.port_add(&keep, "net", "eth1", "keep", None, &["192.168.8.2"])
        .unwrap();
    d.ctl(&[
        "port",
        "add",
        "--netns",
        &lost,
        "--network",
        "net",
        "--ifname",
        "eth1",
        "--id",
        "lost",
        "--ip",
        "192.168.8.3",
        "--attach",
        "af_packet",
    ])
    .unwrap();
    let host = d.ports().unwrap()[1]["host_ifname"]
        .as_str()
        .unwrap()
        .to_string();
    lab.kill(d.pid());
    Command::new("ip")
        .args(["netns", "del", &lost])
        .status()
        .unwrap();
    let d = lab.daemon(&node, toml).unwrap();
    let ports = d.ports().unwrap();
    let state = |id: &str| {
        ports
            .iter()
            .find(|p| p["id"] == id)
            .map(|p| p["state"].clone())
    };
    assert_eq!(state("keep"), Some(json!("restored")), "{ports:?}");
    assert_eq!(state("lost"), Some(json!("gone")), "{ports:?}");
    assert!(d.log_text().contains("port gone"), "{}", d.log_tail(20));
    let host_links = lab.link_names(&node).unwrap();
    assert!(
        !host_links.contains(&host),
        "host end {host} of the gone pod left behind: {host_links:?}"
    );
    d.ctl(&["port", "del", "lost"]).unwrap();
    assert_eq!(d.ports().unwrap().len(), 1);
}

/// Through podman (CNI backend): containers started before a `kill -9` of vswitchd keep their
/// network after the restart, and `podman rm` afterwards removes their ports (CNI DEL).
#[test]
fn podman_containers_survive_a_daemon_kill() {
    use vswitch_lab::runtimes::{conflist, require_tools, vswitch_plugin, Podman};
    let test = "podman_containers_survive_a_daemon_kill";
    if !require_root(test) || !require_tools(test, &["podman", "conmon", "runc", "tar"]) {
        return;
    }
    let _serial = topo::serial();
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    // Declared after the lab: dropped first, while a daemon still answers the DELs.
    let mut podman = Podman::new(&lab).unwrap();
    let fail = |what: &str, e: &dyn std::fmt::Display, d: &Daemon| -> ! {
        panic!("{test}: {what}: {e:#}\n{}", d.log_tail(40))
    };
    let network = lab.name("rs");
    let ipam = json!({"type": "vswitch", "subnet": "192.168.9.0/24",
                      "rangeStart": "192.168.9.100", "rangeEnd": "192.168.9.200"});
    podman
        .add_network(&conflist(
            &network,
            vswitch_plugin(&d.socket, &lab.name("br-rs"), ipam, json!({})),
        ))
        .unwrap_or_else(|e| fail("add network", &e, &d));
    let (a, b) = (lab.name("ra"), lab.name("rb"));
    for c in [&a, &b] {
        podman
            .run_container(c, &["--network", &network])
            .unwrap_or_else(|e| fail("podman run", &e, &d));
    }
    let b_ip = podman.ipv4(&b, "eth0").unwrap();
    let (ok, out) = podman.ping_until(&a, &b_ip, None, Duration::from_secs(5));
    assert!(
        ok,
        "{test}: ping before the kill: {out}\n{}",
        d.log_tail(30)
    );

    lab.kill(d.pid());
    let d = lab.daemon(&node, "").unwrap();
    let t0 = Instant::now();
    let (ok, out) = podman.ping_until(&a, &b_ip, None, Duration::from_secs(5));
    assert!(
        ok,
        "{test}: ping after the restart: {out}\n{}",
        d.log_tail(30)
    );
    println!(
        "{test}: first answered ping {:.0} ms after ready",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let ports = d.ports().unwrap();
    assert_eq!(ports.len(), 2, "{test}: {ports:?}");
    assert!(ports.iter().all(|p| p["state"] == "restored"), "{ports:?}");

    podman
        .remove_all()
        .unwrap_or_else(|e| fail("podman rm", &e, &d));
    let left = d.ports().unwrap();
    assert!(
        left.is_empty(),
        "{test}: ports left after podman rm: {left:?}"
    );
    let allocs = d.ctl_json(&["ipam", "show", &lab.name("br-rs")]).unwrap();
    assert_eq!(allocs, json!([]), "{test}: addresses left after podman rm");
}
