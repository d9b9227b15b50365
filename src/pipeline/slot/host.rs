//! The host side of a pool: the bridge, the egress masquerade, the
//! connect-uid chain of wasp's host table, their removal, and the pool's
//! registry record.

use super::links::{del_host_link, dump_addrs, dump_links, dump_routes, get_link, send_acked};
use super::{
    io_err, nl, Cidr, ConnectUids, HostNet, Layout, SlotError, SlotNet, BRIDGE_ALIAS, NFT_TABLE,
};
use crate::netlink::nft::{self, BaseChain, Batch, ChainType, CmpOp, Expr, Hook};
use crate::netlink::{rtnl, MsgBuf, NetlinkError, Socket};
use crate::pipeline::registry::{PoolEntry, Registry};
use crate::sys::tap;

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
            layout: self.layout.to_string(),
            owner: host.owner,
        }
    }

    /// The settings a registry record names, to attach to the pool again
    /// (the egress uplink is not needed for that); `None` when its CIDR
    /// or layout does not parse.
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
            layout: e.layout.parse().ok()?,
        };
        let host = HostNet {
            netns: e.host_netns.clone(),
            ..HostNet::default()
        };
        Some((net, host))
    }
}

impl SlotNet {
    /// A pool keeps the layout it was built with: when `recorded` (its
    /// registry record) names another layout than these settings, the
    /// recorded one is taken (returned as `Some(old)`, the layout asked
    /// for), so an upgrade to a new default or a changed `pool.layout`
    /// never judges the pool's wired slots (and their clones) broken.
    /// Drain the pool to change its layout. Records older than layouts
    /// are bridge pools.
    pub fn keep_recorded_layout(&mut self, recorded: Option<&PoolEntry>) -> Option<Layout> {
        let old = recorded?.layout.parse::<Layout>().ok()?;
        (old != self.layout).then(|| std::mem::replace(&mut self.layout, old))
    }
}

/// The pools a command run without `--pool` covers: `configured` (the
/// configuration's pool, found even when it predates the registry), then
/// every shared pool `reg` records, each once. A pool one process owns
/// alone (a demo or bench run) is its owner's while that process runs, and
/// reconcile's to remove once it is gone: never in this list.
pub fn registered_pools(reg: &Registry, configured: (SlotNet, HostNet)) -> Vec<(SlotNet, HostNet)> {
    let mut out = vec![configured];
    let shared = reg.list().0.into_iter().filter(|e| e.owner.is_none());
    for (net, host) in shared.filter_map(|e| SlotNet::from_entry(&e)) {
        if !out
            .iter()
            .any(|(n, h)| n.pool == net.pool && h.netns == host.netns)
        {
            out.push((net, host));
        }
    }
    out
}

/// Creates the bridge with the gateway address, or adopts wasp's. Runs in
/// the host netns.
/// Creates (or adopts) the bridge; returns its index and its MAC, pinned
/// (see [`rtnl::set_address`]): slots hold permanent neighbour entries for
/// it. A bridge wasp creates gets [`SlotNet::bridge_mac`]; an adopted one
/// keeps its current address, so live clones' caches stay right.
pub(super) fn ensure_bridge(net: &SlotNet) -> Result<(u32, [u8; 6]), SlotError> {
    let mut sock = Socket::route().map_err(nl("open a route socket in the host netns"))?;
    // Routes before links: a slot another wasp process builds meanwhile
    // marks its host veth before it adds the veth's /32 route, so every
    // route of the dump is on a link the later link dump shows with its
    // mark (or on one deleted since, whose route is gone too).
    let routes = dump_routes(&mut sock).map_err(nl("list host routes"))?;
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
    check_routes(net, &routes, &links, existing.map(|l| l.index))?;
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
pub(super) fn set_egress(net: &SlotNet, uplink: &str, owned: bool) -> Result<(), SlotError> {
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

/// How every ownership mark of wasp's starts (`wasp:`).
const SLOT_MARK_PREFIX: &str = "wasp:";

/// The host table's chain that masquerades clone traffic ([`set_egress`]).
const EGRESS_CHAIN: &str = "postrouting";

/// True when wasp's host table holds its egress masquerade chain (made by
/// [`set_egress`] for an earlier `--egress-uplink`). Runs in the host
/// netns.
pub(super) fn host_has_egress() -> Result<bool, SlotError> {
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
pub(super) fn set_connect_uids(net: &SlotNet, uids: &ConnectUids) -> Result<(), SlotError> {
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
pub(super) fn remove_host_objects(net: &SlotNet) -> Result<(), SlotError> {
    let mut errs = Vec::new();
    match Socket::route() {
        Ok(mut sock) => match dump_links(&mut sock) {
            Ok(links) => {
                if let Some(l) = links.iter().find(|l| l.name == net.bridge) {
                    // Bridge ports, and routed slots' host ends (on no
                    // bridge, but routed through the bridge's gateway
                    // address).
                    let ports = links
                        .iter()
                        .filter(|p| {
                            p.master == Some(l.index)
                                || p.alias.as_deref().is_some_and(|a| {
                                    a.starts_with(SLOT_MARK_PREFIX) && a != BRIDGE_ALIAS
                                })
                        })
                        .count();
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

/// Refuses a clone CIDR that overlaps a host route (a VPN, a container
/// network, a static route): clone traffic would be routed two ways. The
/// default route, the kernel's local table, routes on wasp's own bridge
/// (`bridge`), the routed layout's /32 routes through slots' host veths
/// (marked `wasp:<pool>:<n>`), and routes on a link gone since the route
/// dump (`links` is dumped after `routes`) do not count.
fn check_routes(
    net: &SlotNet,
    routes: &[rtnl::RouteInfo],
    links: &[rtnl::LinkInfo],
    bridge: Option<u32>,
) -> Result<(), SlotError> {
    let link = |oif: Option<u32>| oif.and_then(|i| links.iter().find(|l| l.index == i));
    for r in routes {
        let ours = match link(r.oif) {
            Some(l) => {
                Some(l.index) == bridge
                    || l.alias
                        .as_deref()
                        .is_some_and(|a| a.starts_with(SLOT_MARK_PREFIX) && a != BRIDGE_ALIAS)
            }
            None => r.oif.is_some(),
        };
        if r.prefix == 0 || r.table == rtnl::RT_TABLE_LOCAL || ours {
            continue;
        }
        if Cidr::new(r.dst, r.prefix)?.overlaps(&net.cidr) {
            let dev = link(r.oif)
                .map(|l| format!(" dev {}", l.name))
                .unwrap_or_default();
            return Err(SlotError::BadConfig(format!(
                "clone CIDR {} overlaps the host route {}/{}{dev}; choose another --cidr",
                net.cidr, r.dst, r.prefix
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_foreign_routes_overlapping_the_cidr_are_refused() {
        let net = SlotNet::default();
        let ip = |n: u8| {
            let o = net.cidr.gateway().octets();
            std::net::Ipv4Addr::new(o[0], o[1], o[2], n)
        };
        let route = |dst, prefix, oif| rtnl::RouteInfo {
            dst,
            prefix,
            oif,
            table: 254,
        };
        let link = |index, name: &str, alias: Option<String>| rtnl::LinkInfo {
            index,
            name: name.into(),
            alias,
            ..Default::default()
        };
        let links = vec![
            link(2, "eth0", None),
            link(3, &net.bridge, Some(BRIDGE_ALIAS.into())),
            link(4, "waspslot", Some(net.alias(7))),
        ];
        let ok = [
            route(std::net::Ipv4Addr::UNSPECIFIED, 0, Some(2)), // default
            route(ip(0), net.cidr.prefix, Some(3)),             // the bridge's
            route(ip(9), 32, Some(4)),                          // a marked slot veth
            // A slot veth made (and marked) after the route dump, and gone
            // before the link dump: its route went with it.
            route(ip(10), 32, Some(99)),
        ];
        check_routes(&net, &ok, &links, Some(3)).unwrap();
        let foreign = route(ip(0), 24, Some(2));
        let e = check_routes(&net, &[foreign], &links, Some(3)).unwrap_err();
        assert!(e.to_string().contains("dev eth0"), "{e}");
        // Without a bridge of its own, a route on a link named like it is
        // not wasp's.
        let on_unmarked = route(ip(11), 32, Some(3));
        let unmarked = vec![link(3, &net.bridge, None)];
        assert!(check_routes(&net, &[on_unmarked], &unmarked, None).is_err());
    }

    #[test]
    fn pools_one_process_owns_are_never_listed_for_others() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::at(dir.path());
        let shared = SlotNet {
            pool: "shared".into(),
            ..SlotNet::default()
        };
        let mine = SlotNet {
            pool: "bench1".into(),
            ..SlotNet::default()
        };
        let host = HostNet::default();
        reg.put(shared.registry_entry(&host, false)).unwrap();
        let owned = HostNet {
            owner: crate::pipeline::registry::Owner::me(),
            ..HostNet::default()
        };
        let e = mine.registry_entry(&owned, true);
        assert_eq!(e.owner, crate::pipeline::registry::Owner::me());
        reg.put(e).unwrap();
        let names: Vec<String> = registered_pools(&reg, (SlotNet::default(), host))
            .into_iter()
            .map(|(n, _)| n.pool)
            .collect();
        assert_eq!(names, ["default", "shared"]);
    }

    #[test]
    fn a_pool_keeps_the_layout_it_was_built_with() {
        let bridge = SlotNet {
            layout: Layout::Bridge,
            ..SlotNet::default()
        };
        let mut e = bridge.registry_entry(&HostNet::default(), false);
        let mut net = SlotNet::default();
        assert_eq!(net.layout, Layout::Routed);
        assert_eq!(net.keep_recorded_layout(Some(&e)), Some(Layout::Routed));
        assert_eq!(net.layout, Layout::Bridge);
        assert_eq!(net.keep_recorded_layout(Some(&e)), None);
        // No record, or one that does not parse: the settings stand.
        let mut net = SlotNet::default();
        assert_eq!(net.keep_recorded_layout(None), None);
        e.layout = "mesh".into();
        assert_eq!(net.keep_recorded_layout(Some(&e)), None);
        assert_eq!(net.layout, Layout::Routed);
        // A record written before layouts existed is a bridge pool.
        let old = r#"{"pool":"p","host_netns":null,"host_netns_created":false,"cidr":"10.0.0.0/16","bridge":"wasp0","tap":"tap0","tap_ip":"192.168.241.1","tap_prefix":29,"guest_ip":"192.168.241.2","allow_host":[],"egress":false,"owner":null}"#;
        let e: PoolEntry = serde_json::from_str(old).unwrap();
        assert_eq!(e.layout, "bridge");
    }
}
