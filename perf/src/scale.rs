//! The scale scenario: vswitchd with many tap ports spread over 1, 10 or 100 networks (RSS,
//! port-add time, and TCP / 64 B UDP between two of the ports), against the 2-port case and a
//! Linux bridge with the same number of veth ports, in the same run.
//!
//! The two measured pods A and B are in network 0, each in its own namespace; the other ("filler")
//! ports share a few namespaces (250 per namespace, interface names unique within one), so
//! setup stays bounded: one `vswitchctl port add` per vswitch port, one `ip -batch` per bridge.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::build_kernel::{ip, veth};
use crate::build_vswitch::{add_port, start};
use crate::procs::{check_interrupt, run_bounded};
use crate::progress::Progress;
use crate::report::Record;
use crate::runner::wait_quiet;
use crate::systems::Pair;
use crate::{cpu, measure, Settings};

/// Progress steps per scale case.
pub const STEPS: usize = 4;
/// Filler ports per shared namespace.
const PER_NS: usize = 250;
/// Upper bound on the setup of one case.
const SETUP_LIMIT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub vswitch: bool,
    pub ports: usize,
    pub networks: usize,
}

impl Case {
    pub fn name(&self) -> String {
        match (self.vswitch, self.ports) {
            (true, 2) => "vs-2p".into(),
            (true, p) => format!("vs-{p}p-{}n", self.networks),
            (false, p) => format!("br-{p}p"),
        }
    }

    fn description(&self) -> String {
        if self.vswitch {
            format!(
                "vswitchd, {} tap ports in {} network(s), 1 worker",
                self.ports, self.networks
            )
        } else {
            format!("Linux bridge with {} veth ports", self.ports)
        }
    }
}

/// The cases for the port counts asked for (2 is always first: the baseline).
pub fn cases(port_counts: &[usize]) -> Vec<Case> {
    let mut counts: Vec<usize> = vec![2];
    counts.extend(port_counts.iter().copied().filter(|c| *c > 2));
    counts.dedup();
    let mut out = Vec::new();
    for &p in &counts {
        if p == 2 {
            out.push(Case {
                vswitch: true,
                ports: 2,
                networks: 1,
            });
            continue;
        }
        for n in [1, 10, 100] {
            if n <= p {
                out.push(Case {
                    vswitch: true,
                    ports: p,
                    networks: n,
                });
            }
        }
    }
    for &p in &counts {
        out.push(Case {
            vswitch: false,
            ports: p,
            networks: 1,
        });
    }
    out
}

/// Subnet of network `i`: a /22 each (1022 hosts: room for 1000 ports in one network).
fn net_ip(i: usize, host: usize) -> Ipv4Addr {
    Ipv4Addr::from((10u32 << 24) + (i as u32) * 1024 + host as u32)
}

fn vswitch_config(networks: usize) -> String {
    let mut cfg = String::from("workers = 1\n");
    for i in 0..networks {
        cfg.push_str(&format!(
            "\n[[network]]\nname = \"s{i}\"\nsubnet = \"{}/22\"\nattach = \"tap\"\n",
            net_ip(i, 0)
        ));
    }
    cfg
}

/// Builds a case; returns the pair and the per-port add times (ms) of the filler ports.
fn build(c: Case, deadline: Instant) -> Result<(Pair, Vec<f64>)> {
    let mut p = Pair::new(vswitch_lab::Lab::new()?);
    let node = p.lab.netns("n")?;
    p.client_ns = p.lab.netns("a")?;
    p.server_ns = p.lab.netns("b")?;
    p.client_if = "eth0".into();
    p.server_if = "eth0".into();
    let (a_ip, b_ip) = (net_ip(0, 10), net_ip(0, 11));
    p.server_ip = b_ip.to_string();
    let fillers = c.ports.saturating_sub(2);
    let mut filler_ns = Vec::new();
    for k in 0..fillers.div_ceil(PER_NS) {
        filler_ns.push(p.lab.netns(&format!("f{k}"))?);
    }
    let mut add_ms = Vec::new();
    if c.vswitch {
        let d = start(&mut p.lab, &node, &vswitch_config(c.networks))?;
        add_port(&d, &p.client_ns, "s0", "eth0", "a", &a_ip.to_string(), None)?;
        add_port(&d, &p.server_ns, "s0", "eth0", "b", &b_ip.to_string(), None)?;
        // Per network, the next free host number (A and B took 10 and 11 in network 0).
        let mut next = vec![12usize; c.networks];
        for j in 0..fillers {
            if Instant::now() > deadline {
                bail!("setup took longer than {SETUP_LIMIT:?} at port {j} of {fillers}");
            }
            let net = (j + 1) % c.networks;
            let host = next[net];
            next[net] += 1;
            let t0 = Instant::now();
            add_port(
                &d,
                &filler_ns[j / PER_NS],
                &format!("s{net}"),
                &format!("p{j}"),
                &format!("f{j}"),
                &net_ip(net, host).to_string(),
                None,
            )?;
            add_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        p.switch_pids.push(d.pid());
        p.logs.push(d.log.clone());
        p.daemons.push(d);
    } else {
        ip(
            &p.lab,
            &["-n", &node, "link", "add", "br0", "type", "bridge"],
        )?;
        ip(&p.lab, &["-n", &node, "link", "set", "br0", "up"])?;
        for (i, (ns, addr)) in [(p.client_ns.clone(), a_ip), (p.server_ns.clone(), b_ip)]
            .iter()
            .enumerate()
        {
            let h = format!("h{i}");
            veth(&p.lab, &node, &h, ns, "eth0")?;
            ip(&p.lab, &["-n", &node, "link", "set", &h, "master", "br0"])?;
            ip(
                &p.lab,
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/22"),
                    "dev",
                    "eth0",
                ],
            )?;
        }
        // Filler veths in batches: one `ip -batch` for the node side, one per filler namespace.
        let mut node_cmds = String::new();
        let mut ns_cmds = vec![String::new(); filler_ns.len()];
        for j in 0..fillers {
            let ns = &filler_ns[j / PER_NS];
            node_cmds.push_str(&format!(
                "link add f{j} type veth peer name p{j} netns {ns}\nlink set f{j} master br0 up\n"
            ));
            ns_cmds[j / PER_NS].push_str(&format!("link set p{j} up\n"));
        }
        let t0 = Instant::now();
        batch(&p, &node, &node_cmds)?;
        for (ns, cmds) in filler_ns.iter().zip(&ns_cmds) {
            batch(&p, ns, cmds)?;
        }
        if fillers > 0 {
            let per = t0.elapsed().as_secs_f64() * 1000.0 / fillers as f64;
            add_ms = vec![per; fillers];
        }
    }
    check_interrupt()?;
    if !p
        .lab
        .ping_until(&p.client_ns, &p.server_ip, Duration::from_secs(8))
    {
        check_interrupt()?;
        bail!(
            "no ping from A to {} within 8 s\n{}",
            p.server_ip,
            p.log_tail()
        );
    }
    Ok((p, add_ms))
}

fn batch(p: &Pair, ns: &str, cmds: &str) -> Result<()> {
    if cmds.is_empty() {
        return Ok(());
    }
    let file = p.lab.dir.join(format!("batch-{ns}.ip"));
    std::fs::write(&file, cmds).context("write ip batch")?;
    let f = run_bounded(
        Command::new("ip").args(["-n", ns, "-batch"]).arg(&file),
        Duration::from_secs(300),
        &p.lab.dir,
        "ip-batch",
    )?;
    if !f.status.success() {
        bail!("ip -n {ns} -batch failed: {}", f.describe());
    }
    Ok(())
}

pub fn measure(c: Case, run: usize, s: &Settings, prog: &mut Progress) -> Result<Record> {
    let name = c.name();
    let mut rec = Record::new("scale", &name, &c.description(), run);
    rec.set("ports", Some(c.ports as f64));
    rec.set("networks", Some(c.networks as f64));
    prog.step("build", &name, run, s.runs);
    let t0 = Instant::now();
    let (mut p, add_ms) = match build(c, t0 + SETUP_LIMIT) {
        Ok(v) => v,
        Err(e) if e.is::<crate::procs::Interrupted>() => return Err(e),
        Err(e) => {
            rec.errors.push(format!("setup: {e:#}"));
            prog.skip(STEPS - 1);
            return Ok(rec);
        }
    };
    rec.set("setup_s", Some(t0.elapsed().as_secs_f64()));
    if !add_ms.is_empty() {
        rec.set(
            "port_add_ms",
            Some(add_ms.iter().sum::<f64>() / add_ms.len() as f64),
        );
    }
    wait_quiet(&p, &mut rec, s)?;
    rec.set(
        "rss_idle_mib",
        cpu::rss_kib(&p.switch_pids).map(|k| k as f64 / 1024.0),
    );
    // Between two idle pods after every port is up: what the pods' own background traffic
    // (DAD, router solicitations, MLD of many ports) does to latency shows here.
    prog.step("ping", &name, run, s.runs);
    match measure::ping(&p, s.ping_count) {
        Ok(r) => {
            rec.set("ping_p50_us", Some(r.p50_us));
            rec.set("ping_p99_us", Some(r.p99_us));
        }
        Err(e) if e.is::<crate::procs::Interrupted>() => return Err(e),
        Err(e) => rec.errors.push(format!("ping: {e:#}")),
    }
    prog.step("tcp x1", &name, run, s.runs);
    match measure::tcp(&mut p, s.secs, 1) {
        Ok(r) => rec.set("tcp1_gbps", Some(r.gbps)),
        Err(e) if e.is::<crate::procs::Interrupted>() => return Err(e),
        Err(e) => rec.errors.push(format!("tcp: {e:#}")),
    }
    prog.step("udp 64B", &name, run, s.runs);
    match measure::udp(&mut p, s.secs) {
        Ok(r) => rec.set("udp_rx_kpps", Some(r.nic_rx_pps / 1e3)),
        Err(e) if e.is::<crate::procs::Interrupted>() => return Err(e),
        Err(e) => rec.errors.push(format!("udp: {e:#}")),
    }
    // After the traffic, as in the traffic scenario: the buffer pool has grown to its working size.
    rec.set(
        "rss_mib",
        cpu::rss_kib(&p.switch_pids).map(|k| k as f64 / 1024.0),
    );
    for pid in &p.switch_pids {
        if !crate::procs::alive(*pid) {
            rec.errors
                .push(format!("vswitchd {pid} died; log:\n{}", p.log_tail()));
        }
    }
    drop(p);
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_start_with_the_2_port_baseline_and_cover_every_network_count() {
        let names: Vec<String> = cases(&[100, 1000]).iter().map(Case::name).collect();
        assert_eq!(
            names,
            [
                "vs-2p",
                "vs-100p-1n",
                "vs-100p-10n",
                "vs-100p-100n",
                "vs-1000p-1n",
                "vs-1000p-10n",
                "vs-1000p-100n",
                "br-2p",
                "br-100p",
                "br-1000p"
            ]
        );
        // Fewer ports than networks: those network counts are left out.
        let small: Vec<String> = cases(&[5]).iter().map(Case::name).collect();
        assert_eq!(small, ["vs-2p", "vs-5p-1n", "br-2p", "br-5p"]);
    }

    #[test]
    fn networks_get_disjoint_22s() {
        assert_eq!(net_ip(0, 10).to_string(), "10.0.0.10");
        assert_eq!(net_ip(1, 0).to_string(), "10.0.4.0");
        assert_eq!(net_ip(99, 1011).to_string(), "10.1.143.243");
        assert!(vswitch_config(2).contains("subnet = \"10.0.4.0/22\""));
    }
}
