//! TCP through the switch: iperf3 between two pods of one network, both directions, on tap and
//! on af_packet ports. The transfer must complete and the receiver must see > 50 Mbit/s.

use std::time::{Duration, Instant};

use vswitch_lab::{require_root, Daemon, Lab, Pod};

const MIN_BPS: f64 = 50e6;

fn fail(d: &Daemon, what: &str, problems: &[String]) -> ! {
    panic!(
        "{what}: {} problem(s):\n{}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n"),
        d.log_tail(60)
    );
}

/// Starts an iperf3 server in `p` (killed when the lab is dropped) and waits until it listens.
fn start_server(lab: &mut Lab, p: &Pod, port: u16) {
    let port_s = port.to_string();
    let log = lab.dir.join(format!("iperf3-server-{}.log", p.id));
    let logf = std::fs::File::create(&log).unwrap();
    lab.spawn(
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &p.ns, "iperf3", "-s", "-B", &p.ip, "-p", &port_s,
            ])
            .stdout(logf.try_clone().unwrap())
            .stderr(logf),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = lab
            .exec_ok(&p.ns, &["ss", "-Hltn", &format!("sport = :{port}")])
            .unwrap_or_default();
        if out.contains(&format!(":{port}")) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "iperf3 server in {} did not listen on {port}: {}",
            p.ns,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `iperf3 -c` from `client` to `server` (reverse: server sends); returns (receiver
/// bits/s, receiver bytes) or a description of the failure.
fn iperf(
    lab: &Lab,
    client: &Pod,
    server: &Pod,
    port: u16,
    reverse: bool,
) -> Result<(f64, u64), String> {
    let port_s = port.to_string();
    let mut args = vec![
        "iperf3",
        "-c",
        server.ip.as_str(),
        "-p",
        &port_s,
        "-t",
        "3",
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if reverse {
        args.push("-R");
    }
    let (ok, out) = lab.exec_bounded(&client.ns, 30, &args);
    let json_start = out.find('{').unwrap_or(0);
    let v: serde_json::Value = match serde_json::from_str(&out[json_start..]) {
        Ok(v) => v,
        Err(_) => {
            // stderr may follow the JSON; parse the first complete object.
            let mut it = serde_json::Deserializer::from_str(&out[json_start..])
                .into_iter::<serde_json::Value>();
            match it.next() {
                Some(Ok(v)) => v,
                _ => {
                    return Err(format!(
                        "iperf3 {args:?} (exit ok={ok}) printed no JSON:\n{out}"
                    ))
                }
            }
        }
    };
    if let Some(e) = v.get("error") {
        return Err(format!("iperf3 {args:?} failed: {e}"));
    }
    let recv = &v["end"]["sum_received"];
    match (recv["bits_per_second"].as_f64(), recv["bytes"].as_u64()) {
        (Some(bps), Some(bytes)) if ok => Ok((bps, bytes)),
        _ => Err(format!(
            "iperf3 {args:?} (exit ok={ok}) has no end.sum_received: {}",
            &out[..out.len().min(3000)]
        )),
    }
}

fn port_bytes(d: &Daemon, id: &str) -> u64 {
    d.port_stats(id)
        .map(|s| s["rx_bytes"].as_u64().unwrap_or(0) + s["tx_bytes"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

fn scenario(test: &str, attach: &str) {
    if !require_root(test) {
        return;
    }
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();
    let d = lab.node_with_network(attach, "workers = 2").unwrap();
    let c = lab
        .add_pod(&d, "cli", "net", "02:00:00:00:00:21", "192.168.1.21")
        .unwrap();
    let s = lab
        .add_pod(&d, "srv", "net", "02:00:00:00:00:22", "192.168.1.22")
        .unwrap();
    assert!(
        lab.ping_until(&c.ns, &s.ip, Duration::from_secs(10)),
        "{} cannot ping {}; log:\n{}",
        c.id,
        s.ip,
        d.log_tail(60)
    );
    start_server(&mut lab, &s, 5201);
    let mut problems = Vec::new();
    for reverse in [false, true] {
        let dir = if reverse {
            "server -> client (-R)"
        } else {
            "client -> server"
        };
        let before = port_bytes(&d, &s.id);
        match iperf(&lab, &c, &s, 5201, reverse) {
            Ok((bps, bytes)) => {
                eprintln!("{test}: {dir}: {:.1} Mbit/s, {bytes} bytes", bps / 1e6);
                if bps <= MIN_BPS {
                    problems.push(format!(
                        "{dir}: receiver saw {:.1} Mbit/s, expected > {:.0}",
                        bps / 1e6,
                        MIN_BPS / 1e6
                    ));
                }
                // The bytes went through the switch: the server port's counters cover them.
                let through = port_bytes(&d, &s.id).saturating_sub(before);
                if through < bytes * 9 / 10 {
                    problems.push(format!(
                        "{dir}: iperf3 moved {bytes} bytes but port {} counted only {through} \
                         rx+tx bytes",
                        s.id
                    ));
                }
            }
            Err(e) => problems.push(format!("{dir}: {e}")),
        }
    }
    assert!(d.is_alive(), "vswitchd died; log:\n{}", d.log_tail(60));
    eprintln!("{test}: {:?}", t0.elapsed());
    if !problems.is_empty() {
        fail(&d, &format!("{test} ({attach})"), &problems);
    }
}

#[test]
fn tcp_iperf3_tap() {
    scenario("tcp_iperf3_tap", "tap");
}

#[test]
fn tcp_iperf3_af_packet() {
    scenario("tcp_iperf3_af_packet", "af_packet");
}
