//! Slot addressing: the clone CIDR, each slot's clone IP, its names (netns,
//! host veth, ownership mark) and MACs, parsing names back into indexes,
//! and the checks on a pool's settings.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::{Slot, SlotError, SlotNet, PREFIX, VETH0};
use crate::sys::tap;

/// An IPv4 CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address (host bits cleared).
    pub net: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Cidr {
    /// Checks and normalises `addr/prefix`.
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, SlotError> {
        if prefix > 32 {
            return Err(SlotError::BadConfig(format!(
                "CIDR prefix /{prefix} is longer than 32"
            )));
        }
        Ok(Cidr {
            net: Ipv4Addr::from(u32::from(addr) & Self::mask_of(prefix)),
            prefix,
        })
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    /// The netmask as an integer.
    pub fn mask(&self) -> u32 {
        Self::mask_of(self.prefix)
    }

    /// True when `a` is inside.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & self.mask() == u32::from(self.net)
    }

    /// True when the two ranges share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let p = self.prefix.min(other.prefix);
        let m = Self::mask_of(p);
        u32::from(self.net) & m == u32::from(other.net) & m
    }

    /// Number of clone addresses: all hosts minus network, gateway and
    /// broadcast.
    pub fn capacity(&self) -> u32 {
        if self.prefix > 30 {
            return 0;
        }
        ((1u64 << (32 - self.prefix)) - 3) as u32
    }

    /// The bridge (gateway) address: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) + 1)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = SlotError;
    fn from_str(s: &str) -> Result<Self, SlotError> {
        let bad = || {
            SlotError::BadConfig(format!(
                "invalid CIDR {s:?}: write an IPv4 network like 10.0.0.0/16"
            ))
        };
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let p: u8 = p.parse().map_err(|_| bad())?;
        Cidr::new(a, p)
    }
}

/// FNV-1a, for the short pool tag in host link names.
fn fnv1a(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Largest slot index (the host veth name holds 6 hex digits).
pub const MAX_INDEX: u32 = 0xff_ffff;

impl SlotNet {
    /// Checks the configuration; one clear error for the first problem.
    pub fn validate(&self) -> Result<(), SlotError> {
        let bad = |m: String| Err(SlotError::BadConfig(m));
        if self.pool.is_empty()
            || self.pool.len() > 40
            || !self
                .pool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return bad(format!(
                "pool name {:?}: use 1-40 characters from [A-Za-z0-9_]",
                self.pool
            ));
        }
        for (what, n) in [("bridge", &self.bridge), ("tap", &self.tap)] {
            if let Err(e) = tap::check_ifname(n) {
                return bad(format!("{what} name: {e}"));
            }
        }
        if !self.bridge.starts_with(PREFIX) {
            return bad(format!(
                "bridge name {:?} must start with {PREFIX:?} so wasp can find it again",
                self.bridge
            ));
        }
        if self.tap == VETH0 || self.tap == "lo" {
            return bad(format!("tap name {:?} clashes with a slot link", self.tap));
        }
        if self.cidr.prefix > 30 {
            return bad(format!(
                "clone CIDR {} is too small: it needs room for the bridge address and at least one clone (use /30 or shorter)",
                self.cidr
            ));
        }
        let tap_net = Cidr::new(self.tap_ip, self.tap_prefix)?;
        if !tap_net.contains(self.guest_ip) || self.guest_ip == self.tap_ip {
            return bad(format!(
                "guest IP {} is not a host of the tap network {}/{}",
                self.guest_ip, self.tap_ip, self.tap_prefix
            ));
        }
        if tap_net.overlaps(&self.cidr) {
            return bad(format!(
                "tap network {tap_net} overlaps the clone CIDR {}",
                self.cidr
            ));
        }
        for a in &self.allow_host {
            if !self.cidr.contains(*a.ip()) {
                return bad(format!(
                    "allowed host port {a} is outside the clone CIDR {}; allow an address of the bridge",
                    self.cidr
                ));
            }
        }
        Ok(())
    }

    /// The most slots the pool can hold: its CIDR's clone addresses, at
    /// most the index limit.
    pub fn max_slots(&self) -> usize {
        self.cidr.capacity().min(MAX_INDEX + 1) as usize
    }

    /// Fails up front, before anything is built, when `n` slots cannot
    /// all have a clone address in the CIDR.
    pub fn check_fits(&self, n: usize) -> Result<(), SlotError> {
        let capacity = self.cidr.capacity().min(MAX_INDEX + 1);
        if n > capacity as usize {
            return Err(SlotError::Exhausted {
                cidr: self.cidr,
                index: u32::try_from(n - 1).unwrap_or(u32::MAX),
                capacity,
            });
        }
        Ok(())
    }

    /// The description of slot `n` (names and clone address).
    pub fn slot(&self, n: u32) -> Result<Slot, SlotError> {
        Ok(Slot {
            index: n,
            netns: self.netns_name(n),
            clone_ip: self.clone_ip(n)?,
            host_veth: self.host_veth(n),
        })
    }

    /// `wasp-<pool>-<n>`.
    pub fn netns_name(&self, n: u32) -> String {
        format!("{PREFIX}-{}-{n}", self.pool)
    }

    /// The host veth end: `wasp` + 5 hex digits of the pool's hash + 6 hex
    /// digits of the index (15 characters, the kernel's limit).
    pub fn host_veth(&self, n: u32) -> String {
        format!("{PREFIX}{:05x}{n:06x}", fnv1a(&self.pool) & 0xf_ffff)
    }

    /// The MAC of slot `n`'s `veth0`: locally administered (`02`), 16 bits
    /// of the pool's hash, 24 bits of the index. Fixed per slot, so the
    /// host's permanent neighbour entry for the clone IP stays right when
    /// the slot is rebuilt.
    pub fn veth0_mac(&self, n: u32) -> [u8; 6] {
        let h = fnv1a(&self.pool).to_be_bytes();
        let i = n.to_be_bytes();
        [0x02, h[2], h[3], i[1], i[2], i[3]]
    }

    /// The MAC wasp gives a bridge it creates: locally administered
    /// (`0a`), then the same 16 bits of the pool's hash.
    pub fn bridge_mac(&self) -> [u8; 6] {
        let h = fnv1a(&self.pool).to_be_bytes();
        [0x0a, h[2], h[3], 0, 0, 1]
    }

    /// The ownership mark `wasp:<pool>:<n>`.
    pub fn alias(&self, n: u32) -> String {
        format!("{PREFIX}:{}:{n}", self.pool)
    }

    /// Parses an ownership mark of this pool back into the index.
    pub fn index_of_alias(&self, alias: &str) -> Option<u32> {
        let rest = alias.strip_prefix(&format!("{PREFIX}:{}:", self.pool))?;
        rest.parse().ok()
    }

    /// Parses a slot netns name of this pool back into the index.
    pub fn index_of_netns(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(&format!("{PREFIX}-{}-", self.pool))?;
        if rest.starts_with('0') && rest.len() > 1 {
            return None;
        }
        rest.parse().ok()
    }

    /// The clone address of slot `n`: the CIDR's hosts after the gateway,
    /// in order. Exhaustion is an error.
    pub fn clone_ip(&self, n: u32) -> Result<Ipv4Addr, SlotError> {
        let cap = self.cidr.capacity();
        if n >= cap || n > MAX_INDEX {
            return Err(SlotError::Exhausted {
                cidr: self.cidr,
                index: n,
                capacity: cap.min(MAX_INDEX + 1),
            });
        }
        Ok(Ipv4Addr::from(u32::from(self.cidr.net) + 2 + n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing_capacity_and_overlap() {
        let c: Cidr = "10.0.3.7/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/16");
        assert_eq!(c.capacity(), 65533);
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 0, 0, 1));
        assert!(c.overlaps(&"10.0.200.0/24".parse().unwrap()));
        assert!(c.overlaps(&"8.0.0.0/5".parse().unwrap()));
        assert!(!c.overlaps(&"10.1.0.0/16".parse().unwrap()));
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("x/8".parse::<Cidr>().is_err());
        assert_eq!("10.0.0.0/30".parse::<Cidr>().unwrap().capacity(), 1);
        assert_eq!("10.0.0.0/31".parse::<Cidr>().unwrap().capacity(), 0);
    }

    #[test]
    fn default_holds_ten_thousand_and_allocation_is_deterministic() {
        let n = SlotNet::default();
        n.validate().unwrap();
        assert!(n.cidr.capacity() >= 10_000);
        assert_eq!(n.clone_ip(0).unwrap(), Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(n.clone_ip(300).unwrap(), Ipv4Addr::new(10, 0, 1, 46));
        assert_eq!(n.clone_ip(65532).unwrap(), Ipv4Addr::new(10, 0, 255, 254));
        let e = n.clone_ip(65533).unwrap_err();
        assert!(matches!(e, SlotError::Exhausted { .. }), "{e}");
        assert!(e.to_string().contains("--cidr"));
    }

    #[test]
    fn names_round_trip() {
        let n = SlotNet {
            pool: "t4242".into(),
            ..Default::default()
        };
        assert_eq!(n.netns_name(7), "wasp-t4242-7");
        assert_eq!(n.index_of_netns("wasp-t4242-7"), Some(7));
        assert_eq!(n.index_of_netns("wasp-t4242-07"), None);
        assert_eq!(n.index_of_netns("wasp-t42420-7"), None);
        assert_eq!(n.alias(7), "wasp:t4242:7");
        assert_eq!(n.index_of_alias("wasp:t4242:7"), Some(7));
        assert_eq!(n.index_of_alias("wasp:other:7"), None);
        let v = n.host_veth(MAX_INDEX);
        assert_eq!(v.len(), 15);
        assert!(v.starts_with("wasp"));
        tap::check_ifname(&v).unwrap();
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = |f: &dyn Fn(&mut SlotNet)| {
            let mut n = SlotNet::default();
            f(&mut n);
            n.validate().unwrap_err().to_string()
        };
        assert!(bad(&|n| n.pool = "a-b".into()).contains("pool name"));
        assert!(bad(&|n| n.cidr = "10.0.0.0/31".parse().unwrap()).contains("too small"));
        assert!(bad(&|n| n.bridge = "br0".into()).contains("must start with"));
        assert!(bad(&|n| n.guest_ip = Ipv4Addr::new(1, 1, 1, 1)).contains("guest IP"));
        assert!(bad(&|n| n.cidr = "192.168.0.0/16".parse().unwrap()).contains("overlaps"));
        assert!(bad(&|n| n.allow_host = vec!["1.2.3.4:80".parse().unwrap()])
            .contains("outside the clone CIDR"));
    }
}
