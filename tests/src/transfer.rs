//! TCP transfers with the payload verified: a receiver in one pod hashes what arrives, a sender
//! in another streams deterministic pseudo-random bytes and hashes what it sent; both hashes
//! and byte counts must match. Plain Python (stdlib only), so no extra package is needed.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Lab;

const RECEIVER: &str = r#"
import hashlib, socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in ip else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port)); s.listen(1)
print('listening', flush=True)
s.settimeout(60)
c, _ = s.accept(); c.settimeout(60)
h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"#;

const SENDER: &str = r#"
import hashlib, random, socket, sys
ip, port, total, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
s = socket.create_connection((ip, port), timeout=60)
h = hashlib.sha256(); n = 0
while n < total:
    k = min(1 << 18, total - n)
    b = rnd.randbytes(k)
    s.sendall(b); h.update(b); n += k
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(n, h.hexdigest(), flush=True)
"#;

/// What a transfer measured.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub bytes: u64,
    pub secs: f64,
}

impl Lab {
    /// Sends `bytes` pseudo-random bytes over TCP from `client_ns` to `server_ip:port` in
    /// `server_ns` and checks that the receiver got exactly what was sent (SHA-256).
    pub fn tcp_transfer(
        &mut self,
        server_ns: &str,
        server_ip: &str,
        client_ns: &str,
        port: u16,
        bytes: u64,
    ) -> Result<Transfer> {
        let dir = self.dir.clone();
        let rx_script = dir.join("xfer-receiver.py");
        let tx_script = dir.join("xfer-sender.py");
        std::fs::write(&rx_script, RECEIVER)?;
        std::fs::write(&tx_script, SENDER)?;
        let out = dir.join(format!("xfer-{port}-{}.out", server_ns));
        let outf = std::fs::File::create(&out)?;
        let pid = self.spawn(
            Command::new("ip")
                .args(["netns", "exec", server_ns, "timeout", "120", "python3"])
                .arg(&rx_script)
                .args([server_ip, &port.to_string()])
                .stdout(outf.try_clone()?)
                .stderr(outf),
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("listening")
        {
            if Instant::now() > deadline {
                bail!(
                    "receiver did not listen: {}",
                    std::fs::read_to_string(&out).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let t0 = Instant::now();
        let sent = self
            .exec_ok(
                client_ns,
                &[
                    "timeout",
                    "120",
                    "python3",
                    &tx_script.display().to_string(),
                    server_ip,
                    &port.to_string(),
                    &bytes.to_string(),
                    "7",
                ],
            )
            .context("sender")?;
        let secs = t0.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(30);
        let received = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(line) = text.lines().nth(1) {
                break line.trim().to_string();
            }
            if Instant::now() > deadline {
                bail!("receiver gave no result: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.stop(pid);
        if received != sent.trim() {
            bail!("payload differs: sent {}, received {received}", sent.trim());
        }
        Ok(Transfer { bytes, secs })
    }
}
