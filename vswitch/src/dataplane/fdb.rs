//! Forwarding database of one domain: MAC → port, static entries for known ports plus learned
//! entries that age out. Bounded, so a MAC flood cannot grow it without limit.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use vswitch_config::MacAddr;

pub type PortIdx = u32;

/// A cheap hasher for 6-byte keys (the table holds no attacker-chosen keys beyond the learn
/// limit, and per-packet SipHash would dominate the lookup).
#[derive(Default)]
pub struct MacHasher(u64);

impl Hasher for MacHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<MacHasher>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Static,
    Learned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub port: PortIdx,
    pub kind: EntryKind,
    /// Seconds on the worker's clock when last seen (learned entries).
    pub last_seen: u64,
    /// When this worker last told the other workers about the entry.
    pub shared_at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    /// Already known at this port (timestamp refreshed). `share`: time to tell the other
    /// workers again, so their copies do not age out while traffic keeps it alive here.
    Refreshed {
        share: bool,
    },
    New,
    /// Was learned on another port; moved.
    Moved {
        from: PortIdx,
    },
    /// A static entry owns this MAC; learning never overrides it.
    Static,
    /// Table full; not learned.
    Full,
}

#[derive(Debug)]
pub struct Fdb {
    map: FastMap<MacAddr, Entry>,
    learned: usize,
    max_learned: usize,
    aging_secs: u64,
}

impl Fdb {
    pub fn new(aging_secs: u64, max_learned: usize) -> Fdb {
        Fdb {
            map: FastMap::default(),
            learned: 0,
            max_learned,
            aging_secs,
        }
    }

    pub fn add_static(&mut self, mac: MacAddr, port: PortIdx) {
        let old = self.map.insert(
            mac,
            Entry {
                port,
                kind: EntryKind::Static,
                last_seen: 0,
                shared_at: 0,
            },
        );
        if matches!(old, Some(e) if e.kind == EntryKind::Learned) {
            self.learned -= 1;
        }
    }

    /// Removes one MAC's entry.
    pub fn remove_mac(&mut self, mac: &MacAddr) {
        if let Some(e) = self.map.remove(mac) {
            if e.kind == EntryKind::Learned {
                self.learned -= 1;
            }
        }
    }

    /// Removes every entry pointing at `port`.
    pub fn remove_port(&mut self, port: PortIdx) {
        let learned = &mut self.learned;
        self.map.retain(|_, e| {
            let keep = e.port != port;
            if !keep && e.kind == EntryKind::Learned {
                *learned -= 1;
            }
            keep
        });
    }

    pub fn learn(&mut self, mac: MacAddr, port: PortIdx, now: u64) -> Learn {
        if !mac.is_valid_unicast() {
            return Learn::Full;
        }
        let full = self.learned >= self.max_learned;
        match self.map.get_mut(&mac) {
            Some(e) if e.kind == EntryKind::Static => Learn::Static,
            Some(e) => {
                e.last_seen = now;
                if e.port == port {
                    let share = now.saturating_sub(e.shared_at) >= (self.aging_secs / 4).max(1);
                    if share {
                        e.shared_at = now;
                    }
                    Learn::Refreshed { share }
                } else {
                    let from = e.port;
                    e.port = port;
                    e.shared_at = now;
                    Learn::Moved { from }
                }
            }
            None if full => Learn::Full,
            None => {
                self.map.insert(
                    mac,
                    Entry {
                        port,
                        kind: EntryKind::Learned,
                        last_seen: now,
                        shared_at: now,
                    },
                );
                self.learned += 1;
                Learn::New
            }
        }
    }

    /// The port for `mac`, ignoring learned entries older than the aging time.
    #[inline]
    pub fn lookup(&self, mac: &MacAddr, now: u64) -> Option<PortIdx> {
        self.get(mac, now).map(|e| e.port)
    }

    /// The live entry for `mac` (learned entries older than the aging time are gone).
    #[inline]
    pub fn get(&self, mac: &MacAddr, now: u64) -> Option<Entry> {
        let e = self.map.get(mac)?;
        if e.kind == EntryKind::Learned && now.saturating_sub(e.last_seen) > self.aging_secs {
            return None;
        }
        Some(*e)
    }

    /// Drops expired learned entries (called periodically, not per packet).
    pub fn expire(&mut self, now: u64) {
        let aging = self.aging_secs;
        let learned = &mut self.learned;
        self.map.retain(|_, e| {
            let keep = e.kind == EntryKind::Static || now.saturating_sub(e.last_seen) <= aging;
            if !keep {
                *learned -= 1;
            }
            keep
        });
    }

    pub fn entries(&self) -> impl Iterator<Item = (&MacAddr, &Entry)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn static_beats_learning() {
        let mut f = Fdb::new(300, 10);
        f.add_static(mac(1), 1);
        assert_eq!(f.learn(mac(1), 2, 0), Learn::Static);
        assert_eq!(f.lookup(&mac(1), 10_000), Some(1));
    }

    #[test]
    fn learn_move_age() {
        let mut f = Fdb::new(300, 10);
        assert_eq!(f.learn(mac(2), 1, 100), Learn::New);
        // Other workers hear about a refreshed entry every quarter of the aging time.
        assert_eq!(f.learn(mac(2), 1, 150), Learn::Refreshed { share: false });
        assert_eq!(f.learn(mac(2), 1, 176), Learn::Refreshed { share: true });
        assert_eq!(f.learn(mac(2), 1, 177), Learn::Refreshed { share: false });
        assert_eq!(f.learn(mac(2), 3, 180), Learn::Moved { from: 1 });
        assert_eq!(f.lookup(&mac(2), 480), Some(3));
        assert_eq!(f.lookup(&mac(2), 481), None);
        f.expire(481);
        assert!(f.is_empty());
        assert_eq!(f.learn(MacAddr::BROADCAST, 1, 0), Learn::Full);
    }

    #[test]
    fn bounded_and_port_removal() {
        let mut f = Fdb::new(300, 2);
        f.add_static(mac(9), 9);
        assert_eq!(f.learn(mac(1), 1, 0), Learn::New);
        assert_eq!(f.learn(mac(2), 1, 0), Learn::New);
        assert_eq!(f.learn(mac(3), 1, 0), Learn::Full);
        f.remove_port(1);
        assert_eq!(f.len(), 1);
        assert_eq!(f.learn(mac(3), 1, 0), Learn::New);
        f.remove_port(9);
        assert_eq!(f.lookup(&mac(9), 0), None);
    }

    proptest! {
        /// The learned count always matches the table and never exceeds the bound.
        #[test]
        fn invariant(ops in proptest::collection::vec((0u8..4, 0u8..8, 0u32..3, 0u64..1000), 0..200)) {
            let mut f = Fdb::new(100, 5);
            for (op, m, p, t) in ops {
                match op {
                    0 => { f.learn(mac(m), p, t); }
                    1 => f.add_static(mac(m), p),
                    2 => f.remove_port(p),
                    _ => f.expire(t),
                }
                let learned = f.entries().filter(|(_, e)| e.kind == EntryKind::Learned).count();
                prop_assert_eq!(learned, f.learned);
                prop_assert!(f.learned <= 5);
            }
        }
    }
}
