//! Network slots: one named netns per clone with a veth to the host bridge,
//! the snapshot's tap, and SNAT/DNAT in nf_tables, all over raw netlink.
//!
//! A slot `n` of pool `p` is:
//! - the named netns `wasp-<p>-<n>` (visible to `ip netns`);
//! - a veth pair: host end [`SlotNet::host_veth`] (`wasp` + 11 hex digits)
//!   enslaved to the bridge, isolated as a bridge port, with the ownership
//!   mark IFLA_IFALIAS `wasp:<p>:<n>`; the end inside is `veth0` with the
//!   clone IP and the CIDR's prefix, default route via the bridge address;
//! - the tap (default `tap0`, 192.168.241.1/29), `lo` up,
//!   `net.ipv4.ip_forward=1` (which turns forwarding on for every device of
//!   the namespace; one /proc/sys write whose path lookup costs O(live
//!   namespaces), ~0.2–0.4 ms here);
//! - one nf_tables batch: table `ip wasp` with DNAT clone->guest on input
//!   from veth0, SNAT guest->clone on output to veth0, and a forward chain
//!   (policy drop) that lets the host reach the guest and the guest reach
//!   only the allowed host ports (plus, with egress, anything outside the
//!   clone CIDR).
//!
//! Everything for one slot runs on the one thread that unshares into the
//! new namespace: netlink messages are batched per socket. Kernel work sits
//! behind [`SlotOps`] so the pool can be tested with a recording fake.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use crossbeam::channel::{bounded, unbounded, Receiver, Sender};

use thiserror::Error;

use crate::netlink::nft::{self, BaseChain, Batch, ChainType, CmpOp, Expr, Hook};
use crate::netlink::{self, rtnl, MsgBuf, NetlinkError, Socket};
use crate::pipeline::lease::{Lease, LEASE_DIR};
use crate::pipeline::registry::{PoolEntry, Registry};
use crate::sys::{netns, tap};

/// Prefix of every slot namespace, host veth and nft table wasp makes.
pub const PREFIX: &str = "wasp";
/// Name of the veth end inside the slot.
pub const VETH0: &str = "veth0";
/// Name of wasp's nf_tables table (in slots and in the host netns).
pub const NFT_TABLE: &str = "wasp";
/// IFLA_IFALIAS of a bridge wasp created.
pub const BRIDGE_ALIAS: &str = "wasp:bridge";

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

/// The configuration all slots of a pool share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotNet {
    /// Pool name: 1-40 characters from `[A-Za-z0-9_]`.
    pub pool: String,
    /// Clone address space; the bridge holds its first address.
    pub cidr: Cidr,
    /// Host bridge name.
    pub bridge: String,
    /// Tap name the snapshot expects.
    pub tap: String,
    /// Tap address (the guest's gateway).
    pub tap_ip: Ipv4Addr,
    /// Tap prefix length.
    pub tap_prefix: u8,
    /// Guest address behind the tap.
    pub guest_ip: Ipv4Addr,
    /// Host ports (on bridge addresses) a clone may reach.
    pub allow_host: Vec<SocketAddrV4>,
    /// Let clones reach addresses outside the clone CIDR (pair it with
    /// host-side masquerade, see [`HostNet::egress_uplink`]).
    pub egress: bool,
}

impl Default for SlotNet {
    fn default() -> Self {
        SlotNet {
            pool: "default".into(),
            cidr: Cidr {
                net: Ipv4Addr::new(10, 0, 0, 0),
                prefix: 16,
            },
            bridge: "wasp0".into(),
            tap: "tap0".into(),
            tap_ip: Ipv4Addr::new(192, 168, 241, 1),
            tap_prefix: 29,
            guest_ip: Ipv4Addr::new(192, 168, 241, 2),
            allow_host: vec![SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 8080)],
            egress: false,
        }
    }
}

/// Errors of slot operations.
#[derive(Debug, Error)]
pub enum SlotError {
    /// The configuration is unusable.
    #[error("bad slot configuration: {0}")]
    BadConfig(String),
    /// No address left in the CIDR.
    #[error("clone CIDR {cidr} is exhausted: slot index {index} needs more than its {capacity} clone addresses; use a larger --cidr (e.g. a /16 holds 65533)")]
    Exhausted {
        /// The CIDR.
        cidr: Cidr,
        /// Requested index.
        index: u32,
        /// Addresses available.
        capacity: u32,
    },
    /// A name wasp would use belongs to something that is not wasp's.
    #[error("{what} already exists and is not wasp's (no ownership mark); rename or remove it, or pick another name")]
    Foreign {
        /// What clashed.
        what: String,
    },
    /// The slot's namespace name exists already: another wasp process
    /// built (or is building) this slot, or something else holds the name.
    /// The pool moves on to another index.
    #[error("netns {netns} already exists (another wasp process built this slot, or something else holds the name)")]
    NameTaken {
        /// The namespace name.
        netns: String,
    },
    /// A netlink request failed.
    #[error("{what}")]
    Netlink {
        /// The step.
        what: String,
        /// Cause.
        #[source]
        source: NetlinkError,
    },
    /// A system call failed.
    #[error("{what}")]
    Io {
        /// The step.
        what: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The tap is still attached (a VMM holds it).
    #[error("tap {tap} in {netns} is still attached; stop the VMM before giving the slot back")]
    TapBusy {
        /// Tap name.
        tap: String,
        /// Slot namespace.
        netns: String,
    },
    /// Several teardown steps failed.
    #[error("teardown had {} error(s): {}", .0.len(), .0.iter().map(|e| crate::error::chain(e)).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<SlotError>),
}

fn nl(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> SlotError {
    let what = what.into();
    move |source| SlotError::Netlink { what, source }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SlotError {
    let what = what.into();
    move |source| SlotError::Io { what, source }
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

    /// The nf_tables batch of slot `n` (one atomic batch): table `ip wasp`,
    /// NAT chains and the forward filter.
    pub fn ruleset(&self, seq: u32, clone_ip: Ipv4Addr) -> Batch {
        let f = nft::NFPROTO_IPV4;
        let t = NFT_TABLE;
        let mut b = Batch::new(seq);
        b.new_table(f, t);
        let base = |ty, hook, priority, policy| {
            Some(BaseChain {
                ty,
                hook,
                priority,
                policy,
            })
        };
        b.new_chain(
            f,
            t,
            "prerouting",
            base(ChainType::Nat, Hook::Prerouting, -100, nft::NF_ACCEPT),
        );
        b.new_chain(
            f,
            t,
            "postrouting",
            base(ChainType::Nat, Hook::Postrouting, 100, nft::NF_ACCEPT),
        );
        b.new_chain(
            f,
            t,
            "forward",
            base(ChainType::Filter, Hook::Forward, 0, nft::NF_DROP),
        );
        let accept = Expr::Verdict(nft::NF_ACCEPT);
        // DNAT clone -> guest on input from veth0.
        let mut r: Vec<Expr> = nft::iifname(VETH0).into();
        r.extend(nft::ip_addr_eq(nft::IP_DADDR, clone_ip));
        r.extend(nft::nat_to(nft::NFT_NAT_DNAT, self.guest_ip));
        b.new_rule(f, t, "prerouting", &r);
        // SNAT guest -> clone on output to veth0.
        let mut r: Vec<Expr> = nft::oifname(VETH0).into();
        r.extend(nft::ip_addr_eq(nft::IP_SADDR, self.guest_ip));
        r.extend(nft::nat_to(nft::NFT_NAT_SNAT, clone_ip));
        b.new_rule(f, t, "postrouting", &r);
        // Forward: replies, host -> guest, guest -> allowed host ports.
        let mut r: Vec<Expr> = nft::ct_established_related().into();
        r.push(accept.clone());
        b.new_rule(f, t, "forward", &r);
        let mut r: Vec<Expr> = nft::iifname(VETH0).into();
        r.extend(nft::oifname(&self.tap));
        r.push(accept.clone());
        b.new_rule(f, t, "forward", &r);
        for a in &self.allow_host {
            let mut r: Vec<Expr> = nft::iifname(&self.tap).into();
            r.extend(nft::oifname(VETH0));
            r.extend(nft::ip_addr_eq(nft::IP_DADDR, *a.ip()));
            r.extend(nft::l4_dport(libc::IPPROTO_TCP as u8, a.port()));
            r.push(accept.clone());
            b.new_rule(f, t, "forward", &r);
        }
        if self.egress {
            let mut r: Vec<Expr> = nft::iifname(&self.tap).into();
            r.extend(nft::oifname(VETH0));
            r.extend(nft::ip_addr_match(
                nft::IP_DADDR,
                CmpOp::Neq,
                self.cidr.net,
                self.cidr.prefix,
            ));
            r.push(accept);
            b.new_rule(f, t, "forward", &r);
        }
        b
    }

    /// How many messages [`SlotNet::inner_links`] appends.
    pub const INNER_MSGS: u32 = 6;

    /// The rtnetlink messages run inside a fresh slot netns once veth0
    /// exists: lo, tap and veth0 up, their addresses, the default route. Returns the [`Self::INNER_MSGS`]
    /// sequence numbers from `seq`.
    pub fn inner_links(
        &self,
        b: &mut MsgBuf,
        seq: u32,
        tap_index: u32,
        veth0_index: u32,
        clone_ip: Ipv4Addr,
    ) -> Vec<u32> {
        rtnl::set_up(b, seq, rtnl::Link::Index(1));
        rtnl::set_up(b, seq + 1, rtnl::Link::Index(tap_index));
        rtnl::set_up(b, seq + 2, rtnl::Link::Index(veth0_index));
        rtnl::new_addr(b, seq + 3, tap_index, self.tap_ip, self.tap_prefix);
        rtnl::new_addr(b, seq + 4, veth0_index, clone_ip, self.cidr.prefix);
        rtnl::default_route(b, seq + 5, self.cidr.gateway());
        (seq..seq + Self::INNER_MSGS).collect()
    }
}

/// A built slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Index in the pool.
    pub index: u32,
    /// Named netns.
    pub netns: String,
    /// Clone IP on the bridge.
    pub clone_ip: Ipv4Addr,
    /// Host veth end.
    pub host_veth: String,
}

/// Where one slot build's time went, in ms per step (`wasp bench slots`
/// reports their percentiles).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct BuildSteps {
    /// Creating and naming the namespace (unshare, the `/run/netns` name).
    pub netns: f64,
    /// The tap: open `/dev/net/tun`, `TUNSETIFF`, `TUNSETPERSIST`, close.
    pub tap: f64,
    /// The veth pair, its peer created inside the slot.
    pub veth: f64,
    /// The host end's ownership mark and bridge-port isolation.
    pub mark: f64,
    /// Links up, addresses and the route inside (one datagram).
    pub links: f64,
    /// `net.ipv4.ip_forward=1`.
    pub forwarding: f64,
    /// The nf_tables batch.
    pub nft: f64,
    /// The host end up, and the link-watch syncs of both ends.
    pub up: f64,
}

impl BuildSteps {
    /// The step names, in build order.
    pub const NAMES: [&'static str; 8] = [
        "netns",
        "tap",
        "veth",
        "mark",
        "links",
        "forwarding",
        "nft",
        "up",
    ];

    /// The values, in [`BuildSteps::NAMES`] order.
    pub fn values(&self) -> [f64; 8] {
        [
            self.netns,
            self.tap,
            self.veth,
            self.mark,
            self.links,
            self.forwarding,
            self.nft,
            self.up,
        ]
    }
}

/// Splits a build into steps: each `lap` charges the time since the last
/// one to a step.
struct Laps<'a> {
    steps: &'a mut BuildSteps,
    last: std::time::Instant,
}

impl<'a> Laps<'a> {
    fn new(steps: &'a mut BuildSteps) -> Self {
        Self {
            steps,
            last: std::time::Instant::now(),
        }
    }

    fn lap(&mut self, step: fn(&mut BuildSteps) -> &mut f64) {
        let now = std::time::Instant::now();
        *step(self.steps) += crate::stats::ms(now - self.last);
        self.last = now;
    }
}

/// A slot found in the kernel during reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Index parsed from the names.
    pub index: u32,
    /// The namespace exists.
    pub has_netns: bool,
    /// The host veth with the right alias exists (and its name).
    pub host_veth: Option<String>,
    /// The host veth is enslaved to the pool's bridge.
    pub on_bridge: bool,
}

impl Found {
    /// Both halves exist and are wired.
    pub fn healthy(&self) -> bool {
        self.has_netns && self.host_veth.is_some() && self.on_bridge
    }
}

/// The kernel operations the pool needs. [`Kernel`] is the real one; tests
/// use a recording fake.
pub trait SlotOps: Send + Sync {
    /// Builds slot `n` (nothing is left behind on failure).
    fn build(&self, n: u32) -> Result<Slot, SlotError>;
    /// Makes a returned slot reusable: flush conntrack, check the tap is free.
    fn recycle(&self, slot: &Slot) -> Result<(), SlotError>;
    /// Removes slot `n` (best effort, every error reported).
    fn destroy(&self, n: u32) -> Result<(), SlotError>;
    /// Removes several slots, one result per index in order. The default
    /// removes them one after another.
    fn destroy_many(&self, ns: &[u32]) -> Vec<Result<(), SlotError>> {
        ns.iter().map(|n| self.destroy(*n)).collect()
    }
    /// Every slot of this pool found by names and ownership marks.
    fn scan(&self) -> Result<Vec<Found>, SlotError>;
    /// The slot description of index `n` (for adopting a found slot).
    fn describe(&self, n: u32) -> Result<Slot, SlotError>;
    /// Takes the cross-process lease of slot `n` ([`crate::pipeline::lease`]), or
    /// `None` when another process holds it.
    fn lease(&self, n: u32) -> Result<Option<Lease>, SlotError>;
}

impl SlotNet {
    /// The registry record ([`crate::pipeline::registry`]) of a pool set up with
    /// these settings in `host`.
    pub fn registry_entry(&self, host: &HostNet, host_netns_created: bool) -> PoolEntry {
        PoolEntry {
            pool: self.pool.clone(),
            host_netns: host.netns.clone(),
            host_netns_created,
            cidr: self.cidr.to_string(),
            bridge: self.bridge.clone(),
            tap: self.tap.clone(),
            tap_ip: self.tap_ip,
            tap_prefix: self.tap_prefix,
            guest_ip: self.guest_ip,
            allow_host: self.allow_host.clone(),
            egress: self.egress,
            owner: None,
        }
    }

    /// The settings a registry record names, to attach to the pool again
    /// (the egress uplink is not needed for that); `None` when its CIDR
    /// does not parse.
    pub fn from_entry(e: &PoolEntry) -> Option<(SlotNet, HostNet)> {
        let net = SlotNet {
            pool: e.pool.clone(),
            cidr: e.cidr.parse::<Cidr>().ok()?,
            bridge: e.bridge.clone(),
            tap: e.tap.clone(),
            tap_ip: e.tap_ip,
            tap_prefix: e.tap_prefix,
            guest_ip: e.guest_ip,
            allow_host: e.allow_host.clone(),
            egress: e.egress,
        };
        let host = HostNet {
            netns: e.host_netns.clone(),
            ..HostNet::default()
        };
        Some((net, host))
    }
}

/// The pools a command run without `--pool` covers: `configured` (the
/// configuration's pool, found even when it predates the registry), then
/// every pool `reg` records, each once.
pub fn registered_pools(reg: &Registry, configured: (SlotNet, HostNet)) -> Vec<(SlotNet, HostNet)> {
    let mut out = vec![configured];
    for (net, host) in reg.list().0.iter().filter_map(SlotNet::from_entry) {
        if !out
            .iter()
            .any(|(n, h)| n.pool == net.pool && h.netns == host.netns)
        {
            out.push((net, host));
        }
    }
    out
}

/// Host-side setup: where the bridge lives, optional egress, and which
/// local uids may connect to clones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNet {
    /// `--host-netns NAME` (created if missing); `None`: the current one.
    pub netns: Option<String>,
    /// Masquerade the clone CIDR out of this uplink (in the host netns).
    /// `None` keeps a masquerade an earlier setup made (and the pool's
    /// slots then get egress too, see [`Kernel::setup`]).
    pub egress_uplink: Option<String>,
    /// Which uids of the host netns may open connections to the clone
    /// CIDR (default: root only).
    pub connect_uids: ConnectUids,
    /// The registry that set-up records the pool in
    /// ([`crate::pipeline::registry`]: the state dir's `pools/`); `None`: not
    /// recorded.
    pub registry: Option<std::path::PathBuf>,
}

/// Which local uids of the host netns may open connections to the clone
/// CIDR: an nf_tables rule on the output hook of wasp's host table,
/// `ip daddr CIDR ct state new meta skuid != { UIDS } reject`, in chain
/// `connect_<pool>`. Only connections that sockets of the host netns
/// itself open are affected: traffic forwarded from other hosts or
/// namespaces does not pass the output hook, and replies to connections a
/// clone opened (to an allowed host port) are not `new`. A refused
/// connect fails at once with ECONNREFUSED (ICMP port unreachable), it
/// does not hang.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectUids {
    /// Any uid (no rule; what wasp did before the option existed).
    Any,
    /// Root and these uids only. Always holds 0: wasp itself (root) checks
    /// readiness over TCP, and root could remove the rule anyway.
    Only(std::collections::BTreeSet<u32>),
}

/// Most uids [`ConnectUids`] takes (one set element each).
pub const MAX_CONNECT_UIDS: usize = 1024;

fn too_many_uids(n: usize) -> String {
    format!("{n} uids are more than the {MAX_CONNECT_UIDS} wasp allows; allow a service uid, not a range")
}

impl Default for ConnectUids {
    /// Root only.
    fn default() -> Self {
        ConnectUids::only([])
    }
}

impl ConnectUids {
    /// Root and `uids`.
    pub fn only(uids: impl IntoIterator<Item = u32>) -> Self {
        let mut set: std::collections::BTreeSet<u32> = uids.into_iter().collect();
        set.insert(0);
        ConnectUids::Only(set)
    }

    /// The allowed uids in ascending order (`None`: any).
    pub fn uids(&self) -> Option<Vec<u32>> {
        match self {
            ConnectUids::Any => None,
            ConnectUids::Only(s) => Some(s.iter().copied().collect()),
        }
    }
}

impl fmt::Display for ConnectUids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.uids() {
            None => f.write_str("any"),
            Some(u) => {
                let u: Vec<String> = u.iter().map(u32::to_string).collect();
                f.write_str(&u.join(","))
            }
        }
    }
}

impl FromStr for ConnectUids {
    type Err = String;
    /// `any`, or numeric uids separated by commas (root is added).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "any" {
            return Ok(ConnectUids::Any);
        }
        let mut uids = Vec::new();
        for w in s.split(',').map(str::trim) {
            match w.parse::<u32>() {
                Ok(u) if u != u32::MAX => uids.push(u),
                _ => {
                    return Err(format!(
                    "invalid uid {w:?} in {s:?}: write `any`, or numeric uids separated by commas \
                         like 0,1000 (root, uid 0, is always allowed)"
                ))
                }
            }
        }
        if uids.len() > MAX_CONNECT_UIDS {
            return Err(too_many_uids(uids.len()));
        }
        Ok(ConnectUids::only(uids))
    }
}

impl<'de> serde::Deserialize<'de> for ConnectUids {
    /// The config file's form: an array of numeric uids, or `"any"`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ConnectUids;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"an array of numeric uids like [0, 1000], or "any""#)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ConnectUids, E> {
                if s == "any" {
                    Ok(ConnectUids::Any)
                } else {
                    Err(E::custom(format!(
                        r#"{s:?} is not "any"; write "any" or an array of numeric uids like [0, 1000]"#
                    )))
                }
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ConnectUids, A::Error> {
                let mut uids = Vec::new();
                while let Some(u) = seq.next_element::<u32>()? {
                    if u == u32::MAX {
                        return Err(serde::de::Error::custom("uid 4294967295 is no uid"));
                    }
                    uids.push(u);
                    if uids.len() > MAX_CONNECT_UIDS {
                        return Err(serde::de::Error::custom(too_many_uids(uids.len())));
                    }
                }
                Ok(ConnectUids::only(uids))
            }
        }
        d.deserialize_any(V)
    }
}

/// The real kernel implementation.
pub struct Kernel {
    net: SlotNet,
    host_ns: OwnedFd,
    /// The host bridge (index 0 and no MAC when attached to a host side
    /// without one).
    bridge: Bridge,
    /// Route sockets bound in the host netns, reused across builds.
    host_socks: Mutex<Vec<Socket>>,
    /// Namespace worker threads for build and recycle.
    workers: OnceLock<Workers>,
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("net", &self.net)
            .field("bridge_index", &self.bridge.index)
            .finish_non_exhaustive()
    }
}

/// Runs `f` in the host netns (a fresh thread when it is a named one).
fn in_ns<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> T + Send) -> Result<T, SlotError> {
    netns::run_in(ns, f).map_err(io_err("enter the host netns"))
}

/// Dumps the links of the calling thread's netns.
pub fn dump_links(sock: &mut Socket) -> Result<Vec<rtnl::LinkInfo>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    rtnl::dump_links(&mut b, seq);
    let msgs = sock.dump(&b, seq)?;
    Ok(msgs
        .iter()
        .filter(|(ty, _)| *ty == rtnl::RTM_NEWLINK)
        .filter_map(|(_, p)| rtnl::parse_link(p))
        .collect())
}

/// One link of the socket's netns looked up by name (`None`: no such
/// link), without dumping every link.
pub fn get_link(sock: &mut Socket, name: &str) -> Result<Option<rtnl::LinkInfo>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    rtnl::get_link(&mut b, seq, rtnl::Link::Name(name));
    match sock.dump(&b, seq) {
        Ok(msgs) => Ok(msgs
            .iter()
            .filter(|(ty, _)| *ty == rtnl::RTM_NEWLINK)
            .find_map(|(_, p)| rtnl::parse_link(p))),
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENODEV) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// IPv4 routes of the calling thread's netns, every table.
pub fn dump_routes(sock: &mut Socket) -> Result<Vec<rtnl::RouteInfo>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    rtnl::dump_routes(&mut b, seq);
    Ok(sock
        .dump(&b, seq)?
        .into_iter()
        .filter(|(ty, _)| *ty == rtnl::RTM_NEWROUTE)
        .filter_map(|(_, p)| rtnl::parse_route(&p))
        .collect())
}

/// IPv4 addresses of the calling thread's netns: (ifindex, addr, prefix).
pub fn dump_addrs(sock: &mut Socket) -> Result<Vec<(u32, Ipv4Addr, u8)>, NetlinkError> {
    let seq = sock.next_seq(1);
    let mut b = MsgBuf::new();
    b.begin(22, netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP, seq)
        .raw(&[rtnl::AF_INET, 0, 0, 0, 0, 0, 0, 0])
        .end();
    let msgs = sock.dump(&b, seq)?;
    let mut out = Vec::new();
    for (ty, p) in msgs {
        if ty != rtnl::RTM_NEWADDR || p.len() < 8 || p[0] != rtnl::AF_INET {
            continue;
        }
        let prefix = p[1];
        let index = u32::from_ne_bytes(p[4..8].try_into().unwrap_or_default());
        for (t, v) in netlink::attrs(&p[8..]) {
            if t == rtnl::IFA_LOCAL && v.len() == 4 {
                out.push((index, Ipv4Addr::new(v[0], v[1], v[2], v[3]), prefix));
            }
        }
    }
    Ok(out)
}

fn send_acked(sock: &mut Socket, b: &MsgBuf, seqs: &[u32], what: &str) -> Result<(), SlotError> {
    let w = what.to_owned();
    sock.request_acked(b, seqs, &|seq| format!("{w} (message {seq})"))
        .map_err(nl(what))
}

impl Kernel {
    /// Prepares the host side: enters or creates the host netns, checks the
    /// CIDR against the host's addresses, creates (or adopts) the bridge
    /// with the gateway address, and optional egress masquerade. Fails with
    /// one clear error and leaves nothing half-built.
    ///
    /// Egress: with an uplink, the masquerade is made and this pool's slots
    /// forward out of the clone CIDR. Without one, a masquerade an earlier
    /// setup made for the host netns (`pool warm --egress-uplink`) is the
    /// pool's egress setting, and the slots built here get egress too, so
    /// a later `spawn` builds slots like the warmed ones.
    ///
    /// Connect uids: [`HostNet::connect_uids`] is applied to the host table
    /// each time (the rule is replaced, or removed for
    /// [`ConnectUids::Any`]).
    pub fn setup(mut net: SlotNet, host: &HostNet) -> Result<Kernel, SlotError> {
        // An egress uplink means the slots must forward to it too.
        net.egress |= host.egress_uplink.is_some();
        net.validate()?;
        // Every slot needs a tap: fail once, before building anything.
        tap::check_tun().map_err(io_err(
            "cannot open /dev/net/tun, so no slot can get its tap; load the tun module (modprobe tun) and run as root",
        ))?;
        // One process at a time makes or checks the host side.
        let _setup = crate::pipeline::lease::host_setup_lock(Path::new(LEASE_DIR))
            .map_err(io_err(format!("lock {LEASE_DIR}/host-setup.lock")))?;
        let mut created = None;
        let host_ns = match &host.netns {
            Some(name) => {
                if !netns::exists(name) {
                    match netns::create_named(name) {
                        Ok(()) => created = Some(name.clone()),
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(io_err(format!("create host netns {name}"))(e)),
                    }
                }
                netns::open_named(name).map_err(io_err(format!("open host netns {name}")))?
            }
            None => netns::open_current().map_err(io_err("open the current netns"))?,
        };
        let r = (|| {
            let bridge = in_ns(&host_ns, || ensure_bridge(&net))??;
            let rest = (|| {
                let egress = match &host.egress_uplink {
                    Some(up) => {
                        let owned = created.is_some();
                        in_ns(&host_ns, || set_egress(&net, up, owned))??;
                        true
                    }
                    None => in_ns(&host_ns, host_has_egress)??,
                };
                in_ns(&host_ns, || set_connect_uids(&net, &host.connect_uids))??;
                Ok(egress)
            })();
            match rest {
                Ok(egress) => Ok((bridge, egress)),
                Err(e) => {
                    let n = net.clone();
                    let _ = in_ns(&host_ns, move || remove_host_objects(&n));
                    Err(e)
                }
            }
        })();
        let ((bridge_index, bridge_mac), egress) = match r {
            Ok(i) => i,
            Err(e) => {
                // Nothing half-built: a host netns made just now goes too.
                if let Some(name) = created {
                    let _ = netns::delete_named(&name);
                }
                return Err(e);
            }
        };
        net.egress |= egress;
        // Found again by `pool status` and `reconcile` without --pool.
        if let Some(dir) = &host.registry {
            let entry = net.registry_entry(host, created.is_some());
            if let Err(e) = Registry::at(dir).put(entry) {
                tracing::warn!(
                    "pool {}: {}; it is found only with --pool",
                    net.pool,
                    crate::error::chain(&e)
                );
            }
        }
        let k = Kernel {
            net,
            host_ns,
            bridge: Bridge {
                index: bridge_index,
                mac: Some(bridge_mac),
            },
            host_socks: Mutex::new(Vec::new()),
            workers: OnceLock::new(),
        };
        Ok(k)
    }

    /// Attaches to an existing host side without creating anything (for
    /// status, reconcile and drain). A missing bridge is fine (index 0).
    pub fn attach(net: SlotNet, host: &HostNet) -> Result<Kernel, SlotError> {
        net.validate()?;
        let host_ns = match &host.netns {
            Some(name) => netns::open_named(name).map_err(io_err(format!(
                "open host netns {name} (does it exist? `ip netns list` shows it)"
            )))?,
            None => netns::open_current().map_err(io_err("open the current netns"))?,
        };
        let bridge = net.bridge.clone();
        let (bridge_index, bridge_mac) = in_ns(&host_ns, move || {
            let mut sock = Socket::route().map_err(nl("open a route socket"))?;
            let links = dump_links(&mut sock).map_err(nl("list host links"))?;
            Ok::<_, SlotError>(
                links
                    .iter()
                    .find(|l| l.name == bridge && l.alias.as_deref() == Some(BRIDGE_ALIAS))
                    .map(|l| (l.index, l.address))
                    .unwrap_or((0, None)),
            )
        })??;
        Ok(Kernel {
            net,
            host_ns,
            bridge: Bridge {
                index: bridge_index,
                mac: bridge_mac,
            },
            host_socks: Mutex::new(Vec::new()),
            workers: OnceLock::new(),
        })
    }

    /// The configuration.
    pub fn net(&self) -> &SlotNet {
        &self.net
    }

    fn host_sock(&self) -> Result<Socket, SlotError> {
        if let Some(s) = self.host_socks.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(s);
        }
        in_ns(&self.host_ns, Socket::route)?.map_err(nl("open a route socket in the host netns"))
    }

    fn put_host_sock(&self, s: Socket) {
        if let Ok(mut v) = self.host_socks.lock() {
            v.push(s);
        }
    }

    /// Removes the bridge (if wasp's) and wasp's host nft table. Slots are
    /// not touched (drain them first).
    pub fn remove_host(&self) -> Result<(), SlotError> {
        let net = self.net.clone();
        in_ns(&self.host_ns, move || remove_host_objects(&net))?
    }

    fn build_inner(
        &self,
        n: u32,
        host: &mut Socket,
        steps: &mut BuildSteps,
    ) -> Result<Slot, SlotError> {
        let net = &self.net;
        let slot = net.slot(n)?;
        let bridge = self.bridge;
        let t = std::time::Instant::now();
        let r = netns::create_named_with(&slot.netns, || {
            steps.netns = crate::stats::ms(t.elapsed());
            fill_slot(net, bridge, &slot, host, steps)
        });
        match r {
            Ok(()) => Ok(slot),
            Err(netns::CreateError::Inner(e)) => Err(e),
            Err(netns::CreateError::Io(e)) => Err(create_ns_err(&slot.netns, e)),
        }
    }

    /// The worker threads, started on first use.
    fn workers(&self) -> &Workers {
        self.workers.get_or_init(|| Workers::start(&self.host_ns))
    }
}

fn create_ns_err(name: &str, e: io::Error) -> SlotError {
    if e.kind() == io::ErrorKind::AlreadyExists {
        SlotError::NameTaken {
            netns: name.to_owned(),
        }
    } else {
        io_err(format!("create netns {name}"))(e)
    }
}

/// The host bridge as a slot build needs it.
#[derive(Debug, Clone, Copy)]
struct Bridge {
    index: u32,
    /// Its pinned MAC, for each slot's permanent entry for the gateway.
    mac: Option<[u8; 6]>,
}

/// Everything of slot `slot` once the calling thread is inside its fresh
/// namespace: tap, veth pair (through `host`, a route socket of the host
/// netns), marks, forwarding, links, addresses, route, neighbour entries
/// and the nft batch. `steps` gets the time of each step. On error the host
/// veth and the host's entry for the clone are removed again (the caller
/// removes the netns).
fn fill_slot(
    net: &SlotNet,
    bridge: Bridge,
    slot: &Slot,
    host: &mut Socket,
    steps: &mut BuildSteps,
) -> Result<(), SlotError> {
    let n = slot.index;
    let clone_ip = slot.clone_ip;
    let host_veth = &slot.host_veth;
    let mut laps = Laps::new(steps);
    // The slot's own route socket; index lookups go through it too.
    let mut sock = Socket::route().map_err(nl("open a route socket in the slot"))?;
    tap::create_persistent(&net.tap).map_err(io_err(format!("create tap {}", net.tap)))?;
    let tap_index =
        tap::ifindex_via(sock.as_fd(), &net.tap).map_err(io_err("look up the tap index"))?;
    laps.lap(|s| &mut s.tap);
    let me = netns::open_current().map_err(io_err("open the slot netns"))?;
    let veth0_mac = net.veth0_mac(n);
    // Host socket: the veth pair, peer created directly in here. The host
    // end stays down until the end, so the pair has no carrier while the
    // slot is configured: carrier on makes the kernel run its link watch
    // (a worker that takes the RTNL lock) at once, and every rtnetlink
    // request after it would wait for that worker.
    let seq = host.next_seq(1);
    let mut b = MsgBuf::new();
    rtnl::new_veth(
        &mut b,
        seq,
        &rtnl::VethSpec {
            name: host_veth,
            up: false,
            master: Some(bridge.index),
            peer_name: VETH0,
            peer_ns_fd: Some(me.as_raw_fd()),
            // The kernel honours a peer ifindex only when the main
            // device's is given too; we look veth0 up instead.
            peer_index: 0,
            // Bringing the peer up in the create message fails
            // with ENOTCONN when a master is set (kernel 6.18);
            // it goes up with the inner batch instead.
            peer_up: false,
            peer_mac: Some(veth0_mac),
            // One queue pair: no queue trimming (and RCU wait) after
            // registration, fewer queue objects.
            queues: Some(1),
        },
    );
    match host.request_acked(&b, &[seq], &|_| format!("create veth {host_veth}")) {
        Ok(()) => {}
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
            return Err(SlotError::Foreign {
                what: format!("host link {host_veth}"),
            })
        }
        Err(e) => return Err(nl(format!("create veth {host_veth}"))(e)),
    }
    laps.lap(|s| &mut s.veth);
    // Only once the link is ours, and at once (the kernel ignores
    // IFLA_IFALIAS in a create request): the ownership mark and port
    // isolation. A crash after this point leaves a pair reconcile finds by
    // its mark and deletes synchronously; an unmarked one would only go
    // when the kernel frees the slot namespace, some time after its name
    // is removed.
    b.clear();
    let seq = host.next_seq(2);
    let link = rtnl::Link::Name(host_veth);
    rtnl::set_alias(&mut b, seq, link, &net.alias(n));
    rtnl::set_isolated(&mut b, seq + 1, link, true);
    if let Err(e) = send_acked(host, &b, &[seq, seq + 1], "mark and isolate the host veth") {
        let _ = del_host_link(host, host_veth);
        return Err(e);
    }
    laps.lap(|s| &mut s.mark);
    let rest = (|| {
        // Inside: links up, addresses, route, in one datagram; then
        // forwarding for the whole namespace.
        b.clear();
        let seq = sock.next_seq(SlotNet::INNER_MSGS + 1);
        let veth0 = tap::ifindex_via(sock.as_fd(), VETH0).map_err(io_err("look up veth0"))?;
        let mut seqs = net.inner_links(&mut b, seq, tap_index, veth0, clone_ip);
        // The gateway's address is known and fixed (the bridge's is
        // pinned): a permanent entry, so the slot never ARPs for it and the
        // entry does not count against the host-wide neighbour table limit.
        if let Some(mac) = bridge.mac {
            let s = seq + SlotNet::INNER_MSGS;
            rtnl::set_neigh_permanent(&mut b, s, veth0, net.cidr.gateway(), mac);
            seqs.push(s);
        }
        send_acked(&mut sock, &b, &seqs, "configure links in the slot")?;
        laps.lap(|s| &mut s.links);
        std::fs::write("/proc/sys/net/ipv4/ip_forward", b"1")
            .map_err(io_err("set net.ipv4.ip_forward=1 in the slot"))?;
        laps.lap(|s| &mut s.forwarding);
        let mut nfs = Socket::netfilter().map_err(nl("open a netfilter socket"))?;
        let seq = nfs.next_seq(64);
        net.ruleset(seq, clone_ip)
            .commit(&mut nfs)
            .map_err(nl("program the slot's nf_tables batch"))?;
        laps.lap(|s| &mut s.nft);
        // Last, the host end up: carrier on for both ends. The kernel
        // applies a carrier change (operstate, the device's queue, the
        // bridge port's forwarding state) in its link-watch worker, later
        // and under the RTNL lock; a link request for the device runs that
        // work at once (rtnl_getlink syncs it). So each end is asked for
        // right after: when build returns, the bridge port forwards and
        // both ends transmit. Left to the worker, a slot handed out under
        // load could still drop the first ARP at its bridge port, and the
        // clone answered a second late (the ARP retry).
        // With them, the host's permanent entry for the clone IP (veth0's
        // MAC is fixed per slot): the host never ARPs for a clone, and a
        // thousand clones do not overflow the host-wide neighbour table
        // (gc_thresh3, 1 024 by default), which dropped packets to clones
        // past it.
        b.clear();
        let seq = host.next_seq(3);
        rtnl::set_up(&mut b, seq, link);
        rtnl::get_link(&mut b, seq + 1, link);
        rtnl::set_neigh_permanent(&mut b, seq + 2, bridge.index, clone_ip, veth0_mac);
        send_acked(host, &b, &[seq, seq + 1, seq + 2], "bring up the host veth")?;
        b.clear();
        let seq = sock.next_seq(1);
        rtnl::get_link(&mut b, seq, rtnl::Link::Index(veth0));
        send_acked(&mut sock, &b, &[seq], "sync veth0's link state")?;
        laps.lap(|s| &mut s.up);
        Ok(())
    })();
    if let Err(e) = rest {
        let _ = del_host_link(host, host_veth);
        let _ = del_host_neigh(host, bridge.index, clone_ip);
        return Err(e);
    }
    Ok(())
}

/// A job for a namespace worker thread: it may move the thread anywhere,
/// the worker moves it home (the host netns) afterwards.
type Job = Box<dyn FnOnce(&mut WorkerCtx) + Send>;

/// What a namespace worker thread owns.
struct WorkerCtx {
    /// The host netns, where the thread lives between jobs.
    home: OwnedFd,
    /// A route socket bound in the host netns (opened on first use).
    host: Option<Socket>,
}

impl WorkerCtx {
    fn host(&mut self) -> Result<&mut Socket, SlotError> {
        if self.host.is_none() {
            self.host = Some(Socket::route().map_err(nl("open a route socket in the host netns"))?);
        }
        Ok(self.host.as_mut().expect("just set"))
    }
}

/// Long-lived threads that build and recycle slots, so no thread is
/// spawned per slot: each creates a namespace with `unshare` on itself and
/// returns to the host netns with `setns` afterwards. They are Kernel's
/// own threads; no caller's thread ever changes namespace.
struct Workers {
    tx: Option<Sender<Job>>,
    handles: Vec<std::thread::JoinHandle<()>>,
}

/// Why a job did not run on a worker.
enum Dispatch {
    /// No worker is left: run the job another way.
    NoWorker,
    /// The worker died (panicked) while running it.
    Died,
}

impl Workers {
    fn start(host_ns: &OwnedFd) -> Workers {
        let (tx, rx) = unbounded::<Job>();
        let count = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut handles = Vec::new();
        for i in 0..count {
            let Ok(home) = host_ns.try_clone() else {
                continue;
            };
            let rx = rx.clone();
            let h = std::thread::Builder::new()
                .name(format!("wasp-slot-{i}"))
                .spawn(move || Self::run(home, rx));
            if let Ok(h) = h {
                handles.push(h);
            }
        }
        Workers {
            tx: Some(tx),
            handles,
        }
    }

    fn run(home: OwnedFd, rx: Receiver<Job>) {
        if netns::enter(&home).is_err() {
            return;
        }
        let mut cx = WorkerCtx { home, host: None };
        while let Ok(job) = rx.recv() {
            let panicked =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut cx))).is_err();
            // Home again; a thread that cannot get home stops working.
            if netns::enter(&cx.home).is_err() {
                return;
            }
            if panicked {
                // The socket may be mid-request: start afresh.
                cx.host = None;
            }
        }
    }

    /// Runs `f` on a worker and waits for its result.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut WorkerCtx) -> T + Send + 'static,
    ) -> Result<T, Dispatch> {
        let Some(tx) = &self.tx else {
            return Err(Dispatch::NoWorker);
        };
        let (rtx, rrx) = bounded(1);
        let job: Job = Box::new(move |cx| {
            let _ = rtx.send(f(cx));
        });
        tx.send(job).map_err(|_| Dispatch::NoWorker)?;
        rrx.recv().map_err(|_| Dispatch::Died)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.tx = None;
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Recycle checks on the calling thread, which is inside the slot netns:
/// the tap must be free, then conntrack is flushed.
fn recycle_here(tap_name: &str, netns_name: &str) -> Result<(), SlotError> {
    if !tap::is_free(tap_name).map_err(io_err("check the tap"))? {
        return Err(SlotError::TapBusy {
            tap: tap_name.to_owned(),
            netns: netns_name.to_owned(),
        });
    }
    let mut s = Socket::netfilter().map_err(nl("open a ctnetlink socket"))?;
    let mut b = MsgBuf::new();
    let seq = s.next_seq(1);
    conntrack_flush_msg(&mut b, seq);
    match s.request_acked(&b, &[seq], &|_| "flush conntrack".into()) {
        Ok(()) => Ok(()),
        // Nothing tracked yet.
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(e) => Err(nl(format!("flush conntrack in {}", netns_name))(e)),
    }
}

/// Removes the host's permanent entry for a clone IP; none is fine (a
/// slot that crashed before it was made, or made by an older wasp).
fn del_host_neigh(sock: &mut Socket, bridge: u32, clone_ip: Ipv4Addr) -> Result<(), SlotError> {
    let mut b = MsgBuf::new();
    let seq = sock.next_seq(1);
    rtnl::del_neigh(&mut b, seq, bridge, clone_ip);
    match sock.request_acked(&b, &[seq], &|_| {
        format!("delete the neighbour entry for {clone_ip}")
    }) {
        Ok(()) => Ok(()),
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(())
        }
        Err(e) => Err(nl(format!(
            "delete the host's neighbour entry for {clone_ip}"
        ))(e)),
    }
}

fn del_host_link(sock: &mut Socket, name: &str) -> Result<(), SlotError> {
    let mut b = MsgBuf::new();
    let seq = sock.next_seq(1);
    rtnl::del_link(&mut b, seq, rtnl::Link::Name(name));
    send_acked(sock, &b, &[seq], &format!("delete host link {name}"))
}

/// Creates the bridge with the gateway address, or adopts wasp's. Runs in
/// the host netns.
/// Creates (or adopts) the bridge; returns its index and its MAC, pinned
/// (see [`rtnl::set_address`]): slots hold permanent neighbour entries for
/// it. A bridge wasp creates gets [`SlotNet::bridge_mac`]; an adopted one
/// keeps its current address, so live clones' caches stay right.
fn ensure_bridge(net: &SlotNet) -> Result<(u32, [u8; 6]), SlotError> {
    let mut sock = Socket::route().map_err(nl("open a route socket in the host netns"))?;
    let links = dump_links(&mut sock).map_err(nl("list host links"))?;
    let gw = net.cidr.gateway();
    let existing = links.iter().find(|l| l.name == net.bridge);
    if let Some(l) = existing {
        if l.alias.as_deref() != Some(BRIDGE_ALIAS) || l.kind.as_deref() != Some("bridge") {
            return Err(SlotError::Foreign {
                what: format!("link {}", net.bridge),
            });
        }
    }
    // The clone CIDR must not overlap any other address of the host.
    let addrs = dump_addrs(&mut sock).map_err(nl("list host addresses"))?;
    for (idx, a, p) in &addrs {
        let on_bridge = existing.map(|l| l.index) == Some(*idx);
        if on_bridge && *a == gw && *p == net.cidr.prefix {
            continue;
        }
        let theirs = Cidr::new(*a, *p)?;
        if theirs.overlaps(&net.cidr) {
            let dev = links
                .iter()
                .find(|l| l.index == *idx)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("ifindex {idx}"));
            return Err(SlotError::BadConfig(format!(
                "clone CIDR {} overlaps the host address {a}/{p} on {dev}; choose another --cidr",
                net.cidr
            )));
        }
    }
    // Nor any route (a VPN, a container network, a static route): clone
    // traffic would be routed two ways. The default route, the kernel's
    // local table and routes on wasp's own bridge do not count.
    let routes = dump_routes(&mut sock).map_err(nl("list host routes"))?;
    for r in &routes {
        if r.prefix == 0
            || r.table == rtnl::RT_TABLE_LOCAL
            || (existing.is_some() && r.oif == existing.map(|l| l.index))
        {
            continue;
        }
        if Cidr::new(r.dst, r.prefix)?.overlaps(&net.cidr) {
            let dev = r
                .oif
                .and_then(|i| links.iter().find(|l| l.index == i))
                .map(|l| format!(" dev {}", l.name))
                .unwrap_or_default();
            return Err(SlotError::BadConfig(format!(
                "clone CIDR {} overlaps the host route {}/{}{dev}; choose another --cidr",
                net.cidr, r.dst, r.prefix
            )));
        }
    }
    let mut b = MsgBuf::new();
    if let Some(l) = existing {
        let mac = l.address.ok_or_else(|| {
            SlotError::BadConfig(format!("bridge {} has no Ethernet address", net.bridge))
        })?;
        let seq = sock.next_seq(1);
        rtnl::set_address(&mut b, seq, rtnl::Link::Index(l.index), mac);
        send_acked(&mut sock, &b, &[seq], "pin the bridge's address")?;
        return Ok((l.index, mac));
    }
    let seq = sock.next_seq(2);
    // No multicast snooping: every port would get its own querier timers
    // and group state, and slot ports are isolated from each other anyway
    // (multicast from a clone reaches only the host).
    rtnl::new_bridge(&mut b, seq, &net.bridge, false);
    rtnl::set_alias(&mut b, seq + 1, rtnl::Link::Name(&net.bridge), BRIDGE_ALIAS);
    match sock.request_acked(&b, &[seq, seq + 1], &|_| {
        format!("create bridge {}", net.bridge)
    }) {
        Ok(()) => {}
        Err(NetlinkError::Kernel { seq: s, source, .. })
            if s == seq && source.raw_os_error() == Some(libc::EEXIST) =>
        {
            return Err(SlotError::Foreign {
                what: format!("link {}", net.bridge),
            })
        }
        Err(e) => {
            let _ = del_host_link(&mut sock, &net.bridge);
            return Err(nl(format!("create bridge {}", net.bridge))(e));
        }
    }
    let index = match tap::ifindex(&net.bridge) {
        Ok(i) => i,
        Err(e) => {
            let _ = del_host_link(&mut sock, &net.bridge);
            return Err(io_err("look up the bridge index")(e));
        }
    };
    b.clear();
    let seq = sock.next_seq(3);
    let mac = net.bridge_mac();
    rtnl::set_address(&mut b, seq, rtnl::Link::Index(index), mac);
    rtnl::new_addr(&mut b, seq + 1, index, gw, net.cidr.prefix);
    rtnl::set_up(&mut b, seq + 2, rtnl::Link::Index(index));
    if let Err(e) = send_acked(
        &mut sock,
        &b,
        &[seq, seq + 1, seq + 2],
        "address the bridge",
    ) {
        let _ = del_host_link(&mut sock, &net.bridge);
        return Err(e);
    }
    Ok((index, mac))
}

/// Masquerade of the clone CIDR out of `uplink`, in table `ip wasp` of the
/// host netns. Runs in the host netns. Routing clones out of the uplink
/// needs `net.ipv4.ip_forward=1` there: wasp sets it only in a host netns
/// it has just created (`owned`), and otherwise refuses with what to do,
/// since forwarding is host-wide policy that outlives wasp's objects.
fn set_egress(net: &SlotNet, uplink: &str, owned: bool) -> Result<(), SlotError> {
    tap::check_ifname(uplink).map_err(|e| SlotError::BadConfig(format!("egress uplink: {e}")))?;
    let mut sock = Socket::route().map_err(nl("open a route socket"))?;
    if get_link(&mut sock, uplink)
        .map_err(nl("look up the egress uplink"))?
        .is_none()
    {
        return Err(SlotError::BadConfig(format!(
            "egress uplink {uplink}: no such link in the host netns; name an existing uplink (`ip link` lists them)"
        )));
    }
    const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
    let fwd = std::fs::read_to_string(IP_FORWARD).map_err(io_err("read net.ipv4.ip_forward"))?;
    if fwd.trim() != "1" {
        if !owned {
            return Err(SlotError::BadConfig(format!(
                "egress out of {uplink} needs net.ipv4.ip_forward=1 in the host netns, and it is 0; \
                 wasp does not change host-wide forwarding: run `sysctl -w net.ipv4.ip_forward=1` there"
            )));
        }
        std::fs::write(IP_FORWARD, b"1")
            .map_err(io_err("set net.ipv4.ip_forward=1 in the host netns"))?;
    }
    let mut s = Socket::netfilter().map_err(nl("open a netfilter socket"))?;
    let f = nft::NFPROTO_IPV4;
    let mut b = Batch::new(s.next_seq(8));
    b.new_table(f, NFT_TABLE);
    b.new_chain(
        f,
        NFT_TABLE,
        EGRESS_CHAIN,
        Some(BaseChain {
            ty: ChainType::Nat,
            hook: Hook::Postrouting,
            priority: 100,
            policy: nft::NF_ACCEPT,
        }),
    );
    let mut r: Vec<Expr> = nft::oifname(uplink).into();
    r.extend(nft::ip_addr_match(
        nft::IP_SADDR,
        CmpOp::Eq,
        net.cidr.net,
        net.cidr.prefix,
    ));
    r.push(Expr::Masquerade);
    b.new_rule(f, NFT_TABLE, EGRESS_CHAIN, &r);
    b.commit(&mut s)
        .map_err(nl("program host egress masquerade"))
}

/// The host table's chain that masquerades clone traffic ([`set_egress`]).
const EGRESS_CHAIN: &str = "postrouting";

/// True when wasp's host table holds its egress masquerade chain (made by
/// [`set_egress`] for an earlier `--egress-uplink`). Runs in the host
/// netns.
fn host_has_egress() -> Result<bool, SlotError> {
    let mut s = Socket::netfilter().map_err(nl("open a netfilter socket"))?;
    let seq = s.next_seq(1);
    let mut b = MsgBuf::new();
    nft::get_chain(&mut b, seq, nft::NFPROTO_IPV4, NFT_TABLE, EGRESS_CHAIN);
    match s.dump(&b, seq) {
        Ok(msgs) => Ok(msgs
            .iter()
            .any(|(ty, _)| *ty == nft::msg_type(nft::NFT_MSG_NEWCHAIN))),
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            Ok(false)
        }
        Err(e) => Err(nl("look for wasp's egress masquerade in the host netns")(e)),
    }
}

impl SlotNet {
    /// The host table's chain that holds this pool's connect-uid rule.
    pub fn connect_chain(&self) -> String {
        format!("connect_{}", self.pool)
    }

    /// The host netns batch that allows only `uids` to open connections to
    /// the clone CIDR: table `ip wasp`, base chain
    /// [`SlotNet::connect_chain`] on the output hook (filter, priority 0,
    /// policy accept), flushed, then `ip daddr CIDR ct state new meta
    /// skuid != { UIDS } reject`. `uids` must not be empty.
    pub fn connect_ruleset(&self, seq: u32, uids: &[u32]) -> Batch {
        let f = nft::NFPROTO_IPV4;
        let t = NFT_TABLE;
        let chain = self.connect_chain();
        let mut b = Batch::new(seq);
        b.new_table(f, t);
        b.new_chain(
            f,
            t,
            &chain,
            Some(BaseChain {
                ty: ChainType::Filter,
                hook: Hook::Output,
                priority: 0,
                policy: nft::NF_ACCEPT,
            }),
        );
        b.flush_chain(f, t, &chain);
        const SET_ID: u32 = 1;
        if uids.len() > 1 {
            b.new_uid_set(f, t, SET_ID, uids);
        }
        let mut r = nft::ip_addr_match(nft::IP_DADDR, CmpOp::Eq, self.cidr.net, self.cidr.prefix);
        r.extend(nft::ct_state_new());
        r.extend(nft::skuid_not_in(uids, SET_ID));
        r.push(Expr::Reject {
            icmp_code: nft::ICMP_PORT_UNREACH,
        });
        b.new_rule(f, t, &chain, &r);
        b
    }
}

/// Applies `uids` to the host netns (runs there): the connect rule
/// ([`SlotNet::connect_ruleset`]) replaces any earlier one of this pool in
/// one atomic batch; [`ConnectUids::Any`] deletes the pool's chain if it
/// exists.
fn set_connect_uids(net: &SlotNet, uids: &ConnectUids) -> Result<(), SlotError> {
    let mut s = Socket::netfilter().map_err(nl("open a netfilter socket"))?;
    match uids.uids() {
        Some(list) => net
            .connect_ruleset(s.next_seq(8), &list)
            .commit(&mut s)
            .map_err(nl(format!(
                "program the host rule that lets only uids {uids} connect to {}",
                net.cidr
            ))),
        None => {
            let mut b = Batch::new(s.next_seq(4));
            b.del_chain(nft::NFPROTO_IPV4, NFT_TABLE, &net.connect_chain());
            match b.commit(&mut s) {
                Ok(()) => Ok(()),
                Err(NetlinkError::Kernel { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) =>
                {
                    Ok(())
                }
                Err(e) => Err(nl("remove the host rule on connecting uids")(e)),
            }
        }
    }
}

/// Deletes wasp's bridge (only if marked) and host table. Runs in the host
/// netns; best effort, every error reported.
fn remove_host_objects(net: &SlotNet) -> Result<(), SlotError> {
    let mut errs = Vec::new();
    match Socket::route() {
        Ok(mut sock) => match dump_links(&mut sock) {
            Ok(links) => {
                if let Some(l) = links.iter().find(|l| l.name == net.bridge) {
                    let ports = links.iter().filter(|p| p.master == Some(l.index)).count();
                    if ports > 0 && l.alias.as_deref() == Some(BRIDGE_ALIAS) {
                        errs.push(SlotError::BadConfig(format!(
                            "bridge {} still has {ports} port(s) (slots of other pools?); drain them first",
                            net.bridge
                        )));
                    } else if l.alias.as_deref() == Some(BRIDGE_ALIAS) {
                        if let Err(e) = del_host_link(&mut sock, &net.bridge) {
                            errs.push(e);
                        }
                    }
                }
            }
            Err(e) => errs.push(nl("list host links")(e)),
        },
        Err(e) => errs.push(nl("open a route socket")(e)),
    }
    match Socket::netfilter() {
        Ok(mut s) => {
            let mut b = Batch::new(s.next_seq(4));
            b.del_table(nft::NFPROTO_IPV4, NFT_TABLE);
            match b.commit(&mut s) {
                Ok(()) => {}
                Err(NetlinkError::Kernel { source, .. })
                    if source.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => errs.push(nl("delete host nft table wasp")(e)),
            }
        }
        Err(e) => errs.push(nl("open a netfilter socket")(e)),
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(SlotError::Teardown(errs))
    }
}

/// Deletes `veth0` (and so its peer) inside slot netns `name`, if there.
fn delete_veth0_in(name: &str) -> Result<(), SlotError> {
    let ns = netns::open_named(name).map_err(io_err(format!("open netns {name}")))?;
    let r = netns::run_in(&ns, || -> Result<(), SlotError> {
        let mut s = Socket::route().map_err(nl("open a route socket in the slot"))?;
        let Some(l) = get_link(&mut s, VETH0).map_err(nl("look up veth0"))? else {
            return Ok(());
        };
        let mut b = MsgBuf::new();
        let seq = s.next_seq(1);
        rtnl::del_link(&mut b, seq, rtnl::Link::Index(l.index));
        send_acked(&mut s, &b, &[seq], &format!("delete veth0 in {name}"))
    });
    match r {
        Ok(r) => r,
        // Killed between making the name and mounting the namespace on
        // it: an empty file, no namespace, nothing inside to delete.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) => Err(io_err(format!("enter netns {name}"))(e)),
    }
}

/// `IPCTNL_MSG_CT_DELETE` without attributes: flush the conntrack table
/// (built with netlink-packet-netfilter).
pub fn conntrack_flush_msg(b: &mut MsgBuf, seq: u32) {
    use netlink_packet_netfilter::conntrack::ConntrackMessage;
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
    let m = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
        ConntrackMessage::Delete(Vec::new()),
    );
    b.push(netlink::NLM_F_REQUEST | netlink::NLM_F_ACK, seq, m);
}

impl Kernel {
    /// Builds slot `n` like [`SlotOps::build`] and says where the time
    /// went.
    pub fn build_timed(&self, n: u32) -> Result<(Slot, BuildSteps), SlotError> {
        let slot = self.net.slot(n)?;
        let net = self.net.clone();
        let bridge = self.bridge;
        let r = self.workers().call(move |cx| {
            let mut steps = BuildSteps::default();
            let r = (|| {
                // Opened (once) while the thread is still in the host netns.
                cx.host()?;
                let t = std::time::Instant::now();
                netns::create_named_here(&slot.netns, &cx.home)
                    .map_err(|e| create_ns_err(&slot.netns, e))?;
                steps.netns = crate::stats::ms(t.elapsed());
                let r = fill_slot(&net, bridge, &slot, cx.host()?, &mut steps);
                if r.is_err() {
                    // Leave the namespace before removing it.
                    let _ = netns::enter(&cx.home);
                    let _ = netns::delete_named(&slot.netns);
                }
                r
            })();
            r.map(|()| (slot, steps))
        });
        match r {
            Ok(r) => r,
            Err(Dispatch::Died) => Err(SlotError::Io {
                what: format!("build slot {n}"),
                source: io::Error::other("the slot worker thread panicked"),
            }),
            Err(Dispatch::NoWorker) => {
                let mut host = self.host_sock()?;
                let mut steps = BuildSteps::default();
                let r = self.build_inner(n, &mut host, &mut steps);
                self.put_host_sock(host);
                r.map(|s| (s, steps))
            }
        }
    }
}

impl SlotOps for Kernel {
    fn build(&self, n: u32) -> Result<Slot, SlotError> {
        self.build_timed(n).map(|(s, _)| s)
    }

    fn recycle(&self, slot: &Slot) -> Result<(), SlotError> {
        let open = || {
            netns::open_named(&slot.netns)
                .map_err(io_err(format!("open slot netns {}", slot.netns)))
        };
        let ns = open()?;
        let tap_name = self.net.tap.clone();
        let name = slot.netns.clone();
        // On a worker thread (it goes home afterwards), else a fresh one.
        let r = self.workers().call(move |_cx| {
            netns::enter(&ns)?;
            Ok(recycle_here(&tap_name, &name))
        });
        let r = match r {
            Ok(r) => r,
            Err(Dispatch::Died) => {
                return Err(SlotError::Io {
                    what: format!("recycle slot {}", slot.index),
                    source: io::Error::other("the slot worker thread panicked"),
                })
            }
            Err(Dispatch::NoWorker) => {
                netns::run_in(open()?, || recycle_here(&self.net.tap, &slot.netns))
            }
        };
        r.map_err(io_err("enter the slot netns"))?
    }

    fn destroy(&self, n: u32) -> Result<(), SlotError> {
        let mut errs = Vec::new();
        let name = self.net.netns_name(n);
        let veth = self.net.host_veth(n);
        let alias = self.net.alias(n);
        // The host end, only if it carries our mark.
        let mut host_end_deleted = false;
        match self.host_sock() {
            Ok(mut s) => {
                // One lookup by name, not a dump of every host link.
                match get_link(&mut s, &veth) {
                    Ok(Some(l)) if l.alias.as_deref() == Some(alias.as_str()) => {
                        // By the index just checked; deleting the host end
                        // also removes veth0 inside.
                        let mut b = MsgBuf::new();
                        let seq = s.next_seq(1);
                        rtnl::del_link(&mut b, seq, rtnl::Link::Index(l.index));
                        match send_acked(&mut s, &b, &[seq], &format!("delete host link {veth}")) {
                            Ok(()) => host_end_deleted = true,
                            Err(e) => errs.push(e),
                        }
                    }
                    Ok(_) => {}
                    Err(e) => errs.push(nl(format!("look up host link {veth}"))(e)),
                }
                if let (Ok(ip), true) = (self.net.clone_ip(n), self.bridge.index != 0) {
                    if let Err(e) = del_host_neigh(&mut s, self.bridge.index, ip) {
                        errs.push(e);
                    }
                }
                self.put_host_sock(s);
            }
            Err(e) => errs.push(e),
        }
        if !host_end_deleted && netns::exists(&name) {
            // A slot killed before its host end was marked: the pair is
            // removed from inside the namespace (ours by its name), now,
            // rather than by the kernel's asynchronous namespace cleanup,
            // which would leave the host end on the bridge for a while.
            if let Err(e) = delete_veth0_in(&name) {
                errs.push(e);
            }
        }
        if netns::exists(&name) {
            if let Err(e) = netns::delete_named(&name) {
                errs.push(io_err(format!("delete netns {name}"))(e));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(SlotError::Teardown(errs))
        }
    }

    /// Deleting a link waits for RCU grace periods in the kernel, not for
    /// the CPU: several threads overlap those waits.
    fn destroy_many(&self, ns: &[u32]) -> Vec<Result<(), SlotError>> {
        const THREADS: usize = 8;
        if ns.len() < 2 {
            return ns.iter().map(|n| self.destroy(*n)).collect();
        }
        let per = ns.len().div_ceil(THREADS);
        std::thread::scope(|s| {
            let hs: Vec<_> = ns
                .chunks(per)
                .map(|c| s.spawn(move || c.iter().map(|n| self.destroy(*n)).collect::<Vec<_>>()))
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    fn scan(&self) -> Result<Vec<Found>, SlotError> {
        let mut found: std::collections::BTreeMap<u32, Found> = Default::default();
        let blank = |index| Found {
            index,
            has_netns: false,
            host_veth: None,
            on_bridge: false,
        };
        for name in netns::list_named().map_err(io_err("list /run/netns"))? {
            if let Some(i) = self.net.index_of_netns(&name) {
                found.entry(i).or_insert_with(|| blank(i)).has_netns = true;
            }
        }
        let mut s = self.host_sock()?;
        let links = dump_links(&mut s).map_err(nl("list host links"));
        self.put_host_sock(s);
        for l in links? {
            let Some(i) = l.alias.as_deref().and_then(|a| self.net.index_of_alias(a)) else {
                continue;
            };
            let f = found.entry(i).or_insert_with(|| blank(i));
            f.on_bridge = l.master == Some(self.bridge.index);
            f.host_veth = Some(l.name);
        }
        Ok(found.into_values().collect())
    }

    fn describe(&self, n: u32) -> Result<Slot, SlotError> {
        Ok(Slot {
            index: n,
            netns: self.net.netns_name(n),
            clone_ip: self.net.clone_ip(n)?,
            host_veth: self.net.host_veth(n),
        })
    }

    fn lease(&self, n: u32) -> Result<Option<Lease>, SlotError> {
        // An index past the CIDR ends the search for a free one.
        self.net.clone_ip(n)?;
        let netns = self.net.netns_name(n);
        Lease::try_take(Path::new(LEASE_DIR), &netns)
            .map_err(io_err(format!("take the lease of slot {netns}")))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_conntrack_flush_is_the_bare_ctnetlink_delete() {
        let mut b = MsgBuf::new();
        conntrack_flush_msg(&mut b, 7);
        // nlmsghdr: length 20, type CTNETLINK << 8 | CT_DELETE, flags
        // REQUEST | ACK, seq 7, pid 0; nfgenmsg: AF_INET, version 0, res 0.
        let want: [u8; 20] = [
            20, 0, 0, 0, 0x02, 0x01, 0x05, 0x00, 7, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0,
        ];
        assert_eq!(b.as_bytes(), &want);
    }

    use super::*;

    #[test]
    fn connect_uids_parse_with_root_always_in() {
        let p = |s: &str| s.parse::<ConnectUids>();
        assert_eq!(p("any").unwrap(), ConnectUids::Any);
        assert_eq!(p("any").unwrap().uids(), None);
        assert_eq!(p("1000, 990").unwrap().uids(), Some(vec![0, 990, 1000]));
        assert_eq!(p("0").unwrap(), ConnectUids::default());
        assert_eq!(p("1000,0").unwrap().to_string(), "0,1000");
        for bad in ["", "root", "1,,2", "-1", "4294967295", "any,1"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("write `any`"), "{bad}: {e}");
        }
        let many: Vec<String> = (1..=MAX_CONNECT_UIDS as u32 + 1)
            .map(|u| u.to_string())
            .collect();
        assert!(p(&many.join(",")).unwrap_err().contains("more than"));
    }

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

    #[test]
    fn non_byte_aligned_prefix_uses_bitwise() {
        let e = nft::ip_addr_match(nft::IP_DADDR, CmpOp::Neq, Ipv4Addr::new(10, 0, 0, 0), 12);
        assert_eq!(e.len(), 3);
        assert!(matches!(&e[1], Expr::Bitwise { mask, .. } if mask == &[255, 240, 0, 0]));
    }
}
