//! Ethernet MAC address type shared by configuration, API and dataplane.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {0:?}: expected six hex octets like 02:00:00:00:00:01")]
pub struct MacParseError(pub String);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub fn from_bytes(b: &[u8]) -> Option<MacAddr> {
        Some(MacAddr(b.get(..6)?.try_into().ok()?))
    }
    /// Group bit set: broadcast or multicast.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
    /// A unicast, non-zero address: the only kind a port may own.
    pub fn is_valid_unicast(&self) -> bool {
        !self.is_multicast() && !self.is_zero()
    }
    /// A locally administered unicast MAC derived from a 64-bit seed (stable for a seed).
    pub fn local_from_seed(seed: u64) -> MacAddr {
        let b = seed.to_be_bytes();
        MacAddr([0x02, b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let m: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        assert!(m.is_valid_unicast());
        assert!("ff:ff:ff:ff:ff:ff"
            .parse::<MacAddr>()
            .unwrap()
            .is_broadcast());
        for bad in [
            "",
            "02:00",
            "02:00:00:00:00:00:00",
            "0g:00:00:00:00:00",
            "2:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn roundtrip(b in any::<[u8; 6]>()) {
            let m = MacAddr(b);
            prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        }
        #[test]
        fn seeded_is_local_unicast(seed in any::<u64>()) {
            let m = MacAddr::local_from_seed(seed);
            prop_assert!(m.is_valid_unicast());
            prop_assert_eq!(m.0[0] & 0x02, 0x02);
        }
    }
}
