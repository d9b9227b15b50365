//! Slots on real kernel objects, in a private host netns: packets both
//! ways through bridge -> veth -> DNAT -> tap -> guest, isolation, allowed
//! host ports, independent readers, bad input.

use wasp_testkit as testkit;
use wasp_testkit::netutil;
use wasp_testkit::root_or_skip;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use testkit::TestNetns;
use wasp::pipeline::slot::{HostNet, Kernel, Layout, Slot, SlotError, SlotNet, SlotOps};
use wasp::standin::guestnet::{GuestIface, GuestNet, GuestNetConfig, Outbound};
use wasp::sys::{netns, tap};

/// A safety net against a hung test, never a synchronisation point.
const NET: Duration = Duration::from_secs(15);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn pool_name(tag: &str) -> String {
    format!("t{}{tag}", std::process::id())
}

fn setup(tag: &str) -> (TestNetns, Kernel) {
    setup_with(tag, Layout::Bridge)
}

fn setup_with(tag: &str, layout: Layout) -> (TestNetns, Kernel) {
    testkit::slot_host_with(tag, pool_name(tag), layout)
}

/// Destroys slots on drop, even when the test panics.
struct Slots<'a>(&'a Kernel, Vec<u32>);
impl Drop for Slots<'_> {
    fn drop(&mut self) {
        for n in &self.1 {
            if let Err(e) = self.0.destroy(*n) {
                eprintln!("warning: destroy slot {n}: {e}");
            }
        }
    }
}

fn guest(slot: &Slot, outbound: Option<Outbound>) -> GuestNet {
    let ns = netns::open_named(&slot.netns).unwrap();
    let fd = netns::run_in(&ns, || tap::open_tap("tap0", false))
        .unwrap()
        .expect("open slot tap");
    GuestNet::start(
        fd,
        GuestNetConfig {
            addr: GuestIface {
                mac: [0x06, 0, 0xac, 0x10, 0, 2],
                ip: Ipv4Addr::new(192, 168, 241, 2),
                prefix_len: 29,
                gateway: Ipv4Addr::new(192, 168, 241, 1),
                ready_port: 22,
                agent_port: 8081,
            },
            agent_body: Arc::new(|| br#"{"agent":"up"}"#.to_vec()),
            outbound,
        },
    )
    .expect("start guest")
}

fn outbound(to: SocketAddrV4) -> (Outbound, mpsc::Receiver<Result<Vec<u8>, String>>) {
    let (tx, rx) = mpsc::channel();
    (
        Outbound {
            to,
            request: b"hello host\n".to_vec(),
            on_response: Box::new(move |r| {
                let _ = tx.send(r.map_err(|e| e.to_string()));
            }),
        },
        rx,
    )
}

#[test]
fn packets_flow_both_ways_and_clones_are_isolated() {
    root_or_skip!();
    let (host, k) = setup("pk");
    let s0 = k.build(0).expect("build slot 0");
    let s1 = k.build(1).expect("build slot 1");
    let s2 = k.build(2).expect("build slot 2");
    let _guard = Slots(&k, vec![0, 1, 2]);
    assert_eq!(s0.clone_ip, Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(s1.clone_ip, Ipv4Addr::new(10, 0, 0, 3));
    packets_and_isolation(&host, [&s0, &s1, &s2]);
}

#[test]
fn routed_packets_flow_both_ways_and_clones_are_isolated() {
    root_or_skip!();
    let (host, k) = setup_with("pr", Layout::Routed);
    let s0 = k.build(0).expect("build slot 0");
    let s1 = k.build(1).expect("build slot 1");
    let s2 = k.build(2).expect("build slot 2");
    let _guard = Slots(&k, vec![0, 1, 2]);
    // No bridge port: the host end carries the clone's /32 route.
    let r = host.sh("ip -o route show 10.0.0.3");
    assert!(
        r.contains(&format!("dev {} ", s1.host_veth)) && r.contains("src 10.0.0.1"),
        "{r}"
    );
    let v = host.sh(&format!("ip -d -o link show dev {}", s1.host_veth));
    assert!(!v.contains("master") && !v.contains("bridge_slave"), "{v}");
    packets_and_isolation(&host, [&s0, &s1, &s2]);
}

/// Host <-> guest both ways on the allowed port, clone 1 -> clone 0 and
/// clone 2 -> a port that is not allowed both dropped.
fn packets_and_isolation(host: &TestNetns, [s0, s1, s2]: [&Slot; 3]) {
    // The host's API server on the allowed port, and one on a port that
    // is not allowed.
    let api = host.run(|| TcpListener::bind((GW, 8080)).expect("bind api"));
    let other = host.run(|| TcpListener::bind((GW, 9999)).expect("bind other"));

    let (ob0, rx0) = outbound(SocketAddrV4::new(GW, 8080));
    let (ob1, rx1) = outbound(SocketAddrV4::new(s0.clone_ip, 22));
    let (ob2, rx2) = outbound(SocketAddrV4::new(GW, 9999));
    let g0 = guest(s0, Some(ob0));
    let g1 = guest(s1, Some(ob1));
    let g2 = guest(s2, Some(ob2));

    // Guest 0 -> host API: arrives with the clone IP as source.
    let (mut c, peer) = netutil::accept_within(&api, NET);
    assert_eq!(peer.ip(), std::net::IpAddr::V4(s0.clone_ip));
    c.set_read_timeout(Some(NET)).unwrap();
    let mut req = [0u8; 11];
    c.read_exact(&mut req).unwrap();
    assert_eq!(&req, b"hello host\n");
    c.write_all(b"ok").unwrap();
    drop(c);
    assert_eq!(rx0.recv_timeout(NET).unwrap().as_deref(), Ok(&b"ok"[..]));

    // Host -> clone IP: ICMP, TCP to the readiness port, HTTP to the agent.
    assert!(host.run(|| netutil::ping(s0.clone_ip, 3)), "ping clone 0");
    let body = host.run(|| {
        TcpStream::connect_timeout(&SocketAddrV4::new(s1.clone_ip, 22).into(), NET)
            .expect("host reaches clone 1 port 22");
        let mut s = TcpStream::connect_timeout(&SocketAddrV4::new(s0.clone_ip, 8081).into(), NET)
            .expect("host reaches clone 0 agent");
        s.set_read_timeout(Some(NET)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    });
    assert!(body.ends_with(r#"{"agent":"up"}"#), "{body}");

    // Clone 1 -> clone 0 and clone 2 -> a non-allowed host port both fail
    // (dropped: the guest's connection times out).
    let r1 = rx1.recv_timeout(NET * 2).expect("isolation callback");
    assert!(r1.is_err(), "clone 1 reached clone 0: {r1:?}");
    let r2 = rx2.recv_timeout(NET * 2).expect("port callback");
    assert!(r2.is_err(), "clone 2 reached host port 9999: {r2:?}");
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err(), "nothing arrived on port 9999");
    for g in [g0, g1, g2] {
        g.stop().expect("guest ran cleanly");
    }
}

#[test]
fn independent_readers_confirm_the_slot_and_destroy_removes_it() {
    root_or_skip!();
    let (host, k) = setup("rd");
    let s = k.build(5).expect("build");
    let guard = Slots(&k, vec![5]);
    let links: serde_json::Value = serde_json::from_str(&host.sh("ip -j -d link show")).unwrap();
    let links = links.as_array().unwrap();
    let br = links
        .iter()
        .find(|l| l["ifname"] == "wasp0")
        .expect("bridge");
    assert_eq!(br["ifalias"], "wasp:bridge");
    assert_eq!(br["linkinfo"]["info_kind"], "bridge");
    assert_eq!(br["linkinfo"]["info_data"]["mcast_snooping"], 0);
    let v = links
        .iter()
        .find(|l| l["ifname"] == s.host_veth.as_str())
        .expect("host veth");
    assert_eq!(v["master"], "wasp0");
    assert_eq!(v["ifalias"], format!("wasp:{}:5", k.net().pool));
    assert_eq!(v["linkinfo"]["info_slave_kind"], "bridge");
    assert_eq!(v["linkinfo"]["info_slave_data"]["isolated"], true);
    // build returns with the port forwarding and the link operationally up
    // (read from a dump, which unlike a single-link request does not run
    // the kernel's pending link-watch work itself).
    assert_eq!(v["operstate"], "UP", "{v}");
    assert_eq!(
        v["linkinfo"]["info_slave_data"]["state"], "forwarding",
        "{v}"
    );
    let addrs = host.sh("ip -j addr show dev wasp0");
    assert!(
        addrs.contains("\"local\":\"10.0.0.1\",\"prefixlen\":16"),
        "{addrs}"
    );

    let sh = |cmd: &str| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &s.netns, "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}");
        String::from_utf8(out.stdout).unwrap()
    };
    let a = sh("ip -j addr show");
    assert!(a.contains("\"local\":\"10.0.0.7\",\"prefixlen\":16"), "{a}");
    assert!(
        a.contains("\"local\":\"192.168.241.1\",\"prefixlen\":29"),
        "{a}"
    );
    let l: serde_json::Value = serde_json::from_str(&sh("ip -j link show")).unwrap();
    let veth0 = l
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifname"] == "veth0")
        .expect("veth0");
    assert_eq!(veth0["operstate"], "UP", "{veth0}");
    let r: serde_json::Value = serde_json::from_str(&sh("ip -j route show default")).unwrap();
    assert_eq!(r[0]["gateway"], "10.0.0.1");
    assert_eq!(r[0]["dev"], "veth0");
    // Both slot links forward (the input device decides) and ignore ICMP
    // redirects, as `ip_forward=1` would make them; they have no IPv6
    // link-local address, nor has the host end (so no fe80::/64 route per
    // slot in the host's table); and the veth pair has one queue pair per
    // end.
    for dev in ["tap0", "veth0"] {
        let conf = |k: &str| sh(&format!("cat /proc/sys/net/ipv4/conf/{dev}/{k}"));
        assert_eq!(conf("forwarding").trim(), "1", "{dev}");
        assert_eq!(conf("accept_redirects").trim(), "0", "{dev}");
        let v6 = sh(&format!("ip -6 -o addr show dev {dev}"));
        assert!(v6.trim().is_empty(), "{dev}: {v6}");
    }
    // The slot's namespace is owned by wasp's user namespace, not the
    // host's (the kernel's broadcast of unowned uevents, one per VMM start
    // and exit, then skips it); the host's stays the host's.
    let ns = wasp::sys::netns::open_named(&s.netns).unwrap();
    let host_users = std::fs::metadata("/proc/self/ns/user").unwrap().ino();
    assert_ne!(wasp::sys::netns::owner_inode(&ns).unwrap(), host_users);
    assert_eq!(
        wasp::sys::netns::owner_inode(host.fd()).unwrap(),
        host_users
    );
    let v6 = host.sh(&format!("ip -6 -o addr show dev {}", s.host_veth));
    assert!(v6.trim().is_empty(), "host end: {v6}");
    // No IPv6 at all on the host end: not even the `ff00::/8` route each
    // link gets (the host's table is walked on every link change there).
    let r6 = host.sh(&format!("ip -6 route show table all dev {}", s.host_veth));
    assert!(r6.trim().is_empty(), "host end: {r6}");
    let off = host.sh(&format!(
        "cat /proc/sys/net/ipv6/conf/{}/disable_ipv6",
        s.host_veth
    ));
    assert_eq!(off.trim(), "1");
    let l: serde_json::Value = serde_json::from_str(&sh("ip -j -d link show veth0")).unwrap();
    assert_eq!(l[0]["num_tx_queues"], 1);
    assert_eq!(l[0]["num_rx_queues"], 1);
    // veth0's MAC is fixed per slot, and both sides hold permanent
    // neighbour entries: the host for the clone IP, the slot for the
    // gateway at the bridge's pinned address.
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let veth0_mac = mac(k.net().veth0_mac(5));
    assert_eq!(l[0]["address"], veth0_mac.as_str());
    let br: serde_json::Value =
        serde_json::from_str(&host.sh("ip -j link show dev wasp0")).unwrap();
    let br_mac = br[0]["address"].as_str().unwrap().to_owned();
    assert_eq!(br_mac, mac(k.net().bridge_mac()), "a bridge wasp made");
    assert_eq!(
        host.sh("cat /sys/class/net/wasp0/addr_assign_type").trim(),
        "3",
        "the bridge's address is set, so ports do not change it"
    );
    let hn: serde_json::Value =
        serde_json::from_str(&host.sh("ip -j neigh show dev wasp0 10.0.0.7")).unwrap();
    assert_eq!(hn[0]["lladdr"], veth0_mac.as_str(), "{hn}");
    assert_eq!(hn[0]["state"][0], "PERMANENT", "{hn}");
    let sn: serde_json::Value =
        serde_json::from_str(&sh("ip -j neigh show dev veth0 10.0.0.1")).unwrap();
    assert_eq!(sn[0]["lladdr"], br_mac.as_str(), "{sn}");
    assert_eq!(sn[0]["state"][0], "PERMANENT", "{sn}");
    let rs: serde_json::Value = serde_json::from_str(&sh("nft -j list ruleset")).unwrap();
    let items = rs["nftables"].as_array().unwrap();
    let chains: Vec<_> = items
        .iter()
        .filter_map(|i| i.get("chain"))
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["hook"].clone(),
                c["policy"].clone(),
            )
        })
        .collect();
    assert_eq!(chains.len(), 3, "{chains:?}");
    assert!(chains.contains(&("forward".into(), "forward".into(), "drop".into())));
    let text = sh("nft list table ip wasp");
    assert!(
        text.contains("iifname \"veth0\" ip daddr 10.0.0.7 dnat to 192.168.241.2"),
        "{text}"
    );
    assert!(
        text.contains("oifname \"veth0\" ip saddr 192.168.241.2 snat to 10.0.0.7"),
        "{text}"
    );
    assert!(
        text.contains("ip daddr 10.0.0.1 tcp dport 8080 accept"),
        "{text}"
    );

    // Recycling a free slot works; a held tap is refused.
    k.recycle(&s).expect("recycle");
    let ns = netns::open_named(&s.netns).unwrap();
    let held = netns::run_in(&ns, || tap::open_tap("tap0", false))
        .unwrap()
        .unwrap();
    assert!(matches!(k.recycle(&s), Err(SlotError::TapBusy { .. })));
    drop(held);
    drop(ns);

    drop(guard);
    assert!(!netns::exists(&s.netns));
    assert!(!host.sh("ip -o link").contains(&s.host_veth));
    assert_eq!(
        host.sh("ip neigh show dev wasp0 10.0.0.7").trim(),
        "",
        "destroy removes the host's entry for the clone"
    );
}

#[test]
fn bad_input_errors_leave_nothing_behind() {
    root_or_skip!();
    // Overlap with an address already in the host netns.
    let host = TestNetns::new("ov");
    host.sh("ip link add other7 type veth peer name other7p && ip addr add 10.0.9.1/24 dev other7");
    let hn = HostNet {
        netns: Some(host.name().to_owned()),
        egress_uplink: None,
        ..Default::default()
    };
    // One pool, several CIDRs.
    let setup_in = |cidr: &str| {
        Kernel::setup(
            SlotNet {
                pool: pool_name("ov"),
                cidr: cidr.parse().unwrap(),
                allow_host: vec![],
                ..SlotNet::default()
            },
            &hn,
        )
    };
    let e = setup_in("10.0.0.0/16").unwrap_err().to_string();
    assert!(
        e.contains("overlaps the host address 10.0.9.1/24 on other7"),
        "{e}"
    );
    assert!(
        !host.sh_ok("ip link show dev wasp0"),
        "no bridge left behind"
    );

    // Overlap with a route (no address of the host in it): one clear
    // error, nothing built.
    host.sh("ip link set other7 up && ip route add 10.4.0.0/16 dev other7");
    let e = setup_in("10.4.128.0/17").unwrap_err().to_string();
    assert!(
        e.contains("overlaps the host route 10.4.0.0/16 dev other7"),
        "{e}"
    );
    assert!(
        !host.sh_ok("ip link show dev wasp0"),
        "no bridge left behind"
    );

    // A bridge name that exists and is not wasp's.
    host.sh("ip link add wasp0 type bridge");
    let e = setup_in("10.1.0.0/16").unwrap_err();
    assert!(matches!(e, SlotError::Foreign { .. }), "{e}");
    host.sh("ip link del wasp0");

    // CIDR too small.
    let e = setup_in("10.2.0.0/31").unwrap_err().to_string();
    assert!(e.contains("too small"), "{e}");

    // A host link that clashes with the slot's veth name and is not wasp's.
    let net = SlotNet {
        pool: pool_name("cl"),
        cidr: "10.3.0.0/16".parse().unwrap(),
        allow_host: vec![],
        ..SlotNet::default()
    };
    let k = Kernel::setup(net.clone(), &hn).expect("setup");
    host.sh(&format!(
        "ip link add {} type veth peer name clashp",
        net.host_veth(0)
    ));
    let e = k.build(0).unwrap_err();
    assert!(matches!(e, SlotError::Foreign { .. }), "{e}");
    assert!(!netns::exists(&net.netns_name(0)), "no netns left behind");
    let links = host.sh("ip -o link");
    assert!(
        links.contains(&net.host_veth(0)),
        "the foreign link is untouched"
    );
    // Exhaustion.
    let e = k.build(70_000).unwrap_err();
    assert!(matches!(e, SlotError::Exhausted { .. }), "{e}");
    k.remove_host().expect("remove host objects");
    assert!(!host.sh_ok("ip link show dev wasp0"));
}

#[test]
fn egress_is_masqueraded_out_of_the_uplink_and_drain_leaves_no_trace() {
    root_or_skip!();
    // The "internet": a peer namespace behind an uplink of the host netns.
    let host = TestNetns::new("eg");
    let inet = TestNetns::new("egi");
    host.sh(&format!(
        "ip link add wup0 type veth peer name wupi netns {} && \
         ip addr add 198.51.100.1/24 dev wup0 && ip link set wup0 up",
        inet.name()
    ));
    inet.sh("ip addr add 198.51.100.2/24 dev wupi && ip link set wupi up");
    let net = SlotNet {
        pool: pool_name("eg"),
        ..SlotNet::default()
    };
    let hn = HostNet {
        netns: Some(host.name().to_owned()),
        egress_uplink: Some("wup0".into()),
        ..HostNet::default()
    };

    // Forwarding is host-wide policy: wasp refuses rather than flip it in a
    // netns it did not create, and leaves nothing behind.
    host.sh("sysctl -qw net.ipv4.ip_forward=0");
    let e = Kernel::setup(net.clone(), &hn).unwrap_err().to_string();
    assert!(e.contains("net.ipv4.ip_forward=1"), "{e}");
    assert!(!host.sh_ok("ip link show dev wasp0"), "no bridge left");
    assert!(
        !host.sh("nft list tables").contains("wasp"),
        "no table left"
    );
    // An uplink that does not exist is named.
    let e = Kernel::setup(
        net.clone(),
        &HostNet {
            egress_uplink: Some("nosuch9".into()),
            ..hn.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("egress uplink nosuch9: no such link"), "{e}");

    host.sh("sysctl -qw net.ipv4.ip_forward=1");
    let k = Kernel::setup(net, &hn).expect("setup with egress");
    let s0 = k.build(0).expect("build slot 0");
    let guard = Slots(&k, vec![0]);
    let table = host.sh("nft list table ip wasp");
    assert!(
        table.contains("oifname \"wup0\" ip saddr 10.0.0.0/16 masquerade"),
        "{table}"
    );

    // Guest -> a server beyond the uplink: source-NATed twice, so the
    // server sees the uplink's address, never the guest or clone IP.
    let srv = inet.run(|| TcpListener::bind(("198.51.100.2", 7070)).expect("bind"));
    let (ob, rx) = outbound(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 7070));
    let g = guest(&s0, Some(ob));
    let (mut c, peer) = netutil::accept_within(&srv, NET);
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))
    );
    c.set_read_timeout(Some(NET)).unwrap();
    let mut req = [0u8; 11];
    c.read_exact(&mut req).unwrap();
    assert_eq!(&req, b"hello host\n");
    c.write_all(b"out").unwrap();
    drop(c);
    assert_eq!(rx.recv_timeout(NET).unwrap().as_deref(), Ok(&b"out"[..]));
    g.stop().expect("guest ran cleanly");

    // Drain: slots, bridge and the host table go; the uplink stays.
    drop(guard);
    k.remove_host().expect("remove host objects");
    assert!(
        !host.sh("nft list tables").contains("wasp"),
        "table removed"
    );
    let links = host.sh("ip -o link");
    assert!(!links.contains("wasp0"), "{links}");
    assert!(links.contains("wup0"), "the uplink is not wasp's: {links}");
}
