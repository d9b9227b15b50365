//! The slot path's rtnetlink messages built with netlink-packet-route
//! instead of `rtnl`'s hand-written builders, for the comparison that
//! keeps those builders (see the note above `rtnl::new_veth`). Before
//! timing, the crate-built bytes are checked equal to the hand-built ones
//! (themselves checked against `ip` in tests/netlink_golden.rs), so both
//! benches build the same datagram.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::Criterion;
use netlink_packet_core::DefaultNla;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoBridgePort, InfoData, InfoPortData,
    InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use wasp::netlink::{rtnl, MsgBuf, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use wasp::pipeline::slot::SlotNet;

const NEW: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
const SET: u16 = NLM_F_REQUEST | NLM_F_ACK;

fn kind(k: &str) -> LinkInfo {
    LinkInfo::Other(DefaultNla::new(1, k.as_bytes().to_vec()))
}

fn up(m: &mut LinkMessage, on: bool) {
    if on {
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
    }
}

fn by_name(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_owned()));
    m
}

/// `rtnl::new_veth` with the crate.
pub fn new_veth(b: &mut MsgBuf, seq: u32, v: &rtnl::VethSpec<'_>) {
    let mut peer = LinkMessage::default();
    peer.header.index = v.peer_index as u32;
    up(&mut peer, v.peer_up);
    if let Some(fd) = v.peer_ns_fd {
        peer.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    if let Some(q) = v.queues {
        peer.attributes.push(LinkAttribute::NumTxQueues(q));
        peer.attributes.push(LinkAttribute::NumRxQueues(q));
    }
    if let Some(mac) = v.peer_mac {
        peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    peer.attributes
        .push(LinkAttribute::IfName(v.peer_name.to_owned()));
    let mut m = LinkMessage::default();
    up(&mut m, v.up);
    if let Some(q) = v.queues {
        m.attributes.push(LinkAttribute::NumTxQueues(q));
        m.attributes.push(LinkAttribute::NumRxQueues(q));
    }
    if let Some(c) = v.master {
        m.attributes.push(LinkAttribute::Controller(c));
    }
    m.attributes.push(LinkAttribute::IfName(v.name.to_owned()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        kind("veth"),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    b.push(NEW, seq, RouteNetlinkMessage::NewLink(m));
}

/// `rtnl::set_alias` (by name) with the crate; the alias goes without a
/// NUL as `ip` sends it, which `LinkAttribute::IfAlias` cannot do.
pub fn set_alias(b: &mut MsgBuf, seq: u32, name: &str, alias: &str) {
    let mut m = by_name(name);
    m.attributes.push(LinkAttribute::Other(DefaultNla::new(
        20,
        alias.as_bytes().to_vec(),
    )));
    b.push(SET, seq, RouteNetlinkMessage::NewLink(m));
}

/// `rtnl::set_isolated` (by name) with the crate.
pub fn set_isolated(b: &mut MsgBuf, seq: u32, name: &str, on: bool) {
    let mut m = by_name(name);
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        kind("bridge_slave"),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(on)])),
    ]));
    b.push(SET, seq, RouteNetlinkMessage::NewLink(m));
}

/// `rtnl::set_up` (by index) with the crate.
pub fn set_up(b: &mut MsgBuf, seq: u32, index: u32) {
    let mut m = LinkMessage::default();
    m.header.index = index;
    up(&mut m, true);
    b.push(SET, seq, RouteNetlinkMessage::NewLink(m));
}

/// `rtnl::set_addrgenmode_none` (by index) with the crate.
pub fn set_addrgenmode_none(b: &mut MsgBuf, seq: u32, index: u32) {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    b.push(SET, seq, RouteNetlinkMessage::NewLink(m));
}

/// `rtnl::set_inet_conf` (by index) with the crate. Its typed devconf
/// (`InetDevConf`) sends every field, so the two values go as raw
/// attributes of `IFLA_INET_CONF`.
pub fn set_inet_conf(b: &mut MsgBuf, seq: u32, index: u32, conf: &[(u16, u32)]) {
    let mut raw = Vec::new();
    for &(id, v) in conf {
        raw.extend(8u16.to_ne_bytes());
        raw.extend(id.to_ne_bytes());
        raw.extend(v.to_ne_bytes());
    }
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes
        .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::Other(DefaultNla::new(rtnl::IFLA_INET_CONF, raw)),
        ])]));
    b.push(SET, seq, RouteNetlinkMessage::NewLink(m));
}

/// `rtnl::new_addr` with the crate.
pub fn new_addr(b: &mut MsgBuf, seq: u32, index: u32, addr: Ipv4Addr, prefix: u8) {
    let mut m = AddressMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.prefix_len = prefix;
    m.header.index = index;
    m.attributes = vec![
        AddressAttribute::Local(addr.into()),
        AddressAttribute::Address(addr.into()),
    ];
    b.push(NEW, seq, RouteNetlinkMessage::NewAddress(m));
}

/// `rtnl::default_route` with the crate.
pub fn default_route(b: &mut MsgBuf, seq: u32, gw: Ipv4Addr) {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.table = 254;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gw))];
    b.push(NEW, seq, RouteNetlinkMessage::NewRoute(m));
}

const HOST: &str = "wasp12345000001";

fn spec() -> rtnl::VethSpec<'static> {
    rtnl::VethSpec {
        name: HOST,
        up: true,
        master: Some(2),
        peer_name: "veth0",
        peer_ns_fd: Some(9),
        peer_index: 0,
        peer_up: false,
        peer_mac: Some([2, 0x12, 0x34, 0, 0, 1]),
        mac: None,
        queues: Some(1),
    }
}

/// The gate bench "slot rtnetlink messages" with the crate: the same
/// messages, the same buffer reuse.
pub fn slot_messages(m: &mut MsgBuf, net: &SlotNet, ip: Ipv4Addr) -> usize {
    m.clear();
    new_veth(m, 1, &spec());
    set_alias(m, 2, HOST, "wasp:default:1");
    set_isolated(m, 3, HOST, true);
    // SlotNet::inner_links for tap 2, veth0 3.
    set_addrgenmode_none(m, 4, 2);
    set_addrgenmode_none(m, 5, 3);
    set_inet_conf(m, 6, 2, &SlotNet::SLOT_INET_CONF);
    set_inet_conf(m, 7, 3, &SlotNet::SLOT_INET_CONF);
    set_up(m, 8, 1);
    set_up(m, 9, 2);
    set_up(m, 10, 3);
    new_addr(m, 11, 2, net.tap_ip, net.tap_prefix);
    new_addr(m, 12, 3, ip, net.cidr.prefix);
    default_route(m, 13, net.cidr.gateway());
    m.as_bytes().len()
}

/// The gate bench "slot rtnetlink messages": the slot path's messages
/// built by hand, into `m` (cleared first); the bytes built.
pub fn hand_messages(m: &mut MsgBuf, net: &SlotNet, ip: Ipv4Addr) -> usize {
    m.clear();
    rtnl::new_veth(m, 1, &spec());
    rtnl::set_alias(m, 2, rtnl::Link::Name(HOST), "wasp:default:1");
    rtnl::set_isolated(m, 3, rtnl::Link::Name(HOST), true);
    net.inner_links(m, 4, 2, 3, ip);
    m.as_bytes().len()
}

/// Registers "slot rtnetlink messages via crate" next to the hand-built
/// one of the gate, after checking both build the same bytes.
pub fn register<M: criterion::measurement::Measurement + 'static>(c: &mut Criterion<M>) {
    let net = SlotNet::default();
    let ip = Ipv4Addr::new(10, 0, 1, 2);
    let (mut a, mut b) = (MsgBuf::new(), MsgBuf::new());
    slot_messages(&mut a, &net, ip);
    hand_messages(&mut b, &net, ip);
    assert_eq!(
        a.as_bytes(),
        b.as_bytes(),
        "the crate-built slot messages differ from the hand-built ones"
    );
    let mut m = MsgBuf::new();
    c.bench_function("slot rtnetlink messages via crate", |bch| {
        bch.iter(|| slot_messages(&mut m, black_box(&net), black_box(ip)))
    });
}
