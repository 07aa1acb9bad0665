//! The CNI scenario: ADD and DEL latency of our plugin (the cni-plugin crate's `vswitch` binary,
//! against a running vswitchd) and of containernetworking-plugins' `bridge` + `host-local`, in
//! the same run, interleaved call by call so both see the same machine. Both are invoked the
//! way a runtime does: exec with the CNI environment and the config on stdin, from inside the
//! node namespace, on pod namespaces the harness created.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use vswitch_lab::Lab;

use crate::measure::percentile;
use crate::procs::{check_interrupt, tail};
use crate::progress::Progress;
use crate::report::Record;
use crate::Settings;

/// Progress steps per run.
pub const STEPS: usize = 2;
const REFERENCE_DIR: &str = "/usr/lib/cni";

/// One plugin call, bounded (a hung plugin is killed after 30 s).
fn call(
    node: &str,
    plugin: &Path,
    cmd: &str,
    cid: &str,
    netns: &str,
    path: &str,
    conf: &Value,
) -> Result<f64> {
    check_interrupt()?;
    let mut command = Command::new(plugin);
    command
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Exec'd straight into the node's network namespace, as a runtime on the node execs it:
    // a thread that joined the namespace spawns it (a child starts in its parent thread's
    // namespaces). `ip netns exec` would add a second exec, a mount namespace and a sysfs
    // remount, about 1 ms per call, that no runtime pays.
    let (t0, spawned) =
        vswitch::sys::netns::run_in_netns(&Path::new("/run/netns").join(node), move || {
            (Instant::now(), command.spawn())
        })
        .with_context(|| format!("enter netns {node}"))?;
    let mut child = spawned.with_context(|| format!("spawn {}", plugin.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let deadline = t0 + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline || crate::procs::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupt()?;
            bail!(
                "{} {cmd} {cid} did not finish within 30 s",
                plugin.display()
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let dt = t0.elapsed().as_secs_f64() * 1000.0;
    let out = child.wait_with_output()?;
    if !status.success() {
        bail!(
            "{} {cmd} {cid} failed ({status}): {}{}",
            plugin.display(),
            tail(&String::from_utf8_lossy(&out.stdout), 500),
            tail(&String::from_utf8_lossy(&out.stderr), 500)
        );
    }
    Ok(dt)
}

/// Why the scenario cannot run here, if so.
pub fn skip_reason() -> Option<String> {
    for p in ["bridge", "host-local"] {
        let f = Path::new(REFERENCE_DIR).join(p);
        if !f.exists() {
            return Some(format!(
                "cni skipped: {} not found (install the Debian package containernetworking-plugins)",
                f.display()
            ));
        }
    }
    let ours = vswitch_lab::bin_dir().join("vswitch");
    if !ours.exists() {
        return Some(format!(
            "cni skipped: {} not found (cargo build -p vswitch-cni)",
            ours.display()
        ));
    }
    None
}

/// Measures both plugins in one lab; returns one record each.
pub fn measure(run: usize, s: &Settings, prog: &mut Progress) -> Result<Vec<Record>> {
    let mut ours_rec = Record::new(
        "cni",
        "cni-vswitch",
        "vswitch CNI plugin (tap, built-in IPAM) against a running vswitchd",
        run,
    );
    let mut ref_rec = Record::new(
        "cni",
        "cni-bridge",
        "containernetworking-plugins bridge + host-local",
        run,
    );
    if let Some(why) = skip_reason() {
        ours_rec.skipped = Some(why.clone());
        ref_rec.skipped = Some(why);
        prog.skip(STEPS);
        return Ok(vec![ours_rec, ref_rec]);
    }
    prog.step("cni setup", "cni", run, s.runs);
    match run_calls(s.cni_pods, prog, run, s.runs) {
        Ok(r) => {
            for (rec, (add, del)) in [(&mut ours_rec, r.0), (&mut ref_rec, r.1)] {
                fill(rec, add, del);
            }
        }
        Err(e) if e.is::<crate::procs::Interrupted>() => return Err(e),
        Err(e) => {
            ours_rec.errors.push(format!("{e:#}"));
            ref_rec.errors.push(format!("{e:#}"));
        }
    }
    Ok(vec![ours_rec, ref_rec])
}

fn fill(rec: &mut Record, mut add: Vec<f64>, mut del: Vec<f64>) {
    rec.raw.insert("add_ms".into(), json!(add));
    rec.raw.insert("del_ms".into(), json!(del));
    add.sort_by(f64::total_cmp);
    del.sort_by(f64::total_cmp);
    rec.set("calls", Some(add.len() as f64));
    if !add.is_empty() {
        rec.set("add_p50_ms", Some(percentile(&add, 0.5)));
        rec.set("add_p90_ms", Some(percentile(&add, 0.9)));
    }
    if !del.is_empty() {
        rec.set("del_p50_ms", Some(percentile(&del, 0.5)));
        rec.set("del_p90_ms", Some(percentile(&del, 0.9)));
    }
}

type Samples = (Vec<f64>, Vec<f64>);

fn run_calls(
    pods: usize,
    prog: &mut Progress,
    run: usize,
    runs: usize,
) -> Result<(Samples, Samples)> {
    let ours: PathBuf = vswitch_lab::bin_dir().join("vswitch");
    let bridge = Path::new(REFERENCE_DIR).join("bridge");
    let mut lab = Lab::new()?;
    let node = lab.netns("node")?;
    let d = lab.daemon(&node, "")?;
    let cni_path = format!(
        "{REFERENCE_DIR}:{}",
        ours.parent()
            .map_or(String::new(), |p| p.display().to_string())
    );
    let vs_conf = json!({
        "cniVersion": "1.0.0", "name": "bench", "type": "vswitch", "attach": "tap",
        "socket": d.socket.display().to_string(),
        "ipam": {"type": "vswitch", "subnet": "10.77.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let br_conf = json!({
        "cniVersion": "1.0.0", "name": "benchbr", "type": "bridge",
        "bridge": lab.name("cbr"), "isGateway": true,
        "ipam": {"type": "host-local", "subnet": "10.78.0.0/16",
                 "dataDir": lab.dir.join("host-local").display().to_string(),
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let mut netns = Vec::new();
    for i in 0..pods {
        netns.push((lab.netns(&format!("v{i}"))?, lab.netns(&format!("c{i}"))?));
    }
    prog.step("cni calls", "cni", run, runs);
    let (mut va, mut ba, mut vd, mut bd) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ids: Vec<(String, String)> = (0..pods)
        .map(|i| (format!("{}v{i}", lab.prefix), format!("{}c{i}", lab.prefix)))
        .collect();
    for (i, ((vp, bp), (vid, bid))) in netns.iter().zip(&ids).enumerate() {
        let (vn, bn) = (format!("/run/netns/{vp}"), format!("/run/netns/{bp}"));
        // Alternate which plugin goes first so neither always runs on a warmer cache.
        let ours_add = || call(&node, &ours, "ADD", vid, &vn, &cni_path, &vs_conf);
        if i % 2 == 0 {
            va.push(ours_add()?);
            ba.push(call(&node, &bridge, "ADD", bid, &bn, &cni_path, &br_conf)?);
        } else {
            ba.push(call(&node, &bridge, "ADD", bid, &bn, &cni_path, &br_conf)?);
            va.push(ours_add()?);
        }
    }
    for (i, ((vp, bp), (vid, bid))) in netns.iter().zip(&ids).enumerate() {
        let (vn, bn) = (format!("/run/netns/{vp}"), format!("/run/netns/{bp}"));
        if i % 2 == 0 {
            vd.push(call(&node, &ours, "DEL", vid, &vn, &cni_path, &vs_conf)?);
            bd.push(call(&node, &bridge, "DEL", bid, &bn, &cni_path, &br_conf)?);
        } else {
            bd.push(call(&node, &bridge, "DEL", bid, &bn, &cni_path, &br_conf)?);
            vd.push(call(&node, &ours, "DEL", vid, &vn, &cni_path, &vs_conf)?);
        }
    }
    drop(d);
    drop(lab);
    Ok(((va, vd), (ba, bd)))
}
