//! The `vswitch` CNI plugin under real container runtimes: podman 4 with its CNI backend and
//! containerd 1.6 through `ctr run --cni`. vswitchd runs in a lab node namespace; the runtimes
//! create the pod namespaces themselves (`/run/netns/netns-…`, `/proc/PID/ns/net`) and call the
//! plugin, which asks the daemon over the lab's control socket.
//!
//! Containers run a busybox rootfs built locally (tests/cni/busybox-rootfs.sh). Needs root and
//! podman, containerd, runc and busybox-static (tests/install-deps.sh installs them).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use vswitch_lab::runtimes::{
    conflist, output_text, require_tools, vswitch_plugin, wait_for, Containerd, GlobalCni, Podman,
};
use vswitch_lab::{require_root, Daemon, Lab};

const PODMAN_TOOLS: &[&str] = &["podman", "conmon", "runc", "tar"];
const CONTAINERD_TOOLS: &[&str] = &["containerd", "containerd-shim-runc-v2", "ctr", "runc"];

/// How long a ping inside a network may take to get its first reply.
const REACH: Duration = Duration::from_secs(5);

/// The tenants' shared subnet and the static address each of them uses.
const TENANT_SUBNET: &str = "192.168.1.0/24";
const TENANT_STATIC_IP: &str = "192.168.1.205";
const TENANT_GATEWAY: &str = "192.168.1.1";

/// Built-in IPAM (host-local keys) on `subnet` from `range_start` to `range_end`.
fn ipam(subnet: &str, range_start: &str, range_end: &str, default_route: bool) -> Value {
    let mut v = json!({
        "type": "vswitch",
        "subnet": subnet,
        "rangeStart": range_start,
        "rangeEnd": range_end,
    });
    if default_route {
        v["routes"] = json!([{"dst": "0.0.0.0/0"}]);
    }
    v
}

/// Sets up a lab with one node running vswitchd, then runs `body`; on failure panics with the
/// error chain (which carries the runtime's output) and the daemon's log.
fn with_daemon(test: &str, tools: &[&str], body: impl FnOnce(&mut Lab, &Daemon) -> Result<()>) {
    if !require_root(test) || !require_tools(test, tools) {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    let node = lab.netns("node").expect("node netns");
    let d = lab.daemon(&node, "").expect("vswitchd");
    if let Err(e) = body(&mut lab, &d) {
        panic!(
            "{test}: {e:#}\n--- vswitchd log (last 80 lines) ---\n{}",
            d.log_tail(80)
        );
    }
}

/// `vswitchctl port list` as (id, network, ips) triples.
fn ports(d: &Daemon) -> Result<Vec<(String, String, Vec<String>)>> {
    Ok(d.ports()?
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            let ips = p["ips"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            (s("id"), s("network"), ips)
        })
        .collect())
}

/// The port `id`, if the daemon has it: (network, ips).
fn port(d: &Daemon, id: &str) -> Result<Option<(String, Vec<String>)>> {
    Ok(ports(d)?
        .into_iter()
        .find(|(i, _, _)| i == id)
        .map(|(_, n, ips)| (n, ips)))
}

/// `rx_packets` of port `id` (frames the switch received from the pod).
fn rx_packets(d: &Daemon, id: &str) -> Result<u64> {
    d.port_stats(id)?["rx_packets"]
        .as_u64()
        .with_context(|| format!("no rx_packets for port {id}"))
}

/// The MAC the container has learned for `ip` (from /proc/net/arp), lowercase.
fn neighbour_mac(p: &Podman, name: &str, ip: &str) -> Result<Option<String>> {
    let out = p.ok(&["exec", name, "cat", "/proc/net/arp"])?;
    Ok(out.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&ip)).then(|| f.get(3).unwrap_or(&"").to_ascii_lowercase())
    }))
}

/// The MAC of the container's interface `ifname`, lowercase.
fn iface_mac(p: &Podman, name: &str, ifname: &str) -> Result<String> {
    let path = format!("/sys/class/net/{ifname}/address");
    Ok(p.ok(&["exec", name, "cat", &path])?.to_ascii_lowercase())
}

struct Tenant {
    network: String,
    bridge: String,
    /// Container with the static address (192.168.1.205 in every tenant).
    fixed: String,
    /// Container with an address from the tenant's IPAM range.
    dynamic: String,
    dynamic_ip: String,
}

/// Acceptance 1: three podman networks (three conflists, each its own `bridge`, i.e. isolation
/// domain) on the same 192.168.1.0/24. Each has a container with the static 192.168.1.205 and
/// one with a dynamic address; pings work inside each network and fail across them.
#[test]
fn podman_three_tenants_on_one_subnet() {
    with_daemon(
        "podman_three_tenants_on_one_subnet",
        PODMAN_TOOLS,
        |lab, d| {
            let mut podman = Podman::new(lab)?;
            // A distinct rangeStart per tenant so that the dynamic addresses differ: an
            // address that exists in one tenant only is what the cross-tenant pings aim at.
            let mut tenants = Vec::new();
            for (t, start) in [
                ("a", "192.168.1.100"),
                ("b", "192.168.1.120"),
                ("c", "192.168.1.140"),
            ] {
                let network = lab.name(&format!("tenant-{t}"));
                let bridge = lab.name(&format!("br-{t}"));
                podman.add_network(&conflist(
                    &network,
                    vswitch_plugin(
                        &d.socket,
                        &bridge,
                        ipam(TENANT_SUBNET, start, "192.168.1.220", true),
                        json!({}),
                    ),
                ))?;
                let dynamic = lab.name(&format!("{t}-dyn"));
                let fixed = lab.name(&format!("{t}-205"));
                podman.run_container(&dynamic, &["--network", &network])?;
                podman.run_container(&fixed, &["--network", &network, "--ip", TENANT_STATIC_IP])?;
                let fixed_ip = podman.ipv4(&fixed, "eth0")?;
                ensure!(
                    fixed_ip == TENANT_STATIC_IP,
                    "{fixed} has {fixed_ip}, asked for {TENANT_STATIC_IP}"
                );
                let dynamic_ip = podman.ipv4(&dynamic, "eth0")?;
                tenants.push(Tenant {
                    network,
                    bridge,
                    fixed,
                    dynamic,
                    dynamic_ip,
                });
            }
            let dyn_ips: BTreeSet<&str> = tenants.iter().map(|t| t.dynamic_ip.as_str()).collect();
            ensure!(
                dyn_ips.len() == tenants.len() && !dyn_ips.contains(TENANT_STATIC_IP),
                "dynamic addresses must differ from each other and from the static one: {dyn_ips:?}"
            );

            // The daemon has one port per container, in the tenant's domain, keyed by podman's id.
            let all = ports(d)?;
            ensure!(all.len() == 6, "expected 6 ports, daemon has {all:?}");
            for t in &tenants {
                for (name, ip) in [
                    (&t.fixed, TENANT_STATIC_IP),
                    (&t.dynamic, t.dynamic_ip.as_str()),
                ] {
                    let id = format!("{}/eth0", podman.container_id(name)?);
                    let got = port(d, &id)?;
                    ensure!(
                        got == Some((t.bridge.clone(), vec![ip.to_string()])),
                        "port {id} of {name} in network {}: expected domain {} with {ip}, got {got:?}",
                        t.network,
                        t.bridge
                    );
                }
            }

            // Inside each tenant: both ways, and the gateway the switch answers for. The static
            // address is answered by the tenant's own container (the ARP entry carries its MAC).
            for t in &tenants {
                for (from, to) in [
                    (&t.dynamic, TENANT_STATIC_IP),
                    (&t.fixed, t.dynamic_ip.as_str()),
                    (&t.fixed, TENANT_GATEWAY),
                ] {
                    let (ok, out) = podman.ping_until(from, to, None, REACH);
                    ensure!(ok, "{from} ({}) cannot ping {to}: {out}", t.network);
                }
                let learned = neighbour_mac(&podman, &t.dynamic, TENANT_STATIC_IP)?;
                let own = iface_mac(&podman, &t.fixed, "eth0")?;
                ensure!(
                    learned.as_deref() == Some(own.as_str()),
                    "{} resolved {TENANT_STATIC_IP} to {learned:?}, but its tenant's container has {own}",
                    t.dynamic
                );
            }

            // Across tenants: an address that exists only in another tenant is unreachable.
            let mut cross = Vec::new();
            for t in &tenants {
                for other in tenants.iter().filter(|o| o.network != t.network) {
                    for from in [&t.fixed, &t.dynamic] {
                        cross.push((from.as_str(), other.dynamic_ip.as_str(), None));
                    }
                }
            }
            let answered = podman.pings_answered(&cross);
            ensure!(
                answered.is_empty(),
                "isolation broken, pings across tenants answered:\n{}",
                answered.join("\n")
            );

            // Removing the containers runs CNI DEL for each: no port is left.
            podman.remove_all()?;
            let left = ports(d)?;
            ensure!(left.is_empty(), "ports left after podman rm: {left:?}");
            Ok(())
        },
    );
}

/// Acceptance 2: one podman container on two vswitch networks at once, "business" (eth0,
/// 10.77.0.0/24, default route) and "management" (net1, 172.31.77.0/24). Each peer is reached
/// over the matching interface only.
#[test]
fn podman_business_and_management_networks() {
    with_daemon(
        "podman_business_and_management_networks",
        PODMAN_TOOLS,
        |lab, d| {
            let mut podman = Podman::new(lab)?;
            let business = lab.name("business");
            let management = lab.name("management");
            let (biz_domain, mgmt_domain) = (lab.name("biz"), lab.name("mgmt"));
            let shared_bridge = lab.name("br-shared");
            for (net, domain, ipam) in [
                (
                    &business,
                    &biz_domain,
                    ipam("10.77.0.0/24", "10.77.0.10", "10.77.0.200", true),
                ),
                (
                    &management,
                    &mgmt_domain,
                    ipam("172.31.77.0/24", "172.31.77.10", "172.31.77.200", false),
                ),
            ] {
                // The same `bridge` for both: the `domain` key takes precedence over it.
                let plugin =
                    vswitch_plugin(&d.socket, &shared_bridge, ipam, json!({"domain": domain}));
                podman.add_network(&conflist(net, plugin))?;
            }
            let (multi_biz, multi_mgmt) = ("10.77.0.10", "172.31.77.10");
            let (biz_peer_ip, mgmt_peer_ip) = ("10.77.0.20", "172.31.77.20");
            let multi = lab.name("multi");
            let biz_peer = lab.name("biz-peer");
            let mgmt_peer = lab.name("mgmt-peer");
            podman.run_container(
                &multi,
                &[
                    "--network",
                    &format!("{business}:ip={multi_biz},interface_name=eth0"),
                    "--network",
                    &format!("{management}:ip={multi_mgmt},interface_name=net1"),
                ],
            )?;
            podman.run_container(&biz_peer, &["--network", &business, "--ip", biz_peer_ip])?;
            podman.run_container(
                &mgmt_peer,
                &["--network", &management, "--ip", mgmt_peer_ip],
            )?;

            ensure!(podman.ipv4(&multi, "eth0")? == multi_biz, "eth0 of {multi}");
            ensure!(
                podman.ipv4(&multi, "net1")? == multi_mgmt,
                "net1 of {multi}"
            );
            let id = podman.container_id(&multi)?;
            let (eth0_port, net1_port) = (format!("{id}/eth0"), format!("{id}/net1"));
            for (p, domain, ip) in [
                (&eth0_port, &biz_domain, multi_biz),
                (&net1_port, &mgmt_domain, multi_mgmt),
            ] {
                let got = port(d, p)?;
                ensure!(
                    got == Some((domain.clone(), vec![ip.to_string()])),
                    "port {p}: expected domain {domain} with {ip}, got {got:?}; all: {:?}",
                    ports(d)?
                );
            }

            // The kernel routes each peer over the matching interface, and the pings get there.
            for (dst, dev) in [(biz_peer_ip, "eth0"), (mgmt_peer_ip, "net1")] {
                let route = podman.ok(&["exec", &multi, "ip", "route", "get", dst])?;
                ensure!(
                    route.split_whitespace().skip_while(|w| *w != "dev").nth(1) == Some(dev),
                    "route to {dst} should use {dev}: {route}"
                );
                for iface in [None, Some(dev)] {
                    let (ok, out) = podman.ping_until(&multi, dst, iface, REACH);
                    ensure!(ok, "{multi} cannot ping {dst} (interface {iface:?}): {out}");
                }
            }

            // Forced out of the management interface, the business peer is not there: the frames
            // do leave on net1 (its port counts them) but nothing in management answers.
            let before = rx_packets(d, &net1_port)?;
            let (ok, out) = podman.ping(&multi, biz_peer_ip, Some("net1"));
            ensure!(!ok, "business peer {biz_peer_ip} answered over net1: {out}");
            let after = rx_packets(d, &net1_port)?;
            ensure!(
                after > before,
                "ping -I net1 {biz_peer_ip} sent nothing on the management port ({before} -> {after})"
            );
            // The management peer is not reachable over the business interface, and the
            // single-network peers cannot reach the other network's side of the container.
            let answered = podman.pings_answered(&[
                (&multi, mgmt_peer_ip, Some("eth0")),
                (&biz_peer, multi_mgmt, None),
                (&mgmt_peer, multi_biz, None),
            ]);
            ensure!(
                answered.is_empty(),
                "isolation broken, pings answered:\n{}",
                answered.join("\n")
            );

            podman.remove_all()?;
            let left = ports(d)?;
            ensure!(left.is_empty(), "ports left after podman rm: {left:?}");
            Ok(())
        },
    );
}

/// Acceptance 3: containerd 1.6 with `ctr run --cni`, which takes the first conflist of
/// /etc/cni/net.d and plugins from /opt/cni/bin (installed for the test's duration). Two
/// containers ping each other; killing a task runs CNI DEL (port gone, address released: another
/// container then gets the same static address, which was refused while it was taken).
#[test]
fn containerd_ctr_run_cni() {
    with_daemon("containerd_ctr_run_cni", CONTAINERD_TOOLS, |lab, d| {
        let network = lab.name("ctd-net");
        let bridge = lab.name("br-ctd");
        let static_ip = "192.168.1.150";
        // ctr passes no per-container arguments: the static address comes from the conflist's
        // `args.cni.ips`, present only while a container that should get it is started.
        let conf = |static_ip: Option<&str>| {
            let extra = match static_ip {
                Some(ip) => json!({"args": {"cni": {"ips": [ip]}}}),
                None => json!({}),
            };
            conflist(
                &network,
                vswitch_plugin(
                    &d.socket,
                    &bridge,
                    ipam(TENANT_SUBNET, "192.168.1.100", "192.168.1.220", true),
                    extra,
                ),
            )
        };
        let cni = GlobalCni::install(lab, &conf(Some(static_ip)))?;
        let mut ctd = Containerd::start(lab)?;
        let ctd_log = |c: &Containerd| vswitch_lab::tail(&c.log_text(), 30);

        let (c1, c2, c3, c4) = ("c1", "c2", "c3", "c4");
        ctd.run_cni(c1)
            .with_context(|| format!("containerd log:\n{}", ctd_log(&ctd)))?;
        cni.update(&conf(None))?;
        ctd.run_cni(c2)
            .with_context(|| format!("containerd log:\n{}", ctd_log(&ctd)))?;
        let ns = ctd.namespace.clone();
        let port_id = |c: &str| format!("{ns}-{c}/eth0");
        let (p1, p2) = (port_id(c1), port_id(c2));
        let got1 = port(d, &p1)?;
        ensure!(
            got1 == Some((bridge.clone(), vec![static_ip.to_string()])),
            "port {p1}: expected {static_ip} in {bridge}, got {got1:?}; all: {:?}",
            ports(d)?
        );
        let ip2 = match port(d, &p2)? {
            Some((net, ips)) if net == bridge && ips.len() == 1 => ips[0].clone(),
            other => anyhow::bail!("port {p2}: {other:?}; all: {:?}", ports(d)?),
        };

        for (from, to) in [(c1, ip2.as_str()), (c2, static_ip), (c1, TENANT_GATEWAY)] {
            let (ok, out) = ctd.ping_until(from, to, REACH);
            ensure!(ok, "container {from} cannot ping {to}: {out}");
        }

        // While c1 holds the static address, another container cannot have it.
        cni.update(&conf(Some(static_ip)))?;
        match ctd.run_cni(c3) {
            Ok(()) => anyhow::bail!("{c3} started with {static_ip}, which {c1} holds"),
            Err(e) => ensure!(
                format!("{e:#}").contains(static_ip),
                "{c3} failed for another reason than the taken address: {e:#}"
            ),
        }
        ensure!(
            port(d, &port_id(c3))?.is_none(),
            "failed ADD left port {}",
            port_id(c3)
        );

        // Killing c1's task: its `ctr run` runs CNI DEL and removes the container.
        let out = ctd.kill(c1)?;
        let gone = wait_for(Duration::from_secs(10), || {
            port(d, &p1).ok().filter(Option::is_none)
        });
        ensure!(
            gone.is_some(),
            "port {p1} still there after the task was killed; ctr: {out}"
        );
        let containers = ctd.ctr(&["container", "list", "--quiet"])?;
        ensure!(
            !containers.split_whitespace().any(|c| c == c1),
            "container {c1} not removed: {containers}"
        );

        // Released: a new container (another CNI attachment) gets the same static address.
        ctd.run_cni(c4)
            .with_context(|| format!("re-ADD of {static_ip} after {c1} was deleted"))?;
        let got4 = port(d, &port_id(c4))?;
        ensure!(
            got4 == Some((bridge.clone(), vec![static_ip.to_string()])),
            "port {}: expected {static_ip}, got {got4:?}",
            port_id(c4)
        );
        let (ok, out) = ctd.ping_until(c4, TENANT_GATEWAY, REACH);
        ensure!(ok, "{c4} cannot ping the gateway: {out}");
        // c2 still has c1's MAC cached for the address (for up to a minute: REACHABLE, then
        // STALE, DELAY, PROBE) and vswitch sends no gratuitous ARP on ADD, unlike the bridge
        // plugin. The container announces itself, and the switch floods that to c2.
        let garp = ctd.exec(c4, &["arping", "-U", "-c", "1", "-I", "eth0", static_ip])?;
        ensure!(
            garp.status.success(),
            "gratuitous ARP from {c4}: {}",
            output_text(&garp)
        );
        let (ok, out) = ctd.ping_until(c2, static_ip, REACH);
        ensure!(ok, "{c2} cannot ping {c4} at {static_ip}: {out}");

        for c in [c2, c4] {
            ctd.kill(c)?;
        }
        let left = wait_for(Duration::from_secs(10), || {
            ports(d).ok().filter(|p| p.is_empty())
        });
        ensure!(
            left.is_some(),
            "ports left after every task was killed: {:?}",
            ports(d)?
        );
        Ok(())
    });
}
