//! Slots made of test namespaces, each with `tap0` at 192.168.241.1/29:
//! the spawn pipeline's slot seam without the real pool.

use super::TestNetns;
use wasp::engine::batch::{SlotError, SlotLease, Slots};

/// Fake pool.
pub struct FakeSlots {
    pub nss: Vec<TestNetns>,
    free: Vec<SlotLease>,
    pub given_back: Vec<u32>,
}

impl FakeSlots {
    pub fn new(n: usize, with_tap: bool) -> Self {
        let mut nss = Vec::new();
        let mut free = Vec::new();
        for i in 0..n {
            let ns = TestNetns::new(&format!("sp{i}"));
            if with_tap {
                super::add_tap0(&ns);
            }
            free.push(SlotLease {
                pool: "test".into(),
                index: i as u32,
                netns: ns.name().to_owned(),
                clone_ip: format!("10.0.0.{}", i + 2).parse().unwrap(),
                tap: "tap0".into(),
                guest_ip: Some(std::net::Ipv4Addr::new(192, 168, 241, 2)),
            });
            nss.push(ns);
        }
        free.reverse();
        Self {
            nss,
            free,
            given_back: Vec::new(),
        }
    }
}

impl Slots for FakeSlots {
    fn take(&mut self) -> Result<SlotLease, SlotError> {
        self.free.pop().ok_or_else(|| "pool empty".into())
    }
    fn give_back(&mut self, slot: SlotLease) -> Result<(), SlotError> {
        self.given_back.push(slot.index);
        Ok(())
    }
    fn check_tap(&mut self, slot: &SlotLease) -> Result<(), SlotError> {
        let ns = self.nss.iter().find(|n| n.name() == slot.netns).unwrap();
        if ns.sh_ok("ip link show tap0") {
            Ok(())
        } else {
            Err(format!("no tap0 in {}", slot.netns).into())
        }
    }
    fn host_netns(&self) -> Option<String> {
        None
    }
    fn status(&self) -> Option<wasp::pipeline::pool::PoolStatus> {
        let n = self.nss.len();
        Some(wasp::pipeline::pool::PoolStatus {
            free: self.free.len(),
            // Given back slots are not handed out again.
            in_use: n - self.free.len() - self.given_back.len(),
            size: n,
            low_water: 0,
            high_water: n,
            refill_failures: 0,
        })
    }
    fn max_slots(&self) -> usize {
        self.nss.len() - self.given_back.len()
    }
}
