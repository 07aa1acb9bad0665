//! Open vSwitch's userspace datapath (`datapath_type=netdev`), from Debian's openvswitch-switch
//! binaries, started by the harness: its own database file, run, log and config directories
//! under the lab's temporary directory (OVS_RUNDIR, OVS_DBDIR, ...), so a system OVS, if any, is
//! never touched. ovsdb-server and ovs-vswitchd run in the foreground as lab children and are
//! stopped by PID with the lab.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build_kernel::{ip, offloads_off, pod_addr, two_nodes, veth, UNDERLAY};
use crate::procs::{check_interrupt, in_netns, quick_ok, sleep_checked};
use crate::systems::{Kind, Pair, Spec, CLIENT_IP, SERVER_IP};

pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// One OVS instance (database + vswitchd) inside a node namespace.
pub struct Ovs {
    dir: PathBuf,
}

impl Ovs {
    fn env(&self, c: &mut Command) {
        for k in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            c.env(k, &self.dir);
        }
        c.env("OVS_PKGDATADIR", "/usr/share/openvswitch")
            .env("OVS_BINDIR", "/usr/bin");
    }

    fn db(&self) -> String {
        format!("unix:{}", self.dir.join("db.sock").display())
    }

    /// `ovs-vsctl --db=OURS --timeout=20 ARGS...`.
    pub fn vsctl(&self, labdir: &Path, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ovs-vsctl");
        self.env(&mut c);
        c.arg(format!("--db={}", self.db()))
            .arg("--timeout=20")
            .args(args);
        quick_ok(&mut c, labdir, "ovs-vsctl")
    }

    /// `ovs-appctl -t OUR-vswitchd ARGS...`.
    pub fn appctl(&self, labdir: &Path, args: &[&str]) -> Result<String> {
        let mut c = Command::new("ovs-appctl");
        self.env(&mut c);
        c.arg("-t")
            .arg(self.dir.join("ovs-vswitchd.ctl"))
            .arg("--timeout=10")
            .args(args);
        quick_ok(&mut c, labdir, "ovs-appctl")
    }
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ok() {
        check_interrupt()?;
        if Instant::now() > deadline {
            bail!("{what} not ready within {timeout:?}");
        }
        sleep_checked(Duration::from_millis(50))?;
    }
    Ok(())
}

/// Starts ovsdb-server (in the root namespace: it only serves a unix socket) and ovs-vswitchd
/// inside `node`; `tso`: other_config:userspace-tso-enable (read once at start).
pub fn start(p: &mut Pair, node: &str, tag: &str, tso: bool) -> Result<Ovs> {
    let dir = p.lab.dir.join(format!("ovs-{tag}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let o = Ovs { dir: dir.clone() };
    let db_file = dir.join("conf.db");
    let mut c = Command::new("ovsdb-tool");
    o.env(&mut c);
    c.arg("create").arg(&db_file).arg(SCHEMA);
    quick_ok(&mut c, &p.lab.dir, "ovsdb-tool").context("ovsdb-tool create")?;

    let log = std::fs::File::create(dir.join("ovsdb-server.out"))?;
    let mut c = Command::new("ovsdb-server");
    o.env(&mut c);
    c.arg(&db_file)
        .arg(format!("--remote=punix:{}", dir.join("db.sock").display()))
        .arg(format!(
            "--pidfile={}",
            dir.join("ovsdb-server.pid").display()
        ))
        .arg(format!(
            "--unixctl={}",
            dir.join("ovsdb-server.ctl").display()
        ))
        .arg(format!(
            "--log-file={}",
            dir.join("ovsdb-server.log").display()
        ))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    p.lab.spawn(&mut c).context("start ovsdb-server")?;
    let sock = dir.join("db.sock");
    wait_for("ovsdb-server socket", Duration::from_secs(10), || {
        sock.exists()
    })?;
    o.vsctl(&p.lab.dir, &["--no-wait", "init"])?;
    o.vsctl(
        &p.lab.dir,
        &[
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            &format!("other_config:userspace-tso-enable={tso}"),
        ],
    )?;

    let log = std::fs::File::create(dir.join("ovs-vswitchd.out"))?;
    let mut c = in_netns(node, &["ovs-vswitchd"]);
    o.env(&mut c);
    c.arg(o.db())
        .arg(format!(
            "--pidfile={}",
            dir.join("ovs-vswitchd.pid").display()
        ))
        .arg(format!(
            "--unixctl={}",
            dir.join("ovs-vswitchd.ctl").display()
        ))
        .arg(format!(
            "--log-file={}",
            dir.join("ovs-vswitchd.log").display()
        ))
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log));
    let pid = p.lab.spawn(&mut c).context("start ovs-vswitchd")?;
    p.switch_pids.push(pid);
    p.logs.push(dir.join("ovs-vswitchd.log"));
    let labdir = p.lab.dir.clone();
    wait_for(
        "ovs-vswitchd control socket",
        Duration::from_secs(15),
        || o.appctl(&labdir, &["version"]).is_ok(),
    )?;
    if let Ok(v) = o.appctl(&p.lab.dir, &["version"]) {
        p.notes.push(format!(
            "{tag}: {} (pid {pid}, userspace-tso-enable={tso})",
            v.lines().next().unwrap_or("").trim()
        ));
    }
    Ok(o)
}

fn add_netdev_bridge(o: &Ovs, labdir: &Path, br: &str) -> Result<()> {
    o.vsctl(
        labdir,
        &[
            "add-br",
            br,
            "--",
            "set",
            "bridge",
            br,
            "datapath_type=netdev",
        ],
    )
    .with_context(|| format!("add-br {br}"))?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
/// A tap port `name` created by OVS in its node namespace, then moved into the pod with
/// `cidr`; OVS keeps the tap's file descriptor, so the port works from any namespace.
fn tap_port(
    p: &Pair,
    o: &Ovs,
    node: &str,
    br: &str,
    name: &str,
    pod: &str,
    cidr: &str,
    mtu: Option<u32>,
) -> Result<()> {
    o.vsctl(
        &p.lab.dir,
        &[
            "add-port",
            br,
            name,
            "--",
            "set",
            "Interface",
            name,
            "type=tap",
        ],
    )
    .with_context(|| format!("add tap port {name}"))?;
    let labdir = p.lab.dir.clone();
    wait_for(&format!("tap {name}"), Duration::from_secs(10), || {
        ip_ok(&labdir, &["-n", node, "link", "show", name])
    })?;
    ip(&p.lab, &["-n", node, "link", "set", name, "netns", pod])?;
    pod_addr(&p.lab, pod, name, cidr, mtu)?;
    ip(&p.lab, &["-n", pod, "link", "set", name, "up"])?;
    Ok(())
}

fn ip_ok(labdir: &Path, args: &[&str]) -> bool {
    quick_ok(Command::new("ip").args(args), labdir, "ip").is_ok()
}

/// One node: pods on tap ports (TSO on) or on veths read with AF_PACKET (offloads off).
pub fn single(p: &mut Pair, spec: Spec) -> Result<()> {
    let node = p.lab.netns("n")?;
    p.client_ns = p.lab.netns("a")?;
    p.server_ns = p.lab.netns("b")?;
    let tap = spec.kind == Kind::OvsTap;
    let o = start(p, &node, "node", tap)?;
    add_netdev_bridge(&o, &p.lab.dir, "br0")?;
    let pods = [
        (p.client_ns.clone(), CLIENT_IP, "pa"),
        (p.server_ns.clone(), SERVER_IP, "pb"),
    ];
    for (ns, addr, port) in &pods {
        let cidr = format!("{addr}/24");
        if tap {
            tap_port(p, &o, &node, "br0", port, ns, &cidr, None)?;
        } else {
            veth(&p.lab, &node, port, ns, "eth0")?;
            pod_addr(&p.lab, ns, "eth0", &cidr, None)?;
            offloads_off(&p.lab, ns, "eth0")?;
            offloads_off(&p.lab, &node, port)?;
            o.vsctl(&p.lab.dir, &["add-port", "br0", port])
                .with_context(|| format!("add port {port}"))?;
        }
    }
    if tap {
        p.client_if = "pa".into();
        p.server_if = "pb".into();
    } else {
        p.client_if = "eth0".into();
        p.server_if = "eth0".into();
    }
    Ok(())
}

/// Two nodes, each an OVS instance: br-int (pod tap + VXLAN port, VNI 42) and br-phy (the
/// underlay veth, the node's underlay address on br-phy's internal port), OVS's native
/// userspace tunnelling. Userspace TSO stays off: OVS 3.1 drops offloaded packets at the tunnel
/// push ("Tunneling packets with HW offload flags is not supported").
pub fn vxlan(p: &mut Pair, _spec: Spec) -> Result<()> {
    p.client_ns = p.lab.netns("a")?;
    p.server_ns = p.lab.netns("b")?;
    let (n1, n2) = two_nodes(p, true)?;
    let pods = [
        (n1.clone(), p.client_ns.clone(), CLIENT_IP, "pa"),
        (n2.clone(), p.server_ns.clone(), SERVER_IP, "pb"),
    ];
    let mut inst = Vec::new();
    for (k, (node, pod, addr, port)) in pods.iter().enumerate() {
        let o = start(p, node, &format!("n{}", k + 1), false)?;
        let (local, remote) = (UNDERLAY[k], UNDERLAY[1 - k]);
        add_netdev_bridge(&o, &p.lab.dir, "br-phy")?;
        o.vsctl(&p.lab.dir, &["add-port", "br-phy", "ul0"])?;
        ip(&p.lab, &["-n", node, "addr", "flush", "dev", "ul0"])?;
        ip(
            &p.lab,
            &[
                "-n",
                node,
                "addr",
                "add",
                &format!("{local}/24"),
                "dev",
                "br-phy",
            ],
        )?;
        ip(&p.lab, &["-n", node, "link", "set", "br-phy", "up"])?;
        add_netdev_bridge(&o, &p.lab.dir, "br-int")?;
        o.vsctl(
            &p.lab.dir,
            &[
                "add-port",
                "br-int",
                "vx0",
                "--",
                "set",
                "Interface",
                "vx0",
                "type=vxlan",
                &format!("options:remote_ip={remote}"),
                &format!("options:local_ip={local}"),
                "options:key=42",
            ],
        )?;
        tap_port(
            p,
            &o,
            node,
            "br-int",
            port,
            pod,
            &format!("{addr}/24"),
            Some(1450),
        )?;
        inst.push(o);
    }
    // The tunnel needs the peer's MAC: OVS learns it by snooping ARP through br-phy.
    for (k, (node, ..)) in pods.iter().enumerate() {
        let _ = quick_ok(
            &mut in_netns(
                node,
                &["ping", "-c", "2", "-i", "0.2", "-W", "2", UNDERLAY[1 - k]],
            ),
            &p.lab.dir,
            "ping-underlay",
        );
    }
    for (k, o) in inst.iter().enumerate() {
        if let Ok(s) = o.appctl(&p.lab.dir, &["tnl/arp/show"]) {
            p.notes.push(format!(
                "n{}: tnl/arp/show: {}",
                k + 1,
                s.trim().replace('\n', " | ")
            ));
        }
    }
    p.client_if = "pa".into();
    p.server_if = "pb".into();
    Ok(())
}
