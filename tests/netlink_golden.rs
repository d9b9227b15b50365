//! Byte-exact golden tests: the netlink messages wasp builds against what
//! real `ip` and `nft` send for the same operations.
//!
//! How the captures in tests/golden/ were made (iproute2 6.1.0, nftables
//! 1.0.6, Debian 12), always in a scratch netns (`unshare -n`), with strace
//! hex-dumping the datagrams written to the netlink socket (fd 3):
//!
//! - `ip_link.strace.txt`: for each command below,
//!   `strace -e trace=sendmsg -e write=3 -s 8192 <command>` keeping only
//!   the hex lines, in a netns where lo is ifindex 1, wasp0 becomes 2 and
//!   wp-x-1 becomes 3; the veth peer's netns was a named scratch netns
//!   (opened by ip as fd 4). The `== command` lines say which is which.
//!   The last two (the slot's veth and wasp's bridge) were captured the same
//!   way on kernel 6.18 (iproute2 6.1.0), e.g.
//!   `unshare -n sh -c 'ip link add wasp0 type bridge; ip netns add
//!   wasptest-cap; strace -e trace=sendmsg -e write=3 -s 8192 ip link add
//!   wp-x-1 numtxqueues 1 numrxqueues 1 up master wasp0 type veth peer name
//!   veth0 netns wasptest-cap numtxqueues 1 numrxqueues 1; ip netns del
//!   wasptest-cap'`.
//! - `ip_neigh_mac.strace.txt` (kernel 6.18, iproute2 6.1.0): the
//!   permanent neighbour entries, pinning the bridge's address, and the
//!   slot's veth with a fixed peer MAC, captured the same way with wasp0
//!   as ifindex 2 and the peer's netns as fd 4 (for `link set address`,
//!   only the second datagram: ip first looks the link up); the last, the
//!   guest's entry a restore makes, in a netns where tap0 is ifindex 2.
//! - `nft_slot.strace.txt`: `strace -f -e trace=sendmsg -e write=3 -s 65536
//!   nft -f tests/golden/nft_slot.nft` (one sendmsg: the whole batch).
//! - `nft_add_table.strace.txt`: `nft add table inet wasp_probe`.
//! - `nft_connect_root.strace.txt` and `nft_connect_uids.strace.txt`
//!   (kernel 6.18, nftables 1.0.6): `strace -f -e trace=sendmsg -e write=3
//!   -s 65536 nft -f tests/golden/nft_connect_root.nft` (and
//!   `nft_connect_uids.nft`) in `unshare -n`, one sendmsg each: the host
//!   netns rule that lets only root (`meta skuid != 0`) or root and uid
//!   1000 (`meta skuid != { 0, 1000 }`, an anonymous set) connect to the
//!   clone CIDR.
//! - `nft_del_chain.strace.txt`: `nft delete chain ip wasp
//!   connect_golden`, the same way.
//!
//! - `ip_routed.strace.txt` (kernel 6.18, iproute2 6.1.0): the routed
//!   layout's host veth (a MAC of its own, no master) and its `/32` host
//!   route, made by `sh tests/tools/capture_routed.sh` (the commands are
//!   in it; it runs them in `unshare -n` and a scratch peer netns).
//! - `ip_addrgenmode.strace.txt` (kernel 6.18, iproute2 6.1.0): `ip link
//!   set dev X addrgenmode none` for the host end (ifindex 3) and veth0
//!   (ifindex 2), made by `sh tests/tools/capture_addrgenmode.sh`.
//!   iproute2 has no command for a link's IPv4 devconf (`IFLA_INET_CONF`),
//!   so that message is checked against its layout written out by hand
//!   from `linux/if_link.h` and `linux/ip.h`.
//!
//! Only the fields the kernel or the tool chooses per run are normalised:
//! `nlmsg_seq` (ip uses the time) and `nlmsg_pid`.

use std::net::{Ipv4Addr, SocketAddrV4};

use wasp::netlink::{rtnl, MsgBuf};
use wasp::pipeline::slot::{Cidr, SlotNet, MAX_INDEX};

/// Parses strace's `-e write=` hex dump into one byte vector per section
/// (a section starts at offset 00000).
fn parse_dump(text: &str) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(" | ") else {
            continue;
        };
        let (off, hex) = rest.split_at(5);
        if off == "00000" {
            out.push(Vec::new());
        }
        let bytes = &hex[2..50];
        out.last_mut().expect("dump starts at offset 0").extend(
            bytes
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap()),
        );
    }
    out
}

/// Zeroes seq and pid of every message in a buffer.
fn normalise(mut b: Vec<u8>) -> Vec<u8> {
    let mut i = 0;
    while i + 16 <= b.len() {
        let len = u32::from_ne_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        assert!(len >= 16, "bad message length");
        b[i + 8..i + 16].fill(0);
        i += (len + 3) & !3;
    }
    b
}

fn ip_captures() -> Vec<Vec<u8>> {
    parse_dump(include_str!("golden/ip_link.strace.txt"))
}

fn built(f: impl FnOnce(&mut MsgBuf)) -> Vec<u8> {
    let mut b = MsgBuf::new();
    f(&mut b);
    normalise(b.as_bytes().to_vec())
}

#[test]
fn rtnetlink_messages_match_ip() {
    let cap: Vec<Vec<u8>> = ip_captures().into_iter().map(normalise).collect();
    assert_eq!(cap.len(), 11, "one capture per command");
    // ip link add wasp0 type bridge
    assert_eq!(built(|b| rtnl::new_bridge(b, 0, "wasp0", true)), cap[0]);
    // ip link add wp-x-1 type veth peer name veth0 netns NS (NS = fd 4)
    let veth = rtnl::VethSpec {
        name: "wp-x-1",
        up: false,
        master: None,
        peer_name: "veth0",
        peer_ns_fd: Some(4),
        peer_index: 0,
        peer_up: false,
        peer_mac: None,
        mac: None,
        queues: None,
    };
    assert_eq!(built(|b| rtnl::new_veth(b, 0, &veth)), cap[1]);
    // ip link set dev wp-x-1 master wasp0
    assert_eq!(
        built(|b| rtnl::set_master(b, 0, rtnl::Link::Index(3), 2)),
        cap[2]
    );
    // ip link set dev wp-x-1 alias wasp:x:1
    assert_eq!(
        built(|b| rtnl::set_alias(b, 0, rtnl::Link::Index(3), "wasp:x:1")),
        cap[3]
    );
    // ip link set dev wp-x-1 type bridge_slave isolated on
    assert_eq!(
        built(|b| rtnl::set_isolated(b, 0, rtnl::Link::Index(3), true)),
        cap[4]
    );
    // ip link set dev wp-x-1 up
    assert_eq!(built(|b| rtnl::set_up(b, 0, rtnl::Link::Index(3))), cap[5]);
    // ip addr add 10.0.0.1/16 dev wasp0
    assert_eq!(
        built(|b| rtnl::new_addr(b, 0, 2, Ipv4Addr::new(10, 0, 0, 1), 16)),
        cap[6]
    );
    // ip route add default via 10.0.0.2
    assert_eq!(
        built(|b| rtnl::default_route(b, 0, Ipv4Addr::new(10, 0, 0, 2))),
        cap[7]
    );
    // ip link del wp-x-1
    assert_eq!(
        built(|b| rtnl::del_link(b, 0, rtnl::Link::Index(3))),
        cap[8]
    );
    // The host veth as a slot creates it: one queue pair per end, up,
    // enslaved to wasp0 (ifindex 2), the peer in NS (fd 4).
    let slot_veth = rtnl::VethSpec {
        up: true,
        master: Some(2),
        queues: Some(1),
        ..veth
    };
    assert_eq!(built(|b| rtnl::new_veth(b, 0, &slot_veth)), cap[9]);
    // The bridge as wasp creates it.
    assert_eq!(built(|b| rtnl::new_bridge(b, 0, "wasp0", false)), cap[10]);
}

#[test]
fn neighbour_and_mac_messages_match_ip() {
    let cap: Vec<Vec<u8>> = parse_dump(include_str!("golden/ip_neigh_mac.strace.txt"))
        .into_iter()
        .map(normalise)
        .collect();
    assert_eq!(cap.len(), 5, "one capture per command");
    let ip = Ipv4Addr::new(10, 0, 0, 7);
    // ip neigh replace 10.0.0.7 lladdr 02:77:61:73:70:07 dev wasp0 nud permanent
    assert_eq!(
        built(|b| rtnl::set_neigh_permanent(b, 0, 2, ip, *b"\x02wasp\x07")),
        cap[0]
    );
    // ip neigh del 10.0.0.7 dev wasp0
    assert_eq!(built(|b| rtnl::del_neigh(b, 0, 2, ip)), cap[1]);
    // ip link set dev wasp0 address 0a:77:61:73:70:01
    assert_eq!(
        built(|b| rtnl::set_address(b, 0, rtnl::Link::Index(2), *b"\x0awasp\x01")),
        cap[2]
    );
    // The slot's veth: one queue pair per end, up, on wasp0, the peer in
    // NS (fd 4) with its fixed MAC.
    let slot_veth = rtnl::VethSpec {
        name: "wp-x-2",
        up: true,
        master: Some(2),
        peer_name: "veth0",
        peer_ns_fd: Some(4),
        peer_index: 0,
        peer_up: false,
        peer_mac: Some(*b"\x02wasp\x08"),
        mac: None,
        queues: Some(1),
    };
    assert_eq!(built(|b| rtnl::new_veth(b, 0, &slot_veth)), cap[3]);
    // ip neigh replace 192.168.241.2 lladdr 06:00:c0:a8:f1:02 dev tap0
    //   nud probe extern_learn (tap0 is ifindex 2 there)
    assert_eq!(
        built(|b| rtnl::set_neigh_probe(
            b,
            0,
            2,
            Ipv4Addr::new(192, 168, 241, 2),
            [0x06, 0, 0xc0, 0xa8, 0xf1, 0x02]
        )),
        cap[4]
    );
}

#[test]
fn routed_layout_messages_match_ip() {
    let cap: Vec<Vec<u8>> = parse_dump(include_str!("golden/ip_routed.strace.txt"))
        .into_iter()
        .map(normalise)
        .collect();
    assert_eq!(cap.len(), 2, "one capture per command");
    // The routed slot's host veth: one queue pair per end, on no bridge,
    // with the gateway's MAC; the peer in NS (fd 4) with its fixed MAC.
    let slot_veth = rtnl::VethSpec {
        name: "wp-x-3",
        up: false,
        master: None,
        peer_name: "veth0",
        peer_ns_fd: Some(4),
        peer_index: 0,
        peer_up: false,
        peer_mac: Some(*b"\x02wasp\x09"),
        mac: Some(*b"\x0awasp\x01"),
        queues: Some(1),
    };
    assert_eq!(built(|b| rtnl::new_veth(b, 0, &slot_veth)), cap[0]);
    // ip route add 10.0.0.9/32 dev wp-x-3 src 10.0.0.1 (wp-x-3 is ifindex 3)
    assert_eq!(
        built(|b| rtnl::host_route(
            b,
            0,
            Ipv4Addr::new(10, 0, 0, 9),
            Ipv4Addr::new(10, 0, 0, 1),
            3
        )),
        cap[1]
    );
}

#[test]
fn address_mode_and_inet_conf_messages() {
    let cap: Vec<Vec<u8>> = parse_dump(include_str!("golden/ip_addrgenmode.strace.txt"))
        .into_iter()
        .map(normalise)
        .collect();
    assert_eq!(cap.len(), 2, "one capture per command");
    let mode = |i| built(|b| rtnl::set_addrgenmode_none(b, 0, rtnl::Link::Index(i)));
    assert_eq!(mode(3), cap[0]);
    assert_eq!(mode(2), cap[1]);
    // RTM_NEWLINK, REQUEST|ACK, ifindex 2; IFLA_AF_SPEC { AF_INET {
    // IFLA_INET_CONF { FORWARDING = 1, ACCEPT_REDIRECTS = 0 } } }.
    let mut want: Vec<u8> = Vec::new();
    want.extend(60u32.to_ne_bytes()); // header 16 + ifinfomsg 16 + IFLA_AF_SPEC 28
    want.extend(16u16.to_ne_bytes());
    want.extend(5u16.to_ne_bytes());
    want.extend([0u8; 8]);
    want.extend([0u8, 0, 0, 0]);
    want.extend(2i32.to_ne_bytes());
    want.extend([0u8; 8]);
    for (len, ty) in [(28u16, 26u16), (24, 2), (20, 1)] {
        want.extend(len.to_ne_bytes());
        want.extend(ty.to_ne_bytes());
    }
    for (ty, v) in [(1u16, 1u32), (4, 0)] {
        want.extend(8u16.to_ne_bytes());
        want.extend(ty.to_ne_bytes());
        want.extend(v.to_ne_bytes());
    }
    let conf = built(|b| rtnl::set_inet_conf(b, 0, rtnl::Link::Index(2), &SlotNet::SLOT_INET_CONF));
    assert_eq!(conf, want);
}

#[test]
fn slot_macs_are_fixed_per_slot_local_and_unicast() {
    let net = SlotNet {
        pool: "golden".into(),
        ..SlotNet::default()
    };
    let m = net.veth0_mac(0x0a0b0c);
    assert_eq!(m[0], 0x02, "locally administered, unicast");
    assert_eq!(&m[3..], &[0x0a, 0x0b, 0x0c], "the index");
    assert_eq!(m, net.veth0_mac(0x0a0b0c), "fixed");
    assert_ne!(m, net.veth0_mac(0x0a0b0d));
    let other = SlotNet {
        pool: "other".into(),
        ..SlotNet::default()
    };
    assert_ne!(m, other.veth0_mac(0x0a0b0c), "the pool is in it");
    let br = net.bridge_mac();
    assert_eq!(br[0] & 0x03, 0x02, "locally administered, unicast");
    assert!((0..=MAX_INDEX)
        .step_by(4099)
        .all(|n| net.veth0_mac(n) != br));
}

#[test]
fn slot_nft_batch_matches_nft() {
    let cap = parse_dump(include_str!("golden/nft_slot.strace.txt"));
    assert_eq!(cap.len(), 1, "nft sends the batch in one sendmsg");
    // The same ruleset as tests/golden/nft_slot.nft: clone 10.0.0.2,
    // guest 192.168.241.2 behind tap0, host port 10.0.0.1:8080, egress on.
    let net = SlotNet {
        pool: "golden".into(),
        cidr: Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap(),
        allow_host: vec![SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 8080)],
        egress: true,
        ..SlotNet::default()
    };
    // nft numbers its batch from 0, as does this call.
    let (buf, seqs, _) = net.ruleset(0, Ipv4Addr::new(10, 0, 0, 2)).finish();
    assert_eq!(seqs.len(), 10);
    assert_same_batch(buf.as_bytes(), &cap[0]);
}

#[test]
fn table_batch_matches_nft() {
    let cap = parse_dump(include_str!("golden/nft_add_table.strace.txt"));
    let mut b = wasp::netlink::nft::Batch::new(0);
    b.new_table(wasp::netlink::nft::NFPROTO_INET, "wasp_probe");
    let (buf, _, _) = b.finish();
    assert_eq!(buf.as_bytes(), &cap[0][..]);
}

/// Compares a batch with an nft capture, showing where they first differ.
fn assert_same_batch(ours: &[u8], theirs: &[u8]) {
    if ours != theirs {
        let at = ours
            .iter()
            .zip(theirs.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(theirs.len()));
        panic!(
            "nft batch differs at byte {at} (ours {} bytes, nft {} bytes)\nours: {:02x?}\nnft:  {:02x?}",
            ours.len(),
            theirs.len(),
            &ours[at.saturating_sub(16)..(at + 32).min(ours.len())],
            &theirs[at.saturating_sub(16)..(at + 32).min(theirs.len())]
        );
    }
}

#[test]
fn connect_uid_batches_match_nft() {
    let net = SlotNet {
        pool: "golden".into(),
        cidr: Cidr::new(Ipv4Addr::new(10, 0, 0, 0), 16).unwrap(),
        ..SlotNet::default()
    };
    assert_eq!(net.connect_chain(), "connect_golden");
    // Root only: `meta skuid != 0`, no set.
    let cap = parse_dump(include_str!("golden/nft_connect_root.strace.txt"));
    assert_eq!(cap.len(), 1, "nft sends the batch in one sendmsg");
    let (buf, seqs, _) = net.connect_ruleset(0, &[0]).finish();
    assert_eq!(seqs.len(), 4, "table, chain, flush, rule");
    assert_same_batch(buf.as_bytes(), &cap[0]);
    // Root and uid 1000: the anonymous set and an inverted lookup.
    let cap = parse_dump(include_str!("golden/nft_connect_uids.strace.txt"));
    assert_eq!(cap.len(), 1, "nft sends the batch in one sendmsg");
    let uids: Vec<u32> = "1000"
        .parse::<wasp::pipeline::slot::ConnectUids>()
        .unwrap()
        .uids()
        .unwrap();
    assert_eq!(uids, [0, 1000], "root is always in, in ascending order");
    let (buf, seqs, _) = net.connect_ruleset(0, &uids).finish();
    assert_eq!(seqs.len(), 6, "table, chain, flush, set, elements, rule");
    assert_same_batch(buf.as_bytes(), &cap[0]);
}

#[test]
fn delete_chain_batch_matches_nft() {
    let cap = parse_dump(include_str!("golden/nft_del_chain.strace.txt"));
    let mut b = wasp::netlink::nft::Batch::new(0);
    b.del_chain(wasp::netlink::nft::NFPROTO_IPV4, "wasp", "connect_golden");
    let (buf, _, _) = b.finish();
    assert_same_batch(buf.as_bytes(), &cap[0]);
}
