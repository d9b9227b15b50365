//! The userspace guest stack on a real tap in a throwaway namespace.

use wasp_testkit as testkit;
use wasp_testkit::netutil;
use wasp_testkit::root_or_skip;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use testkit::TestNetns;
use wasp::standin::guestnet::{GuestIface, GuestNet, GuestNetConfig, Outbound};
use wasp::sys::tap;

const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 241, 2);
const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 241, 1);
/// A safety net against a hung test, never a synchronisation point.
const NET: Option<Duration> = Some(Duration::from_secs(10));

fn cfg(outbound: Option<Outbound>) -> GuestNetConfig {
    GuestNetConfig {
        addr: GuestIface {
            mac: [0x06, 0, 0xac, 0x10, 0, 2],
            ip: GUEST,
            prefix_len: 29,
            gateway: GW,
            ready_port: 22,
            agent_port: 8080,
        },
        agent_body: Arc::new(|| br#"{"status":"ok"}"#.to_vec()),
        outbound,
    }
}

fn tap_ns(tag: &str) -> TestNetns {
    let ns = TestNetns::new(tag);
    ns.run(|| tap::create_persistent("tap0"))
        .expect("create tap0");
    ns.sh("ip addr add 192.168.241.1/29 dev tap0 && ip link set tap0 up");
    ns
}

fn http_get(ns: &TestNetns, port: u16) -> String {
    ns.run(|| {
        let mut s =
            TcpStream::connect_timeout(&SocketAddrV4::new(GUEST, port).into(), NET.unwrap())
                .expect("connect agent");
        s.set_read_timeout(NET).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: guest\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read agent response");
        out
    })
}

#[test]
fn guest_answers_ping_tcp_and_http_and_calls_out() {
    root_or_skip!();
    let ns = tap_ns("guestnet");
    // The host-side server the guest calls, bound before the guest starts.
    let listener = ns.run(|| TcpListener::bind((GW, 9000)).expect("bind server"));
    let (tx, rx) = mpsc::channel();
    let outbound = Outbound {
        to: SocketAddrV4::new(GW, 9000),
        request: b"PING from guest\n".to_vec(),
        on_response: Box::new(move |r| {
            let _ = tx.send(r.map_err(|e| e.to_string()));
        }),
    };
    let fd = ns.run(|| tap::open_tap("tap0", false)).expect("open tap");
    let guest = GuestNet::start(fd, cfg(Some(outbound))).expect("start guest");

    // The server side of the outbound exchange.
    let (mut conn, peer) = listener.accept().expect("accept guest");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(GUEST));
    conn.set_read_timeout(NET).unwrap();
    let mut req = vec![0u8; 16];
    conn.read_exact(&mut req).expect("read guest request");
    assert_eq!(&req, b"PING from guest\n");
    conn.write_all(b"PONG from host").unwrap();
    drop(conn);
    let resp = rx.recv_timeout(NET.unwrap()).expect("outbound callback");
    assert_eq!(resp.as_deref(), Ok(&b"PONG from host"[..]));

    if !ns.run(|| netutil::ping(GUEST, 2)) {
        panic!("ping guest failed; guest: {:?}", guest.stop());
    }
    ns.run(|| {
        TcpStream::connect_timeout(&SocketAddrV4::new(GUEST, 22).into(), NET.unwrap())
            .expect("connect ready port")
    });
    // Several times: the guest re-listens after each connection.
    for _ in 0..3 {
        let r = http_get(&ns, 8080);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n{\"status\":\"ok\"}"), "{r}");
    }
    // Two connections open at once.
    ns.run(|| {
        let a = TcpStream::connect_timeout(&SocketAddrV4::new(GUEST, 22).into(), NET.unwrap());
        let b = TcpStream::connect_timeout(&SocketAddrV4::new(GUEST, 22).into(), NET.unwrap());
        a.expect("first concurrent connect");
        b.expect("second concurrent connect");
    });
    // A port nobody listens on is refused (RST), not silently dropped.
    let refused =
        ns.run(|| TcpStream::connect_timeout(&SocketAddrV4::new(GUEST, 23).into(), NET.unwrap()));
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    guest.stop().expect("stop guest");
}

#[test]
fn guest_works_with_a_vnet_header_tap_and_reports_refused_outbound() {
    root_or_skip!();
    let ns = tap_ns("guestvnet");
    let (tx, rx) = mpsc::channel();
    let outbound = Outbound {
        // Nobody listens there: the host answers RST.
        to: SocketAddrV4::new(GW, 9001),
        request: b"x".to_vec(),
        on_response: Box::new(move |r| {
            let _ = tx.send(r.map_err(|e| e.kind()));
        }),
    };
    let fd = ns.run(|| tap::open_tap("tap0", true)).expect("open tap");
    assert_eq!(
        tap::vnet_hdr_len(std::os::fd::AsFd::as_fd(&fd)).unwrap(),
        12
    );
    let guest = GuestNet::start(fd, cfg(Some(outbound))).expect("start guest");
    let r = match rx.recv_timeout(NET.unwrap()) {
        Ok(r) => r,
        Err(e) => panic!("outbound callback: {e}; guest: {:?}", guest.stop()),
    };
    assert_eq!(r, Err(std::io::ErrorKind::ConnectionRefused));
    // The tap is held: a second attach is refused with EBUSY.
    assert!(!ns.run(|| tap::is_free("tap0")).unwrap());
    let r = http_get(&ns, 8080);
    assert!(r.ends_with("{\"status\":\"ok\"}"), "{r}");
    guest.stop().expect("stop guest");
    assert!(ns.run(|| tap::is_free("tap0")).unwrap());
    ns.run(|| tap::delete_persistent("tap0"))
        .expect("delete tap");
    assert!(!ns.sh("ip -o link").contains("tap0"));
}
