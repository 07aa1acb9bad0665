//! Malformed and oversized frames from inside a pod (written with scapy on the pod's interface,
//! with the pod's real MAC): the daemon survives, drops them for the right reason, forwards none
//! of them to the other pods, and keeps switching good traffic.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use vswitch_lab::{frame_src_mac, require_root, show_lines, Daemon, Lab, Pod};

fn fail(d: &Daemon, what: &str, problems: &[String]) -> ! {
    panic!(
        "{what}: {} problem(s):\n{}\n--- daemon log (tail) ---\n{}",
        problems.len(),
        problems.join("\n"),
        d.log_tail(60)
    );
}

fn sum(m: &BTreeMap<String, u64>, keys: &[&str]) -> u64 {
    keys.iter().map(|k| m.get(*k).copied().unwrap_or(0)).sum()
}

fn changed(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let v: Vec<String> = after
        .iter()
        .filter_map(|(k, a)| {
            let b = before.get(k).copied().unwrap_or(0);
            (*a != b).then(|| format!("{k} +{}", a.saturating_sub(b)))
        })
        .collect();
    if v.is_empty() {
        "no drop counter changed".into()
    } else {
        v.join(", ")
    }
}

struct Case {
    name: &'static str,
    /// Python/scapy statements; `E` is `Ether(src=<pod MAC>, dst=<peer MAC>)`, `B` the same to
    /// broadcast, `SRC`/`DST` the pod's and the peer's IP, `send(frames)` sends on eth1.
    script: &'static str,
    /// The drop reasons these frames must be counted under (their sum must grow by `min`).
    reasons: &'static [&'static str],
    min: u64,
}

const CASES: &[Case] = &[
    Case {
        name: "IPv4 header cut short (12 of 20 bytes)",
        script: "send([Ether(src=M1, dst=M2, type=0x0800)/Raw(bytes(IP(src=SRC, dst=DST)/ICMP())[:12])]*5)",
        reasons: &["malformed_ipv4"],
        min: 5,
    },
    Case {
        name: "IPv4 IHL < 5",
        script: "send([E/IP(ihl=3, src=SRC, dst=DST)/ICMP()/Raw(b'x'*32)]*5)",
        reasons: &["malformed_ipv4"],
        min: 5,
    },
    Case {
        name: "IPv4 total length larger than the frame",
        script: "send([E/IP(len=1400, src=SRC, dst=DST)/ICMP()/Raw(b'x'*32)]*5)",
        reasons: &["malformed_ipv4"],
        min: 5,
    },
    Case {
        name: "IPv4 ethertype with IP version 6 in the header",
        script: "send([E/IP(version=6, src=SRC, dst=DST)/ICMP()/Raw(b'x'*32)]*5)",
        reasons: &["malformed_ipv4"],
        min: 5,
    },
    Case {
        name: "ARP body cut short (20 of 28 bytes)",
        script: "send([Ether(src=M1, dst='ff:ff:ff:ff:ff:ff', type=0x0806)/Raw(arp_raw()[:20])]*5)",
        reasons: &["malformed_arp"],
        min: 5,
    },
    Case {
        name: "ARP not Ethernet/IPv4 (htype 6, ptype 0x86dd, hlen 8, plen 16)",
        script: "send([B/Raw(arp_raw(htype=6)), B/Raw(arp_raw(ptype=0x86dd)), B/Raw(arp_raw(hlen=8)), B/Raw(arp_raw(plen=16))]*2)",
        reasons: &["malformed_arp"],
        min: 8,
    },
    Case {
        name: "802.1Q tagged frames",
        script: "send([E/Dot1Q(vlan=5)/IP(src=SRC, dst=DST)/ICMP()/Raw(b'x'*32)]*5)",
        reasons: &["vlan_tagged"],
        min: 5,
    },
    Case {
        name: "multicast / all-zero source MAC",
        script: "send([Ether(src='01:00:5e:00:00:01', dst=M2)/IP(src=SRC, dst=DST)/ICMP(), Ether(src='00:00:00:00:00:00', dst=M2)/IP(src=SRC, dst=DST)/ICMP()]*5)",
        reasons: &["invalid_src_mac", "spoofed_src_mac"],
        min: 10,
    },
    Case {
        name: "random garbage payloads (IPv4, ARP, unknown ethertypes; seeded)",
        script: "random.seed(7)\n\
                 fs = []\n\
                 for i in range(40):\n\
                 \x20   t = [0x0800, 0x0806, 0x88b5, 0x1234][i % 4]\n\
                 \x20   d = M2 if i % 3 else 'ff:ff:ff:ff:ff:ff'\n\
                 \x20   n = random.randint(0, 200)\n\
                 \x20   fs.append(Ether(src=M1, dst=d, type=t)/Raw(bytes(random.getrandbits(8) for _ in range(n))))\n\
                 send(fs)",
        // Every frame is dropped for some reason; which one depends on the bytes.
        reasons: &[
            "frame_too_short",
            "malformed_ipv4",
            "malformed_arp",
            "malformed_icmp",
            "unsupported_ethertype",
            "spoofed_src_ip",
            "spoofed_arp",
        ],
        min: 40,
    },
];

/// One scapy process in a pod that runs numbered steps when told to: step `i` starts when the
/// file `go-i` appears and is done when `done-i` (holding the step's return value) appears.
struct Stepper {
    dir: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Stepper {
    fn start(lab: &mut Lab, ns: &str, prelude: &str, bodies: &[String]) -> Stepper {
        let dir = lab.dir.join(format!("stepper-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut py = String::from(
            "import logging\nlogging.getLogger('scapy.runtime').setLevel(logging.ERROR)\n\
             from scapy.all import *\nconf.verb = 0\nimport os, time, traceback\n",
        );
        py.push_str(prelude);
        for (i, b) in bodies.iter().enumerate() {
            py.push_str(&format!("def step_{i}():\n"));
            for l in b.lines() {
                py.push_str(&format!("    {l}\n"));
            }
        }
        py.push_str(&format!(
            "D = {:?}\n\
             for i in range({}):\n\
             \x20   go = os.path.join(D, 'go-%d' % i)\n\
             \x20   end = time.time() + 120\n\
             \x20   while not os.path.exists(go):\n\
             \x20       if time.time() > end:\n\
             \x20           raise SystemExit('timeout waiting for ' + go)\n\
             \x20       time.sleep(0.01)\n\
             \x20   try:\n\
             \x20       r = globals()['step_%d' % i]() or ''\n\
             \x20   except Exception:\n\
             \x20       r = 'ERROR ' + traceback.format_exc()\n\
             \x20   tmp = os.path.join(D, 'done-%d.tmp' % i)\n\
             \x20   with open(tmp, 'w') as fh:\n\
             \x20       fh.write(str(r))\n\
             \x20   os.rename(tmp, os.path.join(D, 'done-%d' % i))\n",
            dir.display().to_string(),
            bodies.len()
        ));
        let script = dir.join("steps.py");
        std::fs::write(&script, py).unwrap();
        let log = dir.join("steps.log");
        let logf = std::fs::File::create(&log).unwrap();
        lab.spawn(
            std::process::Command::new("ip")
                .args(["netns", "exec", ns, "timeout", "300", "/usr/bin/python3"])
                .arg(&script)
                .stdout(logf.try_clone().unwrap())
                .stderr(logf),
        )
        .unwrap();
        Stepper { dir, log }
    }

    /// Runs step `i`; returns its result, or an error with the script's output.
    fn step(&self, i: usize) -> Result<String, String> {
        std::fs::write(self.dir.join(format!("go-{i}")), b"").unwrap();
        let done = self.dir.join(format!("done-{i}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done.exists() {
            if Instant::now() > deadline {
                return Err(format!(
                    "step {i} not done in 60 s; scapy output:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let r = std::fs::read_to_string(&done).unwrap_or_default();
        if r.starts_with("ERROR") {
            return Err(r);
        }
        Ok(r)
    }
}

/// A Python prelude defining the names the case scripts use.
fn prelude(p1: &Pod, p2: &Pod) -> String {
    format!(
        "import random, socket, struct\n\
         M1 = '{m1}'\nM2 = '{m2}'\nSRC = '{ip1}'\nDST = '{ip2}'\n\
         E = Ether(src=M1, dst=M2)\nB = Ether(src=M1, dst='ff:ff:ff:ff:ff:ff', type=0x0806)\n\
         def send(fs):\n    sendp(fs, iface='eth1')\n\
         def arp_raw(htype=1, ptype=0x0800, hlen=6, plen=4, op=1):\n\
         \x20   return struct.pack('!HHBBH', htype, ptype, hlen, plen, op) + mac2str(M1) + \
         socket.inet_aton(SRC) + b'\\0' * 6 + socket.inet_aton(DST)\n",
        m1 = p1.mac,
        m2 = p2.mac,
        ip1 = p1.ip,
        ip2 = p2.ip
    )
}

/// A frame from the attacker that a well-behaved kernel may send (ARP for the peers, which the
/// switch may forward): 42 bytes, sender = the attacker's IP.
fn legit_arp(l: &str, p1: &Pod) -> bool {
    l.contains("ethertype ARP (0x0806), length 42:")
        && !l.contains("[|")
        && (l.contains(&format!("tell {}, length 28", p1.ip))
            || l.contains(&format!("Reply {} is-at {}, length 28", p1.ip, p1.mac)))
}

fn scenario(test: &str, attach: &str) {
    if !require_root(test) {
        return;
    }
    let t0 = Instant::now();
    let mut lab = Lab::new().unwrap();
    let d = lab.node_with_network(attach, "").unwrap();
    let p1 = lab
        .add_pod(&d, "p1", "net", "02:00:00:00:00:11", "192.168.1.11")
        .unwrap();
    let p2 = lab
        .add_pod(&d, "p2", "net", "02:00:00:00:00:12", "192.168.1.12")
        .unwrap();
    let p3 = lab
        .add_pod(&d, "p3", "net", "02:00:00:00:00:13", "192.168.1.13")
        .unwrap();
    // The attacker's kernel must stay quiet during the captures: no IPv6 chatter.
    lab.sysctl(&p1.ns, "net.ipv6.conf.eth1.disable_ipv6", "1")
        .unwrap();
    let pairs = [(&p1, &p2), (&p2, &p3), (&p3, &p1), (&p2, &p1)];
    for (a, b) in pairs {
        assert!(
            lab.ping_until(&a.ns, &b.ip, Duration::from_secs(10)),
            "{} cannot ping {} before the test; log:\n{}",
            a.id,
            b.ip,
            d.log_tail(60)
        );
    }
    let cap2 = lab.capture(&p2.ns, "eth1", "").unwrap();
    let cap3 = lab.capture(&p3.ns, "eth1", "").unwrap();
    // One scapy process runs every step (starting scapy takes ~1.5 s); steps run on demand so
    // the drop counters can be read between them.
    let mut bodies: Vec<String> = CASES.iter().map(|c| c.script.to_string()).collect();
    bodies.push(
        "try:\n    send([E/IP(src=SRC, dst=DST)/ICMP()/Raw(b'y'*(4000-42))]*3)\n\
         except OSError as e:\n    return 'send failed: %s' % e"
            .to_string(),
    );
    // Positive control: a valid frame written the same way still gets through (UDP port 5555).
    bodies.push(
        "send([E/IP(src=SRC, dst=DST)/UDP(sport=5555, dport=5555)/Raw(b'ok'*16)]*3)".to_string(),
    );
    let stepper = Stepper::start(&mut lab, &p1.ns, &prelude(&p1, &p2), &bodies);
    let mut problems = Vec::new();
    let mut report = Vec::new();

    for (i, c) in CASES.iter().enumerate() {
        let before = d.drops().unwrap();
        if let Err(e) = stepper.step(i) {
            panic!("scapy for case {:?} failed: {e}", c.name);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut after = d.drops().unwrap();
        while sum(&after, c.reasons) < sum(&before, c.reasons) + c.min && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
            after = d.drops().unwrap();
        }
        let got = sum(&after, c.reasons) - sum(&before, c.reasons);
        report.push(format!("{}: {}", c.name, changed(&before, &after)));
        if got < c.min {
            problems.push(format!(
                "case {:?}: drops {:?} increased by {got}, expected >= {} ({})",
                c.name,
                c.reasons,
                c.min,
                changed(&before, &after)
            ));
        }
        if !d.is_alive() {
            fail(
                &d,
                &format!("{test}: vswitchd died after case {:?}", c.name),
                &problems,
            );
        }
    }

    // Oversized: raise the pod's MTU, then a 4000-byte frame from scapy and a 4000-byte ping
    // with DF set. The network MTU is 1500, so the switch must drop them (frame_too_long).
    lab.exec_ok(&p1.ns, &["ip", "link", "set", "eth1", "mtu", "9000"])
        .unwrap();
    let before = d.drops().unwrap();
    let sent = stepper
        .step(CASES.len())
        .unwrap_or_else(|e| panic!("scapy for the oversized frames failed: {e}"));
    if !sent.trim().is_empty() {
        // A veth refuses frames above its peer's MTU (ENOBUFS): the kernel drops them before
        // the switch sees them.
        report.push(format!("oversized frames from scapy: {}", sent.trim()));
    }
    let (ok, out) = lab.exec_bounded(
        &p1.ns,
        10,
        &[
            "ping", "-n", "-c", "2", "-i", "0.3", "-W", "1", "-M", "do", "-s", "4000", &p2.ip,
        ],
    );
    if ok {
        problems.push(format!(
            "a 4042-byte ping from {} (MTU 9000) to {} on a 1500-MTU network got replies:\n{out}",
            p1.id, p2.ip
        ));
    }
    let _ = d.wait_drops(
        "frame_too_long",
        before.get("frame_too_long").copied().unwrap_or(0) + 5,
        Duration::from_secs(3),
    );
    let after = d.drops().unwrap();
    let got = sum(&after, &["frame_too_long"]) - sum(&before, &["frame_too_long"]);
    report.push(format!("oversized frames: {}", changed(&before, &after)));
    if attach == "tap" && got < 5 {
        problems.push(format!(
            "3 scapy frames of 4000 bytes + 2 pings of 4042 bytes: frame_too_long increased by {got}, \
             expected >= 5 ({})",
            changed(&before, &after)
        ));
    }
    // With af_packet the kernel may already drop the frame on the veth (host end MTU 1500), so
    // the counter is not required there; nothing may get through either way.
    lab.exec_ok(&p1.ns, &["ip", "link", "set", "eth1", "mtu", "1500"])
        .unwrap();

    stepper
        .step(CASES.len() + 1)
        .unwrap_or_else(|e| panic!("scapy for the valid frames failed: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let lines2 = lab.finish_capture(cap2).unwrap();
    let lines3 = lab.finish_capture(cap3).unwrap();

    assert!(
        d.is_alive(),
        "vswitchd died; log:\n{}\nper case: {report:#?}",
        d.log_tail(80)
    );
    if let Err(e) = d.ctl(&["status"]) {
        problems.push(format!(
            "vswitchctl status fails after the malformed frames: {e:#}"
        ));
    }
    for (name, lines) in [(&p2.id, &lines2), (&p3.id, &lines3)] {
        let bad: Vec<&String> = lines
            .iter()
            .filter(|l| {
                let src = frame_src_mac(l).unwrap_or("");
                let from_attacker = src == p1.mac && !legit_arp(l, &p1) && !l.contains(".5555 >");
                from_attacker
                    || src == "01:00:5e:00:00:01"
                    || src == "00:00:00:00:00:00"
                    || l.contains("802.1Q")
            })
            .collect();
        if !bad.is_empty() {
            problems.push(format!(
                "capture in {name} saw malformed frames from the attacker: {}",
                show_lines(&bad, 30)
            ));
        }
    }
    if !lines2.iter().any(|l| l.contains(".5555 >")) {
        problems.push(format!(
            "positive control: the valid UDP frames to {} never arrived; capture {}",
            p2.id,
            show_lines(&lines2, 60)
        ));
    }
    for (a, b) in pairs {
        if !lab.ping_until(&a.ns, &b.ip, Duration::from_secs(10)) {
            problems.push(format!(
                "{} cannot ping {} after the malformed frames",
                a.id, b.ip
            ));
        }
    }
    eprintln!(
        "{test}: drops per case:\n  {}\n  ({:?})",
        report.join("\n  "),
        t0.elapsed()
    );
    if !problems.is_empty() {
        fail(&d, &format!("{test} ({attach})"), &problems);
    }
}

#[test]
fn malformed_tap() {
    scenario("malformed_tap", "tap");
}

#[test]
fn malformed_af_packet() {
    scenario("malformed_af_packet", "af_packet");
}
