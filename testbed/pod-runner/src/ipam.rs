//! Pod IP allocation from the pod CIDR: sticky per namespace/name, so a re-created
//! StatefulSet pod gets its old address back when it is free. Persisted as JSON in
//! the state dir so `fault`/`cleanup` and a restarted runner see the same table.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("pod CIDR {0:?} is not an IPv4 a.b.c.d/len with len 16..=30")]
    BadCidr(String),
    #[error("pod CIDR {0} has no free address")]
    Exhausted(String),
    #[error("ipam state {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("ipam state {path}: {source}")]
    Json {
        path: String,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::BadCidr(s.to_string());
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix_len: u8 = len.parse().map_err(|_| bad())?;
        if !(16..=30).contains(&prefix_len) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix_len);
        Ok(Cidr {
            network: Ipv4Addr::from(u32::from(ip) & mask),
            prefix_len,
        })
    }

    /// Usable pod addresses: skips the network, the gateway (.1) and broadcast.
    fn pod_range(&self) -> impl Iterator<Item = Ipv4Addr> {
        let net = u32::from(self.network);
        let size = 1u32 << (32 - self.prefix_len);
        (net + 2..net + size - 1).map(Ipv4Addr::from)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix_len);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Table {
    /// "namespace/name" → the address that pod name had last.
    pub sticky: BTreeMap<String, Ipv4Addr>,
    /// address → uid of the pod holding it now.
    pub in_use: BTreeMap<Ipv4Addr, String>,
}

impl Table {
    /// Picks the pod's address: its old one when free, else the lowest address no
    /// other name remembers, else the lowest free one. Idempotent per uid.
    pub fn allocate(&mut self, cidr: &Cidr, key: &str, uid: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some((ip, _)) = self.in_use.iter().find(|(_, u)| *u == uid) {
            return Ok(*ip);
        }
        let remembered: std::collections::BTreeSet<Ipv4Addr> = self
            .sticky
            .iter()
            .filter(|(k, _)| *k != key)
            .map(|(_, ip)| *ip)
            .collect();
        let free = |ip: &Ipv4Addr| !self.in_use.contains_key(ip);
        let ip = self
            .sticky
            .get(key)
            .copied()
            .filter(|ip| cidr.contains(*ip) && free(ip))
            .or_else(|| {
                cidr.pod_range()
                    .find(|ip| free(ip) && !remembered.contains(ip))
            })
            .or_else(|| cidr.pod_range().find(free))
            .ok_or_else(|| IpamError::Exhausted(cidr.to_string()))?;
        self.sticky.retain(|k, v| k == key || *v != ip);
        self.sticky.insert(key.to_string(), ip);
        self.in_use.insert(ip, uid.to_string());
        Ok(ip)
    }

    pub fn release(&mut self, uid: &str) {
        self.in_use.retain(|_, u| u != uid);
    }

    pub fn load(path: &Path) -> Result<Self, IpamError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| IpamError::Json {
                path: path.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Table::default()),
            Err(source) => Err(IpamError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), IpamError> {
        let io = |source| IpamError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|source| IpamError::Json {
            path: path.display().to_string(),
            source,
        })?;
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr() -> Cidr {
        Cidr::parse("10.213.7.0/24").unwrap()
    }

    #[test]
    fn first_pods_get_lowest_addresses_after_gateway() {
        let mut t = Table::default();
        assert_eq!(
            t.allocate(&cidr(), "a/x", "u1").unwrap(),
            Ipv4Addr::new(10, 213, 7, 2)
        );
        assert_eq!(
            t.allocate(&cidr(), "a/y", "u2").unwrap(),
            Ipv4Addr::new(10, 213, 7, 3)
        );
        assert_eq!(
            t.allocate(&cidr(), "a/x", "u1").unwrap(),
            Ipv4Addr::new(10, 213, 7, 2),
            "idempotent"
        );
    }

    #[test]
    fn recreated_pod_keeps_its_address_and_others_do_not_take_it() {
        let mut t = Table::default();
        let ip0 = t.allocate(&cidr(), "shop/node-0", "old").unwrap();
        t.allocate(&cidr(), "shop/node-1", "n1").unwrap();
        t.release("old");
        let other = t.allocate(&cidr(), "shop/web-abc", "w").unwrap();
        assert_ne!(other, ip0, "a free remembered address is kept for its name");
        assert_eq!(t.allocate(&cidr(), "shop/node-0", "new").unwrap(), ip0);
    }

    #[test]
    fn held_address_is_never_given_twice() {
        let mut t = Table::default();
        let ip = t.allocate(&cidr(), "a/x", "u1").unwrap();
        // Same name, new uid while the old pod still runs (StatefulSet forced delete).
        assert_ne!(t.allocate(&cidr(), "a/x", "u2").unwrap(), ip);
    }

    #[test]
    fn exhaustion_reuses_remembered_then_fails() {
        let c = Cidr::parse("10.0.0.0/30").unwrap(); // one pod address: .2
        let mut t = Table::default();
        assert_eq!(
            t.allocate(&c, "a/x", "1").unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        assert!(matches!(
            t.allocate(&c, "a/y", "2"),
            Err(IpamError::Exhausted(_))
        ));
        t.release("1");
        assert_eq!(
            t.allocate(&c, "a/y", "2").unwrap(),
            Ipv4Addr::new(10, 0, 0, 2)
        );
        assert_eq!(t.sticky.len(), 1, "the stolen address is forgotten for a/x");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ipam.json");
        assert_eq!(Table::load(&p).unwrap(), Table::default());
        let mut t = Table::default();
        t.allocate(&cidr(), "a/x", "u").unwrap();
        t.save(&p).unwrap();
        assert_eq!(Table::load(&p).unwrap(), t);
    }

    #[test]
    fn rejects_bad_cidrs() {
        assert!(Cidr::parse("10.0.0.0").is_err());
        assert!(Cidr::parse("10.0.0.0/8").is_err());
        assert!(Cidr::parse("x/24").is_err());
    }
}
