//! Test-only network helpers: an ICMP echo ("ping") over a raw socket, so
//! the tests need no `ping` binary.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends one ICMP echo request to `to` from the calling thread's namespace
/// and waits (blocking read, at most `timeout_s` seconds as a safety net)
/// for the matching reply. True when it came.
pub fn ping(to: Ipv4Addr, timeout_s: i64) -> bool {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .expect("raw ICMP socket");
    setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(timeout_s, 0)).unwrap();
    let ident: u16 = (std::process::id() & 0xffff) as u16;
    let mut pkt = vec![8u8, 0, 0, 0];
    pkt.extend_from_slice(&ident.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(b"wasp-ping-payload");
    let c = csum(&pkt);
    pkt[2..4].copy_from_slice(&c.to_be_bytes());
    let dst = SockaddrIn::from(SocketAddrV4::new(to, 0));
    sendto(fd.as_raw_fd(), &pkt, &dst, MsgFlags::empty()).expect("send echo");
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = recvfrom::<SockaddrIn>(fd.as_raw_fd(), &mut buf) else {
            return false;
        };
        // Raw IPv4 sockets deliver the IP header too.
        let ihl = usize::from(buf[0] & 0x0f) * 4;
        let icmp = &buf[ihl..n];
        let from_ok = from.map(|f| f.ip() == to).unwrap_or(false);
        if from_ok
            && icmp.len() >= 8
            && icmp[0] == 0
            && icmp[4..6] == ident.to_be_bytes()
            && &icmp[8..] == b"wasp-ping-payload"
        {
            return true;
        }
    }
}

/// Accepts one connection on `l`, waiting at most `limit` (a safety net so
/// a broken path fails the test instead of hanging it).
pub fn accept_within(
    l: &std::net::TcpListener,
    limit: std::time::Duration,
) -> (std::net::TcpStream, std::net::SocketAddr) {
    let fd = l.as_raw_fd();
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    let ready = wasp::sys::poll::wait_readable(&[fd], ms).expect("poll the listener");
    assert!(ready.is_some(), "no connection arrived within {limit:?}");
    let (s, peer) = l.accept().expect("accept");
    s.set_nonblocking(false).expect("blocking stream");
    (s, peer)
}
