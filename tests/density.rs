//! Past one bridge: a routed pool of 1 100 slots (more than the 1 023 a
//! Linux bridge takes) in a private host netns, with packets through slots
//! past the bridge limit: the host reaches clones, a clone reaches the
//! allowed host port, clone to clone and a port that is not allowed are
//! dropped, and a rebuilt slot keeps its clone IP. A bridge pool of the
//! same size is refused before anything is built, naming the limit.
//! Takes 18 s on the 2-core reference host (debug build, load average 4
//! from other builds; 33 s at load 8), most of it building and draining
//! the 1 100 slots.

use wasp_testkit as testkit;
use wasp_testkit::netutil;
use wasp_testkit::root_or_skip;

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use wasp::pipeline::limits::{self, Demand, LimitsError};
use wasp::pipeline::pool::{Pool, PoolConfig};
use wasp::pipeline::slot::{HostNet, Layout, Slot, SlotNet, SlotOps};
use wasp::standin::guestnet::{GuestIface, GuestNet, GuestNetConfig, Outbound};
use wasp::sys::{netns, tap};

/// A safety net against a hung test, never a synchronisation point.
const NET: Duration = Duration::from_secs(15);
const GW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const SLOTS: u32 = 1100;

/// The pool size: 1 100 in CI; `WASP_TEST_DENSITY_SLOTS=5000` runs the
/// same checks at 5 000 by hand (docs/benchmarks.md, "Density").
fn slots() -> u32 {
    std::env::var("WASP_TEST_DENSITY_SLOTS")
        .ok()
        .map(|v| {
            v.parse()
                .expect("WASP_TEST_DENSITY_SLOTS: a number of slots")
        })
        .unwrap_or(SLOTS)
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

/// Drains the pool on drop, even when the test panics.
struct Drain<'a>(&'a Pool<wasp::pipeline::slot::Kernel>);
impl Drop for Drain<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.drain() {
            eprintln!("warning: drain: {e}");
        }
        let _ = self.0.ops().remove_host();
    }
}

#[test]
fn a_routed_pool_crosses_the_bridge_port_limit_isolated() {
    root_or_skip!();
    let pool = format!("d{}", std::process::id());
    // A bridge pool of this size is refused up front, naming the limit.
    let bridge = SlotNet {
        pool: pool.clone(),
        layout: Layout::Bridge,
        ..SlotNet::default()
    };
    let e = limits::check_pool(
        &bridge,
        &HostNet::default(),
        Demand::slots(u64::from(SLOTS), &bridge.cidr),
    )
    .unwrap_err();
    assert!(
        matches!(&e, LimitsError::Exceeded { limits, .. } if limits.iter().any(|l| l.name == "bridge ports")),
        "{e}"
    );
    assert!(
        e.to_string().contains("bridge ports is 1023, 1100 needed"),
        "{e}"
    );

    let (host, k) = testkit::slot_host_with("dense", pool, Layout::Routed);
    let p = Pool::new(
        k,
        PoolConfig {
            low_water: 0,
            ..PoolConfig::default()
        },
    );
    let _drain = Drain(&p);
    let t = std::time::Instant::now();
    let n = slots();
    p.warm(n as usize).expect("warm the routed slots");
    eprintln!("built {n} routed slots in {:?}", t.elapsed());
    assert_eq!(p.status().free, n as usize);
    let k = p.ops();
    let d = |n: u32| k.describe(n).unwrap();
    // Slots past the bridge limit (1050, 1080, 1099 of 1 100).
    let (i_a, i_b, i_c) = (n - 50, n - 20, n - 1);
    let (s_a, s_b, s_c) = (d(i_a), d(i_b), d(i_c));
    // Index i is 10.0.0.0 + i + 2 (.1 is the gateway): 1050 is 10.0.4.28.
    assert_eq!(
        s_a.clone_ip,
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 2)) + i_a)
    );

    let api = host.run(|| TcpListener::bind((GW, 8080)).expect("bind api"));
    let other = host.run(|| TcpListener::bind((GW, 9999)).expect("bind other"));
    let (ob_c, rx_c) = outbound(SocketAddrV4::new(GW, 8080));
    let (ob_b, rx_b) = outbound(SocketAddrV4::new(s_a.clone_ip, 22));
    let (ob_x, rx_x) = outbound(SocketAddrV4::new(GW, 9999));
    let g_a = guest(&s_a, Some(ob_x));
    let g_b = guest(&s_b, Some(ob_b));
    let g_c = guest(&s_c, Some(ob_c));

    // Slot c's guest reaches the allowed host port, as its clone IP.
    let (c, peer) = netutil::accept_within(&api, NET);
    assert_eq!(peer.ip(), std::net::IpAddr::V4(s_c.clone_ip));
    drop(c);
    let _ = rx_c
        .recv_timeout(NET)
        .expect("guest saw its connection end");
    // The host reaches slot a's guest.
    assert!(
        host.run(|| netutil::ping(s_a.clone_ip, 3)),
        "ping slot {i_a}"
    );
    host.run(|| {
        TcpStream::connect_timeout(&SocketAddrV4::new(s_a.clone_ip, 22).into(), NET)
            .expect("host reaches clone a's port 22")
    });
    // Clone b -> clone a, clone a -> port 9999: dropped.
    let r = rx_b.recv_timeout(NET * 2).expect("isolation callback");
    assert!(r.is_err(), "clone {i_b} reached clone {i_a}: {r:?}");
    let r = rx_x.recv_timeout(NET * 2).expect("port callback");
    assert!(r.is_err(), "clone {i_a} reached host port 9999: {r:?}");
    other.set_nonblocking(true).unwrap();
    assert!(other.accept().is_err(), "nothing arrived on port 9999");
    for g in [g_a, g_b, g_c] {
        g.stop().expect("guest ran cleanly");
    }

    // A rebuilt slot keeps its clone IP, and is reachable again.
    k.destroy(i_a).expect("destroy slot a");
    let again = k.build(i_a).expect("rebuild slot a");
    assert_eq!(again.clone_ip, s_a.clone_ip);
    let g = guest(&again, None);
    assert!(
        host.run(|| netutil::ping(again.clone_ip, 3)),
        "ping rebuilt"
    );
    g.stop().expect("guest ran cleanly");
}

#[test]
fn a_bridge_pool_keeps_its_layout_under_the_routed_default() {
    root_or_skip!();
    let w = testkit::cli::World::new(wasp_testkit::wasp_bin!(), "keep");
    let warm = w
        .wasp(&["pool", "warm", "--size", "3", "--layout", "bridge"], true)
        .output()
        .unwrap();
    testkit::ok(&warm);
    // Reconcile with the default (routed) settings: the pool's record says
    // bridge, so its three bridge-port slots are healthy, not broken.
    let r = w.reconcile();
    let pool = r["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == w.pool.as_str())
        .unwrap_or_else(|| panic!("{r:#}"))
        .clone();
    assert_eq!(pool["healthy"], 3, "{pool:#}");
    assert_eq!(pool["removed"], serde_json::json!([]), "{pool:#}");
    let links = w.host.sh("ip -o link show master wasp0");
    assert_eq!(links.lines().count(), 3, "still bridge ports: {links}");
    testkit::ok(&w.wasp(&["pool", "drain"], true).output().unwrap());
}
