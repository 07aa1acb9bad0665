//! `vswitch-cni-bench`: CNI ADD (and DEL) latency of the vswitch plugin with its built-in IPAM
//! against the reference `bridge` plugin with `host-local` IPAM, in the same run, interleaved
//! call by call so both see the same machine load. Prints median, p90, p99 and max.
//!
//! Both plugins are invoked the same way a runtime does: exec with the CNI environment and the
//! config on stdin, from inside the node namespace (`ip netns exec NODE plugin`).
#![deny(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use vswitch_lab::{bin, is_root, Lab};

#[derive(Parser, Debug)]
#[command(about = "CNI ADD/DEL latency: vswitch (built-in IPAM) vs bridge + host-local, one run")]
struct Args {
    /// Pods (ADD+DEL pairs) per plugin.
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Directory with the reference plugins (bridge, host-local).
    #[arg(long, default_value = "/usr/lib/cni")]
    reference_dir: PathBuf,
    /// Attach kind for the vswitch network (tap or af_packet).
    #[arg(long, default_value = "tap")]
    attach: String,
    /// Write the raw samples to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn call(
    node: &str,
    plugin: &Path,
    cmd: &str,
    cid: &str,
    netns: &str,
    path: &str,
    conf: &Value,
) -> Result<Duration> {
    let t0 = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", node])
        .arg(plugin)
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    let dt = t0.elapsed();
    if !out.status.success() {
        bail!(
            "{} {cmd} {cid} failed: {}{}",
            plugin.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dt)
}

fn stats(v: &mut [f64]) -> (f64, f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (q(0.5), q(0.9), q(0.99), v[v.len() - 1])
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !is_root() {
        bail!("must run as root (it creates network namespaces)");
    }
    let bridge = args.reference_dir.join("bridge");
    let host_local = args.reference_dir.join("host-local");
    for p in [&bridge, &host_local] {
        if !p.exists() {
            bail!(
                "{} not found: install containernetworking-plugins",
                p.display()
            );
        }
    }
    let ours = bin("vswitch");
    let mut lab = Lab::new()?;
    let node = lab.netns("node")?;
    let d = lab.daemon(&node, "")?;
    let cni_path = format!(
        "{}:{}",
        args.reference_dir.display(),
        ours.parent()
            .map_or(String::new(), |p| p.display().to_string())
    );
    let vs_conf = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "vswitch", "attach": args.attach,
        "socket": d.socket.display().to_string(),
        "ipam": {"type": "vswitch", "subnet": "10.77.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let br_conf = json!({
        "cniVersion": "1.0.0", "name": "benchbr", "type": "bridge", "bridge": "vbench0", "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.78.0.0/16", "dataDir": lab.dir.join("host-local").display().to_string(),
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let mut pods = Vec::new();
    for i in 0..args.pods {
        pods.push((lab.netns(&format!("v{i}"))?, lab.netns(&format!("b{i}"))?));
    }
    let (mut vs_add, mut br_add, mut vs_del, mut br_del) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (i, (vp, bp)) in pods.iter().enumerate() {
        let (vn, bn) = (format!("/run/netns/{vp}"), format!("/run/netns/{bp}"));
        // Alternate which plugin goes first so neither always runs on a warmer cache.
        if i % 2 == 0 {
            vs_add.push(ms(call(
                &node,
                &ours,
                "ADD",
                &format!("v{i}"),
                &vn,
                &cni_path,
                &vs_conf,
            )?));
            br_add.push(ms(call(
                &node,
                &bridge,
                "ADD",
                &format!("b{i}"),
                &bn,
                &cni_path,
                &br_conf,
            )?));
        } else {
            br_add.push(ms(call(
                &node,
                &bridge,
                "ADD",
                &format!("b{i}"),
                &bn,
                &cni_path,
                &br_conf,
            )?));
            vs_add.push(ms(call(
                &node,
                &ours,
                "ADD",
                &format!("v{i}"),
                &vn,
                &cni_path,
                &vs_conf,
            )?));
        }
    }
    for (i, (vp, bp)) in pods.iter().enumerate() {
        let (vn, bn) = (format!("/run/netns/{vp}"), format!("/run/netns/{bp}"));
        vs_del.push(ms(call(
            &node,
            &ours,
            "DEL",
            &format!("v{i}"),
            &vn,
            &cni_path,
            &vs_conf,
        )?));
        br_del.push(ms(call(
            &node,
            &bridge,
            "DEL",
            &format!("b{i}"),
            &bn,
            &cni_path,
            &br_conf,
        )?));
    }
    if let Some(p) = &args.json {
        let raw = json!({"pods": args.pods, "attach": args.attach, "vswitch_add_ms": vs_add, "bridge_add_ms": br_add,
                         "vswitch_del_ms": vs_del, "bridge_del_ms": br_del});
        std::fs::write(p, serde_json::to_string_pretty(&raw)?)?;
    }
    println!(
        "CNI latency, {} pods per plugin, interleaved, invoked via `ip netns exec` (ms)",
        args.pods
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "plugin", "median", "p90", "p99", "max"
    );
    let mut rows = Vec::new();
    for (name, v) in [
        (
            format!("ADD vswitch ({}, built-in IPAM)", args.attach),
            &mut vs_add,
        ),
        ("ADD bridge + host-local".to_string(), &mut br_add),
        (format!("DEL vswitch ({})", args.attach), &mut vs_del),
        ("DEL bridge + host-local".to_string(), &mut br_del),
    ] {
        let (m, p90, p99, max) = stats(v);
        println!("{name:<34} {m:>8.2} {p90:>8.2} {p99:>8.2} {max:>8.2}");
        rows.push((m, p99));
    }
    println!(
        "ratio vswitch/bridge: ADD median {:.2}, ADD p99 {:.2}; DEL median {:.2}, DEL p99 {:.2}",
        rows[0].0 / rows[1].0,
        rows[0].1 / rows[1].1,
        rows[2].0 / rows[3].0,
        rows[2].1 / rows[3].1
    );
    Ok(())
}
