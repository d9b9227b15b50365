//! Network slots: one named netns per clone with a veth to the host bridge,
//! the snapshot's tap, and SNAT/DNAT in nf_tables, all over raw netlink.
//!
//! A slot `n` of pool `p` is:
//! - the named netns `wasp-<p>-<n>` (visible to `ip netns`);
//! - a veth pair: host end [`SlotNet::host_veth`] (`wasp` + 11 hex digits)
//!   enslaved to the bridge, isolated as a bridge port, with the ownership
//!   mark IFLA_IFALIAS `wasp:<p>:<n>`; the end inside is `veth0` with the
//!   clone IP and the CIDR's prefix, default route via the bridge address;
//! - the tap (default `tap0`, 192.168.241.1/29), `lo` up; `tap0` and
//!   `veth0` forward IPv4 and ignore ICMP redirects (what
//!   `net.ipv4.ip_forward=1` makes of them, set per link over rtnetlink: the
//!   /proc/sys write's path lookup costs O(live namespaces)), and neither
//!   they nor the host end get an IPv6 link-local address (each would add
//!   a route to the host's IPv6 table, which the kernel walks on every link
//!   change: O(slots) per slot);
//! - one nf_tables batch: table `ip wasp` with DNAT clone->guest on input
//!   from veth0, SNAT guest->clone on output to veth0, and a forward chain
//!   (policy drop) that lets the host reach the guest and the guest reach
//!   only the allowed host ports (plus, with egress, anything outside the
//!   clone CIDR).
//!
//! Everything for one slot runs on the one thread that unshares into the
//! new namespace: netlink messages are batched per socket. Kernel work sits
//! behind [`SlotOps`] so the pool can be tested with a recording fake.
//!
//! The parts (private files, their public items re-exported here):
//! - `addr`: [`Cidr`], clone IPs, names, MACs, index parsing, validation;
//! - `build`: one slot's build inside its namespace, its netlink messages
//!   and nf_tables ruleset, [`BuildSteps`];
//! - `workers`: the namespace worker threads builds and recycles run on;
//! - `host`: the host side (bridge, egress, connect-uid chain, removal)
//!   and registry records;
//! - `links`: the netlink dumps and deletes the others share;
//! - `kernel`: [`Kernel`], the real [`SlotOps`].

mod addr;
mod build;
mod host;
mod kernel;
mod links;
mod workers;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use thiserror::Error;

use crate::netlink::NetlinkError;
use crate::paths;
use crate::pipeline::lease::Lease;

pub use addr::{Cidr, MAX_INDEX};
pub use build::BuildSteps;
pub use host::registered_pools;
pub use kernel::{conntrack_flush_msg, Kernel};
pub use links::{dump_addrs, dump_links, dump_routes, get_link};

/// Prefix of every slot namespace, host veth and nft table wasp makes.
pub use crate::paths::PREFIX;
/// Name of the veth end inside the slot.
pub const VETH0: &str = "veth0";
/// Name of wasp's nf_tables table (in slots and in the host netns).
pub const NFT_TABLE: &str = "wasp";
/// IFLA_IFALIAS of a bridge wasp created.
pub const BRIDGE_ALIAS: &str = "wasp:bridge";

/// How a pool's slots reach the host netns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Every host veth is a port of one Linux bridge that holds the
    /// gateway address; ports are isolated from each other. A bridge takes
    /// at most [`BRIDGE_MAX_SLOTS`] ports.
    Bridge,
    /// No bridge: each host veth carries the `/32` route to its clone IP
    /// (and a permanent neighbour entry); the gateway address sits on a
    /// dummy link named like the bridge. No L2 domain is shared between
    /// clones; no port limit. The default: it builds faster and costs
    /// less kernel memory per slot (docs/benchmarks.md, "Density").
    #[default]
    Routed,
}

/// Most slots one Linux bridge takes: `BR_MAX_PORTS` is 1 024 port
/// numbers, and number 0 is never used.
pub const BRIDGE_MAX_SLOTS: u64 = 1023;

impl Layout {
    /// Most slots one pool of this layout holds (`None`: only the CIDR
    /// limits it).
    pub fn max_slots(&self) -> Option<u64> {
        match self {
            Layout::Bridge => Some(BRIDGE_MAX_SLOTS),
            Layout::Routed => None,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Bridge => "bridge",
            Layout::Routed => "routed",
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" => Ok(Layout::Bridge),
            "routed" => Ok(Layout::Routed),
            _ => Err(format!(
                "unknown layout {s:?}: write `routed` (no bridge, no port limit) or `bridge` (at most 1023 slots)"
            )),
        }
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
    /// How the slots reach the host netns.
    pub layout: Layout,
}

impl Default for SlotNet {
    /// The built-in defaults ([`crate::paths`]' guest network).
    fn default() -> Self {
        let cidr = Cidr {
            net: paths::DEFAULT_CIDR_NET,
            prefix: paths::DEFAULT_CIDR_PREFIX,
        };
        SlotNet {
            pool: "default".into(),
            cidr,
            bridge: paths::DEFAULT_BRIDGE.into(),
            tap: paths::DEFAULT_TAP.into(),
            tap_ip: paths::DEFAULT_TAP_IP,
            tap_prefix: paths::DEFAULT_TAP_PREFIX,
            guest_ip: paths::DEFAULT_GUEST_IP,
            allow_host: vec![SocketAddrV4::new(cidr.gateway(), 8080)],
            egress: false,
            layout: Layout::default(),
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
    /// The pool's registry record could not be written.
    #[error("cannot record pool {pool} in the pool registry")]
    Registry {
        /// The pool.
        pool: String,
        /// Cause.
        #[source]
        source: crate::pipeline::registry::RegistryError,
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
    /// The process that owns the pool alone (`wasp demo`, `wasp bench`):
    /// recorded with the pool before anything is made, so a plain
    /// `wasp reconcile` removes the whole pool once that process is gone
    /// ([`crate::pipeline::registry::PoolEntry::orphaned`]). `None`: a
    /// shared pool, kept until drained.
    pub owner: Option<crate::pipeline::registry::Owner>,
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

#[cfg(test)]
mod tests {
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
}
