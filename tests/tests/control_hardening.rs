//! The control plane under hostile or clumsy use: a flood of slow control connections must not
//! hold a thread each (bounded, and ended after the request deadline), and a config whose value
//! has the wrong type is refused with the field's name and its line.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use vswitch_lab::{bin, require_root, run, Lab};

/// Connection cap and request deadline of the control socket (vswitch/src/control/server.rs).
const MAX_CONNECTIONS: usize = 64;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn two_hundred_slow_connections_do_not_hold_two_hundred_threads() {
    if !require_root("two_hundred_slow_connections_do_not_hold_two_hundred_threads") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let node = lab.netns("node").unwrap();
    let d = lab.daemon(&node, "").unwrap();
    let base = threads(d.pid());
    assert!(base > 0);

    // 200 clients that start a request and then trickle it, one byte at a time.
    let mut conns: Vec<UnixStream> = (0..200)
        .map(|_| {
            let mut s = UnixStream::connect(&d.socket).unwrap();
            let _ = s.write_all(b"{");
            s
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let mut peak = threads(d.pid());
    // Keep trickling for a while (each byte restarts no clock).
    for _ in 0..4 {
        for s in &mut conns {
            let _ = s.write_all(b" ");
        }
        peak = peak.max(threads(d.pid()));
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("threads: {base} before, peak {peak} with 200 slow connections");
    assert!(
        peak <= base + MAX_CONNECTIONS + 2,
        "{peak} threads with 200 slow connections (base {base}, cap {MAX_CONNECTIONS})"
    );

    // Those over the cap were answered at once with "busy" and closed.
    let mut refused = 0;
    for s in &mut conns {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = [0u8; 512];
        if let Ok(n) = s.read(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("unavailable") {
                refused += 1;
            }
        }
    }
    assert!(
        refused >= 200 - MAX_CONNECTIONS,
        "{refused} connections refused as busy"
    );

    // The trickling ones are closed by the deadline, bytes or not; then the daemon serves again.
    let deadline = started + REQUEST_TIMEOUT + Duration::from_secs(5);
    let mut open = conns.len();
    while Instant::now() < deadline && open > 0 {
        open = 0;
        for s in &mut conns {
            let _ = s.write_all(b" ");
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            let mut buf = [0u8; 512];
            match s.read(&mut buf) {
                Ok(0) => {}
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
                Err(_) => {}
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let waited = started.elapsed();
    println!("slow connections closed after {waited:?}");
    assert_eq!(
        open, 0,
        "{open} slow connections still open after {waited:?}"
    );
    assert!(
        d.ctl(&["status"]).is_ok(),
        "daemon serves after the flood:\n{}",
        d.log_tail(20)
    );
    let after = threads(d.pid());
    assert!(
        after <= base + 2,
        "{after} threads left after the flood (base {base})"
    );
}

#[test]
fn config_type_error_names_the_field_and_the_line() {
    // No root needed: the config is refused before anything is touched.
    let lab = Lab::new().unwrap();
    let cfg = lab.dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "workers = 1\n\n[[network]]\nname = \"a\"\nsubnet = \"10.0.0.0/24\"\n\n[[network]]\nname = \"b\"\nsubnet = \"10.0.1.0/24\"\nmtu = \"jumbo\"\n",
    )
    .unwrap();
    let out = run(Command::new(bin("vswitchd")).arg("--config").arg(&cfg)).unwrap();
    assert!(!out.status.success(), "vswitchd accepted a bad config");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("network[1].mtu"),
        "the error does not name the field: {err}"
    );
    assert!(
        err.contains("line 10"),
        "the error does not give the line: {err}"
    );
}
