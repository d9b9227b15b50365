//! Building one slot: the per-slot netlink messages (links inside, the
//! nf_tables ruleset), [`fill_slot`] on a thread inside the fresh
//! namespace, and the per-step timing ([`BuildSteps`]).

use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};

use super::links::{del_host_link, del_host_neigh, send_acked};
use super::{io_err, nl, Layout, Slot, SlotError, SlotNet, NFT_TABLE, VETH0};
use crate::netlink::nft::{self, BaseChain, Batch, ChainType, CmpOp, Expr, Hook};
use crate::netlink::{rtnl, MsgBuf, NetlinkError, Socket};
use crate::sys::{netns, tap};

impl SlotNet {
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
    pub const INNER_MSGS: u32 = 10;

    /// IPv4 devconf of the slot's two links: forwarding on and ICMP
    /// redirects ignored, which is what `net.ipv4.ip_forward=1` does for
    /// them (it also sets `all.accept_redirects=0`), without its
    /// `/proc/sys` write, whose path lookup walks one dentry per live
    /// namespace (O(slots) per build).
    pub const SLOT_INET_CONF: [(u16, u32); 2] = [
        (rtnl::IPV4_DEVCONF_FORWARDING, 1),
        (rtnl::IPV4_DEVCONF_ACCEPT_REDIRECTS, 0),
    ];

    /// The rtnetlink messages run inside a fresh slot netns once veth0
    /// exists: tap and veth0 without IPv6 link-local addresses and
    /// forwarding IPv4 ([`Self::SLOT_INET_CONF`]), then lo, tap and veth0
    /// up, their addresses, the default route. Returns the
    /// [`Self::INNER_MSGS`] sequence numbers from `seq`.
    pub fn inner_links(
        &self,
        b: &mut MsgBuf,
        seq: u32,
        tap_index: u32,
        veth0_index: u32,
        clone_ip: Ipv4Addr,
    ) -> Vec<u32> {
        let (tap, veth0) = (rtnl::Link::Index(tap_index), rtnl::Link::Index(veth0_index));
        // While they are down: the address mode is read when a link comes
        // up. No link-local address means no IPv6 packet from the slot
        // (duplicate address detection, router solicitations, MLD reports)
        // reaches the host end, where each would be routed against one
        // multicast route per slot.
        rtnl::set_addrgenmode_none(b, seq, tap);
        rtnl::set_addrgenmode_none(b, seq + 1, veth0);
        rtnl::set_inet_conf(b, seq + 2, tap, &Self::SLOT_INET_CONF);
        rtnl::set_inet_conf(b, seq + 3, veth0, &Self::SLOT_INET_CONF);
        rtnl::set_up(b, seq + 4, rtnl::Link::Index(1));
        rtnl::set_up(b, seq + 5, tap);
        rtnl::set_up(b, seq + 6, veth0);
        rtnl::new_addr(b, seq + 7, tap_index, self.tap_ip, self.tap_prefix);
        rtnl::new_addr(b, seq + 8, veth0_index, clone_ip, self.cidr.prefix);
        rtnl::default_route(b, seq + 9, self.cidr.gateway());
        (seq..seq + Self::INNER_MSGS).collect()
    }
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
    /// Inside, one datagram: the links' IPv6 address mode and IPv4
    /// forwarding, links up, addresses and the route.
    pub links: f64,
    /// The nf_tables batch.
    pub nft: f64,
    /// The host end up, and the link-watch syncs of both ends.
    pub up: f64,
}

impl BuildSteps {
    /// The step names, in build order.
    pub const NAMES: [&'static str; 7] = ["netns", "tap", "veth", "mark", "links", "nft", "up"];

    /// The values, in [`BuildSteps::NAMES`] order.
    pub fn values(&self) -> [f64; 7] {
        [
            self.netns, self.tap, self.veth, self.mark, self.links, self.nft, self.up,
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

/// The host bridge as a slot build needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bridge {
    /// Its interface index.
    pub(super) index: u32,
    /// Its pinned MAC, for each slot's permanent entry for the gateway.
    pub(super) mac: Option<[u8; 6]>,
}

/// Everything of slot `slot` once the calling thread is inside its fresh
/// namespace: tap, veth pair (through `host`, a route socket of the host
/// netns), marks, links and their forwarding, addresses, route, neighbour entries
/// and the nft batch. `steps` gets the time of each step. On error the host
/// veth and the host's entry for the clone are removed again (the caller
/// removes the netns).
pub(super) fn fill_slot(
    net: &SlotNet,
    bridge: Bridge,
    slot: &Slot,
    host: &mut Socket,
    host_v6conf: Option<&std::fs::File>,
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
    let routed = net.layout == Layout::Routed;
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
            // Routed: no bridge port; the host end carries the gateway's
            // MAC itself (the slot's permanent entry for the gateway).
            master: (!routed).then_some(bridge.index),
            mac: if routed { bridge.mac } else { None },
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
    let seq = host.next_seq(3);
    let link = rtnl::Link::Name(host_veth);
    rtnl::set_alias(&mut b, seq, link, &net.alias(n));
    // No IPv6 link-local address on the host end (it is down until the
    // end): each would add a `fe80::/64` route to the host's table, and
    // the kernel walks that table on every link change there, and the
    // routes to one prefix on every IPv6 packet: O(slots) each.
    rtnl::set_addrgenmode_none(&mut b, seq + 1, link);
    let mut seqs = vec![seq, seq + 1];
    // Bridge ports are isolated from each other; a routed host end is on
    // no bridge.
    if !routed {
        rtnl::set_isolated(&mut b, seq + 2, link, true);
        seqs.push(seq + 2);
    }
    if let Err(e) = send_acked(host, &b, &seqs, "mark and isolate the host veth") {
        let _ = del_host_link(host, host_veth);
        return Err(e);
    }
    // And no IPv6 at all on the host end, while it is down: without a
    // link-local address it would still get an `ff00::/8` route in the
    // host's table, which the kernel walks whole on every link up or down
    // there (O(slots) per slot: the up step took 0.73 ms at 5 000 slots).
    if let Some(dir) = host_v6conf {
        let rel = format!("{host_veth}/disable_ipv6");
        if let Err(e) = crate::sys::fs::write_at(dir.as_fd(), rel.as_ref(), b"1") {
            let _ = del_host_link(host, host_veth);
            return Err(io_err(format!(
                "turn IPv6 off on the host veth (net.ipv6.conf.{host_veth}.disable_ipv6)"
            ))(e));
        }
    }
    laps.lap(|s| &mut s.mark);
    let rest = (|| {
        // Inside: IPv6 address mode and IPv4 forwarding of the links,
        // links up, addresses, route, in one datagram.
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
        // Routed: the host end carries the clone IP's /32 route (from the
        // gateway address) and the permanent entry instead of the bridge.
        b.clear();
        let seq = host.next_seq(4);
        rtnl::set_up(&mut b, seq, link);
        rtnl::get_link(&mut b, seq + 1, link);
        let mut seqs = vec![seq, seq + 1, seq + 2];
        if routed {
            let index = tap::ifindex_via(host.as_fd(), host_veth)
                .map_err(io_err("look up the host veth's index"))?;
            rtnl::set_neigh_permanent(&mut b, seq + 2, index, clone_ip, veth0_mac);
            rtnl::host_route(&mut b, seq + 3, clone_ip, net.cidr.gateway(), index);
            seqs.push(seq + 3);
        } else {
            rtnl::set_neigh_permanent(&mut b, seq + 2, bridge.index, clone_ip, veth0_mac);
        }
        send_acked(host, &b, &seqs, "bring up the host veth")?;
        b.clear();
        let seq = sock.next_seq(1);
        rtnl::get_link(&mut b, seq, rtnl::Link::Index(veth0));
        send_acked(&mut sock, &b, &[seq], "sync veth0's link state")?;
        laps.lap(|s| &mut s.up);
        Ok(())
    })();
    if let Err(e) = rest {
        let _ = del_host_link(host, host_veth);
        if !routed {
            let _ = del_host_neigh(host, bridge.index, clone_ip);
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_byte_aligned_prefix_uses_bitwise() {
        let e = nft::ip_addr_match(nft::IP_DADDR, CmpOp::Neq, Ipv4Addr::new(10, 0, 0, 0), 12);
        assert_eq!(e.len(), 3);
        assert!(matches!(&e[1], Expr::Bitwise { mask, .. } if mask == &[255, 240, 0, 0]));
    }
}
