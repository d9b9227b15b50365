//! A userspace TCP/IP "guest" on a tap fd (smoltcp, Ethernet medium).
//!
//! It stands in for a microVM's network stack in tests and in the stand-in
//! VMM: it answers ARP and ICMP echo, accepts TCP on a readiness port (like
//! the seed guest's ssh on 22), serves a tiny HTTP/1.1 agent that answers
//! every GET with `200 application/json`, and can make one outbound TCP
//! request (as the seed's agent calls the host API).
//!
//! One thread per guest, driven by `poll(2)` on the tap fd and an eventfd
//! for stop, with smoltcp's `poll_delay` as the timeout: no busy loop. All
//! raw fd work is in [`crate::sys::tap`].
//!
//! Frames carry a virtio-net header when the fd was opened with
//! IFF_VNET_HDR (as Firecracker does); it is detected and handled.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration as SDuration, Instant as SInstant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::sys::tap::{self, EventFd};

/// The guest's addressing and the ports of its services: what the
/// stand-in reads from its vmstate and what tests pick directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestIface {
    /// Ethernet address (must be unicast).
    pub mac: [u8; 6],
    /// Guest IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of the guest's subnet.
    pub prefix_len: u8,
    /// Default gateway (the tap's address).
    pub gateway: Ipv4Addr,
    /// Accepts TCP connections (readiness, like the seed's ssh on 22).
    pub ready_port: u16,
    /// Tiny HTTP/1.1 server: any GET answers 200 application/json with the
    /// body from [`GuestNetConfig::agent_body`].
    pub agent_port: u16,
}

/// What the guest looks like on the wire and which services it runs.
pub struct GuestNetConfig {
    /// Addressing and service ports.
    pub addr: GuestIface,
    /// The agent's response body, computed per request.
    pub agent_body: Arc<dyn Fn() -> Vec<u8> + Send + Sync>,
    /// One outbound request made once at start, if any.
    pub outbound: Option<Outbound>,
}

impl std::fmt::Debug for GuestNetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestNetConfig")
            .field("addr", &self.addr)
            .field("outbound", &self.outbound.as_ref().map(|o| o.to))
            .finish_non_exhaustive()
    }
}

/// An outbound TCP exchange: connect to `to`, send `request`, read until
/// the peer closes, then call `on_response` with everything read (or the
/// error: refused, reset or timed out).
pub struct Outbound {
    /// Where to connect.
    pub to: SocketAddrV4,
    /// Bytes sent once connected.
    pub request: Vec<u8>,
    /// Called exactly once with the response or the failure.
    pub on_response: ResponseFn,
}

/// The callback of an [`Outbound`] exchange.
pub type ResponseFn = Box<dyn FnOnce(io::Result<Vec<u8>>) + Send>;

/// A running guest stack; stop it with [`GuestNet::stop`] (dropping it
/// also stops it, ignoring errors).
#[derive(Debug)]
pub struct GuestNet {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

/// How long an outbound exchange may stall before it fails.
const OUTBOUND_TIMEOUT: SDuration = SDuration::from_secs(10);
/// Listening sockets kept ready per port (concurrent connections).
const LISTENERS_PER_PORT: usize = 2;
/// Socket buffer size.
const BUF: usize = 64 * 1024;
/// Largest frame read from the tap (with headroom for a vnet header).
const MAX_FRAME: usize = 65536 + 64;

impl GuestNet {
    /// Starts the guest on `tap` (an fd from [`tap::open_tap`]) in a new
    /// thread.
    pub fn start(tap: OwnedFd, cfg: GuestNetConfig) -> io::Result<GuestNet> {
        let mac = EthernetAddress(cfg.addr.mac);
        if !mac.is_unicast() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("guest MAC {mac} is not a unicast address: clear the multicast bit (lowest bit of the first byte)"),
            ));
        }
        if cfg.addr.prefix_len > 32 || cfg.addr.ip.is_unspecified() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "guest address {}/{} is not a usable IPv4 address/prefix",
                    cfg.addr.ip, cfg.addr.prefix_len
                ),
            ));
        }
        let hdr_len = tap::vnet_hdr_len(tap.as_fd())?;
        let stop = Arc::new(EventFd::new()?);
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("guestnet-{}", cfg.addr.ip))
            .spawn(move || run(tap, hdr_len, cfg, &stop2))?;
        Ok(GuestNet {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and returns the error that ended it early, if any.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        let Some(t) = self.thread.take() else {
            return Ok(());
        };
        let signalled = self.stop.signal();
        let joined = t
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("guestnet thread panicked")));
        signalled.and(joined)
    }
}

impl Drop for GuestNet {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// The tap as a smoltcp device.
struct TapDevice {
    fd: OwnedFd,
    hdr_len: usize,
    rx: Vec<u8>,
    /// First fatal read error, reported by the loop.
    error: Option<io::Error>,
}

struct RxTok {
    frame: Vec<u8>,
}

struct TxTok<'a> {
    fd: BorrowedFd<'a>,
    hdr_len: usize,
}

impl phy::RxToken for RxTok {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.frame)
    }
}

impl phy::TxToken for TxTok<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0u8; self.hdr_len + len];
        let r = f(&mut buf[self.hdr_len..]);
        // A full queue or a downed tap drops the frame, as a NIC would;
        // TCP retransmits.
        if let Err(e) = tap::write_frame(self.fd, &buf) {
            tracing::debug!("guestnet: dropped an outgoing frame: {e}");
        }
        r
    }
}

impl Device for TapDevice {
    type RxToken<'a> = RxTok;
    type TxToken<'a> = TxTok<'a>;

    fn receive(&mut self, _ts: SInstant) -> Option<(RxTok, TxTok<'_>)> {
        if self.error.is_some() {
            return None;
        }
        match tap::read_frame(self.fd.as_fd(), &mut self.rx) {
            Ok(Some(n)) if n > self.hdr_len => Some((
                RxTok {
                    frame: self.rx[self.hdr_len..n].to_vec(),
                },
                TxTok {
                    fd: self.fd.as_fd(),
                    hdr_len: self.hdr_len,
                },
            )),
            // A runt frame: skip it, smoltcp will call again.
            Ok(Some(_)) => None,
            Ok(None) => None,
            Err(e) => {
                self.error = Some(e);
                None
            }
        }
    }

    fn transmit(&mut self, _ts: SInstant) -> Option<TxTok<'_>> {
        Some(TxTok {
            fd: self.fd.as_fd(),
            hdr_len: self.hdr_len,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// What a TCP socket is for.
enum Role {
    Ready,
    Agent {
        req: Vec<u8>,
        resp: Option<(Vec<u8>, usize)>,
    },
    Outbound {
        to: SocketAddrV4,
        req: Vec<u8>,
        sent: usize,
        resp: Vec<u8>,
        established: bool,
    },
}

fn new_tcp() -> tcp::Socket<'static> {
    tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; BUF]),
        tcp::SocketBuffer::new(vec![0; BUF]),
    )
}

fn http_response(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// True once `req` holds a full request head.
fn request_complete(req: &[u8]) -> bool {
    req.windows(4).any(|w| w == b"\r\n\r\n")
}

fn run(fd: OwnedFd, hdr_len: usize, mut cfg: GuestNetConfig, stop: &EventFd) -> io::Result<()> {
    let epoch = std::time::Instant::now();
    let now = || SInstant::from_micros(epoch.elapsed().as_micros() as i64);
    let mut dev = TapDevice {
        fd,
        hdr_len,
        rx: vec![0u8; MAX_FRAME],
        error: None,
    };
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(cfg.addr.mac)));
    config.random_seed = u64::from(u32::from(cfg.addr.ip)) ^ epoch.elapsed().as_nanos() as u64;
    let mut iface = Interface::new(config, &mut dev, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(
            IpAddress::Ipv4(cfg.addr.ip),
            cfg.addr.prefix_len,
        ));
    });
    iface
        .routes_mut()
        .add_default_ipv4_route(cfg.addr.gateway)
        .map_err(|_| io::Error::other("smoltcp route table full"))?;

    let mut sockets = SocketSet::new(Vec::new());
    let mut roles: HashMap<SocketHandle, Role> = HashMap::new();
    let mut outbound_cb = None;
    if let Some(ob) = cfg.outbound.take() {
        let mut s = new_tcp();
        s.set_timeout(Some(OUTBOUND_TIMEOUT));
        let local_port = 49152 + (u32::from(cfg.addr.ip) % 16000) as u16;
        let remote = IpEndpoint::new(IpAddress::Ipv4(*ob.to.ip()), ob.to.port());
        match s.connect(iface.context(), remote, local_port) {
            Ok(()) => {
                let h = sockets.add(s);
                roles.insert(
                    h,
                    Role::Outbound {
                        to: ob.to,
                        req: ob.request,
                        sent: 0,
                        resp: Vec::new(),
                        established: false,
                    },
                );
                outbound_cb = Some(ob.on_response);
            }
            Err(e) => (ob.on_response)(Err(io::Error::other(format!(
                "outbound connect to {}: {e}",
                ob.to
            )))),
        }
    }

    // The listeners exist before the first frame is read, as in a guest
    // restored from a snapshot whose agent was listening: a connect that
    // reached the tap before this thread ran finds them (with none, the
    // guest would answer a reset, and smoltcp drops a reset it cannot yet
    // address: the client then waits a second for its SYN retry).
    service(&cfg, &mut sockets, &mut roles, &mut outbound_cb);
    loop {
        let ts = now();
        iface.poll(ts, &mut dev, &mut sockets);
        if let Some(e) = dev.error.take() {
            return Err(e);
        }
        service(&cfg, &mut sockets, &mut roles, &mut outbound_cb);
        let delay = iface.poll_delay(now(), &sockets);
        let timeout = match delay {
            None => -1,
            Some(d) => d.total_millis().min(i32::MAX as u64) as i32,
        };
        let ready = tap::poll_readable(&[dev.fd.as_fd(), stop.as_fd()], timeout)?;
        if ready[1] && stop.drain()? > 0 {
            return Ok(());
        }
    }
}

/// Accepts, serves and retires sockets; keeps listeners topped up.
fn service(
    cfg: &GuestNetConfig,
    sockets: &mut SocketSet<'static>,
    roles: &mut HashMap<SocketHandle, Role>,
    outbound_cb: &mut Option<ResponseFn>,
) {
    let mut retire = Vec::new();
    let mut buf = [0u8; 4096];
    for (h, role) in roles.iter_mut() {
        let s = sockets.get_mut::<tcp::Socket>(*h);
        match role {
            Role::Ready => {
                while s.can_recv() {
                    if s.recv_slice(&mut buf).unwrap_or(0) == 0 {
                        break;
                    }
                }
                if s.state() == tcp::State::CloseWait {
                    s.close();
                }
            }
            Role::Agent { req, resp } => {
                while s.can_recv() && resp.is_none() {
                    match s.recv_slice(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if resp.is_none() && request_complete(req) {
                    *resp = Some((http_response(&(cfg.agent_body)()), 0));
                }
                if let Some((bytes, sent)) = resp {
                    while *sent < bytes.len() && s.can_send() {
                        match s.send_slice(&bytes[*sent..]) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => *sent += n,
                        }
                    }
                    if *sent == bytes.len() {
                        s.close();
                    }
                } else if s.state() == tcp::State::CloseWait {
                    s.close();
                }
            }
            Role::Outbound {
                to,
                req,
                sent,
                resp,
                established,
            } => {
                if s.may_send() || s.may_recv() {
                    *established = true;
                }
                // The request is queued once the handshake is done.
                while *sent < req.len() && s.can_send() {
                    match s.send_slice(&req[*sent..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => *sent += n,
                    }
                }
                while s.can_recv() {
                    match s.recv_slice(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => resp.extend_from_slice(&buf[..n]),
                    }
                }
                if *established && !s.may_recv() && s.is_open() {
                    // Peer closed: the response is complete.
                    s.close();
                    if let Some(cb) = outbound_cb.take() {
                        cb(Ok(std::mem::take(resp)));
                    }
                }
                if s.state() == tcp::State::Closed {
                    if let Some(cb) = outbound_cb.take() {
                        cb(if *established {
                            Ok(std::mem::take(resp))
                        } else {
                            Err(io::Error::new(
                                io::ErrorKind::ConnectionRefused,
                                format!(
                                    "outbound connection to {to} failed (refused, reset or timed out)"
                                ),
                            ))
                        });
                    }
                }
            }
        }
        if s.state() == tcp::State::Closed {
            retire.push(*h);
        }
    }
    for h in retire {
        roles.remove(&h);
        sockets.remove(h);
    }
    for port in [cfg.addr.ready_port, cfg.addr.agent_port] {
        let listening = roles
            .iter()
            .filter(|(h, r)| {
                let is_port = match r {
                    Role::Ready => port == cfg.addr.ready_port,
                    Role::Agent { .. } => port == cfg.addr.agent_port,
                    Role::Outbound { .. } => false,
                };
                is_port && sockets.get_mut::<tcp::Socket>(**h).is_listening()
            })
            .count();
        for _ in listening..LISTENERS_PER_PORT {
            let mut s = new_tcp();
            if s.listen(port).is_err() {
                break;
            }
            let h = sockets.add(s);
            let role = if port == cfg.addr.ready_port {
                Role::Ready
            } else {
                Role::Agent {
                    req: Vec::new(),
                    resp: None,
                }
            };
            roles.insert(h, role);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_response_has_length_and_body() {
        let r = http_response(b"{\"a\":1}");
        let s = String::from_utf8(r).unwrap();
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("Content-Length: 7\r\n"));
        assert!(s.contains("Content-Type: application/json\r\n"));
        assert!(s.ends_with("\r\n\r\n{\"a\":1}"));
    }

    #[test]
    fn request_head_detection() {
        assert!(!request_complete(b"GET / HTTP/1.1\r\nHost: x\r\n"));
        assert!(request_complete(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
}
