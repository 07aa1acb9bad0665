//! The IP pool allocator against a real etcd (Debian's etcd-server on loopback, unique ports
//! and data dir): two nodes allocating 1000 addresses concurrently (no duplicate; every block's
//! allocations by its affine node), and borrowing from another node's /29 when a node may not
//! claim more blocks, refused with strictAffinity. Nodes here are allocator instances with
//! their own etcd connection each, as two daemons would have.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vswitch::control::pools::alloc::{AllocError, Allocator, Request};
use vswitch::control::pools::kv::{EtcdKv, Kv, Op};
use vswitch_config::ippool::{parse_documents, IpPool, IpamConfig, Object};

struct Etcd {
    child: Child,
    dir: std::path::PathBuf,
    endpoint: String,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// etcd on 127.0.0.1 with ports derived from the test's pid and `n` (unique per test).
fn etcd(n: u16) -> Option<Etcd> {
    if !std::path::Path::new("/usr/bin/etcd").exists() {
        eprintln!("SKIP: /usr/bin/etcd missing (tests/install-deps.sh installs etcd-server)");
        return None;
    }
    let base = 20000 + (std::process::id() % 4000) as u16 * 4 + n * 2;
    let (client, peer) = (base, base + 1);
    let dir = std::env::temp_dir().join(format!("vswitch-pools-etcd-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
    let c = format!("http://127.0.0.1:{client}");
    let p = format!("http://127.0.0.1:{peer}");
    let child = Command::new("/usr/bin/etcd")
        .args(["--name", "e0", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
        .args([
            "--listen-peer-urls",
            &p,
            "--initial-advertise-peer-urls",
            &p,
        ])
        .args(["--initial-cluster", &format!("e0={p}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn etcd");
    let e = Etcd {
        child,
        dir,
        endpoint: c,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let kv = EtcdKv::new(vec![e.endpoint.clone()]).unwrap();
    while kv.get("probe").is_err() {
        assert!(
            Instant::now() < deadline,
            "etcd not ready in 15 s: {}",
            std::fs::read_to_string(e.dir.join("etcd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(e)
}

fn pool(yaml: &str) -> IpPool {
    match parse_documents(yaml).unwrap().remove(0) {
        Object::IPPool(p) => p,
        o => panic!("{o:?}"),
    }
}

fn set_config(kv: &dyn Kv, prefix: &str, c: IpamConfig) {
    let k = format!("{prefix}config");
    let rev = kv.get(&k).unwrap().map_or(0, |e| e.rev);
    assert!(kv
        .txn(
            &[(k.clone(), rev)],
            &[Op::Put(k, serde_json::to_string(&c).unwrap())]
        )
        .unwrap());
}

#[test]
fn two_nodes_allocate_1000_addresses_concurrently() {
    let Some(e) = etcd(0) else { return };
    let p = pool(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: big}\n\
         spec: {cidr: 10.50.0.0/20, blockSize: 26}\n",
    );
    let prefix = "/t/ipam/";
    let t0 = Instant::now();
    let per_node = 500;
    let results: Vec<Vec<Ipv4Addr>> = std::thread::scope(|s| {
        let hs: Vec<_> = ["n0", "n1"]
            .iter()
            .map(|node| {
                let (p, ep) = (&p, e.endpoint.clone());
                s.spawn(move || {
                    let kv = EtcdKv::new(vec![ep]).unwrap();
                    let a = Allocator { kv: &kv, prefix };
                    (0..per_node)
                        .map(|i| {
                            let h = format!("net/{node}-{i}/eth0");
                            a.assign(&Request {
                                node,
                                handle: &h,
                                pools: std::slice::from_ref(p),
                                ip: None,
                                reserved: &[],
                                note: "",
                            })
                            .unwrap_or_else(|e| panic!("{node} #{i}: {e}"))
                            .ip
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut all = BTreeSet::new();
    for ip in results.iter().flatten() {
        assert!(all.insert(*ip), "{ip} handed out twice");
    }
    assert_eq!(all.len(), 2 * per_node);
    let kv = EtcdKv::new(vec![e.endpoint.clone()]).unwrap();
    let a = Allocator { kv: &kv, prefix };
    let problems = a.verify().unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let blocks = a.blocks().unwrap();
    for (b, _) in &blocks {
        for h in b.allocs.values() {
            assert_eq!(
                Some(&h.node),
                b.affinity.as_ref(),
                "block {} has an address of {} (plenty of free blocks: no borrowing expected)",
                b.cidr,
                h.node
            );
        }
    }
    // 500 addresses per node fill 8 /26 blocks each (62 usable in the first, 64 elsewhere).
    let of = |n: &str| {
        blocks
            .iter()
            .filter(|(b, _)| b.affinity.as_deref() == Some(n))
            .count()
    };
    assert!(
        (8..=9).contains(&of("n0")) && (8..=9).contains(&of("n1")),
        "{} {}",
        of("n0"),
        of("n1")
    );
    eprintln!(
        "1000 addresses on 2 nodes against one etcd in {secs:.2} s ({:.0}/s), {} blocks",
        1000.0 / secs,
        blocks.len()
    );
    // And all back: releasing every handle frees every block.
    let t1 = Instant::now();
    for (i, node) in ["n0", "n1"].iter().enumerate() {
        for (k, ip) in results[i].iter().enumerate() {
            let got = a.release(&format!("net/{node}-{k}/eth0")).unwrap();
            assert_eq!(got, vec![*ip]);
        }
    }
    eprintln!("1000 releases in {:.2} s", t1.elapsed().as_secs_f64());
    assert!(a.blocks().unwrap().is_empty());
    assert!(a.handles().unwrap().is_empty());
}

#[test]
fn borrowing_from_a_full_29_unless_strict_affinity() {
    let Some(e) = etcd(1) else { return };
    // Two /29 blocks; each node may hold one.
    let p = pool(
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: small}\n\
         spec: {cidr: 10.60.0.0/28, blockSize: 29}\n",
    );
    let prefix = "/b/ipam/";
    let kv = EtcdKv::new(vec![e.endpoint.clone()]).unwrap();
    let a = Allocator { kv: &kv, prefix };
    set_config(
        &kv,
        prefix,
        IpamConfig {
            strict_affinity: false,
            max_blocks_per_host: 1,
        },
    );
    let pools = [p];
    let assign = |node: &str, h: &str| {
        a.assign(&Request {
            node,
            handle: h,
            pools: &pools,
            ip: None,
            reserved: &[],
            note: "",
        })
    };
    // n0 fills its /29 (7 usable: the pool's network or broadcast address is in it).
    let mine: Vec<_> = (0..7)
        .map(|i| assign("n0", &format!("n0-{i}")).unwrap())
        .collect();
    assert!(mine.iter().all(|r| !r.borrowed && r.block == mine[0].block));
    let other = assign("n1", "n1-0").unwrap();
    assert_ne!(other.block, mine[0].block);
    let b = assign("n0", "n0-7").unwrap();
    assert!(b.borrowed && b.block == other.block, "{b:?}");
    set_config(
        &kv,
        prefix,
        IpamConfig {
            strict_affinity: true,
            max_blocks_per_host: 1,
        },
    );
    match assign("n0", "n0-8") {
        Err(AllocError::Exhausted { why, .. }) => assert!(why.contains("strictAffinity"), "{why}"),
        other => panic!("strictAffinity must refuse borrowing: {other:?}"),
    }
    assert!(a.verify().unwrap().is_empty());
}
